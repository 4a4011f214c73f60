# Copyright (c) spanet_mm contributors. All rights reserved.
"""SPANet for the OpenMMLab 2.x toolboxes (mmpretrain, mmdet, mmseg).

``import spanet_mm`` (or ``custom_imports=dict(imports=['spanet_mm'])`` in a config) registers
the ``SPANet`` backbone in every installed toolbox, puts the ImageNet-1k models in mmpretrain's
model hub (``mmpretrain.list_models('*spanet*')``) and makes mmengine load local checkpoints
safely on torch >= 2.6.
"""
import warnings

# mmengine 0.10.7 needs pkg_resources, hence the setuptools<81 pin; its deprecation notice would
# otherwise be printed on every import of mmengine's package utilities.
warnings.filterwarnings('ignore', message='pkg_resources is deprecated', category=UserWarning)

from .version import __version__  # noqa: F401,E402
from . import checkpoint  # noqa: F401,E402  registers the safe local checkpoint loader
from .models import SPANet  # noqa: F401,E402
from . import engine  # noqa: F401,E402  hooks (exact resume), CPU AMP, DDP on CPUs
from .hub import register_model_index  # noqa: E402

register_model_index()  # the ImageNet-1k models in mmpretrain.list_models / get_model

__all__ = ['SPANet', '__version__']
