"""Atomic checkpoint writes (AtomicLocalBackend, installed as mmengine's local backend) and
deferred checkpoint removal, in-process. The kill and full-disk cases through a Runner:
tests/test_engine/test_hooks_exact_resume.py."""
import os

import pytest
from mmengine.fileio.backends import LocalBackend

from spanet_mm.engine import AtomicLocalBackend, install_atomic_local_backend
from spanet_mm.engine.atomic_fileio import _DeferredRemovals


@pytest.fixture
def restored_backends():
    """mmengine's registered local backend and its cache of backend instances, put back
    after the test (cached instances must not outlive it)."""
    from mmengine.fileio.backends import backends, prefix_to_backends, register_backend
    from mmengine.fileio.io import backend_instances
    saved = backends['local'], prefix_to_backends[''], dict(backend_instances)
    yield backend_instances
    register_backend('local', saved[0], force=True)
    prefix_to_backends[''] = saved[1]
    backend_instances.clear()
    backend_instances.update(saved[2])


@pytest.mark.parametrize('backend', [AtomicLocalBackend, LocalBackend],
                         ids=['atomic', 'mmengine'])
def test_put_through_a_symlink_writes_the_target(tmp_path, backend):
    """A checkpoint name that is a symlink (e.g. latest.pth -> epoch_3.pth in another folder)
    stays a link and its target gets the data, as with mmengine's LocalBackend.put (a plain
    open(path, 'wb'), which follows the link)."""
    target_dir = tmp_path / 'elsewhere'
    target_dir.mkdir()
    target = target_dir / 'epoch_3.pth'
    target.write_bytes(b'old')
    link = tmp_path / 'latest.pth'
    link.symlink_to(target)
    backend().put(b'x', link)
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert target.read_bytes() == b'x'
    backend().put_text('text', str(link))
    assert link.is_symlink() and target.read_text() == 'text'
    assert sorted(p.name for p in tmp_path.rglob('*')) == [
        'elsewhere', 'epoch_3.pth', 'latest.pth']  # no temporary file left


def test_deferred_removals_keep_the_files_named(tmp_path):
    """_DeferredRemovals (a CheckpointHook's backend under DeferredCheckpointRemovalHook):
    nothing is deleted before flush(); then everything asked for, except the paths in keep
    (the hook's last and best checkpoints) and paths already gone."""
    removals = _DeferredRemovals(LocalBackend())
    files = [tmp_path / name for name in ('epoch_1.pth', 'best_acc_epoch_2.pth', 'epoch_2.pth')]
    for path in files:
        path.write_bytes(b'x')
    folder = tmp_path / 'old_ckpt_dir'
    folder.mkdir()
    (folder / 'part').write_bytes(b'x')
    for path in files:
        removals.remove(str(path))
    removals.rmtree(str(folder))
    removals.remove(str(tmp_path / 'never_written.pth'))
    assert all(path.exists() for path in files) and folder.exists()
    removals.flush(keep={str(files[1]), None})
    assert [path.exists() for path in files] == [False, True, False]
    assert not folder.exists()
    assert removals.pending == []
    # Without keep, a file asked for is deleted.
    removals.remove(str(files[1]))
    removals.flush()
    assert not files[1].exists()


@pytest.mark.parametrize('event, args', [
    ('after_train_iter', (0, )), ('after_train_epoch', ()), ('after_val_epoch', ({}, )),
    ('after_train', ())])
def test_deferred_removal_hook_deletes_after_each_save(tmp_path, event, args):
    """DeferredCheckpointRemovalHook: a CheckpointHook's removal waits, and happens at the
    end of the train iteration, train epoch or validation in which the hook saved (so a long
    run keeps max_keep_ckpts files, not all of them until the end); a file the
    CheckpointHook still names as its last checkpoint is never deleted."""
    from types import SimpleNamespace

    from mmengine.hooks import CheckpointHook

    from spanet_mm.engine.atomic_fileio import DeferredCheckpointRemovalHook
    checkpoint_hook = CheckpointHook(interval=1)
    checkpoint_hook.file_backend = LocalBackend()  # what its before_train sets
    old, last = tmp_path / 'epoch_1.pth', tmp_path / 'epoch_2.pth'
    for path in (old, last):
        path.write_bytes(b'x')
    checkpoint_hook.last_ckpt = str(last)
    runner = SimpleNamespace(hooks=[checkpoint_hook])
    hook = DeferredCheckpointRemovalHook()
    hook.before_train(runner)
    checkpoint_hook.file_backend.remove(str(old))
    checkpoint_hook.file_backend.remove(str(last))
    assert old.exists() and last.exists()
    getattr(hook, event)(runner, *args)
    assert not old.exists() and last.exists()


def test_install_replaces_local_backends_cached_before(tmp_path, restored_backends):
    """A plain LocalBackend that mmengine cached (get_file_backend(enable_singleton=True),
    as CheckpointHook and mmengine.fileio.put use) before the install would keep writing
    in place: the install drops it, so the next lookup builds an atomic one."""
    from mmengine.fileio import get_file_backend
    from mmengine.fileio.backends import register_backend
    register_backend('local', LocalBackend, force=True, prefixes='')  # before the install
    restored_backends.clear()
    by_path = get_file_backend(str(tmp_path), enable_singleton=True)
    by_name = get_file_backend(backend_args=dict(backend='local'), enable_singleton=True)
    assert type(by_path) is LocalBackend and type(by_name) is LocalBackend
    install_atomic_local_backend()
    for kwargs in (dict(uri=str(tmp_path)), dict(backend_args=dict(backend='local'))):
        assert isinstance(get_file_backend(**kwargs, enable_singleton=True),
                          AtomicLocalBackend), kwargs
    assert not any(type(b) is LocalBackend for b in restored_backends.values())
