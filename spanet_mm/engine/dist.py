# Copyright (c) spanet_mm contributors. All rights reserved.
"""Distributed training without CUDA (gloo), which mmengine 0.10.7 does not support by itself.

With ``--launcher pytorch`` mmengine's ``init_dist`` always calls ``torch.cuda.set_device``
("Found no NVIDIA driver"), and the Runner's default DDP wrapper passes
``device_ids=[LOCAL_RANK]``, which DDP rejects for CPU modules. :func:`prepare_cpu_distributed`
avoids both; ``tools/train.py``/``tools/test.py`` call it before building the Runner, and
:func:`finish_distributed` when the run is over.
"""
import logging
import os
import sys

import torch
import torch.distributed as torch_dist
from mmengine.logging import print_log


def prepare_cpu_distributed(cfg, launcher: str) -> bool:
    """Sets up gloo and a CPU DDP wrapper when ``launcher`` is distributed and there is no GPU.

    Initializes the default process group from the launcher's environment (``RANK``,
    ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``, as torchrun and ``dist_train.sh`` set
    them) and, unless the config has its own ``model_wrapper_cfg``, wraps the model in
    ``MMDistributedDataParallel`` without ``device_ids`` (the config's
    ``find_unused_parameters`` is kept). PyTorch's SyncBatchNorm refuses CPU tensors, so
    ``SyncBN`` layers of the config become ``BN``. Idempotent. Returns whether it did anything.
    """
    if launcher == 'none' or torch.cuda.is_available():
        return False
    if launcher != 'pytorch':
        raise RuntimeError(
            f'--launcher {launcher} without CUDA is not supported; use --launcher pytorch '
            '(tools/dist_train.sh) for CPU processes with the gloo backend.')
    if not torch_dist.is_initialized():
        missing = [k for k in ('RANK', 'WORLD_SIZE', 'MASTER_ADDR', 'MASTER_PORT')
                   if k not in os.environ]
        if missing:
            raise RuntimeError(f'--launcher pytorch needs the environment variables {missing}; '
                               'start the job with tools/dist_train.sh (torchrun).')
        torch_dist.init_process_group(backend='gloo')
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
