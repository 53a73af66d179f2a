"""Write notebooks/01-06: thin cells over lambdalib, committed without outputs.

The set-up cell and the parameter names are shared, so they are generated here in one place:
    python scripts/make_notebooks.py
"""
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"

SETUP = '''\
# Colab / Kaggle: install lambdalib when it is missing (the platform's own torch is kept).
import importlib.util, os, subprocess, sys
REPO_URL = "https://github.com/lambdalib/lambdalib.git"  # or your fork
if importlib.util.find_spec("lambdalib") is None:
    target = os.path.abspath("..")  # a clone, opened from notebooks/
    if not os.path.exists(os.path.join(target, "pyproject.toml")):
        target = os.path.abspath("lambdalib")
        if not os.path.isdir(target) and subprocess.run(["git", "clone", "-q", REPO_URL, target],
                                                       env={**os.environ, "GIT_TERMINAL_PROMPT": "0"}).returncode:
            raise RuntimeError(f"could not clone {REPO_URL}: set REPO_URL above to your lambdalib repository")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-e", target], check=True)
    sys.path.insert(0, target)  # this kernel started before the install
    os.environ.setdefault("LAMBDALIB_HOME", target)  # results/ and data/ of that clone'''

TRAIN_PARAMETERS = '''\
noise = 0.0            # fraction of flipped training labels: 0, 0.01, 0.05, 0.25 or 0.5 (official labels)
synthetic_noise = False  # True allows other rates as seeded synthetic symmetric noise
epochs = 35            # three cosine restart cycles: 5 + 10 + 20
img_size = 160
batch_size = 64
preset = "report"      # "report": Adam lr 1e-5 as in the report; "fast": lr 1e-3
lr = None              # None: the learning rate of the preset
seed = 0
data = "embedded"      # "embedded": the tracked subset; "imagenette2-160", a folder or an archive
train_per_class = 0    # only the first N training images per class, 0: all
val_per_class = 0      # the same for validation
results = ""           # empty: results/ of this repository
workers = -1           # data loader workers, -1: automatic
device = "auto"
amp = "auto"
grad_clip = 0.0
checkpoints = "best"   # "best", "best+last" or "none"'''

CONFIG_CELL = """\
from lambdalib import report, train
from lambdalib.config import RunConfig
from lambdalib.models import family_label

config = RunConfig.from_params(
    model={label}, noise=noise, synthetic_noise=synthetic_noise,
    epochs=epochs, img_size=img_size, batch_size=batch_size, preset=preset, lr=lr, seed=seed,
    data=data, train_per_class=train_per_class, val_per_class=val_per_class,
    results=results, workers=workers, device=device, amp=amp, grad_clip=grad_clip,
    checkpoints=checkpoints)
print(config.run_id)
config"""

FAMILIES = {
    "02_baselines.ipynb": (None, "Baseline ResNets", "ResNet18 and ResNet34 exactly as torchvision builds them "
                           "(the report's Table 1)."),
    "03_lambda_rpe.ipynb": ("rpe", "Lambda-ResNets with relative position embeddings (rpe)",
                            "One 3x3 convolution of the last block of stage 2 or 3 replaced by a lambda layer with "
                            "global relative position embeddings (|k|=16, |h|=4); the report's Tables 2 and 3."),
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


def parameters_cell(source: str):
    return new_code_cell(source, metadata={"tags": ["parameters"]})


def family_notebook(position, title, blurb):
    family = "baseline" if position is None else position
    params = "depth = 18             # 18 or 34\n" + ("" if position is None else "stage = 2              # 2 or 3\n")
    label = f"family_label({position!r}, depth{', stage' if position else ''})"
    return notebook([
        new_markdown_cell(f"# {title}\n\n{blurb}\n\nRun with papermill, e.g. "
                          f"`papermill {next(k for k, v in FAMILIES.items() if v[0] == position)} out.ipynb "
                          f"-p noise 0.5`. Re-running the same parameters resumes an interrupted run."),
        new_code_cell(SETUP),
        parameters_cell(params + TRAIN_PARAMETERS),
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
        parameters_cell('data = "embedded"  # "embedded", "imagenette2-160", a folder or an archive\n'
                        "noise = 0.25\nsamples = 16"),
        new_code_cell("from lambdalib import data as data_lib\n\n"
                      "root = data_lib.resolve_root(data)\ninfo = data_lib.overview(root)\ninfo['classes']"),
        new_code_cell("info['noise']"),
        new_code_cell("data_lib.plot_samples(root, noise, n=samples);"),
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
            "(`results/runs/*/best.pt`) if there are any."),
        new_code_cell(SETUP),
        parameters_cell(
            'models = ["resnet18", "resnet50", "lambda_resnet26t", "lambda_resnet50ts"]  # timm names, pretrained\n'
            "checkpoints = []      # our run folders results/runs/ID or their best.pt\n"
            "image = None          # None: data/images/both.png, shipped with the repository\n"
            'method = "fullgrad"   # or "gradcam", "gradcam++", "scorecam", "fullgradstock"\n'
            "target = None         # None: the top-1 class of each model; else a class index or name\n"
            "allow_random = False  # True: show models without weights, titled as random init\n"
            "out = None            # None: results/figures/attention_METHOD.png"),
        new_code_cell(
            "from IPython.display import Image, display\nfrom lambdalib import attention\n\n"
            "result = attention.attention_figure(models + checkpoints, image=image, method=method, out=out,\n"
            "                                    allow_random=allow_random, target=target)\n"
            "if result is not None:\n"
            '    print(result.caption, f"\\n\\nsaved: {result.path}")\n'
            "    display(Image(filename=str(result.path), width=1000))"),
    ])


def report_notebook():
    return notebook([
        new_markdown_cell("# The report, regenerated from run records\n\nEvery table and figure below is "
                          "rebuilt from `results/runs/*` (never typed). The same files are written to "
                          "`results/` and shown in `results/README.md`."),
        new_code_cell(SETUP),
        parameters_cell('results = ""  # empty: results/ of this repository'),
        new_code_cell("from IPython.display import Image, Markdown, display\nfrom lambdalib import report\n\n"
                      "readme = report.build(results or None)\nreadme"),
        new_code_cell("display(Markdown(readme.read_text()))\n"
                      "for png in sorted((readme.parent / 'figures').glob('*.png')):\n"
                      "    display(Image(filename=str(png)))"),
    ])


def main() -> None:
    NOTEBOOKS.mkdir(exist_ok=True)
    written = {"01_data.ipynb": data_notebook(), "05_fullgrad.ipynb": fullgrad_notebook(),
               "06_report.ipynb": report_notebook()}
    written.update({name: family_notebook(*spec) for name, spec in FAMILIES.items()})
    for name, nb in sorted(written.items()):
        nbformat.validate(nb)
        nbformat.write(nb, NOTEBOOKS / name)
        print("wrote", NOTEBOOKS / name)


if __name__ == "__main__":
    main()
