"""A checkpoint the project refuses ends a tool in one ``ERROR:`` line, exit status 1.

Each kind of bad file (truncated, corrupt, another model, another SPANet arch, a pickle that
would run code) through each way a Runner loads one: ``tools/test.py CONFIG CKPT``,
``tools/train.py --resume CKPT`` and ``load_from``. The tools run in-process through their
real ``main`` and :func:`spanet_mm.engine.launch.run_tool` (what ``__main__`` runs); one case
runs as a real process to check the exit status and the whole output.
"""
import os
import os.path as osp

import pytest
import torch

from conftest import REPO_ROOT, FileCreatingPayload, generate_demo_data, load_tool, run_python
from spanet_mm import SPANet
from spanet_mm.engine.launch import run_tool

TOOLS = osp.join(REPO_ROOT, 'tools')
DEMO_CLS = osp.join(REPO_ROOT, 'configs', 'classification', 'demo', 'spanet_demo_cls.py')
ARCH = dict(layers=[1, 1, 1, 1], embed_dims=[8, 16, 24, 32])
CONFIG = """
_base_ = {base!r}
data_root = {data_root!r}
model = dict(backbone=dict(arch=dict(embed_dims={dims!r})), head=dict(in_channels={dims[3]}))
train_dataloader = dict(dataset=dict(data_root=data_root, indices=4), batch_size=4)
val_dataloader = dict(dataset=dict(data_root=data_root, indices=4), batch_size=4)
test_dataloader = val_dataloader
"""


@pytest.fixture(scope='module')
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp('refused')
    generate_demo_data(root / 'data')
    config = root / 'cls.py'
    config.write_text(CONFIG.format(base=DEMO_CLS, data_root=str(root / 'data' / 'imagenet'),
                                    dims=ARCH['embed_dims']))
    good = root / 'good.pth'
    backbone = SPANet(arch=ARCH, init_cfg=None).state_dict()
    torch.save(dict(state_dict={f'backbone.{k}': v for k, v in backbone.items()}), good)
    return root, config, good


def make_bad(kind, root, good):
    """``(path, words the message must hold)`` of one kind of refused file."""
    path = root / f'{kind}.pth'
    data = good.read_bytes()
    if kind == 'truncated':
        path.write_bytes(data[:len(data) // 2])
        return path, ['truncated or corrupt']
    if kind == 'corrupt':  # right length, garbage in the middle (the zip's records)
        path.write_bytes(data[:64] + os.urandom(len(data) - 128) + data[-64:])
        return path, ['truncated or corrupt']
    if kind == 'another_model':
        from mmpretrain.models import ResNet
        resnet = {f'backbone.{k}': v for k, v in ResNet(depth=18).state_dict().items()}
        torch.save(dict(state_dict=resnet), path)
        return path, ['does not fit the model at all']
    if kind == 'another_arch':
        deeper = dict(ARCH, layers=[2, 2, 2, 2])
        state = SPANet(arch=deeper, init_cfg=None).state_dict()
        torch.save(dict(state_dict={f'backbone.{k}': v for k, v in state.items()},
                        meta=dict(arch=deeper)), path)
        return path, ['does not fit the model', 'another SPANet arch']
    if kind in ('backbone_only', 'weights_only', 'nan'):
        from spanet_mm.apis import init_model
        state = init_model(str(good.parent / 'cls.py')).state_dict()  # the whole classifier
        if kind == 'backbone_only':  # e.g. an ImageNet backbone, or a detector's
            state = {k: v for k, v in state.items() if k.startswith('backbone.')}
            words = ['holds only a part of this model', "['head.fc"]
        elif kind == 'nan':  # a diverged run's
            state['backbone.stages.1.0.mlp.fc2.bias'][0] = float('nan')
            words = ['NaN or inf', 'backbone.stages.1.0.mlp.fc2.bias']
        else:  # every weight, but not saved by a training Runner
            words = ['cannot be resumed', "no ['meta', 'message_hub']", 'load_from']
        torch.save(dict(state_dict=state), path)
        return path, words
    if kind == 'unsafe':
        torch.save(dict(state_dict={}, payload=FileCreatingPayload(str(root / 'pwned'))), path)
        return path, ['Refusing to load', 'allow-list']
    raise ValueError(kind)


ENTRY_POINTS = {
    'test': lambda config, ckpt, work: ('test.py', [config, ckpt, '--work-dir', work]),
    'resume': lambda config, ckpt, work: ('train.py', [config, '--resume', ckpt,
                                                        '--work-dir', work]),
    'load_from': lambda config, ckpt, work: ('train.py', [config, '--work-dir', work,
                                                           '--cfg-options', f'load_from={ckpt}']),
}
KINDS = ['truncated', 'corrupt', 'another_model', 'another_arch', 'unsafe']

# 16 Runner start-ups (15 in-process, one a real process).
pytestmark = pytest.mark.slow


@pytest.mark.parametrize('entry', sorted(ENTRY_POINTS))
@pytest.mark.parametrize('kind', KINDS)
def test_refused_checkpoint_is_one_error_line(kind, entry, workspace, tmp_path, capsys,
                                             one_thread):
    root, config, good = workspace
    bad, words = make_bad(kind, tmp_path, good)
    tool, argv = ENTRY_POINTS[entry](str(config), str(bad), str(tmp_path / 'work'))
    main = load_tool(osp.join(TOOLS, tool)).main
    with pytest.raises(SystemExit) as exited:
        run_tool(lambda: main(argv))
    assert exited.value.code == 1
    out, err = capsys.readouterr()
    assert 'Traceback' not in out + err
    message = err.strip().splitlines()
    error_lines = [line for line in message if line.startswith('ERROR: ')]
    assert len(error_lines) == 1, err
    first = err[err.index('ERROR: '):]
    assert str(bad) in first or bad.name in first, first  # names the file
    for word in words:
        assert word in first, first
    assert not (tmp_path / 'pwned').exists()


@pytest.mark.parametrize('kind, entry', [
    ('backbone_only', 'test'), ('backbone_only', 'resume'), ('weights_only', 'resume'),
    ('nan', 'test'), ('nan', 'load_from')])
def test_evaluation_and_resume_need_the_whole_runner_checkpoint(kind, entry, workspace, tmp_path,
                                                                capsys, one_thread):
    """Fine-tuning (``load_from`` in training) may start a new head; evaluating or resuming
    with one would evaluate, or train on, random weights (mmengine only logs the missing keys).
    NaN weights are refused everywhere."""
    test_refused_checkpoint_is_one_error_line(kind, entry, workspace, tmp_path, capsys,
                                              one_thread)


def test_refused_checkpoint_as_a_process(workspace, tmp_path):
    """The same through a real process: exit status 1, no traceback, ERROR last."""
    root, config, good = workspace
    bad, words = make_bad('truncated', tmp_path, good)
    env = dict(os.environ, OMP_NUM_THREADS='1')
    result = run_python(osp.join(TOOLS, 'test.py'), config, bad, '--work-dir',
                        tmp_path / 'work', env=env, timeout=300)
    assert result.returncode == 1, result.stderr[-3000:]
    assert 'Traceback' not in result.stdout + result.stderr
    assert result.stderr.rstrip().splitlines()[-1].startswith('ERROR: Cannot read checkpoint')
