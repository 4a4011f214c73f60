import os
import os.path as osp

import pytest

REPO_ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
SHARED_DIR = os.environ.get('SPANET_MM_SHARED', osp.join(osp.dirname(REPO_ROOT), 'shared'))
FIXTURE_PATH = osp.join(SHARED_DIR, 'fixtures', 'spanet_official_tiny.pth')


@pytest.fixture(scope='session')
def official_fixture():
    """The official model's outputs for random weights (../shared/fixtures)."""
    import torch
    if not osp.isfile(FIXTURE_PATH):
        pytest.skip(f'official fixture not found at {FIXTURE_PATH} (set SPANET_MM_SHARED)')
    return torch.load(FIXTURE_PATH)


@pytest.fixture
def one_thread():
    """Single-threaded torch for the test: faster than threads competing on 2 busy cores."""
    import torch
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
