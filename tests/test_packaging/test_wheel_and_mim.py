"""The package as pip builds and installs it, used from outside the checkout.

Once per module: a wheel is built (``pip wheel --no-deps --no-build-isolation``) from a copy of
the source tree (so that the build leaves no build/ or egg-info in the checkout that others use),
and installed into a throwaway venv that sees this environment's packages through a .pth file but
not its editable spanet_mm (.pth files of an added directory are not processed). Everything then
runs in a directory outside the checkout with that venv's interpreter:

- the wheel carries ``spanet_mm/.mim`` (model-index.yml, metafiles, configs, tools), as the
  OpenMMLab wheels do, and the installed copy is the one imported;
- ``mim search spanet_mm`` lists the eleven models and ``--config <config file name>`` finds each;
- ``mim train spanet_mm <config name>`` and ``mim test`` run a config found inside the package;
- a user's config in another directory (``_base_`` from mmdet, ``custom_imports``) trains and
  tests with mmdet's own tools/train.py and tools/test.py;
- an editable install links ``spanet_mm/.mim`` to the checkout's files.
"""
import glob
import importlib.util
import json
import os
import os.path as osp
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import zipfile

import pytest

from conftest import REPO_ROOT

pytestmark = pytest.mark.slow

#: The eleven models: one per config file (mim's config id is the file name).
MODEL_CONFIGS = sorted(p for p in glob.glob(osp.join(REPO_ROOT, 'configs', '*', '*.py'))
                       if '_base_' not in p)  # configs/_base_/: shared bases
MODEL_NAMES = sorted(osp.basename(p)[:-3] for p in MODEL_CONFIGS)

#: Not part of the source tree a user would build from.
SOURCE_IGNORE = shutil.ignore_patterns('.git', '.venv', '.mim', '__pycache__', '*.pyc',
                                       '*.egg-info', 'build', 'dist', 'work_dirs', 'data',
                                       'checkpoints', '.pytest_cache', '.whl')

USER_CONFIG = '''\
# A user's own config, outside the spanet_mm checkout: mmdet's RetinaNet with a tiny SPANet
# on tools/generate_demo_data.py's COCO-format images.
_base_ = 'mmdet::retinanet/retinanet_r50_fpn_1x_coco.py'
custom_imports = dict(imports=['spanet_mm'], allow_failed_imports=False)

model = dict(
    backbone=dict(
        _delete_=True,
        type='SPANet',
        arch=dict(layers=[1, 1, 1, 1], embed_dims=[32, 64, 96, 128]),
        out_indices=(1, 2, 3)),
    neck=dict(in_channels=[64, 96, 128], start_level=0, out_channels=64),
    bbox_head=dict(num_classes=2, in_channels=64, feat_channels=64),
    test_cfg=dict(score_thr=0.0))  # untrained: keep every box, so that AP is computed

data_root = 'data/demo/coco/'
pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='Resize', scale=(128, 128), keep_ratio=True),
    dict(type='PackDetInputs'),
]
dataset = dict(data_root=data_root, metainfo=dict(classes=('circle', 'square')),
               pipeline=pipeline, indices=2)
train_dataloader = dict(
    batch_size=2, num_workers=0, persistent_workers=False,
    dataset=dict(ann_file='annotations/instances_train2017.json',
                 data_prefix=dict(img='train2017/'), **dataset))
val_dataloader = dict(
    batch_size=2, num_workers=0, persistent_workers=False,
    dataset=dict(ann_file='annotations/instances_val2017.json',
                 data_prefix=dict(img='val2017/'), **dataset))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + 'annotations/instances_val2017.json')
test_evaluator = val_evaluator
optim_wrapper = dict(optimizer=dict(_delete_=True, type='AdamW', lr=1e-4, weight_decay=1e-4))
train_cfg = dict(max_epochs=1, val_interval=1)
'''


def start(args, cwd):
    """Start a command with a clean environment (no PYTHONPATH), one thread, output to a file."""
    env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
    env.update(OMP_NUM_THREADS='1', MKL_NUM_THREADS='1', PYTHONWARNINGS='ignore')
    args = [str(a) for a in args]
    log = tempfile.TemporaryFile('w+')
    return args, log, subprocess.Popen(args, cwd=cwd, env=env, stdout=log,
                                       stderr=subprocess.STDOUT, text=True)


def finish(job, timeout=300):
    """(command, exit code, output) of a started command."""
    args, log, process = job
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    log.seek(0)
    return ' '.join(args), process.returncode, log.read()


