"""GET /models: the embedders this service loaded, with their weights provenance."""

from __future__ import annotations

from fastapi import APIRouter

from embedsvc.api.deps import EmbeddersDep
from embedsvc.api.schemas import ModelInfo, ModelList, Provenance
from embedsvc.embedder import Embedder

router = APIRouter(prefix="/models", tags=["models"])


def model_info(embedder: Embedder) -> ModelInfo:
    manifest = embedder.manifest()
    prov = embedder.provenance
    return ModelInfo(
        key=embedder.key,
        display_name=embedder.spec.display_name,
        model_name=embedder.spec.model_name,
        dim=embedder.dim,
        normalize=embedder.normalize,
        device=str(embedder.device),
        provenance=Provenance(
            label=prov.label,
            trained=prov.trained,
            untrained=embedder.untrained,
            source=prov.source,
            sha256=prov.sha256,
            seed=prov.seed,
        ),
        untrained=embedder.untrained,
        preprocessing=dict(manifest.get("preprocessing") or {}),
        precision=embedder.precision,
        compiled=embedder.compiled,
    )


@router.get("", response_model=ModelList, summary="Loaded models")
def list_models(embedders: EmbeddersDep) -> ModelList:
    data = [model_info(e) for e in embedders.values()]
    return ModelList(data=data, count=len(data))
