# Copyright (c) spanet_mm contributors. All rights reserved.
"""Exports a SPANet model to ONNX (opset 17) and checks it with onnxruntime.

- Classification configs (``model.type == 'ImageClassifier'``): the classifier, image -> logits
  (backbone, neck and head).
- Any other config (detection, segmentation): the backbone built from ``cfg.model.backbone``,
  image -> one feature map per ``out_indices`` (``feat0``, ``feat1``, ...).

The checkpoint is required (an OpenMMLab checkpoint ``{'state_dict': ..., 'meta': ...}`` of the
config's whole model, e.g. from ``tools/train.py``); the model is built and loaded by
:func:`spanet_mm.apis.init_model`, which refuses a file that misses any of its tensors. The spectral pooling is exported in its FFT-free form, with the Fourier
modes computed from the input shape in the graph, so ``--dynamic`` exports follow any input size
(batch, height and width axes are dynamic). After export the model is run with onnxruntime on a
random input of ``--shape`` (and, with ``--dynamic``, on a second size and batch) and compared
with PyTorch; the file is written only if every output matches within ``--atol`` (default 1e-4),
and atomically (a temporary file renamed into place).

Example::

    python tools/deployment/pytorch2onnx.py configs/classification/spanet_s_in1k.py \\
        checkpoints/spanet_s_in1k.pth work_dirs/spanet_s.onnx --shape 224 224 --dynamic
"""
import argparse
import os
import os.path as osp
import sys
import tempfile
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn

from spanet_mm.engine.launch import INPUT_SIDE, int_option
from spanet_mm.models.backbones.spanet import MIN_INPUT_SIZE

OPSET = 17
# The opsets this export runs at: from 9 (the FFT-free spectral pooling's arange; torch.onnx
# itself starts at 7) to the newest the installed torch.onnx writes (23 in torch 2.14; the
# constant is private, hence the fallback). Outside, torch.onnx fails with a traceback.
MIN_OPSET = 9
try:
    from torch.onnx._constants import ONNX_MAX_OPSET as MAX_OPSET
except ImportError:
    MAX_OPSET = OPSET


class ExportError(RuntimeError):
    """The model could not be exported or the exported model does not match PyTorch."""


SIDE = int_option(INPUT_SIDE, MIN_INPUT_SIZE)


def tolerance(value: str) -> float:
    """argparse ``type`` of ``--atol``: a finite number >= 0 (with a negative one or nan every
    export would fail its check, blaming the exported model)."""
    try:
        atol = float(value)
    except ValueError:
        atol = float('nan')
    if not 0 <= atol < float('inf'):
        raise argparse.ArgumentTypeError(f'{value!r}: the tolerance must be a finite number >= 0')
    return atol


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Export a SPANet config to ONNX.')
    parser.add_argument('config', help='config file')
    parser.add_argument('checkpoint', help='checkpoint of the config\'s model')
    parser.add_argument('output', help='output .onnx file')
    parser.add_argument('--shape', type=SIDE, nargs=2, default=[224, 224], metavar=('H', 'W'),
                        help='input height and width (default 224 224)')
    parser.add_argument('--batch', type=int_option('the batch', 1), default=1,
                        help='batch size of the example input')
    parser.add_argument('--dynamic', action='store_true',
                        help='dynamic batch, height and width axes')
    parser.add_argument('--opset', type=int_option('the opset', MIN_OPSET, MAX_OPSET), default=OPSET,
                        help=f'ONNX opset, {MIN_OPSET}..{MAX_OPSET} (default {OPSET})')
    parser.add_argument('--atol', type=tolerance, default=1e-4,
                        help='max abs difference to PyTorch accepted (default 1e-4)')
    parser.add_argument('--verify-shape', type=SIDE, nargs=2, metavar=('H', 'W'),
                        help='second input size checked with --dynamic (default: shape + 32 '
                        'rows, shape - 32 + 5 columns)')
    return parser.parse_args(argv)


