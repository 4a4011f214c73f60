# Copyright (c) spanet_mm contributors. All rights reserved.
"""Train a SPANet model: one script for classification, detection and segmentation.

The task follows from the config's ``default_scope`` (``mmpretrain``, ``mmdet`` or ``mmseg``,
set by the upstream ``default_runtime.py`` base). Usage::

    python tools/train.py CONFIG [--work-dir DIR] [--resume [CKPT]] [--amp] [--auto-scale-lr]
                          [--cfg-options k=v ...] [--launcher {none,pytorch,slurm,mpi}]

Multi-GPU: ``tools/dist_train.sh CONFIG GPUS``; SLURM: ``tools/slurm_train.sh``. Without CUDA
the distributed backend is gloo, so ``tools/dist_train.sh CONFIG 2`` also runs on CPUs.

``tools/test.py`` reuses the helpers below (dataset checks, scope and launcher handling).
"""
import argparse
import os
import os.path as osp
import sys
from typing import Optional

REPO_ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
if REPO_ROOT not in sys.path:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, REPO_ROOT)

# Registers SPANet in every toolbox and installs the safe loader for Runner checkpoints
# (load_from / --resume on torch >= 2.6): before any config or checkpoint is read.
import spanet_mm  # noqa: F401,E402
import torch  # noqa: E402
from mmengine.config import Config, ConfigDict, DictAction  # noqa: E402
from mmengine.logging import print_log  # noqa: E402
from mmengine.registry import RUNNERS  # noqa: E402
from mmengine.runner import Runner  # noqa: E402
from spanet_mm.engine import (ConfigKeyError, DatasetFormatError,  # noqa: E402
                              DatasetNotFoundError, add_reliability_hooks,
                              check_cfg_options, check_dataset_formats, check_datasets,
                              prepare_cpu_distributed)

SCOPES = ('mmpretrain', 'mmdet', 'mmseg')


class ToolError(Exception):
    """An error in the user's config or data, reported without a traceback."""


#: Errors whose message says all the user needs: printed as ``ERROR: ...``, exit status 1.
USER_ERRORS = (ToolError, ConfigKeyError, DatasetNotFoundError, DatasetFormatError)


def run_reporting_user_errors(main) -> None:
    try:
        main()
    except USER_ERRORS as err:
        sys.exit(f'ERROR: {err}')


class ScopeError(ToolError, ValueError):
    """The config's default_scope is not one of the three toolboxes."""


# ---------------------------------------------------------------------------------------------
# Config helpers shared with tools/test.py
# ---------------------------------------------------------------------------------------------
def get_scope(cfg: Config, config_path: str) -> str:
    """The task's toolbox, from ``default_scope``; a clear error for anything else."""
    scope = cfg.get('default_scope')
    if scope not in SCOPES:
        raise ScopeError(
            f'{config_path}: default_scope is {scope!r}, but these tools need one of '
            f'{SCOPES}. Inherit the toolbox runtime (e.g. `mmdet::_base_/default_runtime.py`) '
            'or set `default_scope` in the config; without it models are looked up in the '
            "`mmengine` registry and SPANet's detectors/segmentors are not found.")
    return scope


def set_launcher(cfg: Config, launcher: str, local_rank: int) -> None:
    """Launcher and distributed backend (gloo when there is no CUDA device)."""
    if 'LOCAL_RANK' not in os.environ:
        os.environ['LOCAL_RANK'] = str(local_rank)
    cfg.launcher = launcher
    if not torch.cuda.is_available():
        cfg.setdefault('env_cfg', ConfigDict())
        cfg.env_cfg.setdefault('dist_cfg', ConfigDict())
        cfg.env_cfg.dist_cfg.backend = 'gloo'
        if launcher != 'none':
            _init_cpu_distributed(cfg, launcher)


def _init_cpu_distributed(cfg: Config, launcher: str) -> None:
    """DDP on CPUs (gloo), which mmengine 0.10.7 cannot set up by itself.

    Its ``init_dist('pytorch')`` calls ``torch.cuda.set_device`` and its DDP wrapper passes
    ``device_ids=[LOCAL_RANK]``; both fail without CUDA. ``prepare_cpu_distributed`` creates
    the gloo process group (the Runner then skips ``init_dist``) and a wrapper without
    ``device_ids``. PyTorch's SyncBatchNorm refuses CPU tensors, so SyncBN layers become BN.
    """
    if _sync_bn_to_bn(cfg.model):
        print_log('CPU distributed run: PyTorch has no SyncBatchNorm on CPUs, so SyncBN layers '
                  'are built as BN (statistics per process).', logger='current', level=30)
    try:
        prepare_cpu_distributed(cfg, launcher)
    except RuntimeError as err:  # slurm/mpi without CUDA, or torchrun variables missing
        raise ToolError(str(err)) from err


def _sync_bn_to_bn(node) -> bool:
    """Replaces ``type='SyncBN'`` by ``'BN'`` in a config tree; True if any was found."""
    found = False
    if isinstance(node, dict):
        if node.get('type') == 'SyncBN':
            node['type'] = 'BN'
            found = True
        for value in node.values():
            found = _sync_bn_to_bn(value) or found
    elif isinstance(node, (list, tuple)):
        for value in node:
            found = _sync_bn_to_bn(value) or found
    return found


