"""The shipped configs against the record of the official recipes (data/official_recipes.yml).

Each leaf config is merged by mmengine; its optimizer wrapper (parameter groups included) is
built by mmengine from the real model, its schedulers are built by mmengine and stepped through
the run as the Runner's ParamSchedulerHook does, its pipelines are built by the toolbox, and its
model is built and initialised. Every expected value comes from the record, or from the PyTorch,
timm and mmcv formulas it writes out, never from our configs.
"""
import copy
import glob
import math
import os.path as osp
from functools import lru_cache

import pytest
import torch
import yaml
from mmengine.config import Config
from mmengine.optim import build_optim_wrapper
from mmengine.registry import PARAM_SCHEDULERS, init_default_scope

import spanet_mm  # noqa: F401
from conftest import REPO_ROOT, convert_official_file

CONFIG_DIR = osp.join(REPO_ROOT, 'configs')
with open(osp.join(REPO_ROOT, 'tests', 'data', 'official_recipes.yml')) as f:
    RECORD = yaml.safe_load(f)
IMAGENET, INIT, DENSE = RECORD['imagenet'], RECORD['init'], RECORD['dense_init']
COCO, ADE = RECORD['coco'], RECORD['ade20k']

VARIANTS = list(IMAGENET['variants'])
CLS_CONFIGS = {v: f'classification/spanet_{v}_in1k.py' for v in VARIANTS}
DET_CONFIGS = {(task, v): f'detection/{task}_spanet_{v}_1x.py'
               for task in ('retinanet', 'mask_rcnn') for v in COCO['retinanet']['configs']}
SEG_CONFIGS = {v: f'segmentation/fpn_spanet_{v}_80k.py' for v in ADE['drop_path']['value']}


def small_arch(variant):
    """The variant's widths (so heads and necks fit) at a small depth: the init, the parameter
    groups and the drop path rule do not depend on depth."""
    return dict(layers=[1, 1, 2, 1], embed_dims=spanet_mm.SPANet.arch_settings[variant][
        'embed_dims'])

pytestmark = pytest.mark.usefixtures('one_thread')


def value(node):
    """A record entry is ``{value: ..., source: file:line}``."""
    return node['value']


@lru_cache(maxsize=None)
def _merged(rel_path: str) -> Config:
    return Config.fromfile(osp.join(CONFIG_DIR, rel_path))


def load(rel_path: str) -> Config:
    return copy.deepcopy(_merged(rel_path))


def build_model(cfg: Config, arch=None, init_cfg='keep'):
    init_default_scope(cfg.default_scope)
    from mmengine.registry import MODELS
    model_cfg = cfg.model.copy()
    if arch is not None:
        model_cfg.backbone.arch = arch
    if init_cfg != 'keep':
        model_cfg.backbone.init_cfg = init_cfg
    if cfg.get('data_preprocessor') and 'data_preprocessor' not in model_cfg:
        model_cfg.data_preprocessor = cfg.data_preprocessor
    return MODELS.build(model_cfg)


def build_transforms(cfg: Config, pipeline):
    init_default_scope(cfg.default_scope)
    from mmengine.registry import TRANSFORMS
    return [TRANSFORMS.build(t) for t in pipeline]


def find(transforms, name):
    found = [t for t in transforms if type(t).__name__ == name]
    assert len(found) == 1, f'expected one {name} in {[type(t).__name__ for t in transforms]}'
    return found[0]


def lr_trace(cfg: Config, num_epochs: int, epoch_length: int):
    """The lr of every iteration, from the config's schedulers built as the Runner builds them
    (``end`` defaulting to the train loop's length; ``convert_to_iter_based`` ones with the
    epoch length) and stepped as ParamSchedulerHook steps them: iteration-based ones after
    every iteration, epoch-based ones after every epoch."""
    init_default_scope(cfg.default_scope)
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=cfg.optim_wrapper.optimizer.lr)
    schedulers = []
    for scheduler_cfg in copy.deepcopy(cfg.param_scheduler):
        by_epoch = scheduler_cfg.get('by_epoch', True)
        scheduler_cfg.setdefault(
            'end', cfg.train_cfg.max_epochs if by_epoch else cfg.train_cfg.get('max_iters'))
        schedulers.append(PARAM_SCHEDULERS.build(
            scheduler_cfg, default_args=dict(optimizer=optimizer, epoch_length=epoch_length)))
    trace = []
    for _ in range(num_epochs):
        for _ in range(epoch_length):
            trace.append(optimizer.param_groups[0]['lr'])
            optimizer.step()
            for s in schedulers:
                if not s.by_epoch:
                    s.step()
        for s in schedulers:
            if s.by_epoch:
                s.step()
    return trace


