# Copyright (c) spanet_mm contributors. All rights reserved.
"""Safe loading of local checkpoints with mmengine 0.10.7 on torch >= 2.6.

mmengine 0.10.7 calls ``torch.load`` without ``weights_only``. Since torch 2.6 that means
``weights_only=True``, which rejects the Runner's own checkpoints (their message hub holds
``HistoryBuffer`` objects and numpy arrays), so ``load_from``, ``--resume`` and ``tools/test.py``
fail. Importing :mod:`spanet_mm` replaces mmengine's loader for local files with
:func:`load_local_checkpoint`: still ``weights_only=True``, plus an allow-list of exactly the types
Runner checkpoints hold. Unrestricted unpickling is never turned on, globally or here.

:func:`check_state_dict` is the project's one check that a checkpoint fits a model.
"""
import os.path as osp
import pickle
import re
import zipfile
from typing import Any, Callable, List, NamedTuple, Union

import numpy as np
import torch
from mmengine.logging import print_log
from mmengine.logging.history_buffer import HistoryBuffer
from mmengine.runner.checkpoint import CheckpointLoader

from .errors import UserError


class CheckpointLoadError(UserError, RuntimeError):
    """A local checkpoint that is corrupt, truncated or holds objects outside the allow-list."""


class CheckpointNotFoundError(UserError, FileNotFoundError):
    """A local checkpoint path that does not exist."""


class CheckpointMismatchError(UserError, ValueError):
    """A checkpoint whose tensors do not fit the model being loaded."""


CONVERTER = 'tools/model_converters/spanet_official_to_mm.py'


# Registered by every HistoryBuffer's constructor, so not yet known in a fresh process.
_BUILTIN_STATISTICS = frozenset({'min', 'max', 'mean', 'current'})


def _history_buffer_getattr(obj: Any, name: str) -> Callable:
    """Stands in for ``getattr`` while unpickling.

    ``HistoryBuffer`` pickles its statistics methods as ``getattr(HistoryBuffer, 'mean')``;
    the real ``getattr`` would hand a pickle any attribute of any allowed object.
    """
    allowed = _BUILTIN_STATISTICS | set(HistoryBuffer._statistics_methods)
    if obj is HistoryBuffer and name in allowed:
        return getattr(obj, name)
    raise pickle.UnpicklingError(
        f'getattr({obj!r}, {name!r}) is not allowed: only HistoryBuffer statistics are.')


def _numpy_globals() -> List[Any]:
    core = getattr(np, '_core', None) or np.core  # numpy 2 renamed np.core to np._core
    dtype_classes = {type(np.dtype(t)) for t in (
        np.bool_, np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32,
        np.uint64, np.float16, np.float32, np.float64, np.str_, np.object_)}
    return [core.multiarray._reconstruct, core.multiarray.scalar, np.ndarray, np.dtype,
            *sorted(dtype_classes, key=str)]


#: Types allowed in addition to torch's ``weights_only`` defaults.
RUNNER_CHECKPOINT_GLOBALS: List[Union[Any, tuple]] = [
    HistoryBuffer,
    (_history_buffer_getattr, 'builtins.getattr'),
    *_numpy_globals(),
]


