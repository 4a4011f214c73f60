# Copyright (c) spanet_mm contributors. All rights reserved.
"""Run SPANet models on an image with the toolboxes' own inferencers and save the pictures.

Usage::

    python tools/image_demo.py CONFIG [CONFIG ...] [--checkpoints CKPT ...] [--img IMG]
                               [--out-dir DIR] [--device cpu] [--score-thr 0.3]

Each config is run by the inferencer of its ``default_scope``: mmpretrain's
``ImageClassificationInferencer``, mmdet's ``DetInferencer`` or mmseg's ``MMSegInferencer``.
The painted result is saved as ``DIR/<config name>/vis/<image name>`` and the prediction as
``DIR/<config name>/pred.json`` (top class, box count or class-pixel histogram; mmseg also
writes the label map to ``pred/``).
A config's folder is replaced on a re-run only if it holds nothing but this tool's outputs
(``pred.json``, ``vis/``, ``pred/``); any other folder there (e.g. ``tools/train.py``'s work dir
``work_dirs/<config name>``, with its checkpoints) is refused, as are two configs whose folders
would be the same.
``--checkpoints`` gives one checkpoint per config (``none``: random weights, which exercises
the code path only). A config's ``Pretrained`` backbone init is not used: the checkpoint holds
the whole model. ``--img`` defaults to matplotlib's sample photograph of Grace Hopper.

Example::

    python tools/image_demo.py configs/classification/demo/spanet_demo_cls.py \\
        configs/detection/demo/mask_rcnn_spanet_demo.py \\
        configs/segmentation/demo/fpn_spanet_demo.py --out-dir work_dirs/image_demo
"""
import argparse
import json
import os
import os.path as osp
import shutil

import numpy as np
from mmengine.config import Config
from mmengine.runner.checkpoint import _load_checkpoint

import spanet_mm  # noqa: F401  registers SPANet, loads Runner checkpoints safely
from spanet_mm.checkpoint import CheckpointMismatchError, check_state_dict
from spanet_mm.engine.launch import ToolOptionError, device_option, folder_option

# What this tool writes into a config's folder: the only entries a re-run may delete.
OWN_OUTPUTS = {'pred.json': osp.isfile, 'vis': osp.isdir, 'pred': osp.isdir}


def default_image() -> str:
    from matplotlib import cbook
    return cbook.get_sample_data('grace_hopper.jpg', asfileobj=False)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('configs', nargs='+', help='SPANet config(s) of any of the three tasks')
    parser.add_argument('--checkpoints', nargs='+',
                        help="one checkpoint per config ('none' for random weights); "
                        'default: random weights for all')
    parser.add_argument('--img', default=None, help='input image (default: Grace Hopper)')
    parser.add_argument('--out-dir', type=folder_option, default='work_dirs/image_demo')
    parser.add_argument('--device', type=device_option, default='cpu')
    parser.add_argument('--score-thr', type=float, default=0.3,
                        help='detection: draw boxes above this score')
    return parser.parse_args(argv)


def load_config(path: str) -> Config:
    cfg = Config.fromfile(path)
    cfg.model.pop('pretrained', None)
    backbone = cfg.model.get('backbone')
    if backbone is not None:
        backbone.init_cfg = None  # the checkpoint (or random weights) replaces Pretrained init
    return cfg


def refuse_misfit(model, checkpoint) -> None:
    """The toolboxes' inferencers load weights non-strictly (a checkpoint of another model
    only logs what did not fit), so the file is checked against the model they built, before
    any image is processed: every tensor must fit (a missing head would predict at random)."""
    if checkpoint is not None:
        check_state_dict(model.state_dict(), _load_checkpoint(checkpoint, map_location='cpu'),
                         source=checkpoint, whole_model=True)


def config_metainfo(cfg) -> dict:
    """classes/palette of the config's test (or train) dataset, if it names them."""
    for phase in ('test', 'val', 'train'):
        dataset = (cfg.get(f'{phase}_dataloader') or {}).get('dataset') or {}
        while 'dataset' in dataset:
            dataset = dataset['dataset']
        metainfo = dataset.get('metainfo') or {}
        if metainfo.get('classes'):
            return dict(metainfo)
    return {}


def classify(cfg, checkpoint, img, out_dir, device, score_thr):
    from mmpretrain.apis import ImageClassificationInferencer
    classes = (cfg.get('test_dataloader', {}).get('dataset', {}).get('metainfo') or {}).get(
        'classes')  # the config's classes, not ImageNet's, for a demo/fine-tuned model
    inferencer = ImageClassificationInferencer(
        model=cfg, pretrained=checkpoint or False, device=device, classes=classes)
    refuse_misfit(inferencer.model, checkpoint)
    result = inferencer(img, show_dir=osp.join(out_dir, 'vis'))[0]
    return dict(pred_label=int(result['pred_label']), pred_score=float(result['pred_score']),
                pred_class=result.get('pred_class'))


def detect(cfg, checkpoint, img, out_dir, device, score_thr):
    from mmdet.apis import DetInferencer
    inferencer = DetInferencer(model=cfg, weights=checkpoint, device=device,
                               show_progress=False)
    refuse_misfit(inferencer.model, checkpoint)
    metainfo = config_metainfo(cfg)
    if checkpoint is None and metainfo:  # random weights: the config's classes, not COCO's
        metainfo.setdefault('palette', 'random')
        inferencer.model.dataset_meta = metainfo
        inferencer.visualizer.dataset_meta = metainfo
    result = inferencer(img, out_dir=out_dir, pred_score_thr=score_thr, no_save_pred=True)
    pred = result['predictions'][0]
    scores = np.asarray(pred['scores'])
    return dict(boxes=len(scores), boxes_above_thr=int((scores > score_thr).sum()))


def segment(cfg, checkpoint, img, out_dir, device, score_thr):
    from mmseg.apis import MMSegInferencer
    metainfo = config_metainfo(cfg) if checkpoint is None else {}
    inferencer = MMSegInferencer(model=cfg, weights=checkpoint, device=device,
                                 classes=metainfo.get('classes'),
                                 palette=metainfo.get('palette'))
    refuse_misfit(inferencer.model, checkpoint)
    if metainfo.get('classes'):  # mmseg draws with the model's meta (Cityscapes without weights)
        inferencer.model.dataset_meta = dict(classes=metainfo['classes'],
                                             palette=metainfo.get('palette'))
    result = inferencer(img, out_dir=out_dir, img_out_dir='vis', pred_out_dir='pred')
    labels, counts = np.unique(np.asarray(result['predictions']), return_counts=True)
    return dict(class_pixels={int(k): int(v) for k, v in zip(labels, counts)})


def refuse_foreign_folder(path: str) -> None:
    """A folder of this tool's outputs (or nothing) at ``path`` may be replaced; anything else
    is refused: ``--out-dir work_dirs`` would otherwise delete ``tools/train.py``'s default work
    dir ``work_dirs/<config name>``, checkpoints and all."""
    if not osp.lexists(path):
        return
    if osp.islink(path) or not osp.isdir(path):
        what = 'is a symbolic link' if osp.islink(path) else 'is not a folder'
    else:
        foreign = sorted(name for name in os.listdir(path)
                         if name not in OWN_OUTPUTS or osp.islink(osp.join(path, name))
                         or not OWN_OUTPUTS[name](osp.join(path, name)))
        if not foreign:
            return
        what = (f'holds more than the outputs of an earlier image_demo run (pred.json, vis/, '
                f'pred/): {foreign[:5]}; it may be a training work dir')
    raise ToolOptionError(
        f'{path} exists and {what}; replacing it would delete it, so it is left as it is. Pass '
        'another --out-dir (default work_dirs/image_demo), or move that folder away.')


TASKS = {'mmpretrain': classify, 'mmdet': detect, 'mmseg': segment}


def main(argv=None):
    args = parse_args(argv)
    img = args.img or default_image()
    checkpoints = args.checkpoints or ['none'] * len(args.configs)
    if len(checkpoints) != len(args.configs):
        raise SystemExit(f'error: {len(args.configs)} config(s) but {len(checkpoints)} '
                         'checkpoint(s); give one per config (or none at all).')
    if not osp.isfile(img):
        raise SystemExit(f'error: image {img} not found.')
    import mmcv
    if mmcv.imread(img) is None:  # the inferencers would fail with a ValueError traceback
        raise SystemExit(f'error: cannot read {img} as an image (OpenCV cannot decode it); '
                         'give a JPEG, PNG or other image file.')
    jobs = []
    out_dirs = {}  # real path of each config's output folder -> config
    for config, checkpoint in zip(args.configs, checkpoints):  # check everything first
        if not osp.isfile(config):
            raise SystemExit(f'error: config {config} not found.')
        out_dir = osp.join(args.out_dir, osp.splitext(osp.basename(config))[0])
        if osp.realpath(out_dir) in out_dirs:  # the second result would replace the first
            raise ToolOptionError(
                f'{out_dirs[osp.realpath(out_dir)]} and {config} would both write to {out_dir} '
                '(the folder is named after the config file), the second result replacing the '
                'first: run them in separate calls with different --out-dir.')
        out_dirs[osp.realpath(out_dir)] = config
        refuse_foreign_folder(out_dir)
        refuse_foreign_folder(out_dir + '.tmp')  # removed below, as an interrupted run's
        checkpoint = None if checkpoint.lower() == 'none' else checkpoint
        if checkpoint is not None and not osp.isfile(checkpoint):
            raise SystemExit(f'error: checkpoint {checkpoint} not found.')
        cfg = load_config(config)
        scope = cfg.get('default_scope')
        if scope not in TASKS:
            raise SystemExit(f'error: {config}: default_scope {scope!r} is none of {list(TASKS)}.')
        jobs.append((config, cfg, checkpoint, scope, out_dir))
    for config, cfg, checkpoint, scope, out_dir in jobs:
        tmp_dir = out_dir + '.tmp'
        shutil.rmtree(tmp_dir, ignore_errors=True)
        os.makedirs(osp.join(tmp_dir, 'vis'))
        try:
            try:
                summary = TASKS[scope](cfg, checkpoint, img, tmp_dir, args.device, args.score_thr)
            except CheckpointMismatchError as err:  # SPANet's own load check names no file
                if checkpoint in str(err):
                    raise
                raise CheckpointMismatchError(f'{checkpoint} does not fit the model: {err}') \
                    from None
            with open(osp.join(tmp_dir, 'pred.json'), 'w') as f:
                json.dump(dict(config=config, checkpoint=checkpoint, image=img, **summary), f,
                          indent=1)
            refuse_foreign_folder(out_dir)  # again: the folder may have been made meanwhile
            shutil.rmtree(out_dir, ignore_errors=True)
            os.replace(tmp_dir, out_dir)  # no half-written result folder
        finally:
            shutil.rmtree(tmp_dir, ignore_errors=True)
        print(f'{scope}: {config} -> {out_dir}/vis ({summary})')


if __name__ == '__main__':
    from spanet_mm.engine.launch import run_tool
    run_tool(main)  # a UserError (e.g. a checkpoint that does not fit): one ERROR line
