"""The report is built from run records only: tables equal the summaries, figures exist, published numbers
sit next to ours, only seeds of one experiment are ever averaged, unreadable or crashed runs explain
themselves, a failed build leaves the previous report, and rebuilding is deterministic."""
import json
import math
import os
import platform
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import make_tiny_imagenette
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import LineCollection

from lambdalib import cli, figures, files, fmt, record, registry, report, runs
from lambdalib.config import RunConfig, data_slug
from lambdalib.record import load_summary
from lambdalib.train import run

# (model, noise, overrides): two short real runs and one that diverges at epoch 1 (lr 1e4)
RUNS = [("R18", 0.0, {}), ("LR18_L2(rpe)", 0.25, {}), ("R18", 0.05, {"lr": 1e4})]
TABLE_STEMS = [f.table_stem for f in report.tables().values()]
# the records written directly (no training): the demo's scale
SMOKE = dict(model="R18", noise=0.0, preset="fast", epochs=3, img_size=64, batch_size=32, data="embedded",
             train_per_class=24, val_per_class=16)
FULL = dict(SMOKE, data="imagenette2-160", epochs=35, img_size=160, train_per_class=0, val_per_class=0)


def _config(data: Path, results: Path, model: str, noise: float, **overrides) -> RunConfig:
    return RunConfig.from_params(model=model, noise=noise, data=str(data), results=str(results), epochs=2,
                                 img_size=32, batch_size=8, workers=0, preset="fast", **overrides)


def write_record(results: Path, *, status: str = "complete", loss: float = 2.0, epochs_done: int | None = None,
                 diverged_at: int | None = None, **params) -> Path:
    """A run record as the trainer writes it (config.json, history.csv, summary.json), without training:
    val loss `loss` at the last epoch; a diverged epoch has non-finite losses."""
    config = RunConfig.from_params(**{**SMOKE, **params, "results": str(results)}).resolved()
    run_dir = config.run_dir()
    files.make_dir(run_dir)
    config.save(run_dir / "config.json")
    done = config.epochs if epochs_done is None else epochs_done
    history = []
    for epoch in range(1, done + 1):
        bad = epoch == diverged_at
        history.append(dict(
            epoch=epoch, lr=config.lr, train_loss=math.nan if bad else loss + 0.1 + 0.2 * (done - epoch),
            train_acc=0.3, val_loss=math.nan if bad else loss + 0.3 * (done - epoch), val_acc=0.25 - 0.2 / loss,
            grad_norm_mean=1.0, grad_norm_max=2.0, epoch_time_s=1.5, train_images_per_s=160.0, finite=not bad,
            precision="fp32", loss_scale=math.nan, skipped_steps=0))
    record.write_history(run_dir, history)
    per_class = (config.train_per_class or 946, config.val_per_class or 392)
    summary = record.summarize(history, status, diverged_at, dict(
        run_id=config.run_id, experiment_id=config.experiment_id, model=registry.resolve_name(config.model),
        label=registry.report_label(config.model), noise=config.noise, realised_noise=config.noise,
        preset=config.preset, params=11181642, gflops=0.2961, train_images=10 * per_class[0],
        val_images=10 * per_class[1], amp=config.amp, precision="fp32", channels_last=False,
        environment=dict(torch="2.x", python="3.11", device="CPU (test)", world_size=config.world_size,
                         git_commit="abc1234", platform="Linux")))
    summary["updated"] = "2026-01-01T00:00:00+00:00"
    record.write_summary(run_dir, summary)
    return run_dir


