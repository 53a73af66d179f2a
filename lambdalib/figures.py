"""How the report's figures look: loss curves, accuracy vs noise, one run's curves, the data's sample grid.

    from lambdalib import figures
    fig = figures.curves_figure(runs, ["R18", "R34"], "Baselines")   # a matplotlib Figure
    figures.save_png(fig, "curves.png")                              # written atomically

What the numbers are (which runs count, set-ups, tables, the README) is `report.py`; it hands this module
the rows it collected (`report.collect_runs`: one row per run record) and the cells it aggregated
(`report.aggregate`: one row per experiment) and gets Figures or PNG bytes back. `report.plot_run(run_dir)`
(one run folder -> curves.png) lives in report.py, because it reads the record the way the tables do, and
draws it with `run_figure` from here. `report.plot_curves`, `report.plot_accuracy_vs_noise`,
`report.curves_figure`, `report.run_figure` and `report.accuracy_figure` are this module's, re-exported.

Conventions of every figure:
- matplotlib's `Figure`, never pyplot: PNGs are rendered with Agg and a notebook's backend is left alone;
- Okabe-Ito colours (distinguishable with the common colour-vision deficiencies): one per noise level on
  loss curves, one per model family (depth: line style) on accuracy vs noise;
- a diverged epoch is an 'x' (in a grey band above the range when its loss is off-scale or non-finite);
- PNGs carry no version stamp, so the same records give the same bytes (`png_bytes`).

Imports: record, config, models and data only (never report or train), so report -> figures -> record.
"""
from __future__ import annotations

import io
import math
import re
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import ticker
from matplotlib.figure import Figure  # not pyplot: renders PNGs with Agg, leaves a notebook's backend alone
from matplotlib.lines import Line2D

from . import files, record, registry
from .config import data_slug
from .data import NoisyImagenette
from .imagenette import CLASS_NAMES, WNIDS

CLASSES = len(WNIDS)  # Imagenette: chance accuracy is 1/10
# Okabe-Ito: distinguishable with the common colour-vision deficiencies
OKABE_ITO = ["#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000"]
NOISE_COLOURS = {0.0: OKABE_ITO[0], 0.05: OKABE_ITO[1], 0.25: OKABE_ITO[2], 0.5: OKABE_ITO[3], 0.01: OKABE_ITO[4]}
FAMILY_COLOURS = {(None, None): OKABE_ITO[7], ("rpe", 2): OKABE_ITO[0], ("rpe", 3): OKABE_ITO[5],
                  ("lc", 2): OKABE_ITO[3], ("lc", 3): OKABE_ITO[1]}
DPI = 150
NO_RUNS = "No runs yet."  # an empty panel; the report's empty tables say the same


# ---------------------------------------------------------------------------------------- helpers
def _noise_colour(noise: float) -> str:
    for level, colour in NOISE_COLOURS.items():
        if math.isclose(noise, level):
            return colour
    return OKABE_ITO[5 + int(noise * 1000) % 3]  # synthetic rates: the remaining palette


def _no_runs(ax, text: str = NO_RUNS) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, fontsize=12, color="0.4")


def _short_status(status: str, diverged_at) -> str:
    """A run's status in a title: 'diverged at epoch 3', 'crashed', 'interrupted', 'complete'."""
    if status == "diverged" and pd.notna(diverged_at):
        return f"diverged at epoch {int(diverged_at)}"
    return status


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
    history = run["_history"] if "_history" in run and isinstance(run["_history"], list) \
        else record.read_history(Path(run["_path"]))
    diverged_at = run["diverged_at"] if run["status"] == "diverged" and pd.notna(run["diverged_at"]) else None
    good = [r for r in history if r["epoch"] != diverged_at]
    bad = next((r for r in history if r["epoch"] == diverged_at), None)
    return good, bad


