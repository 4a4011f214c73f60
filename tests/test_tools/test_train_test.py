"""tools/train.py, tools/test.py and tools/dist_train.sh end to end, as subprocesses, on the
synthetic demo data (tools/generate_demo_data.py) in a temporary directory; mmdet's own
train.py on a spanet_mm config; the missing-dataset, missing-scope and missing-pretrained errors.
"""
import json
import math
import os
import os.path as osp
import re
import shutil
import socket
import subprocess
import sys

import pytest
import torch
from conftest import REPO_ROOT, generate_demo_data, load_tool, run_python

pytestmark = pytest.mark.slow  # the tools end to end, as subprocesses

TOOLS = osp.join(REPO_ROOT, 'tools')
CONFIGS = osp.join(REPO_ROOT, 'configs')
PYTHON = sys.executable

DEMO = {
    'det': dict(
        config='detection/demo/mask_rcnn_spanet_demo.py',
        # 4 training images at batch 4: 1 iteration per epoch, 2 epochs; 4 val images
        options=['train_dataloader.dataset.indices=4', 'val_dataloader.dataset.indices=4',
                 'train_cfg.max_epochs=2', 'train_cfg.val_interval=2'],
        metrics=['coco/bbox_mAP', 'coco/bbox_mAP_50', 'coco/segm_mAP']),
    'seg': dict(
        config='segmentation/demo/fpn_spanet_demo.py',
        options=['train_cfg.max_iters=2', 'train_cfg.val_interval=2',
                 'val_dataloader.dataset.indices=3'],
        metrics=['mIoU', 'aAcc', 'mAcc']),
    'cls': dict(
        config='classification/demo/spanet_demo_cls.py',
        options=['train_dataloader.dataset.indices=32', 'val_dataloader.dataset.indices=20',
                 'train_cfg.max_epochs=1', 'train_cfg.val_interval=1'],
        metrics=['accuracy/top1']),
}


def run(args, cwd, timeout=300, env=None):
    """``args`` as a process: a Python script forked from the preloaded interpreter
    (``run_python``), anything else (the launch scripts) through ``subprocess``."""
    full_env = dict(os.environ, OMP_NUM_THREADS='1', MKL_NUM_THREADS='1',
                    PYTHONWARNINGS='ignore', PYTHON=PYTHON)
    full_env.update(env or {})
    if args[0] == PYTHON:
        return run_python(*args[1:], cwd=cwd, env=full_env, timeout=timeout)
    return subprocess.run(args, cwd=cwd, env=full_env, capture_output=True, text=True,
                          timeout=timeout)


def check_ok(result):
    assert result.returncode == 0, (
        f'exit code {result.returncode}\n--- stdout\n{result.stdout[-4000:]}\n'
        f'--- stderr\n{result.stderr[-4000:]}')


@pytest.fixture(scope='module')
def workspace(tmp_path_factory):
    """A directory with data/demo/{coco,ade,imagenet}, where the tools run."""
    root = tmp_path_factory.mktemp('tasks')
    result = run([PYTHON, osp.join(TOOLS, 'generate_demo_data.py'), '--out', 'data/demo'],
                 cwd=root, timeout=120)
    check_ok(result)
    for path in ('coco/annotations/instances_train2017.json', 'coco/val2017',
                 'ade/images/training', 'ade/annotations/validation',
                 'imagenet/meta/val.txt', 'imagenet/train'):
        assert osp.exists(root / 'data' / 'demo' / path), path
    return root


def _finite_metrics(path, keys):
    with open(path) as f:
        metrics = json.load(f)
    for key in keys:
        assert key in metrics, f'{key} missing in {sorted(metrics)}'
        assert isinstance(metrics[key], (int, float)) and math.isfinite(metrics[key]), \
            (key, metrics[key])
    return metrics


