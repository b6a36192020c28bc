"""Retrieval evaluation: which backbone retrieves best on an index's own labels.

``metrics`` (exact leave-one-out search, per-query metrics, RRF fusion), ``stats`` (bootstrap CIs,
paired tests, Holm), ``runner`` (``evaluate_arrays``, ``evaluate_index``), ``report`` (terminal
tables, JSON/CSV/PNG/Markdown), ``schemas`` (the API's response model) and ``cli`` (``embedsvc
eval``). Definitions: docs/evaluation.md.
"""
