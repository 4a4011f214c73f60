"""Runs Python scripts as forks of one interpreter that has already imported torch and the
toolboxes (tests/conftest.py: ``run_python``).

A fresh interpreter spends 5-13 s on this machine importing torch, mmengine, mmcv and the
toolboxes before a tool does anything; the suite launches its tools dozens of times. This
server imports them once, then for every request forks a child that *is* a new process
running the script as ``python SCRIPT ARGS`` would: its own pid and process group, working
directory, environment, argv, stdin from /dev/null, stdout and stderr to files, and the
interpreter's exit (an uncaught exception prints its traceback and exits 1, ``sys.exit``
codes, non-daemon threads joined, atexit handlers run, stdio flushed; see ``run_as_main``). spanet_mm itself is not preloaded:
each script imports it, through ``custom_imports`` or its own imports, as it would outside.

Protocol (one JSON object per line on stdin, one answer per line on stdout):
``{"op": "start", "script", "args", "cwd", "env", "stdout", "stderr"}`` forks a child and
answers ``{"pid"}`` (``stderr`` may be the ``stdout`` file: one merged stream);
``{"op": "wait", "pid", "timeout"}`` answers ``{"returncode", "timed_out"}`` once that child
has exited (killed with its process group after ``timeout`` seconds). Several children may
run at once.
"""
import json
import os
import signal
import sys
import time

PRELOAD = ('torch', 'torchvision', 'numpy', 'cv2', 'mmengine.runner', 'mmcv.ops',
           'mmcv.transforms', 'mmdet.models', 'mmdet.datasets', 'mmdet.evaluation',
           'mmdet.visualization', 'mmseg.models', 'mmseg.datasets', 'mmseg.evaluation',
           'mmpretrain.models', 'mmpretrain.datasets', 'mmpretrain.evaluation',
           'pycocotools.coco', 'matplotlib.pyplot')


def preload() -> None:
    import importlib
    for name in PRELOAD:
        importlib.import_module(name)
    assert 'spanet_mm' not in sys.modules, 'the scripts must import spanet_mm themselves'
    # Forking is safe only while no other thread exists: torch's OpenMP pool starts on the
    # first parallel op, which nothing here runs, and the client starts this server with
    # OMP_NUM_THREADS=1 so that numpy's BLAS starts no threads of its own when imported.
    threads = len(os.listdir('/proc/self/task'))
    assert threads == 1, f'{threads} threads after the imports: forking would be unsafe'


def wait(pid: int, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return dict(returncode=os.waitstatus_to_exitcode(status), timed_out=False)
        if time.monotonic() > deadline:
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            os.waitpid(pid, 0)
            return dict(returncode=-signal.SIGKILL, timed_out=True)
        time.sleep(0.02)


def serve():
    """Answers requests until stdin closes; returns the request in each forked child."""
    for line in sys.stdin:
        request = json.loads(line)
        if request['op'] == 'wait':
            answer = wait(request['pid'], request['timeout'])
        else:
            sys.stdout.flush()
            sys.stderr.flush()
            pid = os.fork()
            if pid == 0:
                return request
            answer = dict(pid=pid)
        print(json.dumps(answer), flush=True)
    return None


def become(request: dict) -> None:
    """Turns this forked child into ``python SCRIPT ARGS`` started with the request's
    directory, environment and files."""
    os.setpgid(0, 0)  # its own group: a timeout kills its dataloader workers too
    os.chdir(request['cwd'])
    os.environ.clear()
    os.environ.update(request['env'])
    stdin = os.open(os.devnull, os.O_RDONLY)
    stdout = os.open(request['stdout'], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    stderr = stdout if request['stderr'] == request['stdout'] else \
        os.open(request['stderr'], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    for fd, target in ((stdin, 0), (stdout, 1), (stderr, 2)):
        os.dup2(fd, target)
    for fd in {stdin, stdout, stderr}:
        os.close(fd)
    # What a fresh interpreter reads from the environment at start-up.
    if os.environ.get('PYTHONWARNINGS'):
        import warnings
        # What the interpreter does with PYTHONWARNINGS when it starts (sys.warnoptions).
        warnings._processoptions(os.environ['PYTHONWARNINGS'].split(','))
    for entry in reversed([p for p in os.environ.get('PYTHONPATH', '').split(os.pathsep) if p]):
        sys.path.insert(1, entry)
    # torch's thread count, as a fresh interpreter would pick it (the server's is 1).
    import torch
    torch.set_num_threads(int(os.environ.get('OMP_NUM_THREADS') or os.cpu_count()))
    script = os.path.abspath(request['script'])
    sys.argv = [script, *request['args']]
    sys.path[0] = os.path.dirname(script)


def exit_code(exc: SystemExit) -> int:
    """The status the interpreter exits with for ``sys.exit(exc.code)``."""
    if exc.code is None:
        return 0
    if isinstance(exc.code, int):
        return exc.code & 0xFF
    print(exc.code, file=sys.stderr)
    return 1


def run_as_main(script: str) -> None:
    """Runs ``script`` as ``__main__`` and exits as the interpreter would, without its final
    teardown of every module (about 3 s here, for the preloaded toolboxes): what the
    interpreter does at exit that a script can observe is done, in its order (join the
    non-daemon threads, atexit handlers, flush stdio), then the process ends."""
    import atexit
    import runpy
    import threading
    try:
        runpy.run_path(script, run_name='__main__')
        code = 0
    except SystemExit as exc:
        code = exit_code(exc)
    except BaseException:  # noqa: B036  what the interpreter does with an uncaught exception
        kind, exc, tb = sys.exc_info()
        while tb is not None and tb.tb_frame.f_code.co_filename != script:
            tb = tb.tb_next  # the frames of this server and runpy, which python has not
        if tb is not None:
            exc.__traceback__ = tb  # the hook prints the exception's own traceback
        sys.excepthook(kind, exc, exc.__traceback__)
        code = 1
    threading._shutdown()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


if __name__ == '__main__':
    sys.path[0] = os.getcwd()  # not tests/data: the children set their own
    preload()
    print(json.dumps(dict(ready=True)), flush=True)
    child_request = serve()
    if child_request is not None:
        become(child_request)
        run_as_main(sys.argv[0])
