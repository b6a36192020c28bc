"""The Ray Data engine (``--engine ray``): the local engine's run with read and the models on a Ray cluster.

Same plan, same accounting, same writer and report as ``runner.run_index``, so both engines resume,
skip, fail and count identically; only where the work runs differs:

    driver: plan_run (ids, labels, what each model may keep, prune) -> blocks of the plan
    Ray CPU tasks: read + hash + decode + each model's preprocessing (the reader's per-file function)
    Ray actor pool per model: weights loaded once per actor (num_gpus per actor when the cluster has GPUs)
    driver: iter_batches -> BatchMapper (counts, failures, rows) -> StoreWriter (Milvus upserts) -> report

The sink stays on the driver on purpose: Milvus Lite can be opened by one process only, and the
writer's engine-sized upserts and its one flush at the end are already the store's policy. Ray retries
a read task whose worker dies and restarts a lost model actor (``max_restarts``/``max_task_retries``);
nothing is written from the cluster, and rows are keyed by id, so a retried batch changes nothing.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from embedsvc.core.config import Settings
from embedsvc.core.errors import EmbedsvcError
from embedsvc.embedder import Embedder
from embedsvc.indexer.datasets import DatasetSource
from embedsvc.indexer.embedder import ComputeTimer, decode_short_side_of, decoder_of, transforms_of
from embedsvc.indexer.plan import IndexerError, RunPlan, plan_run
from embedsvc.indexer.ray_stages import EmbedActor, col, plan_blocks, read_stage, vector_of
from embedsvc.indexer.reader import ReadBatch, ReadResult
from embedsvc.indexer.report import IndexSummary, ProgressUpdate, strict_error
from embedsvc.indexer.runner import BatchMapper, _finish, _run, check_run, progress_reporter
from embedsvc.indexer.writer import StoreWriter
from embedsvc.models.transforms import FastEvalTransform
from embedsvc.store import Store

__all__ = ["RayEngineError", "RayOptions", "StageRates", "check_reachable", "parse_actors", "run_index_ray"]

log = logging.getLogger(__name__)

# Fault tolerance is Ray Data's default and this engine relies on it (tests/indexer/test_ray_engine.py kills a
# worker to prove it): a map task whose worker dies is retried (``max_retries=-1``), a dead actor is restarted
# (``max_restarts=-1``) and its batches retried (``max_task_retries=-1``). Ray 2.60 deprecates passing these
# as remote args, so they are not repeated here. A bad file never raises: it is a listed failure.


class RayEngineError(EmbedsvcError):
    """Ray is missing, cannot be reached, or the run failed on the cluster; the message says which."""

    code = "ray_engine_failed"
    http_status = 503
    public_message = "the Ray engine is unavailable or its run failed (details are in the server log)"


@dataclass(frozen=True)
class RayOptions:
    """How to run on Ray. Every ``None`` is decided from the cluster's resources (``_resolve``)."""

    address: str | None = None  # None: start a local Ray for this run and stop it at the end
    num_cpus: int | None = None  # CPUs of that local Ray (default: this machine's)
    actors: tuple[int, int] | None = None  # actors per model: fixed (n, n) or autoscaling (min, max)
    gpus_per_actor: float | None = None
    cpus_per_actor: float | None = None
    read_tasks: int | None = None  # most read tasks at once (None: as many as the CPUs allow)


def parse_actors(text: str) -> tuple[int, int]:
    """``N`` (a fixed pool) or ``MIN-MAX`` (Ray Data autoscales between them) -> (min, max)."""
    low, _, high = text.strip().partition("-")
    try:
        pool = (int(low), int(high or low))
    except ValueError:
        raise RayEngineError(f"--ray-actors expects N or MIN-MAX (e.g. 2 or 1-4), got {text!r}") from None
    if pool[0] < 1 or pool[1] < pool[0]:
        raise RayEngineError(f"--ray-actors {text}: need 1 <= MIN <= MAX")
    return pool


@dataclass
class Resolved:
    """The pool shapes this run uses, as logged and put in the summary."""

    actors: tuple[int, int]
    gpus_per_actor: float
    cpus_per_actor: float
    device: str
    cluster: dict[str, float]


@dataclass
class StageRates:
    """Per-stage work as the stages measured it: seconds inside each stage and the rows it handled.

    ``read`` is per read task (files/s of one CPU slot), each model per actor, ``write`` the driver's upserts.
    """

    rows: dict[str, int] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    def add(self, stage: str, seconds: float, rows: int) -> None:
        self.seconds[stage] = self.seconds.get(stage, 0.0) + seconds
        self.rows[stage] = self.rows.get(stage, 0) + rows

    def rate(self, stage: str) -> float:
        seconds = self.seconds.get(stage, 0.0)
        return self.rows.get(stage, 0) / seconds if seconds > 0 else 0.0

    def as_dict(self) -> dict[str, dict[str, float]]:
        return {s: {"rows": self.rows[s], "seconds": self.seconds[s], "rows_per_s": self.rate(s)} for s in self.rows}