def weight_decay_of(optim_wrapper, model):
    """Parameter name -> the weight decay of its group in the built optimizer."""
    decay = {}
    for group in optim_wrapper.optimizer.param_groups:
        for p in group['params']:
            decay[id(p)] = group['weight_decay']
    return {name: decay[id(p)] for name, p in model.named_parameters() if p.requires_grad}


def official_depth(variant):
    """Blocks of the official dense backbone of a variant: the number in its config's folder
    (record: coco.retinanet.configs, ``spanet/S24/...`` for s, ``spanet/S36/...`` for m)."""
    folder = COCO['retinanet']['configs'][variant].split('/')[1]
    assert folder[0] == 'S', folder
    return int(folder[1:])


def assert_lr_scaling_only_on_request(cfg):
    """The lr is the recipe's at auto_scale_lr.base_batch_size; the toolboxes' bases leave
    ``enable`` False (or unset), so that only ``--auto-scale-lr`` rescales it."""
    assert not cfg.auto_scale_lr.get('enable', False)


def assert_dense_backbone(cfg, variant):
    """The official dense backbone: the variant's depth, every stage trainable (the official
    object_detection/mmdet/models/backbones/spanet.py freezes nothing). On the config as
    loaded (build_model replaces the arch)."""
    assert cfg.model.backbone.arch == variant
    layers = spanet_mm.SPANet.arch_settings[cfg.model.backbone.arch]['layers']
    assert sum(layers) == official_depth(variant)
    assert cfg.model.backbone.get('frozen_stages', -1) == -1


def assert_nothing_frozen(model):
    frozen = [n for n, p in model.backbone.named_parameters() if not p.requires_grad]
    assert not frozen, frozen


# --- coverage --------------------------------------------------------------------------------

def test_every_leaf_config_is_recorded():
    shipped = {osp.relpath(p, CONFIG_DIR) for p in glob.glob(
        osp.join(CONFIG_DIR, '*', '*.py')) if '_base_' not in p}  # _base_/: shared bases
    assert shipped == set(CLS_CONFIGS.values()) | set(DET_CONFIGS.values()) | set(
        SEG_CONFIGS.values())


def test_record_is_self_consistent():
    """The record's own derived numbers follow from its sources."""
    schedule = IMAGENET['schedule']
    assert timm_lr(150) == pytest.approx(value(schedule['lr_at_epoch_150']), rel=1e-3)
    for v, variant in IMAGENET['variants'].items():
        per_gpu = value(IMAGENET['total_batch']) / value(variant['gpus']) / value(
            variant['grad_accum_steps'])
        assert per_gpu == int(per_gpu), v
    for task in ('retinanet', 'mask_rcnn'):
        recipe = COCO[task]
        assert value(recipe['samples_per_gpu']) * value(recipe['gpus']) == value(
            recipe['total_batch'])
    v2 = value(ADE['spanetv2_check'])
    assert v2['lr'] / v2['batch'] == pytest.approx(value(ADE['lr_per_16_images']) / 16)
    assert v2['iters'] * v2['batch'] == value(ADE['iters_at_16']) * 16


# --- ImageNet ----------------------------------------------------------------------------------

def timm_lr(epoch):
    """timm 0.6.11 CosineLRScheduler._get_lr at epoch index ``epoch`` (record: formula)."""
    s, lr = IMAGENET['schedule'], value(IMAGENET['optimizer']['lr'])
    warmup_t, warmup_lr = value(s['warmup_epochs']), value(s['warmup_lr'])
    t_initial, lr_min = value(s['epochs']), value(s['min_lr'])
    if epoch < warmup_t:
        return warmup_lr + epoch * (lr - warmup_lr) / warmup_t
    if epoch >= t_initial * value(s['cycle_limit']):
        return lr_min
    return lr_min + 0.5 * (lr - lr_min) * (1 + math.cos(math.pi * epoch / t_initial))


