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

import logging
import math
import os
import platform
import random
import shutil
import subprocess
import sys
import time
import warnings
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as torch_dist
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from . import cache as cache_lib
from . import data as data_lib
from . import download, loggers, models, record, registry
from .config import RunConfig
from .files import atomic_torch_save
from .paths import project_root
from .record import FINISHED, load_summary, summarize

log = logging.getLogger(__name__)

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
    """Where and with what a run was computed (summary.json's "environment")."""
    from importlib import metadata

    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        major, minor = torch.cuda.get_device_capability(device)
        gpu = dict(cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version(), capability=f"{major}.{minor}")
    else:
        name = platform.processor() or platform.machine()
        name = f"CPU ({name}, {torch.get_num_threads()} threads)"
        gpu = {}

    def version(package: str) -> str | None:
        try:
            return metadata.version(package)
        except metadata.PackageNotFoundError:
            return None

    return dict(torch=torch.__version__, torchvision=version("torchvision"), timm=version("timm"),
                grad_cam=version("grad-cam"), python=platform.python_version(), device=name, **gpu,
                world_size=world_size, git_commit=git_commit(), platform=platform.platform(), pid=os.getpid())


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
        _warn_if_cuda_unusable()
        return torch.device("cpu")
    device = torch.device(config.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={config.device!r} but CUDA is not available here; use device='auto' or 'cpu'")
    if device.type == "cuda" and dist.enabled:
        device = torch.device("cuda", dist.local_rank)
    return device


def _warn_if_cuda_unusable() -> None:
    """A GPU that this torch cannot use (e.g. a P100 under a build without sm_60 kernels) falls back to
    the CPU: say so loudly rather than train 50x slower in silence."""
    if Path("/proc/driver/nvidia/gpus").is_dir() or Path("/dev/nvidia0").exists():
        warnings.warn("an NVIDIA GPU is present but this torch cannot use it (torch.cuda.is_available() is False): "
                      "training on the CPU. Install a torch build for this GPU (see the README, LAMBDALIB_TORCH).",
                      stacklevel=3)


def slow_cpu_bf16_note(config: RunConfig, device: torch.device) -> str | None:
    """bf16 on a CPU without native bf16 (AVX512-BF16 or AMX) runs on fallback kernels: 6-30x slower than
    fp32 on an AVX2-only EPYC (benchmarks/README.md), so say so rather than let a run crawl unexplained."""
    if device.type != "cpu" or config.amp != "bf16" or torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return None
    return ("amp=bf16 on a CPU without native bf16 (no AVX512-BF16/AMX): emulated, several times slower than "
            "fp32; amp='off' is faster here")


# autocast dtype of a resolved config's amp (config.resolved() turns 'auto' into what the device computes
# in); CPU autocast honours bf16 and fp16 too, so the mixed-precision paths run anywhere
AMP_DTYPES = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def _channels_last(config: RunConfig, device: torch.device) -> bool:
    """'auto': only on GPUs with tensor cores (compute capability 7.0+), where NHWC convs are faster."""
    if config.channels_last != "auto":
        return config.channels_last == "on"
    return device.type == "cuda" and torch.cuda.get_device_capability(device)[0] >= 7


def _set_determinism(config: RunConfig, device: torch.device) -> dict:
    """deterministic=True: deterministic cuDNN/cuBLAS algorithms (bit-repeatable GPU runs, slower);
    otherwise cudnn.benchmark picks the fastest algorithm per shape. Returns what was set, for the record."""
    if config.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    else:
        torch.backends.cudnn.benchmark = device.type == "cuda"
    return dict(deterministic=config.deterministic, cudnn_benchmark=torch.backends.cudnn.benchmark)


def _compiles(config: RunConfig, device: torch.device) -> bool:
    """compile=True runs the model through torch.compile (Inductor). Inductor's GPU kernels (Triton) need
    compute capability 7.0+: a T4 compiles, a P100 cannot, so there the run stays eager and says so."""
    if not config.compile:
        return False
    if device.type == "cuda" and torch.cuda.get_device_capability(device)[0] < 7:
        warnings.warn(f"compile=True: {torch.cuda.get_device_name(device)} (compute capability < 7.0) is not "
                      f"supported by torch.compile's Inductor; training without compiling", stacklevel=3)
        return False
    return True


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
@dataclass
class Context:
    """What every part of a run needs to know, resolved once: the config, where it runs, how."""
    config: RunConfig
    dist: Distributed
    device: torch.device
    amp_dtype: torch.dtype | None
    channels_last: bool
    run_dir: Path
    progress: bool = True
    compiled: bool = False  # the model runs through torch.compile

    @property
    def precision(self) -> str:
        return "fp32" if self.config.amp == "off" else self.config.amp

    def say(self, *args) -> None:
        if self.dist.is_main:
            log.info(" ".join(map(str, args)))

    def autocast(self):
        return _autocast(self.device, self.amp_dtype)

    def to_device(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return _to_device(images, labels, self.device, self.channels_last)


def _autocast(device: torch.device, amp_dtype: torch.dtype | None):
    return torch.autocast(device.type, dtype=amp_dtype) if amp_dtype else nullcontext()


def _to_device(images: torch.Tensor, labels: torch.Tensor, device: torch.device,
               channels_last: bool) -> tuple[torch.Tensor, torch.Tensor]:
    images = images.to(device, non_blocking=True)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    return images, labels.to(device, non_blocking=True)


def _train_one_epoch(ctx: Context, model, loader, optimizer, scaler, bar) -> dict:
    model.train()
    losses, sizes, corrects, norms, finite = [], [], [], [], True
    max_norm = ctx.config.grad_clip if ctx.config.grad_clip > 0 else math.inf
    for step, (images, labels) in enumerate(loader, 1):
        images, labels = ctx.to_device(images, labels)
        with ctx.autocast():
            logits = model(images)
            loss = F.cross_entropy(logits.float(), labels)
        ok = bool(torch.isfinite(loss))  # the step's one host sync: a non-finite loss stops at once
        if ctx.dist.enabled:  # every rank must stop together
            ok = ctx.dist.all_sum([0.0 if ok else 1.0], ctx.device)[0] == 0
        if not ok:
            finite = False
            break
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        norms.append(torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm))
        scaler.step(optimizer)  # fp16: skipped when the gradients overflowed (an infinite norm)
        scaler.update()
        # statistics stay on the device until the epoch ends (no per-step GPU syncs)
        losses.append(loss.detach())
        sizes.append(len(labels))
        corrects.append((logits.argmax(1) == labels).sum())
        if bar is not None:
            bar.update(len(labels) * ctx.dist.world_size)
            if step % 10 == 0:
                bar.set_postfix(loss=f"{float(losses[-1]):.3f}", refresh=False)
    dist, device = ctx.dist, ctx.device
    loss_sum = float((torch.stack(losses).cpu().double() * torch.tensor(sizes, dtype=torch.float64)).sum()) \
        if losses else 0.0
    correct = int(torch.stack(corrects).sum()) if corrects else 0
    loss_sum, correct, count = dist.all_sum([loss_sum, correct, sum(sizes)], device)
    finite = finite and math.isfinite(loss_sum)
    all_norms = torch.stack(norms).cpu().double().tolist() if norms else []
    norm_values = [n for n in all_norms if math.isfinite(n)]
    return dict(
        train_loss=loss_sum / count if (count and finite) else math.nan,
        train_acc=correct / count if count else math.nan,
        grad_norm_mean=float(np.mean(norm_values)) if norm_values else math.nan,
        grad_norm_max=float(np.max(norm_values)) if norm_values else math.nan,
        # a step whose gradients overflowed was skipped by the fp16 scaler: counted, not a divergence
        skipped_steps=len(all_norms) - len(norm_values),
        loss_scale=float(scaler.get_scale()),  # 1.0 when not scaling (fp32, bf16)
        finite=finite, images=int(count),
    )


@contextmanager
def batch_statistics(model: nn.Module):
    """Every BatchNorm normalises by the batch's own mean and variance instead of its running averages,
    which are restored afterwards: the eval loss without the running statistics. An eval-mode val loss in
    the thousands with a normal batch-statistics loss is BatchNorm's running averages lagging the weights
    (few steps per epoch, momentum 0.1), not exploding weights or gradients."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [{name: buffer.clone() for name, buffer in m.named_buffers(recurse=False)} for m in norms]
    for norm in norms:
        norm.train()
    try:
        yield
    finally:
        for norm, buffers in zip(norms, saved):
            for name, value in buffers.items():
                getattr(norm, name).copy_(value)
            norm.eval()


@torch.no_grad()
def evaluate(model: nn.Module, loader, device: torch.device, amp_dtype=None, dist: Distributed | None = None,
             channels_last: bool = False, *, batch_stats: bool = False) -> tuple[float, float]:
    """Mean cross-entropy and top-1 accuracy over the loader (summed over ranks under DDP).

    Under autocast, a batch whose logits overflow the half-precision range (fp16 tops out at 65504; an
    early-epoch net with large BatchNorm statistics gets there) is evaluated again in fp32, so a
    precision artefact never reads as a diverged run. batch_stats: BatchNorm on each batch's own
    statistics (see `batch_statistics`).
    """
    model.eval()
    with batch_statistics(model) if batch_stats else nullcontext():
        return _evaluate(model, loader, device, amp_dtype, dist, channels_last)


def _evaluate(model: nn.Module, loader, device: torch.device, amp_dtype, dist: Distributed | None,
              channels_last: bool) -> tuple[float, float]:
    loss_sum, correct, count = 0.0, 0, 0
    for images, labels in loader:
        images, labels = _to_device(images, labels, device, channels_last)
        with _autocast(device, amp_dtype):
            logits = model(images).float()
        if amp_dtype is not None and not bool(torch.isfinite(logits).all()):
            logits = model(images.float()).float()  # outside autocast: fp32
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


def existing_record(config: RunConfig) -> dict | None:
    """The summary of the run record `config` maps to (None if there is none yet).

    Raises ValueError when that folder holds another experiment (only possible with run_name or by
    hand): naming what differs and what to do. The trainer and the sweep both decide through here.
    """
    run_dir = config.run_dir()
    if not (run_dir / "config.json").exists():
        return load_summary(run_dir)
    changed = record.load_config(run_dir).differences(config)
    if changed:
        detail = ", ".join(f"{k}: {was!r} -> {now!r}" for k, (was, now) in changed.items())
        hint = ""
        if "world_size" in changed:
            hint += f" Resume with as many processes as it started with (torchrun --nproc_per_node " \
                    f"{changed['world_size'][0]}); "
        if "amp" in changed:
            hint += f" Resume with amp={changed['amp'][0]!r} (the precision it was trained in); "
        raise ValueError(f"{run_dir} holds a run of another config, another experiment ({detail})."
                         f"{hint or ' '}Or pass another run_name (--run-name), or move that folder away.")
    return load_summary(run_dir)


def run(config: RunConfig, *, progress: bool = True, stop_after_epoch: int | None = None) -> Path:
    """Train `config` (or resume it) and return its run folder.

    stop_after_epoch: behave as if interrupted after that epoch (for tests and time-boxed sessions).
    """
    config.validate()
    config = config.resolved()  # 'auto' made concrete: the record says what was computed
    dist = _setup_distributed(config)
    if config.world_size != dist.world_size:
        raise ValueError(f"world_size={config.world_size} but {dist.world_size} process(es) are training; "
                         f"leave world_size at 0 to take torchrun's")
    device = _pick_device(config, dist)
    ctx = Context(config, dist, device, AMP_DTYPES[config.amp], _channels_last(config, device),
                  config.run_dir(), progress, compiled=_compiles(config, device))

    summary = existing_record(config)  # another experiment in that folder: refused, never overwritten
    if summary and summary["status"] in FINISHED:
        ctx.say(f"{ctx.run_dir}: already {summary['status']}, nothing to do")
        return ctx.run_dir

    fresh = not ctx.run_dir.exists()
    lock = record.acquire_run_lock(ctx.run_dir) if dist.is_main else None
    try:
        return _train(ctx, stop_after_epoch)
    except BaseException:
        # a start that failed before anything was recorded (bad data, no memory, ...) leaves no folder
        if lock is not None and fresh and not (ctx.run_dir / "config.json").exists():
            lock.unlink(missing_ok=True)
            shutil.rmtree(ctx.run_dir, ignore_errors=True)
        raise
    finally:
        if lock is not None:
            lock.unlink(missing_ok=True)


def _load_checkpoint(ctx: Context, path: Path) -> dict | None:
    """last.pt, read on rank 0 and handed to every rank (ranks on another node may not see the file).

    An unreadable one (truncated by a crash mid-copy, random bytes) is moved aside, kept under a name
    that says so, and the run starts again from epoch 1: said, never silently.
    """
    state = None
    if ctx.dist.is_main and path.exists():
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            if not isinstance(state, dict) or not {"model", "optimizer", "scheduler", "history"} <= set(state):
                raise ValueError("not a lambdalib checkpoint")
        except Exception as err:  # noqa: BLE001  (torch raises many kinds for a damaged file)
            aside = path.with_name(f"last.unreadable-{datetime.now().strftime('%Y%m%d-%H%M%S')}.pt")
            os.replace(path, aside)
            reason = str(err).strip().splitlines()[0][:120] if str(err).strip() else type(err).__name__
            ctx.say(f"warning: {path} is unreadable ({reason}); kept it as {aside.name} and starting this run "
                    f"again from epoch 1")
            state = None
    if ctx.dist.enabled:
        box = [state]
        torch_dist.broadcast_object_list(box, src=0)
        state = box[0]
    return state


def _loader_workers(ctx: Context) -> int:
    """config.workers, or the machine's cores shared among the processes on this node (DDP)."""
    if ctx.config.workers >= 0:
        return ctx.config.workers
    local = int(os.environ.get("LOCAL_WORLD_SIZE", ctx.dist.world_size))
    return max(0, data_lib.default_workers() // max(local, 1) - (1 if local > 1 else 0))


@dataclass
class Data:
    """The run's data: the training subset (official noisy labels) and a validation loader (clean labels)."""
    train: torch.utils.data.Dataset
    val_loader: Any
    classes: list[str]
    realised_noise: float
    val_images: int
    skipped: list[str]  # unreadable images left out (on_error="skip"), relative to the data root
    workers: int
    cached: cache_lib.CachedData | None = None  # the decoded-image path (config.loader), else the JPEG one


def _prepare_data(ctx: Context) -> Data:
    config, dist = ctx.config, ctx.dist
    if dist.enabled and not dist.is_main:
        torch_dist.barrier()  # rank 0 downloads/extracts first; the others then find the verified copy
    root = download.resolve_root(config.data)
    if dist.enabled and dist.is_main:
        torch_dist.barrier()
    plain = dict(on_error=config.on_error, check_images=False)  # reads the CSV only
    train_set = data_lib.NoisyImagenette(root, "train", noise=config.noise, synthetic=config.synthetic_noise,
                                         seed=config.seed, transform=data_lib.train_transform(config.img_size),
                                         **plain)
    val_set = data_lib.NoisyImagenette(root, "val", transform=data_lib.val_transform(config.img_size), **plain)
    if cache_lib.choose_loader(config.loader, len(train_set), len(val_set), config.img_size) == "cached":
        # every image is decoded once into a memory-mapped cache kept beside the data (a warm cache decodes
        # none): an unreadable one stops the run before epoch 1 with its name (on_error="fail"), or is left
        # out and counted ("skip"); rank 0 builds it, the others open the finished one
        if dist.enabled and not dist.is_main:
            torch_dist.barrier()
        cached = cache_lib.cached_loaders(
            train_set, val_set, img_size=config.img_size, batch_size=config.batch_size,
            train_subset=config.train_per_class, val_subset=config.val_per_class, device=ctx.device,
            channels_last=ctx.channels_last, on_error=config.on_error, rank=dist.rank,
            world_size=dist.world_size, progress=ctx.progress and dist.is_main)
        if dist.enabled and dist.is_main:
            torch_dist.barrier()
        train_subset, val_images = cached.train_indices.tolist(), len(cached.val_indices)
        skipped_paths, val_loader, workers = cached.skipped, cached.val_loader, 0
    else:
        # every image is decoded once up front (about a second per 2,000 on one core): an unreadable one
        # stops the run before epoch 1 with its name (on_error="fail"), or is left out and counted ("skip")
        cached = None
        checked = dict(on_error=config.on_error, check_images=True)
        train_set = data_lib.NoisyImagenette(root, "train", noise=config.noise, synthetic=config.synthetic_noise,
                                             seed=config.seed, transform=data_lib.train_transform(config.img_size),
                                             **checked)
        val_set = data_lib.NoisyImagenette(root, "val", transform=data_lib.val_transform(config.img_size), **checked)
        skipped_paths = train_set.skipped + val_set.skipped
        train_subset = data_lib.first_per_class(train_set.clean_targets, config.train_per_class)
        val_subset = data_lib.first_per_class(val_set.clean_targets, config.val_per_class)
        workers = _loader_workers(ctx)
        val_part = torch.utils.data.Subset(val_set, val_subset[dist.rank::dist.world_size])
        val_loader = data_lib.make_loader(val_part, batch_size=config.batch_size, shuffle=False, seed=config.seed,
                                          workers=workers)
        val_images = len(val_subset)
    skipped = [str(Path(p).relative_to(root)) if Path(p).is_relative_to(root) else str(p) for p in skipped_paths]
    if skipped:
        ctx.say(f"warning: left out {len(skipped)} unreadable image(s) (on_error='skip'): {', '.join(skipped[:3])}"
                + (" ..." if len(skipped) > 3 else ""))
    return Data(train=torch.utils.data.Subset(train_set, train_subset), val_loader=val_loader,
                classes=list(train_set.classes), realised_noise=float(train_set.flipped[train_subset].mean()),
                val_images=val_images, skipped=skipped, workers=workers, cached=cached)


@dataclass
class Trainee:
    """The model and everything that moves with it from epoch to epoch (all of it in last.pt)."""
    model: nn.Module  # the bare model: state dicts, BN buffers, evaluation
    net: nn.Module  # what the training step calls: the model, wrapped by DDP and/or torch.compile
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: torch.amp.GradScaler
    history: list[dict]  # the epochs that last.pt holds: the record never claims more
    params: int
    gflops: float

    def state(self, config: RunConfig, history: list[dict]) -> dict:
        return dict(model=self.model.state_dict(), optimizer=self.optimizer.state_dict(),
                    scheduler=self.scheduler.state_dict(), scaler=self.scaler.state_dict(), history=history,
                    config=config.to_dict())


def _build(ctx: Context, num_classes: int) -> Trainee:
    """Model, optimizer, schedule and grad scaler, restored from last.pt when there is one."""
    config, device = ctx.config, ctx.device
    seed_everything(config.seed)
    note = models.lookalike_note(config.model)  # timm's resnet18 is not the report's R18: say so, once
    if note:
        ctx.say(f"warning: {note}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", models.LookalikeWarning)
        model = models.create(config.model, num_classes=num_classes, **config.model_kwargs())
    covered = models.scope_covers_map(model)
    if covered:  # the report's r=23 at a small image size: lc is global rpe here, and says so
        ctx.say(f"note: {covered}; lc_scope=0 scales the scope with the image size")
    params = sum(p.numel() for p in model.parameters())
    gflops = models.count_flops(model, config.img_size) / 1e9
    model.to(device)
    if ctx.channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = _adam(model, config)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(
        optimizer, T_0=config.t0, T_mult=config.t_mult, eta_min=config.eta_min)
    scaler = torch.amp.GradScaler(device.type, enabled=ctx.amp_dtype == torch.float16)
    history: list[dict] = []
    state = _load_checkpoint(ctx, ctx.run_dir / "last.pt")
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler") and scaler.is_enabled():  # a disabled scaler saved {}: nothing to restore
            scaler.load_state_dict(state["scaler"])
        history = state["history"]
        ctx.say(f"resuming {ctx.run_dir.name} after epoch {len(history)}")
    net = model
    if ctx.dist.enabled:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if ctx.compiled:
        # shapes stay static but for the last, smaller batch (one more graph); train and eval modes each
        # get their graphs once: a handful of compilations per run, all in the first epoch
        net = torch.compile(net)
    return Trainee(model, net, optimizer, scheduler, scaler, history, params, gflops)


def _run_epoch(ctx: Context, data: Data, trainee: Trainee, epoch: int, bar) -> dict:
    """Train one epoch, evaluate, and return its history row."""
    config, dist = ctx.config, ctx.dist
    seed_everything(epoch_seed(config.seed, epoch, dist.rank))
    if data.cached is not None:
        # augmentations from (seed, epoch, rank); the order from (seed, epoch), the same on every rank
        # (DistributedSampler's seed + epoch, so both paths visit the images in the same order)
        loader = data.cached.train_loader(torch.Generator().manual_seed(epoch_seed(config.seed, epoch, dist.rank)),
                                          order_seed=config.seed + epoch)
    else:
        sampler = None
        if dist.enabled:
            sampler = torch.utils.data.DistributedSampler(data.train, dist.world_size, dist.rank, shuffle=True,
                                                          seed=config.seed)
            sampler.set_epoch(epoch)
        # the loader's seed drives the order (single process) and the augmentations: one stream per rank
        loader = data_lib.make_loader(data.train, batch_size=config.batch_size, shuffle=sampler is None,
                                      seed=epoch_seed(config.seed, epoch, dist.rank), workers=data.workers,
                                      sampler=sampler)
    lr = trainee.optimizer.param_groups[0]["lr"]
    start = time.perf_counter()
    stats = _train_one_epoch(ctx, trainee.net, loader, trainee.optimizer, trainee.scaler, bar)
    train_time = time.perf_counter() - start
    if dist.enabled:  # evaluate and save with rank 0's BN statistics on every rank
        for buffer in trainee.model.buffers():
            torch_dist.broadcast(buffer, 0)
    evaluated = trainee.net if ctx.compiled and not dist.enabled else trainee.model
    val_loss, val_acc = (evaluate(evaluated, data.val_loader, ctx.device, ctx.amp_dtype, dist, ctx.channels_last)
                         if stats["finite"] else (math.nan, math.nan))
    # the same weights with BatchNorm on batch statistics (the eager model: a compiled one would recompile)
    val_loss_batch_stats = (evaluate(trainee.model, data.val_loader, ctx.device, ctx.amp_dtype, dist,
                                     ctx.channels_last, batch_stats=True)[0] if stats["finite"] else math.nan)
    return dict(epoch=epoch, lr=lr, train_loss=stats["train_loss"], train_acc=stats["train_acc"],
                val_loss=val_loss, val_acc=val_acc, val_loss_batch_stats=val_loss_batch_stats,
                grad_norm_mean=stats["grad_norm_mean"],
                grad_norm_max=stats["grad_norm_max"], epoch_time_s=time.perf_counter() - start,
                train_images_per_s=stats["images"] / train_time if train_time > 0 else math.nan,
                finite=stats["finite"] and math.isfinite(val_loss), precision=ctx.precision,
                loss_scale=stats["loss_scale"], skipped_steps=stats["skipped_steps"])


def _train(ctx: Context, stop_after_epoch: int | None) -> Path:
    """The body of `run`, once the run folder is ours: data, model, then epochs until done, diverged or
    interrupted, the record written after each (through lambdalib.record) and mirrored to the logger."""
    config, dist, run_dir = ctx.config, ctx.dist, ctx.run_dir
    determinism = _set_determinism(config, ctx.device)
    note = slow_cpu_bf16_note(config, ctx.device)
    if note:
        ctx.say(f"warning: {note}")
    data = _prepare_data(ctx)
    trainee = _build(ctx, len(data.classes))
    history = trainee.history
    label = registry.report_label(config.model)
    extra = dict(
        run_id=config.run_id, experiment_id=config.experiment_id, model=registry.resolve_name(config.model),
        label=label, architecture=models.describe(config.model),
        timm_lookalike=models.lookalike_note(config.model) is not None, noise=config.noise,
        realised_noise=data.realised_noise, preset=config.preset,
        params=trainee.params, gflops=round(trainee.gflops, 4), train_images=len(data.train),
        val_images=data.val_images, amp=config.amp, precision=ctx.precision, channels_last=ctx.channels_last,
        compiled=ctx.compiled, **determinism, loader="cached" if data.cached else "workers",
        loader_workers=data.workers,
        cache_store_px=data.cached.train_images.size if data.cached else None, skipped_images=len(data.skipped),
        skipped_files=data.skipped, environment=environment(ctx.device, dist.world_size),
    )
    if dist.is_main:
        config.save(run_dir / "config.json")
    logger = loggers.open_logger(config, run_dir) if dist.is_main else loggers.NullLogger()

    def write_record(status: str, diverged_at: int | None, shown: list[dict]) -> None:
        if not dist.is_main:
            return
        record.write_history(run_dir, shown)
        summary = summarize(shown, status, diverged_at, extra)
        summary["updated"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        record.write_summary(run_dir, summary)

    write_record("running", None, history)
    bar = None
    if ctx.progress and dist.is_main and sys.stderr.isatty():  # a terminal: a live bar; elsewhere one line an epoch
        bar = tqdm(total=config.epochs * len(data.train), initial=len(history) * len(data.train), unit="img",
                   desc=label, dynamic_ncols=True)
    tell = bar.write if bar is not None else ctx.say
    last = run_dir / "last.pt"
    try:
        for epoch in range(len(history) + 1, config.epochs + 1):
            row = _run_epoch(ctx, data, trainee, epoch, bar)
            logger.log_epoch(row)
            reason = divergence(row, history, config.diverge_factor, len(data.classes))
            if reason:
                extra["diverged_reason"] = reason
                write_record("diverged", epoch, history + [row])  # shown, but last.pt stays at epoch-1
                kept = (f"last good epoch: {epoch - 1}" + ("" if config.checkpoints == "none"
                                                           else " (its best weights are in best.pt)")
                        if history else "no epoch finished before it, so there is no checkpoint")
                tell(f"{label}: diverged at epoch {epoch}: {reason}; {kept}")
                break
            done = history + [row]
            trainee.scheduler.step()  # (a failed save below ends the run, so the live scheduler may run ahead)
            if dist.is_main:
                # best.pt before last.pt: a crash in between repeats this epoch on resume and rewrites both
                if config.checkpoints != "none" and row["val_loss"] <= min(r["val_loss"] for r in done):
                    atomic_torch_save(dict(model=trainee.model.state_dict(), epoch=epoch, config=config.to_dict(),
                                           classes=data.classes), run_dir / "best.pt")
                atomic_torch_save(trainee.state(config, done), last)
            history = done  # committed: last.pt holds it
            write_record("running", None, history)
            tell(f"{label} epoch {epoch}/{config.epochs}: train loss {row['train_loss']:.4f}, val loss "
                f"{row['val_loss']:.4f}, val acc {row['val_acc']:.1%} ({row['epoch_time_s']:.1f}s)"
                + (f", {row['skipped_steps']} fp16 steps skipped" if row["skipped_steps"] else ""))
            if dist.enabled:
                torch_dist.barrier()
            if stop_after_epoch is not None and epoch >= stop_after_epoch and epoch < config.epochs:
                raise KeyboardInterrupt
        else:
            write_record("complete", None, history)
            if dist.is_main and config.checkpoints != "best+last":
                last.unlink(missing_ok=True)  # only needed to resume, and a finished run never resumes
    except KeyboardInterrupt:
        write_record("interrupted", None, history)
        ctx.say(f"\ninterrupted: {run_dir} keeps epochs 1-{len(history)}; run the same command again to resume")
        raise
    except record.RecordError as err:  # e.g. the disk filled up: keep the record at what last.pt holds
        try:
            write_record("interrupted", None, history)
        except record.RecordError:
            pass
        raise record.RecordError(f"{err}; the record keeps epochs 1-{len(history)}, which the same command "
                                 f"resumes from") from None
    finally:
        logger.close()
        if bar is not None:
            bar.close()
    return run_dir
