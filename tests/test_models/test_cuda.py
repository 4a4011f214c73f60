"""SPANet on a CUDA GPU: the official outputs, fp16 and bf16 autocast at odd input sizes, one
set of module calls in every mode, memory saving under autocast, the deploy form,
``torch.compile``, and ``tools/train.py --amp`` (mmengine's AmpOptimWrapper) end to end.

Every test here is marked ``cuda``. Where torch sees no CUDA device (CI's machines) conftest
deselects them and the header says so; on a GPU machine ``pytest tests -m cuda`` runs them
alone. Float32 references run with TF32 off (cuDNN and cuBLAS may otherwise round the operands
of float32 convs and GEMMs to 10 mantissa bits), so the official outputs hold to the CPU
tests' tolerance.
"""
import json
import math
import os
import os.path as osp
import subprocess
import sys

import pytest
import torch
from mmengine.config import Config

from conftest import (REPO_ROOT, CallRecorder, convert_official_file, dense_official_checkpoint,
                      expected_calls, fixture_arch, generate_demo_data, load_tool,
                      official_classifier, rel_err)
from spanet_mm.models import SPANet

pytestmark = pytest.mark.cuda

OFFICIAL_TOLERANCE = 1e-4  # as on CPU (test_spanet_official_outputs.py)
HALF = {'fp16': torch.float16, 'bf16': torch.bfloat16}
# Relative L2 error of every stage output to float32: the 2 % for bfloat16 (7 mantissa
# bits); float16 has 10, so an eighth of that.
HALF_FORWARD_BOUND = {'fp16': 0.0025, 'bf16': 0.02}
HALF_GRAD_BOUND = {'fp16': 0.01, 'bf16': 0.05}
# Neither side a multiple of 32 (SPANet's total stride), sides unequal, the smallest input too.
ODD_SIZES = [(32, 45), (97, 131), (225, 199)]
IMPLS = ['auto', 'fft', 'deploy']  # 'deploy': the low-rank model after switch_to_deploy()
LAYOUTS = {'nchw': torch.contiguous_format, 'nhwc': torch.channels_last}


@pytest.fixture
def no_tf32():
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


@pytest.fixture(scope='module')
def dense_weights(official_fixture, tmp_path_factory):
    """The official detection-style file, converted (four output norms)."""
    folder = tmp_path_factory.mktemp('dense')
    torch.save(dense_official_checkpoint(official_fixture), folder / 'official_det.pth')
    return convert_official_file(folder / 'official_det.pth', folder / 'converted.pth')


def official_backbone(fixture, weights, impl, layout='nchw'):
    """The fixture's backbone with the converted official weights, on the GPU, in eval mode."""
    backbone = SPANet(fixture_arch(fixture), out_indices=(0, 1, 2, 3),
                      spectral_impl='auto' if impl == 'deploy' else impl,
                      init_cfg=dict(type='Pretrained', checkpoint=weights, prefix='backbone.'))
    backbone.init_weights()
    backbone = backbone.cuda().to(memory_format=LAYOUTS[layout]).eval()
    return backbone.switch_to_deploy() if impl == 'deploy' else backbone


def odd_input(size, batch=2, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, *size, generator=gen).cuda()


@pytest.mark.parametrize('layout', LAYOUTS)
@pytest.mark.parametrize('impl', IMPLS)
def test_official_outputs(official_fixture, converted_classifier, dense_weights, impl, layout,
                          no_tf32):
    """The official logits (classifier config) and dense features, on the GPU."""
    cls = official_fixture['classification']
    classifier = official_classifier(official_fixture, converted_classifier, impl).cuda()
    assert classifier.backbone.deploy is (impl == 'deploy')
    classifier = classifier.to(memory_format=LAYOUTS[layout])
    with torch.no_grad():
        logits = classifier(cls['input'].cuda().to(memory_format=LAYOUTS[layout]), mode='tensor')
    assert (logits.cpu() - cls['logits']).abs().max() <= OFFICIAL_TOLERANCE

    backbone = official_backbone(official_fixture, dense_weights, impl, layout)
    for name, case in official_fixture['dense']['cases'].items():
        with torch.no_grad():
            features = backbone(case['input'].cuda().to(memory_format=LAYOUTS[layout]))
        for i, (ours, theirs) in enumerate(zip(features, case['features'])):
            assert ours.shape == theirs.shape, (name, i)
            assert (ours.cpu() - theirs).abs().max() <= OFFICIAL_TOLERANCE, (name, i)


