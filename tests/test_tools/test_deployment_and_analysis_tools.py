"""tools/deployment/pytorch2onnx.py, tools/analysis/get_flops.py and tools/analysis/benchmark.py."""
import argparse
import json
import os
import os.path as osp
import signal
import sys
import threading

import pytest
import torch

from conftest import REPO_ROOT, load_tool, run_python, usage_error
from spanet_mm.apis import init_model
from spanet_mm.checkpoint import CheckpointMismatchError, CheckpointNotFoundError
from spanet_mm.models import SPANet

BENCHMARK = 'tools/analysis/benchmark.py'
CLS_CONFIG = osp.join(REPO_ROOT, 'configs', 'classification', 'demo', 'spanet_demo_cls.py')
# A whole Mask R-CNN of a tiny SPANet (out_indices 0-3); the backbone is exported.
DET_CONFIG = osp.join(REPO_ROOT, 'configs', 'detection', 'demo', 'mask_rcnn_spanet_demo.py')


def random_checkpoint(tmp_path, config, name):
    """An OpenMMLab checkpoint of the config's whole model, its backbone random (non-trivial)."""
    model = init_model(config)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in model.backbone.parameters():
            param.copy_(torch.randn(param.shape, generator=gen) * 0.3)
    path = str(tmp_path / name)
    torch.save({'state_dict': model.state_dict(), 'meta': {}}, path)
    return path


def export(argv):
    from tools.deployment.pytorch2onnx import export as run_export
    from tools.deployment.pytorch2onnx import parse_args
    return run_export(parse_args(argv))


@pytest.mark.slow  # ONNX export and onnxruntime end to end
@pytest.mark.parametrize('dynamic', [False, True])
def test_export_classifier(tmp_path, dynamic):
    import onnx
    ckpt = random_checkpoint(tmp_path, CLS_CONFIG, 'cls.pth')
    out = str(tmp_path / 'cls.onnx')
    worst = export([CLS_CONFIG, ckpt, out, '--shape', '64', '96'] + (['--dynamic'] if dynamic else []))
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
    ckpt = random_checkpoint(tmp_path, DET_CONFIG, 'det.pth')
    out = str(tmp_path / 'det.onnx')
    export([DET_CONFIG, ckpt, out, '--shape', '64', '64', '--dynamic', '--verify-shape', '75',
            '53'])
    model = init_model(DET_CONFIG, ckpt).backbone
    session = ort.InferenceSession(out, providers=['CPUExecutionProvider'])
    assert [o.name for o in session.get_outputs()] == ['feat0', 'feat1', 'feat2', 'feat3']
    x = torch.randn(1, 3, 33, 47)  # a third size, odd and non-square
    with torch.no_grad():
        expected = model(x)
    got = session.run(None, {'input': x.numpy()})
    for a, b in zip(got, expected):
        assert a.shape == tuple(b.shape)
        assert abs(a - b.numpy()).max() <= 1e-4


@pytest.mark.slow  # ONNX export and onnxruntime end to end
def test_export_atol_and_verify_shape(tmp_path, capsys):
    """--verify-shape is the second size checked with --dynamic (batch + 1); the default
    --atol (1e-4) passes, an --atol under the real difference fails with a clear message and
    writes nothing."""
    from tools.deployment.pytorch2onnx import main, parse_args
    assert parse_args(['a.py', 'b.pth', 'c.onnx']).atol == 1e-4
    ckpt = random_checkpoint(tmp_path, CLS_CONFIG, 'cls.pth')
    out = tmp_path / 'cls.onnx'
    argv = [CLS_CONFIG, ckpt, str(out), '--shape', '64', '96', '--dynamic', '--verify-shape',
            '40', '72']
    capsys.readouterr()
    worst = export(argv)
    checked = [line.strip() for line in capsys.readouterr().out.splitlines()
               if 'onnxruntime matches PyTorch' in line]
    assert checked == ['onnxruntime matches PyTorch on input (1, 3, 64, 96)',
                       'onnxruntime matches PyTorch on input (2, 3, 40, 72)']
    assert 0 < worst <= 1e-4 and out.exists()
    out.unlink()
    atol = worst / 2
    with pytest.raises(SystemExit) as excinfo:
        main(argv + ['--atol', repr(atol)])
    message = str(excinfo.value.code)
    assert message.startswith('ERROR: input ('), message
    assert 'differs from PyTorch by' in message and message.endswith(f'(> {atol:g})'), message
    assert not out.exists() and not list(tmp_path.glob('*.tmp'))


