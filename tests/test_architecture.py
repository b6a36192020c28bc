"""The dependency direction of docs/architecture.md, checked on the import statements of every module.

library core (models, store, images, search, evaluation, ...) <- indexer <- service/CLI composition root;
the web UI depends on the HTTP client (and the wire schemas it returns) only.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STAGE_FOLDERS = {"indexer": "embedsvc.indexer", "webui": "embedsvc.webui"}

# Modules of the composition root: they wire the others and nothing below may import them.
ROOT = ("embedsvc.api", "embedsvc.main", "embedsvc.jobs", "embedsvc.cli", "embedsvc.cli_common",
        "embedsvc.serve_cli", "embedsvc.demo", "embedsvc.metrics", "embedsvc.indexer.cli",
        "embedsvc.evaluation.cli", "embedsvc.webui.cli")
WIRE_SCHEMAS = "embedsvc.api.schemas"
# What the web UI may import besides itself: the client (which hands out the wire types), settings, errors.
UI_ALLOWED = ("embedsvc.client", "embedsvc.core.config", "embedsvc.core.errors")


def _module(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    prefix = STAGE_FOLDERS.get(parts[0])
    if prefix:
        parts = (*prefix.split("."), *parts[1:])
    return ".".join(parts).removesuffix(".__init__")


def _within(module: str, prefixes: tuple[str, ...] | str) -> bool:
    prefixes = (prefixes,) if isinstance(prefixes, str) else prefixes
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def _layer(module: str) -> str:
    if module == WIRE_SCHEMAS:  # pure pydantic: the contract the service answers in and the client parses
        return "core"
    if _within(module, ROOT):
        return "root"
    if _within(module, "embedsvc.webui"):
        return "ui"
    if _within(module, "embedsvc.indexer"):
        return "indexer"
    return "core"


def _imports() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {}
    for top in ("embedsvc", *STAGE_FOLDERS):
        for path in (REPO / top).rglob("*.py"):
            found = edges.setdefault(_module(path), set())
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
                if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                elif isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                else:
                    continue
                found.update(n for n in names if _within(n, "embedsvc") and n != "embedsvc")
    return edges


def test_the_tree_has_every_layer():
    layers = {_layer(m) for m in _imports()}
    assert layers == {"core", "indexer", "root", "ui"}


def test_dependencies_point_one_way():
    rank = {"core": 0, "indexer": 1, "root": 2}
    wrong = []
    for module, targets in sorted(_imports().items()):
        layer = _layer(module)
        for target in sorted(targets):
            if layer == "ui":
                if not (_within(target, "embedsvc.webui") or _within(target, UI_ALLOWED)):
                    wrong.append(f"{module} -> {target} (the UI talks to the API through embedsvc.client only)")
            elif _layer(target) == "ui" or rank[_layer(target)] > rank[layer]:
                wrong.append(f"{module} ({layer}) -> {target} ({_layer(target)})")
    assert not wrong, "\n".join(wrong)
