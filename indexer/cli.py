"""`embedsvc index ...`: bulk-index ImageNet val or any folder; thin wrappers around ``run_index``
(``--engine ray``: ``ray_engine.run_index_ray``, the same run on Ray Data).

Every expected failure (database in use, manifest mismatch, missing weights, no images, --strict)
ends with one ``error: ...`` line on stderr and a non-zero exit code, never a traceback.
"""

from __future__ import annotations

import enum
import logging
import os
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from embedsvc.cli_common import (
    ALLOW_RANDOM,
    COMPILE,
    DATA_DIR,
    DECODE,
    DEVICE,
    MILVUS_URI,
    MODELS,
    PRECISION,
    PREPROCESS,
    WEIGHTS,
    apply_overrides,
    fail,
)
from embedsvc.core.config import Settings

log = logging.getLogger(__name__)

index_app = typer.Typer(
    help="Bulk-index images into Milvus (one FLAT/L2 collection per model).",
    no_args_is_help=True,
    rich_markup_mode=None,  # plain click help: no "<bool>" metavars, short lines at 80 columns
)

EXIT_ERROR = 1
EXIT_STRICT = 3
EXIT_INTERRUPTED = 130

NAME = Annotated[str, typer.Option("--name", help="Index name (one collection per model).")]
PRUNE = Annotated[bool, typer.Option("--prune", help="Delete rows whose files are gone.")]
STRICT = Annotated[bool, typer.Option("--strict", help="Fail the run if any file cannot be indexed.")]
LIMIT = Annotated[int | None, typer.Option("--limit", min=0, help="Index only the first N files (sorted).")]
SHARD = Annotated[
    str | None,
    typer.Option("--shard", help="i/n: this worker takes hash partition i of n (0-based); n workers cover all."),
]
BATCH = Annotated[int | None, typer.Option("--batch-size", min=1, help="Images per forward pass (default: settings).")]
WORKERS = Annotated[
    int | None,
    typer.Option(
        "--workers", min=0, help="Processes that decode ahead (default: 0 on 1-2 CPU cores, else 2; more on CUDA)."
    ),
]
BULK_THRESHOLD = Annotated[
    int | None,
    typer.Option(
        "--bulk-threshold", min=0, metavar="ROWS",
        help="Bulk import into a Milvus server for models writing ROWS+ rows (default 1000000).",
    ),
]


def with_bulk_threshold(settings: Settings, rows: int | None) -> Settings:
    """``settings`` with ``--bulk-threshold`` on top (the writer's ``bulk_models`` reads it); asked of a Milvus Lite
    store, one error line at once (Lite has no import API), not after the models have loaded."""
    if rows is None:
        return settings
    updated = Settings(**(settings.model_dump() | {"bulk_threshold": rows}))
    if not updated.uses_milvus_server:
        raise _fail(
            f"--bulk-threshold needs a Milvus server: Milvus Lite ({updated.resolved_milvus_uri}) cannot bulk import; "
            "drop the flag (rows are upserted) or pass --milvus-uri http://host:19530"
        )
    return updated


# --- --engine ray (indexer/ray_engine.py) ------------------------------------------------------------------
class Engine(enum.StrEnum):
    local = "local"
    ray = "ray"


ENGINE = Annotated[
    Engine, typer.Option("--engine", help="local: this process. ray: Ray Data tasks and one actor pool per model.")
]
RAY_ADDRESS = Annotated[
    str | None,
    typer.Option("--ray-address", metavar="ADDR", help="auto, ray://HOST:10001 or HOST:6379 (default: a local Ray)."),
]
RAY_CPUS = Annotated[int | None, typer.Option("--ray-cpus", min=1, help="CPUs of the local Ray (default: all).")]
RAY_ACTORS = Annotated[
    str | None,
    typer.Option("--ray-actors", metavar="N|MIN-MAX", help="Actors per model (default: one per GPU; 1 on CPU)."),
]
RAY_GPUS = Annotated[
    float | None,
    typer.Option("--ray-gpus-per-actor", min=0.0, metavar="G", help="GPUs per actor (default: 1/models on GPUs)."),
]
RAY_ACTOR_CPUS = Annotated[
    float | None,
    typer.Option("--ray-cpus-per-actor", min=0.0, metavar="C", help="CPUs per actor (default: from the cluster)."),
]