class _LossAxis:
    """The y-range of loss curves: the finite losses of the epochs before any divergence (one explosion
    cannot flatten every other curve), logarithmic when they span more than a factor 4, with a band above
    the range for the 'x' of a diverged epoch whose loss is off-scale or non-finite."""

    def __init__(self, goods: list[list[dict]], band: bool):
        self.finite = [r[k] for good in goods for r in good for k in ("train_loss", "val_loss")
                       if math.isfinite(r[k]) and r[k] > 0]
        low, self.high = (min(self.finite), max(self.finite)) if self.finite else (1.0, 3.0)
        self.log, self.band = self.high / low > 4, band
        if self.log:
            self.bottom, self.off_scale, self.top = low / 1.15, self.high * 1.3, self.high * (1.6 if band else 1.15)
        else:
            pad = 0.06 * (self.high - low or 1.0)
            self.bottom, self.off_scale = max(0.0, low - pad), self.high + 2 * pad
            self.top = self.high + (3.5 if band else 1) * pad
        self.band_start = (self.high + self.off_scale) / 2 if band else math.inf

    def diverged(self, bad: dict | None) -> tuple[float, float]:
        """(the diverged epoch's worst loss, inf when non-finite; where its 'x' goes)."""
        losses = (bad["train_loss"], bad["val_loss"]) if bad else (math.nan,)
        worst = max(losses) if all(math.isfinite(v) for v in losses) else math.inf  # NaN: off-scale
        return worst, worst if worst <= self.high else self.off_scale

    def apply(self, ax, axes_with_band=()) -> None:
        if self.log:
            ax.set_yscale("log")
            ax.yaxis.set_major_locator(ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
            ax.yaxis.set_minor_formatter(ticker.NullFormatter())
        # no numbers in the off-scale band: an 'x' there is not at that value
        ax.yaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}" if v < self.band_start else ""))
        ax.set_ylim(self.bottom, self.top)
        ax.set_ylabel("cross-entropy loss" + (" (log scale)" if self.log else ""))
        for other in axes_with_band:
            other.axhspan(self.band_start, self.top, color="0.92", zorder=0)


def _epoch_axis(ax, last_epoch: int) -> None:
    ax.set_xlim(0.5, last_epoch + 0.5)
    ax.xaxis.set_major_locator(ticker.MaxNLocator(nbins=8, integer=True, min_n_ticks=1))


# ------------------------------------------------------------------------------------ loss curves
def curves_figure(runs: pd.DataFrame, labels: list[str], title: str) -> Figure:
    """Train (dashed) and val (solid) loss vs epoch, one panel per model label, one colour per noise level.

    The y-range spans the finite losses of the epochs before any divergence, so one explosion cannot
    flatten every other curve; the epoch a run diverged at is an 'x' (in a band above the range when its
    loss is off-scale or non-finite) and is spelled out under the panel. The y-axis turns logarithmic
    when the losses span more than a factor 4."""
    fig = Figure(figsize=(5.2 * len(labels) + 1.6, 4.6), layout="constrained")
    axes = fig.subplots(1, len(labels), sharey=True, squeeze=False)[0]
    curves = [(run, *_split(run)) for _, run in runs.iterrows()]
    band = any(run["status"] == "diverged" for run, _, _ in curves)
    y = _LossAxis([good for _, good, _ in curves], band)
    last_epoch = max([1] + [int(r["epoch"]) for _, good, bad in curves for r in good + ([bad] if bad else [])]
                     + [int(run["epochs"]) for run, _, _ in curves])
    noises, banded = set(), []
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
                ax.plot(epochs, values, style, color=colour, marker="o", markersize=4, linewidth=1.6, alpha=0.9)
            if run["status"] == "diverged":
                epoch = int(run["diverged_at"])
                worst, at = y.diverged(bad)
                ax.plot([epoch], [at], "x", color=colour, markersize=11, markeredgewidth=2.5)
                seeds = len(mine) > len({c[0]["noise"] for c in mine})  # several runs per noise: name the seed
                who = f"{run['noise'] * 100:g}%" + (f" seed {run['seed']}" if seeds else "")
                notes.append(f"{who}: epoch {epoch} (loss {'non-finite' if math.isinf(worst) else f'{worst:.3g}'})")
        ax.set_xlabel("epoch" + "".join(f"\n× diverged {n}" for n in notes))
        _epoch_axis(ax, last_epoch)
        ax.grid(alpha=0.3)
        if any(c[0]["status"] == "diverged" for c in mine):
            banded.append(ax)
    y.apply(axes[0], banded)
    if not curves:  # an empty figure: no axis numbers that suggest data
        for ax in axes:
            ax.set_xticks([]), ax.set_yticks([])
    elif not y.finite:  # only divergences: the y numbers would mean nothing
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
    fig.suptitle(_wrap(title, int(44 * len(labels))))
    return fig


def plot_curves(runs: pd.DataFrame, labels: list[str], path: Path, title: str) -> Path:
    """curves_figure saved as a PNG at `path`."""
    return save_png(curves_figure(runs, labels, title), path)


