"""Exact resume: a run killed with SIGKILL and resumed ends with the weights of a run never
interrupted (RNGStateHook), and without the hook it does not. The kill comes while the run
writes a checkpoint: it resumes from the last complete one (atomic checkpoint writes)."""
import os
import os.path as osp
import shutil
import signal
import time

import pytest
import torch
from mmengine.hooks import Hook

import spanet_mm  # noqa: F401  registers RNGStateHook
from conftest import REPO_ROOT, generate_demo_data, run_python, start_python

TRAIN = osp.join(REPO_ROOT, 'tools', 'train.py')
TEST_DATA = osp.join(REPO_ROOT, 'tests', 'data')
DEMO_CLS = osp.join(REPO_ROOT, 'configs', 'classification', 'demo', 'spanet_demo_cls.py')

# The classification demo config, made smaller (32 train / 8 val images, 4 iterations per
# epoch, 2 epochs), with randomness in the model (drop path) and in the data (random crops and
# flips), validation after every epoch, a checkpoint after every epoch, a fixed seed and
# deterministic algorithms.
CONFIG = """
_base_ = {base!r}
data_root = {data_root!r}
model = dict(backbone=dict(arch=dict(embed_dims=[16, 32, 48, 64]), drop_path_rate=0.2),
             head=dict(in_channels=64))
train_dataloader = dict(batch_size=8, dataset=dict(data_root=data_root,
                                                   ann_file='meta/train_small.txt'))
val_dataloader = dict(batch_size=8,
                      dataset=dict(data_root=data_root, ann_file='meta/val_small.txt'))
test_dataloader = val_dataloader
train_cfg = dict(max_epochs=2, val_interval=1)
param_scheduler = [dict(type='CosineAnnealingLR', eta_min=1e-5, by_epoch=True, begin=0, end=2)]
default_hooks = dict(logger=dict(interval=1), checkpoint=dict(interval=1, max_keep_ckpts=-1))
randomness = dict(seed=0, deterministic=True)
custom_hooks = {hooks!r}
"""


@pytest.fixture(scope='module')
def configs(tmp_path_factory):
    root = tmp_path_factory.mktemp('resume')
    generate_demo_data(root / 'data')
    data_root = root / 'data' / 'imagenet'
    for split, keep in (('train', range(0, 160, 5)), ('val', range(8))):
        lines = (data_root / 'meta' / f'{split}.txt').read_text().splitlines()
        (data_root / 'meta' / f'{split}_small.txt').write_text(
            '\n'.join(lines[i] for i in keep) + '\n')
    paths = {}
    for name, hooks in (('hook', [dict(type='RNGStateHook')]), ('nohook', [])):
        paths[name] = root / f'cls_{name}.py'
        paths[name].write_text(CONFIG.format(base=DEMO_CLS, data_root=str(data_root),
                                             hooks=hooks))
    # The same run on a slow disk (tests/data/slow_checkpoint_writes.py).
    paths['slow_disk'] = root / 'cls_slow_disk.py'
    paths['slow_disk'].write_text(
        f'_base_ = {str(paths["hook"])!r}\n'
        "custom_imports = dict(imports=['spanet_mm', 'slow_checkpoint_writes'],\n"
        '                      allow_failed_imports=False)\n')
    return root, paths


def _env(**extra):
    return dict(os.environ, OMP_NUM_THREADS='1',
                PYTHONPATH=os.pathsep.join([REPO_ROOT, TEST_DATA]), **extra)