def ray_options(
    engine: Engine, address: str | None, cpus: int | None, actors: str | None, gpus: float | None,
    actor_cpus: float | None,
) -> object | None:
    """``RayOptions`` for ``--engine ray`` (None for local); a ``--ray-*`` flag without it is one error line."""
    if engine is Engine.local:
        given = [flag for flag, value in (("--ray-address", address), ("--ray-cpus", cpus), ("--ray-actors", actors),
                 ("--ray-gpus-per-actor", gpus), ("--ray-cpus-per-actor", actor_cpus)) if value is not None]
        if given:
            raise _fail(f"{given[0]} needs --engine ray")
        return None
    from embedsvc.indexer.ray_engine import RayOptions, check_reachable, parse_actors

    if address is not None and cpus is not None:
        raise _fail("--ray-cpus sizes a local Ray; with --ray-address the cluster has its own CPUs")
    if address:
        check_reachable(address)  # seconds, before the models load (ray.init would wait minutes)
    return RayOptions(address=address or None, num_cpus=cpus, actors=parse_actors(actors) if actors else None,
                      gpus_per_actor=gpus, cpus_per_actor=actor_cpus)
# --- end --engine ray -----------------------------------------------------------------------------------------


def register(app: typer.Typer) -> None:
    """Add the ``index`` command group to the ``embedsvc`` app."""
    app.add_typer(index_app, name="index")


#: CPU runs on at most this many usable cores decode inline by default (``default_workers``)
INLINE_DECODE_MAX_CORES = 2


def default_workers(settings: Settings) -> int:
    """Decode workers when ``--workers`` is not given.

    CUDA: decode is the bottleneck, so use most cores. CPU: the models' threads use every core; on a machine of up
    to ``INLINE_DECODE_MAX_CORES`` cores a worker beside them slows their forwards by more than the decode it takes
    off them (bench/index_throughput.py, 2 cores, bf16: e2e / one-pass forward-only highest with none), so images
    decode inline; a larger machine keeps 2 workers ahead.
    """
    if settings.resolved_device().startswith("cuda"):
        return max(2, min(16, (os.cpu_count() or 4) - 2))
    return 0 if len(os.sched_getaffinity(0)) <= INLINE_DECODE_MAX_CORES else 2


def _fail(message: str, code: int = EXIT_ERROR) -> typer.Exit:
    return fail(message, code)


