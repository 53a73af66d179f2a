"""Training: one function, `run(config)`, that leaves a run record every table and figure is built from.

Run record (results/runs/<run_id>/):
    config.json    the RunConfig
    history.csv    one row per epoch (HISTORY_COLUMNS)
    summary.json   status, best losses/accuracy and their epochs, times, params, FLOPs, environment
    last.pt        model, optimizer, scheduler, grad-scaler and history after the last good epoch; kept
                   once the run is complete only with checkpoints="best+last" (a finished run never resumes)
    best.pt        model weights at the best validation loss (not with checkpoints="none")

Every file is written to a temporary name and renamed, so a crash never leaves half a record. Resume
is at epoch granularity: re-running the same config continues after the last saved epoch. Every epoch
reseeds all RNGs from (seed, epoch, rank) and the loader order from (seed, epoch), so an interrupted
and resumed run computes exactly what an uninterrupted one does (tested on CPU). Ctrl-C keeps the
last finished epoch, marks the record "interrupted" and exits; at most one epoch's work is lost.

Divergence (see `divergence`): a non-finite loss, a train loss above diverge_factor x ln(classes), or
a val loss above diverge_factor x its start, ends the run as "diverged at epoch N" (summary.json says
why); last.pt stays at epoch N-1.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
import platform
import random
import subprocess
import time
from collections import Counter
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as torch_dist
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from . import data as data_lib
from . import models
from .config import RunConfig
from .paths import project_root

HISTORY_COLUMNS = [
    "epoch", "lr", "train_loss", "train_acc", "val_loss", "val_acc",
    "grad_norm_mean", "grad_norm_max", "epoch_time_s", "train_images_per_s", "finite",
]
TIMING_COLUMNS = ("epoch_time_s", "train_images_per_s")  # the only columns allowed to differ between repeats
FINISHED = ("complete", "diverged")


# ------------------------------------------------------------------------------------- plumbing
def atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def atomic_torch_save(obj: Any, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


class RunBusyError(ValueError):
    """Another live process on this machine is training the same run folder."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    return True


def acquire_run_lock(run_dir: Path) -> Path:
    """One trainer per run folder: two processes on the same run would interleave their writes.

    The lock file names its owner (pid, host). A lock whose owner is dead, is this process, or sits on
    another host (a lost Colab session's, on a shared drive) is taken over, with a note for the latter.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    lock, host = run_dir / ".lock", platform.node()
    for _ in range(2):
        try:
            handle = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                owner = json.loads(lock.read_text())
            except (OSError, ValueError):
                owner = {}
            pid = owner.get("pid")
            if owner.get("host") == host and isinstance(pid, int) and pid != os.getpid() and _pid_alive(pid):
                raise RunBusyError(f"{run_dir} is being trained by process {pid} on this machine; wait for it "
                                   f"or stop it (a lock left by a crash is taken over automatically)") from None
            if owner.get("host") not in (None, host):
                print(f"note: taking over {lock} left by {owner.get('host')}")
            lock.unlink(missing_ok=True)
            continue
        with os.fdopen(handle, "w") as out:
            json.dump({"pid": os.getpid(), "host": host}, out)
        return lock
    raise RunBusyError(f"could not take {lock}: another process keeps recreating it")


def read_history(run_dir: Path) -> list[dict]:
    """history.csv -> list of dicts with numbers parsed."""
    rows = []
    with open(run_dir / "history.csv", newline="") as handle:
        for row in csv.DictReader(handle):
            rows.append({k: (v == "True" if k == "finite" else int(v) if k == "epoch" else float(v))
                         for k, v in row.items()})
    return rows


def _history_csv(history: list[dict]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=HISTORY_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(history)
    return out.getvalue()


def git_commit() -> str:
    try:
        root = project_root()
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
                                capture_output=True, text=True, timeout=10).stdout.strip()
        # outputs under results/ (regenerated, committed) do not make the code dirty
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no", "--",
                                ".", ":(exclude)results"], capture_output=True, text=True, timeout=10).stdout.strip()
        return (commit + ("-dirty" if dirty else "")) if commit else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def environment(device: torch.device, world_size: int) -> dict[str, Any]:
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = platform.processor() or platform.machine()
        name = f"CPU ({name}, {torch.get_num_threads()} threads)"
    return dict(torch=torch.__version__, python=platform.python_version(), device=name,
                world_size=world_size, git_commit=git_commit(), platform=platform.platform())


@dataclass
class Distributed:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    def all_sum(self, values: list[float], device: torch.device) -> list[float]:
        if not self.enabled:
            return values
        tensor = torch.tensor(values, dtype=torch.float64, device=device)
        torch_dist.all_reduce(tensor)
        return tensor.tolist()


def _setup_distributed(config: RunConfig) -> Distributed:
    """torchrun sets WORLD_SIZE/RANK/LOCAL_RANK; NCCL on CUDA, gloo on CPU."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Distributed()
    dist = Distributed(int(os.environ["RANK"]), world_size, int(os.environ.get("LOCAL_RANK", "0")))
    if not torch_dist.is_initialized():
        use_cuda = torch.cuda.is_available() and config.device != "cpu"
        if use_cuda:
            torch.cuda.set_device(dist.local_rank)
        torch_dist.init_process_group("nccl" if use_cuda else "gloo")
    return dist


