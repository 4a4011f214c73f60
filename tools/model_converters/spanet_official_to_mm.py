# Copyright (c) spanet_mm contributors. All rights reserved.
"""Convert an official SPANet checkpoint into a spanet_mm / OpenMMLab checkpoint.

Example::

    python tools/model_converters/spanet_official_to_mm.py \
        spanet-small.pth checkpoints/spanet_s_in1k.pth

The result holds ``{'state_dict': {'backbone.*', 'head.fc.*'}, 'meta': {...}}``. It loads with
``load_from`` into ``configs/classification/spanet_<v>_in1k.py`` and with
``init_cfg=dict(type='Pretrained', checkpoint=DST, prefix='backbone.')`` into any SPANet backbone
of the same arch.
"""
import argparse
import os
import os.path as osp
import sys
import tempfile

import torch
from mmengine.utils import ProgressBar

from spanet_mm.conversion import CheckpointConversionError, convert_official
from spanet_mm.engine.launch import is_same_file


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('src', help='official checkpoint (.pth)')
    parser.add_argument('dst', help='output path')
    parser.add_argument(
        '--arch',
        choices=['s', 'm', 'mx', 'b', 'bx'],
        help='fail unless the checkpoint is this preset (default: accept any arch)')
    return parser.parse_args(argv)


def save_atomically(obj, dst: str) -> None:
    """Writes to a temporary file next to ``dst`` and renames it: no partial output."""
    folder = osp.dirname(osp.abspath(dst))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix='.' + osp.basename(dst) + '.', dir=folder)
    try:
        with os.fdopen(fd, 'wb') as f:
            torch.save(obj, f)
        os.replace(tmp, dst)
    except BaseException:
        if osp.exists(tmp):
            os.remove(tmp)
        raise


def find_non_finite(state_dict) -> list:
    """Looks at every converted tensor (with a progress bar, to stderr: large models take a
    while) and returns the keys of those holding NaN or inf."""
    progress = ProgressBar(len(state_dict), file=sys.stderr)
    non_finite = []
    for key, value in state_dict.items():
        if value.is_floating_point() and not torch.isfinite(value).all():
            non_finite.append(key)
        progress.update()
    sys.stderr.write('\n')
    return non_finite


def main(argv=None):
    args = parse_args(argv)
    if not osp.isfile(args.src):
        sys.exit(f'error: {args.src} does not exist.')
    # DST == SRC (also through a symlink or hard link) would replace the official file, whose
    # fp16 weights and spectral filters the conversion drops: refused before anything is read.
    if is_same_file(args.dst, args.src):
        sys.exit(f'error: the output {args.dst} is the source file {args.src}; converting into '
                 'it would replace the official checkpoint. Give another output path.')
    try:
        # Official files hold only tensors and plain containers: never unpickle anything else.
        checkpoint = torch.load(args.src, map_location='cpu', weights_only=True)
    except Exception as err:  # noqa: BLE001 - any failure here means an unreadable source
        sys.exit(f'error: cannot read {args.src} as a weights-only PyTorch checkpoint: '
                 f'{type(err).__name__}: {str(err).splitlines()[0]}')
    try:
        state_dict, meta = convert_official(checkpoint)
    except CheckpointConversionError as err:
        sys.exit(f'error: {args.src} is not a valid official SPANet checkpoint: {err}')
    if args.arch is not None and meta['arch_name'] != args.arch:
        sys.exit(f'error: {args.src} holds SPANet arch {meta["arch_name"] or meta["arch"]}, '
                 f'not {args.arch!r}.')
    non_finite = find_non_finite(state_dict)
    if non_finite:
        # Every loader refuses such weights (spanet_mm.checkpoint.refuse_non_finite): writing
        # them would only move the error to the first training or test run.
        sys.exit(f'error: {args.src} holds NaN or inf values in {len(non_finite)} tensor(s) '
                 f'(e.g. {non_finite[:3]}): the file is damaged. Download it again; nothing '
                 'was written.')
    save_atomically(dict(state_dict=state_dict, meta=meta), args.dst)
    print(f'Converted {len(state_dict)} tensors (arch {meta["arch_name"] or meta["arch"]}, '
          f'head: {"yes" if meta["has_head"] else "no"}) to {args.dst}')


if __name__ == '__main__':
    main()
