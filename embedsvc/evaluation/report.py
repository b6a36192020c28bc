"""Render an evaluation summary: rich tables for the terminal, JSON/CSV/Markdown files and a PNG plot.

Every file is written from the same summary dict, so the README's table and the terminal agree.
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console, RenderableType
from rich.table import Table
from rich.text import Text

from embedsvc.evaluation.schemas import NO_DIFFERENCE, verdict

log = logging.getLogger(__name__)

SUMMARY_JSON = "eval.json"
METRICS_CSV = "metrics.csv"
PER_CLASS_CSV = "per_class.csv"
PER_QUERY_CSV = "per_query.csv"
PLOT_PNG = "precision_at_k.png"
RESULTS_MD = "results.md"
PAIRED_CSV = "paired.csv"


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def _fmt_ci(value: Any, ci: Any, sep: str = " ") -> str:
    """A metric with its 95% interval, "0.841 [0.754, 0.913]"; the bare value when there is no interval."""
    if value is None or not ci:
        return _fmt(value)
    return f"{_fmt(value)}{sep}[{ci[0]:.3f}, {ci[1]:.3f}]"


def _cell(entry: Mapping[str, Any], key: str, sep: str = " ") -> str:
    return _fmt_ci(entry["metrics"].get(key), (entry.get("metrics_ci") or {}).get(key), sep)


def significance_lines(summary: Mapping[str, Any]) -> list[str]:
    """One line per pair over the headline metrics, grouped by verdict ("A better than B" / no difference).

    The verdicts come from ``paired`` (Holm-adjusted over every comparison of the report, not only these).
    """
    titles = dict(headline_columns(summary))
    by_pair: dict[tuple[str, str], dict[str, list[str]]] = {}
    for p in summary.get("paired") or []:
        if p["metric"] in titles:
            says = p.get("verdict") or verdict(p["a"], p["b"], p["diff"], p["p_holm"])
            by_pair.setdefault((p["a"], p["b"]), {}).setdefault(says, []).append(titles[p["metric"]])
    lines = []
    for (a, b), groups in by_pair.items():
        ordered = sorted(groups.items(), key=lambda g: g[0] == NO_DIFFERENCE)  # wins first, then the rest
        lines.append(f"{a} vs {b}: " + "; ".join(f"{says} on {', '.join(metrics)}" for says, metrics in ordered))
    return lines


def uncertainty_line(summary: Mapping[str, Any]) -> str | None:
    """How the intervals and tests were computed, in one sentence (None for a summary without them)."""
    u = summary.get("uncertainty")
    if not u:
        return None
    q = summary["queries"]["n_evaluated"]
    text = (
        f"Brackets: {u['confidence']:.0%} percentile-bootstrap intervals over the {q} evaluated queries "
        f"({u['resamples']:,} resamples, seed {u['seed']})."
    )
    if u["n_comparisons"]:
        text += (
            f" Paired tests: McNemar's exact test for binary per-query metrics (kNN, P@1, hit@k), a sign-flip "
            f"permutation test ({u['resamples']:,} resamples) for the others; p-values Holm-adjusted over all "
            f"{u['n_comparisons']} comparisons in eval.json; 'better' only where the adjusted p < {u['alpha']}."
        )
    fusion = summary.get("fusion")
    if fusion:
        text += (
            f" {fusion['key']}: reciprocal rank fusion (k = {fusion['k']}) of {', '.join(fusion['of'])}, "
            f"each ranking read to depth {fusion['depth']}."
        )
    return text


def headline_columns(summary: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(metric key, column title) shown in the terminal and Markdown tables, in order."""
    ks = summary["k_list"]
    k10 = min(10, summary["queries"]["n_rows"] - 1)
    cols = [("knn_top1", f"kNN@{summary['knn_k']}"), ("knn_top1_weighted", f"kNN@{summary['knn_k']} (1/d)")]
    cols += [(f"precision@{k}", f"P@{k}") for k in ks]
    cols += [(f"map@{k10}", f"mAP@{k10}")] if f"map@{k10}" in _any_metrics(summary) else []
    cols += [(f"hit@{k}", f"hit@{k}") for k in ks if k in (5, 10)]
    return cols


def _any_metrics(summary: Mapping[str, Any]) -> Mapping[str, Any]:
    models = summary["models"]
    return next(iter(models.values()))["metrics"] if models else {}


