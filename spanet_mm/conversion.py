# Copyright (c) spanet_mm contributors. All rights reserved.
"""Conversion of official SPANet checkpoints to spanet_mm's parameter names.

The official release names parameters after timm's MetaFormer (``patch_embed``, ``network.{0..6}``
with stages at even and downsampling convs at odd positions, ``norm``, ``head``); its detection
backbone adds per-stage output norms ``norm{0,2,4,6}``. Fixed spectral filters are not
parameters here (they are rebuilt for every input size) and are dropped.
"""
import re
from collections import OrderedDict
from typing import Dict, Optional, Tuple

import torch

from .checkpoint import compare_state_dicts
from .errors import UserError
from .models import SPANet

# Renames inside a block, official -> spanet_mm.
_BLOCK_RENAMES = [
    (re.compile(r'^token_mixer\.conv\.0\.'), 'token_mixer.dwconv_1x7.'),
    (re.compile(r'^token_mixer\.conv\.1\.'), 'token_mixer.dwconv_7x1.'),
    (re.compile(r'^token_mixer\.pws\.(\d+)\.'), r'token_mixer.spectral_projs.\1.'),
    (re.compile(r'^res_scale([12])\.scale$'), r'shortcut_scale\1'),
]
_BLOCK_KEY = re.compile(r'^network\.(\d+)\.(\d+)\.(.+)$')
_DOWNSAMPLE_KEY = re.compile(r'^network\.(\d+)\.proj\.(weight|bias)$')
_OUT_NORM_KEY = re.compile(r'^norm(\d+)\.(weight|bias)$')
_FILTER_KEY = re.compile(r'^network\.\d+\.\d+\.token_mixer\.sps\.\d+\.filter$')


class CheckpointConversionError(UserError, ValueError):
    """An official checkpoint that does not fit SPANet."""


def unwrap_state_dict(checkpoint: dict) -> Dict[str, torch.Tensor]:
    """The state dict of an official file: bare, or under ``state_dict`` or ``model``; a
    ``backbone.`` prefix (detector checkpoints) is removed."""
    if not isinstance(checkpoint, dict):
        raise CheckpointConversionError(
            f'Expected a dict (a state dict or a checkpoint holding one), got '
            f'{type(checkpoint).__name__}.')
    for key in ('state_dict', 'model'):
        if isinstance(checkpoint.get(key), dict):
            checkpoint = checkpoint[key]
            break
    state_dict = OrderedDict()
    for key, value in checkpoint.items():
        if not isinstance(value, torch.Tensor):
            raise CheckpointConversionError(
                f'Entry {key!r} is a {type(value).__name__}, not a tensor: this is not a SPANet '
                'state dict.')
        if key.startswith('backbone.'):
            key = key[len('backbone.'):]
        elif key.startswith('module.'):
            key = key[len('module.'):]
        state_dict[key] = value
    return state_dict


def _rename(key: str, num_stages: int) -> Optional[str]:
    """spanet_mm name of an official key; None for dropped keys; raises for unknown keys."""
    if _FILTER_KEY.match(key):
        return None
    if key.startswith('patch_embed.proj.'):
        return 'backbone.downsample_layers.0.' + key[len('patch_embed.proj.'):]
    match = _DOWNSAMPLE_KEY.match(key)
    if match and int(match.group(1)) % 2 == 1:
        return f'backbone.downsample_layers.{(int(match.group(1)) + 1) // 2}.{match.group(2)}'
    match = _BLOCK_KEY.match(key)
    if match and int(match.group(1)) % 2 == 0:
        rest = match.group(3)
        for pattern, replacement in _BLOCK_RENAMES:
            rest = pattern.sub(replacement, rest)
        return f'backbone.stages.{int(match.group(1)) // 2}.{match.group(2)}.{rest}'
    if key in ('norm.weight', 'norm.bias'):
        return f'backbone.norm{num_stages - 1}.{key.split(".")[1]}'
    match = _OUT_NORM_KEY.match(key)
    if match and int(match.group(1)) % 2 == 0:
        return f'backbone.norm{int(match.group(1)) // 2}.{match.group(2)}'
    if key in ('head.weight', 'head.bias'):
        return 'head.fc.' + key.split('.')[1]
    raise CheckpointConversionError(
        f'Unknown key {key!r}: not a parameter of the official SPANet (classification or '
        'detection backbone).')


