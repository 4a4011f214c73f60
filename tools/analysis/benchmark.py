# Copyright (c) spanet_mm contributors. All rights reserved.
"""Throughput and peak memory of SPANet ('auto' and 'fft' spectral pooling) against ConvNeXt-T and
PoolFormer-S24 (mmpretrain), side by side.

Every model is timed in the same loop, one iteration of each in turn (interleaved, so a noisy
machine slows all of them alike), and the median over ``--repeats`` rounds is reported. By
default all models live in this process and share its heap. With ``--isolate`` each model and
mode lives in a worker process of its own (as a deployed or a training model does), still
timed in turn, one step at a time, so that no model's allocations shape another's: on CPU,
glibc's heap adapts its mmap and trim thresholds to what is freed, so whether a large
activation gets reused heap pages or freshly faulted ones (about 1.4 us per 4 KiB page here)
depends on what ran before it.

- forward: ``model.eval()`` under ``torch.no_grad()``. ``spanet-<arch>-deploy`` is the model
  after :meth:`SPANet.switch_to_deploy` (forward modes only).
- train: ``model.train()``, forward, ``sum(out.mean())`` backward and an AdamW step (gradients
  set to None first, so their allocation counts).
- forward_bf16 / train_bf16: the same under bfloat16 autocast; the table then also gives the
  relative error ``||out_bf16 - out_fp32|| / ||out_fp32||`` of the outputs (eval, no grad).
- forward_compile (``--compile``): the forward of ``torch.compile(model)`` (inductor, default
  options), compiled during the warm-up round; its memory is not measured.
- minor page faults per step (JSON only, ``<mode>_minor_faults``, median): pages the step had
  to fault in because its memory was fresh from the OS.
- peak memory: on CUDA ``torch.cuda.max_memory_allocated`` minus the memory allocated before
  the step; on CPU the rise of the process's peak resident memory (``VmHWM``, reset through
  ``/proc/self/clear_refs``) over its resident memory before the step, with glibc's mmap
  threshold pinned to 128 KiB and free heap memory trimmed first, so that every tensor buffer
  is mapped when allocated and unmapped when freed (the peak is then that of the live tensors
  plus the kernels' scratch memory). Memory is measured after the timing rounds: on CPU (and
  with ``--isolate``) for each model and mode in a fresh subprocess (same flags; one warm-up
  step, then the measured step), so that no heap history of other models blurs it; on CUDA in
  this process, whose allocator counts each step's own allocations exactly (a fresh process
  would cost a CUDA start per model and mode).

Examples::

    python tools/analysis/benchmark.py --threads 2 --repeats 7 --json work_dirs/bench.json
    # every mode in one run: eager, compiled and bf16 forward, the fp32 and bf16 training step
    python tools/analysis/benchmark.py --models spanet-s spanet-s-fft convnext-t --threads 2 \
        --modes forward train forward_bf16 train_bf16 --compile --json work_dirs/bench.json
    # the same with each model and mode in a process of its own
    python tools/analysis/benchmark.py --models spanet-s convnext-t --threads 2 --isolate \
        --modes forward train forward_bf16 --compile --no-memory
"""
import argparse
import ctypes
import json
import multiprocessing
import os
import os.path as osp
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from typing import Callable, Dict, List, Optional, Tuple

try:
    import resource  # Unix only: page-fault counts
except ImportError:
    resource = None

import torch

from spanet_mm.engine.launch import INPUT_SIDE, device_option, int_option
from spanet_mm.models.backbones.spanet import MIN_INPUT_SIZE

SPANET_ARCHS = ('s', 'm', 'mx', 'b', 'bx')
DEFAULT_MODELS = ['spanet-s', 'spanet-s-fft', 'spanet-m', 'spanet-m-fft', 'spanet-b',
                  'spanet-b-fft', 'convnext-t', 'poolformer-s24']
REFERENCE = 'convnext-t'
DTYPES = {'float32': torch.float32, 'bfloat16': torch.bfloat16, 'float16': torch.float16}
MODES = ['forward', 'train', 'forward_bf16', 'train_bf16', 'forward_compile']
#: Modes whose peak memory is measured (a compile in every memory subprocess would be slow).
MEMORY_MODES = ('forward', 'train', 'forward_bf16', 'train_bf16')


def available_models() -> List[str]:
    names = []
    for arch in SPANET_ARCHS:
        names += [f'spanet-{arch}', f'spanet-{arch}-lowrank', f'spanet-{arch}-fft',
                  f'spanet-{arch}-deploy']
    return names + ['convnext-t', 'poolformer-s24']


