# Copyright (c) spanet_mm contributors. All rights reserved.
"""SPAM, SPANet's token mixer (spectral pooling aggregation modulation)."""
import math
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from .spectral_pooling import (BOUNDARY_GAIN, SPECTRAL_LAMBDAS, chunk_sizes,
                               pass_gain, spectral_basis, spectral_pool_fft)

SPECTRAL_IMPLS = ('auto', 'lowrank', 'fft')


def _is_tracing() -> bool:
    """Whether the forward is being compiled, scripted, traced or exported."""
    compiler = getattr(torch, 'compiler', None)
    if compiler is not None and hasattr(compiler, 'is_compiling') and compiler.is_compiling():
        return True
    return torch.jit.is_scripting() or torch.jit.is_tracing() or \
        torch.onnx.is_in_onnx_export()


def _channels_last(x: Tensor) -> bool:
    """Whether ``x`` is laid out NHWC (and not also plain NCHW-contiguous)."""
    return not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)


def project(x: Tensor, basis: Tensor) -> Tensor:
    """Coefficients ``(B, C, J)`` of every channel of ``x`` on the rows of ``basis`` (J, H*W).

    Works on NCHW and NHWC (channels_last) layouts without copying ``x``.
    """
    batch, channels = x.shape[:2]
    if _channels_last(x):
        tokens = x.permute(0, 2, 3, 1).reshape(batch, -1, channels)  # (B, N, C), a view
        return torch.matmul(basis, tokens).transpose(1, 2)
    return torch.matmul(x.reshape(batch, channels, -1), basis.t())


def expand_add(base: Tensor, coeffs: Tensor, basis: Tensor) -> Tensor:
    """``base + coeffs @ basis`` in ``base``'s layout, in one pass (``baddbmm``).

    Args:
        base (Tensor): ``(B, C, H, W)`` map.
        coeffs (Tensor): ``(B, C, J)`` coefficients on the modes ``basis`` (J, H*W).
    """
    batch, channels, height, width = base.shape
    num_modes = basis.shape[0]
    if _channels_last(base):
        tokens = base.permute(0, 2, 3, 1).reshape(batch, height * width, channels)
        out = torch.baddbmm(tokens, basis.t().expand(batch, height * width, num_modes),
                            coeffs.transpose(1, 2))
        return out.view(batch, height, width, channels).permute(0, 3, 1, 2)
    out = torch.baddbmm(base.reshape(batch, channels, height * width), coeffs,
                        basis.expand(batch, num_modes, height * width))
    return out.view(batch, channels, height, width)


def _conv_backward(grad: Tensor, inp: Tensor, weight: Tensor, padding: Sequence[int],
                   groups: int, mask: Sequence[bool]) -> Tuple[Optional[Tensor], ...]:
    """``(grad_input, grad_weight, grad_bias)`` of a stride-1 ``conv2d`` (autograd's kernel)."""
    return torch.ops.aten.convolution_backward(
        grad, inp, weight, [weight.shape[0]], [1, 1], list(padding), [1, 1], False, [0, 0],
        groups, list(mask))