def test_export_rejects_wrong_checkpoint(tmp_path):
    # The demo classifier's backbone without its head: every exported tensor must be there.
    backbone = init_model(CLS_CONFIG).backbone
    no_head = str(tmp_path / 'no_head.pth')
    torch.save({'state_dict': {'backbone.' + k: v for k, v in backbone.state_dict().items()},
                'meta': {}}, no_head)
    # Another arch (one block more in stage 0): refused although its head would fit.
    other = SPANet(dict(layers=[2, 1, 1, 1], embed_dims=backbone.embed_dims))
    other_arch = str(tmp_path / 'other_arch.pth')
    torch.save({'state_dict': {'backbone.' + k: v for k, v in other.state_dict().items()},
                'meta': {}}, other_arch)
    out = tmp_path / 'x.onnx'
    with pytest.raises(CheckpointMismatchError, match=r"misses 2 .*\['head\.fc\.weight'"):
        export([CLS_CONFIG, no_head, str(out), '--shape', '64', '64'])
    with pytest.raises(CheckpointMismatchError, match='stages.0.1'):
        export([CLS_CONFIG, other_arch, str(out), '--shape', '64', '64'])
    with pytest.raises(CheckpointNotFoundError, match='none.pth not found'):
        export([CLS_CONFIG, str(tmp_path / 'none.pth'), str(out), '--shape', '64', '64'])
    assert not out.exists()


def test_export_refuses_to_write_over_its_input(tmp_path):
    """OUTPUT == CHECKPOINT (or the config, also through a symlink) would replace it with the
    ONNX file: one ERROR line, before the model is built, and both files left as they were."""
    from tools.deployment.pytorch2onnx import main
    ckpt = random_checkpoint(tmp_path, CLS_CONFIG, 'cls.pth')
    original = open(ckpt, 'rb').read()
    (tmp_path / 'config_link.py').symlink_to(CLS_CONFIG)
    for output, name, src in ((ckpt, 'checkpoint', ckpt),
                              (str(tmp_path / 'config_link.py'), 'config', CLS_CONFIG)):
        with pytest.raises(SystemExit) as excinfo:
            main([CLS_CONFIG, ckpt, output, '--shape', '64', '64'])
        message = str(excinfo.value.code)
        assert message.startswith(f'ERROR: the output {output} is the {name} {src}'), message
    assert open(ckpt, 'rb').read() == original
    assert (tmp_path / 'config_link.py').is_symlink()
    assert sorted(p.name for p in tmp_path.iterdir()) == ['cls.pth', 'config_link.py']


@pytest.mark.parametrize('option, value, message', [
    ('--shape', ['16', '16'], "argument --shape: '16': an input side (SPANet downsamples by 32) "
     'must be an integer >= 32'),
    ('--verify-shape', ['64', '8'], "argument --verify-shape: '8': an input side"),
    ('--batch', ['0'], "argument --batch: '0': the batch must be an integer >= 1"),
    ('--opset', ['5'], "argument --opset: '5': the opset must be an integer in 9..{max}"),
    ('--opset', ['8'], "argument --opset: '8': the opset must be an integer in 9..{max}"),
    ('--opset', ['{over}'], "argument --opset: '{over}': the opset must be an integer in 9..{max}"),
    ('--atol', ['-0.5'], "argument --atol: '-0.5': the tolerance must be a finite number >= 0"),
    ('--atol', ['nan'], "argument --atol: 'nan': the tolerance must be a finite number >= 0"),
    ('--atol', ['inf'], "argument --atol: 'inf': the tolerance must be a finite number >= 0"),
])
def test_export_refuses_numeric_options_out_of_range(option, value, message, tmp_path, capsys):
    """Each had failed after the model was built: SPANet's forward (a side < 32), torch.onnx
    (batch 0; opset 8 lacks the spectral pooling's arange, the installed torch writes up to
    MAX_OPSET, 23 in torch 2.14); a negative or nan --atol failed every export's check."""
    tool = load_tool('tools/deployment/pytorch2onnx.py')
    fmt = dict(max=tool.MAX_OPSET, over=tool.MAX_OPSET + 1)
    value = [v.format(**fmt) for v in value]
    argv = [CLS_CONFIG, 'c.pth', str(tmp_path / 'x.onnx'), option] + value
    assert message.format(**fmt) in usage_error(tool.main, argv, capsys)
    args = tool.parse_args(argv[:3] + ['--opset', str(tool.MAX_OPSET), '--shape', '32', '32',
                                       '--batch', '1', '--atol', '0'])
    assert args.opset == tool.MAX_OPSET and args.atol == 0


