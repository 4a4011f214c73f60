# Copyright (c) spanet_mm contributors. All rights reserved.
"""Refuse checkpoints that do not fit the model instead of running with random weights.

mmengine's ``Runner.load_checkpoint`` (``load_from``, ``tools/test.py CONFIG CKPT``) loads
non-strictly and only logs the keys that did not fit, so a ResNet checkpoint, a SPANet-S file
given to a SPANet-M config or an unconverted official file would silently evaluate or fine-tune
a randomly initialised backbone.

What may be missing depends on why the Runner loads the file. Fine-tuning (``load_from`` in
``train()``) may start a new head or neck; evaluation (``tools/test.py``, ``runner.val()``) and
``--resume`` may not: a head missing there would be evaluated, or trained on, with random
weights.
"""
import os.path as osp
import re
from typing import Sequence

from mmengine.hooks import CheckpointHook, Hook
from mmengine.model import BaseTTAModel, is_model_wrapper
from mmengine.registry import HOOKS
from mmengine.runner import BaseLoop

from ...checkpoint import CheckpointMismatchError, check_state_dict

__all__ = ['CheckpointCheckHook', 'CheckpointMismatchError']

#: What ``Runner.resume`` reads besides the weights (``optimizer`` and ``param_schedulers``
#: are optional there: a run saved without them resumes with new ones).
RESUME_KEYS = ('meta', 'message_hub')


@HOOKS.register_module()
class CheckpointCheckHook(Hook):
    """Checks every checkpoint the Runner loads against the model.

    Raises :class:`~spanet_mm.checkpoint.CheckpointMismatchError` when no tensor of the model
    is in the checkpoint, and otherwise:

    - when fine-tuning (``load_from`` in training): when a tensor under ``strict_prefixes`` is
      missing, has another shape or has no counterpart in the model (SPANet's output norms
      ``backbone.norm<i>`` may be missing: they start as identity). Other missing or
      mismatched tensors (e.g. a classification head with another number of classes) are
      logged as a warning;
    - when evaluating (the Runner's ``test()`` or ``val()``) or resuming: also when any other
      tensor of the model is missing or has another shape (tensors the model does not have,
      outside ``strict_prefixes``, such as an auxiliary head of training, are logged). A
      resumed checkpoint must also be one the Runner saved in training (with ``meta`` and
      ``message_hub``).

    A resume that finds no checkpoint (``--resume`` without a path, in a work dir that has no
    ``last_checkpoint``, e.g. a mistyped ``--work-dir``) starts from scratch, as mmengine does
    (the first launch of a preemptible job relies on it), but with a warning that says so:
    mmengine logs only "Auto resumed from the latest checkpoint None". A run that does not
    resume, in a work dir that holds an earlier run's checkpoints (its ``last_checkpoint``),
    warns that it will overwrite those of the same name (mmengine does so silently).

    Args:
        strict_prefixes (Sequence[str]): Key prefixes that must all fit when fine-tuning.
            Defaults to ``('backbone.', )``.
        allowed_missing (Sequence[str]): Regexes of keys that may be missing when
            fine-tuning. Defaults to ``(r'backbone\\.norm\\d+\\.', )``.
    """

    priority = 'VERY_HIGH'

    def __init__(self, strict_prefixes: Sequence[str] = ('backbone.', ),
                 allowed_missing: Sequence[str] = (r'backbone\.norm\d+\.', )):
        self.strict_prefixes = tuple(strict_prefixes)
        self.allowed_missing = [re.compile(p) for p in allowed_missing]

    def before_train(self, runner) -> None:
        # Runner.train() has run load_or_resume() by now; _has_loaded says whether it loaded.
        if getattr(runner, '_resume', False) and not getattr(runner, '_has_loaded', True):
            runner.logger.warning(
                f'Resuming found no checkpoint in the work dir {runner.work_dir} (it has no '
                '`last_checkpoint` file): training starts from scratch. To continue a run, '
                'give the work dir it saved its checkpoints in (--work-dir), or the checkpoint '
                'itself (--resume PATH).')
        self._warn_before_overwriting(runner)

    @staticmethod
    def _warn_before_overwriting(runner) -> None:
        """A run that saves checkpoints into a work dir holding an earlier run's (its
        ``last_checkpoint``) overwrites those of the same name; warned unless this run
        continues from the work dir itself (an automatic resume, or a resumed file there)."""
        earlier = osp.join(runner.work_dir, 'last_checkpoint')
        if not osp.isfile(earlier) or not any(
                isinstance(hook, CheckpointHook) for hook in runner.hooks):
            return
        resumed = getattr(runner, '_load_from', None)
        if getattr(runner, '_resume', False) and (resumed is None or osp.realpath(
                resumed).startswith(osp.realpath(runner.work_dir) + osp.sep)):
            return
        try:
            with open(earlier, encoding='utf-8') as f:
                last = f'the last: {f.read().strip()}'
        except (OSError, UnicodeDecodeError) as err:  # a warning must not end the run
            last = f'unreadable: {err}'
        runner.logger.warning(
            f'The work dir {runner.work_dir} has the `last_checkpoint` of an earlier run '
            f'({last}). This run starts afresh and overwrites that run\'s checkpoints of the '
            'same name as it saves its own. To continue that run, resume it (--resume); to '
            'keep both, give this run another work dir (--work-dir).')

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        model = runner.model
        # mmengine loads into the wrapped model of DDP and of TTA models (tools/test.py --tta).
        while is_model_wrapper(model) or isinstance(model, BaseTTAModel):
            model = model.module
        source = getattr(runner, '_load_from', None)
        # Runner.train() builds its loop before it loads; test() and val() never build it.
        fine_tuning = isinstance(getattr(runner, '_train_loop', None), BaseLoop)
        resuming = bool(getattr(runner, '_resume', False))
        whole_model = resuming or not fine_tuning  # nothing may keep its initial values
        check_state_dict(model.state_dict(), checkpoint, self.strict_prefixes,
                         () if whole_model else self.allowed_missing, source=source,
                         whole_model=whole_model)
        if resuming:
            absent = [key for key in RESUME_KEYS if key not in checkpoint]
            if absent:
                raise CheckpointMismatchError(
                    f'{source or "the checkpoint"} cannot be resumed: it has no {absent}, so '
                    'it is not a checkpoint the Runner saved while training. --resume '
                    'continues a run from its own checkpoints; to start training from these '
                    'weights, pass it as load_from (--cfg-options load_from=PATH) without '
                    '--resume.')
