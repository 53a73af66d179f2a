"""The report's figures: loss curves per report table, accuracy vs noise, one run's curves, the data's sample grid.

    fig = figures.curves_figure(runs.finished_runs(runs.collect("results")), registry.FAMILIES["L2_rpe"], "Table 2")
    figures.save_png(fig, "curves.png")  # written atomically

Draws rows of `runs.collect` (one per run) and cells of `runs.aggregate` (one per experiment); report.py decides which
figures a set-up has. Every figure is a matplotlib `Figure`, never pyplot (a notebook's backend is left alone), in
each family's colour (registry: Okabe-Ito, Tol's wine for four lambda layers); nothing is drawn without runs
(ValueError). A cell's seeds are a mean line and a min–max band; a Lambda model sits beside the ResNet of its depth,
their same-seed difference under them. The lr's warm restarts are dotted lines (a loss jump there is the schedule,
not instability), a diverged epoch an 'x'. `save_png` writes no version stamp: the same records, the same bytes.
"""
from __future__ import annotations

import io
import math
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import ticker
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from . import files, fmt, record, registry
from .imagenette import CLASS_NAMES, CLASSES, data_slug
from .runs import diverged_epoch, t_half_width

OKABE_ITO = registry.OKABE_ITO
IMPL_COLOURS = {"ours-n01": OKABE_ITO[4], "lucidrains": OKABE_ITO[2]}  # the other lambda layers, in every family
SECOND_COLOUR = OKABE_ITO[4]  # the second model of a panel whose models share a family colour (R34 beside R18)
DPI = 150
NO_RUNS = "No runs yet."  # the report's empty tables say so; a figure without runs is not drawn
BAND = "band: min–max over seeds"
CONFIDENCE = 0.95  # accuracy vs noise: t interval over seeds
RESTART = dict(color="0.45", linestyle=":", linewidth=1.3, zorder=1)
# a block's train and val rows get their own y-axes when one row's highest loss (after epoch 1) is this many times
# the other's: val-loss spikes of 100s on one shared axis flattened the train curves to a line
APART = 4.0
SYMLOG_ABOVE = 10.0  # a difference row reaching this many nats is drawn symmetric-log (linear within ±1)


def _wrap(title: str, width: int) -> str:
    """Lines of at most `width` characters; a set-up label breaks between its ' · ' parts."""
    out = []
    for line in title.split("\n"):
        parts, current = line.split(" · "), ""
        for part in parts:
            joined = f"{current} · {part}" if current else part
            if current and len(joined) > width:
                out.append(current)
                joined = part
            current = joined
        out.extend(textwrap.wrap(current, width) or [""])
    return "\n".join(out)


def _split(run) -> tuple[list[dict], dict | None]:
    """A run's history as (the epochs before any divergence, the diverged epoch's row or None)."""
    history = run["_history"] if isinstance(run.get("_history"), list) else record.read_history(Path(run["_path"]))
    diverged_at = diverged_epoch(run)
    return ([r for r in history if r["epoch"] != diverged_at],
            next((r for r in history if r["epoch"] == diverged_at), None))


def _epoch_axis(ax, last_epoch: int) -> None:
    ax.set_xlim(0.5, last_epoch + 0.5)
    ax.xaxis.set_major_locator(ticker.MaxNLocator(nbins=8, integer=True, min_n_ticks=1))


def restart_epochs(t0: int, t_mult: int, epochs: int) -> list[int]:
    """The epochs (1-based) that start at the lr's maximum again: CosineAnnealingWarmRestarts stepped once per
    epoch restarts after t0, t0·t_mult, t0·t_mult², ... epochs (t0 5, t_mult 2: epochs 6, 16, 36)."""
    out, start, length = [], 1, int(t0)
    while length > 0 and start + length <= epochs:
        start += length
        out.append(start)
        length *= max(int(t_mult), 1)
    return out


def run_restarts(run) -> list[int]:
    """A run's restart epochs over its planned schedule, from its t0/t_mult (`runs.collect` has them from
    config.json); a row without them: the epochs whose lr rose."""
    t0, t_mult = run.get("t0"), run.get("t_mult")
    if t0 is not None and pd.notna(t0):
        return restart_epochs(int(t0), int(t_mult), int(run["epochs"]))
    good, _ = _split(run)
    return [int(b["epoch"]) for a, b in zip(good, good[1:]) if b["lr"] > a["lr"] * (1 + 1e-9)]


