"""A curated list of timm backbones people compare for retrieval, usable as ``-m timm:<name>``.

Only the names are written here: each one's embedding dimension (``num_features``) and input size are read
from timm, the dimension by building the model on PyTorch's ``meta`` device (no memory for weights, no
download, milliseconds even for a ViT-B), the input size from its pretrained cfg.
"""

from __future__ import annotations

from typing import Any

CATALOGUE: tuple[tuple[str, str], ...] = (
    ("DINOv2 ViT-S/14", "vit_small_patch14_dinov2.lvd142m"),
    ("DINOv2 ViT-B/14", "vit_base_patch14_dinov2.lvd142m"),
    ("CLIP ViT-B/16 image tower (OpenAI)", "vit_base_patch16_clip_224.openai"),
    ("SigLIP ViT-B/16 image tower", "vit_base_patch16_siglip_224.webli"),
    ("EVA-02 ViT-B/14 (MIM, IN-22k)", "eva02_base_patch14_224.mim_in22k"),
    ("ConvNeXt-V2 Tiny (FCMAE, IN-22k ft)", "convnextv2_tiny.fcmae_ft_in22k_in1k"),
    ("ResNet-50 strikes back (A1)", "resnet50.a1_in1k"),
)


def catalogue_rows() -> list[dict[str, Any]]:
    """One row per curated model: label, timm name, the ``-m`` value, dim and input size, read from timm."""
    import timm
    import torch

    rows = []
    for label, name in CATALOGUE:
        cfg = timm.get_pretrained_cfg(name)
        with torch.device("meta"):
            dim = int(timm.create_model(name, pretrained=False).num_features)
        rows.append({
            "model": label,
            "timm_name": name,
            "use": f"timm:{name}",
            "dim": dim,
            "input_size": list(cfg.input_size),
            "weights": f"hf-hub:{cfg.hf_hub_id}" if cfg.hf_hub_id else cfg.url,
        })
    return rows
