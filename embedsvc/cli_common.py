"""Options shared by every subcommand, how they override the typed settings, and the one error wrapper.

``ErrorLineGroup`` (``ErrorLineCommand`` for a one-command app, the demo) is the click class of every
embedsvc console app: its ``main`` turns every failure into exactly one ``error: ...`` line on stderr
and a non-zero exit, so no command needs its own try/except for the common cases. ``--debug`` (or
``EMBEDSVC_DEBUG=1``) also prints the traceback.
"""

from __future__ import annotations

import contextlib
import enum
import errno
import logging
import os
import socket
import sys
import traceback
from collections.abc import Sequence
from typing import Annotated, Any, get_args

import typer
from typer.core import TyperCommand, TyperGroup

from embedsvc.core.config import Settings, get_settings
from embedsvc.core.errors import DISK_FULL_ERRNOS, EmbedsvcError

EXIT_ERROR = 1
EXIT_INTERRUPTED = 130
DEBUG_ENV = "EMBEDSVC_DEBUG"

MODELS = Annotated[
    list[str] | None,
    typer.Option("--model", "-m", metavar="KEY", help="Embedder key (repeatable). Default: the registry's defaults."),
]
WEIGHTS = Annotated[
    list[str] | None,
    typer.Option("--weights", metavar="KEY=PATH", help="Explicit weights (path or URL) for one model; repeatable."),
]
ALLOW_RANDOM = Annotated[
    bool,
    typer.Option("--allow-random-weights", help="Seeded random weights (marked untrained) when none resolve."),
]
DEVICE = Annotated[str | None, typer.Option("--device", metavar="DEV", help="auto, cpu, cuda, cuda:N.")]
MILVUS_URI = Annotated[
    str | None, typer.Option("--milvus-uri", metavar="URI", help="Milvus Lite file (x.db) or http://host:19530.")
]
DATA_DIR = Annotated[
    str | None, typer.Option("--data-dir", metavar="DIR", help="Lite database, reports and caches go here.")
]
def settings_choices(field: str) -> type[enum.StrEnum]:
    """A ``Literal`` settings field's values as click choices (the settings own the values, the CLI lists them)."""
    values = get_args(Settings.model_fields[field].annotation)
    return enum.StrEnum(f"{field.title()}Choice", {v: v for v in values})  # type: ignore[return-value]


#: the settings' preprocessing paths (``Settings.preprocess``)
PreprocessPath = settings_choices("preprocess")
PREPROCESS = Annotated[
    PreprocessPath | None,  # type: ignore[valid-type]
    typer.Option("--preprocess", help="Preprocessing of new vectors: fast (default) or exact (timm). Per index."),
]
#: where indexing decodes (``Settings.decode``)
DecodeWhere = settings_choices("decode")
DECODE = Annotated[
    DecodeWhere | None,  # type: ignore[valid-type]
    typer.Option(
        "--decode",
        help="worker (default), or device: JPEGs decode in full on the models' device (nvJPEG on a GPU).",
    ),
]
#: the settings' forward precisions (``Settings.precision``; ``models.precision`` decides what auto means)
PrecisionChoice = settings_choices("precision")
PRECISION = Annotated[
    PrecisionChoice | None,  # type: ignore[valid-type]
    typer.Option(
        "--precision", metavar="P", help="auto (bf16 where the hardware has it), fp32, bf16, fp16 (CUDA only)."
    ),
]
COMPILE = Annotated[
    bool | None,
    typer.Option(
        "--compile/--no-compile",
        help="torch.compile at load (default auto: serve compiles CPU models later).",
    ),
]


class PortInUseError(EmbedsvcError):
    """A server command's port is taken: say which port, who holds it, and how to pick another."""

    code = "port_in_use"
    http_status = 409


def port_holder(port: int) -> str | None:
    """Who listens on ``port`` (pid and command line), when psutil is installed and may see it."""
    try:
        import psutil
    except ImportError:  # the light (UI-only) install
        return None
    with contextlib.suppress(psutil.Error, OSError):
        for conn in psutil.net_connections(kind="tcp"):
            if conn.laddr and conn.laddr.port == port and conn.status == psutil.CONN_LISTEN and conn.pid:
                try:
                    command = " ".join(psutil.Process(conn.pid).cmdline())[:200]
                except psutil.Error:
                    command = "?"
                return f"pid {conn.pid} ({command})"
    return None