class Classifier(nn.Module):
    """Image -> logits of an mmpretrain ``ImageClassifier``."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x, mode='tensor')


def build_model(config: str, checkpoint: str) -> Tuple[nn.Module, List[str]]:
    """``(exported module, output names)``: the config's model with every tensor from
    ``checkpoint`` (:func:`spanet_mm.apis.init_model` with ``strict=True``)."""
    from spanet_mm.apis import init_model, spanet_backbone

    model = init_model(config, checkpoint, strict=True)
    backbone = spanet_backbone(model, config)
    if type(model).__name__ == 'ImageClassifier':
        return Classifier(model), ['logits']
    return backbone, [f'feat{i}' for i in backbone.out_indices]


def run_torch(model: nn.Module, x: torch.Tensor) -> List[np.ndarray]:
    with torch.no_grad():
        outs = model(x)
    outs = outs if isinstance(outs, (tuple, list)) else (outs, )
    return [o.float().contiguous().numpy() for o in outs]


def verify(path: str, model: nn.Module, inputs: Sequence[torch.Tensor], atol: float) -> float:
    import onnxruntime as ort
    session = ort.InferenceSession(path, providers=['CPUExecutionProvider'])
    name = session.get_inputs()[0].name
    worst = 0.
    for x in inputs:
        expected = run_torch(model, x)
        got = session.run(None, {name: x.numpy()})
        if len(got) != len(expected):
            raise ExportError(f'ONNX gives {len(got)} outputs, PyTorch {len(expected)}')
        for i, (a, b) in enumerate(zip(got, expected)):
            if a.shape != b.shape:
                raise ExportError(
                    f'input {tuple(x.shape)}: output {i} has shape {a.shape} in ONNX, '
                    f'{b.shape} in PyTorch')
            diff = float(np.abs(a - b).max()) if a.size else 0.
            worst = max(worst, diff)
            if not diff <= atol:
                raise ExportError(
                    f'input {tuple(x.shape)}: output {i} differs from PyTorch by {diff:.3g} '
                    f'(> {atol:g})')
        print(f'  onnxruntime matches PyTorch on input {tuple(x.shape)}')
    return worst


def check_paths(args) -> None:
    """The config must exist (else a FileNotFoundError traceback). The output must not be a
    folder or lie under a file (os.replace and os.makedirs would fail after the export), nor be
    the checkpoint or the config (also through a symlink or hard link): the ONNX file, renamed
    into place, would replace it."""
    from spanet_mm.engine.launch import ToolOptionError, is_same_file, nearest_existing
    if not osp.isfile(args.config):
        raise ToolOptionError(f'config {args.config} not found.')
    if osp.isdir(args.output):
        raise ToolOptionError(f'the output {args.output} is a folder; give the path of an .onnx '
                              f'file, e.g. {osp.join(args.output, "model.onnx")}.')
    parent = nearest_existing(osp.dirname(osp.abspath(args.output)))
    if not osp.isdir(parent):  # os.makedirs would fail (FileExistsError, NotADirectoryError)
        raise ToolOptionError(f'{parent} is a file, so the output {args.output} cannot be '
                              'written under it; give an .onnx path in a folder.')
    for name in ('checkpoint', 'config'):
        src = getattr(args, name)
        if is_same_file(args.output, src):
            raise ToolOptionError(
                f'the output {args.output} is the {name} {src}; the ONNX file would replace '
                'it. Give another output path (an .onnx file).')


def export(args) -> float:
    check_paths(args)  # before anything is read or written
    model, output_names = build_model(args.config, args.checkpoint)
    height, width = args.shape
    torch.manual_seed(0)
    x = torch.randn(args.batch, 3, height, width)
    inputs = [x]
    dynamic_axes = None
    if args.dynamic:
        dynamic_axes = {'input': {0: 'batch', 2: 'height', 3: 'width'}}
        for name in output_names:
            dynamic_axes[name] = {0: 'batch'} if name == 'logits' else \
                {0: 'batch', 2: f'{name}_height', 3: f'{name}_width'}
        h2, w2 = args.verify_shape or (height + 32, max(32, width - 27))
        inputs.append(torch.randn(args.batch + 1, 3, h2, w2))

    out_dir = osp.dirname(osp.abspath(args.output))
    os.makedirs(out_dir, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out_dir, prefix='.' + osp.basename(args.output), suffix='.tmp')
    os.close(fd)
    try:
        with torch.no_grad():
            torch.onnx.export(
                model, (x, ), tmp, input_names=['input'], output_names=output_names,
                opset_version=args.opset, dynamic_axes=dynamic_axes, do_constant_folding=True,
                dynamo=False)
        import onnx
        onnx.checker.check_model(tmp)
        worst = verify(tmp, model, inputs, args.atol)
        os.replace(tmp, args.output)
    finally:
        if osp.exists(tmp):
            os.remove(tmp)
    print(f'wrote {args.output} (opset {args.opset}, outputs {output_names}, max |diff| '
          f'{worst:.2e})')
    return worst


def main(argv=None):
    from spanet_mm.errors import UserError
    args = parse_args(argv)
    try:
        export(args)
    except (ExportError, UserError) as err:
        sys.exit(f'ERROR: {err}')


if __name__ == '__main__':
    main()
