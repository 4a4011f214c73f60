# Copyright (c) spanet_mm contributors. All rights reserved.
"""The ImageNet-1k models in mmpretrain's model hub, and where the packaged files live.

``import spanet_mm`` calls :func:`register_model_index`, so that mmpretrain's own API finds the
models by name::

    >>> import spanet_mm, mmpretrain
    >>> mmpretrain.list_models('*spanet*')
    ['spanet_b_in1k', 'spanet_bx_in1k', 'spanet_m_in1k', 'spanet_mx_in1k', 'spanet_s_in1k']
    >>> model = mmpretrain.get_model('spanet_s_in1k', pretrained='checkpoints/spanet_s_in1k.pth')

Only the classification metafile is registered: mmpretrain's hub builds every entry as an
mmpretrain model. mmdet's and mmseg's inferencers look a name up only in the model index of a
package on mmengine's fixed list (``MODULE2PACKAGE``), so detection and segmentation models are
used through their config files (see ``configs/detection/README.md`` and
``configs/segmentation/README.md``).

Files: like the OpenMMLab toolboxes, an installed wheel carries ``model-index.yml``, the
metafiles, ``configs/`` and ``tools/`` in ``spanet_mm/.mim/`` (copies; links to the checkout
in an editable install, see ``setup.py``). The metafiles name configs relative to that
directory, which is also the root of a checkout, so :func:`mim_root` is all that differs.
"""
import os.path as osp
import warnings
from typing import Optional

_PACKAGE_DIR = osp.dirname(osp.abspath(__file__))

#: The metafile whose models mmpretrain's hub can build (relative to :func:`mim_root`).
CLASSIFICATION_METAFILE = osp.join('configs', 'classification', 'metafile.yml')

_registered = False


def mim_root() -> str:
    """The directory holding ``model-index.yml``, ``configs/`` and ``tools/``.

    ``spanet_mm/.mim`` in a wheel or an editable install; the checkout itself when the package
    is imported from a source tree that was never installed (``PYTHONPATH=.``).

    Raises:
        FileNotFoundError: neither place has a ``model-index.yml``.
    """
    candidates = (osp.join(_PACKAGE_DIR, '.mim'), osp.dirname(_PACKAGE_DIR))
    for root in candidates:
        if osp.isfile(osp.join(root, 'model-index.yml')):
            return root
    raise FileNotFoundError(
        f'spanet_mm: no model-index.yml in {" or ".join(candidates)}; the package was built '
        'without its configs. Reinstall it with pip (setup.py copies them into spanet_mm/.mim).')


def register_model_index() -> Optional[str]:
    """Register the ImageNet-1k models with ``mmpretrain.apis.ModelHub`` (once per process).

    Returns:
        str | None: the metafile registered, or None when mmpretrain (or its model-index
        reader) cannot be imported or the package has no metafiles; detection and
        segmentation do not need the hub.
    """
    global _registered
    try:
        from mmpretrain.apis import ModelHub
    except (ImportError, AssertionError) as err:  # mmpretrain asserts its mmcv range on import
        if not isinstance(err, ModuleNotFoundError) or err.name != 'mmpretrain':
            warnings.warn(f'spanet_mm: mmpretrain.apis could not be imported, so the SPANet '
                          f'models are not in its model hub ({type(err).__name__}: {err}).')
        return None
    try:
        root = mim_root()
    except FileNotFoundError as err:
        warnings.warn(str(err))
        return None
    metafile = osp.join(root, CLASSIFICATION_METAFILE)
    # ModelHub raises on a name it already holds: a second call must be a no-op.
    if not _registered:
        # config_prefix: the metafile's ``Config`` paths are relative to the root, not to the
        # metafile's folder (ModelHub's default).
        ModelHub.register_model_index(metafile, config_prefix=root)
        _registered = True
    return metafile
