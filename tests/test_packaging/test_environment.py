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


#: Stands in for python in tools/setup_env.sh: ``-m venv DIR`` makes a venv with this script as
#: its interpreter, pip commands succeed, and the script's queries get this checkout's answers.
PYTHON_STAND_IN = """#!/bin/sh
case "$1 $2" in
    "-m venv") mkdir -p "$3/bin" && cp "$0" "$3/bin/python" ;;
    -c*) case "$2" in *spanet_mm*) echo "$STAND_IN_REPO" ;; *__version__*) echo 2.14.1 ;; esac ;;
esac
exit 0
"""


def _setup_env_copy(tmp_path, marker, with_python=True):
    """tools/setup_env.sh in a copy of the files it reads (so that nothing it does can touch
    this checkout's .venv link), a cache whose environment has the ``marker`` of a set-up
    that did not finish (and a file it left), and a stand-in for python."""
    repo = tmp_path / 'repo'
    shutil.copytree(osp.join(REPO_ROOT, 'requirements'), repo / 'requirements')
    shutil.copy(osp.join(REPO_ROOT, 'setup.py'), repo)
    (repo / 'tools').mkdir()
    shutil.copy(osp.join(REPO_ROOT, 'tools', 'setup_env.sh'), repo / 'tools')
    python = tmp_path / 'python-stand-in'
    python.write_text(PYTHON_STAND_IN)
    python.chmod(0o755)
    venv = tmp_path / 'cache' / 'venv-py311'
    (venv / 'bin').mkdir(parents=True)
    if with_python:
        shutil.copy(python, venv / 'bin' / 'python')
    (venv / '.spanet_mm_building').write_text(marker + '\n')
    (venv / 'left_over').touch()
    env = dict(os.environ, SPANET_MM_CACHE=str(tmp_path / 'cache'), PYTHON=str(python),
               STAND_IN_REPO=osp.realpath(repo))
    return repo / 'tools' / 'setup_env.sh', venv, env


def _set_up(script, env):
    result = subprocess.run(['bash', str(script)], env=env, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


@pytest.mark.slow  # runs tools/setup_env.sh (bash)
@pytest.mark.parametrize('marker,with_python', [('first', True), ('update', False)],
                         ids=['first-build', 'update-without-pip'])
def test_interrupted_setup_is_built_again(tmp_path, marker, with_python):
    """An unfinished first build (a killed first ``make test``), or any whose pip no longer
    runs, is removed and built from the start, instead of failing in it every run; the
    finished build is then stamped and used as it is."""
    script, venv, env = _setup_env_copy(tmp_path, marker, with_python)
    out = _set_up(script, env)
    assert 'removing it to start over' in out, out
    assert not (venv / 'left_over').exists() and (venv / 'bin' / 'python').exists()
    assert not (venv / '.spanet_mm_building').exists()
    assert (venv / '.spanet_mm_stamp').exists()
    again = _set_up(script, env)
    assert 'building' not in again and 'start over' not in again and 'again' not in again, again


@pytest.mark.slow  # runs tools/setup_env.sh (bash)
def test_unfinished_update_is_redone_in_place(tmp_path):
    """An update that failed (pip offline, say) leaves a working environment: the next run
    redoes the update in it rather than removing it."""
    script, venv, env = _setup_env_copy(tmp_path, 'update')
    out = _set_up(script, env)
    assert 'did not finish: doing it again' in out and 'start over' not in out, out
    assert (venv / 'left_over').exists() and not (venv / '.spanet_mm_building').exists()


@pytest.mark.slow  # runs tools/setup_env.sh (bash)
def test_one_setup_at_a_time(tmp_path):
    """Clones on one machine share the environment: a set-up waits while another holds the
    cache's lock (flock, as tools/setup_env.sh takes it) and only then touches the venv."""
    script, venv, env = _setup_env_copy(tmp_path, 'first')
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
        assert process.poll() is None and (venv / 'left_over').exists()
    assert process.wait(timeout=60) == 0, output.read_text()
    assert not (venv / 'left_over').exists()
