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
