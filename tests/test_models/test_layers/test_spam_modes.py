"""One set of module calls in every mode, and memory saving that holds under autocast.

A forward hook on any submodule of SPANet must see the same calls whatever the mode: training,
no-grad inference, bfloat16 autocast, NCHW or NHWC maps. The expected calls come from the model's
structure (every submodule once per block, in the order the architecture applies them), not from
the forward code.
"""
import pytest
import torch

from conftest import CallRecorder, expected_calls, rel_err, saved_bytes
from spanet_mm.models import SPANet
from spanet_mm.models.layers import SpectralPoolingMixer

NATIVE_BF16 = torch.ops.mkldnn._is_mkldnn_bf16_supported()
SMALL_ARCH = dict(layers=[1, 1, 2, 1], embed_dims=[16, 24, 32, 40])


def small_spanet(impl='auto', **kwargs):
    torch.manual_seed(0)
    model = SPANet(SMALL_ARCH, out_indices=(0, 1, 2, 3), spectral_impl=impl, init_cfg=None,
                   **kwargs)
    model.init_weights()
    return model


def run_mode(model, x, mode):
    """One forward in ``mode``; returns the outputs (float32)."""
    channels_last = mode.endswith('nchw') is False
    model.cpu_channels_last = channels_last  # an instance override: NCHW maps inside too
    if not channels_last:
        x = x.contiguous()
    train = mode.startswith('train')
    model.train(train)
    autocast = torch.autocast('cpu', dtype=torch.bfloat16, enabled='bf16' in mode)
    with torch.set_grad_enabled(train), autocast:
        outs = model(x.requires_grad_(train) if train else x)
    return outs


MODES = ['train', 'eval', 'eval-bf16', 'train-bf16', 'eval-nchw', 'train-nchw']


@pytest.mark.parametrize('impl', ['auto', 'fft'])
def test_same_module_calls_in_every_mode(impl):
    model = small_spanet(impl)
    expected = expected_calls(model, impl)
    recorder = CallRecorder(model)
    try:
        for mode in MODES:
            x = torch.randn(2, 3, 64, 96)
            outs = run_mode(model, x, mode)
            assert recorder.take() == expected, mode
            if mode.startswith('train'):  # backward recomputes inside the mixer only
                sum(o.float().sum() for o in outs).backward()
                again = recorder.take()
                assert set(again) <= {c for c in expected if '.token_mixer.' in c}
    finally:
        recorder.remove()
        del model.cpu_channels_last


@pytest.mark.parametrize('impl', ['auto', 'fft'])
def test_no_grad_eval_matches_training_forward(impl):
    """The same numbers in eval with and without autograd, in both layouts (one execution)."""
    model = small_spanet(impl)
    x = torch.randn(2, 3, 64, 96)
    ref = [o.detach() for o in run_mode(model, x.clone(), 'train')]
    for mode in ('eval', 'eval-nchw', 'train-nchw'):
        for a, b in zip(run_mode(model, x.clone(), mode), ref):
            torch.testing.assert_close(a.detach(), b, atol=1e-5, rtol=1e-5, msg=mode)
    del model.cpu_channels_last


@pytest.mark.parametrize('autocast', [False, True], ids=['fp32', 'bf16'])
def test_mixer_recompute_saves_only_its_input(autocast):
    """In training the low-rank mixer keeps the inputs of ``proj_in`` and of the depthwise
    convs and nothing of their outputs, the context or the modulation, under autocast too; the gradients are the
    plain graph's."""
    torch.manual_seed(0)
    lean = SpectralPoolingMixer(24, 2, 'lowrank')
    plain = SpectralPoolingMixer(24, 2, 'lowrank', recompute=False)
    plain.load_state_dict(lean.state_dict())
    x = torch.randn(2, 24, 20, 28)
    one_map = x.numel() * (2 if autocast else 4)  # proj_in's output
    # proj_in keeps its input as its conv runs: a bfloat16 copy under native autocast, the
    # float32 input itself on a CPU without bfloat16 kernels (layers/precision.py).
    proj_in_input = x.numel() * (2 if autocast and NATIVE_BF16 else 4)
    results = {}
    for name, mixer in (('lean', lean), ('plain', plain)):
        xi = x.clone().requires_grad_(True)
        with torch.autocast('cpu', dtype=torch.bfloat16, enabled=autocast):
            nbytes, out = saved_bytes(lambda: mixer(xi))
        out.float().square().sum().backward()
        results[name] = nbytes, out.detach(), xi.grad, {n: p.grad for n, p in
                                                         mixer.named_parameters()}
    lean_bytes, plain_bytes = results['lean'][0], results['plain'][0]
    # proj_in saves its input and the checkpointed part its own, under native autocast also
    # proj_in's bfloat16 weight copy (576 values): nothing else.
    assert lean_bytes <= proj_in_input + one_map + 24 * 24 * 4, (lean_bytes, one_map)
    assert plain_bytes >= 5 * one_map, (plain_bytes, one_map)
    tol = dict(atol=2e-2, rtol=2e-2) if autocast else dict(atol=1e-5, rtol=1e-5)
    for a, b in zip(results['lean'][1:3], results['plain'][1:3]):
        torch.testing.assert_close(a, b, **tol)
    for name, grad in results['plain'][3].items():
        torch.testing.assert_close(results['lean'][3][name], grad, **tol, msg=name)


@pytest.mark.parametrize('impl', ['auto', 'fft'])
def test_bf16_autocast_outputs_within_2_percent(impl):
    """bfloat16 autocast inference: every stage output within 2 % (relative L2) of float32."""
    model = small_spanet(impl).eval()
    x = torch.randn(2, 3, 96, 128)
    with torch.no_grad():
        ref = model(x)
        with torch.autocast('cpu', dtype=torch.bfloat16):
            low = model(x)
    for a, b in zip(low, ref):
        err = rel_err(a, b)
        assert err < 0.02, err
