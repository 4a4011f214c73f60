# Copyright (c) spanet_mm contributors. All rights reserved.
"""mmengine's default optimizer constructor, refusing ``paramwise_cfg`` settings it would ignore.

mmengine 0.10's :class:`~mmengine.optim.DefaultOptimWrapperConstructor` reads the keys of
``paramwise_cfg`` with ``dict.get``: a misspelt key (``norm_decay_mul=0.``), a misspelt
multiplier in ``custom_keys`` (``lr_mul``) or a ``custom_keys`` pattern that names no parameter
(``'backbone.stage.0'``) is silently ignored, and the run trains with weight decay or learning
rates other than the config says. The constructor here raises instead, naming the key.
"""
import difflib
from typing import Iterable

import torch.nn as nn
from mmengine.optim import DefaultOptimWrapperConstructor, OptimWrapper
from mmengine.registry import OPTIM_WRAPPER_CONSTRUCTORS

from .launch import ConfigKeyError

#: The ``paramwise_cfg`` keys that ``DefaultOptimWrapperConstructor.add_params`` reads.
PARAMWISE_KEYS = ('custom_keys', 'bias_lr_mult', 'bias_decay_mult', 'norm_decay_mult',
                  'dwconv_decay_mult', 'flat_decay_mult', 'bypass_duplicate',
                  'dcn_offset_lr_mult')
#: The keys it reads from each ``custom_keys`` entry.
CUSTOM_KEY_MULTS = ('lr_mult', 'decay_mult')


def _unknown(given: Iterable[str], known: Iterable[str], where: str) -> None:
    for key in given:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f' Did you mean {close[0]!r}?' if close else ''
            raise ConfigKeyError(
                f'optim_wrapper.paramwise_cfg: {where}{key!r} is not a setting mmengine\'s '
                f'optimizer constructor reads (it reads {", ".join(known)}), so it would be '
                f'silently ignored.{hint}')


@OPTIM_WRAPPER_CONSTRUCTORS.register_module()
class CheckedOptimWrapperConstructor(DefaultOptimWrapperConstructor):
    """:class:`~mmengine.optim.DefaultOptimWrapperConstructor` (same parameter groups) that
    refuses ``paramwise_cfg`` keys it does not read and ``custom_keys`` patterns matching no
    parameter. Use it with ``optim_wrapper = dict(constructor='CheckedOptimWrapperConstructor',
    ...)``.
    """

    def _validate_cfg(self) -> None:
        super()._validate_cfg()
        _unknown(self.paramwise_cfg, PARAMWISE_KEYS, '')
        for pattern, mults in self.paramwise_cfg.get('custom_keys', {}).items():
            _unknown(mults, CUSTOM_KEY_MULTS, f'custom_keys[{pattern!r}]: ')

    def __call__(self, model: nn.Module) -> OptimWrapper:
        module = getattr(model, 'module', model)  # as the parent: the DDP-wrapped model
        names = [name for name, _ in module.named_parameters()]
        for pattern in self.paramwise_cfg.get('custom_keys', {}):
            # add_params matches a pattern as a substring of the parameter's full name.
            if not any(pattern in name for name in names):
                raise ConfigKeyError(
                    f'optim_wrapper.paramwise_cfg.custom_keys: {pattern!r} is in the name of '
                    f'no parameter of the model (e.g. {names[:2]}), so its multipliers would '
                    'be silently ignored. Write a part of the names it is meant for.')
        return super().__call__(model)
