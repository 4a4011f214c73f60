# Copyright (c) spanet_mm contributors. All rights reserved.
"""Safe loading of local checkpoints with mmengine 0.10.7 on torch >= 2.6.

mmengine 0.10.7 calls ``torch.load`` without ``weights_only``. Since torch 2.6 that means
``weights_only=True``, which rejects the Runner's own checkpoints (their message hub holds
``HistoryBuffer`` objects and numpy arrays), so ``load_from``, ``--resume`` and ``tools/test.py``
fail. Importing :mod:`spanet_mm` replaces mmengine's loader for local files with
:func:`load_local_checkpoint`: still ``weights_only=True``, plus an allow-list of exactly the types
Runner checkpoints hold. Unrestricted unpickling is never turned on, globally or here.
"""
import os.path as osp
import pickle
import zipfile
from typing import Any, Callable, List, Union

import numpy as np
import torch
from mmengine.logging.history_buffer import HistoryBuffer
from mmengine.runner.checkpoint import CheckpointLoader

from .errors import UserError


class CheckpointLoadError(UserError, RuntimeError):
    """A local checkpoint that is corrupt, truncated or holds objects outside the allow-list."""


class CheckpointNotFoundError(UserError, FileNotFoundError):
    """A local checkpoint path that does not exist."""


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
