"""The report's grid, run through the notebooks: skip finished runs, resume unfinished ones, then report.

    lambdalib reproduce                 # 2 baselines + 8 Lambda-ResNets x noise 0/5/25/50 % = 40 runs
    lambdalib reproduce --quick         # every model and noise level, tiny epochs/images, embedded data
    lambdalib reproduce --study         # the committed results/: the report's claims tested on this CPU

Each run is one notebook (02 baselines, 03 rpe, 04 lc) executed by papermill, its executed copy kept under
results/notebooks/; a finished run (complete or diverged) is skipped, an interrupted one resumes from its last.pt.
"""
from __future__ import annotations

import json
import logging
import os
import queue
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from . import registry, runs, train
from .config import PROFILES, RunConfig
from .notebook import notebook_fields
from .paths import project_root
from .record import FINISHED
from .registry import LAMBDA_LAYERS, SPECS, resolve_name

log = logging.getLogger(__name__)

REPORT_NOISE = (0.0, 0.05, 0.25, 0.5)
REPORT_NOTEBOOK = "06_report.ipynb"


def study_grids() -> list["Grid"]:
    """report preset (lr 1e-5, the published recipe): R18 against LR18_L2 (rpe) and (lc), each with our layer, ours
    with an N(0, 1) position table and lucidrains' (the report's own implementation), for the train-loss gap;
    fast preset (lr 1e-3): the R18 / LR18_L2 pairs of the overfitting, oscillation, noise and time claims at noise 0
    and 50 %, with 5 seeds (the seed spread is what limits those verdicts); both presets: LR18_L3x4(rpe), four
    lambda layers, 5 seeds, for "more than two lambda layers ... gradient explosion" (a share: 0 of 6 is the
    fewest that excludes "more often than not")."""
    report, fast = (dict(PROFILES["study"], preset=preset) for preset in ("report", "fast"))
    return [Grid(models=["R18", "LR18_L2(rpe)", "LR18_L2(lc)"], noise=[0.0], seeds=[0, 1, 2],
                 impls=list(LAMBDA_LAYERS), params=report),
            Grid(models=["R18", "LR18_L2(rpe)", "LR18_L2(lc)"], noise=[0.0, 0.5], seeds=[0, 1, 2, 3, 4], params=fast),
            *(Grid(models=["LR18_L3x4(rpe)"], noise=[0.0], seeds=[0, 1, 2, 3, 4], params=p) for p in (report, fast))]


@dataclass
class Grid:
    models: list[str] = field(default_factory=lambda: [SPECS[name].label for name in registry.REPORT_MODELS])
    noise: list[float] = field(default_factory=lambda: list(REPORT_NOISE))
    seeds: list[int] = field(default_factory=lambda: [0])
    params: dict[str, Any] = field(default_factory=dict)  # shared RunConfig fields (epochs, data, ...)
    impls: list[str] | None = None  # each Lambda-ResNet once per lambda layer implementation (None: params' one)

    def configs(self) -> list[RunConfig]:
        def layers(model: str) -> list[str | None]:
            spec = SPECS.get(resolve_name(model))
            return self.impls if self.impls and spec and spec.position else [None]

        return [RunConfig.from_params(model=m, noise=n, seed=s, **self.params,
                                      **({"lambda_layer": impl} if impl else {}))
                for m in self.models for impl in layers(m) for n in self.noise for s in self.seeds]


NOTEBOOK_FIELDS = notebook_fields()  # every RunConfig field but the model, generated into the notebooks


def notebook_parameters(config: RunConfig) -> dict[str, Any]:
    """The papermill parameters that make a family notebook train exactly `config` (paths absolute: the notebook
    runs in notebooks/)."""
    spec, portable = SPECS[resolve_name(config.model)], config.portable()
    params = {name: getattr(portable, name) for name in NOTEBOOK_FIELDS}
    params["depth"] = spec.depth
    if spec.stage is not None:  # the lambda notebooks' own parameters (the baselines' takes neither)
        params["stage"], params["lambda_layers"] = spec.stage, spec.lambda_layers
    return params


def is_finished(config: RunConfig) -> bool:
    """Finished by the same rule the trainer uses (train.existing_record: the same experiment identity,
    a finished status); a folder holding another experiment raises instead of being skipped."""
    summary = train.existing_record(config)
    return bool(summary) and summary["status"] in FINISHED


def run_notebook(notebook: Path, output: Path, parameters: dict[str, Any]) -> None:
    import papermill

    output.parent.mkdir(parents=True, exist_ok=True)
    papermill.execute_notebook(str(notebook), str(output), parameters=parameters, cwd=str(notebook.parent),
                               progress_bar=False, kernel_name="python3")


def _run_one(config: RunConfig, params: dict | None, inline: bool) -> None:
    """Train one config of the grid, in this process: inline, or through its notebook."""
    if inline:
        train.run(config, progress=False)
    else:
        notebook = project_root() / "notebooks" / registry.family_of(config.model).notebook
        run_notebook(notebook, config.results_dir() / "notebooks" / f"{config.run_id}.ipynb", params)


def visible_gpus() -> list[str]:
    """The GPUs this process may use, as CUDA_VISIBLE_DEVICES names them (SLURM, a shared box) or by index."""
    inherited = os.environ.get("CUDA_VISIBLE_DEVICES")
    if inherited is not None:
        return [g.strip() for g in inherited.split(",") if g.strip() and g.strip() != "-1"]
    return [str(i) for i in range(torch_cuda_count())]


