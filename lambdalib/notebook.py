"""What the notebooks call, so that their cells stay thin (and the logic is unit tested here): the training
notebooks' parameters cell, generated from RunConfig's fields (for `scripts/make_notebooks.py`), the check of the
parameters papermill injected, and the display of figures and of the report.
"""
from __future__ import annotations

import difflib
import io
import os
import re
from pathlib import Path
from typing import Any, Iterable, NamedTuple, Sequence

from .config import parameter_fields, preset_fields

# The set-up cell ends with `_names_before_parameters = set(globals())`; check_parameters compares with it.
SNAPSHOT = "_names_before_parameters"
PRESET_HELP = "None: the preset's value"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif", ".svg")
_LITERALS = (bool, int, float, complex, str, bytes, list, tuple, dict, set, type(None))


# ------------------------------------------------------------------------------------- parameters
class Param(NamedTuple):
    """One line of a parameters cell: `name: type = value  # help`."""

    name: str
    type: str | None  # None: no annotation (a parameter of several types)
    value: Any
    help: str


def notebook_fields() -> tuple[str, ...]:
    """The RunConfig fields the training notebooks (02-04) take as papermill parameters: all but `model`
    (which they derive from `depth`, `stage` and, in 03, `lambda_layers`). The sweep passes exactly these."""
    return tuple(f.name for f in parameter_fields() if f.name != "model")


def notebook_defaults() -> dict[str, Any]:
    """Each notebook field's value in the parameters cell: the dataclass default, None for preset fields (the
    preset's value, so that `-p preset fast` is not silently overridden by the report preset's lr)."""
    presets, names = preset_fields(), notebook_fields()
    return {f.name: None if f.name in presets else f.default for f in parameter_fields() if f.name in names}


def run_config_parameters() -> list[Param]:
    """The training notebooks' RunConfig parameters, in the dataclass's order, with their help (each field's type
    is a string: config.py postpones annotations)."""
    by_name = {f.name: f for f in parameter_fields()}
    params = []
    for name, value in notebook_defaults().items():
        hint = by_name[name].metadata["help"]
        params.append(Param(name, by_name[name].type, value, f"{PRESET_HELP}; {hint}" if value is None else hint))
    return params


def _one_line_help(text: str) -> str:
    """papermill skips a parameter whose line has a second '=' (its help would be lost): reword them."""
    text = " ".join(text.split())
    for old, new in ((">=", "≥"), ("<=", "≤"), ("!=", "≠"), ("==", "is")):
        text = text.replace(old, new)
    return re.sub(r"\s*=\s*", ": ", text)


def parameter_line(param: Param, width: int = 0) -> str:
    """`name: type = value  # help`, the value as a Python literal, the comment starting at `width`."""
    value = repr(param.value)
    if "=" in value or "#" in value or "\n" in value:
        raise ValueError(f"{param.name}={value}: papermill cannot parse a default with '=', '#' or a newline")
    code = f"{param.name}{'' if param.type is None else ': ' + param.type} = {value}"
    return f"{code.ljust(width)}  # {_one_line_help(param.help)}" if param.help else code


def parameters_source(params: Sequence[Param], groups: dict[str, str] | None = None) -> str:
    """A papermill parameters cell: one aligned line per parameter. `groups` puts a comment line
    ("# -- ...") before the parameter it names."""
    width = min(max((len(parameter_line(p)) for p in params), default=0), 36)
    lines = []
    for param in params:
        if groups and param.name in groups:
            lines.append(f"# -- {groups[param.name]}")
        lines.append(parameter_line(param, width))
    return "\n".join(lines)


def training_parameters_source(family: Sequence[Param]) -> str:
    """The training notebooks' parameters cell: the model's `family` parameters (depth, stage, ...), then every
    RunConfig field but model, grouped as in the dataclass (the experiment, then how and where it runs)."""
    params = [*family, *run_config_parameters()]
    first_run_field = next(f.name for f in parameter_fields() if not f.metadata.get("identity", True))
    groups = {params[0].name: "the model", run_config_parameters()[0].name: "the experiment (RunConfig's fields)",
              first_run_field: "how and where it runs (a run may resume with other values)"}
    return parameters_source(params, groups)


def check_parameters(namespace: dict[str, Any], declared: Iterable[str]) -> None:
    """Stop, in one line naming it and its closest known name, on a papermill parameter this notebook does not
    declare (a misspelt `-p noize 0.5`), instead of papermill's warning and a whole run with the default.

    Called with `globals()` after the parameters cell: a literal defined since the set-up cell's SNAPSHOT that is
    not `declared` (nor an IPython _name) came from papermill's injected cell; without SNAPSHOT (cells re-run by
    hand) nothing is checked."""
    before = namespace.pop(SNAPSHOT, None)
    if before is None:
        return
    declared = list(declared)
    new = {name for name, value in namespace.items()
           if name not in before and not name.startswith("_") and isinstance(value, _LITERALS)}
    unknown = sorted(new - set(declared))
    if unknown:
        def named(name: str) -> str:
            close = difflib.get_close_matches(name, declared, n=1)
            return repr(name) + (f" (did you mean {close[0]!r}?)" if close else "")

        raise ValueError(f"unknown parameter{'s' if len(unknown) > 1 else ''} {', '.join(map(named, unknown))}: "
                         f"this notebook's parameters are {', '.join(declared)}")