def seed_curves(runs: pd.DataFrame, key: str) -> dict[int, dict[int, float]]:
    """seed -> {epoch: the finite `key` value} over each run's epochs before any divergence."""
    return {int(run["seed"]): {int(r["epoch"]): float(r[key]) for r in _split(run)[0] if math.isfinite(r[key])}
            for _, run in runs.iterrows()}


def _rows_apart(runs: pd.DataFrame) -> bool:
    """Whether these runs' train and val losses differ so much in range that one y-axis would flatten one row."""
    def top(key: str) -> float:  # the highest finite loss after epoch 1, over every run (each noise level too)
        values = [float(r[key]) for _, run in runs.iterrows() for r in _split(run)[0] if r["epoch"] > 1]
        return max((v for v in values if math.isfinite(v)), default=math.nan)

    tops = [top("train_loss"), top("val_loss")]
    return min(tops) > 0 and max(tops) > APART * min(tops)


def paired_differences(base: dict[int, dict[int, float]], other: dict[int, dict[int, float]]) -> dict:
    """seed -> {epoch: other − base} for the seeds and epochs both have: a seed pair saw the same
    initial data order and noisy labels, so its difference is the model's, not the draw's."""
    pairs = {s: {e: other[s][e] - base[s][e] for e in sorted(base[s].keys() & other[s].keys())}
             for s in sorted(base.keys() & other.keys())}
    return {s: d for s, d in pairs.items() if d}


def _seeds_text(counts: set[int]) -> str:
    low, high = min(counts), max(counts)
    return fmt.plural(low, "seed") if low == high else f"{low}–{high} seeds"


def curve_blocks(runs: pd.DataFrame, family: registry.Family) -> list[tuple[list[str], str | None]]:
    """A family's figure, per block of rows: (the model labels with runs, the reference of its difference row or
    None). Baselines: one block, R34 − R18 when both have runs; a Lambda family: one block per depth with runs of its
    Lambda model (each lambda layer that has runs, ours first), beside the ResNet of that depth when it has runs."""
    have = set(runs["label"]) if not runs.empty else set()
    if family.position is None:
        models = [family.label(d) for d in family.depths if family.label(d) in have]
        return [(models, models[0] if len(models) > 1 else None)] if models else []
    blocks = []
    for depth in family.depths:
        base = registry.SPECS[family.name(depth)].baseline
        twins = sorted((m for m in have if registry.split_label(m)[0] == family.label(depth)), key=registry.model_rank)
        if twins:
            blocks.append(([base, *twins], base) if base in have else (twins, None))
    return blocks


def _colours(models: list[str]) -> dict[str, str]:
    """Each label's `label_colour`; a second model of the same colour SECOND_COLOUR."""
    colours = {}
    for label in models:
        colour = label_colour(label)
        colours[label] = SECOND_COLOUR if colour in colours.values() else colour
    return colours


def label_colour(label: str) -> str:
    """A run label's colour: its lambda layer's (IMPL_COLOURS) when not ours, else its family's."""
    family = registry.family_of(label)
    return IMPL_COLOURS.get(registry.split_label(label)[1]) or (family.colour if family else OKABE_ITO[4])


def _scale(axes: list, points: list[tuple[float, float]], log_above: float | None) -> None:
    """Shared y-limits and ticks of `axes` from (epoch, value) `points`: set by the epochs
    after the first when epoch 1 would stretch the range by more than half (an untrained net's losses would flatten
    the rest); log when they span more than `log_above` (None: linear, 0 shown, symmetric-log past ±SYMLOG_ABOVE)."""
    every = [v for _, v in points]
    later = [v for e, v in points if e > 1] or every or [1.0, 3.0]
    every = every or later
    values = every if max(every) - min(every) <= 1.5 * (max(later) - min(later)) else later
    low, high = min(values), max(values)
    if log_above is None:
        low, high = min(low, 0.0), max(high, 0.0)
    log = log_above is not None and low > 0 and high / low > log_above
    symlog = log_above is None and max(-low, high) > SYMLOG_ABOVE
    pad = 0.08 * (high - low) or 0.05 * abs(high) or 0.1
    limits = ((low / 1.08, high * 1.08) if log  # symlog: a factor beyond ±1, half a unit inside (the linear part)
              else (low * 1.5 if low < -1 else low - 0.5, high * 1.5 if high > 1 else high + 0.5) if symlog
              else (low - pad, high + pad))
    locator = (ticker.LogLocator(subs=(1.0, 2.0, 5.0) if high / low > 20 else (1.0, 1.5, 2.0, 3.0, 5.0, 7.0)) if log
               else ticker.SymmetricalLogLocator(base=10, linthresh=1.0) if symlog
               else ticker.MaxNLocator(6, steps=[1, 2, 2.5, 5, 10]))
    for ax in axes:
        if log:
            ax.set_yscale("log")
        elif symlog:
            ax.set_yscale("symlog", linthresh=1.0)
        if log or symlog:
            ax.yaxis.set_minor_locator(ticker.NullLocator())
        ax.yaxis.set_major_locator(locator)
        ax.yaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:.4g}"))
        ax.set_ylim(*limits)