def _snapshot(folder: Path) -> dict:
    """Every file of a built report (not the run records), path -> bytes."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and "runs" not in p.relative_to(folder).parts}


def _first_lines(markdown: str, heading: str) -> list[str]:
    """The first non-empty line under each heading that starts with `heading`."""
    lines = markdown.splitlines()
    return [next(line for line in lines[i + 1:] if line.strip()) for i, line in enumerate(lines)
            if line.startswith(heading)]


def _sections(markdown: str, heading: str) -> dict[str, str]:
    """'### label' (or '## label') sections of a markdown file, label -> body."""
    parts = re.split(rf"^{heading} (.+)$", markdown, flags=re.M)
    return dict(zip(parts[1::2], parts[2::2]))


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """Three real run records, a folder that is not one, and the report built from them."""
    # half the session fixture's images: these tests read records, they do not need learning
    data = make_tiny_imagenette(tmp_path_factory.mktemp("report_data"), train_per_class=2, val_per_class=1)
    results = tmp_path_factory.mktemp("report_results")
    run_dirs = [run(_config(data, results, m, n, **o), progress=False) for m, n, o in RUNS]
    (results / "runs" / "not_a_run").mkdir()  # no summary.json: skipped
    readme = report.build(results, quiet=True)
    return results, run_dirs, readme, data


def _summaries(run_ids: str, results: Path) -> list[dict]:
    return [load_summary(results / "runs" / run_id) for run_id in str(run_ids).split(";")]


def test_runs_are_what_the_tests_assume(built):
    _, run_dirs, _, _ = built
    statuses = [load_summary(d)["status"] for d in run_dirs]
    assert statuses == ["complete", "complete", "diverged"]


def test_tables_equal_the_run_records(built):
    results, run_dirs, readme, _ = built
    seen = set()
    for stem in TABLE_STEMS:
        table = pd.read_csv(results / "tables" / f"{stem}.csv")
        for _, row in table.iterrows():
            summaries = _summaries(row["run_ids"], results)
            seen.update(s["run_id"] for s in summaries)
            assert row["n_runs"] == len(summaries)
            assert len(summaries) == 1
            for metric in runs.METRICS:  # full precision: exactly the summary's value (missing: NaN)
                expected = summaries[0][metric]
                assert (pd.isna(row[metric]) and expected is None) or row[metric] == expected, metric
            first = summaries[0]
            assert (row["label"], row["noise"], row["params"], row["gflops"]) == \
                   (first["label"], first["noise"], first["params"], first["gflops"])
            assert row["experiment_id"] == first["experiment_id"]
            if first["best_val_loss_epoch"] is None:  # diverged in its first epoch: no good epoch
                assert pd.isna(row["best_val_loss_epoch"])
            else:
                assert int(row["best_val_loss_epoch"]) == first["best_val_loss_epoch"]
            assert row["architecture"] == fmt.architecture(first["label"], first["noise"])
            if first["status"] == "diverged":
                assert int(row["diverged_at"]) == first["diverged_at"] == 1
            else:
                assert pd.isna(row["diverged_at"])
    assert seen == {d.name for d in run_dirs}  # every finished run is in a table, once
    baselines = (results / "tables" / "table1_baselines.md").read_text()
    for label in ("ResNet18(0%)", "ResNet18(5%)"):
        assert f"| {label} |" in baselines
    assert "| LR18_L2(rpe)(25%) |" in (results / "tables" / "table2_L2_rpe.md").read_text()
    assert "epoch 1" in baselines  # the diverged run is marked
    text = readme.read_text()
    assert all(d.name in text for d in run_dirs) and "not_a_run" not in text
    assert "lr=10000" in text  # the diverged run's recipe is its own set-up, never averaged with the others
    assert "No runs yet" in (results / "tables" / "table5_L3_lc.md").read_text()


def test_readme_states_provenance_and_embeds_existing_figures(built):
    results, run_dirs, readme, data = built
    text = readme.read_text()
    env = load_summary(run_dirs[0])["environment"]
    for value in (env["device"], env["torch"], data_slug(str(data)), "fast"):
        assert value in text
    assert re.search(r"git commit: .*" + re.escape(env["git_commit"].split("-")[0]), text)
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    pngs = sorted((results / "figures").rglob("*.png"))
    # set-up 1: Tables 1 and 2 (R18, LR18_L2(rpe)) and accuracy; the lr=1e4 set-up: Table 1 only (its run diverged
    # in epoch 1, so no accuracy was measured); tables without runs have no figure
    assert len(links) == len(pngs) == 4
    for link in links:
        data = (readme.parent / link).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


def test_written_files_hold_no_absolute_paths(built, tmp_path_factory):
    """Tracked report files never name the machine's folders: rebuilding elsewhere changes no byte."""
    results, run_dirs, _, data = built
    machine = {str(results), str(results.resolve()), str(data), str(tmp_path_factory.getbasetemp()),
               str(Path.cwd()), str(Path.home())}
    for rel, content in _snapshot(results).items():
        for path in machine:
            assert path.encode() not in content, (rel, path)
    table = pd.read_csv(results / "tables" / "runs.csv")
    assert sorted(table["run_dir"]) == sorted(f"runs/{d.name}" for d in run_dirs)


