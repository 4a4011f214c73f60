# Copyright (c) spanet_mm contributors. All rights reserved.
from .checkpoint_check_hook import CheckpointCheckHook, CheckpointMismatchError
from .rng_state_hook import RNGStateHook

__all__ = ['CheckpointCheckHook', 'CheckpointMismatchError', 'RNGStateHook']
