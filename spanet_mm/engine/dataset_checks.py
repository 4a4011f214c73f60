# Copyright (c) spanet_mm contributors. All rights reserved.
"""Dataset checks that turn a missing or malformed dataset into one clear error before a long
run starts (``tools/train.py`` / ``tools/test.py``, through :func:`.launch.check_data`):

- :func:`check_datasets`: dataset paths (data roots, annotation files, image folders, the
  evaluators' annotation files) that do not exist, with the expected layout of the task.
- :func:`check_dataset_formats`: annotation files that exist but are malformed (a COCO json
  without ``images``/``annotations``/``categories``, without annotations, or with annotations
  of categories it does not list; a segmentation folder (ADE20K, Cityscapes, ...)
  whose images have no label maps; an ImageNet list file that is empty, has bad lines or labels
  outside the dataset's classes). Each check runs only for the dataset types that read the
  format it checks (the config's ``type`` resolved through the toolbox's DATASETS registry):
  COCO instances for CocoDataset and the subclasses with its loader (not CocoPanopticDataset,
  not LVIS), label-map folders for mmseg's BaseSegDataset types with BaseSegDataset's loader
  (with the class's own suffixes), list files for mmpretrain's CustomDataset/ImageNet types;
  other types are left to the toolbox.

Each raises an error whose message names the problem and the fix.
"""
import importlib
import json
import os.path as osp
from operator import itemgetter
from typing import Iterable, Iterator, List, Optional, Tuple

from mmengine import fileio
from mmengine.fileio import list_from_file

from ..errors import UserError

class DatasetFormatError(UserError, ValueError):
    """An annotation file or folder that exists but is not in the expected format."""


# --- dataset paths -----------------------------------------------------------------------------
#: What each task expects on disk, for the missing-dataset error (docs/datasets.md has more).
EXPECTED_LAYOUT = {
    'mmpretrain': ('ImageNet layout:\n'
                   '  <data_root>/train/<class>/<image>.JPEG\n'
                   '  <data_root>/val/<image>.JPEG\n'
                   '  <data_root>/meta/{train,val}.txt   ("<relative path> <label>" per line)'),
    'mmdet': ('COCO layout:\n'
              '  <data_root>/annotations/instances_{train,val}2017.json\n'
              '  <data_root>/train2017/*.jpg\n'
              '  <data_root>/val2017/*.jpg'),
    'mmseg': ('ADE20K layout (ADEChallengeData2016):\n'
              '  <data_root>/images/{training,validation}/*.jpg\n'
              '  <data_root>/annotations/{training,validation}/*.png'),
}


class DatasetNotFoundError(UserError, FileNotFoundError):
    """A dataset path named by the config does not exist."""


def _leaf_datasets(dataset_cfg) -> Iterator[dict]:
    """Dataset configs under wrappers (RepeatDataset, ClassBalancedDataset, ConcatDataset)."""
    if dataset_cfg is None:
        return
    if isinstance(dataset_cfg, (list, tuple)):
        for item in dataset_cfg:
            yield from _leaf_datasets(item)
    elif 'datasets' in dataset_cfg:
        yield from _leaf_datasets(dataset_cfg['datasets'])
    elif 'dataset' in dataset_cfg:
        yield from _leaf_datasets(dataset_cfg['dataset'])
    else:
        yield dataset_cfg


def _active_datasets(cfg, phases: List[str]) -> Iterator[tuple]:
    """``(phase, dataset_cfg)`` of every dataloader that will run in ``phases``."""
    for phase in phases:
        loader = cfg.get(f'{phase}_dataloader')
        if not loader or (phase != 'train' and cfg.get(f'{phase}_cfg') is None):
            continue
        for dataset in _leaf_datasets(loader.get('dataset')):
            yield phase, dataset


def _is_local(path: str) -> bool:
    return bool(path) and '://' not in path


def _join(root: str, path: str) -> str:
    return path if not root or osp.isabs(path) or not _is_local(root) else osp.join(root, path)


def _dataset_paths(scope: str, dataset: dict) -> List[str]:
    """The files and folders one dataset config needs, per task."""
    root = dataset.get('data_root') or ''
    paths = [root] if root else []
    if dataset.get('ann_file'):
        paths.append(_join(root, dataset['ann_file']))
    prefix = dataset.get('data_prefix') or ''
    if scope == 'mmpretrain' and not prefix and dataset.get('split'):
        prefix = dataset['split']  # ImageNet(split='train') reads <data_root>/train
    prefixes = prefix.values() if isinstance(prefix, dict) else [prefix]
    paths += [_join(root, p) for p in prefixes if p]
    return paths


