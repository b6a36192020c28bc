"""The `embedsvc` console script: one thin subcommand per pipeline stage, each a plain function underneath."""

from __future__ import annotations

import json
import os

import typer
from rich.console import Console
from rich.table import Table

from embedsvc.cli_common import (
    ALLOW_RANDOM,
    DEBUG_ENV,
    DEVICE,
    MODELS,
    WEIGHTS,
    ErrorLineGroup,
    apply_overrides,
    debug_requested,
    setup_logging,
)
from embedsvc.core.config import get_settings

# Plain click help (rich_markup_mode=None): no "<bool>" metavars, one or two lines per option at 80 columns.
app = typer.Typer(help=__doc__, no_args_is_help=True, add_completion=False, cls=ErrorLineGroup, rich_markup_mode=None)
console = Console()


@app.callback()
def _main(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging."),
    debug: bool = typer.Option(False, "--debug", help="Debug logging, and tracebacks with errors (EMBEDSVC_DEBUG=1)."),
) -> None:
    if debug:  # the flag is the setting: this process's settings and its children see it
        os.environ[DEBUG_ENV] = "1"
        get_settings.cache_clear()
    setup_logging(verbose=verbose, debug=debug or debug_requested([]))


@app.command("models")
def models_cmd(
    models: MODELS = None,
    weights: WEIGHTS = None,
    allow_random_weights: ALLOW_RANDOM = False,
    device: DEVICE = None,
    load: bool = typer.Option(False, "--load", help="Load each model: show its weights' provenance and dimension."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    catalogue: bool = typer.Option(
        False, "--catalogue", help="List curated timm backbones (use as -m timm:NAME) with their dims and input sizes."
    ),
) -> None:
    """List the embedders embedsvc knows (and, with --load, where each one's weights resolve from)."""
    from embedsvc.models.registry import get_spec, list_specs

    if catalogue:
        from embedsvc.models.catalogue import catalogue_rows

        _print_rows(catalogue_rows(), as_json)
        return
    settings = apply_overrides(models=models, weights=weights, allow_random=allow_random_weights, device=device)
    specs = [get_spec(k) for k in settings.model_keys()] if models else list_specs()
    rows = []
    for spec in specs:
        row = {"key": spec.key, "model_name": spec.model_name, "display_name": spec.display_name,
               "default": spec.default}
        if load:
            from embedsvc.embedder import load_embedder

            emb = load_embedder(spec.key, settings=settings)
            row |= {"dim": emb.dim, "weights": emb.provenance.label}
        rows.append(row)
    _print_rows(rows, as_json)


def _print_rows(rows: list[dict], as_json: bool) -> None:
    if as_json:
        console.print_json(json.dumps(rows))
        return
    table = Table(*rows[0].keys()) if rows else Table()
    for row in rows:
        table.add_row(*(str(v) for v in row.values()))
    console.print(table)


def _register_stages() -> None:
    """Each stage lives in its own package and contributes its commands here."""
    from embedsvc.evaluation.cli import register as register_eval
    from embedsvc.indexer.cli import register as register_index
    from embedsvc.serve_cli import register as register_serve
    from embedsvc.webui.cli import register as register_ui

    for register in (register_index, register_serve, register_ui, register_eval):
        register(app)


_register_stages()

if __name__ == "__main__":
    app()
