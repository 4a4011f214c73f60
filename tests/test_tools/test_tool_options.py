"""The tools' options that change a config before the Runner is built, in-process: what
upstream's tools/train.py and tools/test.py do with the same options, and clear refusals."""
import argparse
import importlib
import os.path as osp
import sys

import pytest
from mmengine.config import Config

from conftest import REPO_ROOT, load_tool
from spanet_mm.engine.evaluation_options import SET_OUT, SET_SHOW_DIR, enable_tta
from spanet_mm.engine.launch import (ToolOptionError, enable_amp, enable_auto_scale_lr,
                                     set_work_dir)

CONFIGS = osp.join(REPO_ROOT, 'configs')
DEMO_CLS = osp.join(CONFIGS, 'classification', 'demo', 'spanet_demo_cls.py')
DEMO_DET = osp.join(CONFIGS, 'detection', 'demo', 'mask_rcnn_spanet_demo.py')
RETINANET = osp.join(CONFIGS, 'detection', 'retinanet_spanet_s_1x.py')
DEMO_SEG = osp.join(CONFIGS, 'segmentation', 'demo', 'fpn_spanet_demo.py')


def upstream_test_tool(toolbox):
    """The toolbox's own tools/test.py (shipped in its package's .mim folder) as a module."""
    return load_tool(osp.join(osp.dirname(importlib.import_module(toolbox).__file__), '.mim',
                              'tools', 'test.py'))


def test_work_dir_precedence():
    """CLI > config > ./work_dirs/<config name>, as upstream's tools."""
    cfg = Config(dict(work_dir='from_config'))
    set_work_dir(cfg, None, 'a/b/my_cfg.py')
    assert cfg.work_dir == 'from_config'
    set_work_dir(cfg, 'from_cli', 'a/b/my_cfg.py')
    assert cfg.work_dir == 'from_cli'
    cfg = Config(dict())
    set_work_dir(cfg, None, 'a/b/my_cfg.py')
    assert cfg.work_dir == osp.join('./work_dirs', 'my_cfg')


def test_auto_scale_lr_is_turned_on_or_refused():
    cfg = Config(dict(auto_scale_lr=dict(base_batch_size=16, enable=False)))
    enable_auto_scale_lr(cfg)
    assert cfg.auto_scale_lr.enable is True
    with pytest.raises(ToolOptionError, match='base_batch_size'):
        enable_auto_scale_lr(Config(dict()))


def test_amp_refuses_another_wrapper():
    """Only a plain OptimWrapper becomes an AMP one; another type is not silently replaced."""
    with pytest.raises(ToolOptionError, match='OptimWrapper, not ApexOptimWrapper'):
        enable_amp(Config(dict(optim_wrapper=dict(type='ApexOptimWrapper'))))


def test_tta_wraps_the_model_with_flips():
    cfg = Config.fromfile(DEMO_CLS)
    classifier = cfg.model
    enable_tta(cfg, 'mmpretrain')
    assert cfg.model.type == 'AverageClsScoreTTA' and cfg.model.module == classifier
    tta = cfg.test_dataloader.dataset.pipeline[-1]
    assert tta.type == 'TestTimeAug'
    assert [flip.prob for flip in tta.transforms[0]] == [1., 0.]  # flipped and as is
    box_only = Config.fromfile(RETINANET)
    enable_tta(box_only, 'mmdet')
    assert box_only.model.type == 'DetTTAModel'


def test_tta_refuses_instance_segmentation():
    """mmdet's DetTTAModel asserts 'TTA of instance segmentation does not support now.' at the
    first batch; the tool says so before anything runs."""
    with pytest.raises(ToolOptionError, match='no test-time augmentation for instance'):
        enable_tta(Config.fromfile(DEMO_DET), 'mmdet')


def test_benchmark_ratios():
    """"a vs b" in the benchmark's table is a / b (throughput: higher is faster); a value
    missing on either side gives no ratio."""
    benchmark = load_tool('tools/analysis/benchmark.py')
    assert benchmark.ratio(30., 10.) == 3.0
    assert benchmark.ratio(None, 1.) is None and benchmark.ratio(1., None) is None
    assert benchmark.ratio(1., 0.) is None  # a zero throughput: no ratio, not an error
    assert benchmark.fmt(None, '.2f') == '-' and benchmark.fmt(2.5, '.2f') == '2.50'


