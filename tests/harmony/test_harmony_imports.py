"""ossai.harmony is a leaf: it imports nothing else from ossai and no torch (see docs/style.md)."""

from __future__ import annotations

import ast
from pathlib import Path

import ossai.harmony

PACKAGE = Path(ossai.harmony.__file__).parent


def imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_harmony_imports_only_itself_from_ossai_and_no_torch() -> None:
    files = sorted(PACKAGE.glob("*.py"))
    assert {f.name for f in files} >= {"__init__.py", "tokenizer.py", "encoding.py", "parser.py"}
    for path in files:
        for name in imported_modules(path):
            top = name.split(".")[0]
            assert top not in {"torch", "triton", "numpy"}, f"{path.name} imports {name}"
            if top == "ossai":
                assert name.startswith("ossai.harmony"), f"{path.name} imports {name}"


def test_errors_are_value_errors() -> None:
    assert issubclass(ossai.harmony.HarmonyInputError, ValueError)
    assert issubclass(ossai.harmony.VocabError, ValueError)
