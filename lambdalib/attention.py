"""Figure 7: FullGrad maps drawn for timm's pretrained models and for the checkpoints this package trained.

    attention.attention_figure(["resnet18", "resnet50", "lambda_resnet26t", "lambda_resnet50ts"])
    attention.trained_figure()   # from our run records' best.pt (no download), with its table

Maps and their measures are fullgrad.py's; here: picking runs (PICK_RULE), the panels, caption and table.
Each on-object share stands next to its uniform baseline, the box's share of the image area.
"""
from __future__ import annotations

import csv
import io
import json
import logging
import textwrap
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from . import __version__, files, fmt, fullgrad, registry, runs
from .fullgrad import AttentionMap, ModelInfo, WeightsUnavailableError, WeightsUnavailableWarning
from .imagenette import CLASS_NAMES, WNIDS
from .paths import results_dir

log = logging.getLogger(__name__)

REPORT_MODELS = ("resnet18", "resnet50", "lambda_resnet26t", "lambda_resnet50ts")  # figure 7's four
TRAINED_LABELS, TRAINED_NOISE = ("R18", "LR18_L2(rpe)", "LR18_L2(lc)"), (0.0, 0.5)
# beside both.png, the first validation image (by name) of a dog (like both.png's), a large and a small object
TRAINED_IMAGE_CLASSES = ("n02102040", "n03417042", "n03445777")  # English springer, garbage truck, golf ball
EMBEDDED_VAL = "imagenette-mini/val"  # under data/
TRAINED_NAME = "attention_trained"  # figures/<name>.png (+ .md caption), tables/<name>.csv (+ .md)
PICK_RULE = ("per model and noise level, among the run folders with a best.pt: preset 'fast' first, then status "
             "'complete', then official (not synthetic) noise, then the most epochs trained, then the lowest seed, "
             "then the run id (alphabetical)")
CMAP, _BOX_COLOURS = "jet", ("red", "lime", "cyan", "magenta", "yellow")
CAPTION_START = "![{path.stem}]({path.name})"  # the caption file beside a figure begins so (files.figure_target)
_VERDICT_COLOURS = {True: "darkgreen", False: "firebrick", None: "black"}  # prediction: right, wrong, no truth


class NoTrainedRunsError(FileNotFoundError):
    """No run record with a best.pt for any of the requested models and noise levels."""


# ------------------------------------------------------------------------------- picking runs
@dataclass(frozen=True)
class PickedRun:
    """The run record one column of the trained-models figure comes from (see PICK_RULE)."""

    label: str
    noise: float
    run_dir: Path
    status: str
    preset: str
    seed: int
    epochs_done: int
    synthetic_noise: bool
    img_size: int
    data: str
    git_commit: str
    candidates: int = 1  # run folders with a best.pt for this model and noise, the picked one included
    history: tuple = field(default=(), compare=False, repr=False)  # history.csv rows, as runs.collect read them

    @property
    def run_id(self) -> str:
        return self.run_dir.name

    @property
    def short_id(self) -> str:  # without the model and noise a panel's title gives: 'fast_e15_64px_embedded_<hash>_s0'
        parts = self.run_id.split("_")
        return "_".join(parts[2:]) if len(parts) > 2 and parts[1].startswith("noise") else self.run_id


def _runs_folder(results: str | Path | None) -> Path:
    return (Path(results).expanduser() if results else results_dir()) / "runs"


def _with_best(results: str | Path | None) -> pd.DataFrame:
    """runs.collect's records (an unreadable one skipped with a warning naming its file) that kept a best.pt."""
    frame = runs.collect(_runs_folder(results).parent)
    return frame[frame["_path"].map(lambda p: (p / "best.pt").is_file())] if not frame.empty else frame


def _value(row: dict, column: str, default):
    return default if fmt.missing(row.get(column)) else row[column]


