"""Loader throughput: the JPEG DataLoader path against the decoded-image cache, and what a training loop sees.

    python benchmarks/bench_loader.py                  # embedded set + ../shared sample if present; 64/128/160 px
    python benchmarks/bench_loader.py --sizes 64 --no-model --repeats 5
    python benchmarks/bench_loader.py --data data/imagenette2-160 --batches 50

Part 1, loader images/s PER CORE (one torch thread, no worker processes), per data source and image size:
  * jpeg:   data.make_loader(workers=0) over NoisyImagenette with data.train_transform / val_transform
            (decode + RandomResizedCrop + flip + ToTensor + Normalize + collate, every epoch);
  * cached: lambdalib.cache.CachedLoader over the decoded cache (random-resized crop + flip on uint8 in
            batches, normalise); eval: slices of the precomputed centre crops.
  Also the one-off cache build (cold: decode every image once, in --threads threads) and a warm open
  (key check + memory map), both in a temporary cache folder.
Part 2 (--no-model skips it), on all cores at --model-size on the embedded set: a torchvision resnet18
  training step (Adam) on a fixed batch; the training loop fed by each loader (jpeg: a fresh
  make_loader with the default workers, as train.py builds one per epoch; cached: CachedLoader); one
  evaluation pass over the val split (forward only) with each loader.
Timing: each repeat runs every variant once (interleaved); the best repeat is reported, `others%`
is the share of the machine's CPU other processes used during it (see README "Contention").
"""
from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torchvision

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))  # run from a checkout without installing
import common  # noqa: E402  (benchmarks/common.py: this script's folder is on sys.path)

from lambdalib import cache as C  # noqa: E402
from lambdalib import data as D  # noqa: E402
from lambdalib import device  # noqa: E402

SHARED_SAMPLE = Path(__file__).resolve().parents[2] / "shared" / "data" / "imagenette" / "sample"


class Timer:
    """Best-of-repeats images/s of named variants, with the contention during the best repeat."""

    def __init__(self):
        self.best: dict[str, tuple[float, float]] = {}

    def time(self, name: str, fn) -> None:
        others, start = common._others_cpu_s(), time.perf_counter()  # noqa: SLF001
        images = fn()
        wall = time.perf_counter() - start
        pct = 100 * max(0.0, common._others_cpu_s() - others) / (wall * os.cpu_count())  # noqa: SLF001
        rate = images / wall
        if rate > self.best.get(name, (0.0, 0.0))[0]:
            self.best[name] = (rate, min(pct, 100.0))

    def rate(self, name: str) -> float:
        return self.best[name][0]

    def others(self, *names: str) -> float:
        return max(self.best[n][1] for n in names)


def one_thread(fn):
    def wrapped():
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return fn()
        finally:
            torch.set_num_threads(threads)
    return wrapped


def drain(loader, batches: int | None = None) -> int:
    """Images in `batches` batches (passes over the loader again when one epoch has fewer; None: one pass)."""
    seen = k = 0
    while True:
        for images, _ in loader:
            seen += len(images)
            k += 1
            if batches is not None and k >= batches:
                return seen
        if batches is None:
            return seen


def crop_error(train, images: C.DecodedImages, size: int, n: int = 100) -> float:
    """Mean |our crop - torchvision's crop of the original JPEG| (0-255) for the same crop parameters:
    what storing the images at images.size costs in fidelity (0 when stored at the original size)."""
    from PIL import Image
    from torchvision.transforms import functional as TF

    rows = np.linspace(0, len(train) - 1, num=min(n, len(train))).astype(int)
    sizes = torch.as_tensor(images.sizes[rows])
    params = D.sample_crop_params(sizes[:, 0], sizes[:, 1], torch.Generator().manual_seed(0))
    pixels = torch.from_numpy(np.array(images.images[rows])).permute(0, 3, 1, 2)
    ours = device.resized_crop_batch(pixels, D.stored_boxes(params, sizes, images.size), size).permute(0, 2, 3, 1)
    errors = []
    for k, row in enumerate(rows):
        with Image.open(train.paths[row]) as image:
            ref = np.asarray(TF.resized_crop(image.convert("RGB"), *params[k].tolist(), [size, size]), dtype=float)
        errors.append(np.abs(ours[k].numpy() - ref).mean())
    return float(np.mean(errors))


