# Copyright (c) spanet_mm contributors. All rights reserved.
"""SPANet's spectral pooling filter and its two exact implementations.

The official model filters each channel with a fixed circular mask in the centred (fftshifted)
2-D spectrum: bins closer to DC than ``radius`` are scaled by ``lambda``, bins exactly on the circle
by 1/3 and every other bin by ``1 - lambda``. Because the mask is constant almost everywhere it can
be applied without an FFT::

    SPF(x) = (1 - lambda) * x + sum_k (F_k - (1 - lambda)) * P_k(x)

where ``P_k`` projects onto the real Fourier mode ``k`` and only the (at most 13) bins within
``radius`` of DC contribute. :func:`spectral_basis` builds those modes as an orthonormal real basis
for a given feature size; :func:`spectral_pool_fft` is the literal FFT formulation, kept as the
reference.
"""
import math
from typing import Dict, Sequence, Tuple

import torch
from torch import Tensor

#: The official code takes ``torch.arange(0.7, 0.9, 0.1)`` in float32, which has three elements
#: (the end is reached by rounding). These are those values, one per channel chunk.
SPECTRAL_LAMBDAS: Tuple[float, ...] = tuple(
    torch.tensor([0.7, 0.8, 0.9], dtype=torch.float32).tolist())

#: The filter value on the circle (``d == radius``), as the official float32 constant.
BOUNDARY_GAIN: float = torch.tensor(1 / 3, dtype=torch.float32).item()


def pass_gain(lam: float) -> float:
    """``1 - lambda`` rounded to float32, the filter value far from DC."""
    return (1 - torch.tensor(lam, dtype=torch.float32)).item()


def _centred_offsets(size: int) -> Tensor:
    """Signed frequency of every bin of an fftshifted axis (DC sits at ``size // 2``)."""
    return torch.arange(size) - size // 2


def _squared_distance(height: int, width: int) -> Tensor:
    rows = _centred_offsets(height)
    cols = _centred_offsets(width)
    return rows[:, None]**2 + cols[None, :]**2


def spectral_filter(height: int, width: int, radius: int, lam: float) -> Tensor:
    """The official circular filter for an ``(height, width)`` map, in fftshifted layout.

    Returns:
        Tensor: A float32 ``(height, width)`` tensor with values ``lambda`` (inside the
        circle), 1/3 (on it) and ``1 - lambda`` (outside).
    """
    dist2 = _squared_distance(height, width)
    filt = torch.full((height, width), pass_gain(lam), dtype=torch.float32)
    filt[dist2 < radius**2] = lam
    filt[dist2 == radius**2] = BOUNDARY_GAIN
    return filt


_FFT_FILTERS: Dict[tuple, Tensor] = {}


def spectral_pool_fft(x: Tensor, radius: int, lam: float) -> Tensor:
    """Reference spectral pooling through ``fft2``, as the official code computes it.

    The filter is built for the actual spatial size and cached per size; it is never modified,
    so the result does not depend on the sizes seen before. Half-precision inputs are filtered
    in float32 (cuFFT's half precision supports only powers of two) and cast back.
    """
    height, width = x.shape[-2:]
    key = (height, width, radius, lam, x.device)
    filt = _FFT_FILTERS.get(key)
    if filt is None:
        filt = spectral_filter(height, width, radius, lam).to(x.device)
        _FFT_FILTERS[key] = filt
    spectrum = torch.fft.fftshift(
        torch.fft.fft2(x.float(), norm='ortho'), dim=(-2, -1))
    spectrum = spectrum * filt
    out = torch.fft.ifft2(
        torch.fft.ifftshift(spectrum, dim=(-2, -1)), norm='ortho').real
    return out.to(x.dtype)


def _build_spectral_basis(height: int, width: int,
                          radius: int) -> Tuple[Tensor, Tensor]:
    """Real orthonormal Fourier modes of every bin within ``radius`` of DC (float64).

    A bin ``(a, b)`` and its mirror ``(-a, -b)`` share one filter value (the distance is
    symmetric), so together they span the real modes ``cos(theta)`` and ``sin(theta)`` with
    ``theta = 2 pi (a h / H + b w / W)``. A bin that is its own mirror (DC, Nyquist) only has the
    cosine mode.
    """
    rows = _centred_offsets(height).tolist()
    cols = _centred_offsets(width).tolist()

    def mirror(offset: int, size: int) -> int:
        return (-offset + size // 2) % size - size // 2

    grid_h = torch.arange(height, dtype=torch.float64)[:, None] / height
    grid_w = torch.arange(width, dtype=torch.float64)[None, :] / width
    modes, on_circle, seen = [], [], set()
    for a in rows:
        for b in cols:
            dist2 = a * a + b * b
            if dist2 > radius**2 or (a, b) in seen:
                continue
            partner = (mirror(a, height), mirror(b, width))
            seen.update({(a, b), partner})
            theta = 2 * math.pi * (a * grid_h + b * grid_w)
            waves = [torch.cos(theta)]
            if partner != (a, b):
                waves.append(torch.sin(theta))
            for wave in waves:
                modes.append(wave / wave.norm())
                on_circle.append(dist2 == radius**2)
    basis = torch.stack(modes).reshape(len(modes), height * width)
    return basis, torch.tensor(on_circle)


_BASES: Dict[tuple, Tuple[Tensor, Tensor]] = {}


def spectral_basis(height: int, width: int, radius: int, dtype: torch.dtype,
                   device: torch.device) -> Tuple[Tensor, Tensor]:
    """Cached :func:`_build_spectral_basis`, keyed by size, radius, dtype and device.

    Returns:
        tuple[Tensor, Tensor]: ``basis`` of shape ``(J, height * width)`` with orthonormal rows
        (``J <= 13``) and a boolean ``on_circle`` of shape ``(J,)`` telling which modes belong
        to bins at exactly ``radius`` (filter 1/3) rather than inside it (filter ``lambda``).
    """
    key = (height, width, radius, dtype, device)
    cached = _BASES.get(key)
    if cached is None:
        basis, on_circle = _build_spectral_basis(height, width, radius)
        cached = (basis.to(device=device, dtype=dtype), on_circle.to(device))
        _BASES[key] = cached
    return cached


def chunk_sizes(channels: int, chunks: int) -> Sequence[int]:
    """Channel counts of ``torch.chunk(x, chunks, dim=1)``: ceil-sized, the last takes the rest."""
    size = -(-channels // chunks)
    sizes = []
    remaining = channels
    while remaining > 0:
        sizes.append(min(size, remaining))
        remaining -= size
    return sizes
