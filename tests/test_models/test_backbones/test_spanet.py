"""SPANet backbone: arch validation, outputs, freezing, input checks, statelessness."""
import numpy as np
import pytest
import torch
import torch.nn as nn

from conftest import OpsRun, saved_bytes
from spanet_mm import SPANet
from spanet_mm.models.backbones.spanet import SPANetBlock

TINY = dict(layers=[1, 1, 1, 1], embed_dims=[8, 16, 24, 32])


def build(**kwargs):
    kwargs.setdefault('arch', TINY)
    kwargs.setdefault('init_cfg', None)
    return SPANet(**kwargs)


@pytest.mark.parametrize('arch, message', [
    ('tiny', 'Unavailable arch'),
    (dict(layers=[1, 1, 1, 1]), 'must have "layers" and "embed_dims"'),
    (dict(layers=[1, 1, 1], embed_dims=[8, 16, 24, 32]), '"embed_dims" has 4 entries'),
    (dict(TINY, mlp_ratios=[4, 4]), '"mlp_ratios" has 2 entries'),
    (dict(TINY, radius=[2, 2, 1]), '"radius" has 3 entries'),
    (dict(TINY, depths=[1, 1, 1, 1]), 'Unknown arch keys'),
    (dict(layers=[1, 1], embed_dims=[8, 16]), 'give "radius"'),
    (dict(layers=[1, 0, 1, 1], embed_dims=[8, 16, 24, 32]), 'positive ints'),
    (dict(layers=[1, 1, 1, 1], embed_dims=[8, 0, 24, 32]), '"embed_dims" must be positive ints'),
    # A negative radius builds no low-rank modes, while the FFT mask still has a circle at
    # radius**2: the two formulations would disagree silently.
    (dict(TINY, radius=[2, 2, 1, -1]), '"radius" must be non-negative ints'),
])
def test_arch_validation(arch, message):
    with pytest.raises(AssertionError, match=message):
        SPANet(arch=arch, init_cfg=None)


@pytest.mark.parametrize('kwargs, message', [
    (dict(spectral_impl='FFT'), "spectral_impl must be one of .*but got 'FFT'"),
    (dict(frozen_stages=5), r'frozen_stages must be an int in \[-1, 4\]'),
    (dict(out_indices=4), r'each must be a stage index in \[-4, 3\]'),
    (dict(out_indices=(1, -3)), 'name the same stage twice'),
])
def test_argument_validation(kwargs, message):
    with pytest.raises(AssertionError, match=message):
        build(**kwargs)


def test_presets_match_official_sizes():
    # Backbone-only counts of the official model (no head, no fixed filters, one output norm).
    expected = {'s': 28_092_096, 'm': 41_173_952, 'mx': 54_255_808, 'b': 75_087_168,
                'bx': 98_949_312}
    for name, count in expected.items():
        model = SPANet(arch=name, init_cfg=None)
        assert sum(p.numel() for p in model.parameters()) == count, name


@pytest.mark.parametrize('arch', ['s', 'b'])  # between them every preset width
def test_presets_split_channels_as_torch_chunk(arch):
    # The official mixer splits with torch.chunk(x, 3, dim=1): ceil-sized chunks, the last
    # takes the rest (64 -> 22, 22, 20; tensor_split would give 22, 21, 21), which the
    # official pw_i weights are shaped for. Widths divisible by 3 split into equal thirds.
    model = SPANet(arch=arch, init_cfg=None)
    for stage in model.stages:
        mixer = stage[0].token_mixer
        dim = mixer.proj_in.in_channels
        expected = [chunk.shape[1] for chunk in torch.chunk(torch.empty(1, dim), 3, dim=1)]
        assert [p.in_channels for p in mixer.spectral_projs] == expected, dim
    spec = {64: [22, 22, 20], 128: [43, 43, 42], 320: [107, 107, 106], 512: [171, 171, 170],
            96: [32] * 3, 192: [64] * 3, 384: [128] * 3, 768: [256] * 3}
    for stage in model.stages:
        mixer = stage[0].token_mixer
        assert mixer.chunk_sizes == spec[mixer.proj_in.in_channels]


