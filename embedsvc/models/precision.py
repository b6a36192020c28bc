"""Which numeric precision a model's forward pass runs in on a device: the one owner of that policy.

``auto`` is bf16 autocast where the hardware has bf16 units (every CUDA GPU that supports bf16; CPUs with
AMX-BF16 or AVX512-BF16) and fp32 elsewhere. bf16 vectors of a photo agree with its fp32 ones far more closely
than any two photos do (real Lite0/1/2 weights: per-image cosine median 0.9991-0.9995, leave-one-out P@1
unchanged: ``bench/results/precision_fidelity-cpu.md``), so precision is recorded in the manifest but never
makes an index refuse a query. fp16 runs on CUDA only: CPUs have no fp16 matmul units worth using, so asking for it
there is an error, not a silent fallback. Whatever the precision, embeddings leave the model as float32.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Literal, get_args

import torch
from torch import nn

from embedsvc.core.errors import EmbedsvcError

log = logging.getLogger(__name__)

Precision = Literal["auto", "fp32", "bf16", "fp16"]
#: The values settings, flags and the manifest use, in the order help texts list them.
PRECISIONS: tuple[str, ...] = get_args(Precision)
#: The /proc/cpuinfo flags of CPU units that run bf16 matmuls natively (Intel AMX, AVX512-BF16 on Intel and AMD).
CPU_BF16_FLAGS = ("amx_bf16", "avx512_bf16")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
#: Modules whose forward is one op autocast runs in low precision on (input, weight, bias): autocast casts their
#: weights on every call. Exact types only: a subclass (timm's StdConv2d, its Linear) may use its weights otherwise.
AUTOCAST_WEIGHT_MODULES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


class PrecisionError(EmbedsvcError):
    """A precision this device cannot run (fp16 on a CPU, bf16 on a GPU without it) or an unknown name."""

    code = "unsupported_precision"
    http_status = 400


def cpu_bf16_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> tuple[str, ...]:
    """The CPU's bf16 units named in ``cpuinfo``'s flags; empty where the file is missing (not Linux) or unreadable.

    torch's own ``get_cpu_capability()`` stops at "AVX512" and cannot tell these units apart, and oneDNN runs bf16
    on plain AVX512 by emulation (slower than fp32), so only the kernel's flags decide.
    """
    try:
        text = cpuinfo.read_text(encoding="ascii", errors="replace")
    except OSError:
        return ()
    flags: set[str] = set()
    for line in text.splitlines():
        name, sep, value = line.partition(":")
        if sep and name.strip() in ("flags", "Features"):
            flags.update(value.split())
    return tuple(f for f in CPU_BF16_FLAGS if f in flags)


@functools.lru_cache(maxsize=1)
def cpu_has_bf16() -> bool:
    """Whether this machine's CPU has native bf16 units (read once per process; tests patch this function)."""
    found = cpu_bf16_flags()
    log.debug("CPU bf16 units: %s", ", ".join(found) or "none")
    return bool(found)


def _cuda_has_bf16(device: torch.device) -> bool:
    with torch.cuda.device(device):
        return bool(torch.cuda.is_bf16_supported())


def resolve_precision(requested: str, device: torch.device | str) -> str:
    """``auto|fp32|bf16|fp16`` on ``device`` -> the precision that runs there (never ``auto``), or PrecisionError."""
    requested = str(requested).strip().lower()
    if requested not in PRECISIONS:
        raise PrecisionError(f"unknown precision {requested!r}: use one of {', '.join(PRECISIONS)}")
    kind = torch.device(device).type
    if requested == "auto":
        if kind == "cuda":
            return "bf16" if _cuda_has_bf16(torch.device(device)) else "fp32"
        return "bf16" if kind == "cpu" and cpu_has_bf16() else "fp32"
    if requested == "fp16" and kind != "cuda":
        raise PrecisionError(
            f"precision fp16 needs a CUDA device, not {kind}: use bf16 (autocast; fast on CPUs with AMX or "
            "AVX512-BF16) or fp32"
        )
    if requested == "bf16" and kind == "cuda" and not _cuda_has_bf16(torch.device(device)):
        raise PrecisionError(f"this GPU ({torch.cuda.get_device_name(device)}) has no bf16: use fp16 or fp32")
    if requested == "bf16" and kind not in ("cpu", "cuda"):
        raise PrecisionError(f"precision bf16 runs on cpu or cuda, not {kind}: use fp32")
    if requested == "bf16" and kind == "cpu" and not cpu_has_bf16():
        log.warning("this CPU has no bf16 units (%s): bf16 runs emulated, likely slower than fp32",
                    "/".join(CPU_BF16_FLAGS))
    return requested


@contextlib.contextmanager
def autocast(device: torch.device, precision: str) -> Iterator[None]:
    """The forward pass' autocast region: none for fp32, ``torch.autocast`` to bf16/fp16 otherwise."""
    if precision == "fp32":
        yield
        return
    with torch.autocast(device.type, dtype=_DTYPES[precision]):
        yield


def cast_autocast_weights(model: nn.Module, precision: str) -> int:
    """Store, once, the weights autocast would cast to ``precision`` on every forward (convolutions', linear
    layers'); returns how many modules changed. The forward under ``autocast`` is bit for bit the same (the ops
    get the same low-precision operands), minus a copy of every weight per call: ~5-8% of a batch-1 forward on a
    2-core CPU. Norms, embeddings and scales keep their float32 parameters, as autocast runs those in float32."""
    if precision == "fp32":
        return 0
    dtype = _DTYPES[precision]
    cast = [m for m in model.modules() if type(m) in AUTOCAST_WEIGHT_MODULES]
    for module in cast:
        module.to(dtype)
    return len(cast)


def check_weights_fit(model: nn.Module, precision: str) -> None:
    """Weights cast for one low precision run only under its autocast: refuse fp32 (or the other low precision)
    on them at once, rather than with a dtype error at the first forward (``dataclasses.replace`` shares the
    model, so an embedder copied with another precision would carry weights cast for the first)."""
    dtypes = {m.weight.dtype for m in model.modules() if type(m) in AUTOCAST_WEIGHT_MODULES} - {torch.float32}
    if dtypes and dtypes != {_DTYPES.get(precision)}:
        cast = ", ".join(sorted(str(d).removeprefix("torch.") for d in dtypes))
        raise ValueError(f"this model's weights are cast to {cast}; load it again to run it in {precision}")