def run_figure(run: pd.Series) -> Figure:
    """One run (a row of report.collect_runs) as its train and val loss per epoch, readable at any epoch
    count: markers and the last value of each curve written next to it, integer epoch ticks over the
    planned schedule (an unfinished run shows how far it got), a diverged epoch as an 'x', the legend under
    the axes, the title naming the model and noise (the row's 'architecture'), status and scale."""
    fig = Figure(figsize=(6.4, 4.8), layout="constrained")
    ax = fig.subplots()
    good, bad = _split(run)
    diverged = run["status"] == "diverged" and pd.notna(run["diverged_at"])
    y = _LossAxis([good], diverged)
    epochs = [r["epoch"] for r in good]
    for key, name, style, marker, colour in (("train_loss", "train loss", "--", "o", OKABE_ITO[0]),
                                             ("val_loss", "val loss", "-", "s", OKABE_ITO[3])):
        values = [r[key] if math.isfinite(r[key]) else np.nan for r in good]
        ax.plot(epochs, values, linestyle=style, marker=marker, markersize=7, linewidth=1.8, color=colour,
                label=name)
        finite = [(e, v) for e, v in zip(epochs, values) if math.isfinite(v)]
        if finite and len(epochs) <= 5:  # few points: their values, as a line would not show a trend
            last = finite[-1][1]
            ax.annotate(f"{last:.3f}" if last < 1e3 else f"{last:.3g}", finite[-1], xytext=(7, 0),
                        textcoords="offset points", va="center", color=colour, fontsize=9)
    if diverged:
        worst, at = y.diverged(bad)
        ax.plot([int(run["diverged_at"])], [at], "x", color="black", markersize=11, markeredgewidth=2.5,
                label=f"diverged (loss {'non-finite' if math.isinf(worst) else f'{worst:.3g}'})")
    if not good and not diverged:
        _no_runs(ax, "no finished epoch yet")
    y.apply(ax, [ax] if diverged else [])
    if not y.finite:
        ax.set_yticks([])
    ax.set_xlabel("epoch")
    _epoch_axis(ax, max([int(run["epochs"])] + epochs))
    ax.grid(alpha=0.3)
    if good or diverged:
        fig.legend(loc="outside lower center", ncol=3, frameon=False)
    done = int(run["epochs_done"]) if pd.notna(run.get("epochs_done")) else len(good)
    status = _short_status(run["status"], run.get("diverged_at"))
    fig.suptitle(_wrap(f"{run['architecture']}: {status}, {done}/{run['epochs']} epochs\n"
                       f"{run['setup_label']}", 70), fontsize=11)
    return fig



# ------------------------------------------------------------------------------- accuracy vs noise
def _seeds_caption(n_runs: pd.Series) -> str:
    low, high = int(n_runs.min()), int(n_runs.max())
    if high < 2:
        return "one seed per point: no error bars, and differences of a few points may be noise"
    counts = f"{low}" if low == high else f"{low}–{high}"
    return (f"error bars: ± sample std over the seeds of a point (n = {counts})"
            + ("; points with one seed have none" if low < 2 else ""))


