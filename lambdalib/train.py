"""Training: `run(config)` leaves the run record (lambdalib.record) every table and figure is built from.

last.pt holds the whole training state after the last good epoch (the one before: last.pt.prev, kept once the run
is complete only with checkpoints="best+last"), and the record never claims an epoch last.pt lacks. The same config
resumes after it; every epoch reseeds all RNGs from (seed, epoch, rank) and the loader order from (seed, epoch), so
a resumed run computes what an uninterrupted one does.
No host sync within an epoch of one process: non-finite losses are judged on the device every CHECK_EVERY steps
and read without waiting (`device.Peek`; under DDP that verdict is all-reduced, a wait). A diverged epoch N ends
the run (summary.json says why); last.pt stays at epoch N-1.
"""
from __future__ import annotations

import logging
import math
import os
import shutil
import sys
import time
import warnings
from contextlib import contextmanager, nullcontext, suppress
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
import torch.distributed as torch_dist
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from . import cache as cache_lib
from . import data as data_lib
from . import device as dev
from . import download, loggers, models, record, registry
from .config import RunConfig
from .files import RecordError
from .record import FINISHED, load_summary, summarize

log = logging.getLogger(__name__)

CHECK_EVERY = 8  # steps between looks at the device's verdict on the losses so far
FP16_STREAK = 20  # fp16: non-finite losses in a row that end an epoch (GradScaler skips single ones)
CHECKPOINT_COPY_S = 600.0  # a run folder on a network drive gets its checkpoints at most this often


# ----------------------------------------------------------------------------------- the loop
@dataclass
class Context:
    """What every part of a run needs to know, resolved once: the config, where it runs, how."""
    config: RunConfig
    dist: dev.Distributed
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


def _should_stop(ctx: Context, losses: list[torch.Tensor], peek: dev.Peek, bar) -> bool:
    """Whether the losses so far end the epoch (any non-finite; fp16: the last FP16_STREAK), judged on the device
    and read a few steps late without waiting; under DDP all ranks must stop together, so it is all-reduced."""
    recent = torch.stack(losses[-FP16_STREAK:] if ctx.amp_dtype == torch.float16 else losses)
    finite = torch.isfinite(recent)
    stop = ~finite.any() & (len(recent) >= FP16_STREAK) if ctx.amp_dtype == torch.float16 else ~finite.all()
    verdict = torch.stack([stop.float(), torch.where(finite, recent, 0).sum() / finite.sum().clamp(min=1)])
    if ctx.dist.enabled:
        torch_dist.all_reduce(verdict[:1], op=torch_dist.ReduceOp.MAX)
        return bool(verdict[0])
    peek.post(verdict)
    seen = peek.read()
    if seen is not None and bar is not None:
        bar.set_postfix(loss=f"{seen[1]:.3f}", refresh=False)
    return seen is not None and seen[0] > 0


def _train_one_epoch(ctx: Context, model, loader, optimizer, scaler, bar) -> dict:
    """One pass over `loader`, with no host sync per step. A (last) batch of one image is left out: train-mode
    BatchNorm cannot normalise a single value per channel."""
    model.train()
    dist, fp16 = ctx.dist, ctx.amp_dtype == torch.float16
    params = [p for p in model.parameters() if p.requires_grad]
    losses, corrects, norms, sizes, stopped, peek = [], [], [], [], False, dev.Peek(ctx.device)
    for images, labels in loader:
        if len(labels) < 2:
            continue
        images, labels = dev.to_device(images, labels, ctx.device, ctx.channels_last)
        with dev.autocast(ctx.device, ctx.amp_dtype):
            logits = model(images)
            loss = F.cross_entropy(logits.float(), labels)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        norm = torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
        if ctx.config.grad_clip > 0:
            torch.nn.utils.clip_grads_with_norm_(params, ctx.config.grad_clip, norm)
        scaler.step(optimizer)  # fp16: skipped when the gradients overflowed (an infinite norm)
        scaler.update()
        losses.append(loss.detach())
        corrects.append((logits.argmax(1) == labels).sum())
        norms.append(norm)
        sizes.append(len(labels))
        if bar is not None:
            bar.update(len(labels) * dist.world_size)
        if len(losses) % CHECK_EVERY == 0 and _should_stop(ctx, losses, peek, bar):
            stopped = True
            break
    # the epoch's end: its host syncs
    loss_v, norm_v, correct_v = torch.stack([torch.stack(v).float() for v in (losses, norms, corrects)]).cpu().double()
    size_v = torch.tensor(sizes, dtype=torch.float64)
    ok = torch.isfinite(loss_v)
    loss_sum, counted = float((loss_v[ok] * size_v[ok]).sum()), float(size_v[ok].sum())
    loss_sum, counted, correct, images = dist.all_sum([loss_sum, counted, float(correct_v.sum()), sum(sizes)],
                                                      ctx.device)
    finite = not stopped and counted > 0 and (fp16 or bool(ok.all())) and math.isfinite(loss_sum)
    norm_values = norm_v[torch.isfinite(norm_v)]
    return dict(train_loss=loss_sum / counted if finite else math.nan, train_acc=correct / images,
                grad_norm_mean=float(norm_values.mean()) if len(norm_values) else math.nan,
                grad_norm_max=float(norm_values.max()) if len(norm_values) else math.nan,
                # a step whose gradients overflowed was skipped by the fp16 scaler: counted, not a divergence
                skipped_steps=len(norm_v) - len(norm_values),
                loss_scale=float(scaler.get_scale()),  # 1.0 when not scaling (fp32, bf16)
                finite=finite, images=int(images))