def _pick_device(config: RunConfig, dist: Distributed) -> torch.device:
    if config.device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", dist.local_rank)
        return torch.device("cpu")
    device = torch.device(config.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={config.device!r} but CUDA is not available here; use device='auto' or 'cpu'")
    if device.type == "cuda" and dist.enabled:
        device = torch.device("cuda", dist.local_rank)
    return device


def _amp_dtype(config: RunConfig, device: torch.device) -> torch.dtype | None:
    if config.amp == "off" or device.type != "cuda":
        return None
    if config.amp == "fp16":
        return torch.float16
    # native bf16 from Ampere (8.x) on; is_bf16_supported() also says yes to emulated bf16 on T4/P100
    if config.amp == "bf16" or torch.cuda.get_device_capability(device)[0] >= 8:
        return torch.bfloat16
    return torch.float16  # P100 / T4 / V100: fp16 with a grad scaler


def _adam(model: nn.Module, config: RunConfig) -> torch.optim.Adam:
    """Fused Adam where this torch/device has it (one kernel for all tensors, 5x faster than the
    per-tensor loop on CPU; the same update rule), else the plain one (e.g. CPU before torch 2.4)."""
    try:
        return torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay, fused=True)
    except (RuntimeError, ValueError):
        return torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def epoch_seed(seed: int, epoch: int, rank: int = 0) -> int:
    return (seed * 1_000_003 + epoch * 9_973 + rank * 101) % 2**31


# ----------------------------------------------------------------------------------- the loop
def _train_one_epoch(model, loader, optimizer, scaler, amp_dtype, config, device, dist, channels_last, bar):
    model.train()
    losses, sizes, corrects, norms, finite = [], [], [], [], True
    max_norm = config.grad_clip if config.grad_clip > 0 else math.inf
    for step, (images, labels) in enumerate(loader, 1):
        images = images.to(device, non_blocking=True)
        labels = labels.to(device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=amp_dtype) if amp_dtype else nullcontext():
            logits = model(images)
            loss = F.cross_entropy(logits.float(), labels)
        ok = bool(torch.isfinite(loss))  # the step's one host sync: a non-finite loss stops at once
        if dist.enabled:  # every rank must stop together
            ok = dist.all_sum([0.0 if ok else 1.0], device)[0] == 0
        if not ok:
            finite = False
            break
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        norms.append(torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm))
        scaler.step(optimizer)
        scaler.update()
        # statistics stay on the device until the epoch ends (no per-step GPU syncs)
        losses.append(loss.detach())
        sizes.append(len(labels))
        corrects.append((logits.argmax(1) == labels).sum())
        bar.update(len(labels) * dist.world_size)
        if not bar.disable and step % 10 == 0:
            bar.set_postfix(loss=f"{float(losses[-1]):.3f}", acc=f"{float(corrects[-1]) / len(labels):.3f}", refresh=False)
    loss_sum = float((torch.stack(losses).cpu().double() * torch.tensor(sizes, dtype=torch.float64)).sum()) \
        if losses else 0.0
    correct = int(torch.stack(corrects).sum()) if corrects else 0
    loss_sum, correct, count = dist.all_sum([loss_sum, correct, sum(sizes)], device)
    finite = finite and math.isfinite(loss_sum)
    # fp16: a step whose gradients overflow is skipped by the scaler (infinite norm), not a divergence
    norm_values = [n for n in torch.stack(norms).cpu().double().tolist() if math.isfinite(n)] if norms else []
    return dict(
        train_loss=loss_sum / count if (count and finite) else math.nan,
        train_acc=correct / count if count else math.nan,
        grad_norm_mean=float(np.mean(norm_values)) if norm_values else math.nan,
        grad_norm_max=float(np.max(norm_values)) if norm_values else math.nan,
        finite=finite, images=int(count),
    )