def test_show_dir_and_out_as_upstreams_test_tools(tmp_path, monkeypatch):
    """--show-dir and --out change the config as each toolbox's own tools/test.py does."""
    show, out = str(tmp_path / 'show'), str(tmp_path / 'out')

    # mmpretrain: merge_args() with the tool's own parser.
    upstream = upstream_test_tool('mmpretrain')
    monkeypatch.setattr(sys, 'argv', ['test.py', DEMO_CLS, 'c.pth', '--show-dir', show])
    theirs = upstream.merge_args(Config.fromfile(DEMO_CLS), upstream.parse_args())
    cfg = Config.fromfile(DEMO_CLS)
    SET_SHOW_DIR['mmpretrain'](cfg, show)
    keys = ('type', 'enable', 'out_dir', 'interval')
    assert {k: cfg.default_hooks.visualization[k] for k in keys} == \
        {k: theirs.default_hooks.visualization[k] for k in keys}

    # mmdet: trigger_visualization_hook(); --out must be a pickle, as upstream asserts.
    from mmdet.engine.hooks.utils import trigger_visualization_hook
    args = argparse.Namespace(show=False, show_dir=show, wait_time=2)
    theirs = trigger_visualization_hook(Config.fromfile(DEMO_DET), args)
    cfg = Config.fromfile(DEMO_DET)
    SET_SHOW_DIR['mmdet'](cfg, show)
    assert cfg.default_hooks.visualization == theirs.default_hooks.visualization
    with pytest.raises(ToolOptionError, match='--out must be a .pkl or .pickle file'):
        SET_OUT['mmdet'](cfg, out + '.json')

    # mmseg: its tool's trigger_visualization_hook(); its --out is two lines of its main(),
    # copied here (output_dir and keep_results on the test evaluator).
    upstream = upstream_test_tool('mmseg')
    theirs = upstream.trigger_visualization_hook(Config.fromfile(DEMO_SEG), args)
    theirs.test_evaluator['output_dir'] = out
    theirs.test_evaluator['keep_results'] = True
    cfg = Config.fromfile(DEMO_SEG)
    SET_SHOW_DIR['mmseg'](cfg, show)
    SET_OUT['mmseg'](cfg, out)
    assert cfg.visualizer.save_dir == theirs.visualizer.save_dir == show
    assert cfg.default_hooks.visualization.draw is theirs.default_hooks.visualization.draw
    assert cfg.test_evaluator == theirs.test_evaluator


def test_test_tool_refuses_a_missing_checkpoint_before_any_output(tmp_path):
    tool = load_tool('tools/test.py')
    with pytest.raises(ToolOptionError, match="Checkpoint .*nope.pth' not found"):
        tool.main([DEMO_CLS, str(tmp_path / 'nope.pth'), '--work-dir', str(tmp_path / 'w')])
    assert not (tmp_path / 'w').exists()


# --- the flags of the toolboxes' tools, against the tools themselves -----------------------------
# Each tool's main() runs with mmengine's Runner replaced by a stand-in that records the Config
# the tool builds the Runner from: ours and the toolbox's own tools/train.py and tools/test.py
# (the independent source) on the same command line.
CLS = osp.join(CONFIGS, 'classification', 'spanet_s_in1k.py')  # pin/persistent workers: True
SEG = osp.join(CONFIGS, 'segmentation', 'fpn_spanet_s_80k.py')  # persistent workers: True
REAL = {'mmpretrain': CLS, 'mmdet': RETINANET, 'mmseg': SEG}
DEMO = {'mmpretrain': DEMO_CLS, 'mmdet': DEMO_DET, 'mmseg': DEMO_SEG}
METRICS = {'accuracy/top1': 87.5}  # what the stand-in's test() returns


def upstream_tool(toolbox, name):
    return load_tool(osp.join(osp.dirname(importlib.import_module(toolbox).__file__), '.mim',
                              'tools', name))


