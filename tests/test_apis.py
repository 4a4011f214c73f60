"""spanet_mm.apis.init_model: the model of a config of any of the three tasks, with checks."""
import os.path as osp

import pytest
import torch

from conftest import REPO_ROOT
from spanet_mm.apis import init_model
from spanet_mm.checkpoint import CheckpointMismatchError

DEMOS = {
    'mmpretrain': 'classification/demo/spanet_demo_cls.py',
    'mmdet': 'detection/demo/mask_rcnn_spanet_demo.py',
    'mmseg': 'segmentation/demo/fpn_spanet_demo.py',
}


@pytest.mark.slow  # full-size models of each task
@pytest.mark.parametrize('scope', sorted(DEMOS))
def test_init_model_builds_and_loads(scope, tmp_path, one_thread):
    config = osp.join(REPO_ROOT, 'configs', DEMOS[scope])
    model = init_model(config)
    assert not model.training and model.cfg.default_scope == scope
    assert type(model).__module__.startswith(scope)  # the toolbox's own model class
    state = {k: torch.randn_like(v) if v.is_floating_point() else v
             for k, v in model.state_dict().items()}
    torch.save(dict(state_dict=state, meta=dict(dataset_meta=dict(classes=('a', 'b')))),
               tmp_path / 'ckpt.pth')
    loaded = init_model(config, str(tmp_path / 'ckpt.pth'))
    for key, value in loaded.state_dict().items():
        torch.testing.assert_close(value, state[key], rtol=0, atol=0)
    assert loaded.dataset_meta['classes'] == ('a', 'b')


# The layouts a classifier's weights come in: mmengine's Runner and timm ('state_dict'),
# DeiT-style files ('model'), bare state dicts (the official releases), and a model saved
# wrapped in DistributedDataParallel, whose state_dict() prefixes every key with 'module.'
# (mmengine's load_checkpoint strips that prefix by default).
LAYOUTS = {
    'state_dict': lambda state: dict(state_dict=state),
    'model': lambda state: dict(model=state),
    'bare': lambda state: state,
    'ddp': lambda state: dict(state_dict={f'module.{k}': v for k, v in state.items()}),
}


@pytest.mark.parametrize('layout', sorted(LAYOUTS))
def test_init_model_loads_every_layout(layout, tmp_path):
    config = osp.join(REPO_ROOT, 'configs', DEMOS['mmpretrain'])
    gen = torch.Generator().manual_seed(0)
    state = {k: torch.randn(v.shape, generator=gen) if v.is_floating_point() else v
             for k, v in init_model(config).state_dict().items()}
    torch.save(LAYOUTS[layout](state), tmp_path / 'ckpt.pth')
    loaded = init_model(config, str(tmp_path / 'ckpt.pth'))
    for key, value in loaded.state_dict().items():
        torch.testing.assert_close(value, state[key], rtol=0, atol=0, msg=key)


def test_init_model_refuses_a_checkpoint_of_another_arch(tmp_path):
    config = osp.join(REPO_ROOT, 'configs', DEMOS['mmpretrain'])
    model = init_model(config)
    state = {k: v for k, v in model.state_dict().items() if '.stages.3.' not in k}
    torch.save(dict(state_dict=state), tmp_path / 'short.pth')
    with pytest.raises(CheckpointMismatchError, match='short.pth does not fit the model'):
        init_model(config, str(tmp_path / 'short.pth'))


def test_init_model_refuses_a_backbone_tensor_of_another_shape(tmp_path):
    """mmengine's loader skips a tensor of another shape with a log line only; the model would
    keep that tensor's initial values."""
    config = osp.join(REPO_ROOT, 'configs', DEMOS['mmpretrain'])
    state = dict(init_model(config).state_dict())
    key = 'backbone.stages.1.0.mlp.fc1.weight'
    state[key] = torch.zeros(state[key].shape[0] + 1, *state[key].shape[1:])
    torch.save(dict(state_dict=state), tmp_path / 'wide.pth')
    with pytest.raises(CheckpointMismatchError, match=r'1 shape mismatch.*mlp\.fc1\.weight'):
        init_model(config, str(tmp_path / 'wide.pth'))


def test_init_model_needs_the_head_unless_told_otherwise(tmp_path):
    """A model for inference with a random head would predict at random: a backbone-only file
    is refused by default and loads, with the head left as initialised, under strict=False."""
    config = osp.join(REPO_ROOT, 'configs', DEMOS['mmpretrain'])
    state = {k: torch.randn_like(v) for k, v in init_model(config).state_dict().items()
             if k.startswith('backbone.')}
    torch.save(dict(state_dict=state), tmp_path / 'backbone.pth')
    with pytest.raises(CheckpointMismatchError, match=r"\['head.fc.*holds only a part of this model"):
        init_model(config, str(tmp_path / 'backbone.pth'))
    loaded = init_model(config, str(tmp_path / 'backbone.pth'), strict=False)
    key = sorted(state)[0]
    torch.testing.assert_close(loaded.state_dict()[key], state[key], rtol=0, atol=0)


def test_init_model_with_a_checkpoint_skips_the_backbones_pretrained_init(tmp_path):
    """As mmdet's ``init_detector``: with a checkpoint the backbone's ``Pretrained`` init_cfg
    is not loaded (its file, e.g. the ImageNet weights of training, need not exist here)."""
    base = osp.join(REPO_ROOT, 'configs', DEMOS['mmpretrain'])
    config = tmp_path / 'pretrained.py'
    missing = tmp_path / 'no_such_imagenet.pth'
    config.write_text(f"_base_ = '{base}'\n"
                      "model = dict(backbone=dict(init_cfg=dict(_delete_=True, type='Pretrained',\n"
                      f"    checkpoint='{missing}', prefix='backbone.')))\n")
    gen = torch.Generator().manual_seed(0)
    state = {k: torch.randn(v.shape, generator=gen) if v.is_floating_point() else v
             for k, v in init_model(base).state_dict().items()}
    torch.save(dict(state_dict=state), tmp_path / 'ckpt.pth')
    loaded = init_model(str(config), str(tmp_path / 'ckpt.pth'))
    for key, value in loaded.state_dict().items():
        torch.testing.assert_close(value, state[key], rtol=0, atol=0, msg=key)


def test_init_model_refuses_cfg_options_that_nothing_reads():
    from spanet_mm.engine.launch import ConfigKeyError
    config = osp.join(REPO_ROOT, 'configs', DEMOS['mmpretrain'])
    with pytest.raises(ConfigKeyError, match="Did you mean 'model'"):
        init_model(config, cfg_options={'modle.backbone.arch': 'm'})


def test_spanet_tools_refuse_another_backbone(tmp_path):
    """The analysis and export tools name a config whose backbone is not SPANet."""
    from spanet_mm.apis import NotSPANetError, spanet_backbone
    from spanet_mm.errors import UserError
    config = tmp_path / 'resnet.py'
    config.write_text(f"_base_ = '{REPO_ROOT}/configs/{DEMOS['mmpretrain']}'\n"
                      "model = dict(backbone=dict(_delete_=True, type='ResNet', depth=18),\n"
                      "             head=dict(in_channels=512))\n")
    model = init_model(str(config))
    with pytest.raises(NotSPANetError, match=r'resnet\.py: the backbone is ResNet, not SPANet'):
        spanet_backbone(model, str(config))
    assert issubclass(NotSPANetError, UserError)
    demo = init_model(osp.join(REPO_ROOT, 'configs', DEMOS['mmpretrain']))
    assert spanet_backbone(demo, DEMOS['mmpretrain']) is demo.backbone
