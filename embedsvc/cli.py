"""The `embedsvc` console script: one thin subcommand per pipeline stage, each a plain function underneath."""

from __future__ import annotations

import json
import os
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import TaskID
from rich.table import Table

from embedsvc.cli_common import (
    ALLOW_RANDOM,
    DATA_DIR,
    DEBUG_ENV,
    DEVICE,
    MILVUS_URI,
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


# -- export (issue #13): data out as parquet -----------------------------------------------------------
@app.command("export")
def export_cmd(
    index: str = typer.Argument(..., metavar="INDEX", help="Index to export."),
    out: Path = typer.Option(..., "--out", metavar="DIR", help="Writes DIR/<model>/part-*.parquet and _manifest.json."),
    models: list[str] | None = typer.Option(
        None, "--model", "-m", metavar="KEY", help="Only this model of the index (repeatable). Default: all."
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace the exported models in a non-empty DIR."),
    part_rows: int = typer.Option(1_000_000, "--part-rows", min=1, metavar="N", help="At most N rows per part file."),
    milvus_uri: MILVUS_URI = None,
    data_dir: DATA_DIR = None,
) -> None:
    """Export an index's rows and vectors as parquet (pyarrow, pandas, Milvus bulk import read it)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from embedsvc.export import export_index
    from embedsvc.store import Store

    settings = apply_overrides(milvus_uri=milvus_uri, data_dir=data_dir)
    with Store.from_settings(settings, owner=f"embedsvc export ({index})") as store, Progress(
        TextColumn("export {task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("rows"),
        TimeElapsedColumn(), console=Console(stderr=True), transient=False,
    ) as bar:
        tasks: dict[str, TaskID] = {}

        def advance(key: str, done: int, total: int) -> None:
            if key not in tasks:
                tasks[key] = bar.add_task(f"{index}/{key}", total=total)
            bar.update(tasks[key], completed=done, total=max(total, done))

        summary = export_index(store, index, out, models=models, overwrite=overwrite, part_rows=part_rows,
                               progress=advance)
    for key, done in summary.models.items():
        console.print(f"{key}: {done.rows:,} rows in {len(done.parts)} part(s) -> {done.directory}")


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
