"""What the web UI image installs: embedsvc's dependencies and its `webui` extra, minus the server stack.

The UI is an HTTP client of the API: it never imports torch, the models or the Milvus client, so its
image leaves them out (`pip install --no-deps` for embedsvc itself, then this list). The list is read
from pyproject.toml at build time, so a dependency added there reaches the UI image without editing
the Dockerfile. Standard library only: it runs before anything is installed.

    python docker/ui_requirements.py pyproject.toml > ui-requirements.txt
    python docker/ui_requirements.py --check-absent      # exit 1 if a server-only module is importable
"""

from __future__ import annotations

import importlib.util
import re
import sys
import tomllib
from pathlib import Path

UI_EXTRAS = ("webui",)
# Distributions the UI process must not need (normalised names). setuptools is there only for
# milvus-lite's pkg_resources import.
SERVER_ONLY = frozenset(
    {"torch", "torchvision", "timm", "pymilvus", "milvus-lite", "setuptools", "gdown", "huggingface-hub",
     "safetensors"}
)
# The import names of the heavy ones: none of them may be importable in the UI image.
SERVER_ONLY_MODULES = ("torch", "torchvision", "timm", "pymilvus", "milvus_lite")


def requirement_name(requirement: str) -> str:
    """The normalised distribution name of a PEP 508 requirement string (PEP 503 normalisation)."""
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    if match is None:
        raise ValueError(f"not a requirement: {requirement!r}")
    return re.sub(r"[-_.]+", "-", match.group(1)).lower()


def ui_requirements(pyproject: Path) -> list[str]:
    """Requirement strings (markers kept) for the UI image, in pyproject order, without duplicates."""
    project = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
    requirements = list(project.get("dependencies", []))
    extras = project.get("optional-dependencies", {})
    for extra in UI_EXTRAS:
        requirements += extras[extra]
    out: list[str] = []
    for requirement in requirements:
        if requirement_name(requirement) not in SERVER_ONLY and requirement not in out:
            out.append(requirement)
    return out


def importable_server_modules() -> list[str]:
    return [name for name in SERVER_ONLY_MODULES if importlib.util.find_spec(name) is not None]


def main(argv: list[str]) -> int:
    if argv[:1] == ["--check-absent"]:
        found = importable_server_modules()
        if found:
            sys.stderr.write(f"server-only modules importable in the UI image: {', '.join(found)}\n")
            return 1
        return 0
    pyproject = Path(argv[0]) if argv else Path(__file__).resolve().parents[1] / "pyproject.toml"
    sys.stdout.write("".join(f"{line}\n" for line in ui_requirements(pyproject)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
