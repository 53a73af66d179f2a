"""The notebooks as a user runs them: papermill from notebooks/ and from the repository root; and as
scripts/make_notebooks.py writes them (parameters = RunConfig's defaults, every injected name checked)."""
import ast
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import papermill
import pytest
from papermill.iorw import load_notebook_node
from papermill.parameterize import parameterize_notebook

from lambdalib import registry
from lambdalib.config import RunConfig
from lambdalib.notebook import notebook_fields, preset_fields
from lambdalib.record import load_summary
from lambdalib.sweep import NOTEBOOK_FIELDS, Grid, notebook_parameters, reproduce

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
TINY = dict(epochs=1, img_size=32, batch_size=8, workers=0, preset="fast")


def load_generator():
    """scripts/make_notebooks.py as a module."""
    spec = importlib.util.spec_from_file_location("make_notebooks", ROOT / "scripts" / "make_notebooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def papermill_cli(*args, cwd):
    exe = Path(sys.executable).with_name("papermill")
    return subprocess.run([str(exe), *map(str, args), "-k", "python3"], cwd=cwd, capture_output=True, text=True,
                          timeout=600)


def tiny_params(data, results):
    params = [("data", data), ("results", results)] + list(TINY.items())
    return [x for name, value in params for x in ("-p", name, value)]


def outputs(path: Path) -> list[dict]:
    """Every output of an executed notebook, in order."""
    return [o for c in json.loads(Path(path).read_text())["cells"] for o in c.get("outputs", [])]


def notebook_defaults(name: str) -> dict:
    """A notebook's parameters as papermill reads them: {name: default value}."""
    return {k: ast.literal_eval(p["default"]) for k, p in papermill.inspect_notebook(str(NOTEBOOKS / name)).items()}


# ------------------------------------------------------------------- the notebooks as generated
def test_committed_notebooks_are_the_generators_output():
    """A RunConfig change that is not regenerated (python scripts/make_notebooks.py) fails here."""
    generated = load_generator().build()
    assert sorted(generated) == sorted(p.name for p in NOTEBOOKS.glob("*.ipynb"))
    for name, nb in generated.items():
        assert json.loads(nbformat.writes(nb)) == json.loads((NOTEBOOKS / name).read_text()), \
            f"{name} is stale: run python scripts/make_notebooks.py"


def test_generator_writes_to_another_folder(tmp_path):
    load_generator().main(["--out", str(tmp_path)])
    for nb in NOTEBOOKS.glob("*.ipynb"):
        assert json.loads((tmp_path / nb.name).read_text()) == json.loads(nb.read_text())


@pytest.mark.parametrize("name", sorted({f.notebook for f in registry.FAMILIES.values()}))
def test_training_notebooks_parameters_are_runconfigs_defaults(name):
    parsed = papermill.inspect_notebook(str(NOTEBOOKS / name))
    family = ["depth"] + (["stage", "lambda_layers"] if name != registry.FAMILIES["baselines"].notebook else [])
    assert list(parsed) == family + list(notebook_fields())
    assert all(p["help"] for p in parsed.values())  # one line of help each
    defaults = notebook_defaults(name)
    for field in notebook_fields():
        if field in preset_fields():  # None = the preset's value, so that -p preset fast sets lr
            assert defaults[field] is None, field
        else:
            assert defaults[field] == getattr(RunConfig, field), field
    config = RunConfig.from_params(**{k: defaults[k] for k in notebook_fields()})
    assert config == RunConfig.from_params()  # field by field


def test_sweep_passes_what_the_notebooks_take():
    assert tuple(NOTEBOOK_FIELDS) == notebook_fields()


@pytest.mark.parametrize("name", sorted(p.name for p in NOTEBOOKS.glob("*.ipynb")))
def test_every_notebook_checks_the_injected_parameters(name):
    """The set-up, parameters, papermill's injected and the next cell, run here: a misspelt name stops
    there, naming it and the notebook's parameters; the notebook's own parameters pass."""
    declared = notebook_defaults(name)
    assert declared

    def run_until_checked(parameters):
        nb = parameterize_notebook(load_notebook_node(str(NOTEBOOKS / name)), parameters, kernel_name="python3",
                                   language="python")
        code = [c for c in nb.cells if c.cell_type == "code"]
        injected = next(i for i, c in enumerate(code) if "injected-parameters" in c.metadata.tags)
        assert "parameters" in code[injected - 1].metadata.tags and "check_parameters(" in code[injected + 1].source
        namespace = {}
        for cell in code[:injected + 2]:
            exec(cell.source, namespace)

    run_until_checked(declared)
    with pytest.raises(ValueError) as error:
        run_until_checked({**declared, "noize": 0.5})
    message = str(error.value)
    assert message.startswith("unknown parameter 'noize'") and all(k in message for k in declared)


def test_family_notebooks_take_every_parameter_the_sweep_passes():
    for name in {f.notebook for f in registry.FAMILIES.values()}:
        declared = set(papermill.inspect_notebook(str(NOTEBOOKS / name)))
        assert set(NOTEBOOK_FIELDS) <= declared, name
    rpe = set(papermill.inspect_notebook(str(NOTEBOOKS / "03_lambda_rpe.ipynb")))
    assert {"depth", "stage", "lambda_layers"} <= rpe


def test_notebooks_are_committed_without_outputs():
    for nb in NOTEBOOKS.glob("*.ipynb"):
        cells = json.loads(nb.read_text())["cells"]
        assert not any(c.get("outputs") or c.get("execution_count") for c in cells if c["cell_type"] == "code"), nb
        assert sum("parameters" in c.get("metadata", {}).get("tags", []) for c in cells) == 1, nb


@pytest.mark.slow
def test_users_command_from_notebooks_folder(tiny_imagenette, tmp_path):
    """`papermill 03_lambda_rpe.ipynb out.ipynb -p noise 0.5`, typed inside notebooks/."""
    done = papermill_cli("03_lambda_rpe.ipynb", tmp_path / "out.ipynb", "-p", "noise", "0.5",
                         *tiny_params(tiny_imagenette, tmp_path / "results"), cwd=NOTEBOOKS)
    assert done.returncode == 0, done.stderr[-3000:]
    runs = list((tmp_path / "results" / "runs").iterdir())
    assert len(runs) == 1 and runs[0].name.startswith("LR18-L2-rpe_noise50_")
    assert load_summary(runs[0])["status"] == "complete"
    assert "image/png" in outputs(tmp_path / "out.ipynb")[-1].get("data", {})  # ends with the run's curves
    streams = [o for o in outputs(tmp_path / "out.ipynb") if o.get("output_type") == "stream"]
    text = "".join("".join(o["text"]) for o in streams)
    assert not any(o["name"] == "stderr" for o in streams), text  # no warnings, no progress-bar debris
    assert text.count("\n") <= 4 and "epoch 1/1" in text  # the run id, then one line per epoch


@pytest.mark.slow
def test_a_misspelt_parameter_stops_the_notebook_naming_it(tmp_path):
    """`-p noize 0.5` used to warn, then train hours at noise 0."""
    done = papermill_cli("03_lambda_rpe.ipynb", tmp_path / "out.ipynb", "-p", "noize", "0.5", "-p", "results",
                         tmp_path, cwd=NOTEBOOKS)
    assert done.returncode != 0
    line = "ValueError: unknown parameter 'noize' (did you mean 'noise'?): this notebook's parameters are depth, "
    assert line in done.stderr
    errors = [o for o in outputs(tmp_path / "out.ipynb") if o["output_type"] == "error"]
    assert len(errors) == 1 and errors[0]["ename"] == "ValueError"
    assert errors[0]["evalue"].startswith("unknown parameter 'noize'") and "\n" not in errors[0]["evalue"]
    assert all(name in errors[0]["evalue"] for name in ("depth", "stage", *notebook_fields()))
    executed = json.loads((tmp_path / "out.ipynb").read_text())["cells"]
    config_cell = next(c for c in executed if "RunConfig.from_params" in "".join(c["source"]))
    assert config_cell.get("execution_count") is None  # stopped before the configuration
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
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
    assert [p.name.split("_")[0] for p in (home / "results" / "runs").iterdir()] == ["LR18-L3-lc-r23"]


@pytest.mark.slow
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


@pytest.mark.slow
def test_data_and_report_notebooks(tiny_imagenette, tmp_path):
    done = papermill_cli("01_data.ipynb", tmp_path / "01.ipynb", "-p", "data", tiny_imagenette, cwd=NOTEBOOKS)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "image/png" in outputs(tmp_path / "01.ipynb")[-1]["data"]  # ends with the samples
    config = RunConfig.from_params(model="R18", noise=0.25, data=str(tiny_imagenette), results=str(tmp_path), **TINY)
    from lambdalib.train import run

    run_dir = run(config, progress=False)
    # FullGrad on our checkpoint (offline: no pretrained weights are asked for), saved where the report
    # notebook must find it although the README does not link it
    attention = tmp_path / "figures" / "extra" / "attention.png"
    papermill.execute_notebook(str(NOTEBOOKS / "05_fullgrad.ipynb"), str(tmp_path / "05.ipynb"), kernel_name="python3",
                               parameters=dict(models=[], run_folders=[str(run_dir)], out=str(attention),
                                               results=str(tmp_path)),
                               cwd=str(NOTEBOOKS), progress_bar=False)
    assert attention.stat().st_size > 10_000
    done = papermill_cli("06_report.ipynb", tmp_path / "06.ipynb", "-p", "results", tmp_path, cwd=NOTEBOOKS)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "README.md").exists()
    # every figure (PNGs under figures/, at any depth) once, and every table of tables/
    shown = outputs(tmp_path / "06.ipynb")
    pngs = sorted(p.relative_to(tmp_path).as_posix() for p in (tmp_path / "figures").rglob("*.png"))
    images = [o for o in shown if "image/png" in o.get("data", {})]
    assert len(pngs) > 1 and len(images) == len(pngs)
    assert sorted(o["metadata"]["report_file"] for o in images) == pngs
    markdown = "\n".join("".join(o["data"]["text/markdown"]) for o in shown if "text/markdown" in o.get("data", {}))
    tables = sorted((tmp_path / "tables").glob("*.md"))
    assert tables and {p.stem for p in (tmp_path / "tables").glob("*.csv")} <= {p.stem for p in tables}
    for table in tables:
        lines = [line.strip() for line in table.read_text().splitlines()  # its rows (or "No runs yet")
                 if line.strip() and not line.startswith("#")]  # headings differ in the README
        assert lines and all(line in markdown for line in lines), table.name


