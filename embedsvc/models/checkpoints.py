"""Load a weights file into a model: timm's loader with one EMA rule, and errors that name the file and why.

Loading is timm's ``load_checkpoint`` with one EMA rule, timm's: ``state_dict_ema``, then ``model_ema``, then
``state_dict``, then ``model`` (EMA weights when present). Which file to load, and where it came from, is
:mod:`embedsvc.models.weights`; fetching it is :mod:`embedsvc.models.download`.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Callable, Iterator, Mapping
from contextvars import ContextVar
from pathlib import Path
from typing import Any

import torch
from torch import nn

from embedsvc.core.errors import EmbedsvcError
from embedsvc.models.download import looks_like_html

log = logging.getLogger(__name__)
# timm logs "Loaded  from checkpoint '<path>'" at INFO for every load; ours says which model and weights.
logging.getLogger("timm.models._helpers").setLevel(logging.WARNING)

# timm's ``load_state_dict(use_ema=True)`` order, the one EMA rule: EMA weights first, when a checkpoint has them.
EMA_FIRST_KEYS = ("state_dict_ema", "model_ema", "state_dict", "model")


class CheckpointError(EmbedsvcError, ValueError):
    """A weights file that cannot be loaded; the message names the file and the reason (``reason`` tag)."""

    code = "checkpoint_unreadable"
    http_status = 503
    public_message = "model weights could not be loaded on the server"

    def __init__(self, message: str, *, reason: str = "unreadable", log_detail: str | None = None) -> None:
        super().__init__(message, log_detail=log_detail)
        self.reason = reason


class CheckpointMismatchError(CheckpointError):
    """A checkpoint whose tensors cannot be matched to the model, with the list of mismatches."""

    code = "checkpoint_mismatch"

    def __init__(self, message: str, *, log_detail: str | None = None) -> None:
        super().__init__(message, reason="mismatch", log_detail=log_detail)


# --------------------------------------------------------------------------------------------------
# Checkpoint tensors: timm reads the file (EMA first, ``module.``/``_orig_mod.`` prefixes) and loads
# strictly; here only what timm does not: a wrapper nested one level deeper, the generic in-order
# renaming, and errors that name the file and the reason.
# --------------------------------------------------------------------------------------------------

# True while loading a file whose key order is not the saved order (safetensors sorts keys): no in-order mapping.
_KEYS_SORTED: ContextVar[bool] = ContextVar("embedsvc_checkpoint_keys_sorted", default=False)

StateDictFilter = Callable[[dict[str, torch.Tensor], nn.Module], dict[str, torch.Tensor]]


def unwrap_state_dict(checkpoint: Any) -> dict[str, torch.Tensor]:
    """The tensors of a state dict that timm's loader returned still wrapped (e.g. ``{"state_dict": {"model": sd}}``).

    Same key priority as timm (:data:`EMA_FIRST_KEYS`), then timm's ``clean_state_dict`` for prefixes.
    """
    from timm.models import clean_state_dict

    obj = checkpoint
    while isinstance(obj, Mapping) and not _is_tensor_dict(obj):
        key = next((k for k in EMA_FIRST_KEYS if isinstance(obj.get(k), Mapping)), None)
        if key is None:
            raise CheckpointMismatchError(
                f"checkpoint has no tensors and none of the wrapper keys {EMA_FIRST_KEYS}; keys: {list(obj)[:10]}"
            )
        obj = obj[key]
    if not isinstance(obj, Mapping):
        raise CheckpointMismatchError(f"checkpoint is not a state dict (got {type(obj).__name__})")
    return clean_state_dict({k: v for k, v in obj.items() if isinstance(v, torch.Tensor)})


def _is_tensor_dict(obj: Mapping[str, Any]) -> bool:
    return bool(obj) and any(isinstance(v, torch.Tensor) for v in obj.values())


def _is_counter(key: str) -> bool:
    return key.endswith("num_batches_tracked")


def map_in_order(
    source: Mapping[str, torch.Tensor], target: Mapping[str, tuple[int, ...]], what: str
) -> dict[str, torch.Tensor]:
    """Pair ``source`` tensors with ``target`` keys by position; shapes must match (-1 in a target: any size).

    The one in-order renaming (for checkpoints saved by another codebase). ``num_batches_tracked`` counters
    are ignored on the source side. Refuses with the full list of mismatches rather than loading partially.
    """
    if _KEYS_SORTED.get():
        raise CheckpointMismatchError(
            f"its key names differ from {what}'s and it is a safetensors file, which stores keys sorted by name, "
            "so they cannot be mapped by position: save it with torch.save, or rename the keys to the model's"
        )
    src = [(k, v) for k, v in source.items() if not _is_counter(k)]
    problems: list[str] = []
    if len(src) != len(target):
        problems.append(
            f"count: checkpoint has {len(src)} tensors, {what} expects {len(target)} (num_batches_tracked ignored)"
        )
    for (src_key, tensor), (dst_key, shape) in zip(src, target.items(), strict=False):
        if not _fits(tuple(tensor.shape), shape):
            problems.append(f"{src_key} {tuple(tensor.shape)} -> {dst_key} {_shape_text(shape)}")
    if problems:
        listed = "\n  ".join(problems[:40]) + (f"\n  ... {len(problems) - 40} more" if len(problems) > 40 else "")
        raise CheckpointMismatchError(f"checkpoint does not fit {what}:\n  {listed}")
    return {dst_key: tensor for (_, tensor), dst_key in zip(src, target, strict=True)}


def _fits(got: tuple[int, ...], want: tuple[int, ...]) -> bool:
    return len(got) == len(want) and all(w in (-1, g) for g, w in zip(got, want, strict=True))


def _shape_text(shape: tuple[int, ...]) -> str:
    """``(4, 3, 3, 3)``, with ``*`` where any size fits."""
    return str(tuple(shape)) if -1 not in shape else str(tuple("*" if d == -1 else d for d in shape)).replace("'", "")


def map_state_dict_in_order(state: Mapping[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's own keys when the checkpoint has them all (the classifier may be missing: embeddings never
    use it); otherwise :func:`map_in_order` onto the model.

    ``num_batches_tracked`` counters are left out of the result (the loader keeps the model's).
    """
    target = {k: v for k, v in model.state_dict().items() if not _is_counter(k)}
    if set(state) >= set(target):
        return {k: state[k] for k in target}
    head = _classifier_keys(model)
    if head and not head & set(state) and set(state) >= set(target) - head:
        log.warning(
            "checkpoint has no classifier (%s): %s keeps its initialised one, which embeddings (pre-logits) never use",
            ", ".join(sorted(head)), type(model).__name__,
        )
        return {k: target[k] if k in head else state[k] for k in target}
    return map_in_order(state, {k: tuple(v.shape) for k, v in target.items()}, type(model).__name__)


