"""GResNet: the "modernized vanilla ResNet-50" of Frank Liu's post *Vision Transformers are overrated*.

82.0% ImageNet-1k top-1 with no extra data at 25.7M parameters (trained at 176 px, evaluated at 224 px).
Against torchvision's ResNet-50 it has a 32/64/128 three-conv stem without max-pool, the stride on the
3x3 conv, a downsampling first block in every stage, avg-pool shortcuts, SiLU, and *split
normalization*: each BatchNorm becomes statistics-only normalization of a conv's input plus a learnable
affine on its output, so that `fold_gresnet` can turn the whole network into biased convolutions.

The published definition and weights are out of reach here, so the architecture follows the post's
description (spec: docs/gresnet.md); `checkpoint_filter_fn` maps differently named checkpoints in order.
The Google Drive id of the weights lives in the registered pretrained cfg (`origin_url`), read from there.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import DropPath, LayerType, create_classifier, get_act_layer
from timm.models import build_model_with_cfg, checkpoint_seq, generate_default_cfgs, register_model
from torch import nn

from embedsvc.models.layers import SNConv

__all__ = ["GDRIVE_FILE_ID", "Bottleneck", "GResNet", "Shortcut", "checkpoint_filter_fn", "fold_gresnet"]

# Google Drive file id of the post's published GResNet-50 weights, written once into the pretrained cfg below
# (`origin_url`), where `embedsvc.models.weights.hub_source` reads it; the downloaded file is loaded by timm.
GDRIVE_FILE_ID = "1WKPkLybhrE389sierVj2-uZ_ZYAJI1Gf"


class Shortcut(nn.Module):
    """Downsampling shortcut: 2x2 average pool, then a split-normalized 1x1 conv.

    `ceil_mode=True` with `count_include_pad=False` keeps odd feature maps (11x11 at 176 px) the same
    size as the strided main path, averaging only the real pixels of the partial edge windows.
    """

    def __init__(self, in_chs: int, out_chs: int, stride: int = 1) -> None:
        super().__init__()
        if stride > 1:
            self.pool: nn.Module = nn.AvgPool2d(stride, stride, ceil_mode=True, count_include_pad=False)
        else:
            self.pool = nn.Identity()
        self.conv = SNConv(in_chs, out_chs, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.pool(x))


class Bottleneck(nn.Module):
    """ResNet bottleneck of split-normalized convs, stride on the 3x3: SiLU(main + shortcut)."""

    def __init__(
        self,
        in_chs: int,
        width: int,
        out_chs: int,
        stride: int = 1,
        act_layer: type[nn.Module] = nn.SiLU,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        self.conv1 = SNConv(in_chs, width, 1)
        self.act1 = act_layer(inplace=True)
        self.conv2 = SNConv(width, width, 3, stride=stride)
        self.act2 = act_layer(inplace=True)
        self.conv3 = SNConv(width, out_chs, 1)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        if stride != 1 or in_chs != out_chs:
            self.shortcut: nn.Module = Shortcut(in_chs, out_chs, stride)
        else:
            self.shortcut = nn.Identity()
        self.act3 = act_layer(inplace=True)

    def zero_init_last(self) -> None:
        """Start the residual branch at zero so each block begins as (activated) identity."""
        affine = getattr(self.conv3, "affine", None)
        if affine is not None:
            nn.init.zeros_(affine.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = self.shortcut(x)
        x = self.act1(self.conv1(x))
        x = self.act2(self.conv2(x))
        x = self.conv3(x)
        x = self.drop_path(x) + shortcut
        return self.act3(x)


class GResNet(nn.Module):
    """GResNet backbone + classifier with timm's model interface.

    Architecture args (`layers`, `widths`, `stem_chs`, `expansion`) default to GResNet-50 and exist so
    tests can build tiny variants; every stage's first block downsamples by 2 (total stride 32).
    """

    def __init__(
        self,
        layers: Sequence[int] = (3, 4, 6, 3),
        widths: Sequence[int] = (64, 128, 256, 512),
        stem_chs: Sequence[int] = (32, 64, 128),
        expansion: int = 4,
        num_classes: int = 1000,
        in_chans: int = 3,
        global_pool: str = "avg",
        act_layer: LayerType = "silu",
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        zero_init_last: bool = False,
    ) -> None:
        super().__init__()
        if len(layers) != len(widths):
            raise ValueError(f"layers {tuple(layers)} and widths {tuple(widths)} must have the same length")
        if len(stem_chs) != 3:
            raise ValueError(f"stem_chs needs 3 widths (one per stem conv), got {tuple(stem_chs)}")
        act = get_act_layer(act_layer)
        assert act is not None
        self.num_classes = num_classes
        self.drop_rate = drop_rate
        self.grad_checkpointing = False
        self.is_folded = False

        c1, c2, c3 = stem_chs
        self.stem = nn.Sequential(
            OrderedDict(
                conv1=SNConv(in_chans, c1, 3, stride=2),
                act1=act(inplace=True),
                conv2=SNConv(c1, c2, 3),
                act2=act(inplace=True),
                conv3=SNConv(c2, c3, 3),
                act3=act(inplace=True),
            )
        )
        self.feature_info = [dict(num_chs=c3, reduction=2, module="stem.act3")]

        dpr = torch.linspace(0, drop_path_rate, sum(layers)).tolist()
        in_chs, reduction, block_idx = c3, 2, 0
        stages: list[nn.Module] = []
        for i, (depth, width) in enumerate(zip(layers, widths, strict=True)):
            out_chs = width * expansion
            reduction *= 2
            blocks = []
            for j in range(depth):
                blocks.append(
                    Bottleneck(
                        in_chs,
                        width,
                        out_chs,
                        stride=2 if j == 0 else 1,
                        act_layer=act,
                        drop_path=dpr[block_idx],
                    )
                )
                in_chs = out_chs
                block_idx += 1
            stages.append(nn.Sequential(*blocks))
            self.feature_info.append(dict(num_chs=out_chs, reduction=reduction, module=f"stages.{i}"))
        self.stages = nn.Sequential(*stages)

        self.num_features = self.head_hidden_size = in_chs
        self.global_pool, self.fc = create_classifier(self.num_features, num_classes, pool_type=global_pool)
        self.init_weights(zero_init_last=zero_init_last)

    @torch.no_grad()
    def init_weights(self, zero_init_last: bool = False) -> None:
        """torchvision's ResNet init (Kaiming-normal fan_out); affines start at gamma=1, beta=0."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        if zero_init_last:
            for m in self.modules():
                if isinstance(m, Bottleneck):
                    m.zero_init_last()

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, str]:
        """Parameter groups for layer-wise LR decay, as timm models provide."""
        return dict(stem=r"^stem", blocks=r"^stages\.(\d+)" if coarse else r"^stages\.(\d+)\.(\d+)")

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self, name_only: bool = False) -> str | nn.Module:
        return "fc" if name_only else self.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """Replace the head; `num_classes=0` makes `forward` return the pooled embedding."""
        self.num_classes = num_classes
        if global_pool is None:
            global_pool = self.global_pool.pool_type
        self.global_pool, self.fc = create_classifier(self.num_features, num_classes, pool_type=global_pool)
        self.head_hidden_size = self.num_features * self.global_pool.feat_mult()

    def fold(self, exact_border: bool = True) -> GResNet:
        """Folded inference copy of this model; see `fold_gresnet`."""
        return fold_gresnet(self, exact_border=exact_border)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            x = checkpoint_seq(self.stages, x, flatten=True)
        else:
            x = self.stages(x)
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.global_pool(x)
        if self.drop_rate:
            x = F.dropout(x, p=float(self.drop_rate), training=self.training)
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.forward_features(x)
        return self.forward_head(x)


