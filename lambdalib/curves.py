"""What one run's history says: the statistics the claims judge (the val-loss rise after its minimum, the late
oscillation, whether the schedule ends a cosine cycle) and its val-loss spikes with their cause. Reads history rows
(runs.read_record's dicts); no torch, no pandas."""
from __future__ import annotations

import math

import numpy as np

from .imagenette import CHANCE_LOSS

LATE_EPOCH = 10  # the report: "after about 10 epochs"
# a spike: val loss > SPIKE_FACTOR x its lowest so far (or not finite; far above noise near ln 10, far below the
# report's 42 to 71622); an explosion: grad norm > GRAD_BURST_FACTOR x the run's median or train loss risen 1.5x
SPIKE_FACTOR, GRAD_BURST_FACTOR, TRAIN_RISE_FACTOR = 2.0, 10.0, 1.5
CHANCE_MARGIN = 0.1  # "well below chance": under (1 − 0.1) ln 10; "near chance": within 0.1 ln 10 of it
AT_CHANCE = 0.95  # a loss >= 0.95 ln 10 is at (or above) chance
CYCLE_END_LR = 0.1  # a run ends a cosine cycle when its last epoch's lr is its lowest and <= 10 % of its peak
SPIKE_EXPLOSION, SPIKE_BN, SPIKE_WEIGHTS = ("gradient explosion", "BatchNorm running statistics",
                                           "weights (spikes with batch statistics too; gradients calm)")
SPIKE_UNCLASSIFIED, SPIKE_UNRELIABLE = ("unclassified (no val_loss_batch_stats in this record)",
                                        "unclassified (val_loss_batch_stats unreliable in this run)")


def is_finite(value) -> bool:
    """Whether `value` (a record's cell: a number, None, a string, NaN) is a finite number."""
    try:
        return value is not None and math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def finite_or_nan(value) -> float:
    return float(value) if is_finite(value) else math.nan


def _column(history: list[dict], name: str) -> list[float]:
    return [float(r[name]) for r in history if is_finite(r.get(name))]


def val_loss_rise(history: list[dict]) -> float:
    """Overfitting: the last finite val loss minus the lowest one (0 when the last is the lowest)."""
    losses = _column(history, "val_loss")
    return losses[-1] - min(losses) if losses else math.nan


def late_oscillation(history: list[dict], after: int = LATE_EPOCH) -> float:
    """Instability: mean |val_loss(e) − val_loss(e−1)| over epochs e > `after` with both losses finite."""
    val = {int(r["epoch"]): r["val_loss"] for r in history if is_finite(r.get("val_loss"))}
    steps = [abs(val[e] - val[e - 1]) for e in sorted(val) if e > after and e - 1 in val]
    return float(np.mean(steps)) if steps else math.nan


def ends_cycle(history: list[dict]) -> bool:
    """The run's last epoch has its lowest learning rate, <= CYCLE_END_LR of its peak (a cosine cycle's end)."""
    lrs = _column(history, "lr")
    return bool(lrs) and lrs[-1] <= min(lrs) and lrs[-1] <= CYCLE_END_LR * max(lrs)


def batch_stats_reliable(history: list[dict]) -> bool:
    """False when val_loss_batch_stats never gets below chance (>= AT_CHANCE ln 10) while the eval-mode val loss
    gets well below it: such a column (records computed on class-sorted batches) says nothing about the weights."""
    batch, val = _column(history, "val_loss_batch_stats"), _column(history, "val_loss")
    return not (batch and val and min(batch) >= AT_CHANCE * CHANCE_LOSS
                and min(val) < (1 - CHANCE_MARGIN) * CHANCE_LOSS)


def find_spikes(history: list[dict]) -> list[dict]:
    """Val-loss spikes of one run (dicts: epoch, val_loss, factor, batch_stats, grad_norm_max, grad_median,
    train_loss, cause). Cause: SPIKE_EXPLOSION when gradients or train loss went too; else by the same weights on
    batch statistics: SPIKE_BN when that loss does not spike, SPIKE_WEIGHTS when it does; SPIKE_UNCLASSIFIED without
    the column, SPIKE_UNRELIABLE when it is unreliable (`batch_stats_reliable`)."""
    grads = _column(history, "grad_norm_max")
    median, reliable = float(np.median(grads)) if grads else math.nan, batch_stats_reliable(history)
    best_val = best_train = best_batch = math.inf
    spikes = []
    for row in history:
        val, train = finite_or_nan(row.get("val_loss")), finite_or_nan(row.get("train_loss"))
        batch, grad = finite_or_nan(row.get("val_loss_batch_stats")), finite_or_nan(row.get("grad_norm_max"))
        if math.isfinite(best_val) and not val <= SPIKE_FACTOR * best_val:  # NaN counts as a spike
            burst = math.isfinite(median) and not grad <= GRAD_BURST_FACTOR * median
            rise = not math.isfinite(train) or (math.isfinite(best_train) and train > TRAIN_RISE_FACTOR * best_train)
            reference = best_batch if math.isfinite(best_batch) else best_val
            cause = (SPIKE_EXPLOSION if burst or rise else SPIKE_UNCLASSIFIED if not math.isfinite(batch)
                     else SPIKE_UNRELIABLE if not reliable else SPIKE_BN if batch <= SPIKE_FACTOR * reference
                     else SPIKE_WEIGHTS)
            spikes.append(dict(epoch=int(row["epoch"]), val_loss=val, factor=val / best_val if math.isfinite(val)
                               else math.inf, batch_stats=batch, grad_norm_max=grad, grad_median=median,
                               train_loss=train, cause=cause))
        best_val = min(best_val, val) if math.isfinite(val) else best_val
        best_train = min(best_train, train) if math.isfinite(train) else best_train
        best_batch = min(best_batch, batch) if math.isfinite(batch) else best_batch
    return spikes
