"""Shared helpers for the benchmarks: set-up banner, interleaved timing, peak memory, FLOPs, tables.

Peak memory has one definition on both devices, so CPU and CUDA numbers mean the same thing:

    peak = bytes of the tensors the step starts with (input, upstream gradient, parameters, buffers)
         + the largest rise of live tensor bytes above that during the step

  * cuda: torch.cuda.max_memory_allocated() - memory_allocated() before the step (after a reset);
  * cpu:  there is no allocator peak counter, so the step runs under torch.profiler with
          profile_memory=True and the allocation / free events it records (every tensor allocation
          through c10's CPU allocator, including temporaries inside ops) are summed in time order
          and the maximum is taken. Scratch memory that oneDNN/MKL allocate themselves is not seen.
"""
from __future__ import annotations

import argparse
import gc
import os
import platform
import random
import statistics
import time
from typing import Callable

import torch


def base_parser(doc: str, repeats: int, warmup: int) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    p.add_argument("--repeats", type=int, default=repeats, help="timed rounds, each runs every implementation once")
    p.add_argument("--warmup", type=int, default=warmup, help="untimed rounds first")
    p.add_argument("--quick", action="store_true", help="smoke run: 3 repeats, 1 warm-up round, smaller sizes")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads (default: all cores)")
    p.add_argument("--wait-quiet", type=float, default=0, metavar="S",
                   help="before each round wait up to S s for other processes to leave the CPU (shared machines)")
    return p


def setup(args: argparse.Namespace) -> torch.device:
    """Seed, set threads (default: every core), print what the numbers were measured on."""
    if args.quick:
        args.repeats, args.warmup = min(args.repeats, 3), min(args.warmup, 1)
    torch.set_num_threads(args.threads)
    random.seed(args.seed)
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    load = " load avg %.2f %.2f %.2f" % os.getloadavg() if hasattr(os, "getloadavg") else ""
    print(f"device={device} ({name}) torch={torch.__version__} threads={torch.get_num_threads()} "
          f"cpus={os.cpu_count()}{load}")
    print(f"seed={args.seed} warmup={args.warmup} repeats={args.repeats} quick={args.quick} code={code_version()}")
    return device


def done(t_start: float) -> None:
    """Wall time of the whole script and the load average: > cpus means something else competed for the cores."""
    load = " load avg %.2f %.2f %.2f" % os.getloadavg() if hasattr(os, "getloadavg") else ""
    print(f"done in {time.perf_counter() - t_start:.0f} s;{load}")


