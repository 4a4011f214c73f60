"""A loss step (with backward) and a predict step for each task, built from the shipped configs
(the demo configs, which inherit the real ones and use a tiny SPANet), on tiny inputs."""
import os.path as osp

import pytest
import torch
from mmengine.structures import PixelData

from conftest import REPO_ROOT
from spanet_mm.apis import init_model

TINY_ARCH = dict(_delete_=True, layers=[1, 1, 1, 1], embed_dims=[32, 64, 96, 128])
CONFIG_DIR = osp.join(REPO_ROOT, 'configs')


pytestmark = pytest.mark.usefixtures('one_thread')


def build(rel_path, **options):
    """The config's model (``init_model``), from scratch, with a fixed seed."""
    torch.manual_seed(0)
    return init_model(osp.join(CONFIG_DIR, rel_path),
                      cfg_options={'model.backbone.init_cfg': None, **options})


def loss_step(model, packed):
    model.train()
    data = model.data_preprocessor(packed, True)
    losses = model(**data, mode='loss')
    assert losses and all(k for k in losses)
    total = 0
    for name, value in losses.items():
        values = value if isinstance(value, (list, tuple)) else [value]
        for v in values:
            assert torch.isfinite(v).all(), f'{name} is not finite: {v}'
            if 'loss' in name:
                total = total + v.sum()
    total.backward()
    grads = [p.grad for p in model.backbone.parameters() if p.requires_grad]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)
    return losses


def predict_step(model, packed):
    model.eval()
    with torch.no_grad():
        data = model.data_preprocessor(packed, False)
        return model(**data, mode='predict')


@pytest.mark.parametrize('rel_path,options', [
    ('detection/demo/mask_rcnn_spanet_demo.py', {}),
    ('detection/retinanet_spanet_s_1x.py', {
        'model.backbone.arch': dict(TINY_ARCH),
        'model.neck.in_channels': [64, 96, 128], 'model.bbox_head.num_classes': 2}),
])
def test_detection_loss_and_predict(rel_path, options):
    from mmdet.testing import demo_mm_inputs
    model = build(rel_path, **options)
    with_mask = 'mask_rcnn' in rel_path
    packed = demo_mm_inputs(2, [[3, 128, 128], [3, 96, 120]], num_items=[3, 1], num_classes=2,
                            with_mask=with_mask)
    losses = loss_step(model, packed)
    assert {'loss_cls', 'loss_bbox'} <= set(losses)
    if with_mask:
        assert {'loss_rpn_cls', 'loss_mask'} <= set(losses)
    results = predict_step(model, packed)
    assert len(results) == 2
    for sample, shape in zip(results, [(128, 128), (96, 120)]):
        pred = sample.pred_instances
        assert pred.bboxes.shape[1] == 4 and len(pred.scores) == len(pred.labels)
        if with_mask:
            assert len(pred.masks) == len(pred.bboxes)
            if len(pred.masks):
                assert tuple(pred.masks.shape[1:]) == tuple(sample.ori_shape) == shape


@pytest.mark.slow  # mmseg models at the config image size
def test_segmentation_loss_and_predict():
    from mmseg.structures import SegDataSample
    model = build('segmentation/demo/fpn_spanet_demo.py')

    def pack(sizes):
        samples, inputs = [], []
        for h, w in sizes:
            inputs.append(torch.randint(0, 256, (3, h, w), dtype=torch.uint8))
            sample = SegDataSample(
                metainfo=dict(img_shape=(h, w), ori_shape=(h, w), pad_shape=(h, w)))
            label = torch.randint(0, 4, (1, h, w))
            label[:, :4] = 255  # ignored border, as reduce_zero_label makes it
            sample.gt_sem_seg = PixelData(data=label)
            samples.append(sample)
        return dict(inputs=inputs, data_samples=samples)

    # training pads to the 128x128 crop size; testing takes one size per batch
    losses = loss_step(model, pack([(128, 128), (96, 120)]))
    assert 'decode.loss_ce' in losses and 'decode.acc_seg' in losses
    results = predict_step(model, pack([(96, 160), (96, 160)]))
    for result, (h, w) in zip(results, [(96, 160), (96, 160)]):
        pred = result.pred_sem_seg.data
        assert pred.shape == (1, h, w)
        assert int(pred.min()) >= 0 and int(pred.max()) < 4
        assert result.seg_logits.data.shape == (4, h, w)


def test_classification_loss_and_predict():
    from mmpretrain.structures import DataSample
    model = build('classification/demo/spanet_demo_cls.py')
    inputs = [torch.randint(0, 256, (3, 64, 64), dtype=torch.uint8) for _ in range(4)]
    samples = [DataSample().set_gt_label(i % 4) for i in range(4)]
    packed = dict(inputs=inputs, data_samples=samples)
    losses = loss_step(model, packed)
    assert set(losses) == {'loss'}
    results = predict_step(model, packed)
    assert len(results) == 4
    for result in results:
        assert result.pred_score.shape == (4, )
        assert torch.allclose(result.pred_score.sum(), torch.tensor(1.), atol=1e-5)
        assert 0 <= int(result.pred_label) < 4


def test_real_classification_config_loss_step():
    """The ImageNet recipe itself (Mixup/CutMix, label smoothing) at a tiny size."""
    from mmpretrain.structures import DataSample
    model = build('classification/spanet_s_in1k.py', **{
        'model.backbone.arch': dict(TINY_ARCH),
        'model.head.in_channels': 128})
    inputs = [torch.randint(0, 256, (3, 64, 64), dtype=torch.uint8) for _ in range(2)]
    samples = [DataSample().set_gt_label(i) for i in (3, 999)]
    losses = loss_step(model, dict(inputs=inputs, data_samples=samples))
    assert float(losses['loss']) > 0
