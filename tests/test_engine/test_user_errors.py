"""Bad input gives one clear error naming the problem and the fix (non-zero exit for tools).

Cases covered elsewhere (not repeated here):
- unknown arch, incomplete arch dict: tests/test_models/test_backbones/test_spanet.py::test_arch_validation
- out-of-range out_indices: tests/test_models/test_backbones/test_spanet.py::test_bad_out_indices
- out-of-range frozen_stages: tests/test_models/test_backbones/test_spanet.py::test_bad_frozen_stages
- input not 4-D, wrong channel count, below minimum size: tests/test_models/test_backbones/test_spanet.py::test_bad_input
- truncated / corrupt file through the loader: tests/test_checkpoint.py
  (test_truncated_checkpoint), through the converter: tests/test_conversion.py
"""
import json
import os
import os.path as osp

import pytest
import torch
from mmengine.config import Config

import spanet_mm  # noqa: F401
from conftest import REPO_ROOT, generate_demo_data, load_tool, run_python
from spanet_mm import SPANet
from spanet_mm.engine import (ConfigKeyError, DatasetFormatError, DatasetNotFoundError,
                              check_cfg_options, check_dataset_formats, check_datasets)
from spanet_mm.engine.dataset_checks import check_ade20k_folder, check_coco_file, check_image_list

TRAIN = osp.join(REPO_ROOT, 'tools', 'train.py')
TEST = osp.join(REPO_ROOT, 'tools', 'test.py')
DEMO_CLS = osp.join(REPO_ROOT, 'configs', 'classification', 'demo', 'spanet_demo_cls.py')
TINY = dict(layers=[1, 1, 1, 1], embed_dims=[16, 32, 48, 64])

CLS_CONFIG = """
_base_ = {base!r}
data_root = {data_root!r}
model = dict(backbone=dict(arch=dict(embed_dims=[16, 32, 48, 64])), head=dict(in_channels=64))
train_dataloader = dict(dataset=dict(data_root=data_root))
val_dataloader = dict(dataset=dict(data_root=data_root))
test_dataloader = val_dataloader
custom_hooks = [dict(type='CheckpointCheckHook')]
"""


def run_tool(*args, timeout=240):
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONPATH=REPO_ROOT)
    return run_python(*args, env=env, timeout=timeout)


@pytest.fixture(scope='module')
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp('errors')
    generate_demo_data(root / 'data')
    config = root / 'cls.py'
    config.write_text(CLS_CONFIG.format(base=DEMO_CLS,
                                        data_root=str(root / 'data' / 'imagenet')))
    return root, config


def tiny_state(arch=TINY, prefix='backbone.'):
    model = SPANet(arch=arch, out_indices=(0, 1, 2, 3), init_cfg=None)
    return {prefix + k: v for k, v in model.state_dict().items()}


# --- checkpoints through tools/test.py (load_from into a classifier) ---------------------------
@pytest.mark.slow
def test_test_tool_refuses_a_checkpoint_of_another_model(demo, tmp_path):
    root, config = demo
    from mmpretrain.models import ResNet
    resnet = {f'backbone.{k}': v for k, v in ResNet(depth=18).state_dict().items()}
    torch.save(dict(state_dict=resnet), tmp_path / 'resnet18.pth')
    result = run_tool(TEST, config, tmp_path / 'resnet18.pth', '--work-dir', tmp_path / 'w')
    assert result.returncode != 0
    assert 'does not fit the model at all' in result.stderr
    assert 'not spanet_mm SPANet' in result.stderr


def test_checkpoint_of_another_arch_is_refused_on_load_from():
    """What CheckpointCheckHook says for load_from / tools/test.py (the CLI path is covered by
    test_test_tool_refuses_a_checkpoint_of_another_model)."""
    from spanet_mm.engine import CheckpointMismatchError
    from spanet_mm.checkpoint import check_state_dict
    deeper = dict(layers=[2, 2, 2, 2], embed_dims=[16, 32, 48, 64])  # 'm' is deeper than 's'
    checkpoint = dict(state_dict=tiny_state(deeper), meta=dict(arch=deeper))
    with pytest.raises(CheckpointMismatchError,
                       match=r"saved for SPANet arch \{'layers': \[2, 2, 2, 2\].*"
                       r'0 missing.*92 tensor\(s\) the model does not have.*another SPANet arch'):
        check_state_dict(tiny_state(), checkpoint, source='m.pth')
    # ... and the other way round ('s' into 'm'): blocks missing.
    with pytest.raises(CheckpointMismatchError, match=r'missing tensor\(s\).*stages\.0\.1\.'):
        check_state_dict(tiny_state(deeper), dict(state_dict=tiny_state()), source='s.pth')


