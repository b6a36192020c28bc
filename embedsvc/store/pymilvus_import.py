"""Importing pymilvus without letting it read ``MILVUS_URI``.

Why: pymilvus' ORM ``connections`` module parses ``MILVUS_URI`` when pymilvus is imported and raises
``ConnectionConfigException`` for a Milvus Lite file path such as ``./milvus.db``, although
``MilvusClient("./milvus.db")`` is how Milvus documents Lite. embedsvc reads that variable through its
settings only (``Settings.milvus_uri``) and never uses the ORM's default connection, so the variable is
hidden from pymilvus for the duration of its first import. Every embedsvc module that needs pymilvus
imports it through here first (the store does, in ``Store._connect``).

The same first import quiets two of pymilvus' own log lines that carry nothing for embedsvc's users,
in every process that uses the store: the iterators' "failed to get mvccTs from milvus server" warning
(Milvus Lite has no MVCC timestamp; the client-side one is right) on every collection, and the RPC
decorator's and connection manager's error records with a full traceback, which the store re-raises as
one ``StoreError`` line anyway (``EMBEDSVC_DEBUG=1`` keeps them).
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
import threading
from types import ModuleType

_ENV = "MILVUS_URI"
_lock = threading.Lock()
_ITERATOR_LOGGERS = ("pymilvus.client.iterator.query_iterator", "pymilvus.client.iterator.search_iterator")
_RPC_LOGGERS = ("pymilvus.decorators", "pymilvus.client.connection_manager")
_OWN_HANDLER_LOGGERS = ("pymilvus", "pymilvus.milvus_client", "pymilvus.bulk_writer")


def _not_mvcc_ts(record: logging.LogRecord) -> bool:
    return "mvccTs" not in record.getMessage()


def _debug() -> bool:
    from embedsvc.core.config import get_settings

    try:
        return get_settings().debug
    except ValueError:  # invalid settings are reported by whoever reads them for real
        return False


def quiet_pymilvus_logs() -> None:
    """Drop the mvccTs warnings and (unless EMBEDSVC_DEBUG) the RPC tracebacks; idempotent.

    pymilvus also installs its own stderr handlers (``propagate=False``); they are removed so that its
    records reach the application's handlers, whose policy (one line, the traceback only with --debug)
    then applies to them too.
    """
    for name in _OWN_HANDLER_LOGGERS:
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
    for name in _ITERATOR_LOGGERS:
        logger = logging.getLogger(name)
        if _not_mvcc_ts not in logger.filters:
            logger.addFilter(_not_mvcc_ts)
    if not _debug():
        for name in _RPC_LOGGERS:  # their failures are re-raised and reported once, as StoreError
            logging.getLogger(name).setLevel(logging.CRITICAL)


def import_pymilvus() -> ModuleType:
    """The pymilvus module, imported (once) with ``MILVUS_URI`` out of its sight."""
    module = sys.modules.get("pymilvus")
    if module is not None:
        quiet_pymilvus_logs()  # imported elsewhere first (a test, a plugin): still one place for the quieting
        return module
    with _lock:
        saved = os.environ.pop(_ENV, None)
        try:
            module = importlib.import_module("pymilvus")
        finally:
            if saved is not None:
                os.environ[_ENV] = saved
        quiet_pymilvus_logs()
        return module
