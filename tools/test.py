# Copyright (c) spanet_mm contributors. All rights reserved.
"""Evaluate a SPANet model: one script for classification, detection and segmentation.

Usage::

    python tools/test.py CONFIG CHECKPOINT [--work-dir DIR] [--out OUT] [--show-dir DIR]
                         [--tta] [--amp] [--cfg-options k=v ...] ... (see -h)

``--out`` and ``--show-dir`` follow each toolbox's own tools/test.py:

- mmpretrain: ``--out results.pkl`` dumps the predictions; ``--show-dir`` saves images with
  the predicted class.
- mmdet: ``--out results.pkl`` (must end with .pkl/.pickle) dumps the detections
  (``DumpDetResults``); ``--show-dir`` saves images with the detections.
- mmseg: ``--out DIR`` saves the predicted label maps as PNGs; ``--show-dir`` saves overlays.

``--show-dir`` is used as given (not under the work dir). ``--show`` without a display (where
matplotlib falls back to Agg, upstream waits ``--wait-time`` s per unseen image; 0: forever) is
refused. Multi-GPU: ``tools/dist_test.sh``.
"""
import argparse
import json
import os.path as osp

import matplotlib
import mmengine
from mmengine.config import Config, ConfigDict
from mmengine.logging import print_log
from mmengine.registry import RUNNERS
from mmengine.runner import Runner

from spanet_mm.engine.launch import (CfgOptionsAction, ToolOptionError, check_data,
                                     disable_dataloader_options, get_scope, load_config,
                                     run_tool, set_launcher, set_work_dir)

DEFAULT_TTA_MODEL = {
    'mmpretrain': dict(type='AverageClsScoreTTA'),
    'mmdet': dict(type='DetTTAModel',
                  tta_cfg=dict(nms=dict(type='nms', iou_threshold=0.5), max_per_img=100)),
    'mmseg': dict(type='SegTTAModel'),
}


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


def _as_list(evaluator):
    return list(evaluator) if isinstance(evaluator, (list, tuple)) else [evaluator]


# --- per-toolbox handling of --out and --show-dir ---------------------------------------------
def _out_mmpretrain(cfg: Config, out: str) -> None:
    if not out.endswith(('.pkl', '.pickle')):  # mmengine's DumpResults would raise
        raise ToolOptionError(f'--out must be a .pkl or .pickle file, got {out!r}.')
    cfg.test_evaluator = _as_list(cfg.test_evaluator) + [
        dict(type='DumpResults', out_file_path=out, _scope_='mmengine')]


def _out_mmdet(cfg: Config, out: str) -> None:
    if not out.endswith(('.pkl', '.pickle')):
        raise ToolOptionError(f'--out must be a .pkl or .pickle file for detection, got {out!r}.')
    cfg.test_evaluator = _as_list(cfg.test_evaluator) + [
        dict(type='DumpDetResults', out_file_path=out)]


def _out_mmseg(cfg: Config, out: str) -> None:
    for evaluator in _as_list(cfg.test_evaluator):
        evaluator['output_dir'] = out
        evaluator['keep_results'] = True


# show_dir may be None (--show alone); interval None: every image.
def _show_mmpretrain(cfg: Config, show_dir, show=False, wait_time=2., interval=None) -> None:
    hook = _visualization_hook(cfg)
    hook.update(enable=True, show=show, wait_time=wait_time, out_dir=show_dir,
                interval=interval or 1)


def _show_mmdet(cfg: Config, show_dir, show=False, wait_time=2., interval=None) -> None:
    hook = _visualization_hook(cfg)
    hook.update(draw=True)
    if show:
        hook.update(show=True, wait_time=wait_time)
    if show_dir:
        hook.update(test_out_dir=show_dir)


def _show_mmseg(cfg: Config, show_dir, show=False, wait_time=2., interval=None) -> None:
    hook = _visualization_hook(cfg)
    hook.update(draw=True, interval=interval or 1)  # mmseg's tool keeps the hook's (50)
    if show:
        hook.update(show=True, wait_time=wait_time)
    if show_dir:
        cfg.visualizer.save_dir = show_dir


def _visualization_hook(cfg: Config) -> ConfigDict:
    hook = cfg.get('default_hooks', {}).get('visualization')
    if hook is None:
        raise ToolOptionError('--show/--show-dir need a `visualization` entry in `default_hooks` '
                              '(the toolbox default_runtime.py has one).')
    return hook


SET_OUT = {'mmpretrain': _out_mmpretrain, 'mmdet': _out_mmdet, 'mmseg': _out_mmseg}
SET_SHOW_DIR = {'mmpretrain': _show_mmpretrain, 'mmdet': _show_mmdet, 'mmseg': _show_mmseg}
NON_INTERACTIVE_BACKENDS = ('agg', 'cairo', 'pdf', 'pgf', 'ps', 'svg', 'template')


def check_options(args, scope: str) -> None:
    """Refuses, before anything runs, the options that would do nothing here."""
    if args.out_item and (scope != 'mmpretrain' or not args.out or not args.out.endswith(
            ('.json', '.yaml', '.yml', '.pkl', '.pickle'))):
        raise ToolOptionError('--out-item is mmpretrain\'s and needs --out (for metrics a .json/'
                              '.yaml/.pkl file); the metrics are in WORK_DIR/test_metrics.json.')
    if args.interval is not None and scope == 'mmdet':
        raise ToolOptionError('--interval: mmdet paints every test image (its hook has none).')
    if args.show and matplotlib.get_backend().lower() in NON_INTERACTIVE_BACKENDS:
        raise ToolOptionError(f'--show needs a display; matplotlib found none (backend '
                              f'{matplotlib.get_backend()!r}). Use --show-dir DIR instead.')


def enable_tta(cfg: Config, scope: str) -> None:
    """Wraps the model in the toolbox's TTA model; default TTA = the test pipeline + flip."""
    if scope == 'mmdet' and cfg.model.get('roi_head', {}).get('mask_head') is not None:
        # mmdet's DetTTAModel merges boxes only; it would assert at the first batch.
        raise ToolOptionError('--tta: mmdet 3.3 has no test-time augmentation for instance '
                              'segmentation (this model has a mask head). Test without --tta.')
    if 'tta_pipeline' not in cfg:
        dataset = cfg.test_dataloader.dataset
        while 'dataset' in dataset:
            dataset = dataset.dataset
        pipeline = list(dataset.pipeline)
        *head, pack = pipeline
        flips = [dict(type='RandomFlip', prob=1.), dict(type='RandomFlip', prob=0.)]
        cfg.tta_pipeline = head + [dict(type='TestTimeAug', transforms=[flips, [pack]])]
    cfg.setdefault('tta_model', DEFAULT_TTA_MODEL[scope])
    cfg.model = ConfigDict(**cfg.tta_model, module=cfg.model)
    dataset = cfg.test_dataloader.dataset
    while 'dataset' in dataset:
        dataset = dataset.dataset
    dataset.pipeline = cfg.tta_pipeline


def main(argv=None):
    args = parse_args(argv)
    cfg = load_config(args.config, args.cfg_options)
    scope = get_scope(cfg, args.config)
    set_launcher(cfg, args.launcher, args.local_rank)
    set_work_dir(cfg, args.work_dir, args.config)
    if not osp.isfile(args.checkpoint) and '://' not in args.checkpoint:
        raise ToolOptionError(f'Checkpoint {args.checkpoint!r} not found.')
    cfg.load_from = args.checkpoint
    check_options(args, scope)
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
