"""Autocast on CPUs without lower-precision kernels (spanet_mm/models/layers/precision.py),
and the deploy form's fused layers under autocast (spanet_mm/models/layers/fused.py).

The layers' float32 branch is forced on any CPU (``emulating_cpu``: the machine check says
"no bfloat16 / float16 kernels"; the convs are checked under both autocast dtypes), and so is
their native branch (``native_cpu``: autocast's own bfloat16 kernels, which PyTorch emulates on
a CPU without them), so these tests check both on every machine. The reference for every value is PyTorch itself: ``F.conv2d`` / the modules
outside autocast (float32 kernels), and the default (unfused) form of the model or block
under the same autocast for the deploy form.
"""
import copy

import pytest
import torch
import torch.nn.functional as F

from conftest import OpsRun, perturbed, rel_err
from spanet_mm.models import SPANet
from spanet_mm.models.backbones.spanet import SPANetBlock
from spanet_mm.models.layers import AutocastConv2d, SpectralPoolingMixer, precision

CONVS = {  # the kinds of conv SPANet has
    '1x1': dict(in_channels=16, out_channels=24, kernel_size=1),
    'depthwise_1x7': dict(in_channels=16, out_channels=16, kernel_size=(1, 7), padding=(0, 3),
                          groups=16),
    'stem_7x7_stride4': dict(in_channels=3, out_channels=16, kernel_size=7, stride=4,
                             padding=2),
}


def set_cpu_kernels(monkeypatch, native: bool) -> None:
    monkeypatch.setattr(precision, '_CPU_HAS_KERNELS',
                        {torch.bfloat16: native, torch.float16: native})


@pytest.fixture
def emulating_cpu(monkeypatch):
    """A CPU without bfloat16 / float16 kernels (AVX2 only, as some CI machines are)."""
    set_cpu_kernels(monkeypatch, native=False)


@pytest.fixture
def native_cpu(monkeypatch):
    """A CPU with bfloat16 / float16 kernels (AVX512-BF16, AMX): autocast runs its own."""
    set_cpu_kernels(monkeypatch, native=True)


def expected_under_autocast(fn, x, dtype=torch.bfloat16):
    """What the layer must return under CPU ``dtype`` autocast on such a CPU: the float32
    result in ``dtype``."""
    with torch.no_grad():
        return fn(x.float()).to(dtype)


@pytest.mark.parametrize('kind', sorted(CONVS))
@pytest.mark.parametrize('layout', ['nchw', 'nhwc'])
@pytest.mark.parametrize('input_is_half', [False, True], ids=['fp32_input', 'half_input'])
@pytest.mark.parametrize('half', [torch.bfloat16, torch.float16], ids=['bf16', 'fp16'])
def test_conv_under_cpu_autocast(kind, layout, half, input_is_half, emulating_cpu):
    torch.manual_seed(0)
    conv = AutocastConv2d(**CONVS[kind])
    reference = torch.nn.Conv2d(**CONVS[kind])
    reference.load_state_dict(conv.state_dict())
    x = torch.randn(2, conv.in_channels, 23, 29).to(half if input_is_half else torch.float32)
    if layout == 'nhwc':
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        with torch.autocast('cpu', dtype=half):
            got = conv(x)
        outside = conv(x.float())
    assert got.dtype == half  # autocast's dtype contract
    torch.testing.assert_close(got, expected_under_autocast(reference, x, half), atol=0, rtol=0)
    # Outside autocast: exactly nn.Conv2d.
    torch.testing.assert_close(outside, reference(x.float()), atol=0, rtol=0)


def test_lowrank_context_under_cpu_autocast(emulating_cpu):
    """The low-rank context's products (a 1x1 conv, two batched GEMMs) as one float32 unit."""
    torch.manual_seed(0)
    mixer = SpectralPoolingMixer(12, 2, 'lowrank').eval()
    x = torch.randn(2, 12, 17, 22).bfloat16()
    with torch.no_grad(), torch.autocast('cpu', dtype=torch.bfloat16):
        got = mixer.context_lowrank(x)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got, expected_under_autocast(mixer.context_lowrank, x), atol=0,
                               rtol=0)


@pytest.mark.parametrize('cpu', ['emulating_cpu', 'native_cpu'])
def test_deploy_form_under_cpu_autocast_is_the_default_form(cpu, request):
    """The deploy form's fused layers (float32 GEMMs where bfloat16 is emulated, bfloat16
    GEMMs where it is native) give every stage the dtype and, within bfloat16 round-off, the
    values of the default form under the same autocast: the residual stream stays float32
    where the shortcut scales (float32) make it so."""
    request.getfixturevalue(cpu)
    torch.manual_seed(0)
    model = SPANet(dict(layers=[1, 1, 1, 1], embed_dims=[16, 16, 24, 24]), init_cfg=None)
    model.init_weights()
    model = perturbed(model)
    deployed = copy.deepcopy(model).switch_to_deploy()
    x = torch.randn(2, 3, 64, 64)
    stage_outputs = {}
    for name, net in (('default', model), ('deploy', deployed)):
        outputs = stage_outputs[name] = []
        for stage in net.stages:
            stage.register_forward_hook(lambda module, args, out, outputs=outputs:
                                        outputs.append(out))
        with torch.no_grad(), torch.autocast('cpu', dtype=torch.bfloat16):
            net(x)
    dtypes = [out.dtype for out in stage_outputs['default']]
    assert dtypes == [torch.bfloat16] * 2 + [torch.float32] * 2  # scales in stages 2 and 3
    assert [out.dtype for out in stage_outputs['deploy']] == dtypes
    for a, b in zip(stage_outputs['deploy'], stage_outputs['default']):
        err = rel_err(a, b)
        assert err < 0.01, err