class _LowRankSpam(torch.autograd.Function):
    """SPAM after ``proj_in``, saving only its input for backward.

    Forward: ``x = dw_7x1(dw_1x7(p))``, ``ctx = conv1x1(x, weight, bias) + (weight @
    (gains * proj(x))) @ basis``, ``out = proj_out(x * ctx)``. The plain autograd graph would
    keep the two depthwise outputs, ``ctx`` and ``x * ctx`` (four maps of the block's size);
    here they are recomputed in backward from ``p`` (two depthwise convs, one 1x1 conv), with
    the same kernels as autograd uses, so the gradients are the plain graph's.
    """

    @staticmethod
    def forward(ctx_, p, w1, b1, w2, b2, weight, bias, gains, basis, w_out, b_out):
        ctx_.save_for_backward(p, w1, b1, w2, b2, weight, bias, gains, basis, w_out)
        _, _, _, _, mod = _LowRankSpam._recompute(p, w1, b1, w2, b2, weight, bias, gains, basis)
        return F.conv2d(mod, w_out, b_out)

    @staticmethod
    def _recompute(p, w1, b1, w2, b2, weight, bias, gains, basis):
        channels = p.shape[1]
        d1 = F.conv2d(p, w1, b1, padding=(0, 3), groups=channels)
        x = F.conv2d(d1, w2, b2, padding=(3, 0), groups=channels)
        scaled = project(x, basis) * gains  # (B, C_in, J)
        ctx = expand_add(F.conv2d(x, weight[..., None, None], bias),
                         torch.matmul(weight, scaled), basis)
        return d1, x, scaled, ctx, x * ctx

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx_, grad_out):
        p, w1, b1, w2, b2, weight, bias, gains, basis, w_out = ctx_.saved_tensors
        need = ctx_.needs_input_grad
        channels = p.shape[1]
        with torch.no_grad():
            d1, x, scaled, ctx, mod = _LowRankSpam._recompute(
                p, w1, b1, w2, b2, weight, bias, gains, basis)
            grad_mod, grad_w_out, grad_b_out = _conv_backward(
                grad_out, mod, w_out, (0, 0), 1, (True, need[9], need[10]))
            del mod
            grad_ctx = grad_mod * x
            grad_x = grad_mod * ctx
            del grad_mod, ctx
            # ctx = conv1x1(x, weight) + bias + (weight @ scaled) @ basis
            grad_x_conv, grad_weight, grad_bias = _conv_backward(
                grad_ctx, x, weight[..., None, None], (0, 0), 1, (True, need[5], need[6]))
            grad_mixed = project(grad_ctx, basis)  # (B, C_out, J)
            del grad_ctx
            if grad_weight is not None:
                grad_weight = grad_weight.flatten(1) + torch.matmul(
                    grad_mixed, scaled.transpose(1, 2)).sum(0)
            grad_scaled = torch.matmul(weight.t(), grad_mixed) * gains
            grad_x = expand_add(grad_x + grad_x_conv, grad_scaled, basis)
            del grad_x_conv
            grad_d1, grad_w2, grad_b2 = _conv_backward(
                grad_x, d1, w2, (3, 0), channels, (True, need[3], need[4]))
            del grad_x
            grad_p, grad_w1, grad_b1 = _conv_backward(
                grad_d1, p, w1, (0, 3), channels, (need[0], need[1], need[2]))
        return (grad_p, grad_w1, grad_b1, grad_w2, grad_b2, grad_weight, grad_bias, None, None,
                grad_w_out, grad_b_out)


