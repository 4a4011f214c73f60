"""The models as an OpenMMLab user finds them: mmpretrain's model hub (``list_models``,
``get_model``, ``inference_model``) after ``import spanet_mm``, and the "How to use" code of the
three model pages (configs/*/README.md), run as written: the classification page through the
hub, the detection and segmentation pages through mmdet's ``DetInferencer`` and mmseg's
``MMSegInferencer`` with a config file and a checkpoint.

Expected values come from outside the code under test: the model names are the config file
names (mmdet's and mmseg's naming rule, the issue), the parameter counts are the official
model's (../shared/spec/spanet.md), the converted official weights must give the official
logits (../shared/fixtures), and ImageNet class 652 is "military uniform".
"""
import glob
import inspect
import os
import os.path as osp
import re
import runpy
import sys

import pytest
import torch

import spanet_mm  # noqa: F401  registers the models with mmpretrain's hub
from conftest import REPO_ROOT

VARIANTS = ('s', 'm', 'mx', 'b', 'bx')
#: Trainable parameters of the official classifiers (fixed filters excluded; spec table).
OFFICIAL_PARAMS = dict(s=28_605_096, m=41_686_952, mx=54_768_808, b=75_856_168, bx=99_718_312)
#: ImageNet-1k class index of "military uniform" (Grace Hopper's photograph).
MILITARY_UNIFORM = 652

pytestmark = pytest.mark.usefixtures('one_thread')


def classification_config_names():
    return sorted(osp.basename(p)[:-3]
                  for p in glob.glob(osp.join(REPO_ROOT, 'configs', 'classification', '*.py')))


def test_list_models_finds_the_five_imagenet_models():
    from mmpretrain import list_models
    names = classification_config_names()
    assert names == [f'spanet_{v}_in1k' for v in sorted(VARIANTS)]
    assert list_models('*spanet*') == names
    # Registered as image classifiers, which is what inference_model dispatches on.
    assert list_models('spanet', task='Image Classification') == names


@pytest.mark.slow  # the five full-size classifiers
@pytest.mark.parametrize('variant', VARIANTS)
def test_get_model_builds_each(variant):
    from mmpretrain import get_model
    from mmpretrain.models import ImageClassifier
    model = get_model(f'spanet_{variant}_in1k')
    assert isinstance(model, ImageClassifier)
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == \
        OFFICIAL_PARAMS[variant]


def test_hub_configs_are_the_packaged_ones():
    """Config paths are absolute, under the package's .mim (installed) or the checkout."""
    from mmpretrain.apis import ModelHub
    root = spanet_mm.hub.mim_root()
    for name in classification_config_names():
        config = ModelHub._models_dict[name].config
        assert config == osp.join(root, 'configs', 'classification', f'{name}.py')
        assert osp.isfile(config)


def test_get_model_loads_a_converted_official_file(official_fixture, tmp_path, monkeypatch):
    """get_model(name, pretrained=converted file): the official logits, within 1e-4."""
    from mmpretrain import get_model
    torch.save(official_fixture['classification']['state_dict'], tmp_path / 'official.pth')
    converter = osp.join(REPO_ROOT, 'tools', 'model_converters', 'spanet_official_to_mm.py')
    monkeypatch.setattr(sys, 'argv', [converter, str(tmp_path / 'official.pth'),
                                      str(tmp_path / 'converted.pth')])
    runpy.run_path(converter, run_name='__main__')
    # The fixture is a one-block-per-stage SPANet-S: the hub model with that arch.
    arch = {k: official_fixture['arch'][k] for k in ('layers', 'embed_dims', 'mlp_ratios')}
    model = get_model('spanet_s_in1k', pretrained=str(tmp_path / 'converted.pth'),
                      backbone=dict(arch=dict(_delete_=True, **arch))).eval()
    with torch.no_grad():
        logits = model(official_fixture['classification']['input'], mode='tensor')
    expected = official_fixture['classification']['logits']
    assert (logits - expected).abs().max() <= 1e-4


def test_hub_registration_is_idempotent():
    assert spanet_mm.hub.register_model_index() == spanet_mm.hub.register_model_index()


# ---------------------------------------------------------------------------------------------
# Aliases: the former names (the metafile's ``Alias``), which mmpretrain's hub does not read


def metafile_aliases():
    """``{alias: name}`` as configs/classification/metafile.yml writes them (read here, not
    through the code under test)."""
    import yaml
    with open(osp.join(REPO_ROOT, 'configs', 'classification', 'metafile.yml')) as f:
        models = yaml.safe_load(f)['Models']
    return {alias: model['Name'] for model in models for alias in model.get('Alias', [])}


