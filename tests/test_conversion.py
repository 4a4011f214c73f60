"""The official-checkpoint converter: formats it accepts, and how it refuses bad input."""
import os
import os.path as osp
import re

import pytest
import torch

from conftest import REPO_ROOT, FileCreatingPayload, run_python
from spanet_mm import SPANet
from spanet_mm.conversion import CheckpointConversionError, convert_official

CONVERTER = osp.join(REPO_ROOT, 'tools', 'model_converters', 'spanet_official_to_mm.py')


def run_converter(*args):
    return run_python(CONVERTER, *args)


@pytest.fixture
def official_state(official_fixture):
    return dict(official_fixture['classification']['state_dict'])


@pytest.mark.slow
def test_output_format(official_state, tmp_path):
    torch.save(official_state, tmp_path / 'src.pth')
    result = run_converter(tmp_path / 'src.pth', tmp_path / 'out' / 'dst.pth')
    assert result.returncode == 0, result.stderr
    converted = torch.load(tmp_path / 'out' / 'dst.pth', weights_only=True)
    assert set(converted) == {'state_dict', 'meta'}
    keys = set(converted['state_dict'])
    assert all(k.startswith(('backbone.', 'head.fc.')) for k in keys)
    assert {'head.fc.weight', 'head.fc.bias', 'backbone.norm3.weight'} <= keys
    assert not any('filter' in k for k in keys)
    # Every official tensor but the 3 filters per block is kept, value for value (as float32).
    assert len(keys) == len(official_state) - 3 * 4
    assert torch.equal(converted['state_dict']['backbone.stages.2.0.shortcut_scale1'],
                       official_state['network.4.0.res_scale1.scale'].float())
    assert torch.equal(converted['state_dict']['backbone.stages.0.0.token_mixer.dwconv_7x1.weight'],
                       official_state['network.0.0.token_mixer.conv.1.weight'].float())
    assert converted['meta']['arch']['layers'] == [1, 1, 1, 1]
    assert converted['meta']['has_head'] is True


# The layouts official files come in (as released, timm's train.py, a detector's backbone).
WRAPS = {
    'bare': lambda sd: sd,
    'state_dict': lambda sd: {'state_dict': sd, 'epoch': 300, 'arch': 'spanet_small'},
    'model': lambda sd: {'model': sd},
    'backbone-prefixed': lambda sd: {'state_dict': {f'backbone.{k}': v for k, v in sd.items()}},
    # A model saved wrapped in DistributedDataParallel: every key prefixed with 'module.'.
    'ddp': lambda sd: {'state_dict': {f'module.{k}': v for k, v in sd.items()}},
}


@pytest.mark.parametrize('wrap', list(WRAPS))
def test_accepted_layouts(official_state, wrap):
    state_dict, meta = convert_official(WRAPS[wrap](official_state))
    assert 'backbone.downsample_layers.0.weight' in state_dict
    assert meta['has_head']


def official_names(model):
    """``model``'s state dict under the official classification model's key names (see the
    key patterns in ../shared/spec/spanet.md)."""
    renamed = {}
    for key, value in model.state_dict().items():
        parts = key.split('.')
        if parts[0] == 'downsample_layers':
            new = ('patch_embed.proj.' if parts[1] == '0'
                   else f'network.{2 * int(parts[1]) - 1}.proj.') + parts[2]
        elif parts[0] == 'stages':
            rest = '.'.join(parts[3:]).replace('dwconv_1x7', 'conv.0').replace(
                'dwconv_7x1', 'conv.1').replace('spectral_projs', 'pws').replace(
                'shortcut_scale1', 'res_scale1.scale').replace('shortcut_scale2',
                                                               'res_scale2.scale')
            new = f'network.{2 * int(parts[1])}.{parts[2]}.{rest}'
        else:
            new = 'norm.' + parts[1]
        renamed[new] = value
    return renamed


def test_preset_is_recognised():
    _, meta = convert_official(official_names(SPANet('s', init_cfg=None)))
    assert meta['arch_name'] == 's'


def test_preset_depths_and_widths_with_another_mlp_ratio_are_custom():
    """Every preset has MLP ratio 4: the same layers and widths with ratio 3 are not 's'."""
    arch = dict(layers=[4, 4, 12, 4], embed_dims=[64, 128, 320, 512], mlp_ratios=[3] * 4)
    _, meta = convert_official(official_names(SPANet(arch, init_cfg=None)))
    assert meta['arch_name'] is None and meta['arch']['mlp_ratios'] == [3] * 4


def test_half_precision_source_is_converted_to_float32(official_state):
    half = {k: v.half() if v.is_floating_point() else v for k, v in official_state.items()}
    state_dict, _ = convert_official(half)
    assert state_dict['backbone.stages.0.0.mlp.fc1.weight'].dtype == torch.float32
    torch.testing.assert_close(state_dict['backbone.stages.0.0.mlp.fc1.weight'],
                               half['network.0.0.mlp.fc1.weight'].float(), rtol=0, atol=0)
    assert all(v.dtype == torch.float32 for v in state_dict.values() if v.is_floating_point())


def test_head_of_another_width_is_refused(official_state):
    """The head is Linear(C4, classes) on the last stage's width."""
    classes, width = official_state['head.weight'].shape
    official_state['head.weight'] = torch.zeros(classes, width - 1)
    with pytest.raises(CheckpointConversionError, match="Shape mismatch for 'head.weight'"):
        convert_official(official_state)


def test_classifier_and_dense_norm_of_the_last_stage_together_are_refused(official_state):
    """``norm.*`` (the classifier's) and ``norm6.*`` (the detection backbone's) are both the
    last stage's output norm: a file with both is ambiguous."""
    official_state['norm6.weight'] = official_state['norm.weight'].clone()
    official_state['norm6.bias'] = official_state['norm.bias'].clone()
    with pytest.raises(CheckpointConversionError, match="both map to 'backbone.norm3"):
        convert_official(official_state)


