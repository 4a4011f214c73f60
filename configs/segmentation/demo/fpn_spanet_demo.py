# Demo: the SPANet Semantic FPN recipe (../fpn_spanet_s_80k.py) on the synthetic ADE20K-layout
# set of tools/generate_demo_data.py (the first 4 ADE20K classes: wall, building, sky, floor;
# 48 training / 12 validation images of 128x128), with a tiny SPANet trained from scratch in a
# few minutes on a CPU. `make demo` runs it.
# Changed from the real config: data paths and classes, image scale (128 crops), a tiny arch, no
# pretrained weights, the schedule (200 iterations, lr 1e-3) and no photometric distortion (the
# classes differ by colour). The head keeps SyncBN: mmengine builds BN in a non-distributed run,
# and tools/train.py does so in a CPU DDP run (PyTorch has no SyncBN on CPUs).
_base_ = '../fpn_spanet_s_80k.py'

custom_imports = dict(imports=['spanet_mm'], allow_failed_imports=False)

data_root = 'data/demo/ade'
metainfo = dict(
    classes=('wall', 'building', 'sky', 'floor'),
    palette=[[120, 120, 120], [180, 120, 120], [6, 230, 230], [80, 50, 50]])
crop_size = (128, 128)
max_iters = 200

model = dict(
    data_preprocessor=dict(size=crop_size),
    backbone=dict(
        arch=dict(_delete_=True, layers=[1, 1, 1, 1], embed_dims=[32, 64, 96, 128]),
        drop_path_rate=0.,
        init_cfg=None),
    neck=dict(in_channels=[32, 64, 96, 128]),
    decode_head=dict(num_classes=4))

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='RandomResize', scale=(512, 128), ratio_range=(0.75, 1.5), keep_ratio=True),
    dict(type='RandomCrop', crop_size=crop_size, cat_max_ratio=0.75),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackSegInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(512, 128), keep_ratio=True),
    dict(type='ResizeToMultiple', size_divisor=32),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='PackSegInputs'),
]
train_dataloader = dict(
    batch_size=4,
    num_workers=0,
    persistent_workers=False,
    dataset=dict(data_root=data_root, metainfo=metainfo, pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=1,
    num_workers=0,
    persistent_workers=False,
    dataset=dict(data_root=data_root, metainfo=metainfo, pipeline=test_pipeline))
test_dataloader = val_dataloader

optim_wrapper = dict(optimizer=dict(lr=1e-3))
param_scheduler = [
    dict(type='PolyLR', power=0.9, eta_min=0.0, begin=0, end=max_iters, by_epoch=False),
]
train_cfg = dict(max_iters=max_iters, val_interval=max_iters)
default_hooks = dict(
    logger=dict(interval=25),
    checkpoint=dict(interval=max_iters, max_keep_ckpts=1))
randomness = dict(seed=0)