def test_get_model_builds_an_alias_as_its_model():
    """``get_model('spanet-s_in1k')``: SPANet-S from spanet_s_in1k.py, under the model's name."""
    from mmpretrain import get_model
    from mmpretrain.apis import ModelHub
    model = get_model('spanet-s_in1k')
    expected = ModelHub.get('spanet_s_in1k').config
    assert model._config.filename == expected.filename
    assert model._config.model.backbone == expected.model.backbone  # arch 's'
    assert model._metainfo.name == 'spanet_s_in1k'
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == OFFICIAL_PARAMS['s']


def test_every_alias_in_the_metafile_resolves():
    """Each ``Alias`` gives its model's entry (any case, as names do); ``list_models`` lists
    names only, as upstream mmpretrain does."""
    from mmpretrain import list_models
    from mmpretrain.apis import ModelHub
    aliases = metafile_aliases()
    assert len(aliases) == len(VARIANTS)
    for alias, name in aliases.items():
        metainfo = ModelHub.get(alias)  # each get loads the config: once per alias
        assert metainfo.name == name
        assert metainfo.config.filename == ModelHub._models_dict[name].config  # name's path
        assert metainfo.results[0].task == 'Image Classification'  # inference_model's key
        assert list_models(alias) == []
    assert ModelHub.get('SPANet-MX_in1k').name == 'spanet_mx_in1k'
    assert spanet_mm.hub.model_aliases() == aliases
    assert list_models('*spanet*') == classification_config_names()


def test_init_model_and_inference_model_take_an_alias():
    from mmpretrain import inference_model, init_model
    tiny = dict(_delete_=True, layers=[1, 1, 1, 1], embed_dims=[8, 16, 32, 64],
                mlp_ratios=[4, 4, 4, 4], radius=[2, 2, 1, 1])
    model = init_model('spanet-s_in1k', backbone=dict(arch=tiny), head=dict(in_channels=64))
    assert model._metainfo.name == 'spanet_s_in1k'
    assert model.backbone.embed_dims[-1] == 64
    image = torch.randint(0, 256, (224, 224, 3), dtype=torch.uint8).numpy()
    result = inference_model('spanet-s_in1k', image, pretrained=False)  # the full SPANet-S
    assert 0 <= result['pred_label'] < 1000 and result['pred_class']


@pytest.mark.parametrize('name', [
    'spanet-s',  # a prefix of an alias (list_models matches prefixes, get does not)
    'spanet-s_in1k-384',
    'spanet-xl_in1k',
    'retinanet_spanet-s_fpn_1x_coco',  # a detection alias: detection has no hub
])
def test_unknown_names_still_raise(name):
    """Next to an alias that resolves, its near misses fail as any unknown name does."""
    from mmpretrain import get_model
    from mmpretrain.apis import ModelHub
    assert ModelHub.get('spanet-s_in1k').name == 'spanet_s_in1k'
    with pytest.raises(ValueError, match=f'Failed to find model "{re.escape(name)}"'):
        get_model(name)


def test_registering_again_keeps_one_alias_lookup_and_the_hub_open(monkeypatch, tmp_path):
    """A second registration (into a hub without the SPANet entries, as after a restart) wraps
    ``ModelHub.get`` once, and leaves ``ModelHub`` open to another package's metafile, whose
    names win over an alias of the same spelling."""
    from mmpretrain import list_models
    from mmpretrain.apis import ModelHub
    list_models()  # mmpretrain's own models are registered first, outside the copy below
    monkeypatch.setattr(ModelHub, '_models_dict', {
        k: v for k, v in ModelHub._models_dict.items() if not k.startswith('spanet')})
    monkeypatch.setattr(ModelHub, 'get', ModelHub.__dict__['get'])  # restored afterwards
    monkeypatch.setattr(spanet_mm.hub, '_registered', False)
    assert spanet_mm.hub.register_model_index() == spanet_mm.hub.register_model_index()
    assert ModelHub.get('spanet-m_in1k').name == 'spanet_m_in1k'
    assert list_models('*spanet*') == classification_config_names()
    assert inspect.unwrap(ModelHub.get) is ModelHub.get.__wrapped__  # one wrapper, no more
    assert not set(metafile_aliases()) & set(ModelHub._models_dict)
    (tmp_path / 'other.py').write_text("model = dict(type='ImageClassifier')\n")
    (tmp_path / 'metafile.yml').write_text(
        'Models:\n  - Name: spanet-s_in1k\n    Config: other.py\n')
    ModelHub.register_model_index(tmp_path / 'metafile.yml')
    assert ModelHub.get('spanet-s_in1k').config.filename == str(tmp_path / 'other.py')
    assert ModelHub.get('spanet-m_in1k').name == 'spanet_m_in1k'