def test_generate_demo_data_is_deterministic(workspace, tmp_path):
    result = run([PYTHON, osp.join(TOOLS, 'generate_demo_data.py'), '--out', 'again'],
                 cwd=tmp_path, timeout=120)
    check_ok(result)
    for rel in ('coco/annotations/instances_val2017.json', 'imagenet/meta/train.txt'):
        with open(workspace / 'data' / 'demo' / rel) as a, open(tmp_path / 'again' / rel) as b:
            assert a.read() == b.read()
    with open(tmp_path / 'again' / 'coco/annotations/instances_train2017.json') as f:
        coco = json.load(f)
    assert {c['name'] for c in coco['categories']} == {'circle', 'square'}
    assert {a['category_id'] for a in coco['annotations']} == {1, 2}
    assert all(len(a['segmentation'][0]) >= 8 and a['bbox'][2] > 0 for a in coco['annotations'])


@pytest.mark.parametrize('kind', ['folder', 'symlink'])
def test_generate_demo_data_leaves_a_real_dataset_alone(kind, tmp_path):
    """``--out data`` names the real configs' data roots: a dataset there (a folder, or a
    symlink to one as docs/datasets.md suggests) is neither deleted nor written into; the tool
    stops with one error naming it. (In-process: the process boundary is not what is tested.)"""
    real = tmp_path / 'datasets' / 'coco'
    (real / 'annotations').mkdir(parents=True)
    (real / 'annotations' / 'instances_train2017.json').write_text('{"real": true}')
    out = tmp_path / 'data'
    out.mkdir()
    if kind == 'folder':
        real = real.rename(out / 'coco')
    else:
        (out / 'coco').symlink_to(real)
    with pytest.raises(SystemExit) as excinfo:
        load_tool('tools/generate_demo_data.py').main(['--out', str(out)])
    message = str(excinfo.value.code)
    assert message.startswith(f'ERROR: {out / "coco"} exists and is ') and '--out' in message
    assert sorted(p.name for p in real.rglob('*')) == ['annotations', 'instances_train2017.json']
    assert (real / 'annotations' / 'instances_train2017.json').read_text() == '{"real": true}'
    assert sorted(p.name for p in out.iterdir()) == ['coco']  # no ade/ imagenet/ either


def test_generate_demo_data_replaces_its_own_output(tmp_path):
    """A re-run (``make demo`` again) replaces the sets it wrote, recognised by their marker."""
    generate_demo_data(tmp_path)
    for sub in ('coco', 'ade', 'imagenet'):
        assert (tmp_path / sub / '.spanet_mm_demo_data').is_file(), sub
    (tmp_path / 'coco' / 'train2017' / 'stale.jpg').write_text('from the first run')
    generate_demo_data(tmp_path)
    assert not (tmp_path / 'coco' / 'train2017' / 'stale.jpg').exists()
    assert (tmp_path / 'coco' / '.spanet_mm_demo_data').is_file()


@pytest.mark.parametrize('task', ['det', 'seg', 'cls'])
def test_train_then_test(task, workspace):
    spec = DEMO[task]
    config = osp.join(CONFIGS, spec['config'])
    work_dir = workspace / 'work_dirs' / task
    result = run([PYTHON, osp.join(TOOLS, 'train.py'), config, '--work-dir', str(work_dir),
                  '--cfg-options', *spec['options']], cwd=workspace)
    check_ok(result)
    last = (work_dir / 'last_checkpoint').read_text().strip()
    assert osp.isfile(last)

    test_dir = workspace / 'work_dirs' / f'{task}_test'
    out = test_dir / ('preds' if task == 'seg' else 'preds.pkl')
    show_dir = test_dir / 'vis'
    result = run([PYTHON, osp.join(TOOLS, 'test.py'), config, last, '--work-dir', str(test_dir),
                  '--out', str(out), '--show-dir', str(show_dir),
                  '--cfg-options', 'test_dataloader.dataset.indices=4'], cwd=workspace)
    check_ok(result)
    _finite_metrics(test_dir / 'test_metrics.json', spec['metrics'])
    assert osp.exists(out)
    if task == 'seg':
        assert len(os.listdir(out)) == 4  # one predicted label map per image
    else:
        assert osp.getsize(out) > 0
    painted = [f for _, _, files in os.walk(show_dir) for f in files
               if f.endswith(('.png', '.jpg'))]
    assert len(painted) >= (1 if task == 'cls' else 4), painted


