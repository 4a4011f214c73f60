# Copyright (c) spanet_mm contributors. All rights reserved.
"""SPAM, SPANet's token mixer (spectral pooling aggregation modulation)."""
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from .spectral_pooling import (BOUNDARY_GAIN, SPECTRAL_LAMBDAS, chunk_sizes,
                               pass_gain, spectral_basis, spectral_pool_fft)

SPECTRAL_IMPLS = ('auto', 'lowrank', 'fft')


class SpectralPoolingMixer(nn.Module):
    """SPAM: modulates a depthwise-conv context with spectrally pooled copies of itself.

    ``x -> proj_in -> dw 1x7 -> dw 7x1 -> x * ctx -> proj_out``, where
    ``ctx = sum_i pw_i(SPF_i(chunk_i(x)))`` and ``SPF_i`` is the spectral pooling filter with
    ``SPECTRAL_LAMBDAS[i]`` (see :mod:`.spectral_pooling`).

    Two exact formulations of ``ctx`` are available:

    - ``'lowrank'`` (what ``'auto'`` selects): the filter is ``1 - lambda`` everywhere but on a
      few bins around DC, and ``pw_i`` is linear, so ``ctx`` is a single 1x1 conv of ``x`` with
      each ``pw_i`` scaled by ``1 - lambda_i``, plus a correction of rank <= 13 computed from
      the projections of ``x`` onto real Fourier modes. No FFT and no complex tensors.
    - ``'fft'``: the official per-chunk ``fft2 -> filter -> ifft2``, as a reference.

    Args:
        dim (int): Number of channels.
        radius (int): Radius of the spectral pooling circle, in frequency bins.
        spectral_impl (str): ``'auto'``, ``'lowrank'`` or ``'fft'``. Defaults to ``'auto'``.
    """

    def __init__(self, dim: int, radius: int, spectral_impl: str = 'auto'):
        super().__init__()
        assert spectral_impl in SPECTRAL_IMPLS, \
            f'spectral_impl must be one of {SPECTRAL_IMPLS}, but got {spectral_impl!r}.'
        self.radius = radius
        self.spectral_impl = spectral_impl
        self.proj_in = nn.Conv2d(dim, dim, 1)
        self.dwconv_1x7 = nn.Conv2d(dim, dim, (1, 7), padding=(0, 3), groups=dim)
        self.dwconv_7x1 = nn.Conv2d(dim, dim, (7, 1), padding=(3, 0), groups=dim)
        # torch.chunk semantics (ceil-sized chunks), which the official weights are shaped for.
        self.chunk_sizes: Sequence[int] = chunk_sizes(dim, len(SPECTRAL_LAMBDAS))
        self.lambdas = SPECTRAL_LAMBDAS[:len(self.chunk_sizes)]
        self.spectral_projs = nn.ModuleList(
            nn.Conv2d(size, dim, 1) for size in self.chunk_sizes)
        self.proj_out = nn.Conv2d(dim, dim, 1)

    def _per_channel(self, gains: Sequence[float], like: Tensor) -> Tensor:
        """Expands one gain per chunk to one gain per input channel."""
        return torch.cat([
            like.new_full((size, ), gain)
            for size, gain in zip(self.chunk_sizes, gains)
        ])

    def _context_lowrank(self, x: Tensor) -> Tensor:
        batch, channels, height, width = x.shape
        weight = torch.cat([proj.weight for proj in self.spectral_projs], dim=1)
        bias = sum(proj.bias for proj in self.spectral_projs)
        weight = weight.flatten(1)  # (C_out, C_in)
        gains_far = [pass_gain(lam) for lam in self.lambdas]
        ctx = F.conv2d(x, (weight * self._per_channel(gains_far, weight)).to(x.dtype)[..., None, None],
                       bias.to(x.dtype))

        basis, on_circle = spectral_basis(height, width, self.radius, x.dtype, x.device)
        # Per mode and input channel: how much the filter deviates from 1 - lambda there.
        inside = self._per_channel([lam - far for lam, far in zip(self.lambdas, gains_far)], weight)
        circle = self._per_channel([BOUNDARY_GAIN - far for far in gains_far], weight)
        gains = torch.where(on_circle[:, None], circle[None, :], inside[None, :])  # (J, C_in)
        coeffs = torch.matmul(x.flatten(2), basis.t())  # (B, C_in, J)
        coeffs = coeffs * gains.t().to(x.dtype)
        mixed = torch.matmul(weight.to(x.dtype), coeffs)  # (B, C_out, J)
        correction = torch.matmul(mixed, basis).view(batch, channels, height, width)
        return ctx + correction

    def _context_fft(self, x: Tensor) -> Tensor:
        ctx = 0
        for chunk, lam, proj in zip(
                torch.split(x, list(self.chunk_sizes), dim=1), self.lambdas,
                self.spectral_projs):
            ctx = ctx + proj(spectral_pool_fft(chunk, self.radius, lam))
        return ctx

    def forward(self, x: Tensor) -> Tensor:
        x = self.proj_in(x)
        x = self.dwconv_7x1(self.dwconv_1x7(x))
        if self.spectral_impl == 'fft':
            ctx = self._context_fft(x)
        else:
            ctx = self._context_lowrank(x)
        return self.proj_out(x * ctx)
