# Copyright (c) spanet_mm contributors. All rights reserved.
"""Refuse checkpoints that do not fit the model instead of running with random weights.

mmengine's ``Runner.load_checkpoint`` (``load_from``, ``tools/test.py CONFIG CKPT``) loads
non-strictly and only logs the keys that did not fit, so a ResNet checkpoint, a SPANet-S file
given to a SPANet-M config or an unconverted official file would silently evaluate or fine-tune
a randomly initialised backbone.
"""
import re
from typing import Sequence

from mmengine.hooks import Hook
from mmengine.model import BaseTTAModel, is_model_wrapper
from mmengine.registry import HOOKS

from ...checkpoint import CheckpointMismatchError, check_state_dict

__all__ = ['CheckpointCheckHook', 'CheckpointMismatchError']


@HOOKS.register_module()
class CheckpointCheckHook(Hook):
    """Checks every checkpoint the Runner loads against the model.

    Raises :class:`~spanet_mm.checkpoint.CheckpointMismatchError` when a backbone tensor is
    missing, has another shape or has no counterpart in the model (SPANet's output norms
    ``backbone.norm<i>`` may be missing: they start as identity), or when no tensor of the
    model is in the checkpoint.
    Other missing or mismatched tensors (e.g. a classification head with another number of
    classes when fine-tuning) are logged as a warning.

    Args:
        strict_prefixes (Sequence[str]): Key prefixes that must all fit.
            Defaults to ``('backbone.', )``.
        allowed_missing (Sequence[str]): Regexes of keys that may be missing.
            Defaults to ``(r'backbone\\.norm\\d+\\.', )``.
    """

    priority = 'VERY_HIGH'

    def __init__(self, strict_prefixes: Sequence[str] = ('backbone.', ),
                 allowed_missing: Sequence[str] = (r'backbone\.norm\d+\.', )):
        self.strict_prefixes = tuple(strict_prefixes)
        self.allowed_missing = [re.compile(p) for p in allowed_missing]

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        model = runner.model
        # mmengine loads into the wrapped model of DDP and of TTA models (tools/test.py --tta).
        while is_model_wrapper(model) or isinstance(model, BaseTTAModel):
            model = model.module
        check_state_dict(model.state_dict(), checkpoint, self.strict_prefixes,
                         self.allowed_missing, source=getattr(runner, '_load_from', None))
