"""The house rules a newcomer relies on, checked: short argument lists, imports that point one way."""
import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "lambdalib"


def test_no_function_takes_more_than_six_positional_arguments():
    crowded = []
    for source in sorted(PACKAGE.glob("*.py")):
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                positional = [a.arg for a in node.args.posonlyargs + node.args.args if a.arg not in ("self", "cls")]
                if len(positional) > 6:
                    crowded.append(f"{source.name}:{node.lineno} {node.name}({', '.join(positional)})")
    assert not crowded, crowded


def imports_of(name: str) -> set[str]:
    tree = ast.parse((PACKAGE / f"{name}.py").read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            found.update([node.module] if node.module else [a.name for a in node.names])
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("lambdalib"):
            found.add(node.module.split(".", 1)[-1])
    return found


def test_readers_of_the_record_never_import_the_trainer():
    for reader in ("report", "figures", "record", "attention", "export", "notebook"):
        if (PACKAGE / f"{reader}.py").exists():
            assert "train" not in imports_of(reader), reader
    assert "train" in imports_of("sweep") and "record" in imports_of("train")


def test_library_code_reports_through_logging_and_can_be_silenced(tmp_path, capsys):
    import logging

    from lambdalib import report

    (tmp_path / "runs").mkdir()
    report.build(tmp_path)
    assert "report: 0 run records" in capsys.readouterr().out  # INFO lines reach stdout by default
    logger = logging.getLogger("lambdalib")
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        report.build(tmp_path)
        assert "report:" not in capsys.readouterr().out
    finally:
        logger.setLevel(level)
    printing = [f.name for f in PACKAGE.glob("*.py")
                if f.name not in ("cli.py", "notebook.py", "sweep.py", "export.py") and "print(" in f.read_text()]
    assert not printing, printing  # the CLI and the notebooks' display helpers print; the library logs