class SpectralPoolingMixer(nn.Module):
    """SPAM: modulates a depthwise-conv context with spectrally pooled copies of itself.

    ``x -> proj_in -> dw 1x7 -> dw 7x1 -> x * ctx -> proj_out``, where
    ``ctx = sum_i pw_i(SPF_i(chunk_i(x)))`` and ``SPF_i`` is the spectral pooling filter with
    ``SPECTRAL_LAMBDAS[i]`` (see :mod:`.spectral_pooling`).

    Two exact formulations of ``ctx`` are available:

    - ``'lowrank'`` (what ``'auto'`` selects): the filter is ``1 - lambda`` everywhere but on a
      few bins around DC, and ``pw_i`` is linear, so ``ctx`` is a single 1x1 conv of ``x`` with
      each ``pw_i`` scaled by ``1 - lambda_i``, plus a correction of rank <= 13 computed from
      the projections of ``x`` onto real Fourier modes. No FFT and no complex tensors. When
      gradients are recorded (outside autocast and compilation) the part after ``proj_in``
      runs as one autograd function that keeps only its input and recomputes the rest in
      backward, so training needs less memory than with the plain graph.
    - ``'fft'``: the official per-chunk ``fft2 -> filter -> ifft2``, as a reference.

    Nothing is stored on the module between calls: the Fourier bases are cached per
    (size, radius, dtype, device) in :func:`spectral_basis`.

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
        self.chunk_sizes: List[int] = list(chunk_sizes(dim, len(SPECTRAL_LAMBDAS)))
        self.lambdas = SPECTRAL_LAMBDAS[:len(self.chunk_sizes)]
        self.spectral_projs = nn.ModuleList(
            nn.Conv2d(size, dim, 1) for size in self.chunk_sizes)
        self.proj_out = nn.Conv2d(dim, dim, 1)
        gains_far = [pass_gain(lam) for lam in self.lambdas]
        # Per input channel: the filter far from DC (1 - lambda), and the relative deviation
        # from it inside the circle and on it: (F - (1 - lambda)) / (1 - lambda).
        # Non-persistent buffers: the state dict is unchanged.
        self.register_buffer('_gain_far', self._per_channel(gains_far), persistent=False)
        # The correction multiplies the far-scaled weight, hence the division (in float64).
        self.register_buffer(
            '_gain_inside',
            self._per_channel([(lam - far) / far for lam, far in zip(self.lambdas, gains_far)]),
            persistent=False)
        self.register_buffer(
            '_gain_circle',
            self._per_channel([(BOUNDARY_GAIN - far) / far for far in gains_far]),
            persistent=False)

    def _per_channel(self, gains: Sequence[float]) -> Tensor:
        """Expands one gain per chunk to one float32 gain per input channel."""
        return torch.cat([
            torch.full((size, ), gain, dtype=torch.float32)
            for size, gain in zip(self.chunk_sizes, gains)
        ])

    def fused_context_weights(self, dtype: torch.dtype) -> Tuple[Tensor, Tensor]:
        """The ``pw_i`` as one ``(C_out, C_in)`` matrix scaled by ``1 - lambda_i``, and its bias.

        Differentiable with respect to the ``pw_i`` parameters.
        """
        weight = torch.cat([proj.weight for proj in self.spectral_projs], dim=1).flatten(1)
        bias = self.spectral_projs[0].bias
        for proj in self.spectral_projs[1:]:
            bias = bias + proj.bias
        far = self._gain_far.to(weight.device, weight.dtype)
        return (weight * far).to(dtype), bias.to(dtype)

    def _mode_gains(self, on_circle: Tensor, like: Tensor) -> Tensor:
        """``(C_in, J)``: ``(F - (1 - lambda)) / (1 - lambda)`` for every channel and mode.

        The correction ``(weight @ (gains * coeffs)) @ basis`` uses the fused weight, which is
        already scaled by ``1 - lambda``.
        """
        inside = self._gain_inside.to(like.device, like.dtype)
        circle = self._gain_circle.to(like.device, like.dtype)
        return torch.where(on_circle[None, :], circle[:, None], inside[:, None])

    def _lowrank_inputs(self, x: Tensor, dtype: torch.dtype):
        height, width = x.shape[-2:]
        basis, on_circle = spectral_basis(height, width, self.radius, dtype, x.device)
        weight, bias = self.fused_context_weights(dtype)
        return weight, bias, self._mode_gains(on_circle, basis), basis

    def _context_lowrank(self, x: Tensor) -> Tensor:
        weight, bias, gains, basis = self._lowrank_inputs(x, x.dtype)
        ctx = F.conv2d(x, weight[..., None, None], bias)
        mixed = torch.matmul(weight, project(x, basis) * gains)
        return expand_add(ctx, mixed.to(ctx.dtype), basis.to(ctx.dtype))

    def _context_traceable(self, x: Tensor) -> Tensor:
        """The lowrank context with the Fourier modes built from ``x``'s shape by tensor ops.

        Used when compiling or exporting, so that the graph holds no size-specific constant and
        follows dynamic input sizes. Every candidate bin ``(a, b)`` with ``a^2 + b^2 <= r^2`` is
        projected separately with its complex exponential, ``Re(e e^H x) / (H W) = (c c^T + s
        s^T) x / (H W)`` for ``c, s = cos, sin(2 pi (a h / H + b w / W))``; a bin that the
        (fftshifted) grid of this size does not have gets gain 0. The bins of a grid are
        distinct, so this equals the filter for every size, odd, even and tiny ones included.
        """
        offsets = [(a, b) for a in range(-self.radius, self.radius + 1)
                   for b in range(-self.radius, self.radius + 1)
                   if a * a + b * b <= self.radius**2]
        off_a = torch.tensor([a for a, _ in offsets], dtype=torch.float32, device=x.device)
        off_b = torch.tensor([b for _, b in offsets], dtype=torch.float32, device=x.device)
        if torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
            # Sizes as graph values, so that exported graphs follow dynamic input sizes.
            sizes = torch._shape_as_tensor(x)[-2:].to(x.device)
            height, width = sizes[0], sizes[1]
        else:  # eager or torch.compile (ints or symbolic ints)
            height, width = x.shape[-2], x.shape[-1]
        # Which candidate bins the fftshifted grid has: -(n // 2) <= offset <= (n - 1) // 2.
        exists = ((off_a >= -(height // 2)) & (off_a <= (height - 1) // 2) &
                  (off_b >= -(width // 2)) & (off_b <= (width - 1) // 2)).to(torch.float32)
        rows, cols = torch.arange(height, device=x.device), torch.arange(width, device=x.device)
        exists = exists / (rows.shape[0] * cols.shape[0] if isinstance(height, int) else
                           (height * width).to(torch.float32))
        if not isinstance(height, int):
            height, width = height.to(torch.float32), width.to(torch.float32)
        rows, cols = rows.to(torch.float32), cols.to(torch.float32)
        theta = (off_a[:, None, None] * rows[None, :, None] / height +
                 off_b[:, None, None] * cols[None, None, :] / width) * (2 * math.pi)
        basis = torch.cat([torch.cos(theta), torch.sin(theta)]).reshape(2 * len(offsets), -1)
        on_circle = torch.tensor([a * a + b * b == self.radius**2 for a, b in offsets],
                                 device=x.device)
        gains = self._mode_gains(on_circle, off_a) * exists
        gains = torch.cat([gains, gains], dim=1)  # (C_in, 2K): the cos and the sin modes
        weight, bias = self.fused_context_weights(x.dtype)
        basis = basis.to(x.dtype)
        ctx = F.conv2d(x, weight[..., None, None], bias)
        mixed = torch.matmul(weight, project(x, basis) * gains.to(x.dtype))
        return expand_add(ctx, mixed.to(ctx.dtype), basis.to(ctx.dtype))

    def _context_fft(self, x: Tensor) -> Tensor:
        ctx = 0
        for chunk, lam, proj in zip(
                torch.split(x, self.chunk_sizes, dim=1), self.lambdas, self.spectral_projs):
            ctx = ctx + proj(spectral_pool_fft(chunk, self.radius, lam))
        return ctx

    def _use_memory_efficient(self, x: Tensor) -> bool:
        return (torch.is_grad_enabled() and not _is_tracing()
                and not torch.is_autocast_enabled(x.device.type)
                and x.dtype in (torch.float32, torch.float64))

    def forward(self, x: Tensor) -> Tensor:
        if self.spectral_impl != 'fft' and self._use_memory_efficient(x):
            x = self.proj_in(x)
            weight, bias, gains, basis = self._lowrank_inputs(x, x.dtype)
            return _LowRankSpam.apply(
                x, self.dwconv_1x7.weight, self.dwconv_1x7.bias, self.dwconv_7x1.weight,
                self.dwconv_7x1.bias, weight, bias, gains, basis, self.proj_out.weight,
                self.proj_out.bias)
        return self.proj_out(self.modulate(x))

    def depthwise(self, x: Tensor) -> Tensor:
        """``dw_7x1(dw_1x7(proj_in(x)))``: the map that the spectral context modulates."""
        return self.dwconv_7x1(self.dwconv_1x7(self.proj_in(x)))

    def modulate(self, x: Tensor) -> Tensor:
        """Everything but ``proj_out``: ``x * ctx`` (a plain autograd graph)."""
        x = self.depthwise(x)
        if self.spectral_impl == 'fft':
            ctx = self._context_fft(x)
        elif _is_tracing():
            ctx = self._context_traceable(x)
        else:
            ctx = self._context_lowrank(x)
        return x * ctx