@contextmanager
def batch_statistics(model: nn.Module):
    """Every BatchNorm normalises by the batch's own statistics (its running averages restored afterwards): a huge
    eval-mode val loss with a normal one here is the averages lagging the weights, not an explosion."""
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
def evaluate(model: nn.Module, loader, device: torch.device, amp_dtype=None, dist: dev.Distributed | None = None,
             channels_last: bool = False, *, batch_stats: bool = False) -> tuple[float, float]:
    """Mean cross-entropy and top-1 accuracy over the loader (summed over ranks), read from the device once a
    pass. Under autocast a batch whose logits overflow fp16's range (65504: an early net with large BatchNorm
    statistics gets there) is evaluated again in fp32, so a precision artefact never reads as a divergence.
    batch_stats: see `batch_statistics` (a batch of one image is left out)."""
    def sweep(amp: torch.dtype | None, only: set | None = None):
        # (loss sum, correct) on the device, each batch's finiteness (device bools), images counted; under
        # autocast a non-finite batch adds nothing (it is redone in fp32)
        sums = torch.zeros(2, dtype=torch.float32 if device.type == "mps" else torch.float64, device=device)
        finite, count = [], 0
        for k, (images, labels) in enumerate(loader):
            if (only is not None and k not in only) or (batch_stats and len(labels) < 2):
                continue
            images, labels = dev.to_device(images, labels, device, channels_last)
            with dev.autocast(device, amp):
                logits = model(images).float()
            ok = torch.isfinite(logits).all()
            batch = torch.stack([F.cross_entropy(logits, labels, reduction="sum"), (logits.argmax(1) == labels).sum()])
            sums += (torch.where(ok, batch, 0) if amp is not None else batch).to(sums.dtype)
            finite.append(ok)
            count += len(labels)
        return sums, finite, count

    model.eval()
    with batch_statistics(model) if batch_stats else nullcontext():
        sums, finite, count = sweep(amp_dtype)
        host = torch.cat([sums, torch.stack(finite).to(sums.dtype)]).tolist() if finite else [0.0, 0.0]
        redo = {k for k, ok in enumerate(host[2:]) if not ok}
        if amp_dtype is not None and redo:
            sums = sums + sweep(None, only=redo)[0]
            host = sums.tolist()
    loss_sum, correct = host[:2]
    if dist is not None:
        loss_sum, correct, count = dist.all_sum([loss_sum, correct, count], device)
    return (loss_sum / count, correct / count) if count else (math.nan, math.nan)


def divergence(row: dict, history: list[dict], factor: float, classes: int) -> str:
    """Why this epoch counts as diverged ("" if it does not). An untrained net's loss is about ln(classes). The
    val loss counts past factor x its start (the first epoch's, at least ln(classes)) only where the same weights on
    batch statistics pass it too (or have no such column): running statistics alone spike in healthy runs."""
    if not row["finite"]:
        return "non-finite loss"
    chance = math.log(classes)
    if row["train_loss"] > factor * chance:
        return f"train loss {row['train_loss']:.4g} > {factor:g} x ln({classes})"
    start = max(history[0]["val_loss"] if history else row["val_loss"], chance)
    batch = row.get("val_loss_batch_stats", math.nan)
    if row["val_loss"] > factor * start and not batch <= factor * start:  # (a NaN batch loss: no diagnostic)
        return f"val loss {row['val_loss']:.4g} > {factor:g} x its start {start:.4g}, on batch statistics {batch:.4g}"
    return ""