def expect_failure(tmp_path, state, message, *extra):
    torch.save(state, tmp_path / 'src.pth')
    dst = tmp_path / 'dst.pth'
    result = run_converter(tmp_path / 'src.pth', dst, *extra)
    assert result.returncode != 0
    assert message in result.stderr, result.stderr
    assert not dst.exists()
    assert os.listdir(tmp_path) == ['src.pth']  # no partial or temporary file left behind


# Unknown keys in every place a converter could let one through: a rename rule that does not
# match, a renamed key the model does not have, a near-miss of a key that is dropped on purpose.
UNKNOWN_KEYS = [
    'pos_embed',  # top level, a name no rule knows
    'norm.weights',  # near-miss of the final norm
    'head.weight_g',  # near-miss of the head (a weight-normed head)
    'patch_embed.proj.weights',  # near-miss of the stem (renamed by its prefix)
    'network.1.proj.weights',  # near-miss of a downsampling conv
    'network.1.0.norm1.weight',  # a block key at a downsampling position
    'norm1.weight',  # an output norm at an odd (downsampling) position
    'network.2.0.token_mixer.gate.weight',  # inside a stage: renamed, but not a parameter
    'network.4.0.norm1.weights',  # inside a stage: near-miss of a real key
    'network.0.0.token_mixer.sps.0.filters',  # near-miss of the dropped spectral filter
    'network.6.0.token_mixer.sps.3.filter.scale',  # under a dropped filter's name
]

@pytest.mark.parametrize('key, wrap', [(key, wrap) for key in UNKNOWN_KEYS
                                       for wrap in ('bare', 'state_dict')] + [
    ('pos_embed', 'model'), ('network.4.0.norm1.weights', 'model'),
    ('pos_embed', 'backbone-prefixed'), ('network.4.0.norm1.weights', 'backbone-prefixed')])
def test_unknown_key_is_refused_by_name(official_state, key, wrap):
    official_state[key] = torch.zeros(1)
    with pytest.raises(CheckpointConversionError, match=re.escape(f"Unknown key '{key}'")):
        convert_official(WRAPS[wrap](official_state))


@pytest.mark.parametrize('wrap', ['bare', 'state_dict'])
def test_non_tensor_entry_is_refused_by_name(official_state, wrap):
    official_state['network.2.0.token_mixer.gate'] = [1.0]
    with pytest.raises(CheckpointConversionError,
                       match=re.escape("Entry 'network.2.0.token_mixer.gate' is a list")):
        convert_official(WRAPS[wrap](official_state))


@pytest.mark.parametrize('wrap, key', [
    ('bare', 'network.0.0.token_mixer.extra_gate.weight'),
    ('state_dict', 'extra_token'),
])
@pytest.mark.slow
def test_unknown_key(official_state, tmp_path, wrap, key):
    """Through the command line: no output file, the key named."""
    official_state[key] = torch.zeros(1)
    expect_failure(tmp_path, WRAPS[wrap](official_state), f"Unknown key '{key}'")


@pytest.mark.slow
def test_missing_key(official_state, tmp_path):
    del official_state['network.2.0.mlp.fc2.bias']
    expect_failure(tmp_path, official_state, 'backbone.stages.1.0.mlp.fc2.bias')


@pytest.mark.slow
def test_shape_mismatch(official_state, tmp_path):
    official_state['network.6.0.token_mixer.proj_out.weight'] = torch.zeros(512, 511, 1, 1)
    expect_failure(tmp_path, official_state, 'Shape mismatch for '
                   "'network.6.0.token_mixer.proj_out.weight'")


@pytest.mark.slow
def test_not_spanet(tmp_path):
    expect_failure(tmp_path, {'conv1.weight': torch.zeros(64, 3, 7, 7)},
                   'Cannot find the SPANet stages')


@pytest.mark.slow
def test_arch_check(official_state, tmp_path):
    expect_failure(tmp_path, official_state, "not 's'", '--arch', 's')


@pytest.mark.slow
def test_corrupt_source(tmp_path):
    (tmp_path / 'src.pth').write_bytes(b'not a checkpoint')
    result = run_converter(tmp_path / 'src.pth', tmp_path / 'dst.pth')
    assert result.returncode != 0 and 'cannot read' in result.stderr
    assert not (tmp_path / 'dst.pth').exists()


@pytest.mark.slow
def test_source_is_never_unpickled_unsafely(tmp_path):
    marker = tmp_path / 'pwned'
    torch.save({'state_dict': {}, 'payload': FileCreatingPayload(str(marker))},
               tmp_path / 'src.pth')
    result = run_converter(tmp_path / 'src.pth', tmp_path / 'dst.pth')
    assert result.returncode != 0 and 'weights-only' in result.stderr
    assert not marker.exists()



@pytest.mark.slow
def test_missing_source(tmp_path):
    result = run_converter(tmp_path / 'nope.pth', tmp_path / 'dst.pth')
    assert result.returncode != 0 and 'does not exist' in result.stderr


def test_api_error_type(official_state):
    del official_state['norm.weight']
    with pytest.raises(CheckpointConversionError, match='norm3.weight'):
        convert_official(official_state)


def test_file_without_an_output_norm_is_refused(official_state):
    """Without ``norm.*`` (nor ``norm0/2/4/6.*``) there is no output stage to build SPANet
    with: a conversion error naming the missing norm, not an assertion from inside SPANet."""
    del official_state['norm.weight'], official_state['norm.bias']
    with pytest.raises(CheckpointConversionError, match=r'no output norm \(norm\.\* or'):
        convert_official(official_state)
