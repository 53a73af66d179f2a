"""Whole training step of each Lambda-ResNet18 against ResNet18 (issue #6).

One step = zero grads, forward, cross-entropy, backward, Adam step, on random images and labels,
batch 64 at 128 px by default (the lambda layer then sees 16x16 in stage 2, 8x8 in stage 3). The
models run round-robin (each timed round runs every model once) so drift hits all alike.

Reading the table: `ms/step` is the median over rounds, `img/s` = batch / median step time,
`x R18` = ms/step / R18's ms/step (>1: slower than the plain ResNet18; the goal is <= 1.10 for
every LR18), `peak MB` the peak live tensor bytes of one step (see common.py), `GFLOP/img` the
forward matmul/conv FLOPs of one image.

    python benchmarks/bench_train_step.py                  # full run, 2-4 min on a 2-core CPU
    python benchmarks/bench_train_step.py --quick          # smoke run (batch 16, 64 px, 3 rounds)
    python benchmarks/bench_train_step.py --device cuda --amp --channels-last
"""
from __future__ import annotations

import time

import common
import torch
import torch.nn.functional as F

from lambdalib.models import count_flops, create

MODELS = ["R18", "LR18_L2(rpe)", "LR18_L3(rpe)", "LR18_L2(lc)", "LR18_L3(lc)"]


def main() -> None:
    t_start = time.perf_counter()
    p = common.base_parser(__doc__, repeats=5, warmup=2)
    p.add_argument("--batch", type=int, default=None, help="default 64 (16 with --quick)")
    p.add_argument("--img-size", type=int, default=None, help="default 128 (64 with --quick)")
    p.add_argument("--models", default=",".join(MODELS), help="comma-separated report labels; R18 is always added")
    p.add_argument("--amp", action="store_true", help="bf16 autocast (meant for cuda)")
    p.add_argument("--channels-last", action="store_true", help="channels_last model and input (meant for cuda)")
    p.add_argument("--budget-s", type=float, default=300, help="stop timing after this many seconds (>= 3 rounds)")
    args = p.parse_args()
    device = common.setup(args)
    batch = args.batch or (16 if args.quick else 64)
    img = args.img_size or (64 if args.quick else 128)
    names = ["R18"] + [m.strip() for m in args.models.split(",") if m.strip() and m.strip() != "R18"]
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    print(f"batch={batch} img_size={img} num_classes=10 Adam(lr=1e-3) amp={'bf16' if args.amp else 'off'} "
          f"channels_last={args.channels_last}")

    x = torch.randn(batch, 3, img, img, device=device).to(memory_format=fmt)
    y = torch.randint(0, 10, (batch,), device=device)
    steps, resets, start_bytes, gflops = {}, {}, {}, {}
    for name in names:
        torch.manual_seed(args.seed)
        model = create(name, num_classes=10, img_size=img)
        gflops[name] = count_flops(model, img) / 1e9  # on CPU, before moving
        model = model.to(device, memory_format=fmt).train()
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)

        def step(model=model, opt=opt):
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.amp):
                loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()

        steps[name] = step
        resets[name] = lambda opt=opt: opt.zero_grad(set_to_none=True)
        start_bytes[name] = lambda model=model, opt=opt: common.tensor_bytes(x, y, model, *(
            t for s in opt.state.values() for t in s.values() if torch.is_tensor(t)))

    timed = {k: (lambda k=k: (resets[k](), steps[k]())) for k in names}
    times = common.interleaved(timed, device, args.repeats, args.warmup, args.budget_s, args.wait_quiet)
    # after the warm-up, so Adam's state exists and is counted among the start tensors
    peak = {k: common.peak_memory(steps[k], resets[k], device, start_bytes[k]()) for k in names}

    ms = {k: common.median(v) for k, v in times.items()}
    print(f"\n== training step, batch {batch}, {img} px, {len(times['R18'])} timed rounds ==")
    rows = [dict(model=k, GFLOP_img=gflops[k], ms_step=ms[k], min_ms=min(times[k]), max_ms=max(times[k]),
                 others_pct=common.others_pct(k), img_s=batch / ms[k] * 1000, x_R18=ms[k] / ms["R18"],
                 peak_MB=peak[k] / 2**20,
                 goal_1_10=("-" if k == "R18" else "PASS" if ms[k] / ms["R18"] <= 1.10 else "FAIL"))
            for k in names]
    common.print_table(rows)
    common.done(t_start)


if __name__ == "__main__":
    main()
