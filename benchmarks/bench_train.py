"""Whole runs of `lambdalib train`, end to end as a user starts them, on the three data/precision paths.

Each run is a fresh process, `python -m lambdalib.cli train --model M --img-size S --epochs 2 --batch-size 64
--data embedded --results <temporary folder>`, with one of:

  a  workers      `--loader workers --amp off --channels-last off`   (the old path: JPEG DataLoader workers)
  b  cached       `--loader cached --amp off --channels-last off`    (the new default on a CPU)
  c  cached+bf16  `--loader cached --amp bf16 --channels-last on`

What is measured, per run (times on one clock: the bench's time.time() and the record files' mtimes):
  * wall_s      the whole process, from launch to exit;
  * startup_s   launch -> the trainer's first record write (summary.json appears), which happens right
                before the first training step: interpreter, imports, data (cache build or image check),
                model build (incl. the FLOP count), optimizer, first record;
  * train_s / eval_s  per epoch, from history.csv: train = train images / train_images_per_s, eval =
                epoch_time_s - train (the evaluation pass over the val split);
  * between_s   the loop's time outside epoch_time_s (checkpoints + record writes after each epoch);
  * tail_s      last epoch's record write -> process exit (final record, last.pt removal, teardown);
  * img_s e1/e2 history.csv's train_images_per_s of epoch 1 and 2 (epoch 1 pays one-off warm-ups);
  * bare_img_s  the bare training step (zero_grad, forward + cross-entropy under the run's precision,
                backward, fused Adam, as the trainer builds it) on a fixed random batch of the same model,
                size, precision and memory format, in this process with the same thread count, median
                over --bare-steps steps after warm-up (as benchmarks/bench_train_step.py measures it);
  * loop/bare   img_s e2 / bare_img_s (goal >= 0.90: the loop within 10 % of the bare step);
  * c/a         wall time of (a) / wall time of (c) for the same model and size (goal >= 1.6 at 64 px);
  * cache       whether the run built the decoded-image cache (cold) or found it (warm); the bench
                points $LAMBDALIB_CACHE_DIR at a fresh temporary folder, so the first cached run of each
                size is cold, as a user's first run is.

    python benchmarks/bench_train.py                        # 64 and 128 px, R18 + LR18_L2(rpe), a/b/c
    python benchmarks/bench_train.py --sizes 64 --models R18 --configs a,b
    python benchmarks/bench_train.py --quick                # smoke run: 1 epoch, 8 images/class, 64 px

All runs go one after another on all cores (the training process picks its own threads, as for a user).
On a CPU without native bf16 (no AVX512-BF16 / AMX) the (c) runs are 6-10x slower than (a): ~9 min each
at 64 px on a 2-core VM; `--configs a,b` skips them. On a shared Linux box note that `nice` only ranks
processes within one session when the kernel groups sessions (/proc/sys/kernel/sched_autogroup_enabled);
`echo N > /proc/self/autogroup` sets the whole session's weight.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))  # run from a checkout without installing
import common  # noqa: E402  (benchmarks/common.py)

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {
    "a": ("workers", ["--loader", "workers", "--amp", "off", "--channels-last", "off"]),
    "b": ("cached", ["--loader", "cached", "--amp", "off", "--channels-last", "off"]),
    "c": ("cached+bf16+cl", ["--loader", "cached", "--amp", "bf16", "--channels-last", "on"]),
}
PRECISION = {"a": ("off", False), "b": ("off", False), "c": ("bf16", True)}  # (amp, channels_last)


def _files(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()} if folder.exists() else set()


def _read_history(path: Path) -> list[dict]:
    try:
        with open(path, newline="") as f:
            return list(csv.DictReader(f))
    except OSError:
        return []


def _others_and_children() -> float:
    """CPU seconds the machine was busy minus this process's and its waited-for children's (the run and its
    loader workers): what other tenants of the machine used."""
    own = os.times()
    return common._others_cpu_s() - own.children_user - own.children_system  # noqa: SLF001


def one_run(model: str, size: int, key: str, args, work: Path, cache_dir: Path) -> dict:
    """Launch one `lambdalib train` process, watch its record, and return the measured row."""
    results = work / f"{key}_{size}_{model.replace('(', '-').replace(')', '')}"
    cmd = [sys.executable, "-m", "lambdalib.cli", "train", "--model", model, "--img-size", str(size),
           "--epochs", str(args.epochs), "--batch-size", str(args.batch), "--data", args.data,
           "--results", str(results), "--device", args.device, *CONFIGS[key][1], *args.extra]
    env = {**os.environ, "LAMBDALIB_CACHE_DIR": str(cache_dir)}
    cache_before = _files(cache_dir)
    if args.wait_quiet:
        common.wait_quiet(args.wait_quiet)
    others0, t0 = _others_and_children(), time.time()
    log = open(work / (results.name + ".log"), "w")
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    summary_path = None
    seen_mtime, first_record, epoch_done = None, None, {}
    while True:
        finished = proc.poll() is not None
        if summary_path is None:
            found = list(results.glob("runs/*/summary.json"))
            summary_path = found[0] if found else None
        if summary_path is not None:
            try:
                mtime = summary_path.stat().st_mtime
            except OSError:
                mtime = None
            if mtime is not None and mtime != seen_mtime:
                seen_mtime = mtime
                first_record = mtime if first_record is None else first_record
                rows = len(_read_history(summary_path.parent / "history.csv"))
                epoch_done.setdefault(rows, mtime)  # first write that shows `rows` finished epochs
        if finished:
            break
        time.sleep(0.05)
    wall = time.time() - t0
    others = max(0.0, _others_and_children() - others0)
    log.close()
    if proc.returncode:
        tail = (work / (results.name + ".log")).read_text().strip().splitlines()[-5:]
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}:\n" + "\n".join(tail))
    run_dir = summary_path.parent
    summary = json.loads(summary_path.read_text())
    history = _read_history(run_dir / "history.csv")
    n_train = summary["train_images"]
    epoch_s = [float(r["epoch_time_s"]) for r in history]
    ips = [float(r["train_images_per_s"]) for r in history]
    train_s = [n_train / v for v in ips]
    eval_s = [e - t for e, t in zip(epoch_s, train_s)]
    last_epoch_write = epoch_done.get(len(history), first_record)
    loop_s = last_epoch_write - first_record
    cache_after = _files(cache_dir)
    state = "-" if key == "a" else ("cold" if cache_after - cache_before else "warm")
    others_pct = 100 * others / (wall * os.cpu_count())
    return dict(model=model, px=size, config=key, path=CONFIGS[key][0], cache=state, wall_s=wall,
                startup_s=first_record - t0, train_s=sum(train_s), eval_s=sum(eval_s),
                between_s=loop_s - sum(epoch_s), tail_s=t0 + wall - last_epoch_write,
                img_s_e1=ips[0], img_s_e2=ips[-1], status=summary["status"], precision=summary.get("precision"),
                channels_last=summary.get("channels_last"), loader=summary.get("loader"),
                workers=summary.get("loader_workers"), threads=summary.get("environment", {}).get("device"),
                others_pct=min(others_pct, 100.0), log=str(work / (results.name + ".log")))


def bare_step(model_name: str, size: int, amp: str, channels_last: bool, args) -> float:
    """Images/s of the bare training step, median over args.bare_steps after args.bare_warmup steps."""
    from lambdalib.models import create

    torch.manual_seed(0)
    device = torch.device(args.device)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = create(model_name, num_classes=10, img_size=size).to(device, memory_format=fmt).train()
    try:
        opt = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)  # what device.adam picks on this torch
    except (RuntimeError, ValueError):
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.randn(args.batch, 3, size, size, device=device).contiguous(memory_format=fmt)
    y = torch.randint(0, 10, (args.batch,), device=device)
    dtype = {"off": None, "bf16": torch.bfloat16}[amp]

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = F.cross_entropy(model(x).float(), y)
        loss.backward()
        opt.step()

    times = common.interleaved({"step": step}, device, args.bare_steps, args.bare_warmup,
                               quiet_s=args.wait_quiet)["step"]
    return args.batch / statistics.median(times) * 1000


def import_time(repeats: int = 3) -> tuple[float, float]:
    """Best-of wall time of a bare interpreter and of `import lambdalib.train` (what `train` imports)."""
    def best(code: str) -> float:
        out = []
        for _ in range(repeats):
            start = time.perf_counter()
            subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)
            out.append(time.perf_counter() - start)
        return min(out)

    return best("pass"), best("import lambdalib.cli, lambdalib.train")


def _native_bf16() -> bool:
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return True  # unknown: say nothing


def main(argv: list[str] | None = None) -> int:
    t_start = time.perf_counter()
    p = common.base_parser(__doc__, repeats=1, warmup=0)
    p.add_argument("--models", default="R18,LR18_L2(rpe)")
    p.add_argument("--sizes", default="64,128")
    p.add_argument("--configs", default="a,b,c", help="comma-separated keys of CONFIGS (a, b, c)")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--data", default="embedded")
    p.add_argument("--bare-steps", type=int, default=8, help="timed steps of the bare training step")
    p.add_argument("--bare-warmup", type=int, default=3)
    p.add_argument("--no-bare", action="store_true", help="skip the in-process bare-step measurement")
    p.add_argument("--keep", metavar="DIR", help="write the run folders, logs and cache here (kept) instead of a "
                                                 "temporary folder")
    p.add_argument("--csv", metavar="PATH", help="also write the rows as CSV")
    p.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="further `lambdalib train` flags")
    args = p.parse_args(argv)
    if args.quick:
        args.epochs, args.sizes, args.bare_steps, args.bare_warmup = 1, "64", 3, 1
        args.extra = [*args.extra, "--train-per-class", "8", "--val-per-class", "4"]
    common.setup(args)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    sizes = [int(s) for s in args.sizes.split(",")]
    keys = [k.strip() for k in args.configs.split(",") if k.strip()]
    print(f"runs: {models} x {sizes} px x configs {keys}, {args.epochs} epochs, batch {args.batch}, "
          f"data {args.data}; " + "; ".join(f"{k} = {CONFIGS[k][0]} ({' '.join(CONFIGS[k][1])})" for k in keys))
    if "c" in keys and args.device == "cpu" and not _native_bf16():
        print("note: this CPU has no native bf16 (torch.ops.mkldnn._is_mkldnn_bf16_supported() is False): "
              "the bf16 runs (c) will be many times slower than fp32")
    interp_s, import_s = import_time()
    print(f"interpreter start {interp_s:.2f} s; `import lambdalib.cli, lambdalib.train` {import_s:.2f} s "
          f"(best of 3, fresh processes, warm file cache)")

    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bench_train_"))
    work.mkdir(parents=True, exist_ok=True)
    cache_dir = work / "cache"
    rows: list[dict] = []
    try:
        for size in sizes:
            size_rows = []
            for model in models:
                for key in keys:
                    row = one_run(model, size, key, args, work, cache_dir)
                    print(f"  {model} {size}px {key} ({row['path']}): wall {row['wall_s']:.1f} s, start-up "
                          f"{row['startup_s']:.2f} s, {row['img_s_e2']:.0f} img/s, {row['status']}", flush=True)
                    size_rows.append(row)
            if not args.no_bare:
                bare: dict[tuple, float] = {}
                for row in size_rows:
                    amp, cl = PRECISION[row["config"]]
                    k = (row["model"], size, amp, cl)
                    if k not in bare:
                        bare[k] = bare_step(row["model"], size, amp, cl, args)
                    row["bare_img_s"] = bare[k]
                    row["loop_bare"] = row["img_s_e2"] / bare[k]
            rows += size_rows
            _print_tables(rows, args, interp_s, import_s)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    if args.csv:
        with open(args.csv, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    common.done(t_start)
    return 0


def _print_tables(rows: list[dict], args, interp_s: float, import_s: float) -> None:
    wall = {(r["model"], r["px"], r["config"]): r["wall_s"] for r in rows}
    table = []
    for r in rows:
        a = wall.get((r["model"], r["px"], "a"))
        table.append(dict(
            model=r["model"], px=r["px"], cfg=f"{r['config']} {r['path']}", cache=r["cache"], wall_s=r["wall_s"],
            startup_s=r["startup_s"], train_s=r["train_s"], eval_s=r["eval_s"], between_s=r["between_s"],
            tail_s=r["tail_s"], img_s_e1=r["img_s_e1"], img_s_e2=r["img_s_e2"],
            bare_img_s=r.get("bare_img_s", float("nan")), loop_bare=r.get("loop_bare", float("nan")),
            x_wall_a=(a / r["wall_s"]) if a else float("nan"), others_pct=r["others_pct"]))
    print(f"\n== whole runs: {args.epochs} epochs, batch {args.batch}, {args.data} ==")
    common.print_table(table)
    print(f"(start-up includes the interpreter, {interp_s:.2f} s, and the imports, {import_s - interp_s:.2f} s "
          "on top of it)")
    goals = []
    for r in table:
        verdicts = [f"loop/bare {'PASS' if r['loop_bare'] >= 0.90 else 'FAIL'}" if r["loop_bare"] == r["loop_bare"]
                    else "loop/bare -",
                    f"start-up<2s {'PASS' if r['startup_s'] < 2 else 'FAIL'}"]
        if r["cfg"].startswith("c") and r["px"] == 64:
            verdicts.append(f"c/a>=1.6 {'PASS' if r['x_wall_a'] >= 1.6 else 'FAIL'}")
        goals.append(dict(model=r["model"], px=r["px"], cfg=r["cfg"], cache=r["cache"], goals=", ".join(verdicts)))
    common.print_table(goals)


if __name__ == "__main__":
    raise SystemExit(main())
