"""The run record: what a run folder holds, how it is written (atomically) and read back.

results/runs/<run_id>/
    config.json    the resolved RunConfig (config.py says which fields make the experiment)
    history.csv    one row per finished epoch, HISTORY_COLUMNS
    summary.json   status, bests and their epochs, times, params, FLOPs, environment (see `summarize`)
    last.pt        the state to resume from (train.py); removed once complete (kept after a divergence, or asked)
    best.pt        the weights at the best validation loss (train.py)
    .lock          pid and host of the process training it

The trainer writes history and summary through this module (atomically: files.atomic_write), config.json
through RunConfig.save, checkpoints through device.Checkpoints; lambdalib.runs reads whole records.
"""
from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import platform
from operator import itemgetter
from pathlib import Path

import numpy as np

from .files import RecordError, atomic_write_text, describe_os_error, first_line, make_dir, pid_alive

log = logging.getLogger(__name__)

HISTORY_COLUMNS = ["epoch", "lr", "train_loss", "train_acc", "val_loss", "val_acc", "grad_norm_mean", "grad_norm_max",
                   "epoch_time_s", "train_images_per_s", "finite", "precision", "loss_scale", "skipped_steps",
                   "val_loss_batch_stats"]  # val loss with BatchNorm on batch statistics: tells BN lag from explosion
TIMING_COLUMNS = ("epoch_time_s", "train_images_per_s")  # the only columns allowed to differ between repeats

FINISHED = ("complete", "diverged")  # a finished run never trains again and makes the tables


class RunBusyError(ValueError):
    """Another live process on this machine is training the same run folder."""


