"""spanet_mm/engine/cpu.py: the CPU distributed set-up, and two-process CPU runs that end with
the right exit status, every time.

A gloo group that has served DDP keeps its threads after ``destroy_process_group`` (torch
2.14), and an interpreter exit under those threads can abort a rank whose run succeeded
(SIGABRT, about 1 launch in 9 before ``finish_distributed``). tests/data/ddp_exit_probe.py runs
short real two-process runs (gloo group, DDP, three steps), each ended by
:func:`spanet_mm.engine.cpu.finish_distributed` as ``tools/train.py``/``tools/test.py`` end;
a launch costs a fraction of a second, so enough of them run to catch a 10% failure rate
(40 launches: 0.9^40 < 2%). The full tools run as two processes in tests/test_tools/test_dist_train.py
and tests/test_tools/test_train_test.py.
"""
import json
import os.path as osp
import socket
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
from mmengine.config import Config

from conftest import REPO_ROOT
from spanet_mm.engine import prepare_cpu_distributed

PROBE = osp.join(REPO_ROOT, 'tests', 'data', 'ddp_exit_probe.py')
CPU_PY = osp.join(REPO_ROOT, 'spanet_mm', 'engine', 'cpu.py')
LAUNCHES = 40


def run_probe(*args):
    result = subprocess.run([sys.executable, PROBE, CPU_PY, *map(str, args)],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1]), result.stdout + result.stderr


@pytest.fixture
def launcher_env(monkeypatch):
    """A one-process group's environment, as torchrun sets it; the group is destroyed after."""
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    for key, value in dict(RANK='0', WORLD_SIZE='1', MASTER_ADDR='127.0.0.1',
                           MASTER_PORT=str(port)).items():
        monkeypatch.setenv(key, value)
    yield
    if dist.is_initialized():
        dist.destroy_process_group()


def det_cfg(**extra):
    """A config tree with SyncBN in two places (as mmdet heads and necks have it)."""
    return Config(dict(model=dict(
        backbone=dict(type='SPANet'),
        neck=dict(type='FPN', norm_cfg=dict(type='SyncBN', requires_grad=True)),
        roi_head=dict(mask_head=[dict(conv_cfg=None, norm_cfg=dict(type='SyncBN'))])),
        **extra))


@pytest.mark.skipif(torch.cuda.is_available(), reason='the CPU set-up: a no-op with CUDA')
def test_prepare_cpu_distributed_refusals():
    cfg = Config(dict(find_unused_parameters=True))
    assert not prepare_cpu_distributed(cfg, 'none')
    assert 'model_wrapper_cfg' not in cfg and 'env_cfg' not in cfg  # nothing to set up
    with pytest.raises(RuntimeError, match='--launcher pytorch'):
        prepare_cpu_distributed(cfg, 'slurm')
    with pytest.raises(RuntimeError, match=r"\['RANK', 'WORLD_SIZE'"):
        prepare_cpu_distributed(cfg, 'pytorch')
    assert not dist.is_initialized()


@pytest.mark.skipif(torch.cuda.is_available(), reason='the CPU set-up: a no-op with CUDA')
def test_prepare_cpu_distributed(launcher_env):
    """gloo, DDP without device_ids (which DDP refuses for CPU modules), buffers not
    broadcast (each rank keeps its BN statistics, as SyncBN-as-BN implies), the config's
    find_unused_parameters kept, SyncBN built as BN; twice is the same as once."""
    cfg = det_cfg(find_unused_parameters=True)
    assert prepare_cpu_distributed(cfg, 'pytorch')
    assert dist.is_initialized() and dist.get_backend() == 'gloo'
    assert cfg.model_wrapper_cfg == dict(type='MMDistributedDataParallel', device_ids=None,
                                         broadcast_buffers=False, find_unused_parameters=True)
    assert cfg.env_cfg.dist_cfg.backend == 'gloo'  # what the dumped config records
    assert cfg.model.neck.norm_cfg == dict(type='BN', requires_grad=True)
    assert cfg.model.roi_head.mask_head[0].norm_cfg.type == 'BN'
    once = cfg.to_dict()
    assert prepare_cpu_distributed(cfg, 'pytorch') and cfg.to_dict() == once


@pytest.mark.skipif(torch.cuda.is_available(), reason='the CPU set-up: a no-op with CUDA')
def test_prepare_cpu_distributed_applies_the_configs_timeout(launcher_env):
    """env_cfg.dist_cfg.timeout (seconds, as mmengine's init_dist reads it) reaches the group:
    the Runner does not initialise one itself when the group is already there."""
    import datetime
    cfg = det_cfg(env_cfg=dict(dist_cfg=dict(backend='nccl', timeout=1234)))
    assert prepare_cpu_distributed(cfg, 'pytorch')
    group = dist.distributed_c10d._get_default_group()
    assert group._get_backend(torch.device('cpu')).options._timeout == \
        datetime.timedelta(seconds=1234)
    assert cfg.env_cfg.dist_cfg == dict(backend='gloo', timeout=1234)


@pytest.mark.skipif(torch.cuda.is_available(), reason='the CPU set-up: a no-op with CUDA')
def test_prepare_cpu_distributed_keeps_the_configs_own_wrapper(launcher_env):
    own = dict(type='MMSeparateDistributedDataParallel', broadcast_buffers=True)
    cfg = det_cfg(model_wrapper_cfg=own)
    assert prepare_cpu_distributed(cfg, 'pytorch')
    assert cfg.model_wrapper_cfg == own


@pytest.mark.slow  # real two-process launches
def test_finished_runs_exit_zero_every_time():
    statuses, output = run_probe(LAUNCHES)
    failed = [codes for codes in statuses if codes != [0, 0]]
    assert len(statuses) == LAUNCHES and not failed, \
        f'{len(failed)} of {LAUNCHES} launches failed: {failed}\n{output[-3000:]}'


@pytest.mark.slow
def test_failed_rank_exits_non_zero():
    statuses, output = run_probe(1, 'fail')
    assert 'rank 1 fails on purpose' in output
    # The failing rank, and its peer whose final barrier loses the connection: never 0.
    assert statuses[0][0] != 0 and statuses[0][1] != 0, statuses
