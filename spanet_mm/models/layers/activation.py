# Copyright (c) spanet_mm contributors. All rights reserved.
"""The MLP's GELU on channels_last maps.

PyTorch's CPU GELU takes a slower path for a 4-D tensor in channels_last layout than for the
same memory seen as a contiguous ``(N, H, W, C)`` tensor: about 2x in forward and 1.4-1.7x in
backward for a stage-1 hidden map (8x256x56x56, float32 and bfloat16; docs/benchmark.md).
The other element-wise ops SPANet uses (add, mul) run equally fast in either view. So the
GELU computes on the contiguous NHWC view of the map; the result is the same channels_last
map, with the values of GELU of the NCHW map (the same contiguous kernel; only the elements
that fall in its vectorized loop's tail can differ in the last bit).
"""
import torch.nn as nn
import torch.nn.functional as F
from mmcv.cnn import build_activation_layer
from torch import Tensor

from .spam import is_channels_last, is_exporting


class ChannelsLastGELU(nn.GELU):
    """``nn.GELU`` that runs its kernel on the contiguous NHWC view of a channels_last CPU
    map. Same module interface, no parameters; other inputs, and traces for export (where the
    permutes would become graph nodes), go to ``nn.GELU`` unchanged."""

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or x.device.type != 'cpu' or not is_channels_last(x) or is_exporting():
            return super().forward(x)
        tokens = x.permute(0, 2, 3, 1)  # a contiguous view, no copy
        return F.gelu(tokens, approximate=self.approximate).permute(0, 3, 1, 2)


def build_mlp_activation(act_cfg: dict) -> nn.Module:
    """``build_activation_layer(act_cfg)``, with a plain ``nn.GELU`` replaced by its
    channels_last-aware form (same ``approximate``); any other activation as built."""
    act = build_activation_layer(act_cfg)
    if type(act) is nn.GELU:
        return ChannelsLastGELU(approximate=act.approximate)
    return act
