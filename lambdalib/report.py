"""The report's tables and figures, rebuilt from run records only (nothing typed by hand).

    from lambdalib import report
    report.build()              # results/runs/*/ -> results/{README.md, tables/, figures/}

Which runs count: every folder under runs/ with a summary.json, read through `lambdalib.record`. A run
whose summary.json, config.json or history.csv cannot be read is skipped with a warning naming the file,
and listed as skipped in the README; everything else is still built. Finished runs ("complete" and
"diverged") make the tables and figures; diverged ones are included and marked (the epoch they diverged
at, an 'x' on the curves), since divergence is one of the report's findings. Unfinished runs
("running", "interrupted", and "crashed": a record that says running while no live process holds its
lock) are left out of tables and figures, because their best values cover only part of the schedule and
would bias a mean; they are listed, flagged, in the runs index and the README.

Cells and set-ups: a table cell is one experiment (`RunConfig.experiment_id`: the run's identity without
its seed), so only seeds of one experiment are ever aggregated, as mean ± sample std (ddof=1). A set-up
(one section in each table, its own figures) is the identity without model, noise and seed: runs that
differ in data, subset size, epochs, image size, preset, lr, batch size, world size, precision, weight
decay, schedule, clipping, divergence threshold or synthetic noise (not Imagenette's official noisy
labels, so not comparable with the published rows) never share a section. A section's label states its
scale (data, images, epochs, px, preset) and every identity field that differs from the preset's value
(amp and world size: from off and 1). A set-up is a smoke test when it trains fewer than SMOKE_EPOCHS
epochs or on a per-class subset (a set-up on the whole embedded mini subset is a small-scale study, labelled
as such); the README says so in its title and first
lines, and every set-up's scale opens its sections (README and tables/*.md), its figure titles and the
comparison with the published numbers, directly above that table.

Figures: loss curves per family (diverged epochs as an 'x'), best val top-1 vs noise at the noise levels'
true spacing with a chance line and error bars only where a cell has >= 2 seeds (n in the caption), and
`plot_run` for one run (the training notebooks' closing figure). This module decides which figures the
report has and what goes in each (FIGURES, `build`, `plot_run`); how they are drawn (colours, axes,
markers, PNG bytes) is lambdalib/figures.py, whose plot_curves, plot_accuracy_vs_noise, curves_figure,
run_figure and accuracy_figure are re-exported here.

Writing: every table and figure is computed before the first file is written, and each file is written
atomically, so a failure mid-build leaves the previous report as it was. A results folder without runs/
is an error (a mistyped --results would otherwise get an empty report). Written files hold no absolute
paths (run folders are given relative to the results folder), so rebuilding elsewhere does not change
them.

The published numbers of the report (Tables 1, 2, 4, 5) are data in lambdalib/published.csv; its
Table 3 repeats Table 5, so the L3 rpe numbers are missing there and shown as missing.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import warnings
from dataclasses import fields, replace
from importlib import resources
from pathlib import Path

import pandas as pd

from . import claims, figures, models, paths, record
from .config import PRESETS, RunConfig

# how the figures look is figures.py; these stay importable (and patchable) here: build and plot_run call
# them by these names, and notebooks and tests call report.plot_curves etc.
from .figures import accuracy_figure, curves_figure, plot_accuracy_vs_noise, plot_curves, run_figure  # noqa: F401
from .record import FINISHED

log = logging.getLogger(__name__)

# number -> (title as in the report, file stem, (position, stage) of its models; None = the baselines)
TABLES = {
    1: ("Baseline performance", "table1_baselines", (None, None)),
    2: ("LambdaResNet Layer2 rpe", "table2_L2_rpe", ("rpe", 2)),
    3: ("LambdaResNet Layer3 rpe", "table3_L3_rpe", ("rpe", 3)),
    4: ("LambdaResNet Layer2 lc", "table4_L2_lc", ("lc", 2)),
    5: ("LambdaResNet Layer3 lc", "table5_L3_lc", ("lc", 3)),
}
# identity fields that vary inside a set-up (the seed also inside a cell); every other one defines the set-up
CELL_FIELDS = ("model", "noise", "seed")
# identity fields every set-up label states; the others are named only when they differ from the preset's value
SCALE_FIELDS = ("preset", "data", "train_per_class", "val_per_class", "epochs", "img_size")
# what 'auto' / 0 stand for in a label: a single process in full precision (a record holds the resolved values)
PLAIN = dict(amp="off", world_size=1)
AMP_OF_DTYPE = {"off": "off", "bf16": "bf16", "fp16": "fp16", "bfloat16": "bf16", "float16": "fp16"}  # summary amp
SMOKE_EPOCHS = 10  # a set-up with fewer epochs or a per-class subset is a smoke test
EMBEDDED = "embedded"
CLASSES = figures.CLASSES  # Imagenette's 10: chance accuracy is 1/10
# summary.json metrics shown as mean ± std over the runs of a cell (CSV columns keep these names)
METRICS = ("best_train_loss", "best_val_loss", "train_time_s", "best_val_acc", "mean_train_images_per_s")
NO_RUNS = figures.NO_RUNS  # "No runs yet.": the same words in empty tables and empty figures


# ------------------------------------------------------------------------------------ formatting
def parse_duration(text: str | None) -> float:
    """'1h 32m 37s' -> 5557.0. The report sometimes drops the final 's' ('2h 22m 41'): read as seconds."""
    if text is None or (isinstance(text, float) and math.isnan(text)) or not str(text).strip():
        return math.nan
    match = re.fullmatch(r"\s*(?:(\d+)\s*h)?\s*(?:(\d+)\s*m)?\s*(?:(\d+(?:\.\d+)?)\s*s?)?\s*", str(text))
    if not match or not any(match.groups()):
        raise ValueError(f"not a duration like '1h 32m 37s': {text!r}")
    hours, minutes, seconds = (float(g or 0) for g in match.groups())
    return hours * 3600 + minutes * 60 + seconds


def format_duration(seconds: float | None) -> str:
    """5557 -> '1h 32m 37s' (the report's format; leading zero units dropped: '2m 5s', '9s')."""
    if seconds is None or pd.isna(seconds) or not math.isfinite(seconds):
        return "—"
    total = int(round(seconds))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes}m {secs}s"
    return f"{minutes}m {secs}s" if minutes else f"{secs}s"


