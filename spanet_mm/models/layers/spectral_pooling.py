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
import threading
from collections import OrderedDict
from typing import Callable, Hashable, Sequence, Tuple, Union

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


Cached = Union[Tensor, Tuple[Tensor, ...]]


class TensorCache:
    """A least-recently-used cache of tensors that never holds more than ``max_bytes``.

    The filters and bases depend on the feature size, and detection and segmentation feed a
    new size with almost every batch (keep-ratio resizing), so an unbounded per-size cache
    grows for the whole run: on a GPU in device memory. Entries are counted by the bytes of
    their tensors; the least recently used ones are dropped when a new entry would exceed the
    budget (an entry larger than the whole budget is returned but not kept). A dropped entry
    is simply built again when its size comes back, so the budget trades memory for rebuilds,
    never exactness.

    Args:
        max_bytes (int): The budget, summed over every device and dtype.
    """

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self._entries: 'OrderedDict[Hashable, Cached]' = OrderedDict()
        self._sizes: dict = {}
        self._lock = threading.Lock()  # dataloader threads and the main thread may share it

    @property
    def nbytes(self) -> int:
        """The bytes currently held."""
        return sum(self._sizes.values())

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._entries

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._sizes.clear()

    def get(self, key: Hashable, build: Callable[[], Cached]) -> Cached:
        """The entry for ``key``, made with ``build()`` (and kept, budget permitting) if absent."""
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
                return self._entries[key]
        value = build()
        tensors = value if isinstance(value, tuple) else (value, )
        size = sum(t.numel() * t.element_size() for t in tensors)
        with self._lock:
            if size <= self.max_bytes:
                while self._entries and self.nbytes + size > self.max_bytes:
                    oldest, _ = self._entries.popitem(last=False)
                    del self._sizes[oldest]
                self._entries[key] = value
                self._sizes[key] = size
        return value


#: Every size-dependent constant of the spectral filters (FFT masks and low-rank bases) lives
#: here. 32 MiB hold the float32 bases of all four stages for about 7 COCO-sized (1333x800)
#: inputs at once. Set ``SPECTRAL_CACHE.max_bytes`` to trade memory for rebuilds: a rebuild
#: costs about 20 ms for a 200x334 stage-1 map on one CPU core, 1-3 ms for the other stages.
SPECTRAL_CACHE = TensorCache(max_bytes=32 * 2**20)


def spectral_pool_fft(x: Tensor, radius: int, lam: float) -> Tensor:
    """Reference spectral pooling through ``fft2``, as the official code computes it.

    The filter is built for the actual spatial size and cached per size; it is never modified,
    so the result does not depend on the sizes seen before (see :data:`SPECTRAL_CACHE`). Half-precision inputs are filtered
    in float32 (cuFFT's half precision supports only powers of two) and cast back.
    """
    height, width = x.shape[-2:]
    filt = SPECTRAL_CACHE.get(
        ('filter', height, width, radius, lam, x.device),
        lambda: spectral_filter(height, width, radius, lam).to(x.device))
    spectrum = torch.fft.fftshift(
        torch.fft.fft2(x.float(), norm='ortho'), dim=(-2, -1))
    spectrum = spectrum * filt
    out = torch.fft.ifft2(
        torch.fft.ifftshift(spectrum, dim=(-2, -1)), norm='ortho').real
    return out.to(x.dtype)


def _candidate_bins(radius: int) -> Tuple[Tuple[int, int], ...]:
    """Every centred offset ``(a, b)`` with ``a^2 + b^2 <= radius^2``."""
    return tuple((a, b) for a in range(-radius, radius + 1) for b in range(-radius, radius + 1)
                 if a * a + b * b <= radius**2)