@pytest.mark.parametrize('size', ODD_SIZES, ids=lambda s: f'{s[0]}x{s[1]}')
@pytest.mark.parametrize('impl', IMPLS)
@pytest.mark.parametrize('half', HALF)
def test_half_autocast_inference(official_fixture, dense_weights, half, impl, size, no_tf32):
    backbone = official_backbone(official_fixture, dense_weights, impl)
    x = odd_input(size)
    with torch.no_grad():
        ref = backbone(x)
        with torch.autocast('cuda', dtype=HALF[half]):
            low = backbone(x)
    errors = [rel_err(a, b) for a, b in zip(low, ref)]
    print(f'{half} {impl} {size}: stage errors {[f"{e:.2e}" for e in errors]}')
    for i, (a, b) in enumerate(zip(low, ref)):
        assert a.shape == b.shape and torch.isfinite(a).all(), i
        assert errors[i] < HALF_FORWARD_BOUND[half], (i, errors)


def gradients(model, x, half=None, loss_scale=1.0):
    """Input and parameter gradients of ``sum(mean(out^2))``, each flattened (float32)."""
    model.zero_grad(set_to_none=True)
    x = x.clone().requires_grad_(True)
    with torch.autocast('cuda', dtype=half or torch.float32, enabled=half is not None):
        outs = model(x)
    loss = sum(out.float().square().mean() for out in outs)
    (loss * loss_scale).backward()
    grads = {'input': x.grad}
    grads.update({name: p.grad for name, p in model.named_parameters() if p.grad is not None})
    return {name: g.float().flatten() / loss_scale for name, g in grads.items()}


@pytest.mark.parametrize('size', ODD_SIZES[1:], ids=lambda s: f'{s[0]}x{s[1]}')
@pytest.mark.parametrize('impl', ['auto', 'fft'])
@pytest.mark.parametrize('half', HALF)
def test_half_autocast_training(official_fixture, dense_weights, half, impl, size, no_tf32):
    """Gradients under autocast against float32: every parameter gets one, all finite, the
    whole gradient within the dtype's bound. fp16 with a fixed loss scale of 1024, as
    GradScaler starts (unscaled gradients of the small GroupNorm outputs would underflow)."""
    backbone = official_backbone(official_fixture, dense_weights, impl).train()
    x = odd_input(size)
    ref = gradients(backbone, x)
    low = gradients(backbone, x, HALF[half], loss_scale=1024.0 if half == 'fp16' else 1.0)
    assert low.keys() == ref.keys() == {'input'} | {n for n, _ in backbone.named_parameters()}
    for name, grad in low.items():
        assert torch.isfinite(grad).all(), name
    error = rel_err(torch.cat(list(low.values())), torch.cat(list(ref.values())))
    input_error = rel_err(low['input'], ref['input'])
    print(f'{half} {impl} {size}: gradient error {error:.2e}, input gradient {input_error:.2e}')
    assert error < HALF_GRAD_BOUND[half] and input_error < HALF_GRAD_BOUND[half]


@pytest.mark.parametrize('impl', ['auto', 'fft'])
def test_lowrank_training_matches_fft(official_fixture, dense_weights, impl, no_tf32):
    """Float32 training on the GPU: the low-rank form's outputs and gradients are the FFT
    reference's (the CPU tests check the same on CPU), in either layout."""
    x = odd_input((97, 131))
    fft = official_backbone(official_fixture, dense_weights, 'fft').train()
    ref = gradients(fft, x)
    for layout in LAYOUTS:
        model = official_backbone(official_fixture, dense_weights, impl, layout).train()
        got = gradients(model, x.contiguous(memory_format=LAYOUTS[layout]))
        for name, grad in ref.items():
            assert rel_err(got[name], grad) < 1e-4, (layout, name)


MODES = [(train, half, layout) for train in (True, False) for half in (None, *HALF)
         for layout in LAYOUTS]


@pytest.mark.parametrize('impl', ['auto', 'fft'])
def test_same_module_calls_in_every_mode(impl):
    """Forward hooks see the same calls in training and eval, in float32, fp16 and bf16
    autocast, in either layout, on the GPU as on the CPU (test_spam_modes.py)."""
    torch.manual_seed(0)
    model = SPANet(dict(layers=[1, 1, 2, 1], embed_dims=[16, 24, 32, 40]), spectral_impl=impl,
                   out_indices=(0, 1, 2, 3), init_cfg=None).cuda()
    expected = expected_calls(model, impl)
    recorder = CallRecorder(model)
    try:
        for train, half, layout in MODES:
            model.train(train).to(memory_format=LAYOUTS[layout])
            x = odd_input((64, 96)).contiguous(memory_format=LAYOUTS[layout])
            with torch.set_grad_enabled(train), torch.autocast(
                    'cuda', dtype=HALF.get(half, torch.float16), enabled=half is not None):
                outs = model(x.requires_grad_(train))
            assert recorder.take() == expected, (train, half, layout)
            if train:  # backward recomputes inside the mixer only
                sum(out.float().sum() for out in outs).backward()
                assert set(recorder.take()) <= {c for c in expected if '.token_mixer.' in c}
    finally:
        recorder.remove()


