"""model-index.yml, the metafiles and the model pages: the mim format, every config listed under
its own file name (mmdet's and mmseg's rule, which ``mim search --config`` relies on), the
paper's numbers, and tables on configs/*/README.md that say what the metafiles say.

Expected numbers are the paper's and the official model's (../shared/spec/spanet.md), not the
metafiles'.
"""
import glob
import os.path as osp
import re

import pytest
import yaml

from conftest import REPO_ROOT

MODEL_FIELDS = ('Name', 'Alias', 'In Collection', 'Config', 'Metadata', 'Results')
TASKS = ('classification', 'detection', 'segmentation')

#: The names the models had before they were named after their configs: kept as aliases.
FORMER_NAMES = {
    'spanet_s_in1k': 'spanet-s_in1k', 'spanet_m_in1k': 'spanet-m_in1k',
    'spanet_mx_in1k': 'spanet-mx_in1k', 'spanet_b_in1k': 'spanet-b_in1k',
    'spanet_bx_in1k': 'spanet-bx_in1k',
    'retinanet_spanet_s_1x': 'retinanet_spanet-s_fpn_1x_coco',
    'retinanet_spanet_m_1x': 'retinanet_spanet-m_fpn_1x_coco',
    'mask_rcnn_spanet_s_1x': 'mask-rcnn_spanet-s_fpn_1x_coco',
    'mask_rcnn_spanet_m_1x': 'mask-rcnn_spanet-m_fpn_1x_coco',
    'fpn_spanet_s_80k': 'fpn_spanet-s_80k_ade20k-512x512',
    'fpn_spanet_m_80k': 'fpn_spanet-m_80k_ade20k-512x512',
}
#: Reported results (the paper).
PAPER_RESULTS = {
    'spanet_s_in1k': {'Top 1 Accuracy': 83.1}, 'spanet_m_in1k': {'Top 1 Accuracy': 83.5},
    'spanet_mx_in1k': {'Top 1 Accuracy': 83.8}, 'spanet_b_in1k': {'Top 1 Accuracy': 84.0},
    'spanet_bx_in1k': {'Top 1 Accuracy': 84.4},
    'retinanet_spanet_s_1x': {'box AP': 43.3}, 'retinanet_spanet_m_1x': {'box AP': 44.0},
    'mask_rcnn_spanet_s_1x': {'box AP': 44.7, 'mask AP': 40.6},
    'mask_rcnn_spanet_m_1x': {'box AP': 45.2, 'mask AP': 41.0},
    'fpn_spanet_s_80k': {'mIoU': 45.4}, 'fpn_spanet_m_80k': {'mIoU': 46.2},
}
#: Parameters: the official classifiers' trainable count (fixed filters excluded); the paper's
#: whole detector / segmentor, rounded to 1M. FLOPs: the paper's MACs (224x224; 512x512).
PAPER_PARAMS = {
    'spanet_s_in1k': 28_605_096, 'spanet_m_in1k': 41_686_952, 'spanet_mx_in1k': 54_768_808,
    'spanet_b_in1k': 75_856_168, 'spanet_bx_in1k': 99_718_312,
    'retinanet_spanet_s_1x': 38e6, 'retinanet_spanet_m_1x': 51e6,
    'mask_rcnn_spanet_s_1x': 48e6, 'mask_rcnn_spanet_m_1x': 61e6,
    'fpn_spanet_s_80k': 32e6, 'fpn_spanet_m_80k': 45e6,
}
PAPER_FLOPS = {
    'spanet_s_in1k': 4.6267e9, 'spanet_m_in1k': 6.8238e9, 'spanet_mx_in1k': 9.0209e9,
    'spanet_b_in1k': 11.9833e9, 'spanet_bx_in1k': 15.8326e9,
    'fpn_spanet_s_80k': 46e9, 'fpn_spanet_m_80k': 57e9,
}


