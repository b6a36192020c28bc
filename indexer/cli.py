"""Placeholder: this stage's commands are added by its own module."""

import typer


def register(app: typer.Typer) -> None:
    """Add this stage's subcommands to the `embedsvc` app."""
