"""Figure 7: runs picked by a stated rule through runs.collect, panels that say what each model predicts on
one colour scale, on-object shares next to their uniform baseline (the box's share of the image area) in the
panels, the caption and the table, and one clear error when there is nothing to draw."""
import csv
import json
import warnings

import numpy as np
import pytest
from PIL import Image

from lambdalib import attention, fullgrad, registry
from lambdalib.config import RunConfig
from lambdalib.imagenette import CLASS_NAMES
from lambdalib.record import history_csv
from lambdalib.train import run

IMAGE = fullgrad.default_image()
SIDE = 224  # both.png is 224 x 224


def _box_area(box) -> float:
    """A box's share of both.png's area, from its corners: (right - left) x (bottom - top) / 224²."""
    left, top, right, bottom = box
    return (right - left) * (bottom - top) / SIDE ** 2


def _union_area(a, b) -> float:
    """Two boxes' union as a share of the image: both areas less their overlap."""
    overlap_w = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    overlap_h = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    return _box_area(a) + _box_area(b) - overlap_w * overlap_h / SIDE ** 2


def _colorbars(figure) -> list:
    """The figure's colour-bar axes: 0 to 1 in the overlays' colour map, and saying how maps are scaled."""
    bars = [ax for ax in figure.axes if ax.get_label() == "colorbar"]
    for ax in bars:
        assert ax.get_ylim() == (0.0, 1.0) and "min-max scaled" in ax.get_ylabel()
        assert attention.CMAP in [mesh.get_cmap().name for mesh in ax.collections]  # the colour ramp
    return bars


def _panel_texts(figure) -> list[str]:
    return [text.get_text() for ax in figure.axes for text in ax.texts]



@pytest.fixture(scope="module")
def trained_home(tiny_imagenette, tmp_path_factory):
    """Two tiny runs with best.pt: R18 at noise 0, LR18_L2(rpe) at noise 0.5 (32 px, 1 epoch)."""
    results = tmp_path_factory.mktemp("trained") / "results"
    run_dirs = {}
    for model, noise in (("R18", 0.0), ("LR18_L2(rpe)", 0.5)):
        config = RunConfig.from_params(model=model, noise=noise, data=str(tiny_imagenette), results=str(results),
                                       epochs=1, img_size=32, batch_size=8, workers=0, preset="fast")
        run_dirs[model] = run(config, progress=False)
        assert (run_dirs[model] / "best.pt").is_file()
    return results, run_dirs


def test_box_areas_are_the_uniform_baseline():
    """A uniform map's share in a box is the box's area share: the figure's baseline, both.png's dog 22.9 %."""
    boxes = fullgrad.load_boxes(IMAGE)
    assert _box_area(boxes["dog"]) == pytest.approx(0.229, abs=5e-4)
    row = attention.Row.of(IMAGE)
    uniform = np.ones((SIDE, SIDE), np.float32)
    for name in boxes:
        assert row.area(name) == pytest.approx(_box_area(boxes[name]))
        assert fullgrad.mass_in_boxes(uniform, [boxes[name]]) == pytest.approx(row.area(name))
    assert row.area("either") == pytest.approx(_union_area(boxes["dog"], boxes["cat"]))


# --------------------------------------------------------------------------- pretrained-style figure
def test_offline_figure_falls_back_to_run_records(offline, trained_home, monkeypatch, tmp_path, capsys):
    from lambdalib import log_to_stdout

    log_to_stdout()  # as the CLI and the notebooks do
    results, run_dirs = trained_home
    monkeypatch.setenv("LAMBDALIB_HOME", str(tmp_path / "empty"))
    with pytest.warns(attention.WeightsUnavailableWarning, match="lambda_resnet26t"):
        assert attention.attention_figure(["lambda_resnet26t"]) is None
    assert "Nothing to show" in capsys.readouterr().out

    monkeypatch.setenv("LAMBDALIB_HOME", str(results.parent))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = attention.attention_figure(["resnet18", "lambda_resnet26t"], target="tench")
    assert {str(w.message).split(":")[0] for w in caught if w.category is attention.WeightsUnavailableWarning} \
        == {"resnet18", "lambda_resnet26t"}
    assert result.path == results / "figures" / "attention_fullgrad.png"
    assert sorted(p.info.label for p in result.panels) == ["LR18_L2(rpe)", "R18"]
    with Image.open(result.path) as png:
        assert png.info["dpi"][0] >= 199 and png.text["Description"] == result.caption
    caption = result.caption_path.read_text()
    assert "R18: 20 of 20 (stock FullGrad: 20)" in caption and "LR18_L2(rpe): 22 of 22" in caption
    assert all(run_dir.name in caption for run_dir in run_dirs.values())
    # every map explains 'tench'; the caption and each panel say what the model itself predicts
    assert "Each map explains class 'tench', whatever the model predicts" in caption
    for panel in result.panels:
        assert panel.map.name == "tench" and panel.map.top_name in CLASS_NAMES
        assert f"{panel.info.label}: {panel.map.top_name} ({panel.map.top_prob:.0%})" in caption
        assert f"predicts {panel.map.top_name} ({panel.map.top_prob:.0%})" in _panel_texts(result.figure)
    # one colour scale, 0 to 1, in the colour map of the overlays
    assert len(_colorbars(result.figure)) == 1
    overlays = [im for ax in result.figure.axes for im in ax.get_images() if im.get_cmap().name == attention.CMAP]
    assert len(overlays) == len(result.panels)
    # on-object shares next to their area share, in the caption and the panel titles
    boxes = fullgrad.load_boxes(IMAGE)
    assert f"dog {_box_area(boxes['dog']):.1%}" in caption and f"cat {_box_area(boxes['cat']):.1%}" in caption
    titles = [ax.get_title() for ax in result.figure.axes]
    for panel in result.panels:
        share = f"on dog {panel.measures['mass_dog']:.2f} (area {_box_area(boxes['dog']):.2f})"
        assert any(share in title for title in titles), share