_IGNORED_KEYS = ("n_averaged",)  # torchvision's EMA (AveragedModel) counter: the post's recipe is torchvision's


def checkpoint_filter_fn(state_dict: Mapping[str, Any], model: GResNet) -> dict[str, torch.Tensor]:
    """Map a GResNet state dict onto this model's keys, for strict loading: key mapping only.

    timm's loader has already picked the weights (EMA first) and stripped ``module.``/``_orig_mod.``.
    Our key names pass through. Foreign names (e.g. the post's gist) are mapped *in order* by
    `embedsvc.models.checkpoints.map_in_order`, every body tensor matching its target's shape exactly; the
    classifier is taken as the last two tensors and only checked against ``num_features``, since timm
    drops it when ``num_classes`` differs. Anything else raises a CheckpointMismatchError listing mismatches.
    """
    from embedsvc.models.checkpoints import CheckpointMismatchError, map_in_order

    src = {k: v for k, v in state_dict.items() if isinstance(v, torch.Tensor) and k not in _IGNORED_KEYS}
    ours = model.state_dict()
    head_name = str(model.get_classifier(name_only=True))
    head_keys = [f"{head_name}.weight", f"{head_name}.bias"]
    body = [k for k in ours if not _is_counter(k) and k not in head_keys]
    src_keys = [k for k in src if not _is_counter(k)]

    if set(src_keys) - set(head_keys) == set(body):
        mapped = {k: src[k] for k in src_keys}
        problems = [
            f"  {k}: checkpoint {tuple(mapped[k].shape)} != model {tuple(ours[k].shape)}"
            for k in body
            if mapped[k].shape != ours[k].shape
        ]
        if problems:
            raise CheckpointMismatchError("checkpoint does not fit GResNet, shape mismatches:\n" + "\n".join(problems))
    else:
        targets = {k: tuple(ours[k].shape) for k in body}
        if len(src_keys) == len(body) + len(head_keys):  # with a classifier of any class count
            targets |= {head_keys[0]: (-1, model.num_features), head_keys[1]: (-1,)}
        mapped = map_in_order({k: src[k] for k in src_keys}, targets, "GResNet")
    if model.num_classes == 0:  # headless model: nothing to load the classifier into
        mapped = {k: v for k, v in mapped.items() if k not in head_keys}
    for k, v in ours.items():
        if _is_counter(k):
            mapped[k] = src.get(k, torch.zeros_like(v))
    return mapped