def test_comparison_puts_published_next_to_ours(built):
    results, run_dirs, _, _ = built
    table = pd.read_csv(results / "tables" / "comparison.csv")
    setup = table[~table["recipe"].fillna("").str.contains("lr=")]
    row = setup.set_index("architecture").loc["ResNet18(0%)"]
    assert row["published_best_val_loss"] == 2.320 and row["published_best_train_loss"] == 2.299
    assert row["published_training_time_s"] == 5557
    ours = load_summary(run_dirs[0])
    assert row["ours_best_val_loss"] == ours["best_val_loss"] and row["ours_train_time_s"] == ours["train_time_s"]
    assert setup.set_index("architecture").loc["LR34_L3(lc)(25%)", "published_best_val_loss"] == 71622.614
    assert setup.set_index("architecture").loc["LR18_L2(rpe)(0%)", "published_training_time_s"] == 8561  # "2h 22m 41"
    missing = setup[setup["label"].isin(["LR18_L3(rpe)", "LR34_L3(rpe)"])]
    assert len(missing) == 8
    published = ["published_best_train_loss", "published_best_val_loss", "published_training_time_s"]
    assert missing[published].isna().all().all()
    assert missing["note"].str.contains("not published").all()
    markdown = (results / "tables" / "comparison.md").read_text()
    assert re.search(r"\| LR18_L3\(rpe\)\(0%\) \| missing \|", markdown)
    assert "| 1 | ResNet18(0%) | 2.299 |" in markdown


def test_the_comparison_keeps_our_rows_the_report_has_none_for(tmp_path):
    """Ours beside the report's where both exist, and ours alone (said so) where the report has no such row."""
    run_dir = write_record(tmp_path, noise=0.01)
    report.build(tmp_path, quiet=True)
    table = pd.read_csv(tmp_path / "tables" / "comparison.csv").set_index("architecture")
    row = table.loc["ResNet18(1%)"]
    assert row["note"] == "the report has no such row (e.g. no 1 % noise runs)"
    ours = load_summary(run_dir)["best_val_loss"]
    assert math.isnan(row["published_best_val_loss"]) and row["ours_best_val_loss"] == ours
    assert table.loc["ResNet18(0%)", "published_best_val_loss"] == 2.320  # the report's rows stay too


def test_numbers_stay_short_and_numeric_columns_right_aligned():
    assert fmt.number(1234567890.0) == "1.23e+09" and fmt.number(-71622000.5, signed=True) == "-7.16e+07"
    assert fmt.number(-0.5, signed=True) == "-0.500" and fmt.number(0.5, signed=True) == "+0.500"
    assert [fmt.plural(n, "spike") for n in (0, 1, 2)] == ["0 spikes", "1 spike", "2 spikes"]
    table = fmt.markdown_table(pd.DataFrame({"name": ["a", "b"], "delta": ["-0.500", "+1.000"]}), "none")
    assert table.splitlines()[1] == "|:---|---:|"


def test_a_setup_is_a_smoke_test_below_ten_epochs_or_on_a_per_class_subset():
    def smoke(**params):
        return runs.setup_of(RunConfig.from_params(model="R18", **params))["smoke_test"]

    assert not smoke(epochs=runs.SMOKE_EPOCHS) and smoke(epochs=runs.SMOKE_EPOCHS - 1)
    assert smoke(epochs=40, train_per_class=5) and smoke(epochs=40, val_per_class=5)


def test_an_old_records_auto_fields_are_read_from_what_it_ran(tmp_path):
    """Records from before configs were saved resolved hold amp 'auto' and world_size 0: their set-up takes what
    the run did from its summary (fp32 when the summary names no amp; the environment's world size)."""
    run_dir = write_record(tmp_path)
    saved = json.loads((run_dir / "config.json").read_text())
    (run_dir / "config.json").write_text(json.dumps({**saved, "amp": "auto", "world_size": 0}))
    summary = json.loads((run_dir / "summary.json").read_text())
    del summary["amp"]
    summary["environment"]["world_size"] = 2
    (run_dir / "summary.json").write_text(json.dumps(summary))
    (row,) = [row for _, row in runs.collect(tmp_path).iterrows()]
    ran = RunConfig.from_dict({**saved, "amp": "off", "world_size": 2})
    assert row["setup"] == runs.setup_of(ran)["setup"]
    assert "world_size=2" in row["recipe"] and "amp" not in row["recipe"]


