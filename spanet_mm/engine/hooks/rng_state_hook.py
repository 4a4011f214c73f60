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
- Dataloader workers (``num_workers > 0``), persistent or not. mmengine 0.10.7 seeds each
  worker once, when it starts, from ``seed + worker_id + rank * num_workers``: workers that
  are restarted every epoch draw the same augmentations in every epoch, and persistent
  workers carry their random state from one epoch to the next in processes that a restart
  cannot restore (a resumed run's fresh workers would draw other numbers). In an epoch-based
  loop the hook therefore seeds python ``random``, numpy and torch in every worker at the
  start of every epoch from ``(seed, epoch, rank, worker id)`` (:func:`worker_seed`): a
  ``worker_init_fn`` (:class:`EpochWorkerSeeder`, wrapping the dataloader's own) reads the
  epoch from a shared-memory counter that the hook sets at ``before_train_epoch`` and
  re-seeds before the first sample of each new epoch (the worker's own copy of the dataset
  gets a slot-less subclass of its class whose ``__getitem__``/``__getitems__`` first checks
  the counter; the main process's dataset is untouched). A resumed run's workers start from
  exactly the states the uninterrupted run's workers had at that epoch, and every epoch
  draws new augmentations. The workers' base seed is drawn from a generator of the
  dataloader's own, so starting workers (once, or every epoch) consumes nothing from the main
  process's torch stream. ``seed_workers_per_epoch=False`` keeps mmengine's seeding; a resume
  with persistent workers in an epoch-based loop is then refused with
  :class:`ExactResumeError` (non-persistent workers stay exact).
- Iteration-based loops (``IterBasedTrainLoop``) keep mmengine's seeding: their workers are
  started once, before any hook runs, and the loop's fast-forward on resume fetches the same
  batches through them again, which replays their random streams.

Not covered: state other than random number generators that transforms keep inside
persistent workers (e.g. the results cache of mmdet's ``CachedMosaic``/``CachedMixUp``); the
iteration checkpoints of an epoch-based loop (mmengine restarts the interrupted epoch).
"""
import random
from typing import Any, Callable, Dict, List, Optional

import numpy as np
import torch
from mmengine.dist import all_gather_object, get_dist_info
from mmengine.hooks import CheckpointHook, Hook
from mmengine.logging import print_log
from mmengine.registry import HOOKS
from mmengine.runner import EpochBasedTrainLoop, IterBasedTrainLoop
from torch.utils.data import DataLoader, get_worker_info

from ...errors import UserError

CHECKPOINT_KEY = 'rng_states'


class ExactResumeError(UserError, ValueError):
    """A resume that cannot reproduce the interrupted run, refused: the config's to fix (the
    tools print it as one ``ERROR:`` line)."""


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


# --- dataloader workers: seeded per epoch -----------------------------------------------------
def worker_seed(seed: int, epoch: int, rank: int, worker_id: int) -> np.ndarray:
    """Four 32-bit words seeding one worker in one epoch (numpy's ``SeedSequence`` over the
    four numbers, so neighbouring seeds, epochs, ranks or workers give unrelated streams)."""
    return np.random.SeedSequence(
        [int(seed) % 2**64, int(epoch), int(rank), int(worker_id)]).generate_state(4)


def seed_process(words: np.ndarray) -> None:
    """Seeds python ``random``, numpy and torch from :func:`worker_seed`'s words."""
    random.seed(int(words[0]) | int(words[1]) << 32)
    np.random.seed(words)
    torch.manual_seed(int(words[2]) | int(words[3]) << 32)


#: In a worker process: the seeder of the dataloader it serves (one per process).
_WORKER_SEEDER: Optional['EpochWorkerSeeder'] = None
_RESEEDING_CLASSES: Dict[type, type] = {}


def _reseeding_class(cls: type) -> type:
    """A subclass of the dataset's class that re-seeds before each sample when the epoch has
    changed. No slots of its own, so a worker's copy of the dataset can take it as its
    ``__class__`` (torch calls ``dataset[index]`` or ``dataset.__getitems__``)."""
    if cls in _RESEEDING_CLASSES:
        return _RESEEDING_CLASSES[cls]

    def __getitem__(self, index):
        _WORKER_SEEDER.maybe_reseed()
        return cls.__getitem__(self, index)

    namespace = dict(__slots__=(), __getitem__=__getitem__, __module__=cls.__module__,
                     __qualname__=cls.__qualname__, __doc__=cls.__doc__)
    if getattr(cls, '__getitems__', None):
        def __getitems__(self, indices):
            _WORKER_SEEDER.maybe_reseed()
            return cls.__getitems__(self, indices)
        namespace['__getitems__'] = __getitems__
    _RESEEDING_CLASSES[cls] = type(cls.__name__, (cls, ), namespace)
    return _RESEEDING_CLASSES[cls]


class EpochWorkerSeeder:
    """``worker_init_fn`` that seeds each dataloader worker per epoch (see the module
    docstring): from :func:`worker_seed` ``(seed, epoch, rank, worker_id)``, where ``epoch``
    is read from a shared-memory counter the main process sets before each epoch's batches
    are requested. Persistent workers re-seed before their first sample of a new epoch.

    Args:
        seed (int): The run's seed.
        rank (int): The process's rank.
        epoch (torch.Tensor): A shared-memory int64 scalar holding the current epoch.
        init_fn (callable, optional): The dataloader's own ``worker_init_fn``, called first.
    """

    def __init__(self, seed: int, rank: int, epoch: torch.Tensor,
                 init_fn: Optional[Callable[[int], None]] = None):
        self.seed = seed
        self.rank = rank
        self.epoch = epoch
        self.init_fn = init_fn
        self.worker_id: Optional[int] = None
        self.seeded_epoch: Optional[int] = None

    def __call__(self, worker_id: int) -> None:
        global _WORKER_SEEDER
        if self.init_fn is not None:
            self.init_fn(worker_id)
        self.worker_id = worker_id
        _WORKER_SEEDER = self
        dataset = get_worker_info().dataset  # this worker's own copy
        dataset.__class__ = _reseeding_class(type(dataset))
        self.maybe_reseed()

    def maybe_reseed(self) -> None:
        epoch = int(self.epoch.item())
        if epoch != self.seeded_epoch:
            seed_process(worker_seed(self.seed, epoch, self.rank, self.worker_id))
            self.seeded_epoch = epoch


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
        strict (bool): Refuse (:class:`ExactResumeError`) instead of warning when resuming
            from a checkpoint that has no RNG states (written without this hook). Defaults to
            False.
        seed_workers_per_epoch (bool): Seed the train dataloader's workers per epoch from
            ``(seed, epoch, rank, worker id)`` in epoch-based loops, which makes resumes with
            workers (persistent or not) exact. With False, mmengine's seeding is kept and a
            resume with persistent workers in an epoch-based loop raises
            :class:`ExactResumeError`. Defaults to True.
    """

    # Runs before the CheckpointHook (VERY_LOW) in after_train_epoch/iter, which matters for
    # gathering the states of all ranks before rank 0 saves.
    priority = 'VERY_HIGH'

    def __init__(self, strict: bool = False, seed_workers_per_epoch: bool = True):
        self.strict = strict
        self.seed_workers_per_epoch = seed_workers_per_epoch
        self._worker_epoch: Optional[torch.Tensor] = None
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
                raise ExactResumeError(message + ' Resume without strict=True to accept that.')
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
        self._prepare_workers(runner)
        loop = runner.train_loop
        if self._pending is not None and isinstance(loop, IterBasedTrainLoop):
            # The loop fast-forwards its data iterator by `iter` batches after
            # before_train_epoch; restore right after that, before the next batch.
            loop.dataloader_iterator = _RestoreAfter(
                loop.dataloader_iterator, loop.iter, self._restore_pending)

    def before_train_epoch(self, runner) -> None:
        if self._worker_epoch is not None:  # before the epoch's batches are requested
            self._worker_epoch.fill_(runner.epoch)
        # Epoch-based loops create the epoch's data iterator right after this hook.
        if not isinstance(runner.train_loop, IterBasedTrainLoop):
            self._restore_pending()

    # --- dataloader workers ------------------------------------------------------------------
    def _prepare_workers(self, runner) -> None:
        loop = runner.train_loop
        loader = loop.dataloader
        num_workers = getattr(loader, 'num_workers', 0)
        persistent = getattr(loader, 'persistent_workers', False)
        if num_workers == 0 or isinstance(loop, IterBasedTrainLoop):
            return  # main-process streams (restored) / replayed by the fast-forward
        if (self.seed_workers_per_epoch and isinstance(loop, EpochBasedTrainLoop)
                and isinstance(loader, DataLoader)):
            if isinstance(loader.worker_init_fn, EpochWorkerSeeder):
                return
            if getattr(loader, '_iterator', None) is not None:
                raise ExactResumeError(
                    'RNGStateHook: the train dataloader\'s persistent workers were started '
                    'before training, so they cannot be seeded per epoch; do not iterate '
                    'over train_dataloader before runner.train().')
            rank, _ = get_dist_info()
            self._worker_epoch = torch.zeros((), dtype=torch.int64).share_memory_()
            loader.worker_init_fn = EpochWorkerSeeder(runner.seed, rank, self._worker_epoch,
                                                      loader.worker_init_fn)
            if loader.generator is None:
                # Starting workers draws their base seed from this generator, not from the
                # main process's torch stream (persistent workers start once, in the first
                # epoch the process runs, which differs between a resumed and a full run).
                loader.generator = torch.Generator().manual_seed(int(runner.seed) % 2**63)
            return
        if not persistent:
            return  # restarted each epoch with the same seeds: exact
        message = (f'RNGStateHook: the train dataloader has persistent workers '
                   f'(num_workers={num_workers}) in {type(loop).__name__}, and they are not '
                   'seeded per epoch (seed_workers_per_epoch=False, or a custom loop or '
                   'dataloader): their random state cannot be saved, so augmentations after '
                   'a resume would differ from the interrupted run. Set '
                   'train_dataloader.persistent_workers=False (or keep RNGStateHook\'s '
                   'seed_workers_per_epoch=True) for an exact resume.')
        if getattr(runner, '_resume', False):
            raise ExactResumeError(message)
        print_log(message + ' A resume of this run will be refused.', logger='current',
                  level=30)