def accuracy_figure(cells: pd.DataFrame, title: str) -> Figure:
    """Best val top-1 vs noise for the ten models at the noise levels' true spacing; colour = family, line
    = depth; a dotted chance line (1/classes); error bars (± std over seeds) only on points with >= 2
    seeds, the number of seeds in the caption. A black 'x' marks cells where at least one run diverged
    (its best is from before the divergence)."""
    fig = Figure(figsize=(8.8, 5.0), layout="constrained")
    ax = fig.subplots()
    chance = 100 / CLASSES
    if cells.empty:
        _no_runs(ax)
        ax.set_xticks([]), ax.set_yticks([])
        ax.set_xlabel("label noise (% of training labels flipped)")
    else:
        levels = sorted(cells["noise"].unique())
        present = [m for m in registry.model_names() if m in set(cells["model"])]
        present += sorted(set(cells["model"]) - set(present))  # timm models outside the report's ten
        span = 100 * (max(levels) - min(0.0, *levels)) or 10.0
        dodge = span / 150  # points of one noise level stay apart, far less than any level spacing
        for i, model in enumerate(present):
            spec = registry.SPECS.get(model)
            mine = cells[cells["model"] == model].sort_values("noise")
            x = 100 * mine["noise"] + dodge * (i - (len(present) - 1) / 2)
            y = 100 * mine["best_val_acc"]
            shallow = spec is None or spec.depth == 18
            colour = FAMILY_COLOURS[(spec.position, spec.stage)] if spec else OKABE_ITO[4]
            ax.plot(x, y, color=colour, linestyle="-" if shallow else "--", marker="o" if shallow else "s",
                    markersize=6, linewidth=1.6, label=spec.label if spec else model)
            seeds = mine["n_runs"] >= 2
            if seeds.any():
                ax.errorbar(x[seeds], y[seeds], yerr=100 * mine["best_val_acc_std"][seeds], fmt="none",
                            ecolor=colour, capsize=3, linewidth=1.2)
            bad = mine["n_diverged"] > 0
            ax.plot(x[bad], y[bad], "x", color="black", markersize=12, markeredgewidth=2.2)
        ax.axhline(chance, color="0.4", linestyle=":", linewidth=1.5)
        ax.set_xticks([100 * n for n in levels], [f"{n * 100:g}%" for n in levels])
        ax.set_xlim(100 * min(0.0, *levels) - span / 20, 100 * max(levels) + span / 20)  # 0 % always shown
        best = pd.to_numeric(cells["best_val_acc"], errors="coerce").max()
        ax.set_ylim(0, min(100.0, max(chance, 100 * best if pd.notna(best) else chance) * 1.15 + 2))
        handles, names = ax.get_legend_handles_labels()
        handles.append(Line2D([], [], color="0.4", linestyle=":", linewidth=1.5))
        names.append(f"chance (1/{CLASSES})")
        if (cells["n_diverged"] > 0).any():
            handles.append(Line2D([], [], marker="x", color="black", linestyle="", markersize=9, markeredgewidth=2))
            names.append("a run diverged")
        fig.legend(handles, names, loc="outside right upper", frameon=False)
        ax.set_xlabel("label noise (% of training labels flipped)\n" + _seeds_caption(cells["n_runs"]))
    ax.set_ylabel("best val top-1 (%)")
    ax.grid(alpha=0.3)
    ax.set_title(_wrap(title, 80))
    return fig


def plot_accuracy_vs_noise(cells: pd.DataFrame, path: Path, title: str) -> Path:
    """accuracy_figure saved as a PNG at `path`."""
    return save_png(accuracy_figure(cells, title), path)


# ------------------------------------------------------------------------------------------ PNGs
def png_bytes(fig: Figure) -> bytes:
    """The figure as PNG bytes at DPI, without matplotlib's version stamp: the same figure, the same bytes."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, metadata={"Software": None})  # no version stamp: same bytes
    return buffer.getvalue()


def save_png(fig: Figure, path: Path | str) -> Path:
    """png_bytes(fig) written atomically at `path` (folders created); a failure raises record.RecordError
    saying which path and why, and leaves no half-written file."""
    path = Path(path)
    data = png_bytes(fig)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise record.RecordError(files.describe_os_error(err, path)) from err
    files.atomic_write_bytes(path, data)  # the record's temporary-then-rename write
    return path



# ------------------------------------------------------------------------------------ the data
def plot_samples(
    root: str | Path | None = None,
    noise: float = 0.25,
    n: int = 16,
    path: str | Path | None = None,
    *,
    split: str = "train",
    seed: int = 0,
    synthetic: bool = False,
):
    """A grid of `n` random train images (seeded) titled with their labels at `noise`; returns the Figure.

    Images whose label is flipped are titled "clean → noisy" in red; the others show the clean class in
    black. The figure title gives the realised flip rate. When `path` is given the figure is saved there
    (PNG/PDF/SVG by suffix, folders created). Built on matplotlib's Figure, so no GUI backend is needed.
    `n` < 1 raises ValueError. `root`, `noise`, `split`, `seed` and `synthetic` are NoisyImagenette's.
    """
    if n < 1:
        raise ValueError(f"n={n}: samples must be >= 1.")
    data = NoisyImagenette(root, split, noise, synthetic=synthetic, seed=seed, transform=None)
    rng = np.random.default_rng(seed)
    picks = sorted(rng.choice(len(data), size=min(n, len(data)), replace=False))
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
    kind = "synthetic" if synthetic else "official"
    source = data_slug(str(data.root))
    fig.suptitle(f"{source} {split}, {kind} noise {noise:g}: realised flip rate {data.flip_rate:.2%} "
                 "(red: clean → noisy label)", fontsize=9)
    if path is not None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120)
    return fig