def test_published_csv_is_consistent():
    published = registry.published()
    assert len(published) == 40 and sorted(published["table"].unique()) == [1, 2, 3, 4, 5]
    assert published["source"].str.contains("Report and analysis of lambda network performance").all()
    for text, seconds in zip(published["training_time"], published["training_time_s"]):
        assert (math.isnan(seconds) and pd.isna(text)) or fmt.parse_duration(text) == seconds
    assert fmt.parse_duration("2h 22m 41") == 8561 and fmt.parse_duration("1h 57m 2s") == 7022
    assert fmt.duration(5557) == "1h 32m 37s" and fmt.duration(65) == "1m 5s"


def test_rebuild_is_identical(built, tmp_path):
    results, _, _, _ = built
    first = {p.relative_to(results): p.read_bytes()
             for p in [results / "README.md", *results.glob("tables/*"), *results.rglob("figures/**/*.png")]}
    report.build(results, out=tmp_path, quiet=True)
    for rel, data in first.items():  # tables, README and even the PNGs byte for byte
        assert (tmp_path / rel).read_bytes() == data, rel


# ------------------------------------------------------------------ one experiment, one identity
def test_report_never_merges_runs_of_different_experiments(tmp_path):
    """Only seeds are aggregated: runs differing in lr (1e6 vs 1e-6), subset size, batch size or any other
    identity field get their own cell and their own set-up."""
    base = [write_record(tmp_path, seed=0, loss=2.0), write_record(tmp_path, seed=1, loss=2.4)]
    variants = dict(lr_high=dict(lr=1e6), lr_low=dict(lr=1e-6), subset=dict(train_per_class=48),
                    batch=dict(batch_size=16), decay=dict(weight_decay=1e-4), world=dict(world_size=2),
                    precision=dict(amp="bf16"), clip=dict(grad_clip=1.0), full=FULL)
    others = {name: write_record(tmp_path, **params) for name, params in variants.items()}
    report.build(tmp_path, quiet=True)

    table = pd.read_csv(tmp_path / "tables" / "table1_baselines.csv")
    assert len(table) == 1 + len(variants) and table["setup"].nunique() == 1 + len(variants)
    assert table["experiment_id"].nunique() == len(table)
    seeds = table.set_index("run_ids").loc[";".join(d.name for d in base)]
    assert seeds["n_runs"] == 2 and seeds["seeds"] == "0;1"
    assert seeds["best_val_loss"] == pytest.approx(2.2)
    assert seeds["best_val_loss_std"] == pytest.approx(0.4 / math.sqrt(2))
    assert seeds["experiment_id"] == RunConfig.from_params(**SMOKE).resolved().experiment_id
    for run_dir in others.values():
        row = table.set_index("run_ids").loc[run_dir.name]
        assert row["n_runs"] == 1 and row["best_val_loss"] == load_summary(run_dir)["best_val_loss"]

    markdown = (tmp_path / "tables" / "table1_baselines.md").read_text()
    labels = list(_sections(markdown, "###"))
    assert len(labels) == 1 + len(variants)
    assert "| ResNet18(0%) | 2.000 ± 0.283 |" not in markdown  # train loss 2.1 ± 0.283, val 2.200 ± 0.283
    assert re.search(r"\| ResNet18\(0%\) \| 2\.300 ± 0\.283 \| 2\.200 ± 0\.283 \|.*\| 2 \(0, 1\) \|", markdown)
    for expected in ("lr=1e+06", "lr=1e-06", "48/16 images per class", "batch_size=16", "weight_decay=0.0001",
                     "world_size=2", "amp=bf16", "grad_clip=1", "imagenette2-160"):
        assert sum(expected in label for label in labels) == 1, expected
    readme = (tmp_path / "README.md").read_text()
    assert readme.count("## Set-up: ") == 1 + len(variants)
    assert len({p.parent for p in (tmp_path / "figures").rglob("*.png")}) == 1 + len(variants)


def test_sections_put_the_report_preset_first(tmp_path):
    write_record(tmp_path, preset="fast")
    write_record(tmp_path, preset="report")
    report.build(tmp_path, quiet=True)
    labels = list(_sections((tmp_path / "tables" / "table1_baselines.md").read_text(), "###"))
    assert "preset report" in labels[0] and "preset fast" in labels[1]