def built_runner(tool, argv, monkeypatch, checked=None):
    """The stand-in Runner ``tool.main()`` builds for the command line ``argv`` (``.cfg``; and
    ``.test_evaluator.metrics``, which upstream's test tools append to after building it). Our
    dataset checks only record their phases in ``checked``: no dataset is needed here."""
    built, checked = [], [] if checked is None else checked

    class StandIn:
        rank = 0

        def __init__(self, cfg):
            self.cfg, self.test_evaluator = cfg, argparse.Namespace(metrics=[])
            built.append(self)

        from_cfg = classmethod(lambda cls, cfg: cls(cfg))
        train = lambda self: None  # noqa: E731
        test = lambda self: dict(METRICS)  # noqa: E731

    monkeypatch.setattr(tool, 'Runner', StandIn)
    if hasattr(tool, 'setup_cache_size_limit_of_dynamo'):  # mmdet's: torch._dynamo settings
        monkeypatch.setattr(tool, 'setup_cache_size_limit_of_dynamo', lambda: None)
    if hasattr(tool, 'check_data'):
        monkeypatch.setattr(tool, 'check_data',
                            lambda cfg, scope, phases: checked.extend(phases))
    monkeypatch.setattr(sys, 'argv', ['tool.py', *map(str, argv)])
    monkeypatch.setenv('LOCAL_RANK', '0')
    tool.main()
    assert len(built) == 1
    return built[0]


@pytest.fixture
def checkpoint(tmp_path):
    path = tmp_path / 'model.pth'
    path.write_bytes(b'')  # only its existence is checked before the Runner
    return str(path)


@pytest.fixture
def display(monkeypatch):
    """matplotlib as on a machine with a display (no window opens: the Runner is a stand-in)."""
    import matplotlib
    monkeypatch.setattr(matplotlib, 'get_backend', lambda: 'TkAgg')


PHASES = ('train', 'val', 'test')
TRAIN_FLAGS = {  # what each flag sets in the config
    '--no-validate': lambda cfg: [cfg.get(k, 'absent') for k in
                                  ('val_cfg', 'val_dataloader', 'val_evaluator')],
    '--no-pin-memory': lambda cfg: [(cfg.get(f'{p}_dataloader') or {}).get('pin_memory')
                                    for p in PHASES],
    '--no-persistent-workers': lambda cfg: [
        (cfg.get(f'{p}_dataloader') or {}).get('persistent_workers') for p in PHASES],
}


@pytest.mark.parametrize('scope', sorted(REAL))
@pytest.mark.parametrize('flag', sorted(TRAIN_FLAGS))
def test_train_flags_as_mmpretrain_train_py(flag, scope, tmp_path, monkeypatch):
    """--no-validate, --no-pin-memory, --no-persistent-workers are mmpretrain's; they set what
    mmengine's Runner reads for every task, and ours sets it as mmpretrain's tool does, also for
    a detection and a segmentation config. For the classifier the whole config is the same."""
    argv = [REAL[scope], '--work-dir', tmp_path, flag]
    checked = []
    ours = built_runner(load_tool('tools/train.py'), argv, monkeypatch, checked).cfg
    theirs = built_runner(upstream_tool('mmpretrain', 'train.py'), argv, monkeypatch).cfg
    unflagged = built_runner(load_tool('tools/train.py'), argv[:-1], monkeypatch).cfg
    assert TRAIN_FLAGS[flag](ours) == TRAIN_FLAGS[flag](theirs) != TRAIN_FLAGS[flag](unflagged)
    if scope == 'mmpretrain':
        assert ours.to_dict() == theirs.to_dict()
    assert checked == (['train'] if flag == '--no-validate' else ['train', 'val'])


def test_dataloader_flags_together_as_mmpretrain_train_py(tmp_path, monkeypatch):
    """--no-pin-memory and --no-persistent-workers on one command line: both apply, in every
    dataloader, as with mmpretrain's tools/train.py (the whole config is the same)."""
    argv = [CLS, '--work-dir', tmp_path, '--no-pin-memory', '--no-persistent-workers']
    ours = built_runner(load_tool('tools/train.py'), argv, monkeypatch).cfg
    theirs = built_runner(upstream_tool('mmpretrain', 'train.py'), argv, monkeypatch).cfg
    assert ours.to_dict() == theirs.to_dict()
    for flag in ('--no-pin-memory', '--no-persistent-workers'):
        assert TRAIN_FLAGS[flag](ours) == [False] * 3, flag