@pytest.mark.parametrize('variant', VARIANTS)
def test_imagenet_optimizer_and_parameter_groups(variant):
    cfg = load(CLS_CONFIGS[variant])
    recipe = IMAGENET['optimizer']
    total_batch = value(IMAGENET['total_batch'])
    # lr per image: the configured lr holds for auto_scale_lr.base_batch_size images.
    assert cfg.auto_scale_lr.base_batch_size == total_batch
    assert cfg.optim_wrapper.optimizer.lr / cfg.auto_scale_lr.base_batch_size == \
        pytest.approx(value(recipe['lr']) / total_batch)
    # The official layout (GPUs x per-GPU x accumulation) is reachable with integer
    # accumulative_counts at our per-GPU batch.
    official = IMAGENET['variants'][variant]
    accumulation = total_batch / (value(official['gpus']) * cfg.train_dataloader.batch_size)
    assert accumulation == int(accumulation) >= 1
    assert cfg.optim_wrapper.get('accumulative_counts', 1) == 1  # default: 1024 on 8 GPUs
    # OpenMMLab's default layout is 8 GPUs (mmpretrain's imagenet_bs128 data with its bs1024
    # schedules): there, without accumulation, the batch is the official total.
    assert 8 * cfg.train_dataloader.batch_size == total_batch
    assert_lr_scaling_only_on_request(cfg)
    assert cfg.optim_wrapper.get('clip_grad') == value(recipe['clip_grad'])
    assert cfg.optim_wrapper.get('type', 'OptimWrapper') == 'OptimWrapper'  # fp32
    assert not value(IMAGENET['model']['amp'])

    model = build_model(cfg, arch=small_arch(variant), init_cfg=None)
    optim_wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    optimizer = optim_wrapper.optimizer
    assert type(optimizer).__name__ == value(recipe['type'])
    assert optimizer.defaults['betas'] == tuple(value(recipe['betas']))
    assert optimizer.defaults['eps'] == value(recipe['eps'])
    assert all(g['lr'] == value(recipe['lr']) for g in optimizer.param_groups)
    decay = weight_decay_of(optim_wrapper, model)
    params = dict(model.named_parameters())
    # timm: no decay for ndim <= 1 or a name ending in .bias (record: no_decay_rule).
    for name, wd in decay.items():
        no_decay = params[name].ndim <= 1 or name.endswith('.bias')
        assert wd == (0. if no_decay else value(recipe['weight_decay'])), name
    assert any(n.endswith('shortcut_scale1') and wd == 0 for n, wd in decay.items())


@pytest.mark.parametrize('variant', VARIANTS)
def test_imagenet_schedule_equals_timm_at_every_epoch(variant):
    cfg = load(CLS_CONFIGS[variant])
    s = IMAGENET['schedule']
    num_epochs = value(s['epochs']) + value(s['cooldown_epochs'])
    assert cfg.train_cfg.max_epochs == num_epochs
    epoch_length = 3  # any length: timm's rate is constant within an epoch
    trace = lr_trace(cfg, num_epochs, epoch_length)
    for epoch in range(num_epochs):
        lrs = trace[epoch * epoch_length:(epoch + 1) * epoch_length]
        for lr in lrs:
            assert lr == pytest.approx(timm_lr(epoch), rel=0.01), (epoch, lr, timm_lr(epoch))
    assert trace[150 * epoch_length] == pytest.approx(value(s['lr_at_epoch_150']), rel=0.01)


@pytest.mark.parametrize('variant', VARIANTS)
def test_imagenet_validation_and_checkpoints(variant):
    cfg = load(CLS_CONFIGS[variant])
    validation = IMAGENET['validation']
    assert cfg.train_cfg.val_interval == value(validation['every_epochs'])
    checkpoint = cfg.default_hooks.checkpoint
    assert checkpoint.interval == value(validation['every_epochs'])
    assert checkpoint.save_best == f'accuracy/{value(validation["best_metric"])}'
    assert checkpoint.rule == 'greater'
    assert checkpoint.max_keep_ckpts == value(validation['checkpoint_history'])
    assert 1 in cfg.val_evaluator.topk  # the metric save_best reads


