# Copyright (c) spanet_mm contributors. All rights reserved.
"""Runner-level reliability (exact resume, checkpoint checks, atomic checkpoint writes, an
optimizer constructor refusing ``paramwise_cfg`` settings mmengine would ignore), dataset
checks, the CPU-only workarounds (:mod:`.cpu`: gloo DDP, CPU AMP, mmcv's float32-only ops), and
what the tools do around the Runner (:mod:`.launch`; tools/test.py's per-toolbox options:
:mod:`.evaluation_options`)."""
from .atomic_fileio import (AtomicLocalBackend, DeferredCheckpointRemovalHook,
                            install_atomic_local_backend)
from .cpu import (CPUAmpOptimWrapper, finish_distributed, prepare_cpu_distributed,
                  run_mmcv_cpu_ops_in_float32)
from .dataset_checks import (DatasetFormatError, DatasetNotFoundError, check_dataset_formats,
                             check_datasets)
from .hooks import (CheckpointCheckHook, CheckpointMismatchError, ExactResumeError,
                    RNGStateHook)
from .launch import ConfigKeyError, check_cfg_options
from .optim_constructor import CheckedOptimWrapperConstructor

install_atomic_local_backend()  # checkpoints are written atomically (no truncated files)

__all__ = [
    'AtomicLocalBackend', 'CPUAmpOptimWrapper', 'CheckedOptimWrapperConstructor',
    'CheckpointCheckHook', 'CheckpointMismatchError',
    'ConfigKeyError', 'DatasetFormatError', 'DatasetNotFoundError',
    'DeferredCheckpointRemovalHook', 'ExactResumeError', 'RNGStateHook', 'check_cfg_options',
    'check_dataset_formats', 'check_datasets', 'finish_distributed',
    'install_atomic_local_backend', 'prepare_cpu_distributed', 'run_mmcv_cpu_ops_in_float32'
]
