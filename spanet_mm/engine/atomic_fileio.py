# Copyright (c) spanet_mm contributors. All rights reserved.
"""Safe checkpoint writes: atomic local files, old checkpoints deleted after the new one.

mmengine 0.10.7 writes a checkpoint in place: ``save_checkpoint`` serializes it into memory,
then the local file backend's ``put`` runs ``open(path, 'wb').write(data)``. A run killed, or
a disk filling up, during that write leaves a truncated file under the checkpoint's name; a
``--resume`` or a ``load_from`` given that name then fails (or, worse, an interrupted
overwrite destroys the previous good file of the same name).

:class:`AtomicLocalBackend` keeps mmengine's ``LocalBackend`` and makes ``put`` and
``put_text`` atomic: the data goes to a temporary file in the same directory
(``.<name>.<pid>.<random>.tmp``), is flushed and ``fsync``-ed, and is then renamed over the
target with :func:`os.replace` (atomic on POSIX and Windows within one file system); the
directory is ``fsync``-ed too, so the rename survives a power loss. A file under the target
name is therefore either the previous complete one or the new complete one, never a part.
If the write fails, the temporary file is removed and the target is untouched; if the process
is killed, only the hidden ``.tmp`` file is left behind (safe to delete).

``import spanet_mm`` (or ``custom_imports=dict(imports=['spanet_mm'])`` in a config, so also
with mmdet's, mmseg's and mmpretrain's own tools) registers it as mmengine's ``'local'``
backend for paths without a prefix, which is what ``save_checkpoint``, ``CheckpointHook`` and
``mmengine.fileio.put``/``dump`` use. Other backends (``s3://``, ``petrel://``, HTTP) are
unchanged, as is the deprecated ``file_client_args`` path (``FileClient``'s ``disk`` backend).

:class:`DeferredCheckpointRemovalHook` makes ``CheckpointHook`` delete the checkpoints it
rotates out (``max_keep_ckpts``, the previous best) only after the new one is complete.
"""
import os
import os.path as osp
import uuid
from pathlib import Path
from typing import Union

from mmengine.fileio import io as mmengine_io
from mmengine.fileio.backends import LocalBackend, prefix_to_backends, register_backend
from mmengine.hooks import CheckpointHook, Hook
from mmengine.registry import HOOKS
from mmengine.utils import mkdir_or_exist


def _fsync_directory(dirname: str) -> None:
    if os.name != 'posix':  # directories cannot be opened for fsync on Windows
        return
    fd = os.open(dirname, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class AtomicLocalBackend(LocalBackend):
    """mmengine's local backend with atomic ``put``/``put_text`` (see the module docstring)."""

    def put(self, obj: bytes, filepath: Union[str, Path]) -> None:
        """Writes ``obj`` to ``filepath`` atomically; creates the directory if needed."""
        filepath = osp.realpath(str(filepath))  # replace a link's target, not the link
        dirname = osp.dirname(filepath)
        mkdir_or_exist(dirname)
        tmp_path = osp.join(
            dirname, f'.{osp.basename(filepath)}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp')
        # 'x': never write into someone else's file; mode 0o666 & ~umask, as open() does.
        f = open(tmp_path, 'xb')
        try:
            with f:
                self.write_data(f, obj)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp_path, filepath)
        except BaseException:
            try:
                os.remove(tmp_path)
            except OSError:
                pass
            raise
        _fsync_directory(dirname)

    def put_text(self, obj: str, filepath: Union[str, Path], encoding: str = 'utf-8') -> None:
        """Writes text to ``filepath`` atomically (as ``put``)."""
        self.put(obj.encode(encoding), filepath)

    def write_data(self, fileobj, data: bytes) -> None:
        """Writes the bytes into the open temporary file (one place to slow it in tests)."""
        fileobj.write(data)


def install_atomic_local_backend() -> None:
    """Makes :class:`AtomicLocalBackend` mmengine's backend for local paths (idempotent; a
    subclass registered already, e.g. by a test, is kept)."""
    current = prefix_to_backends.get('')
    if not (isinstance(current, type) and issubclass(current, AtomicLocalBackend)):
        register_backend('local', AtomicLocalBackend, force=True, prefixes='')
    # Instances cached (get_file_backend(enable_singleton=True)) before this call.
    for key, backend in list(mmengine_io.backend_instances.items()):
        if type(backend) is LocalBackend:
            del mmengine_io.backend_instances[key]


class _DeferredRemovals:
    """A ``CheckpointHook``'s file backend whose ``remove``/``rmtree`` wait until
    :meth:`flush` (everything else is the wrapped backend's)."""

    def __init__(self, backend):
        self._backend = backend
        self.pending = []

    def remove(self, filepath) -> None:
        self.pending.append(('remove', filepath))

    def rmtree(self, dir_path) -> None:
        self.pending.append(('rmtree', dir_path))

    def flush(self, keep=()) -> None:
        pending, self.pending = self.pending, []
        for kind, path in pending:
            if path in keep or not self._backend.exists(path):
                continue
            getattr(self._backend, kind)(path)

    def __getattr__(self, name):
        return getattr(self._backend, name)


@HOOKS.register_module()
class DeferredCheckpointRemovalHook(Hook):
    """Deletes old checkpoints only after the new one is complete.

    mmengine 0.10.7's ``CheckpointHook`` deletes the checkpoint that falls out of
    ``max_keep_ckpts``, and the previous best checkpoint (``save_best``), *before* it writes the
    new one. A run killed during that write then has one checkpoint fewer than it should; with
    ``max_keep_ckpts=1`` none at all (``last_checkpoint`` names a deleted file). This hook gives
    every ``CheckpointHook`` a file backend whose deletions wait until the hook's save is done
    (and ``last_checkpoint`` updated): it runs last (``LOWEST``) after every train iteration,
    train epoch and validation epoch. Files that a ``CheckpointHook`` still names (its last or
    best checkpoint) are never deleted. A run killed between the save and the deletion keeps
    one more file than ``max_keep_ckpts``. Add it with
    ``custom_hooks = [dict(type='DeferredCheckpointRemovalHook')]`` (root ``HOOKS`` registry, so
    found from every scope).
    """

    priority = 'LOWEST'  # after CheckpointHook (VERY_LOW): its before_train made the backend

    def before_train(self, runner) -> None:
        for hook in runner.hooks:
            backend = getattr(hook, 'file_backend', None)
            if isinstance(hook, CheckpointHook) and backend is not None and not isinstance(
                    backend, _DeferredRemovals):
                hook.file_backend = _DeferredRemovals(backend)

    def _flush(self, runner) -> None:
        for hook in runner.hooks:
            backend = getattr(hook, 'file_backend', None)
            if isinstance(hook, CheckpointHook) and isinstance(backend, _DeferredRemovals):
                keep = {hook.last_ckpt, getattr(hook, 'best_ckpt_path', None),
                        *getattr(hook, 'best_ckpt_path_dict', {}).values()}
                backend.flush(keep)

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        self._flush(runner)

    def after_train_epoch(self, runner) -> None:
        self._flush(runner)

    def after_val_epoch(self, runner, metrics=None) -> None:
        self._flush(runner)

    def after_train(self, runner) -> None:
        self._flush(runner)