@pytest.mark.parametrize('variant', VARIANTS)
def test_imagenet_augmentation(variant):
    cfg = load(CLS_CONFIGS[variant])
    aug = IMAGENET['augmentation']
    size = value(aug['input_size'])
    train = build_transforms(cfg, cfg.train_dataloader.dataset.pipeline)

    crop = find(train, 'RandomResizedCrop')
    assert crop.scale == (size, size)
    assert crop.crop_ratio_range == pytest.approx(tuple(value(aug['scale'])))
    assert crop.aspect_ratio_range == pytest.approx(tuple(value(aug['ratio'])))
    # timm draws one of these per image; mmpretrain takes one (stated in the config header).
    assert value(aug['train_interpolation']) == 'random'
    assert crop.interpolation in value(aug['random_interpolations'])
    # timm resizes PIL images (timm/data/dataset.py opens them with PIL; torchvision's
    # transforms resize them with PIL's filters, antialiased when downscaling).
    assert crop.backend == 'pillow'

    flip = find(train, 'RandomFlip')
    assert flip.prob == value(aug['hflip']) and flip.direction == 'horizontal'
    assert value(aug['vflip']) == 0
    assert not [t for t in train if 'ColorJitter' in type(t).__name__]  # off under RandAugment

    name, magnitude, std, increasing = value(aug['auto_augment']).split('-')
    rand_augment = find(train, 'RandAugment')
    assert name == 'rand'
    assert rand_augment.num_policies == value(aug['rand_augment_ops'])
    assert rand_augment.magnitude_level == float(magnitude[1:])
    assert rand_augment.magnitude_std == float(std[4:])
    assert rand_augment.total_level == value(aug['rand_augment_level_denominator'])
    assert increasing == 'inc1'  # timm's "increasing" op set, mmpretrain's timm_increasing
    pipeline = cfg.train_dataloader.dataset.pipeline
    assert next(t for t in pipeline if t['type'] == 'RandAugment').policies == 'timm_increasing'

    erasing = find(train, 'RandomErasing')
    assert erasing.erase_prob == value(aug['reprob'])
    assert value(aug['remode']) == 'pixel'  # per-pixel normal noise:
    assert erasing.mode == 'rand' and erasing.fill_std is not None
    assert value(aug['recount']) == 1
    assert (erasing.min_area_ratio, erasing.max_area_ratio) == pytest.approx(
        tuple(value(aug['erase_area'])))
    low = value(aug['erase_aspect_min'])
    assert erasing.aspect_range == pytest.approx((low, 1 / low))

    assert cfg.train_dataloader.drop_last is value(aug['drop_last'])

    model = build_model(cfg, arch=small_arch(variant), init_cfg=None)
    batch_augments = model.data_preprocessor.batch_augments
    mixup, cutmix = batch_augments.augments
    assert type(mixup).__name__ == 'Mixup' and mixup.alpha == value(aug['mixup'])
    assert type(cutmix).__name__ == 'CutMix' and cutmix.alpha == value(aug['cutmix'])
    # Always one of the two (probs None: uniform), as timm's mixup_prob 1, switch prob 0.5.
    assert batch_augments.probs is None
    assert value(aug['mixup_prob']) == 1.0
    assert value(aug['mixup_switch_prob']) == 1 / len(batch_augments.augments)
    assert value(aug['mixup_mode']) == 'batch'  # mmpretrain mixes per batch
    loss = model.head.loss_module
    assert type(loss).__name__ == 'LabelSmoothLoss'
    assert loss.label_smooth_val == value(aug['smoothing']) and loss.mode == 'original'
    preprocessor = model.data_preprocessor
    assert preprocessor.mean.flatten().tolist() == pytest.approx(
        [255 * m for m in value(aug['mean'])], abs=1e-3)
    assert preprocessor.std.flatten().tolist() == pytest.approx(
        [255 * s for s in value(aug['std'])], abs=1e-3)
    assert preprocessor.to_rgb  # RGB, as timm's PIL images


@pytest.mark.parametrize('variant', VARIANTS)
def test_imagenet_eval_crop(variant):
    cfg = load(CLS_CONFIGS[variant])
    aug = IMAGENET['augmentation']
    size, crop_pct = value(aug['input_size']), value(IMAGENET['variants'][variant]['crop_pct'])
    for loader in (cfg.val_dataloader, cfg.test_dataloader):
        transforms = build_transforms(cfg, loader.dataset.pipeline)
        resize = find(transforms, 'ResizeEdge')
        assert resize.scale == math.floor(size / crop_pct)  # timm: floor(size / crop_pct)
        assert resize.edge == 'short' and resize.interpolation == value(aug['interpolation'])
        assert resize.backend == 'pillow'  # timm: PIL images, PIL's resize (see above)
        assert find(transforms, 'CenterCrop').crop_size == (size, size)


