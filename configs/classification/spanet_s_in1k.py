# SPANet-S on ImageNet-1k, the official recipe (see _base_/spanet_in1k_recipe.py):
# drop path 0.1, eval crop pct 0.9 (bicubic resize to 248, 224 centre crop). Reported top-1: 83.1.
# Evaluate converted official weights:
#   python tools/test.py configs/classification/spanet_s_in1k.py checkpoints/spanet_s_in1k.pth
_base_ = './_base_/spanet_in1k_recipe.py'

custom_imports = dict(imports=['spanet_mm'], allow_failed_imports=False)

model = dict(
    backbone=dict(arch='s', drop_path_rate=0.1),
    head=dict(in_channels=512))
