# Copyright (c) spanet_mm contributors. All rights reserved.
"""Plot SPANet's spectral pooling filters and the frequency content of its features.

Usage::

    python tools/analysis/plot_spectral_response.py CONFIG CHECKPOINT --img IMG --out-dir DIR
        [--size 224] [--device cpu]

``CHECKPOINT`` is a spanet_mm checkpoint, e.g. a converted official ImageNet file (``none``:
random initialisation, to look at an untrained model; a ``Pretrained`` init is not loaded).
Only its backbone is loaded, so it works with classification, detection and segmentation
configs with a SPANet ``backbone`` of that arch.
Writes to ``DIR``:

- ``spectral_filters.png``: for each stage, the three spectral pooling filters (lambda 0.7,
  0.8, 0.9) at that stage's feature size for this input (2-D, fftshifted: DC in the centre),
  and their radial profiles (gain against distance from DC in frequency bins).
- ``feature_spectra.png``: the relative log amplitude of each stage's output features against
  normalised frequency (0 = DC, pi = highest): 2-D Fourier spectrum per channel, log amplitude
  averaged over channels, radial mean, minus its value at frequency 0 (as the Fourier analyses
  of the SPANet paper and of Park & Kim, "How do vision transformers work?").
- ``spectral_response.json``: the plotted numbers.
"""
import argparse
import json
import os
import os.path as osp

import matplotlib

matplotlib.use('Agg')  # before pyplot: no display needed
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

import spanet_mm  # noqa: F401,E402
from spanet_mm.engine.launch import (INPUT_SIDE, device_option, folder_option,  # noqa: E402
                                     int_option)
from spanet_mm.models.backbones.spanet import MIN_INPUT_SIZE  # noqa: E402
from spanet_mm.models.layers.spectral_pooling import (SPECTRAL_LAMBDAS,  # noqa: E402
                                                      spectral_filter)

DEFAULT_MEAN = [123.675, 116.28, 103.53]
DEFAULT_STD = [58.395, 57.12, 57.375]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('config', help='SPANet config (classification, detection or segmentation)')
    parser.add_argument('checkpoint', help="checkpoint file, or 'none' for the config's init")
    parser.add_argument('--img', required=True, help='input image')
    parser.add_argument('--out-dir', type=folder_option, required=True,
                        help='folder for the PNG figures')
    parser.add_argument('--size', type=int_option(INPUT_SIDE, MIN_INPUT_SIZE), default=224,
                        help=f'the image is resized to SIZE x SIZE, SIZE >= {MIN_INPUT_SIZE} '
                        '(default 224)')
    parser.add_argument('--device', type=device_option, default='cpu')
    return parser.parse_args(argv)


def build_model(config: str, checkpoint: str, device: str):
    """``(backbone, mean, std)`` of the config's model; ``checkpoint='none'``: random weights."""
    from mmengine.config import Config

    from spanet_mm.apis import init_model, spanet_backbone

    cfg = Config.fromfile(config)
    if cfg.model.get('backbone'):
        # Only the backbone is looked at, so only its weights are loaded, through SPANet's
        # Pretrained init: any spanet_mm checkpoint with a SPANet backbone of this arch fits
        # (an ImageNet classifier's into a detection config, whose new output norms start as
        # identity). 'none': random weights, not the config's Pretrained file.
        cfg.model.backbone.init_cfg = None if checkpoint == 'none' else dict(
            type='Pretrained', checkpoint=checkpoint, prefix='backbone')
    # A missing, unsafe or unfitting checkpoint, or another backbone, raises a UserError: one
    # ERROR line (run_tool).
    model = init_model(cfg, None, device)
    mean = cfg.model.get('data_preprocessor', {}).get('mean', DEFAULT_MEAN)
    std = cfg.model.get('data_preprocessor', {}).get('std', DEFAULT_STD)
    return spanet_backbone(model, config), mean, std


def read_image(path: str) -> np.ndarray:
    """The RGB image, or one error line: mmcv.imread returns None for a file OpenCV cannot
    decode in BGR (in RGB it fails with a bare ``cv2.error: !_src.empty()``)."""
    import mmcv
    if not osp.isfile(path):
        raise SystemExit(f'error: image {path} not found.')
    img = mmcv.imread(path)
    if img is None:
        raise SystemExit(f'error: cannot read {path} as an image (OpenCV cannot decode it); '
                         'give a JPEG, PNG or other image file.')
    return mmcv.bgr2rgb(img)


