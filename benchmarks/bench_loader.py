"""Is the data loader the bottleneck? Loader images/s beside a ResNet18 training step's images/s.

    python benchmarks/bench_loader.py                          # embedded subset, 160 px, default workers
    python benchmarks/bench_loader.py --data data/imagenette2-160 --batches 50

Measures, at the same image size and batch size:
  1. loader: one pass over the train split (or --batches batches) with make_loader's defaults
     (decode + RandomResizedCrop + flip + normalise + collate), images/s without and with the first
     batch (which includes starting the workers);
  2. model: torchvision resnet18 (10 classes), Adam, forward + backward + step on a fixed batch;
  3. both together: the training loop fed by the loader, as a training run would see it.
When (1) is well above (2), the loader is not the bottleneck. Default run: about a minute on 2 CPU cores.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import torch
import torchvision

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))  # run from a checkout without installing
from lambdalib import data as D  # noqa: E402


def loader_rate(dataset, args, batches: int) -> tuple[float, float]:
    """Images/s over `batches` batches: (steady, i.e. after the first batch; including the first)."""
    loader = D.make_loader(dataset, batch_size=args.batch_size, shuffle=True, seed=0, workers=args.workers,
                           drop_last=True)
    start = time.perf_counter()
    seen, first = 0, None
    for k, (images, _) in enumerate(loader):
        if first is None:
            first = time.perf_counter()
        else:
            seen += len(images)
        if k + 1 >= batches:
            break
    end = time.perf_counter()
    return seen / (end - first), (seen + args.batch_size) / (end - start)


def train_step_rate(args, device: torch.device, steps: int) -> float:
    model = torchvision.models.resnet18(num_classes=10).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    images = torch.randn(args.batch_size, 3, args.img_size, args.img_size, device=device)
    labels = torch.randint(0, 10, (args.batch_size,), device=device)

    def step():
        optimizer.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(images), labels).backward()
        optimizer.step()

    step()  # warm-up: allocations, cudnn autotuning
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps * args.batch_size / (time.perf_counter() - start)


def end_to_end_rate(dataset, args, device: torch.device, steps: int) -> float:
    model = torchvision.models.resnet18(num_classes=10).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loader = D.make_loader(dataset, batch_size=args.batch_size, shuffle=True, seed=0, workers=args.workers,
                           drop_last=True)
    seen, start = 0, None
    for k, (images, labels) in enumerate(loader):
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        optimizer.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(images), labels).backward()
        optimizer.step()
        if start is None:  # first step: worker start-up and warm-up, not timed
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
        else:
            seen += len(images)
        if k >= steps:
            break
    if device.type == "cuda":
        torch.cuda.synchronize()
    return seen / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=None, help="also measure this data (folder, archive or official name)")
    parser.add_argument("--img-size", type=int, default=160)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=None, help="default: lambdalib.data.default_workers()")
    parser.add_argument("--batches", type=int, default=None,
                        help="loader batches to time (default: one epoch, at most 100)")
    parser.add_argument("--steps", type=int, default=3, help="timed ResNet18 training steps")
    args = parser.parse_args(argv)
    args.workers = D.default_workers() if args.workers is None else args.workers
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")

    print(f"device {device} | torch threads {torch.get_num_threads()} | cpu cores {os.cpu_count()} | "
          f"workers {args.workers} | batch {args.batch_size} | {args.img_size} px")
    sources = [("embedded", None)] + ([(args.data, args.data)] if args.data else [])
    rows = []
    for label, data in sources:
        dataset = D.NoisyImagenette(data, "train", noise=0.25, img_size=args.img_size)
        batches = min(args.batches or 100, len(dataset) // args.batch_size)
        steady, cold = loader_rate(dataset, args, batches)
        rows.append((f"loader: {label} ({len(dataset)} imgs, {batches} batches)", steady, cold))
    model_rate = train_step_rate(args, device, args.steps)
    rows.append(("resnet18 train step (Adam, synthetic batch)", model_rate, None))
    embedded = D.NoisyImagenette(None, "train", noise=0.25, img_size=args.img_size)
    both = end_to_end_rate(embedded, args, device, args.steps)
    rows.append((f"loader + train step: embedded ({args.steps} steps)", both, None))

    print(f"{'':56} {'images/s':>9} {'incl. start':>12}")
    for name, rate, cold in rows:
        print(f"{name:56} {rate:9.1f} {'' if cold is None else f'{cold:12.1f}'}")
    slowest = min(r[1] for r in rows[: len(sources)])
    verdict = "the loader is NOT the bottleneck" if slowest > 1.5 * model_rate else "the loader may limit training"
    print(f"loader / model = {slowest / model_rate:.1f}x: {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