def test_export_refuses_a_missing_config_and_a_folder_as_output(tmp_path):
    """A missing config had been a FileNotFoundError traceback, a folder as the output an
    IsADirectoryError (os.replace, after the export), a file on the output's path a
    FileExistsError (os.makedirs): one ERROR line each, before the model is built."""
    tool = load_tool('tools/deployment/pytorch2onnx.py')
    (tmp_path / 'out').mkdir()
    (tmp_path / 'file').write_text('')
    for argv, message in (
            ([str(tmp_path / 'nope.py'), 'c.pth', str(tmp_path / 'x.onnx')],
             f'ERROR: config {tmp_path / "nope.py"} not found.'),
            ([CLS_CONFIG, 'c.pth', str(tmp_path / 'out')],
             f'ERROR: the output {tmp_path / "out"} is a folder; give the path of an .onnx file'),
            ([CLS_CONFIG, 'c.pth', str(tmp_path / 'file' / 'x.onnx')],
             f'ERROR: {tmp_path / "file"} is a file, so the output')):
        with pytest.raises(SystemExit) as excinfo:
            tool.main(argv)
        assert str(excinfo.value.code).startswith(message), excinfo.value.code
    assert sorted(p.name for p in tmp_path.iterdir()) == ['file', 'out']
    assert not any((tmp_path / 'out').iterdir())


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


# ../shared/spec/spanet.md, "Variants": layers, embed dims, params incl. fixed filters, params
# excl. filters, backbone only, MACs (paper's count) at 224x224.
PAPER_VARIANTS = {
    'S': ((4, 4, 12, 4), (64, 128, 320, 512), 28_659_780, 28_605_096, 28_092_096, 4.6267),
    'M': ((6, 6, 18, 6), (64, 128, 320, 512), 41_768_978, 41_686_952, 41_173_952, 6.8238),
    'MX': ((8, 8, 24, 8), (64, 128, 320, 512), 54_878_176, 54_768_808, 54_255_808, 9.0209),
    'B': ((6, 6, 18, 6), (96, 192, 384, 768), 75_938_194, 75_856_168, 75_087_168, 11.9833),
    'BX': ((8, 8, 24, 8), (96, 192, 384, 768), 99_827_680, 99_718_312, 98_949_312, 15.8326),
}
# Fourier modes of the low-rank spectral mixing per stage (radius 2, 2, 1, 1) where every bin
# exists: radius 2: DC + 6 mirror pairs (cos, sin) = 13; radius 1: DC + 2 pairs = 5.
STAGE_MODES = (13, 13, 5, 5)


def stage_sizes(layers, shape):
    """(H_i, W_i) of the four stages: stride 4 stem (7x7, padding 2), then stride 2 (3x3, 1)."""
    height, width = (shape[0] + 4 - 7) // 4 + 1, (shape[1] + 4 - 7) // 4 + 1
    sizes = []
    for _ in layers:
        sizes.append((height, width))
        height, width = (height - 1) // 2 + 1, (width - 1) // 2 + 1
    return sizes


def lowrank_macs(layers, dims, shape):
    """Per token mixer C*H*W*J (projection) + C*C*J (mixing) + C*H*W*J (expansion)."""
    return sum(n * (2 * c * h * w * j + c * c * j) for n, c, (h, w), j in zip(
        layers, dims, stage_sizes(layers, shape), STAGE_MODES))


def fixed_filters(layers, shape, chunks=3):
    """The official model's fixed filters: three (1, H_i, W_i) tensors per block."""
    return sum(n * chunks * h * w for n, (h, w) in zip(layers, stage_sizes(layers, shape)))


