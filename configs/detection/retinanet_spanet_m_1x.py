# RetinaNet with SPANet-M on COCO, 1x: the recipe and differences of retinanet_spanet_s_1x.py
# (AdamW lr 1e-4, wd 1e-4, total batch 16 = 4 GPUs x 4, drop path 0, FPN on stages 1-3, new
# output norms) with the M backbone (the official "S36", local_configs/spanet/S36/).
# Reported box AP: 44.0.
# Pretrained weights: python tools/model_converters/spanet_official_to_mm.py \
#     spanet-medium.pth checkpoints/spanet_m_in1k.pth
_base_ = './retinanet_spanet_s_1x.py'

custom_imports = dict(imports=['spanet_mm'], allow_failed_imports=False)

model = dict(
    backbone=dict(
        arch='m',
        init_cfg=dict(checkpoint='checkpoints/spanet_m_in1k.pth')))