def loader_table(label: str, source, sizes: list[int], args, cache_dir: Path) -> list[dict]:
    rows = []
    for size in sizes:
        train = D.NoisyImagenette(source, "train", noise=0.25, img_size=size)
        val = D.NoisyImagenette(source, "val", img_size=size)
        start = time.perf_counter()
        data = C.cached_loaders(train, val, img_size=size, batch_size=args.batch_size, cache_dir=cache_dir,
                                workers=args.threads, progress=False)
        cold = time.perf_counter() - start
        start = time.perf_counter()
        data = C.cached_loaders(train, val, img_size=size, batch_size=args.batch_size, cache_dir=cache_dir,
                                progress=False)
        warm = time.perf_counter() - start
        assert data.train_images.decoded == 0
        batches = args.batches
        timer = Timer()
        variants = {
            "jpeg train": lambda: drain(D.make_loader(train, batch_size=args.batch_size, shuffle=True, seed=0,
                                                      workers=0, drop_last=True), batches),
            "cached train": lambda: drain(data.train_loader(0), batches),
            "jpeg eval": lambda: drain(D.make_loader(val, batch_size=args.batch_size, shuffle=False, seed=0,
                                                     workers=0), batches),
            "cached eval": lambda: drain(data.val_loader, batches),
        }
        for name in ("cached train", "cached eval"):  # warm-up: first calls, the cache's pages, the allocator
            one_thread(variants[name])()
        for _ in range(args.repeats):
            if args.wait_quiet:
                common.wait_quiet(args.wait_quiet)
            for name, fn in variants.items():
                timer.time(name, one_thread(fn))
        rows.append(dict(
            data=f"{label} ({len(train)}/{len(val)})", px=size, store=data.train_images.size,
            jpeg_train=timer.rate("jpeg train"), cached_train=timer.rate("cached train"),
            x_train=timer.rate("cached train") / timer.rate("jpeg train"),
            jpeg_eval=timer.rate("jpeg eval"), cached_eval=timer.rate("cached eval"),
            x_eval=timer.rate("cached eval") / timer.rate("jpeg eval"),
            crop_err=crop_error(train, data.train_images, size),
            build_s=cold, open_s=warm, cache_MiB=data.cache_bytes / 2**20,
            others_pct=timer.others(*variants),
        ))
        print(f"  {label} {size} px done", flush=True)
    return rows