# ----------------------------------------------------------------------------------- picking runs
def _fake_record(runs, name, *, model="R18", noise=0.0, preset="fast", seed=0, status="complete", epochs=15,
                 best=True):
    """A run folder as runs.collect reads it (config.json, summary.json, history.csv) and an empty best.pt."""
    config = RunConfig.from_params(model=model, noise=noise, preset=preset, seed=seed, epochs=epochs, img_size=64)
    run_dir = runs / name
    run_dir.mkdir(parents=True)
    (run_dir / "config.json").write_text(json.dumps(config.to_dict()))
    (run_dir / "summary.json").write_text(json.dumps(dict(
        status=status, label=registry.report_label(model), epochs_done=epochs, environment=dict(git_commit="abc1234"))))
    (run_dir / "history.csv").write_text(history_csv([]))
    if best:
        (run_dir / "best.pt").write_bytes(b"")
    return run_dir


@pytest.mark.filterwarnings("ignore:skipping run i_broken")
def test_pick_rule(tmp_path):
    runs = tmp_path / "runs"
    _fake_record(runs, "a_report_s0", preset="report", seed=0)
    _fake_record(runs, "b_fast_s2", seed=2)
    _fake_record(runs, "c_fast_s1", seed=1)  # <- preset fast, complete, 15 epochs, lowest such seed
    _fake_record(runs, "d_fast_s0_crashed", seed=0, status="running")  # no live lock: "crashed"
    _fake_record(runs, "e_fast_s0_short", seed=0, epochs=3)  # fewer epochs trained
    _fake_record(runs, "f_fast_s0_nobest", seed=0, best=False)  # no best.pt: not a candidate
    _fake_record(runs, "g_noise25", noise=0.25)  # a noise level not asked for
    _fake_record(runs, "h_rpe_report", model="LR18_L2(rpe)", noise=0.5, preset="report", status="diverged")
    broken = _fake_record(runs, "i_broken", noise=0.5)
    (broken / "summary.json").write_text("{not json")
    with pytest.warns(UserWarning, match="i_broken"):  # runs.collect names the unreadable record
        picks = attention.pick_runs(tmp_path)
    assert list(picks) == [("R18", 0.0), ("LR18_L2(rpe)", 0.5)]  # labels x noise order; empty cells absent
    r18 = picks[("R18", 0.0)]
    assert r18.run_id == "c_fast_s1" and r18.candidates == 5 and r18.status == "complete"
    assert r18.git_commit == "abc1234" and r18.img_size == 64 and not r18.synthetic_noise
    assert picks[("LR18_L2(rpe)", 0.5)].run_id == "h_rpe_report"  # the only one: picked whatever its preset
    # each rule in turn, removing the winner
    (runs / "c_fast_s1" / "best.pt").unlink()
    assert attention.pick_runs(tmp_path)[("R18", 0.0)].run_id == "b_fast_s2"  # lowest seed left at 15 epochs
    (runs / "b_fast_s2" / "best.pt").unlink()
    assert attention.pick_runs(tmp_path)[("R18", 0.0)].run_id == "e_fast_s0_short"  # complete beats crashed
    (runs / "e_fast_s0_short" / "best.pt").unlink()
    assert attention.pick_runs(tmp_path)[("R18", 0.0)].run_id == "d_fast_s0_crashed"  # fast beats report
    assert attention.pick_runs(tmp_path, labels=["lambdalib_resnet18"], noise=[0.25])[("R18", 0.25)].run_id \
        == "g_noise25"  # timm names work as labels
    assert attention.PickedRun(**{**r18.__dict__, "run_dir": runs / "R18_noise0_fast_e15_64px_embedded_1a2b3c4d_s0"}
                               ).short_id == "fast_e15_64px_embedded_1a2b3c4d_s0"
    # the figure's rows: each label at every noise level, in the order asked
    _fake_record(runs, "j_r18_noise50", noise=0.5)
    _fake_record(runs, "k_rpe_noise0", model="LR18_L2(rpe)")
    both = attention.pick_runs(tmp_path, labels=["R18", "LR18_L2(rpe)"], noise=[0.0, 0.5])
    assert list(both) == [("R18", 0.0), ("R18", 0.5), ("LR18_L2(rpe)", 0.0), ("LR18_L2(rpe)", 0.5)]