def train(config, work_dir, *args):
    result = run_python(TRAIN, config, '--work-dir', work_dir, *args, env=_env(), timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout + result.stderr


def train_and_kill(config, work_dir, pattern, env=None):
    """Starts training and SIGKILLs it at the first output line that matches `pattern`."""
    proc = start_python(TRAIN, config, '--work-dir', work_dir, env=_env(**(env or {})),
                        merge_stderr=True)
    deadline = time.monotonic() + 300
    try:
        while not any(pattern(line) for line in proc.output().splitlines()):
            assert time.monotonic() < deadline, proc.output()[-3000:]
            time.sleep(0.05)
    finally:
        proc.kill(signal.SIGKILL)
        log = proc.wait(timeout=60).stdout
    assert proc.returncode == -signal.SIGKILL, log[-3000:]
    return log


def final_weights(work_dir, epoch=2):
    from spanet_mm.checkpoint import load_local_checkpoint
    return load_local_checkpoint(str(work_dir / f'epoch_{epoch}.pth'))['state_dict']


def max_difference(a, b):
    assert a.keys() == b.keys()
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


@pytest.fixture(scope='module')
def uninterrupted(configs):
    root, paths = configs
    train(paths['hook'], root / 'uninterrupted')
    return final_weights(root / 'uninterrupted')


@pytest.fixture(scope='module')
def killed_run(configs):
    """The work dir of a run SIGKILLed while it writes epoch_2.pth, after the last iteration of
    epoch 2: on a slow disk (tests/data/slow_checkpoint_writes.py), half of the file is written
    when the kill comes. Never modified: each test resumes a copy of it."""
    root, paths = configs
    work_dir = root / 'killed'
    log = train_and_kill(paths['slow_disk'], work_dir, lambda line: 'SLOW-WRITE' in line,
                         env=dict(SPANET_MM_SLOW_WRITE='epoch_2.pth'))
    assert '[2][4/4]' in log and 'SLOW-WRITE' in log, log[-3000:]
    return work_dir


def _copy(work_dir, name):
    copy = work_dir.parent / name
    shutil.copytree(work_dir, copy)
    return copy


def _loads(path):
    from spanet_mm.checkpoint import load_local_checkpoint
    try:
        load_local_checkpoint(str(path))
        return True
    except Exception:  # truncated: CheckpointLoadError, or an EOF/zip error
        return False


@pytest.mark.slow
def test_killed_while_writing_a_checkpoint(killed_run):
    """No file under a checkpoint's name is incomplete, and auto resume (last_checkpoint)
    selects the last complete checkpoint (the resume itself: the next test)."""
    # Epoch 1's checkpoint and, after its validation, the best one; epoch 2 was being saved.
    checkpoints = sorted(p.name for p in killed_run.glob('*.pth'))
    assert checkpoints == ['best_accuracy_top1_epoch_1.pth', 'epoch_1.pth'], checkpoints
    assert all(_loads(p) for p in killed_run.glob('*.pth'))
    # The half-written file has a hidden temporary name of its own.
    temporary = [p.name for p in killed_run.iterdir() if p.name.startswith('.epoch_2.pth.')]
    assert len(temporary) == 1 and not _loads(killed_run / temporary[0]), temporary
    last = (killed_run / 'last_checkpoint').read_text().strip()
    assert osp.basename(last) == 'epoch_1.pth' and _loads(last)


@pytest.mark.slow
def test_killed_and_resumed_run_matches_uninterrupted_run(configs, killed_run, uninterrupted):
    """`tools/train.py CONFIG --resume` continues from epoch 1 (the last complete checkpoint),
    finishes, and ends with the uninterrupted run's weights."""
    root, paths = configs
    checkpoint = torch.load(killed_run / 'epoch_1.pth', weights_only=False)
    assert set(checkpoint['rng_states']) == {'world_size', 'per_rank'}
    work_dir = _copy(killed_run, 'killed_resumed_with_hook')
    log = train(paths['hook'], work_dir, '--resume')
    assert 'resumed epoch: 1' in log
    assert all(_loads(p) for p in work_dir.glob('*.pth'))
    resumed = final_weights(work_dir)
    assert max_difference(resumed, uninterrupted) <= 1e-6
    assert all(torch.equal(resumed[k], uninterrupted[k]) for k in resumed)


@pytest.mark.slow
def test_without_the_hook_resume_is_not_exact(configs, killed_run, uninterrupted):
    """The same resume without RNGStateHook: drop path and augmentations draw other numbers."""
    root, paths = configs
    work_dir = _copy(killed_run, 'killed_resumed_without_hook')
    log = train(paths['nohook'], work_dir, '--resume')
    assert 'resumed epoch: 1' in log
    assert max_difference(final_weights(work_dir), uninterrupted) > 1e-4


# --- iteration-based loop (the segmentation configs): in-process, with a toy model -------------
class _NoisyPoints(torch.utils.data.Dataset):
    """Augmentation randomness from numpy and python's random, as mmcv transforms have, and
    from torch, as torchvision's transforms have."""
    metainfo = dict(classes=('a', ))

    def __len__(self):
        return 12

    def __getitem__(self, index):
        import random

        import numpy as np
        x = torch.tensor([index / 12 + np.random.rand() * 0.1 + torch.rand(()).item() * 0.05,
                          random.random()])
        return dict(inputs=x, targets=2 * x[0])


def _toy_runner(work_dir, hooks, by_epoch=False, num_workers=0, persistent=False,
                max_keep_ckpts=-1, **kwargs):
    from mmengine.model import BaseModel
    from mmengine.runner import Runner

    class Regressor(BaseModel):

        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(2, 8)
            self.dropout = torch.nn.Dropout(0.3)  # model randomness from torch
            self.out = torch.nn.Linear(8, 1)

        def forward(self, inputs, targets=None, mode='tensor'):
            inputs = torch.stack(inputs) if isinstance(inputs, list) else inputs
            out = self.out(self.dropout(self.linear(inputs))).squeeze(1)
            if mode == 'loss':
                return dict(loss=(out - torch.stack(targets)).square().mean())
            return out

    sampler = 'DefaultSampler' if by_epoch else 'InfiniteSampler'
    return Runner(
        model=Regressor(), work_dir=str(work_dir),
        train_dataloader=dict(dataset=_NoisyPoints(), batch_size=4, num_workers=num_workers,
                              persistent_workers=persistent,
                              sampler=dict(type=sampler, shuffle=True)),
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.1, momentum=0.9)),
        train_cfg=dict(by_epoch=True, max_epochs=3) if by_epoch else dict(by_epoch=False,
                                                                          max_iters=8),
        default_hooks=dict(checkpoint=dict(type='CheckpointHook', interval=1 if by_epoch else 3,
                                           by_epoch=by_epoch, max_keep_ckpts=max_keep_ckpts),
                           logger=dict(type='LoggerHook', interval=1)),
        custom_hooks=hooks, randomness=dict(seed=0, deterministic=True), **kwargs)