def test_custom_arch_structure():
    model = build(arch=dict(layers=[1, 2, 1, 1], embed_dims=[8, 16, 24, 32],
                            mlp_ratios=[2, 3, 4, 4], radius=[1, 2, 0, 1]), out_indices=(0, 1, 2, 3))
    assert [len(stage) for stage in model.stages] == [1, 2, 1, 1]
    block = model.stages[1][1]
    assert block.mlp.fc1.out_channels == 48
    assert block.token_mixer.radius == 2
    # torch.chunk sizes: ceil(16 / 3) = 6 -> 6, 6, 4.
    assert [p.in_channels for p in block.token_mixer.spectral_projs] == [6, 6, 4]
    # Shortcut scales only in the last two stages.
    assert model.stages[1][0].shortcut_scale1 is None
    assert model.stages[2][0].shortcut_scale1.shape == (24, )
    # A five-stage arch works when radius is given.
    five = build(arch=dict(layers=[1] * 5, embed_dims=[8] * 5, radius=[2, 2, 1, 1, 0]),
                 out_indices=-1)
    assert five(torch.rand(1, 3, 64, 64))[0].shape == (1, 8, 1, 1)


def test_drop_path_grows_linearly():
    model = build(arch=dict(layers=[2, 1, 1, 1], embed_dims=[8, 16, 24, 32]), drop_path_rate=0.4)
    rates = [m.drop_prob for m in model.modules() if type(m).__name__ == 'DropPath']
    # Block 0 has rate 0 (an Identity), blocks 1..4 have 0.1 .. 0.4.
    assert rates == pytest.approx([0.1, 0.2, 0.3, 0.4])
    assert isinstance(model.stages[0][0].drop_path, nn.Identity)


@pytest.mark.parametrize('out_indices, stages', [
    (-1, [3]), (3, [3]), ((0, 1, 2, 3), [0, 1, 2, 3]), ([-4, -2], [0, 2]), ((2, 0), [0, 2])])
