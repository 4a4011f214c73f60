"""Test-only: a slow disk for the checkpoint-write kill test (tests/test_engine/test_hooks_exact_resume.py).

Imported by a test config through ``custom_imports`` after ``spanet_mm``. It registers, as
mmengine's local backend, spanet_mm's own atomic backend with a slow ``write_data``: for a
file whose name contains ``$SPANET_MM_SLOW_WRITE`` it writes the first half, prints
``SLOW-WRITE <file>`` and sleeps before writing the rest, so that a test can SIGKILL the run
while the checkpoint is being written. Everything else (the temporary file, fsync, the
rename) is spanet_mm's code under test.
"""
import os
import os.path as osp
import sys
import time

from mmengine.fileio.backends import register_backend

from spanet_mm.engine.atomic_fileio import AtomicLocalBackend


class SlowDiskLocalBackend(AtomicLocalBackend):

    def write_data(self, fileobj, data: bytes) -> None:
        pattern = os.environ.get('SPANET_MM_SLOW_WRITE')
        name = getattr(fileobj, 'name', '')
        if not pattern or pattern not in osp.basename(str(name)):
            return super().write_data(fileobj, data)
        half = len(data) // 2
        fileobj.write(data[:half])
        fileobj.flush()
        print(f'SLOW-WRITE {name}', file=sys.stdout, flush=True)
        time.sleep(60)
        fileobj.write(data[half:])


register_backend('local', SlowDiskLocalBackend, force=True, prefixes='')