def pick_runs(results: str | Path | None = None, labels=TRAINED_LABELS, noise=TRAINED_NOISE, *,
              frame: pd.DataFrame | None = None) -> dict[tuple[str, float], PickedRun]:
    """One run record with a best.pt per (model label, noise level), chosen by PICK_RULE, ordered labels x noise;
    cells without one are absent. results: the folder holding runs/; `frame`: its `_with_best` if read already."""
    frame = _with_best(results) if frame is None else frame
    wanted = list(dict.fromkeys(registry.report_label(str(label)) for label in labels))
    found: dict[tuple[str, float], list[PickedRun]] = {}
    for row in frame.to_dict("records"):
        level = next((float(n) for n in noise if abs(float(row["noise"]) - float(n)) < 1e-9), None)
        if row["label"] in wanted and level is not None:
            found.setdefault((row["label"], level), []).append(PickedRun(
                label=row["label"], noise=level, run_dir=row["_path"], status=str(_value(row, "status", "?")),
                preset=str(row["preset"]), seed=int(row["seed"]), epochs_done=int(_value(row, "epochs_done", 0)),
                # runs.collect names a non-default identity field in the set-up's recipe
                synthetic_noise="synthetic_noise=True" in str(_value(row, "recipe", "")),
                img_size=int(row["img_size"]), data=str(row["data"]),
                git_commit=str(_value(row, "env_git_commit", "unknown")), history=tuple(row["_history"])))

    def preference(run: PickedRun) -> tuple:  # PICK_RULE
        return run.preset != "fast", run.status != "complete", run.synthetic_noise, -run.epochs_done, run.seed, \
            run.run_id

    return {cell: replace(min(found[cell], key=preference), candidates=len(found[cell]))
            for cell in ((label, float(level)) for label in wanted for level in noise) if cell in found}


def _no_runs_message(results: str | Path | None, frame: pd.DataFrame, labels, noise) -> str:
    have = sorted(Path(p).name for p in frame["_path"]) if not frame.empty else []
    seen = f"; best.pt found only in {', '.join(have[:4])}{', ...' if len(have) > 4 else ''}" if have else ""
    return (f"no run record with a best.pt under {_runs_folder(results)} for "
            f"{','.join(registry.report_label(str(label)) for label in labels)} at noise "
            f"{','.join(f'{float(n):g}' for n in noise)}{seen}. Train them first: `lambdalib reproduce --study` (the "
            f"committed study, best.pt kept; about 100 min on a 2-core bf16 CPU) or one model, e.g. `lambdalib train "
            f"--model R18 --noise 0 --preset fast --img-size 64` (the default --checkpoints best keeps best.pt; "
            f"`lambdalib demo`/--quick runs save none)")


# ------------------------------------------------------------------------------------ panels
def trained_images() -> list[Path]:
    """The trained-models figure's rows: data/images/both.png, then the first validation image (by file name)
    of each class in TRAINED_IMAGE_CLASSES from the embedded data, data/imagenette-mini/val/<wnid>/."""
    both = fullgrad.default_image()
    fullgrad.open_image(both)  # says where it should be when it is missing
    images = [both]
    for wnid in TRAINED_IMAGE_CLASSES:
        folder = both.parent.parent / EMBEDDED_VAL / wnid  # the same data/ folder as both.png
        found = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpeg", ".jpg", ".png")) \
            if folder.is_dir() else []
        if not found:
            raise FileNotFoundError(f"{folder}: no images; the embedded data ships in the repository's "
                                    f"data/imagenette-mini (set LAMBDALIB_HOME or pass images=)")
        images.append(found[0])
    return images


@dataclass
class Row:
    """One image of a figure: its name in tables, its Imagenette class ('' for none), pixels, object boxes."""

    name: str
    true_class: str
    picture: Image.Image
    boxes: dict[str, fullgrad.Box]

    @classmethod
    def of(cls, image: str | Path | None) -> "Row":
        path = Path(image) if image is not None else fullgrad.default_image()
        picture = fullgrad.open_image(path)  # a missing image fails before any model is loaded
        wnid = path.parent.name if path.parent.name in WNIDS else ""
        return cls(f"{wnid}/{path.name}" if wnid else path.name, CLASS_NAMES[WNIDS.index(wnid)] if wnid else "",
                   picture, fullgrad.load_boxes(path))

    def area(self, name: str) -> float:
        """A box's (or 'either': all boxes') share of the image area: the uniform baseline of its mass share."""
        boxes = list(self.boxes.values()) if name == "either" else [self.boxes[name]]
        return fullgrad.area_share((self.picture.height, self.picture.width), boxes)

    @property
    def title(self) -> str:
        boxes = [f"{n} ({_BOX_COLOURS[i % len(_BOX_COLOURS)]}): {fmt.percent(self.area(n))}"
                 for i, n in enumerate(self.boxes)]
        lines = [self.true_class] * bool(self.true_class) + [self.name]
        return "\n".join(lines + (["boxes (share of the image area):", *boxes] if boxes else []))


