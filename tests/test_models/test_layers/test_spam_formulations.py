"""The FFT-free ('lowrank', the default) and FFT ('fft', reference) spectral pooling agree.

Forward outputs, input gradients and every parameter gradient, per token mixer (1e-5) and end to
end (1e-4), at the stage sizes of a 224x224 input and at odd, non-square and small sizes. The
lowrank path runs as a memory-saving autograd function when gradients are recorded, so these
tests also check its hand-written backward.
"""
import gc
import weakref

import pytest
import torch

from spanet_mm.models import SPANet
from spanet_mm.models.layers import SpectralPoolingMixer

MIXER_SIZES = [(56, 56), (28, 28), (14, 14), (7, 7), (33, 47), (64, 96), (37, 37), (32, 32),
               (5, 3), (2, 2), (1, 1)]
INPUT_SIZES = [(224, 224), (33, 47), (64, 96), (37, 37), (32, 32)]
SMALL_ARCH = dict(layers=[1, 1, 2, 1], embed_dims=[16, 24, 32, 40])


def randomize_(module, seed=0):
    """Random values for every parameter (norm affines and biases too): nothing is identity."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in module.named_parameters():
            if name.endswith('shortcut_scale1') or name.endswith('shortcut_scale2') or \
                    (name.split('.')[-2].startswith('norm') and name.endswith('weight')):
                param.copy_(1 + 0.2 * torch.randn(param.shape, generator=gen))
            else:
                param.copy_(torch.randn(param.shape, generator=gen) / max(1, param[0].numel())**.5)
    return module


def pair(factory):
    lowrank, fft = factory('lowrank'), factory('fft')
    randomize_(lowrank)
    fft.load_state_dict(lowrank.state_dict())
    return lowrank, fft


def run(module, x, out_weights=None):
    """Output(s), input gradient and parameter gradients of a fixed random projection."""
    x = x.clone().requires_grad_(True)
    module.zero_grad(set_to_none=True)
    outs = module(x)
    outs = outs if isinstance(outs, tuple) else (outs, )
    if out_weights is None:
        gen = torch.Generator().manual_seed(1)
        out_weights = [torch.randn(o.shape, generator=gen) for o in outs]
    loss = sum((o * w).sum() for o, w in zip(outs, out_weights))
    loss.backward()
    grads = {n: p.grad for n, p in module.named_parameters()}
    return [o.detach() for o in outs], x.grad, grads, out_weights


def assert_same(a, b, atol, what):
    diff = (a - b).abs().max().item()
    scale = b.abs().max().item()
    assert diff <= atol * max(1.0, scale), f'{what}: max |diff| {diff:.3g} (scale {scale:.3g})'


@pytest.mark.parametrize('size', MIXER_SIZES, ids=lambda s: f'{s[0]}x{s[1]}')
@pytest.mark.parametrize('radius', [1, 2])
@pytest.mark.parametrize('layout', ['nchw', 'nhwc'])
def test_mixer_lowrank_matches_fft(size, radius, layout):
    torch.manual_seed(0)
    lowrank, fft = pair(lambda impl: SpectralPoolingMixer(20, radius, impl))
    x = torch.randn(2, 20, *size)
    if layout == 'nhwc':
        x = x.contiguous(memory_format=torch.channels_last)
    out_l, gx_l, gp_l, w = run(lowrank, x)
    out_f, gx_f, gp_f, _ = run(fft, x, w)
    assert_same(out_l[0], out_f[0], 1e-5, 'output')
    assert_same(gx_l, gx_f, 1e-5, 'input grad')
    assert set(gp_l) == set(gp_f)
    for name in gp_f:
        assert_same(gp_l[name], gp_f[name], 1e-5, f'grad {name}')
    # Inference (no autograd function) gives the same output.
    with torch.no_grad():
        assert_same(lowrank(x), out_f[0], 1e-5, 'no_grad output')


@pytest.mark.parametrize('size', INPUT_SIZES, ids=lambda s: f'{s[0]}x{s[1]}')
def test_backbone_lowrank_matches_fft(size):
    torch.manual_seed(0)
    lowrank, fft = pair(
        lambda impl: SPANet(SMALL_ARCH, out_indices=(0, 1, 2, 3), spectral_impl=impl,
                            init_cfg=None))
    x = torch.randn(2, 3, *size)
    outs_l, gx_l, gp_l, w = run(lowrank.train(), x)
    outs_f, gx_f, gp_f, _ = run(fft.train(), x, w)
    for i, (a, b) in enumerate(zip(outs_l, outs_f)):
        assert_same(a, b, 1e-4, f'stage {i} output')
    assert_same(gx_l, gx_f, 1e-4, 'input grad')
    for name in gp_f:
        assert_same(gp_l[name], gp_f[name], 1e-4, f'grad {name}')
    with torch.no_grad():
        for a, b in zip(lowrank.eval()(x), outs_f):
            assert_same(a, b, 1e-4, 'eval output')


@pytest.mark.slow  # full-size SPANet-S
def test_spanet_s_224_lowrank_matches_fft():
    """The real SPANet-S at 224x224 (forward and input gradient, one image)."""
    torch.manual_seed(0)
    lowrank, fft = pair(lambda impl: SPANet('s', spectral_impl=impl, init_cfg=None))
    x = torch.randn(1, 3, 224, 224)
    outs_l, gx_l, gp_l, w = run(lowrank, x)
    outs_f, gx_f, gp_f, _ = run(fft, x, w)
    assert_same(outs_l[0], outs_f[0], 1e-4, 'output')
    assert_same(gx_l, gx_f, 1e-4, 'input grad')
    for name in ('stages.0.0.token_mixer.spectral_projs.0.weight',
                 'stages.2.11.token_mixer.proj_in.weight', 'downsample_layers.0.weight'):
        assert_same(gp_l[name], gp_f[name], 1e-4, f'grad {name}')


@pytest.mark.parametrize('impl', ['lowrank', 'fft'])
def test_no_activation_kept_on_module(impl):
    """After forward and backward, no tensor of the call is referenced by the module."""
    mixer = SpectralPoolingMixer(12, 2, impl)
    before = {k: id(v) for k, v in vars(mixer).items()}
    x = torch.randn(1, 12, 9, 10, requires_grad=True)
    out = mixer(x)
    ref = weakref.ref(out)
    out.sum().backward()
    del out
    gc.collect()
    assert ref() is None
    assert {k: id(v) for k, v in vars(mixer).items()} == before
    assert set(dict(mixer.named_buffers())) == {'_gain_far', '_gain_inside', '_gain_circle'}
    assert not any(k.startswith('_gain') for k in mixer.state_dict())