class _NotInstalled:
    """A meta path finder for which a package is not installed."""

    def __init__(self, package):
        self.package = package

    def find_spec(self, name, path=None, target=None):
        if name == self.package or name.startswith(self.package + '.'):
            raise ModuleNotFoundError(f'No module named {name!r}', name=self.package)
        return None


def test_no_mmpretrain_no_hub_and_no_error(monkeypatch, recwarn):
    """Detection or segmentation without mmpretrain: the hub is skipped, silently."""
    for name in [n for n in sys.modules if n == 'mmpretrain' or n.startswith('mmpretrain.')]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setattr(sys, 'meta_path', [_NotInstalled('mmpretrain')] + sys.meta_path)
    monkeypatch.setattr(spanet_mm.hub, '_registered', False)
    with pytest.raises(ModuleNotFoundError):
        import mmpretrain  # noqa: F401
    assert spanet_mm.hub.register_model_index() is None
    assert not [w for w in recwarn if 'spanet_mm' in str(w.message)]


class _Broken:
    """A meta path finder for which importing ``name`` fails with ``error`` (an installed
    package whose import breaks: a missing dependency, mmpretrain's mmcv version assert)."""

    def __init__(self, name, error):
        self.name, self.error = name, error

    def find_spec(self, name, path=None, target=None):
        if name == self.name:
            raise self.error
        return None


@pytest.mark.parametrize('name, error', [
    ('mmpretrain.apis', ImportError('cannot import name X from a dependency')),
    ('mmpretrain', AssertionError('MMCV==9.9 is used but incompatible')),
    # A dependency of mmpretrain that is not installed: ModuleNotFoundError, but not for
    # mmpretrain itself, which is installed.
    ('mmpretrain.apis', ModuleNotFoundError("No module named 'mat4py'", name='mat4py')),
], ids=['broken-dependency', 'version-assert', 'missing-dependency'])
def test_broken_mmpretrain_warns_and_skips_the_hub(monkeypatch, name, error):
    """Installed but not importable: no hub, and a warning that names the reason (where a
    missing mmpretrain stays silent, above)."""
    for module in [n for n in sys.modules if n == 'mmpretrain' or n.startswith('mmpretrain.')]:
        monkeypatch.delitem(sys.modules, module)
    monkeypatch.setattr(sys, 'meta_path', [_Broken(name, error)] + sys.meta_path)
    monkeypatch.setattr(spanet_mm.hub, '_registered', False)
    with pytest.warns(UserWarning, match=f'mmpretrain.apis could not be imported.*'
                      f'{type(error).__name__}: {error}'):
        assert spanet_mm.hub.register_model_index() is None


@pytest.mark.parametrize('aliases, message', [
    ((['spanet-a'], ['SPANet-A']), 'the alias spanet-a of model_b .* is also an alias of model_a'),
    ((['model_b'], []), 'the alias model_b of model_a .* is also a model name'),
], ids=['shared', 'a name'])
def test_ambiguous_aliases_are_refused(tmp_path, aliases, message):
    """An alias that two models share, or that is another model's name, would resolve to
    either: the metafile is refused (aliases are case-insensitive, as ModelHub's names)."""
    from types import SimpleNamespace
    metafile = str(tmp_path / 'metafile.yml')
    hub = SimpleNamespace(_models_dict={
        name: SimpleNamespace(filepath=metafile, data={'Alias': alias})
        for name, alias in zip(('model_a', 'model_b'), aliases)})
    with pytest.raises(ValueError, match=message):
        spanet_mm.hub._read_aliases(hub, metafile)


# ---------------------------------------------------------------------------------------------
# The model pages' "How to use" code


def page_snippets(task):
    with open(osp.join(REPO_ROOT, 'configs', task, 'README.md')) as f:
        return re.findall(r'```python\n(.*?)```', f.read(), flags=re.S)


@pytest.fixture
def workspace(tmp_path, monkeypatch):
    """A directory like the checkout's root for the pages' relative paths (configs/ linked)."""
    os.symlink(osp.join(REPO_ROOT, 'configs'), tmp_path / 'configs')
    monkeypatch.chdir(tmp_path)
    return tmp_path