@dataclass
class Panel:
    """One map of a figure: the model (and run) it explains, the image, the map and its measures."""

    info: ModelInfo
    row: Row
    map: AttentionMap
    measures: dict[str, float]
    bias_layers: int  # bias-carrying conv/norm layers of the model (what CompleteFullGrad can count)
    stock_layers: int  # what pytorch-grad-cam's own FullGrad would have counted
    run: PickedRun | None = None
    val_acc: float | None = None  # val top-1 of the checkpoint's epoch (history.csv)

    @property
    def heading(self) -> str:
        return f"{self.run.label}, noise {fmt.noise(self.run.noise)}" if self.run else self.info.label

    @property
    def predicted(self) -> str:
        return f"{self.map.top_name} ({fmt.percent(self.map.top_prob, 0)})"

    @property
    def correct(self) -> bool | None:
        return self.map.top_name == self.row.true_class if self.row.true_class else None

    @property
    def title(self) -> str:
        lines = [self.heading]
        if self.run:
            lines += [self.run.short_id, f"epoch {self.info.epoch}, val acc {fmt.percent(self.val_acc)}"]
        elif not self.info.trained:
            lines.append(fullgrad.RANDOM_TITLE)
        if self.map.index != self.map.top_index:
            lines.append(f"map of: {self.map.name} ({fmt.percent(self.map.prob, 0)})")
        lines.append(f"top10 {fmt.number(self.measures['concentration_top10'], 2)} (uniform 0.10)")
        return "\n".join(lines + [f"on {n} {fmt.number(self.measures[f'mass_{n}'], 2)} (area "
                                  f"{fmt.number(self.row.area(n), 2)})" for n in self.row.boxes])


def _panels(model, info: ModelInfo, rows: list[Row], key: str, target=None, **extra) -> list[Panel]:
    bias, stock = len(fullgrad.bias_layers(model)), len(fullgrad.grad_cam_default_layers(model))
    maps = [fullgrad.attention_map(model, row.picture, key, target, info.class_names) for row in rows]
    return [Panel(info, row, m, fullgrad.map_measures(m.cam, row.boxes), bias, stock, **extra)
            for row, m in zip(rows, maps)]


