"""Which CPU options make a training step faster (issue #26): eager vs channels_last vs bf16 autocast vs
torch.compile, and one process on every core vs `--jobs N` processes of one thread each.

One step = zero grads, forward, cross-entropy, backward, Adam step on random images and labels (batch 64 at
64 px by default: the study's size, the lambda layer sees 8x8 in stage 2). Options run round-robin within a
process, so drift hits all alike; `x eager` = img/s / eager's img/s (> 1: faster). The process part starts
N processes of 1 thread each at once, each timing the eager step, and adds their img/s: the throughput of
`lambdalib reproduce --jobs N` against one process with N threads.

    python benchmarks/bench_cpu_options.py                 # ~5 min on a quiet 2-core CPU (compile included)
    python benchmarks/bench_cpu_options.py --quick         # smoke run
    python benchmarks/bench_cpu_options.py --no-compile    # without Inductor (needs a C++ compiler)
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import common
import torch
import torch.nn.functional as F

from lambdalib.models import create

MODELS = ["R18", "LR18_L2(rpe)", "LR18_L2(lc)"]


def make_step(name: str, batch: int, img: int, option: str, seed: int):
    torch.manual_seed(seed)
    model = create(name, num_classes=10, img_size=img, **({"scope": 5} if "(lc)" in name else {})).train()
    fmt = torch.channels_last if option == "channels_last" else torch.contiguous_format
    model = model.to(memory_format=fmt)
    forward = torch.compile(model) if option == "compile" else model
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.randn(batch, 3, img, img).to(memory_format=fmt)
    y = torch.randint(0, 10, (batch,))

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=option == "bf16"):
            loss = F.cross_entropy(forward(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def one_thread_worker(name: str, batch: int, img: int, repeats: int) -> None:
    """Child of the --jobs part: time the eager step on one thread, print img/s as JSON."""
    torch.set_num_threads(1)
    step = make_step(name, batch, img, "eager", 0)
    step()
    start = time.perf_counter()
    for _ in range(repeats):
        step()
    print(json.dumps({"img_s": batch * repeats / (time.perf_counter() - start)}))


def main() -> None:
    t_start = time.perf_counter()
    p = common.base_parser(__doc__, repeats=5, warmup=2)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--img-size", type=int, default=64)
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--no-compile", action="store_true", help="leave torch.compile out")
    p.add_argument("--worker", help=argparse_hidden())
    args = p.parse_args()
    if args.worker:
        return one_thread_worker(args.worker, args.batch, args.img_size, args.repeats)
    device = common.setup(args)
    if args.quick:
        args.batch, args.img_size = 16, 32
    options = ["eager", "channels_last", "bf16"] + ([] if args.no_compile else ["compile"])
    rows = []
    for name in [m.strip() for m in args.models.split(",")]:
        steps = {option: make_step(name, args.batch, args.img_size, option, args.seed) for option in options}
        times = common.interleaved(steps, device, args.repeats, args.warmup, quiet_s=args.wait_quiet)
        eager = common.median(times["eager"])
        for option in options:
            ms = common.median(times[option])
            rows.append(dict(model=name, option=f"{option} ({torch.get_num_threads()} thr)", ms=ms,
                             img_s=args.batch * 1000 / ms, x_eager=eager / ms, others_pct=common.others_pct(option)))
        jobs = os.cpu_count() or 1
        children = [subprocess.Popen([sys.executable, __file__, "--worker", name, "--batch", str(args.batch),
                                      "--img-size", str(args.img_size), "--repeats", str(args.repeats)],
                                     stdout=subprocess.PIPE, text=True) for _ in range(jobs)]
        total = sum(json.loads(c.communicate()[0].strip().splitlines()[-1])["img_s"] for c in children)
        rows.append(dict(model=name, option=f"--jobs {jobs} x 1 thr (sum)", ms=args.batch * 1000 * jobs / total,
                         img_s=total, x_eager=total / (args.batch * 1000 / eager), others_pct=float("nan")))
    common.print_table(rows)
    common.done(t_start)


def argparse_hidden() -> str:
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    main()
