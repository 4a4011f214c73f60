# Copyright (c) spanet_mm contributors. All rights reserved.
"""What ``tools/train.py`` and ``tools/test.py`` do around the Runner, and nothing else.

Run policy (hooks, dataloader settings) lives in the configs, so that the toolboxes' own tools
run a config as ours do. What is left for a tool is the command line: checked
``--cfg-options``, the work dir, the launcher (with the CPU-only DDP set-up of
:mod:`.cpu`), ``--amp`` (CUDA or CPU mixed precision), ``--no-pin-memory`` /
``--no-persistent-workers``, pre-flight dataset checks, and ending
the process: a :class:`~spanet_mm.errors.UserError` as one ``ERROR:`` line, a finished
distributed run torn down deterministically.
"""
import argparse
import difflib
import gc
import os
import os.path as osp
import sys
from typing import Callable, Iterator, Optional, Sequence

import torch
from mmengine.config import Config, DictAction
from mmengine.logging import print_log

from ..errors import UserError
from .cpu import finish_distributed, prepare_cpu_distributed
from .dataset_checks import check_dataset_formats, check_datasets

SCOPES = ('mmpretrain', 'mmdet', 'mmseg')

#: Top-level keys the Runner (``Runner.from_cfg``) and the tools read besides those a config
#: usually has. A ``--cfg-options`` key outside the config and this set is a typo.
RUNNER_KEYS = frozenset({
    'model', 'work_dir', 'train_dataloader', 'val_dataloader', 'test_dataloader', 'train_cfg',
    'val_cfg', 'test_cfg', 'auto_scale_lr', 'optim_wrapper', 'param_scheduler',
    'val_evaluator', 'test_evaluator', 'default_hooks', 'custom_hooks', 'data_preprocessor',
    'load_from', 'resume', 'launcher', 'env_cfg', 'log_processor', 'log_level', 'visualizer',
    'default_scope', 'randomness', 'experiment_name', 'runner_type', 'custom_imports',
    'find_unused_parameters', 'sync_bn', 'compile', 'activation_checkpointing',
    'efficient_conv_bn_eval', 'strategy', 'tta_model', 'tta_pipeline', 'model_wrapper_cfg',
    'cfg', 'gpu_ids', 'dist_params',
})


#: The config formats mmengine's ``Config.fromfile`` reads.
CONFIG_SUFFIXES = ('.py', '.json', '.yaml', '.yml')


class ScopeError(UserError, ValueError):
    """The config's ``default_scope`` is not one of the three toolboxes."""


class ToolOptionError(UserError, ValueError):
    """A command-line option that does not fit the config."""


class ConfigKeyError(UserError, ValueError):
    """A ``--cfg-options`` key that the config does not have and nothing reads."""


class CfgOptionsAction(DictAction):
    """mmengine's ``DictAction`` for ``--cfg-options``, with an item lacking ``=`` reported as
    a usage error (``DictAction`` fails with "not enough values to unpack", a traceback)."""

    def __call__(self, parser, namespace, values, option_string=None):
        bare = [value for value in values if '=' not in value]
        if bare:
            parser.error(f'{option_string}: {bare[0]!r} has no value; give KEY=VALUE (e.g. '
                         'train_cfg.max_epochs=12), one per item')
        super().__call__(parser, namespace, values, option_string)


def int_option(what: str, low: int, high: Optional[int] = None) -> Callable[[str], int]:
    """argparse ``type``: an integer in ``[low, high]``, ``what`` naming it in the message
    (outside, a tool would fail after building its model, deep in torch, or run and say
    nothing)."""
    def parse(value: str) -> int:
        number = int(value) if value.lstrip('-').isdigit() else None
        if number is None or number < low or (high is not None and number > high):
            bound = f'>= {low}' if high is None else f'in {low}..{high}'
            raise argparse.ArgumentTypeError(f'{value!r}: {what} must be an integer {bound}')
        return number
    return parse


#: What an input side option names (SPANet downsamples by 32: ``MIN_INPUT_SIZE``).
INPUT_SIDE = 'an input side (SPANet downsamples by 32)'


def device_option(value: str) -> str:
    """argparse ``type`` of a tool's ``--device``: one this machine has (else moving the model
    fails with a traceback, after it is built)."""
    if value.startswith('cuda') and not torch.cuda.is_available():
        raise argparse.ArgumentTypeError(
            f'{value}: torch.cuda.is_available() is False here (no CUDA GPU or driver, or a '
            'CPU-only torch); use --device cpu')
    return value


def nearest_existing(path: str) -> str:
    """``path`` (absolute) or, if it does not exist, the nearest of its parents that does: where
    ``os.makedirs`` would start."""
    existing = osp.abspath(path)
    while not osp.lexists(existing):
        existing = osp.dirname(existing)
    return existing