# ------------------------------------------------------------------------------------ drawing
def _render(panels: list[Panel], rows: list[Row], caption: str, dpi: int, metadata: dict, path: Path) -> object:
    """The Figure: the image column, one overlay column per model (`panels` column by column), a colour bar, the
    caption. Saved to `path` (caption beside it as .md) via PIL as RGB (no alpha: a tenth smaller) with `metadata`
    and lambdalib's version as PNG text chunks and nothing that varies between runs (no time stamp)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure  # no pyplot: no global state, works under any backend
    from matplotlib.patches import Rectangle
    from PIL.PngImagePlugin import PngInfo

    n_cols, n_rows = len(panels) // len(rows), len(rows)
    side, gap, margin, bar, text_size, title_size, head_h = 1.9, 0.12, 0.15, 0.12, 7.0, 5.6, 0.35  # in, pt
    width = margin * 2 + (n_cols + 1) * (side + gap) + bar + 0.55
    chars = int((width - 2 * margin) * 72 / (text_size * 0.62))
    caption_text = "\n".join(textwrap.fill(part, chars) for part in caption.split("\n\n"))
    caption_h = (caption_text.count("\n") + 1) * text_size * 1.3 / 72 + 0.2
    titles = [[row.title] + [panels[c * n_rows + r].title for c in range(n_cols)] for r, row in enumerate(rows)]
    title_h = [max(t.count("\n") + 1 for t in line) * title_size * 1.3 / 72 + 0.08 for line in titles]
    height = head_h + sum(title_h) + n_rows * side + caption_h + margin
    fig = Figure(figsize=(width, height), dpi=dpi)
    fig.text(0.5, 1 - 0.12 / height, metadata["Title"], ha="center", va="top", fontsize=10, weight="bold")
    top, overlay = head_h, None
    for r, row in enumerate(rows):
        top += title_h[r]
        for c in range(n_cols + 1):
            ax = fig.add_axes(((margin + c * (side + gap)) / width, 1 - (top + side) / height, side / width,
                               side / height), xticks=[], yticks=[])
            ax.imshow(np.asarray(row.picture))
            ax.spines[:].set_visible(False)
            panel = panels[(c - 1) * n_rows + r] if c else None
            if panel:
                overlay = ax.imshow(panel.map.cam, cmap=CMAP, alpha=0.5, vmin=0, vmax=1)
                ax.text(0.03, 0.03, f"predicts {panel.predicted}", transform=ax.transAxes, fontsize=6, va="bottom",
                        weight="bold", color=_VERDICT_COLOURS[panel.correct],
                        bbox=dict(boxstyle="round,pad=0.25", facecolor="white", edgecolor="none", alpha=0.85))
            ax.set_title(titles[r][c], fontsize=title_size if c else 6.5,
                         color="red" if panel and not panel.info.trained else "black")
            for i, (x0, y0, x1, y1) in enumerate(row.boxes.values()):
                ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, linewidth=0.6 if c else 1.2,
                                       edgecolor=_BOX_COLOURS[i % len(_BOX_COLOURS)], linestyle="--" if c else "-"))
        top += side
    cax = fig.add_axes(((margin + (n_cols + 1) * (side + gap)) / width, 1 - top / height, bar / width,
                        (top - head_h - title_h[0]) / height), label="colorbar")
    fig.colorbar(overlay, cax=cax).set_label("map value (min-max scaled per map)", fontsize=6.5)
    cax.tick_params(labelsize=6)
    fig.text(margin / width, (caption_h - 0.05) / height, caption_text, ha="left", va="top", fontsize=text_size)
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    image = Image.frombuffer("RGBA", canvas.get_width_height(), canvas.buffer_rgba(), "raw", "RGBA", 0, 1)
    info = PngInfo()
    for name, value in {**metadata, "Software": f"lambdalib {__version__}"}.items():
        info.add_text(name, value)  # Latin-1 as tEXt, anything else as iTXt
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="png", pnginfo=info, dpi=(dpi, dpi))
    files.make_dir(path.parent)
    files.atomic_write_bytes(path, buffer.getvalue())
    files.atomic_write_text(path.with_suffix(".md"), f"{CAPTION_START.format(path=path)}\n\n{caption}\n")
    return fig


# ---------------------------------------------------------------------------------- captions
def _join(items) -> str:
    items = list(dict.fromkeys(items))
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _reading_text(rows: list[Row]) -> str:
    """How to read a panel: the colour bar, the prediction's corner, each on-object share against its area."""
    text = ("Colours: the colour bar; each map is min-max scaled to [0, 1] on its own, so colours compare places "
            "within a panel, not panels. The lower-left corner of each panel names the class the model predicts "
            "and its softmax probability (green: the image's true class, red: another class, black: the image "
            "has no single true class). top10 = the share of the map's mass in its 10 % highest pixels (uniform: 0.10)")
    boxed = [row for row in rows if row.boxes]
    if not boxed:
        return text + "."
    areas = "; ".join(f"{row.name}: " + ", ".join(f"{n} {fmt.percent(row.area(n))}" for n in [*row.boxes, "either"])
                      for row in boxed)
    return (text + "; on <object> = the share of the map's mass inside that object's hand-drawn box "
            f"({_join(fullgrad.boxes_file(row.name).name for row in boxed)}), next to the box's share of the image "
            f"area, which is what a map spread evenly over the image would put there (box areas: {areas}; "
            "'either' is their union). A share near its area says nothing about the object.")


