# Copyright (c) spanet_mm contributors. All rights reserved.
"""Evaluate a SPANet model: one script for classification, detection and segmentation.

Usage::

    python tools/test.py CONFIG CHECKPOINT [--work-dir DIR] [--out OUT] [--show-dir DIR]
                         [--tta] [--cfg-options k=v ...] [--launcher {none,pytorch,slurm,mpi}]

``--out`` and ``--show-dir`` follow each toolbox's own tools/test.py:

- mmpretrain: ``--out results.pkl`` dumps the predictions; ``--show-dir`` saves images with
  the predicted class.
- mmdet: ``--out results.pkl`` (must end with .pkl/.pickle) dumps the detections
  (``DumpDetResults``); ``--show-dir`` saves images with the detections.
- mmseg: ``--out DIR`` saves the predicted label maps as PNGs; ``--show-dir`` saves overlays.

``--show-dir`` is used as given (not under the work dir). Multi-GPU: ``tools/dist_test.sh``.
"""
import argparse
import json
import os.path as osp

from mmengine.config import Config, ConfigDict, DictAction
from mmengine.logging import print_log
from mmengine.registry import RUNNERS
from mmengine.runner import Runner

from spanet_mm.engine.launch import (ToolOptionError, check_data, get_scope, load_config,
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
    parser.add_argument('--show-dir', help='directory where painted images are saved')
    parser.add_argument('--tta', action='store_true', help='test-time augmentation')
    parser.add_argument(
        '--cfg-options', nargs='+', action=DictAction,
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


def _show_mmpretrain(cfg: Config, show_dir: str) -> None:
    hook = _visualization_hook(cfg)
    hook.update(enable=True, out_dir=show_dir, interval=1)  # every image


def _show_mmdet(cfg: Config, show_dir: str) -> None:
    hook = _visualization_hook(cfg)
    hook.update(draw=True, test_out_dir=show_dir)


def _show_mmseg(cfg: Config, show_dir: str) -> None:
    hook = _visualization_hook(cfg)
    hook.update(draw=True, interval=1)
    cfg.visualizer.save_dir = show_dir


def _visualization_hook(cfg: Config) -> ConfigDict:
    hook = cfg.get('default_hooks', {}).get('visualization')
    if hook is None:
        raise ToolOptionError('--show-dir needs a `visualization` entry in `default_hooks` '
                              '(the toolbox default_runtime.py has one).')
    return hook


SET_OUT = {'mmpretrain': _out_mmpretrain, 'mmdet': _out_mmdet, 'mmseg': _out_mmseg}
SET_SHOW_DIR = {'mmpretrain': _show_mmpretrain, 'mmdet': _show_mmdet, 'mmseg': _show_mmseg}


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
    if args.out:
        SET_OUT[scope](cfg, osp.abspath(args.out))
    if args.show_dir:
        # Absolute, so the hooks do not put it under <work_dir>/<timestamp>/.
        SET_SHOW_DIR[scope](cfg, osp.abspath(args.show_dir))
    if args.tta:
        enable_tta(cfg, scope)
    check_data(cfg, scope, ['test'])

    runner = RUNNERS.build(cfg) if 'runner_type' in cfg else Runner.from_cfg(cfg)
    metrics = runner.test()
    if runner.rank == 0:
        # Also as JSON, for scripts (tools/demo.sh) and tests.
        path = osp.join(cfg.work_dir, 'test_metrics.json')
        with open(path, 'w') as f:
            json.dump(metrics, f, indent=1, default=float)
        print_log(f'Test metrics written to {path}', logger='current')


if __name__ == '__main__':
    run_tool(main)
