"""Write notebooks/01-06: thin cells over lambdalib (lambdalib/notebook.py), committed without outputs.

Generated, never edited by hand: the set-up cell is shared, and the training notebooks' parameters cell
is RunConfig's fields with their defaults and help, so a changed field reaches every notebook on
    python scripts/make_notebooks.py            # rewrites notebooks/
    python scripts/make_notebooks.py --out DIR  # writes elsewhere
(tests/test_notebooks.py fails when the committed notebooks differ from this script's output).
"""
import argparse
import sys
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # lambdalib from this checkout, installed or not
from lambdalib.notebook import Param, parameters_source, training_parameters_source  # noqa: E402

NOTEBOOKS = ROOT / "notebooks"

SETUP = """\
# Colab / Kaggle: install lambdalib when it is missing, keeping the platform's own packages (torch, ipykernel, ...).
import importlib, importlib.metadata, importlib.util, os, re, subprocess, sys
REPO_URL = os.environ.get("LAMBDALIB_REPO_URL", "https://github.com/lambdalib/lambdalib.git")  # or your fork
if importlib.util.find_spec("lambdalib") is None:
    target = os.path.abspath("..")  # a clone, opened from notebooks/
    if not os.path.exists(os.path.join(target, "pyproject.toml")):
        target = os.path.abspath("lambdalib")
        if not os.path.isdir(target):
            try:
                clone = subprocess.run(["git", "clone", "-q", REPO_URL, target], capture_output=True, text=True,
                                       env={**os.environ, "GIT_TERMINAL_PROMPT": "0"})
                why = (clone.stderr.strip().splitlines() or [f"exit status {clone.returncode}"])[-1]
            except FileNotFoundError:
                clone, why = None, "git is not installed"
            if clone is None or clone.returncode:
                raise RuntimeError(f"could not clone {REPO_URL} ({why}). No internet (Kaggle: Settings > Internet "
                                   "on)? Set LAMBDALIB_REPO_URL to your fork, or open this notebook from the "
                                   "notebooks/ folder of a copy of the repository") from None
    pip = [sys.executable, "-m", "pip", "install", "-q"]
    subprocess.run(pip + ["--no-deps", "-e", target], check=True)  # upgrades nothing the platform pinned
    importlib.invalidate_caches()
    missing = []  # install only the requirements that are not there at all
    for requirement in importlib.metadata.requires("lambdalib") or []:
        if "extra ==" not in requirement:
            try:
                importlib.metadata.version(re.match(r"[A-Za-z0-9._-]+", requirement)[0])
            except importlib.metadata.PackageNotFoundError:
                missing.append(requirement)
    if missing:
        subprocess.run(pip + missing, check=True)
    sys.path.insert(0, target)  # this kernel started before the install
    os.environ.setdefault("LAMBDALIB_HOME", target)  # results/ and data/ of that clone
_names_before_parameters = set(globals())  # lets the cell after the parameters catch a misspelt parameter"""

CHECK_CELL = """\
from lambdalib import log_to_stdout
from lambdalib.notebook import check_parameters, say_where_results_go{extra_import}

log_to_stdout()  # lambdalib's log lines (one per epoch; each file a report writes) in this notebook's output
# a papermill parameter this notebook does not declare (misspelt: -p noize 0.5) stops here
check_parameters(globals(), {declared})
say_where_results_go(globals().get("results") or "")  # on Colab: Google Drive when mounted"""

CONFIG_CELL = """\
from lambdalib import report, train
from lambdalib.config import RunConfig
from lambdalib.registry import family_label
from lambdalib.notebook import notebook_fields

config = RunConfig.from_params(model={label}, **{{name: globals()[name] for name in notebook_fields()}})
print(config.run_id)
config"""

FAMILIES = {
    "02_baselines.ipynb": (None, "Baseline ResNets", "ResNet18 and ResNet34 exactly as torchvision builds them "
                           "(the report's Table 1)."),
    "03_lambda_rpe.ipynb": ("rpe", "Lambda-ResNets with relative position embeddings (rpe)",
                            "One 3x3 convolution of the last block of stage 2 or 3 replaced by a lambda layer with "
                            "global relative position embeddings (|k|=16, |h|=4); the report's Tables 2 and 3. "
                            "`-p stage 3 -p lambda_layers 4` trains LR18_L3x4(rpe), conv2 of every block of "
                            "stages 2-3 a lambda layer (the report's \"more than two lambda layers\")."),
    "04_lambda_lc.ipynb": ("lc", "Lambda-ResNets with lambda convolution (lc)",
                           "The same site with a lambda convolution of scope r=23; the report's Tables 4 and 5."),
}