def _predictions_text(panels: list[Panel], rows: list[Row], target) -> str:
    """What each panel predicts, per image: every panel where the image has no true class, else the misses."""
    parts = []
    for row in rows:
        mine = [p for p in panels if p.row is row]
        wrong = [p for p in mine if not p.correct]
        said = "; ".join(f"{p.heading}: {p.predicted}" for p in wrong)
        parts.append(f"on {row.name} (no single true class): {said}" if not row.true_class else
                     f"on {row.name} ({row.true_class}): {len(mine) - len(wrong)} of {len(mine)} panels predict it"
                     + (f"; {said}" if said else ""))
    explains = "its top-1 class" if target is None else f"class {target!r}, whatever the model predicts"
    text = f"Each map explains {explains}. What each panel predicts: " + "; ".join(parts) + "."
    if any(not row.true_class for row in rows) and all(p.info.class_names == list(CLASS_NAMES) for p in panels):
        text += (" Our models know only Imagenette's ten classes (no cat; one dog, the English springer), so on "
                 "an image without a true class each must name one of those ten.")
    return text


def _layers_text(panels: list[Panel], key: str) -> str:
    if not key.startswith("fullgrad"):
        return "Target layer (the last block of the last conv stage): " + "; ".join(
            dict.fromkeys(f"{p.info.label}: {p.map.target_layer}" for p in panels)) + "."
    counts = "; ".join(dict.fromkeys(f"{p.info.label}: {p.map.n_bias_layers} of {p.bias_layers} (stock FullGrad: "
                                     f"{p.stock_layers})" for p in panels))
    return ("FullGrad sums |input x gradient| and, per layer, |bias x gradient of the layer's output|. Bias layers "
            f"summed per model: {counts}. Counted: every Conv/BatchNorm/GroupNorm/LayerNorm module with a bias "
            "(subclasses included, e.g. timm's BatchNormAct2d, read before its activation; BatchNorm's bias includes "
            "its running mean; the Conv3d in timm's lambda layers). The classifier's Linear bias has no spatial map "
            "and is not a term. 'Stock' is what pytorch-grad-cam 1.5.7's FullGrad (exact types Conv2d/BatchNorm2d) "
            "would have summed.")


def _trained_caption(panels: list[Panel], picks: list[PickedRun], missing: list, rows: list[Row], key: str) -> str:
    data = _join("imagenette-mini (the embedded 10-class Imagenette subset, data/imagenette-mini)"
                 if run.data == "embedded" else Path(run.data).name or run.data for run in picks)
    lines = [
        f"{fullgrad.METHOD_TITLES.get(key, key)} attention maps of our own small-data models, "
        f"{_join(run.label for run in picks)}, trained from scratch by lambdalib on {data} at "
        f"{_join(f'{run.img_size} px' for run in picks)} ({_join(fmt.plural(r.epochs_done, 'epoch') for r in picks)}, "
        f"preset {_join(run.preset for run in picks)}), at label noise {_join(fmt.noise(r.noise) for r in picks)}: "
        "not the report's ImageNet-pretrained resnet18, resnet50, lambda_resnet26t and lambda_resnet50ts, so these "
        f"maps show what the models trained here attend to. Rows: {_join(row.name for row in rows)}; the first column "
        "is the image as given, with its hand-drawn object boxes where it has them. Each panel squashes the whole "
        "image to the model's input size; its title: model and noise, the run (its id without model and noise), the "
        "checkpoint's epoch and the val accuracy at that epoch (history.csv), and the map's measures.",
        _reading_text(rows), _predictions_text(panels, rows, None), _layers_text(panels, key),
        f"Checkpoints: best.pt (the epoch of lowest val loss), one run {PICK_RULE}. Runs: "
        + "; ".join(f"{run.label} noise {fmt.noise(run.noise)}: {run.run_id} ({run.status}, picked from "
                    f"{run.candidates} with a best.pt)" for run in picks)
        + f". Trained at git commit {_join(run.git_commit for run in picks)}; drawn by lambdalib {__version__}."]
    maps = {run.run_id: [p.map.cam for p in panels if p.run is run] for run in picks}
    same = [(a, b) for i, a in enumerate(picks) for b in picks[i + 1:] if a.noise == b.noise and
            all(np.array_equal(x, y) for x, y in zip(maps[a.run_id], maps[b.run_id]))]
    if same:  # rpe/lc twins at small sizes
        lines.append("Identical maps on every image: " + "; ".join(
            f"{a.label} and {b.label} at noise {fmt.noise(a.noise)}" for a, b in same) + " (as an lc model does when "
            "its scope covers the whole feature map: see the README).")
    if missing:
        lines.append("No run with a best.pt for: " + "; ".join(f"{label} at noise {fmt.noise(n)}"
                                                              for label, n in missing) + " (left out).")
    return "\n\n".join(lines)