def is_same_file(path: str, other: str) -> bool:
    """Whether writing ``path`` would replace ``other`` (the same path through symlinks, or a
    hard link to it)."""
    return osp.realpath(path) == osp.realpath(other) or (
        osp.exists(path) and osp.exists(other) and osp.samefile(path, other))


def folder_option(path: str) -> str:
    """argparse ``type`` of an output folder: a folder, or a path where one can be made:
    neither it nor the first of its parents that exists may be a file (``os.makedirs`` would
    fail with a traceback)."""
    existing = nearest_existing(path)
    if not osp.isdir(existing):
        raise argparse.ArgumentTypeError(f'{existing} is a file, not a folder; give a folder '
                                         '(it is made if missing)')
    return path


def _same(a, b) -> bool:
    """Whether two config values are equal, a tuple variable being held as a list."""
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return list(a) == list(b)
    if isinstance(a, dict) and isinstance(b, dict):
        return a == b
    return type(a) is type(b) and a == b


def _paths_holding(value, node, path='') -> Iterator[str]:
    """Dotted paths of the entries of ``node`` (nested dicts and lists) equal to ``value``."""
    items = node.items() if isinstance(node, dict) else (
        enumerate(node) if isinstance(node, (list, tuple)) else ())
    for key, child in items:
        child_path = f'{path}.{key}' if path else str(key)
        if _same(child, value):
            yield child_path
        elif isinstance(child, (dict, list, tuple)):
            yield from _paths_holding(value, child, child_path)


def check_cfg_options(cfg, options: Optional[dict]) -> None:
    """Rejects ``--cfg-options`` whose top-level key nothing reads.

    That is a key neither in ``cfg`` nor read by the Runner (a typo), or a plain variable of
    the config file (``data_root``, ``max_iters``, ``crop_size``): Python substituted its value
    where the file uses it when the file was read, so setting it afterwards changes nothing.
    Call it with the config *before* ``cfg.merge_from_dict(options)``. Nested keys are checked
    when their object is built: SPANet and mmengine's loops, hooks and dataloaders raise
    ``TypeError: ... unexpected keyword argument '<key>'`` for a key they do not take.
    """
    if not options:
        return
    known = set(cfg.keys()) | RUNNER_KEYS
    # The Runner reads a top-level data_preprocessor only for a model without its own (the
    # mmpretrain configs); the mmdet/mmseg configs copy theirs into the model.
    read = RUNNER_KEYS - ({'data_preprocessor'} if 'data_preprocessor' in (
        cfg.get('model') or {}) else set())
    for key in options:
        top = key.split('.')[0]
        if top in read:
            continue
        if top in known:
            if top == 'data_preprocessor':  # the model's own is the one that is built
                uses = ['model.data_preprocessor']
            else:
                uses = [p for p in _paths_holding(cfg[top], cfg.to_dict())
                        if p.split('.')[0] in read][:4]
            rest = key[len(top):]  # data_preprocessor.size -> model.data_preprocessor.size
            where = (f' Set the keys that hold its value instead, e.g. '
                     f'{", ".join(f"{u}{rest}=..." for u in uses)}.') if uses else (
                ' Set the keys that use it instead (see the config file).')
            raise ConfigKeyError(
                f'--cfg-options {key}: {top!r} is a variable of the config file, whose value '
                'was written into the keys that use it when the file was read, and nothing '
                f'reads {top!r} itself: this option would be silently ignored.{where}')
        close = difflib.get_close_matches(top, sorted(known), n=3)
        hint = f' Did you mean {" or ".join(repr(c) for c in close)}?' if close else ''
        raise ConfigKeyError(
            f'--cfg-options {key}: the config has no key {top!r} and the Runner does not read '
            f'one, so this option would be silently ignored.{hint} Check the spelling against '
            'the config (print it with `python -c "from mmengine import Config; '
            'print(Config.fromfile(\'CONFIG\').pretty_text)"`).')


def load_config(path: str, cfg_options: Optional[dict] = None) -> Config:
    """The config with ``--cfg-options`` merged (refusing keys that nothing reads)."""
    if not osp.isfile(path):
        raise ToolOptionError(f'Config {path!r} not found.')
    if not path.endswith(CONFIG_SUFFIXES):
        hint = (' It looks like a checkpoint: the config comes first (CONFIG CHECKPOINT).'
                if path.endswith(('.pth', '.pt', '.ckpt', '.bin', '.safetensors')) else '')
        raise ToolOptionError(f'{path!r} is not a config file ({", ".join(CONFIG_SUFFIXES)}).'
                              f'{hint}')
    cfg = Config.fromfile(path)  # runs the config's custom_imports
    if cfg_options:
        check_cfg_options(cfg, cfg_options)
        cfg.merge_from_dict(cfg_options)
    return cfg