def check_port_free(host: str, port: int, how_to_change: str) -> None:
    """Fail fast, before loading anything, when ``host:port`` cannot be listened on (a server left running,
    another program): one line instead of uvicorn's or Streamlit's own after minutes of start-up."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn and Streamlit do
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise PortInUseError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
            holder = port_holder(port)
            by = f" by {holder}" if holder else ""
            raise PortInUseError(
                f"port {port} is already in use{by}; stop it, or pick another port with {how_to_change}"
            ) from None


def debug_requested(args: Sequence[str] | None = None) -> bool:
    """``--debug`` anywhere before ``--`` on the command line, or EMBEDSVC_DEBUG set to a true value.

    Read from the environment directly, not through ``Settings``: invalid settings may be the very error
    being reported. (``Settings.debug`` documents the variable and serves everything else.)"""
    argv = list(sys.argv[1:] if args is None else args)
    if "--" in argv:
        argv = argv[: argv.index("--")]
    return "--debug" in argv or os.environ.get(DEBUG_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def _one_line(text: str) -> str:
    return " ".join(str(text).split()) or "(no message)"


def _os_error_line(exc: OSError) -> str:
    where = " -> ".join(str(p) for p in (exc.filename, exc.filename2) if p is not None)
    if exc.errno in DISK_FULL_ERRNOS:
        directory = os.path.dirname(os.path.abspath(str(exc.filename))) if exc.filename is not None else None
        place = f" writing {where} (directory {directory})" if directory else ""
        return f"disk full: {exc.strerror or 'no space left on device'}{place}; free some space and rerun"
    reason = exc.strerror or str(exc)
    return f"{reason}: {where}" if where else reason


def _validation_line(exc: Any) -> str:
    parts = []
    for err in exc.errors():
        field = ".".join(str(p) for p in err.get("loc", ())) or "value"
        parts.append(f"{field}: {str(err.get('msg', '')).removeprefix('Value error, ')}")
    return f"invalid settings: {'; '.join(parts)}"


def error_line(exc: BaseException) -> tuple[str, int]:
    """The one line (without ``error: ``) and exit code that a failure becomes; anything unexpected is an
    ``internal error`` naming its type, because users cannot act on a traceback."""
    from pydantic import ValidationError

    from embedsvc.core.errors import EmbedsvcError

    if isinstance(exc, typer.TyperException) and hasattr(exc, "format_message"):  # typer's (vendored) click errors
        ctx = getattr(exc, "ctx", None)  # usage errors carry the command's context
        hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
        return _one_line(exc.format_message()) + hint, getattr(exc, "exit_code", EXIT_ERROR) or EXIT_ERROR
    if isinstance(exc, typer.Abort | KeyboardInterrupt):
        return "interrupted", EXIT_INTERRUPTED
    if isinstance(exc, EmbedsvcError):
        return _one_line(exc.message), EXIT_ERROR
    if _is_own_error(exc):  # embedsvc's own error classes carry a message written for the user
        return _one_line(str(exc)), EXIT_ERROR
    if isinstance(exc, ValidationError):
        return _one_line(_validation_line(exc)), EXIT_ERROR
    if isinstance(exc, UnicodeError):
        return _one_line(f"text is not valid UTF-8 ({exc})"), EXIT_ERROR
    if isinstance(exc, OSError):
        return _one_line(_os_error_line(exc)), EXIT_ERROR
    if isinstance(exc, MemoryError):
        return "out of memory", EXIT_ERROR
    detail = _one_line(str(exc)) if str(exc) else ""
    return f"internal error: {type(exc).__name__}: {detail} (run with --debug for the traceback)", EXIT_ERROR


def _is_own_error(exc: BaseException) -> bool:
    """Raised on purpose by embedsvc (a class defined in its modules) though not yet an EmbedsvcError."""
    return any(cls.__module__.startswith("embedsvc.") for cls in type(exc).__mro__[:-2])


def report_error(exc: BaseException, *, debug: bool) -> int:
    """Print the traceback (debug only) and then the one ``error:`` line; return the exit code."""
    line, code = error_line(exc)
    if debug:
        traceback.print_exception(exc, file=sys.stderr)
        detail = getattr(exc, "log_detail", None)
        if detail:
            sys.stderr.write(f"detail: {detail}\n")
    sys.stderr.write(f"error: {line}\n")
    sys.stderr.flush()
    return code


def fail(message: str, code: int = EXIT_ERROR) -> typer.Exit:
    """The ``typer.Exit`` a command raises after printing its own ``error:`` line; under --debug the
    exception being handled (if any) is printed first, as the wrapper would."""
    if debug_requested() and sys.exc_info()[1] is not None:
        traceback.print_exc(file=sys.stderr)
    sys.stderr.write(f"error: {_one_line(message)}\n")
    sys.stderr.flush()
    return typer.Exit(code)


class _ErrorLineMain:
    """``main`` that never lets a traceback reach the user (see the module docstring)."""

    def main(  # type: ignore[override]
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        windows_expand_args: bool = True,
        **extra: Any,
    ) -> Any:
        debug = debug_requested(args)
        try:
            rv = super().main(  # type: ignore[misc]
                args=args,
                prog_name=prog_name,
                complete_var=complete_var,
                standalone_mode=False,
                windows_expand_args=windows_expand_args,
                **extra,
            )
            code = rv if isinstance(rv, int) and not isinstance(rv, bool) else 0
        except SystemExit as exc:  # sys.exit() inside a command (uvicorn does this on a bind failure)
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else EXIT_ERROR)
            if isinstance(exc.code, str):
                sys.stderr.write(f"error: {_one_line(exc.code)}\n")
        except BaseException as exc:  # noqa: BLE001 - this is the one place every failure is reported
            if type(exc).__name__ == "NoArgsIsHelpError":  # a bare group: its help, as click shows it
                exc.show()  # type: ignore[attr-defined]
                code = exc.exit_code  # type: ignore[attr-defined]
            elif isinstance(exc, BrokenPipeError):  # `embedsvc models --json | head`: the reader left
                code = EXIT_ERROR
            else:
                code = report_error(exc, debug=debug)
        if not standalone_mode:
            return code
        sys.exit(code)


class ErrorLineGroup(_ErrorLineMain, TyperGroup):
    """The click group class of ``embedsvc``: every subcommand's failures become one ``error:`` line."""