def check(result):
    command, returncode, output = result
    assert returncode == 0, f'{command}: exit code {returncode}\n{output[-6000:]}'
    return output


def run(args, cwd):
    return check(finish(start(args, cwd)))


def make_venv(path):
    """A venv whose own site-packages comes first, then this environment's (for torch, mm*)."""
    run([sys.executable, '-m', 'venv', '--without-pip', path], cwd=path.parent)
    python = path / 'bin' / 'python'
    site = run([python, '-c', 'import sysconfig; print(sysconfig.get_paths()["purelib"])'],
               cwd=path).strip()
    deps = {sysconfig.get_paths()['purelib'], sysconfig.get_paths()['platlib']}
    with open(osp.join(site, 'spanet_mm_test_deps.pth'), 'w') as f:
        f.write('\n'.join(sorted(deps)) + '\n')
    return python, site


def pip_install(python, *args, cwd):
    run([sys.executable, '-m', 'pip', '--python', python, 'install', '-q', '--no-deps', *args],
        cwd=cwd)


@pytest.fixture(scope='module')
def installed(tmp_path_factory):
    root = tmp_path_factory.mktemp('packaging')
    source = root / 'src'
    shutil.copytree(REPO_ROOT, source, ignore=SOURCE_IGNORE, symlinks=True)
    run([sys.executable, '-m', 'pip', 'wheel', '-q', '--no-deps', '--no-build-isolation',
         '-w', root / 'dist', source], cwd=root)
    (wheel, ) = glob.glob(str(root / 'dist' / 'spanet_mm-*.whl'))
    python, site = make_venv(root / 'venv')
    pip_install(python, wheel, cwd=root)
    work = root / 'work'  # outside the checkout: only the installed spanet_mm is importable
    work.mkdir()
    run([sys.executable, osp.join(REPO_ROOT, 'tools', 'generate_demo_data.py'), '--out',
         'data/demo'], cwd=work)
    return dict(root=root, source=source, wheel=wheel, python=python, site=site, work=work)


def test_wheel_carries_the_mim_files(installed):
    with zipfile.ZipFile(installed['wheel']) as wheel:
        names = set(wheel.namelist())
    mim = 'spanet_mm/.mim/'
    expected = {'model-index.yml', 'tools/train.py', 'tools/test.py', 'tools/dist_train.sh',
                'tools/model_converters/spanet_official_to_mm.py'}
    for path in glob.glob(osp.join(REPO_ROOT, 'configs', '**', '*'), recursive=True):
        if osp.isfile(path) and path.endswith(('.py', '.yml', '.md')):
            expected.add(osp.relpath(path, REPO_ROOT))
    assert {mim + p for p in expected} <= names
    # Checkout scripts stay out: they create or use this repository's .venv.
    assert not {mim + 'tools/setup_env.sh', mim + 'tools/demo.sh'} & names
    # A wheel build copies into the build directory, never into the source tree.
    assert not osp.exists(installed['source'] / 'spanet_mm' / '.mim')


def test_installed_copy_is_imported_and_in_the_hub(installed):
    out = run([installed['python'], '-c', '''if True:
        import json, spanet_mm, mmpretrain
        from mmpretrain.apis import ModelHub
        names = mmpretrain.list_models("*spanet*")
        print(json.dumps(dict(file=spanet_mm.__file__, root=spanet_mm.hub.mim_root(),
                              names=names, configs=[ModelHub.get(n).config.filename
                                                    for n in names[:1]])))
        '''], cwd=installed['work'])
    info = json.loads(out.splitlines()[-1])
    package = osp.join(installed['site'], 'spanet_mm')
    assert info['file'] == osp.join(package, '__init__.py')
    assert info['root'] == osp.join(package, '.mim')
    assert info['names'] == [n for n in MODEL_NAMES if n.endswith('_in1k')]
    # The config is the packaged copy (a file, not a link into a checkout).
    (config, ) = info['configs']
    assert config == osp.join(package, '.mim', 'configs', 'classification',
                              info['names'][0] + '.py')
    assert not osp.islink(config)


