"""Write the summary rows as CSV and render them as a markdown report.

The CSV files keep the raw values (accuracies as fractions, empty cells for missing values); the markdown
shows accuracies as percentages (``mean ± std``), deltas in percentage points and marks negative transfer
with ``▼``.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .aggregate import ACCURACY_METRICS, PRIMARY_ACCURACY, Collection, method_label

NEGATIVE_MARK = "▼"

SUMMARY_COLUMNS = (
    "dataset", "model", "method", "variant", "n", "seeds",
    *(f"{m}_{s}" for m in ACCURACY_METRICS for s in ("mean", "std", "ci95", "wilson_low", "wilson_high")),
    "n_eval", "trainable_params", "total_params", "train_time_s_mean", "train_tokens_per_s_mean",
    "step_time_s_mean", "mfu_mean", "train_padding_fraction_mean", "peak_memory_mb_max", "eval_time_s_mean",
    "delta_zeroshot", "delta_fewshot", "negative_transfer",
)  # fmt: skip

OOD_COLUMNS = (
    "dataset", "eval_set", "model", "method", "variant", "n", "seeds",
    *(f"{m}_{s}" for m in ACCURACY_METRICS for s in ("mean", "std", "ci95", "wilson_low", "wilson_high")),
    "n_eval", "delta_zeroshot", "negative_transfer",
)  # fmt: skip

EMPTY = "–"


# ---------------------------------------------------------------- CSV


def _csv_value(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):
        return " ".join(str(v) for v in value)
    return str(value)


def write_csv(rows: Sequence[dict[str, Any]], columns: Sequence[str], path: str | os.PathLike) -> Path:
    path = Path(path)
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        for row in rows:
            writer.writerow([_csv_value(row.get(c)) for c in columns])
    return path


# ---------------------------------------------------------------- number formats


def percent(mean: float | None, std: float | None = None) -> str:
    if mean is None:
        return EMPTY
    if std is None:
        return f"{100 * mean:.1f}"
    return f"{100 * mean:.1f} ± {100 * std:.1f}"


def interval(low: float | None, high: float | None) -> str:
    return EMPTY if low is None or high is None else f"[{100 * low:.1f}, {100 * high:.1f}]"


def half_width(ci95: float | None) -> str:
    return EMPTY if ci95 is None else f"±{100 * ci95:.1f}"


def points(delta: float | None) -> str:
    return EMPTY if delta is None else f"{100 * delta:+.1f}"


def params(count: int | None) -> str:
    if count is None:
        return EMPTY
    for scale, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(count) >= scale:
            return f"{count / scale:.4g}{suffix}"
    return str(count)


def duration(seconds: float | None) -> str:
    if seconds is None:
        return EMPTY
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def rate(per_second: float | None) -> str:
    return EMPTY if per_second is None else f"{per_second:,.0f}"


def megabytes(mb: float | None) -> str:
    if mb is None:
        return EMPTY
    return f"{mb / 1024:.1f} GiB" if mb >= 1024 else f"{mb:.0f} MiB"


# ---------------------------------------------------------------- markdown


def _table(header: Sequence[str], body: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cells) + " |" for cells in body]
    return lines


MAX_LISTED = 20


def _listed(items: Sequence[str]) -> list[str]:
    lines = [f"- {item}" for item in items[:MAX_LISTED]]
    if len(items) > MAX_LISTED:
        lines.append(f"- … and {len(items) - MAX_LISTED} more")
    return lines


def _sources(collection: Collection) -> list[str]:
    dirs = ", ".join(f"`{d}`" for d in collection.dirs)
    skipped = ", ".join(f"{count} {status}" for status, count in collection.skipped_counts.items())
    lines = [
        f"Aggregated from {len(collection.files)} result files under {dirs}: "
        f"{len(collection.completed)} completed cells used.",
        "",
        f"Skipped cells: {skipped}.",
        "",
    ]
    if collection.malformed:
        lines += [f"Unreadable or malformed files skipped: {len(collection.malformed)}", ""]
        lines += _listed([f"`{path}`: {reason}" for path, reason in collection.malformed])
        lines.append("")
    if collection.duplicates:
        lines += [
            f"Duplicate cells resolved (completed first, then most recent `finished_at`): "
            f"{len(collection.duplicates)}",
            "",
        ]
        lines += _listed([f"kept `{kept}`, dropped `{dropped}`" for kept, dropped in collection.duplicates])
        lines.append("")
    return lines


def _metric_name(metric: str) -> str:
    return metric.removeprefix("accuracy_")


def _accuracy_cells(row: dict[str, Any]) -> list[str]:
    """Mean ± std and CI half-width of every accuracy metric, the primary one marked for negative transfer."""
    cells = []
    for metric in ACCURACY_METRICS:
        text = percent(row[f"{metric}_mean"], row[f"{metric}_std"])
        if metric == PRIMARY_ACCURACY and row["negative_transfer"]:
            text += f" {NEGATIVE_MARK}"
        cells += [text, half_width(row[f"{metric}_ci95"])]
        if metric == PRIMARY_ACCURACY:
            cells.append(interval(row[f"{metric}_wilson_low"], row[f"{metric}_wilson_high"]))
    return cells


def _in_domain_section(dataset: str, rows: Sequence[dict[str, Any]]) -> list[str]:
    header = (
        "model", "method", "n",
        *(h for m in ACCURACY_METRICS
          for h in (f"{_metric_name(m)} (%)", "95% CI", *(("questions 95% CI",) if m == PRIMARY_ACCURACY else ()))),
        "Δ zero-shot (pp)", "Δ few-shot (pp)", "trainable", "total", "train time", "train tok/s", "MFU",
        "peak memory",
    )  # fmt: skip
    body = []
    for row in rows:
        body.append(
            (
                row["model"],
                method_label(row),
                str(row["n"]),
                *_accuracy_cells(row),
                points(row["delta_zeroshot"]),
                points(row["delta_fewshot"]),
                params(row["trainable_params"]),
                params(row["total_params"]),
                duration(row["train_time_s_mean"]),
                rate(row["train_tokens_per_s_mean"]),
                f"{percent(row['mfu_mean'])} %" if row["mfu_mean"] is not None else EMPTY,
                megabytes(row["peak_memory_mb_max"]),
            )
        )
    return [f"## {dataset}", "", *_table(header, body), ""]


def _ood_section(
    dataset: str, in_domain: Sequence[dict[str, Any]], ood: Sequence[dict[str, Any]]
) -> list[str]:
    eval_sets = sorted({row["eval_set"] for row in ood})
    cells: dict[tuple[str, str], dict[str, str]] = {}

    def put(row: dict[str, Any], column: str) -> None:
        text = percent(row[f"{PRIMARY_ACCURACY}_mean"], row[f"{PRIMARY_ACCURACY}_std"])
        if row["negative_transfer"]:
            text += f" {NEGATIVE_MARK}"
        cells.setdefault((row["model"], method_label(row)), {})[column] = text

    for row in in_domain:
        put(row, dataset)
    for row in ood:
        put(row, row["eval_set"])
    # in-domain rows are already in report order; models seen only out-of-domain follow in theirs
    order = list(dict.fromkeys((r["model"], method_label(r)) for r in (*in_domain, *ood)))
    columns = [dataset, *(s for s in eval_sets if s != dataset)]
    header = ("model", "method", f"{dataset} (in-domain)", *columns[1:])
    body = [
        (model, method, *(cells[model, method].get(c, EMPTY) for c in columns)) for model, method in order
    ]
    return [f"### trained on {dataset}", "", *_table(header, body), ""]


def render_markdown(
    collection: Collection, rows: Sequence[dict[str, Any]], ood_rows: Sequence[dict[str, Any]]
) -> str:
    lines = ["# Sweep summary", "", *_sources(collection)]
    datasets = list(dict.fromkeys(row["dataset"] for row in rows))
    if not datasets:
        lines += ["No completed cells.", ""]
    for dataset in datasets:
        lines += _in_domain_section(dataset, [r for r in rows if r["dataset"] == dataset])
    lines += [
        f"Accuracy ({', '.join(_metric_name(m) for m in ACCURACY_METRICS)}; docs/results.md): mean ± sample std "
        f"over seeds, 95% CI half-width from Student's t over seeds; questions 95% CI: Wilson interval of the "
        f"{_metric_name(PRIMARY_ACCURACY)} mean over the n_eval test questions (the test set's sampling noise). "
        f"{NEGATIVE_MARK} = negative transfer (fine-tuned "
        f"{_metric_name(PRIMARY_ACCURACY)} mean below the model's zero-shot mean).",
        "",
        "## Out-of-domain evaluation",
        "",
    ]
    ood_datasets = sorted({row["dataset"] for row in ood_rows})
    if not ood_datasets:
        lines += ["No out-of-domain evaluations in these results.", ""]
    else:
        lines += [
            f"Mean ± std {_metric_name(PRIMARY_ACCURACY)} accuracy (%) on each evaluation set of the models trained on one dataset; "
            f"{NEGATIVE_MARK} = below the zero-shot mean on that set.",
            "",
        ]
    for dataset in ood_datasets:
        lines += _ood_section(
            dataset,
            [r for r in rows if r["dataset"] == dataset],
            [r for r in ood_rows if r["dataset"] == dataset],
        )
    return "\n".join(lines)