@pytest.mark.slow  # SPANet-S counted at two input sizes
def test_get_flops_lowrank_macs_and_filters_follow_the_stage_sizes():
    from spanet_mm.models.layers.spectral_pooling import fourier_modes
    from tools.analysis.get_flops import build, count
    layers, dims, with_filters, params, _, _ = PAPER_VARIANTS['S']
    model, backbone, is_classifier = build(
        osp.join(REPO_ROOT, 'configs', 'classification', 'spanet_s_in1k.py'))
    for shape in [(224, 224), (224, 320)]:
        sizes = stage_sizes(layers, shape)
        # Cross-check of the mode counts (the expected values come from the formula above).
        for (h, w), radius, j in zip(sizes, (2, 2, 1, 1), STAGE_MODES):
            assert fourier_modes(h, w, radius, torch.float64, torch.device('cpu'))[0].shape[0] == j
        r = count(model, backbone, is_classifier, shape)
        assert r['stage_sizes'] == dict(zip(dims, sizes))
        assert r['macs']['lowrank_spectral'] == lowrank_macs(layers, dims, shape)
        assert r['macs_lowrank_total'] == r['macs_paper'] + lowrank_macs(layers, dims, shape)
        assert r['params_model'] == params
        assert r['params_filters'] == fixed_filters(layers, shape)
    assert lowrank_macs(layers, dims, (224, 224)) == 52_291_584
    assert params + fixed_filters(layers, (224, 224)) == with_filters  # the paper's count


def get_flops_main(argv, capsys, start=None):
    """The tool's stdout from the last line that starts with ``start`` (after the model
    builder's log)."""
    from tools.analysis.get_flops import main
    capsys.readouterr()
    main(argv)
    out = capsys.readouterr().out
    return out[out.rindex(start):] if start else out


def test_get_flops_cli_shape_and_errors(capsys):
    import re
    square = get_flops_main([CLS_CONFIG, '--shape', '64'], capsys, CLS_CONFIG)
    assert square.startswith(f'{CLS_CONFIG}  input 1x3x64x64, classifier')
    assert square == get_flops_main([CLS_CONFIG, '--shape', '64', '64'], capsys, CLS_CONFIG)
    out = get_flops_main([CLS_CONFIG, '--shape', '64', '96'], capsys, CLS_CONFIG)
    assert out.startswith(f'{CLS_CONFIG}  input 1x3x64x96, classifier')
    trainable = int(re.search(r'trainable parameters: +([\d,]+)', out).group(1).replace(',', ''))
    paper = re.search(r'parameters with fixed filters: +([\d,]+) +\(paper; \+ ([\d,]+) filter',
                      out)
    filters = fixed_filters((1, 1, 1, 1), (64, 96))  # the demo arch: one block per stage
    assert filters == 3 * (16 * 24 + 8 * 12 + 4 * 6 + 2 * 3)
    assert int(paper.group(2).replace(',', '')) == filters
    assert int(paper.group(1).replace(',', '')) == trainable + filters
    assert f'+ {fixed_filters((1, 1, 1, 1), (64, 64)):,} filter values' in square
    with pytest.raises(SystemExit) as excinfo:
        get_flops_main([], capsys)
    assert excinfo.value.code == 2
    assert 'give a CONFIG or --all' in capsys.readouterr().err
    with pytest.raises(SystemExit):
        get_flops_main([CLS_CONFIG, '--shape', '64', '64', '64'], capsys)
    assert '--shape takes one or two integers' in capsys.readouterr().err


@pytest.mark.parametrize('shape', [['16'], ['0'], ['-64'], ['64', '31']])
def test_get_flops_refuses_inputs_below_spanets_minimum(shape, capsys):
    """Had failed in SPANet's forward, after the model was built (MIN_INPUT_SIZE, 32)."""
    main = load_tool('tools/analysis/get_flops.py').main
    err = usage_error(main, [CLS_CONFIG, '--shape'] + shape, capsys)
    assert err.endswith(f"argument --shape: {shape[-1]!r}: an input side (SPANet downsamples "
                        'by 32) must be an integer >= 32')


def test_get_flops_refuses_another_backbone_and_a_missing_config(tmp_path):
    """A ResNet config had failed with ``TypeError: ResNet.__init__() got an unexpected keyword
    argument 'spectral_impl'`` (the tool's SPANet options), a missing one with a
    FileNotFoundError traceback: now the tools' own errors (one ERROR line under run_tool)."""
    from spanet_mm.apis import NotSPANetError
    from spanet_mm.engine.launch import ToolOptionError
    main = load_tool('tools/analysis/get_flops.py').main
    resnet = tmp_path / 'resnet.py'
    resnet.write_text("_base_ = ['mmpretrain::resnet/resnet18_8xb32_in1k.py']\n")
    with pytest.raises(NotSPANetError, match=f'{resnet}: the backbone is ResNet, not SPANet.'):
        main([str(resnet)])
    with pytest.raises(ToolOptionError, match="Config '.*nope.py' not found"):
        main([str(tmp_path / 'nope.py')])


