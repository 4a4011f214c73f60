# Copyright (c) spanet_mm contributors. All rights reserved.
"""Exact resume: random number generator states in Runner checkpoints.

mmengine 0.10.7 checkpoints hold the model, optimizer, schedulers, message hub and the seed,
but not the states of the random number generators. A run resumed from a checkpoint therefore
draws different drop-path masks and augmentations from then on than the run that was never
interrupted. :class:`RNGStateHook` closes that gap. Add it to a config with::

    custom_hooks = [dict(type='RNGStateHook')]

What it guarantees, with a fixed seed and ``randomness.deterministic=True`` on the same hardware
and software: training killed at any point and resumed with ``--resume`` ends with the same
weights as a run never interrupted. In detail:

- ``before_save_checkpoint`` stores the states of python ``random``, numpy, torch (CPU) and,
  when present, every CUDA device, under ``checkpoint['rng_states']``; one entry per rank in
  distributed training (gathered from all ranks just before the checkpoint hook saves).
- ``after_load_checkpoint`` keeps them when the Runner *resumes* (never for ``load_from``);
  they are put back just before the first batch of the resumed run is drawn, i.e. after
  everything the Runner does before (building the dataloader, initializing weights, re-seeding
  when the checkpoint's seed differs from the config's, and the iteration-based loop's
  fast-forward through the batches it has already trained on).
- Validation during training (run after the checkpoint is saved) leaves the training streams
  untouched: states are saved at ``before_val`` and put back at ``after_val``, so the
  uninterrupted run and the resumed run (which does not validate before continuing) agree.

Not covered (warned about): dataloaders with ``persistent_workers=True`` and ``num_workers > 0``
in an epoch-based loop keep their random state in worker processes that a restart cannot
restore; use ``persistent_workers=False`` (the sampler order is deterministic either way:
``DefaultSampler``/``InfiniteSampler`` shuffle with ``seed + epoch``).
"""
import random
from typing import Any, Dict, List, Optional

import numpy as np
import torch
from mmengine.dist import all_gather_object, get_dist_info
from mmengine.hooks import CheckpointHook, Hook
from mmengine.logging import print_log
from mmengine.registry import HOOKS
from mmengine.runner import IterBasedTrainLoop

CHECKPOINT_KEY = 'rng_states'


def get_rng_states() -> Dict[str, Any]:
    """The current states of every random number generator training may draw from.

    Only tensors and plain containers, so the result loads with ``weights_only=True``.
    """
    version, mt_state, gauss = random.getstate()
    np_kind, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    states = dict(
        python=dict(version=version, state=list(mt_state), gauss=gauss),
        numpy=dict(kind=np_kind, keys=torch.from_numpy(np_keys.astype(np.int64)),
                   pos=int(np_pos), has_gauss=int(np_has_gauss), gauss=float(np_gauss)),
        torch=torch.get_rng_state(),
    )
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states['cuda'] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: Dict[str, Any]) -> None:
    """Inverse of :func:`get_rng_states`."""
    py = states['python']
    random.setstate((py['version'], tuple(py['state']), py['gauss']))
    np_state = states['numpy']
    np.random.set_state((np_state['kind'], np_state['keys'].numpy().astype(np.uint32),
                         np_state['pos'], np_state['has_gauss'], np_state['gauss']))
    torch.set_rng_state(states['torch'])
    if 'cuda' in states and torch.cuda.is_available():
        cuda_states = states['cuda']
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)
        else:
            print_log(f'RNGStateHook: the checkpoint has {len(cuda_states)} CUDA RNG states, '
                      f'this machine {torch.cuda.device_count()} devices; CUDA RNG states '
                      'are not restored.', logger='current', level=30)


class _RestoreAfter:
    """Wraps the iteration-based loop's data iterator: restores the RNG states after the
    loop's fast-forward of ``skip`` batches, right before the first new batch is drawn."""

    def __init__(self, iterator, skip: int, restore):
        self._iterator = iterator
        self._skip = skip
        self._restore = restore
        self._count = 0

    def __next__(self):
        if self._count == self._skip and self._restore is not None:
            self._restore()
            self._restore = None
        self._count += 1
        return next(self._iterator)

    def __iter__(self):
        return self

    def __getattr__(self, name):
        return getattr(self._iterator, name)