@pytest.fixture
def restore_determinism():
    """The in-process Runners' deterministic=True turns torch's deterministic algorithms and
    cuDNN flags on globally; put them back for the tests after this one."""
    saved = (torch.are_deterministic_algorithms_enabled(),
             torch.is_deterministic_algorithms_warn_only_enabled(),
             torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    yield
    torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved[2:]


@pytest.mark.parametrize('with_hook', [True, False])
def test_iteration_based_resume(tmp_path, with_hook, restore_determinism):
    hooks = [dict(type='RNGStateHook')] if with_hook else []
    full = _toy_runner(tmp_path / 'full', hooks, experiment_name='full')
    full.train()
    expected = {k: v.clone() for k, v in full.model.state_dict().items()}
    # Resume from the checkpoint after iteration 3 (iterations 4..8 were "lost").
    resumed = _toy_runner(tmp_path / 'resumed', hooks, experiment_name='resumed',
                          load_from=str(tmp_path / 'full' / 'iter_3.pth'), resume=True)
    resumed.train()
    difference = max_difference(resumed.model.state_dict(), expected)
    if with_hook:
        assert difference == 0
    else:
        assert difference > 1e-4


# --- epoch-based loop with 2 dataloader workers: in-process, with the toy model --------------
@pytest.mark.parametrize('persistent', [True, pytest.param(False, marks=pytest.mark.slow)],
                         ids=['persistent', 'restarted'])  # restarting workers: slow
def test_epoch_based_resume_with_workers(tmp_path, persistent, restore_determinism):
    """3 epochs of 3 batches with 2 workers (numpy/python augmentations in the workers, dropout
    in the main process); resumed from epoch 1's checkpoint, the weights equal the full run's."""
    hooks = [dict(type='RNGStateHook')]
    full = _toy_runner(tmp_path / 'full', hooks, by_epoch=True, num_workers=2,
                       persistent=persistent, experiment_name='full')
    full.train()
    expected = {k: v.clone() for k, v in full.model.state_dict().items()}
    resumed = _toy_runner(tmp_path / 'resumed', hooks, by_epoch=True, num_workers=2,
                          persistent=persistent, experiment_name='resumed',
                          load_from=str(tmp_path / 'full' / 'epoch_1.pth'), resume=True)
    resumed.train()
    assert max_difference(resumed.model.state_dict(), expected) == 0


@pytest.mark.slow  # in-process Runners with dataloader workers
def test_persistent_workers_without_epoch_seeding_refuse_to_resume(tmp_path,
                                                                 restore_determinism):
    """With mmengine's worker seeding kept, persistent workers in an epoch-based loop cannot
    be resumed exactly: the resume is refused, naming the fix."""
    from spanet_mm.engine import ExactResumeError
    hooks = [dict(type='RNGStateHook', seed_workers_per_epoch=False)]
    full = _toy_runner(tmp_path / 'full', hooks, by_epoch=True, num_workers=2, persistent=True,
                       experiment_name='full')
    full.train()  # a fresh run only warns
    resumed = _toy_runner(tmp_path / 'resumed', hooks, by_epoch=True, num_workers=2,
                          persistent=True, experiment_name='resumed',
                          load_from=str(tmp_path / 'full' / 'epoch_1.pth'), resume=True)
    with pytest.raises(ExactResumeError, match='train_dataloader.persistent_workers=False'):
        resumed.train()


# --- a checkpoint write that fails (a full disk): in-process, with the toy model -------------
@pytest.fixture
def full_disk_at_epoch_2():
    """mmengine's local backend becomes spanet_mm's atomic one on a disk that is full when
    epoch_2.pth is written; the backend that was registered is put back afterwards."""
    import errno

    from mmengine.fileio.backends import backends, prefix_to_backends, register_backend

    from spanet_mm.engine import AtomicLocalBackend

    class FullDisk(AtomicLocalBackend):
        full = True

        def write_data(self, fileobj, data):
            if self.full and '.epoch_2.pth.' in osp.basename(fileobj.name):
                fileobj.write(data[:len(data) // 2])
                raise OSError(errno.ENOSPC, 'No space left on device', fileobj.name)
            super().write_data(fileobj, data)

    from mmengine.fileio.io import backend_instances
    saved = backends['local'], prefix_to_backends[''], dict(backend_instances)
    register_backend('local', FullDisk, force=True, prefixes='')
    yield FullDisk
    register_backend('local', saved[0], force=True)
    prefix_to_backends[''] = saved[1]
    backend_instances.clear()  # cached FullDisk instances must not outlive the test
    backend_instances.update(saved[2])


@pytest.mark.slow  # in-process Runners training
@pytest.mark.parametrize('max_keep_ckpts', [1, -1])
def test_failed_checkpoint_write_keeps_the_last_complete_one(tmp_path, max_keep_ckpts,
                                                            full_disk_at_epoch_2,
                                                            restore_determinism):
    """The write of epoch_2.pth fails half-way: no file under its name, the temporary file is
    removed, epoch_1.pth is kept even with max_keep_ckpts=1 (DeferredCheckpointRemovalHook),
    last_checkpoint names it, and an auto resume finishes the run."""
    hooks = [dict(type='RNGStateHook'), dict(type='DeferredCheckpointRemovalHook')]
    runner = _toy_runner(tmp_path, hooks, by_epoch=True, max_keep_ckpts=max_keep_ckpts,
                         experiment_name='full_disk')
    with pytest.raises(OSError, match='No space left'):
        runner.train()
    written = sorted(p.name for p in tmp_path.iterdir() if p.is_file() and p.suffix != '.py')
    assert written == ['epoch_1.pth', 'last_checkpoint'], written  # and no .tmp file
    assert (tmp_path / 'last_checkpoint').read_text().strip() == str(tmp_path / 'epoch_1.pth')
    torch.load(tmp_path / 'epoch_1.pth', weights_only=False)  # complete
    full_disk_at_epoch_2.full = False  # space freed
    resumed = _toy_runner(tmp_path, hooks, by_epoch=True, max_keep_ckpts=max_keep_ckpts,
                          experiment_name='resumed', resume=True)
    resumed.train()
    expected = ['epoch_3.pth'] if max_keep_ckpts == 1 else [
        'epoch_1.pth', 'epoch_2.pth', 'epoch_3.pth']
    assert sorted(p.name for p in tmp_path.glob('*.pth')) == expected


class _FirstEpochRNG(Hook):
    """Records the torch RNG state as the run's first training epoch starts (after
    RNGStateHook, which restores resumed states at that point)."""
    priority = 'LOWEST'

    def __init__(self):
        self.state = None

    def before_train_epoch(self, runner):
        if self.state is None:
            self.state = torch.get_rng_state()


def test_load_from_does_not_restore_rng_states(tmp_path, restore_determinism):
    """load_from (fine-tuning) starts a fresh run: it draws the config seed's stream, not the
    stream saved in the checkpoint (which a resume continues)."""
    from spanet_mm.engine import RNGStateHook
    from spanet_mm.engine.hooks.rng_state_hook import CHECKPOINT_KEY
    _toy_runner(tmp_path / 'first', [RNGStateHook()], by_epoch=True).train()
    checkpoint = tmp_path / 'first' / 'epoch_1.pth'
    saved = torch.load(checkpoint, weights_only=False)[CHECKPOINT_KEY]['per_rank'][0]['torch']
    runs = {}
    for name, kwargs in (('fresh', {}), ('load_from', dict(load_from=str(checkpoint))),
                         ('resume', dict(load_from=str(checkpoint), resume=True))):
        recorder = _FirstEpochRNG()
        _toy_runner(tmp_path / name, [RNGStateHook(), recorder], by_epoch=True,
                    experiment_name=name, **kwargs).train()
        runs[name] = recorder.state
    assert torch.equal(runs['load_from'], runs['fresh'])
    assert torch.equal(runs['resume'], saved) and not torch.equal(saved, runs['fresh'])


@pytest.mark.parametrize('strict', [True, False], ids=['strict', 'lenient'])
def test_resume_from_a_checkpoint_without_rng_states(tmp_path, strict, restore_determinism):
    """A checkpoint written without RNGStateHook has no RNG states: RNGStateHook(strict=True)
    refuses to resume from it (the resume could not be exact); the default only warns and
    the run finishes."""
    from spanet_mm.engine import ExactResumeError, RNGStateHook
    _toy_runner(tmp_path / 'nohook', [], by_epoch=True,
                experiment_name=f'rng_free_{strict}').train()
    checkpoint = tmp_path / 'nohook' / 'epoch_1.pth'
    assert 'rng_states' not in torch.load(checkpoint, weights_only=False)
    resumed = _toy_runner(tmp_path / 'resumed', [RNGStateHook(strict=strict)], by_epoch=True,
                          experiment_name=f'rng_free_resumed_{strict}',
                          load_from=str(checkpoint), resume=True)
    if strict:
        with pytest.raises(ExactResumeError, match='the checkpoint has no RNG states'):
            resumed.train()
        assert not (tmp_path / 'resumed' / 'epoch_2.pth').exists()
    else:
        resumed.train()
        assert resumed.epoch == 3
        assert sorted(p.name for p in (tmp_path / 'resumed').glob('*.pth')) == [
            'epoch_2.pth', 'epoch_3.pth']  # resumed after epoch 1, not trained from scratch