def test_resume_auto(workspace):
    """--resume without a path continues from the work dir's last checkpoint (the checkpoint
    was written by the Runner: this also exercises spanet_mm's safe loader on torch >= 2.6)."""
    spec = DEMO['cls']
    config = osp.join(CONFIGS, spec['config'])
    work_dir = workspace / 'work_dirs' / 'cls_resume'
    options = ['train_dataloader.dataset.indices=16', 'val_dataloader.dataset.indices=4',
               'train_cfg.val_interval=10', 'default_hooks.checkpoint.interval=1']
    check_ok(run([PYTHON, osp.join(TOOLS, 'train.py'), config, '--work-dir', str(work_dir),
                  '--cfg-options', 'train_cfg.max_epochs=1', *options], cwd=workspace))
    first = workspace / 'cls_epoch_1.pth'  # kept: the next run rotates epoch_1.pth out
    shutil.copy(work_dir / 'epoch_1.pth', first)
    result = run([PYTHON, osp.join(TOOLS, 'train.py'), config, '--work-dir', str(work_dir),
                  '--resume', '--cfg-options', 'train_cfg.max_epochs=2', *options],
                 cwd=workspace)
    check_ok(result)
    assert 'resumed epoch: 1' in (result.stdout + result.stderr)
    assert osp.isfile(work_dir / 'epoch_2.pth')
    # --resume PATH: that checkpoint, into another work dir (where auto-resume finds nothing).
    other = workspace / 'work_dirs' / 'cls_resume_from'
    result = run([PYTHON, osp.join(TOOLS, 'train.py'), config, '--work-dir', str(other),
                  '--resume', str(first), '--cfg-options',
                  'train_cfg.max_epochs=2', *options], cwd=workspace)
    check_ok(result)
    assert 'resumed epoch: 1' in (result.stdout + result.stderr)
    assert osp.isfile(other / 'epoch_2.pth') and not osp.exists(other / 'epoch_1.pth')


def test_train_amp_on_cpu(workspace):
    """--amp without CUDA: the run's config has CPUAmpOptimWrapper (the config the Runner
    dumps into the work dir, which it built its optimizer wrapper from) and the epoch ends.
    With --no-validate the Runner has no val loop (and the config's hooks run without one)."""
    from mmengine.config import Config
    config = osp.join(CONFIGS, DEMO['cls']['config'])
    work_dir = workspace / 'work_dirs' / 'cls_amp'
    result = run([PYTHON, osp.join(TOOLS, 'train.py'), config, '--work-dir', str(work_dir),
                  '--amp', '--no-validate', '--cfg-options', 'train_cfg.max_epochs=1',
                  'train_cfg.val_interval=1', 'train_dataloader.dataset.indices=16',
                  'val_dataloader.dataset.indices=4'], cwd=workspace)
    check_ok(result)
    dumped = Config.fromfile(str(work_dir / osp.basename(config)))
    assert dumped.optim_wrapper.type == ('AmpOptimWrapper' if torch.cuda.is_available()
                                         else 'CPUAmpOptimWrapper')
    assert dumped.val_dataloader is None and dumped.val_cfg is None
    assert osp.isfile(work_dir / 'epoch_1.pth')
    assert 'Epoch(val)' not in result.stdout + result.stderr


def _free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


DIST_CASES = {
    # 64 images, 2 processes x batch 16: 2 iterations each. Fresh interpreters for torchrun and
    # both ranks, as a user starts them (interpreter exit included).
    'cls': (['train_dataloader.dataset.indices=64', 'val_dataloader.dataset.indices=8',
             'train_cfg.max_epochs=1', 'train_cfg.val_interval=1'],
            'Epoch(train) [1][2/2]', 'epoch_1.pth', 'fresh'),
    # The shipped demo: its head's SyncBN runs as BN on CPUs; validation and the checkpoint
    # under DDP (tests/test_tools/test_dist_train.py's runs have neither). torchrun and the ranks
    # run as forks of the preloaded interpreter (conftest's forked_python: 20 s less here).
    'seg': (['train_cfg.max_iters=2', 'train_cfg.val_interval=2',
             'val_dataloader.dataset.indices=4'],
            'Saving checkpoint at 2 iterations', 'iter_2.pth', 'forked'),
}


