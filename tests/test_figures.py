"""figures.py draws what report.py picks: per report table the ResNet beside its Lambda twins on shared axes, each
cell as the mean over its seeds with a min–max band, the paired (same-seed) difference under them, the lr's warm
restarts marked, nothing for a model without runs; accuracy only at measured noise levels with t intervals; the
sample grid; PNGs written atomically with the same bytes each time."""
import ast
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import LineCollection, PolyCollection
from matplotlib.figure import Figure
from scipy import stats

from lambdalib import figures, record, registry, report

PACKAGE = Path(figures.__file__).resolve().parent
L2_RPE, BASELINES = registry.FAMILIES["L2_rpe"], registry.FAMILIES["baselines"]


def _run(label: str, noise: float, seed: int, val: list[float], *, status: str = "complete",
         diverged_at: int | None = None, t0: int = 5, t_mult: int = 2, epochs: int | None = None) -> dict:
    """A row as runs.collect gives it (the columns the figures read): train loss = val loss + 0.1."""
    history = [dict(epoch=e, lr=1e-3, train_loss=v + 0.1, val_loss=v) for e, v in enumerate(val, 1)]
    return dict(label=label, model=registry.resolve_name(label), noise=noise, seed=seed, status=status,
                diverged_at=diverged_at, epochs=epochs or len(val), t0=t0, t_mult=t_mult, _history=history)


def _curve(seed: int, offset: float, epochs: int = 20) -> list[float]:
    """A falling loss with a seed's own wiggle; epoch 1 far above the rest (an untrained net)."""
    return [8.0 + offset] + [2.4 - 0.05 * e + offset + 0.03 * math.sin(e * (seed + 1)) for e in range(2, epochs + 1)]


@pytest.fixture(scope="module")
def study() -> pd.DataFrame:
    """R18 and LR18_L2(rpe) at 0 % (seeds 0-2 and 0, 1, 3: two pairs), R18 alone at 25 %, R34 without a twin."""
    rows = [_run("R18", 0.0, s, _curve(s, 0.0)) for s in (0, 1, 2)]
    rows += [_run("LR18_L2(rpe)", 0.0, s, _curve(s + 5, 0.02 * s)) for s in (0, 1, 3)]
    rows += [_run("R18", 0.25, 0, _curve(0, 0.3)), _run("R34", 0.0, 0, _curve(1, 0.1))]
    return pd.DataFrame(rows)


def _lines(fig: Figure, suffix: str) -> dict[str, object]:
    return {f"{ax.get_label()}/{line.get_label()}": line for ax in fig.axes for line in ax.get_lines()
            if str(line.get_label()).endswith(suffix)}


# ------------------------------------------------------------------------------------ loss curves
def test_restart_epochs_follow_cosine_annealing_warm_restarts():
    assert figures.restart_epochs(5, 2, 15) == [6]
    assert figures.restart_epochs(5, 2, 36) == [6, 16, 36]  # t0 + 1, t0 + t0·t_mult + 1, ...
    assert figures.restart_epochs(5, 1, 16) == [6, 11, 16]
    assert figures.restart_epochs(5, 2, 5) == [] and figures.restart_epochs(0, 2, 15) == []


def test_restart_epochs_come_from_the_rows_schedule():
    row = pd.Series(dict(_run("R18", 0.0, 0, [2.0] * 12), t0=3, t_mult=2))
    assert figures.run_restarts(row) == [4, 10]  # t0 3, t_mult 2
    fig = figures.run_figure(pd.Series(dict(row, epochs_done=12, architecture="ResNet18(0%)", setup_label="test")))
    restarts = [line for line in fig.axes[0].get_lines() if line.get_linestyle() == ":"]
    assert sorted(line.get_xdata()[0] for line in restarts) == [4, 10]
    assert "lr warm restart" in [t.get_text() for t in fig.legends[0].get_texts()]


def test_lambda_figure_puts_the_resnet_beside_its_twin_and_marks_restarts(study):
    fig = figures.curves_figure(study, L2_RPE, "Table 2")
    panels = [ax.get_label() for ax in fig.axes]
    # one block (depth 18) at the one noise level the Lambda model was measured at: train, val, difference
    assert panels == ["LR18_L2(rpe)|0|train_loss", "LR18_L2(rpe)|0|val_loss", "LR18_L2(rpe)|0|delta"]
    train, val, delta = fig.axes
    assert {line.get_label() for line in val.get_lines() if line.get_label().endswith("mean")} == \
        {"R18 val mean", "LR18_L2(rpe) val mean"}  # the baseline and its twin on the same axes
    assert train.get_shared_y_axes().joined(train, val)
    for ax in fig.axes:  # a restart line at epoch 6 and 16 (t0 5, t_mult 2, 20 epochs) in every panel
        assert sorted(line.get_xdata()[0] for line in ax.get_lines() if line.get_label() == "warm restart") == [6, 16]
    assert sum(t.get_text() == " lr restart" for ax in fig.axes for t in ax.texts) == 1  # labelled once
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert "R18: mean of 3 seeds" in legend and "LR18_L2(rpe): mean of 3 seeds" in legend
    assert figures.BAND in legend and any("warm restart (epoch 6, 16)" in t for t in legend)