def load_local_checkpoint(filename: str, map_location=None) -> Any:
    """Loads a local ``.pth`` with ``weights_only=True`` and the Runner allow-list.

    Raises:
        CheckpointNotFoundError: The file does not exist.
        CheckpointLoadError: The file is truncated or corrupt, or it holds objects that are
            neither tensors nor allowed types (a file from an untrusted or unknown source).
    """
    filename = osp.expanduser(filename)
    if not osp.isfile(filename):
        raise CheckpointNotFoundError(
            f'Checkpoint {filename} not found. Check the path (relative paths start from the '
            'current directory), or drop --resume / load_from to start a new run.')
    try:
        with torch.serialization.safe_globals(RUNNER_CHECKPOINT_GLOBALS):
            return torch.load(filename, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointLoadError(
            f'Refusing to load {filename}: it holds objects outside the allow-list of tensors, '
            f'plain containers and the types mmengine checkpoints use ({err}). Only load files '
            'you trust; to keep one, load it yourself and re-save only its tensors.') from err
    except PermissionError:
        raise
    except (EOFError, OSError, RuntimeError, zipfile.BadZipFile) as err:
        size = osp.getsize(filename)
        raise CheckpointLoadError(
            f'Cannot read checkpoint {filename} ({size} bytes): the file is truncated or '
            f'corrupt ({type(err).__name__}: {err}). Re-download or re-create it.') from err


CheckpointLoader.register_scheme(prefixes='', force=True)(load_local_checkpoint)


def model_state_dict(checkpoint, source=None, prefix=None) -> dict:
    """The model's tensors in a loaded checkpoint, keyed as the model names them.

    The state dict sits under ``'state_dict'`` (mmengine, timm), under ``'model'`` (DeiT-style
    files) or is the file itself (the official releases); a model saved wrapped in DDP has
    every key prefixed with ``module.``, which is removed, as mmengine's loader removes it
    (the default ``revise_keys`` of ``load_checkpoint``). With ``prefix`` (``init_cfg``'s
    ``Pretrained`` prefix, e.g. ``'backbone'``) only the keys under it are kept, without it.
    Raises :class:`CheckpointMismatchError` when there is no state dict, or nothing under
    ``prefix``.
    """
    state_dict = checkpoint
    if isinstance(checkpoint, dict):
        state_dict = checkpoint.get('state_dict', checkpoint.get('model', checkpoint))
    if not isinstance(state_dict, dict) or not state_dict:
        raise CheckpointMismatchError(
            f'{source or "the checkpoint"} holds no state dict (found '
            f'{type(state_dict).__name__}); it is not a model checkpoint.')
    state_dict = {re.sub(r'^module\.', '', k): v for k, v in state_dict.items()}
    if not prefix:
        return state_dict
    prefix = prefix if prefix.endswith('.') else prefix + '.'
    selected = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
    if not selected:
        raise CheckpointMismatchError(
            f'{source or "the checkpoint"} has no key starting with {prefix!r} (e.g. '
            f'{sorted(state_dict)[:3]}): it is not a spanet_mm/OpenMMLab checkpoint of a model '
            f'with this part. Convert official SPANet files with {CONVERTER}.')
    return selected


def _shape(value) -> Union[tuple, str]:
    return tuple(value.shape) if hasattr(value, 'shape') else type(value).__name__


class StateDictFit(NamedTuple):
    """How a state dict fits a model's (:func:`compare_state_dicts`); lists of keys."""
    fitting: List[str]  # in both, with the model's shape
    mismatched: List[str]  # in both, with another shape, or not a tensor in the state dict
    missing: List[str]  # the model's, absent from the state dict
    unexpected: List[str]  # the state dict's, absent from the model


def compare_state_dicts(own: dict, state_dict: dict, allowed_missing=()) -> StateDictFit:
    """Compares ``state_dict`` with ``own`` (a model's) key by key and shape by shape.

    The one comparison behind every "does this checkpoint fit" question
    (:func:`check_state_dict`; the converter's check against the arch it infers). Keys
    matching a pattern of ``allowed_missing`` (regular expressions, matched at the start)
    count as neither missing nor unexpected.
    """
    allowed = [re.compile(p) if isinstance(p, str) else p for p in allowed_missing]
    excused = lambda key: any(p.match(key) for p in allowed)  # noqa: E731
    shared = [k for k in own if k in state_dict]
    fitting = [k for k in shared
               if torch.is_tensor(state_dict[k]) and state_dict[k].shape == own[k].shape]
    fits = set(fitting)
    return StateDictFit(
        fitting=fitting,
        mismatched=[k for k in shared if k not in fits],
        missing=[k for k in own if k not in state_dict and not excused(k)],
        unexpected=[k for k in state_dict if k not in own and not excused(k)])


def check_state_dict(own: dict, checkpoint, strict_prefixes=('backbone.', ),
                     allowed_missing=(), source=None, prefix=None,
                     whole_model: bool = False) -> dict:
    """Refuses a checkpoint whose tensors do not fit ``own`` (a model's state dict).

    The one compatibility check of the project: :class:`~spanet_mm.engine.CheckpointCheckHook`
    runs it for every checkpoint the Runner loads, :func:`spanet_mm.apis.init_model` for the
    tools and ``SPANet``'s ``Pretrained`` init for the backbone's part of a file (``prefix``,
    see :func:`model_state_dict`). Raises :class:`CheckpointMismatchError` when a tensor
    under ``strict_prefixes`` is missing (unless ``allowed_missing`` matches it), has another
    shape or has no counterpart in the model, or when no tensor fits at all; other misfits are
    logged as a warning. ``whole_model=True`` (testing, resuming, inference) also refuses a
    tensor of the model that is missing or has another shape anywhere; tensors the model does
    not have are then refused under ``strict_prefixes`` only (e.g. an auxiliary head the
    training config had is logged, as mmengine does). Raises :class:`CheckpointLoadError` when
    a tensor that fits holds NaN or inf.

    Returns:
        dict: The checked state dict (:func:`model_state_dict`), the one to load.
    """
    name = source or 'the checkpoint'
    state_dict = model_state_dict(checkpoint, source, prefix)
    fit = compare_state_dicts(own, state_dict, allowed_missing)
    fitting, missing, unexpected = fit.fitting, fit.missing, fit.unexpected
    mismatched = [f'{k}: checkpoint {_shape(state_dict[k])} vs model {_shape(own[k])}'
                  for k in fit.mismatched]
    if not fitting:  # the keys are the model's, every shape another: no prefix is spared
        strict_prefixes = ('', )
    strict = lambda keys: [k for k in keys if k.startswith(strict_prefixes)]  # noqa: E731
    meta = checkpoint.get('meta') if isinstance(checkpoint, dict) else None
    arch = meta.get('arch') if isinstance(meta, dict) else None
    held = f' (it was saved for SPANet arch {arch})' if arch else ''
    example = sorted(state_dict)[:3]
    if not fitting and not fit.mismatched:
        official = any(k.startswith(('network.', 'patch_embed.')) for k in state_dict)
        nested = sorted({k.split('.', 1)[0] for k in state_dict
                         if '.' in k and k.split('.', 1)[1] in own})
        if official:
            hint = ('It looks like an official SPANet file: convert it first with\n'
                    f'  python {CONVERTER} SRC DST')
        elif nested:
            hint = (f'Its keys under {nested[0]!r} are the model\'s: load that part with '
                    f'prefix={nested[0]!r} (e.g. init_cfg=dict(type=\'Pretrained\', '
                    f'checkpoint=..., prefix={nested[0]!r}))')
        else:
            hint = ('It is not a checkpoint of this model (not spanet_mm SPANet). Use a '
                    'checkpoint trained with this config, or convert official SPANet files '
                    f'with {CONVERTER}')
        raise CheckpointMismatchError(
            f'{name} does not fit the model at all: none of its {len(state_dict)} tensors '
            f'(e.g. {example}) matches the model\'s {len(own)} tensors (e.g. '
            f'{sorted(own)[:3]}). {hint}.')
    scope = 'in the model' if '' in strict_prefixes else f'under {list(strict_prefixes)}'
    if whole_model and not (strict(mismatched) or strict(missing) or strict(unexpected)) and (
            mismatched or missing):
        raise CheckpointMismatchError(
            f'{name} fits the model under {list(strict_prefixes)} but misses '
            f'{len(missing)} and has another shape for {len(mismatched)} of its other tensors '
            f'{(missing + mismatched)[:3]}: it holds only a part of this model (e.g. an '
            'ImageNet backbone, or another task\'s checkpoint), and these would keep their '
            'initial values. Testing, resuming and inference need a checkpoint of this whole '
            'model; to start training from this one, give it as load_from (without --resume).')
    if strict(mismatched) or strict(missing) or strict(unexpected):
        raise CheckpointMismatchError(
            f'{name} does not fit the model{held}: {len(strict(mismatched))} shape '
            f'mismatch(es) {strict(mismatched)[:3]}, {len(strict(missing))} missing '
            f'tensor(s) {strict(missing)[:3]}, {len(strict(unexpected))} tensor(s) the model '
            f'does not have {strict(unexpected)[:3]} {scope}. It is probably a checkpoint of '
            'another SPANet arch, another backbone or another model: use the config it was '
            'trained with (or the checkpoint of this config\'s model).')
    if mismatched or missing:
        print_log(f'{name}: {len(mismatched)} tensor(s) of other shape {mismatched[:3]} and '
                  f'{len(missing)} missing {missing[:3]} outside {list(strict_prefixes)}; '
                  'they keep their initial values.', logger='current', level=30)
    if unexpected and not strict(unexpected):
        print_log(f'{name}: {len(unexpected)} tensor(s) the model does not have '
                  f'{unexpected[:3]} outside {list(strict_prefixes)}; not loaded.',
                  logger='current', level=30)
    refuse_non_finite(state_dict, fitting, name)
    return state_dict


def refuse_non_finite(state_dict: dict, keys: List[str], name: str) -> None:
    """A NaN or inf weight would load and quietly turn every output into NaN: refused."""
    bad = [k for k in keys
           if state_dict[k].is_floating_point() and not torch.isfinite(state_dict[k]).all()]
    if bad:
        raise CheckpointLoadError(
            f'{name} holds NaN or inf values in {len(bad)} tensor(s) (e.g. {bad[:3]}): the '
            'run that saved it diverged or the file is damaged. Use an earlier checkpoint of '
            'that run.')
