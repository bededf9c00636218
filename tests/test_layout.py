"""The import direction of docs/design.md, enforced: each part may import only the parts below it."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import ossai

PACKAGE = Path(ossai.__file__).parent
BASE = {"config", "settings", "errors"}
ALLOWED: dict[str, set[str]] = {
    "config": {"errors"},
    "settings": {"errors"},
    "errors": set(),
    "harmony": set(),
    "model": BASE | {"model"},
    "kernels": BASE | {"model", "kernels"},
    "engine": BASE | {"model", "kernels", "engine", "harmony"},
    "tools": {"errors", "harmony", "tools"},
    "store": BASE | {"store"},
    "testing": BASE | {"model", "engine", "testing", "harmony"},  # test and benchmark support only
    "server": BASE | {"model", "kernels", "engine", "harmony", "tools", "store", "server"},
    "chat": BASE | {"harmony", "engine", "tools"},  # the terminal client
    "bench": BASE | {"engine"},  # `ossai bench`
    "cli": BASE
    | {"model", "kernels", "engine", "harmony", "tools", "store", "server", "testing", "chat", "bench"},
}


def _part(module: str) -> str:
    return module.split(".")[1] if module.count(".") else "__init__"


def _imports(file: Path) -> set[str]:
    tree = ast.parse(file.read_text())
    here = "ossai." + ".".join(file.relative_to(PACKAGE).with_suffix("").parts)
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here.rsplit(".", node.level)[0]
                found.add(f"{base}.{node.module}" if node.module else base)
            elif node.module == "ossai":  # `from ossai import harmony` names subpackages
                found |= {f"ossai.{a.name}" for a in node.names}
            elif node.module:
                found.add(node.module)
    return {m for m in found if m == "ossai" or m.startswith("ossai.")}


def test_import_direction():
    problems = []
    for file in sorted(PACKAGE.rglob("*.py")):
        rel = file.relative_to(PACKAGE)
        part = rel.parts[0].removesuffix(".py")
        if part in ("__init__", "__main__"):
            continue
        for module in _imports(file):
            target = _part(module)
            if target not in ALLOWED.get(part, set()) | {part, "__init__", "__version__"}:
                problems.append(f"{rel} imports {module}")
    assert not problems, "\n".join(problems)


def test_harmony_loads_without_torch():
    code = "import sys, ossai.harmony; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