def _recorded_precision(config: RunConfig, here: str | None = None) -> RunConfig:
    """amp='auto' computes in what this device does best (bf16 from compute capability 8, else fp16; off on a
    CPU), so the same command on another GPU class (a Colab runtime back as a T4, not an A100) would start a
    new run. A record of the experiment in another precision, with none in this one, lends its precision."""
    if config.amp != "auto":
        return config
    here = here or config.resolved().amp  # (the trainer knows better on a GPU it falls back from)
    for amp in (here, *(a for a in ("bf16", "fp16", "off") if a != here)):
        folder = replace(config, amp=amp).run_dir()
        if (folder / "config.json").exists() and record.load_config(folder).amp == amp:
            if amp != here:
                log.info(f"note: {folder.name} was started in amp={amp}, so it continues in {amp}; amp='auto' would "
                         f"compute in {here} here (pass --amp {here} for a new run in {here})")
            return replace(config, amp=amp)
    return replace(config, amp=here)


def existing_record(config: RunConfig) -> dict | None:
    """The summary of the run record `config` maps to (None if there is none yet); a ValueError naming what
    differs when that folder holds another experiment (only possible with run_name or by hand)."""
    config = _recorded_precision(config)
    run_dir = config.run_dir()
    changed = record.load_config(run_dir).differences(config) if (run_dir / "config.json").exists() else {}
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
    """Train `config` (or resume it) and return its run folder. stop_after_epoch: behave as if interrupted
    after that epoch (for tests and time-boxed sessions)."""
    config.validate()
    if config.batch_size < 2:
        raise ValueError(f"batch_size={config.batch_size}: train-mode BatchNorm needs at least 2 images per batch; "
                         f"use --batch-size 2 or more")
    dist = dev.setup_distributed(config.device)
    device = dev.pick_device(config.device, dist.local_rank, dist.enabled)
    loggers.check_logger(config)
    config = replace(config, data_digest=config.resolved().data_digest)  # the data read once for every identity

    def decide() -> tuple[RunConfig, str | None]:  # (a GPU this torch has no kernels for: fp32 on the CPU)
        adopted = _recorded_precision(config, None if device.type == "cuda" else "off")
        summary = existing_record(adopted)  # another experiment in that folder: refused, never overwritten
        return adopted, summary["status"] if summary else None

    config, status = dist.decide(decide)
    config = config.resolved()  # 'auto' made concrete: the record says what was computed
    if config.world_size != dist.world_size:
        raise ValueError(f"world_size={config.world_size} but {dist.world_size} process(es) are training; "
                         f"leave world_size at 0 to take torchrun's")
    ctx = Context(config, dist, device, dev.AMP_DTYPES[config.amp], dev.channels_last(config.channels_last, device),
                  config.run_dir(), progress, compiled=dev.compiles(config.compile, device))
    if status in FINISHED:
        ctx.say(f"{ctx.run_dir}: already {status}, nothing to do")
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


# ----------------------------------------------------------------------------------- data and model
@dataclass
class Data:
    """The run's data: the training subset (official noisy labels) and validation loaders (clean labels)."""
    train: torch.utils.data.Dataset
    val_loader: Any
    batch_stats_loader: Any  # class-mixed validation batches for val_loss_batch_stats (batch_stats_order)
    classes: list[str]
    realised_noise: float
    val_images: int
    skipped: list[str]  # unreadable images left out (on_error="skip"), relative to the data root
    workers: int
    cached: cache_lib.CachedData | None = None  # the decoded-image path (config.loader), else the JPEG one