@torch.no_grad()
def evaluate(model: nn.Module, loader, device: torch.device, amp_dtype=None, dist: Distributed | None = None,
             channels_last: bool = False) -> tuple[float, float]:
    """Mean cross-entropy and top-1 accuracy over the loader (summed over ranks under DDP)."""
    model.eval()
    loss_sum, correct, count = 0.0, 0, 0
    for images, labels in loader:
        images, labels = images.to(device), labels.to(device)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=amp_dtype) if amp_dtype else nullcontext():
            logits = model(images).float()
        loss_sum += float(F.cross_entropy(logits, labels, reduction="sum"))
        correct += int((logits.argmax(1) == labels).sum())
        count += len(labels)
    if dist is not None:
        loss_sum, correct, count = dist.all_sum([loss_sum, correct, count], device)
    return loss_sum / max(count, 1), correct / max(count, 1)


def divergence(row: dict, history: list[dict], factor: float, classes: int) -> str:
    """Why this epoch counts as diverged ("" if it does not).

    An untrained net's loss is about ln(classes). A train loss far above that has exploded. The val
    loss is compared with its own start (the first epoch's, at least ln(classes)): early in training
    BatchNorm's running statistics can put a val loss at 10-1000 while training is healthy, and that
    is the start a later explosion (the report's 71622.614) must be measured against.
    """
    if not row["finite"]:
        return "non-finite loss"
    chance = math.log(classes)
    if row["train_loss"] > factor * chance:
        return f"train loss {row['train_loss']:.4g} > {factor:g} x ln({classes})"
    start = max(history[0]["val_loss"] if history else row["val_loss"], chance)
    if row["val_loss"] > factor * start:
        return f"val loss {row['val_loss']:.4g} > {factor:g} x its start {start:.4g}"
    return ""


def summarize(history: list[dict], status: str, diverged_at: int | None, extra: dict) -> dict:
    """The summary.json fields derived from a history; bests come from the epochs before any divergence."""
    good = [r for r in history if r["epoch"] != diverged_at]

    def best(column: str, pick=min) -> tuple[float | None, int | None]:
        rows = [r for r in good if math.isfinite(r[column])]
        if not rows:
            return None, None
        row = pick(rows, key=lambda r: r[column])
        return row[column], row["epoch"]

    best_train, best_train_epoch = best("train_loss")
    best_val, best_val_epoch = best("val_loss")
    best_acc, best_acc_epoch = best("val_acc", max)
    return dict(
        status=status, diverged_at=diverged_at, epochs_done=len(history),
        best_train_loss=best_train, best_train_loss_epoch=best_train_epoch,
        best_val_loss=best_val, best_val_loss_epoch=best_val_epoch,
        best_val_acc=best_acc, best_val_acc_epoch=best_acc_epoch,
        train_time_s=sum(r["epoch_time_s"] for r in history),
        mean_train_images_per_s=float(np.mean([r["train_images_per_s"] for r in history])) if history else None,
        **extra,
    )


def first_per_class(targets, per_class: int) -> list[int]:
    """Indices of the first `per_class` items of each class (all items when per_class is 0)."""
    if per_class <= 0:
        return list(range(len(targets)))
    seen: Counter = Counter()
    keep = []
    for index, target in enumerate(map(int, targets)):
        seen[target] += 1
        if seen[target] <= per_class:
            keep.append(index)
    return keep


def load_summary(run_dir: Path) -> dict | None:
    path = Path(run_dir) / "summary.json"
    return json.loads(path.read_text()) if path.exists() else None


