# Copyright (c) spanet_mm contributors. All rights reserved.
"""Distributed training without CUDA (gloo), which mmengine 0.10.7 does not support by itself.

With ``--launcher pytorch`` mmengine's ``init_dist`` always calls ``torch.cuda.set_device``
("Found no NVIDIA driver"), and the Runner's default DDP wrapper passes
``device_ids=[LOCAL_RANK]``, which DDP rejects for CPU modules. :func:`prepare_cpu_distributed`
avoids both; ``tools/train.py``/``tools/test.py`` call it before building the Runner.
"""
import atexit
import os

import torch
import torch.distributed as torch_dist


def prepare_cpu_distributed(cfg, launcher: str) -> bool:
    """Sets up gloo and a CPU DDP wrapper when ``launcher`` is distributed and there is no GPU.

    Initializes the default process group from the launcher's environment (``RANK``,
    ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``, as torchrun and ``dist_train.sh`` set
    them) and, unless the config has its own ``model_wrapper_cfg``, wraps the model in
    ``MMDistributedDataParallel`` without ``device_ids`` (the config's
    ``find_unused_parameters`` is kept). Returns whether it did anything.
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
        # mmengine never destroys the group; a gloo group still alive at interpreter exit can
        # abort the process ("terminate called without an active exception") after a
        # successful run, which torchrun reports as a failure.
        atexit.register(_destroy_process_group)
    if cfg.get('model_wrapper_cfg') is None:
        cfg.model_wrapper_cfg = dict(
            type='MMDistributedDataParallel',
            device_ids=None,
            broadcast_buffers=False,
            find_unused_parameters=cfg.get('find_unused_parameters', False))
    return True


def _destroy_process_group() -> None:
    if torch_dist.is_initialized():
        torch_dist.destroy_process_group()
