"""A small typed HTTP client for the embedsvc API; the web UI talks to the service only through it.

It imports no model and no database driver: responses are parsed into the API's own pydantic schemas.
Errors come back as :class:`ApiError` (the API's status, code and message) or
:class:`ApiUnavailableError` (nothing answered), so callers can show the API's message, not a traceback.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from typing import Any, TypeVar
from urllib.parse import quote, urljoin

import httpx
from pydantic import BaseModel

from embedsvc.api.schemas import (  # the wire types: callers (the web UI) take them from here
    Health,
    ImagePage,
    IndexInfo,
    IndexList,
    JobInfo,
    MapPoint,
    MapsResponse,
    ModelList,
    ModelResult,
    Neighbour,
    OverlapPair,
    QueryInfo,
    RandomImages,
    Readiness,
    SearchResponse,
)
from embedsvc.core.errors import EmbedsvcError
from embedsvc.evaluation.schemas import EvalResponse
from embedsvc.results import FUSED_KEY

__all__ = [
    "ApiError",
    "ApiUnavailableError",
    "EmbedsvcClient",
    "FUSED_KEY",
    "EvalResponse",
    "Health",
    "ImagePage",
    "IndexInfo",
    "IndexList",
    "JobInfo",
    "MapPoint",
    "MapsResponse",
    "ModelList",
    "ModelResult",
    "Neighbour",
    "OverlapPair",
    "QueryInfo",
    "RandomImages",
    "Readiness",
    "SearchResponse",
]

M = TypeVar("M", bound=BaseModel)


class ApiError(EmbedsvcError, RuntimeError):
    """The API answered with an error: ``status``, machine ``code`` and human ``detail``.

    The server's code and status become this error's own (per instance), so a caller that handles
    EmbedsvcError (the CLI's one error line) treats an API refusal like any other product error.
    """

    def __init__(self, status: int, code: str, detail: str, request_id: str | None = None) -> None:
        super().__init__(f"{detail} ({status} {code})")
        self.status = status
        self.http_status = status  # type: ignore[misc]
        self.code = code  # type: ignore[misc]
        self.detail = detail
        self.request_id = request_id


class ApiUnavailableError(EmbedsvcError, RuntimeError):
    """Nothing answered at the API's URL (not started, wrong URL, network down, timed out)."""

    code = "api_unavailable"
    http_status = 503


class EmbedsvcClient:
    """``EmbedsvcClient("http://127.0.0.1:8000")``; or pass ``http=`` (e.g. FastAPI's TestClient).

    ``token`` is the API token (``EMBEDSVC_API_TOKEN``, read from the settings when not given), sent as
    a bearer token on every request so that jobs work on a server that requires it.
    """

    def __init__(
        self,
        base_url: str | None = None,
        *,
        timeout: float = 60.0,
        http: httpx.Client | None = None,
        token: str | None = None,
    ) -> None:
        if (base_url is None and http is None) or token is None:
            from embedsvc.core.config import get_settings

            settings = get_settings()
            if base_url is None and http is None:
                base_url = settings.api_url
            if token is None:
                token = settings.api_token.get_secret_value()
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.base_url = (base_url or str(http.base_url if http else "")).rstrip("/")
        self._owns_http = http is None
        self.http = http or httpx.Client(base_url=self.base_url, timeout=timeout)

    def close(self) -> None:
        if self._owns_http:
            self.http.close()

    def __enter__(self) -> EmbedsvcClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- plumbing ----------------------------------------------------------------------------------

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        headers = {**self._headers, **kwargs.pop("headers", {})}
        try:
            resp = self.http.request(method, path, headers=headers, **kwargs)
        except httpx.TransportError as exc:
            raise ApiUnavailableError(f"embedsvc API at {self.base_url} is not reachable: {exc}") from exc
        if resp.status_code >= 400:
            request_id = resp.headers.get("x-request-id")
            try:
                body = resp.json()
                code = str(body.get("error") or "error")
                detail = str(body.get("detail") or body.get("reason") or resp.reason_phrase)
            except (ValueError, AttributeError):
                code, detail = "error", resp.text[:300] or resp.reason_phrase
            raise ApiError(resp.status_code, code, detail, request_id)
        return resp

    def _get(self, path: str, model: type[M], **kwargs: Any) -> M:
        return model.model_validate(self._request("GET", path, **kwargs).json())

    @staticmethod
    def _search_params(
        index: str, k: int, models: Sequence[str] | None, label: int | str | None, fuse: str | None = None
    ) -> list[tuple[str, str | int]]:
        params: list[tuple[str, str | int]] = [("index", index), ("k", k)]
        if models:
            params.append(("models", ",".join(models)))
        if label is not None and label != "":
            params.append(("label", str(label)))
        if fuse:
            params.append(("fuse", fuse))
        return params

    # -- search ------------------------------------------------------------------------------------

    def search_upload(
        self,
        data: bytes,
        *,
        index: str,
        k: int = 10,
        models: Sequence[str] | None = None,
        label: int | str | None = None,
        filename: str = "query.jpg",
        fuse: str | None = None,
    ) -> SearchResponse:
        """Search with an image file's bytes (multipart upload). ``fuse="rrf"`` (also on the other search
        methods) adds a last entry, ``fused_rrf``, the models' rankings fused by reciprocal rank fusion."""
        resp = self._request(
            "POST",
            "/search",
            params=self._search_params(index, k, models, label, fuse),
            files={"image": (filename, data, "application/octet-stream")},
        )
        return SearchResponse.model_validate(resp.json())

    def search_base64(
        self,
        data: bytes,
        *,
        index: str,
        k: int = 10,
        models: Sequence[str] | None = None,
        label: int | str | None = None,
        fuse: str | None = None,
    ) -> SearchResponse:
        resp = self._request(
            "POST",
            "/search",
            params=self._search_params(index, k, models, label, fuse),
            json={"image_base64": base64.b64encode(data).decode()},
        )
        return SearchResponse.model_validate(resp.json())

    def search_by_id(
        self,
        row_id: int,
        *,
        index: str,
        k: int = 10,
        models: Sequence[str] | None = None,
        label: int | str | None = None,
        fuse: str | None = None,
    ) -> SearchResponse:
        """ "More like this": neighbours of an indexed image (itself excluded)."""
        resp = self._request(
            "POST", "/search", params=self._search_params(index, k, models, label, fuse), json={"id": int(row_id)}
        )
        return SearchResponse.model_validate(resp.json())

    # -- catalogue and health ----------------------------------------------------------------------

    def indexes(self) -> IndexList:
        return self._get("/indexes", IndexList)

    def index(self, name: str) -> IndexInfo:
        return self._get(f"/indexes/{quote(name, safe='')}", IndexInfo)

    def max_k(self) -> int:
        """Largest k the API's search accepts (a server setting, reported with the index list)."""
        return self.indexes().max_k

    def list_images(self, index: str, *, offset: int = 0, limit: int = 50, label: int | str | None = None) -> ImagePage:
        """A page of an index's images in ascending id order (``total`` says how many match)."""
        params: dict[str, str | int] = {"offset": int(offset), "limit": int(limit)}
        if label is not None and label != "":
            params["label"] = str(label)
        return self._get(f"/indexes/{quote(index, safe='')}/images", ImagePage, params=params)

    def random_images(
        self, index: str, *, count: int = 1, seed: int | None = None, label: int | str | None = None
    ) -> RandomImages:
        """Distinct random images of an index; a ``seed`` makes the draw reproducible."""
        params: dict[str, str | int] = {"count": int(count)}
        if seed is not None:
            params["seed"] = int(seed)
        if label is not None and label != "":
            params["label"] = str(label)
        return self._get(f"/indexes/{quote(index, safe='')}/images/random", RandomImages, params=params)

    def models(self) -> ModelList:
        return self._get("/models", ModelList)

    def health(self) -> Health:
        return self._get("/health", Health)

    def ready(self) -> Readiness:
        """Readiness without raising: a 503 comes back as ``ready=False`` with the reason."""
        try:
            resp = self.http.get("/ready", headers=self._headers)
        except httpx.TransportError as exc:
            raise ApiUnavailableError(f"embedsvc API at {self.base_url} is not reachable: {exc}") from exc
        if resp.status_code in (200, 503):
            return Readiness.model_validate(resp.json())
        raise ApiError(resp.status_code, "error", resp.text[:300])

    # -- images ------------------------------------------------------------------------------------

    def absolute(self, url: str) -> str:
        """An API-relative URL from a search result (``/images/...``) as an absolute one."""
        return urljoin(self.base_url + "/", url.lstrip("/"))

    def image_url(self, index: str, row_id: int) -> str:
        return self.absolute(f"/images/{quote(index, safe='')}/{int(row_id)}")

    def thumbnail_url(self, index: str, row_id: int, size: int | None = None) -> str:
        url = f"{self.image_url(index, row_id)}/thumbnail"
        return f"{url}?size={int(size)}" if size is not None else url

    def image_bytes(self, index: str, row_id: int) -> bytes:
        return self._request("GET", f"/images/{quote(index, safe='')}/{int(row_id)}").content

    def thumbnail_bytes(self, index: str, row_id: int, size: int | None = None) -> bytes:
        params = {"size": int(size)} if size is not None else None
        return self._request("GET", f"/images/{quote(index, safe='')}/{int(row_id)}/thumbnail", params=params).content

    def fetch(self, url: str) -> bytes:
        """Bytes of an API-relative URL taken from a response (e.g. a neighbour's thumbnail_url)."""
        return self._request("GET", url if url.startswith("/") else "/" + url).content

    # -- jobs and evaluation -----------------------------------------------------------------------

    def start_job(
        self,
        index: str,
        root: str,
        *,
        labels_from_dirs: bool = False,
        prune: bool = False,
        models: Sequence[str] | None = None,
    ) -> JobInfo:
        body: dict[str, Any] = {"root": root, "labels_from_dirs": labels_from_dirs, "prune": prune}
        if models:
            body["models"] = list(models)
        resp = self._request("POST", f"/indexes/{quote(index, safe='')}/jobs", json=body)
        return JobInfo.model_validate(resp.json())

    def job(self, index: str, job_id: str) -> JobInfo:
        return self._get(f"/indexes/{quote(index, safe='')}/jobs/{quote(job_id, safe='')}", JobInfo)

    def jobs(self, index: str) -> list[JobInfo]:
        resp = self._request("GET", f"/indexes/{quote(index, safe='')}/jobs")
        return [JobInfo.model_validate(j) for j in resp.json()]

    def evaluation(self, index: str, *, sample: int | None = None, seed: int = 0) -> EvalResponse:
        """Leave-one-out retrieval metrics of an index (GET /indexes/{name}/eval; cached by the API)."""
        params: dict[str, int] = {"seed": seed}
        if sample is not None:
            params["sample"] = sample
        return self._get(f"/indexes/{quote(index, safe='')}/eval", EvalResponse, params=params)

    def maps(self, index: str, *, sample: int | None = None, seed: int = 0, method: str = "auto") -> MapsResponse:
        """2-D maps of every model's vectors on one seeded sample (GET /indexes/{name}/maps; cached by the API).

        ``sample=None`` takes the API's default (up to 20,000 points); ``method`` is auto, umap or pca.
        """
        params: dict[str, str | int] = {"seed": int(seed), "method": method}
        if sample is not None:
            params["sample"] = int(sample)
        return self._get(f"/indexes/{quote(index, safe='')}/maps", MapsResponse, params=params)