def history_csv(history: list[dict]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=HISTORY_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(history)
    return out.getvalue()


def write_history(run_dir: Path, history: list[dict]) -> None:
    atomic_write_text(Path(run_dir) / "history.csv", history_csv(history))


def write_summary(run_dir: Path, summary: dict) -> None:
    atomic_write_text(Path(run_dir) / "summary.json", json.dumps(summary, indent=2) + "\n")


def load_checkpoint(path: Path, refusal: str, unreadable: str = "", *, also: tuple[str, ...] = ()) -> dict:
    """best.pt or last.pt as train.py saved it (a dict with the 'model' state dict and the 'config' dict, and
    non-empty `also`), loaded on the CPU without running pickled code. Else ValueError `refusal`, or `unreadable`
    when torch cannot read the file; in both {path} names it, in `unreadable` {reason} is torch's first line."""
    import torch  # late: reading records needs no torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001  (torch raises many kinds for a damaged file: a zip, safetensors, ...)
        raise ValueError((unreadable or refusal).format(path=path, reason=first_line(err))) from None
    if not (isinstance(state, dict) and isinstance(state.get("model"), dict) and isinstance(state.get("config"), dict)
            and all(state.get(key) for key in also)):
        raise ValueError(refusal.format(path=path))
    return state


# ------------------------------------------------------------------------------------- reading
def _parse(column: str, value: str):
    if column == "precision":
        return value
    if column == "finite":
        return value == "True"
    if column in ("epoch", "skipped_steps"):
        return int(value) if value else 0
    return float(value) if value else math.nan


def read_history(run_dir: Path) -> list[dict]:
    """history.csv -> list of dicts with numbers parsed. Columns added since a record was written read as
    missing; a file that is not a history (no epoch column, a cell that is no number) raises RecordError naming it."""
    path = Path(run_dir) / "history.csv"
    try:
        with open(path, newline="") as handle:
            rows = list(csv.DictReader(handle))
        if rows and "epoch" not in rows[0]:
            raise ValueError("no epoch column")
        return [{k: _parse(k, row.get(k) or "") for k in HISTORY_COLUMNS} for row in rows]
    except (ValueError, TypeError, KeyError, csv.Error, UnicodeDecodeError) as err:
        raise RecordError(f"{path} is not a readable history ({err}); delete the run folder to train it again") \
            from None


def load_summary(run_dir: Path) -> dict | None:
    """summary.json as a dict, None when there is none; a corrupt one raises RecordError naming it."""
    path = Path(run_dir) / "summary.json"
    if not path.exists():
        return None
    try:
        summary = json.loads(path.read_text())
        if not isinstance(summary, dict) or "status" not in summary:
            raise ValueError("no status")
        return summary
    except (ValueError, UnicodeDecodeError) as err:
        raise RecordError(f"{path} is not a readable summary ({err}); delete the run folder to train it again") \
            from None


def load_config(run_dir: Path):
    from .config import RunConfig

    path = Path(run_dir) / "config.json"
    try:
        return RunConfig.load(path)
    except (ValueError, TypeError, UnicodeDecodeError) as err:
        raise RecordError(f"{path} is not a readable config ({err})") from None


def status(run_dir: Path, summary: dict | None = None) -> str | None:
    """The run's status as a reader should see it: a record that says "running" while no live process
    holds its lock is "crashed" (killed, out of memory, a lost session); re-running resumes it."""
    summary = load_summary(run_dir) if summary is None else summary
    if summary is None:
        return None
    if summary["status"] == "running" and lock_owner(run_dir) is None:
        return "crashed"
    return summary["status"]


# ------------------------------------------------------------------------------------ summary
def summarize(history: list[dict], status: str, diverged_at: int | None, extra: dict) -> dict:
    """The summary.json fields derived from a history; bests come from the epochs before any divergence."""
    good = [r for r in history if r["epoch"] != diverged_at]
    bests = {}
    for column, pick in (("train_loss", min), ("val_loss", min), ("val_acc", max)):
        rows = [r for r in good if math.isfinite(r[column])]
        row = pick(rows, key=itemgetter(column)) if rows else {}
        bests[f"best_{column}"], bests[f"best_{column}_epoch"] = row.get(column), row.get("epoch")
    return dict(status=status, diverged_at=diverged_at, epochs_done=len(history), **bests,
                train_time_s=sum(r["epoch_time_s"] for r in history),
                mean_train_images_per_s=float(np.mean([r["train_images_per_s"] for r in history])) if history else None,
                skipped_steps=int(sum(r.get("skipped_steps", 0) or 0 for r in history)), **extra)


# --------------------------------------------------------------------------------------- lock
def lock_owner(run_dir: Path) -> dict | None:
    """{pid, host} of the live process training this folder; None when nobody is (no lock, or a dead
    owner on this machine). A lock from another host counts as live: we cannot tell from here."""
    lock = Path(run_dir) / ".lock"
    try:
        owner = json.loads(lock.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(owner, dict):
        return None
    pid = owner.get("pid")
    if owner.get("host") == platform.node() and not (isinstance(pid, int) and pid_alive(pid)):
        return None
    return owner


def acquire_run_lock(run_dir: Path) -> Path:
    """One trainer per run folder: two processes on the same run would interleave their writes. A lock whose
    owner is dead, is this process, or sits on another host (a lost Colab session's, on a shared drive) is taken
    over, with a note for the latter."""
    make_dir(run_dir)
    lock, host = run_dir / ".lock", platform.node()
    for _ in range(2):
        try:
            handle = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            owner = lock_owner(run_dir) or {}
            if owner.get("host") == host and owner["pid"] != os.getpid():
                raise RunBusyError(f"{run_dir} is being trained by process {owner['pid']} on this machine; wait for "
                                   f"it or stop it (a lock left by a crash is taken over automatically)") from None
            if owner.get("host") not in (None, host):
                log.info(f"note: taking over {lock} left by {owner.get('host')}")
            lock.unlink(missing_ok=True)
            continue
        except OSError as err:
            raise RecordError(describe_os_error(err, lock)) from err
        with os.fdopen(handle, "w") as out:
            json.dump({"pid": os.getpid(), "host": host}, out)
        return lock
    raise RunBusyError(f"could not take {lock}: another process keeps recreating it")
