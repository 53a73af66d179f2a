"""The notebooks as a user runs them: papermill from notebooks/ and from the repository root."""
import json
import os
import subprocess
import sys
from pathlib import Path

import papermill
import pytest

from lambdalib.config import RunConfig
from lambdalib.sweep import FAMILY_NOTEBOOK, NOTEBOOK_FIELDS, Grid, notebook_parameters, reproduce
from lambdalib.train import load_summary

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
TINY = dict(epochs=1, img_size=32, batch_size=8, workers=0, preset="fast")


def papermill_cli(*args, cwd):
    exe = Path(sys.executable).with_name("papermill")
    return subprocess.run([str(exe), *map(str, args), "-k", "python3"], cwd=cwd, capture_output=True, text=True,
                          timeout=600)


def tiny_params(data, results):
    params = [("data", data), ("results", results)] + list(TINY.items())
    return [x for name, value in params for x in ("-p", name, value)]


def test_family_notebooks_take_every_parameter_the_sweep_passes():
    for name in FAMILY_NOTEBOOK.values():
        declared = set(papermill.inspect_notebook(str(NOTEBOOKS / name)))
        assert set(NOTEBOOK_FIELDS) <= declared, name
    assert {"depth", "stage"} <= set(papermill.inspect_notebook(str(NOTEBOOKS / "03_lambda_rpe.ipynb")))


def test_notebooks_are_committed_without_outputs():
    for nb in NOTEBOOKS.glob("*.ipynb"):
        cells = json.loads(nb.read_text())["cells"]
        assert not any(c.get("outputs") or c.get("execution_count") for c in cells if c["cell_type"] == "code"), nb
        assert sum("parameters" in c.get("metadata", {}).get("tags", []) for c in cells) == 1, nb


def test_users_command_from_notebooks_folder(tiny_imagenette, tmp_path):
    """`papermill 03_lambda_rpe.ipynb out.ipynb -p noise 0.5`, typed inside notebooks/."""
    done = papermill_cli("03_lambda_rpe.ipynb", tmp_path / "out.ipynb", "-p", "noise", "0.5",
                         *tiny_params(tiny_imagenette, tmp_path / "results"), cwd=NOTEBOOKS)
    assert done.returncode == 0, done.stderr[-3000:]
    runs = list((tmp_path / "results" / "runs").iterdir())
    assert len(runs) == 1 and runs[0].name.startswith("LR18-L2-rpe_noise50_")
    assert load_summary(runs[0])["status"] == "complete"


def test_from_the_root_results_land_in_the_repository(tiny_imagenette, tmp_path, monkeypatch):
    """From the root with no results path: the repository's results/ (LAMBDALIB_HOME points at a copy here)."""
    home = tmp_path / "home"
    (home / "results").mkdir(parents=True)
    (home / "pyproject.toml").write_text('[project]\nname = "lambdalib"\n')
    env_nb = tmp_path / "04.ipynb"
    args = ["notebooks/04_lambda_lc.ipynb", env_nb, "-p", "stage", "3", "-p", "depth", "18",
            "-p", "data", tiny_imagenette, *[x for k, v in TINY.items() for x in ("-p", k, v)]]
    exe = Path(sys.executable).with_name("papermill")
    done = subprocess.run([str(exe), *map(str, args), "-k", "python3"], cwd=ROOT, capture_output=True, text=True,
                          timeout=600, env={**os.environ, "LAMBDALIB_HOME": str(home)})
    assert done.returncode == 0, done.stderr[-3000:]
    assert [p.name.split("_")[0] for p in (home / "results" / "runs").iterdir()] == ["LR18-L3-lc"]


@pytest.mark.parametrize("params,message", [(["-p", "noise", "0.3"], "noise=0.3"),
                                            (["-p", "depth", "50"], "depth=50")])
def test_bad_parameters_fail_early_with_a_clear_message(tmp_path, params, message):
    done = papermill_cli("02_baselines.ipynb", tmp_path / "out.ipynb", *params, "-p", "results", tmp_path,
                         cwd=NOTEBOOKS)
    assert done.returncode != 0
    assert message in done.stderr
    executed = json.loads((tmp_path / "out.ipynb").read_text())
    failed = [c for c in executed["cells"] if any(o.get("output_type") == "error" for o in c.get("outputs", []))]
    assert len(failed) == 1 and "RunConfig.from_params" in "".join(failed[0]["source"])  # the configuration cell
    training = next(c for c in executed["cells"] if "train.run(config)" in "".join(c["source"]))
    assert training.get("execution_count") is None  # nothing after it ran
    assert not (tmp_path / "runs").exists()


def test_data_and_report_notebooks(tiny_imagenette, tmp_path):
    done = papermill_cli("01_data.ipynb", tmp_path / "01.ipynb", "-p", "data", tiny_imagenette, cwd=NOTEBOOKS)
    assert done.returncode == 0, done.stderr[-3000:]
    config = RunConfig.from_params(model="R18", noise=0.25, data=str(tiny_imagenette), results=str(tmp_path), **TINY)
    from lambdalib.train import run

    run_dir = run(config, progress=False)
    done = papermill_cli("06_report.ipynb", tmp_path / "06.ipynb", "-p", "results", tmp_path, cwd=NOTEBOOKS)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "README.md").exists()
    # FullGrad on our checkpoint (offline: no pretrained weights are asked for)
    papermill.execute_notebook(str(NOTEBOOKS / "05_fullgrad.ipynb"), str(tmp_path / "05.ipynb"), kernel_name="python3",
                               parameters=dict(models=[], checkpoints=[str(run_dir)], out=str(tmp_path / "att.png")),
                               cwd=str(NOTEBOOKS), progress_bar=False)
    assert (tmp_path / "att.png").stat().st_size > 10_000


def test_sweep_through_notebooks_then_rerun_does_nothing(tiny_imagenette, tmp_path):
    grid = Grid(models=["R18", "LR18_L3(rpe)"], noise=[0.0], params=dict(data=str(tiny_imagenette),
                                                                        results=str(tmp_path), **TINY))
    assert notebook_parameters(grid.configs()[1])["stage"] == 3
    counts = reproduce(grid, progress=False)
    assert counts == dict(total=2, skipped=0, ran=2, diverged=0)
    executed = sorted(p.name for p in (tmp_path / "notebooks").glob("*.ipynb"))
    assert len(executed) == 3 and "06_report.ipynb" in executed  # two runs + the report
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "runs").rglob("*")}
    counts = reproduce(grid, progress=False, report=False)
    assert counts == dict(total=2, skipped=2, ran=0, diverged=0)
    assert stamps == {p: p.stat().st_mtime_ns for p in (tmp_path / "runs").rglob("*")}


def test_sweep_refuses_fields_the_notebooks_cannot_take_before_running_anything(tiny_imagenette, tmp_path):
    grid = Grid(models=["R18"], noise=[0.0], params=dict(data=str(tiny_imagenette), results=str(tmp_path),
                                                         weight_decay=1e-4, **TINY))
    with pytest.raises(ValueError, match=r"do not take \['weight_decay'\].*--inline"):
        reproduce(grid, progress=False)
    assert not (tmp_path / "runs").exists()