def _classifier_keys(model: nn.Module) -> set[str]:
    """The state-dict keys of a timm model's classifier (``get_classifier()``); empty when it has none."""
    get = getattr(model, "get_classifier", None)
    head = get() if callable(get) else None
    if not isinstance(head, nn.Module):
        return set()
    name = next((n for n, m in model.named_modules() if m is head and n), None)
    return {f"{name}.{k}" for k in head.state_dict()} if name else set()


def load_weights(model: nn.Module, path: Path, filter_fn: StateDictFilter | None = None) -> None:
    """Load a checkpoint file into ``model`` with timm's ``load_checkpoint`` (EMA first), strictly.

    ``filter_fn`` is the model family's key mapping (``checkpoint_filter_fn``). Raises
    :class:`CheckpointError` naming the file and the reason: empty, truncated or not a checkpoint, pickled
    Python objects (a whole ``nn.Module``: only tensors are ever unpickled), or a key/shape mismatch.
    """
    from timm.models import load_checkpoint

    def prepare(state: dict[str, Any], target: nn.Module) -> dict[str, torch.Tensor]:
        tensors = unwrap_state_dict(state)
        if filter_fn is not None:
            tensors = filter_fn(tensors, target)
        mapped = map_state_dict_in_order(tensors, target)
        counters = {k: tensors.get(k, v) for k, v in target.state_dict().items() if _is_counter(k)}
        return mapped | counters

    with _loading(path):
        load_checkpoint(model, str(path), use_ema=True, strict=True, filter_fn=prepare)


def create_with_weights(model_name: str, path: Path, **kwargs: Any) -> nn.Module:
    """``timm.create_model(pretrained=True)`` from a local file: the family's own registered filter applies.

    Same EMA rule (timm's) and the same errors as :func:`load_weights`, naming the file and the reason.
    """
    import timm

    with _loading(path):
        return timm.create_model(model_name, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), **kwargs)


@contextlib.contextmanager
def _loading(path: Path) -> Iterator[None]:
    """Around one load of ``path``: refuse an empty file, no in-order mapping for safetensors, named errors."""
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: empty file (0 bytes), not a checkpoint", reason="empty")
    token = _KEYS_SORTED.set(path.suffix == ".safetensors")
    try:
        yield
    except CheckpointMismatchError as exc:
        raise CheckpointMismatchError(f"{path}: {exc.message}") from exc
    except Exception as exc:
        raise _unreadable(path, exc) from exc
    finally:
        _KEYS_SORTED.reset(token)


def _unreadable(path: Path, exc: Exception) -> CheckpointError:
    """Name the reason a checkpoint file failed to load, from what torch/safetensors/timm raised."""
    text = str(exc)
    if "pickle globals" in text:  # timm: torch.load(weights_only=True) refused non-tensor objects
        match = re.search(r"Unsupported globals: (.*?)\. No automatic", text)
        names = sorted(match[1].split(", "), key=lambda n: (n.startswith("torch."), n)) if match else []
        found = ", ".join(names[:8]) + (f" and {len(names) - 8} more" if len(names) > 8 else "")
        return CheckpointError(
            f"{path}: contains pickled Python objects{f' ({found})' if found else ''}, e.g. a whole nn.Module "
            "saved with torch.save(model); only tensors are loaded: save model.state_dict() instead",
            reason="pickled_objects",
        )
    if "Error(s) in loading state_dict" in text or "size mismatch" in text:
        return CheckpointMismatchError(f"{path}: {text.strip()[:2000]}")
    with contextlib.suppress(OSError), path.open("rb") as fh:
        if looks_like_html(fh.read(4096)):
            return CheckpointError(
                f"{path}: an HTML page, not a checkpoint (what Google Drive serves for a quota or permission error "
                "instead of the file)",
                reason="html_page",
            )
    first = text.strip().splitlines()[0].split(". ")[0][:200] if text.strip() else "no detail"
    return CheckpointError(
        f"{path}: truncated, corrupt or not a PyTorch/safetensors checkpoint ({type(exc).__name__}: {first})",
        reason="truncated_or_corrupt",
    )
