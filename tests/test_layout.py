"""The house rules a newcomer relies on, checked: short argument lists, an import graph without circles,
modules one can hold in one's head, a CLI whose --help imports no torch."""
import ast
import re
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "lambdalib"
MAX_MODULE_LINES = 600
# Issue #21 asked for about 7,000 lines. Round 4 added the TorchScript/fx/ONNX paths of the layer, the GPU data
# path (device.py) and 18 claims (~9,100 lines), #26 the four-lambda-layer family, the layer implementations as
# labels and claim rows 2 and 12b (~9,350); round 6 took out 656 lines of repeated code and docstrings that
# restated signatures (8,694: 6,348 lines of code, 862 of docstrings, 1,321 blank, PEP 8's, and 163 of comments),
# then gave spiky val losses their own axis (+20), left runs our divergence rule cut short out of claim 2 (+12)
# and keyed data identity and the decoded cache on the listed images' bytes (+10, and +8 to read each once).
# Round 7: six reviewers, one per module group, then two merging concepts spelled in several modules (divergence
# epoch, Student-t width, checkpoint reader) took out 339 more (8,410); two reviews of that trim put back 41
# lines where it had changed behaviour (first_per_class, sample_crop_params, val_transform, `models`, the order
# attention writes its files in, its table's columns, an unreadable divergence epoch) or lost a why.
# Round 8: two outside reads of every docstring and of the README found 27 statements untrue; making them true took
# +5 (a history.csv without an epoch column refused, the data read once a run, reasons spelled out) after figures
# stopped opening config.json for restarts (-6); +7 for imagenette.timm_crop_pct, which export and the models'
# pretrained_cfg now give timm (with crop_pct 0.875 timm resized a pixel short of val_transform at 435 of the sizes
# 8-1024 px); +5 for files.first_line, the one "an error's first line" of record, device and cli. Round 9: the
# divergence rule asking the batch-statistics loss (+3) and the CLI's "1 run" (+2), paid for by joined lines (-7).
# A ceiling: it only shrinks from here.
MAX_PACKAGE_LINES = 8466


def test_no_function_takes_more_than_six_positional_arguments():
    crowded = []
    for source in sorted(PACKAGE.glob("*.py")):
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                positional = [a.arg for a in node.args.posonlyargs + node.args.args if a.arg not in ("self", "cls")]
                if len(positional) > 6:
                    crowded.append(f"{source.name}:{node.lineno} {node.name}({', '.join(positional)})")
    assert not crowded, crowded


def imports_of(source: str) -> set[str]:
    """The lambdalib modules a module's source imports, at module level or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            found.update([node.module.split(".")[0]] if node.module else [a.name for a in node.names])
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("lambdalib."):
            found.add(node.module.split(".")[1])
        elif isinstance(node, ast.ImportFrom) and node.module == "lambdalib":
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[1] for a in node.names if a.name.startswith("lambdalib."))
    modules = {p.stem for p in PACKAGE.glob("*.py")}
    return found & modules - {"__init__"}


def import_graph() -> dict[str, set[str]]:
    return {p.stem: imports_of(p.read_text()) - {p.stem} for p in sorted(PACKAGE.glob("*.py")) if p.stem != "__init__"}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One circle through each strongly connected part of the graph (Tarjan), as a readable path."""
    index, low, stack, on_stack, parts = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            part = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                part.append(top)
                if top == node:
                    break
            if len(part) > 1:
                parts.append(sorted(part))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return parts


def test_the_cycle_finder_finds_a_circle():  # the check below can fail
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
    assert imports_of("def f():\n    from .train import run\n") == {"train"}


def test_no_import_circle_among_lambdalib_modules():
    assert cycles(import_graph()) == []


def test_modules_stay_small_enough_to_read():
    sizes = {p.name: len(p.read_text().splitlines()) for p in PACKAGE.glob("*.py")}
    assert {name: n for name, n in sizes.items() if n > MAX_MODULE_LINES} == {}
    assert sum(sizes.values()) <= MAX_PACKAGE_LINES, sum(sizes.values())


def test_help_imports_neither_torch_nor_timm():
    probe = ("import sys\nfrom lambdalib.cli import main\n"
             "for argv in (['--help'], ['report', '--help'], ['reproduce', '--help'], ['train', '--help']):\n"
             "    try:\n        main(argv)\n    except SystemExit:\n        pass\n"
             "heavy = [m for m in ('torch', 'timm', 'pandas', 'torchvision') if m in sys.modules]\n"
             "print('HEAVY', heavy, file=sys.stderr)\n")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert "HEAVY [" in result.stderr, result.stderr
    assert result.stderr.strip().splitlines()[-1] == "HEAVY []"


def test_building_the_report_imports_no_torch(tmp_path):
    """`lambdalib report` draws its tables, figures and claims from records alone: without torch's 3 s import."""
    import shutil

    import pytest

    committed = sorted((PACKAGE.parent / "results" / "runs").glob("R18_noise0_fast_*"))[:2]
    if not committed:
        pytest.skip("no committed run records")
    for run in committed:
        shutil.copytree(run, tmp_path / "runs" / run.name, ignore=shutil.ignore_patterns("*.pt"))
    probe = ("import sys\nfrom lambdalib import report\n"
             f"report.build({str(tmp_path)!r})\n"
             "print('HEAVY', [m for m in ('torch', 'timm', 'torchvision') if m in sys.modules])\n")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300)
    assert result.stdout.strip().splitlines()[-1:] == ["HEAVY []"], result.stdout + result.stderr
    assert list((tmp_path / "figures").rglob("*.png"))  # it drew


def test_library_code_reports_through_a_handlerless_logger(tmp_path):
    (tmp_path / "runs").mkdir()
    probe = ("import logging\nfrom lambdalib import report\n"
             f"report.build({str(tmp_path)!r})\n"
             "logger = logging.getLogger('lambdalib')\n"
             "print('HANDLERS', [type(h).__name__ for h in logger.handlers], logger.propagate)\n")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert result.stdout.strip() == "HANDLERS ['NullHandler'] True", result.stdout + result.stderr  # nothing else
    allowed = ("cli.py", "notebook.py", "sweep.py", "export.py")
    printing = [f.name for f in PACKAGE.glob("*.py")
                if f.name not in allowed and re.search(r"(?<![\w.])print\(", f.read_text())]
    assert not printing, printing  # the CLI and the notebooks' display helpers print; the library logs


def test_the_cli_attaches_the_handler(tmp_path, capsys):
    from lambdalib.cli import main

    (tmp_path / "runs").mkdir()
    assert main(["report", "--results", str(tmp_path)]) == 0
    assert "report: 0 run records" in capsys.readouterr().out


def test_the_readme_layout_table_names_every_module_and_no_other():
    readme = (PACKAGE.parent / "README.md").read_text()
    layout = readme[readme.index("## Layout"):]
    rows = "\n".join(line for line in layout.splitlines() if line.startswith("| `lambdalib/`"))
    named = set(re.findall(r"`(\w+)\.py`", rows))
    modules = {p.stem for p in PACKAGE.glob("*.py")} - {"__init__"}
    assert named == modules
