# Copyright (c) spanet_mm contributors. All rights reserved.
"""Evaluate a SPANet classifier, detector or segmentor on the mmengine Runner.

Usage::

    python tools/test.py CONFIG CHECKPOINT [--work-dir DIR] [--out OUT] [--show-dir DIR]
                         [--tta] [--amp] [--cfg-options k=v ...] ... (see -h)

``--out``, ``--show``/``--show-dir`` and ``--tta`` change the config as each toolbox's own
``tools/test.py`` does (:mod:`spanet_mm.engine.evaluation_options`); the metrics are also
written to ``WORK_DIR/test_metrics.json``. Multi-GPU: ``tools/dist_test.sh``.
"""
import argparse
import json
import os.path as osp

import mmengine
from mmengine.logging import print_log
from mmengine.registry import RUNNERS
from mmengine.runner import Runner

from spanet_mm.engine.evaluation_options import (SET_OUT, SET_SHOW_DIR, check_test_options,
                                                 enable_tta)
from spanet_mm.engine.launch import (CfgOptionsAction, ToolOptionError, check_data,
                                     disable_dataloader_options, get_scope, load_config,
                                     run_tool, set_launcher, set_work_dir)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Test (and evaluate) a SPANet classifier, detector or segmentor.')
    parser.add_argument('config', help='test config file path')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('--work-dir', help='the dir to save logs and metrics')
    parser.add_argument(
        '--out',
        help='mmpretrain/mmdet: a .pkl file for the predictions; mmseg: a directory for the '
        'predicted label maps')
    parser.add_argument(
        '--out-item', choices=['metrics', 'pred'],
        help='mmpretrain only: what --out holds, the predictions (pred, the default) or the '
        'metrics (a .json/.yaml/.pkl file)')
    parser.add_argument('--show', action='store_true', help='show the painted images (needs '
                        'a display)')
    parser.add_argument('--show-dir', help='directory where painted images are saved')
    parser.add_argument('--wait-time', type=float, default=2, help='with --show, seconds per image')
    parser.add_argument(
        '--interval', type=int, help='paint every N-th image (default 1); mmpretrain and mmseg '
        '(there every N-th batch) only: mmdet paints every test image')
    parser.add_argument('--tta', action='store_true', help='test-time augmentation')
    parser.add_argument('--amp', action='store_true',
                        help='test under autocast, any task (test_cfg.fp16=True; bfloat16 on CPUs)')
    parser.add_argument('--no-pin-memory', action='store_true',
                        help='pin_memory=False in the test dataloader, any task')
    parser.add_argument(
        '--cfg-options', nargs='+', action=CfgOptionsAction,
        help='override config settings, key=value')
    parser.add_argument(
        '--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'], default='none',
        help='job launcher')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    cfg = load_config(args.config, args.cfg_options)
    scope = get_scope(cfg, args.config)
    set_launcher(cfg, args.launcher, args.local_rank)
    set_work_dir(cfg, args.work_dir, args.config)
    if not osp.isfile(args.checkpoint) and '://' not in args.checkpoint:
        raise ToolOptionError(f'Checkpoint {args.checkpoint!r} not found.')
    cfg.load_from = args.checkpoint
    check_test_options(args, scope)
    if args.out and args.out_item != 'metrics':
        SET_OUT[scope](cfg, osp.abspath(args.out))
    if args.show or args.show_dir:
        # Absolute, so the hooks do not put it under <work_dir>/<timestamp>/.
        show_dir = osp.abspath(args.show_dir) if args.show_dir else None
        SET_SHOW_DIR[scope](cfg, show_dir, args.show, args.wait_time, args.interval)
    if args.tta:
        enable_tta(cfg, scope)
    if args.amp:
        cfg.test_cfg.fp16 = True  # mmengine's TestLoop, for all three toolboxes
    if args.no_pin_memory:
        disable_dataloader_options(cfg, ['test'], ['pin_memory'])
    check_data(cfg, scope, ['test'])

    runner = RUNNERS.build(cfg) if 'runner_type' in cfg else Runner.from_cfg(cfg)
    metrics = runner.test()
    if runner.rank == 0:
        # Also as JSON, for scripts (tools/demo.sh) and tests.
        path = osp.join(cfg.work_dir, 'test_metrics.json')
        with open(path, 'w') as f:
            json.dump(metrics, f, indent=1, default=float)
        print_log(f'Test metrics written to {path}', logger='current')
        if args.out_item == 'metrics':
            mmengine.dump(metrics, args.out)


if __name__ == '__main__':
    run_tool(main)