class ErrorLineCommand(_ErrorLineMain, TyperCommand):
    """The same for a single-command app (``python -m embedsvc.demo``)."""


class QuietTracebackFormatter(logging.Formatter):
    """Log records with exc_info keep one ``Type: message`` suffix; the traceback only with --debug."""

    def __init__(self, fmt: str | None = None, *, debug: bool = False) -> None:
        super().__init__(fmt)
        self.debug = debug

    def formatException(self, ei: Any) -> str:  # noqa: N802 - logging's name
        if self.debug:
            return super().formatException(ei)
        exc = ei[1]
        return f"{type(exc).__name__}: {_one_line(str(exc))} (--debug shows the traceback)"

    def formatStack(self, stack_info: str) -> str:  # noqa: N802 - logging's name
        return stack_info if self.debug else ""


def setup_logging(*, verbose: bool = False, debug: bool = False, fmt: str = "%(message)s") -> None:
    """One stderr handler for the whole process, tracebacks only with --debug (see QuietTracebackFormatter)."""
    from rich.console import Console
    from rich.logging import RichHandler

    handler = RichHandler(console=Console(stderr=True), show_path=False)
    handler.setFormatter(QuietTracebackFormatter(fmt, debug=debug))
    logging.basicConfig(level=logging.DEBUG if verbose or debug else logging.INFO, handlers=[handler], force=True)


def _check_model(key: str) -> str:
    """An unknown --model is a usage error naming the known keys (the registry decides what is known)."""
    from embedsvc.models.registry import get_spec

    try:
        get_spec(key)
    except KeyError as exc:
        raise typer.BadParameter(str(exc).strip("'\""), param_hint="--model") from None
    return key


def parse_weights(items: list[str] | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key or not value:
            raise typer.BadParameter(f"--weights expects KEY=PATH_OR_URL, got {item!r}")
        out[key] = value
    return out


def apply_overrides(
    *,
    models: list[str] | None = None,
    weights: list[str] | None = None,
    allow_random: bool = False,
    device: str | None = None,
    milvus_uri: str | None = None,
    data_dir: str | None = None,
    preprocess: str | None = None,
    precision: str | None = None,
    compile: bool | None = None,
    decode: str | None = None,
) -> Settings:
    """Settings from env/.env with the command line's flags on top (flags win)."""
    base = get_settings()
    update: dict = {}
    if models:
        update["models"] = [_check_model(m) for m in models]
    if weights:
        update["weights"] = base.weights | parse_weights(weights)
    if allow_random:
        update["allow_random_weights"] = True
    if device:
        update["device"] = device
    if milvus_uri:
        update["milvus_uri"] = milvus_uri
    if data_dir:
        update["data_dir"] = data_dir
    if preprocess:
        update["preprocess"] = str(preprocess)
    if precision:
        update["precision"] = str(precision)
    if compile is not None:
        update["compile"] = compile
    if decode:
        update["decode"] = str(decode)
    return Settings(**(base.model_dump() | update)) if update else base
