"""Errors of the search core: queries it cannot answer (the HTTP status mapping lives in embedsvc.api.errors)."""

from __future__ import annotations

from embedsvc.core.errors import CodedError


class SearchError(CodedError):
    """A query the service cannot answer."""

    code = "bad_query"


class UnknownModelError(SearchError):
    code = "unknown_model"


class ModelNotLoadedError(SearchError):
    code = "model_not_loaded"


class QueryNotFoundError(SearchError):
    code = "unknown_id"


class IncompatibleModelError(SearchError):
    """The loaded model would produce vectors not comparable with the index's (409)."""

    code = "manifest_mismatch"


class NoSearchableModelError(SearchError):
    code = "no_searchable_model"


class BadQueryError(SearchError):
    code = "bad_query"


class KOutOfRangeError(BadQueryError):
    """k outside 1..max_k: ``SearchEngine.check_k`` is its one owner (the API calls it too)."""

    code = "k_out_of_range"


class UnknownLabelError(SearchError):
    code = "unknown_label"
