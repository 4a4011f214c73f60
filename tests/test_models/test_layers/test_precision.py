"""Autocast on CPUs without lower-precision kernels (spanet_mm/models/layers/precision.py).

The reference for every value is PyTorch itself: ``F.conv2d`` / the mixer outside autocast
(float32 kernels), and native autocast where this CPU has bfloat16 kernels. Whether it has
them is asked of oneDNN directly.
"""
import pytest
import torch

from spanet_mm.models import SPANet
from spanet_mm.models.layers import AutocastConv2d, SpectralPoolingMixer

NATIVE_BF16 = torch.ops.mkldnn._is_mkldnn_bf16_supported()

CONVS = {  # the kinds of conv SPANet has
    '1x1': dict(in_channels=16, out_channels=24, kernel_size=1),
    'depthwise_1x7': dict(in_channels=16, out_channels=16, kernel_size=(1, 7), padding=(0, 3),
                          groups=16),
    'stem_7x7_stride4': dict(in_channels=3, out_channels=16, kernel_size=7, stride=4,
                             padding=2),
}


def expected_under_autocast(fn, x):
    """What the layer must return under CPU bfloat16 autocast: native autocast's result where
    the kernels exist, else the float32 result in bfloat16."""
    with torch.no_grad():
        if NATIVE_BF16:
            with torch.autocast('cpu', dtype=torch.bfloat16):
                return fn(x)
        return fn(x.float()).bfloat16()


@pytest.mark.parametrize('kind', sorted(CONVS))
@pytest.mark.parametrize('layout', ['nchw', 'nhwc'])
@pytest.mark.parametrize('input_dtype', [torch.float32, torch.bfloat16], ids=['fp32', 'bf16'])
def test_conv_under_cpu_autocast(kind, layout, input_dtype):
    torch.manual_seed(0)
    conv = AutocastConv2d(**CONVS[kind])
    reference = torch.nn.Conv2d(**CONVS[kind])
    reference.load_state_dict(conv.state_dict())
    x = torch.randn(2, conv.in_channels, 23, 29).to(input_dtype)
    if layout == 'nhwc':
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        with torch.autocast('cpu', dtype=torch.bfloat16):
            got = conv(x)
        outside = conv(x.float())
    assert got.dtype == torch.bfloat16  # autocast's dtype contract
    torch.testing.assert_close(got, expected_under_autocast(reference, x), atol=0, rtol=0)
    # Outside autocast: exactly nn.Conv2d.
    torch.testing.assert_close(outside, reference(x.float()), atol=0, rtol=0)


def test_lowrank_context_under_cpu_autocast():
    """The low-rank context's products (a 1x1 conv, two batched GEMMs) as one float32 unit."""
    torch.manual_seed(0)
    mixer = SpectralPoolingMixer(12, 2, 'lowrank').eval()
    x = torch.randn(2, 12, 17, 22).bfloat16()
    with torch.no_grad(), torch.autocast('cpu', dtype=torch.bfloat16):
        got = mixer.context_lowrank(x)
    assert got.dtype == torch.bfloat16
    if not NATIVE_BF16:
        with torch.no_grad():
            expected = mixer.context_lowrank(x.float()).bfloat16()
        torch.testing.assert_close(got, expected, atol=0, rtol=0)


def test_every_conv_of_spanet_follows_autocast():
    """All convs of the backbone (stem, downsampling, mixer, MLP) are AutocastConv2d: none is
    left to the emulated kernels."""
    model = SPANet(dict(layers=[1, 1, 1, 1], embed_dims=[8, 8, 16, 16]))
    convs = [name for name, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 4 + 4 * 9  # stem, 3 downsampling; per block 6 and the 3 pw_i
    plain = [name for name, m in model.named_modules()
             if isinstance(m, torch.nn.Conv2d) and not isinstance(m, AutocastConv2d)]
    assert not plain, plain


def test_training_under_cpu_autocast_matches_float32():
    """Gradients flow through the float32 kernels: bfloat16-autocast gradients of a small
    SPANet within 3% (relative norm) of float32's."""
    torch.manual_seed(0)
    model = SPANet(dict(layers=[1, 1, 1, 1], embed_dims=[8, 8, 16, 16]), init_cfg=None)
    model.init_weights()
    x = torch.randn(2, 3, 64, 64)
    grads = {}
    for low in (False, True):
        model.zero_grad()
        with torch.autocast('cpu', dtype=torch.bfloat16, enabled=low):
            out = model(x)[-1]
        out.float().square().mean().backward()
        grads[low] = torch.cat([p.grad.flatten() for p in model.parameters()])
    err = ((grads[True] - grads[False]).norm() / grads[False].norm()).item()
    assert err < 0.03, err


def test_float64_is_left_to_autocast():
    """Autocast does not touch float64; neither does the layer."""
    torch.manual_seed(0)
    conv = AutocastConv2d(4, 6, 3, padding=1).double()
    x = torch.randn(1, 4, 5, 7, dtype=torch.float64)
    with torch.no_grad(), torch.autocast('cpu', dtype=torch.bfloat16):
        got = conv(x)
        expected = torch.nn.functional.conv2d(x, conv.weight, conv.bias, padding=1)
    assert expected.dtype == torch.float64
    assert got.dtype == torch.float64 and torch.equal(got, expected)