def _evaluator_paths(evaluator) -> List[str]:
    """Annotation files read by evaluators (CocoMetric's ann_file)."""
    evaluators = evaluator if isinstance(evaluator, (list, tuple)) else [evaluator]
    return [e['ann_file'] for e in evaluators if isinstance(e, dict) and e.get('ann_file')]


def check_datasets(cfg, scope: str, phases: List[str]) -> None:
    """Fails before the Runner is built if a dataset path of ``phases`` is missing.

    ``phases`` are among 'train', 'val', 'test'; only the dataloaders that will run are checked.
    """
    missing = []
    for phase, dataset in _active_datasets(cfg, phases):
        for path in _dataset_paths(scope, dataset):
            missing.append((phase, path))
    for phase in phases:
        missing += [(phase, p) for p in _evaluator_paths(cfg.get(f'{phase}_evaluator'))]
    missing = [(phase, path) for phase, path in dict.fromkeys(missing)
               if _is_local(path) and not osp.exists(path)]
    if missing:
        listing = '\n'.join(f'  {phase}: {osp.abspath(path)}' for phase, path in missing)
        raise DatasetNotFoundError(
            f'Dataset not found. Missing path(s):\n{listing}\n'
            f'Expected {EXPECTED_LAYOUT[scope]}\n'
            'See docs/datasets.md for where to get the data and where to put it (or change '
            '`data_root` with --cfg-options). For a small synthetic set run '
            '`python tools/generate_demo_data.py` and use configs/*/demo/.')


# --- dataset formats ---------------------------------------------------------------------------
#: COCO files larger than this are not parsed twice (the dataset parses them anyway; the
#: official files are well-formed): the format check is for hand-made and converted sets.
MAX_CHECKED_COCO_BYTES = 64 * 2**20

COCO_FIELDS = {
    'images': ('id', 'file_name', 'height', 'width'),
    'annotations': ('id', 'image_id', 'category_id', 'bbox'),
    'categories': ('id', 'name'),
}


def check_coco_file(path: str, classes: Optional[Iterable[str]] = None,
                    with_mask: bool = False, need_annotations: bool = True) -> None:
    """A COCO instances json: the three lists, their fields, the ids the annotations refer to,
    and the config's classes.

    ``need_annotations=False`` is for a set whose predictions are only written (an evaluator
    with ``format_only=True``, e.g. test-dev's ``image_info`` file): it may have no annotations.
    """
    fix = ('Fix the file or use the official COCO annotations '
           '(annotations/instances_{train,val}2017.json); see docs/datasets.md.')
    try:
        with open(path) as f:
            data = json.load(f)
    except (ValueError, UnicodeDecodeError) as err:
        raise DatasetFormatError(f'{path} is not valid JSON ({err}). {fix}') from err
    if not isinstance(data, dict):
        raise DatasetFormatError(
            f'{path} holds a {type(data).__name__}, not a COCO dict with "images", '
            f'"annotations" and "categories". {fix}')
    if not need_annotations and 'annotations' not in data:
        data['annotations'] = []
    missing = [k for k in COCO_FIELDS if not isinstance(data.get(k), list)]
    if missing:
        raise DatasetFormatError(
            f'{path} is not a COCO instances file: missing or non-list key(s) {missing} '
            f'(it has {sorted(data)}). {fix}')
    fields = {k: v + (('segmentation', ) if with_mask and k == 'annotations' else ())
              for k, v in COCO_FIELDS.items()}
    for section, required in fields.items():
        required_set = set(required)
        for index, item in enumerate(data[section]):
            if isinstance(item, dict) and required_set <= item.keys():
                continue
            lacking = [f for f in required if not isinstance(item, dict) or f not in item]
            raise DatasetFormatError(
                f'{path}: {section}[{index}] lacks {lacking} (every entry of "{section}" '
                f'needs {list(required)}). {fix}')
    if not data['images']:
        raise DatasetFormatError(f'{path} lists no images. {fix}')
    annotations = data['annotations']
    if not annotations and need_annotations:
        raise DatasetFormatError(
            f'{path} has no annotations ("annotations" is empty): training on it fails with '
            '"need at least one array to concatenate" (mmdet drops the images without '
            'annotations), and an evaluation has no ground truth (every mAP is -1). Use the '
            'annotated file, or set `format_only=True` in the test evaluator to only write the '
            'predictions.')
    # Annotations of images the file does not list are harmless (mmdet and COCOeval read the
    # listed images only: a subset file); those of unlisted categories are dropped in training
    # and evaluation alike, silently.
    for key, section in (('category_id', 'categories'), ):
        try:
            unknown = set(map(itemgetter(key), annotations)) - {i['id'] for i in data[section]}
        except TypeError as err:  # an unhashable id (a list, a dict)
            raise DatasetFormatError(
                f'{path}: "{section}" ids and the annotations\' {key}s must be integers '
                f'({err}). {fix}') from err
        if unknown:
            count = sum(1 for a in annotations if a[key] in unknown)
            example = next(a for a in annotations if a[key] in unknown)
            raise DatasetFormatError(
                f'{path}: {count} of {len(annotations)} annotations have a {key} that is not '
                f'among the ids of "{section}" (e.g. annotation {example["id"]!r} has {key} '
                f'{example[key]!r}); mmdet would drop them silently. Add the missing '
                f'{section} or remove those annotations. {fix}')
    if classes is not None:
        names = {c['name'] for c in data['categories']}
        absent = [c for c in classes if c not in names]
        if absent:
            raise DatasetFormatError(
                f'{path}: the config\'s classes {absent} are not among the file\'s categories '
                f'{sorted(names)}, so their images would be dropped silently. Set '
                '`metainfo=dict(classes=...)` in the dataset config to category names of the '
                'file.')


