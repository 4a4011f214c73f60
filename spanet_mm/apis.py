# Copyright (c) spanet_mm contributors. All rights reserved.
"""``init_model``: the model of any spanet_mm config, ready for inference or analysis."""
import copy
from typing import Optional, Union

import torch.nn as nn
from mmengine.config import Config
from mmengine.registry import MODELS, DefaultScope
from mmengine.runner.checkpoint import _load_checkpoint

from .checkpoint import check_state_dict
from .engine.launch import check_cfg_options
from .errors import UserError


def init_model(config: Union[str, Config], checkpoint: Optional[str] = None,
               device: str = 'cpu', cfg_options: Optional[dict] = None,
               strict: bool = True) -> nn.Module:
    """Builds the classifier, detector or segmentor of ``config`` in eval mode.

    What ``mmpretrain.apis.init_model``, ``mmdet.apis.init_detector`` and
    ``mmseg.apis.init_model`` do, for the three tasks alike (the toolbox follows from the
    config's ``default_scope``), with the project's checkpoint checks:

    - without ``checkpoint`` the model is initialised as the config says (a ``Pretrained``
      backbone loads its file, a from-scratch one gets the official init);
    - with ``checkpoint`` the backbone's ``Pretrained`` init is skipped and the file is loaded
      safely (:mod:`spanet_mm.checkpoint`), refused with a message if it does not fit
      (:func:`~spanet_mm.checkpoint.check_state_dict`), and its ``meta['dataset_meta']``, if
      any, becomes ``model.dataset_meta``.

    Args:
        config (str | Config): Config file or object (not modified).
        checkpoint (str, optional): Checkpoint path. Defaults to None.
        device (str): Device to put the model on. Defaults to 'cpu'.
        cfg_options (dict, optional): Overrides, as ``--cfg-options`` (a top-level key that
            neither the config nor the Runner has is refused). Defaults to None.
        strict (bool): Refuse a checkpoint that misses any tensor of the model, not only a
            backbone tensor: a model for inference or export must not keep initial weights
            anywhere (a missing head would predict at random). Defaults to True; False lets
            necks and heads start new, with a warning.

    Returns:
        nn.Module: The model, in eval mode, with the merged config as ``model.cfg``.
    """
    cfg = Config.fromfile(config) if isinstance(config, str) else copy.deepcopy(config)
    if cfg_options:
        check_cfg_options(cfg, cfg_options)
        cfg.merge_from_dict(cfg_options)
    model_cfg = cfg.model.copy()
    model_cfg.pop('pretrained', None)  # mmseg's legacy key; init_cfg says it all
    if checkpoint is not None and 'backbone' in model_cfg:
        model_cfg.backbone = dict(model_cfg.backbone, init_cfg=None)
    if cfg.get('data_preprocessor') is not None:
        model_cfg.setdefault('data_preprocessor', cfg.data_preprocessor)
    with DefaultScope.overwrite_default_scope(cfg.get('default_scope')):
        model = MODELS.build(model_cfg)
    model.init_weights()
    if checkpoint is not None:
        loaded = _load_checkpoint(checkpoint, map_location='cpu')
        # What was checked is what is loaded (keys without DDP's ``module.``).
        state_dict = check_state_dict(model.state_dict(), loaded, source=checkpoint,
                                      whole_model=strict)
        model.load_state_dict(state_dict, strict=False)  # output norms may start as identity
        dataset_meta = (loaded.get('meta') or {}).get('dataset_meta')
        if dataset_meta:
            model.dataset_meta = dataset_meta
    model.cfg = cfg
    return model.to(device).eval()


class NotSPANetError(UserError, ValueError):
    """A config whose model has no SPANet backbone, given to a SPANet tool."""


def spanet_backbone(model: nn.Module, config: Union[str, Config]) -> nn.Module:
    """``model.backbone``, which must be a SPANet (the analysis and export tools' input)."""
    backbone = getattr(model, 'backbone', None)
    if type(backbone).__name__ != 'SPANet':
        name = config if isinstance(config, str) else getattr(config, 'filename', 'the config')
        raise NotSPANetError(f'{name}: the backbone is {type(backbone).__name__}, not SPANet.')
    return backbone