def infer_arch(state_dict: Dict[str, torch.Tensor]) -> dict:
    """The arch dict (layers, embed_dims, mlp_ratios) that an official state dict was saved from."""
    depths: Dict[int, int] = {}
    dims: Dict[int, int] = {}
    hidden: Dict[int, int] = {}
    for key, value in state_dict.items():
        match = _BLOCK_KEY.match(key)
        if not match or int(match.group(1)) % 2:
            continue
        stage, block, rest = int(match.group(1)) // 2, int(match.group(2)), match.group(3)
        depths[stage] = max(depths.get(stage, 0), block + 1)
        if rest == 'norm1.weight':
            dims[stage] = value.shape[0]
        elif rest == 'mlp.fc1.weight':
            hidden[stage] = value.shape[0]
    if not depths or sorted(depths) != list(range(len(depths))):
        raise CheckpointConversionError(
            'Cannot find the SPANet stages (keys network.<even>.<block>.*): '
            f'found stages {sorted(depths)}. Is this an official SPANet checkpoint?')
    num_stages = len(depths)
    missing = [i for i in range(num_stages) if i not in dims or i not in hidden]
    if missing:
        raise CheckpointConversionError(
            f'Missing norm1.weight or mlp.fc1.weight in stage(s) {missing}.')
    arch = dict(
        layers=[depths[i] for i in range(num_stages)],
        embed_dims=[dims[i] for i in range(num_stages)],
        mlp_ratios=[hidden[i] / dims[i] for i in range(num_stages)])
    if all(r == 4 for r in arch['mlp_ratios']):
        arch['mlp_ratios'] = [4] * num_stages
    return arch


def arch_name(arch: dict) -> Optional[str]:
    """The preset name of ``arch`` (e.g. ``'s'``), or None for a custom arch."""
    for name, setting in SPANet.arch_settings.items():
        if (setting['layers'] == arch['layers'] and setting['embed_dims'] == arch['embed_dims']
                and list(arch.get('mlp_ratios', [4] * 4)) == [4] * 4):
            return name
    return None


def convert_official(checkpoint: dict) -> Tuple[Dict[str, torch.Tensor], dict]:
    """Converts an official SPANet checkpoint and checks it against a freshly built SPANet.

    Returns:
        tuple[dict, dict]: The converted state dict (``backbone.*`` and, when the source has a
        classifier head, ``head.fc.*``; floating tensors in float32) and metadata (arch, its
        preset name, whether a head is present).

    Raises:
        CheckpointConversionError: On an unknown or missing key or a shape that does not fit.
    """
    state_dict = unwrap_state_dict(checkpoint)
    arch = infer_arch(state_dict)
    num_stages = len(arch['layers'])

    converted = OrderedDict()
    source_key = {}  # converted name -> official name, for error messages
    for key, value in state_dict.items():
        new_key = _rename(key, num_stages)
        if new_key is None:
            continue
        if new_key in converted:
            raise CheckpointConversionError(
                f'Keys {source_key[new_key]!r} and {key!r} both map to {new_key!r}.')
        source_key[new_key] = key
        converted[new_key] = value.float() if value.is_floating_point() else value

    out_indices = sorted({
        int(k[len('backbone.norm'):].split('.')[0]) for k in converted
        if re.match(r'^backbone\.norm\d+\.(weight|bias)$', k)})
    if not out_indices:
        raise CheckpointConversionError(
            'The checkpoint has no output norm (norm.* or norm0/2/4/6.*): it is incomplete.')
    expected = {f'backbone.{k}': v for k, v in
                SPANet(arch, out_indices=out_indices, init_cfg=None).state_dict().items()}

    has_head = any(k.startswith('head.') for k in converted)
    if has_head:
        for part in ('weight', 'bias'):
            if f'head.fc.{part}' not in converted:
                raise CheckpointConversionError(f'Missing key head.{part}.')
        num_classes = converted['head.fc.weight'].shape[0]
        # Linear(C4, classes) on the last stage's width.
        expected['head.fc.weight'] = torch.empty(num_classes, arch['embed_dims'][-1])
        expected['head.fc.bias'] = torch.empty(num_classes)

    fit = compare_state_dicts(expected, converted)
    if fit.missing:
        raise CheckpointConversionError(
            f'Missing {len(fit.missing)} key(s) for SPANet arch {arch}: {fit.missing[:10]}'
            f'{" ..." if len(fit.missing) > 10 else ""}')
    if fit.unexpected:
        key = fit.unexpected[0]
        raise CheckpointConversionError(
            f'Unknown key {source_key[key]!r} (as {key!r}): SPANet arch {arch} has no '
            'such parameter.')
    if fit.mismatched:
        key = fit.mismatched[0]
        raise CheckpointConversionError(
            f'Shape mismatch for {source_key[key]!r} (as {key!r}): the checkpoint has '
            f'{tuple(converted[key].shape)}, SPANet arch {arch} expects '
            f'{tuple(expected[key].shape)}.')

    meta = dict(
        arch=arch,
        arch_name=arch_name(arch),
        out_indices=out_indices,
        has_head=has_head,
        source_format='official SPANet',
        spanet_mm_version=__import__('spanet_mm').__version__)
    return converted, meta