def check_seg_folder(img_dir: str, ann_dir: Optional[str], img_suffix: str = '.jpg',
                     seg_map_suffix: str = '.png', dataset: str = 'ADE20KDataset') -> None:
    """Every image of a segmentation split has its label map, found as mmseg's
    ``BaseSegDataset.load_data_list`` finds them: the ``img_suffix`` files under ``img_dir``
    (recursively, e.g. Cityscapes' ``<city>/`` folders), each reading
    ``<ann_dir>/<its path without img_suffix><seg_map_suffix>``; ``ann_dir=None``: no label maps
    are read (``data_prefix`` without ``seg_map_path``)."""
    if not osp.isdir(img_dir) or (ann_dir is not None and not osp.isdir(ann_dir)):
        return  # missing paths are check_datasets' business
    ade20k = dataset == 'ADE20KDataset'
    images = sorted(fileio.list_dir_or_file(img_dir, list_dir=False, suffix=img_suffix,
                                            recursive=True))
    if not images:
        hint = ('Expected the ADE20K layout (images/{training,validation}/*.jpg, '
                'annotations/{training,validation}/*.png); see docs/datasets.md.' if ade20k else
                f'Check `data_prefix.img_path` and `img_suffix` of the {dataset} config.')
        raise DatasetFormatError(
            f'{img_dir} has no {img_suffix} images (searched recursively, as {dataset} reads '
            f'them). {hint}')
    if ann_dir is None:
        return
    orphans = [f for f in images
               if not osp.isfile(osp.join(ann_dir, f[:-len(img_suffix)] + seg_map_suffix))]
    if orphans:
        example = orphans[0]
        fix = ('Copy the annotations of ADEChallengeData2016 next to the images; see '
               'docs/datasets.md.' if ade20k else
               f'{dataset} reads the label map of <img_path>/<name>{img_suffix} from '
               f'<seg_map_path>/<name>{seg_map_suffix}: add the missing label maps, or fix '
               '`data_prefix.seg_map_path` / `seg_map_suffix`.')
        raise DatasetFormatError(
            f'{len(orphans)} of {len(images)} images in {img_dir} have no label map in '
            f'{ann_dir} (e.g. {example} needs '
            f'{osp.join(ann_dir, example[:-len(img_suffix)] + seg_map_suffix)}). {fix}')


def check_ade20k_folder(img_dir: str, ann_dir: str, img_suffix: str = '.jpg',
                        seg_map_suffix: str = '.png') -> None:
    """Every image of an ADE20K-layout split has its label map."""
    check_seg_folder(img_dir, ann_dir, img_suffix, seg_map_suffix, 'ADE20KDataset')


def _integer(text: str) -> Optional[int]:
    try:
        return int(text)  # as mmpretrain's CustomDataset reads the label
    except ValueError:
        return None


