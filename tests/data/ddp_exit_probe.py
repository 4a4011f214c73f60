"""One rank of a short CPU DDP run that ends the way tools/train.py ends.

Usage (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT in the environment, as torchrun sets them):
    python ddp_exit_probe.py DIST_PY [fail]

DIST_PY is spanet_mm/engine/dist.py, loaded by path so that a launch costs one torch import
(the package would import the three toolboxes). With ``fail`` rank 1 raises after training.
"""
import importlib.util
import os
import sys

import torch
from mmengine.config import ConfigDict
from torch.nn.parallel import DistributedDataParallel

spec = importlib.util.spec_from_file_location('spanet_mm_engine_dist', sys.argv[1])
dist = importlib.util.module_from_spec(spec)
spec.loader.exec_module(dist)

cfg = ConfigDict(model=dict(type='Demo'))
assert dist.prepare_cpu_distributed(cfg, 'pytorch')
torch.manual_seed(0)
model = DistributedDataParallel(torch.nn.Linear(8, 8), device_ids=None)
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
for _ in range(3):
    optimizer.zero_grad()
    model(torch.randn(4, 8)).square().mean().backward()
    optimizer.step()
del model, optimizer
if 'fail' in sys.argv[2:] and os.environ['RANK'] == '1':
    raise RuntimeError('rank 1 fails on purpose')
print(f'rank {os.environ["RANK"]} trained', flush=True)
dist.finish_distributed()
sys.exit(3)  # not reached: finish_distributed ends the process with status 0
