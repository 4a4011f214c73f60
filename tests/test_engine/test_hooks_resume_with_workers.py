"""Exact resume with dataloader workers: for each task (classification, detection,
segmentation), ``tools/train.py`` with ``num_workers=2`` and persistent workers (the upstream
dense bases' setting; restarted workers: tests/test_engine/test_hooks_exact_resume.py, in-process) is run
uninterrupted;
a second process resumes from the uninterrupted run's first checkpoint (exactly the file a run
stopped there would have left) and must end with weights ``torch.equal`` to the uninterrupted
run's. The expected weights come from the uninterrupted run, never from the code under test.

RNGStateHook seeds the workers of epoch-based loops per epoch from (seed, epoch, rank, worker
id); without that, a resumed run's fresh persistent workers draw other augmentations.
"""
import os
import os.path as osp
import shutil

import pytest
import torch

from conftest import REPO_ROOT, generate_demo_data, start_python

TRAIN = osp.join(REPO_ROOT, 'tools', 'train.py')
CONFIGS = osp.join(REPO_ROOT, 'configs')

COMMON = ['train_dataloader.num_workers=2', 'train_cfg.val_begin=1000',
          'default_hooks.checkpoint.max_keep_ckpts=-1', 'randomness.deterministic=True']
TASKS = {
    # 2 iterations per epoch (one batch per worker), 2 epochs, drop path and random crops.
    'cls': dict(config='classification/demo/spanet_demo_cls.py', first='epoch_1.pth',
                last='epoch_2.pth',
                options=['train_dataloader.dataset.indices=16', 'train_dataloader.batch_size=8',
                         'train_cfg.max_epochs=2', 'default_hooks.checkpoint.interval=1',
                         'model.backbone.drop_path_rate=0.1']),
    # Mask R-CNN: random flips in the workers, RPN/R-CNN samplers in the main process.
    'det': dict(config='detection/demo/mask_rcnn_spanet_demo.py', first='epoch_1.pth',
                last='epoch_2.pth',
                options=['train_dataloader.dataset.indices=4', 'train_dataloader.batch_size=2',
                         'train_cfg.max_epochs=2', 'default_hooks.checkpoint.interval=1']),
    # Iteration-based loop (InfiniteSampler): random resize, crop and flip in the workers.
    'seg': dict(config='segmentation/demo/fpn_spanet_demo.py', first='iter_2.pth',
                last='iter_4.pth',
                options=['train_dataloader.batch_size=2', 'train_cfg.max_iters=4',
                         'default_hooks.checkpoint.interval=2']),
}


def _env():
    return dict(os.environ, OMP_NUM_THREADS='1', MKL_NUM_THREADS='1', PYTHONWARNINGS='ignore')


@pytest.fixture(scope='module')
def workspace(tmp_path_factory):
    """data/demo/{coco,ade,imagenet} from tools/generate_demo_data.py, where the tools run."""
    root = tmp_path_factory.mktemp('workers')
    generate_demo_data(root / 'data' / 'demo')
    return root


def _start(workspace, task, persistent, work_dir, *args):
    spec = TASKS[task]
    options = [*COMMON, *spec['options'], f'train_dataloader.persistent_workers={persistent}']
    return start_python(TRAIN, osp.join(CONFIGS, spec['config']), '--work-dir', work_dir, *args,
                        '--cfg-options', *options, cwd=workspace, env=_env(),
                        merge_stderr=True)


def _finish(proc):
    out = proc.wait(timeout=400).stdout
    assert proc.returncode == 0, out[-4000:]
    return out


def _weights(path):
    from spanet_mm.checkpoint import load_local_checkpoint
    return load_local_checkpoint(str(path))['state_dict']


CASES = [('cls', True), ('det', True), ('seg', True)]


