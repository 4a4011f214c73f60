import atexit
import json
import os
import os.path as osp
import sys
import tempfile
from typing import NamedTuple, Tuple

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

REPO_ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
SHARED_DIR = os.environ.get('SPANET_MM_SHARED', osp.join(osp.dirname(REPO_ROOT), 'shared'))
FIXTURE_PATH = osp.join(SHARED_DIR, 'fixtures', 'spanet_official_tiny.pth')
CONFIG_DIR = osp.join(REPO_ROOT, 'configs')
SCOPE_OF_TASK = {'classification': 'mmpretrain', 'detection': 'mmdet', 'segmentation': 'mmseg'}


def _shipped_configs() -> list:
    import glob
    configs = []
    for task in SCOPE_OF_TASK:
        for path in sorted(glob.glob(osp.join(CONFIG_DIR, task, '**', '*.py'), recursive=True)):
            if '_base_' not in path.split(osp.sep):
                configs.append(osp.relpath(path, CONFIG_DIR))
    return configs


#: Every config users run (paths relative to configs/), the demos included.
ALL_CONFIGS = _shipped_configs()


def load_config(rel_path: str, **options):
    """A shipped config (path relative to configs/), with ``options`` merged."""
    from mmengine.config import Config
    cfg = Config.fromfile(osp.join(CONFIG_DIR, rel_path))
    if options:
        cfg.merge_from_dict(options)
    return cfg


def load_tool(path: str):
    """A tool (a path from the repository's root, or absolute: also a toolbox's own tools) as
    a module, to call its functions or ``main()`` in-process: faster than a subprocess where
    the process boundary is not what is tested. Each call executes the file afresh."""
    import importlib.util
    import re
    path = osp.join(REPO_ROOT, path)
    name = 'spanet_tool_' + re.sub(r'\W', '_', osp.splitext(osp.relpath(path, REPO_ROOT))[0])
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def generate_demo_data(out) -> str:
    """``tools/generate_demo_data.py --out OUT`` in-process: the demo COCO, ADE20K and ImageNet
    sets under ``OUT`` (a fixture's input; the tool's command line is tested on its own)."""
    load_tool('tools/generate_demo_data.py').main(['--out', str(out)])
    return str(out)


def usage_error(main, argv, capsys) -> str:
    """What argparse prints for a refused option (exit 2, one ``error:`` line)."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as excinfo:
        main(argv)
    assert excinfo.value.code == 2
    return capsys.readouterr().err.strip().splitlines()[-1]


def convert_official_file(src, dst) -> str:
    """``tools/model_converters/spanet_official_to_mm.py SRC DST`` in-process (the tool's
    ``main``; its failures as a process are tested in test_conversion.py)."""
    load_tool('tools/model_converters/spanet_official_to_mm.py').main([str(src), str(dst)])
    return str(dst)


def fixture_arch(fixture):
    """The official fixture's arch as a SPANet ``arch`` dict."""
    return {k: fixture['arch'][k] for k in ('layers', 'embed_dims', 'mlp_ratios', 'radius')}


def dense_official_checkpoint(fixture):
    """An official detector-style file: dense backbone keys under `backbone.`, inside `model`."""
    state = {k: v for k, v in fixture['classification']['state_dict'].items()
             if not k.startswith(('norm.', 'head.')) and not k.endswith('.filter')}
    state.update(fixture['dense']['extra_state_dict'])
    return {'model': {f'backbone.{k}': v for k, v in state.items()}}


def official_classifier(fixture, checkpoint, impl: str):
    """The shipped classifier config with the fixture's arch, ``checkpoint`` (a converted
    official file) loaded as ``load_from`` does, in eval mode; ``impl`` 'auto', 'fft', or
    'deploy' (the low-rank model after ``switch_to_deploy()``)."""
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    from mmengine.runner import load_checkpoint
    from mmpretrain.registry import MODELS
    cfg = Config.fromfile(osp.join(CONFIG_DIR, 'classification', 'spanet_s_in1k.py'))
    cfg.model.backbone.update(arch=fixture_arch(fixture), init_cfg=None,
                              spectral_impl='auto' if impl == 'deploy' else impl)
    init_default_scope(cfg.default_scope)
    model = MODELS.build(cfg.model).eval()
    load_checkpoint(model, str(checkpoint), map_location='cpu', strict=True)
    if impl == 'deploy':
        model.backbone.switch_to_deploy()
    return model


