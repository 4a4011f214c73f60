"""The size-dependent spectral constants: right for every key, and bounded in memory.

Detection and segmentation feed a new feature size with nearly every batch, so the cache of
Fourier bases and FFT masks must (a) never hand out a constant built for another size, radius,
dtype or device, and (b) stay within its byte budget for any sequence of sizes.
"""
import json
import os
import subprocess
import sys

import pytest

import torch

from spanet_mm.models.layers import spectral_basis, spectral_filter
from spanet_mm.models.layers.spectral_pooling import (SPECTRAL_LAMBDAS, TensorCache,
                                                      spectral_pool_fft)

CPU = torch.device('cpu')


def fft_filtered(x, radius, lam):
    """The spec's SPF written directly: fftshift(fft2) * mask, inverse (independent of the cache)."""
    height, width = x.shape[-2:]
    rows = torch.arange(height) - height // 2
    cols = torch.arange(width) - width // 2
    dist2 = rows[:, None]**2 + cols[None, :]**2
    mask = torch.full((height, width), 1 - lam, dtype=torch.float64)
    mask[dist2 < radius**2] = lam
    mask[dist2 == radius**2] = 1 / 3
    spectrum = torch.fft.fftshift(torch.fft.fft2(x, norm='ortho'), dim=(-2, -1)) * mask
    return torch.fft.ifft2(torch.fft.ifftshift(spectrum, dim=(-2, -1)), norm='ortho').real


def lowrank_filtered(x, radius, lam, dtype=torch.float64):
    """SPF through the cached basis: (1 - lambda) x + sum_k (F_k - (1 - lambda)) P_k x."""
    height, width = x.shape[-2:]
    basis, on_circle = spectral_basis(height, width, radius, dtype, CPU)
    gains = torch.where(on_circle, torch.tensor(1 / 3 - (1 - lam)), torch.tensor(lam - (1 - lam)))
    coeffs = x.reshape(-1, height * width).to(dtype) @ basis.t()
    out = (1 - lam) * x.reshape(-1, height * width) + (coeffs * gains.to(dtype)) @ basis
    return out.reshape(x.shape)


@pytest.mark.parametrize('size', [(9, 10), (8, 8), (5, 7)])
def test_every_radius_and_dtype_gets_its_own_basis(size):
    """The same size with radius 1, then 2, then 1 again, and in two dtypes: each call gives
    the filter of its own radius (a cache keyed without the radius or dtype fails here)."""
    x = torch.randn(2, 3, *size, dtype=torch.float64)
    for radius in (1, 2, 1):
        for dtype in (torch.float64, torch.float32):
            got = lowrank_filtered(x, radius, 0.8, dtype)
            torch.testing.assert_close(got.double(), fft_filtered(x, radius, 0.8),
                                       atol=1e-5, rtol=0)
    for radius in (2, 1):  # the FFT reference's own masks: one per radius and lambda
        for lam in SPECTRAL_LAMBDAS:
            torch.testing.assert_close(
                spectral_pool_fft(x.float(), radius, lam).double(), fft_filtered(x, radius, lam),
                atol=1e-5, rtol=0)


def test_fft_mask_is_the_spec_filter():
    filt = spectral_filter(6, 7, 2, 0.7)
    assert filt[3, 3] == pytest.approx(0.7) and filt[3, 5] == pytest.approx(1 / 3)
    assert filt[0, 0] == pytest.approx(0.3)


def test_lru_keeps_recent_entries_within_budget():
    cache = TensorCache(max_bytes=3 * 400)
    built = []

    def make(key):
        built.append(key)
        return torch.zeros(100)  # 400 bytes

    for key in 'abcab':
        cache.get(key, lambda key=key: make(key))
    assert built == ['a', 'b', 'c'] and cache.nbytes == 1200
    cache.get('d', lambda: make('d'))  # evicts 'c', the least recently used
    assert 'c' not in cache and {'a', 'b', 'd'} <= {k for k in 'abcd' if k in cache}
    assert cache.nbytes <= cache.max_bytes
    big = cache.get('big', lambda: torch.zeros(1000))  # larger than the budget: not kept
    assert big.numel() == 1000 and 'big' not in cache and len(cache) == 3


