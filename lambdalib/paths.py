"""Where data/ and results/ live, found the same way from the repo root, notebooks/ or Colab.

The project root: $LAMBDALIB_HOME, then the nearest folder above the working directory that holds this
project's pyproject.toml, then the checkout this package was installed from (pip install -e), then the
working directory itself (a plain `pip install .` of a clone). data/ is always under it (local disk: fast).

results/ (run records and checkpoints) is under it too, except: $LAMBDALIB_RESULTS when set, and on
Colab with Google Drive mounted, MyDrive/lambdalib/results — a Colab disconnect recycles the VM and all
of /content with it, so only records and last.pt on Drive let "run the same command again" resume.
"""
from __future__ import annotations

import os
from pathlib import Path


def project_root() -> Path:
    if os.environ.get("LAMBDALIB_HOME"):
        return Path(os.environ["LAMBDALIB_HOME"]).expanduser().resolve()
    here = Path.cwd().resolve()
    for folder in (here, *here.parents, Path(__file__).resolve().parent.parent):  # then the checkout installed from
        pyproject = folder / "pyproject.toml"
        if pyproject.is_file() and 'name = "lambdalib"' in pyproject.read_text(errors="ignore"):
            return folder
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
