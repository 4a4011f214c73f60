# SPANet-BX on ImageNet-1k, the official recipe (see _base_/spanet_in1k_recipe.py): SPANet-B's
# config (eval crop pct 0.95: bicubic resize to 235, 224 centre crop) with drop path 0.5.
# Reported top-1: 84.4.
# Official batch 1024 = 4 GPUs x 64 x 4 accumulation steps; here 8 GPUs x 128 (or 4 x 128 with
# optim_wrapper.accumulative_counts=2). Remaining differences from the official run
# (random-crop interpolation, which checkpoints are kept): see the base's header.
# Evaluate converted official weights:
#   python tools/test.py configs/classification/spanet_bx_in1k.py checkpoints/spanet_bx_in1k.pth
_base_ = './spanet_b_in1k.py'

custom_imports = dict(imports=['spanet_mm'], allow_failed_imports=False)

model = dict(backbone=dict(arch='bx', drop_path_rate=0.5))
