"""The environment the tests run in imports this checkout's package, from anywhere; and
tools/setup_env.sh recovers from an interrupted set-up and runs one at a time.

Subprocess tests, the converter and the toolboxes' own tools import ``spanet_mm`` without the
repository on ``sys.path``; if the shared environment's editable install pointed at another
clone, they would test that clone's code (tools/setup_env.sh re-installs; .ci/run checks).
"""
import fcntl
import os
import os.path as osp
import shutil
import subprocess
import sys
import time

import pytest

from conftest import REPO_ROOT


@pytest.mark.slow  # a fresh interpreter
def test_spanet_mm_is_this_checkout_from_any_directory():
    where = subprocess.run(
        [sys.executable, '-c', 'import os, spanet_mm; '
         'print(os.path.realpath(os.path.dirname(os.path.dirname(spanet_mm.__file__))))'],
        cwd='/', capture_output=True, text=True, timeout=120)
    assert where.returncode == 0, where.stderr[-2000:]
    assert where.stdout.strip().splitlines()[-1] == osp.realpath(REPO_ROOT), (
        'the environment imports another checkout; run `make env` here')


def _setup_env_copy(tmp_path):
    """tools/setup_env.sh in a copy of the files it reads (so that nothing it does can touch
    this checkout's .venv link), a cache with an environment whose set-up was interrupted,
    and an interpreter stand-in that ends the script where it would create a fresh venv."""
    repo = tmp_path / 'repo'
    shutil.copytree(osp.join(REPO_ROOT, 'requirements'), repo / 'requirements')
    shutil.copy(osp.join(REPO_ROOT, 'setup.py'), repo)
    (repo / 'tools').mkdir()
    shutil.copy(osp.join(REPO_ROOT, 'tools', 'setup_env.sh'), repo / 'tools')
    venv = tmp_path / 'cache' / 'venv-py311'
    (venv / 'bin').mkdir(parents=True)
    (venv / '.spanet_mm_building').touch()  # what a killed set-up leaves
    (venv / 'half_upgraded_pip').touch()
    python = tmp_path / 'python-stand-in'
    python.write_text('#!/bin/sh\necho "PYTHON $*"\nexit 7\n')
    python.chmod(0o755)
    env = dict(os.environ, SPANET_MM_CACHE=str(tmp_path / 'cache'), PYTHON=str(python))
    return repo / 'tools' / 'setup_env.sh', venv, env


def test_interrupted_setup_is_built_again(tmp_path):
    """An environment whose set-up was interrupted (a killed first ``make test``) is removed
    and built from the start, instead of failing in its half-installed pip every run."""
    script, venv, env = _setup_env_copy(tmp_path)
    result = subprocess.run(['bash', str(script)], env=env, capture_output=True, text=True,
                            timeout=60)
    assert 'unfinished set-up (interrupted): removing it' in result.stdout, result.stdout
    assert not (venv / 'half_upgraded_pip').exists()
    assert result.returncode == 7 and f'PYTHON -m venv {venv}' in result.stdout
    # That set-up failed too: it is marked unfinished in turn, for the next run to redo.
    assert (venv / '.spanet_mm_building').exists()


def test_one_setup_at_a_time(tmp_path):
    """Clones on one machine share the environment: a set-up waits while another holds the
    cache's lock (flock, as tools/setup_env.sh takes it) and only then touches the venv."""
    script, venv, env = _setup_env_copy(tmp_path)
    with open(tmp_path / 'cache' / '.setup_env.lock', 'w') as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        output = tmp_path / 'out.txt'
        with open(output, 'w') as out:
            process = subprocess.Popen(['bash', str(script)], env=env, stdout=out,
                                       stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while 'waiting for another set-up' not in output.read_text():
            assert process.poll() is None and time.monotonic() < deadline, output.read_text()
            time.sleep(0.05)
        time.sleep(0.5)
        assert process.poll() is None and (venv / 'half_upgraded_pip').exists()
    assert process.wait(timeout=60) == 7, output.read_text()
    assert not (venv / 'half_upgraded_pip').exists()
