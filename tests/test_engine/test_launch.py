"""spanet_mm.engine.launch.check_cfg_options: a ``--cfg-options`` key that nothing reads."""
import os.path as osp

import pytest
from mmengine.config import Config

from conftest import REPO_ROOT
from spanet_mm.engine.launch import ConfigKeyError, check_cfg_options

SEG_DEMO = osp.join(REPO_ROOT, 'configs', 'segmentation', 'demo', 'fpn_spanet_demo.py')
DET_DEMO = osp.join(REPO_ROOT, 'configs', 'detection', 'demo', 'mask_rcnn_spanet_demo.py')


def _merged(path, options):
    cfg = Config.fromfile(path)
    cfg.merge_from_dict(options)
    return cfg


@pytest.mark.parametrize('path, key, value, held_by', [
    (SEG_DEMO, 'max_iters', 2, 'train_cfg.max_iters'),
    (SEG_DEMO, 'crop_size', (48, 48), None),  # inside pipeline steps
    (DET_DEMO, 'data_root', '/datasets/coco/', 'train_dataloader.dataset.data_root'),
])
def test_a_config_variable_is_refused_with_the_keys_that_hold_it(path, key, value, held_by):
    """A plain variable of the config file was substituted where the file uses it when the
    file was read: merging a new value changes none of the keys that use it (shown first with
    mmengine itself), so the option would be silently ignored."""
    before = Config.fromfile(path)
    after = _merged(path, {key: value})
    assert after[key] == value
    assert after.to_dict() == {**before.to_dict(), key: after[key]}  # nothing else changed
    with pytest.raises(ConfigKeyError, match=f"'{key}' is a variable of the config file") as err:
        check_cfg_options(Config.fromfile(path), {key: value})
    if held_by:
        assert f'{held_by}=...' in str(err.value)


def test_keys_the_runner_reads_pass():
    cfg = Config.fromfile(SEG_DEMO)
    check_cfg_options(cfg, {'train_cfg.max_iters': 2, 'model.backbone.drop_path_rate': 0.1,
                            'load_from': 'x.pth', 'randomness': dict(seed=1),
                            'train_dataloader.dataset.data_root': '/d/'})
