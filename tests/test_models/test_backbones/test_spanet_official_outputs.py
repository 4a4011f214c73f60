"""Converted official weights reproduce the official model's outputs (shared fixture)."""
import pytest
import torch
from mmengine.registry import init_default_scope

from conftest import (convert_official_file, dense_official_checkpoint, fixture_arch,
                      official_classifier)

TOLERANCE = 1e-4


# 'deploy': the low-rank model after SPANet.switch_to_deploy() (fused inference form).
IMPLS = ['auto', 'fft', 'deploy']


@pytest.mark.parametrize('impl', IMPLS)
def test_classifier_logits(official_fixture, converted_classifier, impl):
    """The converted file loads with `load_from` semantics into the shipped classifier config."""
    model = official_classifier(official_fixture, converted_classifier, impl)
    assert model.backbone.deploy is (impl == 'deploy')  # the form compared is the one named
    with torch.no_grad():
        logits = model(official_fixture['classification']['input'], mode='tensor')
    expected = official_fixture['classification']['logits']
    assert logits.shape == expected.shape
    assert (logits - expected).abs().max() <= TOLERANCE


@pytest.mark.parametrize('impl', IMPLS)
@pytest.mark.parametrize('scope', ['mmdet', 'mmseg'])
def test_dense_features(official_fixture, tmp_path, impl, scope):
    """Converted weights load through `init_cfg=Pretrained` into the mmdet/mmseg backbone."""
    torch.save(dense_official_checkpoint(official_fixture), tmp_path / 'official_det.pth')
    converted = convert_official_file(tmp_path / 'official_det.pth', tmp_path / 'converted.pth')
    init_default_scope(scope)
    registry = __import__(f'{scope}.registry', fromlist=['MODELS']).MODELS
    backbone = registry.build(dict(
        type='SPANet', arch=fixture_arch(official_fixture), out_indices=(0, 1, 2, 3),
        spectral_impl='auto' if impl == 'deploy' else impl,
        init_cfg=dict(type='Pretrained', checkpoint=str(converted), prefix='backbone.')))
    backbone.init_weights()
    backbone.eval()
    if impl == 'deploy':
        assert backbone.switch_to_deploy() is backbone
    for name, case in official_fixture['dense']['cases'].items():
        with torch.no_grad():
            features = backbone(case['input'])
        assert len(features) == 4
        for i, (ours, theirs) in enumerate(zip(features, case['features'])):
            assert ours.shape == theirs.shape, (name, i)
            assert (ours - theirs).abs().max() <= TOLERANCE, (name, i)


def test_classification_weights_initialise_a_dense_backbone(official_fixture,
                                                           converted_classifier):
    """ImageNet weights into a 4-output backbone: stages loaded, new output norms identity."""
    backbone = __import__('spanet_mm').SPANet(
        arch=fixture_arch(official_fixture), out_indices=(0, 1, 2, 3),
        init_cfg=dict(type='Pretrained', checkpoint=str(converted_classifier),
                      prefix='backbone.'))
    backbone.init_weights()
    converted = torch.load(converted_classifier)['state_dict']
    own = backbone.state_dict()
    for key, value in converted.items():
        if key.startswith('backbone.'):
            assert torch.equal(own[key[len('backbone.'):]], value), key
    for i in range(3):
        assert torch.equal(own[f'norm{i}.weight'], torch.ones_like(own[f'norm{i}.weight']))
        assert torch.equal(own[f'norm{i}.bias'], torch.zeros_like(own[f'norm{i}.bias']))
