"""Test helper: every rank writes its per-iteration losses to <work_dir>/losses_rank<r>.json.

mmengine logs rank 0's losses only (``BaseModel.parse_losses`` does not reduce them), so the
distributed test needs each rank's values to compare their mean with a single process.
Load it with ``custom_imports=dict(imports=['rank_loss_recorder'])`` and tests/data on
PYTHONPATH.
"""
import json
import os.path as osp

from mmengine.dist import get_rank
from mmengine.hooks import Hook
from mmengine.registry import HOOKS


@HOOKS.register_module()
class RankLossRecorderHook(Hook):

    def __init__(self):
        self.losses = []

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        self.losses.append({k: float(v) for k, v in (outputs or {}).items()
                            if 'loss' in k})

    def after_train(self, runner):
        with open(osp.join(runner.work_dir, f'losses_rank{get_rank()}.json'), 'w') as f:
            json.dump(self.losses, f)