def code_version() -> str:
    """git commit (+dirty) and a hash of lambdalib/layers.py, so numbers can be tied to the code measured."""
    import hashlib
    import subprocess

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        def run(*a):
            return subprocess.run(["git", *a], cwd=root, capture_output=True, text=True).stdout.strip()

        commit = run("rev-parse", "--short", "HEAD") + ("+dirty" if run("status", "--porcelain", "lambdalib") else "")
    except OSError:
        commit = "?"
    with open(os.path.join(root, "lambdalib", "layers.py"), "rb") as f:
        return f"{commit or '?'} layers.py:{hashlib.sha1(f.read()).hexdigest()[:10]}"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _others_cpu_s() -> float:
    """CPU seconds the whole machine has been busy minus this process's (Linux; 0 elsewhere)."""
    try:
        with open("/proc/stat") as f:
            ticks = [int(v) for v in f.readline().split()[1:9]]
    except OSError:
        return 0.0
    busy = (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")  # all but idle, iowait
    own = os.times()
    return busy - own.user - own.system


def wait_quiet(max_wait_s: float, window_s: float = 0.5, threshold: float = 0.1) -> None:
    """Sleep until other processes use < threshold of the machine's CPU over a window (at most max_wait_s)."""
    deadline = time.perf_counter() + max_wait_s
    while time.perf_counter() < deadline:
        others = _others_cpu_s()
        time.sleep(window_s)
        if (_others_cpu_s() - others) / (window_s * os.cpu_count()) < threshold:
            return


def interleaved(fns: dict[str, Callable[[], object]], device: torch.device, repeats: int, warmup: int,
                budget_s: float = float("inf"), quiet_s: float = 0.0) -> dict[str, list[float]]:
    """Milliseconds per call of each fn, round-robin: every round runs each fn once, so drift hits all alike.

    Stops early (keeping at least 3 rounds) once the timed rounds have used ``budget_s`` seconds.
    Also fills ``CONTENTION[name]``: per call, the share of the machine's CPU that *other* processes
    used meanwhile (0 = quiet box; 0.5 on 2 cores = another process held a whole core). With
    ``quiet_s`` > 0 each round first waits up to that long for the machine to fall quiet.
    """
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    sync(device)
    times: dict[str, list[float]] = {name: [] for name in fns}
    CONTENTION.clear()
    CONTENTION.update({name: [] for name in fns})
    start = time.perf_counter()
    for r in range(repeats):
        if quiet_s > 0:
            wait_quiet(quiet_s)
        for name, fn in fns.items():
            sync(device)
            others, t0 = _others_cpu_s(), time.perf_counter()
            fn()
            sync(device)
            wall = time.perf_counter() - t0
            times[name].append(1000 * wall)
            CONTENTION[name].append((max(0.0, _others_cpu_s() - others), wall * os.cpu_count()))
        if r >= 2 and time.perf_counter() - start > budget_s:
            break
    return times


CONTENTION: dict[str, list[tuple[float, float]]] = {}  # per call: (others' CPU s, machine CPU s)


def others_pct(name: str) -> float:
    """Share (%) of the machine's CPU that other processes used over ``name``'s timed calls together.

    /proc/stat counts in 10 ms ticks, so for calls of a few ms this is only a rough figure.
    """
    calls = CONTENTION.get(name)
    return min(100.0, 100 * sum(c[0] for c in calls) / sum(c[1] for c in calls)) if calls else float("nan")


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def tensor_bytes(*objs) -> int:
    """Bytes of tensors and of modules' parameters + buffers (each storage once)."""
    seen, total = set(), 0
    for obj in objs:
        tensors = list(obj.parameters()) + list(obj.buffers()) if isinstance(obj, torch.nn.Module) else [obj]
        for t in tensors:
            if t is None or t.untyped_storage().data_ptr() in seen:
                continue
            seen.add(t.untyped_storage().data_ptr())
            total += t.untyped_storage().nbytes()
    return total


def _cpu_peak_rise(step: Callable[[], object]) -> int:
    from torch._C._profiler import _EventType
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    sizes = []

    def walk(node):
        if node.tag == _EventType.Allocation:
            sizes.append((node.start_time_ns, node.extra_fields.alloc_size))
        for child in node.children:
            walk(child)

    for root in prof.profiler.kineto_results.experimental_event_tree():
        walk(root)
    live = peak = 0
    for _, size in sorted(sizes, key=lambda s: s[0]):
        live += size
        peak = max(peak, live)
    return peak


def peak_memory(step: Callable[[], object], reset: Callable[[], None], device: torch.device,
                start_bytes: int) -> int:
    """Peak live tensor bytes of one ``step`` (see the module docstring); ``reset`` runs first, unmeasured."""
    reset()
    gc.collect()
    if device.type == "cuda":
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        step()
        sync(device)
        rise = torch.cuda.max_memory_allocated(device) - before
    else:
        rise = _cpu_peak_rise(step)
    reset()
    return start_bytes + rise


def forward_flops(fn: Callable[[], object]) -> int:
    """FLOPs (2 x multiply-adds) of matmuls/convolutions in one call, by torch's FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        fn()
    return counter.get_total_flops()


def print_table(rows: list[dict], floatfmt: str = "{:.2f}") -> None:
    """Plain fixed-width table of dicts (same keys in every row)."""
    if not rows:
        return
    cols = list(rows[0])
    cell = lambda v: floatfmt.format(v) if isinstance(v, float) else str(v)  # noqa: E731
    width = {c: max(len(c), *(len(cell(r[c])) for r in rows)) for c in cols}
    print("  ".join(c.rjust(width[c]) for c in cols))
    for r in rows:
        print("  ".join(cell(r[c]).rjust(width[c]) for c in cols))
