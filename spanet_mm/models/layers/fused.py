# Copyright (c) spanet_mm contributors. All rights reserved.
"""Fused inference layers of a deployed SPANet block (:meth:`SPANet.switch_to_deploy`).

Each replaces "a 1x1 conv, then the residual add" by one GEMM on the ``(tokens, C)`` view of
an NHWC (channels_last) map that adds the (scaled) shortcut as its accumulator, so the branch
output is never written out and read back. :class:`FusedResidualMlp` also runs the MLP over
blocks of tokens, so that its hidden map (``mlp_ratio`` times wider) stays in cache, and on
CPUs applies an exact GELU inside its first GEMM (a oneDNN post-op). Per
element they compute what the modules they replace compute, up to float summation order
(under autocast, up to its round-off: the bias and the GELU see the GEMM's float32
accumulator before it is rounded). They are inference layers: no autograd through the
``out=`` GEMMs, no drop path. On NCHW maps (GPUs, export), under autocast on other devices than
the CPU, and on operands the unfused conv would refuse (a dtype other than the weights')
they run the plain conv and add.

Under CPU autocast they keep autocast's dtypes, with the casts made explicit (in-place and
``out=`` GEMMs get none from autocast): the GEMMs run in the autocast dtype, on operands cast
as autocast casts a conv's, and the sum has the dtype the unfused add gives (float32 where a
float32 shortcut or scale enters; the product is then added to it, as the unfused add does).
Where the CPU would emulate the autocast dtype, they compute in float32 instead and return
the same dtypes (:mod:`.precision`). Under ``torch.compile`` the fused MLP is one GEMM pair
over the whole map (``tokens_per_block`` is not used).
"""
import functools
from typing import Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from .activation import ChannelsLastGELU
from .precision import (autocast_dtype, cpu_has_kernels,
                        float32_kernels_under_emulated_autocast)
from .spam import is_channels_last, is_exporting


def tokens_of(x: Tensor) -> Tensor:
    """The ``(B*H*W, C)`` view of an NHWC map (no copy)."""
    return x.permute(0, 2, 3, 1).reshape(-1, x.shape[1])


def map_of(tokens: Tensor, like: Tensor) -> Tensor:
    """The NHWC map of ``tokens`` with ``like``'s shape."""
    batch, channels, height, width = like.shape
    return tokens.view(batch, height, width, channels).permute(0, 3, 1, 2)


def scaled_map(shortcut: Tensor, scale: Optional[Tensor]) -> Tensor:
    """``shortcut * scale`` per channel of an NCHW-shaped map (``shortcut`` without a scale):
    the unfused path."""
    return shortcut if scale is None else shortcut * scale.view(-1, 1, 1)


def scaled_shortcut(tokens: Tensor, scale: Optional[Tensor], bias: Tensor,
                    out: Optional[Tensor] = None) -> Tensor:
    """``tokens * scale + bias`` (``tokens + bias`` without a scale), a new tensor or ``out``:
    the GEMM's accumulator, with the conv's bias in it."""
    if scale is None:
        return torch.add(tokens, bias, out=out)
    return torch.addcmul(bias, tokens, scale, out=out)


def fusable(x: Tensor, shortcut: Tensor, weight: Tensor) -> bool:
    """Whether the fused GEMMs apply: NHWC maps, and operands the unfused conv takes, which
    CPU autocast casts (autocast on other devices keeps their convs: not measured there) or
    which have the weights' dtype."""
    if not (is_channels_last(x) and is_channels_last(shortcut)):
        return False
    if autocast_dtype(x) is not None:
        return x.device.type == 'cpu'
    return x.dtype == weight.dtype


def residual_dtype(module: nn.Module, branch_dtype: torch.dtype, x: Tensor,
                   shortcut: Tensor) -> torch.dtype:
    """The dtype of ``shortcut * scale + branch`` as the unfused layers compute it (type
    promotion: a float32 scale or shortcut keeps the sum float32 under autocast)."""
    dtypes = [shortcut.dtype] + ([] if module.scale is None else [module.scale.dtype])
    return functools.reduce(torch.promote_types, dtypes, branch_dtype)


def gemm_dtypes(module: nn.Module, x: Tensor, shortcut: Tensor) -> Tuple[torch.dtype,
                                                                           torch.dtype]:
    """``(product, result)`` dtypes of a fused layer: the products in the autocast dtype
    under autocast (in ``x``'s dtype outside it), the sum in the unfused add's dtype."""
    product = autocast_dtype(x) or x.dtype
    return product, residual_dtype(module, product, x, shortcut)


def accumulate_(base: Tensor, tokens: Tensor, weight_t: Tensor) -> Tensor:
    """``base += tokens @ weight_t`` in place: one GEMM into ``base`` when the dtypes agree,
    else the product in its operands' dtype added to ``base`` (as the unfused add sums a
    lower-precision branch into a float32 shortcut)."""
    if base.dtype == tokens.dtype:
        return base.addmm_(tokens, weight_t)
    return base.add_(tokens @ weight_t)


def frozen(tensor: Optional[Tensor]) -> Optional[nn.Parameter]:
    return None if tensor is None else nn.Parameter(tensor.detach().clone(),
                                                    requires_grad=False)


#: dtypes in which oneDNN's CPU GEMM has the GELU post-op on this machine (bfloat16 only
#: with native kernels: PyTorch refuses its bfloat16 oneDNN GEMMs elsewhere). Evaluated
#: once at import, as in :mod:`.precision`.
GELU_IN_GEMM_DTYPES = (torch.float32, ) + ((torch.bfloat16, ) if cpu_has_kernels(
    torch.bfloat16) else ())