# ------------------------------------------------------------------------------------ figures
@dataclass
class AttentionFigure:
    """A saved figure: PNG, caption (also beside it as .md), the maps drawn and the Figure; from trained_figure
    also the table (.csv, .md), its rows (unrounded), the picked runs and the cells without a best.pt."""

    path: Path
    caption: str
    caption_path: Path
    panels: list[Panel] = field(default_factory=list)
    figure: object = None  # the matplotlib Figure the PNG was drawn from
    table_path: Path | None = None
    table_markdown_path: Path | None = None
    rows: list[dict] = field(default_factory=list)
    picks: dict[tuple[str, float], PickedRun] = field(default_factory=dict)
    missing: list[tuple[str, float]] = field(default_factory=list)

    @property
    def maps(self) -> dict[tuple[str, float, str], np.ndarray]:
        """(label, noise, image name) -> the map (H x W in [0, 1], the image's size) of a trained figure."""
        return {(p.run.label, p.run.noise, p.row.name): p.map.cam for p in self.panels}


def attention_figure(models: list, image: str | Path | None = None, *, method: str = "fullgrad",
                     out: str | Path | None = None, allow_random: bool = False, target: int | str | None = None,
                     fallback_runs: int = 4, dpi: int = 200) -> AttentionFigure | None:
    """The image, then one overlay per model (timm names, report labels, run folders, checkpoints or (model,
    ModelInfo) pairs), saved with its caption. A model without pretrained weights is left out with a warning
    (allow_random: shown untrained, titled so); with none left, the newest `fallback_runs` run records with a
    best.pt are shown, or None is returned after saying why. target: None = each model's top-1 class."""
    key = fullgrad.method_key(method)
    # a bad --out or a file of the user's in the way fails before any model is loaded
    path = files.figure_target(out, results_dir() / "figures" / f"attention_{key.replace('+', 'pp')}.png",
                               companions={".md": CAPTION_START})
    row = Row.of(image)  # a missing image fails before any model is loaded
    loaded, missing = [], []
    for entry in (list(models) if models else list(REPORT_MODELS)):
        try:
            loaded.append(entry if isinstance(entry, tuple) else fullgrad.load_model(entry, allow_random=allow_random))
        except WeightsUnavailableError as err:
            missing.append(str(entry))
            warnings.warn(f"{err}. Left out of the figure.", WeightsUnavailableWarning, stacklevel=2)
    if not loaded and fallback_runs:
        frame = _with_best(None)
        newest = [] if frame.empty else sorted(frame["_path"], key=lambda p: (p / "best.pt").stat().st_mtime,
                                               reverse=True)[:fallback_runs]
        if newest:
            log.info(f"No pretrained weights for {', '.join(missing)}; showing our run records instead: "
                     + ", ".join(run.name for run in newest))
            loaded = [fullgrad.load_model(run) for run in newest]
    if not loaded:
        log.warning(f"Nothing to show: no pretrained weights for {', '.join(missing) or 'the requested models'} and "
                    f"no run records with best.pt under {_runs_folder(None)}. Run where huggingface.co is "
                    f"reachable, pass weights files, or train a model (`lambdalib train`).")
        return None
    panels = [panel for model, info in loaded for panel in _panels(model, info, [row], key, target)]
    title = f"{fullgrad.METHOD_TITLES.get(key, key)} attention maps on {row.name}"
    caption = "\n\n".join([
        f"{title}: the image, then one panel per model; each title gives the model and the map's measures.",
        _reading_text([row]), _predictions_text(panels, [row], target), _layers_text(panels, key),
        "Weights: " + "; ".join(f"{p.info.label}: {p.info.weights}" for p in panels) + "."])
    fig = _render(panels, [row], caption, dpi, {"Title": title, "Description": caption}, path)
    return AttentionFigure(path, caption, path.with_suffix(".md"), panels, fig)


