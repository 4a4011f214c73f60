# Copyright (c) spanet_mm contributors. All rights reserved.
"""Runner-level reliability: exact resume, checkpoint and input checks."""
from .atomic_fileio import (AtomicLocalBackend, DeferredCheckpointRemovalHook,
                            install_atomic_local_backend)
from .checks import (ConfigKeyError, DatasetFormatError, DatasetNotFoundError,
                     add_reliability_hooks, check_cfg_options, check_dataset_formats,
                     check_datasets)
from .dist import prepare_cpu_distributed
from .hooks import (CheckpointCheckHook, CheckpointMismatchError, ExactResumeError,
                    RNGStateHook)
from .optim_wrapper import CPUAmpOptimWrapper

install_atomic_local_backend()  # checkpoints are written atomically (no truncated files)

__all__ = [
    'AtomicLocalBackend', 'CPUAmpOptimWrapper', 'CheckpointCheckHook', 'CheckpointMismatchError',
    'DeferredCheckpointRemovalHook',
    'ConfigKeyError', 'DatasetFormatError', 'DatasetNotFoundError', 'ExactResumeError',
    'RNGStateHook',
    'add_reliability_hooks', 'check_cfg_options', 'check_dataset_formats', 'check_datasets',
    'install_atomic_local_backend', 'prepare_cpu_distributed'
]
