"""Do lambda layers save memory over attention? Forward+backward time and peak memory vs map size (issue #6).

Sweeps the feature-map side (8 .. 48, tokens = side^2) at batch 8, 128 channels, for

    ours rpe    LambdaLayer(position="rpe"), global context, the layer picks its cheapest path
    ours lc     LambdaLayer(position="lc", scope=23)
    sdpa        4-head self-attention: q, k, v by one 1x1 conv, F.scaled_dot_product_attention
                (fused kernel, the n x n map is never stored)
    attn naive  the same block with the map materialised: softmax(q k^T / sqrt(d)) v

One step = zero grads, y = block(x), y.backward(dy), train mode. At each side the blocks run
round-robin. A block whose first (warm-up) call takes longer than --max-call-s is skipped at that
side and every larger one (printed as skipped), which keeps the default run at a few minutes.

Reading the output: `ms` median fwd+bwd time, `peak MB` peak live tensor bytes of one step (see
common.py), `GFLOP` forward matmul/conv FLOPs (FlopCounterMode does not see the fused CPU SDPA kernel,
so sdpa's count is its projection only; its arithmetic equals attn naive's), `others_pct` the share
of the machine's CPU other processes used meanwhile (see bench_layers.py). Lambda layers "save memory
over attention" where their peak grows slower with tokens than `attn naive`'s (which stores b*h*n^2
maps); `sdpa` shows what a fused attention kernel gets.
Writes results/benchmarks/attention_sweep.csv and .png (time and memory vs tokens, log scales).

    python benchmarks/bench_attention_sweep.py              # sides 8..48, 1 min on a quiet 2-core CPU (3 busy)
    python benchmarks/bench_attention_sweep.py --quick      # sides 8..24, 3 rounds
    python benchmarks/bench_attention_sweep.py --max-side 32
"""
from __future__ import annotations

import csv
import os
import time

import common
import torch
import torch.nn.functional as F
from torch import nn

from lambdalib.layers import LambdaLayer
from lambdalib.paths import results_dir

SIDES = [8, 12, 16, 24, 32, 48]


