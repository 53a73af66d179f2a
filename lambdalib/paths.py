"""Where data/ and results/ live, found the same way from the repo root, notebooks/ or Colab.

The project root: $LAMBDALIB_HOME, then the nearest folder above the working directory that holds this
project's pyproject.toml, then the checkout this package was installed from (pip install -e), then the
working directory itself (a plain `pip install lambdalib`). data/ is always under it (local disk: fast).

results/ (run records and checkpoints) is under it too, except: $LAMBDALIB_RESULTS when set, and on
Colab with Google Drive mounted, MyDrive/lambdalib/results — a Colab disconnect recycles the VM and all
of /content with it, so only records and last.pt on Drive let "run the same command again" resume.
"""
from __future__ import annotations

import os
from pathlib import Path


def _is_project_root(folder: Path) -> bool:
    pyproject = folder / "pyproject.toml"
    return pyproject.is_file() and 'name = "lambdalib"' in pyproject.read_text(errors="ignore")


def project_root() -> Path:
    if os.environ.get("LAMBDALIB_HOME"):
        return Path(os.environ["LAMBDALIB_HOME"]).expanduser().resolve()
    here = Path.cwd().resolve()
    for folder in (here, *here.parents):
        if _is_project_root(folder):
            return folder
    installed_from = Path(__file__).resolve().parent.parent
    if _is_project_root(installed_from):
        return installed_from
    return here


def data_dir() -> Path:
    return project_root() / "data"


COLAB_DRIVE = Path("/content/drive/MyDrive")  # where Colab mounts Google Drive


def on_colab() -> bool:
    return "COLAB_RELEASE_TAG" in os.environ or "COLAB_GPU" in os.environ  # inherited by papermill's kernels


def colab_drive_results() -> Path | None:
    """MyDrive/lambdalib/results when running on Colab with Drive mounted, else None."""
    return COLAB_DRIVE / "lambdalib" / "results" if on_colab() and COLAB_DRIVE.is_dir() else None


def results_dir() -> Path:
    if os.environ.get("LAMBDALIB_RESULTS"):
        return Path(os.environ["LAMBDALIB_RESULTS"]).expanduser().resolve()
    return colab_drive_results() or project_root() / "results"
