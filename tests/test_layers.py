"""The layers only import downwards: app -> flows -> integrations -> dataeff (and benchmarks beside app).

Every ``import`` in every module (top level and inside functions) is read with ``ast``, so a lazy
import that reaches up fails here too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SERVICE_CLIENTS = {"mlflow", "prefect", "prefect_ray", "label_studio_sdk", "ray", "requests", "psycopg2"}
FORBIDDEN: dict[str, set[str]] = {
    # the pure method: no service client, nothing above it
    "dataeff": {"integrations", "flows", "app", "benchmarks"} | SERVICE_CLIENTS,
    # service adapters: take dataeff's own types, know nothing of orchestration or the CLI
    "integrations": {"flows", "app", "benchmarks"},
    # orchestration: no argument parsing, no CLI
    "flows": {"app", "benchmarks"},
}


def _imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name.split(".")[0]) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module.split(".")[0]))
    return found


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_a_layer_never_imports_from_above(layer):
    bad = [
        f"{path.relative_to(ROOT)}:{line} imports {top}"
        for path in sorted((ROOT / layer).rglob("*.py"))
        for line, top in _imports(path)
        if top in FORBIDDEN[layer]
    ]
    assert not bad, "\n".join(bad)


def test_argparse_lives_in_the_app_layer_only():
    users = [
        str(p.relative_to(ROOT))
        for layer in FORBIDDEN
        for p in sorted((ROOT / layer).rglob("*.py"))
        if any(top == "argparse" for _, top in _imports(p))
    ]
    assert not users, f"argument parsing outside app/: {users}"
