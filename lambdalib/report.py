"""The report's tables and figures, rebuilt from run records only (nothing typed by hand).

    from lambdalib import report
    report.build()              # results/runs/*/ -> results/{README.md, tables/, figures/}

Which runs count: every folder under runs/ with a summary.json. Finished runs ("complete" and
"diverged") make the tables and figures; diverged ones are included and marked (the epoch they diverged
at, an 'x' on the curves), since divergence is one of the report's findings. Unfinished runs
("running", "interrupted") are left out of tables and figures, because their best values cover only
part of the schedule and would bias a mean; they are listed, flagged, in the runs index and the README.

Set-ups: runs are grouped by (preset, data, epochs, img_size) plus any recipe field that differs from
the preset (e.g. lr); every set-up gets its own section in each table and its own figures, so runs that
are not comparable are never averaged. Within a set-up, several runs of one (model, noise) cell (seeds)
are shown as mean ± sample std (ddof=1).

The published numbers of the report (Tables 1, 2, 4, 5) are data in lambdalib/published.csv; its
Table 3 repeats Table 5, so the L3 rpe numbers are missing there and shown as missing.
"""
from __future__ import annotations

import math
import re
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import ticker
from matplotlib.figure import Figure  # not pyplot: renders PNGs with Agg, leaves a notebook's backend alone
from matplotlib.lines import Line2D

from . import models, paths
from .config import PRESETS, RunConfig
from .train import load_summary, read_history

# number -> (title as in the report, file stem, (position, stage) of its models; None = the baselines)
TABLES = {
    1: ("Baseline performance", "table1_baselines", (None, None)),
    2: ("LambdaResNet Layer2 rpe", "table2_L2_rpe", ("rpe", 2)),
    3: ("LambdaResNet Layer3 rpe", "table3_L3_rpe", ("rpe", 3)),
    4: ("LambdaResNet Layer2 lc", "table4_L2_lc", ("lc", 2)),
    5: ("LambdaResNet Layer3 lc", "table5_L3_lc", ("lc", 3)),
}
FINISHED = ("complete", "diverged")
# recipe fields that make runs incomparable when they differ from their preset's value
RECIPE_FIELDS = ("lr", "batch_size", "weight_decay", "t0", "t_mult", "eta_min", "grad_clip", "diverge_factor",
                 "synthetic_noise")
# summary.json metrics shown as mean ± std over the runs of a cell (CSV columns keep these names)
METRICS = ("best_train_loss", "best_val_loss", "train_time_s", "best_val_acc", "mean_train_images_per_s")
# Okabe-Ito: distinguishable with the common colour-vision deficiencies
OKABE_ITO = ["#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000"]
NOISE_COLOURS = {0.0: OKABE_ITO[0], 0.05: OKABE_ITO[1], 0.25: OKABE_ITO[2], 0.5: OKABE_ITO[3], 0.01: OKABE_ITO[4]}
FAMILY_COLOURS = {(None, None): OKABE_ITO[7], ("rpe", 2): OKABE_ITO[0], ("rpe", 3): OKABE_ITO[5],
                  ("lc", 2): OKABE_ITO[3], ("lc", 3): OKABE_ITO[1]}
DPI = 150
NO_RUNS = "No runs yet."


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
    if seconds is None or not math.isfinite(seconds):
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


def _setup(config: RunConfig) -> dict:
    """The fields that make runs comparable, a readable label and a file-name slug."""
    data = Path(config.data).name if "/" in config.data else config.data
    defaults = {**RunConfig().to_dict(), **PRESETS.get(config.preset, {})}
    recipe = ", ".join(f"{k}={getattr(config, k):g}" if isinstance(getattr(config, k), float)
                       else f"{k}={getattr(config, k)}"
                       for k in RECIPE_FIELDS if getattr(config, k) != defaults[k])
    label = f"preset {config.preset} · data {data} · {config.epochs} epochs · {config.img_size} px"
    slug = f"{config.preset}_{data}_e{config.epochs}_{config.img_size}px"
    if recipe:
        label += f" · {recipe}"
        slug += "_" + re.sub(r"[^A-Za-z0-9.]+", "-", recipe.replace("=", "")).strip("-")
    return dict(setup=re.sub(r"[^A-Za-z0-9._-]+", "-", slug), setup_label=label, preset=config.preset,
                data=data, epochs=config.epochs, img_size=config.img_size, recipe=recipe)


