"""Uncertainty of the evaluation: bootstrap CIs over queries, paired tests between models, Holm adjustment.

Why here and in NumPy only: every metric is a mean of per-query values over the same evaluated
queries, so one resample of queries gives every metric of every model at once, as a matrix product
(resample counts (B, n) @ per-query values (n, m)). Resampling the same queries for two models is the
paired bootstrap of their per-query difference (a difference of means is the mean of the differences).

Randomness is seeded: ``np.random.default_rng(seed)`` draws the bootstrap indices in the same order as
``scipy.stats.bootstrap(..., rng=np.random.default_rng(seed), batch=resample_batch(n))`` does, so the
tests can compare the intervals with SciPy's exactly; the permutation test has its own stream
(``default_rng((seed, 1))``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

CONFIDENCE = 0.95
DEFAULT_RESAMPLES = 10_000
SIGNIFICANCE = 0.05
BATCH_ELEMS = 1 << 22  # resampled indices held at once (32 MB of int64)

MCNEMAR = "mcnemar_exact"
PERMUTATION = "permutation"


def resample_batch(n: int, budget: int = BATCH_ELEMS) -> int:
    """Resamples drawn per batch so that one (batch, n) index block stays near ``budget`` elements."""
    return max(1, budget // max(n, 1))


def _counts(idx: np.ndarray, n: int) -> np.ndarray:
    """(b, n) indices -> (b, n) float64 counts: how often each query was drawn in each resample."""
    b = idx.shape[0]
    flat = (idx + (np.arange(b, dtype=np.int64) * n)[:, None]).ravel()
    return np.bincount(flat, minlength=b * n).reshape(b, n).astype(np.float64)


def bootstrap_means(values: np.ndarray, resamples: int, seed: int) -> np.ndarray:
    """(resamples, m) means of the columns of ``values`` (n, m) over queries drawn with replacement.

    Every column sees the same resampled queries (the paired bootstrap); batches bound the memory.
    """
    values = np.asarray(values, dtype=np.float64)
    n, m = values.shape
    rng = np.random.default_rng(seed)
    out = np.empty((resamples, m))
    step = resample_batch(n)
    for start in range(0, resamples, step):
        b = min(step, resamples - start)
        idx = rng.integers(0, n, (b, n))
        out[start : start + b] = _counts(idx, n) @ values / n
    return out


def percentile_ci(means: np.ndarray, confidence: float = CONFIDENCE) -> np.ndarray:
    """(m, 2) percentile interval of each column of the bootstrap distribution (linear quantiles)."""
    alpha = (1 - confidence) / 2
    return np.quantile(means, [alpha, 1 - alpha], axis=0).T


def sign_flip_p_values(diffs: np.ndarray, resamples: int, seed: int) -> np.ndarray:
    """Two-sided p-value per column of per-query differences (n, m): a paired permutation test.

    Under "no difference" each query's two values are exchangeable, so the sign of its difference is a
    coin flip; p = (1 + #{|mean of flipped| >= |observed mean|}) / (1 + resamples), the randomised test's
    valid (never zero) estimate. All-zero differences give p = 1.
    """
    diffs = np.asarray(diffs, dtype=np.float64)
    n, m = diffs.shape
    observed = np.abs(diffs.sum(0))
    tol = 1e-9 * np.abs(diffs).sum(0)  # equal sums must compare equal despite rounding
    rng = np.random.default_rng((seed, 1))
    extreme = np.zeros(m, dtype=np.int64)
    step = resample_batch(n)
    for start in range(0, resamples, step):
        b = min(step, resamples - start)
        signs = rng.integers(0, 2, (b, n)).astype(np.float64) * 2 - 1
        extreme += (np.abs(signs @ diffs) >= observed - tol).sum(0)
    return (1 + extreme) / (1 + resamples)


def _log_binom_cdf_half(k: int, n: int) -> float:
    """log P(X <= k) for X ~ Binomial(n, 1/2), summed in log space (exact enough for any n)."""
    i = np.arange(1, k + 1, dtype=np.float64)
    log_comb = np.concatenate([[0.0], np.cumsum(np.log(n - i + 1) - np.log(i))])  # log C(n, 0..k)
    top = log_comb.max()
    return float(top + np.log(np.exp(log_comb - top).sum()) - n * math.log(2))


def mcnemar_exact(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sided exact McNemar p-value of two paired binary outcomes: a binomial test on the discordant pairs.

    With n01 queries only ``a`` gets right and n10 only ``b``, p = min(1, 2 P(X <= min(n01, n10))) for
    X ~ Binomial(n01 + n10, 1/2); no discordant pair at all gives p = 1.
    """
    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    only_a, only_b = int((a & ~b).sum()), int((b & ~a).sum())
    n = only_a + only_b
    if n == 0 or only_a == only_b:
        return 1.0
    return min(1.0, 2.0 * math.exp(_log_binom_cdf_half(min(only_a, only_b), n)))


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjustment: the i-th smallest p times (m - i + 1), made monotone, capped at 1."""
    p = np.asarray(p_values, dtype=np.float64)
    m = len(p)
    if not m:
        return []
    order = np.argsort(p, kind="stable")
    adjusted = np.minimum(1.0, np.maximum.accumulate(p[order] * (m - np.arange(m))))
    out = np.empty(m)
    out[order] = adjusted
    return out.tolist()


def is_binary_metric(name: str) -> bool:
    """Metrics whose per-query value is 0 or 1 (right/wrong): kNN votes, P@1, AP@1 and hit@k."""
    return name in ("knn_top1", "knn_top1_weighted", "precision@1", "map@1") or name.startswith("hit@")
