"""The suite's own safeguards (tests/conftest.py), each run in a pytest session of its own
(a process forked by ``run_python``):

- with CI=true a missing official fixture (../shared) fails the run instead of skipping the
  exactness and converter tests; outside CI it is a skip, listed by ``-ra``;
- a test or a module-scoped fixture that changes global torch state (deterministic algorithms
  as an in-process Runner with ``deterministic=True`` sets them, cuDNN flags, threads, default
  dtype, grad mode, CUBLAS_WORKSPACE_CONFIG) fails, named, and the state is restored for the
  tests after it;
- a pytest-xdist worker uses its share of the cores (torch and the processes it starts);
- a script forked from the preloaded interpreter (``run_python``, and the ``forked_python``
  executable that stands in for ``python`` in launchers) behaves as ``python SCRIPT ARGS``.
"""
import os
import re
import shutil
import signal
import subprocess
import sys

import pytest

from conftest import REPO_ROOT, run_python

pytestmark = pytest.mark.slow  # each runs a pytest session as a process

RUN_PYTEST = os.path.join(REPO_ROOT, 'tests', 'data', 'run_pytest.py')


def run_pytest(args, cwd, env):
    full_env = {k: v for k, v in os.environ.items()
                if k not in ('CI', 'PYTEST_ADDOPTS', 'CUBLAS_WORKSPACE_CONFIG')}
    full_env.update(env, OMP_NUM_THREADS='1')
    return run_python(RUN_PYTEST, '-p', 'no:cacheprovider', *args, cwd=cwd, env=full_env,
                      timeout=180)


@pytest.mark.parametrize('ci', [True, False], ids=['CI', 'local'])
def test_missing_official_fixture(tmp_path, ci):
    env = dict(SPANET_MM_SHARED=str(tmp_path), **({'CI': 'true'} if ci else {}))
    result = run_pytest(['tests/test_conversion.py', '-q', '-k', 'test_api_error_type'],
                        REPO_ROOT, env)
    output = result.stdout + result.stderr
    missing = os.path.join(str(tmp_path), 'fixtures', 'spanet_official_tiny.pth')
    assert f'official fixture not found at {missing}' in output, output[-3000:]
    assert 'SPANET_MM_SHARED' in output
    if ci:
        assert result.returncode == 1, output[-3000:]
        assert re.search(r'\b1 error in\b', output) and 'SKIPPED' not in output, output[-3000:]
    else:
        assert result.returncode == 0, output[-3000:]
        assert 'SKIPPED [1]' in output and re.search(r'\b1 skipped\b', output), output[-3000:]


LEAKY_TESTS = '''
import os

import torch
from mmengine.runner import set_random_seed


def test_seeds_like_a_deterministic_runner():
    set_random_seed(0, deterministic=True)  # what Runner(randomness=...) calls


def test_sets_cublas_workspace():
    os.environ['CUBLAS_WORKSPACE_CONFIG'] = ':4096:8'


def test_sets_threads():
    torch.set_num_threads(torch.get_num_threads() + 1)


def test_sets_dtype_and_grad_mode():
    torch.set_default_dtype(torch.float64)
    torch.set_grad_enabled(False)


def test_turns_tf32_off():  # what an exact float32 comparison on a GPU does
    torch.backends.cudnn.allow_tf32 = False


def test_turns_tf32_matmuls_on():
    torch.backends.cuda.matmul.allow_tf32 = True


def test_state_is_back_after_the_leaks():
    assert not torch.are_deterministic_algorithms_enabled()
    assert not torch.backends.cudnn.deterministic
    assert 'CUBLAS_WORKSPACE_CONFIG' not in os.environ
    assert torch.get_num_threads() == 1  # OMP_NUM_THREADS=1
    assert torch.get_default_dtype() == torch.float32 and torch.is_grad_enabled()
    assert torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32


def test_declared_and_restored(restored_global_state):
    torch.use_deterministic_algorithms(True, warn_only=True)
'''

LEAKY_MODULE_FIXTURE = '''
import pytest
import torch


@pytest.fixture(scope='module')
def benchmark_on():
    torch.backends.cudnn.benchmark = True


def test_uses_it(benchmark_on):
    pass
'''