TEST_FLAGS = {
    '--amp': lambda cfg: cfg.test_cfg,
    '--no-pin-memory': lambda cfg: cfg.test_dataloader.get('pin_memory'),
}


@pytest.mark.parametrize('scope', sorted(REAL))
@pytest.mark.parametrize('flag', sorted(TEST_FLAGS))
def test_test_flags_as_mmpretrain_test_py(flag, scope, checkpoint, tmp_path, monkeypatch):
    """--amp (mmengine's TestLoop under autocast) and --no-pin-memory, mmpretrain's, for all
    three tasks as mmpretrain's tools/test.py sets them; the whole config for the classifier."""
    argv = [REAL[scope], checkpoint, '--work-dir', tmp_path, flag]
    ours = built_runner(load_tool('tools/test.py'), argv, monkeypatch).cfg
    theirs = built_runner(upstream_tool('mmpretrain', 'test.py'), argv, monkeypatch).cfg
    unflagged = built_runner(load_tool('tools/test.py'), argv[:-1], monkeypatch).cfg
    assert TEST_FLAGS[flag](ours) == TEST_FLAGS[flag](theirs) != TEST_FLAGS[flag](unflagged)
    if scope == 'mmpretrain':
        assert ours.to_dict() == theirs.to_dict()


SHOW_ARGS = [['--show', '--wait-time', '0.5'], ['--show', '--show-dir', 'SHOW'],
             ['--show-dir', 'SHOW', '--interval', '3'], ['--show', '--interval', '2']]


@pytest.mark.parametrize('scope', sorted(DEMO))
@pytest.mark.parametrize('show', SHOW_ARGS, ids=' '.join)
def test_show_as_upstreams_test_py(show, scope, checkpoint, tmp_path, monkeypatch, display):
    """--show, --wait-time (all three tools) and mmpretrain's --interval set the config as the
    config's toolbox's own tools/test.py does: the whole config. Differences: mmseg's tool keeps
    the hook's interval (50 batches) where ours paints every image, or every --interval-th
    (mmseg's tool has no --interval); mmdet's hook has no interval at test time: refused."""
    show = [str(tmp_path / 'show') if a == 'SHOW' else a for a in show]  # absolute, as ours
    argv = [DEMO[scope], checkpoint, '--work-dir', tmp_path, *show]
    if scope == 'mmdet' and '--interval' in show:
        with pytest.raises(ToolOptionError, match='--interval: mmdet paints every test image'):
            built_runner(load_tool('tools/test.py'), argv, monkeypatch)
        return
    ours = built_runner(load_tool('tools/test.py'), argv, monkeypatch).cfg
    if scope == 'mmseg' and '--interval' in show:  # mmseg's tool: unrecognized argument
        assert ours.default_hooks.visualization.interval == int(show[show.index('--interval') + 1])
        return
    theirs = built_runner(upstream_tool(scope, 'test.py'), argv, monkeypatch).cfg
    if scope == 'mmseg':
        assert ours.default_hooks.visualization.pop('interval') == 1
    assert ours.to_dict() == theirs.to_dict()
    assert ours.default_hooks.visualization.get('show', False) == ('--show' in show)


@pytest.mark.parametrize('scope', sorted(DEMO))
def test_show_without_a_display_is_refused(scope, checkpoint, tmp_path, monkeypatch):
    """Without a display matplotlib falls back to Agg, where upstream's tools would wait
    --wait-time seconds per image showing nothing (forever with --wait-time 0): refused before
    the Runner is built."""
    import matplotlib
    monkeypatch.setattr(matplotlib, 'get_backend', lambda: 'agg')
    with pytest.raises(ToolOptionError, match="--show needs a display.*'agg'.*--show-dir"):
        built_runner(load_tool('tools/test.py'),
                     [DEMO[scope], checkpoint, '--work-dir', tmp_path, '--show'], monkeypatch)


