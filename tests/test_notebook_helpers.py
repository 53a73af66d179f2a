"""lambdalib.notebook: the logic behind the notebooks' cells, and the generator's set-up cell."""
import ast
import importlib.metadata
import importlib.util
import re
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest
from papermill.translators import PythonTranslator

from lambdalib import notebook
from lambdalib.config import RunConfig, parameter_fields
from lambdalib.notebook import (
    SNAPSHOT,
    Param,
    check_parameters,
    figure_image,
    notebook_defaults,
    notebook_fields,
    parameter_line,
    report_parts,
    training_parameters_source,
)

ROOT = Path(__file__).resolve().parents[1]


def load_generator():
    spec = importlib.util.spec_from_file_location("make_notebooks", ROOT / "scripts" / "make_notebooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def inspect(source: str) -> dict:
    """What papermill reads from a parameters cell: {name: Parameter}."""
    return {p.name: p for p in PythonTranslator.inspect({"source": source})}


# ------------------------------------------------------------------------------------- parameters
def test_notebook_fields_are_every_runconfig_field_but_model():
    assert notebook_fields() == tuple(f.name for f in parameter_fields())[1:]
    assert "model" not in notebook_fields() and "lr" in notebook_fields()


def test_training_parameters_cell_is_runconfigs_defaults_as_papermill_reads_them():
    family = [Param("depth", "int", 18, "18 or 34")]
    parsed = inspect(training_parameters_source(family))
    assert list(parsed) == ["depth", *notebook_fields()]
    defaults = {name: ast.literal_eval(p.default) for name, p in parsed.items()}
    assert all(p.help for p in parsed.values())  # one line of help each
    for f in parameter_fields():
        if f.name in notebook.preset_fields():
            assert defaults[f.name] is None and parsed[f.name].help.startswith("None: the preset's value")
        elif f.name != "model":
            assert defaults[f.name] == f.default and type(defaults[f.name]) is type(f.default), f.name
            assert parsed[f.name].inferred_type_name == type(f.default).__name__
    defaults.pop("depth")
    assert RunConfig.from_params(**defaults) == RunConfig.from_params()
    # the reason preset fields are None: -p preset fast must not keep the report preset's lr
    assert RunConfig.from_params(**{**defaults, "preset": "fast"}).lr == RunConfig.from_params(preset="fast").lr


def test_notebook_defaults_match_the_dataclass_except_preset_fields():
    defaults = notebook_defaults()
    assert set(defaults) == set(notebook_fields()) and defaults["lr"] is None
    assert {k: v for k, v in defaults.items() if v is not None} == \
        {f.name: f.default for f in fields(RunConfig) if f.name in defaults and f.name != "lr"}


def test_help_with_an_equals_sign_survives_papermills_parser():
    """papermill drops a parameter whose line holds a second '=': the help is reworded instead."""
    line = parameter_line(Param("train_per_class", "int", 0, "first N images; 0 = all, >= 1 limits\nit"), 30)
    assert line.index("#") == 32
    assert inspect(line)["train_per_class"].help == "first N images; 0: all, ≥ 1 limits it"
    with pytest.raises(ValueError, match="cannot parse"):
        parameter_line(Param("url", "str", "http://x?a=b", "a url"))


# --------------------------------------------------------------------------------- the check
def namespace_after(parameters: dict, injected: dict) -> dict:
    """globals() of a kernel after the set-up cell, the parameters cell and papermill's injected cell."""
    ns = {"__builtins__": __builtins__, "In": [], "sys": sys, "REPO_URL": "x"}
    ns[SNAPSHOT] = set(ns)
    ns.update(parameters)
    ns.update(injected)
    ns.update({"_i3": "ipython's", "_4": 1, "check_parameters": check_parameters, "sub": subprocess})  # not params
    return ns


def test_a_misspelt_parameter_is_named_with_the_known_ones():
    ns = namespace_after({"noise": 0.0, "epochs": 35}, {"noize": 0.5, "epochs": 1})
    with pytest.raises(ValueError) as error:
        check_parameters(ns, ["noise", "epochs"])
    message = str(error.value)
    assert "\n" not in message
    assert message == "unknown parameter 'noize' (did you mean 'noise'?): this notebook's parameters are noise, epochs"
    ns = namespace_after({"noise": 0.0}, {"noize": 0.5, "zzz": [1]})
    with pytest.raises(ValueError, match=r"parameters 'noize' \(did you mean 'noise'\?\), 'zzz':"):
        check_parameters(ns, ["noise"])


def test_known_parameters_pass_and_a_rerun_cell_checks_nothing():
    ns = namespace_after({"noise": 0.0, "lr": None}, {"noise": 0.5, "lr": 1e-3})
    check_parameters(ns, ["noise", "lr"])
    assert SNAPSHOT not in ns
    ns["config"] = {"a": 1}  # later cells ran, then this cell is run again by hand
    check_parameters(ns, ["noise", "lr"])


# ---------------------------------------------------------------------------------- display
def test_figure_image_is_a_png():
    from matplotlib.figure import Figure

    fig = Figure(figsize=(1, 1))
    fig.add_subplot().plot([0, 1])
    image = figure_image(fig)
    assert image.format == "png" and image.data.startswith(b"\x89PNG")


def png(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n")
    return path


def test_report_parts_embed_the_readmes_figures_then_what_it_leaves_out(tmp_path):
    report = tmp_path / "results"
    (report / "tables").mkdir(parents=True)
    (report / "tables" / "t1.md").write_text("## Table 1\n\n| a | b |\n|---|---|\n| 1 | 2 |\n")
    (report / "tables" / "t1.csv").write_text("a,b\n1,2\n")
    (report / "tables" / "t2.md").write_text("## Table 2\n\n| c |\n|---|\n| 3 |\n")
    (report / "tables" / "only.csv").write_text("d\n4\n")
    first, second = png(report / "figures" / "s1" / "a.png"), png(report / "figures" / "b.png")
    extra = png(report / "figures" / "deep" / "er" / "c.png")
    (report / "README.md").write_text(
        "# R\n\n### Table 1 ([csv](tables/t1.csv))\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\n"
        "![A](figures/s1/a.png)\n![B](<figures/b.png> \"title\")\n\ntext ![web](https://x.org/i.png) "
        "![gone](figures/missing.png) [anchor](#r)\n")
    notebooks = tmp_path / "notebooks"
    notebooks.mkdir()
    parts = report_parts(report / "README.md", cwd=notebooks)
    kinds = [kind for kind, _ in parts]
    assert kinds == ["markdown", "image", "image", "markdown", "markdown", "table", "table", "image"]
    assert [v for k, v in parts if k == "image"] == [first, second, extra]
    assert [v.name for k, v in parts if k == "table"] == ["only.csv", "t2.md"]  # t1 is in the README
    assert "[csv](../results/tables/t1.csv)" in parts[0][1] and "figures/s1" not in parts[0][1]
    assert "![web](https://x.org/i.png)" in parts[3][1] and "[anchor](#r)" in parts[3][1]
    assert "![gone](figures/missing.png)" in parts[3][1]  # a missing file stays a (broken) link


def test_report_parts_of_a_built_report_show_every_table_and_figure(tmp_path):
    from lambdalib import report

    (tmp_path / "runs").mkdir()
    readme = report.build(tmp_path)  # no runs: every table and figure with its placeholder
    parts = report_parts(readme)
    images = sorted(p.resolve() for p in (tmp_path / "figures").rglob("*.png"))
    assert sorted(v for k, v in parts if k == "image") == images
    shown = "\n".join(v if k == "markdown" else v.read_text() for k, v in parts if k != "image")
    for table in (tmp_path / "tables").glob("*.md"):
        assert all(line in shown for line in notebook._content_lines(table.read_text())), table


# --------------------------------------------------------------------- the generated set-up cell
def run_setup(monkeypatch, tmp_path, fake_run=None, missing=()):
    """Execute the notebooks' set-up cell in a folder without a clone, as if lambdalib were not installed."""
    generator = load_generator()
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "lambdalib" else real_find_spec(name, *a))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.setenv("LAMBDALIB_HOME", str(tmp_path))
    if fake_run:
        monkeypatch.setattr(subprocess, "run", fake_run)
    real_version = importlib.metadata.version

    def version(name):
        if name in missing:
            raise importlib.metadata.PackageNotFoundError(name)
        return real_version(name)

    monkeypatch.setattr(importlib.metadata, "version", version)
    ns = {}
    exec(generator.SETUP, ns)
    return ns


def test_setup_cell_clone_failure_says_so_and_the_url_comes_from_the_environment(monkeypatch, tmp_path):
    url = str(tmp_path / "no-such-repository")
    monkeypatch.setenv("LAMBDALIB_REPO_URL", url)
    with pytest.raises(RuntimeError) as error:
        run_setup(monkeypatch, tmp_path)
    message = str(error.value)
    assert message.startswith(f"could not clone {url} (") and "Internet" in message and "LAMBDALIB_REPO_URL" in message
    assert "\n" not in message


def test_setup_cell_installs_without_upgrading_the_platforms_packages(monkeypatch, tmp_path):
    calls = []

    def fake_run(args, **kwargs):
        calls.append(list(map(str, args)))
        if args[0] == "git":
            Path(args[-1]).mkdir()
        return subprocess.CompletedProcess(args, 0, "", "")

    monkeypatch.delenv("LAMBDALIB_REPO_URL", raising=False)
    ns = run_setup(monkeypatch, tmp_path, fake_run, missing=("grad-cam",))
    target = str(tmp_path / "lambdalib")
    assert ns["REPO_URL"] == "https://github.com/lambdalib/lambdalib.git"
    assert calls[0][:2] == ["git", "clone"] and calls[0][-1] == target
    assert calls[1][-4:] == ["-q", "--no-deps", "-e", target]
    grad_cam = [r for r in importlib.metadata.requires("lambdalib") if r.startswith("grad-cam")]
    assert calls[2][-2:] == ["-q", *grad_cam] and len(calls) == 3  # only what is missing
    assert sys.path[0] == target and SNAPSHOT in ns


def test_colab_without_drive_says_how_to_keep_results(tmp_path, monkeypatch, capsys):
    from lambdalib import paths
    from lambdalib.notebook import say_where_results_go

    monkeypatch.delenv("LAMBDALIB_RESULTS", raising=False)
    monkeypatch.setattr(paths, "COLAB_DRIVE", tmp_path / "MyDrive")
    monkeypatch.setenv("COLAB_RELEASE_TAG", "x")
    say_where_results_go()
    assert "lost when the session disconnects" in capsys.readouterr().out
    (tmp_path / "MyDrive").mkdir()
    assert say_where_results_go() == tmp_path / "MyDrive" / "lambdalib" / "results"
    assert "disconnects" not in capsys.readouterr().out


def test_a_command_in_a_help_text_reads_the_same_in_a_parameters_cell():
    """papermill drops a parameter line with a second '=', so the cell rewords '=' ('==' as 'is'): a help text
    that shows a command (pip install x==1, VAR=value) would reach the notebook garbled."""
    for field in parameter_fields():
        help_text = field.metadata.get("help", "")
        for command in re.findall(r"pip install [^;)]+|[A-Z_]{3,}=\S+", help_text):
            assert command in notebook._one_line_help(help_text), (field.name, command)