@pytest.mark.parametrize('variant', VARIANTS)
def test_imagenet_model(variant):
    cfg = load(CLS_CONFIGS[variant])
    record = IMAGENET['variants'][variant]
    assert cfg.model.backbone.drop_path_rate == value(record['drop_path'])
    assert cfg.model.backbone.arch == variant
    model = build_model(cfg, arch=small_arch(variant), init_cfg=None)
    blocks = [block for stage in model.backbone.stages for block in stage]
    for k, block in enumerate(blocks):  # record: drop_path_rule
        expected = value(record['drop_path']) * k / (len(blocks) - 1)
        actual = block.drop_path.drop_prob if k else 0.  # rate 0: an Identity
        assert actual == pytest.approx(expected, rel=1e-6), k
    assert not [h for h in cfg.get('custom_hooks', []) if 'EMA' in h['type']]
    assert not value(IMAGENET['model']['model_ema'])
    assert value(IMAGENET['model']['drop']) == 0 and value(IMAGENET['model']['head_dropout']) == 0
    assert not [m for m in model.modules() if isinstance(m, torch.nn.Dropout) and m.p > 0]


# --- initialisation from scratch -----------------------------------------------------------------

def _conv_kind(name):
    if name == 'downsample_layers.0':
        return 'stem'
    for key, kind in (('downsample_layers.', 'downsample'),
                      ('mlp.fc', 'mlp'), ('token_mixer.proj_in', 'proj_in'),
                      ('token_mixer.proj_out', 'proj_out'), ('dwconv_1x7', 'dwconv_1x7'),
                      ('dwconv_7x1', 'dwconv_7x1'), ('spectral_projs', 'spectral_proj')):
        if key in name:
            return kind
    raise AssertionError(f'unknown conv {name}')


def test_from_scratch_init_is_the_official_init():
    """The S classifier's default init, layer by layer: trunc normal 0.02 / zero bias on the MLP
    convs and the head, PyTorch's kaiming uniform elsewhere, identity norms, unit shortcut
    scales (record: init)."""
    cfg = load(CLS_CONFIGS['s'])
    torch.manual_seed(0)
    model = build_model(cfg)  # the real SPANet-S and the config's own init
    model.init_weights()
    mlp_std, mlp_bias = value(INIT['mlp_conv']['std']), value(INIT['mlp_conv']['bias'])
    kinds = set()
    for name, module in model.backbone.named_modules():
        if isinstance(module, torch.nn.Conv2d):
            kind = _conv_kind(name)
            kinds.add(kind)
            weight, bias = module.weight.detach(), module.bias.detach()
            fan_in = weight[0].numel()
            if kind == 'mlp':
                assert weight.std().item() == pytest.approx(mlp_std, rel=0.1), name
                assert torch.all(bias == mlp_bias), name
            else:
                bound = 1 / math.sqrt(fan_in)  # kaiming_uniform_(a=sqrt(5)): U(-bound, bound)
                expected_std = 1 / math.sqrt(3 * fan_in)  # record: other_conv rule
                assert weight.std().item() == pytest.approx(expected_std, rel=0.15), name
                assert weight.abs().max().item() <= bound and weight.abs().max() > 0.9 * bound
                assert bias.abs().max().item() <= bound and bias.abs().max() > 0, name
        elif isinstance(module, torch.nn.GroupNorm):
            assert torch.all(module.weight == value(INIT['groupnorm']['weight'])), name
            assert torch.all(module.bias == value(INIT['groupnorm']['bias'])), name
    assert kinds == set(value(INIT['other_conv']['kinds'])) | {'mlp'}
    stages = {i for i, stage in enumerate(model.backbone.stages)
              if stage[0].shortcut_scale1 is not None}
    assert stages == set(value(INIT['shortcut_scale']['stages']))
    for i in stages:
        for block in model.backbone.stages[i]:
            for scale in (block.shortcut_scale1, block.shortcut_scale2):
                assert torch.all(scale == value(INIT['shortcut_scale']['init']))
    head = model.head.fc
    assert head.weight.std().item() == pytest.approx(value(INIT['head_linear']['std']), rel=0.05)
    assert head.weight.abs().max() <= 2  # trunc_normal_'s absolute bounds (a=-2, b=2)
    assert torch.all(head.bias == value(INIT['head_linear']['bias']))


