# Copyright (c) spanet_mm contributors. All rights reserved.
"""Exports a SPANet model to ONNX (opset 17) and checks it with onnxruntime.

- Classification configs (``model.type == 'ImageClassifier'``): the classifier, image -> logits
  (backbone, neck and head).
- Any other config (detection, segmentation): the backbone built from ``cfg.model.backbone``,
  image -> one feature map per ``out_indices`` (``feat0``, ``feat1``, ...).

The checkpoint is required (an OpenMMLab checkpoint ``{'state_dict': ..., 'meta': ...}`` of the
config's model, e.g. from ``tools/train.py`` or the official-weight converter); every exported
weight must be in it. The spectral pooling is exported in its FFT-free form, with the Fourier
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
from typing import List, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn

sys.path.insert(0, osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))

OPSET = 17


class ExportError(RuntimeError):
    """The model could not be exported or the exported model does not match PyTorch."""


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Export a SPANet config to ONNX.')
    parser.add_argument('config', help='config file')
    parser.add_argument('checkpoint', help='checkpoint of the config\'s model')
    parser.add_argument('output', help='output .onnx file')
    parser.add_argument('--shape', type=int, nargs=2, default=[224, 224], metavar=('H', 'W'),
                        help='input height and width (default 224 224)')
    parser.add_argument('--batch', type=int, default=1, help='batch size of the example input')
    parser.add_argument('--dynamic', action='store_true',
                        help='dynamic batch, height and width axes')
    parser.add_argument('--opset', type=int, default=OPSET, help=f'ONNX opset (default {OPSET})')
    parser.add_argument('--atol', type=float, default=1e-4,
                        help='max abs difference to PyTorch accepted (default 1e-4)')
    parser.add_argument('--verify-shape', type=int, nargs=2, metavar=('H', 'W'),
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


def build_model(config: str) -> Tuple[nn.Module, nn.Module, str, List[str]]:
    """``(exported module, module the checkpoint is loaded into, key prefix, output names)``."""
    from mmengine.config import Config
    import spanet_mm  # noqa: F401  registers SPANet
    from spanet_mm.models import SPANet

    cfg = Config.fromfile(config)
    if 'backbone' not in cfg.model:
        raise ExportError(f'{config}: model has no backbone.')
    backbone_cfg = cfg.model.backbone.copy()
    if backbone_cfg.get('type') != 'SPANet':
        raise ExportError(f'{config}: the backbone is {backbone_cfg.get("type")!r}, not SPANet.')
    backbone_cfg['init_cfg'] = None  # weights come from the checkpoint
    if cfg.model.get('type') == 'ImageClassifier':
        from mmengine.registry import init_default_scope
        from mmpretrain.registry import MODELS
        init_default_scope('mmpretrain')
        model_cfg = cfg.model.copy()
        model_cfg['backbone'] = backbone_cfg
        model_cfg.pop('train_cfg', None)
        model_cfg.pop('data_preprocessor', None)
        model = MODELS.build(model_cfg)
        return Classifier(model), model, '', ['logits']
    backbone_cfg.pop('type')
    backbone = SPANet(**backbone_cfg)
    return backbone, backbone, 'backbone.', [f'feat{i}' for i in backbone.out_indices]


def load_weights(module: nn.Module, checkpoint: str, prefix: str) -> None:
    """Loads ``checkpoint`` into ``module``; every parameter and buffer must be there."""
    from spanet_mm.checkpoint import load_local_checkpoint

    if not osp.isfile(checkpoint):
        raise ExportError(f'checkpoint {checkpoint!r} not found')
    loaded = load_local_checkpoint(checkpoint, map_location='cpu')
    state_dict = loaded.get('state_dict', loaded) if isinstance(loaded, dict) else None
    if not isinstance(state_dict, dict):
        raise ExportError(f'{checkpoint} does not hold a state dict')
    if prefix and any(k.startswith(prefix) for k in state_dict):
        state_dict = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
    own = module.state_dict()
    missing = [k for k in own if k not in state_dict]
    mismatched = [f'{k}: {tuple(state_dict[k].shape)} vs {tuple(v.shape)}'
                  for k, v in own.items() if k in state_dict and state_dict[k].shape != v.shape]
    if missing or mismatched:
        raise ExportError(
            f'{checkpoint} does not fit the config\'s model: {len(missing)} missing key(s) '
            f'{missing[:5]}, {len(mismatched)} shape mismatch(es) {mismatched[:5]}')
    module.load_state_dict({k: state_dict[k] for k in own}, strict=True)


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


def export(args) -> float:
    model, target, prefix, output_names = build_model(args.config)
    load_weights(target, args.checkpoint, prefix)
    model.eval()
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
    args = parse_args(argv)
    try:
        export(args)
    except ExportError as err:
        sys.exit(f'error: {err}')


if __name__ == '__main__':
    main()