#: The official backbone without its head (final GroupNorm included), and its stage widths.
OFFICIAL_BACKBONE_PARAMS = dict(s=28_092_096, m=41_173_952)
STAGE_DIMS = (64, 128, 320, 512)


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
        # Relative to the root, as upstream writes it: the task's model page.
        assert osp.isfile(osp.join(REPO_ROOT, collection['README'])), collection['README']
    for model in models:
        for field in MODEL_FIELDS:
            assert field in model, f'{model.get("Name")} lacks {field}'
        assert model['In Collection'] in names
        assert isinstance(model['Metadata']['Parameters'], int)
        assert model['Metadata']['Training Data'] in ('ImageNet-1k', 'COCO', 'ADE20K')
        for result in model['Results']:
            assert {'Task', 'Dataset', 'Metrics'} <= set(result)
            assert all(isinstance(v, float) for v in result['Metrics'].values())


def test_every_config_is_listed_under_its_file_name():
    _, models = load_index()
    configs = {osp.relpath(p, REPO_ROOT)
               for p in glob.glob(osp.join(REPO_ROOT, 'configs', '*', '*.py'))
               if '_base_' not in p}  # configs/_base_/: shared bases, not models
    assert {m['Config'] for m in models} == configs
    for model in models:
        assert model['Name'] == osp.splitext(osp.basename(model['Config']))[0]
    assert len(models) == len(FORMER_NAMES) == 11


def test_former_names_are_aliases():
    _, models = load_index()
    assert {m['Name']: m['Alias'] for m in models} == \
        {name: [former] for name, former in FORMER_NAMES.items()}


def test_paper_numbers():
    _, models = load_index()
    metrics = {m['Name']: {k: v for r in m['Results'] for k, v in r['Metrics'].items()}
               for m in models}
    assert metrics == PAPER_RESULTS
    assert {m['Name']: m['Metadata']['Parameters'] for m in models} == PAPER_PARAMS
    flops = {m['Name']: m['Metadata']['FLOPs'] for m in models if 'FLOPs' in m['Metadata']}
    assert flops == pytest.approx(PAPER_FLOPS)


def test_dense_backbone_parameters():
    """The official backbone plus one GroupNorm (weight, bias) per extra output stage: stages
    1-3 for RetinaNet (its FPN starts at stride 8, so the official code drops the stride-4
    norm), all four for Mask R-CNN and Semantic FPN."""
    _, models = load_index()
    for model in models:
        if 'Backbone Parameters' not in model['Metadata']:
            continue
        variant = re.search(r'_spanet_(s|m)_', model['Name']).group(1)
        stages = (1, 2) if model['Name'].startswith('retinanet') else (0, 1, 2)
        expected = OFFICIAL_BACKBONE_PARAMS[variant] + sum(2 * STAGE_DIMS[i] for i in stages)
        assert model['Metadata']['Backbone Parameters'] == expected, model['Name']


# ---------------------------------------------------------------------------------------------
# Model pages

def page_tables(task):
    """Every markdown table of configs/<task>/README.md as a list of {column: cell} rows."""
    with open(osp.join(REPO_ROOT, 'configs', task, 'README.md')) as f:
        lines = f.read().splitlines()
    tables, header = [], None
    for line in lines:
        if not line.startswith('|'):
            header = None
            continue
        cells = [c.strip() for c in line.strip('|').split('|')]
        if header is None:
            header = cells
            tables.append([])
        elif not set(''.join(cells)) <= set(':- '):
            tables[-1].append(dict(zip(header, cells)))
    return tables


def page_rows(task):
    """Config name -> its row in the page (found by its config link)."""
    rows = {}
    for table in page_tables(task):
        for row in table:
            (config, ) = re.findall(r'\[config\]\((\w+)\.py\)', row.get('Config', row.get(
                'config', '')))
            assert config not in rows, f'{config} appears twice on the {task} page'
            rows[config] = row
    return rows


