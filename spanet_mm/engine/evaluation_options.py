# Copyright (c) spanet_mm contributors. All rights reserved.
"""What ``tools/test.py``'s options do to a config, for each toolbox as its own ``test.py``.

- ``--out``: mmpretrain and mmdet dump the predictions to a ``.pkl`` file (``DumpResults``,
  ``DumpDetResults``), mmseg writes the predicted label maps into a directory.
- ``--show`` / ``--show-dir`` / ``--wait-time`` / ``--interval``: the toolbox's visualization
  hook (mmseg: the visualizer's ``save_dir``).
- ``--tta``: the toolbox's TTA model around the model; default TTA pipeline = the test
  pipeline with and without a horizontal flip.

Options that would do nothing (``--out-item`` outside mmpretrain, ``--interval`` for mmdet,
``--show`` without a display, where upstream's tools wait ``--wait-time`` s per image, with 0
forever) are refused by :func:`check_test_options` before anything runs.
"""
import matplotlib
from mmengine.config import Config, ConfigDict

from .launch import ToolOptionError

DEFAULT_TTA_MODEL = {
    'mmpretrain': dict(type='AverageClsScoreTTA'),
    'mmdet': dict(type='DetTTAModel',
                  tta_cfg=dict(nms=dict(type='nms', iou_threshold=0.5), max_per_img=100)),
    'mmseg': dict(type='SegTTAModel'),
}


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


def check_test_options(args, scope: str) -> None:
    """Refuses, before anything runs, the options of ``args`` (tools/test.py's) that would
    do nothing for ``scope``."""
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
    dataset = cfg.test_dataloader.dataset
    while 'dataset' in dataset:  # the dataset inside wrappers, which has the pipeline
        dataset = dataset.dataset
    if 'tta_pipeline' not in cfg:
        *head, pack = list(dataset.pipeline)
        flips = [dict(type='RandomFlip', prob=1.), dict(type='RandomFlip', prob=0.)]
        cfg.tta_pipeline = head + [dict(type='TestTimeAug', transforms=[flips, [pack]])]
    cfg.setdefault('tta_model', DEFAULT_TTA_MODEL[scope])
    cfg.model = ConfigDict(**cfg.tta_model, module=cfg.model)
    dataset.pipeline = cfg.tta_pipeline