def test_out_item_as_mmpretrain_test_py(checkpoint, tmp_path, monkeypatch):
    """--out-item metrics: --out holds the metrics, not the predictions; pred: the predictions
    (as --out alone), as mmpretrain's tool; refused for mmdet and mmseg, and without --out."""
    from mmengine import load
    ours_tool, theirs_tool = load_tool('tools/test.py'), upstream_tool('mmpretrain', 'test.py')
    for item in ('metrics', 'pred'):
        outs = {}
        for who, tool in (('ours', ours_tool), ('theirs', theirs_tool)):
            outs[who] = str(tmp_path / f'{who}_{item}.{"json" if item == "metrics" else "pkl"}')
            runner = built_runner(tool, [DEMO_CLS, checkpoint, '--work-dir', tmp_path, '--out',
                                         outs[who], '--out-item', item], monkeypatch)
            dumps = [m.out_file_path for m in runner.test_evaluator.metrics] + [
                e['out_file_path'] for e in runner.cfg.test_evaluator
                if isinstance(e, dict) and e['type'] == 'DumpResults']
            assert dumps == ([] if item == 'metrics' else [outs[who]]), (who, item)
        if item == 'metrics':
            assert load(outs['ours']) == load(outs['theirs']) == METRICS
    for argv in ([DEMO_DET, '--out', tmp_path / 'r.pkl'], [DEMO_SEG, '--out', tmp_path / 'o'],
                 [DEMO_CLS]):
        with pytest.raises(ToolOptionError, match="--out-item is mmpretrain's and needs --out"):
            built_runner(ours_tool, [argv[0], checkpoint, *argv[1:], '--out-item', 'pred'],
                         monkeypatch)


@pytest.mark.parametrize('toolbox', ['mmdet', 'mmseg', 'mmpretrain'])
def test_resume_without_path_ignores_load_from_as_mmdet(toolbox, tmp_path, monkeypatch):
    """README: --resume without a path resumes from the work dir's latest checkpoint (the
    Runner's auto-resume: load_from None) even with --cfg-options load_from=CKPT, as mmdet's
    tool; mmpretrain's and mmseg's tools resume from that load_from (mmseg's --resume takes no
    path: there load_from is how to resume a given file)."""
    argv = [DEMO[toolbox], '--work-dir', tmp_path, '--resume', '--cfg-options',
            'load_from=ckpt.pth']
    ours = built_runner(load_tool('tools/train.py'), argv, monkeypatch).cfg
    theirs = built_runner(upstream_tool(toolbox, 'train.py'), argv, monkeypatch).cfg
    assert (ours.resume, ours.load_from) == (True, None)
    assert (theirs.resume, theirs.load_from) == (
        (True, None) if toolbox == 'mmdet' else (True, 'ckpt.pth'))
    ours = built_runner(load_tool('tools/train.py'), argv[:3] + ['--resume', 'ckpt.pth'],
                        monkeypatch).cfg
    assert (ours.resume, ours.load_from) == (True, 'ckpt.pth')


def test_auto_scale_lr_through_cfg_options_under_mmseg_train_py(tmp_path, monkeypatch):
    """configs/segmentation/README.md: mmseg's tools/train.py has no --auto-scale-lr; its
    `--cfg-options auto_scale_lr.enable=True` gives the config our --auto-scale-lr gives, which
    mmengine's Runner.train() applies (Runner.scale_lr) whatever the toolbox."""
    import inspect
    from mmengine.runner import Runner
    argv = [SEG, '--work-dir', tmp_path]
    ours = built_runner(load_tool('tools/train.py'), argv + ['--auto-scale-lr'], monkeypatch)
    theirs = built_runner(upstream_tool('mmseg', 'train.py'),
                          argv + ['--cfg-options', 'auto_scale_lr.enable=True'], monkeypatch)
    assert ours.cfg.auto_scale_lr == theirs.cfg.auto_scale_lr == dict(enable=True,
                                                                      base_batch_size=16)
    source = inspect.getsource(Runner.train)
    assert 'self.scale_lr(self.optim_wrapper, self.auto_scale_lr)' in source