def build_model(name: str) -> torch.nn.Module:
    if name.startswith('spanet-'):
        from spanet_mm.models import SPANet
        parts = name.split('-')
        if parts[2:] == ['deploy']:  # the fused inference form (forward modes only)
            return SPANet(arch=parts[1]).switch_to_deploy()
        impl = parts[2] if len(parts) > 2 else 'auto'
        return SPANet(arch=parts[1], spectral_impl=impl)
    if name == 'convnext-t':
        from mmpretrain.models import ConvNeXt
        return ConvNeXt(arch='tiny')
    if name == 'poolformer-s24':
        from mmpretrain.models import PoolFormer
        return PoolFormer(arch='s24')
    raise ValueError(f'Unknown model {name!r}; choose from {available_models()}.')


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Interleaved throughput / peak-memory benchmark of SPANet and baselines.')
    parser.add_argument('--models', nargs='+', default=DEFAULT_MODELS,
                        help=f'models to run, from {available_models()}')
    parser.add_argument('--batch', type=int_option('the batch', 1), default=8,
                        help='batch size')
    parser.add_argument('--size', type=int_option(INPUT_SIDE, MIN_INPUT_SIZE),
                        nargs='+', default=[224], help='input size: S (square) or H W')
    parser.add_argument('--threads', type=int_option('the thread count', 1), default=None,
                        help='torch CPU threads (default: torch default)')
    parser.add_argument('--device', type=device_option, default='cpu', help='cpu, cuda or cuda:N')
    parser.add_argument('--channels-last', action='store_true',
                        help='channels_last inputs and models (all models)')
    parser.add_argument('--dtype', choices=sorted(DTYPES), default='float32',
                        help='float32, or autocast to bfloat16 / float16')
    parser.add_argument('--repeats', type=int_option('the number of timed rounds', 1), default=5,
                        help='timed rounds (each runs every model once); the median is reported')
    parser.add_argument('--warmup', type=int_option('the number of untimed rounds', 0), default=1,
                        help='untimed rounds first')
    parser.add_argument('--modes', nargs='+', choices=MODES, default=['forward', 'train'],
                        help='forward / train: in --dtype; forward_bf16 / train_bf16: under '
                        'bfloat16 autocast (whatever --dtype), forward_bf16 also reports the '
                        'outputs\' relative error to float32')
    parser.add_argument('--compile', action='store_true',
                        help='also time the forward of torch.compile(model) (mode '
                        'forward_compile, float32; compiled in the warm-up round)')
    parser.add_argument('--isolate', action='store_true',
                        help='time each model and mode in a worker process of its own (own '
                        'heap), still interleaved and one at a time; all of them stay alive '
                        'during the run, and a compile warm-up compiles without worker pools')
    parser.add_argument('--no-memory', action='store_true', help='skip the peak memory steps')
    parser.add_argument('--json', metavar='OUT', help='also write the results as JSON')
    parser.add_argument('--memory-worker', action='store_true', help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if len(args.size) == 1:
        args.size = args.size * 2
    if len(args.size) != 2:
        parser.error('--size takes one or two integers')
    unknown = [m for m in args.models if m not in available_models()]
    if unknown:
        parser.error(f'unknown model(s) {unknown}; choose from {available_models()}')
    if args.compile and 'forward_compile' not in args.modes:
        args.modes.append('forward_compile')
    if 'forward_compile' in args.modes and args.warmup < 1 and not args.memory_worker:
        parser.error('forward_compile needs --warmup >= 1 (the warm-up round compiles)')
    if args.dtype == 'float16' and not args.device.startswith('cuda'):
        parser.error('--dtype float16 needs --device cuda (use bfloat16 on CPU)')
    return args


class Runner:
    """One model with its input, optimizer and the two timed steps."""

    def __init__(self, name: str, args):
        self.name = name
        self.device = torch.device(args.device)
        torch.manual_seed(0)
        self.model = build_model(name).to(self.device)
        self.params = sum(p.numel() for p in self.model.parameters())
        fmt = torch.channels_last if args.channels_last else torch.contiguous_format
        self.model = self.model.to(memory_format=fmt)
        self.inputs = torch.randn(args.batch, 3, *args.size, device=self.device).contiguous(
            memory_format=fmt)
        self.dtype = DTYPES[args.dtype]
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-4)

        self.compiled = None

    def autocast(self, dtype=None):
        dtype = dtype or self.dtype
        return torch.autocast(self.device.type, dtype=dtype, enabled=dtype != torch.float32)

    def forward(self, dtype=None):
        self.model.eval()
        with torch.no_grad(), self.autocast(dtype):
            return self.model(self.inputs)

    def train(self, dtype=None) -> None:
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        with self.autocast(dtype):
            outs = self.model(self.inputs)
        loss = sum(out.float().mean() for out in outs)
        loss.backward()
        self.optimizer.step()

    def forward_bf16(self) -> None:
        self.forward(torch.bfloat16)

    def train_bf16(self) -> None:
        self.train(torch.bfloat16)

    def forward_compile(self) -> None:
        if self.compiled is None:
            self.compiled = torch.compile(self.model)
        self.model.eval()
        with torch.no_grad():
            self.compiled(self.inputs)

    def time(self, mode: str) -> Tuple[float, int]:
        """Seconds and minor page faults of one ``mode`` step."""
        return timed(getattr(self, mode), self.device)

    def bf16_error(self) -> float:
        """``||out_bf16 - out_fp32|| / ||out_fp32||`` over all outputs (eval, no grad)."""
        ref = self.forward(torch.float32)
        low = self.forward(torch.bfloat16)
        num = sum(((a.float() - b) ** 2).sum() for a, b in zip(low, ref))
        den = sum((b ** 2).sum() for b in ref)
        return (num / den).sqrt().item()


