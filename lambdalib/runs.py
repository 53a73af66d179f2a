"""The one reader of whole run records: results/runs/*/ -> one table of run records, and seeds -> table cells.

A row is one run record (its summary.json, its set-up, its history as `_history`); `aggregate` turns the
finished runs of one experiment (`RunConfig.experiment_id`: the identity without the seed) into one cell. A
set-up is the identity without model, lambda layer, noise and seed: runs of two set-ups never share a table
section or a figure. A record that cannot be read is skipped with a warning naming the file.
"""
from __future__ import annotations

import hashlib
import json
import math
import re
import warnings
from dataclasses import dataclass, fields, replace
from pathlib import Path

import pandas as pd

from . import fmt, paths, record, registry
from .config import PRESETS, RunConfig
from .curves import is_finite
from .record import FINISHED

# identity fields that vary inside a set-up (the seed also inside a cell; the lambda layer's implementation is
# part of the label, so a Lambda-ResNet of each implementation sits beside the ResNet); the others define the set-up
CELL_FIELDS = ("model", "lambda_layer", "noise", "seed")
# identity fields every set-up label states; the others are named only when they differ from the preset's value
SCALE_FIELDS = ("preset", "data", "train_per_class", "val_per_class", "epochs", "img_size")
# what 'auto' / 0 stand for in a label: a single process in full precision (a record holds the resolved values)
PLAIN = dict(amp="off", world_size=1)
AMP_OF_DTYPE = {"off": "off", "bf16": "bf16", "fp16": "fp16", "bfloat16": "bf16", "float16": "fp16"}  # summary amp
SMOKE_EPOCHS = 10  # a set-up with fewer epochs or a per-class subset is a smoke test
EMBEDDED = "embedded"
# summary.json metrics shown as mean ± std over the runs of a cell (CSV columns keep these names)
METRICS = ("best_train_loss", "best_val_loss", "train_time_s", "best_val_acc", "mean_train_images_per_s")
# a set-up's kind (its label's first word) -> how its scale sentence opens and ends
SCALE_SENTENCE = {"Smoke test": ("Smoke test of the pipeline", " — not results."),
                  "Small-scale study": ("Small-scale study", ", not the report's full Imagenette."),
                  "Full scale": ("Full-scale runs", ".")}
SETUP_COLUMNS = ["setup", "setup_label", "smoke_test", "preset", "data", "train_per_class", "val_per_class",
                 "epochs", "img_size", "recipe"]


def _resolve(config: RunConfig, summary: dict) -> RunConfig:
    """The config with 'auto' made concrete from what the run did (its summary), not from this machine:
    records written before configs were saved resolved hold amp 'auto' / world_size 0."""
    changes = {}
    if config.amp == "auto":
        changes["amp"] = AMP_OF_DTYPE.get(str(summary.get("amp")), PLAIN["amp"])
    if not config.world_size:
        changes["world_size"] = int((summary.get("environment") or {}).get("world_size") or PLAIN["world_size"])
    return replace(config, **changes)


def setup_of(config: RunConfig) -> dict:
    """What makes runs comparable: the identity without CELL_FIELDS, as a file-name slug (readable
    scale + a hash of the whole set-up, so two set-ups never share a slug), its scale fields, the other
    fields that differ from the preset ('recipe') and whether it is a smoke test."""
    key = {k: v for k, v in config.identity().items() if k not in CELL_FIELDS}
    # the lc scope a set-up asked for (R18 and rpe runs of the same grid share it): lc runs sit beside their
    # baselines, and two scopes are two set-ups; records from before the field read as the report's 23
    key["lc_scope"] = config.resolved().lc_scope
    digest = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:8]
    defaults = {**{f.name: f.default for f in fields(RunConfig)}, **PRESETS.get(key["preset"], {}), **PLAIN}
    recipe = ", ".join(f"{k}={fmt.value(v)}" for k, v in key.items() if k not in SCALE_FIELDS and v != defaults.get(k))
    per_class = (f"{key['train_per_class'] or 'all'}+{key['val_per_class'] or 'all'}pc"
                 if key["train_per_class"] or key["val_per_class"] else "all")
    slug = f"{key['preset']}_{key['data']}_{per_class}_e{key['epochs']}_{key['img_size']}px_{digest}"
    smoke = bool(key["train_per_class"] or key["val_per_class"] or key["epochs"] < SMOKE_EPOCHS)
    return dict(setup=re.sub(r"[^A-Za-z0-9.+_-]+", "-", slug), smoke_test=smoke,
                **{k: key[k] for k in SCALE_FIELDS}, recipe=recipe)


def _images(group: pd.DataFrame, column: str) -> str:
    values = sorted({str(int(v)) for v in group[column].dropna()}) if column in group else []
    return " or ".join(values) or "?"


