"""The report is built from run records only: tables equal the summaries, figures exist, published numbers
sit next to ours, partial and empty results work, and rebuilding is deterministic."""
import json
import math
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest

from lambdalib import report
from lambdalib.config import RunConfig
from lambdalib.train import load_summary, run

from conftest import make_tiny_imagenette

# (model, noise, overrides): two short real runs and one that diverges at epoch 1 (lr 1e4)
RUNS = [("R18", 0.0, {}), ("LR18_L2(rpe)", 0.25, {}), ("R18", 0.05, {"lr": 1e4})]
TABLE_STEMS = [stem for _, stem, _ in report.TABLES.values()]


def _config(data: Path, results: Path, model: str, noise: float, **overrides) -> RunConfig:
    return RunConfig.from_params(model=model, noise=noise, data=str(data), results=str(results), epochs=2,
                                 img_size=32, batch_size=8, workers=0, preset="fast", **overrides)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """Three real run records, a folder that is not one, and the report built from them."""
    # half the session fixture's images: these tests read records, they do not need learning
    data = make_tiny_imagenette(tmp_path_factory.mktemp("report_data"), train_per_class=2, val_per_class=1)
    results = tmp_path_factory.mktemp("report_results")
    run_dirs = [run(_config(data, results, m, n, **o), progress=False) for m, n, o in RUNS]
    (results / "runs" / "not_a_run").mkdir()  # no summary.json: skipped
    readme = report.build(results, quiet=True)
    return results, run_dirs, readme


def _summaries(run_ids: str, results: Path) -> list[dict]:
    return [load_summary(results / "runs" / run_id) for run_id in str(run_ids).split(";")]


def test_runs_are_what_the_tests_assume(built):
    _, run_dirs, _ = built
    statuses = [load_summary(d)["status"] for d in run_dirs]
    assert statuses == ["complete", "complete", "diverged"]


def test_tables_equal_the_run_records(built):
    results, run_dirs, readme = built
    seen = set()
    for stem in TABLE_STEMS:
        table = pd.read_csv(results / "tables" / f"{stem}.csv")
        for _, row in table.iterrows():
            summaries = _summaries(row["run_ids"], results)
            seen.update(s["run_id"] for s in summaries)
            assert row["n_runs"] == len(summaries)
            assert len(summaries) == 1
            for metric in report.METRICS:  # full precision: exactly the summary's value (missing: NaN)
                expected = summaries[0][metric]
                assert (pd.isna(row[metric]) and expected is None) or row[metric] == expected, metric
            first = summaries[0]
            assert (row["label"], row["noise"], row["params"], row["gflops"]) == \
                   (first["label"], first["noise"], first["params"], first["gflops"])
            if first["best_val_loss_epoch"] is None:  # diverged in its first epoch: no good epoch
                assert pd.isna(row["best_val_loss_epoch"])
            else:
                assert int(row["best_val_loss_epoch"]) == first["best_val_loss_epoch"]
            assert row["architecture"] == report.architecture(first["label"], first["noise"])
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
    results, run_dirs, readme = built
    text = readme.read_text()
    env = load_summary(run_dirs[0])["environment"]
    for value in (env["device"], env["torch"], "report_data", "fast"):
        assert value in text
    assert re.search(r"git commit: .*" + re.escape(env["git_commit"].split("-")[0]), text)
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    pngs = sorted((results / "figures").rglob("*.png"))
    assert len(links) == len(pngs) == 2 * (len(report.FIGURES) + 1)  # two set-ups
    for link in links:
        data = (readme.parent / link).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


def test_comparison_puts_published_next_to_ours(built):
    results, run_dirs, _ = built
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


def test_published_csv_is_consistent():
    published = report.load_published()
    assert len(published) == 40 and sorted(published["table"].unique()) == [1, 2, 3, 4, 5]
    assert published["source"].str.contains("Report and analysis of lambda network performance").all()
    for text, seconds in zip(published["training_time"], published["training_time_s"]):
        assert (math.isnan(seconds) and pd.isna(text)) or report.parse_duration(text) == seconds
    assert report.parse_duration("2h 22m 41") == 8561 and report.parse_duration("1h 57m 2s") == 7022
    assert report.format_duration(5557) == "1h 32m 37s" and report.format_duration(65) == "1m 5s"


def test_rebuild_is_identical(built, tmp_path):
    results, _, _ = built
    first = {p.relative_to(results): p.read_bytes()
             for p in [results / "README.md", *results.glob("tables/*"), *results.rglob("figures/**/*.png")]}
    report.build(results, out=tmp_path, quiet=True)
    for rel, data in first.items():  # tables, README and even the PNGs byte for byte
        assert (tmp_path / rel).read_bytes() == data, rel


def test_seeds_unfinished_runs_and_stale_files(built, tmp_path):
    """A second seed gives mean ± std; an interrupted run is listed but kept out of the tables; files of
    a set-up that disappeared are removed on rebuild."""
    results, run_dirs, _ = built
    for src in run_dirs[:2]:
        shutil.copytree(src, tmp_path / "runs" / src.name, ignore=shutil.ignore_patterns("*.pt"))
    base = tmp_path / "runs" / run_dirs[0].name
    seed1 = tmp_path / "runs" / (run_dirs[0].name.replace("_s0_", "_s1_"))
    shutil.copytree(base, seed1)
    config = json.loads((seed1 / "config.json").read_text())
    summary = json.loads((seed1 / "summary.json").read_text())
    config["seed"], summary["run_id"] = 1, seed1.name
    summary["best_val_loss"] += 0.5
    (seed1 / "config.json").write_text(json.dumps(config))
    (seed1 / "summary.json").write_text(json.dumps(summary))
    unfinished = tmp_path / "runs" / run_dirs[1].name
    summary = json.loads((unfinished / "summary.json").read_text())
    (unfinished / "summary.json").write_text(json.dumps({**summary, "status": "interrupted"}))
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
    unfinished_section = text.split("## Unfinished runs")[1].split("## All run records")[0]
    assert unfinished.name in unfinished_section and "interrupted" in unfinished_section
    assert not (tmp_path / "figures" / "gone_setup").exists()


def test_empty_results_say_no_runs(tmp_path):
    readme = report.build(tmp_path / "results", quiet=True)
    text = readme.read_text()
    assert "No runs yet" in text
    for stem in TABLE_STEMS:
        assert "No runs yet" in (tmp_path / "results" / "tables" / f"{stem}.md").read_text()
        assert pd.read_csv(tmp_path / "results" / "tables" / f"{stem}.csv").empty
    comparison = pd.read_csv(tmp_path / "results" / "tables" / "comparison.csv")
    assert len(comparison) == 40 and comparison["ours_best_val_loss"].isna().all()
    assert len(list((tmp_path / "results" / "figures").rglob("*.png"))) == len(report.FIGURES) + 1