def test_get_flops_counts_with_the_backbones_in_channels(tmp_path, capsys):
    """The input had 3 channels whatever the config (SPANet refused a 1-channel model's input:
    "the input has 3 channels"); only the stem conv differs from the 3-channel count."""
    gray = tmp_path / 'gray.py'
    gray.write_text(f"_base_ = ['{CLS_CONFIG}']\nmodel = dict(backbone=dict(in_channels=1))\n")
    out = get_flops_main([str(gray), '--shape', '64'], capsys, str(gray))
    assert out.startswith(f'{gray}  input 1x1x64x64, classifier')
    rgb = get_flops_main([CLS_CONFIG, '--shape', '64'], capsys, CLS_CONFIG)

    def trainable(text):
        import re
        return int(re.search(r'trainable parameters: +([\d,]+)', text).group(1).replace(',', ''))

    stem_out = init_model(CLS_CONFIG).backbone.embed_dims[0]
    assert trainable(rgb) - trainable(out) == stem_out * 2 * 7 * 7  # the 7x7 stem conv


@pytest.mark.slow  # builds and counts the five ImageNet variants
def test_get_flops_all_table_matches_paper(capsys):
    lines = get_flops_main(['--all'], capsys, '| variant |').strip().splitlines()
    assert len(lines) == 7
    assert lines[0] == (
        '| variant | params (trainable, classifier) | params (backbone only) | params incl. fixed '
        'filters (paper) | MACs (paper convention, 224x224) | MACs incl. lowrank spectral '
        'mixing |')
    assert lines[1] == '|---|---|---|---|---|---|'
    for line, (name, spec) in zip(lines[2:], PAPER_VARIANTS.items()):
        layers, dims, with_filters, params, backbone, macs = spec
        cells = [cell.strip() for cell in line.strip('|').split('|')]
        assert cells[:4] == [f'SPANet-{name}', f'{params:,}', f'{backbone:,}',
                             f'{with_filters:,} ({with_filters / 1e6:.1f}M)'], line
        assert cells[4] == f'{macs:.4f} G', line
        total = float(cells[5].removesuffix(' G'))
        assert abs(total - macs - lowrank_macs(layers, dims, (224, 224)) / 1e9) <= 1.01e-4, line


@pytest.mark.slow
def test_get_flops_cli_dense_config(tmp_path):
    result = run_python(osp.join(REPO_ROOT, 'tools', 'analysis', 'get_flops.py'), DET_CONFIG,
                        '--shape', '64', '96')
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert 'backbone' in out and 'MACs, paper convention' in out