def test_val_loss_spikes_get_their_own_axis_and_the_difference_row_a_symmetric_log_one():
    """As in the study's four-lambda-layer runs: eval-mode val losses in the hundreds beside train losses near 2.
    On one shared axis the train curves were a flat line; on a linear difference axis everything below 100 was."""
    spiky = [3.0, 2.5, 400.0, 2.3, 90.0, 2.2]
    rows = [_run("R18", 0.0, s, _curve(s, 0.0, epochs=6)) for s in (0, 1)]
    rows += [dict(_run("LR18_L2(rpe)", 0.0, s, [v + 0.01 * s for v in spiky]),
                  _history=[dict(epoch=e, lr=1e-3, train_loss=2.4 - 0.1 * e, val_loss=v + 0.01 * s)
                            for e, v in enumerate(spiky, 1)]) for s in (0, 1)]
    rows += [_run(label, 0.5, s, _curve(s, 0.0, epochs=6)) for label in ("R18", "LR18_L2(rpe)") for s in (0, 1)]
    fig = figures.curves_figure(pd.DataFrame(rows), L2_RPE, "Table 2")  # calm at 50 %: the same seeds, spiky at 0 %
    FigureCanvasAgg(fig).draw()
    panels = {ax.get_label(): ax for ax in fig.axes}
    train, val, delta = (panels[f"LR18_L2(rpe)|0|{kind}"] for kind in ("train_loss", "val_loss", "delta"))
    assert not train.get_shared_y_axes().joined(train, val)
    assert train.get_ylim()[1] < 3.0 < 400.0 <= val.get_ylim()[1]  # each row fits its own losses
    assert delta.get_yscale() == "symlog" and delta.get_ylim()[1] >= 400.0 - 2.5
    labelled = [t.label1.get_text() for t in delta.yaxis.get_major_ticks()
                if delta.get_ylim()[0] <= t.get_loc() <= delta.get_ylim()[1] and t.label1.get_text()]
    assert {"0", "1", "10", "100"} <= set(labelled)


def test_each_lambda_layer_implementation_is_its_own_line_beside_the_resnet(study):
    others = [dict(_run("LR18_L2(rpe)", 0.0, s, _curve(s + 7, 0.1)), label=f"LR18_L2(rpe)[{impl}]")
              for impl in ("lucidrains", "ours-n01") for s in (0, 1, 2)]
    runs = pd.concat([study, pd.DataFrame(others)], ignore_index=True)
    assert figures.curve_blocks(runs, L2_RPE) == [
        (["R18", "LR18_L2(rpe)", "LR18_L2(rpe)[ours-n01]", "LR18_L2(rpe)[lucidrains]"], "R18")]
    fig = figures.curves_figure(runs, L2_RPE, "Table 2")
    val = {name: line for name, line in _lines(fig, "val mean").items() if "|val_loss/" in name}
    assert {name.split("/")[1] for name in val} == {"R18 val mean", "LR18_L2(rpe) val mean",
                                                      "LR18_L2(rpe)[ours-n01] val mean",
                                                      "LR18_L2(rpe)[lucidrains] val mean"}
    colours = {line.get_color() for line in val.values()}
    assert len(colours) == 4  # one colour per line, whoever's layer
    assert figures.curve_blocks(runs[runs["label"] != "LR18_L2(rpe)"], registry.FAMILIES["L2_lc"]) == []


def test_means_bands_and_the_paired_difference_are_the_seeds(study):
    fig = figures.curves_figure(study, L2_RPE, "Table 2")
    val = {(row["label"], row["seed"]): np.array([r["val_loss"] for r in row["_history"]])
           for _, row in study[study["noise"] == 0.0].iterrows()}
    mean = _lines(fig, "val mean")
    expected = np.mean([val["R18", s] for s in (0, 1, 2)], axis=0)
    assert np.allclose(mean["LR18_L2(rpe)|0|val_loss/R18 val mean"].get_ydata(), expected)
    # the paired difference: only seeds 0 and 1 ran both models; computed here, independently
    pairs = np.array([val["LR18_L2(rpe)", s] - val["R18", s] for s in (0, 1)])
    line = mean["LR18_L2(rpe)|0|delta/LR18_L2(rpe) − R18 val mean"]
    assert np.allclose(line.get_xdata(), np.arange(1, 21))
    assert np.allclose(line.get_ydata(), pairs.mean(axis=0))
    delta = fig.axes[2]
    band = next(c for c in delta.collections if isinstance(c, PolyCollection) and c.get_label().endswith("band"))
    ys = band.get_paths()[0].vertices[:, 1]
    assert np.isclose(ys.min(), pairs.min()) and np.isclose(ys.max(), pairs.max())
    for low, high in zip(pairs.min(axis=0), pairs.max(axis=0)):
        assert np.isclose(ys, low).any() and np.isclose(ys, high).any()


