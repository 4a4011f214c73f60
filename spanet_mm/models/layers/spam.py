# Copyright (c) spanet_mm contributors. All rights reserved.
"""SPAM, SPANet's token mixer (spectral pooling aggregation modulation)."""
from typing import List, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint as cp
from torch import Tensor

from .precision import AutocastConv2d, float32_kernels_under_emulated_autocast
from .spectral_pooling import (BOUNDARY_GAIN, SPECTRAL_LAMBDAS, chunk_sizes, fourier_modes,
                               pass_gain, spectral_basis, spectral_pool_fft)

SPECTRAL_IMPLS = ('auto', 'lowrank', 'fft')


def is_exporting() -> bool:
    """Whether the forward is being traced, scripted or exported (sizes become graph values)."""
    return torch.jit.is_scripting() or torch.jit.is_tracing() or \
        torch.onnx.is_in_onnx_export()


def is_channels_last(x: Tensor) -> bool:
    """Whether ``x`` is laid out NHWC (and not also plain NCHW-contiguous)."""
    return not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)


def project(x: Tensor, basis: Tensor) -> Tensor:
    """Coefficients ``(B, C, J)`` of every channel of ``x`` on the rows of ``basis`` (J, H*W).

    Works on NCHW and NHWC (channels_last) layouts without copying ``x``.
    """
    batch, channels = x.shape[:2]
    if is_channels_last(x):
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
    if is_channels_last(base):
        tokens = base.permute(0, 2, 3, 1).reshape(batch, height * width, channels)
        out = torch.baddbmm(tokens, basis.t().expand(batch, height * width, num_modes),
                            coeffs.transpose(1, 2))
        return out.view(batch, height, width, channels).permute(0, 3, 1, 2)
    out = torch.baddbmm(base.reshape(batch, channels, height * width), coeffs,
                        basis.expand(batch, num_modes, height * width))
    return out.view(batch, channels, height, width)


