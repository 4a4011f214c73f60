"""``python -m pytest ARGS`` as a script, for tests that run a pytest session as a process
through ``run_python`` (which starts scripts)."""
import sys

import pytest

if __name__ == '__main__':
    sys.exit(pytest.main())