def test_models_without_runs_draw_nothing(study):
    fig = figures.curves_figure(study, L2_RPE, "Table 2")
    text = " ".join([ax.get_label() for ax in fig.axes] + [t.get_text() for t in fig.legends[0].get_texts()]
                    + [str(a.get_label()) for ax in fig.axes for a in ax.get_children()]
                    + [ax.get_title() for ax in fig.axes])
    assert "34" not in text  # R34 has runs, but no LR34_L2(rpe): no depth-34 block, no empty half
    assert "25" not in " ".join(ax.get_title() for ax in fig.axes)  # R18 alone at 25 %: not this table's panel
    assert not any(t.get_text() == figures.NO_RUNS for ax in fig.axes for t in ax.texts)
    base = figures.curves_figure(study, BASELINES, "Table 1")
    panels = {ax.get_label(): ax for ax in base.axes}  # R18/R34 at each noise level, R34 − R18 under them
    assert sorted(panels) == sorted(f"R34|{n}|{kind}" for n in ("0", "0.25") for kind in ("train_loss", "val_loss",
                                                                                         "delta"))
    means = set(_lines(base, " val mean"))
    assert {k for k in means if "|val_loss/" in k} == {
        "R34|0|val_loss/R18 val mean", "R34|0|val_loss/R34 val mean", "R34|0.25|val_loss/R18 val mean"}  # no R34 at 25
    assert {k for k in means if "|delta/" in k} == {"R34|0|delta/R34 − R18 val mean"}
    assert [t.get_text() for t in panels["R34|0.25|delta"].texts] == ["no R34 runs at this noise to pair with"]
    with pytest.raises(ValueError, match="no runs of LambdaResNet Layer3 lc"):
        figures.curves_figure(study, registry.FAMILIES["L3_lc"], "Table 5")
    assert list(report.figure_panels(study)) == ["curves_baselines", "curves_L2_rpe"]
    assert report.figure_panels(study.iloc[0:0]) == {}


def test_the_loss_axis_is_set_after_epoch_one_and_readable(study):
    fig = figures.curves_figure(study, L2_RPE, "Table 2")
    FigureCanvasAgg(fig).draw()
    val = fig.axes[1]
    low, high = val.get_ylim()
    drawn = study[(study["noise"] == 0.0) & study["label"].isin(["R18", "LR18_L2(rpe)"])]["_history"]
    later = [r[k] for h in drawn for r in h[1:] for k in ("train_loss", "val_loss")]
    assert high < 8.0 <= min(h[0]["val_loss"] for h in drawn)  # epoch 1 (8.0 and up) runs off
    assert low <= min(later) and max(later) <= high  # every later epoch, train and val, is in range
    labelled = [t for t in val.yaxis.get_major_ticks() if low <= t.get_loc() <= high and t.label1.get_text()]
    assert len(labelled) >= 4
    assert any("epoch 1 runs off" in t.get_text() for t in fig.legends[0].get_texts())


def test_a_diverged_seed_is_marked_and_left_out_of_later_means():
    rows = [_run("R18", 0.0, s, [2.0 + s, 1.8 + s, 1.6 + s, 1.5 + s]) for s in (0, 1)]
    rows.append(_run("R18", 0.0, 2, [2.0, 1.9, math.nan], status="diverged", diverged_at=3, epochs=4))
    fig = figures.curves_figure(pd.DataFrame(rows), BASELINES, "Table 1")
    (mean,) = _lines(fig, "val mean").values()
    assert np.allclose(mean.get_ydata(), [(2.0 + 3.0 + 2.0) / 3, (1.8 + 2.8 + 1.9) / 3, 2.1, 2.0])
    crosses = [line for ax in fig.axes for line in ax.get_lines() if line.get_label() == "diverged"]
    assert crosses and all(line.get_xdata()[0] == 3 for line in crosses)
    assert "a seed diverged" in [t.get_text() for t in fig.legends[0].get_texts()]


def test_curves_pngs_are_deterministic(study):
    first = figures.png_bytes(figures.curves_figure(study, L2_RPE, "Table 2"))
    assert first == figures.png_bytes(figures.curves_figure(study, L2_RPE, "Table 2"))


