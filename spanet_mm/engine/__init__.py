# Copyright (c) spanet_mm contributors. All rights reserved.
"""Runner-level reliability (exact resume, checkpoint checks, atomic checkpoint writes), input
checks, CPU-only DDP and AMP, and what the tools do around the Runner (:mod:`.launch`)."""
from .atomic_fileio import (AtomicLocalBackend, DeferredCheckpointRemovalHook,
                            install_atomic_local_backend)
from .checks import (ConfigKeyError, DatasetFormatError, DatasetNotFoundError,
                     check_cfg_options, check_dataset_formats, check_datasets)
from .dist import finish_distributed, prepare_cpu_distributed
from .hooks import (CheckpointCheckHook, CheckpointMismatchError, ExactResumeError,
                    RNGStateHook)
from .optim_wrapper import CPUAmpOptimWrapper

install_atomic_local_backend()  # checkpoints are written atomically (no truncated files)

__all__ = [
    'AtomicLocalBackend', 'CPUAmpOptimWrapper', 'CheckpointCheckHook', 'CheckpointMismatchError',
    'ConfigKeyError', 'DatasetFormatError', 'DatasetNotFoundError',
    'DeferredCheckpointRemovalHook', 'ExactResumeError', 'RNGStateHook', 'check_cfg_options',
    'check_dataset_formats', 'check_datasets', 'finish_distributed',
    'install_atomic_local_backend', 'prepare_cpu_distributed'
]
