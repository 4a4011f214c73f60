"""The environment the tests run in imports this checkout's package, from anywhere.

Subprocess tests, the converter and the toolboxes' own tools import ``spanet_mm`` without the
repository on ``sys.path``; if the shared environment's editable install pointed at another
clone, they would test that clone's code (tools/setup_env.sh re-installs; .ci/run checks).
"""
import os.path as osp
import subprocess
import sys

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
