# Demo: the SPANet ImageNet recipe (../spanet_s_in1k.py) on the synthetic ImageNet-layout set of
# tools/generate_demo_data.py (4 shape classes, 160 train / 40 val images, 64x64), with a tiny
# SPANet, trained from scratch in about a minute on a CPU. `make demo` runs it.
# Changed from the real config: data paths and classes, image scale (64), a tiny arch, no
# pretrained weights, the schedule (30 epochs, lr 2e-3), no Mixup/CutMix/RandAugment/erasing
# (they slow learning down on 160 images), top-1 only (4 classes).
_base_ = '../spanet_s_in1k.py'

custom_imports = dict(imports=['spanet_mm'], allow_failed_imports=False)

data_root = 'data/demo/imagenet'
classes = ['circle', 'square', 'triangle', 'cross']
image_size = 64

data_preprocessor = dict(num_classes=len(classes))
model = dict(
    backbone=dict(
        arch=dict(_delete_=True, layers=[1, 1, 1, 1], embed_dims=[32, 64, 96, 128]),
        drop_path_rate=0.,
        init_cfg=None),
    head=dict(num_classes=len(classes), in_channels=128),
    train_cfg=None)

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='RandomResizedCrop', scale=image_size, crop_ratio_range=(0.6, 1.0)),
    dict(type='RandomFlip', prob=0.5, direction='horizontal'),
    dict(type='PackInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='ResizeEdge', scale=image_size, edge='short'),
    dict(type='CenterCrop', crop_size=image_size),
    dict(type='PackInputs'),
]
train_dataloader = dict(
    batch_size=16,
    num_workers=0,
    persistent_workers=False,
    dataset=dict(data_root=data_root, split='train', metainfo=dict(classes=classes),
                 pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=20,
    num_workers=0,
    persistent_workers=False,
    dataset=dict(data_root=data_root, split='val', metainfo=dict(classes=classes),
                 pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(type='Accuracy', topk=(1, ))
test_evaluator = val_evaluator

optim_wrapper = dict(optimizer=dict(lr=2e-3))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-2, by_epoch=True, begin=0, end=2,
         convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', eta_min=1e-5, by_epoch=True, begin=2, end=30),
]
train_cfg = dict(by_epoch=True, max_epochs=30, val_interval=30)
default_hooks = dict(
    logger=dict(interval=10),
    checkpoint=dict(interval=30, max_keep_ckpts=1))
randomness = dict(seed=0)