def check_image_list(path: str, num_classes: Optional[int] = None, with_label: bool = True,
                     classes_from: str = '') -> None:
    """An ImageNet/CustomDataset list file, read as mmpretrain reads it: one sample a line,
    ``<relative path> <label>`` (the label after the last space) with a label in
    ``0 .. num_classes - 1`` (``num_classes``: the dataset's classes, if known; ``classes_from``
    says where they come from), or only ``<relative path>`` for ``with_label=False``."""
    layout = ('Fix the list file (ImageNet meta/train.txt layout: "<relative image path> '
              '<integer label>" per line, one space before the label).')
    number = 0
    try:
        with open(path, encoding='utf-8') as f:
            for number, line in enumerate(f, 1):
                line = line.strip()
                if not line:
                    raise DatasetFormatError(
                        f'{path}, line {number} is empty: mmpretrain reads every line as a sample '
                        'and fails on it. Remove the empty line(s).')
                if not with_label:
                    continue
                image, _, label = line.rpartition(' ')
                label = _integer(label) if image and image == image.rstrip() else None
                if label is None:
                    raise DatasetFormatError(
                        f'{path}, line {number}: {line!r} is not "<relative image path> '
                        f'<integer label>". {layout}')
                if label < 0 or (num_classes is not None and label >= num_classes):
                    source = f', {classes_from}' if classes_from else ''
                    allowed = ('0 or more' if num_classes is None else
                               f'0 .. {num_classes - 1} ({num_classes} classes{source})')
                    raise DatasetFormatError(
                        f'{path}, line {number}: label {label} is outside the allowed range '
                        f'{allowed}. Labels are 0-based indices into the dataset\'s '
                        'classes: fix the list file, or set `metainfo=dict(classes=[...])` in the '
                        'dataset config to the classes the labels index.')
    except UnicodeDecodeError as err:
        raise DatasetFormatError(f'{path} is not UTF-8 text ({err}). {layout}') from err
    if not number:
        raise DatasetFormatError(f'{path} lists no images (the file is empty). {layout}')


#: mmpretrain datasets that read ``<data_root>/meta/<split>.txt`` when ``ann_file`` is empty.
SPLIT_LIST_DATASETS = ('ImageNet', 'ImageNet21k')


def _dataset_class(scope: str, dataset: dict) -> Optional[type]:
    """The dataset class a dataset config builds, resolved through the toolbox's DATASETS
    registry (as the Runner does); None if the registry does not know it."""
    kind = dataset.get('type')
    if isinstance(kind, type):
        return kind
    if not isinstance(kind, str):
        return None
    registry = importlib.import_module(f'{scope}.registry').DATASETS
    return registry.get(kind)


def _reads_coco_instances(dataset_class: Optional[type]) -> bool:
    """Whether a mmdet dataset class reads a COCO instances json as CocoDataset does, the format
    :func:`check_coco_file` checks: CocoDataset's own loader, parser and COCO API (so its
    subclasses that change only METAINFO, ``filter_data`` or ``__init__``: Cityscapes,
    DeepFashion, iSAID, ADE20KInstance, V3Det) or Objects365's loaders (which only sort the
    categories or skip listed images). Not CocoPanopticDataset (per-image ``segments_info``, no
    ``bbox``), not LVIS (the LVIS API; v1 images have ``coco_url``, not ``file_name``, and every
    category is used whatever the classes), nor any other class with its own loader or parser."""
    from mmdet.datasets import CocoDataset, Objects365V1Dataset, Objects365V2Dataset
    from mmdet.datasets.api_wrappers import COCO
    if not (isinstance(dataset_class, type) and issubclass(dataset_class, CocoDataset)):
        return False
    loaders = (CocoDataset.load_data_list, Objects365V1Dataset.load_data_list,
               Objects365V2Dataset.load_data_list)
    return (dataset_class.load_data_list in loaders and dataset_class.COCOAPI is COCO
            and dataset_class.parse_data_info is CocoDataset.parse_data_info)


def _reads_image_list(dataset_class: Optional[type]) -> bool:
    """Whether a mmpretrain dataset class reads its ann_file as CustomDataset does (the list
    :func:`check_image_list` checks): CustomDataset, ImageNet, ImageNet21k, Places205; not CUB
    and the others with a loader of their own."""
    from mmpretrain.datasets import CustomDataset
    return (isinstance(dataset_class, type) and issubclass(dataset_class, CustomDataset)
            and dataset_class.load_data_list is CustomDataset.load_data_list)