def test_seeds_unfinished_runs_and_stale_files(tmp_path):
    """A second seed gives mean ± std; an interrupted run is listed but kept out of the tables; files of
    a set-up that disappeared are removed on rebuild."""
    base = write_record(tmp_path, seed=0, loss=2.0)
    seed1 = write_record(tmp_path, seed=1, loss=2.5)
    unfinished = write_record(tmp_path, model="LR18_L2(rpe)", noise=0.25, status="interrupted", epochs_done=1)
    (tmp_path / "figures" / "gone_setup").mkdir(parents=True)
    (tmp_path / "tables").mkdir()
    (tmp_path / "tables" / ".report-files").write_text("figures/gone_setup/curves_baselines.png\n")
    (tmp_path / "figures" / "gone_setup" / "curves_baselines.png").write_bytes(b"old")

    readme = report.build(tmp_path, quiet=True)
    table = pd.read_csv(tmp_path / "tables" / "table1_baselines.csv")
    assert list(table["architecture"]) == ["ResNet18(0%)"]
    assert pd.read_csv(tmp_path / "tables" / "table2_L2_rpe.csv").empty  # the interrupted run is not in tables
    row = table.iloc[0]
    losses = [load_summary(base)["best_val_loss"], load_summary(seed1)["best_val_loss"]]
    assert row["n_runs"] == 2 and row["seeds"] == "0;1"
    assert row["best_val_loss"] == pytest.approx(sum(losses) / 2)
    assert row["best_val_loss_std"] == pytest.approx(abs(losses[1] - losses[0]) / math.sqrt(2))
    assert " ± " in (tmp_path / "tables" / "table1_baselines.md").read_text()
    text = readme.read_text()
    unfinished_section = text.split("## Unfinished runs")[1].split("## Unreadable run records")[0]
    assert unfinished.name in unfinished_section and "interrupted" in unfinished_section
    assert not (tmp_path / "figures" / "gone_setup").exists()


def test_a_seed_without_a_best_value_leaves_the_cells_mean_undefined(tmp_path):
    """A seed that diverged in epoch 1 has no best loss; averaging the other seeds alone would flatter the cell."""
    write_record(tmp_path, seed=0, loss=2.0)
    write_record(tmp_path, seed=1, status="diverged", diverged_at=1, epochs_done=1)
    (cell,) = runs.aggregate(runs.finished_runs(runs.collect(tmp_path))).to_dict("records")
    assert cell["n_runs"] == 2 and cell["n_diverged"] == 1
    assert math.isnan(cell["best_val_loss"]) and math.isnan(cell["best_train_loss"])


def test_collected_rows_carry_the_schedule_of_their_config_json(tmp_path):
    """Figures mark warm restarts from these columns; nothing else opens a run folder for them."""
    write_record(tmp_path, t0=3, t_mult=2, epochs=12)
    row = runs.collect(tmp_path).iloc[0]
    assert (row["t0"], row["t_mult"]) == (3, 2) and figures.run_restarts(row) == [4, 10]


# ------------------------------------------------------------------ failures that explain themselves
def test_a_config_naming_an_unknown_model_is_skipped_with_a_warning_naming_config_json(tmp_path):
    broken = write_record(tmp_path, model="R34")
    config = json.loads((broken / "config.json").read_text())
    (broken / "config.json").write_text(json.dumps(dict(config, model="nosuchmodel")))
    with pytest.warns(UserWarning, match=r"skipping run .*: config\.json: ValueError: .*nosuchmodel"):
        frame, skipped = runs.load_runs(tmp_path, None)
    assert frame.empty and skipped[0]["File"] == f"runs/{broken.name}/config.json"


@pytest.mark.parametrize("name,garbage", [("summary.json", "{not json"), ("config.json", '{"epochs": '),
                                          ("history.csv", "epoch,lr,train_loss\nthree,x,y\n"),
                                          ("history.csv", "hello world\nthis is not a history\n")])
