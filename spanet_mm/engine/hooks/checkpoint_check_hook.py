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
from mmengine.logging import print_log
from mmengine.model import BaseTTAModel, is_model_wrapper
from mmengine.registry import HOOKS

from ...errors import UserError

CONVERTER = 'tools/model_converters/spanet_official_to_mm.py'


class CheckpointMismatchError(UserError, ValueError):
    """A checkpoint whose tensors do not fit the model being loaded."""


@HOOKS.register_module()
class CheckpointCheckHook(Hook):
    """Checks every checkpoint the Runner loads against the model.

    Raises :class:`CheckpointMismatchError` when a backbone tensor is missing, has another
    shape or has no counterpart in the model (SPANet's output norms ``backbone.norm<i>`` may
    be missing: they start as identity), or when no tensor of the model is in the checkpoint.
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


def check_state_dict(own: dict, checkpoint, strict_prefixes=('backbone.', ),
                     allowed_missing=(), source=None) -> None:
    """The check of :class:`CheckpointCheckHook`, usable without a Runner."""
    name = source or 'the checkpoint'
    state_dict = checkpoint
    if isinstance(checkpoint, dict):
        state_dict = checkpoint.get('state_dict', checkpoint.get('model', checkpoint))
    if not isinstance(state_dict, dict) or not state_dict:
        raise CheckpointMismatchError(
            f'{name} holds no state dict (found {type(state_dict).__name__}); it is not a '
            'model checkpoint.')
    state_dict = {re.sub(r'^module\.', '', k): v for k, v in state_dict.items()}
    allowed = [re.compile(p) if isinstance(p, str) else p for p in allowed_missing]
    fitting = [k for k, v in own.items()
               if k in state_dict and getattr(state_dict[k], 'shape', None) == v.shape]
    mismatched = [f'{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(v.shape)}'
                  for k, v in own.items() if k in state_dict and k not in fitting
                  and hasattr(state_dict[k], 'shape')]
    missing = [k for k in own if k not in state_dict and not any(p.match(k) for p in allowed)]
    # Backbone tensors the model does not have: a deeper or other arch (``m`` into ``s``).
    unexpected = [k for k in state_dict if k not in own and not any(p.match(k) for p in allowed)]
    strict = lambda keys: [k for k in keys if k.startswith(strict_prefixes)]  # noqa: E731
    meta = checkpoint.get('meta') if isinstance(checkpoint, dict) else None
    arch = meta.get('arch') if isinstance(meta, dict) else None
    held = f' (it was saved for SPANet arch {arch})' if arch else ''
    example = sorted(state_dict)[:3]
    if not fitting:
        official = any(k.startswith(('network.', 'patch_embed.')) for k in state_dict)
        hint = ('It looks like an official SPANet file: convert it first with\n'
                f'  python {CONVERTER} SRC DST') if official else (
            'It is not a checkpoint of this model (not spanet_mm SPANet). Use a checkpoint '
            f'trained with this config, or convert official SPANet files with {CONVERTER}')
        raise CheckpointMismatchError(
            f'{name} does not fit the model at all: none of its {len(state_dict)} tensors '
            f'(e.g. {example}) matches the model\'s {len(own)} tensors (e.g. '
            f'{sorted(own)[:3]}). {hint}.')
    if strict(mismatched) or strict(missing) or strict(unexpected):
        raise CheckpointMismatchError(
            f'{name} does not fit the model{held}: {len(strict(mismatched))} shape '
            f'mismatch(es) {strict(mismatched)[:3]}, {len(strict(missing))} missing '
            f'tensor(s) {strict(missing)[:3]}, {len(strict(unexpected))} tensor(s) the model '
            f'does not have {strict(unexpected)[:3]} under {list(strict_prefixes)}. It is '
            'probably a '
            'checkpoint of another SPANet arch or another backbone: use the config of the '
            'arch it was trained with (or the checkpoint of this config\'s arch).')
    if mismatched or missing:
        print_log(f'{name}: {len(mismatched)} tensor(s) of other shape {mismatched[:3]} and '
                  f'{len(missing)} missing {missing[:3]} outside {list(strict_prefixes)}; '
                  'they keep their initial values.', logger='current', level=30)