def _seg_folder(dataset: dict, dataset_class: Optional[type]) -> Optional[tuple]:
    """``(img_dir, ann_dir or None, img_suffix, seg_map_suffix, class name)`` that a mmseg
    dataset scans, as the dataset class itself resolves them (its own suffixes, e.g. Cityscapes'
    ``_leftImg8bit.png``; ``data_prefix`` joined to ``data_root``), from an instance built with
    ``lazy_init`` (which reads no data). None if it does not scan folders: not a BaseSegDataset
    with BaseSegDataset's loader, an ``ann_file`` list of names (Pascal VOC), a non-local path,
    or a config the class refuses (the Runner reports that)."""
    from mmseg.datasets import BaseSegDataset
    if not (isinstance(dataset_class, type) and issubclass(dataset_class, BaseSegDataset)
            and dataset_class.load_data_list is BaseSegDataset.load_data_list):
        return None
    kwargs = {k: v for k, v in dataset.items() if k not in ('type', '_scope_')}  # as build
    kwargs.update(pipeline=[], lazy_init=True)
    try:
        instance = dataset_class(**kwargs)
    except Exception:  # noqa: BLE001 - a config error is the Runner's to report, not ours
        return None
    img_dir = instance.data_prefix.get('img_path')
    ann_dir = instance.data_prefix.get('seg_map_path')
    if (instance.ann_file and not osp.isdir(instance.ann_file)) or not isinstance(img_dir, str) \
            or not _is_local(img_dir) or (ann_dir is not None and not _is_local(ann_dir)):
        return None
    from mmseg.datasets import ADE20KDataset
    name = 'ADE20KDataset' if isinstance(instance, ADE20KDataset) else dataset_class.__name__
    return img_dir, ann_dir, instance.img_suffix, instance.seg_map_suffix, name


def _class_count(dataset: dict, dataset_class: Optional[type]) -> Tuple[Optional[int], str]:
    """How many classes a mmpretrain dataset will have, resolved as its BaseDataset does it
    (``metainfo['classes']``, then the old ``classes`` argument, then the class's METAINFO, then
    ``metainfo['categories']``), and where they come from; ``(None, '')`` if not known."""
    metainfo = dataset.get('metainfo') or {}
    for value, source, read in (
            (metainfo.get('classes'), "the config's metainfo.classes", list_from_file),
            (dataset.get('classes'), "the dataset's `classes`",
             lambda p: list_from_file(osp.expanduser(p)))):
        if isinstance(value, str):  # a file of class names, one a line
            try:
                value = read(value)
            except (OSError, TypeError, ValueError):
                return None, ''  # the dataset reports it (or takes the string as is)
        if value is not None:
            return len(value), source
    default = (getattr(dataset_class, 'METAINFO', None) or {}).get('classes')
    if default:
        return len(default), (f'those of {dataset_class.__name__}, as the config sets no '
                              'metainfo.classes')
    if isinstance(metainfo.get('categories'), (list, tuple)):
        return len(metainfo['categories']), "the config's metainfo.categories"
    return None, ''


def _format_only(evaluator) -> bool:
    """Whether the evaluators only write predictions (CocoMetric's format_only)."""
    evaluators = evaluator if isinstance(evaluator, (list, tuple)) else [evaluator]
    dicts = [e for e in evaluators if isinstance(e, dict)]
    return bool(dicts) and all(e.get('format_only') for e in dicts)


def check_dataset_formats(cfg, scope: str, phases: List[str]) -> None:
    """Format checks of every dataset the given phases will read (after path checks)."""
    for phase, dataset in _active_datasets(cfg, phases):
        root = dataset.get('data_root') or ''
        ann_file = dataset.get('ann_file')
        ann_path = _join(root, ann_file) if ann_file else None
        if ann_path and not osp.isfile(ann_path):
            continue
        dataset_class = _dataset_class(scope, dataset)
        if scope == 'mmdet' and ann_path and _reads_coco_instances(dataset_class):
            if osp.getsize(ann_path) > MAX_CHECKED_COCO_BYTES:
                continue
            classes = (dataset.get('metainfo') or {}).get('classes')
            with_mask = any(t.get('with_mask') for t in dataset.get('pipeline') or []
                            if isinstance(t, dict))
            # predictions that are only written need no ground truth (test-dev)
            need_annotations = phase == 'train' or not _format_only(cfg.get(f'{phase}_evaluator'))
            check_coco_file(ann_path, classes, with_mask, need_annotations)
        elif scope == 'mmseg':
            folder = _seg_folder(dataset, dataset_class)
            if folder:
                check_seg_folder(*folder)
        elif scope == 'mmpretrain' and _reads_image_list(dataset_class):
            reads_split = any(c.__name__ in SPLIT_LIST_DATASETS for c in dataset_class.__mro__)
            split = dataset.get('split') if reads_split else None
            if not ann_file and split and _is_local(root):
                ann_path = _join(root, osp.join('meta', f'{split}.txt'))
                if not osp.isfile(ann_path):
                    continue  # ImageNet scans the split's folder instead
            if ann_path and ann_path.endswith('.txt'):
                # ImageNet(split='test') reads paths only, as does with_label=False
                with_label = dataset.get('with_label', True) and split != 'test'
                num_classes, classes_from = _class_count(dataset, dataset_class)
                check_image_list(ann_path, num_classes, with_label, classes_from)