class Attention(nn.Module):
    """Multi-head self-attention over the H*W positions, same width in and out (a 3x3 conv's slot)."""

    def __init__(self, dim: int, heads: int = 4, materialise: bool = False):
        super().__init__()
        self.heads, self.materialise = heads, materialise
        self.qkv = nn.Conv2d(dim, 3 * dim, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        # (b, heads, n, d) with d contiguous: the fused CPU kernel needs it (else SDPA falls back to the math path)
        qkv = self.qkv(x).flatten(2).transpose(1, 2).contiguous().view(b, h * w, 3, self.heads, c // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        if self.materialise:  # b heads n n, kept for backward
            y = (q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5).softmax(dim=-1) @ v
        else:
            y = F.scaled_dot_product_attention(q, k, v)
        return y.transpose(1, 2).reshape(b, h * w, c).transpose(1, 2).reshape(b, c, h, w)


def build(channels: int, side: int) -> dict[str, nn.Module]:
    return {
        "ours rpe": LambdaLayer(channels, channels, position="rpe", feat_size=side),
        "ours lc": LambdaLayer(channels, channels, position="lc", feat_size=side, scope=23),
        "sdpa": Attention(channels),
        "attn naive": Attention(channels, materialise=True),
    }


def sdpa_kernel(mod: nn.Module, x: torch.Tensor) -> str:
    """Which SDPA kernel the block really runs (a math fallback would materialise the map)."""
    from torch.profiler import profile

    with profile() as prof:
        mod(x).sum().backward()
    return ", ".join(e.key for e in prof.key_averages() if e.key.startswith("aten::_scaled_dot_product"))


def plot(rows: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for impl in dict.fromkeys(r["impl"] for r in rows):
        pts = [r for r in rows if r["impl"] == impl and r["status"] == "ok"]
        for ax, key in zip(axes, ("ms", "peak_MB")):
            ax.plot([r["tokens"] for r in pts], [r[key] for r in pts], "o-", label=impl)
    for ax, label in zip(axes, ("fwd+bwd time (ms, median)", "peak memory (MB)")):
        ax.set(xscale="log", yscale="log", xlabel="tokens (side^2)", ylabel=label)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend()
    r0 = rows[0]
    fig.suptitle(f"batch {r0['batch']}, {r0['channels']} ch, {r0['device']}: lambda layers vs attention")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    t_start = time.perf_counter()
    p = common.base_parser(__doc__, repeats=5, warmup=1)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--channels", type=int, default=128)
    p.add_argument("--sides", default=",".join(map(str, SIDES)), help="comma-separated map sides")
    p.add_argument("--max-side", type=int, default=None, help="drop sides above this (default 48, 24 with --quick)")
    p.add_argument("--max-call-s", type=float, default=15,
                   help="skip a block, here and at larger sides, whose warm-up call takes longer")
    p.add_argument("--budget-s", type=float, default=40, help="stop timing a side after this long (>= 3 rounds)")
    p.add_argument("--out", default=None, help="output folder (default results/benchmarks)")
    args = p.parse_args()
    device = common.setup(args)
    max_side = args.max_side or (24 if args.quick else 48)
    sides = [s for s in map(int, args.sides.split(",")) if s <= max_side]
    out = args.out or str(results_dir() / "benchmarks")
    os.makedirs(out, exist_ok=True)
    print(f"batch={args.batch} channels={args.channels} sides={sides} heads=4 dtype=float32")

    rows, too_slow = [], set()
    for side in sides:
        torch.manual_seed(args.seed)
        mods = {k: m.to(device).train() for k, m in build(args.channels, side).items()}
        x = torch.randn(args.batch, args.channels, side, side, device=device, requires_grad=True)
        dy = torch.randn_like(x)

        def reset(m):
            m.zero_grad(set_to_none=True)
            x.grad = None

        steps = {k: (lambda m=m: m(x).backward(dy)) for k, m in mods.items()}
        if side == sides[0]:
            print(f"sdpa kernels: {sdpa_kernel(mods['sdpa'], x)}")
        for name in mods:  # first call: warm-up and a cost probe
            if name in too_slow:
                continue
            common.sync(device)
            t0 = time.perf_counter()
            steps[name]()
            common.sync(device)
            if time.perf_counter() - t0 > args.max_call_s:
                too_slow.add(name)
                print(f"  side {side}: {name} took {time.perf_counter() - t0:.1f} s > --max-call-s; "
                      f"skipping it here and at larger sides")
        live = {k: m for k, m in mods.items() if k not in too_slow}
        timed = {k: (lambda m=m: (reset(m), m(x).backward(dy))) for k, m in live.items()}
        times = common.interleaved(timed, device, args.repeats, max(args.warmup - 1, 0), args.budget_s,
                                   args.wait_quiet)
        for name, m in mods.items():
            row = dict(impl=name, side=side, tokens=side * side, batch=args.batch, channels=args.channels,
                       device=str(device), status="skipped (too slow)",
                       **dict.fromkeys(("ms", "min_ms", "others_pct", "peak_MB", "GFLOP"), float("nan")))
            if name in live:
                peak = common.peak_memory(steps[name], lambda m=m: reset(m), device, common.tensor_bytes(x, dy, m))
                row.update(ms=common.median(times[name]), min_ms=min(times[name]),
                           others_pct=common.others_pct(name), peak_MB=peak / 2**20,
                           GFLOP=common.forward_flops(lambda m=m: m(x)) / 1e9, status="ok")
            rows.append(row)
        print(f"side {side:3d} ({side * side:5d} tokens): " + ", ".join(
            f"{r['impl']} {r['ms']:.0f} ms {r['peak_MB']:.0f} MB" for r in rows[-len(mods):]), flush=True)
        del mods, x, dy, steps, timed, live

    print(f"\n== fwd+bwd, batch {args.batch}, {args.channels} ch, 4 heads: median ms and peak MB vs tokens ==")
    cols = ("impl", "side", "tokens", "GFLOP", "ms", "min_ms", "others_pct", "peak_MB", "status")
    common.print_table([{k: r[k] for k in cols} for r in sorted(rows, key=lambda r: (r["impl"], r["side"]))])
    csv_path, png_path = os.path.join(out, "attention_sweep.csv"), os.path.join(out, "attention_sweep.png")
    with open(csv_path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    plot(rows, png_path)
    print(f"wrote {csv_path} and {png_path}")
    common.done(t_start)


if __name__ == "__main__":
    main()