@pytest.mark.slow
def test_test_tool_reports_a_truncated_checkpoint(demo, tmp_path):
    root, config = demo
    torch.save(dict(state_dict=tiny_state()), tmp_path / 'full.pth')
    data = (tmp_path / 'full.pth').read_bytes()
    (tmp_path / 'cut.pth').write_bytes(data[:len(data) // 2])
    result = run_tool(TEST, config, tmp_path / 'cut.pth', '--work-dir', tmp_path / 'w')
    assert result.returncode != 0
    assert 'truncated or corrupt' in result.stderr and 'Re-download' in result.stderr


@pytest.mark.slow
def test_test_tool_reports_a_missing_checkpoint(demo, tmp_path):
    root, config = demo
    result = run_tool(TEST, config, tmp_path / 'nope.pth', '--work-dir', tmp_path / 'w')
    assert result.returncode != 0 and 'not found' in result.stderr


def test_unconverted_official_checkpoint_names_the_converter():
    from spanet_mm.engine import CheckpointMismatchError
    from spanet_mm.checkpoint import check_state_dict
    own = tiny_state()
    official = {'patch_embed.proj.weight': torch.zeros(1), 'network.0.0.norm1.weight':
                torch.zeros(1)}
    with pytest.raises(CheckpointMismatchError,
                       match='looks like an official SPANet file: convert it first with\n'
                       '  python tools/model_converters/spanet_official_to_mm.py SRC DST'):
        check_state_dict(own, official, source='spanet-small.pth')


# --- checkpoints through init_cfg=Pretrained ----------------------------------------------------
def pretrained(path, arch=TINY, out_indices=(0, 1, 2, 3), **init):
    init = dict(type='Pretrained', checkpoint=str(path), **{'prefix': 'backbone.', **init})
    return SPANet(arch=arch, out_indices=out_indices, init_cfg=init)


def test_pretrained_checkpoint_of_another_model(tmp_path):
    torch.save(dict(state_dict={'conv1.weight': torch.zeros(64, 3, 7, 7)}), tmp_path / 'r.pth')
    with pytest.raises(ValueError, match="no key starting with 'backbone.'.*not a"):
        pretrained(tmp_path / 'r.pth').init_weights()


@pytest.mark.parametrize('other, message', [
    (dict(layers=[1, 1, 1, 1], embed_dims=[16, 32, 64, 96]), 'shape mismatch'),  # s vs b dims
    (dict(layers=[1, 1, 1, 1], embed_dims=[16, 32, 48, 64]), 'missing tensor'),  # s into m
])
def test_pretrained_checkpoint_of_another_arch(tmp_path, other, message):
    torch.save(dict(state_dict=tiny_state(other), meta=dict(arch=other)), tmp_path / 'o.pth')
    deeper = dict(layers=[2, 2, 2, 2], embed_dims=[16, 32, 48, 64])
    with pytest.raises(ValueError, match=r'o.pth does not fit the model \(it was saved for '
                       rf'SPANet arch .*[1-9]\d* {message}.*another SPANet arch'):
        pretrained(tmp_path / 'o.pth', arch=deeper).init_weights()


def test_pretrained_truncated_checkpoint(tmp_path):
    from spanet_mm.checkpoint import CheckpointLoadError
    torch.save(dict(state_dict=tiny_state()), tmp_path / 'full.pth')
    data = (tmp_path / 'full.pth').read_bytes()
    (tmp_path / 'cut.pth').write_bytes(data[:1000])
    with pytest.raises(CheckpointLoadError, match='truncated or corrupt'):
        pretrained(tmp_path / 'cut.pth').init_weights()


def test_pretrained_file_missing_gives_the_conversion_command(tmp_path):
    with pytest.raises(FileNotFoundError, match='spanet_official_to_mm.py spanet-small.pth'):
        pretrained(tmp_path / 'checkpoints' / 'spanet_s_in1k.pth').init_weights()


@pytest.mark.parametrize('saved_under', ['backbone.', 'module.backbone.'], ids=['plain', 'ddp'])
@pytest.mark.parametrize('prefix', ['backbone.', 'backbone'])
def test_pretrained_prefix_with_or_without_dot(tmp_path, prefix, saved_under):
    """mmengine's ``_load_checkpoint_with_prefix`` takes the prefix with or without its dot;
    a detector saved wrapped in DDP (keys under ``module.``) loads as an unwrapped one."""
    state = tiny_state(prefix=saved_under)
    torch.save(dict(state_dict=state), tmp_path / 'det.pth')
    model = pretrained(tmp_path / 'det.pth', prefix=prefix)
    model.init_weights()
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[saved_under + key]), key


def test_load_out_norms_must_name_output_stages(tmp_path):
    torch.save(dict(state_dict=tiny_state()), tmp_path / 'det.pth')
    with pytest.raises(AssertionError, match='names stages without an output norm'):
        pretrained(tmp_path / 'det.pth', out_indices=(0, 1, 2),
                   load_out_norms=(3, )).init_weights()


def test_load_out_norms_must_be_in_the_file(tmp_path):
    """A norm that ``load_out_norms`` asks for but the file lacks is refused, not left new."""
    state = {k: v for k, v in tiny_state().items() if not k.startswith('backbone.norm3.')}
    torch.save(dict(state_dict=state), tmp_path / 'det.pth')
    with pytest.raises(ValueError, match=r"has no \['norm3'\]"):
        pretrained(tmp_path / 'det.pth', load_out_norms=(3, )).init_weights()


# --- datasets -------------------------------------------------------------------------------------
@pytest.mark.slow
def test_missing_dataset_names_the_path(demo, tmp_path):
    root, config = demo
    missing = tmp_path / 'no_such_imagenet'
    result = run_tool(TRAIN, config, '--work-dir', tmp_path / 'w', '--cfg-options',
                      f'train_dataloader.dataset.data_root={missing}')
    assert result.returncode != 0
    assert str(missing) in result.stderr and 'Dataset not found' in result.stderr
    assert not (tmp_path / 'w').exists() or not any((tmp_path / 'w').rglob('*.pth'))


@pytest.mark.parametrize('wrap', [
    lambda leaf: dict(type='RepeatDataset', times=2, dataset=leaf),  # upstream ADE20K bases
    lambda leaf: dict(type='ConcatDataset', datasets=[leaf]),
], ids=['RepeatDataset', 'ConcatDataset'])
def test_missing_dataset_under_a_wrapper_names_the_path(tmp_path, wrap):
    """The paths of a dataset inside a dataset wrapper are checked as those of a plain one."""
    root = tmp_path / 'no_such_ade'
    leaf = dict(type='ADE20KDataset', data_root=str(root),
                data_prefix=dict(img_path='images/training', seg_map_path='annotations/training'))
    cfg = Config(dict(train_dataloader=dict(dataset=wrap(leaf))))
    with pytest.raises(DatasetNotFoundError, match='Dataset not found') as error:
        check_datasets(cfg, 'mmseg', ['train'])
    for path in (root, root / 'images' / 'training', root / 'annotations' / 'training'):
        assert f'train: {path}\n' in str(error.value)
    (root / 'images' / 'training').mkdir(parents=True)
    (root / 'annotations' / 'training').mkdir(parents=True)
    check_datasets(cfg, 'mmseg', ['train'])  # all there now


@pytest.mark.parametrize('listed', [False, True], ids=['metric', 'list of metrics'])
def test_missing_evaluator_annotation_file_names_the_path(tmp_path, listed):
    """CocoMetric reads its own ann_file (mmdet's configs point it at the val annotations):
    missing, it is reported with the dataset paths, before the Runner is built."""
    ann_file = tmp_path / 'annotations' / 'instances_val2017.json'
    metric = dict(type='CocoMetric', ann_file=str(ann_file))
    cfg = Config(dict(val_cfg=dict(), val_evaluator=[metric] if listed else metric,
                      val_dataloader=dict(dataset=dict(type='CocoDataset',
                                                       data_root=str(tmp_path)))))
    with pytest.raises(DatasetNotFoundError, match='Dataset not found') as error:
        check_datasets(cfg, 'mmdet', ['val'])
    assert f'val: {ann_file}\n' in str(error.value)
    ann_file.parent.mkdir()
    ann_file.write_text('{}')
    check_datasets(cfg, 'mmdet', ['val'])


@pytest.fixture
def coco(tmp_path):
    data = dict(images=[dict(id=1, file_name='a.jpg', height=8, width=8)],
                annotations=[dict(id=1, image_id=1, category_id=1, bbox=[0, 0, 2, 2],
                                  segmentation=[[0, 0, 2, 0, 2, 2]], area=4, iscrowd=0)],
                categories=[dict(id=1, name='circle')])
    return tmp_path, data


@pytest.mark.parametrize('break_it, message', [
    (lambda d: d.pop('images'), r"missing or non-list key\(s\) \['images'\]"),
    (lambda d: d.pop('categories'), r"\['categories'\]"),
    (lambda d: d['annotations'][0].pop('bbox'), r"annotations\[0\] lacks \['bbox'\]"),
    (lambda d: d['categories'][0].update(name='disk'), "classes \\['circle'\\] are not among"),
    (lambda d: (d['images'].clear(), d['annotations'].clear()), 'bad.json lists no images'),
])
def test_malformed_coco_json(coco, break_it, message):
    tmp_path, data = coco
    break_it(data)
    (tmp_path / 'bad.json').write_text(json.dumps(data))
    with pytest.raises(DatasetFormatError, match=message):
        check_coco_file(str(tmp_path / 'bad.json'), classes=['circle'], with_mask=True)
    (tmp_path / 'bad.json').write_text('{"images": [')
    with pytest.raises(DatasetFormatError, match='not valid JSON'):
        check_coco_file(str(tmp_path / 'bad.json'))


def test_malformed_coco_json_through_the_config(demo):
    """check_dataset_formats finds the annotation files of a detection config."""
    root, _ = demo
    cfg = Config.fromfile(osp.join(REPO_ROOT, 'configs', 'detection', 'demo',
                                   'mask_rcnn_spanet_demo.py'))
    coco_root = root / 'data' / 'coco'
    cfg.train_dataloader.dataset.data_root = str(coco_root) + '/'
    check_dataset_formats(cfg, 'mmdet', ['train'])  # the generated set is fine
    data = json.loads((coco_root / 'annotations' / 'instances_train2017.json').read_text())
    del data['annotations']
    (coco_root / 'annotations' / 'broken.json').write_text(json.dumps(data))
    cfg.train_dataloader.dataset.ann_file = 'annotations/broken.json'
    with pytest.raises(DatasetFormatError, match='broken.json is not a COCO instances file'):
        check_dataset_formats(cfg, 'mmdet', ['train'])


def test_ade20k_images_without_annotations(demo, tmp_path):
    root, _ = demo
    cfg = Config.fromfile(osp.join(REPO_ROOT, 'configs', 'segmentation', 'demo',
                                   'fpn_spanet_demo.py'))
    cfg.train_dataloader.dataset.data_root = str(root / 'data' / 'ade')
    check_dataset_formats(cfg, 'mmseg', ['train'])
    # Half the label maps lost (e.g. an interrupted copy).
    img_dir = tmp_path / 'images' / 'training'
    ann_dir = tmp_path / 'annotations' / 'training'
    img_dir.mkdir(parents=True)
    ann_dir.mkdir(parents=True)
    for i in range(4):
        (img_dir / f'ADE_train_{i}.jpg').write_bytes(b'x')
        if i < 2:
            (ann_dir / f'ADE_train_{i}.png').write_bytes(b'x')
    cfg.train_dataloader.dataset.data_root = str(tmp_path)
    with pytest.raises(DatasetFormatError,
                       match=r'2 of 4 images .* have no label map .*ADE_train_2.png'):
        check_dataset_formats(cfg, 'mmseg', ['train'])
    # An empty annotation folder.
    for f in ann_dir.iterdir():
        f.unlink()
    with pytest.raises(DatasetFormatError, match='4 of 4 images'):
        check_ade20k_folder(str(img_dir), str(ann_dir))


def test_ade20k_folder_without_annotations_through_train_tool(tmp_path):
    (tmp_path / 'images' / 'training').mkdir(parents=True)
    config = osp.join(REPO_ROOT, 'configs', 'segmentation', 'demo', 'fpn_spanet_demo.py')
    train = load_tool(TRAIN)
    with pytest.raises(DatasetNotFoundError) as error:
        train.main([config, '--work-dir', str(tmp_path / 'w'), '--cfg-options',
                    f'train_dataloader.dataset.data_root={tmp_path}',
                    f'val_dataloader.dataset.data_root={tmp_path}'])
    assert str(tmp_path / 'annotations' / 'training') in str(error.value)


def test_malformed_image_list(tmp_path):
    (tmp_path / 'train.txt').write_text('a/1.JPEG 0\na/2.JPEG\n')
    with pytest.raises(DatasetFormatError, match=r'line 2: .*<integer label>'):
        check_image_list(str(tmp_path / 'train.txt'))


@pytest.mark.parametrize('label', [4, -1])
def test_image_list_label_outside_the_classes(tmp_path, label):
    """A label that is no class index: test silently scores it wrong, train fails deep inside."""
    path = tmp_path / 'train.txt'
    path.write_text(f'a/1.JPEG 0\nb/2.JPEG 3\nc/3.JPEG {label}\nd/4.JPEG 1\n')
    if label >= 0:
        check_image_list(str(path), num_classes=label + 1)  # enough classes: fine
    with pytest.raises(DatasetFormatError) as error:
        check_image_list(str(path), num_classes=4)
    assert f'{path}, line 3: label {label} is outside the allowed range 0 .. 3' in str(error.value)


def test_image_list_labels_through_the_config(demo, tmp_path):
    """The configs' ImageNet(split=...) lists (meta/<split>.txt) are checked against the
    classes of metainfo, and against ImageNet's own (1000) without metainfo."""
    from mmpretrain.datasets import ImageNet
    cfg = Config.fromfile(DEMO_CLS)
    classes = cfg.train_dataloader.dataset.metainfo.classes
    for phase in ('train', 'val'):
        cfg[f'{phase}_dataloader'].dataset.data_root = str(demo[0] / 'data' / 'imagenet')
    check_dataset_formats(cfg, 'mmpretrain', ['train', 'val'])  # the generated set is fine
    meta = tmp_path / 'meta'
    meta.mkdir()
    (meta / 'train.txt').write_text(''.join(f'train/{c}/0.JPEG {i}\n'
                                            for i, c in enumerate(classes)))
    (meta / 'val.txt').write_text(f'val/0.JPEG 0\nval/1.JPEG {len(classes)}\n')
    for phase in ('train', 'val'):
        cfg[f'{phase}_dataloader'].dataset.data_root = str(tmp_path)
    check_dataset_formats(cfg, 'mmpretrain', ['train'])
    with pytest.raises(DatasetFormatError) as error:
        check_dataset_formats(cfg, 'mmpretrain', ['train', 'val'])
    assert (f'{meta / "val.txt"}, line 2: label {len(classes)} is outside the allowed range '
            f'0 .. {len(classes) - 1}') in str(error.value)
    # Without metainfo the dataset has ImageNet's classes.
    cfg.val_dataloader.dataset.pop('metainfo')
    check_dataset_formats(cfg, 'mmpretrain', ['val'])
    num_classes = len(ImageNet.METAINFO['classes'])
    (meta / 'val.txt').write_text(f'val/0.JPEG {num_classes - 1}\nval/1.JPEG {num_classes}\n')
    with pytest.raises(DatasetFormatError) as error:
        check_dataset_formats(cfg, 'mmpretrain', ['val'])
    assert (f'line 2: label {num_classes} is outside the allowed range 0 .. {num_classes - 1}'
            in str(error.value))


@pytest.mark.parametrize('text, message', [
    ('a/1.JPEG 0\n\nc/3.JPEG 1\n', 'line 2 is empty'),
    ('a/1.JPEG 0\nc/3.JPEG 1\n\n', 'line 3 is empty'),
    ('a/1.JPEG 0\nb/2.JPEG\t1\n', r"line 2: 'b/2.JPEG\t1' is not"),
    ('a/1.JPEG 0\nb/2.JPEG  1\n', "line 2: 'b/2.JPEG  1' is not"),
], ids=['empty line', 'empty last line', 'tab', 'two spaces'])
def test_image_list_lines_mmpretrain_cannot_read(tmp_path, text, message):
    """mmpretrain splits a line at its last space and fails on an empty one."""
    path = tmp_path / 'train.txt'
    path.write_text(text)
    with pytest.raises(DatasetFormatError) as error:
        check_image_list(str(path))
    assert f'{path}, {message}' in str(error.value)


def test_empty_image_list(tmp_path):
    """No samples: mmengine fails with 'need at least one array to concatenate'."""
    path = tmp_path / 'val.txt'
    path.write_text('')
    with pytest.raises(DatasetFormatError) as error:
        check_image_list(str(path))
    assert f'{path} lists no images' in str(error.value)


def test_image_list_without_labels(tmp_path):
    """ImageNet(split='test') reads paths only: they pass, an empty list does not."""
    meta = tmp_path / 'meta'
    meta.mkdir()
    (meta / 'test.txt').write_text('test/1.JPEG\ntest/2.JPEG\n')
    cfg = Config(dict(test_cfg=dict(), test_dataloader=dict(
        dataset=dict(type='ImageNet', data_root=str(tmp_path), split='test'))))
    check_dataset_formats(cfg, 'mmpretrain', ['test'])
    (meta / 'test.txt').write_text('')
    with pytest.raises(DatasetFormatError) as error:
        check_dataset_formats(cfg, 'mmpretrain', ['test'])
    assert f'{meta / "test.txt"} lists no images' in str(error.value)


def test_coco_annotations_of_unlisted_categories(coco):
    """mmdet drops such annotations silently (a lower mAP, no error)."""
    tmp_path, data = coco
    data['annotations'] = [dict(data['annotations'][0], id=i) for i in range(1, 6)]
    unlisted = max(item['id'] for item in data['categories']) + 6
    for ann in data['annotations'][1:3]:
        ann['category_id'] = unlisted
    (tmp_path / 'bad.json').write_text(json.dumps(data))
    with pytest.raises(DatasetFormatError) as error:
        check_coco_file(str(tmp_path / 'bad.json'))
    assert ('bad.json: 2 of 5 annotations have a category_id that is not among the ids of '
            f'"categories" (e.g. annotation 2 has category_id {unlisted})') in str(error.value)


def test_coco_subset_file_with_annotations_of_unlisted_images_passes(coco):
    """A file cut down to some images but keeping every annotation: mmdet loads the listed
    images with all their instances (and COCOeval evaluates the listed ones only)."""
    from mmdet.registry import DATASETS
    tmp_path, data = coco
    image, annotation = data['images'][0], data['annotations'][0]
    data['annotations'] = [annotation, dict(annotation, id=2), dict(annotation, id=3, image_id=2)]
    (tmp_path / 'subset.json').write_text(json.dumps(data))  # image 2 is not listed
    check_coco_file(str(tmp_path / 'subset.json'))
    dataset = DATASETS.build(dict(type='CocoDataset', ann_file=str(tmp_path / 'subset.json'),
                                  metainfo=dict(classes=('circle', )), data_prefix=dict(img=''),
                                  pipeline=[], test_mode=True))
    assert len(dataset) == 1 and len(dataset.get_data_info(0)['instances']) == 2
    assert dataset.get_data_info(0)['img_id'] == image['id']


def test_coco_without_annotations(coco):
    """Training on it fails deep in mmengine and evaluating it gives mAP -1; only writing
    predictions (format_only, test-dev's image_info file without "annotations") needs none."""
    tmp_path, data = coco
    data['annotations'] = []
    path = tmp_path / 'empty.json'
    path.write_text(json.dumps(data))
    dataset = dict(type='CocoDataset', ann_file=str(path))
    cfg = Config(dict(train_dataloader=dict(dataset=dataset),
                      val_dataloader=dict(dataset=dict(dataset, test_mode=True)), val_cfg=dict(),
                      val_evaluator=dict(type='CocoMetric', ann_file=str(path))))
    for phase in ('train', 'val'):
        with pytest.raises(DatasetFormatError, match='empty.json has no annotations'):
            check_dataset_formats(cfg, 'mmdet', [phase])
    cfg.val_evaluator.format_only = True
    check_dataset_formats(cfg, 'mmdet', ['val'])
    del data['annotations']
    path.write_text(json.dumps(data))
    check_dataset_formats(cfg, 'mmdet', ['val'])
    with pytest.raises(DatasetFormatError, match=r"non-list key\(s\) \['annotations'\]"):
        check_dataset_formats(cfg, 'mmdet', ['train'])


def test_coco_without_annotations_and_a_metric_that_evaluates(coco):
    """format_only spares the ground truth only when every evaluator only writes predictions:
    next to one that evaluates (mAP -1 without annotations), the file is still refused."""
    tmp_path, data = coco
    data['annotations'] = []
    path = tmp_path / 'empty.json'
    path.write_text(json.dumps(data))
    cfg = Config(dict(val_cfg=dict(), val_dataloader=dict(dataset=dict(
        type='CocoDataset', ann_file=str(path), test_mode=True)), val_evaluator=[
            dict(type='CocoMetric', ann_file=str(path), format_only=True),
            dict(type='CocoMetric', ann_file=str(path))]))
    with pytest.raises(DatasetFormatError, match='empty.json has no annotations'):
        check_dataset_formats(cfg, 'mmdet', ['val'])


def write_png(path, array):
    import mmcv
    assert mmcv.imwrite(array, str(path))  # makes the folders


#: Real layouts of mmseg datasets other than ADE20K (upstream configs/_base_/datasets/*.py):
#: ``(type, data_prefix, [(image, its label map)], files of the release that are not read)``.
SEG_LAYOUTS = {
    'Cityscapes': ('CityscapesDataset', dict(img_path='leftImg8bit/train',
                                             seg_map_path='gtFine/train'),
                   [('aachen/aachen_000000_000019_leftImg8bit.png',
                     'aachen/aachen_000000_000019_gtFine_labelTrainIds.png'),
                    ('bremen/bremen_000001_000019_leftImg8bit.png',
                     'bremen/bremen_000001_000019_gtFine_labelTrainIds.png')],
                   ['gtFine/train/aachen/aachen_000000_000019_gtFine_color.png',
                    'gtFine/train/aachen/aachen_000000_000019_gtFine_labelIds.png']),
    'COCO-Stuff': ('COCOStuffDataset', dict(img_path='images/train2017',
                                            seg_map_path='annotations/train2017'),
                   [('000000000009.jpg', '000000000009_labelTrainIds.png'),
                    ('000000000025.jpg', '000000000025_labelTrainIds.png')],
                   ['annotations/train2017/000000000009.png']),
    'LoveDA': ('LoveDADataset', dict(img_path='img_dir/train', seg_map_path='ann_dir/train'),
               [('0.png', '0.png'), ('1.png', '1.png')], []),
}


def seg_dataset(root, layout):
    """A 2-image set of ``layout`` under ``root`` and its dataset config."""
    import numpy as np
    kind, prefix, pairs, extra = SEG_LAYOUTS[layout]
    for image, label in pairs:
        write_png(root / prefix['img_path'] / image, np.zeros((8, 16, 3), np.uint8))
        write_png(root / prefix['seg_map_path'] / label, np.ones((8, 16), np.uint8))
    for path in extra:
        write_png(root / path, np.zeros((8, 16), np.uint8))
    return dict(type=kind, data_root=str(root), data_prefix=prefix,
                pipeline=[dict(type='LoadImageFromFile'), dict(type='LoadAnnotations')])


@pytest.mark.parametrize('wrap', [
    lambda leaf: leaf,
    lambda leaf: dict(type='RepeatDataset', times=2, dataset=leaf),
], ids=['plain', 'RepeatDataset'])
@pytest.mark.parametrize('layout', list(SEG_LAYOUTS))
def test_segmentation_layouts_other_than_ade20k_pass(tmp_path, layout, wrap):
    """A Cityscapes, COCO-Stuff or LoveDA set, which mmseg loads, passes the checks: they use
    the class's own suffixes and scan the folders recursively (Cityscapes' <city>/), as
    BaseSegDataset does; a lost label map is still refused. (Before, every mmseg set was
    checked as ADE20K: flat folder of .jpg, <name>.png.)"""
    from mmengine.registry import DefaultScope
    from mmseg.registry import DATASETS
    leaf = seg_dataset(tmp_path, layout)
    cfg = Config(dict(train_dataloader=dict(dataset=wrap(leaf))))
    check_datasets(cfg, 'mmseg', ['train'])
    check_dataset_formats(cfg, 'mmseg', ['train'])
    with DefaultScope.overwrite_default_scope('mmseg'):  # mmseg itself loads the 2 samples
        samples = list(DATASETS.build(leaf))
    prefix, pairs = leaf['data_prefix'], SEG_LAYOUTS[layout][2]
    img_dir, ann_dir = tmp_path / prefix['img_path'], tmp_path / prefix['seg_map_path']
    assert [(s['img_path'], s['seg_map_path']) for s in samples] == [
        (str(img_dir / image), str(ann_dir / label)) for image, label in pairs]
    assert [s['gt_seg_map'].shape for s in samples] == [(8, 16)] * 2
    image, label = pairs[0]
    (ann_dir / label).unlink()
    with pytest.raises(DatasetFormatError) as error:
        check_dataset_formats(cfg, 'mmseg', ['train'])
    assert (f'1 of 2 images in {img_dir} have no label map in {ann_dir} (e.g. {image} needs '
            f'{ann_dir / label}). {leaf["type"]} reads') in str(error.value)


def test_segmentation_set_without_label_maps_in_the_config(tmp_path):
    """``data_prefix`` without ``seg_map_path`` (ADE20K's unlabelled test images): mmseg reads
    no label maps, so none is asked for (before, ``annotations/training`` was assumed)."""
    import numpy as np
    for i in range(2):
        write_png(tmp_path / 'images' / 'testing' / f'ADE_test_{i}.jpg',
                  np.zeros((8, 16, 3), np.uint8))
    (tmp_path / 'annotations' / 'training').mkdir(parents=True)  # of the labelled splits
    leaf = dict(type='ADE20KDataset', data_root=str(tmp_path),
                data_prefix=dict(img_path='images/testing'),
                pipeline=[dict(type='LoadImageFromFile')])
    cfg = Config(dict(test_cfg=dict(), test_dataloader=dict(dataset=leaf)))
    check_datasets(cfg, 'mmseg', ['test'])
    check_dataset_formats(cfg, 'mmseg', ['test'])
    cfg.test_dataloader.dataset.data_prefix.seg_map_path = 'annotations/training'
    with pytest.raises(DatasetFormatError, match='2 of 2 images .* have no label map'):
        check_dataset_formats(cfg, 'mmseg', ['test'])


@pytest.fixture
def coco_panoptic(tmp_path):
    """A 2-image COCO panoptic set (annotations/panoptic_train2017.json and its PNG folder),
    as mmdet's configs/_base_/datasets/coco_panoptic.py reads it."""
    import numpy as np
    root = tmp_path / 'coco'
    images, annotations = [], []
    for i in (1, 2):
        name = f'{i:012d}'
        write_png(root / 'train2017' / f'{name}.jpg', np.zeros((8, 16, 3), np.uint8))
        png = np.zeros((8, 16, 3), np.uint8)
        png[:, :8, 2], png[:, 8:, 2] = 1, 2  # segment ids in R (BGR written)
        write_png(root / 'annotations' / 'panoptic_train2017' / f'{name}.png', png)
        images.append(dict(id=i, file_name=f'{name}.jpg', height=8, width=16))
        annotations.append(dict(image_id=i, file_name=f'{name}.png', segments_info=[
            dict(id=1, category_id=1, iscrowd=0, bbox=[0, 0, 8, 8], area=64),
            dict(id=2, category_id=199, iscrowd=0, bbox=[8, 0, 8, 8], area=64)]))
    categories = [dict(id=1, name='person', supercategory='person', isthing=1),
                  dict(id=199, name='wall-other-merged', supercategory='wall', isthing=0)]
    (root / 'annotations' / 'panoptic_train2017.json').write_text(
        json.dumps(dict(images=images, annotations=annotations, categories=categories)))
    return root


def test_coco_panoptic_passes(coco_panoptic):
    """CocoPanopticDataset's json (per-image ``segments_info``, no ``bbox`` per annotation),
    which mmdet loads, is not checked as a COCO instances file; a CocoDataset on the same file
    is still refused, as mmdet's COCO API fails on it."""
    from mmengine.registry import DefaultScope
    from mmdet.registry import DATASETS
    root = coco_panoptic
    ann_file = 'annotations/panoptic_train2017.json'
    dataset = dict(type='CocoPanopticDataset', data_root=str(root), ann_file=ann_file,
                   data_prefix=dict(img='train2017/', seg='annotations/panoptic_train2017/'),
                   pipeline=[])
    cfg = Config(dict(
        train_dataloader=dict(dataset=dataset), val_cfg=dict(),
        val_dataloader=dict(dataset=dict(dataset, test_mode=True)),
        val_evaluator=dict(type='CocoPanopticMetric', ann_file=str(root / ann_file),
                           seg_prefix=str(root / 'annotations' / 'panoptic_train2017'))))
    check_datasets(cfg, 'mmdet', ['train', 'val'])
    check_dataset_formats(cfg, 'mmdet', ['train', 'val'])
    with DefaultScope.overwrite_default_scope('mmdet'):
        built = DATASETS.build(dataset)  # mmdet reads it: 2 images, a thing and a stuff each
        infos = [built.get_data_info(i) for i in range(len(built))]
        assert [len(info['segments_info']) for info in infos] == [2, 2]
        assert all(osp.isfile(info['seg_map_path']) for info in infos)
        cfg.train_dataloader.dataset.type = 'CocoDataset'
        with pytest.raises(KeyError):
            DATASETS.build(cfg.train_dataloader.dataset)
    with pytest.raises(DatasetFormatError,
                       match=r"annotations\[0\] lacks \['id', 'category_id', 'bbox'\]"):
        check_dataset_formats(cfg, 'mmdet', ['train'])


@pytest.mark.parametrize('kind, checked', [
    ('CocoDataset', True), ('CityscapesDataset', True), ('Objects365V2Dataset', True),
    ('mmdet.iSAIDDataset', True), ('LVISV1Dataset', False), ('LVISV05Dataset', False),
    ('ADE20KPanopticDataset', False), ('ODVGDataset', False)])
def test_coco_instances_check_only_for_datasets_reading_them(coco, kind, checked):
    """CocoDataset and the subclasses with its loader (mmdet's Cityscapes, iSAID, ...) or
    Objects365's read the COCO instances format; LVIS (LVIS API, v1 images have `coco_url`, not
    `file_name`), the panoptic and other json datasets read their own and are not checked."""
    tmp_path, data = coco
    for image in data['images']:  # as in LVIS v1's lvis_v1_val.json
        image['coco_url'] = f'http://images.cocodataset.org/val2017/{image.pop("file_name")}'
    (tmp_path / 'val.json').write_text(json.dumps(data))
    cfg = Config(dict(train_dataloader=dict(dataset=dict(
        type='ClassBalancedDataset', oversample_thr=1e-3,
        dataset=dict(type=kind, data_root=str(tmp_path), ann_file='val.json')))))
    if checked:
        with pytest.raises(DatasetFormatError, match=r"images\[0\] lacks \['file_name'\]"):
            check_dataset_formats(cfg, 'mmdet', ['train'])
    else:
        check_dataset_formats(cfg, 'mmdet', ['train'])


# --- unknown config keys --------------------------------------------------------------------------
@pytest.mark.slow
def test_unknown_backbone_key_names_the_key(demo, tmp_path):
    root, config = demo
    result = run_tool(TRAIN, config, '--work-dir', tmp_path / 'w', '--cfg-options',
                      'model.backbone.archh=s')
    assert result.returncode != 0
    assert "unexpected keyword argument 'archh'" in result.stderr
    assert 'SPANet' in result.stderr


def test_unknown_nested_runner_key_names_the_key(demo, tmp_path):
    """In-process (the CLI exit code for such TypeErrors is checked just above)."""
    root, config = demo
    with pytest.raises(TypeError, match="unexpected keyword argument 'max_epoch'"):
        load_tool(TRAIN).main([str(config), '--work-dir', str(tmp_path / 'w'),
                               '--cfg-options', 'train_cfg.max_epoch=3'])


@pytest.mark.parametrize('key, message', [
    ('max_epochs', r"no key 'max_epochs'"),
    ('trian_dataloader.batch_size', r"Did you mean 'train_dataloader'"),
])
def test_unknown_top_level_key(demo, key, message):
    root, config = demo
    cfg = Config.fromfile(str(config))
    with pytest.raises(ConfigKeyError, match=message):
        check_cfg_options(cfg, {key: 3})
    check_cfg_options(cfg, {'train_cfg.max_epochs': 3, 'model.backbone.drop_path_rate': 0.1,
                            'find_unused_parameters': True})  # real keys pass


@pytest.mark.slow
def test_unknown_top_level_key_through_train_tool(demo, tmp_path):
    root, config = demo
    result = run_tool(TRAIN, config, '--work-dir', tmp_path / 'w', '--cfg-options',
                      'trian_dataloader.batch_size=2')
    assert result.returncode != 0
    assert "Did you mean 'train_dataloader'" in result.stderr
    assert not (tmp_path / 'w').exists()


def tta_runner(work_dir, load_from):
    """A real Runner around the demo classifier wrapped as by tools/test.py --tta."""
    from mmengine.runner import Runner
    from mmpretrain.models import AverageClsScoreTTA

    from spanet_mm.apis import init_model
    model = init_model(DEMO_CLS)
    return Runner(model=AverageClsScoreTTA(module=model), work_dir=str(work_dir),
                  load_from=str(load_from), custom_hooks=[dict(type='CheckpointCheckHook')],
                  default_scope='mmpretrain')


def test_checkpoint_check_hook_sees_through_tta_wrapper(tmp_path):
    """tools/test.py --tta wraps the model; mmengine loads into `.module`, so does the check:
    a checkpoint of the classifier loads into the wrapped model, another model's is refused."""
    from spanet_mm.engine import CheckpointMismatchError
    saved = tta_runner(tmp_path / 'a', tmp_path / 'unused.pth').model.module.state_dict()
    torch.save(dict(state_dict=saved), tmp_path / 'cls.pth')
    runner = tta_runner(tmp_path / 'b', tmp_path / 'cls.pth')
    assert not torch.equal(runner.model.module.state_dict()['head.fc.weight'],
                           saved['head.fc.weight'])  # another random init
    runner.load_or_resume()
    loaded = runner.model.module.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in saved.items())

    torch.save(dict(state_dict={'conv1.weight': torch.zeros(1)}), tmp_path / 'other.pth')
    runner = tta_runner(tmp_path / 'c', tmp_path / 'other.pth')
    before = {k: v.clone() for k, v in runner.model.module.state_dict().items()}
    with pytest.raises(CheckpointMismatchError, match='other.pth does not fit the model at all'):
        runner.load_or_resume()
    assert all(torch.equal(v, before[k]) for k, v in runner.model.module.state_dict().items())


def test_pretrained_checkpoint_of_a_deeper_arch_with_the_same_widths(tmp_path):
    """M's file into an S config: same widths, more blocks; the extra blocks are refused, not
    dropped silently."""
    deeper = dict(TINY, layers=[2, 2, 2, 2])
    torch.save(dict(state_dict=tiny_state(deeper)), tmp_path / 'deeper.pth')
    with pytest.raises(ValueError, match=r'tensor\(s\) the model does not have.*stages\.0\.1\.'):
        pretrained(tmp_path / 'deeper.pth').init_weights()
