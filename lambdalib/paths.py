"""Where data/ and results/ live, found the same way from the repo root, notebooks/ or Colab.

Order: $LAMBDALIB_HOME, then the nearest folder above the working directory that holds this project's
pyproject.toml, then the checkout this package was installed from (pip install -e), then the
working directory itself (a plain `pip install lambdalib`).
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


def results_dir() -> Path:
    return project_root() / "results"
