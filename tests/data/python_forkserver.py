"""Runs Python scripts as forks of one interpreter that has already imported torch and the
toolboxes (tests/conftest.py: ``run_python`` and ``forked_python_executable``).

A fresh interpreter spends 5-13 s on this machine importing torch, mmengine, mmcv and the
toolboxes before a tool does anything; the suite launches its tools dozens of times. This
server imports them once, then for every request forks a child that *is* a new process
running ``python [-u] SCRIPT ARGS`` or ``python [-u] -m MODULE ARGS`` would: its own pid and
process group, working directory, environment, argv, stdio, and the interpreter's exit (an
uncaught exception prints its traceback and exits 1, ``sys.exit`` codes, non-daemon threads
joined, atexit handlers run, stdio flushed; see ``run_as_main``). spanet_mm itself is not
preloaded: each script imports it, through ``custom_imports`` or its own imports, as it would
outside.

Two ways in:

- The test process, one JSON object per line on stdin, one answer per line on stdout:
  ``{"op": "start", "args", "cwd", "env", "stdout", "stderr"}`` forks a child with stdin from
  /dev/null and stdout/stderr to those files (``stderr`` may be the ``stdout`` file: one
  merged stream) and answers ``{"pid"}``; ``{"op": "wait", "pid", "timeout"}`` answers
  ``{"returncode", "timed_out"}`` once that child has exited (killed with its process group
  after ``timeout`` seconds). Several children may run at once.
- Any process, through the executable that conftest's ``forked_python_executable`` writes
  (it stands in for ``python``: as ``PYTHON`` for tools/dist_train.sh, and as torchrun's
  ``PYTHON_EXEC`` for its ranks): tests/data/forked_python.py connects to this server's Unix
  socket, sends its arguments, directory and environment with its own stdin, stdout and
  stderr (SCM_RIGHTS), forwards the signals it gets to the child and exits with the child's
  status. If that process dies, the child's process group is killed.
"""
import array
import gc
import json
import os
import selectors
import signal
import socket
import sys
import tempfile
import time

PRELOAD = ('torch', 'torchvision', 'numpy', 'cv2', 'mmengine.runner', 'mmcv.ops',
           'mmcv.transforms', 'mmdet.models', 'mmdet.datasets', 'mmdet.evaluation',
           'mmdet.visualization', 'mmseg.models', 'mmseg.datasets', 'mmseg.evaluation',
           'mmpretrain.models', 'mmpretrain.datasets', 'mmpretrain.evaluation',
           'pycocotools.coco', 'matplotlib.pyplot',
           # what every tool run imports on top: the toolboxes' hooks and visualizers, and
           # pkg_resources (mmengine resolves ``mmdet::`` config paths with it)
           'mmpretrain.engine', 'mmpretrain.visualization', 'mmdet.engine', 'mmseg.engine',
           'mmseg.visualization', 'pkg_resources', 'torch.onnx', 'PIL.features',
           # torchrun, and what DDP's constructor imports (seconds)
           'torch.distributed.run', 'torch._dynamo')


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
    remember_config_formatting()
    # Python's advice for pre-forking servers: the preloaded objects (hundreds of thousands)
    # move to the collector's permanent generation, so a child's gc.collect() (mmengine calls
    # it when it builds a dataset) neither scans them nor copies their pages. 0.5 s a run here.
    gc.freeze()


def remember_config_formatting() -> None:
    """mmengine formats a config's text with yapf whenever it shows the config: the Runner's
    log and dumped config, the run's meta and every checkpoint's meta. That is the same text
    7 times in a short training run, at about 0.25 s each: half of a forked tool run's own
    time. yapf's ``FormatCode`` is a pure function of its arguments, so each child keeps its
    results: a text is formatted once and every caller gets what yapf returned for it."""
    import functools

    import mmengine.config.config as config_module
    format_code = config_module.FormatCode

    @functools.lru_cache(maxsize=8)
    def format_once(text, style_items):
        return format_code(text, style_config=dict(style_items))

    def remembering_format_code(unformatted_source, *args, style_config=None, **kwargs):
        # mmengine's call: the text and a dict of plain style options. Anything else goes to
        # yapf as it is.
        if args or kwargs or not isinstance(style_config, dict):
            return format_code(unformatted_source, *args, style_config=style_config, **kwargs)
        try:
            return format_once(unformatted_source, tuple(sorted(style_config.items())))
        except TypeError:  # options that cannot be a cache key
            return format_code(unformatted_source, style_config=style_config)

    config_module.FormatCode = remembering_format_code


