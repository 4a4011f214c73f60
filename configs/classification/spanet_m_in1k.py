# SPANet-M on ImageNet-1k, the official recipe (see _base_/spanet_in1k_recipe.py):
# drop path 0.2, eval crop pct 0.9 (bicubic resize to 248, 224 centre crop). Reported top-1: 83.5.
# Official batch 1024 = 4 GPUs x 64 x 4 accumulation steps; here 8 GPUs x 128 (or 4 x 128 with
# optim_wrapper.accumulative_counts=2). Remaining differences from the official run
# (random-crop interpolation, which checkpoints are kept): see the base's header.
# Evaluate converted official weights:
#   python tools/test.py configs/classification/spanet_m_in1k.py checkpoints/spanet_m_in1k.pth
_base_ = './_base_/spanet_in1k_recipe.py'

custom_imports = dict(imports=['spanet_mm'], allow_failed_imports=False)

model = dict(
    backbone=dict(arch='m', drop_path_rate=0.2),
    head=dict(in_channels=512))
