# Copyright (c) spanet_mm contributors. All rights reserved.
"""Parameters and multiply-accumulates (MACs) of a SPANet config.

Counted with forward hooks on one image (fvcore is not needed), in the paper's convention, which
is fvcore's: convolutions ``out elements x in_channels / groups x kh x kw``, GroupNorm ``5 x
input elements``, Linear ``in x out``; the FFTs and element-wise products are not counted. The
model is run with ``spectral_impl='fft'`` (the official formulation, numerically the same model)
so that every ``pw_i`` conv is called on its chunk. The extra MACs of the FFT-free ('lowrank')
spectral mixing are reported separately: per token mixer, the projection of the map on the
``J <= 13`` Fourier modes (``C x H x W x J``), their channel mixing (``C x C x J``) and the
expansion back onto the map (``C x H x W x J``).

Parameters: trainable (the model the config builds: the classifier for classification
configs, otherwise the backbone), backbone only, and the paper's count, which adds the official
model's fixed filters: three ``(1, P, P)`` tensors per block, ``P`` the stage resolution (56, 28,
14, 7 at 224; ``H_i x W_i`` for a non-square ``--shape``).

Examples::

    python tools/analysis/get_flops.py configs/classification/spanet_s_in1k.py
    python tools/analysis/get_flops.py configs/classification/spanet_s_in1k.py --shape 512 512
    python tools/analysis/get_flops.py --all     # markdown table of the five variants
"""
import argparse
import os.path as osp
from collections import defaultdict
from typing import Dict, Optional

import torch
import torch.nn as nn

from spanet_mm.engine.launch import INPUT_SIDE, int_option
from spanet_mm.models.backbones.spanet import MIN_INPUT_SIZE

REPO_ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))

VARIANTS = ('s', 'm', 'mx', 'b', 'bx')


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Parameters and MACs of a SPANet config.')
    parser.add_argument('config', nargs='?', help='config file (not needed with --all)')
    parser.add_argument('--shape', type=int_option(INPUT_SIDE, MIN_INPUT_SIZE), nargs='+', default=[224],
                        help=f'input size: S (square) or H W, each >= {MIN_INPUT_SIZE} '
                        '(default 224)')
    parser.add_argument('--all', action='store_true',
                        help='markdown table of configs/classification/spanet_{s,m,mx,b,bx}')
    args = parser.parse_args(argv)
    if len(args.shape) == 1:
        args.shape = args.shape * 2
    if len(args.shape) != 2:
        parser.error('--shape takes one or two integers')
    if not args.all and not args.config:
        parser.error('give a CONFIG or --all')
    return args


def build(config: str):
    """The config's model with the FFT spectral pooling: (model, backbone, is_classifier).

    Classification configs count the classifier (backbone, neck, head), the others the
    backbone. Built by :func:`spanet_mm.apis.init_model`, without pretrained weights.
    """
    from spanet_mm.apis import NotSPANetError, init_model, spanet_backbone
    from spanet_mm.engine.launch import load_config

    cfg = load_config(config)  # a missing file: ToolOptionError (one ERROR line)
    # The options below are SPANet's: another backbone would fail on them with a TypeError.
    kind = (cfg.model.get('backbone') or {}).get('type')
    name = getattr(kind, '__name__', str(kind))
    if name.split('.')[-1] != 'SPANet':
        raise NotSPANetError(f'{config}: the backbone is {name}, not SPANet.')
    model = init_model(cfg, cfg_options={'model.backbone.spectral_impl': 'fft',
                                         'model.backbone.init_cfg': None})
    backbone = spanet_backbone(model, config)
    if type(model).__name__ == 'ImageClassifier':
        return model, backbone, True
    return backbone, backbone, False