class Server:
    """The event loop: requests on stdin and on the socket, children reaped as they exit."""

    def __init__(self, socket_path: str):
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(socket_path)
        self.listener.listen(64)
        self.selector = selectors.DefaultSelector()
        self.selector.register(0, selectors.EVENT_READ, self.read_stdin)
        self.selector.register(self.listener, selectors.EVENT_READ, self.accept)
        self.stdin_buffer = b''
        self.waiters = {}  # pid -> (answer callback, deadline or None)
        self.launchers = {}  # pid -> the socket connection of the process that asked for it
        self.child_request = None

    def serve(self):
        """Runs until stdin closes; returns the request in each forked child."""
        while self.child_request is None and self.selector is not None:
            for key, _ in self.selector.select(timeout=0.02):
                key.data(key.fileobj)
                if self.child_request is not None or self.selector is None:
                    break
            else:
                self.reap()
        return self.child_request

    def fork(self, request: dict, conn=None):
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # the child keeps none of the server's sockets
            for sock in (self.listener, conn, *self.launchers.values()):
                if sock is not None:
                    sock.close()
            self.selector.close()
            self.selector = None
            self.child_request = request
        return pid

    def read_stdin(self, fd):
        data = os.read(fd, 65536)
        if not data:  # the test process has gone: stop serving
            self.selector.close()
            self.selector = None
            self.listener.close()
            return
        self.stdin_buffer += data
        while b'\n' in self.stdin_buffer and self.child_request is None:
            line, self.stdin_buffer = self.stdin_buffer.split(b'\n', 1)
            request = json.loads(line)
            if request['op'] == 'wait':
                self.waiters[request['pid']] = (self.answer_stdin,
                                                time.monotonic() + request['timeout'])
                continue
            pid = self.fork(dict(request, fds=None))
            if pid:
                self.answer_stdin(dict(pid=pid))

    @staticmethod
    def answer_stdin(answer: dict):
        print(json.dumps(answer), flush=True)

    def accept(self, listener):
        conn, _ = listener.accept()
        fds = array.array('i')
        message, ancillary, _, _ = conn.recvmsg(1 << 20, socket.CMSG_LEN(3 * fds.itemsize))
        for level, kind, data in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds.frombytes(data[:len(data) - len(data) % fds.itemsize])
        while message and not message.endswith(b'\n'):
            message += conn.recv(1 << 20)
        if len(fds) != 3 or not message:
            for fd in fds:
                os.close(fd)
            conn.close()
            return
        pid = self.fork(dict(json.loads(message), fds=list(fds)), conn)
        if pid == 0:
            return
        for fd in fds:
            os.close(fd)
        conn.sendall(json.dumps(dict(pid=pid)).encode() + b'\n')
        self.launchers[pid] = conn
        # No deadline: the launching process has its own (and its death kills the child).
        self.waiters[pid] = (lambda answer, pid=pid: self.answer_launcher(pid, answer), None)
        self.selector.register(conn, selectors.EVENT_READ, lambda c, pid=pid: self.hangup(pid))

    def answer_launcher(self, pid: int, answer: dict):
        conn = self.launchers.pop(pid)
        try:
            self.selector.unregister(conn)
        except KeyError:  # already, when the launcher hung up
            pass
        try:
            conn.sendall(json.dumps(answer).encode() + b'\n')
        except OSError:
            pass
        conn.close()

    def hangup(self, pid: int):
        """The process that launched ``pid`` closed its end (it was killed): the child and
        its process group follow."""
        conn = self.launchers[pid]
        if not conn.recv(1):
            self.selector.unregister(conn)
            _kill_group(pid)

    def reap(self):
        for pid, (answer, deadline) in list(self.waiters.items()):
            done, status = os.waitpid(pid, os.WNOHANG)
            timed_out = not done and deadline is not None and time.monotonic() > deadline
            if timed_out:
                _kill_group(pid)
                _, status = os.waitpid(pid, 0)
            if done or timed_out:
                del self.waiters[pid]
                answer(dict(returncode=-signal.SIGKILL if timed_out else
                            os.waitstatus_to_exitcode(status), timed_out=timed_out))


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def parse_python_args(args):
    """``python [-u] SCRIPT ARGS`` or ``python [-u] -m MODULE ARGS``: (target, is_module,
    unbuffered, argv)."""
    unbuffered = False
    while args and args[0] == '-u':
        unbuffered, args = True, args[1:]
    if args[:1] == ['-m'] and len(args) > 1:
        return args[1], True, unbuffered, args[2:]
    if args and not args[0].startswith('-'):
        return args[0], False, unbuffered, args[1:]
    raise SystemExit(f'python_forkserver: unsupported interpreter arguments {args!r} '
                     '(only [-u] SCRIPT or [-u] -m MODULE)')


