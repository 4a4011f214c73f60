# Copyright (c) spanet_mm contributors. All rights reserved.
"""Train a SPANet classifier, detector or segmentor on the mmengine Runner.

The same command for the three tasks (the config's ``default_scope`` says which). The run
policy (hooks, dataloader settings) is in the configs, so mmdet's, mmseg's and mmpretrain's own
``tools/train.py`` run them alike. Multi-GPU: ``tools/dist_train.sh CONFIG GPUS``; without CUDA
the processes use gloo, so ``tools/dist_train.sh CONFIG 2`` also runs on CPUs.
"""
import argparse

from mmengine.registry import RUNNERS
from mmengine.runner import Runner

from spanet_mm.engine.launch import (CfgOptionsAction, check_data, disable_dataloader_options,
                                     enable_amp, enable_auto_scale_lr, get_scope, load_config,
                                     run_tool, set_launcher, set_work_dir)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Train a SPANet model')
    parser.add_argument('config', help='train config file path')
    parser.add_argument('--work-dir', help='the dir to save logs and models')
    parser.add_argument(
        '--resume', nargs='?', type=str, const='auto',
        help='resume from this checkpoint; without a path, from the latest checkpoint in '
        'the work dir')
    parser.add_argument('--amp', action='store_true', help='automatic mixed precision')
    # mmpretrain's three flags: they mean the same to mmengine's Runner for all three tasks.
    parser.add_argument(
        '--no-validate', action='store_true',
        help='no validation during training, any task (val_cfg, val_dataloader, val_evaluator = '
        'None, as mmpretrain\'s tool)')
    parser.add_argument(
        '--no-pin-memory', action='store_true',
        help='pin_memory=False in the train, val and test dataloaders, any task')
    parser.add_argument(
        '--no-persistent-workers', action='store_true',
        help='persistent_workers=False in the train, val and test dataloaders, any task')
    parser.add_argument(
        '--auto-scale-lr', action='store_true',
        help='scale the lr by (actual total batch) / auto_scale_lr.base_batch_size')
    parser.add_argument(
        '--cfg-options', nargs='+', action=CfgOptionsAction,
        help='override config settings, key=value (e.g. model.backbone.init_cfg=None)')
    parser.add_argument(
        '--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'], default='none',
        help='job launcher')
    # torch.distributed.launch passes --local-rank (torch >= 2.0) or --local_rank.
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    cfg = load_config(args.config, args.cfg_options)
    scope = get_scope(cfg, args.config)
    set_launcher(cfg, args.launcher, args.local_rank)
    set_work_dir(cfg, args.work_dir, args.config)
    if args.amp:
        enable_amp(cfg)
    if args.auto_scale_lr:
        enable_auto_scale_lr(cfg)
    if args.resume == 'auto':
        cfg.resume, cfg.load_from = True, None
    elif args.resume is not None:
        cfg.resume, cfg.load_from = True, args.resume
    if args.no_validate:
        cfg.val_cfg = cfg.val_dataloader = cfg.val_evaluator = None
    disable_dataloader_options(cfg, ['train', 'val', 'test'], [
        option for option, off in [('pin_memory', args.no_pin_memory),
                                   ('persistent_workers', args.no_persistent_workers)] if off])
    check_data(cfg, scope, ['train'] if args.no_validate else ['train', 'val'])

    runner = RUNNERS.build(cfg) if 'runner_type' in cfg else Runner.from_cfg(cfg)
    runner.train()


if __name__ == '__main__':
    run_tool(main)