def test_an_unreadable_record_is_skipped_and_named(tmp_path, name, garbage):
    good = [write_record(tmp_path, noise=0.0), write_record(tmp_path, noise=0.05)]
    broken = write_record(tmp_path, model="R34")
    (broken / name).write_text(garbage)
    with pytest.warns(UserWarning, match=re.escape(str(broken / name))):
        readme = report.build(tmp_path, quiet=True)
    table = pd.read_csv(tmp_path / "tables" / "table1_baselines.csv")
    assert sorted(table["run_ids"]) == sorted(d.name for d in good)  # everything else is built
    text = readme.read_text()
    skipped = text.split("## Unreadable run records (skipped)")[1].split("## All run records")[0]
    assert broken.name in skipped and f"runs/{broken.name}/{name}" in skipped
    assert str(tmp_path) not in text
    assert broken.name in (tmp_path / "tables" / "runs.md").read_text()
    assert len(list((tmp_path / "figures").rglob("*.png"))) == 2  # Table 1's curves and accuracy: R18 runs only


def test_a_failed_build_leaves_the_previous_report(tmp_path, monkeypatch):
    write_record(tmp_path, seed=0)
    report.build(tmp_path, quiet=True)
    before = _snapshot(tmp_path)
    write_record(tmp_path, seed=1, loss=3.0)  # would change the tables, the README and the figures

    def broken(*args, **kwargs):
        raise RuntimeError("figure failed")

    monkeypatch.setattr(figures, "accuracy_figure", broken)  # the last thing computed
    with pytest.raises(RuntimeError, match="figure failed"):
        report.build(tmp_path, quiet=True)
    assert _snapshot(tmp_path) == before


def test_a_missing_runs_folder_is_an_error_and_creates_nothing(tmp_path, capsys):
    typo = tmp_path / "resluts"
    with pytest.raises(FileNotFoundError, match=r"no run records found at .*resluts.runs") as err:
        report.build(typo, quiet=True)
    assert "\n" not in str(err.value) and "--results" in str(err.value)
    assert cli.main(["report", "--results", str(typo)]) == 2
    assert "no run records found" in capsys.readouterr().err
    assert not typo.exists() and list(tmp_path.iterdir()) == []


def test_empty_results_say_no_runs(tmp_path):
    (tmp_path / "results" / "runs").mkdir(parents=True)
    readme = report.build(tmp_path / "results", quiet=True)
    text = readme.read_text()
    assert "No runs yet" in text or "No finished runs yet" in text
    for stem in TABLE_STEMS:
        assert "No runs yet" in (tmp_path / "results" / "tables" / f"{stem}.md").read_text()
        assert pd.read_csv(tmp_path / "results" / "tables" / f"{stem}.csv").empty
    comparison = pd.read_csv(tmp_path / "results" / "tables" / "comparison.csv")
    assert len(comparison) == 40 and comparison["ours_best_val_loss"].isna().all()
    assert not list((tmp_path / "results" / "figures").rglob("*.png"))  # no runs: no figure drawn


def test_a_crashed_run_reads_crashed(tmp_path):
    crashed = write_record(tmp_path, status="running", epochs_done=1)  # no process holds its lock
    alive = write_record(tmp_path, model="R34", status="running", epochs_done=2)
    (alive / ".lock").write_text(json.dumps({"pid": os.getpid(), "host": platform.node()}))
    report.build(tmp_path, quiet=True)
    index = (tmp_path / "tables" / "runs.md").read_text()
    line = next(text for text in index.splitlines() if crashed.name in text)
    assert "| crashed (" in line and "re-run the same command to resume" in line and "no (crashed)" in line
    line = next(text for text in index.splitlines() if alive.name in text)
    assert "| running (" in line and "no (running)" in line
    runs = pd.read_csv(tmp_path / "tables" / "runs.csv").set_index("run_id")
    assert runs.loc[crashed.name, "status"] == "crashed" and runs.loc[alive.name, "status"] == "running"
    assert pd.read_csv(tmp_path / "tables" / "table1_baselines.csv").empty


def test_a_run_without_a_good_epoch_reads_dash(tmp_path, built):
    write_record(tmp_path, status="diverged", epochs_done=1, diverged_at=1, lr=1e4)
    readme = report.build(tmp_path, quiet=True)
    table = (tmp_path / "tables" / "table1_baselines.md").read_text()
    row = next(line for line in table.splitlines() if "ResNet18" in line)
    assert row.startswith("| ResNet18(0%) | — | — |") and "epoch 1" in row
    results = built[0]
    for path in [readme, *(tmp_path / "tables").glob("*.md"), results / "README.md", *results.glob("tables/*.md")]:
        assert not re.search(r"\b(None|nan|NaN)\b", path.read_text()), path


