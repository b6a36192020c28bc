"""`embedsvc eval INDEX`: which backbone retrieves best on an index's own labels (leave-one-out, exact).

A thin wrapper around ``evaluate_index`` and ``write_report``; expected failures end with one
``error: ...`` line and exit code 1.
"""

from __future__ import annotations

import logging
import shlex
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from embedsvc.cli_common import DATA_DIR, DEVICE, MILVUS_URI, MODELS, PrecisionChoice, apply_overrides, fail

log = logging.getLogger(__name__)

EXIT_ERROR = 1


def register(app: typer.Typer) -> None:
    """Add the ``eval`` command to the ``embedsvc`` app."""
    app.command("eval")(eval_cmd)


def _parse_k_list(value: str) -> list[int]:
    try:
        ks = [int(part) for part in value.replace(" ", "").split(",") if part]
    except ValueError:
        raise typer.BadParameter(f"--k-list expects comma-separated integers, got {value!r}") from None
    if not ks or min(ks) < 1:
        raise typer.BadParameter("--k-list needs at least one k >= 1")
    return ks


def _fail(message: str) -> typer.Exit:
    return fail(message, EXIT_ERROR)


def _check_precision(store: object, index: str, models: list[str] | None, wanted: str) -> None:
    """``--precision``: one error line naming each evaluated model whose stored vectors were made otherwise."""
    from embedsvc.manifest import precision_mismatch

    keys = models or store.models_of(index)  # type: ignore[attr-defined]
    problems = [f"{key} {why}" for key in keys
                if (why := precision_mismatch(store.get_manifest(index, key), wanted))]  # type: ignore[attr-defined]
    if problems:
        raise _fail(f"index {index!r} has vectors not made at {wanted}: {'; '.join(problems)}; eval reads stored "
                    f"vectors: re-index with --precision {wanted} under another --name, or drop --precision")


def eval_cmd(
    index: Annotated[str, typer.Argument(metavar="INDEX", help="Index name (as given to `embedsvc index --name`).")],
    sample: Annotated[
        int | None, typer.Option("--sample", min=1, help="Evaluate a seeded sample of N labelled queries.")
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the query sample.")] = 0,
    models: MODELS = None,
    k_list: Annotated[str, typer.Option("--k-list", help="Cut-offs for precision/hit/mAP@k.")] = "1,5,10,20,100",
    chance_seed: Annotated[int, typer.Option("--chance-seed", help="Seed of the shuffled-label chance baseline.")] = 0,
    ci_resamples: Annotated[
        int, typer.Option("--ci-resamples", min=1, help="Bootstrap / permutation resamples of the CIs and tests.")
    ] = 10_000,
    ci_seed: Annotated[int, typer.Option("--ci-seed", help="Seed of the bootstrap and permutation resamples.")] = 0,
    fuse: Annotated[
        bool, typer.Option("--fuse/--no-fuse", help="Also evaluate the RRF fusion of the models (fused_rrf).")
    ] = True,
    out: Annotated[Path | None, typer.Option("--out", help="Report folder (default: DATA_DIR/eval/INDEX).")] = None,
    update_doc: Annotated[
        Path | None,
        typer.Option(
            "--update-doc", help="Also replace the results block of this Markdown file (e.g. docs/evaluation.md)."
        ),
    ] = None,
    device: DEVICE = None,
    milvus_uri: MILVUS_URI = None,
    data_dir: DATA_DIR = None,
    precision: Annotated[
        PrecisionChoice | None,
        typer.Option("--precision", metavar="P", help="Refuse unless the stored vectors were made at P "
                     "(fp32, bf16, fp16; eval never re-embeds)."),
    ] = None,
) -> None:
    """Leave-one-out retrieval metrics of every model in INDEX, from its stored vectors (no re-embedding).

    Writes eval.json, metrics.csv, per_class.csv, per_query.csv, paired.csv, precision_at_k.png and results.md.
    Every metric carries a 95% bootstrap CI; every pair of models (and the RRF fusion) a Holm-adjusted test.
    """
    from embedsvc.evaluation import report
    from embedsvc.evaluation.runner import evaluate_index
    from embedsvc.store import IndexNotFoundError, Store, StoreError
    from embedsvc.store.errors import disk_full_as_error

    ks = _parse_k_list(k_list)
    settings = apply_overrides(device=device, milvus_uri=milvus_uri, data_dir=data_dir)
    out_dir = out or settings.data_dir / "eval" / index
    try:
        store = Store.from_settings(settings)
    except StoreError as exc:
        raise _fail(f"cannot open the Milvus store at {settings.resolved_milvus_uri}: {exc}") from None
    console = Console(stderr=True)
    try:
        if precision is not None and str(precision) != "auto":
            _check_precision(store, index, models, str(precision))
        with Progress(
            TextColumn(f"eval {index}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("queries x models"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=console,
            transient=False,
        ) as bar:
            task = bar.add_task("eval", total=None)

            def advance(step: int, total: int) -> None:
                bar.update(task, advance=step, total=total)

            ev = evaluate_index(
                store,
                index,
                models=models,
                sample=sample,
                seed=seed,
                k_list=ks,
                chance_seed=chance_seed,
                ci_resamples=ci_resamples,
                ci_seed=ci_seed,
                fuse=fuse,
                device=settings.resolved_device(),
                progress=advance,
            )
    except IndexNotFoundError as exc:
        raise _fail(str(exc) or f"no index named {index!r}") from None
    except (ValueError, StoreError) as exc:
        raise _fail(str(exc)) from None
    finally:
        store.close()
    args = ["embedsvc", "eval", index]
    args += ["--sample", str(sample), "--seed", str(seed)] if sample else []
    args += [a for m in models or [] for a in ("-m", m)]
    args += ["--k-list", ",".join(map(str, ks))] if ks != [1, 5, 10, 20, 100] else []
    args += ["--chance-seed", str(chance_seed)] if chance_seed else []
    args += ["--ci-resamples", str(ci_resamples)] if ci_resamples != 10_000 else []
    args += ["--ci-seed", str(ci_seed)] if ci_seed else []
    args += [] if fuse else ["--no-fuse"]
    args += ["--precision", str(precision)] if precision is not None and str(precision) != "auto" else []
    args += ["--data-dir", str(data_dir)] if data_dir else []
    args += ["--milvus-uri", milvus_uri] if milvus_uri else []
    with disk_full_as_error(out_dir, "writing the evaluation report"):
        paths = report.write_report(ev.summary, ev.per_query, out_dir, command=shlex.join(args))
    report.print_summary(ev.summary, Console())
    if update_doc is not None:
        try:
            report.update_doc(update_doc, paths["markdown"].read_text())
        except (OSError, ValueError) as exc:
            raise _fail(str(exc)) from None
    console.print(f"report: {out_dir} ({', '.join(p.name for p in paths.values())})")
