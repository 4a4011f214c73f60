"""Autocast (bf16 on CPU), torch.compile and traced (export) forms of the spectral pooling."""
import copy
import shutil

import pytest
import torch
import torch.nn.functional as F

from conftest import perturbed, rel_err
from spanet_mm.models import SPANet
from spanet_mm.models.layers import SPECTRAL_LAMBDAS, SpectralPoolingMixer, spectral_pool_fft
from spanet_mm.models.layers.spectral_pooling import fourier_modes

SMALL_ARCH = dict(layers=[1, 1, 1, 1], embed_dims=[16, 24, 32, 40])
#: bf16 keeps 8 significant bits: the outputs stay within 2% of float32 in relative norm
#: (the issue's bound for bf16 autocast; SPANet-S at 224 measures 0.97%, docs/benchmark.md).
BF16_RTOL = 0.02


@pytest.mark.parametrize('impl', ['auto', 'fft'])
@pytest.mark.parametrize('size', [(64, 64), (33, 47), (37, 37), (32, 32)],
                         ids=lambda s: f'{s[0]}x{s[1]}')
def test_autocast_bf16_cpu(impl, size):
    torch.manual_seed(0)
    model = SPANet(SMALL_ARCH, out_indices=(0, 1, 2, 3), spectral_impl=impl)
    model.init_weights()
    model.eval()
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        ref = model(x)
        with torch.autocast('cpu', dtype=torch.bfloat16):
            low = model(x)
    for a, b in zip(low, ref):
        assert a.shape == b.shape and torch.isfinite(a).all()
        assert rel_err(a, b) < BF16_RTOL
    # Training under autocast runs and gives finite gradients.
    model.train()
    with torch.autocast('cpu', dtype=torch.bfloat16):
        outs = model(x.requires_grad_(True))
    sum(o.float().mean() for o in outs).backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    assert torch.isfinite(x.grad).all()


@pytest.mark.parametrize('size', [(33, 47), (5, 3), (2, 2), (1, 1), (4, 6), (2, 7), (64, 96)],
                         ids=lambda s: f'{s[0]}x{s[1]}')
@pytest.mark.parametrize('radius', [1, 2])
def test_traced_sizes_basis_matches_fft(size, radius):
    """The modes built from sizes given as tensors (how an exported graph follows dynamic
    sizes: fixed row count, absent bins as zero rows) filter as the FFT reference does."""
    torch.manual_seed(0)
    x = torch.randn(2, 5, *size)
    basis, on_circle = fourier_modes(torch.tensor(size[0]), torch.tensor(size[1]), radius,
                                     torch.float32, torch.device('cpu'))
    assert basis.shape[0] == 2 * len([(a, b) for a in range(-radius, radius + 1)
                                      for b in range(-radius, radius + 1)
                                      if a * a + b * b <= radius**2])
    coeffs = x.flatten(2) @ basis.t()
    for lam in SPECTRAL_LAMBDAS:
        far = 1 - lam
        gains = torch.where(on_circle, 1 / 3 - far, lam - far)
        got = far * x + ((coeffs * gains) @ basis).view_as(x)
        torch.testing.assert_close(got, spectral_pool_fft(x, radius, lam), atol=1e-5, rtol=1e-5)


def test_mixer_has_no_graph_break():
    mixer = SpectralPoolingMixer(20, 2, 'lowrank').eval()
    explanation = torch._dynamo.explain(mixer)(torch.randn(2, 20, 33, 47))
    assert explanation.graph_break_count == 0, explanation.break_reasons


@pytest.mark.slow  # inductor compiles C++ kernels for each form
@pytest.mark.skipif(shutil.which('g++') is None and shutil.which('c++') is None,
                    reason='torch.compile (inductor, CPU) needs a C++ compiler, none found')
@pytest.mark.parametrize('deploy', [False, True], ids=['default', 'deploy'])
def test_compile_backbone_same_outputs(deploy):
    """A two-stage SPANet (both radii), compiled, gives the eager outputs of the default form
    (graph breaks in the mixer are excluded by ``test_mixer_has_no_graph_break``); so does its
    compiled deploy form (whose MLP compiles as whole-map GEMMs)."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = SPANet(dict(layers=[1, 1], embed_dims=[16, 24], radius=[2, 1]), out_indices=(0, 1))
    model.init_weights()
    model = perturbed(model)
    compiled = torch.compile(copy.deepcopy(model).switch_to_deploy() if deploy else model)
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        expected = model(x)
        got = compiled(x)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize('deploy', [False, True], ids=['default', 'deploy'])
def test_compiled_convs_see_channels_last_maps(deploy):
    """On CPU the backbone runs channels_last; the graph torch.compile traces must too (eager
    GroupNorm keeps the layout, its meta kernel does not): every conv in the traced graph gets
    a channels_last map, as it does in eager mode."""
    torch._dynamo.reset()
    model = SPANet(dict(layers=[1, 1], embed_dims=[16, 24], radius=[2, 1]), out_indices=(0, 1))
    model.eval()
    if deploy:
        model.switch_to_deploy()
    layouts = {}

    def recording_backend(graph_module, example_inputs):
        for node in graph_module.graph.nodes:
            if node.op == 'call_function' and node.target in (torch.conv2d, F.conv2d):
                value = node.args[0].meta['example_value']
                layouts[node.name] = (value.is_contiguous(memory_format=torch.channels_last)
                                      and not value.is_contiguous())
        return graph_module  # runs the traced graph as it is

    with torch.no_grad():
        torch.compile(model, backend=recording_backend)(torch.randn(2, 3, 64, 96))
    assert len(layouts) >= 2 * (4 if deploy else 6) + 2, layouts  # the blocks' convs and more
    assert all(layouts.values()), layouts
    torch._dynamo.reset()