def metric_rows(summary: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One flat row per model: identity, every metric, hubness skew and the chance P@1."""
    rows = []
    for key, entry in summary["models"].items():
        model = entry.get("model", {})
        row: dict[str, Any] = {
            "model": key,
            "model_name": model.get("model_name"),
            "weights": model.get("weights"),
            "dim": model.get("dim"),
            "n_rows": model.get("row_count", summary["queries"]["n_rows"]),
        }
        row |= entry["metrics"]
        for metric, ci in (entry.get("metrics_ci") or {}).items():
            row[f"{metric}_ci_low"], row[f"{metric}_ci_high"] = ci if ci else (None, None)
        row[f"hub_skew@{entry['hubness']['k']}"] = entry["hubness"]["skewness"]
        if "chance" in entry:
            row["chance_precision@1"] = entry["chance"]["precision@1"]
            row["chance_knn_top1"] = entry["chance"]["knn_top1"]
        row["fetch_seconds"] = entry.get("fetch_seconds")
        row["search_seconds"] = entry.get("search_seconds")
        rows.append(row)
    return rows


def queries_line(summary: Mapping[str, Any]) -> str:
    q = summary["queries"]
    sampled = f"a seeded sample of {q['n_queries']} (seed {q['seed']})" if q["sample"] else f"all {q['n_queries']}"
    return (
        f"{q['n_rows']} rows, {q['n_labelled']} labelled in {q['n_classes']} classes; queries: {sampled} labelled "
        f"rows; {q['n_evaluated']} evaluated, {q['n_without_relevant']} left out (no other row shares their label)"
    )


def terminal_tables(summary: Mapping[str, Any]) -> list[RenderableType]:
    """The per-model table, the cross-model table and each model's worst classes and confusions."""
    cols = headline_columns(summary)
    models = summary["models"]
    hub_k = next(iter(models.values()))["hubness"]["k"] if models else 10
    weights = "; ".join(f"{k}: {e.get('model', {}).get('weights', '?')}" for k, e in models.items())
    # metrics as rows, models as columns: three models fit an 80-column terminal
    main = Table(
        "metric",
        *models,
        title=f"Leave-one-out retrieval ({summary.get('index', '')})",
    )
    for key, title in cols:
        main.add_row(title, *[_cell(e, key, "\n") for e in models.values()])
    main.add_row(f"hub skew@{hub_k}", *[_fmt(e["hubness"]["skewness"]) for e in models.values()])
    if all("chance" in e for e in models.values()):
        main.add_row("chance P@1 (shuffled)", *[_fmt(e["chance"]["precision@1"]) for e in models.values()])
    tables: list[RenderableType] = [main, Text(queries_line(summary)), Text("weights: " + weights)]
    if summary.get("paired"):  # every comparison's numbers are in eval.json and paired.csv
        tables += [Text("Paired comparisons (Holm-adjusted):", style="bold")]
        tables += [Text(line) for line in significance_lines(summary)]
    if uncertainty_line(summary):
        tables.append(Text(str(uncertainty_line(summary))))
    cross = summary.get("cross_model", {})
    if len(summary["models"]) > 1:
        pairs = Table("model A", "model B", "mean Jaccard@k", title="Neighbour overlap")
        for p in cross["jaccard"]:
            pairs.add_row(p["a"], p["b"], _fmt(p["mean_jaccard"]))
        agree = cross["agreement"]
        rank1 = Table("rank-1 outcome", "queries", title=f"Who is right at rank 1 ({agree['n_queries']} queries)")
        rank1.add_row("all models right", str(agree["all_right"]))
        rank1.add_row("no model right", str(agree["none_right"]))
        for m, count in agree["only_right"].items():
            rank1.add_row(f"only {m} right", str(count))
        tables += [pairs, rank1]
    for key, entry in summary["models"].items():
        class_k = entry["per_class"][0]["k"] if entry["per_class"] else 10
        t = Table(
            "worst class",
            f"P@{class_k}",
            "queries",
            "confusion: query -> top-1",
            "count",
            title=f"{key}: weakest spots",
        )
        confusions = entry["confusions"]
        for i in range(max(min(5, len(entry["worst_classes"])), min(5, len(confusions)))):
            w = entry["worst_classes"][i] if i < len(entry["worst_classes"]) else None
            c = confusions[i] if i < len(confusions) else None
            t.add_row(
                w["label"] if w else "",
                _fmt(w["precision"]) if w else "",
                str(w["n_queries"]) if w else "",
                f"{c['query_label']} -> {c['neighbour_label']}" if c else "",
                str(c["count"]) if c else "",
            )
        tables.append(t)
    return tables


def print_summary(summary: Mapping[str, Any], console: Console | None = None) -> None:
    console = console or Console()
    for table in terminal_tables(summary):
        console.print(table)


def markdown_table(summary: Mapping[str, Any], command: str | None = None) -> str:
    """The per-model table as GitHub Markdown, plus the cross-model lines, stamped with its command."""
    cols = headline_columns(summary)
    head = ["model", *[c[1] for c in cols], "hub skew", "chance P@1", "weights"]
    lines = []
    if command:
        lines.append(f"<!-- produced by `{command}`; do not edit by hand -->")
    lines += ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["---:"] * (len(head) - 2) + ["---"]) + "|"]
    for key, entry in summary["models"].items():
        cells = [key, *[_cell(entry, c[0]) for c in cols], _fmt(entry["hubness"]["skewness"])]
        cells += [_fmt(entry.get("chance", {}).get("precision@1")), str(entry.get("model", {}).get("weights", ""))]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", queries_line(summary) + "."]
    if summary.get("paired"):
        lines += ["", *[f"- {line}" for line in significance_lines(summary)]]
    if uncertainty_line(summary):
        lines += ["", str(uncertainty_line(summary))]
    cross = summary.get("cross_model", {})
    if len(summary["models"]) > 1:
        lines.append("")
        for p in cross["jaccard"]:
            lines.append(f"- mean Jaccard@{p['k']} of neighbour sets, {p['a']} vs {p['b']}: {_fmt(p['mean_jaccard'])}")
        a = cross["agreement"]
        only = ", ".join(f"only {m}: {c}" for m, c in a["only_right"].items())
        lines.append(
            f"- rank 1 over {a['n_queries']} queries: all right {a['all_right']}, none right {a['none_right']}, {only}"
        )
    return "\n".join(lines) + "\n"


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    fields: list[str] = []
    for row in rows:
        fields += [k for k in row if k not in fields]
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