@contextmanager
def _stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """First Ctrl-C / SIGTERM: finish the current batch, write what is done, exit. Second: abort."""

    def handler(signum: int, frame: object) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        log.warning("stopping after the current batch (signal %d again to abort)", signum)
        stop.set()

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def _run(
    make_source: Callable[[], object],
    *,
    index_name: str,
    settings: Settings,
    batch_size: int | None,
    workers: int | None,
    prune: bool,
    strict: bool,
    labels_file: Path | None = None,
    ray: object | None = None,  # RayOptions: --engine ray
) -> None:
    from embedsvc.embedder import load_embedders
    from embedsvc.indexer.datasets import DatasetError
    from embedsvc.indexer.progress import ProgressReporter, summary_table
    from embedsvc.indexer.runner import IndexerError, StrictModeError, run_index
    from embedsvc.models.weights import WeightsNotFoundError
    from embedsvc.store import DatabaseInUseError, ManifestMismatchError, Store, StoreError
    from embedsvc.store.errors import disk_full_as_error

    try:
        source = make_source()
    except UnicodeDecodeError as exc:  # the only text the listing reads is the labels file
        where = f"labels file {labels_file}" if labels_file else "a labels file"
        raise _fail(f"{where} is not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset {exc.start})") from None
    except (DatasetError, OSError) as exc:
        raise _fail(str(exc)) from None
    if not source.items and not source.refused:  # type: ignore[attr-defined]  # refusals are still reported
        raise _fail("nothing selected to index (check --limit, --classes, --shard)")
    try:
        store = Store.from_settings(settings, owner=f"embedsvc index ({index_name})")
    except DatabaseInUseError as exc:
        raise _fail(str(exc)) from None
    except StoreError as exc:
        raise _fail(f"cannot open the Milvus store at {settings.resolved_milvus_uri}: {exc}") from None
    stop = threading.Event()
    try:
        try:
            embedders = load_embedders(settings.model_keys(), settings=settings)
        except (WeightsNotFoundError, KeyError) as exc:
            raise _fail(str(exc).strip("'\"")) from None
        labels = {k: f"{k} (untrained)" if e.untrained else k for k, e in embedders.items()}
        try:
            with (
                _stop_on_signals(stop),
                ProgressReporter(f"index {index_name}") as progress,
                disk_full_as_error(settings.data_dir, f"indexing {index_name}"),  # the failures report
            ):
                if ray is not None:  # --engine ray: --workers caps the read tasks at once
                    from dataclasses import replace

                    from embedsvc.indexer.ray_engine import run_index_ray

                    summary = run_index_ray(
                        source,  # type: ignore[arg-type]
                        index_name=index_name, embedders=embedders, store=store, settings=settings,
                        options=replace(ray, read_tasks=workers),  # type: ignore[type-var]
                        batch_size=batch_size, prune=prune, strict=strict, progress=progress, stop_event=stop,
                    )
                else:
                    summary = run_index(
                        source,  # type: ignore[arg-type]
                        index_name=index_name,
                        embedders=embedders,
                        store=store,
                        settings=settings,
                        batch_size=batch_size,
                        workers=default_workers(settings) if workers is None else workers,
                        prune=prune,
                        strict=strict,
                        progress=progress,
                        stop_event=stop,
                    )
        except StrictModeError as exc:
            raise _fail(str(exc), EXIT_STRICT) from None
        except (ManifestMismatchError, IndexerError, StoreError) as exc:
            raise _fail(str(exc)) from None
        except KeyboardInterrupt:
            raise _fail("interrupted", EXIT_INTERRUPTED) from None
    finally:
        store.close()
    Console().print(summary_table(summary, labels))
    if summary.failures_report is not None:
        typer.echo(f"{len(summary.failures)} file(s) skipped; report: {summary.failures_report}", err=True)
    if summary.stopped:
        raise _fail("stopped before the end; rerun the same command to finish", EXIT_INTERRUPTED)


@index_app.command("folder")
def folder_cmd(
    root: Annotated[Path, typer.Argument(metavar="ROOT", help="Folder to index, recursively (images by content).")],
    name: NAME,
    labels_from_dirs: Annotated[
        bool, typer.Option("--labels-from-dirs", help="Label = first-level sub-folder name.")
    ] = False,
    labels_csv: Annotated[
        Path | None,
        typer.Option("--labels-csv", exists=True, dir_okay=False, help="CSV of path,label (relative paths)."),
    ] = None,
    prune: PRUNE = False,
    strict: STRICT = False,
    limit: LIMIT = None,
    shard: SHARD = None,
    batch_size: BATCH = None,
    workers: WORKERS = None,
    models: MODELS = None,
    weights: WEIGHTS = None,
    allow_random_weights: ALLOW_RANDOM = False,
    device: DEVICE = None,
    milvus_uri: MILVUS_URI = None,
    bulk_threshold: BULK_THRESHOLD = None,
    engine: ENGINE = Engine.local,
    ray_address: RAY_ADDRESS = None,
    ray_cpus: RAY_CPUS = None,
    ray_actors: RAY_ACTORS = None,
    ray_gpus_per_actor: RAY_GPUS = None,
    ray_cpus_per_actor: RAY_ACTOR_CPUS = None,
    data_dir: DATA_DIR = None,
    preprocess: PREPROCESS = None,
    decode: DECODE = None,
    precision: PRECISION = None,
    compile_model: COMPILE = None,
) -> None:
    """Index every image under ROOT into index NAME; rerun to resume, update or (--prune) clean up."""
    from embedsvc.indexer.folder import folder_source

    settings = apply_overrides(
        models=models,
        weights=weights,
        allow_random=allow_random_weights,
        device=device,
        milvus_uri=milvus_uri,
        data_dir=data_dir,
        preprocess=preprocess,
        decode=decode,
        precision=precision,
        compile=compile_model,
    )
    settings = with_bulk_threshold(settings, bulk_threshold)
    _run(
        lambda: folder_source(
            root, labels_from_dirs=labels_from_dirs, labels_csv=labels_csv, limit=limit, shard=shard
        ),
        index_name=name,
        settings=settings,
        batch_size=batch_size,
        workers=workers,
        prune=prune,
        strict=strict,
        labels_file=labels_csv,
        ray=ray_options(engine, ray_address, ray_cpus, ray_actors, ray_gpus_per_actor, ray_cpus_per_actor),
    )