class ActorTimer(ComputeTimer):
    """Per-model forward seconds as the actors measured them; the driver's hand-off of their vectors to the
    shared ``BatchMapper`` (which times what it calls) is not compute and is not counted."""

    def add(self, key: str, seconds: float, rows: int) -> None:  # called by embed_batch on the driver
        return

    def record(self, key: str, seconds: float, rows: int) -> None:
        super().add(key, seconds, rows)


class ActorEmbedder:
    """Stands in for an embedder in the shared ``BatchMapper`` and report: the actors already embedded, so the
    tensor it is handed *is* the vectors. ``precision`` is what the actors reported (a node without bf16 units
    runs fp32); every other attribute is the driver's embedder's."""

    def __init__(self, embedder: Embedder) -> None:
        self._embedder = embedder
        self.precisions: set[str] = set()

    def embed(self, batch: torch.Tensor) -> np.ndarray:
        return batch.numpy()

    @property
    def precision(self) -> str:
        return "+".join(sorted(self.precisions)) or str(self._embedder.precision)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._embedder, name)


# ------------------------------------------------------------------------------------------------ Ray
def _ray() -> Any:
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise RayEngineError("--engine ray needs Ray Data: pip install 'embedsvc[ray]'") from None
    return ray


@contextmanager
def ray_session(options: RayOptions) -> Iterator[Any]:
    """Connect to ``options.address``, or start a local Ray; shut down only what this call started.

    A Ray already initialised in this process (a notebook, a test fixture) is used as it is.
    """
    ray = _ray()
    started = False
    if not ray.is_initialized():
        # Ray's C++ core logs warnings meant for Ray's developers (e.g. issue 53727 for every actor pool); our
        # errors arrive as exceptions. RAY_BACKEND_LOG_LEVEL=info shows them again.
        os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")
        quiet = {"log_to_driver": False, "logging_level": logging.ERROR}
        main = threading.current_thread() is threading.main_thread()
        sigterm = signal.getsignal(signal.SIGTERM) if main else None
        try:
            if options.address is None:
                ray.init(
                    address="local",  # never join some other Ray found on this machine
                    num_cpus=options.num_cpus or os.cpu_count() or 1,
                    include_dashboard=False,
                    **quiet,
                )
            else:
                check_reachable(options.address)
                ray.init(address=options.address, **quiet)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            where = options.address or "a local Ray"
            raise RayEngineError(f"cannot start or reach Ray at {where}: {_first_line(exc)}") from None
        finally:
            if main:  # ray.init makes SIGTERM exit at once; the CLI's handler finishes the batch and writes first
                signal.signal(signal.SIGTERM, sigterm)
        started = True
    _quiet_ray_data(ray)
    try:
        yield ray
    finally:
        if started:
            ray.shutdown()


def check_reachable(address: str) -> None:
    """A TCP connect to ``HOST:PORT`` / ``ray://HOST:PORT`` first: ``ray.init`` waits minutes on an address where
    nothing listens, this says so in seconds. ``auto`` (RAY_ADDRESS, or the Ray started on this machine) is Ray's."""
    if address == "auto":
        return
    client = address.startswith("ray://")
    target = address.removeprefix("ray://")
    host, _, port = target.rpartition(":") if ":" in target else (target, "", "")
    try:
        port_number = int(port) if port else (10001 if client else 6379)
    except ValueError:
        raise RayEngineError(f"--ray-address expects auto, ray://HOST:PORT or HOST:PORT, got {address!r}") from None
    try:
        socket.create_connection((host.strip("[]") or "127.0.0.1", port_number), timeout=5).close()
    except OSError as exc:
        raise RayEngineError(f"cannot reach Ray at {address}: {exc.strerror or exc}") from None


def _quiet_ray_data(ray: Any) -> None:
    """Our own progress (rich) and summary replace Ray Data's bars and per-run banners."""
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    ctx.verbose_stats_logs = False
    logging.getLogger("ray.data").setLevel(logging.ERROR)