def _prepare_data(ctx: Context) -> Data:
    config, dist = ctx.config, ctx.dist
    with dist.main_first():  # rank 0 downloads/extracts; the others then find the verified copy
        root = download.resolve_root(config.data)

    def splits(check: bool):  # check_images: decode every image now; without, the CSV only
        args = dict(on_error=config.on_error, check_images=check)
        return (data_lib.NoisyImagenette(root, "train", noise=config.noise, synthetic=config.synthetic_noise,
                                         seed=config.seed, transform=data_lib.train_transform(config.img_size), **args),
                data_lib.NoisyImagenette(root, "val", transform=data_lib.val_transform(config.img_size), **args))

    train_set, val_set = splits(False)
    loader = cache_lib.choose_loader(config.loader, len(train_set), len(val_set), config.img_size, root=root)
    if config.augment_on == "device":
        if config.loader == "workers":
            raise ValueError("augment_on='device' works on the decoded-image cache: use loader='cached' or 'auto'")
        loader = "cached"
    if loader == "cached":
        # every image decoded once into a memory-mapped cache (a warm one decodes none): an unreadable one stops
        # the run before epoch 1 with its name (on_error="fail"), or is left out and counted ("skip")
        with dist.main_first():
            cached = cache_lib.cached_loaders(
                train_set, val_set, img_size=config.img_size, batch_size=config.batch_size,
                train_subset=config.train_per_class, val_subset=config.val_per_class, device=ctx.device,
                channels_last=ctx.channels_last, on_error=config.on_error, rank=dist.rank,
                world_size=dist.world_size, progress=ctx.progress and dist.is_main, augment_on=config.augment_on,
                prefetch=cache_lib.PREFETCH if ctx.device.type == "cuda" else 0)
        train_subset, val_images = cached.train_indices.tolist(), len(cached.val_indices)
        order = data_lib.batch_stats_order(val_images, config.batch_size)
        stats_loader = cached.eval_loader(cached.val_indices[order][dist.rank::dist.world_size])
        skipped_paths, val_loader, workers = cached.skipped, cached.val_loader, 0
    else:
        # every image decoded once up front, unreadable ones as above
        cached, (train_set, val_set) = None, splits(True)
        skipped_paths = train_set.skipped + val_set.skipped
        train_subset = data_lib.first_per_class(train_set.clean_targets, config.train_per_class)
        val_subset = data_lib.first_per_class(val_set.clean_targets, config.val_per_class)
        local = int(os.environ.get("LOCAL_WORLD_SIZE", dist.world_size))  # the cores shared by this node's ranks
        workers = config.workers if config.workers >= 0 else \
            max(0, data_lib.default_workers() // max(local, 1) - (1 if local > 1 else 0))
        val_images = len(val_subset)

        def val(indices: list[int]):
            part = torch.utils.data.Subset(val_set, indices[dist.rank::dist.world_size])
            return data_lib.make_loader(part, batch_size=config.batch_size, shuffle=False, seed=config.seed,
                                        workers=workers)

        val_loader = val(val_subset)
        stats_loader = val([val_subset[k] for k in data_lib.batch_stats_order(val_images, config.batch_size)])
    if len(train_subset) < 2 * dist.world_size:  # train-mode BatchNorm needs two images a batch
        raise ValueError(f"{len(train_subset)} training image(s) for {dist.world_size} process(es): BatchNorm needs "
                         f"at least 2 per process")
    skipped = [str(Path(p).relative_to(root)) if Path(p).is_relative_to(root) else str(p) for p in skipped_paths]
    if skipped:
        ctx.say(f"warning: left out {len(skipped)} unreadable image(s) (on_error='skip'): {', '.join(skipped[:3])}"
                + (" ..." if len(skipped) > 3 else ""))
    return Data(train=torch.utils.data.Subset(train_set, train_subset), val_loader=val_loader,
                batch_stats_loader=stats_loader, classes=list(train_set.classes),
                realised_noise=float(train_set.flipped[train_subset].mean()), val_images=val_images,
                skipped=skipped, workers=workers, cached=cached)


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


def _build(ctx: Context, num_classes: int) -> Trainee:
    """Model, optimizer, schedule and grad scaler, restored from last.pt when there is one."""
    config, device = ctx.config, ctx.device
    data_lib.seed_everything(config.seed)
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
    model.to(device, memory_format=torch.channels_last if ctx.channels_last else torch.preserve_format)
    optimizer = dev.adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(
        optimizer, T_0=config.t0, T_mult=config.t_mult, eta_min=config.eta_min)
    scaler = torch.amp.GradScaler(device.type, enabled=ctx.amp_dtype == torch.float16)
    history: list[dict] = []
    # last.pt (else last.pt.prev), read on rank 0 and handed to every rank (others may not see the file)
    keys = {"model", "optimizer", "scheduler", "history"}
    state = ctx.dist.share(dev.read_checkpoint(ctx.run_dir / "last.pt", keys, ctx.say) if ctx.dist.is_main else None)
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
        # static shapes but for the last, smaller batch: a handful of compilations per run, all in epoch 1
        net = torch.compile(net)
    return Trainee(model, net, optimizer, scheduler, scaler, history, params, gflops)


def _run_epoch(ctx: Context, data: Data, trainee: Trainee, epoch: int, bar) -> dict:
    """Train one epoch, evaluate, and return its history row."""
    config, dist = ctx.config, ctx.dist
    seed = data_lib.epoch_seed(config.seed, epoch, dist.rank)
    data_lib.seed_everything(seed)
    if data.cached is not None:
        # augmentations from (seed, epoch, rank); the order from (seed, epoch), the same on every rank
        # (DistributedSampler's seed + epoch, so both paths visit the images in the same order)
        loader = data.cached.train_loader(seed, order_seed=config.seed + epoch)
    else:
        sampler = None
        if dist.enabled:
            sampler = torch.utils.data.DistributedSampler(data.train, dist.world_size, dist.rank, shuffle=True,
                                                          seed=config.seed)
            sampler.set_epoch(epoch)
        # the loader's seed drives the order (single process) and the augmentations: one stream per rank
        loader = data_lib.make_loader(data.train, batch_size=config.batch_size, shuffle=sampler is None,
                                      seed=seed, workers=data.workers, sampler=sampler)
    lr = trainee.optimizer.param_groups[0]["lr"]
    start = time.perf_counter()
    stats = _train_one_epoch(ctx, trainee.net, loader, trainee.optimizer, trainee.scaler, bar)
    train_time = time.perf_counter() - start
    if dist.enabled:  # evaluate and save with rank 0's BN statistics on every rank
        for buffer in trainee.model.buffers():
            torch_dist.broadcast(buffer, 0)
    evaluated = trainee.net if ctx.compiled and not dist.enabled else trainee.model
    how = (ctx.device, ctx.amp_dtype, dist, ctx.channels_last)
    val_loss, val_acc = evaluate(evaluated, data.val_loader, *how) if stats["finite"] else (math.nan, math.nan)
    # the same weights with BatchNorm on batch statistics, class-mixed batches (eager: compiled would recompile)
    val_loss_batch_stats = (evaluate(trainee.model, data.batch_stats_loader, *how, batch_stats=True)[0]
                            if stats["finite"] else math.nan)
    return dict(epoch=epoch, lr=lr, train_loss=stats["train_loss"], train_acc=stats["train_acc"],
                val_loss=val_loss, val_acc=val_acc, val_loss_batch_stats=val_loss_batch_stats,
                grad_norm_mean=stats["grad_norm_mean"], grad_norm_max=stats["grad_norm_max"],
                epoch_time_s=time.perf_counter() - start,
                train_images_per_s=stats["images"] / train_time if train_time > 0 else math.nan,
                finite=stats["finite"] and math.isfinite(val_loss), precision=ctx.precision,
                loss_scale=stats["loss_scale"], skipped_steps=stats["skipped_steps"])


def _train(ctx: Context, stop_after_epoch: int | None) -> Path:
    """The body of `run`, once the run folder is ours: epochs until done, diverged or interrupted, the record
    written after each and mirrored to the logger."""
    config, dist, run_dir = ctx.config, ctx.dist, ctx.run_dir
    determinism = dev.set_determinism(config.deterministic, ctx.device)
    note = dev.precision_note(config.amp, ctx.device)
    if note:
        ctx.say(f"warning: {note}")
    data = _prepare_data(ctx)
    trainee = _build(ctx, len(data.classes))
    history = recorded = trainee.history  # recorded: what the record shows, never more than last.pt holds
    label = registry.run_label(config.model, config.lambda_layer)
    extra = dict(run_id=config.run_id, experiment_id=config.experiment_id, model=registry.resolve_name(config.model),
                 label=label, architecture=models.describe(config.model),
                 timm_lookalike=models.lookalike_note(config.model) is not None, noise=config.noise,
                 realised_noise=data.realised_noise, preset=config.preset, params=trainee.params,
                 gflops=round(trainee.gflops, 4), train_images=len(data.train), val_images=data.val_images,
                 amp=config.amp, precision=ctx.precision, channels_last=ctx.channels_last, compiled=ctx.compiled,
                 **determinism, loader="cached" if data.cached else "workers",
                 augment_on=data.cached.augment_on if data.cached else None, loader_workers=data.workers,
                 cache_store_px=data.cached.train_images.size if data.cached else None,
                 skipped_images=len(data.skipped), skipped_files=data.skipped,
                 environment=dev.environment(ctx.device, dist.world_size))
    nondeterministic: set[str] = set()
    if dist.is_main:
        config.save(run_dir / "config.json")
    logger = loggers.open_logger(config, run_dir) if dist.is_main else loggers.NullLogger()

    def write_record(status: str, diverged_at: int | None, shown: list[dict]) -> None:
        if not dist.is_main:
            return
        if config.deterministic:
            extra["nondeterministic_ops"] = sorted(nondeterministic)
        config.save(run_dir / "config.json")
        record.write_history(run_dir, shown)
        summary = summarize(shown, status, diverged_at, extra)
        summary["updated"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        record.write_summary(run_dir, summary)

    store = dev.Checkpoints(run_dir, CHECKPOINT_COPY_S)

    def settle() -> list[dict]:  # pending checkpoints into the run folder; the history its last.pt now holds
        try:
            return history if store.publish(force=True) else recorded
        except RecordError:
            return recorded

    write_record("running", None, history)
    bar = None
    if ctx.progress and dist.is_main and sys.stderr.isatty():  # a terminal: a live bar; elsewhere one line an epoch
        bar = tqdm(total=config.epochs * len(data.train), initial=len(history) * len(data.train), unit="img",
                   desc=label, dynamic_ncols=True)
    tell = bar.write if bar is not None else ctx.say
    try:
        for epoch in range(len(history) + 1, config.epochs + 1):
            with dev.noting_nondeterministic(nondeterministic) if config.deterministic else nullcontext():
                row = _run_epoch(ctx, data, trainee, epoch, bar)
            logger.log_epoch(row)
            reason = divergence(row, history, config.diverge_factor, len(data.classes))
            if reason:
                extra["diverged_reason"] = reason
                write_record("diverged", epoch, settle() + [row])  # shown, but last.pt stays at epoch-1
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
                    store.save("best.pt", dict(model=trainee.model.state_dict(), epoch=epoch, config=config.to_dict(),
                                               classes=data.classes))
                store.save("last.pt", dict(model=trainee.model.state_dict(), optimizer=trainee.optimizer.state_dict(),
                                           scheduler=trainee.scheduler.state_dict(), scaler=trainee.scaler.state_dict(),
                                           history=done, config=config.to_dict()))
            history = done  # committed: last.pt holds it
            if store.publish():
                recorded = history
                write_record("running", None, history)
            tell(f"{label} epoch {epoch}/{config.epochs}: train loss {row['train_loss']:.4f}, val loss "
                 f"{row['val_loss']:.4f}, val acc {row['val_acc']:.1%} ({row['epoch_time_s']:.1f}s)"
                 + (f", {row['skipped_steps']} fp16 steps skipped" if row["skipped_steps"] else ""))
            if dist.enabled:
                torch_dist.barrier()
            if stop_after_epoch is not None and epoch >= stop_after_epoch and epoch < config.epochs:
                raise KeyboardInterrupt
        else:
            if config.checkpoints != "best+last":  # a finished run never resumes: its last.pt need not travel
                store.pending = [name for name in store.pending if name != "last.pt"]
            write_record("complete", None, settle())
            if dist.is_main and config.checkpoints != "best+last":
                store.remove_last()  # only needed to resume, and a finished run never resumes
    except KeyboardInterrupt:
        history = settle()
        write_record("interrupted", None, history)
        ctx.say(f"\ninterrupted: {run_dir} keeps epochs 1-{len(history)}; run the same command again to resume")
        raise
    except RecordError as err:  # e.g. the disk filled up: keep the record at what last.pt holds
        with suppress(RecordError):
            write_record("interrupted", None, recorded)
        raise RecordError(f"{err}; the record keeps epochs 1-{len(recorded)}, which the same command "
                          f"resumes from") from None
    finally:
        logger.close()
        if bar is not None:
            bar.close()
    return run_dir