#: The deployed block's GEMMs: ``proj_out`` with its residual, the MLP's two per block of tokens.
FUSED_GEMMS = {'mm', 'addmm', 'addmm_', '_linear_pointwise'}


@pytest.mark.parametrize('shortcut_scale, input_dtype, sum_dtype', [
    (True, torch.float32, torch.float32),  # the float32 scale makes the sum float32
    (False, torch.bfloat16, torch.bfloat16),
], ids=['float32_sum', 'bfloat16_sum'])
def test_deployed_block_under_native_cpu_autocast(shortcut_scale, input_dtype, sum_dtype,
                                                  native_cpu):
    """With native kernels the deployed block runs fused under autocast too: ``proj_out`` and
    the MLP as bfloat16 GEMMs (no longer as convs), with the block's output dtype and, within
    bfloat16 round-off, its values (its own modules under the same autocast). The GELU runs
    inside the bfloat16 GEMM only on a CPU that really has the kernels (PyTorch refuses the
    oneDNN bfloat16 GEMM elsewhere); elsewhere it runs after it."""
    torch.manual_seed(0)
    block = perturbed(SPANetBlock(24, radius=1, shortcut_scale=shortcut_scale))
    x = torch.randn(2, 24, 13, 9).to(input_dtype).contiguous(memory_format=torch.channels_last)
    with torch.no_grad(), torch.autocast('cpu', dtype=torch.bfloat16):
        expected = block(x)
        block.switch_to_deploy()
        block.mlp_residual.tokens_per_block = 50  # several blocks of tokens, the last partial
        with OpsRun() as ops:
            out = block(x)
    assert expected.dtype == sum_dtype and out.dtype == sum_dtype
    assert out.is_contiguous(memory_format=torch.channels_last)
    err = rel_err(out, expected)
    assert err < 0.01, err
    # Left as convs: the mixer's proj_in, its two depthwise convs and the context's 1x1.
    convs = [call for call in ops.calls if call.name == 'convolution']
    assert len(convs) == 4 and all(torch.bfloat16 in call.dtypes for call in convs), convs
    gemms = [call for call in ops.calls if call.name in FUSED_GEMMS]
    assert len(gemms) == 1 + 2 * -(-2 * 13 * 9 // 50), ops
    assert all(set(call.dtypes) == {torch.bfloat16} for call in gemms), gemms


def test_traced_deploy_form_under_native_cpu_autocast(native_cpu):
    """What ``torch.compile`` traces of the deployed model under autocast with native kernels
    (the fused MLP as whole-map GEMMs, no convs for ``proj_out`` and the MLP), run as traced,
    gives the stage dtypes and, within bfloat16 round-off, the values of the default form."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = perturbed(SPANet(dict(layers=[1, 1, 1], embed_dims=[16, 16, 24], radius=[2, 1, 1]),
                             out_indices=(0, 1, 2), init_cfg=None))
    convs = []

    def recording_backend(graph_module, example_inputs):
        convs.extend(node for node in graph_module.graph.nodes
                     if node.op == 'call_function' and node.target in (torch.conv2d, F.conv2d))
        return graph_module  # runs the traced graph as it is

    traced = torch.compile(copy.deepcopy(model).switch_to_deploy(), backend=recording_backend,
                           fullgraph=True)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad(), torch.autocast('cpu', dtype=torch.bfloat16):
        expected, got = model(x), traced(x)
    torch._dynamo.reset()
    assert len(convs) == 3 + 3 * 4, convs  # stem, 2 downsamplings; the mixers' 4 per block
    assert [out.dtype for out in expected] == [torch.bfloat16] * 2 + [torch.float32]
    assert [out.dtype for out in got] == [out.dtype for out in expected]
    for a, b in zip(got, expected):
        err = rel_err(a, b)
        assert err < 0.01, err


def test_fused_layers_refuse_what_their_convs_refuse():
    """Outside autocast a bfloat16 map does not meet float32 weights in a conv; nor in the
    deployed block's fused GEMMs, which do not cast them silently."""
    torch.manual_seed(0)
    block = SPANetBlock(16, radius=1).eval()
    x = torch.randn(1, 16, 9, 9).bfloat16().contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        with pytest.raises(RuntimeError, match='should be the same'):
            block.mlp.fc1(x)
        block.switch_to_deploy()
        for fused in (block.mixer_residual, block.mlp_residual):
            with pytest.raises(RuntimeError, match='should be the same'):
                fused(x, x)


def test_every_conv_of_spanet_follows_autocast():
    """All convs of the backbone (stem, downsampling, mixer, MLP) are AutocastConv2d: none is
    left to the emulated kernels."""
    model = SPANet(dict(layers=[1, 1, 1, 1], embed_dims=[8, 8, 16, 16]))
    convs = [name for name, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 4 + 4 * 9  # stem, 3 downsampling; per block 6 and the 3 pw_i
    plain = [name for name, m in model.named_modules()
             if isinstance(m, torch.nn.Conv2d) and not isinstance(m, AutocastConv2d)]
    assert not plain, plain


def test_training_under_cpu_autocast_matches_float32(emulating_cpu):
    """Gradients flow through the float32 kernels: bfloat16-autocast gradients of a small
    SPANet within 3% (relative norm) of float32's."""
    torch.manual_seed(0)
    model = SPANet(dict(layers=[1, 1, 1, 1], embed_dims=[8, 8, 16, 16]), init_cfg=None)
    model.init_weights()
    x = torch.randn(2, 3, 64, 64)
    grads = {}
    for low in (False, True):
        model.zero_grad()
        with torch.autocast('cpu', dtype=torch.bfloat16, enabled=low):
            out = model(x)[-1]
        out.float().square().mean().backward()
        grads[low] = torch.cat([p.grad.flatten() for p in model.parameters()])
    err = rel_err(grads[True], grads[False])
    assert err < 0.03, err


def test_machine_check_covers_both_half_dtypes():
    """The float32 branch is taken exactly where PyTorch's own oneDNN query says this CPU has
    no kernels of the autocast dtype, for bfloat16 and float16 alike."""
    native = {torch.bfloat16: torch.ops.mkldnn._is_mkldnn_bf16_supported(),
              torch.float16: torch.ops.mkldnn._is_mkldnn_fp16_supported()}
    x = torch.randn(1, 2, 3, 3)
    for dtype, has_kernels in native.items():
        with torch.autocast('cpu', dtype=dtype):
            emulated = precision.emulated_autocast_dtype(x)
        assert emulated == (None if has_kernels else dtype), (dtype, has_kernels)


def test_float64_is_left_to_autocast(emulating_cpu):
    """Autocast does not touch float64; neither does the layer."""
    torch.manual_seed(0)
    conv = AutocastConv2d(4, 6, 3, padding=1).double()
    x = torch.randn(1, 4, 5, 7, dtype=torch.float64)
    with torch.no_grad(), torch.autocast('cpu', dtype=torch.bfloat16):
        got = conv(x)
        expected = torch.nn.functional.conv2d(x, conv.weight, conv.bias, padding=1)
    assert expected.dtype == torch.float64
    assert got.dtype == torch.float64 and torch.equal(got, expected)


#: Convolutions and matrix products (the last: the deploy form's GEMM with the GELU inside).
PRODUCTS = {'convolution', 'mkldnn_convolution', 'mm', 'addmm', 'bmm', 'baddbmm',
            '_linear_pointwise'}


def bfloat16_products(ops: OpsRun) -> list:
    """The convolutions and matrix products that ran on bfloat16 operands."""
    return [call.name for call in ops.calls
            if call.name in PRODUCTS and torch.bfloat16 in call.dtypes]


@pytest.mark.parametrize('deploy', [False, True], ids=['default', 'deploy'])
def test_no_product_runs_in_bfloat16_kernels(deploy, emulating_cpu):
    """Under bfloat16 autocast on such a CPU no conv or GEMM of the backbone, default or
    deploy form, reaches PyTorch's (emulated) bfloat16 kernels."""
    model = SPANet(dict(layers=[1, 1, 1, 1], embed_dims=[16, 16, 24, 24])).eval()
    if deploy:
        model.switch_to_deploy()
    ops = OpsRun()
    with torch.no_grad(), torch.autocast('cpu', dtype=torch.bfloat16), ops:
        model(torch.randn(2, 3, 64, 64))
    assert bfloat16_products(ops) == []
    # The recorder sees them where they do run: native autocast's own conv.
    with torch.no_grad(), torch.autocast('cpu', dtype=torch.bfloat16), ops:
        torch.nn.functional.conv2d(torch.randn(1, 2, 5, 5), torch.randn(3, 2, 1, 1))
    assert bfloat16_products(ops) == ['convolution']


@pytest.mark.slow  # a dynamo trace
def test_mixer_traces_in_one_graph_under_cpu_autocast(emulating_cpu):
    """The float32 branch (autocast switched off inside the layers) traces without graph
    breaks for torch.compile."""
    torch._dynamo.reset()
    mixer = SpectralPoolingMixer(20, 2, 'lowrank').eval()
    x = torch.randn(2, 20, 33, 47).contiguous(memory_format=torch.channels_last)
    with torch.no_grad(), torch.autocast('cpu', dtype=torch.bfloat16):
        explanation = torch._dynamo.explain(mixer)(x)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    torch._dynamo.reset()
