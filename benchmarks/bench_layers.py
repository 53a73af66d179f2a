"""Lambda layer forward+backward: time, peak memory and FLOPs of ours against the anchors (issue #6).

At the Lambda-ResNet18 shapes (batch 64; 128 ch at 16x16 / 20x20 = stage 2 at 128 / 160 px, 256 ch at
8x8 / 10x10 = stage 3) it runs, round-robin (each timed round runs every implementation once):

    ours rpe / ours lc     lambdalib.layers.LambdaLayer(position="rpe" | "lc", scope=23), impl="auto"
    timm rpe / timm lc23   timm.layers.lambda_layer.LambdaLayer(r=None | 23, num_heads=4, dim_head=16)
    lucid rpe / lucid lc23 lambda_networks.LambdaLayer(n=side | r=23, dim_k=16, heads=4, dim_u=1)
    conv3x3                nn.Conv2d(c, c, 3, padding=1, bias=False), the layer a lambda layer replaces

One step = set grads to None, y = layer(x), y.backward(dy) with x.requires_grad, in train mode.

Reading the tables: `ms` is the median over rounds, `peak MB` the peak live tensor bytes of one step
(input, dy, parameters + what the step allocates; see common.py for how), `GFLOP` the forward
matmul/conv FLOPs. `x conv` divides by the 3x3 conv's number (>1: costlier than the conv it replaces).
`others_pct` is the share of the machine's CPU that other processes used during those timed calls
(a shared box: large values mean contended, noisy times; `min_ms` is then the steadier figure).
In the summary, `rpe:lucid` = lucidrains' ms / our ms (>1: ours faster), `(min)` the same from the
fastest rounds, and `mem:X` = the larger of our two peaks / X's (<=1: ours no hungrier). Goals:
rpe >= 1.5x and lc >= 2x faster than lucidrains', and peak memory no more than the leanest lambda
anchor (timm or lucidrains, either position type).

    python benchmarks/bench_layers.py                 # full run, 1.5 min on a quiet 2-core CPU (5 busy)
    python benchmarks/bench_layers.py --quick         # smoke run (batch 16, 3 rounds)
    python benchmarks/bench_layers.py --profile       # + torch.profiler top ops of ours at 128ch 16x16
"""
from __future__ import annotations

import time
import warnings

import common
import torch
from torch import nn

from lambdalib.layers import LambdaLayer

warnings.filterwarnings("ignore", message=".*meshgrid.*")  # lucidrains' calc_rel_pos
SHAPES = [(128, 16), (128, 20), (256, 8), (256, 10)]  # (channels, map side)


def build(channels: int, side: int) -> dict[str, nn.Module]:
    import lambda_networks
    from timm.layers.lambda_layer import LambdaLayer as TimmLambda

    c = channels
    return {
        "ours rpe": LambdaLayer(c, c, position="rpe", feat_size=side, dim_k=16, heads=4),
        "ours lc": LambdaLayer(c, c, position="lc", feat_size=side, scope=23, dim_k=16, heads=4),
        "timm rpe": TimmLambda(c, c, feat_size=(side, side), r=None, num_heads=4, dim_head=16),
        "timm lc23": TimmLambda(c, c, r=23, num_heads=4, dim_head=16),
        "lucid rpe": lambda_networks.LambdaLayer(dim=c, dim_out=c, n=side, dim_k=16, heads=4, dim_u=1),
        "lucid lc23": lambda_networks.LambdaLayer(dim=c, dim_out=c, r=23, dim_k=16, heads=4, dim_u=1),
        "conv3x3": nn.Conv2d(c, c, 3, padding=1, bias=False),
    }


def profile_ours(mods: dict[str, nn.Module], x: torch.Tensor, dy: torch.Tensor, rows: int = 12) -> None:
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if x.is_cuda else [])
    for name in ("ours rpe", "ours lc", "lucid rpe"):
        m = mods[name]
        m(x).backward(dy)  # warm
        with profile(activities=acts) as prof:
            for _ in range(3):
                m.zero_grad(set_to_none=True)
                x.grad = None
                m(x).backward(dy)
        key = "self_device_time_total" if x.is_cuda else "self_cpu_time_total"
        print(f"\n--- torch.profiler, {name}, fwd+bwd x3, {tuple(x.shape)}, top ops by self time ---")
        print(prof.key_averages().table(sort_by=key, row_limit=rows, max_name_column_width=40))