class SpectralPoolingMixer(nn.Module):
    """SPAM: modulates a depthwise-conv context with spectrally pooled copies of itself.

    ``x -> proj_in -> dw 1x7 -> dw 7x1 -> x * ctx -> proj_out``, where
    ``ctx = sum_i pw_i(SPF_i(chunk_i(x)))`` and ``SPF_i`` is the spectral pooling filter with
    ``SPECTRAL_LAMBDAS[i]`` (see :mod:`.spectral_pooling`).

    Two exact formulations of ``ctx``, each written once (:meth:`context_lowrank`,
    :meth:`context_fft`) and used in every mode (training, no-grad inference, autocast, either
    memory format, ``torch.compile``, ONNX export):

    - ``'lowrank'`` (what ``'auto'`` selects): the filter is ``1 - lambda`` everywhere but on a
      few bins around DC, and ``pw_i`` is linear, so ``ctx`` is one 1x1 conv of ``x`` with the
      ``pw_i`` weights side by side, each scaled by ``1 - lambda_i``, plus a correction of
      rank <= 13 on the real Fourier modes near DC (:func:`.fourier_modes`). No FFT and no
      complex tensors. The ``pw_i`` are therefore applied through their weights, never called
      as modules (in every mode alike).
    - ``'fft'``: the official per-chunk ``fft2 -> filter -> ifft2``, then each ``pw_i`` module.

    The modules called are the same in every mode. With ``recompute`` (the default for
    ``'lowrank'``) and gradients enabled, everything after ``proj_in`` (the depthwise convs,
    the context, the modulation and ``proj_out``) runs under
    ``torch.utils.checkpoint``: only its input is kept for backward and the sub-graph is
    recomputed there (its modules run again, so forward hooks fire again during backward).
    This holds under autocast too.

    Nothing is stored on the module between calls: the Fourier bases are cached per
    (size, radius, dtype, device) in :func:`.spectral_basis` (a bounded LRU), and built in the
    graph when tracing for export.

    Args:
        dim (int): Number of channels.
        radius (int): Radius of the spectral pooling circle, in frequency bins.
        spectral_impl (str): ``'auto'``, ``'lowrank'`` or ``'fft'``. Defaults to ``'auto'``.
        recompute (bool, optional): Recompute the part after ``proj_in`` in backward instead
            of keeping its activations. Defaults to None: True for the low-rank form, False
            for the FFT reference (which keeps the official model's autograd graph).
    """

    def __init__(self, dim: int, radius: int, spectral_impl: str = 'auto',
                 recompute: bool = None):
        super().__init__()
        assert spectral_impl in SPECTRAL_IMPLS, \
            f'spectral_impl must be one of {SPECTRAL_IMPLS}, but got {spectral_impl!r}.'
        self.radius = radius
        self.spectral_impl = spectral_impl
        self.recompute = spectral_impl != 'fft' if recompute is None else recompute
        self.proj_in = AutocastConv2d(dim, dim, 1)
        self.dwconv_1x7 = AutocastConv2d(dim, dim, (1, 7), padding=(0, 3), groups=dim)
        self.dwconv_7x1 = AutocastConv2d(dim, dim, (7, 1), padding=(3, 0), groups=dim)
        # torch.chunk semantics (ceil-sized chunks), which the official weights are shaped for.
        self.chunk_sizes: List[int] = list(chunk_sizes(dim, len(SPECTRAL_LAMBDAS)))
        self.lambdas = SPECTRAL_LAMBDAS[:len(self.chunk_sizes)]
        self.spectral_projs = nn.ModuleList(
            AutocastConv2d(size, dim, 1) for size in self.chunk_sizes)
        self.proj_out = AutocastConv2d(dim, dim, 1)
        self.deploy = False
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

        Differentiable with respect to the ``pw_i`` parameters; after :meth:`switch_to_deploy`
        the ones computed then.
        """
        if self.deploy:
            return (self.context_weight.to(dtype), self.context_bias.to(dtype))
        projs = list(self.spectral_projs)  # a ModuleList slice would build a Module per call
        weight = torch.cat([proj.weight for proj in projs], dim=1).flatten(1)
        bias = projs[0].bias
        for proj in projs[1:]:
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

    def fourier_basis(self, x: Tensor) -> Tuple[Tensor, Tensor]:
        """The modes of ``x``'s spatial size in ``x``'s dtype: ``(basis, on_circle)``.

        From the bounded cache when the sizes are ints (eager); built in the graph from the
        traced sizes when exporting, so that the graph follows dynamic input sizes; and built in
        the graph under ``torch.compile`` (same function, int or symbolic sizes).
        """
        if is_exporting():
            sizes = torch._shape_as_tensor(x)[-2:].to(x.device)
            basis, on_circle = fourier_modes(sizes[0], sizes[1], self.radius, torch.float32,
                                             x.device)
            return basis.to(x.dtype), on_circle
        height, width = x.shape[-2:]
        if torch.compiler.is_compiling():
            basis, on_circle = fourier_modes(height, width, self.radius, torch.float32, x.device)
            return basis.to(x.dtype), on_circle
        return spectral_basis(height, width, self.radius, x.dtype, x.device)

    @float32_kernels_under_emulated_autocast
    def context_lowrank(self, x: Tensor) -> Tensor:
        """``ctx`` in the exact low-rank form (the one place it is written)."""
        basis, on_circle = self.fourier_basis(x)
        weight, bias = self.fused_context_weights(x.dtype)
        ctx = F.conv2d(x, weight[..., None, None], bias)
        mixed = torch.matmul(weight, project(x, basis) * self._mode_gains(on_circle, basis))
        return expand_add(ctx, mixed.to(ctx.dtype), basis.to(ctx.dtype))

    def context_fft(self, x: Tensor) -> Tensor:
        """``ctx`` as the official model computes it: ``sum_i pw_i(SPF_i(chunk_i))``."""
        ctx = 0
        for chunk, lam, proj in zip(
                torch.split(x, self.chunk_sizes, dim=1), self.lambdas, self.spectral_projs):
            ctx = ctx + proj(spectral_pool_fft(chunk, self.radius, lam))
        return ctx

    def modulate(self, x: Tensor) -> Tensor:
        """``proj_out(dw(x) * ctx(dw(x)))`` for ``x = proj_in(input)``."""
        x = self.dwconv_7x1(self.dwconv_1x7(x))
        ctx = self.context_fft(x) if self.spectral_impl == 'fft' else self.context_lowrank(x)
        return self.proj_out(x * ctx)

    def switch_to_deploy(self) -> None:
        """Inference form of the low-rank mixer: the ``pw_i`` weights, fused and scaled once
        here instead of at every call, replace the ``pw_i`` convs (the FFT reference keeps
        them). Irreversible; see :meth:`SPANet.switch_to_deploy`."""
        if self.deploy or self.spectral_impl == 'fft':
            return
        weight, bias = self.fused_context_weights(torch.float32)
        self.context_weight = nn.Parameter(weight.detach().clone(), requires_grad=False)
        self.context_bias = nn.Parameter(bias.detach().clone(), requires_grad=False)
        del self.spectral_projs
        self.deploy = True

    def forward(self, x: Tensor) -> Tensor:
        x = self.proj_in(x)
        if self.recompute and torch.is_grad_enabled():
            return cp.checkpoint(self.modulate, x, use_reentrant=False)
        return self.modulate(x)
