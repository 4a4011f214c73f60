import os
import os.path as osp

import pytest
import torch

REPO_ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
SHARED_DIR = os.environ.get('SPANET_MM_SHARED', osp.join(osp.dirname(REPO_ROOT), 'shared'))
FIXTURE_PATH = osp.join(SHARED_DIR, 'fixtures', 'spanet_official_tiny.pth')


def in_ci() -> bool:
    """CI runs the suite with CI=true: there a missing fixture is a failure, not a skip."""
    return os.environ.get('CI', '').lower() == 'true'


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


@pytest.fixture
def one_thread():
    """Single-threaded torch for the test: faster than threads competing on 2 busy cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


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


@pytest.fixture
def restored_global_state():
    """For a test that changes global state by design (e.g. an in-process Runner with
    ``randomness=dict(deterministic=True)``): puts it back after the test, before the leak
    check above runs."""
    before = global_state()
    yield
    restore_global_state(before)
