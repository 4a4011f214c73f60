# Copyright (c) spanet_mm contributors. All rights reserved.
"""The MLP's GELU on channels_last maps (``spanet_mm/models/layers/activation.py``)."""
import pytest
import torch
import torch.nn as nn

from conftest import OpsRun
from spanet_mm.models import SPANet
from spanet_mm.models.layers.activation import ChannelsLastGELU


@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16])
@pytest.mark.parametrize('approximate', ['none', 'tanh'])
def test_channels_last_gelu_is_gelu_of_the_nchw_map(dtype, approximate):
    """Values and gradients are PyTorch's GELU of the same map in NCHW layout (to the last
    bits: the vectorized kernel's tail falls on other elements in the other order); the output
    keeps the channels_last layout; the kernels, forward and backward, run on contiguous
    tensors (the fast path)."""
    torch.manual_seed(0)
    nchw = torch.randn(2, 24, 9, 11, dtype=dtype)
    grad = torch.randn_like(nchw)
    x = nchw.to(memory_format=torch.channels_last).requires_grad_()
    reference_input = nchw.clone().requires_grad_()
    reference = nn.GELU(approximate=approximate)(reference_input)
    reference.backward(grad)

    with OpsRun() as ops:
        out = ChannelsLastGELU(approximate=approximate)(x)
        out.backward(grad.to(memory_format=torch.channels_last))
    torch.testing.assert_close(out, reference)
    torch.testing.assert_close(x.grad, reference_input.grad)
    assert out.is_contiguous(memory_format=torch.channels_last) and not out.is_contiguous()
    gelu_kernels = [call for call in ops.calls if call.name in ('gelu', 'gelu_backward')]
    assert [call.contiguous for call in gelu_kernels] == [True, True]


def test_other_inputs_go_to_gelu_unchanged():
    """NCHW maps and non-4-D tensors: exactly ``nn.GELU``."""
    for x in (torch.randn(2, 8, 5, 5), torch.randn(3, 7)):
        assert torch.equal(ChannelsLastGELU()(x), nn.GELU()(x))


@pytest.mark.parametrize('act_cfg, expected', [
    (dict(type='GELU'), ChannelsLastGELU),
    (dict(type='ReLU'), nn.ReLU),
])
def test_spanet_mlp_activation(act_cfg, expected):
    """The MLP's GELU (the official activation) is the channels_last-aware form; another
    activation is built as configured."""
    model = SPANet(arch='s', act_cfg=act_cfg)
    acts = [block.mlp.act for stage in model.stages for block in stage]
    assert acts and all(type(act) is expected for act in acts)