def notebook(cells) -> nbformat.NotebookNode:
    nb = new_notebook(cells=cells)
    for index, cell in enumerate(nb.cells):  # stable ids: regenerating gives the same files
        cell["id"] = f"cell-{index}"
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    return nb


def parameters_cells(source: str, declared: str, extra_import: str = ""):
    """The parameters cell (papermill injects its cell after it) and the cell that checks what was injected."""
    return [new_code_cell(source, metadata={"tags": ["parameters"]}),
            new_code_cell(CHECK_CELL.format(declared=declared, extra_import=extra_import))]


def simple_parameters_cells(params):
    return parameters_cells(parameters_source(params), repr([p.name for p in params]))


def family_notebook(position, title, blurb):
    family = "baseline" if position is None else position
    model = [Param("depth", "int", 18, "ResNet depth: 18 or 34")]
    if position is not None:
        model.append(Param("stage", "int", 2, "the stage whose last block gets the lambda layer: 2 or 3"))
        # LR18_L3x4(rpe): 4 = conv2 of every block of stages 2-3, counted backward from the last of `stage`
        model.append(Param("lambda_layers", "int", 1, "how many blocks, counted back from that one, get a lambda "
                                                      "layer: 1 (the report's) or 4 (rpe, stage 3, depth 18)"))
    names = ", ".join(repr(p.name) for p in model)
    label = f"family_label({position!r}, depth{', stage, lambda_layers' if position else ''})"
    return notebook([
        new_markdown_cell(f"# {title}\n\n{blurb}\n\nRun with papermill, e.g. "
                          f"`papermill {next(k for k, v in FAMILIES.items() if v[0] == position)} out.ipynb "
                          f"-p noise 0.5`. Re-running the same parameters resumes an interrupted run.\n\n"
                          "The parameters are RunConfig's fields (`lambdalib/config.py`), generated by "
                          "`scripts/make_notebooks.py`: change a default there, not here."),
        new_code_cell(SETUP),
        *parameters_cells(training_parameters_source(model), f"[{names}, *notebook_fields()]",
                          ", notebook_fields"),
        new_markdown_cell("## The run's configuration\nBad parameters stop here with a message naming them."),
        new_code_cell(CONFIG_CELL.format(label=label)),
        new_markdown_cell(f"## Train ({family})\nThe run record goes to `results/runs/<run id>/`; a finished "
                          "run is not trained again."),
        new_code_cell("run_dir = train.run(config)\ntrain.load_summary(run_dir)"),
        new_markdown_cell("## Loss curves"),
        new_code_cell("from IPython.display import Image\n\nImage(filename=str(report.plot_run(run_dir)))"),
    ])


def data_notebook():
    return notebook([
        new_markdown_cell("# Imagenette with the official noisy labels\n\nClass counts, the realised flip rate "
                          "of each official noise level, and samples with their clean and noisy labels."),
        new_code_cell(SETUP),
        *simple_parameters_cells([
            Param("data", "str", "embedded", "'embedded', 'imagenette2-160', a folder or an archive"),
            Param("noise", "float", 0.25, "the noise level whose labels the samples show"),
            Param("samples", "int", 16, "how many training images to show")]),
        new_code_cell("from lambdalib import data as data_lib, figures\nfrom lambdalib.notebook import figure_image\n\n"
                      "root = data_lib.resolve_root(data)\ninfo = data_lib.overview(root)\ninfo['classes']"),
        new_code_cell("info['noise']"),
        new_code_cell("figure_image(figures.plot_samples(root, noise, n=samples))"),
    ])


