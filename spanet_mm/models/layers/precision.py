# Copyright (c) spanet_mm contributors. All rights reserved.
"""Autocast on CPUs that have no lower-precision kernels.

CPU autocast runs convolutions and matrix products in bfloat16 (or float16). On CPUs without
AVX512-BF16/AMX (AVX512-FP16 for float16) PyTorch has no such kernels and emulates them, several
times slower than float32: a bfloat16 depthwise conv falls back to a loop over the channels,
a bfloat16 ``baddbmm`` to one ``addmm`` per batch element (measurements: docs/benchmark.md).

There, SPANet's convs and the low-rank context compute in float32 kernels and return the
autocast dtype: what autocast promises (bfloat16 outputs, so bfloat16 activations downstream)
at float32 speed and with at least bfloat16 precision. The price is training memory: such a
layer keeps its float32 input for backward, where native autocast keeps a bfloat16 copy. On
GPUs, on CPUs with the kernels, for float64 inputs and outside autocast nothing changes.
"""
import functools
from typing import Callable, Optional

import torch
import torch.nn as nn
from torch import Tensor


def cpu_has_kernels(dtype: torch.dtype) -> bool:
    """Whether oneDNN has native ``dtype`` (bfloat16 / float16) kernels on this CPU."""
    if not torch.backends.mkldnn.is_available():
        return False
    if dtype == torch.bfloat16:
        return torch.ops.mkldnn._is_mkldnn_bf16_supported()
    if dtype == torch.float16:
        return torch.ops.mkldnn._is_mkldnn_fp16_supported()
    return True


# Evaluated once at import: the answer is a property of the machine, and a plain lookup keeps
# it out of traced graphs (torch.compile, export).
_CPU_HAS_KERNELS = {dtype: cpu_has_kernels(dtype) for dtype in (torch.bfloat16, torch.float16)}


def autocast_dtype(x: Tensor) -> Optional[torch.dtype]:
    """The dtype autocast casts ``x`` to for a conv or GEMM on its device, or None (autocast
    off there, or ``x`` one it leaves alone: float64)."""
    device = x.device.type
    if x.dtype == torch.float64 or not torch.is_autocast_enabled(device):
        return None
    return torch.get_autocast_dtype(device)


def emulated_autocast_dtype(x: Tensor) -> Optional[torch.dtype]:
    """The autocast dtype if autocast is on for ``x``'s device and this CPU would emulate its
    kernels, else None."""
    dtype = autocast_dtype(x) if x.device.type == 'cpu' else None
    return None if dtype is None or _CPU_HAS_KERNELS.get(dtype, True) else dtype


def float32_kernels_under_emulated_autocast(forward: Optional[Callable] = None, *,
                                            result_dtype: Optional[Callable] = None):
    """Decorates a ``forward(self, x, *tensors)`` whose products autocast would emulate: there
    it runs with autocast off on float32 tensors and returns the dtype autocast would give,
    by default the autocast dtype, else ``result_dtype(self, autocast_dtype, x, *tensors)``
    (for a layer that also adds tensors of other dtypes to its product)."""
    if forward is None:
        return functools.partial(float32_kernels_under_emulated_autocast,
                                 result_dtype=result_dtype)

    @functools.wraps(forward)
    def wrapper(self, x: Tensor, *tensors: Tensor) -> Tensor:
        dtype = emulated_autocast_dtype(x)
        if dtype is None:
            return forward(self, x, *tensors)
        if result_dtype is not None:
            dtype = result_dtype(self, dtype, x, *tensors)
        with torch.autocast('cpu', enabled=False):
            return forward(self, x.float(), *(t.float() for t in tensors)).to(dtype)

    return wrapper


class AutocastConv2d(nn.Conv2d):
    """``nn.Conv2d`` (same parameters and state dict, called as a module in every mode) that
    under autocast on a CPU without lower-precision kernels computes in float32 and returns
    the autocast dtype (see the module docstring)."""

    @float32_kernels_under_emulated_autocast
    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x)
