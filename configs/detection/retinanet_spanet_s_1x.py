# RetinaNet with SPANet-S on COCO, 1x schedule, the official SPANet recipe (mmdet 2.x configs
# object_detection/local_configs/spanet/S24/retinanet_spanet_s24_fpn_1x_coco.py; recorded in
# tests/data/official_recipes.yml):
# - resize to (1333, 800) keeping the ratio, flip 0.5, pad to 32 (mmdet's coco_detection base);
# - 12 epochs, lr x0.1 at epochs 8 and 11, 500 linear warm-up iterations from 0.001 x lr;
# - AdamW lr 1e-4, weight decay 1e-4, no clipping, total batch 16 = 4 GPUs x 4 images (the
#   official runs), backbone drop path 0;
# - backbone stages from the converted ImageNet-1k checkpoint (see below); every output norm
#   starts new (weight 1, bias 0), as in the official dense backbone, which does not use the
#   classifier's final norm.
# Difference in form, not in the network: the official FPN takes all four stages with
# start_level=1, so the stride-4 output and its norm are computed but unused (the official code
# drops that norm with FORK_LAST3=1, else DDP needs find_unused_parameters). As mmdet's Swin
# RetinaNet does, the backbone here returns only stages 1-3 and the FPN starts at level 0: the
# same network (P3-P5 from stages 1-3, P6/P7 from extra convs on the last input).
# mmengine's warm-up reaches the full rate at iteration 499 rather than 500 (within 0.2%).
# Reported box AP: 43.3.
# Pretrained weights: python tools/model_converters/spanet_official_to_mm.py \
#     spanet-small.pth checkpoints/spanet_s_in1k.pth
# or train from scratch on purpose: --cfg-options model.backbone.init_cfg=None
_base_ = [
    'mmdet::retinanet/retinanet_r50_fpn_1x_coco.py',
    '../_base_/spanet_runtime.py',
]

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
            prefix='backbone.',
            load_out_norms=())),
    neck=dict(
        in_channels=[128, 320, 512],
        start_level=0,
        add_extra_convs='on_input',
        num_outs=5))

train_dataloader = dict(batch_size=4)

optim_wrapper = dict(
    constructor='CheckedOptimWrapperConstructor',  # refuses paramwise_cfg typos
    optimizer=dict(_delete_=True, type='AdamW', lr=1e-4, weight_decay=1e-4))

# Total batch 16 = 4 GPUs x 4 images; `tools/train.py --auto-scale-lr` rescales lr for others.
auto_scale_lr = dict(enable=False, base_batch_size=16)
