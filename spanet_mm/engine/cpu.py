# Copyright (c) spanet_mm contributors. All rights reserved.
"""Training on CPUs where mmengine 0.10.7 assumes an accelerator: the one home of the CPU-only
workarounds. Each is explicit (a named call or a config type) and idempotent.

- **Distributed (gloo)**: with ``--launcher pytorch`` mmengine's ``init_dist`` always calls
  ``torch.cuda.set_device`` ("Found no NVIDIA driver"), and the Runner's default DDP wrapper
  passes ``device_ids=[LOCAL_RANK]``, which DDP rejects for CPU modules.
  :func:`prepare_cpu_distributed` avoids both (``tools/train.py``/``tools/test.py`` call it
  before building the Runner), and :func:`finish_distributed` ends a run when it is over.
- **Mixed precision**: mmengine's ``AmpOptimWrapper`` refuses CPUs; :class:`CPUAmpOptimWrapper`
  (``optim_wrapper.type``, or ``--amp`` without CUDA) trains under CPU autocast.
- **mmcv's float32-only CPU ops** under CPU autocast: :func:`run_mmcv_cpu_ops_in_float32`,
  which the wrapper calls.
"""
import datetime
import functools
import importlib
import logging
import os
import sys
from contextlib import contextmanager
from typing import Union

import torch
import torch.distributed as torch_dist
import torch.nn as nn
from mmengine.config import ConfigDict
from mmengine.logging import print_log
from mmengine.optim import OptimWrapper
from mmengine.registry import OPTIM_WRAPPERS


def prepare_cpu_distributed(cfg, launcher: str) -> bool:
    """Sets up gloo and a CPU DDP wrapper when ``launcher`` is distributed and there is no GPU.

    Initializes the default process group from the launcher's environment (``RANK``,
    ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``, as torchrun and ``dist_train.sh`` set
    them) and, unless the config has its own ``model_wrapper_cfg``, wraps the model in
    ``MMDistributedDataParallel`` without ``device_ids`` (the config's
    ``find_unused_parameters`` is kept). PyTorch's SyncBatchNorm refuses CPU tensors, so
    ``SyncBN`` layers of the config become ``BN``. The group uses ``env_cfg.dist_cfg``'s
    ``timeout`` (seconds) if the config sets one, and ``env_cfg.dist_cfg.backend`` becomes
    ``'gloo'``. Idempotent. Returns whether it did anything.
    """
    if launcher == 'none' or torch.cuda.is_available():
        return False
    if launcher != 'pytorch':
        raise RuntimeError(
            f'--launcher {launcher} without CUDA is not supported; use --launcher pytorch '
            '(tools/dist_train.sh) for CPU processes with the gloo backend.')
    missing = [k for k in ('RANK', 'WORLD_SIZE', 'MASTER_ADDR', 'MASTER_PORT')
               if k not in os.environ]
    if missing and not torch_dist.is_initialized():
        raise RuntimeError(f'--launcher pytorch needs the environment variables {missing}; '
                           'start the job with tools/dist_train.sh (torchrun).')
    # The Runner initialises no group when there is one: the config's dist_cfg is applied here
    # (its timeout in seconds, as mmengine's init_dist reads it), and records the backend.
    env_cfg = cfg.setdefault('env_cfg', ConfigDict())
    dist_cfg = env_cfg.setdefault('dist_cfg', ConfigDict())
    dist_cfg['backend'] = 'gloo'
    if not torch_dist.is_initialized():
        seconds = dist_cfg.get('timeout')
        torch_dist.init_process_group(  # timeout None: torch's default
            backend='gloo',
            timeout=None if seconds is None else datetime.timedelta(seconds=seconds))
    if _sync_bn_to_bn(cfg.get('model')):
        print_log('CPU distributed run: PyTorch has no SyncBatchNorm on CPUs, so SyncBN layers '
                  'are built as BN (statistics per process).', logger='current', level=30)
    if cfg.get('model_wrapper_cfg') is None:
        cfg.model_wrapper_cfg = dict(
            type='MMDistributedDataParallel',
            device_ids=None,
            broadcast_buffers=False,
            find_unused_parameters=cfg.get('find_unused_parameters', False))
    return True


def _sync_bn_to_bn(node) -> bool:
    """Replaces ``type='SyncBN'`` by ``'BN'`` in a config tree; True if any was found."""
    found = False
    if isinstance(node, dict):
        if node.get('type') == 'SyncBN':
            node['type'] = 'BN'
            found = True
        for value in node.values():
            found = _sync_bn_to_bn(value) or found
    elif isinstance(node, (list, tuple)):
        for value in node:
            found = _sync_bn_to_bn(value) or found
    return found


def finish_distributed() -> None:
    """Ends a finished distributed run: every rank done, group destroyed, logs flushed.

    Call it at the very end of a tool, after the Runner has been released. Without a process
    group it does nothing; with NCCL it destroys the group and returns.

    A gloo group that has served DDP outlives ``destroy_process_group`` (torch 2.14): its
    ``pt_gloo_runloop`` and ``gloo_tcp_loop`` threads keep running after the DDP wrapper is
    freed and the group destroyed, so the interpreter's exit destroys C++ statics under running
    threads. ``std::terminate`` then aborts a rank whose run succeeded ("terminate called
    without an active exception", SIGABRT), at random, and torchrun reports the run as failed.
    So after the barrier (no rank is still communicating) and the flush of every log handler
    and stream, the process ends with ``os._exit(0)``, leaving no C++ teardown to race.
    """
    if not (torch_dist.is_available() and torch_dist.is_initialized()):
        return
    gloo = torch_dist.get_backend() == 'gloo'
    torch_dist.barrier()
    torch_dist.destroy_process_group()
    if not gloo:
        return
    logging.shutdown()  # flushes and closes mmengine's log files
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(0)


# --- mixed precision -----------------------------------------------------------------------
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


def run_mmcv_cpu_ops_in_float32() -> None:
    """Makes the mmcv ops of :data:`FLOAT32_CPU_OPS` take float32 under CPU autocast (their
    CPU kernels refuse bfloat16) and return the autocast dtype; outside CPU autocast, and on
    other devices, they are unchanged. Patches the autograd Functions once per process;
    does nothing where mmcv lacks them (mmcv-lite)."""
    for module_name, class_name in FLOAT32_CPU_OPS:
        try:
            function = getattr(importlib.import_module(module_name), class_name)
        except (ImportError, AttributeError):
            continue  # mmcv-lite or another mmcv version: nothing to adapt
        if getattr(function, '_spanet_mm_cpu_autocast', False):
            continue
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
    building the wrapper calls :func:`run_mmcv_cpu_ops_in_float32` (detectors need them).

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
        run_mmcv_cpu_ops_in_float32()

    @contextmanager
    def optim_context(self, model: nn.Module):
        with super().optim_context(model), torch.autocast('cpu', dtype=self.cast_dtype):
            yield