# ------------------------------------------------------------ figure 7 from our own trained models
def _csv_text(panels: list[Panel]) -> tuple[str, list[dict]]:
    """(tables/attention_trained.csv, its rows unrounded): one row per panel, with map_measures' columns."""
    boxes = list(dict.fromkeys(name for p in panels for name in p.row.boxes))
    box_columns = [f"{kind}_{name}" for name in (boxes + ["either"] if boxes else []) for kind in ("mass", "area")]
    columns = ["model", "noise", "image", "true_class", "predicted_class", "predicted_wnid", "probability",
               "concentration_top10", "normalised_entropy", *box_columns, "run_id", "epoch", "val_acc", "bias_layers",
               "git_commit"]
    rows = [{**dict.fromkeys(box_columns, ""), **p.measures, "model": p.run.label, "noise": p.run.noise,
             "image": p.row.name, "true_class": p.row.true_class, "predicted_class": p.map.top_name,
             "predicted_wnid": WNIDS[CLASS_NAMES.index(p.map.top_name)] if p.map.top_name in CLASS_NAMES else "",
             "probability": p.map.top_prob, "run_id": p.run.run_id, "epoch": p.info.epoch, "val_acc": p.val_acc,
             "bias_layers": p.map.n_bias_layers, "git_commit": p.run.git_commit} for p in panels]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:  # missing and non-finite numbers as empty cells, floats to 6 decimals
        writer.writerow(["" if fmt.missing(row[c]) or (isinstance(row[c], float) and not np.isfinite(row[c]))
                         else f"{row[c]:.6f}" if isinstance(row[c], float) else str(row[c]) for c in columns])
    return out.getvalue(), rows


def attention_table_markdown(csv_path: str | Path) -> str:
    """The trained-models attention table (tables/attention_trained.csv) as markdown, with a legend; each
    on-object share is followed by its box's share of the image area when the CSV has it (area_<box>)."""
    with open(csv_path, newline="") as handle:
        reader = csv.DictReader(handle)
        columns, rows = list(reader.fieldnames or []), list(reader)
    if not rows:
        return "No attention maps of trained models yet (`lambdalib attention --trained`)."
    boxes = [c.removeprefix("mass_") for c in columns if c.startswith("mass_") and c != "mass_either"]
    boxes += ["either"] if "mass_either" in columns else []
    areas = bool(boxes) and all(f"area_{b}" in columns for b in boxes)

    def num(value: str | None) -> str:
        return fmt.number(float(value), 2) if value not in ("", None) else "–"

    def share(row: dict, box: str) -> str:
        return num(row[f"mass_{box}"]) + (f" ({num(row[f'area_{box}'])})" if areas and row[f"area_{box}"] else "")

    head = ["model", "noise", "image", "predicted (prob.)", "top-10 % mass", "entropy",
            *[f"on {b}" + " (area)" * areas for b in boxes], "checkpoint (epoch, val acc)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * 4 + ["---:"] * (len(head) - 5) + ["---"]) + "|"]
    for row in rows:
        prob = f" ({fmt.percent(row['probability'], 0)})" if row.get("probability") else ""
        acc = f", {fmt.percent(row['val_acc'])}" if row.get("val_acc") else ""
        cells = [row["model"], fmt.noise(float(row["noise"])),
                 row["image"] + (f" ({row['true_class']})" if row.get("true_class") else ""),
                 row["predicted_class"] + prob, num(row["concentration_top10"]), num(row["normalised_entropy"]),
                 *[share(row, b) for b in boxes], f"`{row['run_id']}` (epoch {row.get('epoch') or '?'}{acc})"]
        lines.append("| " + " | ".join(cells) + " |")
    legend = ("top-10 % mass: the share of the map's mass in its 10 % highest pixels (a uniform map gives 0.10, "
              "all mass on a tenth of the image 1.00); entropy: the map's entropy over pixels / log(pixels) (1 = "
              "uniform)")
    if boxes:
        legend += ("; on <object>: the share of the map's mass inside that object's hand-drawn box "
                   "(data/images/<image>.boxes.json), on either: inside their union; – : the image has no boxes")
    if areas:
        legend += ("; (area): the box's share of the image area, what a map spread evenly over the image would "
                   "put there: a share near it says nothing about the object")
    return "\n".join(lines) + "\n\n" + legend + ". Maps are FullGrad's, min-max scaled to [0, 1] at the image's size.\n"


def trained_targets(folder: Path) -> tuple[Path, Path]:
    """(figures/attention_trained.png, tables/attention_trained.csv) under `folder`, after checking that nothing
    there but lambdalib's own earlier output would be overwritten (ValueError in one line)."""
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"--out {folder}: with --trained, --out is the folder for figures/ and tables/, not a file")
    path, table = folder / "figures" / f"{TRAINED_NAME}.png", folder / "tables" / f"{TRAINED_NAME}.csv"
    for file, start in ((path, b"\x89PNG"), (path.with_suffix(".md"), CAPTION_START.format(path=path)),
                        (table, "model,noise,image,"), (table.with_suffix(".md"), "| model |")):
        if files.foreign(file, start):
            raise ValueError(f"--out {folder}: {file} exists and is not a file lambdalib wrote; it is left as it is: "
                             "choose another folder")
    return path, table