@pytest.mark.slow
def test_sweep_through_notebooks_then_rerun_does_nothing(tiny_imagenette, tmp_path):
    grid = Grid(models=["R18", "LR18_L3(rpe)"], noise=[0.0], params=dict(data=str(tiny_imagenette),
                                                                        results=str(tmp_path), **TINY))
    assert notebook_parameters(grid.configs()[1])["stage"] == 3
    counts = reproduce(grid, progress=False)
    assert counts == dict(total=2, skipped=0, ran=2, diverged=0, failed=0, failures=[])
    executed = sorted(p.name for p in (tmp_path / "notebooks").glob("*.ipynb"))
    assert len(executed) == 3 and "06_report.ipynb" in executed  # two runs + the report
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "runs").rglob("*")}
    counts = reproduce(grid, progress=False, report=False)
    assert counts == dict(total=2, skipped=2, ran=0, diverged=0, failed=0, failures=[])
    assert stamps == {p: p.stat().st_mtime_ns for p in (tmp_path / "runs").rglob("*")}


def test_sweep_passes_every_field_to_the_notebooks():
    """The notebooks take every RunConfig field but model: nothing needs --inline any more."""
    config = RunConfig.from_params(model="LR18_L3(rpe)", weight_decay=1e-4, t0=3, on_error="skip")
    params = notebook_parameters(config)
    assert {k: params[k] for k in ("weight_decay", "t0", "on_error", "depth", "stage")} == \
        dict(weight_decay=1e-4, t0=3, on_error="skip", depth=18, stage=3)
    declared = set(papermill.inspect_notebook(str(NOTEBOOKS / registry.FAMILIES["L2_rpe"].notebook)))
    assert set(params) == declared
    assert params["lambda_layers"] == 1


def test_the_four_layer_model_goes_through_the_rpe_notebook():
    """LR18_L3x4(rpe): the sweep passes stage 3 and 4 lambda layers to the rpe notebook, whose label reads them back."""
    params = notebook_parameters(RunConfig.from_params(model="LR18_L3x4(rpe)"))
    assert registry.FAMILIES["L3x4_rpe"].notebook == "03_lambda_rpe.ipynb"
    assert (params["depth"], params["stage"], params["lambda_layers"]) == (18, 3, 4)
    assert registry.family_label("rpe", params["depth"], params["stage"], params["lambda_layers"]) == "LR18_L3x4(rpe)"
    assert "lambda_layers" not in notebook_parameters(RunConfig.from_params(model="R18"))  # the baselines' has none