def test_init_draws_from_the_pytorch_default_not_again():
    """The layers the official init does not touch keep exactly their construction values
    (mmengine's BaseModule.init_weights also visits children: nothing may re-draw them)."""
    cfg = load(CLS_CONFIGS['s'])
    model = build_model(cfg, arch=small_arch('s'))
    before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    model.init_weights()
    after = model.backbone.state_dict()
    for key, tensor in before.items():
        changed = not torch.equal(tensor, after[key])
        assert changed == ('mlp.fc' in key), key


# --- dense tasks: stages from the ImageNet checkpoint, new output norms --------------------------

@pytest.fixture(scope='module')
def converted_checkpoint(official_fixture, tmp_path_factory):
    """The official fixture's classifier weights through the real conversion tool, with a final
    norm that is not identity (so that loading it or not shows)."""
    folder = tmp_path_factory.mktemp('recipes')
    state = dict(official_fixture['classification']['state_dict'])
    state['norm.weight'] = torch.full_like(state['norm.weight'], 1.5)
    state['norm.bias'] = torch.full_like(state['norm.bias'], -0.25)
    torch.save(state, folder / 'official.pth')
    convert_official_file(folder / 'official.pth', folder / 'converted.pth')
    arch = {k: official_fixture['arch'][k] for k in ('layers', 'embed_dims', 'mlp_ratios')}
    return folder / 'converted.pth', arch


DENSE_CONFIGS = sorted(DET_CONFIGS.values()) + sorted(SEG_CONFIGS.values())


@pytest.mark.slow  # full-size dense models
@pytest.mark.parametrize('rel_path', DENSE_CONFIGS)
def test_dense_init_loads_stages_and_starts_output_norms_new(rel_path, converted_checkpoint):
    path, arch = converted_checkpoint
    cfg = load(rel_path)
    init_cfg = cfg.model.backbone.init_cfg
    assert init_cfg.type == 'Pretrained' and init_cfg.prefix == 'backbone.'
    assert init_cfg.checkpoint.startswith('checkpoints/spanet_')
    init_cfg.checkpoint = str(path)
    model = build_model(cfg, arch=arch, init_cfg=init_cfg)
    model.init_weights()
    backbone = model.backbone
    saved = torch.load(path)['state_dict']
    own = backbone.state_dict()
    for key, tensor in saved.items():
        name = key[len('backbone.'):]
        if key.startswith('backbone.') and not name.startswith('norm'):
            assert torch.equal(own[name], tensor), key
    assert value(DENSE['out_norms_from_checkpoint']) == []
    for i in backbone.out_indices:
        norm = getattr(backbone, f'norm{i}')
        assert torch.all(norm.weight == value(DENSE['out_norm_weight'])), (rel_path, i)
        assert torch.all(norm.bias == value(DENSE['out_norm_bias'])), (rel_path, i)


def test_classifier_keeps_the_final_norm(converted_checkpoint):
    """`load_from` (tools/test.py, fine-tuning) of the same file into the classifier config
    gives the ImageNet final norm to the last stage's output norm."""
    from mmengine.runner import load_checkpoint
    path, arch = converted_checkpoint
    saved = torch.load(path)['state_dict']
    cfg = load(CLS_CONFIGS['s'])
    cfg.model.head.num_classes = saved['head.fc.weight'].shape[0]
    model = build_model(cfg, arch=arch, init_cfg=None)
    load_checkpoint(model, str(path), map_location='cpu', strict=True)
    norm = getattr(model.backbone, f'norm{model.backbone.out_indices[-1]}')
    assert torch.all(norm.weight == 1.5) and torch.all(norm.bias == -0.25)


# --- COCO ---------------------------------------------------------------------------------------

def mmcv_warmup_lr(lr, i):
    """mmcv 1.x linear warm-up (record: coco.schedule.warmup_formula)."""
    s = COCO['schedule']
    warmup_iters, ratio = value(s['warmup_iters']), value(s['warmup_ratio'])
    if i >= warmup_iters:
        return lr
    return lr * (1 - (1 - i / warmup_iters) * (1 - ratio))


