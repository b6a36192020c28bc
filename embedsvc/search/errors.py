"""Errors of the search core: queries it cannot answer, each with its code and HTTP status (read by the API)."""

from __future__ import annotations

from embedsvc.core.errors import EmbedsvcError


class SearchError(EmbedsvcError, ValueError):
    """A query the service cannot answer."""

    code = "bad_query"
    http_status = 400


class UnknownModelError(SearchError):
    code = "unknown_model"
    http_status = 404


class ModelNotLoadedError(SearchError):
    code = "model_not_loaded"
    http_status = 404


class QueryNotFoundError(SearchError):
    code = "unknown_id"
    http_status = 404


class IncompatibleModelError(SearchError):
    """The loaded model would produce vectors not comparable with the index's (409)."""

    code = "manifest_mismatch"
    http_status = 409


class NoSearchableModelError(SearchError):
    code = "no_searchable_model"
    http_status = 409


class BadQueryError(SearchError):
    code = "bad_query"
    http_status = 422


class KOutOfRangeError(BadQueryError):
    """k outside 1..max_k: ``SearchEngine.check_k`` is its one owner (the API calls it too)."""

    code = "k_out_of_range"


class UnknownLabelError(SearchError):
    code = "unknown_label"
    http_status = 404


class UnknownFusionError(BadQueryError):
    """A ``fuse`` value other than the methods in ``embedsvc.results.FUSE_METHODS``."""

    code = "unknown_fusion"