def model_table(args, device: torch.device, cache_dir: Path) -> list[dict]:
    size, bs = args.model_size, args.batch_size
    start = time.perf_counter()
    for split in ("train", "val"):  # what train.py does today before the first step: decode every image
        D.NoisyImagenette(None, split, img_size=size, check_images=True)
    checked_s = time.perf_counter() - start
    start = time.perf_counter()
    train = D.NoisyImagenette(None, "train", noise=0.25, img_size=size)
    val = D.NoisyImagenette(None, "val", img_size=size)
    data = C.cached_loaders(train, val, img_size=size, batch_size=bs, cache_dir=cache_dir, device=device,
                            progress=False)
    warm_s = time.perf_counter() - start
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    fixed = torch.randn(bs, 3, size, size, device=device), torch.randint(0, 10, (bs,), device=device)

    def step(images, labels):
        optimizer.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(images), labels).backward()
        optimizer.step()

    def fixed_steps() -> int:
        for _ in range(args.steps):
            step(*fixed)
        common.sync(device)
        return args.steps * bs

    def loop(loader) -> int:  # includes the loader's start-up (workers), as a training epoch does
        seen = 0
        for k, (images, labels) in enumerate(loader):
            step(images.to(device, non_blocking=True), labels.to(device, non_blocking=True))
            seen += len(images)
            if k + 1 >= args.steps:
                break
        common.sync(device)
        return seen

    @torch.no_grad()
    def evaluate(loader) -> int:
        model.eval()
        seen = 0
        for images, _ in loader:
            model(images.to(device))
            seen += len(images)
        model.train()
        common.sync(device)
        return seen

    workers = D.default_workers()
    timer = Timer()
    variants = {
        "step": fixed_steps,
        "jpeg loop": lambda: loop(D.make_loader(train, batch_size=bs, shuffle=True, seed=0, workers=workers,
                                                drop_last=True)),
        "cached loop": lambda: loop(data.train_loader(0)),
        "jpeg eval": lambda: evaluate(D.make_loader(val, batch_size=bs, shuffle=False, seed=0, workers=workers)),
        "cached eval": lambda: evaluate(data.val_loader),
    }
    step(*fixed)  # warm-up
    for _ in range(args.repeats):
        if args.wait_quiet:
            common.wait_quiet(args.wait_quiet)
        for name, fn in variants.items():
            timer.time(name, fn)
    n_all = len(train) + len(val)
    rows = [dict(what="start-up: datasets with check_images=True (decodes all)", img_s=n_all / checked_s,
                 seconds=checked_s, others_pct=float("nan")),
            dict(what="start-up: datasets + cached_loaders (warm cache)", img_s=n_all / warm_s, seconds=warm_s,
                 others_pct=float("nan")),
            dict(what=f"resnet18 train step (Adam, fixed batch, {args.steps} steps)", img_s=timer.rate("step"),
                 seconds=args.steps * bs / timer.rate("step"), others_pct=timer.others("step"))]
    for name, what in (("jpeg loop", f"loop + jpeg loader ({workers} workers, fresh)"),
                       ("cached loop", "loop + cached loader")):
        rows.append(dict(what=what, img_s=timer.rate(name), seconds=args.steps * bs / timer.rate(name),
                         others_pct=timer.others(name)))
    for name, what in (("jpeg eval", f"eval pass, {len(val)} val images, jpeg ({workers} workers)"),
                       ("cached eval", f"eval pass, {len(val)} val images, cached")):
        rows.append(dict(what=what, img_s=timer.rate(name), seconds=len(val) / timer.rate(name),
                         others_pct=timer.others(name)))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = common.base_parser(__doc__.split("\n")[0], repeats=5, warmup=1)
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 160], help="image sizes (px)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--batches", type=int, default=25,
                        help="batches per timed loader pass (a small split is passed over again)")
    parser.add_argument("--data", default=None, help="also measure this data (folder, archive or official name)")
    parser.add_argument("--no-sample", action="store_true", help=f"skip {SHARED_SAMPLE} even if present")
    parser.add_argument("--no-model", action="store_true", help="loader table only")
    parser.add_argument("--model-size", type=int, default=64, help="image size of part 2")
    parser.add_argument("--steps", type=int, default=8, help="training steps per timed pass in part 2")
    args = parser.parse_args(argv)
    if args.quick:
        args.sizes, args.batches, args.steps = args.sizes[:1], min(args.batches, 5), min(args.steps, 3)
    t_start = time.perf_counter()
    device = common.setup(args)
    sources = [("embedded", None)]
    if SHARED_SAMPLE.is_dir() and not args.no_sample:
        sources.append(("sample-224", str(SHARED_SAMPLE)))
    if args.data:
        sources.append((Path(args.data).name, args.data))
    cache_dir = Path(tempfile.mkdtemp(prefix="bench-loader-cache-"))
    try:
        rows = []
        for label, source in sources:
            rows += loader_table(label, source, args.sizes, args, cache_dir)
        print(f"\nloader images/s per core (1 torch thread, no workers; best of {args.repeats}); x = cached / jpeg; "
              f"build_s: decoding the cache once ({args.threads} threads), open_s: reopening it")
        common.print_table(rows, "{:.1f}")
        worst = min(min(r["x_train"], r["x_eval"]) for r in rows)
        print(f"smallest speed-up: {worst:.1f}x ({'meets' if worst >= 5 else 'misses'} the 5x goal)")
        if not args.no_model:
            print(f"\ntraining loop on {torch.get_num_threads()} threads, {args.model_size} px, batch "
                  f"{args.batch_size}, embedded set (best of {args.repeats})")
            common.print_table(model_table(args, device, cache_dir), "{:.1f}")
    finally:
        shutil.rmtree(cache_dir, ignore_errors=True)
    common.done(t_start)
    return 0


if __name__ == "__main__":
    sys.exit(main())
