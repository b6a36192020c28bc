"""Importing pymilvus without letting it read ``MILVUS_URI``.

Why: pymilvus' ORM ``connections`` module parses ``MILVUS_URI`` when pymilvus is imported and raises
``ConnectionConfigException`` for a Milvus Lite file path such as ``./milvus.db``, although
``MilvusClient("./milvus.db")`` is how Milvus documents Lite. embedsvc reads that variable through its
settings only (``Settings.milvus_uri``) and never uses the ORM's default connection, so the variable is
hidden from pymilvus for the duration of its first import. Every embedsvc module that needs pymilvus
imports it through here first (the store does, in ``Store._connect``).
"""

from __future__ import annotations

import importlib
import os
import sys
import threading
from types import ModuleType

_ENV = "MILVUS_URI"
_lock = threading.Lock()


def import_pymilvus() -> ModuleType:
    """The pymilvus module, imported (once) with ``MILVUS_URI`` out of its sight."""
    module = sys.modules.get("pymilvus")
    if module is not None:
        return module
    with _lock:
        saved = os.environ.pop(_ENV, None)
        try:
            return importlib.import_module("pymilvus")
        finally:
            if saved is not None:
                os.environ[_ENV] = saved