def _run_in_subprocess(config: RunConfig, inline: bool, slot: int, jobs: int) -> None:
    """One run in its own process, pinned to GPU `slot` of the visible ones (or to its share of the CPU cores)."""
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // jobs))}
    gpus = visible_gpus()
    if gpus:
        env["CUDA_VISIBLE_DEVICES"] = gpus[slot % len(gpus)]
    done = subprocess.run([sys.executable, "-m", "lambdalib.sweep", json.dumps(config.to_dict()),
                           "inline" if inline else "notebook"], env=env, capture_output=True, text=True)
    if done.returncode:
        lines = (done.stderr.strip() or done.stdout.strip() or f"exit status {done.returncode}").splitlines()
        raise RuntimeError(lines[-1])


def torch_cuda_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def warm_caches(configs: list[RunConfig]) -> None:
    """Decode each (data, image size) of the grid once, here, before `jobs` processes would each decode the
    same images at once (every run then opens the finished cache)."""
    from . import cache, data, download

    for data_arg, img_size in dict.fromkeys((c.data, c.img_size) for c in configs if c.loader != "workers"):
        try:
            root = download.resolve_root(data_arg)
            splits = [data.NoisyImagenette(root, split, on_error="skip") for split in ("train", "val")]
            cache.cached_loaders(*splits, img_size=img_size, batch_size=2, progress=False)
        except (ValueError, OSError) as err:  # each run then meets (and reports) the same problem itself
            log.warning("could not decode %s at %s px ahead of the runs: %s", data_arg, img_size, err)


def reproduce(grid: Grid | list[Grid], *, inline: bool = False, report: bool = True, progress: bool = True,
              jobs: int = 1) -> dict[str, int]:
    """Run every config of the grid that is not finished, then build the report; returns counts of total /
    skipped / ran / diverged / failed runs and the failures (one failed or busy run does not stop the grid).

    inline: train in this process, not through the notebooks (no kernel start-up per run). jobs > 1: that many
    runs at once, each in its own process on its own GPU or share of the cores (each trainer locks its folder).
    """
    grids = grid if isinstance(grid, list) else [grid]
    # seed-major: every cell gets its first seed before any gets its second, so a grid stopped early
    # still covers every cell (and with two seeds, a spread)
    configs = sorted((c for g in grids for c in g.configs()), key=lambda c: c.seed)
    # every notebook's parameters before anything runs: a config the notebooks cannot take fails now
    parameters = [None if inline else notebook_parameters(config) for config in configs]
    counts: dict[str, Any] = dict(total=len(configs), skipped=0, ran=0, diverged=0, failed=0)
    failures: list[str] = []
    todo = []
    for config, params in zip(configs, parameters):
        try:
            if is_finished(config):
                counts["skipped"] += 1
            else:
                todo.append((config, params))
        except Exception as err:  # noqa: BLE001  (a folder of another experiment, an unreadable record)
            failures.append(f"{config.run_id}: {err}")
    bar = tqdm(total=len(todo), desc="reproduce", unit="run", disable=not progress)

    free_slots: queue.Queue = queue.Queue()  # a run takes a GPU (or core share) when a worker frees one
    for slot in range(jobs):
        free_slots.put(slot)

    def one(config: RunConfig, params) -> None:
        start = time.perf_counter()
        slot = free_slots.get()
        try:
            if jobs > 1:
                _run_in_subprocess(config, inline, slot, jobs)
            else:
                _run_one(config, params, inline)
        except Exception as err:  # noqa: BLE001  (papermill, data and record errors alike)
            reason = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
            failures.append(f"{config.run_id}: {reason}")
            bar.write(f"{config.run_id}: FAILED: {reason}")
        else:
            rec = runs.read_record(config.run_dir())
            summary = rec.summary if rec else {}
            counts["ran"] += 1
            counts["diverged"] += summary.get("status") == "diverged"
            bar.write(f"{config.run_id}: {summary.get('status')} in {time.perf_counter() - start:.0f}s")
        finally:
            free_slots.put(slot)
        bar.update(1)

    if jobs > 1:
        warm_caches([c for c, _ in todo])
        with ThreadPoolExecutor(max_workers=jobs) as pool:  # threads only wait on their subprocess
            for future in [pool.submit(one, c, p) for c, p in todo]:
                future.result()
    else:
        for config, params in todo:
            bar.set_postfix_str(config.run_id, refresh=True)
            one(config, params)
    bar.close()
    counts.update(failed=len(failures), failures=failures)
    if report:
        results = configs[0].results_dir() if configs else None
        if inline:
            from . import report as report_lib

            report_lib.build(results)
        else:
            nb = project_root() / "notebooks" / REPORT_NOTEBOOK
            run_notebook(nb, (results or Path("results")) / "notebooks" / REPORT_NOTEBOOK,
                         dict(results=str(results.resolve()) if results else ""))  # it runs in notebooks/
    return counts


if __name__ == "__main__":  # one run of a --jobs grid: python -m lambdalib.sweep '<config json>' inline|notebook
    _config = RunConfig.from_params(**json.loads(sys.argv[1]))
    _inline = sys.argv[2] == "inline"
    try:
        _run_one(_config, None if _inline else notebook_parameters(_config), _inline)
    except (ValueError, OSError) as _err:
        print(f"error: {_err}", file=sys.stderr)
        sys.exit(2)