def _draw_mean(ax, curves: dict, colour: str, name: str) -> list[tuple[float, float]]:
    """One cell's mean line and min–max band over the curves with a value at each epoch (seed -> {epoch: value});
    returns its (epoch, value) extremes for the y-range."""
    epochs = sorted({e for curve in curves.values() for e in curve})
    if not epochs:
        return []
    values = [[curve[e] for curve in curves.values() if e in curve] for e in epochs]
    mean, low, high, n = (np.array([f(v) for v in values]) for f in (np.mean, min, max, len))
    epochs = np.array(epochs, dtype=float)
    ax.plot(epochs, mean, color=colour, linewidth=1.9, marker="o", markersize=3.2, label=f"{name} mean", zorder=3)
    if n.max() > 1:
        ax.fill_between(epochs, low, high, color=colour, alpha=0.2, linewidth=0, label=f"{name} band", zorder=2)
    return [*zip(epochs, low), *zip(epochs, high)]


def _diverged(ax, runs: pd.DataFrame, colour: str) -> bool:
    """An 'x' at the top of the panel at each epoch a seed diverged at."""
    epochs = [epoch for epoch in (diverged_epoch(run) for _, run in runs.iterrows()) if epoch is not None]
    for epoch in epochs:
        ax.plot([epoch], [0.93], "x", color=colour, markersize=10, markeredgewidth=2.4,
                transform=ax.get_xaxis_transform(), clip_on=False, label="diverged", zorder=4)
    return bool(epochs)