def test_global_state_leaks_fail_and_are_restored(tmp_path):
    shutil.copy(os.path.join(REPO_ROOT, 'tests', 'conftest.py'), tmp_path)
    (tmp_path / 'test_a_leaks.py').write_text(LEAKY_TESTS)
    (tmp_path / 'test_b_module_fixture.py').write_text(LEAKY_MODULE_FIXTURE)
    result = run_pytest(['-q', 'test_a_leaks.py', 'test_b_module_fixture.py'], tmp_path, {})
    output = result.stdout + result.stderr
    assert result.returncode == 1, output[-4000:]
    expected = {
        'test_a_leaks.py::test_seeds_like_a_deterministic_runner': [
            'torch.are_deterministic_algorithms_enabled(): False -> True',
            'torch.backends.cudnn.deterministic: False -> True'],
        'test_a_leaks.py::test_sets_cublas_workspace': [
            "os.environ['CUBLAS_WORKSPACE_CONFIG']: None -> ':4096:8'"],
        'test_a_leaks.py::test_sets_threads': ['torch.get_num_threads(): 1 -> 2'],
        'test_a_leaks.py::test_sets_dtype_and_grad_mode': [
            'torch.get_default_dtype(): torch.float32 -> torch.float64',
            'torch.is_grad_enabled(): True -> False'],
        'test_a_leaks.py::test_turns_tf32_off': ['torch.backends.cudnn.allow_tf32: True -> False'],
        'test_a_leaks.py::test_turns_tf32_matmuls_on': [
            'torch.backends.cuda.matmul.allow_tf32: False -> True'],
        'test_b_module_fixture.py (a module-scoped fixture)': [
            'torch.backends.cudnn.benchmark: False -> True'],
    }
    reports = re.split(r'_{3,} ERROR at ', output)[1:]
    assert len(reports) == len(expected), output[-4000:]
    for who, changes in expected.items():
        report = next((r for r in reports if f'{who} leaked global state' in r), None)
        assert report is not None, (who, output[-4000:])
        for change in changes:
            assert change in report, (who, change, report)
    # The tests after a leak see the state as it was (no failure); declaring it is no leak.
    assert re.search(r'\b9 passed, 7 errors\b', output), output[-4000:]


CUDA_AND_PLAIN_TESTS = '''
import pytest


@pytest.mark.cuda
def test_on_the_gpu():
    pass


def test_anywhere():
    pass
'''


def test_cuda_tests_deselected_without_a_gpu(tmp_path):
    """Where torch sees no CUDA device the ``cuda`` tests are deselected (counted, and named
    in the header), not skipped one by one; on a GPU machine they run."""
    import torch
    shutil.copy(os.path.join(REPO_ROOT, 'tests', 'conftest.py'), tmp_path)
    (tmp_path / 'pytest.ini').write_text('[pytest]\naddopts = --strict-markers\nmarkers =\n'
                                         '    cuda: needs a CUDA GPU\n')
    (tmp_path / 'test_devices.py').write_text(CUDA_AND_PLAIN_TESTS)
    result = run_pytest(['-rA', 'test_devices.py'], tmp_path, {})
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    if torch.cuda.is_available():
        assert re.search(r'\b2 passed\b', output) and 'cuda tests: run on' in output, output
    else:
        assert re.search(r'\b1 passed, 1 deselected\b', output), output[-3000:]
        assert 'cuda tests: deselected, torch sees no CUDA device' in output
        assert 'test_on_the_gpu' not in output and 'SKIPPED' not in output


THREAD_PROBE = '''
import os
import subprocess
import sys

import torch


def test_threads():
    code = 'import os; print(os.environ["OMP_NUM_THREADS"])'
    child = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                           check=True).stdout.strip()
    print('THREADS', torch.get_num_threads(), os.environ['OMP_NUM_THREADS'], child)
'''


