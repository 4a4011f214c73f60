# SPANet-BX on ImageNet-1k, the official recipe (see _base_/spanet_in1k_recipe.py): SPANet-B's
# config (eval crop pct 0.95: bicubic resize to 235, 224 centre crop) with drop path 0.5.
# Reported top-1: 84.4.
# Evaluate converted official weights:
#   python tools/test.py configs/classification/spanet_bx_in1k.py checkpoints/spanet_bx_in1k.pth
_base_ = './spanet_b_in1k.py'

custom_imports = dict(imports=['spanet_mm'], allow_failed_imports=False)

model = dict(backbone=dict(arch='bx', drop_path_rate=0.5))