# ------------------------------------------------------------------------------- accuracy vs noise
def _cells(rows) -> pd.DataFrame:
    return pd.DataFrame([dict(model=registry.resolve_name(registry.split_label(label)[0]), label=label, noise=noise,
                              best_val_acc=acc, best_val_acc_std=std, n_runs=n, n_diverged=0)
                         for label, noise, acc, std, n in rows])


def test_accuracy_is_drawn_only_at_measured_levels_with_t_intervals():
    cells = _cells([("R18", 0.0, 0.56, 0.02, 3), ("R18", 0.5, 0.39, 0.01, 3),
                    ("LR18_L2(rpe)", 0.0, 0.55, 0.006, 3), ("LR18_L2(lc)", 0.5, 0.38, math.nan, 1)])
    fig = figures.accuracy_figure(cells, "test")
    ax = fig.axes[0]
    FigureCanvasAgg(fig).draw()
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0 %", "50 %"]  # not 5 or 25 %: never measured
    measured = {(m, n) for m, n in zip(cells["model"], cells["noise"])}
    for line in ax.get_lines():
        if line.get_label() in {registry.SPECS[m].label for m in cells["model"]}:
            assert line.get_linestyle() == "None"  # markers, no line through unmeasured levels
            model = registry.resolve_name(line.get_label())
            levels = {round(x) for x in line.get_xdata()}
            assert all(abs(x - round(x)) < 0.5 for x in line.get_xdata())
            assert {(model, [0.0, 0.5][k]) for k in levels} <= measured
    bars = [seg for c in ax.collections if isinstance(c, LineCollection) for seg in c.get_segments()]
    halves = sorted(round((seg[1][1] - seg[0][1]) / 2, 6) for seg in bars)
    expected = sorted(round(100 * stats.t.ppf(0.975, 2) * s / math.sqrt(3), 6) for s in (0.02, 0.01, 0.006))
    assert halves == expected  # the one-seed cell has none
    assert "95% t interval" in ax.get_xlabel() and "one seed" in ax.get_xlabel()
    assert figures.has_accuracy(cells) and not figures.has_accuracy(cells.iloc[0:0])
    with pytest.raises(ValueError):
        figures.accuracy_figure(cells.iloc[0:0], "test")


def test_each_lambda_layer_is_its_own_point_and_colour_in_the_accuracy_figure():
    cells = _cells([("R18", 0.0, 0.33, 0.02, 3), ("LR18_L2(rpe)", 0.0, 0.32, 0.01, 3),
                    ("LR18_L2(rpe)[ours-n01]", 0.0, 0.30, 0.01, 3), ("LR18_L2(rpe)[lucidrains]", 0.0, 0.29, 0.01, 3)])
    fig = figures.accuracy_figure(cells, "test")
    points = {line.get_label(): line for line in fig.axes[0].get_lines() if not line.get_label().startswith("_")}
    assert list(points) == ["R18", "LR18_L2(rpe)", "LR18_L2(rpe)[ours-n01]", "LR18_L2(rpe)[lucidrains]"]
    assert len({line.get_color() for line in points.values()}) == 4
    assert len({float(line.get_xdata()[0]) for line in points.values()}) == 4  # side by side, not on one another
    assert [t.get_text() for t in fig.legends[0].get_texts()][:4] == list(points)


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


def test_plot_samples_is_seeded(tiny_imagenette):
    def titles(fig):
        return [ax.get_title() for ax in fig.axes] + [fig._suptitle.get_text()]

    ours = figures.plot_samples(tiny_imagenette, noise=0.5, n=6, seed=3)
    assert titles(ours) == titles(figures.plot_samples(tiny_imagenette, noise=0.5, n=6, seed=3))


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


def test_a_png_write_cut_short_leaves_the_previous_figure_whole(tmp_path, monkeypatch):
    import errno

    fig = Figure()
    fig.subplots().plot([1, 2, 3])
    before = figures.save_png(fig, tmp_path / "plot.png").read_bytes()
    real = Path.write_bytes

    def half_then_disk_full(self, data):
        real(self, data[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device", str(self))

    monkeypatch.setattr(Path, "write_bytes", half_then_disk_full)
    fig.axes[0].plot([3, 2, 1])
    with pytest.raises(record.RecordError, match="no space left"):
        figures.save_png(fig, tmp_path / "plot.png")
    monkeypatch.undo()
    assert (tmp_path / "plot.png").read_bytes() == before and not list(tmp_path.glob("*.tmp"))


def test_figures_never_import_report_claims_or_train():
    tree = ast.parse((PACKAGE / "figures.py").read_text())
    found = {alias.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.level == 1
             for alias in node.names} | {node.module for node in ast.walk(tree)
                                         if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module}
    assert not {"report", "claims", "train"} & found, found
