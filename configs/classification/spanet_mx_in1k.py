# SPANet-MX on ImageNet-1k, the official recipe (see _base_/spanet_in1k_recipe.py):
# drop path 0.3, eval crop pct 0.9 (bicubic resize to 248, 224 centre crop). Reported top-1: 83.8.
# Evaluate converted official weights:
#   python tools/test.py configs/classification/spanet_mx_in1k.py checkpoints/spanet_mx_in1k.pth
_base_ = './_base_/spanet_in1k_recipe.py'

custom_imports = dict(imports=['spanet_mm'], allow_failed_imports=False)

model = dict(
    backbone=dict(arch='mx', drop_path_rate=0.3),
    head=dict(in_channels=512))
