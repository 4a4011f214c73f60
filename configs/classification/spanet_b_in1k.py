# SPANet-B on ImageNet-1k, the official recipe (see _base_/spanet_in1k_recipe.py):
# drop path 0.3, eval crop pct 0.95 (bicubic resize to 235, 224 centre crop). Reported top-1: 84.0.
# Official batch 1024 = 4 GPUs x 64 x 4 accumulation steps; here 8 GPUs x 128 (or 4 x 128 with
# optim_wrapper.accumulative_counts=2). Remaining differences from the official run
# (random-crop interpolation, which checkpoints are kept): see the base's header.
# Evaluate converted official weights:
#   python tools/test.py configs/classification/spanet_b_in1k.py checkpoints/spanet_b_in1k.pth
_base_ = './_base_/spanet_in1k_recipe.py'

custom_imports = dict(imports=['spanet_mm'], allow_failed_imports=False)

model = dict(
    backbone=dict(arch='b', drop_path_rate=0.3),
    head=dict(in_channels=768))

# crop pct 0.95: floor(224 / 0.95) = 235, as timm computes the official eval size.
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='ResizeEdge', scale=235, edge='short', backend='pillow', interpolation='bicubic'),
    dict(type='CenterCrop', crop_size=224),
    dict(type='PackInputs'),
]
val_dataloader = dict(dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader
