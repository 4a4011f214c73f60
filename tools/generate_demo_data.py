# Copyright (c) spanet_mm contributors. All rights reserved.
"""Writes the small synthetic datasets the demo configs train on (deterministic, seconds).

Three sets under ``data/demo/`` (default), each in the layout of the real dataset, so the demo
uses the real dataset classes, pipelines and metrics:

- ``coco/``: COCO instance segmentation, 2 categories (``circle``, ``square``), boxes and
  polygon masks; ``annotations/instances_{train,val}2017.json``, ``{train,val}2017/*.jpg``.
- ``ade/``: ADE20K layout, ``images/{training,validation}/*.jpg`` and
  ``annotations/{training,validation}/*.png`` with ADE20K's label encoding (0 = "other",
  ignored with ``reduce_zero_label=True``; 1..4 = the first four ADE20K classes: wall, building,
  sky, floor).
- ``imagenet/``: ImageNet layout, ``train/<class>/*.JPEG``, ``val/*.JPEG`` and
  ``meta/{train,val}.txt``; 4 classes by shape (circle, square, triangle, cross).

Usage: ``python tools/generate_demo_data.py [--out data/demo] [--seed 0]``

Each set's folder gets a marker file (``.spanet_mm_demo_data``). A re-run replaces only folders
that hold it; any other ``<out>/{coco,ade,imagenet}`` (a real dataset, a symlink to one) is left
untouched and the tool stops with an error (``--out data`` would otherwise be the real configs'
data roots).
"""
import argparse
import json
import os
import os.path as osp
import shutil

import cv2
import numpy as np

# Written first into each set's folder: only folders holding it are ever removed by a re-run.
MARKER = '.spanet_mm_demo_data'


def refuse_foreign_folders(out):
    """Stops (before anything is removed or written) if any ``out/<set>`` exists and is not an
    earlier run's output: a real dataset there would be deleted, and through a symlink (as
    docs/datasets.md suggests for ``data/coco``) the demo files would be written into it."""
    for sub in ('coco', 'ade', 'imagenet'):
        path = osp.join(out, sub)
        if not osp.lexists(path):
            continue
        if osp.islink(path) or not osp.isdir(path):
            what = 'a symbolic link' if osp.islink(path) else 'not a folder'
        elif not osp.isfile(osp.join(path, MARKER)):
            what = f'a folder without the {MARKER} marker this tool writes'
        else:
            continue
        # SystemExit, not spanet_mm's UserError + run_tool: that would import torch and the
        # toolboxes into a tool of a second; the message is still one ERROR line, exit 1.
        raise SystemExit(
            f'ERROR: {path} exists and is {what}, so it is not demo data from this tool (it may '
            'be a real dataset); nothing was changed. Pass another --out (the default is '
            'data/demo), or remove it yourself if it is an old demo set (`make clean` removes '
            'data/demo).')


def make_set_folder(path):
    """``path`` created afresh with the marker in it (an earlier run's output removed)."""
    if osp.lexists(path):  # a marked folder of an earlier run (refuse_foreign_folders)
        shutil.rmtree(path)
    os.makedirs(path)
    with open(osp.join(path, MARKER), 'w') as f:
        f.write('Synthetic demo data written by tools/generate_demo_data.py; a re-run of it '
                'deletes and rewrites this folder.\n')


# --- COCO instance set ------------------------------------------------------------------------
COCO_CATEGORIES = [dict(id=1, name='circle'), dict(id=2, name='square')]
COCO_IMAGE_SIZE = 128


def _background(rng, height, width):
    """A plain background with a little noise (BGR uint8)."""
    color = rng.randint(150, 256, size=3)
    noise = rng.randint(-8, 9, size=(height, width, 3))
    return np.clip(color[None, None] + noise, 0, 255).astype(np.uint8)


def _circle_polygon(cx, cy, r, points=24):
    angles = np.linspace(0, 2 * np.pi, points, endpoint=False)
    return np.stack([cx + r * np.cos(angles), cy + r * np.sin(angles)], axis=1)


def _square_polygon(cx, cy, r, angle):
    angles = angle + np.array([0.25, 0.75, 1.25, 1.75]) * np.pi
    return np.stack([cx + r * np.cos(angles), cy + r * np.sin(angles)], axis=1)


def _coco_split(rng, out_dir, split, num_images):
    img_dir = osp.join(out_dir, f'{split}2017')
    os.makedirs(img_dir, exist_ok=True)
    images, annotations = [], []
    size = COCO_IMAGE_SIZE
    for image_id in range(1, num_images + 1):
        img = _background(rng, size, size)
        occupied = np.zeros((size, size), bool)
        for _ in range(rng.randint(1, 4)):
            category = int(rng.randint(1, 3))
            for _attempt in range(20):  # place without overlapping earlier objects
                r = rng.uniform(14, 28)
                cx, cy = rng.uniform(r + 2, size - r - 2, size=2)
                if category == 1:
                    polygon = _circle_polygon(cx, cy, r)
                else:
                    polygon = _square_polygon(cx, cy, r * 1.2, rng.uniform(0, np.pi / 2))
                mask = np.zeros((size, size), np.uint8)
                cv2.fillPoly(mask, [np.round(polygon).astype(np.int32)], 1)
                if not (occupied & mask.astype(bool)).any():
                    break
            else:
                continue
            occupied |= mask.astype(bool)
            # circles reddish, squares bluish (BGR), with jitter
            base = np.array([40, 40, 200]) if category == 1 else np.array([200, 60, 40])
            color = np.clip(base + rng.randint(-40, 41, size=3), 0, 255)
            img[mask.astype(bool)] = color
            x0, y0 = polygon.min(axis=0).clip(0, size)
            x1, y1 = polygon.max(axis=0).clip(0, size)
            annotations.append(dict(
                id=len(annotations) + 1, image_id=image_id, category_id=category,
                segmentation=[[round(float(v), 2) for v in polygon.reshape(-1)]],
                area=float(mask.sum()),
                bbox=[round(float(v), 2) for v in (x0, y0, x1 - x0, y1 - y0)],
                iscrowd=0))
        file_name = f'{image_id:06d}.jpg'
        cv2.imwrite(osp.join(img_dir, file_name), img, [cv2.IMWRITE_JPEG_QUALITY, 95])
        images.append(dict(id=image_id, file_name=file_name, height=size, width=size))
    ann_dir = osp.join(out_dir, 'annotations')
    os.makedirs(ann_dir, exist_ok=True)
    with open(osp.join(ann_dir, f'instances_{split}2017.json'), 'w') as f:
        json.dump(dict(images=images, annotations=annotations, categories=COCO_CATEGORIES), f)
    return len(images), len(annotations)


# --- ADE20K-layout semantic set ---------------------------------------------------------------
# ADE20K class indices (after reduce_zero_label): 0 wall, 1 building, 2 sky, 3 floor.
# The PNGs store index + 1; 0 is ADE20K's "other" and is ignored.
ADE_IMAGE_SIZE = 128
ADE_COLORS = {0: (150, 150, 150), 1: (60, 60, 190), 2: (230, 190, 120), 3: (60, 110, 140)}


def _ade_split(rng, out_dir, split, num_images):
    img_dir = osp.join(out_dir, 'images', split)
    ann_dir = osp.join(out_dir, 'annotations', split)
    os.makedirs(img_dir, exist_ok=True)
    os.makedirs(ann_dir, exist_ok=True)
    size = ADE_IMAGE_SIZE
    for index in range(num_images):
        label = np.zeros((size, size), np.uint8)
        horizon = int(rng.randint(size * 0.35, size * 0.65))
        label[:horizon] = 2 + 1  # sky
        label[horizon:] = 3 + 1  # floor
        # a building standing on the horizon and a wall rectangle in front
        bw, bh = rng.randint(20, 50), rng.randint(25, horizon)
        bx = rng.randint(0, size - bw)
        label[horizon - bh:horizon + 4, bx:bx + bw] = 1 + 1
        ww, wh = rng.randint(30, 70), rng.randint(15, 35)
        wx, wy = rng.randint(0, size - ww), rng.randint(horizon - wh // 2, size - wh)
        label[wy:wy + wh, wx:wx + ww] = 0 + 1
        # a thin "other" outline around the wall, as in ADE20K's unlabeled boundaries
        cv2.rectangle(label, (wx, wy), (wx + ww - 1, wy + wh - 1), 0, 1)
        img = np.zeros((size, size, 3), np.int32)
        for cls, color in ADE_COLORS.items():
            jitter = rng.randint(-25, 26, size=3)
            img[label == cls + 1] = np.array(color) + jitter
        img[label == 0] = 30
        img = np.clip(img + rng.randint(-10, 11, size=img.shape), 0, 255).astype(np.uint8)
        name = f'ADE_{split}_{index:08d}'
        cv2.imwrite(osp.join(img_dir, name + '.jpg'), img, [cv2.IMWRITE_JPEG_QUALITY, 95])
        cv2.imwrite(osp.join(ann_dir, name + '.png'), label)
    return num_images


# --- ImageNet-layout classification set -------------------------------------------------------
CLS_CLASSES = ['n00000001_circle', 'n00000002_square', 'n00000003_triangle', 'n00000004_cross']
CLS_IMAGE_SIZE = 64


def _draw_shape(rng, label, size):
    img = _background(rng, size, size)
    color = tuple(int(c) for c in rng.randint(0, 120, size=3))
    cx, cy = rng.uniform(size * 0.35, size * 0.65, size=2)
    r = rng.uniform(size * 0.22, size * 0.32)
    if label == 0:
        cv2.circle(img, (int(cx), int(cy)), int(r), color, -1)
    elif label == 1:
        cv2.rectangle(img, (int(cx - r), int(cy - r)), (int(cx + r), int(cy + r)), color, -1)
    elif label == 2:
        pts = np.array([[cx, cy - r], [cx - r, cy + r], [cx + r, cy + r]], np.int32)
        cv2.fillPoly(img, [pts], color)
    else:
        w = max(int(r / 3), 2)
        cv2.rectangle(img, (int(cx - r), int(cy - w)), (int(cx + r), int(cy + w)), color, -1)
        cv2.rectangle(img, (int(cx - w), int(cy - r)), (int(cx + w), int(cy + r)), color, -1)
    return img


def _imagenet(rng, out_dir, num_train, num_val):
    meta_dir = osp.join(out_dir, 'meta')
    os.makedirs(meta_dir, exist_ok=True)
    train_lines, val_lines = [], []
    for label, wnid in enumerate(CLS_CLASSES):
        os.makedirs(osp.join(out_dir, 'train', wnid), exist_ok=True)
        for i in range(num_train):
            rel = f'{wnid}/{wnid}_{i:04d}.JPEG'
            cv2.imwrite(osp.join(out_dir, 'train', rel), _draw_shape(rng, label, CLS_IMAGE_SIZE),
                        [cv2.IMWRITE_JPEG_QUALITY, 95])
            train_lines.append(f'{rel} {label}')
    os.makedirs(osp.join(out_dir, 'val'), exist_ok=True)
    for i in range(num_val * len(CLS_CLASSES)):
        label = i % len(CLS_CLASSES)
        name = f'ILSVRC2012_val_{i + 1:08d}.JPEG'
        cv2.imwrite(osp.join(out_dir, 'val', name), _draw_shape(rng, label, CLS_IMAGE_SIZE),
                    [cv2.IMWRITE_JPEG_QUALITY, 95])
        val_lines.append(f'{name} {label}')
    for name, lines in (('train.txt', train_lines), ('val.txt', val_lines)):
        with open(osp.join(meta_dir, name), 'w') as f:
            f.write('\n'.join(lines) + '\n')
    return len(train_lines), len(val_lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--out', default='data/demo', help='output folder')
    parser.add_argument('--seed', type=int, default=0)
    args = parser.parse_args(argv)
    refuse_foreign_folders(args.out)  # all three checked before any is touched
    for sub in ('coco', 'ade', 'imagenet'):
        make_set_folder(osp.join(args.out, sub))
    rng = np.random.RandomState(args.seed)
    n_train, a_train = _coco_split(rng, osp.join(args.out, 'coco'), 'train', 64)
    n_val, a_val = _coco_split(rng, osp.join(args.out, 'coco'), 'val', 16)
    print(f'COCO instances: {n_train} train images ({a_train} objects), '
          f'{n_val} val images ({a_val} objects) in {osp.join(args.out, "coco")}')
    s_train = _ade_split(rng, osp.join(args.out, 'ade'), 'training', 48)
    s_val = _ade_split(rng, osp.join(args.out, 'ade'), 'validation', 12)
    print(f'ADE20K layout: {s_train} training, {s_val} validation images in '
          f'{osp.join(args.out, "ade")}')
    c_train, c_val = _imagenet(rng, osp.join(args.out, 'imagenet'), 40, 10)
    print(f'ImageNet layout: {c_train} train, {c_val} val images, {len(CLS_CLASSES)} classes in '
          f'{osp.join(args.out, "imagenet")}')


if __name__ == '__main__':
    main()
