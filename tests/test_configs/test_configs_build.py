"""Every shipped config parses and builds its model under its scope.

The recipes themselves (optimizer, schedule, data, init) are checked against the record of the
official ones in test_recipes.py. Also here: the backbone's Pretrained init from the det/seg
configs (missing file -> the conversion command; ``init_cfg=None`` -> from scratch), and the
RetinaNet layout that leaves no parameter unused under DDP.
"""
import os.path as osp

import pytest

from conftest import ALL_CONFIGS, CONFIG_DIR, SCOPE_OF_TASK, load_config
import torch
from mmengine.registry import init_default_scope

import spanet_mm  # noqa: F401

TINY_ARCH = dict(layers=[1, 1, 1, 1], embed_dims=[32, 64, 96, 128])
DET_SEG_CONFIGS = [c for c in ALL_CONFIGS
                   if c.split(osp.sep)[0] in ('detection', 'segmentation') and 'demo' not in c]


pytestmark = pytest.mark.usefixtures('one_thread')


def build_model(cfg):
    init_default_scope(cfg.default_scope)
    from mmengine.registry import MODELS
    model_cfg = cfg.model
    if cfg.get('data_preprocessor') and 'data_preprocessor' not in model_cfg:
        model_cfg.data_preprocessor = cfg.data_preprocessor
    return MODELS.build(model_cfg)


def test_configs_found():
    tasks = {c.split(osp.sep)[0] for c in ALL_CONFIGS}
    assert tasks == set(SCOPE_OF_TASK)
    for name in ('detection/retinanet_spanet_s_1x.py', 'detection/retinanet_spanet_m_1x.py',
                 'detection/mask_rcnn_spanet_s_1x.py', 'detection/mask_rcnn_spanet_m_1x.py',
                 'segmentation/fpn_spanet_s_80k.py', 'segmentation/fpn_spanet_m_80k.py'):
        assert name in ALL_CONFIGS
    assert sum('demo' in c for c in ALL_CONFIGS) == 3


#: The run policy every config must carry itself (issue: a config run with the toolboxes'
#: own tools must behave as with ours): exact resume, refusal of checkpoints that do not fit,
#: checkpoint rotation that never leaves a run without a complete checkpoint.
RUN_POLICY_HOOKS = ['RNGStateHook', 'CheckpointCheckHook', 'DeferredCheckpointRemovalHook']


@pytest.mark.parametrize('rel_path', ALL_CONFIGS)
def test_config_carries_the_run_policy(rel_path):
    """The hooks are in the merged config itself, and the Runner builds them."""
    from mmengine.registry import HOOKS
    cfg = load_config(rel_path)
    assert [h['type'] for h in cfg.custom_hooks] == RUN_POLICY_HOOKS
    assert 'spanet_mm' in cfg.custom_imports['imports']
    for hook in cfg.custom_hooks:
        assert type(HOOKS.build(dict(hook))).__name__ == hook['type']


@pytest.mark.slow  # the full-size model of every config
@pytest.mark.parametrize('rel_path', ALL_CONFIGS)
def test_config_builds_under_its_scope(rel_path):
    cfg = load_config(rel_path, **{'model.backbone.init_cfg': None})
    task = rel_path.split(osp.sep)[0]
    assert cfg.default_scope == SCOPE_OF_TASK[task]
    assert cfg.custom_imports == dict(imports=['spanet_mm'], allow_failed_imports=False)
    with open(osp.join(CONFIG_DIR, rel_path)) as f:
        assert f.readline().startswith('#'), 'every config opens with a recipe comment'
    model = build_model(cfg)
    backbone = model.backbone
    assert type(backbone).__name__ == 'SPANet'
    if task != 'classification':
        expected = [backbone.embed_dims[i] for i in backbone.out_indices]
        assert list(cfg.model.neck.in_channels) == expected
        assert model.neck.in_channels == expected


@pytest.mark.parametrize('rel_path', DET_SEG_CONFIGS)
def test_missing_pretrained_file_names_the_conversion(rel_path, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no checkpoints/ here
    cfg = load_config(rel_path)
    cfg.model.backbone.arch = dict(TINY_ARCH)  # only the init matters here
    cfg.model.neck.in_channels = [[32, 64, 96, 128][i] for i in
                                  _out_indices(cfg.model.backbone.get('out_indices'))]
    model = build_model(cfg)
    with pytest.raises(FileNotFoundError) as err:
        model.init_weights()
    message = str(err.value)
    variant = 's' if '_s_' in rel_path else 'm'
    assert f'checkpoints/spanet_{variant}_in1k.pth' in message
    assert 'spanet_official_to_mm.py' in message
    assert 'model.backbone.init_cfg=None' in message


def _out_indices(value):
    return tuple(value) if value is not None else (3, )


@pytest.mark.parametrize('rel_path', ['detection/mask_rcnn_spanet_s_1x.py',
                                      'segmentation/fpn_spanet_s_80k.py'])
def test_init_cfg_none_trains_from_scratch(rel_path, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = load_config(rel_path, **{'model.backbone.init_cfg': None})
    model = build_model(cfg)
    weight = model.backbone.downsample_layers[0].weight.detach().clone()
    model.init_weights()  # no file needed
    assert torch.isfinite(model.backbone.downsample_layers[0].weight).all()
    assert weight.shape == model.backbone.downsample_layers[0].weight.shape


def test_retinanet_has_no_unused_parameters():
    """RetinaNet (stages 1-3 into the FPN) gives every trainable parameter a gradient, so DDP
    needs no find_unused_parameters."""
    from mmdet.testing import demo_mm_inputs
    cfg = load_config('detection/retinanet_spanet_s_1x.py', **{'model.backbone.init_cfg': None})
    cfg.model.backbone.arch = dict(TINY_ARCH)
    cfg.model.neck.in_channels = [64, 96, 128]
    cfg.model.bbox_head.num_classes = 2
    model = build_model(cfg)
    model.init_weights()
    torch.manual_seed(0)
    packed = demo_mm_inputs(2, [[3, 96, 96], [3, 96, 96]], num_items=[2, 1], num_classes=2)
    data = model.data_preprocessor(packed, True)
    losses = model(**data, mode='loss')
    total = sum(v.sum() if isinstance(v, torch.Tensor) else sum(v) for k, v in losses.items()
                if 'loss' in k)
    total.backward()
    unused = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not unused, unused
    assert not hasattr(model.backbone, 'norm0')