def coco_like_sizes(count):
    """Keep-ratio resize into 1333x800 for random image shapes (mmdet's 1x resize), padded to 4
    only: padding to 32 as mmdet's 1x pipeline does leaves fewer distinct sizes (an easier case)."""
    gen = torch.Generator().manual_seed(0)
    sizes = []
    for _ in range(count):
        height, width = torch.randint(240, 641, (2, ), generator=gen).tolist()
        scale = min(1333 / max(height, width), 800 / min(height, width))
        pad = [-(-round(side * scale) // 4) * 4 for side in (height, width)]
        sizes.append(tuple(pad))
    return sizes


PEAK_MEMORY_SCRIPT = r'''
import json, resource, sys
import torch
from spanet_mm.models import SPANet
from spanet_mm.models.layers.spectral_pooling import SPECTRAL_CACHE
torch.set_num_threads(1)
sizes = json.loads(sys.argv[1])
model = SPANet(arch=dict(layers=[1, 1, 1, 1], embed_dims=[3, 6, 9, 12]), init_cfg=None).eval()
peak = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # MiB (Linux: KiB)


def run_mixers(height, width):
    """Every stage's token mixer (the one layer of SPANet that keeps per-size state, through
    the cache) on the map size that stage has for a height x width input (conv arithmetic: the
    7x7 stride-4 stem with padding 2, then 3x3 stride-2 convs with padding 1)."""
    height, width = (height - 3) // 4 + 1, (width - 3) // 4 + 1
    for i, (stage, dim) in enumerate(zip(model.stages, model.arch['embed_dims'])):
        if i:
            height, width = (height - 1) // 2 + 1, (width - 1) // 2 + 1
        x = torch.zeros(1, dim, height, width).contiguous(memory_format=torch.channels_last)
        stage[0].token_mixer(x)


with torch.no_grad():
    # The activations' peak: the largest height and width together, before the run.
    run_mixers(max(h for h, _ in sizes), max(w for _, w in sizes))
    warm, cached = peak(), 0
    for h, w in sizes:
        run_mixers(h, w)
        cached = max(cached, SPECTRAL_CACHE.nbytes)
print(json.dumps(dict(warm=warm, end=peak(), cached=cached,
                      budget=SPECTRAL_CACHE.max_bytes, entries=len(SPECTRAL_CACHE))))
'''


@pytest.mark.slow
def test_peak_memory_bounded_over_300_coco_sizes():
    """A tiny SPANet's token mixers over the stage sizes of 300 COCO-like inputs in a fresh
    process: the cache stays within its budget after every size, and peak memory grows by at
    most 100 MiB over the peak of one input of the largest size (an unbounded per-size cache
    grows by ~650 MiB here)."""
    sizes = coco_like_sizes(300)
    assert len(set(sizes)) > 150  # mostly new sizes, as in a detection run
    # A fixed mmap threshold returns every freed tensor to the OS, so that the peak measures
    # live memory rather than glibc's heap fragmentation (its threshold adapts otherwise).
    # oneDNN keeps a per-shape cache of conv kernels of its own (torch's, bounded by
    # ONEDNN_PRIMITIVE_CACHE_CAPACITY, ~60 MiB over these shapes): turned off, to measure ours.
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_='131072', ONEDNN_PRIMITIVE_CACHE_CAPACITY='0')
    out = subprocess.run([sys.executable, '-c', PEAK_MEMORY_SCRIPT, json.dumps(sizes)],
                         capture_output=True, text=True, cwd='/', env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report['cached'] <= report['budget']
    assert report['end'] - report['warm'] <= 100, report


