import subprocess
import sys
from types import SimpleNamespace

import pytest

from lambdalib.cli import main


def test_help_and_version(capsys):
    assert main([]) == 0
    assert "models" in capsys.readouterr().out


def test_models_table(capsys):
    assert main(["models", "--img-size", "64"]) == 0
    out = capsys.readouterr().out
    assert "LR34_L3(lc)" in out and "11,181,642" in out  # R18 params do not depend on image size
    assert out.count("\n") >= 12


def test_models_table_refuses_a_bad_size_before_printing_anything(capsys):
    """The table's header is printed only once its rows exist: a refused size leaves stdout empty."""
    assert main(["models", "--img-size", "-1"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and "positive image size" in err


def test_console_script_runs():
    done = subprocess.run([sys.executable, "-m", "lambdalib.cli", "--help"], capture_output=True, text=True)
    assert done.returncode == 0 and "lambdalib" in done.stdout


def test_train_command_writes_a_record_and_rejects_bad_values(tiny_imagenette, tmp_path, capsys):
    args = ["train", "--model", "LR18_L3(rpe)", "--noise", "0.05", "--data", str(tiny_imagenette), "--results",
            str(tmp_path), "--epochs", "1", "--img-size", "32", "--batch-size", "8", "--workers", "0", "--no-progress"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "LR18_L3(rpe): complete" in out and f"run record: {tmp_path}" in out
    assert main(args[:3] + ["--noise", "0.3"]) == 2
    assert "noise=0.3" in capsys.readouterr().err
    assert main(["train", "--model", "LR99"]) == 2
    assert "Unknown model 'LR99'" in capsys.readouterr().err


def test_attention_command_offline_says_what_is_missing(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("LAMBDALIB_HOME", str(tmp_path))  # no run records to fall back on
    assert main(["attention", "resnet18", "--out", str(tmp_path / "a.png")]) == 1
    assert "Nothing to show" in capsys.readouterr().out
    assert not (tmp_path / "a.png").exists()


def test_report_of_a_mistyped_results_folder_says_so_and_creates_nothing(tmp_path, capsys):
    assert main(["report", "--results", str(tmp_path / "reslts")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "reslts" in err and "no run records" in err.lower()
    assert not (tmp_path / "reslts").exists()


def test_data_command_rejects_bad_values_before_printing(capsys):
    assert main(["data", "--samples", "0"]) == 2
    captured = capsys.readouterr()
    assert "--samples 0" in captured.err and captured.out == ""
    assert main(["data", "--noise", "0.3"]) == 2
    captured = capsys.readouterr()
    assert "noise=0.3" in captured.err and "synthetic" not in captured.err and captured.out == ""


def test_demo_trains_into_its_own_ignored_folder(monkeypatch, tmp_path, capsys):
    """The newcomer's main command never finds the committed records 'already finished' nor rewrites them."""
    import lambdalib.sweep as sweep
    from lambdalib.paths import results_dir

    seen = {}

    def fake_reproduce(grid, **kwargs):
        seen["results"] = {c.results for g in grid for c in g.configs()}
        return dict(total=1, skipped=0, ran=1, diverged=0, failed=0, failures=[])

    monkeypatch.setattr(sweep, "reproduce", fake_reproduce)
    assert main(["demo", "--models", "R18", "--noise", "0"]) == 0
    assert seen["results"] == {str(results_dir() / "demo")}
    assert f"report: {results_dir() / 'demo' / 'README.md'}" in capsys.readouterr().out
    ignored = subprocess.run(["git", "check-ignore", "-q", str(results_dir() / "demo" / "README.md")],
                             cwd=results_dir().parent)
    assert ignored.returncode == 0


def test_study_runs_every_cell_seed_by_seed_with_lc_unlike_rpe(monkeypatch, tmp_path, capsys):
    """`reproduce --study`: the committed study's grid, in process, its first seed everywhere before any
    second; every lc model's scope is smaller than its map, so lc never equals its rpe twin; under the report's
    recipe each Lambda-ResNet is trained with each lambda layer, the ResNet once."""
    import lambdalib.sweep as sweep
    from lambdalib import models, registry

    order = []
    monkeypatch.setattr(sweep, "_run_one", lambda config, params, inline: order.append((config, inline)))
    monkeypatch.setattr(sweep.runs, "read_record", lambda run_dir: SimpleNamespace(summary={"status": "complete"}))
    monkeypatch.setattr("lambdalib.report.build", lambda results: order.append(("report", results)))
    assert main(["reproduce", "--study", "--results", str(tmp_path)]) == 0
    assert order.pop() == ("report", tmp_path)  # the report, once, after the last run
    configs = [c for c, _ in order]
    assert len(configs) == 61 and all(inline for _, inline in order)
    assert [c.seed for c in configs] == sorted(c.seed for c in configs)
    assert {c.results for c in configs} == {str(tmp_path)} and {c.preset for c in configs} == {"fast", "report"}
    assert {c.noise for c in configs if c.preset == "fast"} == {0.0, 0.5}
    assert {c.img_size for c in configs} == {64} and len({c.run_id for c in configs}) == 61
    report = [registry.run_label(c.model, c.lambda_layer) for c in configs if c.preset == "report" and c.seed == 0]
    assert sorted(report) == sorted(["R18", "LR18_L3x4(rpe)", *(f"LR18_L2({p}){impl}" for p in ("rpe", "lc")
                                                                for impl in ("", "[ours-n01]", "[lucidrains]"))])
    assert sum(c.model == "LR18_L3x4(rpe)" for c in configs) == 10  # both presets, 5 seeds
    lc = [c for c in configs if c.position() == "lc" and c.lambda_layer != "lucidrains"]
    assert lc and all(c.identity()["lc_scope"] == 5 for c in lc)
    for config in lc[:1]:
        assert models.scope_covers_map(models.create(config.model, num_classes=10, **config.model_kwargs())) is None
    assert "61 runs: 0 already finished, 61 run now" in capsys.readouterr().out


def test_reproduce_submits_the_grid_through_submitit(monkeypatch, tmp_path, capsys):
    """`--submitit`: the same grid, handed to lambdalib.cluster instead of run here (cluster's own tests run
    real jobs with submitit's local executor)."""
    from lambdalib import cluster

    seen = {}

    class Job:
        job_id = "42"

    class Executor:
        cluster = "slurm"

    def fake_executor(folder, cluster=None, **params):
        seen.update(folder=folder, cluster=cluster, params=params)
        return Executor()

    monkeypatch.setattr(cluster, "make_executor", fake_executor)
    monkeypatch.setattr(cluster, "submit", lambda configs, executor: seen.setdefault("configs", configs) and [Job()])
    assert main(["reproduce", "--models", "R18,LR18_L2(rpe)", "--noise", "0,0.5", "--results", str(tmp_path),
                 "--submitit", str(tmp_path / "jobs"), "--cluster", "slurm", "--slurm-partition", "gpu"]) == 0
    assert seen["folder"] == str(tmp_path / "jobs") and seen["cluster"] == "slurm"
    assert seen["params"] == {"slurm_partition": "gpu"} and len(seen["configs"]) == 4
    out = capsys.readouterr().out
    assert "4 runs: 3 already finished, 1 submitted (slurm" in out and "job 42" in out
    assert f"lambdalib report --results {tmp_path}" in out


def _train_args(data, results):
    return ["train", "--model", "R18", "--data", str(data), "--results", str(results), "--epochs", "1",
            "--img-size", "32", "--batch-size", "8", "--workers", "0", "--preset", "fast", "--no-progress"]


def test_reproduce_reports_an_unreadable_summary_as_a_failure_not_as_finished(tiny_imagenette, tmp_path, monkeypatch):
    """A damaged summary.json is the user's to look at: the grid names it among the failures, never skips it."""
    from lambdalib import sweep

    monkeypatch.setattr(sweep, "_run_one", lambda *a, **k: pytest.fail("a run with a damaged record was trained"))
    (tmp_path / "runs" / "mine").mkdir(parents=True)
    (tmp_path / "runs" / "mine" / "summary.json").write_text("{not json")
    grid = sweep.Grid(models=["R18"], noise=[0.0], params=dict(data=str(tiny_imagenette), results=str(tmp_path),
                                                               run_name="mine"))
    counts = sweep.reproduce(grid, inline=True, progress=False, report=False)
    assert (counts["failed"], counts["skipped"], counts["ran"]) == (1, 0, 0)
    (failure,) = counts["failures"]
    assert failure.startswith("mine: ") and "summary.json" in failure and "not a readable summary" in failure


def test_reproduce_jobs_count_a_child_that_cannot_find_its_data_as_failed(tmp_path):
    """With --jobs the runs are child processes: a child's one-line error must reach the parent as a failure."""
    from lambdalib import sweep

    grid = sweep.Grid(models=["R18"], noise=[0.0, 0.5], params=dict(data=str(tmp_path / "nowhere"), epochs=1,
                                                                     results=str(tmp_path / "results")))
    counts = sweep.reproduce(grid, inline=True, jobs=2, progress=False, report=False)
    assert (counts["failed"], counts["ran"]) == (2, 0)
    assert all("nowhere" in f and "no such folder" in f for f in counts["failures"])


def test_a_jobs_child_that_crashes_is_reported_by_its_error_not_the_traceback_header(tmp_path, monkeypatch):
    from lambdalib import sweep

    traceback = ("Traceback (most recent call last):\n  File \"lambdalib/train.py\", line 1, in run\n"
                 "ZeroDivisionError: division by zero\n")
    monkeypatch.setattr(sweep.subprocess, "run",
                        lambda *a, **k: SimpleNamespace(returncode=1, stdout="", stderr=traceback))
    monkeypatch.setattr(sweep, "warm_caches", lambda configs: None)
    grid = sweep.Grid(models=["R18"], noise=[0.0, 0.5], params=dict(results=str(tmp_path)))
    counts = sweep.reproduce(grid, inline=True, jobs=2, progress=False, report=False)
    assert counts["failed"] == 2
    assert all(f.endswith(": ZeroDivisionError: division by zero") for f in counts["failures"])


def test_reproduce_exits_1_when_a_run_failed(tmp_path, capsys):
    assert main(["reproduce", "--inline", "--models", "R18", "--noise", "0", "--data", str(tmp_path / "nowhere"),
                 "--results", str(tmp_path / "results"), "--epochs", "1"]) == 1
    captured = capsys.readouterr()
    assert "1 run: 0 already finished, 0 run now (0 diverged), 1 failed" in captured.out
    assert "failed: " in captured.err and "no such folder" in captured.err


def test_ctrl_c_during_reproduce_exits_130_and_says_how_to_go_on(tmp_path, monkeypatch, capsys):
    import lambdalib.sweep as sweep

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(sweep, "reproduce", interrupted)
    assert main(["reproduce", "--inline", "--models", "R18", "--noise", "0", "--results", str(tmp_path)]) == 130
    assert "run the same command again" in capsys.readouterr().out


def test_ctrl_c_during_train_exits_130(tmp_path, monkeypatch, capsys):
    from lambdalib import train

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(train, "run", interrupted)
    assert main(_train_args(tmp_path / "data", tmp_path / "results")) == 130
    assert "complete" not in capsys.readouterr().out


def test_a_runtime_error_not_about_memory_is_not_called_out_of_memory(tmp_path, monkeypatch, capsys):
    """Only memory errors become the one-line 'out of memory' advice; a bug keeps its traceback."""
    from lambdalib import train

    def shapes(*args, **kwargs):
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied (8x512 and 256x10)")

    monkeypatch.setattr(train, "run", shapes)
    with pytest.raises(RuntimeError, match="mat1 and mat2 shapes"):
        main(_train_args(tmp_path / "data", tmp_path / "results"))
    assert "out of memory" not in capsys.readouterr().err


def test_reproduce_runs_one_job_per_gpu_one_without_and_what_jobs_says(tmp_path, monkeypatch):
    from lambdalib import sweep

    seen = []
    monkeypatch.setattr(sweep, "reproduce", lambda grids, inline, jobs: seen.append(jobs) or dict(
        total=0, skipped=0, ran=0, diverged=0, failed=0, failures=[]))
    argv = ["reproduce", "--inline", "--models", "R18", "--noise", "0", "--results", str(tmp_path)]
    for gpus, extra, expected in ((0, [], 1), (2, [], 2), (0, ["--jobs", "3"], 3)):
        monkeypatch.setattr(sweep, "torch_cuda_count", lambda gpus=gpus: gpus)
        assert main(argv + extra) == 0
        assert seen[-1] == expected, (gpus, extra)
