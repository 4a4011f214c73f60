"""Many short two-process CPU DDP runs, each ended the way tools/train.py ends.

Usage: python ddp_exit_probe.py CPU_PY LAUNCHES [fail]

Prints one JSON line: the exit status of both ranks of every launch (a signal as its negative
number, as subprocess does). CPU_PY is spanet_mm/engine/cpu.py, loaded by path: this process
imports torch once (the package would also import the three toolboxes) and forks the two ranks
of each launch from that state. A forked rank that leaves the ``if`` below falls through to the
end of this script, so it exits like any Python process: interpreter finalization and C++
static destruction included, unless ``finish_distributed`` ends it first. With ``fail`` rank 1
raises after training.
"""
import importlib.util
import json
import os
import socket
import sys

import torch
import torch._dynamo  # noqa: F401  DDP's constructor imports it (seconds): once, before forking
from torch.nn.parallel import DistributedDataParallel

spec = importlib.util.spec_from_file_location('spanet_mm_engine_dist', sys.argv[1])
dist = importlib.util.module_from_spec(spec)
spec.loader.exec_module(dist)
launches, fail = int(sys.argv[2]), 'fail' in sys.argv[3:]


class Cfg(dict):
    """The config operations prepare_cpu_distributed needs (``get``, ``setdefault`` and
    attributes), on a plain dict."""
    __getattr__ = dict.get

    def __setattr__(self, key, value):
        self[key] = value


def train_one_rank(rank: int) -> None:
    assert dist.prepare_cpu_distributed(Cfg(model=dict(type='Demo')), 'pytorch')
    torch.manual_seed(rank)
    model = DistributedDataParallel(torch.nn.Linear(8, 8), device_ids=None)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(3):
        optimizer.zero_grad()
        model(torch.randn(4, 8)).square().mean().backward()
        optimizer.step()
    del model, optimizer
    if fail and rank == 1:
        raise RuntimeError('rank 1 fails on purpose')


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


torch.set_num_threads(1)
rank = None
statuses = []
for _ in range(launches):
    port = free_port()
    children = []
    for child_rank in range(2):
        pid = os.fork()
        if pid == 0:
            rank = child_rank
            os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE='2',
                              MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port))
            break
        children.append(pid)
    if rank is not None:
        break
    codes = []
    for pid in children:
        _, status = os.waitpid(pid, 0)
        codes.append(os.WEXITSTATUS(status) if os.WIFEXITED(status) else -os.WTERMSIG(status))
    statuses.append(codes)

if rank is None:
    print(json.dumps(statuses), flush=True)
else:
    train_one_rank(rank)  # an exception ends the rank as it ends a tool: traceback, status 1
    dist.finish_distributed()
    sys.exit(3)  # not reached: finish_distributed ends the process with status 0
