"""figures.py draws; report.py decides what is drawn. The sample grid moved here from data.py, the report's
figure functions stay importable from report, PNGs are written atomically with the same bytes each time,
and the module graph keeps report -> figures -> (record, config, models, data): figures never imports
report or train, report never imports train."""
import ast
import subprocess
import sys
from pathlib import Path

import pytest
from matplotlib.figure import Figure

from lambdalib import data, figures, record, report

PACKAGE = Path(figures.__file__).resolve().parent


# ------------------------------------------------------------------------------------ sample grid
def test_plot_samples_titles_flipped_labels_and_saves(tiny_imagenette, tmp_path):
    target = tmp_path / "fig" / "samples.png"
    fig = figures.plot_samples(tiny_imagenette, noise=0.5, n=4, path=target)
    assert isinstance(fig, Figure) and len(fig.axes) == 4
    assert target.read_bytes()[:4] == b"\x89PNG"  # folders created
    every = figures.plot_samples(tiny_imagenette, noise=0.25, n=1000)  # n above the split: every image once
    titles = [ax.title for ax in every.axes]
    assert len(titles) == 40
    flipped = [t for t in titles if "→" in t.get_text()]
    assert len(flipped) == 10 and all(t.get_color() == "red" for t in flipped)  # one flip per class at 25 %
    assert all(t.get_color() == "black" for t in titles if t not in flipped)
    assert "official noise 0.25: realised flip rate 25.00%" in every._suptitle.get_text()


def test_plot_samples_is_seeded_and_matches_the_data_modules(tiny_imagenette):
    def titles(fig):
        return [ax.get_title() for ax in fig.axes] + [fig._suptitle.get_text()]

    ours = figures.plot_samples(tiny_imagenette, noise=0.5, n=6, seed=3)
    assert titles(ours) == titles(figures.plot_samples(tiny_imagenette, noise=0.5, n=6, seed=3))
    assert titles(ours) == titles(data.plot_samples(tiny_imagenette, noise=0.5, n=6, seed=3))


def test_plot_samples_errors_are_one_line(tiny_imagenette):
    for n in (0, -2):
        with pytest.raises(ValueError, match="samples must be >= 1"):
            figures.plot_samples(tiny_imagenette, noise=0.25, n=n)
    with pytest.raises(ValueError, match=r"noise=0.3 .*\[0.0, 0.01, 0.05, 0.25, 0.5\]") as err:
        figures.plot_samples(tiny_imagenette, noise=0.3, n=1)
    assert "\n" not in str(err.value)


# ------------------------------------------------------------------------------------------ PNGs
def test_save_png_is_byte_stable_and_atomic(tmp_path):
    fig = Figure()
    fig.subplots().plot([1, 2, 3])
    first = figures.save_png(fig, tmp_path / "a" / "plot.png")
    second = figures.save_png(fig, tmp_path / "b" / "plot.png")
    assert first.read_bytes() == second.read_bytes() == figures.png_bytes(fig)  # no version stamp, no clock
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(record.RecordError, match="file"):
        figures.save_png(fig, tmp_path / "file" / "plot.png")
    assert not list(tmp_path.rglob("*.tmp"))


def test_report_reexports_the_figure_functions():
    for name in ("plot_curves", "plot_accuracy_vs_noise", "curves_figure", "run_figure", "accuracy_figure"):
        assert getattr(report, name) is getattr(figures, name)
    assert callable(report.plot_run) and report.CLASSES == figures.CLASSES == 10
    assert report.NO_RUNS == figures.NO_RUNS


# ---------------------------------------------------------------------------------- module graph
def _imports(module: str) -> set[str]:
    """The lambdalib modules a source file imports (from . import x, from .x import y, import lambdalib.x)."""
    tree = ast.parse((PACKAGE / f"{module}.py").read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1 and node.module:  # from .x import y
                found.add(node.module.split(".")[0])
            elif node.level == 1:  # from . import x, y
                found.update(alias.name for alias in node.names)
            elif node.module and node.module.startswith("lambdalib"):
                parts = node.module.split(".")
                found.update([parts[1]] if len(parts) > 1 else [a.name for a in node.names])
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[1] for a in node.names if a.name.startswith("lambdalib."))
    return found


def test_module_graph_report_to_figures_to_record():
    assert "figures" in _imports("report") and "train" not in _imports("report")
    assert not {"report", "train"} & _imports("figures"), _imports("figures")
    assert _imports("figures") <= {"record", "config", "models", "data"}


def test_importing_figures_loads_neither_report_nor_train():
    code = ("import sys, lambdalib.figures; "
            "print(sorted(m for m in ('lambdalib.report', 'lambdalib.train') if m in sys.modules)); "
            "import lambdalib.report; print('lambdalib.train' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split("\n")
    assert out[0] == "[]" and out[1] == "False"
