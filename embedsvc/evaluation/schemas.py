"""Response model of ``GET /indexes/{name}/eval``: the evaluation summary, typed.

Pure pydantic, so the web UI's client can import it without torch or pymilvus. Field meanings are in
docs/evaluation.md; metric dicts are keyed ``knn_top1``, ``knn_top1_weighted``, ``precision@k``,
``hit@k`` and ``map@k`` for each k in ``k_list``; ``metrics_ci`` holds their 95% intervals, ``paired``
the Holm-adjusted comparisons and ``models["fused_rrf"]`` the RRF fusion (described by ``fusion``).
"""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field

SIGNIFICANT_BELOW = 0.05
NO_DIFFERENCE = "no significant difference"


def verdict(a: str, b: str, diff: float, p_holm: float) -> str:
    """The one wording every output uses: "A better than B" only when the Holm-adjusted p is below 0.05."""
    if p_holm < SIGNIFICANT_BELOW and diff != 0:
        return f"{a} better than {b}" if diff > 0 else f"{b} better than {a}"
    return NO_DIFFERENCE


class EvalQueries(BaseModel):
    n_rows: int = Field(description="Rows shared by every model of the index.")
    n_labelled: int
    n_classes: int
    n_queries: int = Field(description="Labelled rows used as queries (all, or the seeded sample).")
    n_evaluated: int = Field(description="Queries with R >= 1 other row of their label: the averages' denominator.")
    n_without_relevant: int = Field(description="Queries left out because no other row shares their label.")
    sample: int | None
    seed: int


class EvalModelInfo(BaseModel):
    model_name: str | None = None
    display_name: str | None = None
    dim: int | None = None
    normalize: bool | None = None
    weights: str | None = Field(default=None, description="Weights provenance label.")
    trained: bool | None = None
    row_count: int | None = None
    updated_at: str | None = None


class ClassScore(BaseModel):
    label_id: int
    label: str
    k: int
    precision: float = Field(description="Mean precision@k of this class's evaluated queries.")
    n_queries: int


class Confusion(BaseModel):
    query_label: str
    neighbour_label: str = Field(description="Label of the wrong top-1 neighbour; '(unlabelled)' for -1.")
    count: int


class Hub(BaseModel):
    id: int
    label: str
    count: int = Field(description="In how many queries' top-k lists this row appears.")
    rel_path: str | None = None


class Hubness(BaseModel):
    k: int
    skewness: float = Field(description="Skewness of the k-occurrence distribution over all rows.")
    top: list[Hub]


class ModelEval(BaseModel):
    model: EvalModelInfo | None = None
    metrics: dict[str, float | None]
    metrics_ci: dict[str, list[float] | None] | None = Field(
        default=None, description="95% percentile-bootstrap interval [low, high] of each metric, over queries."
    )
    chance: dict[str, float | None] | None = Field(
        default=None, description="The same metrics against labels shuffled among the labelled rows."
    )
    search_seconds: float = Field(description="Time of the exact neighbour search of this model (scoring excluded).")
    fetch_seconds: float | None = Field(default=None, description="Time to read this model's vectors from Milvus.")
    per_class: list[ClassScore]
    worst_classes: list[ClassScore]
    confusions: list[Confusion]
    hubness: Hubness


class JaccardPair(BaseModel):
    a: str
    b: str
    k: int
    mean_jaccard: float | None


class AgreementExamples(BaseModel):
    only_right: dict[str, list[int]] = Field(description="Up to 10 query ids per model where only it is right.")
    none_right: list[int]


class Agreement(BaseModel):
    all_right: int
    none_right: int
    only_right: dict[str, int]
    n_queries: int
    examples: AgreementExamples | None = None


class CrossModel(BaseModel):
    jaccard: list[JaccardPair]
    agreement: Agreement


class PairedComparison(BaseModel):
    a: str
    b: str
    metric: str
    diff: float = Field(description="metric of a minus metric of b.")
    ci: list[float] = Field(description="95% paired-bootstrap interval of the per-query difference.")
    p_value: float
    p_holm: float = Field(description="Holm-adjusted over every comparison of the report.")
    test: str = Field(description="mcnemar_exact (binary per-query metrics) or permutation (paired sign flips).")
    n_queries: int | None = None
    verdict: str | None = Field(default=None, description="'A better than B' when p_holm < 0.05, else no difference.")

    def says(self) -> str:
        """The verdict, recomputed when an older payload lacks it."""
        return self.verdict or verdict(self.a, self.b, self.diff, self.p_holm)


class Uncertainty(BaseModel):
    confidence: float
    method: str
    resamples: int
    seed: int
    alpha: float
    adjustment: str
    tests: dict[str, str]
    n_comparisons: int


class Fusion(BaseModel):
    key: str = Field(description="The entry of ``models`` holding the fused ranking's scores.")
    method: str
    k: int = Field(description="RRF constant: score = sum over models of 1 / (k + rank).")
    of: list[str]
    depth: int = Field(description="How many neighbours of each model's ranking are fused.")


class EvalResponse(BaseModel):
    index: str
    version: list[list[str | int]] = Field(description="(model, live rows, row_count, updated_at) it was computed on.")
    k_list: list[int]
    knn_k: int
    queries: EvalQueries
    models: dict[str, ModelEval]
    cross_model: CrossModel
    paired: list[PairedComparison] = Field(default_factory=list)
    uncertainty: Uncertainty | None = None
    fusion: Fusion | None = None
    cached: bool = Field(description="True when served from the cache of this index version.")
    computed_at: datetime
    compute_seconds: float
