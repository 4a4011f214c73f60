# The official SPANet ImageNet-1k recipe (DoranLyong/SPANet-official: timm's train.py with its
# defaults and scripts/spanet/train_spanet_*.sh), on mmpretrain's bases. The leaf configs
# spanet_{s,m,mx,b,bx}_in1k.py pick the arch, its drop path and its eval crop.
# tests/data/official_recipes.yml records the official values; tests/test_configs/test_recipes.py checks
# the merged configs against it.
#
# - Batch: 1024 in all. The official runs: 4 GPUs x 128 x 2 gradient-accumulation steps (S),
#   4 GPUs x 64 x 4 (M, MX, B, BX). Here 128 per GPU: 8 GPUs give 1024; on 4 GPUs add
#   `--cfg-options optim_wrapper.accumulative_counts=2` (and no `--auto-scale-lr`, which counts
#   GPUs x batch_size only). SPANet has no BatchNorm, so accumulation equals the larger batch.
# - Data: RandomResizedCrop 224 (scale 0.08-1, ratio 3/4-4/3), flip 0.5, RandAugment
#   rand-m9-mstd0.5-inc1, random erasing 0.25 (per-pixel noise); eval: bicubic resize of the
#   short edge to floor(224 / crop_pct), 224 centre crop. Difference: the official crop draws
#   its interpolation at random (bilinear or bicubic, timm's 'random'), and so does each
#   RandAugment op (timm sets no interpolation for 'random'); mmpretrain's RandomResizedCrop
#   and RandAugment take one, bicubic here. Difference: timm's prefetching loader (on by
#   default) erases after Mixup/CutMix, on the normalised batch, with unclipped N(0, 1) noise;
#   mmpretrain erases each image in the pipeline, before mixing, with noise of the same
#   distribution in pixel space (clipped to 0..255). Same rate, areas and aspects.
# - Loading: the last incomplete batch of an epoch is dropped, as timm's training loader does.
#   Difference: timm seeds 42 + rank by default; here mmengine draws a seed unless
#   `--cfg-options randomness.seed=42 randomness.diff_rank_seed=True`.
# - Model: Mixup 0.8 or CutMix 1.0 (one of the two per batch, as timm's switch prob 0.5), label
#   smoothing 0.1, fp32, no EMA; init: the backbone's default (the official init, see
#   SPANet.init_weights) and a truncated normal (std 0.02, zero bias) head.
# - Optimizer: AdamW lr 1e-3 at batch 1024, betas (0.9, 0.999), eps 1e-8, weight decay 0.05,
#   none on norms, biases and shortcut scales (every 1-D parameter, as timm), no clipping.
# - Schedule: timm's cosine stepped once per epoch, reproduced at every epoch (see below):
#   warm-up 1e-6 -> 1e-3 over epochs 0-5, cosine over epochs 0-300 to 1e-5 (epoch 150:
#   5.05e-4), then 10 cool-down epochs at 1e-5: 310 epochs.
# - Validation every epoch; the best top-1 checkpoint is kept, as are the last 10 epochs.
#   Difference: timm keeps the 10 best-scoring epochs (plus the last and the best); mmengine
#   can keep only the last N. The released weights are the best epoch either way.
_base_ = [
    'mmpretrain::_base_/datasets/imagenet_bs128_poolformer_small_224.py',
    'mmpretrain::_base_/schedules/imagenet_bs1024_adamw_swin.py',
    'mmpretrain::_base_/default_runtime.py',
    '../../_base_/spanet_runtime.py',
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

# mmpretrain's own tools/train.py fills in these dataloader settings unless a config states
# them; stated here, so that every tool loads alike: samples collated into batch tensors, pinned
# host memory, persistent workers (RNGStateHook re-seeds them per epoch: resume stays exact).
train_dataloader = dict(
    collate_fn=dict(type='default_collate'), pin_memory=True, persistent_workers=True,
    drop_last=True)
val_dataloader = dict(
    collate_fn=dict(type='default_collate'), pin_memory=True, persistent_workers=True)
test_dataloader = val_dataloader

optim_wrapper = dict(
    # mmengine's default constructor, refusing paramwise_cfg keys it would ignore (typos).
    constructor='CheckedOptimWrapperConstructor',
    optimizer=dict(type='AdamW', lr=1e-3, weight_decay=0.05, eps=1e-8, betas=(0.9, 0.999)),
    paramwise_cfg=dict(
        _delete_=True, norm_decay_mult=0.0, bias_decay_mult=0.0, flat_decay_mult=0.0),
)

# timm evaluates its schedule at the epoch index e, once per epoch: 1e-6 + e * (1e-3 - 1e-6) / 5
# for e < 5, then the cosine over 0..300 at e, then 1e-5. Both schedulers here step per epoch
# (no convert_to_iter_based) and both start at epoch 0, so the cosine keeps timm's phase:
# - LinearLR reaches end_factor at step `end - 1`, so end=6 gives timm's five warm-up values at
#   epochs 0-4 and the full rate at epoch 5; meanwhile the cosine scales the rate by its own
#   factor, which is within 0.1% of 1 over these epochs (both schedules agree within 0.05%);
# - the cosine with T_max=300 reaches 1e-5 at epoch 300 (end=301), where it stays for the 10
#   cool-down epochs.
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-3, by_epoch=True, begin=0, end=6),
    dict(type='CosineAnnealingLR', T_max=300, eta_min=1e-5, by_epoch=True, begin=0, end=301),
]
train_cfg = dict(by_epoch=True, max_epochs=310, val_interval=1)
default_hooks = dict(
    checkpoint=dict(
        type='CheckpointHook', interval=1, save_best='accuracy/top1', rule='greater',
        max_keep_ckpts=10))
auto_scale_lr = dict(base_batch_size=1024)
