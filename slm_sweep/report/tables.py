"""Write the summary rows as CSV and render them as a markdown report.

The CSV files keep the raw values (accuracies as fractions, empty cells for missing values); the markdown
shows accuracies as percentages (``mean ± std``, the mean alone for a single seed), deltas in percentage points
with ``*`` where their paired test is significant, and marks negative transfer (significant) with ``▼``; an
out-of-domain cell carries its zero-shot delta's mark. Deltas, tests and marks are on each row's ``delta_metric``
(its set's ``claims_metric``, which the claims read too), whose accuracy columns come first in a dataset's table
with the interval over questions, and both files say which.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from slm_sweep.scoring import PRIMARY_METRIC, accuracy_key

from .aggregate import ACCURACY_METRICS, DELTA_BASELINES, SEVERAL_BASELINES, row_metrics
from .collect import PRIMARY_ACCURACY, Collection
from .comparisons import NO_DATA
from .ordering import is_fine_tuned, method_label
from .stats import ALPHA, DIFFERENT_QUESTIONS, DIFFERENT_SCORING, HOLM, MCNEMAR, SEEDS_AND_QUESTIONS
from .variants import not_completed

NEGATIVE_MARK = "▼"
SIGNIFICANT_MARK = "*"
UNTESTED_MARK = "†"
_STATISTICS = ("mean", "std", "ci95", "wilson_low", "wilson_high")


# above this share of a row's answers cut off at eval.max_new_tokens, summary.md and the claims say so
TRUNCATION_WARNING = 0.05


def short_commit(commit: str) -> str:
    """A commit as the report prints it: its first 12 characters, marked dirty where the tree was."""
    return f"`{commit[:12]}{'-dirty' if commit.endswith('-dirty') else ''}`"


def summary_columns(metrics: Sequence[str] = ACCURACY_METRICS) -> tuple[str, ...]:
    """The columns of summary.csv for these accuracy metrics (``accuracy_<name>``)."""
    return (
        "dataset", "model", "method", "variant", "trained", "n", "seeds",
        *(f"{m}_{s}" for m in metrics for s in _STATISTICS),
        "n_eval", "trainable_params", "total_params", "train_time_s_mean", "train_time_resumed_seeds",
        "train_time_older_seeds", "train_tokens_per_s_mean",
        "step_time_s_mean", "mfu_mean", "train_padding_fraction_mean", "train_clipped_fraction_mean",
        "peak_memory_mb_max", "peak_memory_unknown_seeds", "eval_time_s_mean", "truncated_fraction_mean", "delta_metric",
        "delta_zeroshot", "delta_zeroshot_p", "delta_zeroshot_p_adjusted", "delta_zeroshot_significant",
        "delta_zeroshot_test", "delta_fewshot", "delta_fewshot_p", "delta_fewshot_p_adjusted",
        "delta_fewshot_significant", "delta_fewshot_test", "below_zeroshot", "negative_transfer", "not_completed",
        "retried", "model_source", "lr", "lr_source", "lr_at_edge", "lr_within_noise", "lr_tied",
        "scored_with",
    )  # fmt: skip


def ood_columns(metrics: Sequence[str] = ACCURACY_METRICS) -> tuple[str, ...]:
    """The columns of summary_ood.csv for these accuracy metrics."""
    return (
        "dataset", "eval_set", "model", "method", "variant", "trained", "n", "seeds",
        *(f"{m}_{s}" for m in metrics for s in _STATISTICS),
        "n_eval", "truncated_fraction_mean", "delta_metric", "delta_zeroshot", "delta_zeroshot_p",
        "delta_zeroshot_p_adjusted",
        "delta_zeroshot_significant", "delta_zeroshot_test", "below_zeroshot", "negative_transfer",
    )  # fmt: skip


SUMMARY_COLUMNS = summary_columns()
OOD_COLUMNS = ood_columns()

EMPTY = "–"


# ---------------------------------------------------------------- CSV


def _csv_value(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):
        return " ".join(str(v) for v in value)
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True)
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


def points(delta: float | None, significant: bool | None = None) -> str:
    """A delta in percentage points, marked ``*`` when its paired test is ``significant`` and ``†`` when it was not
    tested (``significant`` None: no per-question data, or rows scored on other questions or otherwise)."""
    if delta is None:
        return EMPTY
    return f"{100 * delta:+.1f}{delta_mark(significant)}"


def delta_mark(significant: bool | None) -> str:
    """``*`` for a significant paired test, ``†`` for none (``significant`` None), nothing for one that is not."""
    return SIGNIFICANT_MARK if significant else UNTESTED_MARK if significant is None else ""


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


LINE_BREAK = " ⏎ "


def table_cell(text: Any) -> str:
    """``text`` as one markdown table cell: a "|" escaped, and line breaks (a multi-line ``prompt.system`` in a
    variant label) shown as ``LINE_BREAK``, since a row must stay on one line."""
    return LINE_BREAK.join(str(text).replace("|", "\\|").splitlines())


def markdown_table(header: Sequence[str], body: Sequence[Sequence[str]]) -> list[str]:
    """A markdown table's lines, each cell on one line (``table_cell``)."""
    lines = ["| " + " | ".join(map(table_cell, header)) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return lines + ["| " + " | ".join(map(table_cell, cells)) + " |" for cells in body]


MAX_LISTED = 20


def _listed(items: Sequence[str]) -> list[str]:
    lines = [f"- {item}" for item in items[:MAX_LISTED]]
    if len(items) > MAX_LISTED:
        lines.append(f"- … and {len(items) - MAX_LISTED} more")
    return lines


def cells_used(collection: Collection) -> str:
    """``6 completed cells used (2 of them from results a rerun set aside)``: those in superseded/ are read besides
    the result files counted, so the cells can outnumber the files."""
    aside = collection.completed_set_aside
    return (f"{len(collection.completed)} completed cells used"
            + (f" ({aside} of them from results a rerun set aside)" if aside else ""))


def _sources(collection: Collection) -> list[str]:
    dirs = ", ".join(f"`{d}`" for d in collection.dirs)
    skipped = ", ".join(f"{count} {status}" for status, count in collection.skipped_counts.items())
    lines = [
        f"Aggregated from {len(collection.files)} result files under {dirs}: {cells_used(collection)}. "
        f"`report.json` beside this file names each of them, the code and library versions and the settings this "
        f"report was made with.",
        "",
        f"Skipped cells: {skipped}.",
        "",
    ]
    for stage, verb in (("train", "Trained"), ("eval", "Generated")):
        hardware = collection.cell_hardware(stage)
        if hardware:
            listed = "; ".join(f"{label} ({count} cell{'' if count == 1 else 's'})"
                               for label, count in hardware.most_common())
            lines += [f"{verb} on: {listed}.", ""]
    commits = collection.cell_commits
    if len(commits) > 1:
        listed = ", ".join(f"{short_commit(commit)} {count}" for commit, count in commits.most_common())
        lines += [f"The cells were computed at {len(commits)} git commits ({listed} cells); rows pool seeds by the "
                  f"code versions in their identity, not by commit.", ""]
    elsewhere = collection.trained_elsewhere
    if elsewhere:
        listed = ", ".join(f"{short_commit(commit)} {count}" for commit, count in elsewhere.most_common())
        total = sum(elsewhere.values())
        lines += [f"{total} cell{'' if total == 1 else 's'} re-scored weights trained at another commit than "
                  f"{'its' if total == 1 else 'their'} own (by the training commit, `unknown` where not recorded: "
                  f"{listed} cell{'' if total == 1 else 's'}): the training figures and weights are that code's "
                  "(`training_provenance` in result.json; `trained_in` names the training run's folder).", ""]
    without, who = collection.rows_without_reference, collection.rows_asking_who
    if without:
        listed = "; ".join(f"{dataset} {split}: {count}" + (f" ({who[dataset][split]} asking who)"
                                                             if who.get(dataset, {}).get(split) else "")
                           for dataset, splits in sorted(without.items()) for split, count in sorted(splits.items()))
        lines += [f"Rows of the data left out for want of a numeric reference (answers no single number could be "
                  f"read from, questions asking who; result.json `skipped_rows`), neither trained on nor scored: "
                  f"{listed}.", ""]
    if collection.validation:
        lines += [f"Cells scored on the validation split (a learning-rate search, which `python -m slm_sweep.tune` "
                  f"reads) left out: {len(collection.validation)} (listed in `report.json`).", ""]
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
    if collection.set_aside:
        lines += [f"Results that a rerun into the same folder set aside (`superseded/`, or left as `result.json` "
                  f"beside the rerun's failure of other settings, `result.failed.json`) and whose settings no other "
                  f"cell has, read as cells of their own (another point of the grid): {len(collection.set_aside)} "
                  f"(listed in `report.json`).", ""]
    if collection.replaced:
        lines += [f"Set-aside results that a rerun replaced (recomputed them, or tried to and did not complete: the "
                  f"cell is that attempt; copied them back: the copy is read; or changed a setting the sweep does "
                  f"not vary), left out: {len(collection.replaced)} (listed in `report.json`).", ""]
    if collection.copies:
        lines += [f"Copies of a computed cell (a baseline reused for another seed, a divergence), counted once: "
                  f"{len(collection.copies)} (listed in `report.json`).", ""]
    return lines


def _metric_name(metric: str) -> str:
    return metric.removeprefix("accuracy_")


def _spread(row: dict[str, Any], metric: str) -> str:
    """Mean ± std over seeds; the mean alone for one seed, which has no spread to show."""
    return percent(row[f"{metric}_mean"], row[f"{metric}_std"] if row["n"] > 1 else None)


def delta_metric_of(row: dict[str, Any]) -> str:
    """The metric a row's deltas, tests and marks are on (``aggregate``: its set's claims metric); the primary one
    for a row without it."""
    return row.get("delta_metric") or PRIMARY_METRIC


def delta_metrics_text(rows: Sequence[dict[str, Any]], key: str = "dataset") -> str:
    """What the rows' deltas are on, per dataset (or ``key``): ``flexible (gsm8k), lenient (orcamath)``."""
    pairs = dict.fromkeys((delta_metric_of(r), r[key]) for r in rows)
    return ", ".join(f"{metric} ({name})" for metric, name in pairs)


def _accuracy_cells(row: dict[str, Any], metrics: Sequence[str], with_questions: str = PRIMARY_ACCURACY) -> list[str]:
    """Mean ± std and CI half-width of every accuracy metric, the one the row's deltas are on marked for negative
    transfer; ``with_questions`` (a table's leading metric) also gets the Wilson interval over the questions."""
    cells = []
    for metric in metrics:
        text = _spread(row, metric)
        if metric == accuracy_key(delta_metric_of(row)) and row["negative_transfer"]:
            text += f" {NEGATIVE_MARK}"
        cells += [text, half_width(row[f"{metric}_ci95"])]
        if metric == with_questions:
            cells.append(interval(row[f"{metric}_wilson_low"], row[f"{metric}_wilson_high"]))
    return cells


def leading_metric(rows: Sequence[dict[str, Any]], metrics: Sequence[str]) -> str:
    """The accuracy column a dataset's table starts with and gives the questions' interval for: the metric its
    deltas are on where its rows agree on one (lenient on OrcaMath), else the primary one."""
    on = {accuracy_key(delta_metric_of(r)) for r in rows}
    lead = next(iter(on)) if len(on) == 1 else PRIMARY_ACCURACY
    return lead if lead in metrics else PRIMARY_ACCURACY


def _trained(row: dict[str, Any]) -> bool:
    return bool(row.get("trained", is_fine_tuned(row["method"])))


def _level_text(alpha: float, correction: str) -> str:
    return f"p<{alpha:g}" + (", Holm" if correction == HOLM else "")


# the seeds a row's mean training time or its peak memory leaves out, per column that counts them, and why
_SEEDS_LEFT_OUT = (
    ("train_time_resumed_seeds", "Train time is the mean over seeds that trained from the first step: seeds resumed "
                                 "from a checkpoint timed only the steps after it and are left out of it"),
    ("train_time_older_seeds", "Train time leaves out seeds whose result files counted the validation pass on the "
                               "final weights in it, written before that pass was timed apart"),
    ("peak_memory_unknown_seeds", "Peak memory is the largest of the seeds' peaks, training included: seeds that "
                                  "re-scored kept weights from a result file that records no training peak "
                                  "(`train_peak_memory_mb`, written before it was recorded) peaked in evaluation "
                                  "alone and are left out of it"),
)


def _in_domain_section(dataset: str, rows: Sequence[dict[str, Any]], metrics: Sequence[str],
                       alpha: float, correction: str) -> list[str]:
    # what the deltas are on: one metric in the headers, or (rows run with other claims metrics) a column of its own
    on = list(dict.fromkeys(delta_metric_of(r) for r in rows))
    unit = f"pp on {on[0]}" if len(on) == 1 else "pp on the row's Δ on"
    # the metric the deltas are on leads, with the questions' interval, so that a row's Δ reads against its neighbour
    lead = leading_metric(rows, metrics)
    metrics = [lead, *(m for m in metrics if m != lead)]
    header = (
        "model", "method", "seeds (n)", "questions (n_eval)",
        *(h for m in metrics
          for h in (f"{_metric_name(m)} (%)", "seeds 95% CI", *(("questions 95% CI",) if m == lead else ()))),
        *(("Δ on",) if len(on) > 1 else ()),
        f"Δ zero-shot ({unit}, {SIGNIFICANT_MARK} {_level_text(alpha, correction)})",
        f"Δ few-shot ({unit}, {SIGNIFICANT_MARK} {_level_text(alpha, correction)})",
        "trainable", "total", "train time", "train tok/s", "MFU", "peak memory",
    )  # fmt: skip
    body = []
    for row in rows:
        body.append(
            (
                row["model"],
                method_label(row),
                str(row["n"]),
                EMPTY if row.get("n_eval") is None else str(row["n_eval"]),
                *_accuracy_cells(row, metrics, lead),
                *((delta_metric_of(row),) if len(on) > 1 else ()),
                points(row["delta_zeroshot"], row["delta_zeroshot_significant"]),
                points(row["delta_fewshot"], row["delta_fewshot_significant"]),
                params(row["trainable_params"]),
                params(row["total_params"]),
                duration(row["train_time_s_mean"]) if _trained(row) else EMPTY,  # a baseline trained for no time
                rate(row["train_tokens_per_s_mean"]),
                f"{percent(row['mfu_mean'])} %" if row["mfu_mean"] is not None else EMPTY,
                megabytes(row["peak_memory_mb_max"]),
            )
        )
    lines = [f"## {dataset}", "", *markdown_table(header, body), ""]
    if len(on) > 1:
        lines += [f"Rows of {dataset} were run with different claims metrics ({', '.join(on)}): each row's deltas and "
                  f"marks are on its own (Δ on), and its claims read side A's.", ""]
    for column, why in _SEEDS_LEFT_OUT:
        counted = [(r["model"], method_label(r), r[column], r["n"]) for r in rows if r.get(column)]
        if counted:
            listed = "; ".join(f"{model} × {method}: {k} of {n}" for model, method, k, n in counted)
            lines += [f"{why} ({listed}; none left: empty).", ""]
    lost = [(r["model"], method_label(r), r["not_completed"]) for r in rows if r.get("not_completed")]
    if lost:
        listed = "; ".join(f"{model} × {method}: {cells}" for model, method, cells in lost)
        lines += [f"Not completed, so left out of the rows above (a row's mean and n are over its completed seeds): "
                  f"{listed}.", ""]
    retried = [(r["model"], method_label(r), r["retried"]) for r in rows if r.get("retried")]
    if retried:
        listed = "; ".join(f"{model} × {method}: {seeds}" for model, method, seeds in retried)
        lines += [f"Completed only when trained again after diverging (each divergence named under retried_divergence "
                  f"in its result.json), so counted in the rows above and read by the claims as lost: {listed}.", ""]
    return lines


def _ood_section(
    dataset: str, in_domain: Sequence[dict[str, Any]], ood: Sequence[dict[str, Any]]
) -> list[str]:
    eval_sets = sorted({row["eval_set"] for row in ood})
    cells: dict[tuple[str, str], dict[str, str]] = {}

    seeds = {(row["model"], method_label(row)): row["n"] for row in in_domain}

    def put(row: dict[str, Any], column: str) -> None:
        text = _spread(row, accuracy_key(delta_metric_of(row)))  # the metric its marks are on
        if row.get("delta_zeroshot") is not None:  # the mark of its Δ vs the zero-shot row on that set
            text += delta_mark(row.get("delta_zeroshot_significant"))
        elif row["method"] != "zeroshot" and text != EMPTY:  # no zero-shot row to compare with: not tested either
            text += UNTESTED_MARK
        if row["negative_transfer"]:
            text += f" {NEGATIVE_MARK}"
        expected = seeds.get((row["model"], method_label(row)))
        if expected is not None and row["n"] < expected:  # seeds that scored the test split but not this set
            text += f" ({row['n']} of {expected} seeds)"
        cells.setdefault((row["model"], method_label(row)), {})[column] = text

    for row in in_domain:
        put(row, dataset)
    for row in ood:
        put(row, row["eval_set"])
    # in-domain rows are already in report order; models seen only out-of-domain follow in theirs
    order = list(dict.fromkeys((r["model"], method_label(r)) for r in (*in_domain, *ood)))
    columns = [dataset, *(s for s in eval_sets if s != dataset)]
    counts: dict[str, set] = {}
    on: dict[str, dict[str, None]] = {}
    for row in (*in_domain, *ood):
        counts.setdefault(row.get("eval_set", dataset), set()).add(row.get("n_eval"))
        on.setdefault(row.get("eval_set", dataset), {})[delta_metric_of(row)] = None
    # a set's number of questions, where its rows agree on it, and the metric its cells and marks are on
    def name(column: str) -> str:
        known = counts.get(column, set())
        size = [f"n={next(iter(known))}"] if len(known) == 1 and None not in known else []
        return f"{column} ({', '.join([*size, *on.get(column, {})])})"

    named = [name(c) for c in columns]
    header = ("model", "method", f"{named[0]}, in-domain", *named[1:])
    body = [
        (model, method, *(cells[model, method].get(c, EMPTY) for c in columns)) for model, method in order
    ]
    return [f"### trained on {dataset}", "", *markdown_table(header, body), ""]


def truncation_note(rows: Sequence[dict[str, Any]]) -> list[str]:
    """A warning naming the rows whose answers were cut off at eval.max_new_tokens more often than
    TRUNCATION_WARNING: an answer cut off may lack its final number, so the row's accuracy measures the token limit
    as much as the method."""
    cut = [r for r in rows if (r.get("truncated_fraction_mean") or 0) > TRUNCATION_WARNING]
    if not cut:
        return []
    listed = "; ".join(f"{r['model']} × {method_label(r)} on {r['dataset']}"
                       f"{' → ' + r['eval_set'] if r.get('eval_set') else ''}: "
                       f"{percent(r['truncated_fraction_mean'])} %" for r in cut)
    return [f"**Answers cut off at the token limit** (over {percent(TRUNCATION_WARNING)} % of a row's answers ended by "
            f"neither an end-of-sequence token nor a stop string; their final number may be missing, so these "
            f"accuracies measure `eval.max_new_tokens` as much as the method): {listed}.", ""]


def _tests_note(rows: Sequence[dict[str, Any]], alpha: float, correction: str) -> str:
    """How the deltas were tested, and how many comparisons had no per-question data."""
    keys = [k for k in ("delta_zeroshot_test", "delta_fewshot_test") if any(k in row for row in rows)]
    tests = [row[k] for row in rows for k in keys if row.get(k)]
    missing = sum(t == NO_DATA for t in tests)
    unpaired = sum(t == DIFFERENT_QUESTIONS for t in tests)
    unscored = sum(t == DIFFERENT_SCORING for t in tests)
    note = (f"{SIGNIFICANT_MARK}: the paired test of that delta on the questions both rows scored is significant "
            f"at alpha={alpha:g} (two-sided; {MCNEMAR} when both rows are one seed, otherwise a {SEEDS_AND_QUESTIONS}, "
            f"which counts the spread over seeds apart from the questions' noise); {UNTESTED_MARK}: not tested (why: below); "
            f"deltas with neither mark were tested and are not significant.")
    if correction == HOLM:
        note += (" The p-values of one column of one table (every model and method of a dataset, or of a dataset "
                 "and an out-of-domain set) are Holm-adjusted as one family, so the marks of a column hold "
                 "jointly at that alpha (summary.csv keeps the raw p and the adjusted one).")
    else:
        note += " No correction for the number of comparisons (--correction none)."
    if missing:
        note += (f" {missing} of {len(tests)} comparisons had {NO_DATA} (no usable predictions.jsonl beside a "
                 f"result.json), so no ordering among them can be called significant.")
    if unpaired:
        note += (f" {unpaired} of {len(tests)} comparisons are of rows that {DIFFERENT_QUESTIONS} (other test "
                 f"limits): their delta compares means over different questions and is not tested.")
    if unscored:
        note += (f" {unscored} of {len(tests)} comparisons are of rows that {DIFFERENT_SCORING} (another scoring "
                 "version, max_new_tokens, stop, generation config or dtype; result.json's identity.scored_with): their "
                 "delta is not tested.")
    one_run = sum(row.get(k) == MCNEMAR for row in rows if row.get("trained") and row.get("n") == 1 for k in keys)
    if one_run:
        note += (f" {one_run} of {len(tests)} comparisons are of a trained method with one seed: {MCNEMAR} counts "
                 "the questions' noise only, not how far another training run could land, so a mark there says "
                 "that run differs from the baseline, not that the method does; run three seeds or more for that.")
    return note


def render_markdown(
    collection: Collection, rows: Sequence[dict[str, Any]], ood_rows: Sequence[dict[str, Any]],
    alpha: float = ALPHA, correction: str = HOLM, claims_metric_notes: Sequence[str] = (),
) -> str:
    """summary.md. ``claims_metric_notes``: the lines saying which sets are read on another claims metric than
    their results recorded (claims_metric.claims_metric_notes), below the "Δ on" line."""
    lines = ["# Sweep summary", "", *_sources(collection)]
    metrics = row_metrics(rows)
    datasets = list(dict.fromkeys(row["dataset"] for row in rows))
    if not datasets:
        lines += ["No completed cells.", ""]
    else:
        lines += [f"Δ on: {delta_metrics_text(rows)}. Each dataset's deltas, their tests, "
                  f"{SIGNIFICANT_MARK} and {NEGATIVE_MARK} are on its `claims_metric`, the metric its claims read "
                  f"(docs/results.md); its accuracy columns show every metric, that one first.", ""]
    for note in claims_metric_notes:
        lines += [note, ""]
    for dataset in datasets:
        lines += _in_domain_section(dataset, [r for r in rows if r["dataset"] == dataset], metrics, alpha,
                                    correction)
    with_rows = {(r["dataset"], r["model"], r["method"], r["variant"]) for r in rows}
    rowless = {key: cells for key, cells in not_completed(collection.cells).items() if key not in with_rows}
    if rowless:
        listed = "; ".join(f"{model} × {method}{f' ({variant})' if variant else ''} on {dataset}: {cells}"
                           for (dataset, model, method, variant), cells in sorted(rowless.items(), key=str))
        lines += [f"No completed seed, so no row in the tables above: {listed}.", ""]
    lines += truncation_note([*rows, *ood_rows])
    several = sorted({(r["dataset"], r["model"], b) for r in rows for b in DELTA_BASELINES
                      if r.get(f"delta_{b}_test") == SEVERAL_BASELINES})
    if several:
        listed = "; ".join(f"{model} on {dataset} ({baseline})" for dataset, model, baseline in several)
        lines += [f"No delta against a baseline with several configuration variants (which one would be the "
                  f"reference is not for the report to guess; report one sweep, or the variant you mean): "
                  f"{listed}.", ""]
    lines += [
        f"Accuracy ({', '.join(_metric_name(m) for m in metrics)}; docs/results.md): mean ± sample std "
        f"over seeds (the mean alone for one seed, such as a baseline computed once); seeds 95% CI: half-width "
        f"from Student's t over the seeds; questions 95% CI: Wilson interval of the first accuracy column's mean "
        f"(the metric the deltas are on; {_metric_name(PRIMARY_ACCURACY)} where a dataset's rows are on several) "
        f"over the row's test questions (the test set's sampling noise). "
        f"The seeds (n) and questions (n_eval) columns count what a row's mean is over (summary.csv: `n` and "
        f"`n_eval`; its `seeds` lists the seeds themselves). "
        f"Δ zero-shot, Δ few-shot: the row's mean minus the same model's `zeroshot` row's, `fewshot` row's (the "
        f"methods of those names, not another baseline such as `zeroshot_instructed` or `fewshot_chat`), in "
        f"percentage points. Train time, train tok/s and MFU: "
        f"{EMPTY} for a row that trains nothing. "
        f"{NEGATIVE_MARK} = negative transfer: a trained method's mean below the model's zero-shot mean on the "
        f"metric its deltas are on (Δ on), significant at alpha={alpha:g}"
        f"{' (Holm-adjusted, below)' if correction == HOLM else ''}; the mark stands beside that metric's accuracy.",
        "",
        _tests_note([*rows, *ood_rows], alpha, correction),
        "",
        "## Out-of-domain evaluation",
        "",
    ]
    ood_datasets = sorted({row["dataset"] for row in ood_rows})
    if not ood_datasets:
        lines += ["No out-of-domain evaluations in these results.", ""]
    else:
        lines += [
            f"Mean ± std accuracy (%) on each evaluation set of the models trained on one dataset, on the set's "
            f"`claims_metric` (named in its header: the training dataset's in-domain, the evaluation set's own "
            f"out of domain; Δ on: {delta_metrics_text(ood_rows, 'eval_set')}). The mark after a cell is its "
            f"Δ vs the `zeroshot` row on that set and metric, as in the tables above: {SIGNIFICANT_MARK} "
            f"significant at alpha={alpha:g} either way (paired test as above; "
            f"{'Holm-adjusted over one column' if correction == HOLM else 'no correction'}), {UNTESTED_MARK} not "
            f"tested (as above, or no `zeroshot` row on that set to compare with: no delta), none: tested and not "
            f"significant (summary_ood.csv has the delta and its p-values), or the `zeroshot` row itself; "
            f"{NEGATIVE_MARK} = negative transfer, a trained method significantly below it.",
            "",
        ]
    for dataset in ood_datasets:
        lines += _ood_section(
            dataset,
            [r for r in rows if r["dataset"] == dataset],
            [r for r in ood_rows if r["dataset"] == dataset],
        )
    return "\n".join(lines)
