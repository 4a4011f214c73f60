# Semantic FPN with SPANet-S on ADE20K (150 classes), 512x512 crops, 80k iterations.
# The official SPANet release has no segmentation code. The paper's Semantic FPN setting is that
# of PVT, which PoolFormer (and the authors' SPANetV2) follow; recorded, with sources, in
# tests/data/official_recipes.yml:
# - FPN out 256 with 4 levels, FPNHead channels 128 (mmseg's fpn_r50 base);
# - AdamW lr 1e-4 at total batch 16 (4 GPUs x 4 images) for 80k iterations, weight decay 1e-4,
#   poly lr power 0.9 down to 0 (eta_min=0: the base schedule's eta_min=1e-4 would freeze an
#   AdamW rate of 1e-4). This is PVT's 80k form; PoolFormer and SPANetV2 run the same rate per
#   image as 2e-4 at batch 32 for 40k. The lr is tied to the batch: `--auto-scale-lr` (base 16)
#   keeps 1e-4 per 16 images at other totals; halve max_iters and the poly end when doubling
#   the batch to keep 80k x 16 images;
# - backbone stages from the converted ImageNet-1k weights; every output norm starts new
#   (weight 1, bias 0), as in the official dense backbone;
# - test: resize to 2048x512 keeping the ratio, then ResizeToMultiple(32) (PoolFormer's
#   AlignResize; mmseg's PoolFormer configs).
# Not released, so not checked against a release: backbone drop path 0.1 (S) / 0.2 (M), the
# ImageNet rates of the variants (PoolFormer uses 0, SPANetV2 0.15-0.3).
# Difference in form: mmengine's PolyLR reaches 0 at the last iteration, mmcv 1.x's one later.
# Precision: fp32, as PVT and PoolFormer train; SPANetV2's configs train with fp16 AMP
# (AmpOptimWrapper): `--amp` gives that.
# The head keeps the base's SyncBN; mmengine turns it into BN in a non-distributed run.
# Reported mIoU: 45.4.
# Pretrained weights: python tools/model_converters/spanet_official_to_mm.py \
#     spanet-small.pth checkpoints/spanet_s_in1k.pth
# or train from scratch on purpose: --cfg-options model.backbone.init_cfg=None
_base_ = [
    'mmseg::_base_/models/fpn_r50.py',
    'mmseg::_base_/datasets/ade20k.py',
    'mmseg::_base_/default_runtime.py',
    'mmseg::_base_/schedules/schedule_80k.py',
    '../_base_/spanet_runtime.py',
]

custom_imports = dict(imports=['spanet_mm'], allow_failed_imports=False)

crop_size = (512, 512)
data_preprocessor = dict(size=crop_size)
model = dict(
    data_preprocessor=data_preprocessor,
    pretrained=None,
    backbone=dict(
        _delete_=True,
        type='SPANet',
        arch='s',
        out_indices=(0, 1, 2, 3),
        drop_path_rate=0.1,
        init_cfg=dict(
            type='Pretrained',
            checkpoint='checkpoints/spanet_s_in1k.pth',
            prefix='backbone.',
            load_out_norms=())),
    neck=dict(in_channels=[64, 128, 320, 512], out_channels=256, num_outs=4),
    decode_head=dict(num_classes=150))

test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(2048, 512), keep_ratio=True),
    dict(type='ResizeToMultiple', size_divisor=32),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='PackSegInputs'),
]
train_dataloader = dict(batch_size=4)
val_dataloader = dict(dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader

# schedule_80k's top-level `optimizer` (SGD) is read by nothing: emptied, so that the merged
# config names one optimizer.
optimizer = dict(_delete_=True)
optim_wrapper = dict(
    constructor='CheckedOptimWrapperConstructor',  # refuses paramwise_cfg typos
    optimizer=dict(_delete_=True, type='AdamW', lr=1e-4, weight_decay=1e-4),
    clip_grad=None)
param_scheduler = [
    dict(type='PolyLR', power=0.9, eta_min=0.0, begin=0, end=80000, by_epoch=False),
]
# Total batch 16 = 4 GPUs x 4 images; `tools/train.py --auto-scale-lr` rescales lr for others.
auto_scale_lr = dict(enable=False, base_batch_size=16)
