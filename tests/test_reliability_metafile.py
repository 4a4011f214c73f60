"""model-index.yml and the metafiles: mim format, every config listed and existing."""
import glob
import os.path as osp

import pytest
import yaml

from conftest import REPO_ROOT

MODEL_FIELDS = ('Name', 'In Collection', 'Config', 'Metadata', 'Results')


def load_index():
    with open(osp.join(REPO_ROOT, 'model-index.yml')) as f:
        index = yaml.safe_load(f)
    collections, models = [], []
    for path in index['Import']:
        full = osp.join(REPO_ROOT, path)
        assert osp.isfile(full), f'model-index.yml imports a missing file: {path}'
        with open(full) as f:
            metafile = yaml.safe_load(f)
        collections += metafile.get('Collections', [])
        models += metafile['Models']
    return collections, models


def test_every_model_entry_is_complete():
    collections, models = load_index()
    names = {c['Name'] for c in collections}
    for collection in collections:
        assert collection['Paper']['URL'] == 'https://arxiv.org/abs/2308.11568'
        assert collection['Code']['URL'].startswith('https://github.com/')
    assert len({m['Name'] for m in models}) == len(models), 'duplicate model names'
    for model in models:
        for field in MODEL_FIELDS:
            assert field in model, f'{model.get("Name")} lacks {field}'
        assert model['In Collection'] in names
        assert osp.isfile(osp.join(REPO_ROOT, model['Config'])), model['Config']
        assert isinstance(model['Metadata']['Parameters'], int)
        assert model['Metadata']['Training Data'] in ('ImageNet-1k', 'COCO', 'ADE20K')
        for result in model['Results']:
            assert {'Task', 'Dataset', 'Metrics'} <= set(result)
            assert all(isinstance(v, float) for v in result['Metrics'].values())


def test_every_config_is_listed():
    _, models = load_index()
    listed = {m['Config'] for m in models}
    configs = {osp.relpath(p, REPO_ROOT)
               for p in glob.glob(osp.join(REPO_ROOT, 'configs', '*', '*.py'))}
    assert configs == listed, f'not in model-index: {configs - listed}'


def test_paper_results():
    _, models = load_index()
    metrics = {m['Name']: {k: v for r in m['Results'] for k, v in r['Metrics'].items()}
               for m in models}
    top1 = {k: metrics[f'spanet-{k}_in1k']['Top 1 Accuracy'] for k in ('s', 'm', 'mx', 'b', 'bx')}
    assert top1 == dict(s=83.1, m=83.5, mx=83.8, b=84.0, bx=84.4)
    assert metrics['retinanet_spanet-m_fpn_1x_coco'] == {'box AP': 44.0}
    assert metrics['mask-rcnn_spanet-s_fpn_1x_coco'] == {'box AP': 44.7, 'mask AP': 40.6}
    assert metrics['fpn_spanet-m_80k_ade20k-512x512'] == {'mIoU': 46.2}


@pytest.mark.parametrize('arch', ['s', 'm', 'mx', 'b', 'bx'])
def test_classification_parameters_match_the_model(arch):
    """The listed count is the trainable parameters of backbone + 1000-class head."""
    from spanet_mm import SPANet
    _, models = load_index()
    listed = next(m for m in models if m['Name'] == f'spanet-{arch}_in1k')
    backbone = SPANet(arch=arch, init_cfg=None)
    dims = backbone.embed_dims[-1]
    count = sum(p.numel() for p in backbone.parameters() if p.requires_grad) + dims * 1000 + 1000
    assert listed['Metadata']['Parameters'] == count
