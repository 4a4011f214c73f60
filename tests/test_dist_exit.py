"""Two-process CPU runs end with the right exit status, every time.

A gloo group that has served DDP keeps its threads after ``destroy_process_group`` (torch
2.14), and an interpreter exit under those threads can abort a rank whose run succeeded
(SIGABRT, about 1 launch in 9 before ``finish_distributed``). Each launch here is two real
processes with a real gloo group and DDP, ended by :func:`spanet_mm.engine.dist.
finish_distributed` as ``tools/train.py``/``tools/test.py`` end; a launch is cheap (one torch
import per rank), so enough of them run to catch a 10% failure rate (22 launches: 0.9^22 < 10%).
"""
import os
import os.path as osp
import socket
import subprocess
import sys

import pytest

from conftest import REPO_ROOT

PROBE = osp.join(REPO_ROOT, 'tests', 'data', 'ddp_exit_probe.py')
DIST_PY = osp.join(REPO_ROOT, 'spanet_mm', 'engine', 'dist.py')
LAUNCHES = 22


def free_port():
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


def launch(*probe_args):
    """Starts the two ranks of one run; returns their Popen objects."""
    port = free_port()
    return [
        subprocess.Popen(
            [sys.executable, PROBE, DIST_PY, *probe_args],
            env=dict(os.environ, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE='2',
                     MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port), OMP_NUM_THREADS='1'),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for rank in range(2)
    ]


def finish(ranks):
    outputs = [rank.communicate(timeout=300) for rank in ranks]
    return [rank.returncode for rank in ranks], outputs


@pytest.mark.slow
def test_finished_runs_exit_zero_every_time():
    failures = []
    for _ in range(LAUNCHES // 2):  # two launches at a time
        runs = [launch(), launch()]
        for ranks in runs:
            codes, outputs = finish(ranks)
            if codes != [0, 0] or not all('trained' in out for out, _ in outputs):
                failures.append((codes, [err[-800:] for _, err in outputs]))
    assert not failures, f'{len(failures)} of {LAUNCHES} launches failed: {failures[:2]}'


@pytest.mark.slow
def test_failed_rank_exits_non_zero():
    codes, outputs = finish(launch('fail'))
    assert codes[1] != 0 and 'rank 1 fails on purpose' in outputs[1][1]
    assert codes[0] != 0  # its peer is gone: the final barrier fails, never a silent 0
