"""The store-backed path: evaluate_index on a Milvus Lite index equals evaluate_arrays on the same rows;
the CLI writes every report file; unknown indexes and models fail cleanly."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from embedsvc.cli import app
from embedsvc.evaluation.report import DOC_END, DOC_START
from embedsvc.evaluation.runner import evaluate_arrays, evaluate_index, index_version
from embedsvc.store import IndexNotFoundError, Store

DIMS = {"wide": 16, "narrow": 4}
N = 30


def manifest(key: str, dim: int) -> dict:
    return {
        "model_name": f"synthetic_{key}",
        "weights": {"source": "random", "sha256": None, "trained": False, "label": f"{key} random"},
        "dim": dim,
        "normalize": False,
        "preprocessing": {},
    }


def synthetic_rows(seed: int = 0) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(3), N // 3)
    labels[0] = -1  # unlabelled: a neighbour, never a query
    ids = rng.permutation(np.arange(5000, 5000 + N))
    vectors = {
        key: (rng.integers(-2, 3, size=(N, dim)) + labels[:, None] * (dim // 4)).astype(np.float32)
        for key, dim in DIMS.items()
    }
    return ids, labels, vectors


def fill(store: Store, index: str, ids, labels, vectors) -> None:
    names = {-1: "", 0: "cat", 1: "dog", 2: "fish"}
    for key, vecs in vectors.items():
        store.ensure_collection(index, key, manifest(key, vecs.shape[1]))
        rows = [
            {
                "id": int(i),
                "vector": v,
                "rel_path": f"{names[int(lab)] or 'x'}/{int(i)}.jpg",
                "content_hash": str(i),
                "label_id": int(lab),
                "label_name": names[int(lab)],
            }
            for i, v, lab in zip(ids, vecs, labels, strict=True)
        ]
        store.upsert(index, key, rows)
        store.update_manifest(index, key, row_count=len(rows))


@pytest.fixture(scope="module")
def lite(tmp_path_factory):
    data = tmp_path_factory.mktemp("evaldata")
    store = Store(str(data / "milvus.db"))
    ids, labels, vectors = synthetic_rows()
    fill(store, "synth", ids, labels, vectors)
    yield store, data, (ids, labels, vectors)
    store.close()


def test_evaluate_index_equals_evaluate_arrays(lite) -> None:
    store, _, (ids, labels, vectors) = lite
    got = evaluate_index(store, "synth", sample=20, seed=3)
    want = evaluate_arrays(vectors, ids, labels, sample=20, seed=3)
    for key in DIMS:
        assert got.summary["models"][key]["metrics"] == want.summary["models"][key]["metrics"]
        assert got.summary["models"][key]["chance"] == want.summary["models"][key]["chance"]
    assert got.summary["cross_model"]["agreement"] == want.summary["cross_model"]["agreement"]
    assert got.summary["queries"] == want.summary["queries"]
    # store-only extras: label names, hub paths, model provenance, the version it was computed on
    labels_seen = {row["label"] for row in got.summary["models"]["wide"]["per_class"]}
    assert labels_seen == {"cat", "dog", "fish"}
    hub = got.summary["models"]["wide"]["hubness"]["top"][0]
    assert hub["rel_path"].endswith(f"/{hub['id']}.jpg")
    assert got.summary["models"]["narrow"]["model"]["weights"] == "narrow random"
    assert got.summary["version"] == [list(v) for v in index_version(store, "synth")]


def test_one_model_and_progress(lite) -> None:
    store, _, _ = lite
    calls: list[tuple[int, int]] = []
    ev = evaluate_index(store, "synth", models=["narrow"], progress=lambda step, total: calls.append((step, total)))
    assert list(ev.summary["models"]) == ["narrow"]
    assert sum(step for step, _ in calls) == calls[0][1] == N - 1  # every labelled row, one model


def test_unknown_index_and_model(lite) -> None:
    store, _, _ = lite
    with pytest.raises(IndexNotFoundError):
        evaluate_index(store, "nope")
    with pytest.raises(IndexNotFoundError):
        index_version(store, "nope")
    with pytest.raises(ValueError, match="no vectors for"):
        evaluate_index(store, "synth", models=["wide", "missing"])


def test_version_changes_when_rows_change(lite) -> None:
    store, _, (ids, labels, vectors) = lite
    fill(store, "synth2", ids[:10], labels[:10], {"wide": vectors["wide"][:10]})
    before = index_version(store, "synth2")
    fill(store, "synth2", ids[:12], labels[:12], {"wide": vectors["wide"][:12]})
    assert index_version(store, "synth2") != before


def test_cli_writes_every_report_file(lite, tmp_path: Path) -> None:
    store, data, _ = lite
    out = tmp_path / "report"
    result = CliRunner().invoke(
        app,
        [
            "eval",
            "synth",
            "--sample",
            "15",
            "--seed",
            "2",
            "--k-list",
            "1,5,50",
            "--out",
            str(out),
            "--data-dir",
            str(data),
        ],
    )
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "eval.json").read_text())
    assert summary["k_list"] == [1, 5, 29]  # 50 clipped to n - 1
    assert summary["queries"]["n_queries"] == 15
    want = evaluate_index(store, "synth", sample=15, seed=2, k_list=[1, 5, 50])
    assert summary["models"]["wide"]["metrics"] == pytest.approx(want.summary["models"]["wide"]["metrics"])
    with (out / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["model"] for r in rows] == ["narrow", "wide", "fused_rrf"]  # the two models, then their fusion
    assert float(rows[1]["precision@1"]) == pytest.approx(want.summary["models"]["wide"]["metrics"]["precision@1"])
    with (out / "per_query.csv").open() as f:
        assert len(list(csv.DictReader(f))) == 15
    assert (out / "per_class.csv").read_text().count("\n") == 1 + 3 * 3  # (2 models + fused) x 3 classes
    assert (out / "precision_at_k.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (out / "results.md").read_text()
    assert "produced by `embedsvc eval synth --sample 15 --seed 2 --k-list 1,5,50" in md
    p1 = f"{want.summary['models']['wide']['metrics']['precision@1']:.3f}"
    assert "| wide | " in md and p1 in md.split("| wide |")[1].split("\n")[0]
    assert "P@1" in result.output


def test_cli_unknown_index_is_one_error_line(lite) -> None:
    _, data, _ = lite
    result = CliRunner().invoke(app, ["eval", "nope", "--data-dir", str(data)])
    assert result.exit_code == 1
    assert "error: no index 'nope'" in result.output


def test_cli_update_doc_replaces_only_the_marked_block(lite, tmp_path: Path) -> None:
    _, data, _ = lite
    doc = tmp_path / "README.md"
    doc.write_text(f"# Title\n\nbefore\n{DOC_START}\nold table\n{DOC_END}\nafter\n")
    out = tmp_path / "r"
    args = ["eval", "synth", "-m", "wide", "--out", str(out), "--data-dir", str(data), "--update-doc", str(doc)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    text = doc.read_text()
    assert "old table" not in text and text.startswith("# Title\n\nbefore\n") and text.endswith(f"{DOC_END}\nafter\n")
    assert (out / "results.md").read_text() in text
    assert f"produced by `embedsvc eval synth -m wide --data-dir {data}`" in text
    doc.write_text("no markers here\n")
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1 and "no <!-- embedsvc-eval:start -->" in result.output


def test_cli_update_doc_writes_cis_the_fused_row_and_significance(lite, tmp_path: Path) -> None:
    _, data, _ = lite
    doc = tmp_path / "README.md"
    doc.write_text(f"intro\n{DOC_START}\nold\n{DOC_END}\n")
    out = tmp_path / "r"
    args = ["eval", "synth", "--ci-resamples", "500", "--ci-seed", "3", "--out", str(out), "--data-dir", str(data)]
    result = CliRunner().invoke(app, [*args, "--update-doc", str(doc)])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "eval.json").read_text())
    text = doc.read_text()
    assert f"produced by `embedsvc eval synth --ci-resamples 500 --ci-seed 3 --data-dir {data}`" in text
    for key in ("narrow", "wide", "fused_rrf"):
        entry = summary["models"][key]
        lo, hi = entry["metrics_ci"]["precision@1"]
        row = text.split(f"| {key} |")[1].split("\n")[0]
        assert f"{entry['metrics']['precision@1']:.3f} [{lo:.3f}, {hi:.3f}]" in row
    assert "RRF (k=60) of narrow, wide" in text.split("| fused_rrf |")[1].split("\n")[0]
    assert summary["uncertainty"]["resamples"] == 500 and summary["uncertainty"]["seed"] == 3
    pairs = {(p["a"], p["b"]) for p in summary["paired"]}
    assert pairs == {("narrow", "wide"), ("fused_rrf", "narrow"), ("fused_rrf", "wide")}
    for p in summary["paired"]:
        if p["metric"] == "precision@1":
            line = next(x for x in text.splitlines() if x.startswith(f"- {p['a']} vs {p['b']}: "))
            groups = dict(g.split(" on ", 1) for g in line.split(": ", 1)[1].split("; "))
            assert "P@1" in groups[p["verdict"]].split(", ")
            assert ("better than" in p["verdict"]) == (p["p_holm"] < 0.05)
    assert f"Holm-adjusted over all {len(summary['paired'])} comparisons" in text
    with (out / "paired.csv").open() as f:
        assert len(list(csv.DictReader(f))) == len(summary["paired"])
    assert "Paired comparisons (Holm-adjusted):" in result.output


def test_cli_no_fuse(lite, tmp_path: Path) -> None:
    _, data, _ = lite
    out = tmp_path / "r"
    args = ["eval", "synth", "--no-fuse", "--ci-resamples", "200", "--out", str(out), "--data-dir", str(data)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "eval.json").read_text())
    assert "fused_rrf" not in summary["models"] and summary["fusion"] is None
    assert {(p["a"], p["b"]) for p in summary["paired"]} == {("narrow", "wide")}
    md = (out / "results.md").read_text()
    assert "--ci-resamples 200 --no-fuse" in md and "| fused_rrf |" not in md and "- narrow vs wide: " in md
