"""The search core: one query image through every model of an index, without HTTP.

The HTTP layer (``embedsvc.api``) only translates parameters and errors; everything that decides
what a result is lives here so the CLI, benchmarks and tests can call it directly.
"""

from embedsvc.search.engine import SearchEngine
from embedsvc.search.errors import (
    BadQueryError,
    IncompatibleModelError,
    ModelNotLoadedError,
    NoSearchableModelError,
    QueryNotFoundError,
    SearchError,
    UnknownLabelError,
    UnknownModelError,
)
from embedsvc.search.holder import StoreHolder
from embedsvc.search.params import parse_model_list
from embedsvc.search.results import (
    STAGES,
    ModelResult,
    Neighbour,
    QueryInfo,
    RowListing,
    SearchResult,
    StageObserver,
    jaccard,
)

__all__ = [
    "STAGES",
    "BadQueryError",
    "IncompatibleModelError",
    "ModelNotLoadedError",
    "ModelResult",
    "Neighbour",
    "NoSearchableModelError",
    "QueryInfo",
    "QueryNotFoundError",
    "RowListing",
    "SearchEngine",
    "SearchError",
    "SearchResult",
    "StageObserver",
    "StoreHolder",
    "UnknownLabelError",
    "UnknownModelError",
    "jaccard",
    "parse_model_list",
]