def run(config: RunConfig, *, progress: bool = True, stop_after_epoch: int | None = None) -> Path:
    """Train `config` (or resume it) and return its run folder.

    stop_after_epoch: behave as if interrupted after that epoch (for tests and time-boxed sessions).
    """
    config.validate()
    dist = _setup_distributed(config)
    device = _pick_device(config, dist)
    amp_dtype = _amp_dtype(config, device)
    channels_last = config.channels_last == "on" or (config.channels_last == "auto" and device.type == "cuda")
    run_dir = config.run_dir()
    say = print if dist.is_main else (lambda *a, **k: None)

    # an existing record: same experiment -> resume or return; different -> refuse, never overwrite
    summary = load_summary(run_dir)
    if (run_dir / "config.json").exists():
        old = RunConfig.load(run_dir / "config.json")
        changed = old.differences(config)
        if changed:
            detail = ", ".join(f"{k}: {was!r} -> {now!r}" for k, (was, now) in changed.items())
            raise ValueError(f"{run_dir} holds a run with another config ({detail}); pass another run_name "
                             f"or move that folder away")
    if summary and summary["status"] in FINISHED:
        say(f"{run_dir}: already {summary['status']}, nothing to do")
        return run_dir

    lock = acquire_run_lock(run_dir) if dist.is_main else None
    try:
        return _train(config, dist, device, amp_dtype, channels_last, run_dir, progress, stop_after_epoch, say)
    finally:
        if lock is not None:
            lock.unlink(missing_ok=True)