@pytest.mark.parametrize('task,variant', sorted(DET_CONFIGS))
def test_coco_recipe(task, variant, converted_checkpoint):
    cfg = load(DET_CONFIGS[(task, variant)])
    recipe, schedule, data = COCO[task], COCO['schedule'], COCO['data']
    assert_dense_backbone(cfg, variant)
    lr = value(recipe['lr'])
    assert cfg.auto_scale_lr.base_batch_size == value(recipe['total_batch'])
    assert cfg.optim_wrapper.optimizer.lr / cfg.auto_scale_lr.base_batch_size == \
        pytest.approx(lr / value(recipe['total_batch']))
    assert cfg.train_dataloader.batch_size == value(recipe['samples_per_gpu'])
    assert cfg.optim_wrapper.get('clip_grad') == value(recipe['clip_grad'])
    assert not cfg.optim_wrapper.get('paramwise_cfg') and value(recipe['paramwise']) is None

    _, arch = converted_checkpoint
    model = build_model(cfg, arch=arch, init_cfg=None)
    optim_wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    assert type(optim_wrapper.optimizer).__name__ == value(recipe['optimizer'])
    assert set(weight_decay_of(optim_wrapper, model).values()) == {value(recipe['weight_decay'])}
    assert_lr_scaling_only_on_request(cfg)
    assert_nothing_frozen(model)
    # The official evaluation (SPANet's object_detection/local_configs/_base_/datasets/
    # coco_detection.py:49 'bbox'; coco_instance.py:49 ['bbox', 'segm']).
    metrics = {'retinanet': ['bbox'], 'mask_rcnn': ['bbox', 'segm']}[task]
    for evaluator in (cfg.val_evaluator, cfg.test_evaluator):
        assert evaluator.type == 'CocoMetric'
        metric = evaluator.metric
        assert ([metric] if isinstance(metric, str) else list(metric)) == metrics

    # Schedule: 12 epochs, x0.1 at 8 and 11, linear warm-up over the first 500 iterations.
    assert cfg.train_cfg.max_epochs == value(schedule['max_epochs'])
    assert value(schedule['warmup']) == 'linear'
    epoch_length = value(schedule['warmup_iters']) + 100
    trace = lr_trace(cfg, value(schedule['max_epochs']), epoch_length)
    for i in (0, 1, 100, 250, 499, 500, epoch_length - 1):
        assert trace[i] == pytest.approx(mmcv_warmup_lr(lr, i), rel=0.01), i
    for epoch in range(value(schedule['max_epochs'])):
        drops = sum(epoch >= step for step in value(schedule['steps']))
        expected = lr * value(schedule['gamma']) ** drops
        assert trace[epoch * epoch_length + epoch_length - 1] == pytest.approx(expected), epoch

    # Data: (1333, 800) keeping the ratio, flip 0.5, pad to 32, ImageNet mean/std in RGB.
    train = build_transforms(cfg, cfg.train_dataloader.dataset.pipeline)
    resize = find(train, 'Resize')
    assert resize.scale == tuple(value(data['scale'])) and resize.keep_ratio == value(
        data['keep_ratio'])
    assert find(train, 'RandomFlip').prob == value(data['flip'])
    preprocessor = model.data_preprocessor
    assert preprocessor.pad_size_divisor == value(data['pad_size_divisor'])
    assert preprocessor.mean.flatten().tolist() == pytest.approx(value(data['mean']))
    assert preprocessor.std.flatten().tolist() == pytest.approx(value(data['std']))
    assert preprocessor._channel_conversion

    # Model: drop path 0; the FPN levels the official config uses.
    assert cfg.model.backbone.drop_path_rate == value(DENSE['drop_path'])
    official_in = value(recipe['fpn_in_channels'])
    if task == 'retinanet':
        start = value(recipe['fpn_start_level'])
        # Same network, without the unused stride-4 output: stages start..3 from level 0.
        assert tuple(cfg.model.backbone.out_indices) == tuple(range(start, len(official_in)))
        assert list(cfg.model.neck.in_channels) == official_in[start:]
        assert cfg.model.neck.start_level == 0
        assert cfg.model.neck.add_extra_convs == value(recipe['fpn_add_extra_convs'])
        assert cfg.model.neck.num_outs == value(recipe['fpn_num_outs'])
    else:
        assert tuple(cfg.model.backbone.out_indices) == tuple(range(len(official_in)))
        assert list(cfg.model.neck.in_channels) == official_in


# --- ADE20K -------------------------------------------------------------------------------------