# ---------------------------------------------------------------------------------- display
def figure_image(fig, dpi: int = 100):
    """A matplotlib Figure as an IPython PNG Image: displayed as image/png whatever the backend (a bare
    Figure built without pyplot shows as text in a kernel)."""
    from IPython.display import Image

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return Image(data=buffer.getvalue(), format="png")


_IMAGE = re.compile(r'!\[(?P<alt>[^\]]*)\]\((?P<target><[^>]+>|[^)\s]+)(?:\s+"[^"]*")?\)'
                    r'|<img\s[^>]*?src="(?P<src>[^"]+)"[^>]*>', re.IGNORECASE)
_LINK = re.compile(r'(?<!!)\[(?P<text>[^\]]*)\]\((?P<target>[^)\s]+)\)')


def _local(target: str) -> bool:
    return not re.match(r"[a-z][a-z0-9+.-]*:|#|/", target, re.IGNORECASE)


def _content_lines(text: str) -> list[str]:
    """A table file's lines that must appear in the README for it to count as shown (headings differ)."""
    return [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def report_parts(readme: Path | str, cwd: Path | str | None = None) -> list[tuple[str, Any]]:
    """The report as ("markdown", text), ("image", path) and ("table", path) parts to display, in the README's
    order, then under "Not in the README" every table (tables/*.md, or a *.csv without one) and image (under
    figures/) of the report folder the README does not show. Local images become parts (a relative link breaks
    when rendered from notebooks/); other local links are made relative to `cwd` (default: the working directory).
    """
    readme = Path(readme).resolve()
    root = readme.parent
    cwd = Path(cwd or os.getcwd()).resolve()
    text = readme.read_text()

    def relink(markdown: str) -> str:
        def one(match: re.Match) -> str:
            target = match["target"]
            if not _local(target):
                return match[0]
            path, _, anchor = target.partition("#")
            try:
                rel = Path(os.path.relpath(root / path, cwd)).as_posix()
            except ValueError:  # another drive
                rel = (root / path).as_uri()
            return f"[{match['text']}]({rel}{'#' + anchor if anchor else ''})"

        return _LINK.sub(one, markdown)

    parts: list[tuple[str, Any]] = []
    position = 0
    for match in _IMAGE.finditer(text):
        target = (match["target"] or match["src"]).strip("<>")
        path = (root / target.partition("#")[0]).resolve()
        if not _local(target) or not path.is_file():
            continue  # a remote image renders by itself; a missing one stays a (broken) link
        parts += [("markdown", relink(text[position:match.start()])), ("image", path)]
        position = match.end()
    parts.append(("markdown", relink(text[position:])))
    parts = [(kind, value) for kind, value in parts if kind != "markdown" or value.strip()]
    shown = {value for kind, value in parts if kind == "image"}

    extra: list[tuple[str, Any]] = []
    readme_lines = {line.strip() for line in text.splitlines()}
    for table in sorted((root / "tables").glob("*.*")):
        csv_alone = table.suffix == ".csv" and not table.with_suffix(".md").exists()
        md_not_shown = table.suffix == ".md" and not set(_content_lines(table.read_text())) <= readme_lines
        if csv_alone or md_not_shown:
            extra.append(("table", table.resolve()))
    images = sorted(p.resolve() for p in (root / "figures").rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    extra += [("image", path) for path in images if path not in shown]
    if extra:
        parts.append(("markdown", "## Not in the README\n\nFiles of the report folder the README does not show."))
        parts += extra
    return parts


def show_report(readme: Path | str) -> list[tuple[str, Any]]:
    """Display report_parts(readme) in a notebook, each file with its path in the report folder in the output's
    metadata ("report_file"); returns the parts shown."""
    from IPython.display import SVG, Image, Markdown, display

    readme = Path(readme).resolve()
    parts = report_parts(readme)
    for kind, value in parts:
        if kind == "markdown":
            display(Markdown(value))
            continue
        meta = {"report_file": value.relative_to(readme.parent).as_posix()}
        if kind == "image":
            display(SVG(filename=str(value)) if value.suffix.lower() == ".svg" else Image(filename=str(value)),
                    metadata=meta)
        elif value.suffix == ".md":
            display(Markdown(f"`{meta['report_file']}`\n\n" + value.read_text()), metadata=meta)
        else:
            import pandas as pd

            display(Markdown(f"`{meta['report_file']}`"))
            display(pd.read_csv(value), metadata=meta)
    return parts


# ------------------------------------------------------------------------------------------ colab
def say_where_results_go(results: str = "") -> Path:
    """Print where run records and checkpoints go; on Colab without Drive, how to keep them (Colab recycles the VM,
    /content included, on a disconnect; lambdalib.paths puts results on Drive whenever it is mounted)."""
    from . import paths

    where = Path(results).expanduser() if results else paths.results_dir()
    if paths.on_colab() and paths.colab_drive_results() is None and not results:
        print(f"results: {where} — on Colab this is lost when the session disconnects. To keep run records and "
              "checkpoints (and resume after a disconnect), mount Google Drive before running: "
              "from google.colab import drive; drive.mount('/content/drive')")
    else:
        print(f"results: {where}")
    return where
