# Copyright (c) spanet_mm contributors. All rights reserved.
"""Registration of spanet_mm's models in the OpenMMLab toolboxes that are installed.

Configs of every task write ``type='SPANet'``. The Runner resolves that name in the registry of
the config's ``default_scope`` (``mmpretrain``, ``mmdet`` or ``mmseg``), so the class is
registered in each of those registries whose package imports. Each registration stands alone:
a missing toolbox, or one that rejects the installed mmcv (mmdet and mmseg raise an
``AssertionError`` on import, not an ``ImportError``), leaves the other two working.
"""
import importlib
import warnings
from typing import Dict, Type

#: Toolbox package -> module holding its ``MODELS`` registry.
TOOLBOX_REGISTRIES: Dict[str, str] = {
    'mmpretrain': 'mmpretrain.registry',
    'mmdet': 'mmdet.registry',
    'mmseg': 'mmseg.registry',
}

#: Toolbox -> why its registry could not be used (for error messages and diagnostics).
UNAVAILABLE_TOOLBOXES: Dict[str, str] = {}


def _toolbox_registries():
    for toolbox, module_name in TOOLBOX_REGISTRIES.items():
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as err:
            if err.name is not None and (err.name == toolbox or err.name.startswith(toolbox + '.')):
                UNAVAILABLE_TOOLBOXES[toolbox] = 'not installed'
                continue
            UNAVAILABLE_TOOLBOXES[toolbox] = f'{type(err).__name__}: {err}'
        except (ImportError, AssertionError) as err:
            UNAVAILABLE_TOOLBOXES[toolbox] = f'{type(err).__name__}: {err}'
        else:
            yield toolbox, module.MODELS
            continue
        warnings.warn(f'spanet_mm: {toolbox} is installed but could not be imported, so '
                      f'SPANet is not registered there ({UNAVAILABLE_TOOLBOXES[toolbox]}).')


def register_model(cls: Type) -> Type:
    """Class decorator: registers ``cls`` in every importable toolbox's ``MODELS``."""
    for _, registry in _toolbox_registries():
        registry.register_module(module=cls)
    return cls
