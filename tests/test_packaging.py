"""What gets installed: every source package under the project's own import name, and no other."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STAGE_FOLDERS = {"indexer": "embedsvc.indexer", "webui": "embedsvc.webui"}


def _setuptools() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]


def _source_packages() -> set[str]:
    names = set()
    for top in ("embedsvc", *STAGE_FOLDERS):
        for init in (REPO / top).rglob("__init__.py"):
            parts = init.parent.relative_to(REPO).parts
            prefix = STAGE_FOLDERS.get(parts[0], parts[0])
            names.add(".".join((prefix, *parts[1:])))
    return names


def test_every_source_package_is_installed_under_embedsvc():
    listed = set(_setuptools()["packages"])
    assert listed == _source_packages()
    assert all(name == "embedsvc" or name.startswith("embedsvc.") for name in listed)
    assert _setuptools()["package-dir"] == {v: k for k, v in STAGE_FOLDERS.items()}


def test_stage_folders_import_under_the_project_name_only(tmp_path):
    """Outside the checkout (as a user's program runs), the installed names are the only ones."""
    code = (
        "import importlib.util as u, embedsvc.indexer as i, embedsvc.webui as w; "
        "print(i.__file__, w.__file__, u.find_spec('indexer'), u.find_spec('webui'))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True)
    indexer_file, webui_file, generic_indexer, generic_webui = out.stdout.split()
    assert Path(indexer_file).parent == REPO / "indexer" and Path(webui_file).parent == REPO / "webui"
    assert generic_indexer == generic_webui == "None"