@pytest.fixture(scope='module')
def runs(workspace):
    """Every case's uninterrupted run, then every case's resumed run, side by side (the
    processes are mostly start-up time; 2 dataloader workers each)."""
    names = {case: f'{case[0]}_{"persistent" if case[1] else "restarted"}' for case in CASES}
    full = {case: _start(workspace, *case, workspace / names[case] / 'full') for case in CASES}
    logs = {case: _finish(proc) for case, proc in full.items()}
    resumed = {}
    for case in CASES:
        first = TASKS[case[0]]['first']
        work_dir = workspace / names[case] / 'resumed'
        work_dir.mkdir(parents=True)
        shutil.copy(workspace / names[case] / 'full' / first, work_dir / first)
        resumed[case] = _start(workspace, *case, work_dir, '--resume', str(work_dir / first))
    for case, proc in resumed.items():
        logs[case] = (logs[case], _finish(proc))
    return {case: (workspace / names[case], logs[case]) for case in CASES}


@pytest.mark.slow
@pytest.mark.parametrize('task,persistent', CASES,
                         ids=[f'{t}-{"persistent" if p else "restarted"}' for t, p in CASES])
def test_resume_with_two_workers_is_exact(runs, task, persistent):
    root, (full_log, resumed_log) = runs[(task, persistent)]
    last = TASKS[task]['last']
    expected = _weights(root / 'full' / last)
    resumed = _weights(root / 'resumed' / last)
    assert 'resumed epoch:' in resumed_log, resumed_log[-3000:]
    assert expected.keys() == resumed.keys()
    different = [k for k in expected if not torch.equal(expected[k], resumed[k])]
    assert not different, (f'{len(different)} of {len(expected)} tensors differ, e.g. '
                           f'{different[:3]}')
    # The runs trained: the weights moved away from the first checkpoint.
    first = _weights(root / 'full' / TASKS[task]['first'])
    assert any(not torch.equal(first[k], expected[k]) for k in expected)


# --- the per-epoch seeding itself, in-process ----------------------------------------------
@pytest.fixture
def saved_rng():
    """The seeder seeds this process's python, numpy and torch generators: put them back."""
    import random

    import numpy as np
    states = random.getstate(), np.random.get_state(), torch.get_rng_state()
    yield
    random.setstate(states[0])
    np.random.set_state(states[1])
    torch.set_rng_state(states[2])


def _draws():
    """What a worker's transforms would draw from each generator."""
    import random

    import numpy as np
    return dict(python=random.random(), numpy=np.random.rand(3).tolist(),
                torch=torch.rand(3).tolist())


def test_workers_draw_new_reproducible_numbers_every_epoch(saved_rng):
    """EpochWorkerSeeder, as in a dataloader worker: every epoch draws other augmentations
    from python's random, numpy and torch, and an epoch seeded again (a resumed run's fresh
    worker) draws exactly what it drew the first time; within an epoch the streams go on."""
    from spanet_mm.engine.hooks.rng_state_hook import EpochWorkerSeeder
    epoch = torch.zeros((), dtype=torch.int64)

    def seeded(at_epoch, worker_id=0):
        seeder = EpochWorkerSeeder(seed=0, rank=0, epoch=epoch)
        seeder.worker_id = worker_id  # set by __call__ in a real worker
        epoch.fill_(at_epoch)
        seeder.maybe_reseed()
        return seeder

    seeder = seeded(0)
    epoch_0 = _draws()
    seeder.maybe_reseed()  # the same epoch: no re-seeding before the next sample
    assert all(v != epoch_0[k] for k, v in _draws().items())
    epoch.fill_(1)
    seeder.maybe_reseed()  # a persistent worker at the first sample of epoch 1
    epoch_1 = _draws()
    seeded(1)
    assert _draws() == epoch_1  # a fresh worker of a resumed run, at epoch 1
    seeded(0)
    assert _draws() == epoch_0
    for name in epoch_0:
        assert epoch_1[name] != epoch_0[name], f'{name}: epoch 1 repeats epoch 0'
    seeded(0, worker_id=1)
    other_worker = _draws()
    assert all(other_worker[name] != epoch_0[name] for name in epoch_0)