@pytest.mark.slow
def test_benchmark_smoke(tmp_path):
    out = tmp_path / 'bench.json'
    # Each (model, mode) peak is measured in a fresh interpreter of the tool's own: one mode,
    # so one such process (the deploy form is inference-only: it gets no training step).
    proc = run_python(
        osp.join(REPO_ROOT, 'tools', 'analysis', 'benchmark.py'), '--models', 'spanet-s',
        'spanet-s-deploy', '--modes', 'train', '--batch', '1', '--size', '32',
        '--repeats', '1', '--warmup', '0', '--threads', '1', '--json', out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert '| spanet-s |' in proc.stdout and '| spanet-s-deploy |' in proc.stdout
    result = json.loads(out.read_text())['results']
    assert set(result) == {'spanet-s', 'spanet-s-deploy'}
    assert result['spanet-s']['train_img_s'] > 0
    assert result['spanet-s']['train_peak_MiB'] > 0
    assert result['spanet-s-deploy']['train_img_s'] is None


@pytest.mark.slow
def test_benchmark_isolate_times_each_model_and_mode_in_a_process_of_its_own(tmp_path):
    out = tmp_path / 'bench.json'
    proc = run_python(
        osp.join(REPO_ROOT, 'tools', 'analysis', 'benchmark.py'), '--models', 'spanet-s',
        'convnext-t', '--modes', 'forward', 'forward_bf16', '--batch', '1', '--size', '32',
        '--repeats', '1', '--warmup', '0', '--threads', '1', '--no-memory', '--isolate',
        '--json', out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads(out.read_text())
    assert data['meta']['isolate'] is True
    rows = data['results'].values()
    pids = [row[f'{mode}_pid'] for row in rows for mode in ('forward', 'forward_bf16')]
    assert len(set(pids)) == 4, pids
    for row in rows:
        assert row['forward_img_s'] > 0 and row['forward_bf16_img_s'] > 0
        assert 0 < row['bf16_rel_err'] < 0.05
        if sys.platform.startswith('linux'):  # a fresh process's first forward maps new memory
            assert row['forward_minor_faults'] > 0, row


@pytest.mark.slow
def test_benchmark_isolate_reports_a_failing_worker():
    """A worker's error reaches the user with its traceback (and nothing waits forever). The
    failure: a 16x16 input, which the command line refuses (--size), so set on the args."""
    from tools.analysis.benchmark import IsolatedRunner
    args = argparse.Namespace(device='cpu', batch=1, size=[16, 16], channels_last=False,
                              dtype='float32', threads=1)
    runner = IsolatedRunner('spanet-s', args)
    with pytest.raises(RuntimeError, match='benchmark worker of spanet-s failed') as excinfo:
        runner.time('forward')
    assert 'SPANet needs inputs of at least 32x32' in str(excinfo.value)
    assert 'Traceback' in str(excinfo.value)


@pytest.mark.slow
def test_benchmark_isolate_reports_a_worker_that_died():
    """A worker killed without a word (as by the OOM killer) is reported, not waited for."""
    from tools.analysis.benchmark import IsolatedRunner
    args = argparse.Namespace(device='cpu', batch=1, size=[32, 32], channels_last=False,
                              dtype='float32', threads=1)
    runner = IsolatedRunner('spanet-s', args)
    os.kill(runner.pid, signal.SIGKILL)
    outcome = {}

    def step():
        try:
            runner.time('forward')
        except RuntimeError as error:
            outcome['error'] = str(error)

    waiter = threading.Thread(target=step, daemon=True)  # a hang must not hang the suite
    waiter.start()
    waiter.join(60)
    assert not waiter.is_alive(), 'the parent waits forever for a dead worker'
    assert 'benchmark worker of spanet-s exited with code -9' in outcome.get('error', ''), outcome


def test_benchmark_compile_flag_adds_the_forward_compile_mode():
    parse_args = load_tool(BENCHMARK).parse_args
    assert parse_args(['--models', 'spanet-s']).modes == ['forward', 'train']
    assert parse_args(['--models', 'spanet-s', '--compile']).modes == [
        'forward', 'train', 'forward_compile']
    assert parse_args(['--modes', 'forward', '--compile']).modes == ['forward', 'forward_compile']
    assert parse_args(['--modes', 'forward_compile', 'forward', '--compile']).modes == [
        'forward_compile', 'forward']  # listed already: not added twice


@pytest.mark.parametrize('option, value, minimum', [
    ('--size', '0', 32), ('--size', '16', 32), ('--batch', '0', 1), ('--repeats', '0', 1),
    ('--warmup', '-1', 0), ('--threads', '0', 1)])
def test_benchmark_refuses_numbers_out_of_range(option, value, minimum, capsys):
    """--repeats 0 (or --batch 0) had run and exited 0 without a timing, --size below
    SPANet's MIN_INPUT_SIZE failed in a forward, --warmup -1 dropped a timed round."""
    tool = load_tool(BENCHMARK)

    def no_model(*args):
        raise AssertionError('a model was built although the option was to be refused')

    tool.Runner = tool.IsolatedRunner = no_model
    err = usage_error(tool.main, ['--models', 'spanet-s', option, value], capsys)
    assert f'argument {option}: {value!r}: ' in err and err.endswith(
        f'must be an integer >= {minimum}'), err


def table_cells(lines):
    """``{model: {column: cell}}`` of the tool's markdown table."""
    header = [cell.strip() for cell in lines[0].strip('|').split('|')]
    rows = [[cell.strip() for cell in line.strip('|').split('|')] for line in lines[2:]]
    return {row[0]: dict(zip(header, row)) for row in rows}


@pytest.mark.slow  # three real models, two modes, four rounds
def test_benchmark_fft_ratios_and_peak_mib(tmp_path, monkeypatch, capsys):
    """The table and JSON built from known step times and peak bytes: the real models and
    steps run, only the two measurements (the clock around each step and the peak-memory
    subprocess) give set values, so that the expected numbers follow from them. Throughput is
    batch / median seconds, "vs fft" pairs spanet-s with spanet-s-fft (spanet-m has no fft
    model: no ratio), and the peak is reported in MiB (bytes / 2**20)."""
    tool = load_tool(BENCHMARK)
    # Seconds per round: one warm-up (discarded), then three timed rounds (median: the middle).
    seconds = {('spanet-s', 'forward'): [9.0, 0.5, 0.5, 7.0],
               ('spanet-s', 'train'): [9.0, 1.0, 8.0, 1.0],
               ('spanet-s-fft', 'forward'): [9.0, 2.0, 2.0, 2.0],
               ('spanet-s-fft', 'train'): [9.0, 3.0, 3.0, 3.0],
               ('spanet-m', 'forward'): [9.0, 0.25, 0.25, 0.25],
               ('spanet-m', 'train'): [9.0, 1.0, 1.0, 1.0]}
    rounds = {step: iter(times) for step, times in seconds.items()}
    def timed(fn, device):
        fn()  # the real step
        return next(rounds[fn.__self__.name, fn.__name__]), 0

    monkeypatch.setattr(tool, 'timed', timed)
    mib = {('spanet-s', 'forward'): 300, ('spanet-s-fft', 'forward'): 600,
           ('spanet-s', 'train'): 900, ('spanet-s-fft', 'train'): 450,
           ('spanet-m', 'forward'): 200, ('spanet-m', 'train'): 500}
    monkeypatch.setattr(tool, 'measure_in_subprocess',
                        lambda name, mode, args: mib[name, mode] * 2**20)
    out = tmp_path / 'bench.json'
    tool.main(['--models', 'spanet-s', 'spanet-s-fft', 'spanet-m', '--modes', 'forward',
               'train', '--batch', '2', '--size', '32', '--repeats', '3', '--warmup', '1',
               '--json', str(out)])
    assert all(next(it, None) is None for it in rounds.values())  # every round timed
    data = json.loads(out.read_text())
    results = data['results']
    s, fft, m = results['spanet-s'], results['spanet-s-fft'], results['spanet-m']
    assert s['forward_img_s'] == 2 / 0.5 and fft['forward_img_s'] == 2 / 2.0
    assert s['train_img_s'] == 2 / 1.0 and fft['train_img_s'] == 2 / 3.0
    assert s['forward_vs_fft'] == pytest.approx(4.0)  # (2 / 0.5) / (2 / 2.0)
    assert s['train_vs_fft'] == pytest.approx(3.0)
    assert m['forward_vs_fft'] is None and m['train_vs_fft'] is None
    assert fft['forward_vs_fft'] is None
    for (name, mode), value in mib.items():
        assert results[name][f'{mode}_peak_MiB'] == value, (name, mode)
    assert s['forward_peak_vs_fft'] == pytest.approx(0.5)
    assert s['train_peak_vs_fft'] == pytest.approx(2.0)
    assert m['forward_peak_vs_fft'] is None
    table = table_cells(data['table'])
    assert '\n'.join(data['table']) in capsys.readouterr().out  # the table printed
    assert table['spanet-s']['forward img/s'] == '4.00'
    assert table['spanet-s']['forward vs fft'] == '4.00x'
    assert table['spanet-s']['train vs fft'] == '3.00x'
    assert table['spanet-s']['forward peak MiB'] == '300'
    assert table['spanet-s']['forward peak vs fft'] == '0.50x'
    assert table['spanet-s']['train peak MiB'] == '900'
    assert table['spanet-s-fft']['train peak MiB'] == '450'
    assert table['spanet-m']['forward vs fft'] == '-'
    assert table['spanet-m']['forward peak vs fft'] == '-'
    assert table['spanet-m']['forward peak MiB'] == '200'
    assert table['spanet-s-fft']['forward vs fft'] == '-'


def test_benchmark_refuses_cuda_without_cuda(monkeypatch, capsys):
    """--device cuda on a machine without CUDA had failed moving the first model."""
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    tool = load_tool(BENCHMARK)
    err = usage_error(tool.main, ['--models', 'spanet-s', '--device', 'cuda'], capsys)
    assert err.endswith('argument --device: cuda: torch.cuda.is_available() is False here (no '
                        'CUDA GPU or driver, or a CPU-only torch); use --device cpu'), err
