# Demo: the SPANet Mask R-CNN recipe (../mask_rcnn_spanet_s_1x.py) on the synthetic COCO-format
# set of tools/generate_demo_data.py (2 classes, circle and square, 64 train / 16 val images of
# 128x128), with a tiny SPANet trained from scratch in a few minutes on a CPU. `make demo` runs it.
# Changed from the real config: data paths and classes, image scale (128), a tiny arch, no
# pretrained weights, the schedule (lr 1e-3, 12 short epochs) and, for CPU speed, narrower
# neck and heads (64 FPN channels instead of 256, box head FCs 256 instead of 1024) and 128
# sampled RoIs per image instead of 512.
_base_ = '../mask_rcnn_spanet_s_1x.py'

custom_imports = dict(imports=['spanet_mm'], allow_failed_imports=False)

data_root = 'data/demo/coco/'
metainfo = dict(classes=('circle', 'square'), palette=[(220, 20, 60), (0, 0, 230)])
image_scale = (128, 128)

model = dict(
    backbone=dict(
        arch=dict(_delete_=True, layers=[1, 1, 1, 1], embed_dims=[32, 64, 96, 128]),
        init_cfg=None),
    neck=dict(in_channels=[32, 64, 96, 128], out_channels=64),
    rpn_head=dict(in_channels=64, feat_channels=64),
    roi_head=dict(
        bbox_roi_extractor=dict(out_channels=64),
        bbox_head=dict(in_channels=64, fc_out_channels=256, num_classes=2),
        mask_roi_extractor=dict(out_channels=64),
        mask_head=dict(in_channels=64, conv_out_channels=64, num_classes=2)),
    train_cfg=dict(rcnn=dict(sampler=dict(num=128))))

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='Resize', scale=image_scale, keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=image_scale, keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='PackDetInputs',
         meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor')),
]
train_dataloader = dict(
    batch_size=4,
    num_workers=0,
    persistent_workers=False,
    dataset=dict(
        data_root=data_root,
        metainfo=metainfo,
        ann_file='annotations/instances_train2017.json',
        data_prefix=dict(img='train2017/'),
        pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=4,
    num_workers=0,
    persistent_workers=False,
    dataset=dict(
        data_root=data_root,
        metainfo=metainfo,
        ann_file='annotations/instances_val2017.json',
        data_prefix=dict(img='val2017/'),
        pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + 'annotations/instances_val2017.json')
test_evaluator = val_evaluator

optim_wrapper = dict(optimizer=dict(lr=1e-3))
max_epochs = 12
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-2, by_epoch=False, begin=0, end=30),
    dict(type='MultiStepLR', begin=0, end=max_epochs, by_epoch=True, milestones=[9, 11],
         gamma=0.1),
]
train_cfg = dict(max_epochs=max_epochs, val_interval=max_epochs)
default_hooks = dict(
    logger=dict(interval=8),
    checkpoint=dict(interval=max_epochs, max_keep_ckpts=1))
log_processor = dict(window_size=8)
randomness = dict(seed=0)
