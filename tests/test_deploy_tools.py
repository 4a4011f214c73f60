"""tools/deployment/pytorch2onnx.py, tools/analysis/get_flops.py and tools/analysis/benchmark.py."""
import json
import os.path as osp
import subprocess
import sys

import pytest
import torch

from spanet_mm.models import SPANet

REPO_ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)

SMALL_ARCH = "dict(layers=[1, 1, 2, 1], embed_dims=[16, 24, 32, 40])"
CLS_CONFIG = f"""
custom_imports = dict(imports=['spanet_mm'], allow_failed_imports=False)
model = dict(
    type='ImageClassifier',
    backbone=dict(type='SPANet', arch={SMALL_ARCH}),
    neck=dict(type='GlobalAveragePooling'),
    head=dict(type='LinearClsHead', num_classes=7, in_channels=40))
"""
# A detector config: only cfg.model.backbone is used (mmdet is not imported).
DET_CONFIG = f"""
custom_imports = dict(imports=['spanet_mm'], allow_failed_imports=False)
model = dict(
    type='RetinaNet',
    backbone=dict(type='SPANet', arch={SMALL_ARCH}, out_indices=(1, 2, 3)),
    neck=dict(type='FPN', in_channels=[24, 32, 40], out_channels=16, num_outs=5))
"""


def write(path, text):
    path.write_text(text)
    return str(path)


def random_checkpoint(tmp_path, config, name):
    """An OpenMMLab checkpoint of the config's model with random (non-trivial) weights."""
    from tools.deployment.pytorch2onnx import build_model
    _, target, prefix, _ = build_model(config)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in target.parameters():
            param.copy_(torch.randn(param.shape, generator=gen) * 0.3)
    state_dict = {prefix + k: v for k, v in target.state_dict().items()}
    path = str(tmp_path / name)
    torch.save({'state_dict': state_dict, 'meta': {}}, path)
    return path


def export(argv):
    from tools.deployment.pytorch2onnx import export as run_export
    from tools.deployment.pytorch2onnx import parse_args
    return run_export(parse_args(argv))


@pytest.mark.parametrize('dynamic', [False, True])
def test_export_classifier(tmp_path, dynamic):
    import onnx
    config = write(tmp_path / 'cls.py', CLS_CONFIG)
    ckpt = random_checkpoint(tmp_path, config, 'cls.pth')
    out = str(tmp_path / 'cls.onnx')
    worst = export([config, ckpt, out, '--shape', '64', '96'] + (['--dynamic'] if dynamic else []))
    assert worst <= 1e-4
    model = onnx.load(out)
    assert model.opset_import[0].version == 17
    assert [o.name for o in model.graph.output] == ['logits']
    dims = model.graph.input[0].type.tensor_type.shape.dim
    if dynamic:
        assert [d.dim_param for d in dims] == ['batch', '', 'height', 'width']
    else:
        assert [d.dim_value for d in dims] == [1, 3, 64, 96]
    assert not list(tmp_path.glob('*.tmp'))


def test_export_dense_backbone_dynamic_odd_sizes(tmp_path):
    import onnxruntime as ort
    from tools.deployment.pytorch2onnx import build_model, load_weights
    config = write(tmp_path / 'det.py', DET_CONFIG)
    ckpt = random_checkpoint(tmp_path, config, 'det.pth')
    out = str(tmp_path / 'det.onnx')
    export([config, ckpt, out, '--shape', '64', '64', '--dynamic', '--verify-shape', '75', '53'])
    model, target, prefix, names = build_model(config)
    load_weights(target, ckpt, prefix)
    model.eval()
    session = ort.InferenceSession(out, providers=['CPUExecutionProvider'])
    assert [o.name for o in session.get_outputs()] == ['feat1', 'feat2', 'feat3']
    x = torch.randn(1, 3, 33, 47)  # a third size, odd and non-square
    with torch.no_grad():
        expected = model(x)
    got = session.run(None, {'input': x.numpy()})
    for a, b in zip(got, expected):
        assert a.shape == tuple(b.shape)
        assert abs(a - b.numpy()).max() <= 1e-4


def test_export_rejects_wrong_checkpoint(tmp_path):
    from tools.deployment.pytorch2onnx import ExportError
    config = write(tmp_path / 'cls.py', CLS_CONFIG)
    model = SPANet(dict(layers=[1, 1, 1, 1], embed_dims=[16, 24, 32, 40]), init_cfg=None)
    bad = str(tmp_path / 'bad.pth')
    torch.save({'state_dict': {'backbone.' + k: v for k, v in model.state_dict().items()},
                'meta': {}}, bad)
    out = tmp_path / 'x.onnx'
    with pytest.raises(ExportError, match='missing key'):
        export([config, bad, str(out), '--shape', '64', '64'])
    with pytest.raises(ExportError, match='not found'):
        export([config, str(tmp_path / 'none.pth'), str(out), '--shape', '64', '64'])
    assert not out.exists()


def test_get_flops_matches_paper():
    from tools.analysis.get_flops import build, count
    model, backbone, is_classifier = build(
        osp.join(REPO_ROOT, 'configs', 'classification', 'spanet_s_in1k.py'))
    r = count(model, backbone, is_classifier, (224, 224))
    assert is_classifier
    assert r['params_trainable'] == 28_605_096
    assert r['params_backbone'] == 28_092_096
    assert r['params_model'] + r['params_filters'] == 28_659_780
    assert round(r['macs']['conv'] / 1e9, 4) == 4.6055
    assert round(r['macs']['group_norm'] / 1e9, 4) == 0.0207
    assert round(r['macs']['linear'] / 1e9, 4) == 0.0005
    assert round(r['macs_paper'] / 1e9, 4) == 4.6267
    assert r['macs_lowrank_total'] > r['macs_paper']


@pytest.mark.slow
def test_get_flops_cli_dense_config(tmp_path):
    config = write(tmp_path / 'det.py', DET_CONFIG)
    out = subprocess.run(
        [sys.executable, osp.join(REPO_ROOT, 'tools', 'analysis', 'get_flops.py'), config,
         '--shape', '64', '96'], capture_output=True, text=True, check=True).stdout
    assert 'backbone' in out and 'MACs, paper convention' in out


@pytest.mark.slow
def test_benchmark_smoke(tmp_path):
    out = tmp_path / 'bench.json'
    proc = subprocess.run(
        [sys.executable, osp.join(REPO_ROOT, 'tools', 'analysis', 'benchmark.py'), '--models',
         'spanet-s', 'spanet-s-fft', '--batch', '1', '--size', '32', '--repeats', '1',
         '--warmup', '0', '--threads', '1', '--json', str(out)],
        capture_output=True, text=True, check=True)
    assert '| spanet-s |' in proc.stdout
    result = json.loads(out.read_text())['results']
    assert set(result) == {'spanet-s', 'spanet-s-fft'}
    assert result['spanet-s']['forward_img_s'] > 0
    assert result['spanet-s']['train_peak_MiB'] > 0
    assert result['spanet-s']['forward_vs_fft'] is not None