def save_model(model, path, dataset_meta=None):
    """A checkpoint as the Runner writes one: the weights and the dataset's class names."""
    os.makedirs(osp.dirname(path), exist_ok=True)
    meta = {} if dataset_meta is None else {'dataset_meta': dataset_meta}
    torch.save({'state_dict': model.state_dict(), 'meta': meta}, path)


def build_from_config(config):
    from spanet_mm.apis import init_model
    return init_model(config, cfg_options={'model.backbone.init_cfg': None})


def photo_size():
    from matplotlib.cbook import get_sample_data
    from PIL import Image
    with Image.open(get_sample_data('grace_hopper.jpg', asfileobj=False)) as image:
        return image.height, image.width


@pytest.mark.slow  # full-size models on a photograph
def test_classification_page_runs(workspace):
    """list_models, inference_model and get_model with the converted-checkpoint path."""
    from mmpretrain import get_model
    from mmpretrain.datasets.categories import IMAGENET_CATEGORIES
    model = get_model('spanet_s_in1k')
    # A checkpoint whose prediction is known: a large bias on one class.
    with torch.no_grad():
        model.head.fc.bias[MILITARY_UNIFORM] = 100.
    save_model(model, 'checkpoints/spanet_s_in1k.pth')
    snippets = page_snippets('classification')
    assert len(snippets) == 2
    namespace = {}
    for code in snippets:
        exec(compile(code, 'configs/classification/README.md', 'exec'), namespace)
    assert IMAGENET_CATEGORIES[MILITARY_UNIFORM] == 'military uniform'
    assert namespace['predict']['pred_class'] == 'military uniform'
    assert namespace['predict']['pred_score'] > 0.99
    assert namespace['logits'].argmax().item() == MILITARY_UNIFORM
    assert namespace['feats'][0].shape == (1, 512, 7, 7)


@pytest.mark.slow  # full-size models on a photograph
def test_detection_page_runs(workspace):
    """DetInferencer(model=CONFIG, weights=PATH) on a photograph."""
    model = build_from_config('configs/detection/retinanet_spanet_s_1x.py')
    head = model.bbox_head
    with torch.no_grad():
        # Channel a * num_classes + c scores class c at anchor a: make class 3 score high
        # everywhere. The config's own init (prior 0.01) finds nothing above score_thr 0.05.
        head.retina_cls.bias[3::head.cls_out_channels] = 10.
    from mmdet.datasets import CocoDataset
    save_model(model, 'work_dirs/retinanet_spanet_s_1x/epoch_12.pth', CocoDataset.METAINFO)
    (code, ) = page_snippets('detection')
    namespace = {}
    exec(compile(code, 'configs/detection/README.md', 'exec'), namespace)
    prediction = namespace['prediction']
    labels = torch.tensor(prediction['labels'])
    max_per_img = 100  # mmdet's RetinaNet test_cfg
    assert len(labels) == max_per_img
    # Per-class NMS thins out class 3's boxes, so random-weight classes fill the rest.
    assert labels[0] == 3 and prediction['scores'][0] > 0.99
    assert labels.bincount().argmax() == 3
    height, width = photo_size()
    boxes = torch.tensor(prediction['bboxes'])
    assert boxes.shape == (max_per_img, 4)
    assert (boxes >= 0).all()  # in the photograph's own coordinates, not the resized input's
    assert (boxes[:, 2] <= width).all() and (boxes[:, 3] <= height).all()


@pytest.mark.slow  # full-size models on a photograph
def test_segmentation_page_runs(workspace):
    """MMSegInferencer(model=CONFIG, weights=PATH) on a photograph."""
    model = build_from_config('configs/segmentation/fpn_spanet_s_80k.py')
    with torch.no_grad():
        model.decode_head.conv_seg.bias[7] = 100.  # every pixel: ADE20K class 7
    from mmseg.datasets import ADE20KDataset
    save_model(model, 'work_dirs/fpn_spanet_s_80k/iter_80000.pth', ADE20KDataset.METAINFO)
    (code, ) = page_snippets('segmentation')
    namespace = {}
    exec(compile(code, 'configs/segmentation/README.md', 'exec'), namespace)
    # The checkpoint's class names are used (ADE20K's class 7 is "bed").
    assert namespace['inferencer'].model.dataset_meta['classes'][7].strip() == 'bed'
    label_map = namespace['label_map']
    assert label_map.shape == photo_size()
    assert (label_map == 7).all()