def load_image(img: np.ndarray, size: int, mean, std) -> torch.Tensor:
    import mmcv
    img = mmcv.imresize(img, (size, size)).astype(np.float32)
    img = (img - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return torch.from_numpy(img).permute(2, 0, 1)[None]


@torch.no_grad()
def stage_features(backbone, x: torch.Tensor):
    """The output of every stage (before the output norms)."""
    feats = []
    handles = [stage.register_forward_hook(lambda m, i, o: feats.append(o))
               for stage in backbone.stages]
    saved = backbone.out_indices
    backbone.out_indices = (backbone.num_stages - 1, )  # run every stage
    try:
        backbone(x)
    finally:
        backbone.out_indices = saved
        for h in handles:
            h.remove()
    return feats


def radial_profile(values: np.ndarray, normalised: bool = True):
    """Mean of a fftshifted 2-D map over rings of equal distance from the centre (DC)."""
    h, w = values.shape
    fy = (np.arange(h) - h // 2) / (h / 2 if normalised else 1)
    fx = (np.arange(w) - w // 2) / (w / 2 if normalised else 1)
    dist = np.sqrt(fy[:, None]**2 + fx[None, :]**2)
    if normalised:  # 0 .. pi, in bins of the coarser axis
        step = 1 / (min(h, w) / 2)
        bins = np.round(dist / step).astype(int)
        limit = int(round(1 / step))
    else:
        bins = np.round(dist).astype(int)
        limit = bins.max()
    radii, means = [], []
    for b in range(limit + 1):
        mask = bins == b
        if mask.any():
            radii.append(b * (step * np.pi if normalised else 1))
            means.append(float(values[mask].mean()))
    return np.asarray(radii), np.asarray(means)


def relative_log_amplitude(feature: torch.Tensor):
    """Radial profile of the channel-averaged log amplitude, minus its DC value."""
    spectrum = torch.fft.fftshift(torch.fft.fft2(feature.float()), dim=(-2, -1))
    log_amp = torch.log(spectrum.abs() + 1e-6).mean(dim=(0, 1)).cpu().numpy()
    freqs, profile = radial_profile(log_amp)
    return freqs, profile - profile[0]


def plot_filters(backbone, feats, path):
    lambdas = SPECTRAL_LAMBDAS
    stages = len(feats)
    fig, axes = plt.subplots(stages, len(lambdas) + 1, figsize=(3.2 * (len(lambdas) + 1),
                                                                3 * stages), squeeze=False)
    data = []
    for s, feat in enumerate(feats):
        h, w = feat.shape[-2:]
        radius = backbone.arch['radius'][s]
        entry = dict(stage=s, size=[h, w], radius=radius, filters=[])
        for j, lam in enumerate(lambdas):
            filt = spectral_filter(h, w, radius, lam).numpy()
            ax = axes[s, j]
            im = ax.imshow(filt, cmap='viridis', vmin=0, vmax=1,
                           extent=(-w // 2 - .5, w - w // 2 - .5, h - h // 2 - .5, -h // 2 - .5))
            ax.set_title(f'stage {s + 1}: lambda={lam:.1f}, r={radius}, {h}x{w}', fontsize=9)
            ax.set_xlabel('horizontal frequency bin')
            ax.set_ylabel('vertical frequency bin')
            zoom = max(radius + 3, 4)  # the interesting part: the bins around DC
            ax.set_xlim(max(-zoom, -(w // 2)) - .5, min(zoom, w - w // 2 - 1) + .5)
            ax.set_ylim(min(zoom, h - h // 2 - 1) + .5, max(-zoom, -(h // 2)) - .5)
            radii, prof = radial_profile(filt, normalised=False)
            axes[s, -1].plot(radii, prof, marker='o', label=f'lambda={lam:.1f}')
            entry['filters'].append(dict(lam=lam, radii=radii.tolist(), gain=prof.tolist()))
        fig.colorbar(im, ax=axes[s, len(lambdas) - 1], fraction=0.046)
        ax = axes[s, -1]
        ax.set_title(f'stage {s + 1}: radial profile (gain)', fontsize=9)
        ax.set_xlabel('distance from DC (bins)')
        ax.set_ylabel('gain')
        ax.set_xlim(0, min(max(h, w) / 2, 12))
        ax.set_ylim(0, 1)
        ax.grid(alpha=.3)
        ax.legend(fontsize=7)
        data.append(entry)
    fig.suptitle('SPANet spectral pooling filters (fftshifted, DC at the centre)')
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return data


def plot_spectra(feats, path):
    fig, ax = plt.subplots(figsize=(6, 4.5))
    colors = plt.cm.viridis(np.linspace(0, 0.9, len(feats)))
    data = []
    for s, (feat, color) in enumerate(zip(feats, colors)):
        freqs, rel = relative_log_amplitude(feat)
        ax.plot(freqs, rel, marker='.', color=color,
                label=f'stage {s + 1} ({feat.shape[-2]}x{feat.shape[-1]})')
        data.append(dict(stage=s, frequency=freqs.tolist(), relative_log_amplitude=rel.tolist()))
    ax.set_xlim(0, np.pi)
    ax.set_xticks([0, np.pi / 2, np.pi], ['0', 'pi/2', 'pi'])
    ax.set_xlabel('frequency (0 = DC, pi = highest)')
    ax.set_ylabel('relative log amplitude (log|F| - log|F(0)|)')
    ax.set_title('Fourier spectrum of SPANet features (averaged over channels)')
    ax.grid(alpha=.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return data


def main(argv=None):
    args = parse_args(argv)
    img = read_image(args.img)  # before the model is built
    backbone, mean, std = build_model(args.config, args.checkpoint, args.device)
    x = load_image(img, args.size, mean, std).to(args.device)
    feats = stage_features(backbone, x)
    os.makedirs(args.out_dir, exist_ok=True)
    filters = plot_filters(backbone, feats, osp.join(args.out_dir, 'spectral_filters.png'))
    spectra = plot_spectra(feats, osp.join(args.out_dir, 'feature_spectra.png'))
    with open(osp.join(args.out_dir, 'spectral_response.json'), 'w') as f:
        json.dump(dict(image=args.img, size=args.size, filters=filters, spectra=spectra), f)
    print(f'Wrote spectral_filters.png, feature_spectra.png and spectral_response.json to '
          f'{args.out_dir}')


if __name__ == '__main__':
    from spanet_mm.engine.launch import run_tool
    run_tool(main)