def _train(config, dist, device, amp_dtype, channels_last, run_dir, progress, stop_after_epoch, say) -> Path:
    """The body of `run`, once the run folder is ours."""
    # data: official noisy labels for training, clean labels for validation
    if dist.enabled and not dist.is_main:
        torch_dist.barrier()  # rank 0 downloads/extracts first; the others then find the verified copy
    root = data_lib.resolve_root(config.data)
    if dist.enabled and dist.is_main:
        torch_dist.barrier()
    train_set = data_lib.NoisyImagenette(root, "train", noise=config.noise, synthetic=config.synthetic_noise,
                                         seed=config.seed, transform=data_lib.train_transform(config.img_size))
    val_set = data_lib.NoisyImagenette(root, "val", transform=data_lib.val_transform(config.img_size))
    train_subset = first_per_class(train_set.clean_targets, config.train_per_class)
    val_subset = first_per_class(val_set.clean_targets, config.val_per_class)
    workers = None if config.workers < 0 else config.workers
    val_part = torch.utils.data.Subset(val_set, val_subset[dist.rank::dist.world_size])
    val_loader = data_lib.make_loader(val_part, batch_size=config.batch_size, shuffle=False, seed=config.seed,
                                      workers=workers)

    # model, optimizer, schedule
    seed_everything(config.seed)
    size = {"img_size": config.img_size} if models.resolve_name(config.model) in models.SPECS else {}
    model = models.create(config.model, num_classes=len(train_set.classes), **size)
    params = sum(p.numel() for p in model.parameters())
    gflops = models.count_flops(model, config.img_size) / 1e9
    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = _adam(model, config)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(
        optimizer, T_0=config.t0, T_mult=config.t_mult, eta_min=config.eta_min)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    history: list[dict] = []
    train_data = torch.utils.data.Subset(train_set, train_subset)

    last = run_dir / "last.pt"
    if last.exists():
        state = torch.load(last, map_location=device, weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if state["scaler"] and scaler.is_enabled():  # a disabled scaler saved {}: nothing to restore
            scaler.load_state_dict(state["scaler"])
        history = state["history"]
        say(f"resuming {run_dir.name} after epoch {len(history)}")
    net = model
    if dist.enabled:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    extra = dict(
        run_id=config.run_id, model=models.resolve_name(config.model), label=models.report_label(config.model),
        noise=config.noise, realised_noise=float(train_set.flipped[train_subset].mean()), preset=config.preset,
        params=params, gflops=round(gflops, 4), train_images=len(train_subset), val_images=len(val_subset),
        amp=str(amp_dtype).replace("torch.", "") if amp_dtype else "off", channels_last=channels_last,
        environment=environment(device, dist.world_size),
    )
    if dist.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        config.save(run_dir / "config.json")

    def write_record(status: str, diverged_at: int | None, shown: list[dict]) -> None:
        if not dist.is_main:
            return
        atomic_write_text(run_dir / "history.csv", _history_csv(shown))
        summary = summarize(shown, status, diverged_at, extra)
        summary["updated"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        atomic_write_text(run_dir / "summary.json", json.dumps(summary, indent=2) + "\n")

    write_record("running", None, history)
    status, diverged_at = "running", None
    bar = tqdm(total=config.epochs * len(train_subset), initial=len(history) * len(train_subset), unit="img",
               desc=models.report_label(config.model), disable=not (progress and dist.is_main), dynamic_ncols=True)
    try:
        for epoch in range(len(history) + 1, config.epochs + 1):
            seed_everything(epoch_seed(config.seed, epoch, dist.rank))
            sampler = None
            if dist.enabled:
                sampler = torch.utils.data.DistributedSampler(train_data, dist.world_size, dist.rank,
                                                              shuffle=True, seed=config.seed)
                sampler.set_epoch(epoch)
            loader = data_lib.make_loader(train_data, batch_size=config.batch_size, shuffle=sampler is None,
                                          seed=epoch_seed(config.seed, epoch), workers=workers, sampler=sampler)
            lr = optimizer.param_groups[0]["lr"]
            start = time.perf_counter()
            stats = _train_one_epoch(net, loader, optimizer, scaler, amp_dtype, config, device, dist,
                                     channels_last, bar)
            train_time = time.perf_counter() - start
            if dist.enabled:  # evaluate and save with rank 0's BN statistics on every rank
                for buffer in model.buffers():
                    torch_dist.broadcast(buffer, 0)
            val_loss, val_acc = (evaluate(model, val_loader, device, amp_dtype, dist, channels_last)
                                 if stats["finite"] else (math.nan, math.nan))
            row = dict(epoch=epoch, lr=lr, train_loss=stats["train_loss"], train_acc=stats["train_acc"],
                       val_loss=val_loss, val_acc=val_acc, grad_norm_mean=stats["grad_norm_mean"],
                       grad_norm_max=stats["grad_norm_max"], epoch_time_s=time.perf_counter() - start,
                       train_images_per_s=stats["images"] / train_time if train_time > 0 else math.nan,
                       finite=stats["finite"] and math.isfinite(val_loss))
            reason = divergence(row, history, config.diverge_factor, len(train_set.classes))
            if reason:
                status, diverged_at = "diverged", epoch
                extra["diverged_reason"] = reason
                write_record(status, diverged_at, history + [row])  # shown, but last.pt stays at epoch-1
                say(f"diverged at epoch {epoch}: {reason}; last good checkpoint: epoch {epoch - 1}")
                break
            history.append(row)
            scheduler.step()
            if dist.is_main:
                state = dict(model=model.state_dict(), optimizer=optimizer.state_dict(),
                             scheduler=scheduler.state_dict(), scaler=scaler.state_dict(), history=history,
                             config=config.to_dict())
                # best.pt before last.pt: a crash in between repeats this epoch on resume and rewrites both
                if config.checkpoints != "none" and val_loss <= min(r["val_loss"] for r in history):
                    atomic_torch_save(dict(model=model.state_dict(), epoch=epoch, config=config.to_dict(),
                                           classes=list(train_set.classes)), run_dir / "best.pt")
                atomic_torch_save(state, last)
            write_record("running", None, history)
            if dist.enabled:
                torch_dist.barrier()
            if stop_after_epoch is not None and epoch >= stop_after_epoch and epoch < config.epochs:
                raise KeyboardInterrupt
        else:
            status = "complete"
            write_record(status, None, history)
            if dist.is_main and config.checkpoints != "best+last":
                last.unlink(missing_ok=True)  # only needed to resume, and a finished run never resumes
    except KeyboardInterrupt:
        write_record("interrupted", None, history)
        say(f"\ninterrupted: {run_dir} keeps epochs 1-{len(history)}; run the same command again to resume")
        raise
    finally:
        bar.close()
    return run_dir