def curves_figure(runs: pd.DataFrame, family: registry.Family, title: str) -> Figure:
    """A report table's loss curves: per noise level (columns) and block of `curve_blocks`, a train loss row, a val
    loss row and (with a reference model) the val loss of each model minus the reference's, seed by seed. A block's
    loss rows share one y-axis (`_scale`) unless their ranges are APART; a noise level without runs of the block's
    subject draws nothing."""
    mine = {family.label(d) for d in family.depths} | {f"R{d}" for d in family.depths}
    runs = runs[[registry.split_label(m)[0] in mine for m in runs["label"]]] if not runs.empty else runs
    blocks = curve_blocks(runs, family)
    if not blocks:
        raise ValueError(f"no runs of {family.title} (Table {family.table}) to draw")

    def subject(models):  # whose runs make a panel: a Lambda family's own models, or any baseline
        return models if family.position is None else [m for m in models if registry.family_of(m) == family]

    apart = {i for i, (models, _) in enumerate(blocks) if _rows_apart(runs[runs["label"].isin(models)])}
    noises = sorted({n for models, _ in blocks for n in runs.loc[runs["label"].isin(subject(models)), "noise"]})
    rows = [(i, kind) for i, (_, ref) in enumerate(blocks) for kind in ("train_loss", "val_loss", "delta")
            if kind != "delta" or ref]
    heights = [1.0 if kind == "delta" else 1.5 for _, kind in rows]
    width = 4.2 if len(noises) < 3 else 3.5
    fig = Figure(figsize=(1.6 + width * max(len(noises), 2), 2.0 + 1.55 * sum(heights)), layout="constrained")
    grid = fig.add_gridspec(len(rows), len(noises), height_ratios=heights)
    axes, values = {}, {}  # (block, "loss" | "delta") -> its axes, the (epoch, value) points of its y-range
    legend, diverged, labelled = {}, False, set()  # colour -> (its models as dict keys, their seed counts)
    for r, (i, kind) in enumerate(rows):
        models, ref = blocks[i]
        colours = _colours(models)
        group = (i, kind if kind == "delta" or i in apart else "loss")
        for c, noise in enumerate(noises):
            here = runs[runs["label"].isin(models) & np.isclose(runs["noise"].astype(float), noise)]
            if not here["label"].isin(subject(models)).any():
                continue  # nothing measured: nothing drawn
            first = next(iter(axes.values()), [None])[0]
            ax = fig.add_subplot(grid[r, c], sharex=first, sharey=(axes.get(group) or [None])[0])
            axes.setdefault(group, []).append(ax)
            ax.set_label(f"{models[-1]}|{noise:g}|{kind}")
            present = [m for m in models if m in set(here["label"])]
            if kind != "delta":
                drawn = len(values.get(group, []))
                for label in present:
                    mine = here[here["label"] == label]
                    names, counts = legend.setdefault(colours[label], ({}, set()))
                    names.setdefault(label)
                    counts.add(len(mine))
                    values.setdefault(group, []).extend(
                        _draw_mean(ax, seed_curves(mine, kind), colours[label], f"{label} {kind.split('_')[0]}"))
                    diverged |= _diverged(ax, mine, colours[label])
                if len(values.get(group, [])) == drawn:
                    ax.text(0.5, 0.5, "no finite loss before the divergence", ha="center", va="center",
                            transform=ax.transAxes, color="0.4")
                if kind == "train_loss":
                    ax.set_title(f"{' vs '.join(present)} · {fmt.noise(noise)} noise", fontsize=10)
            else:
                ax.axhline(0.0, color="0.3", linewidth=1.0, zorder=1)
                base = seed_curves(here[here["label"] == ref], "val_loss")
                for label in [m for m in present if m != ref]:
                    pairs = paired_differences(base, seed_curves(here[here["label"] == label], "val_loss"))
                    values.setdefault(group, []).extend(_draw_mean(ax, pairs, colours[label], f"{label} − {ref} val"))
                if len(present) < 2:
                    missing = " / ".join(m for m in models if m not in present)
                    ax.text(0.5, 0.5, f"no {missing} runs at this noise to pair with", ha="center", va="center",
                            transform=ax.transAxes, color="0.4", bbox=dict(facecolor="white", edgecolor="none"))
            ax.grid(alpha=0.3)
            bottom = r == len(rows) - 1 or rows[r + 1][0] != i
            ax.tick_params(labelbottom=bottom)
            if bottom:
                ax.set_xlabel("epoch")
            if r not in labelled:  # the first panel of a row names it
                labelled.add(r)
                others = [m for m in models if m != ref]
                each = others[0] if len(others) == 1 else "each"
                ax.set_ylabel(f"Δ val loss\n{each} − {ref}" if kind == "delta" else kind.replace("_", " "))
    _epoch_axis(fig.axes[0], max(int(e) for e in runs["epochs"]))
    for (i, kind), group in axes.items():
        _scale(group, values.get((i, kind), []), log_above=None if kind == "delta" else 4.0)
        if not values.get((i, kind)):  # nothing finite: numbers on the axis would suggest data
            group[0].set_yticks([])
    restarts = sorted({e for _, run in runs.iterrows() for e in run_restarts(run)})
    for ax in fig.axes:
        for epoch in restarts:
            ax.axvline(epoch, label="warm restart", **RESTART)
    if restarts:  # the first panel says what the dotted lines are
        first = fig.axes[0]
        first.text(restarts[0], 0.97, " lr restart", transform=first.get_xaxis_transform(), va="top", ha="left",
                   fontsize=8, color="0.3")

    handles = [Line2D([], [], color=colour, linewidth=2.4, marker="o", markersize=4,
                      label=f"{' / '.join(names)}: " + (f"mean of {_seeds_text(counts)}" if max(counts) > 1
                                                         else "one seed"))
               for colour, (names, counts) in legend.items()]
    if any(str(c.get_label()).endswith(" band") for ax in fig.axes for c in ax.collections):
        handles.append(Patch(color="0.55", alpha=0.35, label=BAND))
    if any(kind == "delta" for _, kind in axes):
        handles.append(Line2D([], [], color="0.3", linewidth=1.0, label="Δ: per same-seed pair, mean and min–max"
                              + (" (< 0: lower loss than the ResNet)" if family.position else "")))
    if restarts:
        handles.append(Line2D([], [], **RESTART, label=f"lr warm restart (epoch {', '.join(map(str, restarts))}): "
                              "the schedule, not instability"))
    if diverged:
        handles.append(Line2D([], [], color="0.2", marker="x", linestyle="", markersize=9, markeredgewidth=2,
                              label="a seed diverged"))
    if any(not ax.get_ylim()[0] <= line.get_ydata()[0] <= ax.get_ylim()[1] for ax in fig.axes
           for line in ax.get_lines() if str(line.get_label()).endswith(" mean") and line.get_xdata()[0] == 1):
        handles.append(Line2D([], [], linestyle="none", label="y-ranges from epoch 2 on: epoch 1 runs off"))
    fig.legend(handles=handles, loc="outside lower center", ncol=2 if len(noises) < 3 else 3, frameon=False,
               fontsize=9 if len(noises) < 3 else 10)
    fig.suptitle(_wrap(title, int(40 * max(len(noises), 2) + 10)), fontsize=11 if len(noises) < 3 else 13)
    return fig