def test_out_indices(out_indices, stages):
    given = out_indices if isinstance(out_indices, int) else type(out_indices)(out_indices)
    model = build(out_indices=given)
    assert given == out_indices  # the caller's object is never rewritten
    outs = model(torch.rand(2, 3, 64, 96))
    assert isinstance(outs, tuple)
    assert [o.shape for o in outs] == [
        (2, TINY['embed_dims'][i], 64 // 2**(i + 2), 96 // 2**(i + 2)) for i in stages]
    assert {n for n, _ in model.named_children() if n.startswith('norm')} == {
        f'norm{i}' for i in stages}


@pytest.mark.parametrize('channels_last', [False, True], ids=['nchw', 'nhwc'])
def test_outputs_keep_the_input_memory_format(channels_last):
    """The stages run NHWC on CPU whatever the input, but every output comes back in the
    input's layout, as a plain conv's would (a caller's .view() on an NCHW output works)."""
    model = build(out_indices=(0, 1, 2, 3)).eval()
    x = torch.rand(2, 3, 64, 96)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    with torch.no_grad():
        outs = model(x)
    for i, out in enumerate(outs):
        assert out.is_contiguous(memory_format=fmt), i
        assert out.is_contiguous() != channels_last, i  # 2x3 maps or more: the two differ


@pytest.mark.parametrize('out_indices', [4, -5, (0, 4), (1, 1), (), '0', (0.5, )])
def test_bad_out_indices(out_indices):
    with pytest.raises(AssertionError, match='out_indices'):
        build(out_indices=out_indices)


@pytest.mark.parametrize('frozen_stages', [-2, 5, 1.0])
def test_bad_frozen_stages(frozen_stages):
    with pytest.raises(AssertionError, match='frozen_stages'):
        build(frozen_stages=frozen_stages)


@pytest.mark.parametrize('rate', [1.0, 1.5, -0.1, '0.1', None])
def test_bad_drop_path_rate(rate):
    # A rate of 1 made the last block's DropPath divide by 0 (NaN loss in training).
    with pytest.raises(AssertionError, match='drop_path_rate'):
        build(drop_path_rate=rate)


@pytest.mark.parametrize('mlp_ratios', [[0, 4, 4, 4], [4, -1, 4, 4], '4444', [0.1, 4, 4, 4],
                                        [True, 4, 4, 4]])
def test_bad_mlp_ratios(mlp_ratios):
    # 0.1 leaves int(8 * 0.1) = 0 hidden channels at stage 0 of the tiny arch.
    with pytest.raises(AssertionError, match='mlp_ratios'):
        build(arch=dict(TINY, mlp_ratios=mlp_ratios))


@pytest.mark.parametrize('in_channels', [0, -3, '3', 3.0])
def test_bad_in_channels(in_channels):
    with pytest.raises(AssertionError, match='in_channels'):
        build(in_channels=in_channels)


def _trainable(module):
    return [p.requires_grad for p in module.parameters()]


@pytest.mark.parametrize('frozen_stages', [-1, 0, 1, 2, 4])
def test_frozen_stages(frozen_stages):
    model = build(frozen_stages=frozen_stages, out_indices=(0, 1, 2, 3))
    model.train()
    for i in range(4):
        frozen_downsample = i <= frozen_stages if i == 0 else i < frozen_stages
        frozen_stage = i < frozen_stages
        down, stage, norm = model.downsample_layers[i], model.stages[i], getattr(model, f'norm{i}')
        assert all(not t for t in _trainable(down)) == frozen_downsample
        assert all(t for t in _trainable(down)) == (not frozen_downsample)
        assert down.training == (not frozen_downsample)
        for module in (stage, norm):
            assert all(t for t in _trainable(module)) == (not frozen_stage)
            assert all(not t for t in _trainable(module)) == frozen_stage
            assert all(m.training != frozen_stage for m in module.modules())


def test_frozen_stages_survive_train_and_train_returns_self():
    model = build(frozen_stages=1)
    assert model.train() is model
    assert model.eval() is model
    model.train()
    assert not model.stages[0].training and model.stages[1].training
    # Frozen parameters receive no gradient.
    model(torch.rand(1, 3, 32, 32))[0].sum().backward()
    assert model.stages[0][0].mlp.fc1.weight.grad is None
    assert model.stages[1][0].mlp.fc1.weight.grad is not None


def test_norm_eval_keeps_batchnorm_in_eval():
    model = build(norm_cfg=dict(type='BN'), norm_eval=True, out_indices=(0, 1, 2, 3))
    model.train()
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert norms and all(not m.training for m in norms)
    model = build(norm_cfg=dict(type='BN'), norm_eval=False)
    model.train()
    assert all(m.training for m in model.modules() if isinstance(m, nn.BatchNorm2d))


@pytest.mark.parametrize('shape, message', [
    ((3, 64, 64), '4-D'),
    ((1, 3, 64, 64, 1), '4-D'),
    ((1, 1, 64, 64), 'in_channels=3, but the input has 1 channels'),
    ((1, 3, 31, 64), 'at least 32x32'),
    ((1, 3, 64, 16), 'at least 32x32'),
])
def test_bad_input(shape, message):
    with pytest.raises(ValueError, match=message):
        build()(torch.rand(*shape))


def test_empty_batch_is_refused():
    with pytest.raises(ValueError, match='non-empty 4-D'):
        build()(torch.rand(0, 3, 64, 64))


@pytest.mark.parametrize('image', [
    torch.randint(0, 255, (1, 3, 64, 64), dtype=torch.uint8),
    torch.zeros(1, 3, 64, 64, dtype=torch.int64),
    np.zeros((1, 3, 64, 64), dtype=np.float32)])
def test_non_float_input_is_refused(image):
    with pytest.raises(TypeError, match='torch.Tensor|floating-point'):
        build()(image)


@pytest.mark.parametrize('size', [(32, 32), (33, 47), (37, 37), (64, 96), (95, 127)])
def test_any_input_size(size):
    height, width = size
    model = build(out_indices=(0, 1, 2, 3)).eval()
    outs = model(torch.rand(1, 3, height, width))
    h, w = (height - 3) // 4 + 1, (width - 3) // 4 + 1  # stem: k7 s4 p2
    for i, out in enumerate(outs):
        assert out.shape[-2:] == (h, w), (i, out.shape)
        assert torch.isfinite(out).all()
        h, w = (h + 1) // 2, (w + 1) // 2  # k3 s2 p1


@pytest.mark.parametrize('impl', ['lowrank', 'fft'])
def test_output_does_not_depend_on_sizes_seen_before(impl):
    """The official detection backbone mutates its padded filter; ours is stateless."""
    torch.manual_seed(0)
    model = build(spectral_impl=impl, out_indices=(0, 1, 2, 3)).eval()
    x = torch.rand(1, 3, 65, 97)
    with torch.no_grad():
        first = model(x)
        for size in [(64, 96), (97, 65), (224, 224), (33, 47)]:
            model(torch.rand(1, 3, *size))
        again = model(x)
    for a, b in zip(first, again):
        assert torch.equal(a, b)


def test_with_cp_keeps_only_block_inputs_and_matches_plain():
    """with_cp: the blocks keep (nearly) nothing for backward but their inputs, far less than
    without (a with_cp that is ignored fails here), with the plain forward's outputs and
    gradients."""
    torch.manual_seed(0)
    plain = build(drop_path_rate=0.).train()
    ckpt = build(with_cp=True).train()
    ckpt.load_state_dict(plain.state_dict())
    x = torch.rand(2, 3, 64, 64)
    plain_bytes, out_plain = saved_bytes(lambda: plain(x)[0])
    ckpt_bytes, out_ckpt = saved_bytes(lambda: ckpt(x)[0])
    # Each checkpointed block saves its input once; outside the blocks the stem, the next
    # downsampling conv and the output norm save theirs (and the norm its statistics).
    stage_maps = sum((depth + 1) * 2 * 4 * dim * (64 // 2**(i + 2))**2
                     for i, (depth, dim) in enumerate(zip(TINY['layers'], TINY['embed_dims'])))
    outside = 3 * 64 * 64 * 2 * 4 + 64
    assert ckpt_bytes <= stage_maps + outside, (ckpt_bytes, stage_maps + outside)
    assert ckpt_bytes < plain_bytes / 3, (ckpt_bytes, plain_bytes)
    torch.testing.assert_close(out_ckpt, out_plain)
    out_plain.square().sum().backward()
    out_ckpt.square().sum().backward()
    for (name, p), q in zip(plain.named_parameters(), ckpt.parameters()):
        torch.testing.assert_close(q.grad, p.grad, msg=name)


def test_block_scales_the_shortcut_not_the_branch():
    torch.manual_seed(0)
    block = SPANetBlock(8, radius=1, shortcut_scale=True).eval()
    x = torch.rand(1, 8, 16, 16)
    with torch.no_grad():
        block.shortcut_scale1.fill_(0.)
        block.shortcut_scale2.fill_(0.)
        out = block(x)
        y = block.token_mixer(block.norm1(x))
        expected = block.mlp(block.norm2(y))  # both shortcuts scaled to zero
    torch.testing.assert_close(out, expected)


def test_default_init_is_truncated_normal():
    model = SPANet(arch=TINY)
    model.init_weights()
    weight = model.stages[2][0].mlp.fc1.weight  # 96 x 24 values
    assert 0.015 < weight.std() < 0.025  # std 0.02, as the official timm init
    assert torch.count_nonzero(model.stages[0][0].mlp.fc1.bias) == 0


def test_init_weights_twice_keeps_the_weights():
    """As mmengine's BaseModule: a module initialises once; a second call changes nothing."""
    model = SPANet(arch=TINY)
    model.init_weights()
    first = {k: v.clone() for k, v in model.state_dict().items()}
    model.init_weights()
    for key, value in model.state_dict().items():
        assert torch.equal(value, first[key]), key


def _random_scales(model):
    """Shortcut scales away from 1, so that a fused layer that drops them is caught."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if 'shortcut_scale' in name:
                param.copy_(torch.rand(param.shape, generator=gen) + 0.5)
    return model


# The exact GELU runs inside the first GEMM on CPU; the tanh GELU and ReLU must not.
ACTIVATIONS = {'GELU': dict(type='GELU'), 'GELU-tanh': dict(type='GELU', approximate='tanh'),
               'ReLU': dict(type='ReLU')}


@pytest.mark.parametrize('impl', ['auto', 'fft'])
@pytest.mark.parametrize('act', list(ACTIVATIONS))
@pytest.mark.parametrize('channels_last', [True, False])
def test_deployed_block_computes_the_block(channels_last, act, impl):
    """A deployed block (fused GEMMs on NHWC maps; plain convs on NCHW) against the block's
    own modules, with shortcut scales, for both mixer formulations (the FFT reference keeps its
    ``pw_i`` modules). (The whole deployed model against the official outputs:
    tests/test_models/test_backbones/test_spanet_official_outputs.py.)"""
    torch.manual_seed(0)
    block = _random_scales(SPANetBlock(24, radius=1, shortcut_scale=True, spectral_impl=impl,
                                       act_cfg=ACTIVATIONS[act])).eval()
    x = torch.randn(2, 24, 13, 9)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        expected = block(x)
        block.switch_to_deploy()
        block.mlp_residual.tokens_per_block = 50  # several blocks of tokens, the last partial
        with OpsRun() as ops:
            out = block(x)
    assert block.deploy and not hasattr(block, 'mlp')
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    # The GELU inside the GEMM: once per block of tokens, on NHWC maps only.
    blocks_of_tokens = -(-2 * 13 * 9 // 50)
    fused = channels_last and act == 'GELU'
    assert ops.count('_linear_pointwise') == (blocks_of_tokens if fused else 0), ops


def test_switch_to_deploy_is_explicit_and_inference_only():
    model = build(arch=dict(layers=[1, 1, 1, 1], embed_dims=[8, 16, 24, 32]))
    x = torch.randn(1, 3, 64, 64)
    names = {name for name, _ in model.named_modules()}
    assert 'stages.0.0.mlp.fc1' in names and not any('residual' in n for n in names)
    assert model.train().switch_to_deploy() is model and not model.training
    with pytest.raises(RuntimeError, match='deploy form, which is for inference only'):
        model(x)
    with torch.no_grad():
        assert len(model(x)) == 1
    model.switch_to_deploy()  # idempotent


def _weights(arch, **kwargs):
    return SPANet(arch=arch, init_cfg=None, **kwargs).state_dict()


@pytest.mark.parametrize('loader', ['torch_non_strict', 'mmengine'])
@pytest.mark.parametrize('other, message', [
    (dict(TINY, layers=[2, 1, 1, 1]), r"2?\d it does not have \['stages.0.1"),  # deeper
    (dict(TINY, embed_dims=[16, 16, 24, 32]), r'tensor\(s\) of another shape'),  # wider
])
def test_weights_of_another_arch_are_refused_by_every_loader(other, message, loader):
    """torch's strict=False and mmengine's load_checkpoint (under mmpretrain's get_model and
    the inferencers) only log such tensors and keep the initial weights."""
    from mmengine.runner.checkpoint import load_state_dict
    from spanet_mm.checkpoint import CheckpointMismatchError
    model = build()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    load = {'torch_non_strict': lambda sd: model.load_state_dict(sd, strict=False),
            'mmengine': lambda sd: load_state_dict(model, sd)}[loader]
    with pytest.raises(CheckpointMismatchError, match=message):
        load(_weights(other))
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_weights_of_another_model_are_named_so():
    """A state dict with no SPANet key at all (an upstream ResNet's) is refused as another
    model's weights, not as a SPANet of another arch."""
    from mmpretrain.models import ResNet
    from spanet_mm.checkpoint import CheckpointMismatchError
    with pytest.raises(CheckpointMismatchError, match='they are weights of another model'):
        build().load_state_dict(ResNet(depth=18).state_dict(), strict=False)


@pytest.mark.parametrize('load_out_norms, from_file', [
    (None, [0, 1, 2, 3]), ((), []), ((3, ), [3]), ((-1, 0), [0, 3])])
def test_load_out_norms_picks_the_output_norms_read_from_the_file(tmp_path, load_out_norms,
                                                                  from_file):
    """``init_cfg.load_out_norms`` (stage indices, negatives from the end) names the output
    norms read from the file; the others start as identity, as the official dense backbone's
    new GroupNorms (tests/data/official_recipes.yml, dense_init: weight 1, bias 0). The
    stages are read in every case."""
    gen = torch.Generator().manual_seed(0)
    saved = {k: torch.rand(v.shape, generator=gen) + 0.5
             for k, v in _weights(TINY, out_indices=(0, 1, 2, 3)).items()}
    path = tmp_path / 'det.pth'
    torch.save(dict(state_dict={f'backbone.{k}': v for k, v in saved.items()}), path)
    init_cfg = dict(type='Pretrained', checkpoint=str(path), prefix='backbone.')
    if load_out_norms is not None:
        init_cfg['load_out_norms'] = load_out_norms
    model = build(out_indices=(0, 1, 2, 3), init_cfg=init_cfg)
    model.init_weights()
    own = model.state_dict()
    new_norms = {f'norm{i}' for i in range(4) if i not in from_file}
    for key, value in saved.items():
        expected = value
        if key.split('.')[0] in new_norms:
            expected = torch.full_like(value, 1. if key.endswith('.weight') else 0.)
        assert torch.equal(own[key], expected), key


def test_partial_and_own_weights_still_load():
    model = build(out_indices=(2, 3))
    own = _weights(TINY, out_indices=(2, 3))
    partial = {k: v for k, v in own.items() if k.startswith('stages.0.')}
    assert set(model.load_state_dict(partial, strict=False).missing_keys) == \
        set(own) - set(partial)  # strict=False keeps its promise of partial loads
    model.load_state_dict(own)
    # Output norms of other stages (a detector's into a classifier) are not this arch's misfit.
    dense = _weights(TINY, out_indices=(0, 1, 2, 3))
    model.load_state_dict(dense, strict=False)
    for key in own:
        assert torch.equal(model.state_dict()[key], dense[key])


def test_unfused_weights_into_the_deploy_form_name_the_order():
    from spanet_mm.checkpoint import CheckpointMismatchError
    deployed = build().switch_to_deploy()
    with pytest.raises(CheckpointMismatchError, match=r'load the weights before switch_to_deploy'):
        deployed.load_state_dict(_weights(TINY), strict=False)
    deployed.load_state_dict(deployed.state_dict())  # its own fused weights load


def test_non_finite_weights_are_refused_by_every_loader():
    """mmpretrain's get_model(pretrained=...) loads through mmengine's load_state_dict, which
    runs no check of the project's: the backbone refuses NaN itself."""
    from mmengine.runner.checkpoint import load_state_dict
    from spanet_mm.checkpoint import CheckpointLoadError
    weights = _weights(TINY)
    weights['stages.1.0.mlp.fc1.bias'][0] = float('nan')
    for load in (lambda m: m.load_state_dict(weights, strict=False),
                 lambda m: load_state_dict(m, weights)):
        with pytest.raises(CheckpointLoadError, match=r"NaN or inf.*stages.1.0.mlp.fc1.bias"):
            load(build())