def test_each_xdist_worker_gets_its_share_of_the_cores(tmp_path):
    """As a worker of ``pytest -n 2``: torch and the processes the tests start use
    ``cores // 2`` threads (at least one), so that two workers do not oversubscribe the cores,
    starting from a shell where OMP_NUM_THREADS is the number of cores."""
    shutil.copy(os.path.join(REPO_ROOT, 'tests', 'conftest.py'), tmp_path)
    (tmp_path / 'test_threads.py').write_text(THREAD_PROBE)
    cores = os.cpu_count()
    env = {k: v for k, v in os.environ.items() if k not in ('CI', 'PYTEST_ADDOPTS')}
    env.update(PYTEST_XDIST_WORKER_COUNT='2', OMP_NUM_THREADS=str(cores))
    result = run_python(RUN_PYTEST, '-p', 'no:cacheprovider', '-q', '-s', 'test_threads.py',
                        cwd=tmp_path, env=env, timeout=180)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    share = str(max(1, cores // 2))
    assert f'THREADS {share} {share} {share}' in output, output[-3000:]


FORKED_SCRIPT = r'''
import os, sys, threading, atexit
atexit.register(lambda: print('atexit ran'))
threading.Thread(target=lambda: (__import__('time').sleep(0.2), print('thread joined'))).start()
print(__name__, sys.argv[1:], os.getcwd(), os.environ.get('PROBE'), sys.path[0])
sys.stdout.flush()
if sys.argv[1] == 'exit':
    sys.exit(int(sys.argv[2]))
if sys.argv[1] == 'message':
    sys.exit('a message')
if sys.argv[1] == 'raise':
    def inner():
        raise ValueError('boom')
    inner()
'''


@pytest.mark.parametrize('launch', ['run_python', 'forked_python'])
@pytest.mark.parametrize('args', [['exit', '0'], ['exit', '3'], ['message'], ['raise']],
                         ids=['exit-0', 'exit-3', 'exit-message', 'uncaught'])
def test_forked_script_is_what_python_does(tmp_path, args, launch, forked_python):
    """A script forked from tests/data/python_forkserver.py, by ``run_python`` or through the
    ``forked_python`` executable (with -u, as torchrun starts its ranks), behaves as
    ``python SCRIPT ARGS``: exit status, stdout and stderr (tracebacks included), argv, cwd,
    environment, ``__name__``, ``sys.path[0]``, non-daemon threads joined, atexit run."""
    script = tmp_path / 'probe.py'
    script.write_text(FORKED_SCRIPT)
    env = dict(os.environ, PROBE='value')
    expected = subprocess.run([sys.executable, '-u', str(script), *args], cwd='/', env=env,
                              capture_output=True, text=True, timeout=60)
    if launch == 'run_python':
        got = run_python(script, *args, cwd='/', env=env, timeout=60)
    else:
        got = subprocess.run([forked_python, '-u', str(script), *args], cwd='/', env=env,
                             capture_output=True, text=True, timeout=60)
    assert 'atexit ran' in expected.stdout and 'thread joined' in expected.stdout
    assert (got.returncode, got.stdout, got.stderr) == \
        (expected.returncode, expected.stdout, expected.stderr)


CONFIG_TEXTS = r'''
from mmengine.config import Config
cfg = Config(dict(model=dict(type='Net', depth=1, widths=[8, 16]), lr=0.1))
print(cfg.pretty_text)
print(cfg.pretty_text)
cfg.model.depth = 2
print(cfg.pretty_text)
'''


def test_forked_config_text_is_what_yapf_gives(tmp_path):
    """The fork server keeps yapf's formatting of a config text per child (mmengine formats
    the same text several times a run): every config, changed or not, prints as under
    ``python``."""
    script = tmp_path / 'texts.py'
    script.write_text(CONFIG_TEXTS)
    expected = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                              timeout=60)
    got = run_python(script, timeout=60)
    assert expected.returncode == 0 and 'depth=2' in expected.stdout, expected.stderr
    assert (got.returncode, got.stdout) == (expected.returncode, expected.stdout)


SLEEPER = r'''
import os, signal, sys, time
signal.signal(signal.SIGTERM, lambda *_: sys.exit('stopped by SIGTERM'))
print('ready', os.getpid(), flush=True)
time.sleep(60)
'''


def test_forked_python_passes_signals_on(tmp_path, forked_python):
    """A signal to the ``forked_python`` process reaches the forked script (torchrun stops
    its ranks with SIGTERM), which handles it as under ``python``; a script that dies of a
    signal has its launcher die of it too; ``python -m MODULE`` runs the module as
    ``__main__``."""
    script = tmp_path / 'sleeper.py'
    script.write_text(SLEEPER)
    for python in (sys.executable, forked_python):
        for sig, status in ((signal.SIGTERM, 1), (signal.SIGKILL, -signal.SIGKILL)):
            proc = subprocess.Popen([python, str(script)], stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True)
            ready, script_pid = proc.stdout.readline().split()
            assert ready == 'ready'
            if sig == signal.SIGTERM:  # to the launched process, as torchrun sends it
                proc.send_signal(sig)
            else:  # the script's own death (forked: not the launcher's pid)
                os.kill(int(script_pid), sig)
            assert proc.wait(timeout=30) == status, (python, sig)
            if sig == signal.SIGTERM:
                assert proc.stderr.read() == 'stopped by SIGTERM\n', python
            proc.stdout.close()
            proc.stderr.close()
    (tmp_path / 'probe_module.py').write_text('import sys; print(__name__, sys.argv[1:])')
    got = subprocess.run([forked_python, '-m', 'probe_module', 'a'], cwd=tmp_path,
                         capture_output=True, text=True, timeout=60)
    assert (got.returncode, got.stdout) == (0, "__main__ ['a']\n"), got.stderr