def count(model: nn.Module, backbone: nn.Module, is_classifier: bool, shape) -> Dict:
    from spanet_mm.models.layers import SpectralPoolingMixer, spectral_basis

    macs: Dict[str, int] = defaultdict(int)
    filters = 0
    stage_sizes = {}

    def conv_hook(module, inputs, output):
        kh, kw = module.kernel_size
        macs['conv'] += output[0].numel() * (module.in_channels // module.groups) * kh * kw

    def norm_hook(module, inputs, output):
        macs['group_norm'] += 5 * inputs[0][0].numel()

    def linear_hook(module, inputs, output):
        macs['linear'] += output[0].numel() * module.in_features

    def mixer_hook(module, inputs, output):
        nonlocal filters
        _, channels, height, width = inputs[0].shape
        modes = spectral_basis(height, width, module.radius, torch.float64,
                               torch.device('cpu'))[0].shape[0]
        macs['lowrank_spectral'] += 2 * channels * height * width * modes \
            + channels * channels * modes
        filters += len(module.chunk_sizes) * height * width
        stage_sizes[channels] = (height, width)

    handles = []
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            handles.append(module.register_forward_hook(conv_hook))
        elif isinstance(module, nn.GroupNorm):
            handles.append(module.register_forward_hook(norm_hook))
        elif isinstance(module, nn.Linear):
            handles.append(module.register_forward_hook(linear_hook))
        elif isinstance(module, SpectralPoolingMixer):
            handles.append(module.register_forward_hook(mixer_hook))
    model.eval()
    x = torch.zeros(1, backbone.in_channels, *shape)  # the config's channels, not always 3
    # Every submodule runs as a module in every mode (tests/test_models/test_layers/test_spam_modes.py).
    with torch.no_grad():
        if is_classifier:
            model(x, mode='tensor')
        else:
            model(x)
    for handle in handles:
        handle.remove()
    paper = macs['conv'] + macs['group_norm'] + macs['linear']
    return dict(
        params_trainable=sum(p.numel() for p in model.parameters() if p.requires_grad),
        params_model=sum(p.numel() for p in model.parameters()),
        params_backbone=sum(p.numel() for p in backbone.parameters()),
        params_filters=filters,
        macs=dict(macs),
        macs_paper=paper,
        macs_lowrank_total=paper + macs['lowrank_spectral'],
        stage_sizes=stage_sizes)


def report(config: str, shape) -> Dict:
    model, backbone, is_classifier = build(config)
    result = count(model, backbone, is_classifier, shape)
    what = 'classifier (backbone + neck + head)' if is_classifier else 'backbone'
    g = 1e9
    macs = result['macs']
    print(f'{config}  input 1x{backbone.in_channels}x{shape[0]}x{shape[1]}, {what}')
    print(f'  trainable parameters:            {result["params_trainable"]:,}')
    print(f'  backbone parameters:             {result["params_backbone"]:,}')
    print(f'  parameters with fixed filters:   {result["params_model"] + result["params_filters"]:,}'
          f'  (paper; + {result["params_filters"]:,} filter values)')
    print(f'  MACs, paper convention:          {result["macs_paper"] / g:.4f} G  (conv '
          f'{macs.get("conv", 0) / g:.4f} G + group_norm {macs.get("group_norm", 0) / g:.4f} G'
          f' + linear {macs.get("linear", 0) / g:.4f} G)')
    print(f'  MACs incl. lowrank spectral mix: {result["macs_lowrank_total"] / g:.4f} G  (+ '
          f'{macs.get("lowrank_spectral", 0) / g:.4f} G; the FFT path instead runs 2 FFTs per '
          'map, not counted)')
    return result


def table(shape, config_dir: Optional[str] = None) -> str:
    config_dir = config_dir or osp.join(REPO_ROOT, 'configs', 'classification')
    lines = [
        f'| variant | params (trainable, classifier) | params (backbone only) | params incl. fixed '
        f'filters (paper) | MACs (paper convention, {shape[0]}x{shape[1]}) | MACs incl. lowrank '
        'spectral mixing |', '|---|---|---|---|---|---|'
    ]
    for variant in VARIANTS:
        config = osp.join(config_dir, f'spanet_{variant}_in1k.py')
        model, backbone, is_classifier = build(config)
        r = count(model, backbone, is_classifier, shape)
        lines.append(
            f'| SPANet-{variant.upper()} | {r["params_trainable"]:,} | '
            f'{r["params_backbone"]:,} | '
            f'{r["params_model"] + r["params_filters"]:,} '
            f'({(r["params_model"] + r["params_filters"]) / 1e6:.1f}M) | '
            f'{r["macs_paper"] / 1e9:.4f} G | {r["macs_lowrank_total"] / 1e9:.4f} G |')
    return '\n'.join(lines)


def main(argv=None):
    args = parse_args(argv)
    if args.config:
        report(args.config, args.shape)
    if args.all:
        print(table(args.shape))


if __name__ == '__main__':
    from spanet_mm.engine.launch import run_tool
    run_tool(main)