def _number(value, digits: int = 3) -> str:
    if value is None or pd.isna(value):
        return "—"
    value = float(value)
    return f"{value:.{digits}f}" if abs(value) < 1e6 else f"{value:.{digits}e}"  # exploded losses stay short


def _percent(value) -> str:
    return "—" if value is None or pd.isna(value) else f"{100 * value:.1f}%"


def _with_std(mean, std, fmt) -> str:
    text = fmt(mean)
    return text if pd.isna(std) or pd.isna(mean) else f"{text} ± {fmt(std)}"


def _value(value) -> str:
    """A config value in a label: floats in %g (1e-06 and 1e+06 stay apart), the rest as str."""
    return f"{value:g}" if isinstance(value, float) else str(value)


def _plural(n, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def architecture(label: str, noise: float) -> str:
    """The report's row name: 'ResNet18(0%)', 'LR18_L2(rpe)(25%)'."""
    name = re.sub(r"^R(\d+)$", r"ResNet\1", label)
    return f"{name}({noise * 100:g}%)"


def markdown_table(frame: pd.DataFrame, empty: str = NO_RUNS) -> str:
    """GitHub markdown for a frame of strings; columns of numbers are right-aligned."""
    if frame.empty:
        return f"_{empty}_\n"
    cells = frame.astype(str).map(lambda s: s.replace("|", "\\|"))
    numeric = [bool(cells[c].str.match(r"^(?:[-\d—]|missing$)").all()) for c in cells.columns]
    lines = ["| " + " | ".join(frame.columns) + " |",
             "|" + "|".join("---:" if right else ":---" for right in numeric) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in cells.itertuples(index=False)]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------ data
def load_published() -> pd.DataFrame:
    """The report's published numbers (lambdalib/published.csv); L3 rpe values are NaN (never published)."""
    with resources.files("lambdalib").joinpath("published.csv").open() as handle:
        return pd.read_csv(handle, dtype={"training_time": str, "note": str})


def _resolve(config: RunConfig, summary: dict) -> RunConfig:
    """The config with 'auto' made concrete from what the run did (its summary), not from this machine:
    records written before configs were saved resolved hold amp 'auto' / world_size 0."""
    changes = {}
    if config.amp == "auto":
        changes["amp"] = AMP_OF_DTYPE.get(str(summary.get("amp")), PLAIN["amp"])
    if not config.world_size:
        changes["world_size"] = int((summary.get("environment") or {}).get("world_size") or PLAIN["world_size"])
    return replace(config, **changes)


def _setup(config: RunConfig) -> dict:
    """What makes runs comparable: the identity without model, noise and seed, as a file-name slug (readable
    scale + a hash of the whole set-up, so two set-ups never share a slug), its scale fields, the other
    fields that differ from the preset ('recipe') and whether it is a smoke test."""
    ident = config.identity()
    key = {k: v for k, v in ident.items() if k not in CELL_FIELDS}
    # the lc scope a set-up asked for (R18 and rpe runs of the same grid share it): lc runs sit beside their
    # baselines, and two scopes are two set-ups; records from before the field read as the report's 23
    key["lc_scope"] = config.resolved().lc_scope
    digest = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:8]
    defaults = {**{f.name: f.default for f in fields(RunConfig)}, **PRESETS.get(key["preset"], {}), **PLAIN}
    recipe = ", ".join(f"{k}={_value(v)}" for k, v in key.items()
                       if k not in SCALE_FIELDS and v != defaults.get(k))
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
    epochs = _plural(setup["epochs"], "epoch")
    if tpc or vpc:
        images = f"{tpc or 'all'}/{vpc or 'all'} images per class ({train} train / {val} val)"
        on = (f"{tpc} training images per class ({train} in all; {val} validation images)" if tpc
              else f"all {train} training images ({val} validation images, {vpc} per class)")
    else:
        images = f"{train} train / {val} val images"
        on = f"all {train} training images ({val} validation images)"
    small = setup["data"] == EMBEDDED
    kind = "Smoke test" if setup["smoke_test"] else "Small-scale study" if small else "Full scale"
    label = " · ".join([kind, f"preset {setup['preset']}",
                        str(setup["data"]), images, epochs, f"{setup['img_size']} px"]
                       + ([setup["recipe"]] if setup["recipe"] else []))
    if setup["smoke_test"]:
        scale = (f"Smoke test of the pipeline: {epochs} on {on} of {data} at {setup['img_size']} px "
                 f"(preset {setup['preset']}{recipe}) — not results.")
    elif small:
        scale = (f"Small-scale study: {epochs} on {on} of {data} at {setup['img_size']} px "
                 f"(preset {setup['preset']}{recipe}), not the report's full Imagenette.")
    else:
        scale = (f"Full-scale runs: {epochs} on {on} of {data} at {setup['img_size']} px "
                 f"(preset {setup['preset']}{recipe}).")
    return label, scale


