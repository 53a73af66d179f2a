"""Submit the grid's runs to a cluster through submitit (SLURM, or local processes), one job per run.

    from lambdalib import cluster
    from lambdalib.sweep import Grid

    executor = cluster.make_executor("results/submitit", cluster="slurm", slurm_partition="gpu",
                                     timeout_min=12 * 60, mem_gb=32)
    jobs = cluster.submit(Grid(params=dict(data="imagenette2-160")).configs(), executor)
    for job in jobs:
        folder = job.result()                  # the run folder; a failed run raises its error here

What a job does: `lambdalib.train.run(config, progress=False)`, the same call as `lambdalib train`, so a
job writes the ordinary run record (results/runs/<run id>/) that `lambdalib report` reads. Runs that are
already finished (complete or diverged, by `lambdalib.sweep.is_finished`, the rule the sweep and the
trainer use) get no job; an interrupted one gets a job that resumes from its last.pt. A job that SLURM
stops at its time limit or preempts is checkpointed and requeued by submitit (`TrainJob.checkpoint`) and
resumes after the last finished epoch, so `timeout_min` only needs to cover one epoch, not a whole run.

The results folder (and a data folder given as a path) are made absolute before submitting: jobs may
start in another working directory. They must be on a file system the compute nodes share.

submitit is an optional dependency: `pip install submitit` (or the `cluster` extra).
"""
from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Any

from .config import RunConfig

INSTALL_HINT = "lambdalib.cluster needs submitit: pip install submitit (or pip install 'lambdalib[cluster]')"

# the defaults of make_executor: one GPU per run (a run is one process; DDP runs are for torchrun), a
# day per job (a requeued job resumes, so this bounds one stretch, not the run), CPU cores to decode with
DEFAULTS = dict(gpus_per_node=1, tasks_per_node=1, nodes=1, cpus_per_task=8, timeout_min=24 * 60, mem_gb=32)
# submitit takes these when the executor is made, not through update_parameters
CONSTRUCTOR_PARAMS = ("slurm_max_num_timeout", "slurm_python", "local_python")


def _submitit():
    try:
        import submitit
    except ImportError as err:
        raise ImportError(INSTALL_HINT) from err
    return submitit


class TrainJob:
    """What a job runs: train one config (resuming it when its folder holds an unfinished run).

    A top-level class, so submitit can pickle it. `checkpoint` is submitit's hook for a job that reaches
    its time limit or is preempted: it resubmits the same config, which resumes from last.pt.
    """

    def __call__(self, config: RunConfig) -> str:
        from . import train

        return str(train.run(config, progress=False))

    def checkpoint(self, config: RunConfig) -> Any:
        return _submitit().helpers.DelayedSubmission(TrainJob(), config)


def _portable(config: RunConfig) -> RunConfig:
    """The config with the paths a job needs made absolute (the job may start elsewhere)."""
    results = str(config.results_dir().expanduser().resolve())
    data = config.data
    if Path(data).expanduser().exists():
        data = str(Path(data).expanduser().resolve())
    return replace(config, results=results, data=data)


def pending(configs: list[RunConfig]) -> list[RunConfig]:
    """The configs that still need training: not finished, each run folder once (in the given order).

    Raises ValueError, before anything is submitted, when a config's folder holds another experiment.
    """
    from .sweep import is_finished

    todo, seen = [], set()
    for config in configs:
        config.validate()
        folder = config.run_dir().resolve()
        if folder in seen or is_finished(config):
            continue
        seen.add(folder)
        todo.append(config)
    return todo


def submit(configs: list[RunConfig], executor) -> list:
    """Submit one job per unfinished config (finished ones are skipped); returns the submitit jobs.

    Every config is checked first (a folder holding another experiment raises before any job exists).
    The jobs go in one batch (a SLURM job array; `slurm_array_parallelism` caps how many run at once).
    `job.result()` waits and returns the run folder, or raises the run's error (a FailedJobError whose
    message ends with the job's traceback); `job.paths.stdout` / `stderr` hold its log.
    """
    todo = [_portable(config) for config in pending(configs)]
    if not todo:
        return []
    job = TrainJob()
    with executor.batch():
        jobs = [executor.submit(job, config) for config in todo]
    return jobs


def make_executor(folder: str | os.PathLike, cluster: str | None = None, **params: Any):
    """A `submitit.AutoExecutor` writing its job files and logs to `folder`, with lambdalib's defaults.

    cluster: 'slurm', 'local' (jobs as processes on this machine: tests, a workstation), 'debug' (in this
    process), or None: SLURM where `sbatch` exists, else local. params: submitit's parameters, generic
    ones (timeout_min, gpus_per_node, cpus_per_task, mem_gb, nodes, tasks_per_node, name) and
    cluster-prefixed ones (slurm_partition, slurm_account, slurm_qos, slurm_constraint,
    slurm_array_parallelism, slurm_additional_parameters, ...); prefixed parameters of another cluster
    are ignored; slurm_max_num_timeout (how often a job that hits its time limit is requeued; submitit's
    default 3) and slurm_python go to the executor's constructor. Defaults: DEFAULTS (1 GPU, 8 cores,
    32 GB, 24 h) and name='lambdalib'; on a local executor the GPUs default to those this machine has (at
    most 1), no cores or memory are reserved, and every submitted job starts at once (for one machine,
    `lambdalib reproduce --jobs N` paces them).

    SLURM example (one GPU per run, at most 8 runs at once, two hours per stretch: a job that reaches
    it is requeued and resumes after its last finished epoch):

        executor = make_executor("results/submitit", cluster="slurm", slurm_partition="gpu",
                                 slurm_account="my-project", slurm_array_parallelism=8, timeout_min=120,
                                 slurm_additional_parameters={"constraint": "a100"})
        jobs = submit(Grid().configs(), executor)     # `squeue --me` shows them; job.result() waits
    """
    submitit = _submitit()
    at_start = {k: params.pop(k) for k in list(params) if k in CONSTRUCTOR_PARAMS}
    executor = submitit.AutoExecutor(folder=str(folder), cluster=cluster, **at_start)
    settings: dict[str, Any] = dict(DEFAULTS, name="lambdalib")
    if executor.cluster in ("local", "debug"):
        settings.pop("cpus_per_task")
        settings.pop("mem_gb")
        settings["gpus_per_node"] = min(1, _cuda_count())
    settings.update(params)
    executor.update_parameters(**settings)
    return executor


def _cuda_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0
