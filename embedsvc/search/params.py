"""Parsing of the search's HTTP-style parameters (shared by the API and the CLI)."""

from __future__ import annotations

from collections.abc import Sequence


def parse_model_list(values: Sequence[str] | None) -> list[str] | None:
    """``?models=a,b&models=c`` -> [a, b, c] (order kept, duplicates and blanks dropped)."""
    if not values:
        return None
    out: list[str] = []
    for value in values:
        for part in value.split(","):
            part = part.strip()
            if part and part not in out:
                out.append(part)
    return out or None