def _loss_axis(ax, good: list[dict], band: bool) -> tuple[float, float]:
    """run_figure's y-axis over the finite losses before any divergence, log when they span more than a factor 4, with
    a grey band on top for an off-scale diverged epoch. Returns (the highest finite loss, where its 'x' goes)."""
    finite = [r[k] for r in good for k in ("train_loss", "val_loss") if math.isfinite(r[k]) and r[k] > 0]
    low, high = (min(finite), max(finite)) if finite else (1.0, 3.0)
    log = high / low > 4
    if log:
        bottom, off_scale, top = low / 1.15, high * 1.3, high * (1.6 if band else 1.15)
        ax.set_yscale("log")
        ax.yaxis.set_major_locator(ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_minor_formatter(ticker.NullFormatter())
    else:
        pad = 0.06 * (high - low or 1.0)
        bottom, off_scale, top = max(0.0, low - pad), high + 2 * pad, high + (3.5 if band else 1) * pad
    band_start = (high + off_scale) / 2 if band else math.inf
    # no numbers in the off-scale band: an 'x' there is not at that value
    ax.yaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}" if v < band_start else ""))
    ax.set_ylim(bottom, top)
    ax.set_ylabel("cross-entropy loss" + (" (log scale)" if log else ""))
    if band:
        ax.axhspan(band_start, top, color="0.92", zorder=0)
    if not finite:
        ax.set_yticks([])
    return high, off_scale


def run_figure(run: pd.Series) -> Figure:
    """One run (a row of runs.collect): train and val loss per epoch over its planned schedule (an unfinished run
    shows how far it got), the last values written when there are few epochs, the lr's warm restarts dotted, a
    diverged epoch an 'x'; the title names the model and noise (the row's 'architecture'), status and set-up."""
    fig = Figure(figsize=(6.4, 4.8), layout="constrained")
    ax = fig.subplots()
    good, bad = _split(run)
    diverged_at = diverged_epoch(run)
    diverged = diverged_at is not None
    epochs = [r["epoch"] for r in good]
    for key, name, style, marker, colour in (("train_loss", "train loss", "--", "o", OKABE_ITO[0]),
                                             ("val_loss", "val loss", "-", "s", OKABE_ITO[3])):
        values = [r[key] if math.isfinite(r[key]) else np.nan for r in good]
        ax.plot(epochs, values, linestyle=style, marker=marker, markersize=7, linewidth=1.8, color=colour, label=name)
        finite = [(e, v) for e, v in zip(epochs, values) if math.isfinite(v)]
        if finite and len(epochs) <= 5:  # few points: their values, as a line would not show a trend
            last = finite[-1][1]
            ax.annotate(f"{last:.3f}" if last < 1e3 else f"{last:.3g}", finite[-1], xytext=(7, 0),
                        textcoords="offset points", va="center", color=colour, fontsize=9)
    high, off_scale = _loss_axis(ax, good, diverged)
    if diverged:
        losses = (bad["train_loss"], bad["val_loss"]) if bad else (math.nan,)
        worst = max(losses) if all(math.isfinite(v) for v in losses) else math.inf  # NaN: off-scale
        ax.plot([diverged_at], [worst if worst <= high else off_scale], "x", color="black",
                markersize=11, markeredgewidth=2.5,
                label=f"diverged (loss {'non-finite' if math.isinf(worst) else f'{worst:.3g}'})")
    if not good and not diverged:
        ax.text(0.5, 0.5, "no finished epoch yet", ha="center", va="center", transform=ax.transAxes,
                fontsize=12, color="0.4")
    ax.set_xlabel("epoch")
    planned = max([int(run["epochs"])] + epochs)
    _epoch_axis(ax, planned)
    restarts = [e for e in run_restarts(run) if e <= planned]
    for epoch in restarts:
        ax.axvline(epoch, **RESTART)
    ax.grid(alpha=0.3)
    if good or diverged:
        handles, _ = ax.get_legend_handles_labels()
        if restarts:
            handles.append(Line2D([], [], **RESTART, label="lr warm restart"))
        fig.legend(handles=handles, loc="outside lower center", ncol=len(handles), frameon=False)
    done = int(run["epochs_done"]) if pd.notna(run.get("epochs_done")) else len(good)
    status = f"diverged at epoch {diverged_at}" if diverged else run["status"]
    fig.suptitle(_wrap(f"{run['architecture']}: {status}, {done}/{run['epochs']} epochs\n"
                       f"{run['setup_label']}", 70), fontsize=11)
    return fig


