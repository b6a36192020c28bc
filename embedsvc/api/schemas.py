"""Request and response models of the HTTP API.

Pure pydantic (no torch, no pymilvus): the web UI's client imports these to get typed results
without pulling in the models or the database driver.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from embedsvc import results
from embedsvc.results import OverlapPair as OverlapPair  # re-exported: clients import them from here
from embedsvc.results import Provenance as Provenance
from embedsvc.results import SkippedModel as SkippedModel
from embedsvc.results import StageTimings as StageTimings

# --------------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------------


class ErrorResponse(BaseModel):
    """Every 4xx/5xx body: a human message, a stable machine code and the request's id."""

    detail: str = Field(description="What was wrong, for a human.")
    error: str = Field(description="Stable machine-readable code, e.g. not_an_image, unknown_index.")
    errors: list[dict[str, Any]] | None = Field(default=None, description="Per-field problems (validation only).")
    request_id: str | None = Field(
        default=None, description="This request's id (X-Request-ID): the server log has the details under it."
    )


# --------------------------------------------------------------------------------------------------
# Search
# --------------------------------------------------------------------------------------------------


class SearchByJson(BaseModel):
    """JSON form of a query: base64 image bytes, or the id of an indexed image ("more like this")."""

    model_config = ConfigDict(extra="forbid")

    image_base64: str | None = Field(
        default=None, description="Image file bytes, base64 (a data: URL prefix is accepted)."
    )
    id: int | None = Field(default=None, description="Id of an image in the index; it is excluded from results.")
    fuse: str | None = Field(
        default=None, max_length=64, description="Same as the fuse query parameter ('rrf'); give it in one place."
    )

    @model_validator(mode="after")
    def _exactly_one(self) -> SearchByJson:
        if (self.image_base64 is None) == (self.id is None):
            raise ValueError("give exactly one of image_base64 or id")
        return self


# Provenance, StageTimings, OverlapPair and SkippedModel are the search core's own (embedsvc.results);
# the response types below extend its results with image and thumbnail URLs, nothing else.


class Neighbour(results.Neighbour):
    image_url: str
    thumbnail_url: str


class ModelResult(results.ModelResult):
    neighbours: list[Neighbour]


class QueryInfo(results.QueryInfo):
    image_url: str | None = None
    thumbnail_url: str | None = None


class SearchResponse(results.SearchResult):
    query: QueryInfo
    models: list[ModelResult]


# --------------------------------------------------------------------------------------------------
# Indexes, models, health
# --------------------------------------------------------------------------------------------------


class IndexModel(BaseModel):
    model_key: str
    row_count: int | None = None
    loaded: bool = Field(description="Whether this service runs the model (uploads need it; by-id does not).")
    compatible: bool | None = Field(
        default=None, description="Loaded model matches the index's manifest (null when not loaded)."
    )
    manifest: dict[str, Any]


class IndexInfo(BaseModel):
    name: str
    models: list[IndexModel]
    row_count: int | None = Field(default=None, description="Largest row count across the index's models.")


class IndexList(BaseModel):
    data: list[IndexInfo]
    count: int
    max_k: int = Field(description="Largest k that POST /search accepts (a server setting).")


class ImageRow(results.ImageRecord):
    """One indexed image, as listed (no vector): the stored record plus URLs."""

    image_url: str
    thumbnail_url: str


class ImagePage(BaseModel):
    """A page of an index's images in ascending id order."""

    index: str
    model_key: str = Field(description="The model collection the rows were read from (the one with the most rows).")
    label_filter: int | None = Field(default=None, description="Label id the rows were filtered by.")
    offset: int
    limit: int
    total: int = Field(description="Images matching the label filter; pages cover 0..total-1.")
    data: list[ImageRow]
    count: int = Field(description="Images in this page.")


class RandomImages(BaseModel):
    """Distinct images drawn at random; the same seed draws the same ones while the index is unchanged."""

    index: str
    model_key: str = Field(description="The model collection the rows were read from (the one with the most rows).")
    label_filter: int | None = Field(default=None, description="Label id the draw was limited to.")
    seed: int | None = None
    total: int = Field(description="Images the draw was made from.")
    data: list[ImageRow]
    count: int = Field(description="Images drawn (fewer than asked when the index holds fewer).")


class ModelInfo(BaseModel):
    key: str
    display_name: str
    model_name: str
    dim: int
    normalize: bool
    device: str
    provenance: Provenance
    untrained: bool
    preprocessing: dict[str, Any]
    precision: str = Field(default="fp32", description="The forward's precision on this device: fp32, bf16 or fp16.")
    compiled: bool = Field(default=False, description="The forward runs through torch.compile.")


class ModelList(BaseModel):
    data: list[ModelInfo]
    count: int


class Health(BaseModel):
    status: Literal["ok"] = "ok"
    version: str


class Readiness(BaseModel):
    ready: bool
    models_loaded: list[str]
    milvus: Literal["ok", "unavailable"]
    reason: str | None = None


# --------------------------------------------------------------------------------------------------
# Jobs
# --------------------------------------------------------------------------------------------------


class JobCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    root: str = Field(min_length=1, max_length=4096, description="Server-side folder under an allowed root.")
    labels_from_dirs: bool = False
    prune: bool = False
    models: list[str] | None = Field(default=None, description="Default: the index's models, else all loaded.")


JobState = Literal["queued", "running", "succeeded", "failed", "cancelled"]


class JobProgress(BaseModel):
    done: int = 0
    total: int | None = None
    phase: str | None = None
    per_model_rate: dict[str, float] = Field(default_factory=dict)


class JobInfo(BaseModel):
    id: str
    index: str
    state: JobState
    root: str
    models: list[str]
    labels_from_dirs: bool
    prune: bool
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    progress: JobProgress
    summary: dict[str, Any] | None = None
    error: str | None = None


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses=`` entries documenting our error body for each status (422 included)."""
    return {status: {"model": ErrorResponse} for status in statuses}


# --------------------------------------------------------------------------------------------------
# Maps (GET /indexes/{name}/maps): 2-D maps of every model's vectors, embedsvc.maps
# --------------------------------------------------------------------------------------------------

MapMethod = Literal["auto", "umap", "pca"]


class MapPoint(BaseModel):
    """One sampled image; the same point (same position in ``points``) in every model's map."""

    id: int
    label_id: int = Field(description="-1 when the image has no label.")
    label: str = Field(description="The label's name ('' when unlabelled).")
    rel_path: str | None = None


class ModelMap(BaseModel):
    """One model's map: ``x[i], y[i]`` place ``points[i]``."""

    model: str
    display_name: str | None = None
    method: Literal["umap", "pca"] = Field(description="What projected this model (auto resolves to one of them).")
    x: list[float]
    y: list[float]
    seconds: float = Field(description="Time the projection of this model took.")


class MapsResponse(BaseModel):
    index: str
    method: MapMethod = Field(description="The method asked for.")
    sample: int = Field(description="Points asked for (at most this many are mapped).")
    seed: int
    n_points: int
    total_rows: int = Field(description="Rows the sample was drawn from.")
    points: list[MapPoint]
    models: list[ModelMap]
    computed_at: datetime
    compute_seconds: float
    cached: bool = Field(description="True when the maps came from the cache (the index has not changed since).")

    def model_map(self, key: str) -> ModelMap:
        """The map of model ``key`` (KeyError naming the models there are)."""
        for m in self.models:
            if m.model == key:
                return m
        raise KeyError(f"no map for {key!r}; maps of {[m.model for m in self.models]}")