@pytest.mark.parametrize('task', sorted(DIST_CASES))
def test_dist_train_two_processes_on_cpu(task, workspace, forked_python):
    """tools/dist_train.sh CONFIG 2: a real 2-process DDP run (gloo without CUDA)."""
    options, last_iter, checkpoint, interpreters = DIST_CASES[task]
    config = osp.join(CONFIGS, DEMO[task]['config'])
    work_dir = workspace / 'work_dirs' / f'{task}_dist'
    env = {'PORT': str(_free_port())}
    if interpreters == 'forked':
        env.update(PYTHON=forked_python, PYTHON_EXEC=forked_python)
    result = run(['bash', osp.join(TOOLS, 'dist_train.sh'), config, '2',
                  '--work-dir', str(work_dir), '--cfg-options', *options],
                 cwd=workspace, env=env)
    check_ok(result)
    output = result.stdout + result.stderr
    assert 'Distributed launcher: pytorch' in output
    assert 'Distributed training: True' in output
    assert "'backend': 'gloo'" in output or '"backend": "gloo"' in output
    assert last_iter in output
    assert osp.isfile(work_dir / checkpoint)


def test_mmdet_own_train_py(workspace):
    """A spanet_mm config runs through mmdet's own tools/train.py (custom_imports)."""
    import mmdet
    mmdet_train = osp.join(osp.dirname(mmdet.__file__), '.mim', 'tools', 'train.py')
    assert osp.isfile(mmdet_train)
    spec = DEMO['det']
    work_dir = workspace / 'work_dirs' / 'det_mmdet_tool'
    result = run([PYTHON, mmdet_train, osp.join(CONFIGS, spec['config']), '--work-dir',
                  str(work_dir), '--cfg-options', *spec['options'][:-2],
                  'train_cfg.max_epochs=1', 'train_cfg.val_interval=1'], cwd=workspace)
    check_ok(result)
    assert osp.isfile(work_dir / 'epoch_1.pth')
    output = result.stdout + result.stderr
    assert 'coco/bbox_mAP' in output
    # The run policy comes with the config: the Runner's table of registered hooks lists them
    # (lines "(PRIORITY) Name"; the config dump alone has "type='Name'").
    for hook in ('RNGStateHook', 'CheckpointCheckHook', 'DeferredCheckpointRemovalHook'):
        assert re.search(rf'^\([A-Z_ ]+\) {hook} *$', output, re.MULTILINE), hook


@pytest.mark.parametrize('task,toolbox,checkpoint', [('seg', 'mmseg', 'iter_2.pth'),
                                                     ('cls', 'mmpretrain', 'epoch_1.pth')])
def test_toolbox_own_train_and_test_py(task, toolbox, checkpoint, workspace):
    """The same configs through mmseg's / mmpretrain's own train.py and test.py, which load
    the Runner checkpoint through spanet_mm's safe loader (imported by custom_imports)."""
    tools = osp.join(osp.dirname(__import__(toolbox).__file__), '.mim', 'tools')
    spec = DEMO[task]
    config = osp.join(CONFIGS, spec['config'])
    work_dir = workspace / 'work_dirs' / f'{task}_{toolbox}_tools'
    result = run([PYTHON, osp.join(tools, 'train.py'), config, '--work-dir', str(work_dir),
                  '--cfg-options', *spec['options']], cwd=workspace)
    check_ok(result)
    assert osp.isfile(work_dir / checkpoint)
    result = run([PYTHON, osp.join(tools, 'test.py'), config, str(work_dir / checkpoint),
                  '--work-dir', str(work_dir / 'test')], cwd=workspace)
    check_ok(result)
    output = result.stdout + result.stderr
    assert 'Load checkpoint from' in output
    assert all(f'{key}:' in output for key in spec['metrics']), output[-2000:]