def get_scope(cfg: Config, config_path: str) -> str:
    """The task's toolbox, from ``default_scope``."""
    scope = cfg.get('default_scope')
    if scope not in SCOPES:
        raise ScopeError(
            f'{config_path}: default_scope is {scope!r}, but these tools need one of '
            f'{SCOPES}. Inherit the toolbox runtime (e.g. `mmdet::_base_/default_runtime.py`) '
            'or set `default_scope` in the config; without it models are looked up in the '
            "`mmengine` registry and SPANet's detectors/segmentors are not found.")
    return scope


def set_work_dir(cfg: Config, work_dir: Optional[str], config_path: str) -> None:
    """CLI > config > ``./work_dirs/<config name>``, as upstream's tools."""
    if work_dir is not None:
        if osp.isfile(work_dir):  # the Runner's makedirs would fail with a traceback
            raise ToolOptionError(f'--work-dir {work_dir} is a file; give a folder (it is made '
                                  'if missing).')
        cfg.work_dir = work_dir
    elif cfg.get('work_dir') is None:
        cfg.work_dir = osp.join('./work_dirs', osp.splitext(osp.basename(config_path))[0])


def set_launcher(cfg: Config, launcher: str, local_rank: int = 0) -> None:
    """The launcher; without CUDA the CPU DDP set-up of :mod:`.cpu` (gloo)."""
    os.environ.setdefault('LOCAL_RANK', str(local_rank))
    cfg.launcher = launcher
    try:
        prepare_cpu_distributed(cfg, launcher)
    except RuntimeError as err:  # slurm/mpi without CUDA, or torchrun variables missing
        raise ToolOptionError(str(err)) from err


def enable_amp(cfg: Config) -> None:
    """``--amp``: mmengine's AmpOptimWrapper on CUDA, bf16 autocast (CPUAmpOptimWrapper) else."""
    wrapper = cfg.optim_wrapper.get('type', 'OptimWrapper')
    if wrapper in ('AmpOptimWrapper', 'CPUAmpOptimWrapper'):
        print_log('AMP is already enabled in the config.', logger='current')
    elif wrapper != 'OptimWrapper':
        raise ToolOptionError(f'--amp needs `optim_wrapper.type` OptimWrapper, not {wrapper}.')
    elif torch.cuda.is_available():
        cfg.optim_wrapper.type = 'AmpOptimWrapper'
        cfg.optim_wrapper.setdefault('loss_scale', 'dynamic')
    else:
        cfg.optim_wrapper.type = 'CPUAmpOptimWrapper'  # bfloat16: no loss scaling needed


def enable_auto_scale_lr(cfg: Config) -> None:
    """``--auto-scale-lr``: the config must say which total batch its lr is for."""
    if 'base_batch_size' not in (cfg.get('auto_scale_lr') or {}):
        raise ToolOptionError(
            '--auto-scale-lr needs `auto_scale_lr = dict(base_batch_size=N)` (the total batch '
            'the lr was set for) in the config.')
    cfg.auto_scale_lr.enable = True


def disable_dataloader_options(cfg: Config, phases: Sequence[str],
                               options: Sequence[str]) -> None:
    """``--no-pin-memory`` / ``--no-persistent-workers``: each of ``options`` ``False`` in the
    ``<phase>_dataloader`` of each phase the config has, as mmpretrain's tools set them."""
    for phase in phases:
        if cfg.get(f'{phase}_dataloader') is not None:
            cfg[f'{phase}_dataloader'].update({option: False for option in options})


def check_data(cfg: Config, scope: str, phases: Sequence[str]) -> None:
    """Missing or malformed datasets of ``phases``, before minutes of start-up are spent."""
    check_datasets(cfg, scope, list(phases))
    check_dataset_formats(cfg, scope, list(phases))


def run_tool(main: Callable[[], None]) -> None:
    """Runs a tool's ``main`` and ends the process the way a user and a launcher expect.

    - A :class:`UserError` (from the tool or from inside the Runner: a dataset, a config key,
      a checkpoint that is truncated, unsafe or of another model) prints ``ERROR: <message>``
      on stderr and exits with status 1, without a traceback.
    - Any other exception propagates (traceback, non-zero exit).
    - A finished run releases the Runner (and with it DDP and the dataloader workers), then
      :func:`finish_distributed` ends a distributed run on every rank alike.
    """
    try:
        main()
    except UserError as err:
        print(f'ERROR: {err}', file=sys.stderr, flush=True)
        sys.exit(1)
    gc.collect()  # the Runner's reference cycles: free DDP and workers before the teardown
    finish_distributed()