def become(request: dict) -> tuple:
    """Turns this forked child into the process the request starts; returns (target,
    is_module)."""
    os.setpgid(0, 0)  # its own group: a timeout kills its dataloader workers too
    os.chdir(request['cwd'])
    os.environ.clear()
    os.environ.update(request['env'])
    if request['fds'] is None:
        stdin = os.open(os.devnull, os.O_RDONLY)
        stdout = os.open(request['stdout'], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        stderr = stdout if request['stderr'] == request['stdout'] else \
            os.open(request['stderr'], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        fds = [stdin, stdout, stderr]
    else:
        fds = request['fds']  # the launching process's own stdin, stdout and stderr
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
    for fd in set(fds) - {0, 1, 2}:
        os.close(fd)
    target, is_module, unbuffered, argv = parse_python_args(request['args'])
    if unbuffered or os.environ.get('PYTHONUNBUFFERED'):
        for stream in (sys.stdout, sys.stderr):
            stream.reconfigure(write_through=True)
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
    if is_module:
        sys.argv = ['-m', *argv]  # runpy sets argv[0] to the module's file
        sys.path[0] = os.getcwd()
    else:
        target = os.path.abspath(target)
        sys.argv = [target, *argv]
        sys.path[0] = os.path.dirname(target)
    return target, is_module


def exit_code(exc: SystemExit) -> int:
    """The status the interpreter exits with for ``sys.exit(exc.code)``."""
    if exc.code is None:
        return 0
    if isinstance(exc.code, int):
        return exc.code & 0xFF
    print(exc.code, file=sys.stderr)
    return 1


def run_as_main(target: str, is_module: bool) -> None:
    """Runs ``target`` as ``__main__`` and exits as the interpreter would, without its final
    teardown of every module (about 3 s here, for the preloaded toolboxes): what the
    interpreter does at exit that a script can observe is done, in its order (join the
    non-daemon threads, atexit handlers, flush stdio), then the process ends."""
    import atexit
    import runpy
    import threading
    try:
        if is_module:
            runpy.run_module(target, run_name='__main__', alter_sys=True)
        else:
            runpy.run_path(target, run_name='__main__')
        code = 0
    except SystemExit as exc:
        code = exit_code(exc)
    except BaseException:  # noqa: B036  what the interpreter does with an uncaught exception
        kind, exc, tb = sys.exc_info()
        own = (run_as_main.__code__.co_filename, runpy.__file__, '<frozen runpy>')
        while tb is not None and tb.tb_frame.f_code.co_filename in own:
            tb = tb.tb_next  # the frames of this server and runpy, which python has not
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
    socket_dir = tempfile.mkdtemp(prefix='spanet_forkserver_')
    socket_path = os.path.join(socket_dir, 'socket')
    server = Server(socket_path)
    print(json.dumps(dict(ready=True, socket=socket_path)), flush=True)
    child_request = server.serve()
    if child_request is None:
        os.unlink(socket_path)
        os.rmdir(socket_dir)
    else:
        run_as_main(*become(child_request))