def training_peak_bytes(model, x, half):
    """Peak GPU memory of one forward and backward above what was allocated before it."""
    model.zero_grad(set_to_none=True)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    with torch.autocast('cuda', dtype=half or torch.float32, enabled=half is not None):
        outs = model(x)
    sum(out.float().mean() for out in outs).backward()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - base


@pytest.mark.parametrize('half', [None, *HALF], ids=['fp32', *HALF])
def test_training_memory_saving_holds_under_autocast(half):
    """SPANet-S training at batch 16, 224x224: the low-rank form's peak memory is at most 0.8x
    the FFT reference's (the issue's bound), also under fp16 and bf16 autocast."""
    peaks = {}
    for impl in ('auto', 'fft'):
        torch.manual_seed(0)
        model = SPANet('s', spectral_impl=impl, init_cfg=None).cuda().train()
        x = torch.randn(16, 3, 224, 224, device='cuda')
        training_peak_bytes(model, x, HALF.get(half))  # warm-up: cuDNN and cuFFT workspaces
        peaks[impl] = training_peak_bytes(model, x, HALF.get(half))
        del model, x
    ratio = peaks['auto'] / peaks['fft']
    print(f'{half or "fp32"}: peak MiB auto {peaks["auto"] / 2**20:.0f}, '
          f'fft {peaks["fft"] / 2**20:.0f}, ratio {ratio:.2f}')
    assert ratio <= 0.8, peaks


@pytest.mark.slow
def test_train_py_amp_then_test_py(tmp_path):
    """``tools/train.py --amp`` on the GPU: mmengine's AmpOptimWrapper (fp16, dynamic loss
    scale), finite losses, a checkpoint that ``tools/test.py`` evaluates."""
    generate_demo_data(tmp_path / 'data' / 'demo')
    config = osp.join(REPO_ROOT, 'configs/classification/demo/spanet_demo_cls.py')
    work_dir, test_dir = tmp_path / 'train', tmp_path / 'test'
    options = ['train_dataloader.dataset.indices=32', 'val_dataloader.dataset.indices=8',
               'test_dataloader.dataset.indices=8', 'train_cfg.max_epochs=1']
    for tool, args in (('train.py', ['--amp', '--work-dir', str(work_dir)]),
                       ('test.py', [str(work_dir / 'epoch_1.pth'), '--work-dir', str(test_dir)])):
        result = subprocess.run(
            [sys.executable, osp.join(REPO_ROOT, 'tools', tool), config, *args,
             '--cfg-options', *options], cwd=tmp_path, capture_output=True, text=True,
            timeout=600, env=dict(os.environ, PYTHONWARNINGS='ignore'))
        assert result.returncode == 0, (tool, result.stdout[-3000:], result.stderr[-3000:])
    dumped = Config.fromfile(str(work_dir / osp.basename(config)))
    assert dumped.optim_wrapper.type == 'AmpOptimWrapper'
    assert dumped.optim_wrapper.loss_scale == 'dynamic'
    scalars = [json.loads(line) for run in os.listdir(work_dir)
               if osp.isfile(work_dir / run / 'vis_data' / 'scalars.json')
               for line in open(work_dir / run / 'vis_data' / 'scalars.json')]
    losses = [s['loss'] for s in scalars if 'loss' in s]
    assert losses and all(math.isfinite(loss) for loss in losses), losses
    with open(test_dir / 'test_metrics.json') as f:
        top1 = json.load(f)['accuracy/top1']
    assert 0 <= top1 <= 100, top1


@pytest.mark.slow
def test_benchmark_measures_peak_memory_in_process(tmp_path):
    """``tools/analysis/benchmark.py --device cuda`` measures peak memory in its own process,
    after the timing rounds; a fresh process (the CPU's way) gives the same peak."""
    benchmark = load_tool('tools/analysis/benchmark.py')
    argv = ['--device', 'cuda', '--models', 'spanet-s', '--batch', '8', '--modes', 'train']
    benchmark.main(argv + ['--repeats', '1', '--json', str(tmp_path / 'bench.json')])
    with open(tmp_path / 'bench.json') as f:
        in_process = json.load(f)['results']['spanet-s']['train_peak_MiB']
    fresh = benchmark.measure_in_subprocess(
        'spanet-s', 'train', benchmark.parse_args(argv)) / 2**20
    print(f'training peak: {in_process:.0f} MiB in process, {fresh:.0f} MiB in a fresh one')
    assert abs(in_process - fresh) <= 0.05 * fresh


@pytest.mark.parametrize('impl', ['auto', 'deploy'])
def test_compiled_forward_matches_eager(official_fixture, dense_weights, impl, no_tf32):
    """``torch.compile`` (inductor's Triton kernels) gives the eager outputs."""
    backbone = official_backbone(official_fixture, dense_weights, impl)
    compiled = torch.compile(backbone)
    x = odd_input((97, 131))
    with torch.no_grad():
        ref = backbone(x)
        got = compiled(x)
    for a, b in zip(got, ref):
        assert rel_err(a, b) < 1e-4