@HOOKS.register_module()
class RNGStateHook(Hook):
    """Saves the RNG states in checkpoints and restores them on resume (exact resume).

    Registered in mmengine's root ``HOOKS`` registry, so ``dict(type='RNGStateHook')`` is
    found from the mmpretrain, mmdet and mmseg scopes alike. See the module docstring for the
    guarantees.

    Args:
        strict (bool): Raise instead of warning when resuming from a checkpoint that has no
            RNG states (written without this hook). Defaults to False.
    """

    # Runs before the CheckpointHook (VERY_LOW) in after_train_epoch/iter, which matters for
    # gathering the states of all ranks before rank 0 saves.
    priority = 'VERY_HIGH'

    def __init__(self, strict: bool = False):
        self.strict = strict
        self._pending: Optional[Dict[str, Any]] = None
        self._gathered: Optional[List[Dict[str, Any]]] = None
        self._train_states: Optional[Dict[str, Any]] = None

    # --- saving ------------------------------------------------------------------------------
    def _checkpoint_due(self, runner, by_epoch: bool) -> bool:
        for hook in runner.hooks:
            if not isinstance(hook, CheckpointHook) or hook.by_epoch != by_epoch:
                continue
            if by_epoch:
                if hook.every_n_epochs(runner, hook.interval, hook.save_begin) or (
                        hook.save_last and hook.is_last_train_epoch(runner)):
                    return True
            elif hook.every_n_train_iters(runner, hook.interval, hook.save_begin) or (
                    hook.save_last and hook.is_last_train_iter(runner)):
                return True
        return False

    def _gather(self, runner, by_epoch: bool) -> None:
        # Every rank must take part; the checkpoint itself is written by rank 0 only.
        _, world_size = get_dist_info()
        if world_size > 1 and self._checkpoint_due(runner, by_epoch):
            self._gathered = all_gather_object(get_rng_states())

    def after_train_epoch(self, runner) -> None:
        self._gather(runner, by_epoch=True)

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        self._gather(runner, by_epoch=False)

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        _, world_size = get_dist_info()
        if self._train_states is not None:  # saved during validation (e.g. the best model)
            states = [self._train_states]
        elif world_size > 1 and self._gathered is not None:
            states = self._gathered
        else:
            states = [get_rng_states()]
        checkpoint[CHECKPOINT_KEY] = dict(world_size=world_size, per_rank=states)
        self._gathered = None

    # --- validation inside training must not shift the training streams ----------------------
    def before_val(self, runner) -> None:
        self._train_states = get_rng_states()

    def after_val(self, runner) -> None:
        if self._train_states is not None:
            set_rng_states(self._train_states)
            self._train_states = None

    # --- resuming ----------------------------------------------------------------------------
    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        if not getattr(runner, '_resume', False):
            return  # load_from (fine-tuning, testing): a fresh run, nothing to restore
        saved = checkpoint.get(CHECKPOINT_KEY)
        if saved is None:
            message = ('RNGStateHook: the checkpoint has no RNG states (it was saved without '
                       'RNGStateHook), so the resumed run will not reproduce an uninterrupted '
                       'one exactly.')
            if self.strict:
                raise RuntimeError(message + ' Resume without strict=True to accept that.')
            print_log(message, logger='current', level=30)
            return
        rank, world_size = get_dist_info()
        per_rank = saved['per_rank']
        if len(per_rank) != world_size:
            print_log(f'RNGStateHook: the checkpoint was saved by {len(per_rank)} process(es), '
                      f'this run has {world_size}; every rank restores rank '
                      f'{rank % len(per_rank)} of the checkpoint, so the run is not exactly '
                      'reproducible.', logger='current', level=30)
        self._pending = per_rank[rank % len(per_rank)]

    def _restore_pending(self) -> None:
        if self._pending is not None:
            set_rng_states(self._pending)
            self._pending = None

    def before_train(self, runner) -> None:
        self._check_workers(runner)
        loop = runner.train_loop
        if self._pending is not None and isinstance(loop, IterBasedTrainLoop):
            # The loop fast-forwards its data iterator by `iter` batches after
            # before_train_epoch; restore right after that, before the next batch.
            loop.dataloader_iterator = _RestoreAfter(
                loop.dataloader_iterator, loop.iter, self._restore_pending)

    def before_train_epoch(self, runner) -> None:
        # Epoch-based loops create the epoch's data iterator right after this hook.
        if not isinstance(runner.train_loop, IterBasedTrainLoop):
            self._restore_pending()

    def _check_workers(self, runner) -> None:
        loader = runner.train_loop.dataloader
        if (not isinstance(runner.train_loop, IterBasedTrainLoop)
                and getattr(loader, 'num_workers', 0) > 0
                and getattr(loader, 'persistent_workers', False)):
            print_log('RNGStateHook: the train dataloader has persistent workers; their random '
                      'state cannot be saved, so augmentations after a resume differ from an '
                      'uninterrupted run. Set train_dataloader.persistent_workers=False for an '
                      'exact resume.', logger='current', level=30)