def gelu_in_gemm_applies(act: nn.Module, x: Tensor) -> bool:
    """Whether ``act`` can run as the epilogue of oneDNN's CPU GEMM on ``x``: the exact (erf)
    GELU, CPU tensors of a dtype in :data:`GELU_IN_GEMM_DTYPES`, oneDNN built and enabled,
    and not traced for export (ONNX has no such op)."""
    return (type(act) in (nn.GELU, ChannelsLastGELU) and act.approximate == 'none'
            and x.device.type == 'cpu' and x.dtype in GELU_IN_GEMM_DTYPES
            and torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled
            and not is_exporting())


def linear_gelu(tokens: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tensor:
    """``gelu(F.linear(tokens, weight, bias))`` (exact GELU) in one oneDNN GEMM that applies
    the GELU to its output tiles (oneDNN's post-op, the op inductor's linear + GELU fusion
    targets): the wide hidden block is written once instead of written, read and rewritten."""
    return torch.ops.mkldnn._linear_pointwise(tokens, weight, bias, 'gelu', [None], 'none')


class FusedResidualConv1x1(nn.Module):
    """``shortcut * scale + conv1x1(x)`` as one GEMM (the deploy form of ``proj_out`` and the
    token mixer's residual add)."""

    def __init__(self, conv: nn.Conv2d, scale: Optional[Tensor]):
        super().__init__()
        self.weight = frozen(conv.weight)  # the conv's (C_out, C_in, 1, 1)
        self.bias = frozen(conv.bias)
        self.scale = frozen(scale)

    @float32_kernels_under_emulated_autocast(result_dtype=residual_dtype)
    def forward(self, x: Tensor, shortcut: Tensor) -> Tensor:
        if not fusable(x, shortcut, self.weight):
            return scaled_map(shortcut, self.scale) + F.conv2d(x, self.weight, self.bias)
        product, result = gemm_dtypes(self, x, shortcut)
        with torch.autocast(x.device.type, enabled=False):  # the casts are explicit
            base = scaled_shortcut(tokens_of(shortcut), self.scale, self.bias.to(result))
            # The GEMM reads the transposed view as it is (no copy unless cast).
            weight_t = self.weight.flatten(1).t().to(product)
            return map_of(accumulate_(base, tokens_of(x).to(product), weight_t), shortcut)


class FusedResidualMlp(nn.Module):
    """``shortcut * scale + fc2(act(fc1(x)))`` over blocks of tokens, each ending in one GEMM
    that accumulates onto the shortcut (the deploy form of the MLP and its residual add).

    Args:
        mlp (nn.Module): The block's MLP, with 1x1 convs ``fc1``, ``fc2`` and ``act``.
        scale (Tensor, optional): The shortcut scale, or None.
        tokens_per_block (int): Tokens per block. The hidden block then takes
            ``tokens_per_block x hidden`` elements (4 MiB in float32 for 4096 tokens and 256
            channels): within the last-level cache, and large enough to keep the GEMMs
            efficient.
    """

    def __init__(self, mlp: nn.Module, scale: Optional[Tensor], tokens_per_block: int = 4096):
        super().__init__()
        # The convs' own (C_out, C_in, 1, 1) weights.
        self.weight1, self.bias1 = frozen(mlp.fc1.weight), frozen(mlp.fc1.bias)
        self.act = mlp.act
        self.weight2, self.bias2 = frozen(mlp.fc2.weight), frozen(mlp.fc2.bias)
        self.scale = frozen(scale)
        self.tokens_per_block = tokens_per_block

    @float32_kernels_under_emulated_autocast(result_dtype=residual_dtype)
    def forward(self, x: Tensor, shortcut: Tensor) -> Tensor:
        if not fusable(x, shortcut, self.weight1):
            hidden = self.act(F.conv2d(x, self.weight1, self.bias1))
            return scaled_map(shortcut, self.scale) + F.conv2d(hidden, self.weight2, self.bias2)
        product, result = gemm_dtypes(self, x, shortcut)
        with torch.autocast(x.device.type, enabled=False):  # the casts are explicit
            inputs, residual = tokens_of(x).to(product), tokens_of(shortcut)
            weight1, bias1 = self.weight1.flatten(1).to(product), self.bias1.to(product)
            weight2_t = self.weight2.flatten(1).t().to(product)  # a view unless cast
            bias2 = self.bias2.to(result)
            if torch.compiler.is_compiling():
                # Whole-map GEMMs, in one graph: inductor fuses the activation and plans the
                # buffers itself, while a loop of out= GEMMs into slices compiles into copies.
                hidden = self.act(F.linear(inputs, weight1, bias1))
                base = scaled_shortcut(residual, self.scale, bias2)
                return map_of(accumulate_(base, hidden, weight2_t), shortcut)
            out = torch.empty(residual.shape, dtype=result, device=residual.device)
            gelu_in_gemm = gelu_in_gemm_applies(self.act, inputs)
            for start in range(0, inputs.shape[0], self.tokens_per_block):
                end = start + self.tokens_per_block
                if gelu_in_gemm:
                    hidden = linear_gelu(inputs[start:end], weight1, bias1)
                else:
                    hidden = self.act(F.linear(inputs[start:end], weight1, bias1))
                block = scaled_shortcut(residual[start:end], self.scale, bias2,
                                        out=out[start:end])
                accumulate_(block, hidden, weight2_t)
            return map_of(out, shortcut)