def test_the_readme_says_what_it_is_first(tmp_path):
    for noise in (0.0, 0.25):
        write_record(tmp_path, noise=noise)
    readme = report.build(tmp_path, quiet=True).read_text()
    smoke = ("Smoke test of the pipeline: 3 epochs on 24 training images per class (240 in all; 160 validation "
             "images) of the embedded mini subset at 64 px")
    head = readme.splitlines()[:3]
    assert "smoke test" in head[0] and "not results" in head[0]
    assert smoke in head[2] and head[2].endswith("not results.**")
    above = _first_lines(readme, "### Published vs ours") + _first_lines(
        (tmp_path / "tables" / "comparison.md").read_text(), "### Smoke test ·")
    assert len(above) == 2 and all(smoke in line and "not results" in line for line in above)  # above the table
    assert all(smoke in (tmp_path / "tables" / f"{stem}.md").read_text() for stem in TABLE_STEMS)

    write_record(tmp_path, **FULL)
    readme = report.build(tmp_path, quiet=True).read_text()
    head = "\n".join(readme.splitlines()[:6])
    assert "results" in readme.splitlines()[0] and "2 set-ups; 1 of them is a smoke test" in head
    assert "Full-scale runs: 35 epochs on all 9460 training images (3920 validation images) of imagenette2-160 at " \
           "160 px" in head
    full = next(body for label, body in _sections(readme, "##").items() if label.startswith("Set-up: Full scale"))
    assert _first_lines(full, "### Published vs ours")[0].startswith("> Full-scale runs")
    assert "Smoke test" not in full


# ------------------------------------------------------------------------------------ figures
def _drawn(fig):
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return canvas.get_renderer()


def test_plot_run_is_readable_after_one_epoch(tmp_path):
    run_dir = write_record(tmp_path, noise=0.25, epochs=1)
    path = report.plot_run(run_dir)
    assert path == run_dir / "curves.png" and path.read_bytes()[:4] == b"\x89PNG"
    fig = figures.run_figure(runs.collect(tmp_path).iloc[0])
    ax = fig.axes[0]
    renderer = _drawn(fig)
    assert ax.get_xlabel() == "epoch" and "loss" in ax.get_ylabel()
    assert [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]] == [1]
    assert all(len(line.get_xdata()) == 0 or line.get_marker() not in ("", "None") for line in ax.get_lines())
    legend = fig.legends[0]
    assert [t.get_text() for t in legend.get_texts()] == ["train loss", "val loss"]
    title = fig._suptitle.get_text()
    assert "ResNet18(25%)" in title and "complete" in title and "1/1 epochs" in title and "Smoke test" in title
    box = legend.get_window_extent(renderer)
    assert not box.overlaps(fig._suptitle.get_window_extent(renderer)) and not box.overlaps(ax.bbox)


def test_plot_run_marks_divergence_and_unfinished_schedules(tmp_path):
    diverged = write_record(tmp_path, status="diverged", epochs=5, epochs_done=3, diverged_at=3, lr=1e4)
    running = write_record(tmp_path, model="R34", status="interrupted", epochs=35, epochs_done=2)
    found = runs.collect(tmp_path).set_index("run_id", drop=False)
    fig = figures.run_figure(found.loc[diverged.name])
    assert any("diverged" in t.get_text() for t in fig.legends[0].get_texts())
    assert "diverged at epoch 3" in fig._suptitle.get_text()
    fig = figures.run_figure(found.loc[running.name])
    assert fig.axes[0].get_xlim()[1] == pytest.approx(35.5)  # the planned schedule: how far it got
    assert "interrupted, 2/35 epochs" in fig._suptitle.get_text()
    for run_dir in (diverged, running):
        assert report.plot_run(run_dir).stat().st_size > 5000


