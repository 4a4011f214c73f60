# The official SPANet ImageNet-1k recipe (timm, DeiT-style), on mmpretrain's bases. The leaf
# configs spanet_{s,m,mx,b,bx}_in1k.py pick the arch, its drop path and its eval crop.
#
# - Data: mmpretrain's PoolFormer ImageNet pipeline: RandomResizedCrop 224 (bicubic; the
#   official code draws the interpolation at random), flip, RandAugment rand-m9-mstd0.5-inc1,
#   random erasing 0.25; eval: bicubic resize of the short edge to 224 / crop_pct, 224 crop.
#   128 images per GPU; the official runs used a total batch of 1024 (8 x 128).
# - Model: Mixup 0.8, CutMix 1.0, label smoothing 0.1 (the official runs use no EMA).
# - Optimizer: AdamW lr 1e-3 at batch 1024 (`--auto-scale-lr` rescales it for other totals),
#   weight decay 0.05, none on norms, biases and shortcut scales (every 1-D parameter).
# - Schedule: 5 linear warm-up epochs from 1e-6, cosine to 1e-5 at epoch 300, then 10 cool-down
#   epochs at 1e-5 (timm's `--epochs 300 --cooldown-epochs 10`: 310 epochs in all).
_base_ = [
    'mmpretrain::_base_/datasets/imagenet_bs128_poolformer_small_224.py',
    'mmpretrain::_base_/schedules/imagenet_bs1024_adamw_swin.py',
    'mmpretrain::_base_/default_runtime.py',
]

model = dict(
    type='ImageClassifier',
    backbone=dict(type='SPANet', arch='s', drop_path_rate=0.1),
    neck=dict(type='GlobalAveragePooling'),
    head=dict(
        type='LinearClsHead',
        num_classes=1000,
        in_channels=512,
        loss=dict(type='LabelSmoothLoss', label_smooth_val=0.1, mode='original'),
        init_cfg=dict(type='TruncNormal', layer='Linear', std=.02, bias=0.)),
    train_cfg=dict(augments=[
        dict(type='Mixup', alpha=0.8),
        dict(type='CutMix', alpha=1.0),
    ]),
)

optim_wrapper = dict(
    optimizer=dict(type='AdamW', lr=1e-3, weight_decay=0.05, eps=1e-8, betas=(0.9, 0.999)),
    paramwise_cfg=dict(
        _delete_=True, norm_decay_mult=0.0, bias_decay_mult=0.0, flat_decay_mult=0.0),
)

param_scheduler = [
    dict(type='LinearLR', start_factor=1e-3, by_epoch=True, begin=0, end=5,
         convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', eta_min=1e-5, by_epoch=True, begin=5, end=300),
]
train_cfg = dict(by_epoch=True, max_epochs=310, val_interval=10)
auto_scale_lr = dict(base_batch_size=1024)