@pytest.mark.parametrize('variant', sorted(SEG_CONFIGS))
def test_ade20k_recipe(variant, converted_checkpoint):
    cfg = load(SEG_CONFIGS[variant])
    assert_dense_backbone(cfg, variant)
    lr_per_image = value(ADE['lr_per_16_images']) / 16
    images = value(ADE['iters_at_16']) * 16
    total_batch = cfg.auto_scale_lr.base_batch_size
    # 1e-4 per 16 images over 80k x 16 images, in any pairing of lr, batch and iterations.
    assert cfg.optim_wrapper.optimizer.lr / total_batch == pytest.approx(lr_per_image)
    assert cfg.train_cfg.max_iters * total_batch == images
    assert total_batch == cfg.train_dataloader.batch_size * value(ADE['base_gpus'])
    assert cfg.train_dataloader.batch_size == value(ADE['samples_per_gpu'])
    assert not cfg.get('optimizer'), 'an unused top-level optimizer is left from the base'

    _, arch = converted_checkpoint
    model = build_model(cfg, arch=arch, init_cfg=None)
    optim_wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    assert type(optim_wrapper.optimizer).__name__ == value(ADE['optimizer'])
    assert value(ADE['paramwise']) is None
    assert set(weight_decay_of(optim_wrapper, model).values()) == {value(ADE['weight_decay'])}
    # PVT: optimizer_config = dict() (segmentation/configs/sem_fpn/PVT/fpn_pvt_s_ade20k_40k.py:21),
    # no gradient clipping.
    assert cfg.optim_wrapper.get('clip_grad') is None
    assert_lr_scaling_only_on_request(cfg)
    assert_nothing_frozen(model)
    # PVT evaluates mIoU (fpn_pvt_s_ade20k_40k.py:27).
    for evaluator in (cfg.val_evaluator, cfg.test_evaluator):
        assert evaluator.type == 'IoUMetric' and list(evaluator.iou_metrics) == ['mIoU']

    # Poly, power 0.9, to 0 over the run (mmcv 1.x formula; mmengine ends one step earlier).
    max_iters = cfg.train_cfg.max_iters
    lr, power, min_lr = cfg.optim_wrapper.optimizer.lr, value(ADE['poly_power']), value(
        ADE['poly_min_lr'])
    trace = lr_trace(cfg, 1, max_iters)
    for i in (0, 1, max_iters // 4, max_iters // 2, 3 * max_iters // 4, 19 * max_iters // 20):
        expected = (lr - min_lr) * (1 - i / max_iters) ** power + min_lr
        assert trace[i] == pytest.approx(expected, rel=0.01), i
    assert trace[-1] < 1e-3 * lr

    # Data and model.
    crop = tuple(value(ADE['crop_size']))
    train = build_transforms(cfg, cfg.train_dataloader.dataset.pipeline)
    resize = find(train, 'RandomResize')
    assert resize.scale == tuple(value(ADE['train_scale']))
    assert resize.ratio_range == tuple(value(ADE['ratio_range'])) and resize.resize_cfg[
        'keep_ratio']
    random_crop = find(train, 'RandomCrop')
    assert random_crop.crop_size == crop
    assert random_crop.cat_max_ratio == value(ADE['cat_max_ratio'])
    assert find(train, 'RandomFlip').prob == value(ADE['flip'])
    find(train, 'PhotoMetricDistortion')
    assert tuple(model.data_preprocessor.size) == crop
    for loader in (cfg.val_dataloader, cfg.test_dataloader):
        test = build_transforms(cfg, loader.dataset.pipeline)
        assert find(test, 'Resize').scale == tuple(value(ADE['test_scale']))
        # AlignResize(keep_ratio=True, ...) (record's test_size_divisor source, ade20k.py:27).
        assert find(test, 'Resize').keep_ratio
        assert find(test, 'ResizeToMultiple').size_divisor == value(ADE['test_size_divisor'])
    assert cfg.model.neck.out_channels == value(ADE['fpn_out_channels'])
    assert cfg.model.neck.num_outs == value(ADE['fpn_num_outs'])
    assert cfg.model.decode_head.channels == value(ADE['head_channels'])
    assert cfg.model.decode_head.num_classes == value(ADE['num_classes'])
    assert cfg.model.get('pretrained') is None
    assert cfg.model.backbone.drop_path_rate == ADE['drop_path']['value'][variant]