def _describe(setup: pd.Series, group: pd.DataFrame) -> tuple[str, str]:
    """A set-up's section label and its one-sentence scale (the README's banner), from its fields."""
    train, val = _images(group, "train_images"), _images(group, "val_images")
    tpc, vpc = setup["train_per_class"], setup["val_per_class"]
    data = "the embedded mini subset" if setup["data"] == EMBEDDED else setup["data"]
    recipe = f", {setup['recipe']}" if setup["recipe"] else ""
    epochs = fmt.plural(setup["epochs"], "epoch")
    if tpc or vpc:
        images = f"{tpc or 'all'}/{vpc or 'all'} images per class ({train} train / {val} val)"
        on = (f"{tpc} training images per class ({train} in all; {val} validation images)" if tpc
              else f"all {train} training images ({val} validation images, {vpc} per class)")
    else:
        images = f"{train} train / {val} val images"
        on = f"all {train} training images ({val} validation images)"
    kind = "Smoke test" if setup["smoke_test"] else "Small-scale study" if setup["data"] == EMBEDDED else "Full scale"
    px = f"{setup['img_size']} px"
    label = " · ".join([kind, f"preset {setup['preset']}", str(setup["data"]), images, epochs, px]
                       + ([setup["recipe"]] if setup["recipe"] else []))
    opening, ending = SCALE_SENTENCE[kind]
    return label, f"{opening}: {epochs} on {on} of {data} at {px} (preset {setup['preset']}{recipe}){ending}"


def relative(run_dir: Path, results_dir: Path | None) -> str:
    """A run folder as written into the report: relative to the results folder, never absolute."""
    if results_dir is not None and run_dir.resolve().is_relative_to(results_dir.resolve()):
        return run_dir.resolve().relative_to(results_dir.resolve()).as_posix()
    return f"{run_dir.parent.name}/{run_dir.name}" if run_dir.parent.name == "runs" else run_dir.name


@dataclass
class Record:
    """One run folder as written: its summary, its config (as saved), its epochs and its reader status."""
    path: Path
    summary: dict
    config: RunConfig
    history: list[dict]
    status: str


class UnreadableRecord(record.RecordError):
    """A run record one of whose files cannot be read; `file` names it (summary.json, config.json, history.csv)."""

    def __init__(self, file: str, err: BaseException) -> None:
        self.file = file
        super().__init__(str(err) if isinstance(err, record.RecordError) else f"{file}: {type(err).__name__}: {err}")


_READ_ERRORS = (record.RecordError, OSError, ValueError, TypeError, KeyError, AttributeError)


def read_record(run_dir: Path | str) -> Record | None:
    """The record in `run_dir` (None: no summary.json, not a run record yet); UnreadableRecord when a file of
    it cannot be read. Report, claims, figures, attention and export read records here; the trainer's resume check
    (and the sweep's skip, which asks it) reads one folder's summary and config through `record`."""
    run_dir, file = Path(run_dir), "summary.json"
    try:
        summary = record.load_summary(run_dir)
        if summary is None:
            return None
        file = "config.json"
        if not (run_dir / file).exists():
            raise record.RecordError(f"{run_dir / file} is missing (summary.json without its config)")
        config = record.load_config(run_dir)
        file = "history.csv"
        return Record(run_dir, summary, config, record.read_history(run_dir), record.status(run_dir, summary))
    except _READ_ERRORS as err:
        raise UnreadableRecord(file, err) from err


def _row(rec: Record) -> dict:
    """One run record as a row of the runs table."""
    summary = rec.summary
    config = _resolve(rec.config, summary)
    setup = setup_of(config)
    spec = registry.SPECS.get(summary.get("model"))
    env = summary.get("environment") or {}
    label = registry.run_label(config.model, config.lambda_layer)  # records before #26 hold the report label only
    noise = summary.get("noise", config.noise)
    images = f"{summary.get('train_images', '?')} train / {summary.get('val_images', '?')} val images"
    return dict(summary, **setup, experiment_id=config.experiment_id, seed=config.seed, status=rec.status,
                model_order=registry.model_rank(label), family=spec.family if spec else None, label=label, noise=noise,
                architecture=fmt.architecture(label, noise), data_desc=f"{setup['data']} ({images})", t0=config.t0,
                t_mult=config.t_mult, **{f"env_{k}": v for k, v in env.items()}, _path=rec.path, _history=rec.history)