def _resolve(ray: Any, options: RayOptions, settings: Settings, models: int) -> Resolved:
    """Pool sizes from the cluster: on GPUs each GPU holds one actor of every model (1/models GPU each); on
    CPUs one actor per model, sharing all but one CPU (kept for the read tasks)."""
    cluster = {k: float(v) for k, v in ray.cluster_resources().items() if k in ("CPU", "GPU", "memory")}
    cpus, gpus = cluster.get("CPU", 1.0), cluster.get("GPU", 0.0)
    use_gpu = gpus > 0 and (settings.device == "auto" or settings.device.startswith("cuda"))
    if options.gpus_per_actor is not None:
        gpus_per_actor = options.gpus_per_actor
    else:
        gpus_per_actor = round(1.0 / models, 4) if use_gpu else 0.0
    if gpus_per_actor > 0:
        actors = options.actors or (max(1, int(gpus * (1.0 / models) / gpus_per_actor)),) * 2
        cpus_per_actor = options.cpus_per_actor if options.cpus_per_actor is not None else 1.0
        device = "cuda"
    else:
        actors = options.actors or (1, 1)
        cpus_per_actor = (
            options.cpus_per_actor
            if options.cpus_per_actor is not None
            else max(0.25, round((cpus - 1.0) / (models * actors[0]), 2))
        )
        device = "cpu"
    return Resolved(actors, gpus_per_actor, cpus_per_actor, device, cluster)


def read_transforms(embedders: Mapping[str, Embedder], device: str) -> dict[str, Any]:
    """What the read tasks run per model: ``transforms_of``, except that with actors on an accelerator the fast
    path's models get the shared uint8 decode (None) and preprocess it on their device, as in the local engine."""
    transforms = transforms_of(embedders)
    if device == "cpu":
        return transforms
    return {k: None if isinstance(t, FastEvalTransform) else t for k, t in transforms.items()}


def build_dataset(
    ray: Any, plan: RunPlan, embedders: Mapping[str, Embedder], settings: Settings, *, batch_size: int,
    options: RayOptions, resolved: Resolved,
) -> Any:
    """plan blocks -> read tasks -> one actor pool per model, as a lazy Ray Dataset."""
    keys = list(embedders)
    decode_bound = decode_short_side_of(embedders)  # the run's one decode, as the local engine and plan_run use
    manifest_kwargs = {"decode_short_side": decode_bound} if decode_bound else {}
    ds = ray.data.from_arrow(plan_blocks(plan, batch_size))
    ds = ds.map_batches(
        read_stage,
        batch_format="numpy",
        batch_size=batch_size,
        zero_copy_batch=True,
        fn_kwargs={
            "root": str(plan.source.root),
            "keys": keys,
            "transforms": read_transforms(embedders, resolved.device),
            "max_pixels": settings.max_image_pixels,
            "decode_short_side": decode_bound,
        },
        compute=ray.data.TaskPoolStrategy(size=options.read_tasks),
        num_cpus=1,
    )
    low, high = resolved.actors
    for key, embedder in embedders.items():
        ds = ds.map_batches(
            EmbedActor,
            batch_format="numpy",
            batch_size=batch_size,
            fn_constructor_kwargs={
                "key": key, "settings": settings, "device": resolved.device,
                "manifest": embedder.manifest(**manifest_kwargs), "manifest_kwargs": manifest_kwargs,
            },
            compute=ray.data.ActorPoolStrategy(size=low) if low == high else ray.data.ActorPoolStrategy(
                min_size=low, max_size=high
            ),
            num_cpus=resolved.cpus_per_actor,
            num_gpus=resolved.gpus_per_actor or None,
        )
    return ds


def read_batches(
    ds: Any, models: Mapping[str, ActorEmbedder], timer: ActorTimer, stages: StageRates, *, batch_size: int,
    clock: dict[str, float] | None = None,
) -> Iterator[ReadBatch]:
    """The sink's input: Ray's output rows as the local engine's ``ReadBatch`` (results, vectors per model).

    ``clock["first_batch"]`` is set when the first batch arrives (the cluster's start-up cost ends there).
    """
    for batch in ds.iter_batches(batch_size=batch_size, batch_format="numpy", prefetch_batches=2):
        if clock is not None:
            clock.setdefault("first_batch", time.perf_counter())
        keys = list(models)
        n = len(batch["position"])
        stages.add("read", float(np.sum(batch["read_s"])), n)
        results: list[ReadResult] = []
        for i in range(n):
            reason = str(batch["error_reason"][i])
            results.append(
                ReadResult(
                    int(batch["position"][i]),
                    content_hash=str(batch["content_hash"][i]),
                    width=int(batch["width"][i]),
                    height=int(batch["height"][i]),
                    needed=tuple(k for k in keys if batch[col("need", k)][i]),
                    error=(reason, str(batch["error_detail"][i])) if reason else None,
                )
            )
        out = ReadBatch(results)
        for key in keys:
            rows = [int(i) for i in np.flatnonzero(batch[col("need", key)])]
            if not rows:
                continue
            vectors = np.stack([vector_of(batch[col("vector", key)][i]) for i in rows])
            out.tensors[key] = torch.from_numpy(vectors)
            out.rows[key] = rows
            seconds = float(np.sum(batch[col("forward_s", key)]))
            timer.record(key, seconds, len(rows))
            stages.add(key, seconds, len(rows))
            models[key].precisions.update(str(batch[col("precision", key)][i]) for i in rows)
        yield out