#: Page column -> (metafile value -> the number the page prints).
COLUMNS = {
    'Params (M)': ('Parameters', lambda v: f'{v / 1e6:.2f}'),
    'Flops (G)': ('FLOPs', lambda v: f'{v / 1e9:.2f}'),
    'Params (M), paper': ('Parameters', lambda v: f'{v / 1e6:.0f}'),
    'FLOPs (G), paper': ('FLOPs', lambda v: f'{v / 1e9:.0f}'),
    'Backbone params (M)': ('Backbone Parameters', lambda v: f'{v / 1e6:.2f}'),
    'Backbone MACs (G)': ('Backbone FLOPs', lambda v: f'{v / 1e9:.2f}'),
    'Batch': ('Batch Size', str),
}
METRIC_COLUMNS = {'Top-1 (%), paper': 'Top 1 Accuracy', 'box AP, paper': 'box AP',
                  'mask AP, paper': 'mask AP', 'mIoU, paper': 'mIoU'}


@pytest.mark.parametrize('task', TASKS)
def test_model_page_tables_match_the_metafile(task):
    with open(osp.join(REPO_ROOT, 'configs', task, 'metafile.yml')) as f:
        models = yaml.safe_load(f)['Models']
    rows = page_rows(task)
    assert set(rows) == {m['Name'] for m in models}
    for model in models:
        row = rows[model['Name']]
        assert osp.isfile(osp.join(REPO_ROOT, 'configs', task, f'{model["Name"]}.py'))
        metrics = {k: v for r in model['Results'] for k, v in r['Metrics'].items()}
        checked = 0
        for column, cell in row.items():
            if column in COLUMNS:
                key, fmt = COLUMNS[column]
                assert cell == fmt(model['Metadata'][key]), (model['Name'], column)
                checked += 1
            elif column in METRIC_COLUMNS:
                assert float(cell) == metrics[METRIC_COLUMNS[column]], (model['Name'], column)
                checked += 1
        assert checked >= 2, f'no metafile number on the {task} page for {model["Name"]}'


def _record():
    with open(osp.join(REPO_ROOT, 'tests', 'data', 'official_recipes.yml')) as f:
        return yaml.safe_load(f)


#: The mim task of each metric (OpenMMLab's metafiles: mmdet's Mask R-CNN lists mask AP under
#: Instance Segmentation).
TASK_OF_METRIC = {'Top 1 Accuracy': 'Image Classification', 'box AP': 'Object Detection',
                  'mask AP': 'Instance Segmentation', 'mIoU': 'Semantic Segmentation'}


def test_metadata_is_the_official_recipe():
    """Input size, crop pct, epochs, batch and crop size as the record of the official recipes
    states them (tests/data/official_recipes.yml), each metric under its task."""
    record = _record()
    imagenet, coco, ade = record['imagenet'], record['coco'], record['ade20k']
    _, models = load_index()
    seen = set()
    for model in models:
        name, meta = model['Name'], model['Metadata']
        for result in model['Results']:
            for metric in result['Metrics']:
                assert result['Task'] == TASK_OF_METRIC[metric], (name, metric)
        if m := re.fullmatch(r'spanet_(\w+)_in1k', name):
            assert meta['Input Size'] == imagenet['augmentation']['input_size']['value']
            assert meta['Crop Pct'] == imagenet['variants'][m.group(1)]['crop_pct']['value'], name
        elif m := re.fullmatch(r'(retinanet|mask_rcnn)_spanet_[sm]_1x', name):
            assert meta['Epochs'] == coco['schedule']['max_epochs']['value'], name
            assert meta['Batch Size'] == coco[m.group(1)]['total_batch']['value'], name
        else:
            assert re.fullmatch(r'fpn_spanet_[sm]_80k', name), name
            assert meta['Crop Size'] == 'x'.join(map(str, ade['crop_size']['value'])), name
        seen.add(name)
    assert seen == set(FORMER_NAMES)
