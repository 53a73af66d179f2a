"""One command that checks lambdalib's CUDA paths and measures them against the bare training step (issue #23).

    python benchmarks/gpu_check.py --out results/gpu_check       # one GPU: budgeted at 8 minutes
    python benchmarks/gpu_check.py --dry-run --out /tmp/gpu      # tiny sizes on the CPU (CI runs this)

Checks (each passes or fails, with what it saw): this torch has kernels for the GPU (arch list); fp16 and
bf16 autocast train (fp16 with GradScaler); channels_last gives the contiguous model's outputs; torch.compile
trains and agrees with eager; the device data path (decoded images in GPU memory, whole-batch crops) gives
repeatable batches whose resize is torch's antialiased kernel; an interrupted and resumed run equals an
uninterrupted one; two deterministic runs are equal (and which ops had no deterministic kernel); the sync
audit (host syncs per training step, and torch.cuda.set_sync_debug_mode("error") over a training pass).

Throughput (images/s; default 160 px, batch 64, amp as 'auto' resolves, channels_last as 'auto'): for R18,
LR18_L2(rpe), LR18_L3(lc) and R34, side by side: the bare step (forward + loss + backward + Adam on one
fixed tensor), the trainer's loop (train._train_one_epoch) fed by the device data path and by the host data
path (a thread preparing batches ahead), their ratios to the bare step (goal: >= 0.90), and evaluation; R18
also compiled. The other six report models: the loop on the device path only, for the projection.

Projection of the report's 40-run grid (10 models x 4 noise levels, 160 px, 35 epochs, full Imagenette:
9,469 train / 3,925 val images): per run 35 x (9,469 / loop img/s + (3,925 + 640) / eval img/s) + the
measured start-up (model + warm cache onto the device); 640 = the batch-statistics subset. A model not
measured (dry run) is R of its depth plus the lambda layer's measured cost at that stage (see `estimate`).
Goals: <= 45 min on one H200, <= 5 h on one T4 (a verdict only for the GPU this ran on).

Data: the embedded set (data/imagenette-mini) re-saved at imagenette2-160's shape (short side 160, 4:3) in
a temporary folder; no download. Output: <out>/gpu_check.json and <out>/gpu_check.md. Exit status 1 when a
check fails (goals are reported, not enforced).
"""
from __future__ import annotations

import argparse
import itertools
import json
import math
import platform
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
from lambdalib import cache, models, registry, train  # noqa: E402
from lambdalib import data as D  # noqa: E402
from lambdalib import device as dev  # noqa: E402
from lambdalib.config import RunConfig  # noqa: E402
from lambdalib.imagenette import FULL_IMAGENETTE  # noqa: E402

NAMED = ("R18", "LR18_L2(rpe)", "LR18_L3(lc)", "R34")
GRID_EPOCHS, GRID_NOISE_LEVELS, BATCH_STATS_IMAGES = 35, 4, 640
GOALS_S = {"H200": 45 * 60, "T4": 5 * 3600}


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="results/gpu_check", help="folder for gpu_check.json and gpu_check.md")
    p.add_argument("--dry-run", action="store_true", help="tiny sizes on the CPU: the plumbing, not a measurement")
    p.add_argument("--device", default="auto", help="'auto', 'cuda', 'cuda:N' or 'cpu'")
    p.add_argument("--img-size", type=int, default=None, help="default 160 (dry run 32)")
    p.add_argument("--batch", type=int, default=None, help="default 64 (dry run 8)")
    p.add_argument("--steps", type=int, default=None, help="timed steps per measurement (default 40; dry run 2)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 10; dry run 1)")
    p.add_argument("--no-compile", action="store_true", help="skip torch.compile (check and R18 row)")
    args = p.parse_args(argv)
    small = args.dry_run
    args.img_size = args.img_size or (32 if small else 160)
    args.batch = args.batch or (8 if small else 64)
    args.steps = args.steps or (2 if small else 40)
    args.warmup = args.warmup or (1 if small else 10)
    if small and args.device == "auto":
        args.device = "cpu"
    return args