def main() -> None:
    t_start = time.perf_counter()
    p = common.base_parser(__doc__, repeats=5, warmup=1)
    p.add_argument("--batch", type=int, default=None, help="default 64 (16 with --quick)")
    p.add_argument("--shapes", default=None, help="e.g. '128x16,256x8' (channels x side); default: the LR18 four")
    p.add_argument("--budget-s", type=float, default=120, help="stop timing a shape after this long (>= 3 rounds)")
    p.add_argument("--profile", action="store_true", help="torch.profiler top ops of ours at the first shape")
    args = p.parse_args()
    device = common.setup(args)
    batch = args.batch or (16 if args.quick else 64)
    shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")] if args.shapes else SHAPES
    print(f"batch={batch} dtype=float32 train mode; peak memory: "
          + ("torch.cuda.max_memory_allocated" if device.type == "cuda" else
             "torch.profiler memory events (allocations - frees, time order, max)") + " + start tensors")

    summary = []
    for si, (channels, side) in enumerate(shapes):
        torch.manual_seed(args.seed)
        mods = {k: m.to(device).train() for k, m in build(channels, side).items()}
        x = torch.randn(batch, channels, side, side, device=device, requires_grad=True)
        dy = torch.randn(batch, channels, side, side, device=device)

        def reset(m):
            m.zero_grad(set_to_none=True)
            x.grad = None

        steps = {k: (lambda m=m: m(x).backward(dy)) for k, m in mods.items()}
        timed = {k: (lambda m=m, s=s: (reset(m), s())) for (k, m), s in zip(mods.items(), steps.values())}

        shapes_out = {k: tuple(m(x).shape) for k, m in mods.items()}
        assert len({shapes_out[k] for k in ("ours rpe", "ours lc", "lucid rpe", "lucid lc23")}) == 1, shapes_out
        # ours hands on its input's memory format (#23): NCHW here, so the timing includes any layout copy
        assert all(mods[k](x).is_contiguous() for k in ("ours rpe", "ours lc")), "ours: output not NCHW"
        flops = {k: common.forward_flops(lambda m=m: m(x)) for k, m in mods.items()}
        times = common.interleaved(timed, device, args.repeats, args.warmup, args.budget_s, args.wait_quiet)
        peak = {k: common.peak_memory(steps[k], lambda m=m: reset(m), device, common.tensor_bytes(x, dy, m))
                for k, m in mods.items()}  # after the warm-up, so one-off caches are not counted
        ms = {k: common.median(v) for k, v in times.items()}
        fastest = {k: min(v) for k, v in times.items()}

        print(f"\n== {channels} ch, {side}x{side}, batch {batch}: output {shapes_out['ours rpe']} for all "
              f"(ours == lucidrains' shape: ok; ours NCHW in, NCHW out: ok), {len(times['conv3x3'])} timed rounds ==")
        common.print_table([dict(
            impl=k, GFLOP=flops[k] / 1e9, ms=ms[k], min_ms=fastest[k], max_ms=max(times[k]),
            others_pct=common.others_pct(k), peak_MB=peak[k] / 2**20,
            x_conv_ms=ms[k] / ms["conv3x3"], x_conv_MB=peak[k] / peak["conv3x3"],
        ) for k in mods])
        if si == 0:  # sanity check of the memory method on the conv
            w = mods["conv3x3"].weight
            analytic = 3 * x.nbytes + dy.nbytes + 2 * w.nbytes  # x, dy, w at start; y, dx, dw made by the step
            verdict = "ok" if peak["conv3x3"] >= analytic else "LOW: the method misses tensors"
            print(f"memory sanity: conv3x3 measured {peak['conv3x3'] / 2**20:.2f} MB >= x+dy+w+y+dx+dw = "
                  f"{analytic / 2**20:.2f} MB ({verdict}; any excess is oneDNN's temporary blocked-layout copies)")

        leanest = min(peak[k] for k in mods if k.startswith(("timm", "lucid")))
        row = dict(shape=f"{channels}x{side}x{side}")
        for ours, lucid, timm_ in (("ours rpe", "lucid rpe", "timm rpe"), ("ours lc", "lucid lc23", "timm lc23")):
            tag = ours.split()[1]
            row[f"{tag}:lucid"] = ms[lucid] / ms[ours]
            row[f"{tag}:lucid(min)"] = fastest[lucid] / fastest[ours]
            row[f"{tag}:timm"] = ms[timm_] / ms[ours]
        row["mem:leanest"] = max(peak["ours rpe"], peak["ours lc"]) / leanest
        row["mem:conv"] = max(peak["ours rpe"], peak["ours lc"]) / peak["conv3x3"]
        row["goal rpe>=1.5"] = "PASS" if row["rpe:lucid"] >= 1.5 else "FAIL"
        row["goal lc>=2"] = "PASS" if row["lc:lucid"] >= 2 else "FAIL"
        row["goal mem"] = "PASS" if row["mem:leanest"] <= 1 else "FAIL"
        summary.append(row)

        if args.profile and si == 0:
            profile_ours(mods, x, dy)
        del mods, x, dy, steps, timed

    print("\n== summary: rpe:lucid = lucid rpe's ms / ours rpe's ms (>1: ours faster; median, and (min) from"
          " the fastest rounds); mem = the larger of our two peaks / the leanest lambda anchor's peak"
          " (or the conv's) ==")
    common.print_table(summary)
    common.done(t_start)


if __name__ == "__main__":
    main()
