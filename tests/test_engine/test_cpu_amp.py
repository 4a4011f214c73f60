"""spanet_mm/engine/cpu.py's mixed precision: `tools/train.py --amp` on CPUs, bfloat16 autocast
training steps for every task, and mmcv's float32-only ops under CPU autocast."""
import pytest
import torch
from mmengine.config import Config

from conftest import REPO_ROOT
from spanet_mm.apis import init_model
from spanet_mm.engine import CPUAmpOptimWrapper
from spanet_mm.engine.launch import enable_amp


def build(rel_path):
    torch.manual_seed(0)
    return init_model(f'{REPO_ROOT}/configs/{rel_path}',
                      cfg_options={'model.backbone.init_cfg': None})


def amp_train_step(model, packed):
    """One real train_step under CPUAmpOptimWrapper; returns the dtypes a backbone conv saw."""
    seen = []
    conv = model.backbone.stages[0][0].mlp.fc1
    conv.register_forward_hook(lambda m, i, out: seen.append(out.dtype))
    optim_wrapper = CPUAmpOptimWrapper(optimizer=torch.optim.SGD(model.parameters(), lr=0.01))
    before = [p.detach().clone() for p in model.backbone.parameters()]
    model.train()
    log_vars = model.train_step(packed, optim_wrapper)
    assert all(torch.isfinite(torch.as_tensor(v)).all() for v in log_vars.values())
    changed = [not torch.equal(a, b) for a, b in zip(before, model.backbone.parameters())]
    assert sum(changed) > len(changed) // 2  # the step updated the backbone
    assert all(p.dtype == torch.float32 for p in model.parameters())  # master weights stay fp32
    return seen


def test_detection_with_mmcv_ops():
    from mmdet.testing import demo_mm_inputs
    model = build('detection/demo/mask_rcnn_spanet_demo.py')
    packed = demo_mm_inputs(2, [[3, 128, 128], [3, 96, 120]], num_items=[3, 1], num_classes=2,
                            with_mask=True)
    assert set(amp_train_step(model, packed)) == {torch.bfloat16}


@pytest.mark.slow  # a bf16 training step of a segmentor
def test_segmentation():
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample
    model = build('segmentation/demo/fpn_spanet_demo.py')
    samples = []
    for _ in range(2):
        sample = SegDataSample(metainfo=dict(img_shape=(96, 112), ori_shape=(96, 112)))
        sample.gt_sem_seg = PixelData(data=torch.randint(0, 4, (1, 96, 112)))
        samples.append(sample)
    packed = dict(inputs=[torch.randint(0, 256, (3, 96, 112), dtype=torch.uint8)] * 2,
                  data_samples=samples)
    assert set(amp_train_step(model, packed)) == {torch.bfloat16}


def test_classification():
    from mmpretrain.structures import DataSample
    model = build('classification/demo/spanet_demo_cls.py')
    packed = dict(inputs=[torch.randint(0, 256, (3, 64, 64), dtype=torch.uint8)] * 4,
                  data_samples=[DataSample().set_gt_label(i % 4) for i in range(4)])
    assert set(amp_train_step(model, packed)) == {torch.bfloat16}


@pytest.mark.skipif(torch.cuda.is_available(), reason='checks the CPU choice')
def test_train_tool_picks_the_cpu_wrapper():
    cfg = Config(dict(optim_wrapper=dict(type='OptimWrapper', optimizer=dict(type='SGD'))))
    enable_amp(cfg)
    assert cfg.optim_wrapper.type == 'CPUAmpOptimWrapper'
    assert 'loss_scale' not in cfg.optim_wrapper


@pytest.mark.parametrize('dtype', ['float32', torch.float64], ids=['float32', 'float64'])
def test_non_reduced_dtype_is_refused(dtype):
    """torch.autocast('cpu', dtype=float32/float64) only warns and disables itself, so such a
    wrapper would silently train in full precision: it is refused when built."""
    params = [torch.nn.Parameter(torch.zeros(2))]
    with pytest.raises(AssertionError, match='bfloat16 or float16'):
        CPUAmpOptimWrapper(dtype=dtype, optimizer=torch.optim.SGD(params, lr=0.1))
    for ok in ('bfloat16', torch.float16):  # the two autocast dtypes are accepted
        wrapper = CPUAmpOptimWrapper(dtype=ok, optimizer=torch.optim.SGD(params, lr=0.1))
        assert wrapper.cast_dtype == (getattr(torch, ok) if isinstance(ok, str) else ok)


def test_mmcv_float32_only_ops_under_cpu_autocast():
    """mmcv's CPU nms and RoIAlign kernels take float32 only; under bf16 autocast they get
    float32 and give the autocast dtype, with the float32 kernels' values. Patched once."""
    from mmcv.ops import nms, roi_align
    from mmcv.ops.nms import NMSop

    from spanet_mm.engine import run_mmcv_cpu_ops_in_float32
    gen = torch.Generator().manual_seed(0)
    corners = torch.rand(30, 2, generator=gen) * 50
    boxes = torch.cat([corners, corners + 5 + torch.rand(30, 2, generator=gen) * 20], 1)
    scores = torch.rand(30, generator=gen)
    feats = torch.randn(1, 4, 16, 16, generator=gen)
    rois = torch.tensor([[0., 1., 1., 9., 12.], [0., 0., 3., 15., 15.]])
    _, keep32 = nms(boxes, scores, 0.3)
    pooled32 = roi_align(feats, rois, (3, 3), 1.0, 2)

    run_mmcv_cpu_ops_in_float32()
    forward = NMSop.forward
    run_mmcv_cpu_ops_in_float32()
    assert NMSop.forward is forward  # idempotent: wrapped once
    with torch.autocast('cpu', dtype=torch.bfloat16):
        _, keep16 = nms(boxes.bfloat16(), scores.bfloat16(), 0.3)
        pooled16 = roi_align(feats.bfloat16(), rois.bfloat16(), (3, 3), 1.0, 2)
    assert pooled16.dtype == torch.bfloat16
    torch.testing.assert_close(pooled16.float(), roi_align(
        feats.bfloat16().float(), rois.bfloat16().float(), (3, 3), 1.0, 2), rtol=1e-2, atol=1e-2)
    assert pooled32.shape == pooled16.shape
    # bf16 rounding of the boxes can reorder near-ties only: most kept boxes agree.
    assert len(set(keep16.tolist()) & set(keep32.tolist())) >= 0.8 * len(keep32)