def fullgrad_notebook():
    return notebook([
        new_markdown_cell(
            "# FullGrad attention maps (the report's figure 7)\n\n"
            "FullGrad maps of timm's pretrained `resnet18`, `resnet50`, `lambda_resnet26t` and `lambda_resnet50ts` "
            "(and of our own run records) on an image with a dog and a cat, each explaining the model's top "
            "prediction.\n\nUnlike the report's figure, every bias-carrying conv/norm layer enters each map: "
            "pytorch-grad-cam's FullGrad matches layer types exactly and so skipped timm's `BatchNormAct2d` (34 of "
            "40 bias layers of `lambda_resnet26t`, 60 of 70 of `lambda_resnet50ts`). The caption says what was "
            "counted per model.\n\nWithout access to huggingface.co (and no local copy of the weights) the "
            "pretrained models are left out with a warning; the figure then shows our run records "
            "(`results/runs/*/best.pt`) if there are any. A second figure (`trained`) is drawn from models this "
            "package trained itself."),
        new_code_cell(SETUP),
        *simple_parameters_cells([
            Param("models", "list", ["resnet18", "resnet50", "lambda_resnet26t", "lambda_resnet50ts"],
                  "timm names, pretrained"),
            Param("run_folders", "list", [], "our run folders or their best.pt, as paths from notebooks/ "
                  "(../results/runs/ID) or absolute, added to models"),
            Param("image", "str", None, "None: data/images/both.png, shipped with the repository"),
            Param("method", "str", "fullgrad", "or 'gradcam', 'gradcam++', 'scorecam', 'fullgradstock'"),
            Param("target", None, None, "None: the top-1 class of each model; else a class index or name"),
            Param("allow_random", "bool", False, "True: show models without weights, titled as random init"),
            Param("out", "str", None, "None: results/figures/attention_METHOD.png"),
            Param("trained", "bool", True, "also draw figure 7 from our own trained models and tabulate it"),
            Param("results", "str", "", "for trained: the folder holding runs/, where figures/ and tables/ go; "
                                        "empty: results/ of this repository")]),
        new_code_cell(
            "from IPython.display import Image, Markdown, display\nfrom lambdalib import attention\n\n"
            "result = attention.attention_figure(models + run_folders, image=image, method=method, out=out,\n"
            "                                    allow_random=allow_random, target=target)\n"
            "if result is not None:\n"
            '    print(result.caption, f"\\n\\nsaved: {result.path}")\n'
            "    display(Image(filename=str(result.path), width=1000))"),
        new_markdown_cell(
            "## Figure 7 from our own trained models\n\n"
            "The report's ImageNet-pretrained weights are not at hand offline; these maps come from our own "
            "small-data models instead: R18, LR18_L2(rpe) and LR18_L2(lc) at noise 0 and 50 %, "
            "one best.pt each from the run records (`lambdalib reproduce --study` trains them), "
            "picked by a fixed rule (preset fast, complete, most epochs, lowest seed), on both.png and three "
            "Imagenette validation images. The table measures each map: the share of its mass in its top 10 % "
            "of pixels, and on both.png the share inside the hand-drawn dog and cat boxes "
            "(`data/images/both.boxes.json`). Same as `lambdalib attention --trained`."),
        new_code_cell(
            "if trained:\n"
            "    try:\n"
            "        mine = attention.trained_figure(results or None, method=method)\n"
            "    except attention.NoTrainedRunsError as err:\n"
            "        print(err)\n"
            "    else:\n"
            '        print(mine.caption, f"\\n\\nsaved: {mine.path}\\ntable: {mine.table_path}")\n'
            "        display(Image(filename=str(mine.path), width=1000))\n"
            "        display(Markdown(attention.attention_table_markdown(mine.table_path)))"),
    ])


def report_notebook():
    return notebook([
        new_markdown_cell("# The report, regenerated from run records\n\nEvery table and loss curve below is "
                          "rebuilt from `results/runs/*` (never typed); figure 7 and other attention maps are "
                          "shown as `lambdalib attention` last drew them. The same files are in `results/` and "
                          "shown in `results/README.md`."),
        new_code_cell(SETUP),
        *simple_parameters_cells([Param("results", "str", "", "empty: results/ of this repository")]),
        new_code_cell("from lambdalib import report\nfrom lambdalib.notebook import show_report\n\n"
                      "readme = report.build(results or None)\nreadme"),
        new_markdown_cell("The README with its figures, then any table or figure of the report folder it leaves "
                          "out."),
        new_code_cell("show_report(readme);"),
    ])


def build() -> dict[str, nbformat.NotebookNode]:
    """Every notebook, by file name, validated."""
    written = {"01_data.ipynb": data_notebook(), "05_fullgrad.ipynb": fullgrad_notebook(),
               "06_report.ipynb": report_notebook()}
    written.update({name: family_notebook(*spec) for name, spec in FAMILIES.items()})
    for nb in written.values():
        nbformat.validate(nb)
    return dict(sorted(written.items()))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=NOTEBOOKS, help="folder to write to (default: notebooks/)")
    out = parser.parse_args(argv).out
    out.mkdir(parents=True, exist_ok=True)
    for name, nb in build().items():
        nbformat.write(nb, out / name)
        print("wrote", out / name)


if __name__ == "__main__":
    main()
