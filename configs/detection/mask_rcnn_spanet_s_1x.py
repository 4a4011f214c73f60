# Mask R-CNN with SPANet-S on COCO, 1x schedule (12 epochs, lr steps at epochs 8 and 11, 500
# linear warm-up iterations), following the official SPANet release (mmdet 2.x, "S24" configs):
# - resize to (1333, 800) keeping the ratio, flip 0.5, pad to 32 (mmdet's coco_instance base),
#   standard R50-FPN heads;
# - AdamW lr 2e-4, weight decay 1e-4, total batch 8 (4 GPUs x 2 images: the official runs;
#   mmdet's 1x configs assume 8 x 2), backbone drop path 0;
# - FPN on all four stages (every output is used, no DDP trap);
# - backbone initialised from the converted ImageNet-1k checkpoint (see below).
# Reported box/mask AP: 44.7/40.6.
# Pretrained weights: python tools/model_converters/spanet_official_to_mm.py \
#     spanet-small.pth checkpoints/spanet_s_in1k.pth
# or train from scratch on purpose: --cfg-options model.backbone.init_cfg=None
_base_ = 'mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py'

custom_imports = dict(imports=['spanet_mm'], allow_failed_imports=False)

model = dict(
    backbone=dict(
        _delete_=True,
        type='SPANet',
        arch='s',
        out_indices=(0, 1, 2, 3),
        drop_path_rate=0.,
        init_cfg=dict(
            type='Pretrained',
            checkpoint='checkpoints/spanet_s_in1k.pth',
            prefix='backbone.')),
    neck=dict(in_channels=[64, 128, 320, 512]))

train_dataloader = dict(batch_size=2)

optim_wrapper = dict(
    optimizer=dict(_delete_=True, type='AdamW', lr=2e-4, weight_decay=1e-4))

# Total batch 8 = 4 GPUs x 2 images (the official runs); `tools/train.py --auto-scale-lr`
# rescales lr for other totals (e.g. 8 GPUs x 2: lr 4e-4).
auto_scale_lr = dict(enable=False, base_batch_size=8)
