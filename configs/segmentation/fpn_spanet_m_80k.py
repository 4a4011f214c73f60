# Semantic FPN with SPANet-M on ADE20K: the recipe and differences of fpn_spanet_s_80k.py
# (AdamW lr 1e-4 at total batch 16 = 4 GPUs x 4 for 80k iterations, wd 1e-4, poly 0.9 to 0,
# 512x512 crops, new output norms) with the M backbone and drop path 0.2 (not released).
# Reported mIoU: 46.2.
# Pretrained weights: python tools/model_converters/spanet_official_to_mm.py \
#     spanet-medium.pth checkpoints/spanet_m_in1k.pth
_base_ = './fpn_spanet_s_80k.py'

custom_imports = dict(imports=['spanet_mm'], allow_failed_imports=False)

model = dict(
    backbone=dict(
        arch='m',
        drop_path_rate=0.2,
        init_cfg=dict(checkpoint='checkpoints/spanet_m_in1k.pth')))