def _relative(run_dir: Path, results_dir: Path | None) -> str:
    """A run folder as written into the report: relative to the results folder, never absolute."""
    if results_dir is not None:
        try:
            return run_dir.resolve().relative_to(results_dir.resolve()).as_posix()
        except ValueError:
            pass
    return f"{run_dir.parent.name}/{run_dir.name}" if run_dir.parent.name == "runs" else run_dir.name


def _read_run(run_dir: Path) -> tuple[dict | None, str]:
    """One run record as a row (None: not a run record); raises with the file that failed in `stage`."""
    stage = "summary.json"
    summary = record.load_summary(run_dir)
    if summary is None:
        return None, stage
    stage = "config.json"
    if not (run_dir / stage).exists():
        raise record.RecordError(f"{run_dir / stage} is missing (summary.json without its config)")
    config = _resolve(record.load_config(run_dir), summary)
    setup = _setup(config)
    stage = "history.csv"
    history = record.read_history(run_dir)
    spec = models.SPECS.get(summary.get("model"))
    env = summary.get("environment") or {}
    label = summary.get("label") or models.report_label(config.model)
    noise = summary.get("noise", config.noise)
    return dict(
        summary, **setup, experiment_id=config.experiment_id, seed=config.seed,
        status=record.status(run_dir, summary),
        model_order=models.MODEL_NAMES.index(spec.name) if spec else len(models.MODEL_NAMES),
        family=(spec.position, spec.stage) if spec else None, label=label, noise=noise,
        architecture=architecture(label, noise),
        data_desc=f"{setup['data']} ({summary.get('train_images', '?')} train / "
                  f"{summary.get('val_images', '?')} val images)",
        **{f"env_{k}": v for k, v in env.items()},
        _path=run_dir, _history=history,
    ), stage


def _load(results_dir: Path | None, runs, strict: bool = False) -> tuple[pd.DataFrame, list[dict]]:
    """(one row per readable run record, the unreadable ones: run, file, problem). Each unreadable record
    is also a warning naming its file (strict: raised instead)."""
    if runs is None:
        runs = sorted(p for p in (results_dir / "runs").glob("*") if p.is_dir())
    rows, skipped = [], []
    for run_dir in map(Path, runs):
        stage = "summary.json"
        try:
            row, stage = _read_run(run_dir)
        except (record.RecordError, OSError, ValueError, TypeError, KeyError, AttributeError) as err:
            # the record's own problem (unreadable file, unknown model, missing field): skip this run only
            if strict:
                raise
            warnings.warn(f"report: skipping run {run_dir.name}: {err}", stacklevel=3)
            problem = str(err) if isinstance(err, record.RecordError) else f"{stage}: {type(err).__name__}: {err}"
            problem = problem.replace(str(run_dir), _relative(run_dir, results_dir))
            skipped.append(dict(Run=run_dir.name, File=f"{_relative(run_dir, results_dir)}/{stage}",
                                Problem=problem))
            continue
        if row is None:
            continue  # not a run record (yet)
        row["run_dir"] = _relative(run_dir, results_dir)
        row.setdefault("run_id", run_dir.name)
        rows.append(row)
    frame = pd.DataFrame(rows)
    if frame.empty:
        return frame, skipped
    labels = {}
    for setup, group in frame.groupby("setup", sort=False):
        labels[setup] = _describe(group.iloc[0], group)
    frame["setup_label"] = frame["setup"].map(lambda s: labels[s][0])
    frame["scale"] = frame["setup"].map(lambda s: labels[s][1])
    frame["_report_first"] = frame["preset"] != "report"  # the report's recipe leads, then full-scale set-ups
    frame = frame.sort_values(["_report_first", "smoke_test", "setup", "model_order", "label", "noise", "seed",
                               "run_id"])
    return frame.drop(columns="_report_first").reset_index(drop=True), skipped


def collect_runs(results_dir: Path | str | None = None, runs=None) -> pd.DataFrame:
    """One row per readable run record (folders without summary.json are not run records; unreadable
    records are skipped with a warning naming the file): summary fields, reader status ('crashed' for a
    dead 'running'), seed, experiment_id, set-up fields and label, run_dir relative to the results
    folder; internal columns (_path, _history) start with '_'. Sorted by set-up, model, noise, seed."""
    base = Path(results_dir) if results_dir else (paths.results_dir() if runs is None else None)
    return _load(base, runs)[0]


