"""spanet_mm.engine.launch.check_cfg_options: a ``--cfg-options`` key that nothing reads."""
import os.path as osp

import pytest
from mmengine.config import Config

from conftest import REPO_ROOT, load_tool, usage_error
from spanet_mm.engine.launch import (ConfigKeyError, ToolOptionError, check_cfg_options,
                                     load_config, set_work_dir)

SEG_DEMO = osp.join(REPO_ROOT, 'configs', 'segmentation', 'demo', 'fpn_spanet_demo.py')
DET_DEMO = osp.join(REPO_ROOT, 'configs', 'detection', 'demo', 'mask_rcnn_spanet_demo.py')


def _merged(path, options):
    cfg = Config.fromfile(path)
    cfg.merge_from_dict(options)
    return cfg


@pytest.mark.parametrize('path, key, value, held_by', [
    (SEG_DEMO, 'max_iters', 2, 'train_cfg.max_iters'),
    (SEG_DEMO, 'crop_size', (48, 48), 'model.data_preprocessor.size'),
    (SEG_DEMO, 'data_preprocessor.size', (48, 48), 'model.data_preprocessor.size'),
    (DET_DEMO, 'data_root', '/datasets/coco/', 'train_dataloader.dataset.data_root'),
])
def test_a_config_variable_is_refused_with_the_keys_that_hold_it(path, key, value, held_by):
    """A plain variable of the config file was substituted where the file uses it when the
    file was read: merging a new value changes none of the keys that use it (shown first with
    mmengine itself), so the option would be silently ignored."""
    top = key.split('.')[0]
    before = Config.fromfile(path)
    after = _merged(path, {key: value})
    assert after[top] != before[top]
    assert after.to_dict() == {**before.to_dict(), top: after[top]}  # nothing else changed
    with pytest.raises(ConfigKeyError, match=f"'{top}' is a variable of the config file") as err:
        check_cfg_options(Config.fromfile(path), {key: value})
    suggested = [s.split('=')[0] for s in str(err.value).split('e.g. ')[1].split(', ')]
    assert held_by in suggested
    for path_ in suggested:  # each suggestion is a key something reads
        check_cfg_options(Config.fromfile(path), {path_: value})


def test_keys_the_runner_reads_pass():
    cfg = Config.fromfile(SEG_DEMO)
    check_cfg_options(cfg, {'train_cfg.max_iters': 2, 'model.backbone.drop_path_rate': 0.1,
                            'load_from': 'x.pth', 'randomness': dict(seed=1),
                            'train_dataloader.dataset.data_root': '/d/'})
    # mmpretrain's models have no data_preprocessor of their own: the Runner reads the top one.
    cls = Config.fromfile(osp.join(REPO_ROOT, 'configs', 'classification', 'spanet_s_in1k.py'))
    assert 'data_preprocessor' not in cls.model
    check_cfg_options(cls, {'data_preprocessor.num_classes': 10})


@pytest.mark.parametrize('tool', ['tools/train.py', 'tools/test.py'])
def test_a_cfg_option_without_a_value_is_a_usage_error(tool, capsys):
    """mmengine's DictAction fails on it with "not enough values to unpack" (a traceback)."""
    argv = [SEG_DEMO, 'ckpt.pth'][:1 if tool.endswith('train.py') else 2]
    message = usage_error(load_tool(tool).parse_args,
                          argv + ['--cfg-options', 'train_cfg.max_iters=2', 'load_from'], capsys)
    assert message.endswith("--cfg-options: 'load_from' has no value; give KEY=VALUE (e.g. "
                            'train_cfg.max_epochs=12), one per item'), message


def test_a_checkpoint_in_the_config_place_is_named(tmp_path):
    """mmengine says "Only py/yml/yaml/json type are supported now!" about swapped arguments."""
    (tmp_path / 'epoch_1.pth').write_bytes(b'')
    with pytest.raises(ToolOptionError, match='looks like a checkpoint: the config comes first'):
        load_config(str(tmp_path / 'epoch_1.pth'))


def test_a_file_as_work_dir_is_refused(tmp_path):
    (tmp_path / 'notes.txt').write_text('')
    with pytest.raises(ToolOptionError, match='--work-dir .*notes.txt is a file'):
        set_work_dir(Config(), str(tmp_path / 'notes.txt'), SEG_DEMO)
    cfg = Config()
    set_work_dir(cfg, str(tmp_path / 'new'), SEG_DEMO)
    assert cfg.work_dir == str(tmp_path / 'new')