@index_app.command("imagenet-val")
def imagenet_val_cmd(
    root: Annotated[
        Path, typer.Argument(metavar="ROOT", help="ImageNet val: flat ILSVRC2012_val_*.JPEG or one folder per synset.")
    ],
    labels: Annotated[
        Path | None,
        typer.Option(
            "--labels",
            exists=True,
            dir_okay=False,
            help="LOC_val_solution.csv, or the devkit's ILSVRC2012_validation_ground_truth.txt.",
        ),
    ] = None,
    devkit: Annotated[
        Path | None,
        typer.Option("--devkit", exists=True, file_okay=False, help="ILSVRC2012_devkit_t12 (ground truth, meta.mat)."),
    ] = None,
    classes: Annotated[
        list[str] | None,
        typer.Option("--classes", help="Class subset: synsets, timm class ids or ranges (0-9); repeatable/commas."),
    ] = None,
    name: Annotated[str, typer.Option("--name", help="Index name.")] = "imagenet-val",
    prune: PRUNE = False,
    strict: STRICT = False,
    limit: LIMIT = None,
    shard: SHARD = None,
    batch_size: BATCH = None,
    workers: WORKERS = None,
    models: MODELS = None,
    weights: WEIGHTS = None,
    allow_random_weights: ALLOW_RANDOM = False,
    device: DEVICE = None,
    milvus_uri: MILVUS_URI = None,
    bulk_threshold: BULK_THRESHOLD = None,
    engine: ENGINE = Engine.local,
    ray_address: RAY_ADDRESS = None,
    ray_cpus: RAY_CPUS = None,
    ray_actors: RAY_ACTORS = None,
    ray_gpus_per_actor: RAY_GPUS = None,
    ray_cpus_per_actor: RAY_ACTOR_CPUS = None,
    data_dir: DATA_DIR = None,
    preprocess: PREPROCESS = None,
    decode: DECODE = None,
    precision: PRECISION = None,
    compile_model: COMPILE = None,
) -> None:
    """Index the ImageNet-1k validation set with timm's class ids and names as labels."""
    from embedsvc.indexer.imagenet import imagenet_val_source

    settings = apply_overrides(
        models=models,
        weights=weights,
        allow_random=allow_random_weights,
        device=device,
        milvus_uri=milvus_uri,
        data_dir=data_dir,
        preprocess=preprocess,
        decode=decode,
        precision=precision,
        compile=compile_model,
    )
    settings = with_bulk_threshold(settings, bulk_threshold)
    _run(
        lambda: imagenet_val_source(root, labels=labels, devkit=devkit, limit=limit, classes=classes, shard=shard),
        index_name=name,
        settings=settings,
        batch_size=batch_size,
        workers=workers,
        prune=prune,
        strict=strict,
        labels_file=labels,
        ray=ray_options(engine, ray_address, ray_cpus, ray_actors, ray_gpus_per_actor, ray_cpus_per_actor),
    )
