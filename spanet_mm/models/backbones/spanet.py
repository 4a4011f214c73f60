# Copyright (c) spanet_mm contributors. All rights reserved.
import os.path as osp
import re
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.utils.checkpoint as cp
from mmcv.cnn import build_norm_layer
from mmcv.cnn.bricks import DropPath
from mmengine.logging import MMLogger
from mmengine.model import BaseModule, Sequential, trunc_normal_init
from mmengine.runner.checkpoint import _load_checkpoint
from torch import Tensor
from torch.nn.modules.batchnorm import _BatchNorm

from ...checkpoint import (CheckpointMismatchError, CheckpointNotFoundError, check_state_dict,
                           compare_state_dicts, refuse_non_finite)
from ...registry import register_model
from ..layers import AutocastConv2d, SpectralPoolingMixer
from ..layers.activation import build_mlp_activation
from ..layers.fused import FusedResidualConv1x1, FusedResidualMlp, scaled_map
from ..layers.spam import is_channels_last, is_exporting

#: Smallest input side: the stride-32 last stage must keep at least one pixel.
MIN_INPUT_SIZE = 32
#: State-dict keys of the output norms (``norm{i}``, one per index in ``out_indices``).
OUTPUT_NORM = re.compile(r'norm\d+\.')


class ConvMlp(nn.Module):
    """Channel MLP on NCHW maps: 1x1 conv, activation, 1x1 conv."""

    def __init__(self, in_channels: int, hidden_channels: int, act_cfg: dict):
        super().__init__()
        self.fc1 = AutocastConv2d(in_channels, hidden_channels, 1)
        self.act = build_mlp_activation(act_cfg)
        self.fc2 = AutocastConv2d(hidden_channels, in_channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class SPANetBlock(BaseModule):
    """One MetaFormer block of SPANet.

    ``x = s1 * x + DropPath(SPAM(norm1(x)))``, then ``x = s2 * x + DropPath(MLP(norm2(x)))``.
    ``s1`` and ``s2`` are learnable per-channel scales on the shortcut (not on the residual
    branch), which the official model has in its last two stages only.

    Args:
        dim (int): Number of channels.
        radius (int): Spectral pooling radius of the token mixer.
        mlp_ratio (float): Hidden width of the MLP relative to ``dim``. Defaults to 4.
        norm_cfg (dict): Config of the two norm layers.
        act_cfg (dict): Config of the MLP activation.
        drop_path_rate (float): Stochastic depth rate. Defaults to 0.
        shortcut_scale (bool): Whether to learn the shortcut scales. Defaults to False.
        spectral_impl (str): Token mixer formulation, see :class:`SpectralPoolingMixer`.
        with_cp (bool): Trade compute for memory with activation checkpointing.
            Defaults to False.
        init_cfg (dict, optional): Initialization config. Defaults to None.
    """

    def __init__(self,
                 dim: int,
                 radius: int,
                 mlp_ratio: float = 4.,
                 norm_cfg: dict = dict(type='GN', num_groups=1),
                 act_cfg: dict = dict(type='GELU'),
                 drop_path_rate: float = 0.,
                 shortcut_scale: bool = False,
                 spectral_impl: str = 'auto',
                 with_cp: bool = False,
                 init_cfg: Optional[dict] = None):
        super().__init__(init_cfg=init_cfg)
        self.with_cp = with_cp
        self.norm1 = build_norm_layer(norm_cfg, dim)[1]
        # Under with_cp the whole block is recomputed: the mixer need not recompute again.
        self.token_mixer = SpectralPoolingMixer(
            dim, radius, spectral_impl, recompute=False if with_cp else None)
        self.norm2 = build_norm_layer(norm_cfg, dim)[1]
        self.mlp = ConvMlp(dim, int(dim * mlp_ratio), act_cfg)
        self.drop_path = DropPath(drop_path_rate) if drop_path_rate > 0 else nn.Identity()
        self.deploy = False
        if shortcut_scale:
            self.shortcut_scale1 = nn.Parameter(torch.ones(dim))
            self.shortcut_scale2 = nn.Parameter(torch.ones(dim))
        else:
            self.shortcut_scale1 = self.shortcut_scale2 = None

    @staticmethod
    def _normed(norm: nn.Module, x: Tensor) -> Tensor:
        """``norm(x)`` in ``x``'s memory format. Eager GroupNorm keeps channels_last, but its
        meta kernel, which ``torch.compile`` traces with, returns NCHW: the compiled block
        would then run its convs on NCHW maps (oneDNN re-lays them out at every conv)."""
        out = norm(x)
        return out.contiguous(memory_format=torch.channels_last) if is_channels_last(x) else out

    def _forward(self, x: Tensor) -> Tensor:
        x = scaled_map(x, self.shortcut_scale1) + self.drop_path(
            self.token_mixer(self._normed(self.norm1, x)))
        x = scaled_map(x, self.shortcut_scale2) + self.drop_path(
            self.mlp(self._normed(self.norm2, x)))
        return x

    def forward(self, x: Tensor) -> Tensor:
        if self.deploy:
            return self._forward_deploy(x)
        if self.with_cp and torch.is_grad_enabled():
            return cp.checkpoint(self._forward, x, use_reentrant=False)
        return self._forward(x)

    def _forward_deploy(self, x: Tensor) -> Tensor:
        x = self.mixer_residual(self.token_mixer(self._normed(self.norm1, x)), x)
        return self.mlp_residual(self._normed(self.norm2, x), x)

    def switch_to_deploy(self) -> None:
        """Inference form (see :meth:`SPANet.switch_to_deploy`): ``proj_out`` with the first
        residual add, and the MLP with the second, become :mod:`..layers.fused` GEMMs that
        accumulate onto the shortcut; the mixer fuses its ``pw_i`` once."""
        if self.deploy:
            return
        self.token_mixer.switch_to_deploy()
        self.mixer_residual = FusedResidualConv1x1(self.token_mixer.proj_out,
                                                   self.shortcut_scale1)
        self.token_mixer.proj_out = nn.Identity()  # applied by mixer_residual
        self.mlp_residual = FusedResidualMlp(self.mlp, self.shortcut_scale2)
        del self.mlp, self.drop_path, self.shortcut_scale1, self.shortcut_scale2
        self.deploy = True


@register_model
class SPANet(BaseModule):
    """SPANet backbone.

    A PyTorch implementation of `SPANet: Frequency-balancing Token Mixer using Spectral Pooling
    Aggregation Modulation <https://arxiv.org/abs/2308.11568>`_ (ICCV 2023), numerically equal
    to the official model (https://github.com/DoranLyong/SPANet-official) at any input size.

    Args:
        arch (str | dict): SPANet architecture. A string picks one of
            :attr:`arch_settings` (``'s'``, ``'m'``, ``'mx'``, ``'b'``, ``'bx'``). A dict must
            have these keys:

            - **layers** (list[int]): Number of blocks in each stage.
            - **embed_dims** (list[int]): Number of channels of each stage.

            and may have these:

            - **mlp_ratios** (list[float]): MLP width ratio per stage. Defaults to 4 each.
            - **radius** (list[int]): Spectral pooling radius per stage. Defaults to
              ``[2, 2, 1, 1]`` (required for other than 4 stages).

            Defaults to ``'s'``.
        in_channels (int): Number of input image channels. Defaults to 3.
        out_indices (int | Sequence[int]): Stages (0-based, negatives count from the end)
            whose normalized outputs are returned. Defaults to -1, the last stage.
        frozen_stages (int): -1 freezes nothing, 0 the stem, ``k`` the stem and the first
            ``k`` stages (their output norms included). Defaults to -1.
        norm_eval (bool): Keep BatchNorm layers in eval mode during training (no effect with
            the default GroupNorm). Defaults to False.
        drop_path_rate (float): Stochastic depth rate, growing linearly from 0 over the
            blocks. Defaults to 0.
        norm_cfg (dict): Norm layers. Defaults to ``dict(type='GN', num_groups=1)``.
        act_cfg (dict): MLP activation. Defaults to ``dict(type='GELU')`` (exact GELU).
        spectral_impl (str): How the spectral pooling is computed: ``'auto'`` (the FFT-free
            low-rank form), ``'lowrank'``, or ``'fft'`` (the official formulation, a
            reference). All are exact. Defaults to ``'auto'``.
        with_cp (bool): Use activation checkpointing in every block. Defaults to False.
        init_cfg (dict | list[dict], optional): Initialization config. None (the default)
            is the official from-scratch init (see :meth:`init_weights`). A ``Pretrained``
            dict loads converted weights; its optional key ``load_out_norms`` (a sequence of
            stage indices) names the output norms taken from the checkpoint, and the others
            start new (weight 1, bias 0); without it every output norm the checkpoint has is
            loaded. Any other config is applied by mmengine instead of the official init.

    Note:
        Each output is passed through its own ``norm{i}``. For the last stage this is the
        official classifier's final norm, so a ``GlobalAveragePooling`` neck and a linear head
        complete the official classifier.
    """

    arch_settings: Dict[str, dict] = {
        's': dict(layers=[4, 4, 12, 4], embed_dims=[64, 128, 320, 512]),
        'm': dict(layers=[6, 6, 18, 6], embed_dims=[64, 128, 320, 512]),
        'mx': dict(layers=[8, 8, 24, 8], embed_dims=[64, 128, 320, 512]),
        'b': dict(layers=[6, 6, 18, 6], embed_dims=[96, 192, 384, 768]),
        'bx': dict(layers=[8, 8, 24, 8], embed_dims=[96, 192, 384, 768]),
    }
    default_radius = [2, 2, 1, 1]
    #: Run the stages channels_last (NHWC) on CPU, whatever the input layout (see forward).
    cpu_channels_last: bool = True

    def __init__(self,
                 arch: Union[str, dict] = 's',
                 in_channels: int = 3,
                 out_indices: Union[int, Sequence[int]] = -1,
                 frozen_stages: int = -1,
                 norm_eval: bool = False,
                 drop_path_rate: float = 0.,
                 norm_cfg: dict = dict(type='GN', num_groups=1),
                 act_cfg: dict = dict(type='GELU'),
                 spectral_impl: str = 'auto',
                 with_cp: bool = False,
                 init_cfg: Optional[Union[dict, List[dict]]] = None):
        super().__init__(init_cfg=init_cfg)
        self.arch = self._parse_arch(arch)
        layers = self.arch['layers']
        embed_dims = self.arch['embed_dims']
        self.num_stages = len(layers)
        self.embed_dims = list(embed_dims)
        assert isinstance(in_channels, int) and in_channels > 0, \
            f'in_channels must be a positive int, but got {in_channels!r}.'
        # Each block drops its branch with a rate growing from 0 to this one: a rate of 1 or
        # more zeroes the last blocks' branches (and DropPath divides by 1 - rate).
        assert isinstance(drop_path_rate, (int, float)) and 0 <= drop_path_rate < 1, \
            f'drop_path_rate must be a number in [0, 1), but got {drop_path_rate!r}.'
        self.in_channels = in_channels
        self.out_indices = self._parse_out_indices(out_indices, self.num_stages)
        assert isinstance(frozen_stages, int) and -1 <= frozen_stages <= self.num_stages, \
            f'frozen_stages must be an int in [-1, {self.num_stages}] (-1 freezes nothing), ' \
            f'but got {frozen_stages!r}.'
        self.frozen_stages = frozen_stages
        self.norm_eval = norm_eval
        self.deploy = False

        # Stem (index 0) and the stride-2 downsampling convs that open stages 1..n-1.
        self.downsample_layers = nn.ModuleList(
            [AutocastConv2d(in_channels, embed_dims[0], kernel_size=7, stride=4, padding=2)])
        for i in range(1, self.num_stages):
            self.downsample_layers.append(
                AutocastConv2d(
                    embed_dims[i - 1], embed_dims[i], kernel_size=3, stride=2, padding=1))

        drop_path_rates = torch.linspace(0, drop_path_rate, sum(layers)).tolist()
        self.stages = nn.ModuleList()
        block_idx = 0
        for i, depth in enumerate(layers):
            self.stages.append(Sequential(*[
                SPANetBlock(
                    embed_dims[i],
                    radius=self.arch['radius'][i],
                    mlp_ratio=self.arch['mlp_ratios'][i],
                    norm_cfg=norm_cfg,
                    act_cfg=act_cfg,
                    drop_path_rate=drop_path_rates[block_idx + j],
                    # The official model scales the shortcut from the third stage on.
                    shortcut_scale=i >= 2,
                    spectral_impl=spectral_impl,
                    with_cp=with_cp) for j in range(depth)
            ]))
            block_idx += depth

        for i in self.out_indices:
            self.add_module(f'norm{i}', build_norm_layer(norm_cfg, embed_dims[i])[1])

        self._freeze_stages()

    @classmethod
    def _parse_arch(cls, arch: Union[str, dict]) -> dict:
        if isinstance(arch, str):
            assert arch.lower() in cls.arch_settings, \
                f'Unavailable arch {arch!r}, please choose from ' \
                f'({set(cls.arch_settings)}) or pass a dict.'
            arch = cls.arch_settings[arch.lower()]
        assert isinstance(arch, dict), \
            f'arch must be a str or a dict, but got {type(arch).__name__}.'
        assert 'layers' in arch and 'embed_dims' in arch, \
            f'The arch dict must have "layers" and "embed_dims", but got {sorted(arch)}.'
        unknown = set(arch) - {'layers', 'embed_dims', 'mlp_ratios', 'radius'}
        assert not unknown, \
            f'Unknown arch keys {sorted(unknown)}; allowed: layers, embed_dims, mlp_ratios, radius.'
        num_stages = len(arch['layers'])
        assert num_stages > 0, 'The arch "layers" must not be empty.'
        assert len(arch['embed_dims']) == num_stages, \
            f'The arch "embed_dims" has {len(arch["embed_dims"])} entries but "layers" has ' \
            f'{num_stages} stages; they must have one entry per stage.'
        if num_stages == len(cls.default_radius):
            default_radius = cls.default_radius
        else:
            assert 'radius' in arch, \
                f'The arch dict has {num_stages} stages: give "radius" for each of them.'
            default_radius = None
        parsed = dict(
            layers=list(arch['layers']),
            embed_dims=list(arch['embed_dims']),
            mlp_ratios=list(arch.get('mlp_ratios', [4] * num_stages)),
            radius=list(arch.get('radius', default_radius)))
        for key, values in parsed.items():
            assert len(values) == num_stages, \
                f'The arch "{key}" has {len(values)} entries but "layers" has {num_stages} ' \
                f'stages; they must have one entry per stage.'
        assert all(isinstance(d, int) and d > 0 for d in parsed['layers']), \
            f'The arch "layers" must be positive ints, but got {parsed["layers"]}.'
        assert all(isinstance(c, int) and c > 0 for c in parsed['embed_dims']), \
            f'The arch "embed_dims" must be positive ints, but got {parsed["embed_dims"]}.'
        assert all(isinstance(r, int) and r >= 0 for r in parsed['radius']), \
            f'The arch "radius" must be non-negative ints, but got {parsed["radius"]}.'
        # Each MLP is int(dim * ratio) wide: it needs at least one hidden channel.
        assert all(isinstance(r, (int, float)) and not isinstance(r, bool) and int(c * r) > 0
                   for c, r in zip(parsed['embed_dims'], parsed['mlp_ratios'])), \
            'The arch "mlp_ratios" must be positive numbers that leave each MLP at least one ' \
            f'hidden channel, but got {parsed["mlp_ratios"]}.'
        return parsed

    @staticmethod
    def _parse_out_indices(out_indices: Union[int, Sequence[int]],
                           num_stages: int) -> Tuple[int, ...]:
        if isinstance(out_indices, int):
            out_indices = [out_indices]
        assert isinstance(out_indices, (list, tuple)) and len(out_indices) > 0, \
            f'out_indices must be an int or a non-empty sequence of ints, but got {out_indices!r}.'
        parsed = []
        for index in out_indices:
            assert isinstance(index, int) and -num_stages <= index < num_stages, \
                f'Invalid out_indices {tuple(out_indices)}: each must be a stage index in ' \
                f'[{-num_stages}, {num_stages - 1}], but got {index!r}.'
            parsed.append(index % num_stages)
        assert len(set(parsed)) == len(parsed), \
            f'out_indices {tuple(out_indices)} name the same stage twice.'
        return tuple(sorted(parsed))

    def _check_input(self, x: Tensor) -> None:
        if not torch.is_tensor(x):
            raise TypeError(f'SPANet expects a torch.Tensor, but got {type(x).__name__}.')
        if not x.is_floating_point():
            raise TypeError(
                f'SPANet expects a floating-point input, but got {x.dtype}: convert images '
                'with .float() (the toolboxes\' data preprocessors do).')
        if x.dim() != 4 or x.shape[0] == 0:
            raise ValueError(
                f'SPANet expects a non-empty 4-D (N, C, H, W) batch, but got shape '
                f'{tuple(x.shape)}.')
        if x.shape[1] != self.in_channels:
            raise ValueError(
                f'SPANet was built with in_channels={self.in_channels}, but the input has '
                f'{x.shape[1]} channels (shape {tuple(x.shape)}).')
        if x.shape[2] < MIN_INPUT_SIZE or x.shape[3] < MIN_INPUT_SIZE:
            raise ValueError(
                f'SPANet needs inputs of at least {MIN_INPUT_SIZE}x{MIN_INPUT_SIZE} (stride 32), '
                f'but got {x.shape[2]}x{x.shape[3]}; resize or pad the image.')

    def switch_to_deploy(self) -> 'SPANet':
        """Turns the model into its fused inference form, in place (irreversible).

        In the manner of mmpretrain's RepVGG/MobileOne ``switch_to_deploy()``: the default
        form runs every layer as a module in every mode (hooks, FLOP counters and training see
        the same graph); this one trades that for fewer passes over memory on CPU, where the
        stages run NHWC: in every block ``proj_out`` and the MLP's ``fc2`` become one GEMM each
        that adds the (scaled) shortcut as its accumulator, and the MLP runs over blocks of
        tokens so that its 4x wider hidden map stays in cache, its exact GELU applied inside
        the first GEMM on CPU (:mod:`..layers.fused`); the low-rank mixer fuses its ``pw_i``
        weights once. The outputs are those of the default
        form up to float summation order (``tests`` check 1e-5 relative). Inference only:
        forward then refuses to run with gradients enabled, and the state dict has other keys
        (load weights before the switch).

        Returns:
            SPANet: ``self``, in eval mode.
        """
        for stage in self.stages:
            for block in stage:
                block.switch_to_deploy()
        self.deploy = True
        return self.eval()

    def forward(self, x: Tensor) -> Tuple[Tensor, ...]:
        self._check_input(x)
        if self.deploy and torch.is_grad_enabled():
            raise RuntimeError(
                'This SPANet was switched to its deploy form, which is for inference only: run '
                'it under torch.no_grad() or torch.inference_mode(), or build a new model for '
                'training.')
        # On CPU every 1x1 conv is a GEMM that oneDNN runs much faster on NHWC (channels_last)
        # maps than on NCHW ones, so the stages run NHWC; the outputs get the input's layout.
        out_format = torch.channels_last if is_channels_last(x) else torch.contiguous_format
        if self.cpu_channels_last and x.device.type == 'cpu' and not is_exporting():
            x = x.contiguous(memory_format=torch.channels_last)
        outs = []
        for i in range(self.num_stages):
            x = self.downsample_layers[i](x)
            x = self.stages[i](x)
            if i in self.out_indices:
                outs.append(getattr(self, f'norm{i}')(x).contiguous(memory_format=out_format))
            if i == self.out_indices[-1]:
                break  # later stages would compute outputs nobody asked for
        return tuple(outs)

    def init_weights(self) -> None:
        """Initializes the weights.

        - ``init_cfg=None``: the official model's from-scratch init. Only the two 1x1 convs of
          every MLP are drawn anew, from a truncated normal (std 0.02) with zero bias. Every
          other conv (stem, downsampling, ``proj_in``/``proj_out``, the depthwise convs, the
          spectral projections) keeps PyTorch's default init from construction (kaiming
          uniform with a=sqrt(5), std 1/sqrt(3 * fan_in)), as do the norms (weight 1, bias 0)
          and the shortcut scales (1): a blanket std 0.02 would shrink these up to tenfold.
        - ``Pretrained``: loaded and checked here. mmengine's ``PretrainedInit`` loads
          non-strictly and only logs what did not fit, so a checkpoint of another arch, or of
          another model, would silently leave random weights. Here every parameter of the
          stages must be present with the right shape; output norms not taken from the
          checkpoint start as identity (weight 1, bias 0), as in the official dense backbone.
        - Any other ``init_cfg`` is applied by mmengine, instead of the official init.
        """
        if isinstance(self.init_cfg, dict) and self.init_cfg.get('type') == 'Pretrained':
            self._load_pretrained(self.init_cfg['checkpoint'], self.init_cfg.get('prefix'),
                                  self.init_cfg.get('load_out_norms'))
            self._is_init = True
            return
        official_init = self.init_cfg is None and not self._is_init  # only on the first call
        super().init_weights()
        if official_init:
            for module in self.modules():
                if isinstance(module, ConvMlp):
                    trunc_normal_init(module.fc1, std=.02, bias=0.)
                    trunc_normal_init(module.fc2, std=.02, bias=0.)

    def _load_pretrained(self, checkpoint: str, prefix: Optional[str],
                         load_out_norms: Optional[Sequence[int]] = None) -> None:
        if '://' not in checkpoint and not osp.isfile(checkpoint):
            raise CheckpointNotFoundError(
                f'SPANet pretrained weights {checkpoint!r} not found. Convert the official '
                f'ImageNet checkpoint first:\n  python tools/model_converters/'
                f'spanet_official_to_mm.py spanet-small.pth {checkpoint}\n(pick the official '
                f'file of this arch), or train from scratch on purpose with '
                f'`--cfg-options model.backbone.init_cfg=None`.')
        # Every tensor of the stem and the stages must fit; the output norms may be absent
        # (new ones start as identity) or belong to stages this model does not output.
        own = self.state_dict()
        state_dict = check_state_dict(
            own, _load_checkpoint(checkpoint, map_location='cpu'), strict_prefixes=('', ),
            allowed_missing=(OUTPUT_NORM, ), source=checkpoint, prefix=prefix)
        if load_out_norms is not None:
            state_dict = self._select_out_norms(state_dict, load_out_norms, checkpoint)
        incompatible = self.load_state_dict(
            {k: v for k, v in state_dict.items() if k in own}, strict=False)
        if incompatible.missing_keys:
            MMLogger.get_current_instance().info(
                f'SPANet: {incompatible.missing_keys} not in {checkpoint}; '
                'these output norms start as identity.')

    def _select_out_norms(self, state_dict: dict, load_out_norms: Sequence[int],
                          checkpoint: str) -> dict:
        """Drops the output norms that ``init_cfg.load_out_norms`` does not name.

        A converted ImageNet checkpoint holds the classifier's final norm as the last stage's
        output norm; the official dense backbone does not use it (its output norms start new),
        so the dense configs load none.
        """
        wanted = {index % self.num_stages for index in load_out_norms}
        assert wanted <= set(self.out_indices), \
            f'init_cfg.load_out_norms={tuple(load_out_norms)} names stages without an output ' \
            f'norm; out_indices are {self.out_indices}.'
        absent = [f'norm{i}' for i in sorted(wanted) if f'norm{i}.weight' not in state_dict]
        if absent:
            raise ValueError(f'{checkpoint} has no {absent}, which init_cfg.load_out_norms '
                             'asks for.')
        return {k: v for k, v in state_dict.items()
                if not OUTPUT_NORM.match(k) or int(k[4:k.index('.')]) in wanted}

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        """Refuses backbone tensors that cannot be this model's, whoever loads them.

        ``load_state_dict(strict=False)``, mmengine's ``load_checkpoint`` and everything on it
        (mmpretrain's ``get_model(pretrained=...)``, the inferencers) only log a tensor of
        another shape or a key the model does not have, and keep the initial weights: a file of
        another arch would silently run half random. Both mean the file is not this model's,
        so both are refused here (SPANet's output norms of other stages excepted), as are NaN
        or inf values; a key the file lacks stays allowed, as ``strict=False`` promises partial
        loads.
        """
        given = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
        own = self.state_dict()
        fit = compare_state_dicts(own, given, allowed_missing=(OUTPUT_NORM, ))
        if given and (fit.mismatched or fit.unexpected):
            if self.deploy:
                fix = ('this model is in its deploy form, whose keys differ: load the weights '
                       'before switch_to_deploy(), or use a checkpoint of this arch')
            elif not fit.fitting and not fit.mismatched:
                fix = 'none of them is a SPANet tensor: they are weights of another model'
            else:
                fix = 'use the checkpoint of this arch, or the config it was trained with'
            raise CheckpointMismatchError(
                f'These weights do not fit this SPANet (arch {self.arch}'
                f'{", deploy form" if self.deploy else ""}): '
                f'{len(fit.mismatched)} tensor(s) of another shape {fit.mismatched[:3]}, '
                f'{len(fit.unexpected)} it does not have {fit.unexpected[:3]} (under '
                f'{prefix or "the top level"!r}): {fix}.')
        refuse_non_finite(given, fit.fitting, f'These weights of SPANet (under {prefix!r})')
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _freeze_stages(self) -> None:
        modules = []
        if self.frozen_stages >= 0:
            modules.append(self.downsample_layers[0])
        for i in range(self.frozen_stages):
            if i > 0:
                modules.append(self.downsample_layers[i])
            modules.append(self.stages[i])
            if i in self.out_indices:
                modules.append(getattr(self, f'norm{i}'))
        for module in modules:
            module.eval()
            for param in module.parameters():
                param.requires_grad = False

    def train(self, mode: bool = True) -> 'SPANet':
        super().train(mode)
        self._freeze_stages()
        if mode and self.norm_eval:
            for module in self.modules():
                if isinstance(module, _BatchNorm):
                    module.eval()
        return self
