"""The tools' options that change a config before the Runner is built, in-process: what
upstream's tools/train.py and tools/test.py do with the same options, and clear refusals."""
import argparse
import importlib
import os.path as osp
import sys

import pytest
from mmengine.config import Config

from conftest import REPO_ROOT, load_tool
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
    tool = load_tool('tools/test.py')
    cfg = Config.fromfile(DEMO_CLS)
    classifier = cfg.model
    tool.enable_tta(cfg, 'mmpretrain')
    assert cfg.model.type == 'AverageClsScoreTTA' and cfg.model.module == classifier
    tta = cfg.test_dataloader.dataset.pipeline[-1]
    assert tta.type == 'TestTimeAug'
    assert [flip.prob for flip in tta.transforms[0]] == [1., 0.]  # flipped and as is
    box_only = Config.fromfile(RETINANET)
    tool.enable_tta(box_only, 'mmdet')
    assert box_only.model.type == 'DetTTAModel'


def test_tta_refuses_instance_segmentation():
    """mmdet's DetTTAModel asserts 'TTA of instance segmentation does not support now.' at the
    first batch; the tool says so before anything runs."""
    tool = load_tool('tools/test.py')
    with pytest.raises(ToolOptionError, match='no test-time augmentation for instance'):
        tool.enable_tta(Config.fromfile(DEMO_DET), 'mmdet')


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
    ours = load_tool('tools/test.py')
    show, out = str(tmp_path / 'show'), str(tmp_path / 'out')

    # mmpretrain: merge_args() with the tool's own parser.
    upstream = upstream_test_tool('mmpretrain')
    monkeypatch.setattr(sys, 'argv', ['test.py', DEMO_CLS, 'c.pth', '--show-dir', show])
    theirs = upstream.merge_args(Config.fromfile(DEMO_CLS), upstream.parse_args())
    cfg = Config.fromfile(DEMO_CLS)
    ours.SET_SHOW_DIR['mmpretrain'](cfg, show)
    keys = ('type', 'enable', 'out_dir', 'interval')
    assert {k: cfg.default_hooks.visualization[k] for k in keys} == \
        {k: theirs.default_hooks.visualization[k] for k in keys}

    # mmdet: trigger_visualization_hook(); --out must be a pickle, as upstream asserts.
    from mmdet.engine.hooks.utils import trigger_visualization_hook
    args = argparse.Namespace(show=False, show_dir=show, wait_time=2)
    theirs = trigger_visualization_hook(Config.fromfile(DEMO_DET), args)
    cfg = Config.fromfile(DEMO_DET)
    ours.SET_SHOW_DIR['mmdet'](cfg, show)
    assert cfg.default_hooks.visualization == theirs.default_hooks.visualization
    with pytest.raises(ToolOptionError, match='--out must be a .pkl or .pickle file'):
        ours.SET_OUT['mmdet'](cfg, out + '.json')

    # mmseg: its tool's trigger_visualization_hook(); its --out is two lines of its main(),
    # copied here (output_dir and keep_results on the test evaluator).
    upstream = upstream_test_tool('mmseg')
    theirs = upstream.trigger_visualization_hook(Config.fromfile(DEMO_SEG), args)
    theirs.test_evaluator['output_dir'] = out
    theirs.test_evaluator['keep_results'] = True
    cfg = Config.fromfile(DEMO_SEG)
    ours.SET_SHOW_DIR['mmseg'](cfg, show)
    ours.SET_OUT['mmseg'](cfg, out)
    assert cfg.visualizer.save_dir == theirs.visualizer.save_dir == show
    assert cfg.default_hooks.visualization.draw is theirs.default_hooks.visualization.draw
    assert cfg.test_evaluator == theirs.test_evaluator


def test_test_tool_refuses_a_missing_checkpoint_before_any_output(tmp_path):
    tool = load_tool('tools/test.py')
    with pytest.raises(ToolOptionError, match="Checkpoint .*nope.pth' not found"):
        tool.main([DEMO_CLS, str(tmp_path / 'nope.pth'), '--work-dir', str(tmp_path / 'w')])
    assert not (tmp_path / 'w').exists()
