"""Client of tests/data/python_forkserver.py's socket, run by the executable that
``forked_python_executable`` (tests/conftest.py) writes: this process stands in for
``python ARGS``. The server forks the real process, with this one's arguments, directory,
environment, stdin, stdout and stderr; signals that reach this process are passed on to it,
and this process exits with its status (a signal's death as that signal)."""
import array
import json
import os
import signal
import socket
import sys

FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1,
             signal.SIGUSR2)


def main(socket_path: str) -> None:
    for fd in (0, 1, 2):  # the child gets these three; a closed one becomes /dev/null
        try:
            os.fstat(fd)
        except OSError:
            os.dup2(os.open(os.devnull, os.O_RDWR), fd)
    # Forwarding is set up before the child exists: the child may run (and print, e.g.
    # "ready") before the server's answer names its pid, and a signal sent to this process in
    # between must not be lost (nor kill this process alone, leaving the child running).
    child = {}
    pending = []

    def forward(signum, _frame):
        if 'pid' not in child:
            pending.append(signum)
            return
        try:
            os.kill(child['pid'], signum)
        except ProcessLookupError:
            pass

    for signum in FORWARDED:
        signal.signal(signum, forward)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(socket_path)
    request = dict(args=sys.argv[1:], cwd=os.getcwd(), env=dict(os.environ))
    sock.sendmsg([json.dumps(request).encode() + b'\n'],
                 [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array('i', [0, 1, 2]))])
    answers = sock.makefile('rb')
    child['pid'] = json.loads(answers.readline())['pid']
    for signum in pending:  # those that came before the pid
        forward(signum, None)
    line = answers.readline()
    if not line:
        sys.exit('forked_python: the fork server went away')
    code = json.loads(line)['returncode']
    if code < 0:  # died of a signal: so does this process
        if -code in FORWARDED:
            signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
    sys.exit(code)
