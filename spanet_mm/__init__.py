# Copyright (c) spanet_mm contributors. All rights reserved.
"""SPANet for the OpenMMLab 2.x toolboxes (mmpretrain, mmdet, mmseg).

``import spanet_mm`` (or ``custom_imports=dict(imports=['spanet_mm'])`` in a config) registers
the ``SPANet`` backbone in every installed toolbox and makes mmengine load local checkpoints
safely on torch >= 2.6.
"""
from .version import __version__  # noqa: F401
from . import checkpoint  # noqa: F401,E402  registers the safe local checkpoint loader
from .models import SPANet  # noqa: F401,E402
from . import engine  # noqa: F401,E402  registers RNGStateHook (exact resume)

__all__ = ['SPANet', '__version__']