def test_accuracy_vs_noise_has_measured_levels_chance_and_honest_error_bars(tmp_path):
    for noise in (0.0, 0.05, 0.25, 0.5):
        write_record(tmp_path, noise=noise)
    for seed, loss in ((0, 2.0), (1, 2.5)):
        write_record(tmp_path, model="R34", seed=seed, loss=loss)
    cells = runs.aggregate(runs.collect(tmp_path))
    fig = figures.accuracy_figure(cells, "test")
    ax = fig.axes[0]
    _drawn(fig)
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0 %", "5 %", "25 %", "50 %"]  # the measured levels
    r18 = next(line for line in ax.get_lines() if line.get_label() == "R18")
    assert np.allclose(r18.get_xdata(), [0, 1, 2, 3], atol=0.4) and r18.get_linestyle() == "None"  # no lines
    chance = [line for line in ax.get_lines() if np.allclose(line.get_ydata(), 100 / report.CLASSES)]
    assert chance and "chance (1/10)" in [t.get_text() for t in fig.legends[0].get_texts()]
    bars = [c for c in ax.collections if isinstance(c, LineCollection)]
    assert sum(len(c.get_segments()) for c in bars) == 1  # only the two-seed cell (R34, 0 %) has a bar
    assert "n = 1–2" in ax.get_xlabel() and "one seed" in ax.get_xlabel() and "t interval" in ax.get_xlabel()
    single = figures.accuracy_figure(cells[cells["n_runs"] == 1], "test")
    assert not [c for c in single.axes[0].collections if isinstance(c, LineCollection)]
    assert "no interval" in single.axes[0].get_xlabel()


def test_the_committed_report_is_what_its_records_build(tmp_path):
    """results/ is regenerated, never typed: rebuilding it from its committed run records writes the same
    bytes (the FullGrad figure and table come from checkpoints, which are not committed: copied as they are)."""
    import shutil

    committed = Path(__file__).resolve().parents[1] / "results"
    for rel in ("figures/attention_trained.png", "figures/attention_trained.md", "tables/attention_trained.csv"):
        if (committed / rel).exists():
            (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(committed / rel, tmp_path / rel)
    report.build(committed, out=tmp_path, quiet=True)
    built = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file())
    assert "README.md" in built and any(name.startswith("figures/") for name in built)
    for rel in built:  # text byte for byte; PNGs exist (their bytes depend on matplotlib's and FreeType's builds)
        assert (committed / rel).is_file(), rel
        if not rel.endswith(".png"):
            assert (tmp_path / rel).read_bytes() == (committed / rel).read_bytes(), rel


def test_report_never_overwrites_a_file_it_did_not_write(tmp_path, capsys):
    write_record(tmp_path / "results")
    out = tmp_path / "mine"
    out.mkdir()
    (out / "README.md").write_text("my notes\n")
    assert cli.main(["report", "--results", str(tmp_path / "results"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "README.md was not written by `lambdalib report`" in err and len(err.strip().splitlines()) == 1
    assert (out / "README.md").read_text() == "my notes\n" and sorted(p.name for p in out.iterdir()) == ["README.md"]


def test_report_is_swapped_in_whole_and_a_killed_build_is_cleaned_up(tmp_path):
    write_record(tmp_path, loss=2.0)
    report.build(tmp_path, quiet=True)
    (tmp_path / "figures" / "attention_trained.png").write_bytes(b"figure 7")  # another command's file
    leftover = tmp_path / ".report-new" / "tables"
    leftover.mkdir(parents=True)
    (leftover / "half.csv").write_text("")  # what a build killed mid-way leaves
    write_record(tmp_path, seed=1, loss=3.0)
    report.build(tmp_path, quiet=True)
    assert not (tmp_path / ".report-new").exists() and not (tmp_path / ".report-old").exists()
    assert (tmp_path / "figures" / "attention_trained.png").read_bytes() == b"figure 7"
    listed = (tmp_path / "tables" / ".report-files").read_text().split()
    on_disk = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")
                     if p.is_file() and p.parts[len(tmp_path.parts)] in ("tables", "figures", "README.md")
                     and p.name not in (".report-files", "attention_trained.png"))
    assert listed == on_disk


def test_every_image_the_committed_report_embeds_exists_once():
    results = Path(__file__).resolve().parents[1] / "results"
    targets = re.findall(r"!\[[^\]]*\]\(([^)\s]+)\)", (results / "README.md").read_text())
    assert targets and len(targets) == len(set(targets))
    assert [t for t in targets if not (results / t).is_file()] == []


@pytest.mark.parametrize("epoch, expected", [(3, 3), (3.0, 3), (math.nan, None), (math.inf, None), ("x", None)])
def test_a_diverged_run_without_a_readable_epoch_has_none(epoch, expected):
    """figures and claims ask runs.diverged_epoch; a damaged record's epoch must not crash them (inf did)."""
    assert runs.diverged_epoch({"status": "diverged", "diverged_at": epoch}) == expected
    assert runs.diverged_epoch({"status": "complete", "diverged_at": epoch}) is None