# ------------------------------------------------------------------------------------------------ the run
def run_index_ray(
    source: DatasetSource,
    *,
    index_name: str,
    embedders: dict[str, Embedder],
    store: Store,
    settings: Settings,
    options: RayOptions | None = None,
    batch_size: int | None = None,
    prune: bool = False,
    strict: bool = False,
    progress: Callable[[ProgressUpdate], None] | None = None,
    stop_event: threading.Event | None = None,
) -> IndexSummary:
    """``run_index`` on Ray: the same arguments (``options`` instead of ``workers``), the same summary.

    ``summary.extra`` adds ``engine`` ("ray"), ``ray`` (the pool shapes and cluster resources) and
    ``stage_rates`` (rows/s per read task, per model actor, and of the driver's writes).
    """
    start = time.perf_counter()
    options = options or RayOptions()
    batch_size = check_run(index_name, embedders, batch_size, settings)
    if decoder_of(embedders) == "device":
        raise IndexerError("--decode device runs with --engine local; Ray's read tasks decode on their CPUs "
                           "(use --decode worker)")
    keys = list(embedders)
    total = len(source.items)
    timer = ActorTimer()
    report = progress_reporter(progress, total, keys, timer)

    report(0, "prepare")
    stages = StageRates()
    models = {k: ActorEmbedder(e) for k, e in embedders.items()}
    clock: dict[str, float] = {}
    with ray_session(options) as ray:  # first: an unreachable cluster refuses the run before the plan writes
        clock["ray_start"] = time.perf_counter() - start
        plan = plan_run(
            source, index_name=index_name, embedders=embedders, store=store, prune=prune,
            on_prune=lambda: report(0, "prune"),
        )
        t_plan = time.perf_counter() - start
        mapper = BatchMapper(plan, models, timer)  # type: ignore[arg-type]  # duck-typed: vectors from the actors
        resolved = _resolve(ray, options, settings, len(keys))
        log.info("ray: %s; per model %s actor(s), %s GPU and %s CPU each", resolved.cluster,
                 "-".join(map(str, sorted(set(resolved.actors)))), resolved.gpus_per_actor, resolved.cpus_per_actor)
        ds = build_dataset(ray, plan, embedders, settings, batch_size=batch_size, options=options, resolved=resolved)
        batches = read_batches(ds, models, timer, stages, batch_size=batch_size, clock=clock)
        writer = StoreWriter.for_plan(store, plan, settings)  # bulk import past the threshold, as the local engine
        try:
            done, stopped = _run(batches, mapper, writer, strict=strict, stop_event=stop_event,
                                 on_batch=lambda n: report(n, "index"))
        except EmbedsvcError:
            raise
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as exc:
            raise _product_error(exc) from exc
        finally:
            batches.close()  # stops the streaming execution (early exits included) before Ray shuts down
            clock["run_end"] = time.perf_counter()
        if done < len(plan.items) and not stopped and not (strict and mapper.failures):
            writer.abort()
            raise RayEngineError(f"Ray returned {done} of {len(plan.items)} files without an error; rerun to finish")
    ray_stopped = time.perf_counter()
    t_run = ray_stopped - start - t_plan

    report(done, "flush")
    summary = _finish(plan, mapper, writer, store, settings, done=done, stopped=stopped, start=start)
    stages.add("write", writer.seconds, sum(writer.written.values()))
    first = clock.get("first_batch", clock["run_end"])
    summary.extra["stage_s"] = {
        "ray_start": clock["ray_start"],  # starting (or joining) Ray
        "plan": t_plan - clock["ray_start"],
        "first_batch": first - start - t_plan,  # workers start, actors load their models
        "stream": clock["run_end"] - first,  # first batch to the last
        "ray_stop": ray_stopped - clock["run_end"],
        "run": t_run,
        "report": time.perf_counter() - ray_stopped,
    }
    summary.extra["engine"] = "ray"
    summary.extra["ray"] = {
        "actors_per_model": list(resolved.actors), "gpus_per_actor": resolved.gpus_per_actor,
        "cpus_per_actor": resolved.cpus_per_actor, "device": resolved.device, "cluster": resolved.cluster,
    }
    summary.extra["stage_rates"] = stages.as_dict()
    report(done, "stopped" if stopped else "done")
    if strict and mapper.failures:
        raise strict_error(mapper.failures, summary.failures_report)
    return summary


def _product_error(exc: BaseException) -> EmbedsvcError:
    """A failure on the cluster as one product error: ours as raised in the actor, else what Ray said."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, EmbedsvcError):
            return current
        cause = getattr(current, "cause", None)
        current = cause if isinstance(cause, BaseException) else (current.__cause__ or current.__context__)
    return RayEngineError(f"the Ray run failed: {type(exc).__name__}: {_first_line(exc)}")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