def in_ci() -> bool:
    """CI runs the suite with CI=true: there a missing fixture is a failure, not a skip."""
    return os.environ.get('CI', '').lower() == 'true'


def pytest_configure(config):
    """Under pytest-xdist, each worker's torch (and the processes its tests start) gets its
    share of the cores: with two workers of two OpenMP threads each on two cores, a thread
    that waits spins on a core the other worker needs (a 1 s test took 5-22 s so)."""
    workers = int(os.environ.get('PYTEST_XDIST_WORKER_COUNT', '1'))
    if workers > 1:
        threads = max(1, (os.cpu_count() or 1) // workers)
        os.environ['OMP_NUM_THREADS'] = str(threads)
        torch.set_num_threads(threads)


def pytest_report_header(config):
    # Only the header names the GPU: get_device_name() creates a CUDA context, which the
    # collection hook below (also run in every xdist worker) must not do before forking.
    name = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    return (f'cuda tests: run on {name}' if name else
            'cuda tests: deselected, torch sees no CUDA device (run them on a GPU machine '
            "with `pytest tests -m cuda`)")


def pytest_collection_modifyitems(config, items):
    """Without a CUDA device the ``cuda`` tests are deselected, as the header says (a
    run without xdist counts them in its summary), instead of skipped one by one.

    Files with the most ``slow`` tests first. pytest-xdist (``--dist loadfile``) hands out
    whole files in collection order as workers free up: started early, the long files no
    longer leave one worker running alone at the end while the other idles (longest first).
    The order within a file is kept; no test depends on the order of files."""
    if not torch.cuda.is_available():
        cuda = [item for item in items if item.get_closest_marker('cuda')]
        if cuda:
            config.hook.pytest_deselected(items=cuda)
            items[:] = [item for item in items if not item.get_closest_marker('cuda')]
    slow = {}
    for item in items:
        slow[item.path] = slow.get(item.path, 0) + bool(item.get_closest_marker('slow'))
    items.sort(key=lambda item: -slow[item.path])  # stable: a file's tests stay together


@pytest.fixture(scope='session')
def official_fixture():
    """The official model's outputs for random weights (../shared/fixtures)."""
    if not osp.isfile(FIXTURE_PATH):
        message = (f'official fixture not found at {FIXTURE_PATH} (set SPANET_MM_SHARED to the '
                   'folder that holds fixtures/spanet_official_tiny.pth)')
        if in_ci():
            pytest.fail(f'{message}; CI=true, so the exactness and converter tests may not '
                        'be skipped.', pytrace=False)
        pytest.skip(message)
    return torch.load(FIXTURE_PATH)


@pytest.fixture(scope='session')
def converted_classifier(official_fixture, tmp_path_factory):
    """The fixture's official classification file, converted (read-only for the tests)."""
    folder = tmp_path_factory.mktemp('cls')
    torch.save(official_fixture['classification']['state_dict'], folder / 'official.pth')
    return convert_official_file(folder / 'official.pth', folder / 'converted.pth')


@pytest.fixture
def one_thread():
    """Single-threaded torch for the test: faster than threads competing on 2 busy cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def saved_bytes(fn):
    """Bytes of the tensors autograd saves for backward while ``fn()`` runs (parameters
    excluded), and ``fn``'s result."""
    total = [0]

    def pack(t):
        if not isinstance(t, torch.nn.Parameter):
            total[0] += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return total[0], out


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """``||a - b|| / ||b||`` in float32 (tools/analysis/benchmark.py reports it over all of a
    model's outputs at once)."""
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def perturbed(module: torch.nn.Module) -> torch.nn.Module:
    """``module`` in eval mode with every parameter moved by 0.1 * N(0, 1) (seed 1): biases and
    shortcut scales away from their init (0 and 1), so that a fused layer that drops one is
    caught."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for param in module.parameters():
            param.add_(0.1 * torch.randn(param.shape, generator=gen).to(param))
    return module.eval()


class CallRecorder:
    """Forward hooks on every submodule, recording the names of the modules called."""

    def __init__(self, model):
        self.calls = []
        self.handles = [
            module.register_forward_hook(lambda m, i, o, name=name: self.calls.append(name))
            for name, module in model.named_modules() if name]

    def take(self):
        calls, self.calls = self.calls, []
        return calls

    def remove(self):
        for handle in self.handles:
            handle.remove()


def expected_calls(model, impl):
    """Every submodule of the architecture, in its order of application, once.

    Block order: norm1, token mixer (proj_in, 1x7, 7x1, [the pw_i in the FFT form], proj_out),
    drop path, norm2, mlp (fc1, act, fc2), drop path; a hook fires when its module returns.
    """
    calls = []
    for i, stage in enumerate(model.stages):
        calls.append(f'downsample_layers.{i}')
        for j in range(len(stage)):
            b = f'stages.{i}.{j}'
            mixer = [f'{b}.token_mixer.proj_in', f'{b}.token_mixer.dwconv_1x7',
                     f'{b}.token_mixer.dwconv_7x1']
            if impl == 'fft':
                mixer += [f'{b}.token_mixer.spectral_projs.{k}' for k in range(3)]
            mixer += [f'{b}.token_mixer.proj_out', f'{b}.token_mixer']
            calls += [f'{b}.norm1'] + mixer + [f'{b}.drop_path', f'{b}.norm2', f'{b}.mlp.fc1',
                                               f'{b}.mlp.act', f'{b}.mlp.fc2', f'{b}.mlp',
                                               f'{b}.drop_path', b]
        calls.append(f'stages.{i}')
        calls.append(f'norm{i}')
    return calls


class OpCall(NamedTuple):
    name: str  # the operator's overload packet, e.g. 'gelu'
    dtypes: Tuple[torch.dtype, ...]  # of its tensor arguments
    contiguous: bool  # whether all its tensor arguments are contiguous (NCHW-contiguous for maps)


class OpsRun(TorchDispatchMode):
    """Records every ATen operator that runs while active, backward included, as an
    ``OpCall`` (``calls``, accumulated over every ``with`` block)."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def count(self, name: str) -> int:
        return sum(call.name == name for call in self.calls)

    def __repr__(self):
        return repr(sorted({call.name for call in self.calls}))

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        tensors = [a for a in args if isinstance(a, torch.Tensor)]
        self.calls.append(OpCall(func.overloadpacket.__name__, tuple(t.dtype for t in tensors),
                                 all(t.is_contiguous() for t in tensors)))
        return func(*args, **(kwargs or {}))


class FileCreatingPayload:
    """Pickles into a call that creates ``path`` if it is ever unpickled (a malicious file)."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, 'w'))


# --- global state: no test may change it for the tests after it ---------------------------------
# An in-process Runner with randomness=dict(deterministic=True) turns on deterministic
# algorithms (and cuDNN flags) for the rest of the process; a test that sets threads, the
# default dtype or grad mode and forgets to reset it changes every later test.
def global_state() -> dict:
    """The process-wide settings that tests must leave as they found them."""
    return {
        'torch.are_deterministic_algorithms_enabled()':
        torch.are_deterministic_algorithms_enabled(),
        'torch.is_deterministic_algorithms_warn_only_enabled()':
        torch.is_deterministic_algorithms_warn_only_enabled(),
        'torch.backends.cudnn.deterministic': torch.backends.cudnn.deterministic,
        'torch.backends.cudnn.benchmark': torch.backends.cudnn.benchmark,
        'torch.get_num_threads()': torch.get_num_threads(),
        'torch.get_default_dtype()': torch.get_default_dtype(),
        'torch.backends.cudnn.allow_tf32': torch.backends.cudnn.allow_tf32,
        'torch.backends.cuda.matmul.allow_tf32': torch.backends.cuda.matmul.allow_tf32,
        'torch.is_grad_enabled()': torch.is_grad_enabled(),
        "os.environ['CUBLAS_WORKSPACE_CONFIG']": os.environ.get('CUBLAS_WORKSPACE_CONFIG'),
    }


def restore_global_state(state: dict) -> None:
    torch.use_deterministic_algorithms(
        state['torch.are_deterministic_algorithms_enabled()'],
        warn_only=state['torch.is_deterministic_algorithms_warn_only_enabled()'])
    torch.backends.cudnn.deterministic = state['torch.backends.cudnn.deterministic']
    torch.backends.cudnn.benchmark = state['torch.backends.cudnn.benchmark']
    if torch.get_num_threads() != state['torch.get_num_threads()']:
        torch.set_num_threads(state['torch.get_num_threads()'])
    torch.set_default_dtype(state['torch.get_default_dtype()'])
    torch.backends.cudnn.allow_tf32 = state['torch.backends.cudnn.allow_tf32']
    torch.backends.cuda.matmul.allow_tf32 = state['torch.backends.cuda.matmul.allow_tf32']
    torch.set_grad_enabled(state['torch.is_grad_enabled()'])
    cublas = state["os.environ['CUBLAS_WORKSPACE_CONFIG']"]
    if cublas is None:
        os.environ.pop('CUBLAS_WORKSPACE_CONFIG', None)
    else:
        os.environ['CUBLAS_WORKSPACE_CONFIG'] = cublas


def check_global_state(before: dict, who: str) -> None:
    """Restores ``before`` and fails, naming ``who`` and each setting it changed."""
    after = global_state()
    changed = [f'{key}: {before[key]!r} -> {after[key]!r}' for key in before
               if after[key] != before[key]]
    if changed:
        restore_global_state(before)
        pytest.fail(
            f'{who} leaked global state (restored now, for the tests after it):\n  '
            + '\n  '.join(changed) + '\nReset it in the test, e.g. with try/finally or '
            "a fixture (for Runners with randomness=dict(deterministic=True): "
            'torch.use_deterministic_algorithms(False) and the cuDNN flags).', pytrace=False)


@pytest.fixture(scope='session')
def _global_state_at_start():
    return global_state()  # after collection (a module may set threads when imported)


@pytest.fixture(scope='module', autouse=True)
def _no_global_state_leak_per_module(request, _global_state_at_start):
    """Catches module-scoped fixtures that leak (they run before a test's own snapshot)."""
    yield
    check_global_state(_global_state_at_start, f'{request.node.nodeid} (a module-scoped fixture)')


@pytest.fixture(autouse=True)
def _no_global_state_leak(request):
    before = global_state()
    yield
    check_global_state(before, request.node.nodeid)


def _default_scopes() -> dict:
    from mmengine.registry import DefaultScope
    return DefaultScope._instance_dict.copy()


def _restore_default_scopes(scopes: dict) -> None:
    from mmengine.registry import DefaultScope
    DefaultScope._instance_dict.clear()
    DefaultScope._instance_dict.update(scopes)


@pytest.fixture(scope='session')
def _default_scopes_at_start():
    return _default_scopes()


@pytest.fixture(scope='module', autouse=True)
def _default_scope_restored_per_module(_default_scopes_at_start):
    """mmengine's current default scope is process-wide: tests and module fixtures set it
    (``init_default_scope`` and every Runner, as in upstream's tests), and a later test would
    build from the wrong registry (a classifier pipeline looked up in mmdet's or mmengine's).
    Put back to what it was when the session started after every module, and after every
    test to what it was before it (below), so that no test depends on the ones before it."""
    yield
    _restore_default_scopes(_default_scopes_at_start)


@pytest.fixture(autouse=True)
def _default_scope_restored():
    before = _default_scopes()
    yield
    _restore_default_scopes(before)


@pytest.fixture(autouse=True)
def _loggers_of_the_test_forgotten():
    """A Runner names its MMLogger after the second it starts, and the logger's stream handler
    writes to the ``sys.stderr`` of that moment: pytest's capture of that test. A Runner that a
    later test starts within the same second gets that logger back and writes to a closed
    stream (logging prints "--- Logging error ---" and a traceback to stderr, which the tests
    of one-line errors refuse). The loggers a test made are dropped after it."""
    from mmengine.logging import MMLogger
    before = set(MMLogger._instance_dict)
    yield
    for name in set(MMLogger._instance_dict) - before:
        logger = MMLogger._instance_dict.pop(name)
        for handler in list(logger.handlers):
            logger.removeHandler(handler)
            handler.close()


@pytest.fixture
def restored_global_state():
    """For a test that changes global state by design (e.g. an in-process Runner with
    ``randomness=dict(deterministic=True)``): puts it back after the test, before the leak
    check above runs."""
    before = global_state()
    yield
    restore_global_state(before)


# --- tools as processes, without importing torch and the toolboxes for each -------------------
class _ForkServer:
    """Client of tests/data/python_forkserver.py, started on first use in each test process."""

    SCRIPT = osp.join(REPO_ROOT, 'tests', 'data', 'python_forkserver.py')

    def __init__(self):
        self.proc = None
        self.socket = None

    def ask(self, **request) -> dict:
        self.ensure_started()
        self.proc.stdin.write(json.dumps(request) + '\n')
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def ensure_started(self):
        if self.proc is not None and self.proc.poll() is None:
            return
        import subprocess
        self.proc = subprocess.Popen(
            [sys.executable, self.SCRIPT], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            text=True, env=dict(os.environ, OMP_NUM_THREADS='1'), cwd=REPO_ROOT)
        answer = self.proc.stdout.readline()
        ready = json.loads(answer or '{}')
        if ready.get('ready') is not True:
            raise RuntimeError(f'the fork server did not start (said {answer!r})')
        self.socket = ready['socket']
        atexit.register(self.close)

    def close(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait(timeout=30)


_FORK_SERVER = _ForkServer()


class ForkedPython:
    """A running ``python SCRIPT ARGS`` started by :func:`start_python`."""

    def __init__(self, script, args, cwd, env, merge_stderr):
        self.args = [sys.executable, str(script), *map(str, args)]
        self._tmp = tempfile.TemporaryDirectory()
        self.stdout_path = osp.join(self._tmp.name, 'stdout')
        self.stderr_path = self.stdout_path if merge_stderr else \
            osp.join(self._tmp.name, 'stderr')
        for path in {self.stdout_path, self.stderr_path}:
            open(path, 'w').close()  # readable before the child opens it
        self.pid = _FORK_SERVER.ask(
            op='start', args=self.args[1:], cwd=str(cwd), env=env,
            stdout=self.stdout_path, stderr=self.stderr_path)['pid']
        self.returncode = None

    def output(self) -> str:
        """What the process has written to stdout so far."""
        with open(self.stdout_path, errors='replace') as f:
            return f.read()

    def kill(self, sig=9):
        if self.returncode is None:
            os.kill(self.pid, sig)

    def wait(self, timeout=300):
        """Waits for the exit; ``subprocess.CompletedProcess`` (stderr None when merged)."""
        import subprocess
        answer = _FORK_SERVER.ask(op='wait', pid=self.pid, timeout=timeout)
        self.returncode = answer['returncode']
        stdout = self.output()
        stderr = None
        if self.stderr_path != self.stdout_path:
            with open(self.stderr_path, errors='replace') as f:
                stderr = f.read()
        self._tmp.cleanup()
        if answer['timed_out']:
            raise subprocess.TimeoutExpired(self.args, timeout, stdout, stderr)
        return subprocess.CompletedProcess(self.args, self.returncode, stdout, stderr)


def start_python(script, *args, cwd=None, env=None, merge_stderr=False) -> ForkedPython:
    """Starts ``python SCRIPT ARGS`` as a new process forked from an interpreter that has torch
    and the toolboxes imported already (tests/data/python_forkserver.py), which saves 5-13 s
    of start-up per launch here. Otherwise the process is what ``python SCRIPT ARGS`` starts:
    its own pid, cwd, environment (``env``, default ``os.environ``), argv, stdio and exit
    status. Use ``subprocess`` where the interpreter's own start-up is what a test checks
    (imports, installed packages, a toolbox missing)."""
    return ForkedPython(script, args, cwd or os.getcwd(),
                        dict(os.environ if env is None else env), merge_stderr)


def forked_python_executable(directory) -> str:
    """Writes ``directory/python``: an executable that runs ``python [-u] SCRIPT ARGS`` or
    ``python [-u] -m MODULE ARGS`` as a fork of the preloaded interpreter (see
    :func:`start_python`), with its own stdio, signals forwarded and its exit status
    (tests/data/forked_python.py). For launchers that start Python processes themselves:
    ``PYTHON`` of tools/dist_train.sh, torchrun's ``PYTHON_EXEC`` for its ranks."""
    _FORK_SERVER.ensure_started()
    path = osp.join(str(directory), 'python')
    with open(path, 'w') as f:
        # -S: no site-packages, a start of milliseconds; the client needs the stdlib only
        f.write(f'#!{sys.executable} -S\n'
                f'import sys\n'
                f'sys.path.insert(0, {osp.join(REPO_ROOT, "tests", "data")!r})\n'
                f'import forked_python\n'
                f'forked_python.main({_FORK_SERVER.socket!r})\n')
    os.chmod(path, 0o755)
    return path


@pytest.fixture(scope='session')
def forked_python(tmp_path_factory) -> str:
    """:func:`forked_python_executable` in a temporary directory."""
    return forked_python_executable(tmp_path_factory.mktemp('forked_python'))


def run_python(script, *args, cwd=None, env=None, timeout=300):
    """``subprocess.run([python, script, *args], capture_output=True, text=True, ...)``
    through :func:`start_python`."""
    return start_python(script, *args, cwd=cwd, env=env).wait(timeout)
