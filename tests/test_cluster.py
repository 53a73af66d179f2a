"""lambdalib.cluster: the grid through submitit's local executor (jobs are real processes, as on SLURM)."""
import os

import pytest

from lambdalib import cluster  # importable without submitit: it is imported when an executor is made
from lambdalib.config import RunConfig
from lambdalib.record import load_summary, read_history

try:
    import submitit
except ImportError:  # the optional `cluster` extra
    submitit = None

needs_submitit = pytest.mark.skipif(submitit is None, reason="submitit is not installed (pip install submitit)")


def tiny(results, **overrides) -> RunConfig:
    params = dict(model="R18", epochs=1, img_size=32, train_per_class=4, val_per_class=2, data="embedded",
                  preset="fast", checkpoints="none", results=str(results))
    return RunConfig.from_params(**{**params, **overrides})


@pytest.fixture
def executor(tmp_path, monkeypatch):
    monkeypatch.setenv("LAMBDALIB_CACHE_DIR", str(tmp_path / "cache"))  # jobs inherit the environment
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # two jobs at once on a small machine
    return cluster.make_executor(tmp_path / "submitit", cluster="local", timeout_min=5)


@pytest.mark.slow
@needs_submitit
def test_submit_runs_unfinished_configs_then_skips_them(tmp_path, executor):
    configs = [tiny(tmp_path / "results", seed=0), tiny(tmp_path / "results", seed=1)]
    jobs = cluster.submit(configs + configs[:1], executor)  # a repeated config gets one job
    assert len(jobs) == 2
    folders = sorted(job.result() for job in jobs)  # waits; raises if a job failed
    assert folders == sorted(str(c.run_dir().resolve()) for c in configs)
    for config in configs:
        summary = load_summary(config.run_dir())
        assert summary["status"] == "complete"
        assert len(read_history(config.run_dir())) == 1
        assert summary["train_images"] == 40 and summary["val_images"] == 20
    assert cluster.submit(configs, executor) == []  # finished: no job
    assert cluster.pending(configs) == []


@pytest.mark.slow
@needs_submitit
def test_failing_job_reports_its_error(tmp_path, executor):
    bad = tiny(tmp_path / "results", data=str(tmp_path / "no-such-data"))
    jobs = cluster.submit([bad], executor)
    assert len(jobs) == 1
    with pytest.raises(submitit.core.utils.FailedJobError, match="no-such-data"):
        jobs[0].result()
    assert isinstance(jobs[0].exception(), submitit.core.utils.FailedJobError)
    assert not bad.run_dir().exists()  # a start that failed leaves no run folder


@needs_submitit
def test_make_executor_defaults_and_passthrough(tmp_path, monkeypatch):
    local = cluster.make_executor(tmp_path / "a", cluster="local", slurm_partition="gpu")  # slurm_*: ignored here
    assert local.cluster == "local"
    assert local._executor.parameters["timeout_min"] == cluster.DEFAULTS["timeout_min"]
    # submitit makes a SLURM executor only where `srun` exists: a stand-in one (nothing is submitted)
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "srun").write_text("#!/bin/sh\nexit 1\n")
    (tmp_path / "bin" / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    slurm = cluster.make_executor(tmp_path / "b", cluster="slurm", slurm_partition="gpu", timeout_min=120,
                                  slurm_max_num_timeout=10)
    params = slurm._executor.parameters
    assert params["partition"] == "gpu" and params["time"] == 120
    assert params["gpus_per_node"] == 1 and params["cpus_per_task"] == cluster.DEFAULTS["cpus_per_task"]
    assert slurm._executor.max_num_timeout == 10


def test_missing_submitit_says_how_to_install(monkeypatch):
    import builtins

    real = builtins.__import__

    def no_submitit(name, *args, **kwargs):
        if name == "submitit":
            raise ImportError("No module named 'submitit'")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_submitit)
    with pytest.raises(ImportError, match="pip install submitit"):
        cluster.make_executor("unused")


@needs_submitit
def test_timed_out_job_is_resubmitted_with_its_config(tmp_path):
    """submitit calls `checkpoint` when SLURM stops a job at its time limit; the requeued job trains the same
    config, which resumes from its last.pt."""
    config = tiny(tmp_path)
    again = cluster.TrainJob().checkpoint(config)
    assert isinstance(again, submitit.helpers.DelayedSubmission)
    assert isinstance(again.function, cluster.TrainJob) and again.args == (config,)