def collect_runs(results_dir: Path | str | None = None, runs=None) -> pd.DataFrame:
    """One row per run record (folders without summary.json are skipped): summary fields, the config's
    seed/epochs/img_size/data, the set-up and the folder. Sorted by set-up, model, noise, seed."""
    if runs is None:
        base = Path(results_dir) if results_dir else paths.results_dir()
        runs = sorted(p for p in (base / "runs").glob("*") if p.is_dir())
    rows = []
    for run_dir in map(Path, runs):
        summary = load_summary(run_dir)
        if summary is None or not (run_dir / "config.json").exists():
            continue  # not a run record (yet)
        config = RunConfig.load(run_dir / "config.json")
        spec = models.SPECS.get(summary.get("model"))
        env = summary.get("environment") or {}
        setup = _setup(config)
        rows.append(dict(
            summary, **setup, run_dir=str(run_dir), seed=config.seed,
            model_order=models.MODEL_NAMES.index(spec.name) if spec else len(models.MODEL_NAMES),
            family=(spec.position, spec.stage) if spec else None,
            architecture=architecture(summary.get("label", summary.get("model", "?")), summary.get("noise", 0)),
            data_desc=f"{setup['data']} ({summary.get('train_images', '?')} train / "
                      f"{summary.get('val_images', '?')} val images)",
            **{f"env_{k}": v for k, v in env.items()},
        ))
    frame = pd.DataFrame(rows)
    if frame.empty:
        return frame
    frame["report_first"] = frame["preset"] != "report"  # the report's recipe leads
    frame = frame.sort_values(["report_first", "setup", "model_order", "label", "noise", "seed", "run_id"])
    return frame.drop(columns="report_first").reset_index(drop=True)


def aggregate(runs: pd.DataFrame) -> pd.DataFrame:
    """Finished runs -> one row per (set-up, model, noise) cell: mean and std of METRICS over its runs."""
    if runs.empty:
        return pd.DataFrame()
    done = runs[runs["status"].isin(FINISHED)]
    cells = []
    for _, group in done.groupby(["setup", "model", "noise"], sort=False):
        first = group.iloc[0]
        diverged = group["diverged_at"].dropna().astype(int)
        statuses = group["status"].value_counts()
        cell = {k: first[k] for k in ("setup", "setup_label", "preset", "data", "epochs", "img_size", "recipe",
                                      "architecture", "label", "model", "noise", "model_order", "family")}
        cell.update(
            n_runs=len(group), seeds=";".join(str(s) for s in group["seed"]), run_ids=";".join(group["run_id"]),
            status=", ".join(f"{n} {s}" for s, n in statuses.items()) if len(group) > 1 else first["status"],
            best_val_loss_epoch=";".join(str(int(e)) for e in group["best_val_loss_epoch"].dropna()),
            diverged_at=";".join(str(e) for e in diverged), n_diverged=len(diverged),
            params=first.get("params"), gflops=first.get("gflops"),
        )
        for metric in METRICS:  # skipna=False: a seed without a value leaves the mean undefined, not biased
            values = pd.to_numeric(group[metric], errors="coerce")
            cell[metric] = values.mean(skipna=False)
            cell[f"{metric}_std"] = values.std(ddof=1, skipna=False) if len(values) > 1 else math.nan
        cells.append(cell)
    return pd.DataFrame(cells)


def _in_table(cells: pd.DataFrame, number: int) -> pd.DataFrame:
    if cells.empty:
        return cells
    family = TABLES[number][2]
    return cells[cells["family"].map(lambda f: f == family)]