def load_runs(results_dir: Path | None, runs, strict: bool = False) -> tuple[pd.DataFrame, list[dict]]:
    """(one row per readable run record, the unreadable ones: run, file, problem). Each unreadable record
    is also a warning naming its file (strict: raised instead)."""
    if runs is None:
        runs = run_folders(results_dir)
    rows, skipped = [], []
    for run_dir in map(Path, runs):
        rel = relative(run_dir, results_dir)
        try:
            rec = read_record(run_dir)
            row = None if rec is None else _row(rec)
        except _READ_ERRORS as err:
            # the record's own problem (unreadable file, unknown model, missing field): skip this run only
            if strict:
                raise
            if not isinstance(err, UnreadableRecord):
                err = UnreadableRecord("config.json", err)  # readable files, but not a config we understand
            warnings.warn(f"skipping run {run_dir.name}: {err}", stacklevel=3)
            skipped.append(dict(Run=run_dir.name, File=f"{rel}/{err.file}",
                                Problem=str(err).replace(str(run_dir), rel)))
            continue
        if row is not None:  # None: not a run record (yet)
            row["run_dir"] = rel
            row.setdefault("run_id", run_dir.name)
            rows.append(row)
    frame = pd.DataFrame(rows)
    if frame.empty:
        return frame, skipped
    labels = {setup: _describe(group.iloc[0], group) for setup, group in frame.groupby("setup", sort=False)}
    frame["setup_label"] = frame["setup"].map(lambda s: labels[s][0])
    frame["scale"] = frame["setup"].map(lambda s: labels[s][1])
    frame["_report_first"] = frame["preset"] != "report"  # the report's recipe leads, then full-scale set-ups
    frame = frame.sort_values(["_report_first", "smoke_test", "setup", "model_order", "label", "noise", "seed",
                               "run_id"])
    return frame.drop(columns="_report_first").reset_index(drop=True), skipped


def collect(results_dir: Path | str | None = None, runs=None) -> pd.DataFrame:
    """One row per readable run record, sorted by set-up, model, noise and seed: summary fields, reader status
    ('crashed' for a dead 'running'), set-up, run_dir relative to the results folder, internal columns with '_'."""
    base = Path(results_dir) if results_dir else (paths.results_dir() if runs is None else None)
    return load_runs(base, runs)[0]


def aggregate(runs: pd.DataFrame) -> pd.DataFrame:
    """Finished runs -> one row per experiment (a table cell): mean and std of METRICS over its seeds."""
    if runs.empty:
        return pd.DataFrame()
    cells = []
    for _, group in finished_runs(runs).groupby("experiment_id", sort=False):
        first = group.iloc[0]
        diverged = [e for e in (diverged_epoch(run) for _, run in group.iterrows()) if e is not None]
        cell = {k: first[k] for k in (*SETUP_COLUMNS, "scale", "experiment_id", "architecture", "label", "model",
                                      "noise", "model_order", "family")}
        statuses = group["status"].value_counts().items()
        cell.update(n_runs=len(group), seeds=";".join(str(s) for s in group["seed"]), run_ids=";".join(group["run_id"]),
                    status=", ".join(f"{n} {s}" for s, n in statuses) if len(group) > 1 else first["status"],
                    best_val_loss_epoch=";".join(str(int(e)) for e in group["best_val_loss_epoch"].dropna()),
                    diverged_at=";".join(str(e) for e in diverged), n_diverged=len(diverged),
                    params=first.get("params"), gflops=first.get("gflops"))
        for metric in METRICS:  # skipna=False: a seed without a value leaves the mean undefined, not biased
            values = pd.to_numeric(group[metric], errors="coerce") if metric in group else pd.Series([math.nan])
            cell[metric] = values.mean(skipna=False)
            cell[f"{metric}_std"] = values.std(ddof=1, skipna=False)  # NaN for a single seed
        cells.append(cell)
    return pd.DataFrame(cells)


def t_half_width(std: float, n: int, confidence: float) -> float:
    """Half the width of the two-sided Student-t interval at `confidence` of a mean over n values of sample std `std`
    (NaN for n < 2: no interval from one value; NaN for a NaN std)."""
    from scipy import stats  # late: reading runs needs no scipy

    if n < 2:
        return math.nan
    return float(stats.t.ppf(1 - (1 - confidence) / 2, n - 1)) * std / math.sqrt(n)


def diverged_epoch(run) -> int | None:
    """The epoch a run (a row of `collect`) diverged at; None unless its status is diverged with a recorded epoch."""
    return int(float(run["diverged_at"])) if run["status"] == "diverged" and is_finite(run["diverged_at"]) else None


def finished_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """The runs whose record is final (complete or diverged): what tables, figures and claims use."""
    return runs if runs.empty else runs[runs["status"].isin(FINISHED)]


def run_folders(results_dir: Path) -> list[Path]:
    """Every folder under results/runs/ (a run record or not yet one)."""
    return sorted(p for p in (Path(results_dir) / "runs").glob("*") if p.is_dir())