def aggregate(runs: pd.DataFrame) -> pd.DataFrame:
    """Finished runs -> one row per experiment (a table cell): mean and std of METRICS over its seeds."""
    if runs.empty:
        return pd.DataFrame()
    done = runs[runs["status"].isin(FINISHED)]
    cells = []
    for _, group in done.groupby("experiment_id", sort=False):
        first = group.iloc[0]
        diverged = group["diverged_at"].dropna().astype(int)
        statuses = group["status"].value_counts()
        cell = {k: first[k] for k in (*SETUP_COLUMNS, "scale", "experiment_id", "architecture", "label", "model",
                                      "noise", "model_order", "family")}
        cell.update(
            n_runs=len(group), seeds=";".join(str(s) for s in group["seed"]), run_ids=";".join(group["run_id"]),
            status=", ".join(f"{n} {s}" for s, n in statuses.items()) if len(group) > 1 else first["status"],
            best_val_loss_epoch=";".join(str(int(e)) for e in group["best_val_loss_epoch"].dropna()),
            diverged_at=";".join(str(e) for e in diverged), n_diverged=len(diverged),
            params=first.get("params"), gflops=first.get("gflops"),
        )
        for metric in METRICS:  # skipna=False: a seed without a value leaves the mean undefined, not biased
            values = pd.to_numeric(group[metric], errors="coerce") if metric in group else pd.Series([math.nan])
            cell[metric] = values.mean(skipna=False)
            cell[f"{metric}_std"] = values.std(ddof=1, skipna=False) if len(values) > 1 else math.nan
        cells.append(cell)
    return pd.DataFrame(cells)


def _in_table(cells: pd.DataFrame, number: int) -> pd.DataFrame:
    if cells.empty:
        return cells
    family = TABLES[number][2]
    return cells[cells["family"].map(lambda f: f == family)]


SETUP_COLUMNS = ["setup", "setup_label", "smoke_test", "preset", "data", "train_per_class", "val_per_class",
                 "epochs", "img_size", "recipe"]
TABLE_COLUMNS = SETUP_COLUMNS + [
    "table", "experiment_id", "architecture", "label", "model", "noise", "n_runs", "seeds", "status",
    "best_train_loss", "best_train_loss_std", "best_val_loss", "best_val_loss_std",
    "train_time_s", "train_time_s_std", "training_time", "best_val_acc", "best_val_acc_std",
    "best_val_loss_epoch", "diverged_at", "n_diverged", "params", "gflops",
    "mean_train_images_per_s", "mean_train_images_per_s_std", "run_ids"]


def results_table(cells: pd.DataFrame, number: int) -> pd.DataFrame:
    """Table `number` (1-5) as data, one row per cell, every set-up (the CSV)."""
    rows = _in_table(cells, number).copy()
    if rows.empty:
        return pd.DataFrame(columns=TABLE_COLUMNS)
    rows["table"] = number
    rows["training_time"] = rows["train_time_s"].map(format_duration)
    return rows[TABLE_COLUMNS]


def results_table_markdown(table: pd.DataFrame) -> pd.DataFrame:
    """A results_table (one set-up) in the report's layout plus the columns the report lacked; a value a
    run does not have (a run that diverged in its first epoch has no best) reads '—'."""
    def mean_std(metric: str, fmt) -> list[str]:
        return [_with_std(m, s, fmt) for m, s in zip(table[metric], table[f"{metric}_std"])]

    return pd.DataFrame({
        "Architecture": table["architecture"],
        "Best train loss": mean_std("best_train_loss", _number),
        "Best val loss": mean_std("best_val_loss", _number),
        "Training time": mean_std("train_time_s", format_duration),
        "Best val top-1": mean_std("best_val_acc", _percent),
        "Epoch of best val loss": table["best_val_loss_epoch"].map(lambda e: e.replace(";", ", ") or "—"),
        "Diverged at": [("—" if not d else f"epoch {d.replace(';', ', ')}" + (f" ({k}/{n} runs)" if n > 1 else ""))
                        for d, k, n in zip(table["diverged_at"], table["n_diverged"], table["n_runs"])],
        "Params": table["params"].map(lambda p: "—" if pd.isna(p) else f"{p / 1e6:.2f}M"),
        "GFLOPs": table["gflops"].map(lambda g: "—" if pd.isna(g) else f"{g:.3g}"),
        "img/s": mean_std("mean_train_images_per_s", lambda v: _number(v, 1)),
        "Runs (seeds)": [f"{n} ({s.replace(';', ', ')})" for n, s in zip(table["n_runs"], table["seeds"])],
    })


COMPARISON_COLUMNS = SETUP_COLUMNS + [
    "table", "architecture", "label", "noise",
    "published_best_train_loss", "ours_best_train_loss", "published_best_val_loss", "ours_best_val_loss",
    "published_training_time", "published_training_time_s", "ours_train_time_s", "ours_n_runs",
    "ours_diverged_at", "note"]


