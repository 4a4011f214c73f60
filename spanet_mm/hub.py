# Copyright (c) spanet_mm contributors. All rights reserved.
"""The ImageNet-1k models in mmpretrain's model hub, and where the packaged files live.

``import spanet_mm`` calls :func:`register_model_index`, so that mmpretrain's own API finds the
models by name::

    >>> import spanet_mm, mmpretrain
    >>> mmpretrain.list_models('*spanet*')
    ['spanet_b_in1k', 'spanet_bx_in1k', 'spanet_m_in1k', 'spanet_mx_in1k', 'spanet_s_in1k']
    >>> model = mmpretrain.get_model('spanet_s_in1k', pretrained='checkpoints/spanet_s_in1k.pth')
    >>> mmpretrain.apis.ModelHub.get('spanet-s_in1k').name  # a former name: an ``Alias``
    'spanet_s_in1k'

Aliases: the metafile's ``Alias`` entries (the former names, ``spanet-s_in1k``, ...) are not
read by mmpretrain's hub, so :func:`register_model_index` also makes ``ModelHub.get`` (which
``get_model``, ``init_model``, ``inference_model`` and the inferencers call) map an alias to its
model's name. ``list_models`` and ``ModelHub.has`` are left to mmpretrain: they report names
only, as upstream does; a registered name always wins over an alias of the same spelling.
mim reads neither this hub nor ``Alias``: ``mim search`` finds the names only.

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
import functools
import os.path as osp
import warnings
from typing import Dict, Optional

_PACKAGE_DIR = osp.dirname(osp.abspath(__file__))

#: The metafile whose models mmpretrain's hub can build (relative to :func:`mim_root`).
CLASSIFICATION_METAFILE = osp.join('configs', 'classification', 'metafile.yml')

_registered = False

#: alias -> model name (both lower-case, as ``ModelHub`` keys), filled by
#: :func:`register_model_index` from the classification metafile's ``Alias`` fields.
_ALIASES: Dict[str, str] = {}

#: Marks the ``ModelHub.get`` installed by :func:`_resolve_aliases_in_get` (so it is installed
#: once, whatever calls register).
_ALIAS_MARK = '_spanet_mm_resolves_aliases'


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
        _ALIASES.update(_read_aliases(ModelHub, metafile))
        _resolve_aliases_in_get(ModelHub)
        _registered = True
    return metafile


def model_aliases() -> Dict[str, str]:
    """The registered aliases: ``{alias: model name}`` (lower-case; empty before registration)."""
    return dict(_ALIASES)


def _read_aliases(hub, metafile: str) -> Dict[str, str]:
    """``{alias: name}`` of the models just registered from ``metafile`` (their ``Alias``
    field, which modelindex keeps in ``Model.data``).

    Raises:
        ValueError: an alias that is also a name in the metafile, or that two models share.
    """
    metafile = osp.abspath(metafile)
    models = {name: info for name, info in hub._models_dict.items()
              if info.filepath and osp.abspath(info.filepath) == metafile}
    aliases = {}
    for name, info in models.items():
        for alias in info.data.get('Alias') or []:
            alias = str(alias).lower()
            if alias in models or aliases.get(alias, name) != name:
                other = 'a model name' if alias in models else f'an alias of {aliases[alias]}'
                raise ValueError(f'spanet_mm: the alias {alias} of {name} in {metafile} is '
                                 f'also {other}.')
            aliases[alias] = name
    return aliases


def _resolve_aliases_in_get(hub) -> None:
    """Make ``hub.get`` look an alias up as its model's name (installed once per class).

    ``get_model`` and ``inference_model`` call ``ModelHub.get`` for a name; ``list_models``
    reads ``ModelHub._models_dict``, which holds the names only and is not touched, so a later
    ``register_model_index`` (of this or another metafile) sees exactly what mmpretrain
    registered.
    """
    if getattr(hub.get, _ALIAS_MARK, False):
        return
    original = hub.get.__func__

    @functools.wraps(original)
    def get(cls, model_name):
        if isinstance(model_name, str) and model_name.lower() in _ALIASES:
            cls._register_mmpretrain_models()  # what ``get`` does first: a name wins
            if model_name.lower() not in cls._models_dict:
                model_name = _ALIASES[model_name.lower()]
        return original(cls, model_name)

    setattr(get, _ALIAS_MARK, True)
    hub.get = classmethod(get)