def synchronize(device: torch.device) -> None:
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def minor_faults() -> int:
    """Minor page faults of this process so far (0 where the OS does not count them)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt if resource else 0


def timed(fn: Callable[[], None], device: torch.device) -> Tuple[float, int]:
    """Seconds of ``fn()``, and the minor page faults it took (fresh memory, on CPU)."""
    synchronize(device)
    faults = minor_faults()
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start, minor_faults() - faults


def worker_loop(conn, name: str, args) -> None:
    """``--isolate``: one :class:`Runner` in this process; answers each request (a mode to
    time, ``'bf16_error'``, or None to stop) with ``(ok, value)``."""
    try:
        if args.threads:
            torch.set_num_threads(args.threads)
        runner = Runner(name, args)
        conn.send((True, (runner.params, os.getpid())))
        for request in iter(conn.recv, None):
            conn.send((True, runner.bf16_error() if request == 'bf16_error'
                       else runner.time(request)))
    except Exception:  # reported by the parent, which then stops
        conn.send((False, traceback.format_exc()))


class IsolatedRunner:
    """A :class:`Runner` in a worker process of its own (``--isolate``), with its interface
    for the timing loop: ``name``, ``params``, ``time(mode)``, ``bf16_error()``.

    The worker is a daemon (it ends with this process). A worker that dies without an answer
    (killed, out of memory, a crash in native code) is reported, not waited for.
    """

    def __init__(self, name: str, args):
        self.name = name
        context = multiprocessing.get_context('spawn')  # a fresh interpreter and heap
        self.conn, child = context.Pipe()
        self.process = context.Process(target=worker_loop, args=(child, name, args),
                                       daemon=True)
        self.process.start()
        child.close()  # the worker's end: once the worker is gone, recv() sees end-of-file
        self.params, self.pid = self._reply()

    def _reply(self):
        try:
            ok, value = self.conn.recv()
        except (EOFError, OSError):  # the worker is gone
            self.process.join()
            raise RuntimeError(f'benchmark worker of {self.name} exited with code '
                               f'{self.process.exitcode} without an answer') from None
        if not ok:
            raise RuntimeError(f'benchmark worker of {self.name} failed:\n{value}')
        return value

    def _ask(self, request: str):
        try:
            self.conn.send(request)
        except OSError:  # the worker is gone: _reply says how
            pass
        return self._reply()

    def time(self, mode: str) -> Tuple[float, int]:
        return self._ask(mode)

    def bf16_error(self) -> float:
        return self._ask('bf16_error')

    def close(self) -> None:
        self.conn.send(None)
        self.process.join()


class PeakMemory:
    """Peak memory of one call, in bytes above what was in use before it (see module doc)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.libc = None
        if device.type == 'cpu':
            if not (platform.system() == 'Linux' and osp.exists('/proc/self/clear_refs')):
                raise RuntimeError('CPU peak memory needs Linux /proc (use --no-memory)')
            self.libc = ctypes.CDLL('libc.so.6')
            m_trim_threshold, m_mmap_threshold = -1, -3
            self.libc.mallopt(m_mmap_threshold, 128 * 1024)
            self.libc.mallopt(m_trim_threshold, 128 * 1024)

    @staticmethod
    def _status_bytes(key: str) -> int:
        with open('/proc/self/status') as f:
            return int(re.search(key + r':\s+(\d+) kB', f.read()).group(1)) * 1024

    def __call__(self, fn: Callable[[], None]) -> int:
        if self.device.type == 'cuda':
            synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            base = torch.cuda.memory_allocated(self.device)
            fn()
            synchronize(self.device)
            return torch.cuda.max_memory_allocated(self.device) - base
        self.libc.malloc_trim(0)
        with open('/proc/self/clear_refs', 'w') as f:
            f.write('5')  # resets VmHWM to the current VmRSS
        base = self._status_bytes('VmRSS')
        fn()
        return self._status_bytes('VmHWM') - base