def set_work_dir(cfg: Config, work_dir: Optional[str], config_path: str) -> None:
    """CLI > config > ./work_dirs/<config name>."""
    if work_dir is not None:
        cfg.work_dir = work_dir
    elif cfg.get('work_dir') is None:
        cfg.work_dir = osp.join('./work_dirs', osp.splitext(osp.basename(config_path))[0])


def merge_cfg_options(cfg: Config, options: Optional[dict]) -> None:
    """``--cfg-options``, refusing top-level keys that nothing reads (typos)."""
    if options:
        check_cfg_options(cfg, options)
        cfg.merge_from_dict(options)


def build_runner(cfg: Config) -> Runner:
    if 'runner_type' in cfg:
        return RUNNERS.build(cfg)
    return Runner.from_cfg(cfg)


# ---------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------
def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Train a SPANet classifier, detector or segmentor.')
    parser.add_argument('config', help='train config file path')
    parser.add_argument('--work-dir', help='the dir to save logs and models')
    parser.add_argument(
        '--resume', nargs='?', type=str, const='auto',
        help='resume from this checkpoint; without a path, from the latest checkpoint in '
        'the work dir')
    parser.add_argument('--amp', action='store_true', help='automatic mixed precision')
    parser.add_argument(
        '--auto-scale-lr', action='store_true',
        help='scale the lr by (actual total batch) / auto_scale_lr.base_batch_size')
    parser.add_argument(
        '--cfg-options', nargs='+', action=DictAction,
        help='override config settings, key=value (e.g. model.backbone.init_cfg=None)')
    parser.add_argument(
        '--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'], default='none',
        help='job launcher')
    # torch.distributed.launch passes --local-rank (torch >= 2.0) or --local_rank.
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    return parser.parse_args(argv)


def enable_amp(cfg: Config) -> None:
    """Mixed precision: mmengine's AmpOptimWrapper on CUDA, bf16 autocast on CPUs."""
    optim_wrapper = cfg.optim_wrapper.get('type', 'OptimWrapper')
    if optim_wrapper in ('AmpOptimWrapper', 'CPUAmpOptimWrapper'):
        print_log('AMP is already enabled in the config.', logger='current')
        return
    if optim_wrapper != 'OptimWrapper':
        raise ToolError(f'--amp needs `optim_wrapper.type` OptimWrapper, not {optim_wrapper}.')
    if torch.cuda.is_available():
        cfg.optim_wrapper.type = 'AmpOptimWrapper'
        cfg.optim_wrapper.setdefault('loss_scale', 'dynamic')
    else:
        cfg.optim_wrapper.type = 'CPUAmpOptimWrapper'  # bfloat16, no loss scaling needed


def enable_auto_scale_lr(cfg: Config) -> None:
    auto_scale_lr = cfg.get('auto_scale_lr')
    if not auto_scale_lr or 'base_batch_size' not in auto_scale_lr:
        raise RuntimeError('--auto-scale-lr needs `auto_scale_lr = dict(base_batch_size=N)` '
                           '(the total batch the lr was set for) in the config.')
    cfg.auto_scale_lr.enable = True


def set_resume(cfg: Config, resume: Optional[str]) -> None:
    if resume == 'auto':
        cfg.resume = True
        cfg.load_from = None
    elif resume is not None:
        cfg.resume = True
        cfg.load_from = resume


def set_dataloader_defaults(cfg: Config, scope: str) -> None:
    """mmpretrain's own tools batch with ``default_collate``; keep that (and worker reuse)."""
    if scope != 'mmpretrain':
        return
    for phase in ('train', 'val', 'test'):
        loader = cfg.get(f'{phase}_dataloader')
        if not loader:
            continue
        loader.setdefault('collate_fn', dict(type='default_collate'))
        if loader.get('num_workers', 0) > 0:
            loader.setdefault('persistent_workers', True)
        loader.setdefault('pin_memory', torch.cuda.is_available())


def main(argv=None) -> None:
    args = parse_args(argv)
    cfg = Config.fromfile(args.config)  # runs the config's custom_imports
    merge_cfg_options(cfg, args.cfg_options)
    scope = get_scope(cfg, args.config)
    set_launcher(cfg, args.launcher, args.local_rank)
    set_work_dir(cfg, args.work_dir, args.config)
    if args.amp:
        enable_amp(cfg)
    if args.auto_scale_lr:
        enable_auto_scale_lr(cfg)
    set_resume(cfg, args.resume)
    set_dataloader_defaults(cfg, scope)
    check_datasets(cfg, scope, ['train', 'val'])
    check_dataset_formats(cfg, scope, ['train', 'val'])
    # Exact resume (RNG states in checkpoints) and refusal of checkpoints that do not fit.
    add_reliability_hooks(cfg)

    runner = build_runner(cfg)
    runner.train()


if __name__ == '__main__':
    run_reporting_user_errors(main)
