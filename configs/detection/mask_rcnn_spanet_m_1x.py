# Mask R-CNN with SPANet-M on COCO, 1x: the recipe and differences of mask_rcnn_spanet_s_1x.py
# (AdamW lr 2e-4, wd 1e-4, total batch 8 = 4 GPUs x 2, drop path 0, new output norms) with the
# M backbone (the official "S36", local_configs/spanet/S36/).
# Reported box/mask AP: 45.2/41.0.
# Pretrained weights: python tools/model_converters/spanet_official_to_mm.py \
#     spanet-medium.pth checkpoints/spanet_m_in1k.pth
_base_ = './mask_rcnn_spanet_s_1x.py'

custom_imports = dict(imports=['spanet_mm'], allow_failed_imports=False)

model = dict(
    backbone=dict(
        arch='m',
        init_cfg=dict(checkpoint='checkpoints/spanet_m_in1k.pth')))