@pytest.mark.parametrize('config,expected', [
    ('detection/retinanet_spanet_s_1x.py',
     ['data/coco/annotations/instances_train2017.json', 'data/coco/train2017',
      'Expected COCO layout']),
    ('segmentation/fpn_spanet_s_80k.py',
     ['data/ade/ADEChallengeData2016/images/training',
      'data/ade/ADEChallengeData2016/annotations/training', 'Expected ADE20K layout']),
    ('classification/spanet_s_in1k.py', ['data/imagenet/train', 'Expected ImageNet layout']),
])
def test_missing_dataset_names_path_and_layout(config, expected, tmp_path):
    result = run([PYTHON, osp.join(TOOLS, 'train.py'), osp.join(CONFIGS, config)],
                 cwd=tmp_path, timeout=120)
    assert result.returncode != 0
    assert 'Dataset not found' in result.stderr
    assert 'Traceback' not in result.stderr
    for text in expected:
        assert text in result.stderr, result.stderr
    assert 'docs/datasets.md' in result.stderr
    assert not (tmp_path / 'work_dirs').exists()  # failed before building the Runner


def test_test_py_missing_dataset(tmp_path):
    """tools/test.py checks the test set before it builds the Runner: the project's own ERROR
    naming the missing folder and the fix, exit status 1, no traceback (without the check,
    mmseg fails later with a traceback that also contains the path)."""
    cwd = tmp_path.resolve()
    checkpoint = cwd / 'any.pth'
    checkpoint.write_bytes(b'')  # only its existence is checked before the datasets
    result = run([PYTHON, osp.join(TOOLS, 'test.py'),
                  osp.join(CONFIGS, 'segmentation/fpn_spanet_m_80k.py'), str(checkpoint)],
                 cwd=cwd, timeout=120)
    output = result.stdout + result.stderr
    assert result.returncode == 1, output[-3000:]
    assert 'Traceback' not in output, output[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith('ERROR')]
    assert errors == ['ERROR: Dataset not found. Missing path(s):'], result.stderr[-3000:]
    # The relative data_root of the config, made absolute (where the user should put it).
    assert f"test: {cwd / 'data/ade/ADEChallengeData2016/images/validation'}\n" in result.stderr
    assert 'See docs/datasets.md' in result.stderr  # the fix
    assert not (cwd / 'work_dirs').exists()  # stopped before the Runner


def test_missing_default_scope(tmp_path):
    config = tmp_path / 'no_scope.py'
    config.write_text("model = dict(type='ImageClassifier', backbone=dict(type='SPANet'))\n")
    result = run([PYTHON, osp.join(TOOLS, 'train.py'), str(config)], cwd=tmp_path, timeout=120)
    assert result.returncode != 0
    assert "default_scope is None" in result.stderr
    assert "'mmpretrain', 'mmdet', 'mmseg'" in result.stderr


def test_missing_pretrained_through_train_py(workspace):
    """A det config whose pretrained file is absent stops with the conversion command."""
    config = workspace / 'pretrained_missing.py'
    config.write_text(
        f"_base_ = '{osp.join(CONFIGS, DEMO['seg']['config'])}'\n"
        "model = dict(backbone=dict(init_cfg=dict(_delete_=True, type='Pretrained',\n"
        "    checkpoint='checkpoints/spanet_s_in1k.pth', prefix='backbone.')))\n")
    result = run([PYTHON, osp.join(TOOLS, 'train.py'), str(config), '--work-dir',
                  str(workspace / 'work_dirs' / 'pretrained_missing'), '--cfg-options',
                  *DEMO['seg']['options']], cwd=workspace)
    # A user error: one ERROR line, exit 1, no traceback.
    assert result.returncode == 1
    assert 'Traceback' not in result.stdout + result.stderr
    assert "ERROR: SPANet pretrained weights 'checkpoints/spanet_s_in1k.pth' not found" \
        in result.stderr
    assert 'spanet_official_to_mm.py' in result.stderr