def measure_in_subprocess(name: str, mode: str, args) -> int:
    """Peak memory of one ``mode`` step of ``name``, in a fresh process (no heap history)."""
    cmd = [sys.executable, osp.abspath(__file__), '--models', name, '--batch', str(args.batch),
           '--size', str(args.size[0]), str(args.size[1]), '--device', args.device,
           '--dtype', args.dtype, '--modes', mode, '--memory-worker']
    if args.threads:
        cmd += ['--threads', str(args.threads)]
    if args.channels_last:
        cmd.append('--channels-last')
    proc = subprocess.run(cmd, capture_output=True, text=True)
    match = re.search(r'^PEAK_BYTES (\d+)$', proc.stdout, re.M)
    if proc.returncode or not match:
        raise RuntimeError(f'memory measurement of {name} ({mode}) failed:\n{proc.stderr[-2000:]}')
    return int(match.group(1))


def memory_worker(args) -> None:
    """``--memory-worker``: one warm-up step, then the measured one; prints the peak."""
    if args.threads:
        torch.set_num_threads(args.threads)
    peak = PeakMemory(torch.device(args.device))  # pins the mmap threshold before any model
    runner = Runner(args.models[0], args)
    step = getattr(runner, args.modes[0])
    step()
    print(f'PEAK_BYTES {peak(step)}')


def ratio(a: Optional[float], b: Optional[float]) -> Optional[float]:
    return a / b if a is not None and b else None


def fmt(value, spec: str) -> str:
    return '-' if value is None else format(value, spec)