def comparison_table(cells: pd.DataFrame, published: pd.DataFrame) -> pd.DataFrame:
    """Published vs ours, row by row (best train/val loss, training time), one block per set-up.

    Every published row appears (missing published values stay NaN); our cells without a published
    counterpart (e.g. 1 % noise) are added to their table. Without runs, ours is empty."""
    pub = published.rename(columns={"best_train_loss": "published_best_train_loss",
                                    "best_val_loss": "published_best_val_loss",
                                    "training_time": "published_training_time",
                                    "training_time_s": "published_training_time_s"})
    setups = cells[SETUP_COLUMNS].drop_duplicates("setup") if not cells.empty else pd.DataFrame([{}])
    blocks = []
    for _, setup in setups.iterrows():
        ours = pd.DataFrame(columns=["label", "noise"])
        if not cells.empty:
            mine = cells[cells["setup"] == setup["setup"]]
            ours = pd.DataFrame({
                "label": mine["label"], "noise": mine["noise"],
                "ours_best_train_loss": mine["best_train_loss"], "ours_best_val_loss": mine["best_val_loss"],
                "ours_train_time_s": mine["train_time_s"], "ours_n_runs": mine["n_runs"],
                "ours_diverged_at": mine["diverged_at"], "ours_table": [_table_of(f) for f in mine["family"]],
            })
            ours = ours[ours["ours_table"].notna()]
        block = pub.merge(ours, on=["label", "noise"], how="outer")
        if "ours_table" in block:
            block["table"] = block["table"].fillna(block["ours_table"])
        block.loc[block["source"].isna(), "note"] = "the report has no such row (e.g. no 1 % noise runs)"
        block["architecture"] = [a if isinstance(a, str) else architecture(lab, n)
                                 for a, lab, n in zip(block["architecture"], block["label"], block["noise"])]
        for column in SETUP_COLUMNS:
            block[column] = setup.get(column, "")
        order = {s.label: i for i, s in enumerate(models.SPECS.values())}
        block["_order"] = block["label"].map(order)
        block = block.sort_values(["table", "_order", "noise"])
        blocks.append(block.reindex(columns=COMPARISON_COLUMNS))
    out = pd.concat(blocks, ignore_index=True)
    out["table"] = out["table"].astype(int)
    return out


def _table_of(family) -> int | None:
    return next((n for n, (_, _, fam) in TABLES.items() if fam == family), None)


def comparison_markdown(block: pd.DataFrame) -> str:
    """One set-up's comparison as markdown; a value the report lacks reads 'missing', notes are footnotes."""
    pub = lambda v: "missing" if pd.isna(v) else _number(v)  # noqa: E731
    notes = list(dict.fromkeys(n for n in block["note"].fillna("") if n))  # distinct, in row order
    table = pd.DataFrame({
        "Table": block["table"],
        "Architecture": block["architecture"],
        "Train loss: published": block["published_best_train_loss"].map(pub),
        "Train loss: ours": block["ours_best_train_loss"].map(_number),
        "Val loss: published": block["published_best_val_loss"].map(pub),
        "Val loss: ours": block["ours_best_val_loss"].map(_number),
        "Time: published": [("missing" if pd.isna(s) else format_duration(s))
                            for s in block["published_training_time_s"]],
        "Time: ours": block["ours_train_time_s"].map(format_duration),
        "Ours diverged at": block["ours_diverged_at"].map(
            lambda d: d.replace(";", ", ") if isinstance(d, str) and d else "—"),
        "Note": block["note"].map(lambda n: f"[{notes.index(n) + 1}]" if isinstance(n, str) and n else ""),
    })
    footnotes = "".join(f"- [{i}] {note}\n" for i, note in enumerate(notes, 1))
    return markdown_table(table) + (f"\nNotes on the published numbers:\n\n{footnotes}" if notes else "")


RUNS_INDEX_COLUMNS = ["Run", "Status", "Set-up", "Architecture", "Seed", "Epochs", "Best val loss",
                      "Best val top-1", "Training time", "Device", "In tables"]


def _status_text(status: str, diverged_at, updated) -> str:
    if status == "diverged" and pd.notna(diverged_at):
        return f"diverged at epoch {int(diverged_at)}"
    if status == "crashed":
        return (f"crashed (says running, but no process holds its lock; last update {updated}; "
                "re-run the same command to resume)")
    if status == "running":
        return f"running (last update {updated})"
    return status


def runs_index(runs: pd.DataFrame) -> pd.DataFrame:
    """Every run record, finished or not, with its status (the unfinished ones are not in the tables)."""
    if runs.empty:
        return pd.DataFrame(columns=RUNS_INDEX_COLUMNS)
    updated = runs["updated"].fillna("unknown") if "updated" in runs else pd.Series(["unknown"] * len(runs))
    device = runs["env_device"].fillna("?") if "env_device" in runs else pd.Series(["?"] * len(runs))
    return pd.DataFrame({
        "Run": runs["run_id"],
        "Status": [_status_text(s, d, u) for s, d, u in zip(runs["status"], runs["diverged_at"], updated)],
        "Set-up": runs["setup"],
        "Architecture": runs["architecture"],
        "Seed": runs["seed"],
        "Epochs": [f"{int(d) if pd.notna(d) else 0}/{e}" for d, e in zip(runs["epochs_done"], runs["epochs"])],
        "Best val loss": runs["best_val_loss"].map(_number),
        "Best val top-1": runs["best_val_acc"].map(_percent),
        "Training time": runs["train_time_s"].map(format_duration),
        "Device": list(device),
        "In tables": runs["status"].map(lambda s: "yes" if s in FINISHED else f"no ({s})"),
    })


