# RetinaNet with SPANet-S on COCO, 1x schedule (12 epochs, lr steps at epochs 8 and 11, 500
# linear warm-up iterations), following the official SPANet release (mmdet 2.x, "S24" configs):
# - resize to (1333, 800) keeping the ratio, flip 0.5, pad to 32 (mmdet's coco_detection base);
# - AdamW lr 1e-4, weight decay 1e-4, total batch 16 (8 GPUs x 2 images), backbone drop path 0;
# - backbone initialised from the converted ImageNet-1k checkpoint (see below).
# The official FPN takes all four stages with start_level=1, so the stride-4 output and its norm
# are computed but unused, which breaks DDP without find_unused_parameters. As mmdet's Swin
# RetinaNet does, the backbone here returns only stages 1-3 and the FPN starts at level 0: the
# same network (P3-P5 from stages 1-3, P6/P7 from extra convs on the last input), no unused
# parameters. Reported box AP: 43.3.
# Pretrained weights: python tools/model_converters/spanet_official_to_mm.py \
#     spanet-small.pth checkpoints/spanet_s_in1k.pth
# or train from scratch on purpose: --cfg-options model.backbone.init_cfg=None
_base_ = 'mmdet::retinanet/retinanet_r50_fpn_1x_coco.py'

custom_imports = dict(imports=['spanet_mm'], allow_failed_imports=False)

model = dict(
    backbone=dict(
        _delete_=True,
        type='SPANet',
        arch='s',
        out_indices=(1, 2, 3),
        drop_path_rate=0.,
        init_cfg=dict(
            type='Pretrained',
            checkpoint='checkpoints/spanet_s_in1k.pth',
            prefix='backbone.')),
    neck=dict(
        in_channels=[128, 320, 512],
        start_level=0,
        add_extra_convs='on_input',
        num_outs=5))

optim_wrapper = dict(
    optimizer=dict(_delete_=True, type='AdamW', lr=1e-4, weight_decay=1e-4))

# Total batch 16 = 8 GPUs x 2 images; `tools/train.py --auto-scale-lr` rescales lr for others.
auto_scale_lr = dict(enable=False, base_batch_size=16)