def trained_figure(results: str | Path | None = None, out: str | Path | None = None, *, labels=TRAINED_LABELS,
                   noise=TRAINED_NOISE, images: list[str | Path] | None = None, method: str = "fullgrad",
                   dpi: int = 150) -> AttentionFigure:
    """Figure 7 from the models this package trains: maps of one checkpoint per model label and noise
    (`pick_runs`), cells without one named in the caption, none at all a NoTrainedRunsError saying how to train.
    Writes figures/attention_trained.png (+ .md) and tables/attention_trained.csv (+ .md) under `out` (default
    `results`), after every map. Same records and images give a byte-identical PNG."""
    key = fullgrad.method_key(method)
    folder = Path(out).expanduser() if out else _runs_folder(results).parent
    path, table = trained_targets(folder)  # before any map: a file of the user's in the way is refused
    frame = _with_best(results)
    picks = pick_runs(results, labels, noise, frame=frame)
    if not picks:
        raise NoTrainedRunsError(_no_runs_message(results, frame, labels, noise))
    missing = [cell for cell in ((registry.report_label(str(label)), float(n)) for label in labels for n in noise)
               if cell not in picks]
    rows = [Row.of(image) for image in (images or trained_images())]  # a missing image fails before any model
    panels = []
    for run in picks.values():
        model, info = fullgrad.load_model(run.run_dir)
        acc = next((h["val_acc"] for h in run.history if h["epoch"] == info.epoch), None)
        panels += _panels(model, info, rows, key, run=run, val_acc=None if fmt.missing(acc) else float(acc))
        log.info(f"attention: {run.label} noise {fmt.noise(run.noise)}: {run.run_id} epoch {info.epoch} "
                 f"(1 of {run.candidates} with a best.pt)")
    caption = _trained_caption(panels, list(picks.values()), missing, rows, key)
    provenance = [dict(model=run.label, noise=run.noise, run_id=run.run_id, status=run.status,
                       epoch=next(p.info.epoch for p in panels if p.run is run), git_commit=run.git_commit)
                  for run in picks.values()]
    metadata = {"Title": f"Figure 7 from our own trained models ({fullgrad.METHOD_TITLES.get(key, key)}), not the "
                         "report's ImageNet-pretrained ones", "Description": caption,
                "Source": " ".join(run.run_id for run in picks.values()),
                "Comment": json.dumps(dict(runs=provenance, images=[row.name for row in rows], method=key,
                                           pick_rule=PICK_RULE), sort_keys=True)}
    text, table_rows = _csv_text(panels)  # the table first: a figure never stands without its numbers
    files.make_dir(table.parent)
    files.atomic_write_text(table, text)
    files.atomic_write_text(table.with_suffix(".md"), attention_table_markdown(table))
    fig = _render(panels, rows, caption, dpi, metadata, path)
    return AttentionFigure(path, caption, path.with_suffix(".md"), panels, fig, table, table.with_suffix(".md"),
                           table_rows, picks, missing)