# --------------------------------------------------------------------------------------- figures
FIGURES = {  # stem -> (labels per panel, title); the Lambda families mirror Tables 2-5
    "curves_baselines": (["R18", "R34"], "Baselines (Table 1)"),
    **{f"curves_L{stage}_{pos}": ([f"LR18_L{stage}({pos})", f"LR34_L{stage}({pos})"], f"{title} (Table {n})")
       for n, (title, _, (pos, stage)) in TABLES.items() if pos},
}


def plot_run(run_dir: Path | str, path: Path | str | None = None) -> Path:
    """One run's train/val loss curves (the family notebooks' closing figure); saved as run_dir/curves.png.

    Here rather than in figures.py: the run is read as the tables read it (status, set-up label), then
    drawn by run_figure (figures.py's)."""
    run_dir = Path(run_dir)
    runs, _ = _load(None, [run_dir], strict=True)  # an unreadable record raises, naming the file
    if runs.empty:
        raise FileNotFoundError(f"{run_dir} is not a run record (no summary.json)")
    return figures.save_png(run_figure(runs.iloc[0]), Path(path) if path else run_dir / "curves.png")


def _write(path: Path, data: bytes | str) -> None:
    """Write atomically (a temporary renamed over the target); a failure says which path and why."""
    data = data.encode() if isinstance(data, str) else data
    tmp = path.with_name(path.name + ".tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True) if tmp.parent.is_dir() else None
        raise record.RecordError(record.describe_os_error(err, path)) from err


# ----------------------------------------------------------------------------------------- build
def _distinct(runs: pd.DataFrame, column: str) -> str:
    """'A' when every run agrees, else 'A (3 runs); B (1 run)'."""
    if runs.empty or column not in runs:
        return "—"
    counts = runs[column].fillna("unknown").astype(str).value_counts().sort_index()
    if len(counts) == 1:
        return f"`{counts.index[0]}`"
    return "; ".join(f"`{v}` ({n} run{'s' * (n > 1)})" for v, n in counts.items())


def _provenance(runs: pd.DataFrame, skipped: list[dict]) -> str:
    """What produced the numbers: data, preset, hardware, torch, commit (each distinct value when runs differ)."""
    if runs.empty:
        lines = ["- Run records: none readable" if skipped else f"_{NO_RUNS}_"]
    else:
        status = runs["status"].value_counts().sort_index()
        finished = runs[runs["status"].isin(FINISHED)]
        finished = finished if not finished.empty else runs  # only unfinished runs: describe those
        lines = [
            f"- Run records: {len(runs)} ({', '.join(f'{n} {s}' for s, n in status.items())}); "
            "the tables and figures use the complete and diverged ones",
            f"- Data: {_distinct(finished, 'data_desc')}",
            f"- Preset: {_distinct(finished, 'preset')}",
            f"- Hardware: {_distinct(finished, 'env_device')} (world size {_distinct(finished, 'env_world_size')}, "
            f"AMP {_distinct(finished, 'amp')})",
            f"- torch: {_distinct(finished, 'env_torch')}, Python {_distinct(finished, 'env_python')}",
            f"- git commit: {_distinct(finished, 'env_git_commit')}",
        ]
        if "updated" in finished and finished["updated"].notna().any():
            lines.append(f"- Latest run record update: {finished['updated'].dropna().max()}")
    if skipped:
        lines.append(f"- Unreadable run records, skipped: {len(skipped)} (listed under "
                     "[Unreadable run records](#unreadable-run-records-skipped))")
    return "\n".join(lines) + "\n"


PLACEHOLDER = dict(setup="no-runs", setup_label=NO_RUNS, scale="", smoke_test=False)  # the empty report's


def _of(frame: pd.DataFrame, setup: dict) -> pd.DataFrame:
    """The rows of one set-up (all rows for the empty report's placeholder)."""
    if setup is PLACEHOLDER or frame.empty:
        return frame
    return frame[frame["setup"] == setup["setup"]]


def _banner(setup: dict) -> str:
    """The set-up's scale, as a quote above its tables: a smoke test says so in bold wherever it is read."""
    if setup is PLACEHOLDER:
        return ""
    return f"> **{setup['scale']}**\n" if setup["smoke_test"] else f"> {setup['scale']}\n"


def _sections(setups: list[dict], render) -> str:
    """One '###' section per set-up, opening with its scale (no heading in the empty report)."""
    return "\n".join(render(s) if s is PLACEHOLDER else f"### {s['setup_label']}\n\n{_banner(s)}\n{render(s)}"
                     for s in setups)


def _what_this_is(setups: list[dict], n_runs: int) -> tuple[str, str]:
    """(the README's title, its opening lines): what the report holds, derived from the set-ups' scale."""
    if setups == [PLACEHOLDER]:
        opening = "No finished runs yet" + (f" ({_plural(n_runs, 'unfinished run record')})." if n_runs else ".")
        return "# Lambda-ResNets on small data: results", f"**{opening}**\n"
    smoke = [s for s in setups if s["smoke_test"]]
    title = ("# Lambda-ResNets on small data: a smoke test of the pipeline, not results" if len(smoke) == len(setups)
             else "# Lambda-ResNets on small data: results")
    if len(setups) == 1:
        return title, _banner(setups[0])
    which = ("all are smoke tests" if len(smoke) == len(setups) else
             f"{len(smoke)} of them {'is a smoke test' if len(smoke) == 1 else 'are smoke tests'}")
    lines = [f"**This report holds {len(setups)} set-ups"
             + (f"; {which} of the pipeline, not results" if smoke else "") + ":**\n"]
    lines += [f"- {'**' + s['scale'] + '**' if s['smoke_test'] else s['scale']}" for s in setups]
    return title, "\n".join(lines) + "\n"


def build(results_dir: Path | str | None = None, runs=None, out: Path | str | None = None, *,
          quiet: bool = False) -> Path:
    """Rebuild the report from run records and return the path of the rendered README.md.

    results_dir: the folder holding runs/ (default: the project's results/). Without a runs/ folder
        there: FileNotFoundError, and nothing is created (an empty runs/ gives the "No runs yet" report).
    runs: run folders to use instead of scanning results_dir/runs/*/ (folders without summary.json are
        skipped either way).
    out: where README.md, tables/ and figures/ go (default: results_dir).

    Writes tables/table{1..5}_*.{md,csv} (Tables 1-5 in the report's layout plus val top-1, epoch of best
    val loss, diverged-at, params, GFLOPs, img/s, mean ± std over seeds), tables/comparison.{md,csv}
    (published vs ours), tables/runs.{md,csv} (every run record), figures/<set-up>/*.png (loss curves per
    family, accuracy vs noise) and README.md (all of it, figures embedded, opening with what the runs are
    (e.g. a smoke test), with the data, preset, hardware, torch and git commit that produced it). With no
    runs the same files say "No runs yet.". A run record that cannot be read is skipped with a warning and
    listed in README.md and tables/runs.md. Everything is computed before the first file is written, so a
    failure leaves the previous report untouched. Output depends only on the run records: building twice
    (on any machine) writes identical files. Files a previous build wrote that this one does not (a set-up
    that is gone) are removed. Prints every path written unless quiet.
    """
    results_dir = Path(results_dir) if results_dir else paths.results_dir()
    out = Path(out) if out else results_dir
    if runs is None and not (results_dir / "runs").is_dir():
        raise FileNotFoundError(
            f"no run records found at {results_dir / 'runs'} (no such folder); train some first "
            "(`lambdalib train`, `lambdalib demo`) or pass the results folder that holds runs/ with --results")
    all_runs, skipped = _load(results_dir, runs)
    finished = all_runs[all_runs["status"].isin(FINISHED)] if not all_runs.empty else all_runs
    cells = aggregate(all_runs)
    setups = (finished[["setup", "setup_label", "scale", "smoke_test"]].drop_duplicates("setup").to_dict("records")
              if not finished.empty else [PLACEHOLDER])
    files: dict[str, bytes | str] = {}  # everything first, then written: a failure leaves the old report

    # tables: one CSV with every set-up (set-up columns) and one markdown with a section per set-up
    tables = {number: results_table(cells, number) for number in TABLES}
    table_md = {(n, s["setup"]): markdown_table(results_table_markdown(_of(tables[n], s))) for n in TABLES
                for s in setups}
    for number, (title, stem, _) in TABLES.items():
        files[f"tables/{stem}.csv"] = tables[number].to_csv(index=False, lineterminator="\n")
        files[f"tables/{stem}.md"] = (f"## Table {number}: {title}\n\n"
                                      + _sections(setups, lambda s: table_md[number, s["setup"]]))  # noqa: B023
    comparison = comparison_table(cells, load_published())
    comparison_md = {s["setup"]: comparison_markdown(_of(comparison, s)) for s in setups}
    files["tables/comparison.csv"] = comparison.to_csv(index=False, lineterminator="\n")
    files["tables/comparison.md"] = ("## Published vs ours\n\n"
                                     + _sections(setups, lambda s: comparison_md[s["setup"]]))
    index = runs_index(all_runs)
    skipped_md = markdown_table(pd.DataFrame(skipped, columns=["Run", "File", "Problem"]), empty="None.")
    internal = [c for c in all_runs.columns if c.startswith("_")]
    runs_csv = all_runs.drop(columns=["family", "model_order", "environment", *internal], errors="ignore")
    files["tables/runs.csv"] = runs_csv.to_csv(index=False, lineterminator="\n")  # env_* kept
    files["tables/runs.md"] = ("## Run records\n\n" + markdown_table(index)
                               + "\n## Unreadable run records (skipped)\n\n" + skipped_md)

    # the README: what it is, provenance, then per set-up its tables, the comparison and the figures
    title, opening = _what_this_is(setups, len(all_runs))
    readme = [
        f"{title}\n", opening,
        "Generated by `lambdalib report` (`lambdalib.report.build`) from the run records under "
        f"`{results_dir.name}/runs/` only; do not edit, rerun. Published numbers: `lambdalib/published.csv`, "
        "transcribed from the report (its Table 3 repeats Table 5, so the L3 rpe numbers are missing).\n",
        "## Provenance\n", _provenance(all_runs, skipped),
        "Tables: one row per experiment (every setting that changes what is computed is equal; only seeds "
        "are averaged, as mean ± sample std when a row has several); runs that differ in any other setting "
        "are in different set-ups. A set-up is a smoke test of the pipeline, not a result, when it trains "
        f"fewer than {SMOKE_EPOCHS} epochs or on a per-class subset (`train_per_class`, `val_per_class`); one "
        "on the whole embedded mini subset is a small-scale study. Training time is the sum of epoch times; a "
        "run diverges when a loss is non-finite, its train loss exceeds `diverge_factor` × ln(classes) or its "
        "val loss `diverge_factor` × its first epoch's (the reason is in its summary.json), and its best "
        "values are those of the epochs before (— when it has none). Full-precision CSVs are in `tables/`.\n",
    ]
    if not finished.empty:  # the report's claims, one by one, from these records (lambdalib.claims)
        readme.append(claims.claims_markdown(all_runs, results_dir=results_dir))
    readme += _trained_attention(out)
    for setup in setups:
        readme.append("## Results\n" if setup is PLACEHOLDER
                      else f"## Set-up: {setup['setup_label']}\n\n{_banner(setup)}")
        for number, (name, stem, _) in TABLES.items():
            readme.append(f"### Table {number}: {name} ([csv](tables/{stem}.csv))\n\n"
                          + table_md[number, setup["setup"]])
        banner = _banner(setup) + "\n" if setup is not PLACEHOLDER else ""  # the scale, right above the table
        readme.append(f"### Published vs ours ([csv](tables/comparison.csv))\n\n{banner}"
                      + comparison_md[setup["setup"]])
        readme.append("### Figures\n")
        folder = f"figures/{setup['setup']}"
        mine = _of(finished, setup)
        heading = "" if setup is PLACEHOLDER else f"\n{setup['setup_label']}"
        for stem, (labels, name) in FIGURES.items():
            runs_here = mine[mine["label"].isin(labels)] if not mine.empty else mine
            files[f"{folder}/{stem}.png"] = figures.png_bytes(curves_figure(
                runs_here, labels, f"{name}: train (dashed) / val (solid) loss{heading}"))
            readme.append(f"![{name}]({folder}/{stem}.png)\n")
        files[f"{folder}/accuracy_vs_noise.png"] = figures.png_bytes(accuracy_figure(
            _of(cells, setup), f"Best val top-1 vs label noise{heading}"))
        readme.append(f"![Best val top-1 vs noise]({folder}/accuracy_vs_noise.png)\n")
    readme.append("## Unfinished runs (not in the tables or figures)\n\n"
                  + markdown_table(index[index["In tables"] != "yes"], empty="None."))
    readme.append("## Unreadable run records (skipped)\n\n" + skipped_md)
    readme.append("## All run records ([csv](tables/runs.csv))\n\n" + markdown_table(index))
    files["README.md"] = "\n".join(readme)

    written = []
    for rel, content in files.items():  # README.md last: it links the rest
        _write(out / rel, content)
        written.append(out / rel)
    _remove_stale(out, written)
    if not quiet:
        log.info(f"report: {len(all_runs)} run records"
                 + (f" ({len(skipped)} unreadable, skipped)" if skipped else "") + f" -> {len(written)} files")
        for path in written:
            log.info(f"  {path}")
    return out / "README.md"


def _trained_attention(out: Path) -> list[str]:
    """The FullGrad figure of our trained models and its table, when `lambdalib attention --trained` has
    drawn them (it needs the checkpoints, which are not committed; the report only shows what it wrote)."""
    figure, caption = out / "figures" / "attention_trained.png", out / "figures" / "attention_trained.md"
    table = out / "tables" / "attention_trained.csv"
    if not (figure.exists() and table.exists()):
        return []
    from .attention import attention_table_markdown  # late: torch and grad-cam only when there is a figure

    text = caption.read_text().strip() + "\n\n" if caption.exists() else ""
    return ["## FullGrad maps of our trained models (the report's figure 7)\n\n"
            "Drawn by `lambdalib attention --trained` from the best checkpoints of the runs named below "
            "([csv](tables/attention_trained.csv)).\n\n"
            f"![FullGrad maps of our trained models](figures/attention_trained.png)\n\n{text}"
            + attention_table_markdown(table)]


def _remove_stale(out: Path, written: list[Path]) -> None:
    """Delete what the previous build wrote and this one did not (listed in tables/.report-files)."""
    manifest = out / "tables" / ".report-files"
    now = sorted(p.relative_to(out).as_posix() for p in written)
    if manifest.exists():
        for rel in set(manifest.read_text().split()) - set(now):
            stale = out / rel
            if stale.is_file():
                stale.unlink()
                if stale.parent != out and not any(stale.parent.iterdir()):
                    stale.parent.rmdir()
    _write(manifest, "\n".join(now) + "\n")