# ------------------------------------------------------------------------------------------ set-up
def make_data(folder: Path, side: int) -> Path:
    """The embedded images re-saved with short side `side` and a 4:3 shape, with the embedded CSV."""
    source, root = D.resolve_root(None), folder / f"imagenette-mini-{side}"
    for path in sorted(source.glob("*/*/*.JPEG")):
        target = root / path.relative_to(source)
        target.parent.mkdir(parents=True, exist_ok=True)
        with Image.open(path) as image:
            image.convert("RGB").resize((side * 4 // 3, side), Image.BICUBIC).save(target, quality=90)
    shutil.copy(source / "noisy_imagenette.csv", root / "noisy_imagenette.csv")
    return root


def amp_for(device: torch.device) -> str:
    return RunConfig.from_params(device=str(device)).resolved().amp if device.type == "cuda" else "off"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Setup:
    """What every measurement shares: device, precision, memory format, data, a scratch folder."""

    def __init__(self, args: argparse.Namespace, scratch: Path) -> None:
        self.args, self.scratch = args, scratch
        self.device = dev.pick_device(args.device)
        self.amp = amp_for(self.device)
        self.channels_last = dev.channels_last("auto", self.device)
        start = time.perf_counter()
        self.root = make_data(scratch, 64 if args.dry_run else 160)
        self.data_s = time.perf_counter() - start
        self.cached, self.startup_s = {}, {}

    def data(self, augment_on: str) -> cache.CachedData:
        """The cached loaders on `augment_on` (built once; the first also builds the decoded cache)."""
        if augment_on not in self.cached:
            sets = (D.NoisyImagenette(self.root, "train", img_size=self.args.img_size),
                    D.NoisyImagenette(self.root, "val", img_size=self.args.img_size))

            def build():
                return cache.cached_loaders(
                    *sets, img_size=self.args.img_size, batch_size=self.args.batch, device=self.device,
                    channels_last=self.channels_last, cache_dir=self.scratch / "cache", progress=False,
                    augment_on=augment_on, prefetch=cache.PREFETCH if self.device.type == "cuda" else 0)

            if not self.cached:
                start = time.perf_counter()
                build()  # decodes every image once: the cold start of the first run on a machine
                self.startup_s["cold cache"] = time.perf_counter() - start
            start = time.perf_counter()
            self.cached[augment_on] = build()  # a warm cache: what every later run pays
            sync(self.device)
            self.startup_s[augment_on] = time.perf_counter() - start
        return self.cached[augment_on]

    def model(self, name: str, compiled: bool = False):
        model = models.create(name, num_classes=10, img_size=self.args.img_size).to(self.device)
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
        backend = "eager" if self.args.dry_run else "inductor"  # dry run: the plumbing, not minutes of codegen
        net = torch.compile(model, backend=backend) if compiled else model
        return model, net, dev.adam(model.parameters(), lr=1e-3), torch.amp.GradScaler(
            self.device.type, enabled=self.amp == "fp16")

    def context(self, name: str, compiled: bool = False) -> train.Context:
        config = RunConfig.from_params(model=name, img_size=self.args.img_size, batch_size=self.args.batch,
                                       amp=self.amp, preset="fast", data=str(self.root))
        return train.Context(config, dev.Distributed(), self.device, dev.AMP_DTYPES[self.amp], self.channels_last,
                             self.scratch / "runs", progress=False, compiled=compiled)


def timed(fn, steps: int, warmup: int, device: torch.device) -> float:
    """Seconds per call of fn over `steps` calls after `warmup`."""
    for _ in range(warmup):
        fn()
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    sync(device)
    return (time.perf_counter() - start) / steps


# ------------------------------------------------------------------------------------------ measurements
def bare_step(s: Setup, name: str, compiled: bool = False, amp: str | None = None):
    """A training step on one fixed tensor: (step function, loss of the last call)."""
    torch.manual_seed(0)  # the same weights and batch for every variant
    model, net, optimizer, _ = s.model(name, compiled)
    amp = amp or s.amp
    scaler = torch.amp.GradScaler(s.device.type, enabled=amp == "fp16")
    x = torch.randn(s.args.batch, 3, s.args.img_size, s.args.img_size, device=s.device)
    x = x.contiguous(memory_format=torch.channels_last) if s.channels_last else x
    y = torch.randint(0, 10, (s.args.batch,), device=s.device)
    losses = []

    def step():
        optimizer.zero_grad(set_to_none=True)
        with dev.autocast(s.device, dev.AMP_DTYPES[amp]):
            loss = F.cross_entropy(net(x).float(), y)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        losses.append(loss.detach())

    return step, losses


def batches(data: cache.CachedData):
    """Training batches of epoch after epoch."""
    for seed in itertools.count():
        yield from data.train_loader(seed)


def loop_ips(s: Setup, name: str, augment_on: str, compiled: bool = False) -> tuple[float, float]:
    """(train images/s of the trainer's loop, eval images/s) on `augment_on`'s data path."""
    data, ctx = s.data(augment_on), s.context(name, compiled)
    model, net, optimizer, scaler = s.model(name, compiled)
    stream = batches(data)

    def run(n: int) -> None:
        train._train_one_epoch(ctx, net, itertools.islice(stream, n), optimizer, scaler, None)

    run(s.args.warmup)
    sync(s.device)
    start = time.perf_counter()
    run(s.args.steps)
    sync(s.device)
    train_ips = s.args.steps * s.args.batch / (time.perf_counter() - start)
    train.evaluate(model, data.val_loader, s.device, dev.AMP_DTYPES[s.amp], None, s.channels_last)  # warm
    start = time.perf_counter()
    train.evaluate(model, data.val_loader, s.device, dev.AMP_DTYPES[s.amp], None, s.channels_last)
    return train_ips, len(data.val_indices) / (time.perf_counter() - start)


def throughput(s: Setup, all_models: bool) -> list[dict]:
    rows = []
    for name in NAMED:
        step, _ = bare_step(s, name)
        row = dict(model=name, bare=s.args.batch / timed(step, s.args.steps, s.args.warmup, s.device))
        row["device"], row["eval"] = loop_ips(s, name, "device")
        row["host"], _ = loop_ips(s, name, "host")
        rows.append(row)
        print(f"  {name}: bare {row['bare']:.0f}, device path {row['device']:.0f}, host path {row['host']:.0f}, "
              f"eval {row['eval']:.0f} img/s", flush=True)
    if not s.args.no_compile:
        step, _ = bare_step(s, "R18", compiled=True)
        row = dict(model="R18 (compiled)", bare=s.args.batch / timed(step, s.args.steps, s.args.warmup, s.device))
        row["device"], row["eval"] = loop_ips(s, "R18", "device", compiled=True)
        rows.append(row)
    for name in registry.REPORT_MODELS if all_models else ():
        label = registry.report_label(name)
        if label not in NAMED:
            ips, eval_ips = loop_ips(s, label, "device")
            rows.append(dict(model=label, device=ips, eval=eval_ips))
            print(f"  {label}: device path {ips:.0f} img/s", flush=True)
    for row in rows:
        for path in ("device", "host"):
            if "bare" in row and path in row:
                row[f"{path}/bare"] = row[path] / row["bare"]
    return rows


def estimate(label: str, seconds: dict[str, float]) -> tuple[float, str]:
    """Seconds per image of a model, measured or, when not, R of its depth (R34 not measured: 2 x R18) plus
    the measured lambda-layer cost (LR18 - R18) at its stage, of either position when its own is missing."""
    if label in seconds:
        return seconds[label], "measured"
    spec = registry.SPECS[registry.resolve_name(label)]
    base = seconds.get(f"R{spec.depth}", 2 * seconds["R18"] * spec.depth / 36)
    if spec.stage is None:
        return base, "R18 x depth/18"
    costs = {(k.split("_L")[1][0], k.split("(")[1].rstrip(")")): v - seconds["R18"]
             for k, v in seconds.items() if k.startswith("LR18_")}
    site, pos = str(spec.stage), spec.position
    cost = costs.get((site, pos)) or next((v for (st, _), v in costs.items() if st == site), None)
    cost = cost if cost is not None else sum(costs.values()) / max(len(costs), 1)
    return base + cost, "R + measured lambda-layer cost at its stage"


def project(s: Setup, rows: list[dict]) -> dict:
    train_s = {r["model"]: 1 / r["device"] for r in rows if "(compiled)" not in r["model"]}
    eval_s = {r["model"]: 1 / r["eval"] for r in rows if "(compiled)" not in r["model"]}
    startup = s.startup_s.get("device", 0.0) + 2.0  # + model build, a rough 2 s
    runs, total = [], 0.0
    n_train, n_val = FULL_IMAGENETTE
    for name in registry.REPORT_MODELS:
        label = registry.report_label(name)
        t_train, how = estimate(label, train_s)
        t_eval, _ = estimate(label, eval_s)
        run_s = GRID_EPOCHS * (n_train * t_train + (n_val + BATCH_STATS_IMAGES) * t_eval) + startup
        total += GRID_NOISE_LEVELS * run_s
        runs.append(dict(model=label, run_min=run_s / 60, how=how))
    gpu = torch.cuda.get_device_name(s.device) if s.device.type == "cuda" else "CPU"
    goal = next((v for k, v in GOALS_S.items() if k in gpu), None)
    verdict = ("dry run: not a measurement" if s.args.dry_run else "no goal for this device (H200: 45 min, T4: 5 h)"
               if goal is None else ("met" if total <= goal else "missed") + f" (goal {goal / 60:.0f} min)")
    return dict(runs=runs, total_h=total / 3600, verdict=verdict, startup_s=startup,
                note=f"at {s.args.img_size} px, batch {s.args.batch}, amp {s.amp}; the grid is at 160 px, batch 64")


# ------------------------------------------------------------------------------------------ checks
def check_arch(s: Setup):
    if s.device.type != "cuda":
        return True, "CPU: nothing to check"
    why = dev.unsupported_gpu(s.device.index or 0)
    return why is None, why or f"{torch.cuda.get_device_name(s.device)} in {' '.join(torch.cuda.get_arch_list())}"


def check_amp(s: Setup, amp: str):
    step, losses = bare_step(s, "R18", amp=amp)
    for _ in range(3):
        step()
    values = torch.stack(losses).float().tolist()
    note = dev.precision_note(amp, s.device)
    return all(map(math.isfinite, values)), f"losses {', '.join(f'{v:.3f}' for v in values)}" + (
        f"; {note}" if note else "")


def check_channels_last(s: Setup):
    torch.manual_seed(0)
    model = models.create("R18", num_classes=10, img_size=s.args.img_size).to(s.device).eval()
    x = torch.randn(4, 3, s.args.img_size, s.args.img_size, device=s.device)
    with torch.no_grad():
        plain = model(x)
        model.to(memory_format=torch.channels_last)
        nhwc = model(x.contiguous(memory_format=torch.channels_last))
    diff = float((plain - nhwc).abs().max() / plain.abs().max().clamp(min=1e-6))
    return diff < 2e-2, f"largest difference / largest logit = {diff:.1e}"


def check_compile(s: Setup):
    start = time.perf_counter()
    eager, eager_losses = bare_step(s, "R18")
    compiled, compiled_losses = bare_step(s, "R18", compiled=True)
    for step in (eager, compiled, compiled, compiled):
        step()
    sync(s.device)
    a, b = float(eager_losses[0]), float(compiled_losses[0])
    ok = math.isfinite(b) and abs(a - b) <= 2e-2 * abs(a) and all(math.isfinite(float(v)) for v in compiled_losses)
    return ok, f"first loss eager {a:.4f}, compiled {b:.4f}; compile + 3 steps {time.perf_counter() - start:.0f} s"


def check_device_path(s: Setup):
    data = s.data("device")
    first = [x.clone() for x, _ in itertools.islice(data.train_loader(5), 2)]
    again = [x for x, _ in itertools.islice(data.train_loader(5), 2)]
    repeat = all(torch.equal(a, b) for a, b in zip(first, again))
    on_device = first[0].device.type == s.device.type and data.augment_on == "device"
    images = torch.randint(0, 256, (4, 3, 90, 120), dtype=torch.uint8, device=s.device)
    boxes = torch.tensor([[0, 0, 90, 120], [5, 7, 30, 40], [10, 60, 80, 60], [40, 50, 9, 9]], device=s.device)
    exact = dev.resized_crop_batch(images.float(), boxes, s.args.img_size)
    ours = dev.resized_crops(images, boxes, s.args.img_size)
    diff = float((ours - exact).abs().max())
    return repeat and on_device and diff <= 0.51, (f"batches on {first[0].device}, repeatable: {repeat}; resize vs "
                                                  f"torch's antialiased kernel: largest difference {diff:.3f} levels")


def tiny_config(s: Setup, results: Path, **overrides) -> RunConfig:
    small = s.args.dry_run
    params = dict(model="R18", data=str(s.root), results=str(results), epochs=2, img_size=32 if small else 64,
                  batch_size=8 if small else 32, train_per_class=4 if small else 32, val_per_class=2 if small else 16,
                  preset="fast", deterministic=True, workers=0, device=str(s.device))
    return RunConfig.from_params(**{**params, **overrides})


def same(a: Path, b: Path) -> bool:
    from lambdalib.record import TIMING_COLUMNS, read_history

    strip = lambda rows: [{k: v for k, v in r.items() if k not in TIMING_COLUMNS} for r in rows]  # noqa: E731
    return strip(read_history(a)) == strip(read_history(b))


def check_resume(s: Setup):
    full = train.run(tiny_config(s, s.scratch / "resume-full"), progress=False)
    cut = tiny_config(s, s.scratch / "resume-cut")
    try:
        train.run(cut, progress=False, stop_after_epoch=1)
    except KeyboardInterrupt:
        pass
    resumed = train.run(cut, progress=False)
    return same(full, resumed), "interrupted after epoch 1 and resumed == uninterrupted (2 epochs, deterministic)"


def check_deterministic(s: Setup):
    from lambdalib.record import load_summary

    a = train.run(tiny_config(s, s.scratch / "det-a"), progress=False)
    b = train.run(tiny_config(s, s.scratch / "det-b"), progress=False)
    ops = load_summary(a).get("nondeterministic_ops")
    return same(a, b), f"two runs equal: {same(a, b)}; ops without a deterministic kernel: {ops or 'none'}"


def check_syncs(s: Setup):
    data, counts = s.data("device"), []
    for n in (s.args.steps, 2 * s.args.steps):
        ctx = s.context("R18")
        model, net, optimizer, scaler = s.model("R18")
        with dev.HostSyncs() as syncs:
            train._train_one_epoch(ctx, net, itertools.islice(batches(data), n), optimizer, scaler, None)
        counts.append(syncs.count)
    detail = f"host syncs per pass of {s.args.steps} / {2 * s.args.steps} steps: {counts[0]} / {counts[1]}"
    ok = counts[0] == counts[1]
    if s.device.type == "cuda":
        ctx = s.context("R18")
        model, net, optimizer, scaler = s.model("R18")

        def strict():
            torch.cuda.set_sync_debug_mode("error")
            try:
                yield from itertools.islice(batches(data), s.args.steps)
            finally:
                torch.cuda.set_sync_debug_mode("default")

        try:
            train._train_one_epoch(ctx, net, strict(), optimizer, scaler, None)
            detail += "; set_sync_debug_mode('error') over the steps: no sync"
        except RuntimeError as err:
            ok, detail = False, detail + f"; a synchronising call: {str(err).splitlines()[0]}"
    return ok, detail


def checks(s: Setup) -> list[dict]:
    todo = [("arch list", check_arch), ("fp16 autocast + GradScaler", lambda s: check_amp(s, "fp16")),
            ("bf16 autocast", lambda s: check_amp(s, "bf16")), ("channels_last", check_channels_last),
            ("device data path", check_device_path), ("sync audit", check_syncs), ("exact resume", check_resume),
            ("deterministic mode", check_deterministic)]
    if not s.args.no_compile:
        todo.insert(4, ("torch.compile", check_compile))
    results = []
    for name, check in todo:
        start = time.perf_counter()
        try:
            ok, detail = check(s)
        except Exception as err:  # noqa: BLE001  (a check that breaks is a failed check, with its reason)
            ok, detail = False, f"{type(err).__name__}: {' '.join(str(err).split())[:300]}"
            traceback.print_exc()
        results.append(dict(check=name, ok=bool(ok), detail=detail, seconds=round(time.perf_counter() - start, 1)))
        print(f"  {'ok  ' if ok else 'FAIL'} {name}: {detail}", flush=True)
    return results


# ------------------------------------------------------------------------------------------ report
def markdown(report: dict) -> str:
    env, lines = report["environment"], []
    lines += ["# GPU check (benchmarks/gpu_check.py, issue #23)", "",
              f"{env['device']}, torch {env['torch']} (CUDA {env['cuda']}, arch {env['arch']}), "
              f"{env['date']}, commit {env['git']}" + (" — **dry run: tiny sizes, not a measurement**"
                                                       if report["dry_run"] else ""), "",
              "## Checks", "", "| check | result | what it saw | s |", "|---|---|---|---|"]
    lines += [f"| {c['check']} | {'ok' if c['ok'] else '**FAIL**'} | {c['detail'].replace('|', '/')} | {c['seconds']} |"
              for c in report["checks"]]
    t = report["settings"]
    lines += ["", f"## Throughput (images/s; {t['img_size']} px, batch {t['batch']}, amp {t['amp']}, "
              f"channels_last {t['channels_last']}; goal: loop >= 0.90 x bare step)", "",
              "| model | bare step | loop, device data path | / bare | loop, host data path | / bare | eval |",
              "|---|---|---|---|---|---|---|"]

    def cell(row, key, fmt="{:.0f}"):
        return fmt.format(row[key]) if key in row else ""

    for r in report["throughput"]:
        lines.append(f"| {r['model']} | {cell(r, 'bare')} | {cell(r, 'device')} | {cell(r, 'device/bare', '{:.2f}')} "
                     f"| {cell(r, 'host')} | {cell(r, 'host/bare', '{:.2f}')} | {cell(r, 'eval')} |")
    p = report["projection"]
    lines += ["", "## The report's 40-run grid, projected", "",
              f"35 epochs x (9,469 / loop img/s + 4,565 / eval img/s) + {p['startup_s']:.1f} s start-up per run, "
              f"x 4 noise levels; {p['note']}.", "", "| model | minutes a run | from |", "|---|---|---|"]
    lines += [f"| {r['model']} | {r['run_min']:.1f} | {r['how']} |" for r in p["runs"]]
    lines += ["", f"**40 runs: {p['total_h'] * 60:.0f} min ({p['total_h']:.2f} h) on this device — {p['verdict']}.**",
              ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="lambdalib-gpu-check-") as scratch:
        s = Setup(args, Path(scratch))
        gpu = s.device.type == "cuda"
        print(f"gpu_check on {torch.cuda.get_device_name(s.device) if gpu else 'CPU'} (amp {s.amp}); data "
              f"{s.data_s:.0f} s", flush=True)
        results = checks(s)
        print("throughput:", flush=True)
        rows = throughput(s, all_models=not args.dry_run)
        projection = project(s, rows)
    report = dict(
        dry_run=args.dry_run, seconds=round(time.perf_counter() - start, 1), checks=results, throughput=rows,
        projection=projection, settings=dict(img_size=args.img_size, batch=args.batch, steps=args.steps,
                                             warmup=args.warmup, amp=s.amp, channels_last=s.channels_last),
        environment=dict(device=torch.cuda.get_device_name(s.device) if gpu else f"CPU ({platform.machine()})",
                         torch=torch.__version__, cuda=torch.version.cuda, arch=" ".join(torch.cuda.get_arch_list()),
                         date=time.strftime("%Y-%m-%d"), git=dev.git_commit()))
    (out / "gpu_check.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "gpu_check.md").write_text(markdown(report))
    print(f"{out / 'gpu_check.md'}: {sum(c['ok'] for c in results)}/{len(results)} checks passed, 40-run grid "
          f"{projection['total_h'] * 60:.0f} min ({projection['verdict']}); {report['seconds']:.0f} s in all")
    return 0 if all(c["ok"] for c in results) else 1


if __name__ == "__main__":
    sys.exit(main())
