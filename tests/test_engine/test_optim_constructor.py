"""CheckedOptimWrapperConstructor: mmengine's parameter groups, and a paramwise_cfg typo refused.

The expected parameter groups are those of mmengine's own DefaultOptimWrapperConstructor for the
same settings; every shipped config builds its optimizer through the checked constructor with
mmengine's ``build_optim_wrapper`` (what the Runner of every toolbox's tools/train.py calls).
"""
import copy

import pytest
import torch.nn as nn
from mmengine.optim import DefaultOptimWrapperConstructor, build_optim_wrapper

from conftest import ALL_CONFIGS, load_config
from spanet_mm.engine import CheckedOptimWrapperConstructor, ConfigKeyError
from spanet_mm.models.backbones.spanet import SPANet

TINY = dict(layers=[1, 1, 1, 1], embed_dims=[16, 16, 16, 16], mlp_ratios=[1, 1, 1, 1])
#: The classification recipe's settings (tests/data/official_recipes.yml: no weight decay on
#: norms, biases and other 1-D parameters) plus a custom key.
OPTIMIZER = dict(type='AdamW', lr=1e-3, weight_decay=0.05)
PARAMWISE = dict(norm_decay_mult=0., bias_decay_mult=0., flat_decay_mult=0.,
                 custom_keys={'stages.3': dict(lr_mult=0.1, decay_mult=0.5)})


def groups(constructor_cls, paramwise_cfg, model):
    wrapper = constructor_cls(dict(optimizer=OPTIMIZER), copy.deepcopy(paramwise_cfg))(model)
    return [{k: (tuple(id(p) for p in v) if k == 'params' else v) for k, v in g.items()}
            for g in wrapper.optimizer.param_groups]


def test_parameter_groups_are_mmengines():
    model = SPANet(arch=TINY)
    checked = groups(CheckedOptimWrapperConstructor, PARAMWISE, model)
    assert checked == groups(DefaultOptimWrapperConstructor, PARAMWISE, model)
    decays = {g['weight_decay'] for g in checked}
    assert decays == {0., 0.05, 0.025}, decays  # the rules had an effect
    assert {g['lr'] for g in checked} == {1e-3, 1e-4}


@pytest.mark.parametrize('paramwise_cfg, words', [
    (dict(norm_decay_mul=0.), ["'norm_decay_mul' is not a setting", "Did you mean "
                               "'norm_decay_mult'?"]),
    (dict(custom_keys={'stages.3': dict(lr_mul=0.1)}),
     ["custom_keys['stages.3']: 'lr_mul' is not a setting", "Did you mean 'lr_mult'?"]),
    (dict(custom_keys={'stage.3': dict(lr_mult=0.1)}),
     ["custom_keys: 'stage.3' is in the name of no parameter"]),
])
def test_a_setting_mmengine_would_ignore_is_refused(paramwise_cfg, words):
    # mmengine's constructor takes each of these and trains without the setting.
    groups(DefaultOptimWrapperConstructor, paramwise_cfg, SPANet(arch=TINY))
    with pytest.raises(ConfigKeyError) as err:
        groups(CheckedOptimWrapperConstructor, paramwise_cfg, SPANet(arch=TINY))
    for word in words:
        assert word in str(err.value)


@pytest.mark.parametrize('rel_path', ALL_CONFIGS)
def test_every_config_refuses_a_paramwise_typo(rel_path):
    """Through mmengine's build_optim_wrapper, as any toolbox's Runner builds it."""
    cfg = load_config(rel_path)
    optim_wrapper = copy.deepcopy(cfg.optim_wrapper)
    optim_wrapper.optimizer.pop('_delete_', None)
    optim_wrapper.pop('type', None)  # the CPU/AMP wrapper choice is not under test
    model = nn.Linear(2, 2)
    build_optim_wrapper(model, copy.deepcopy(optim_wrapper))  # the config as shipped builds
    optim_wrapper.paramwise_cfg = dict(optim_wrapper.get('paramwise_cfg') or {},
                                       bias_decay_mul=0.)
    with pytest.raises(ConfigKeyError, match="'bias_decay_mul' is not a setting"):
        build_optim_wrapper(model, optim_wrapper)