def has_accuracy(cells: pd.DataFrame) -> bool:
    """Whether accuracy_figure has a point to draw (a cell with a best val top-1)."""
    return not cells.empty and pd.to_numeric(cells["best_val_acc"], errors="coerce").notna().any()


def accuracy_figure(cells: pd.DataFrame, title: str) -> Figure:
    """Best val top-1 at the measured noise levels only (one group each, no line between them): per model its mean
    over seeds with a 95 % t interval, hollow where one seed is all there is; colour `label_colour`, marker the depth;
    a dotted chance line; a black 'x' where a run of the cell diverged (its best predates it). No cell: ValueError."""
    cells = cells[pd.to_numeric(cells["best_val_acc"], errors="coerce").notna()] if not cells.empty else cells
    if cells.empty:
        raise ValueError("no cell with a best val top-1 to draw")
    levels = sorted(cells["noise"].astype(float).unique())
    # one point per run label: a model with another lambda layer ('LR18_L2(rpe)[lucidrains]') is a point of its own
    present = sorted(set(cells["label"]), key=lambda label: (registry.model_rank(label), label))
    legend_width = min(len(present) + 2, 4) * (0.6 + 0.085 * max(map(len, present)))  # 4 columns of labels, inches
    fig = Figure(figsize=(max(7.0, 2.0 + 2.4 * len(levels) + 0.25 * len(present), legend_width), 5.6),
                 layout="constrained")
    ax = fig.subplots()
    step = 0.8 / len(present)
    tops, bottoms = [], []
    for i, label in enumerate(present):
        mine = cells[cells["label"] == label].sort_values("noise")
        spec = registry.SPECS.get(mine["model"].iloc[0])
        x = np.array([levels.index(float(n)) for n in mine["noise"]]) + step * (i - (len(present) - 1) / 2)
        y = 100 * mine["best_val_acc"].to_numpy(dtype=float)
        n = mine["n_runs"].to_numpy(dtype=int)
        stds = mine["best_val_acc_std"].astype(float)
        half = 100 * np.array([t_half_width(std, k, CONFIDENCE) for std, k in zip(stds, n)])
        colour, marker = label_colour(label), "o" if spec is None or spec.depth == 18 else "s"
        ax.plot(x, y, linestyle="none", color=colour, marker=marker, markersize=7, label=label, zorder=3)
        single = n < 2  # one seed: its value, hollow
        ax.plot(x[single], y[single], linestyle="none", marker=marker, markersize=7, markerfacecolor="white",
                markeredgecolor=colour, markeredgewidth=1.6, zorder=4)
        bars = np.isfinite(half)
        if bars.any():
            ax.errorbar(x[bars], y[bars], yerr=half[bars], fmt="none", ecolor=colour, capsize=4, linewidth=1.5)
        tops += list(np.where(bars, y + half, y))
        bottoms += list(np.where(bars, y - half, y))
        bad = mine["n_diverged"].to_numpy() > 0
        ax.plot(x[bad], y[bad], "x", color="black", markersize=12, markeredgewidth=2.2, linestyle="none")
    chance = 100 / CLASSES
    ax.axhline(chance, color="0.4", linestyle=":", linewidth=1.5)
    for k in range(len(levels) - 1):  # the groups are levels, not a scale: a gap between them
        ax.axvline(k + 0.5, color="0.85", linewidth=1.0)
    ax.set_xticks(range(len(levels)), [fmt.noise(level) for level in levels])
    ax.set_xlim(-0.5, len(levels) - 0.5)
    low, high = min(bottoms + [chance]), max(tops)
    pad = 0.08 * (high - low)
    ax.set_ylim(max(0.0, low - pad), min(100.0, high + pad))
    ax.yaxis.set_major_locator(ticker.MaxNLocator(8, steps=[1, 2, 5, 10]))
    handles = [*ax.get_legend_handles_labels()[0],
               Line2D([], [], color="0.4", linestyle=":", linewidth=1.5, label=f"chance (1/{CLASSES})")]
    if (cells["n_diverged"] > 0).any():
        handles.append(Line2D([], [], marker="x", color="black", linestyle="", markersize=9, markeredgewidth=2,
                              label="a run diverged"))
    fig.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 4), frameon=False)
    fewest, most = int(cells["n_runs"].min()), int(cells["n_runs"].max())
    seeds = f"n = {fewest}" + f"–{most}" * (most > fewest)
    caption = ("one seed per point (its value): no interval, and differences of a few points may be noise" if most < 2
               else f"marker: mean over the seeds ({seeds}); bar: {CONFIDENCE:.0%} t interval"
               + "; hollow, no bar: one seed, its value" * (fewest < 2))
    ax.set_xlabel("label noise (% of training labels flipped; only the measured levels)\n" + caption)
    ax.set_ylabel("best val top-1 (%)")
    ax.grid(axis="y", alpha=0.3)
    fig.suptitle(_wrap(title, int(fig.get_figwidth() * 11)), fontsize=11)
    return fig


