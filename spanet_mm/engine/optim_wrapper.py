# Copyright (c) spanet_mm contributors. All rights reserved.
"""Mixed-precision training on CPUs, which mmengine's ``AmpOptimWrapper`` refuses."""
import functools
import importlib
from contextlib import contextmanager
from typing import Union

import torch
import torch.nn as nn
from mmengine.optim import OptimWrapper
from mmengine.registry import OPTIM_WRAPPERS


#: mmcv autograd Functions whose CPU kernels only take float32 (module, class).
FLOAT32_CPU_OPS = (('mmcv.ops.nms', 'NMSop'), ('mmcv.ops.roi_align', 'RoIAlignFunction'))


def _as_float32(args):
    return [a.float() if torch.is_tensor(a) and a.dtype in (torch.bfloat16, torch.float16)
            else a for a in args]


def _float32_forward(forward):
    """Under CPU autocast: float32 inputs, autocast off inside, output back in the input's
    (reduced) dtype, as the op's CUDA kernels would return it."""

    @functools.wraps(forward)
    def wrapped(ctx, *args):
        if not torch.is_autocast_enabled('cpu'):
            return forward(ctx, *args)
        dtype = next((a.dtype for a in args if torch.is_tensor(a) and a.is_floating_point()),
                     None)
        with torch.autocast('cpu', enabled=False):
            out = forward(ctx, *_as_float32(args))
        if torch.is_tensor(out) and out.is_floating_point() and dtype is not None:
            out = out.to(dtype)
        return out

    return wrapped


def _float32_backward(backward):
    """Reduced-precision gradients reach the float32-only kernel as float32; autograd casts
    the returned gradients back to the inputs' dtypes."""

    @functools.wraps(backward)
    def wrapped(ctx, *grads):
        if any(torch.is_tensor(g) and g.device.type == 'cpu' for g in grads):
            grads = _as_float32(grads)
        return backward(ctx, *grads)

    return wrapped


def _run_in_float32_under_cpu_autocast(module_name: str, class_name: str) -> None:
    try:
        function = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError):
        return  # mmcv-lite or another mmcv version: nothing to adapt
    if getattr(function, '_spanet_mm_cpu_autocast', False):
        return
    function.forward = staticmethod(_float32_forward(function.forward))
    function.backward = staticmethod(_float32_backward(function.backward))
    function._spanet_mm_cpu_autocast = True


@OPTIM_WRAPPERS.register_module()
class CPUAmpOptimWrapper(OptimWrapper):
    """Runs the training step under ``torch.autocast('cpu')`` (bfloat16 by default).

    mmengine 0.10.7's ``AmpOptimWrapper`` asserts a CUDA, NPU, MLU or MUSA device. On CPUs,
    bfloat16 autocast needs no loss scaling (bf16 has float32's exponent range), so this is the
    plain ``OptimWrapper`` with an autocast context. ``tools/train.py --amp`` picks it when
    there is no CUDA device. mmcv's CPU ``nms`` and ``RoIAlign`` kernels only take float32, so
    they are set to receive float32 under CPU autocast (detectors need them).

    Args:
        dtype (str | torch.dtype): Autocast dtype, ``'bfloat16'`` (default) or ``'float16'``.
        **kwargs: Passed to :class:`mmengine.optim.OptimWrapper`.
    """

    def __init__(self, dtype: Union[str, torch.dtype] = 'bfloat16', **kwargs):
        super().__init__(**kwargs)
        dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
        assert dtype in (torch.bfloat16, torch.float16), \
            f'CPUAmpOptimWrapper autocasts to bfloat16 or float16, not {dtype}.'
        self.cast_dtype = dtype
        for module_name, class_name in FLOAT32_CPU_OPS:
            _run_in_float32_under_cpu_autocast(module_name, class_name)

    @contextmanager
    def optim_context(self, model: nn.Module):
        with super().optim_context(model), torch.autocast('cpu', dtype=self.cast_dtype):
            yield