SETUP_COLUMNS = ["setup", "preset", "data", "epochs", "img_size", "recipe"]
TABLE_COLUMNS = SETUP_COLUMNS + [
    "table", "architecture", "label", "model", "noise", "n_runs", "seeds", "status",
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
    """A results_table (one set-up) in the report's layout plus the columns the report lacked."""
    def mean_std(metric: str, fmt) -> list[str]:
        return [_with_std(m, s, fmt) for m, s in zip(table[metric], table[f"{metric}_std"])]

    return pd.DataFrame({
        "Architecture": table["architecture"],
        "Best train loss": mean_std("best_train_loss", _number),
        "Best val loss": mean_std("best_val_loss", _number),
        "Training time": mean_std("train_time_s", format_duration),
        "Best val top-1": mean_std("best_val_acc", _percent),
        "Epoch of best val loss": table["best_val_loss_epoch"].str.replace(";", ", "),
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
    setups = cells[SETUP_COLUMNS].drop_duplicates() if not cells.empty else pd.DataFrame([{}])
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


def runs_index(runs: pd.DataFrame) -> pd.DataFrame:
    """Every run record, finished or not, with its status (the unfinished ones are not in the tables)."""
    if runs.empty:
        return pd.DataFrame(columns=["Run", "Status", "Set-up", "Architecture", "Seed", "Epochs",
                                     "Best val loss", "Best val top-1", "Training time", "Device", "In tables"])
    return pd.DataFrame({
        "Run": runs["run_id"],
        "Status": [s + (f" at epoch {int(d)}" if s == "diverged" and pd.notna(d) else "")
                   + (f" (last update {u}; a crashed run also reads 'running')" if s == "running" else "")
                   for s, d, u in zip(runs["status"], runs["diverged_at"], runs.get("updated", runs["status"]))],
        "Set-up": runs["setup"],
        "Architecture": runs["architecture"],
        "Seed": runs["seed"],
        "Epochs": [f"{int(d)}/{e}" for d, e in zip(runs["epochs_done"], runs["epochs"])],
        "Best val loss": runs["best_val_loss"].map(_number),
        "Best val top-1": runs["best_val_acc"].map(_percent),
        "Training time": runs["train_time_s"].map(format_duration),
        "Device": runs.get("env_device", pd.Series(["?"] * len(runs))),
        "In tables": runs["status"].map(lambda s: "yes" if s in FINISHED else "no (unfinished)"),
    })


# --------------------------------------------------------------------------------------- figures
def _noise_colour(noise: float) -> str:
    for level, colour in NOISE_COLOURS.items():
        if math.isclose(noise, level):
            return colour
    return OKABE_ITO[5 + int(noise * 1000) % 3]  # synthetic rates: the remaining palette


def _no_runs(ax, text: str = NO_RUNS) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, fontsize=12, color="0.4")


def plot_curves(runs: pd.DataFrame, labels: list[str], path: Path, title: str) -> Path:
    """Train (dashed) and val (solid) loss vs epoch, one panel per model label, one colour per noise level.

    The y-range spans the finite losses of the epochs before any divergence, so one explosion cannot
    flatten every other curve; the epoch a run diverged at is an 'x' (in a band above the range when its
    loss is off-scale or non-finite) and is spelled out under the panel. The y-axis turns logarithmic
    when the losses span more than a factor 4."""
    fig = Figure(figsize=(5.2 * len(labels), 4.4), layout="constrained")
    axes = fig.subplots(1, len(labels), sharey=True, squeeze=False)[0]
    curves = []  # (run, epochs before divergence, the diverged epoch's row or None)
    for _, run in runs.iterrows():
        history = read_history(Path(run["run_dir"]))
        diverged_at = run["diverged_at"] if run["status"] == "diverged" and pd.notna(run["diverged_at"]) else None
        good = [r for r in history if r["epoch"] != diverged_at]
        bad = next((r for r in history if r["epoch"] == diverged_at), None)
        curves.append((run, good, bad))
    finite = [r[k] for _, good, _ in curves for r in good for k in ("train_loss", "val_loss")
              if math.isfinite(r[k]) and r[k] > 0]
    low, high = (min(finite), max(finite)) if finite else (1.0, 3.0)
    log = high / low > 4
    band = any(run["status"] == "diverged" for run, _, _ in curves)  # room above the range for off-scale 'x'
    if log:
        bottom, off_scale, top = low / 1.15, high * 1.3, high * (1.6 if band else 1.15)
    else:
        pad = 0.06 * (high - low or 1.0)
        bottom, off_scale, top = max(0.0, low - pad), high + 2 * pad, high + (3.5 if band else 1) * pad
    band_start = (high + off_scale) / 2 if band else math.inf
    last_epoch = max([1] + [int(r["epoch"]) for _, good, bad in curves for r in good + ([bad] if bad else [])])
    noises = set()
    for ax, label in zip(axes, labels):
        mine = [c for c in curves if c[0]["label"] == label]
        ax.set_title(re.sub(r"^R(\d+)$", r"ResNet\1 (R\1)", label))
        if not mine:
            _no_runs(ax)
        notes = []
        for run, good, bad in mine:
            colour = _noise_colour(run["noise"])
            noises.add(run["noise"])
            epochs = [r["epoch"] for r in good]
            for key, style in (("train_loss", "--"), ("val_loss", "-")):
                values = [r[key] if math.isfinite(r[key]) else np.nan for r in good]
                ax.plot(epochs, values, style, color=colour, marker="o", markersize=3, linewidth=1.6, alpha=0.9)
            if run["status"] == "diverged":
                epoch = int(run["diverged_at"])
                losses = (bad["train_loss"], bad["val_loss"]) if bad else (math.nan,)
                worst = max(losses) if all(math.isfinite(v) for v in losses) else math.inf  # NaN: off-scale
                ax.plot([epoch], [worst if worst <= high else off_scale], "x", color=colour, markersize=11,
                        markeredgewidth=2.5)
                seeds = len(mine) > len({c[0]["noise"] for c in mine})  # several runs per noise: name the seed
                who = f"{run['noise'] * 100:g}%" + (f" seed {run['seed']}" if seeds else "")
                notes.append(f"{who}: epoch {epoch} (loss {'non-finite' if math.isinf(worst) else f'{worst:.3g}'})")
        ax.set_xlabel("epoch" + "".join(f"\n× diverged {n}" for n in notes))
        ax.set_xlim(0.7, last_epoch + 0.3)
        ax.xaxis.set_major_locator(ticker.MaxNLocator(nbins=8, integer=True, min_n_ticks=1))
        ax.grid(alpha=0.3)
        if any(c[0]["status"] == "diverged" for c in mine):
            ax.axhspan(band_start, top, color="0.92", zorder=0)  # the off-scale band
    if log:
        axes[0].set_yscale("log")
        axes[0].yaxis.set_major_locator(ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
        axes[0].yaxis.set_minor_formatter(ticker.NullFormatter())
    # no numbers in the off-scale band: an 'x' there is not at that value
    axes[0].yaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}" if v < band_start else ""))
    axes[0].set_ylim(bottom, top)
    axes[0].set_ylabel("cross-entropy loss" + (" (log scale)" if log else ""))
    if not curves:  # an empty figure: no axis numbers that suggest data
        for ax in axes:
            ax.set_xticks([]), ax.set_yticks([])
    elif not finite:  # only divergences: the y numbers would mean nothing
        axes[0].set_yticks([])
    handles = [Line2D([], [], color=_noise_colour(n), linewidth=3, label=f"{n * 100:g}% noise")
               for n in sorted(noises)]
    if curves:
        handles += [Line2D([], [], color="0.3", linestyle="--", label="train"),
                    Line2D([], [], color="0.3", linestyle="-", label="val")]
    if band:
        handles.append(Line2D([], [], color="0.3", marker="x", linestyle="", markersize=9, markeredgewidth=2,
                              label="diverged\n(grey band:\noff-scale)"))
    if handles:
        fig.legend(handles=handles, loc="outside right upper", frameon=False)
    fig.suptitle(title)
    return _save(fig, path)


def plot_run(run_dir: Path | str, path: Path | str | None = None) -> Path:
    """One run's train/val loss curves (the family notebooks' closing figure); saved as run_dir/curves.png."""
    runs = collect_runs(runs=[Path(run_dir)])
    if runs.empty:
        raise FileNotFoundError(f"{run_dir} is not a run record (no summary.json / config.json)")
    run = runs.iloc[0]
    title = f"{run['label']}, noise {run['noise']:.0%}: {run['status']}"
    return plot_curves(runs, [run["label"]], Path(path) if path else Path(run_dir) / "curves.png", title)


def plot_accuracy_vs_noise(cells: pd.DataFrame, path: Path, title: str) -> Path:
    """Best val top-1 (mean ± std over seeds) vs noise for the ten models; colour = family, line = depth.
    A black 'x' marks cells where at least one run diverged (its best is from before the divergence)."""
    fig = Figure(figsize=(8.5, 4.6), layout="constrained")
    ax = fig.subplots()
    if cells.empty:
        _no_runs(ax)
        ax.set_xticks([]), ax.set_yticks([])
    else:
        levels = sorted(cells["noise"].unique())
        position = {n: i for i, n in enumerate(levels)}
        present = [m for m in models.MODEL_NAMES if m in set(cells["model"])]
        for i, model in enumerate(present):
            spec = models.SPECS[model]
            mine = cells[cells["model"] == model].sort_values("noise")
            x = mine["noise"].map(position) + 0.025 * (i - (len(present) - 1) / 2)  # dodge: bars stay apart
            y = 100 * mine["best_val_acc"]
            shallow = spec.depth == 18
            ax.errorbar(x, y, yerr=100 * mine["best_val_acc_std"].fillna(0), label=spec.label,
                        color=FAMILY_COLOURS[(spec.position, spec.stage)], linestyle="-" if shallow else "--",
                        marker="o" if shallow else "s", markersize=6, capsize=3, linewidth=1.6)
            bad = mine["n_diverged"] > 0
            ax.plot(x[bad], y[bad], "x", color="black", markersize=12, markeredgewidth=2.2)
        ax.set_xticks(range(len(levels)), [f"{n * 100:g}%" for n in levels])
        handles, names = ax.get_legend_handles_labels()
        if (cells["n_diverged"] > 0).any():
            handles.append(Line2D([], [], marker="x", color="black", linestyle="", markersize=9, markeredgewidth=2))
            names.append("a run diverged")
        fig.legend(handles, names, loc="outside right upper", frameon=False)
    ax.set_xlabel("label noise (share of flipped training labels)")
    ax.set_ylabel("best val top-1 (%)")
    ax.grid(alpha=0.3)
    ax.set_title(title)
    return _save(fig, path)


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, metadata={"Software": None})  # no version stamp: same runs, same bytes
    return path


FIGURES = {  # stem -> (labels per panel, title); the Lambda families mirror Tables 2-5
    "curves_baselines": (["R18", "R34"], "Baselines (Table 1)"),
    **{f"curves_L{stage}_{pos}": ([f"LR18_L{stage}({pos})", f"LR34_L{stage}({pos})"], f"{title} (Table {n})")
       for n, (title, _, (pos, stage)) in TABLES.items() if pos},
}


# ----------------------------------------------------------------------------------------- build
def _distinct(runs: pd.DataFrame, column: str) -> str:
    """'A' when every run agrees, else 'A (3 runs); B (1 run)'."""
    if runs.empty or column not in runs:
        return "—"
    counts = runs[column].fillna("unknown").astype(str).value_counts().sort_index()
    if len(counts) == 1:
        return f"`{counts.index[0]}`"
    return "; ".join(f"`{v}` ({n} run{'s' * (n > 1)})" for v, n in counts.items())


def _provenance(runs: pd.DataFrame) -> str:
    """What produced the numbers: data, preset, hardware, torch, commit (each distinct value when runs differ)."""
    status = runs["status"].value_counts().sort_index()
    finished = runs[runs["status"].isin(FINISHED)]
    finished = finished if not finished.empty else runs  # only unfinished runs: describe those
    lines = [
        f"- Run records: {len(runs)} ({', '.join(f'{n} {s}' for s, n in status.items()) or 'none'}); "
        "the tables and figures use the complete and diverged ones",
        f"- Data: {_distinct(finished, 'data_desc')}",
        f"- Preset: {_distinct(finished, 'preset')}",
        f"- Hardware: {_distinct(finished, 'env_device')} (world size {_distinct(finished, 'env_world_size')}, "
        f"AMP {_distinct(finished, 'amp')})",
        f"- torch: {_distinct(finished, 'env_torch')}, Python {_distinct(finished, 'env_python')}",
        f"- git commit: {_distinct(finished, 'env_git_commit')}",
    ]
    if not finished.empty and "updated" in finished:
        lines.append(f"- Latest run record update: {finished['updated'].dropna().max()}")
    return "\n".join(lines) + "\n"


PLACEHOLDER = dict(setup="no-runs", setup_label=NO_RUNS)  # the one "set-up" of an empty report


def _of(frame: pd.DataFrame, setup: dict) -> pd.DataFrame:
    """The rows of one set-up (all rows for the empty report's placeholder)."""
    if setup is PLACEHOLDER or frame.empty:
        return frame
    return frame[frame["setup"] == setup["setup"]]


def _sections(setups: list[dict], render) -> str:
    """One '###' section per set-up (no heading in the empty report)."""
    return "\n".join(render(s) if s is PLACEHOLDER else f"### {s['setup_label']}\n\n{render(s)}" for s in setups)


def build(results_dir: Path | str | None = None, runs=None, out: Path | str | None = None, *,
          quiet: bool = False) -> Path:
    """Rebuild the report from run records and return the path of the rendered README.md.

    results_dir: the folder holding runs/ (default: the project's results/).
    runs: run folders to use instead of scanning results_dir/runs/*/ (folders without summary.json are
        skipped either way).
    out: where README.md, tables/ and figures/ go (default: results_dir).

    Writes tables/table{1..5}_*.{md,csv} (Tables 1-5 in the report's layout plus val top-1, epoch of best
    val loss, diverged-at, params, GFLOPs, img/s, mean ± std over seeds), tables/comparison.{md,csv}
    (published vs ours), tables/runs.{md,csv} (every run record), figures/<set-up>/*.png (loss curves per
    family, accuracy vs noise) and README.md (all of it, figures embedded, with the data, preset,
    hardware, torch and git commit that produced it). With no runs the same files say "No runs yet.".
    Output depends only on the run records: building twice writes identical files. Files a previous
    build wrote that this one does not (a set-up that is gone) are removed. Prints every path written
    unless quiet.
    """
    results_dir = Path(results_dir) if results_dir else paths.results_dir()
    out = Path(out) if out else results_dir
    all_runs = collect_runs(results_dir, runs)
    finished = all_runs[all_runs["status"].isin(FINISHED)] if not all_runs.empty else all_runs
    cells = aggregate(all_runs)
    setups = (finished[["setup", "setup_label"]].drop_duplicates().to_dict("records") if not finished.empty
              else [PLACEHOLDER])
    written: list[Path] = []

    def write(rel: str, text: str) -> None:
        path = out / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        written.append(path)

    # tables: one CSV with every set-up (set-up columns) and one markdown with a section per set-up
    tables = {number: results_table(cells, number) for number in TABLES}
    table_md = {(n, s["setup"]): markdown_table(results_table_markdown(_of(tables[n], s))) for n in TABLES
                for s in setups}
    for number, (title, stem, _) in TABLES.items():
        write(f"tables/{stem}.csv", tables[number].to_csv(index=False, lineterminator="\n"))
        write(f"tables/{stem}.md", f"## Table {number}: {title}\n\n"
              + _sections(setups, lambda s: table_md[number, s["setup"]]))
    comparison = comparison_table(cells, load_published())
    comparison_md = {s["setup"]: comparison_markdown(_of(comparison, s)) for s in setups}
    write("tables/comparison.csv", comparison.to_csv(index=False, lineterminator="\n"))
    write("tables/comparison.md", "## Published vs ours\n\n" + _sections(setups, lambda s: comparison_md[s["setup"]]))
    index = runs_index(all_runs)
    record = all_runs.drop(columns=["family", "model_order", "environment"], errors="ignore")  # env_* kept
    write("tables/runs.csv", record.to_csv(index=False, lineterminator="\n"))
    write("tables/runs.md", "## Run records\n\n" + markdown_table(index))

    # the README: provenance, then per set-up its tables, the comparison and the figures
    readme = [
        "# Lambda-ResNets on small data: results\n",
        "Generated by `lambdalib report` (`lambdalib.report.build`) from the run records under "
        f"`{results_dir.name}/runs/` only; do not edit, rerun. Published numbers: `lambdalib/published.csv`, "
        "transcribed from the report (its Table 3 repeats Table 5, so the L3 rpe numbers are missing).\n",
        "## Provenance\n", _provenance(all_runs) if not all_runs.empty else f"_{NO_RUNS}_\n",
        "Tables: mean ± sample std over the runs (seeds) of a cell when it has several; training time is the sum "
        "of epoch times; a run diverges when a loss is non-finite, its train loss exceeds `diverge_factor` × "
        "ln(classes) or its val loss `diverge_factor` × its first epoch's (the reason is in its summary.json), "
        "and its best values are those of the epochs before. Full-precision CSVs are in `tables/`.\n",
    ]
    for setup in setups:
        readme.append("## Results\n" if setup is PLACEHOLDER else f"## Set-up: {setup['setup_label']}\n")
        for number, (title, stem, _) in TABLES.items():
            readme.append(f"### Table {number}: {title} ([csv](tables/{stem}.csv))\n\n"
                          + table_md[number, setup["setup"]])
        readme.append(f"### Published vs ours ([csv](tables/comparison.csv))\n\n{comparison_md[setup['setup']]}")
        readme.append("### Figures\n")
        folder = out / "figures" / setup["setup"]
        mine = _of(finished, setup)
        for stem, (labels, title) in FIGURES.items():
            runs_here = mine[mine["label"].isin(labels)] if not mine.empty else mine
            written.append(plot_curves(runs_here, labels, folder / f"{stem}.png",
                                       f"{title}: train (dashed) / val (solid) loss\n{setup['setup_label']}"))
            readme.append(f"![{title}](figures/{setup['setup']}/{stem}.png)\n")
        written.append(plot_accuracy_vs_noise(_of(cells, setup), folder / "accuracy_vs_noise.png",
                                              f"Best val top-1 vs label noise\n{setup['setup_label']}"))
        readme.append(f"![Best val top-1 vs noise](figures/{setup['setup']}/accuracy_vs_noise.png)\n")
    readme.append("## Unfinished runs (not in the tables or figures)\n\n"
                  + markdown_table(index[index["In tables"] != "yes"], empty="None."))
    readme.append("## All run records ([csv](tables/runs.csv))\n\n" + markdown_table(index))
    write("README.md", "\n".join(readme))
    _remove_stale(out, written)
    if not quiet:
        print(f"report: {len(all_runs)} run records -> {len(written)} files")
        for path in written:
            print(f"  {path}")
    return out / "README.md"


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
    manifest.write_text("\n".join(now) + "\n")