def main(argv=None):
    args = parse_args(argv)
    if args.memory_worker:
        return memory_worker(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    from mmengine.utils import ProgressBar

    # The FFT reference is not a compile target (its cached filters break the graph).
    # A deployed model is for inference: no training steps.
    steps = [(mode, name) for mode in args.modes for name in args.models
             if not (mode == 'forward_compile' and name.endswith('-fft'))
             and not (mode.startswith('train') and name.endswith('-deploy'))]
    if args.isolate:  # a process per (model, mode): each runs one model one way, as deployed
        timers = {step: IsolatedRunner(step[1], args) for step in steps}
        params = {name: timer.params for (_, name), timer in timers.items()}
        for name in set(args.models) - set(params):  # no step to run (deploy, train only)
            params[name] = sum(p.numel() for p in build_model(name).parameters())
    else:
        runners = {name: Runner(name, args) for name in args.models}
        timers = {(mode, name): runners[name] for mode, name in steps}
        params = {name: runner.params for name, runner in runners.items()}
    device = torch.device(args.device)
    times: Dict[str, Dict[str, List[float]]] = {m: {name: [] for name in args.models}
                                                for m in args.modes}
    faults: Dict[str, Dict[str, List[int]]] = {m: {name: [] for name in args.models}
                                               for m in args.modes}
    rounds = args.warmup + args.repeats
    print(f'{len(args.models)} models, {rounds} rounds ({args.warmup} warm-up), batch '
          f'{args.batch}, {args.size[0]}x{args.size[1]}, {args.dtype}, {args.device}, '
          f'{torch.get_num_threads()} threads' + (', channels_last' if args.channels_last
                                                  else '') +
          (', one process per model and mode' if args.isolate else ''))
    memory_steps = [(mode, name) for mode, name in steps if mode in MEMORY_MODES]
    bar = ProgressBar(rounds * len(steps) + (0 if args.no_memory else len(memory_steps)))
    for round_idx in range(rounds):
        for mode, name in steps:
            elapsed, step_faults = timers[mode, name].time(mode)
            if round_idx >= args.warmup:
                times[mode][name].append(elapsed)
                faults[mode][name].append(step_faults)
            bar.update()

    memory: Dict[str, Dict[str, int]] = {m: {} for m in args.modes}
    if not args.no_memory:
        # CUDA's caching allocator counts a step's own allocations whatever ran before it, so
        # the warm models measure there; the CPU's heap history needs a fresh process.
        peak = PeakMemory(device) if device.type == 'cuda' and not args.isolate else None
        for mode, name in memory_steps:
            memory[mode][name] = (peak(getattr(timers[mode, name], mode)) if peak else
                                  measure_in_subprocess(name, mode, args))
            bar.update()
    bf16_errors = {name: timer.bf16_error() for (mode, name), timer in timers.items()
                   if mode == 'forward_bf16'}
    if args.isolate:
        for timer in timers.values():
            timer.close()
    sys.stdout.write('\n')

    results = {}
    for name in args.models:
        row = dict(params_M=params[name] / 1e6)
        for mode in args.modes:
            if not times[mode][name]:
                row[f'{mode}_img_s'] = None
                continue
            median = statistics.median(times[mode][name])
            row[f'{mode}_img_s'] = args.batch / median
            row[f'{mode}_s_per_batch'] = median
            row[f'{mode}_times'] = times[mode][name]
            row[f'{mode}_minor_faults'] = statistics.median(faults[mode][name])
            row[f'{mode}_pid'] = getattr(timers[mode, name], 'pid', os.getpid())
            if name in memory[mode]:
                row[f'{mode}_peak_MiB'] = memory[mode][name] / 2**20
        if name in bf16_errors:
            row['bf16_rel_err'] = bf16_errors[name]
        results[name] = row

    def fft_of(name: str) -> Optional[str]:
        if name.startswith('spanet-') and not name.endswith('-fft'):
            other = 'spanet-' + name.split('-')[1] + '-fft'
            return other if other in results else None
        return None

    header = ['model', 'params (M)']
    for mode in args.modes:
        header += [f'{mode} img/s', f'{mode} vs ConvNeXt-T', f'{mode} vs fft']
        if not args.no_memory and mode in MEMORY_MODES:
            header += [f'{mode} peak MiB', f'{mode} peak vs fft']
    if bf16_errors:
        header.append('bf16 rel err')
    lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
    for name, row in results.items():
        ref, fft = results.get(REFERENCE), results.get(fft_of(name) or '')
        cells = [name, f'{row["params_M"]:.1f}']
        for mode in args.modes:
            speed = row[f'{mode}_img_s']
            rel_ref = ratio(speed, ref and ref[f'{mode}_img_s'])
            rel_fft = ratio(speed, fft and fft[f'{mode}_img_s'])
            row[f'{mode}_vs_{REFERENCE}'] = rel_ref
            row[f'{mode}_vs_fft'] = rel_fft
            cells += [fmt(speed, '.2f'), fmt(rel_ref, '.2f') + ('x' if rel_ref else ''),
                      fmt(rel_fft, '.2f') + ('x' if rel_fft else '')]
            if not args.no_memory and mode in MEMORY_MODES:
                mem = row.get(f'{mode}_peak_MiB')
                mem_fft = ratio(mem, fft and fft.get(f'{mode}_peak_MiB'))
                row[f'{mode}_peak_vs_fft'] = mem_fft
                cells += [fmt(mem, '.0f'), fmt(mem_fft, '.2f') + ('x' if mem_fft else '')]
        if bf16_errors:
            cells.append(f'{row["bf16_rel_err"]:.2%}')
        lines.append('| ' + ' | '.join(cells) + ' |')
    print('\n'.join(lines))

    if args.json:
        meta = dict(command=' '.join([osp.basename(sys.executable)] + sys.argv),
                    batch=args.batch, size=args.size, dtype=args.dtype, device=args.device,
                    threads=torch.get_num_threads(), channels_last=args.channels_last,
                    isolate=args.isolate,
                    repeats=args.repeats, torch=torch.__version__,
                    cpu=platform.processor() or platform.machine(),
                    memory_method=('cuda max_memory_allocated' if device.type == 'cuda' else
                                   'peak RSS rise (VmHWM), mmap threshold 128 KiB'))
        out_dir = osp.dirname(osp.abspath(args.json))
        os.makedirs(out_dir, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=out_dir, suffix='.tmp')
        with os.fdopen(fd, 'w') as f:
            json.dump(dict(meta=meta, results=results, table=lines), f, indent=2)
        os.replace(tmp, args.json)
        print(f'wrote {args.json}')


if __name__ == '__main__':
    main()
