# Copyright (c) spanet_mm contributors. All rights reserved.
from .checkpoint_check_hook import CheckpointCheckHook, CheckpointMismatchError
from .rng_state_hook import EpochWorkerSeeder, ExactResumeError, RNGStateHook

__all__ = [
    'CheckpointCheckHook', 'CheckpointMismatchError', 'EpochWorkerSeeder', 'ExactResumeError',
    'RNGStateHook'
]
