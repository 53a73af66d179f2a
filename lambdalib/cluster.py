"""Submit the grid's runs to a cluster through submitit (SLURM, or local processes), one job per run.

    from lambdalib.sweep import Grid

    executor = cluster.make_executor("results/submitit", cluster="slurm", slurm_partition="gpu", mem_gb=32)
    for job in cluster.submit(Grid(params=dict(data="imagenette2-160")).configs(), executor):
        folder = job.result()  # the run folder; a failed run raises its error here

A job runs `lambdalib.train.run(config)`, as `lambdalib train` does, writing the ordinary run record. Finished runs
get no job; an interrupted one resumes from its last.pt, and so does a job SLURM stops at its time limit or
preempts (requeued: `TrainJob.checkpoint`), so a run may span time limits: submitit requeues a job that times out
3 times (`slurm_max_num_timeout` sets how many). Paths are made absolute and must be on a file system the compute
nodes share. submitit is optional: `pip install submitit`.
"""
from __future__ import annotations

import os
from typing import Any

from .config import RunConfig

# the defaults of make_executor: one GPU per run (a run is one process; DDP runs are for torchrun), a
# day per job (a requeued job resumes: this bounds one stretch of up to 4), CPU cores to decode with
DEFAULTS = dict(gpus_per_node=1, tasks_per_node=1, nodes=1, cpus_per_task=8, timeout_min=24 * 60, mem_gb=32)
# submitit takes these when the executor is made, not through update_parameters
CONSTRUCTOR_PARAMS = ("slurm_max_num_timeout", "slurm_python", "local_python")


def _submitit():
    try:
        import submitit
    except ImportError as err:
        raise ImportError("lambdalib.cluster needs submitit: pip install submitit") from err
    return submitit


class TrainJob:
    """What a job runs: train one config (resuming an unfinished run). A top-level class, so submitit can pickle
    it; `checkpoint`, submitit's hook for a job at its time limit or preempted, resubmits the same config."""

    def __call__(self, config: RunConfig) -> str:
        from . import train

        return str(train.run(config, progress=False))

    def checkpoint(self, config: RunConfig) -> Any:
        return _submitit().helpers.DelayedSubmission(TrainJob(), config)


def pending(configs: list[RunConfig]) -> list[RunConfig]:
    """The configs that still need training: not finished, each run folder once (in the given order). Raises
    ValueError, before anything is submitted, when a config's folder holds another experiment."""
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
    """Submit one job per unfinished config, in one batch (a SLURM job array: `slurm_array_parallelism` caps how
    many run at once); returns the submitit jobs. `job.result()` waits and returns the run folder, or raises the
    run's error; `job.paths.stdout` / `stderr` hold its log."""
    todo = [config.portable() for config in pending(configs)]
    if not todo:
        return []
    with executor.batch():  # the jobs are submitted when the block ends
        return [executor.submit(TrainJob(), config) for config in todo]


def make_executor(folder: str | os.PathLike, cluster: str | None = None, **params: Any):
    """A `submitit.AutoExecutor` writing its job files and logs to `folder`, with DEFAULTS and name='lambdalib'.

    cluster: 'slurm', 'local', 'debug' (in this process), or None: SLURM where `sbatch` exists, else local. params:
    submitit's, generic (timeout_min, mem_gb, ...) and cluster-prefixed (slurm_partition, slurm_array_parallelism,
    ...; another cluster's are ignored); CONSTRUCTOR_PARAMS (slurm_max_num_timeout) go to the executor's
    constructor. A local executor reserves no cores or memory, takes at most 1 GPU and starts every job at once
    (on one machine, `lambdalib reproduce --jobs N` paces them).
    """
    submitit = _submitit()
    at_start = {k: params.pop(k) for k in list(params) if k in CONSTRUCTOR_PARAMS}
    executor = submitit.AutoExecutor(folder=str(folder), cluster=cluster, **at_start)
    settings: dict[str, Any] = dict(DEFAULTS, name="lambdalib")
    if executor.cluster in ("local", "debug"):
        from .sweep import torch_cuda_count

        del settings["cpus_per_task"], settings["mem_gb"]
        settings["gpus_per_node"] = min(1, torch_cuda_count())
    settings.update(params)
    executor.update_parameters(**settings)
    return executor