def _centred(freq, size):
    """The centred (fftshifted) offset of frequency ``freq`` on an axis of ``size`` bins."""
    return (freq + size // 2) % size - size // 2


def _bin_masks(a, b, height, width):
    """Whether the grid has bin ``(a, b)``, and whether it represents its mirror pair.

    A real map's spectrum is conjugate-symmetric, so a bin and its mirror ``(-a, -b)`` share
    one real projection (their filter values are equal: the distance is symmetric). The
    representative of a pair is the lexicographically larger bin; a bin that is its own mirror
    (DC, Nyquist) represents itself and has a cosine mode only. Plain operators only, so that
    this is the same code for Python ints (eager, ``torch.compile``) and for 0-d tensors
    (sizes traced into an exported graph).

    Returns:
        tuple: ``(keep, self_mirror)``, Python bools or bool tensors.
    """
    exists = ((a >= -(height // 2)) & (a <= (height - 1) // 2) & (b >= -(width // 2)) &
              (b <= (width - 1) // 2))
    mirror_a, mirror_b = _centred(-a, height), _centred(-b, width)
    self_mirror = (mirror_a == a) & (mirror_b == b)
    keep = exists & (self_mirror | (a > mirror_a) | ((a == mirror_a) & (b > mirror_b)))
    return keep, self_mirror


def fourier_modes(height, width, radius: int, dtype: torch.dtype,
                  device: torch.device) -> Tuple[Tensor, Tensor]:
    """Real orthonormal Fourier modes of every bin within ``radius`` of DC, for an
    ``(height, width)`` map: the one derivation of the low-rank basis.

    The representative ``(a, b)`` of each mirror pair (see :func:`_bin_masks`) gives the modes
    ``cos(theta)`` and ``sin(theta)``, ``theta = 2 pi (a h / H + b w / W)``, computed from 1-D
    waves by the angle-sum rule (``O(H + W)`` trigonometry), each scaled to unit norm
    (``sqrt(2 / (H W))``; ``sqrt(1 / (H W))`` for a self-mirror bin, whose sine is zero).

    ``height`` and ``width`` are Python ints (eager, ``torch.compile``): then only the modes of
    this grid are built, at most 13. Or they are 0-d integer tensors (tracing for export, where
    the graph must follow dynamic sizes): then every candidate bin gets its two rows and the
    modes this grid does not have are zero rows, so that the result has a fixed row count.

    Returns:
        tuple[Tensor, Tensor]: ``basis`` ``(J, height * width)`` with orthonormal (or zero)
        rows, and a bool ``on_circle`` ``(J, )``: which modes belong to bins at exactly
        ``radius`` (filter 1/3) rather than inside it (filter ``lambda``).
    """
    traced = isinstance(height, Tensor) or isinstance(width, Tensor)
    bins = _candidate_bins(radius)
    if traced:
        a = torch.tensor([i for i, _ in bins], device=device)
        b = torch.tensor([j for _, j in bins], device=device)
        keep, self_mirror = _bin_masks(a, b, height, width)
        keep, self_mirror = keep.to(dtype), self_mirror.to(dtype)
        cos_scale = keep * (math.sqrt(2) - (math.sqrt(2) - 1) * self_mirror)
        sin_scale = keep * (1 - self_mirror) * math.sqrt(2)
        scales = torch.cat([cos_scale, sin_scale])
        bins_used = bins
    else:
        masks = [_bin_masks(i, j, height, width) for i, j in bins]
        bins_used = [bin_ for bin_, (keep, _) in zip(bins, masks) if keep]
        self_mirror = [bool(mirror) for keep, mirror in masks if keep]
        scales = None
    rows = torch.arange(height, device=device).to(dtype)
    cols = torch.arange(width, device=device).to(dtype)
    off_a = torch.tensor([i for i, _ in bins_used], dtype=dtype, device=device)
    off_b = torch.tensor([j for _, j in bins_used], dtype=dtype, device=device)
    # 1-D waves, then cos/sin(x + y) = cos x cos y -/+ sin x sin y.
    size_h, size_w = (height.to(dtype), width.to(dtype)) if traced else (height, width)
    phase_h = off_a[:, None] * rows[None, :] * (2 * math.pi / size_h)
    phase_w = off_b[:, None] * cols[None, :] * (2 * math.pi / size_w)
    cos_h, sin_h = torch.cos(phase_h)[:, :, None], torch.sin(phase_h)[:, :, None]
    cos_w, sin_w = torch.cos(phase_w)[:, None, :], torch.sin(phase_w)[:, None, :]
    cos_modes = (cos_h * cos_w - sin_h * sin_w).flatten(1)
    sin_modes = (sin_h * cos_w + cos_h * sin_w).flatten(1)
    norm = torch.rsqrt(torch.as_tensor(size_h * size_w, dtype=dtype, device=device))
    circle = [i * i + j * j == radius**2 for i, j in bins_used]
    if traced:
        basis = torch.cat([cos_modes, sin_modes]) * (scales * norm)[:, None]
        on_circle = torch.tensor(circle + circle, device=device)
        return basis, on_circle
    # Ints: the cosine of every kept bin, the sine of those that are not their own mirror.
    sin_idx = [k for k, mirror in enumerate(self_mirror) if not mirror]
    scale = torch.tensor([1.0 if m else math.sqrt(2) for m in self_mirror] +
                         [math.sqrt(2)] * len(sin_idx), dtype=dtype, device=device)
    basis = torch.cat([cos_modes, sin_modes[sin_idx]]) * (scale * norm)[:, None]
    on_circle = torch.tensor(circle + [circle[k] for k in sin_idx], device=device)
    return basis, on_circle


def spectral_basis(height: int, width: int, radius: int, dtype: torch.dtype,
                   device: torch.device) -> Tuple[Tensor, Tensor]:
    """:func:`fourier_modes` for int sizes (built in float64, then cast to ``dtype`` on
    ``device``), kept in :data:`SPECTRAL_CACHE`.

    Returns:
        tuple[Tensor, Tensor]: ``basis`` of shape ``(J, height * width)`` with orthonormal rows
        (``J <= 13``) and a boolean ``on_circle`` of shape ``(J,)`` telling which modes belong
        to bins at exactly ``radius`` (filter 1/3) rather than inside it (filter ``lambda``).
    """
    def build() -> Tuple[Tensor, Tensor]:
        basis, on_circle = fourier_modes(height, width, radius, torch.float64,
                                         torch.device('cpu'))
        return basis.to(device=device, dtype=dtype), on_circle.to(device)

    return SPECTRAL_CACHE.get(('basis', height, width, radius, dtype, device), build)


def chunk_sizes(channels: int, chunks: int) -> Sequence[int]:
    """Channel counts of ``torch.chunk(x, chunks, dim=1)``: ceil-sized, the last takes the rest."""
    size = -(-channels // chunks)
    sizes = []
    remaining = channels
    while remaining > 0:
        sizes.append(min(size, remaining))
        remaining -= size
    return sizes