def plot_precision(summary: Mapping[str, Any], path: Path) -> None:
    """precision@k per model (and the shuffled-label chance level) against k."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ks = summary["k_list"]
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    try:
        for key, entry in summary["models"].items():
            ys = [entry["metrics"].get(f"precision@{k}") for k in ks]
            label = key + (" (untrained)" if entry.get("model", {}).get("trained") is False else "")
            line = ax.plot(ks, [np.nan if y is None else y for y in ys], marker="o", label=label)[0]
            if "chance" in entry:
                chance = [entry["chance"].get(f"precision@{k}") for k in ks]
                ax.plot(ks, [np.nan if y is None else y for y in chance], ls="--", color=line.get_color(), alpha=0.4)
        ax.set_xscale("log")
        ax.set_xticks(ks, [str(k) for k in ks])
        ax.set_ylim(0, 1)
        ax.set_xlabel("k (neighbours)")
        ax.set_ylabel("precision@k")
        ax.set_title(f"Leave-one-out precision@k, {summary.get('index', '')} (dashed: shuffled labels)", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(path)
    finally:
        plt.close(fig)


def write_report(
    summary: Mapping[str, Any],
    per_query: Mapping[str, np.ndarray],
    out_dir: Path,
    *,
    command: str | None = None,
) -> dict[str, Path]:
    """Write every output file into ``out_dir``; returns {kind: path}."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "json": out_dir / SUMMARY_JSON,
        "metrics_csv": out_dir / METRICS_CSV,
        "per_class_csv": out_dir / PER_CLASS_CSV,
        "per_query_csv": out_dir / PER_QUERY_CSV,
        "plot": out_dir / PLOT_PNG,
        "markdown": out_dir / RESULTS_MD,
        "paired_csv": out_dir / PAIRED_CSV,
    }
    paths["json"].write_text(json.dumps(summary, indent=2) + "\n")
    _write_csv(paths["metrics_csv"], metric_rows(summary))
    per_class = [{"model": key} | row for key, entry in summary["models"].items() for row in entry["per_class"]]
    _write_csv(paths["per_class_csv"], per_class)
    paired = [
        {k: v for k, v in p.items() if k != "ci"} | {"ci_low": p["ci"][0], "ci_high": p["ci"][1]}
        for p in summary.get("paired") or []
    ]
    _write_csv(paths["paired_csv"], paired)
    columns = list(per_query)
    n = len(per_query[columns[0]]) if columns else 0
    with paths["per_query_csv"].open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        for i in range(n):
            writer.writerow([_csv_value(per_query[c][i]) for c in columns])
    plot_precision(summary, paths["plot"])
    paths["markdown"].write_text(markdown_table(summary, command))
    log.info("evaluation report written to %s", out_dir)
    return paths


def _csv_value(value: Any) -> Any:
    if isinstance(value, np.bool_ | bool):
        return int(value)
    if isinstance(value, np.floating):
        return "" if np.isnan(value) else round(float(value), 6)
    return value.item() if isinstance(value, np.generic) else value


DOC_START = "<!-- embedsvc-eval:start -->"
DOC_END = "<!-- embedsvc-eval:end -->"


def update_doc(path: Path, markdown: str) -> None:
    """Replace the block between ``DOC_START`` and ``DOC_END`` in ``path`` with ``markdown``.

    Why: the README's results table must be what the command produced, never retyped by hand.
    """
    text = path.read_text()
    start, end = text.find(DOC_START), text.find(DOC_END)
    if start < 0 or end < start:
        raise ValueError(f"{path} has no {DOC_START} ... {DOC_END} block to replace")
    path.write_text(text[: start + len(DOC_START)] + "\n" + markdown + text[end:])
    log.info("updated the results block in %s", path)