def test_synthetic_noise_loses_to_official(tmp_path):
    runs = tmp_path / "runs"
    synthetic = _fake_record(runs, "a_synthetic", noise=0.25)
    config = json.loads((synthetic / "config.json").read_text())
    (synthetic / "config.json").write_text(json.dumps({**config, "synthetic_noise": True}))
    picks = attention.pick_runs(tmp_path, labels=["R18"], noise=[0.25])
    assert picks[("R18", 0.25)].synthetic_noise and picks[("R18", 0.25)].run_id == "a_synthetic"
    _fake_record(runs, "b_official", noise=0.25, seed=5)  # a higher seed, but official noise
    assert attention.pick_runs(tmp_path, labels=["R18"], noise=[0.25])[("R18", 0.25)].run_id == "b_official"


def test_no_checkpoint_is_one_clear_error(tmp_path, capsys):
    from lambdalib.cli import main

    with pytest.raises(attention.NoTrainedRunsError, match="no run record with a best.pt.*lambdalib reproduce --study"):
        attention.trained_figure(tmp_path)
    _fake_record(tmp_path / "runs", "R18_noise25", noise=0.25)
    with pytest.raises(attention.NoTrainedRunsError, match="best.pt found only in R18_noise25"):
        attention.trained_figure(tmp_path)
    assert main(["attention", "--trained", "--results", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lambdalib attention: error: no run record with a best.pt") and err.count("\n") == 1
    assert "lambdalib train --model R18" in err
    assert not (tmp_path / "figures").exists() and not (tmp_path / "tables").exists()


# ------------------------------------------------------------ figure 7 from our own trained models
def test_trained_figure_table_and_png(trained_home, tmp_path, capsys):
    from lambdalib import record
    from lambdalib.cli import main

    results, run_dirs = trained_home
    images = attention.trained_images()  # both.png, then an English springer, a garbage truck, a golf ball
    assert images[0] == IMAGE and [p.parent.name for p in images[1:]] == list(attention.TRAINED_IMAGE_CLASSES)
    fig = attention.trained_figure(results)
    assert fig.path == results / "figures" / "attention_trained.png"
    assert fig.table_path == results / "tables" / "attention_trained.csv"
    assert fig.missing == [("R18", 0.5), ("LR18_L2(rpe)", 0.0), ("LR18_L2(lc)", 0.0), ("LR18_L2(lc)", 0.5)]
    assert [run.run_dir for run in fig.picks.values()] == list(run_dirs.values())

    # (1) the table's numbers are the returned maps' measures; each box's baseline is its area share
    with open(fig.table_path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 8 == len(fig.maps) == len(fig.rows)  # 2 runs x 4 images
    boxes = fullgrad.load_boxes(IMAGE)
    for row in rows:
        cam = fig.maps[(row["model"], float(row["noise"]), row["image"])]
        assert cam.shape == ((224, 224) if row["image"] == "both.png" else (96, 96))
        assert float(row["concentration_top10"]) == pytest.approx(fullgrad.concentration(cam), abs=1e-6)
        assert float(row["normalised_entropy"]) == pytest.approx(fullgrad.normalised_entropy(cam), abs=1e-6)
        if row["image"] == "both.png":
            for name in ("dog", "cat"):
                assert float(row[f"mass_{name}"]) == pytest.approx(fullgrad.mass_in_boxes(cam, [boxes[name]]),
                                                                   abs=1e-6)
                assert float(row[f"area_{name}"]) == pytest.approx(_box_area(boxes[name]), abs=1e-6)
            assert float(row["mass_either"]) == pytest.approx(fullgrad.mass_in_boxes(cam, boxes.values()), abs=1e-6)
            assert float(row["area_either"]) == pytest.approx(_union_area(boxes["dog"], boxes["cat"]), abs=1e-6)
            assert row["true_class"] == ""
        else:
            assert all(row[f"{kind}_{box}"] == "" for kind in ("mass", "area") for box in ("dog", "cat", "either"))
            assert row["true_class"] in ("English springer", "garbage truck", "golf ball")
        run_dir = run_dirs[row["model"]]
        history = record.read_history(run_dir)
        assert row["run_id"] == run_dir.name and row["epoch"] == "1" and row["bias_layers"] in ("20", "22")
        assert float(row["val_acc"]) == pytest.approx(history[0]["val_acc"], abs=1e-6)
        assert row["predicted_class"] in CLASS_NAMES and row["predicted_wnid"].startswith("n0")
    markdown = attention.attention_table_markdown(fig.table_path)
    assert fig.table_markdown_path.read_text() == markdown
    assert markdown.startswith("| model | noise | image |")
    assert "| on dog (area) | on cat (area) | on either (area) |" in markdown and "(area): the box's share" in markdown
    both = next(r for r in rows if r["image"] == "both.png")
    assert f"| {float(both['mass_dog']):.2f} ({_box_area(boxes['dog']):.2f}) |" in markdown
    assert markdown.count("\n| ") == 8  # one line per row

    # (2) the PNG: the caption in its text metadata, naming the runs; the caption's facts
    with Image.open(fig.path) as png:
        text = dict(png.text)
        assert png.size[0] > 800
    assert all(run_dir.name in text["Source"] for run_dir in run_dirs.values())
    assert text["Description"] == fig.caption and fig.caption in fig.caption_path.read_text()
    provenance = json.loads(text["Comment"])
    assert [r["run_id"] for r in provenance["runs"]] == [d.name for d in run_dirs.values()]
    for words in ("not the report's ImageNet-pretrained", "R18: 20 of 20", "LR18_L2(rpe): 22 of 22", "at 32 px",
                  "git commit", "No run with a best.pt for: R18 at noise 50 %", "preset 'fast' first",
                  "Each map explains its top-1 class", "no cat; one dog, the English springer",
                  f"dog {_box_area(boxes['dog']):.1%}"):
        assert words in fig.caption, words

    # (3) what each panel predicts: in its corner, and in the caption for every panel of both.png and for
    # every panel that misses the true class of the others
    assert len(_colorbars(fig.figure)) == 1
    corners = _panel_texts(fig.figure)
    assert len(corners) == len(fig.panels) == 8
    for panel in fig.panels:
        assert f"predicts {panel.predicted}" in corners
        said = f"{panel.heading}: {panel.predicted}"
        if panel.row.name == "both.png" or panel.map.top_name != panel.row.true_class:
            assert said in fig.caption, said

    # the CLI draws the same figure and table, byte for byte (deterministic PNG), and says where it wrote
    again = tmp_path / "again"
    assert main(["attention", "--trained", "--results", str(results), "--out", str(again)]) == 0
    out = capsys.readouterr().out
    assert f"figure: {again / 'figures' / 'attention_trained.png'}" in out and "not the report's" in out
    assert (again / "tables" / "attention_trained.csv").read_bytes() == fig.table_path.read_bytes()
    assert (again / "figures" / "attention_trained.png").read_bytes() == fig.path.read_bytes()


def test_a_table_without_area_columns_reads_as_before():
    """tables/attention_trained.csv written before the area columns renders exactly as its committed .md."""
    from pathlib import Path

    tables = Path(__file__).resolve().parents[1] / "results" / "tables"
    if not (tables / "attention_trained.csv").is_file():
        pytest.skip("no committed attention table")
    assert attention.attention_table_markdown(tables / "attention_trained.csv") == \
        (tables / "attention_trained.md").read_text()


def test_the_either_column_comes_last_whatever_the_csv_order(tmp_path):
    """A hand-edited table with its columns moved renders as the one lambdalib wrote."""
    from pathlib import Path

    table = Path(__file__).resolve().parents[1] / "results" / "tables" / "attention_trained.csv"
    if not table.is_file():
        pytest.skip("no committed attention table")
    with open(table, newline="") as handle:
        reader = csv.DictReader(handle)
        columns, rows = list(reader.fieldnames), list(reader)
    moved = ["mass_either", *(c for c in columns if c != "mass_either")]
    with open(tmp_path / "moved.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=moved)
        writer.writeheader()
        writer.writerows(rows)
    assert attention.attention_table_markdown(tmp_path / "moved.csv") == attention.attention_table_markdown(table)


def test_a_failed_table_write_leaves_no_figure(trained_home, tmp_path, monkeypatch):
    """The table is written before the figure: a figure never stands without the numbers behind it."""
    from lambdalib import files

    results, _ = trained_home
    out = tmp_path / "out"
    real = files.atomic_write_text

    def refuse_csv(path, text):
        if str(path).endswith(".csv"):
            raise OSError("disk full")
        real(path, text)

    monkeypatch.setattr(files, "atomic_write_text", refuse_csv)
    with pytest.raises(OSError, match="disk full"):
        attention.trained_figure(results, out=out)
    assert not list(out.rglob("*.png"))
