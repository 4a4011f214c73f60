"""Two-process CPU runs end with the right exit status, every time.

A gloo group that has served DDP keeps its threads after ``destroy_process_group`` (torch
2.14), and an interpreter exit under those threads can abort a rank whose run succeeded
(SIGABRT, about 1 launch in 9 before ``finish_distributed``). tests/data/ddp_exit_probe.py runs
short real two-process runs (gloo group, DDP, three steps), each ended by
:func:`spanet_mm.engine.dist.finish_distributed` as ``tools/train.py``/``tools/test.py`` end;
a launch costs a fraction of a second, so enough of them run to catch a 10% failure rate
(40 launches: 0.9^40 < 2%). The full tools run as two processes in tests/test_tools/test_dist_train.py
and tests/test_tools/test_train_test.py.
"""
import json
import os.path as osp
import subprocess
import sys

import pytest

from conftest import REPO_ROOT

pytestmark = pytest.mark.slow  # real two-process launches

PROBE = osp.join(REPO_ROOT, 'tests', 'data', 'ddp_exit_probe.py')
DIST_PY = osp.join(REPO_ROOT, 'spanet_mm', 'engine', 'dist.py')
LAUNCHES = 40


def run_probe(*args):
    result = subprocess.run([sys.executable, PROBE, DIST_PY, *map(str, args)],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1]), result.stdout + result.stderr


def test_finished_runs_exit_zero_every_time():
    statuses, output = run_probe(LAUNCHES)
    failed = [codes for codes in statuses if codes != [0, 0]]
    assert len(statuses) == LAUNCHES and not failed, \
        f'{len(failed)} of {LAUNCHES} launches failed: {failed}\n{output[-3000:]}'


def test_failed_rank_exits_non_zero():
    statuses, output = run_probe(1, 'fail')
    assert 'rank 1 fails on purpose' in output
    # The failing rank, and its peer whose final barrier loses the connection: never 0.
    assert statuses[0][0] != 0 and statuses[0][1] != 0, statuses