def png_bytes(fig: Figure) -> bytes:
    """The figure as PNG bytes at DPI, without matplotlib's version stamp: the same figure, the same bytes."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, metadata={"Software": None})
    return buffer.getvalue()


def save_png(fig: Figure, path: Path | str) -> Path:
    """png_bytes(fig) written atomically at `path` (folders created); a failure raises record.RecordError
    saying which path and why, and leaves no half-written file."""
    path = Path(path)
    data = png_bytes(fig)
    files.make_dir(path.parent, path)
    files.atomic_write_bytes(path, data)  # the record's temporary-then-rename write
    return path


def plot_samples(root: str | Path | None = None, noise: float = 0.25, n: int = 16, path: str | Path | None = None,
                 *, split: str = "train", seed: int = 0, synthetic: bool = False):
    """A Figure of `n` (>= 1) random images (seeded) of NoisyImagenette(root, split, noise, ...): a flipped label
    titled "clean → noisy" in red, the others their clean class; the title gives the realised flip rate. Saved at
    `path` when given (PNG/PDF/SVG by suffix, folders created)."""
    if n < 1:
        raise ValueError(f"n={n}: samples must be >= 1.")
    from .data import NoisyImagenette  # (torch: here, so `lambdalib report` starts without it)
    data = NoisyImagenette(root, split, noise, synthetic=synthetic, seed=seed, transform=None)
    picks = sorted(np.random.default_rng(seed).choice(len(data), size=min(n, len(data)), replace=False))
    cols = math.ceil(math.sqrt(len(picks)))
    rows = math.ceil(len(picks) / cols)
    fig = Figure(figsize=(2.0 * cols, 2.3 * rows), layout="constrained")
    for k, i in enumerate(picks):
        ax = fig.add_subplot(rows, cols, k + 1)
        image, noisy = data[i]
        clean = CLASS_NAMES[data.clean_targets[i]]
        flipped = bool(data.flipped[i])
        ax.imshow(image)
        ax.set_title(f"{clean} →\n{CLASS_NAMES[noisy]}" if flipped else clean, fontsize=8,
                     color="red" if flipped else "black")
        ax.axis("off")
    fig.suptitle(f"{data_slug(str(data.root))} {split}, {'synthetic' if synthetic else 'official'} noise {noise:g}: "
                 f"realised flip rate {data.flip_rate:.2%} (red: clean → noisy label)", fontsize=9)
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120)
    return fig