def _is_counter(key: str) -> bool:
    return key.endswith("num_batches_tracked")


def fold_gresnet(model: GResNet, exact_border: bool = True) -> GResNet:
    """Return an eval-mode copy with every `SNConv` folded into one biased `nn.Conv2d`.

    Serving needs no BatchNorm or affine ops: each unit becomes one conv (plus a `MeanPad` where it
    pads, which keeps borders exact for any input size). The copy keeps the GResNet interface and
    `pretrained_cfg`, so the embedder can use it in place of the original. The head (pool + Linear)
    follows a SiLU, so there is nothing to fold into it. `exact_border=False` gives the naive fold,
    for tests only. The original model is left untouched.
    """
    folded = copy.deepcopy(model).eval()
    for name, module in list(folded.named_modules()):
        parent_name, _, child = name.rpartition(".")
        parent = folded.get_submodule(parent_name) if parent_name else folded
        if isinstance(module, SNConv):
            setattr(parent, child, module.fold(exact_border=exact_border))
        elif isinstance(module, DropPath):
            setattr(parent, child, nn.Identity())
    leftover = [n for n, m in folded.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if leftover:
        raise RuntimeError(f"fold_gresnet left BatchNorm modules behind: {leftover}")
    folded.is_folded = True
    return folded


def _create_gresnet(variant: str, pretrained: bool = False, **kwargs: Any) -> GResNet:
    return build_model_with_cfg(
        GResNet,
        variant,
        pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(flatten_sequential=True),
        **kwargs,
    )


def _cfg(url: str = "", **kwargs: Any) -> dict[str, Any]:
    return {
        "url": url,
        "num_classes": 1000,
        "input_size": (3, 224, 224),
        "pool_size": (7, 7),
        "crop_pct": 224 / 232,
        "interpolation": "bilinear",
        "mean": IMAGENET_DEFAULT_MEAN,
        "std": IMAGENET_DEFAULT_STD,
        "first_conv": "stem.conv1.conv",
        "classifier": "fc",
        **kwargs,
    }


default_cfgs = generate_default_cfgs(
    {
        "gresnet50.fl_in1k": _cfg(
            hf_hub_id=None,
            origin_url=f"https://drive.google.com/file/d/{GDRIVE_FILE_ID}",
            paper_name="Vision Transformers are overrated (Frank Liu, blog post)",
            license="unknown",
            notes=(
                f"Weights: Google Drive file id {GDRIVE_FILE_ID} (GDRIVE_FILE_ID); fetched outside timm and "
                "loaded with pretrained_cfg_overlay=dict(file=...).",
                "Trained at 176 px, evaluated at 224 px (resize 232, center crop 224: crop_pct 224/232).",
                "ImageNet-1k top-1 82.0% as reported by the post; the post states no license for the weights.",
            ),
        ),
    }
)


@register_model
def gresnet50(pretrained: bool = False, **kwargs: Any) -> GResNet:
    """GResNet-50: 25.7M params, 82.0% ImageNet-1k top-1 (176 px train, 224 px eval)."""
    model_args = dict(layers=(3, 4, 6, 3), widths=(64, 128, 256, 512), stem_chs=(32, 64, 128))
    return _create_gresnet("gresnet50", pretrained=pretrained, **dict(model_args, **kwargs))