def test_mim_search(installed):
    python, work = installed['python'], installed['work']
    listed = run([python, '-m', 'mim', 'search', 'spanet_mm'], cwd=work)
    assert sorted(re.findall(r'^config id: (\S+)$', listed, flags=re.M)) == MODEL_NAMES
    # The example, through the command line ...
    found = run([python, '-m', 'mim', 'search', 'spanet_mm', '--config',
                 'retinanet_spanet_s_1x'], cwd=work)
    assert re.search(r'^config\s+configs/detection/retinanet_spanet_s_1x\.py$', found,
                     flags=re.M)
    assert 'coco/box_ap' in found and '43.3' in found
    # ... and every config file name, through mim's API (one process for all eleven).
    out = run([python, '-c', '''if True:
        import json, sys
        from mim.commands.search import get_model_info
        found = {n: list(get_model_info('spanet_mm', configs=[n]).index) for n in sys.argv[1:]}
        print(json.dumps(found))
        ''', *MODEL_NAMES], cwd=work)
    assert json.loads(out.splitlines()[-1]) == {n: [n] for n in MODEL_NAMES}


@pytest.fixture(scope='module')
def trained(installed):
    """``mim train``/``mim test spanet_mm`` on the classification demo (a config found inside
    the package) and mmdet's own train.py/test.py on a user's config in another directory.
    They are independent and mostly start-up time, so each pair runs at the same time."""
    python, work = installed['python'], installed['work']
    (work / 'my_configs').mkdir()
    (work / 'my_configs' / 'retinanet_tiny_spanet.py').write_text(USER_CONFIG)
    user_config = 'my_configs/retinanet_tiny_spanet.py'
    mmdet_tools = osp.join(osp.dirname(importlib.util.find_spec('mmdet').origin), '.mim',
                           'tools')
    mim_train = start([python, '-m', 'mim', 'train', 'spanet_mm', 'spanet_demo_cls.py',
                       '--gpus', '0', '--work-dir', 'mim_cls', '--cfg-options',
                       'train_dataloader.dataset.indices=16', 'val_dataloader.dataset.indices=8',
                       'train_cfg.max_epochs=1'], cwd=work)
    det_train = start([python, osp.join(mmdet_tools, 'train.py'), user_config, '--work-dir',
                       'det'], cwd=work)
    results = dict(mim_train=finish(mim_train), det_train=finish(det_train))
    mim_test = start([python, '-m', 'mim', 'test', 'spanet_mm', 'spanet_demo_cls.py', '--gpus',
                      '0', '--checkpoint', 'mim_cls/epoch_1.pth', '--work-dir', 'mim_cls_test',
                      '--cfg-options', 'test_dataloader.dataset.indices=8'], cwd=work)
    det_test = start([python, osp.join(mmdet_tools, 'test.py'), user_config, 'det/epoch_1.pth',
                      '--work-dir', 'det_test'], cwd=work)
    results.update(mim_test=finish(mim_test), det_test=finish(det_test))
    return results


def test_mim_train_and_test(installed, trained):
    work, site = installed['work'], installed['site']
    mim_dir = osp.join(site, 'spanet_mm', '.mim')
    out = check(trained['mim_train'])
    # mim found the config and the training script inside the installed package.
    config = osp.join(mim_dir, 'configs', 'classification', 'demo', 'spanet_demo_cls.py')
    assert f'will use {config} instead' in out
    assert osp.join(mim_dir, 'tools', 'train.py') in out
    assert osp.isfile(work / 'mim_cls' / 'epoch_1.pth')
    check(trained['mim_test'])
    with open(work / 'mim_cls_test' / 'test_metrics.json') as f:
        assert 0 <= json.load(f)['accuracy/top1'] <= 100


def test_user_config_with_mmdet_tools(installed, trained):
    check(trained['det_train'])
    assert osp.isfile(installed['work'] / 'det' / 'epoch_1.pth')
    out = check(trained['det_test'])
    assert re.search(r'Epoch\(test\).*coco/bbox_mAP: \d', out), out[-2000:]


def test_editable_install_links_the_checkout(installed, tmp_path):
    """pip install -e: spanet_mm/.mim holds links to the source tree's files."""
    source = tmp_path / 'src'
    shutil.copytree(installed['source'], source, symlinks=True)
    python, _ = make_venv(tmp_path / 'venv')
    pip_install(python, '--no-build-isolation', '-e', source, cwd=tmp_path)
    # The editable install imports spanet_mm from the source tree: .mim must be there.
    mim = source / 'spanet_mm' / '.mim'
    for name in ('model-index.yml', 'configs', 'tools'):
        assert osp.islink(mim / name) and osp.samefile(mim / name, source / name), name
