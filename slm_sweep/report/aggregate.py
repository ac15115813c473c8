"""Aggregate the completed records of a sweep into summary rows (see docs/results.md).

Records come from ``collect.py`` (finding, reading, deduplicating result files). Runs of one
model × method × dataset whose configurations differ (a swept ``method.r``, another learning rate, other code)
become separate rows told apart by a ``variant`` column naming the settings that differ (e.g. ``r=8``); rows
never mix configurations. Seeds of one row that scored different numbers of questions are an error.

Per group of seeds the mean, the sample standard deviation (ddof=1) and the half-width of a 95% Student-t
confidence interval (both None, an empty CSV cell, for a single seed) are reported, and the 95% Wilson interval of
the mean over the test questions. A seed-independent baseline computed once is one seed (n=1).

The accuracy columns are every metric of the scoring registry and every other ``accuracy_<name>`` found in the
result files (a metric registered by a plugin), the primary metric first.

A method trains when its config says so (``method.train``), else when it is not a baseline name. Deltas against
zero-shot and few-shot come with a paired test on the questions both rows scored (``stats.paired_test``: exact
McNemar for single seeds, the seeds-and-questions test otherwise; none when the rows scored different questions); a trained row is flagged as negative transfer only when its
accuracy is below the zero-shot row of the same model and dataset and that test is significant at ``alpha``.
Deltas, tests and marks are on the row's ``delta_metric``: the ``claims_metric`` of the set it is scored on (its
dataset's, flexible, lenient on OrcaMath; an out-of-domain row's evaluation set's), the metric the claims read, so
that the summary and the claims agree; ``claims_metrics`` ({set: metric}: ``--claims-metric``, or a sweep's config
over results that recorded another, given apart for in-domain and out-of-domain rows) replaces what the records
recorded. Out-of-domain rows are compared with the zero-shot row of the same model,
training dataset and evaluation set.

The variants come from ``variants.py``, the rows' order from ``ordering.py``, the paired tests from
``comparisons.py`` and the metric the deltas are on from ``claims_metric.py``.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from slm_sweep.scoring import METRICS, PRIMARY_METRIC, accuracy_key

from .claims_metric import claims_metric, delta_metric, eval_set_claims_metric
from .collect import PRIMARY_ACCURACY, ReportError, number
from .comparisons import NO_DATA, compare_many
from .ordering import model_sizes, model_sort_key, row_sort_key, trains
from .stats import (
    ALPHA,
    DIFFERENT_QUESTIONS,
    DIFFERENT_SCORING,
    HOLM,
    PairedTest,
    describe,
    holm,
    wilson_interval,
)
from .variants import configuration_settings, labelled_records, not_completed

# the baselines the deltas compare with: the first of each kind of ordering.BASELINE_METHODS
DELTA_BASELINES = ("zeroshot", "fewshot")
# every scoring metric of the registry, the primary one first (result files may add more: accuracy_metrics)
ACCURACY_METRICS = (PRIMARY_ACCURACY, *(accuracy_key(name) for name in METRICS if name != PRIMARY_METRIC))
SEVERAL_BASELINES = "baseline has several variants"


def accuracy_metrics(records: Iterable[dict[str, Any]]) -> tuple[str, ...]:
    """ACCURACY_METRICS, then every other ``accuracy_<name>`` in the records' metrics or eval_sets, by name."""
    found: set[str] = set()
    for record in records:
        for scores in (record.get("metrics") or {}, *(record.get("eval_sets") or {}).values()):
            if isinstance(scores, dict):
                found.update(k for k in scores if k.startswith("accuracy_") and len(k) > len("accuracy_"))
    return (*ACCURACY_METRICS, *sorted(found - set(ACCURACY_METRICS)))


def row_metrics(rows: Sequence[dict[str, Any]]) -> tuple[str, ...]:
    """The accuracy metrics the rows carry (``accuracy_<name>``), in their column order."""
    if not rows:
        return ACCURACY_METRICS
    return tuple(k[: -len("_mean")] for k in rows[0] if k.startswith("accuracy_") and k.endswith("_mean"))


def _max_or_none(values: Iterable[Any]) -> float | None:
    numbers = [v for v in (number(x) for x in values) if v is not None]
    return max(numbers) if numbers else None


def _mean_or_none(values: Iterable[Any]) -> float | None:
    numbers = [v for v in (number(x) for x in values) if v is not None]
    return statistics.fmean(numbers) if numbers else None


def retried_note(group: Sequence[dict[str, Any]]) -> str | None:
    """The note naming a row's seeds that completed only after their training diverged (``retried_divergence``):
    "seed 2 diverged, then completed on a retry"; None where none did. A claim reads them as lost seeds."""
    seeds = [str(r.get("seed")) for r in group if r.get("retried_divergence")]
    if not seeds:
        return None
    return f"seed{'s' if len(seeds) != 1 else ''} {', '.join(seeds)} diverged, then completed on a retry"


def _first_int(values: Iterable[Any]) -> int | None:
    for value in values:
        value = number(value)
        if value is not None:
            return int(value)
    return None


def _accuracy_columns(entries: Sequence[dict[str, Any]], metrics: Sequence[str]) -> dict[str, Any]:
    row: dict[str, Any] = {"n_eval": _first_int(e.get("n_eval") for e in entries)}
    for metric in metrics:
        values = [v for v in (number(e.get(metric)) for e in entries) if v is not None]
        # a metric some seeds lack (a metric added between runs) would be a mean over other seeds than the row's
        mean, std, ci95 = describe(values if len(values) == len(entries) else [])
        row[f"{metric}_mean"] = mean
        row[f"{metric}_std"] = std
        row[f"{metric}_ci95"] = ci95
        # the seeds score the same questions, so the questions' interval is taken at their mean
        row[f"{metric}_wilson_low"], row[f"{metric}_wilson_high"] = wilson_interval(mean, row["n_eval"])
    return row


def _test_name(test: PairedTest) -> str:
    """The test's name, or why there is none: rows scored on different questions, rows scored differently, or else
    no per-question data."""
    if test.test:
        return test.test
    for kind in (DIFFERENT_QUESTIONS, DIFFERENT_SCORING):
        if kind in (test.reason or ""):
            return kind
    return NO_DATA


def _reference(row: dict[str, Any], baselines: Sequence[dict[str, Any]]) -> tuple[dict[str, Any] | None, bool]:
    """The baseline row ``row`` is compared with, and whether there were several to choose from and none was
    chosen: the only variant, else the only one scored as ``row`` was with the same prompt and data (a sweep over
    eval.max_new_tokens pairs each trained row with the zero-shot row of its own token limit); else none, which is
    not for the report to guess."""
    if len(baselines) == 1:
        return baselines[0], False
    if not baselines:
        return None, False
    scoring = row.get("scored_with")
    same = [b for b in baselines if isinstance(scoring, dict) and b.get("scored_with") == scoring
            and _same_inputs(row, b)]
    return (same[0], False) if len(same) == 1 else (None, True)


def _same_inputs(row: dict[str, Any], baseline: dict[str, Any]) -> bool:
    """Whether the two rows agree on every setting both have outside the method and the trainer (the prompt, the
    data, the evaluation): ``scored_with`` holds the scoring settings only, not the prompt."""
    a, b = row.get("settings") or {}, baseline.get("settings") or {}
    return all(a[k] == b[k] for k in a.keys() & b.keys() if not k.startswith(("method.", "trainer.")))


def cell_peak_memory_mb(record: Mapping[str, Any]) -> float | None:
    """A cell's peak memory, training included, of one kind of memory as run.py measures a cell's own: the GPU's
    where training or evaluation ran on one, else the process's resident memory. Of its training's peak
    (``train_peak_memory_mb``, of the training device: a cell that re-scored kept weights copies it from the run
    that trained them) and its own (``peak_memory_mb``: of a cell that trained itself, training included, the
    GPU's if either stage ran on one; of a re-score, its evaluation's, of the evaluation device), the larger where
    both are of one kind, else the GPU's (the training's for weights trained on a GPU and re-scored on the CPU);
    where a kind is not recorded, the cell's own for a cell that trained itself, else the training's. None for a
    re-scored cell whose file has no training peak (written before it was recorded): its own leaves training
    out."""
    metrics = record.get("metrics") or {}
    trained, own = number(metrics.get("train_peak_memory_mb")), number(metrics.get("peak_memory_mb"))
    rescored = bool(record.get("trained_in"))
    if trained is None:
        return None if rescored else own
    if own is None:
        return trained
    placement = record.get("placement") if isinstance(record.get("placement"), Mapping) else {}
    train_kind, eval_kind = (_memory_kind(placement.get(stage)) for stage in ("train", "eval"))
    # run.py: a cell that trained itself measures the GPU where either stage ran on one
    own_kind = eval_kind if rescored else ("gpu" if "gpu" in (train_kind, eval_kind) else eval_kind)
    if train_kind is not None and train_kind == own_kind:
        return max(trained, own)
    if "gpu" in (train_kind, own_kind):
        return trained if train_kind == "gpu" else own
    return trained if rescored else own


def _memory_kind(stage: Any) -> str | None:
    """The memory a stage's peak is of (train.callbacks.peak_memory_mb), by its placement: ``gpu`` on a CUDA
    device, ``host`` (the process's resident memory) on any other; None where the record does not say."""
    device = stage.get("device") if isinstance(stage, Mapping) else None
    if not device:
        return None
    return "gpu" if str(device).startswith("cuda") else "host"


def counts_final_validation(metrics: Mapping[str, Any]) -> bool:
    """Whether a trained cell's ``train_time_s`` includes the validation pass on the final weights: written before
    that pass was timed apart (``final_validation_s``), which such a file lacks."""
    return bool(metrics.get("train_time_s")) and "final_validation_s" not in metrics


def _add_baseline_columns(rows: list[dict[str, Any]], group_keys: Sequence[str], eval_set_key: str,
                          deltas: bool, alpha: float, correction: str) -> None:
    """Set delta_<baseline>, its paired test (delta_<baseline>_p, delta_<baseline>_test), the Holm-adjusted p
    (delta_<baseline>_p_adjusted, over the tests of that column in one table: every model and method of a
    dataset, or of a dataset x evaluation set; None with correction "none"), delta_<baseline>_significant (at
    ``alpha``, adjusted or not), below_zeroshot and negative_transfer (below zero-shot and significant) on
    ``rows`` in place, each on the row's ``delta_metric`` (the primary metric for a row without one): the
    baseline's accuracy and per-question scores are read on the same metric."""
    candidates: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        candidates[tuple(row[k] for k in group_keys), row["method"]].append(row)
    tested: list[tuple[dict[str, Any], str, dict[str, Any], str]] = []  # (row, baseline, its row, metric)
    for row in rows:
        group = tuple(row[k] for k in group_keys)
        metric = row.get("delta_metric") or PRIMARY_METRIC  # both rows are read on this row's
        mean = row.get(f"{accuracy_key(metric)}_mean")
        for baseline in DELTA_BASELINES if deltas else ("zeroshot",):
            reference, several = _reference(row, candidates.get((group, baseline), []))
            reference_mean = None if reference is None else reference.get(f"{accuracy_key(metric)}_mean")
            # the baseline's own row has no delta against itself; equal accuracies averaged in another order
            # (2, 3 and 4 of 60 right against 3 of 60) differ by a rounding error, which is no delta
            delta = (None if reference_mean is None or mean is None or reference is row
                     else 0.0 if math.isclose(mean, reference_mean, rel_tol=1e-9, abs_tol=1e-12)
                     else mean - reference_mean)
            row[f"delta_{baseline}"] = delta
            row[f"delta_{baseline}_p"] = None  # the test's, set below for a delta
            row[f"delta_{baseline}_test"] = SEVERAL_BASELINES if several else None
            if delta is not None:
                tested.append((row, baseline, reference, metric))
    # every delta's test at once: side by side inside shared_paired_tests
    tests = compare_many([(row, reference, row[eval_set_key], metric) for row, _, reference, metric in tested],
                         alpha=alpha)
    for (row, baseline, _, _), test in zip(tested, tests):
        row[f"delta_{baseline}_p"] = test.p_value
        row[f"delta_{baseline}_test"] = _test_name(test)
    tables: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        tables[tuple(row[k] for k in group_keys if k != "model")].append(row)
    for baseline in DELTA_BASELINES if deltas else ("zeroshot",):
        for table in tables.values():
            raw = [row[f"delta_{baseline}_p"] for row in table]
            adjusted = holm(raw) if correction == HOLM else [None] * len(raw)
            for row, p_raw, p_adjusted in zip(table, raw, adjusted):
                decisive = p_adjusted if correction == HOLM else p_raw
                row[f"delta_{baseline}_p_adjusted"] = p_adjusted
                row[f"delta_{baseline}_significant"] = None if decisive is None else decisive < alpha
    for row in rows:
        below = bool(row["trained"] and row["delta_zeroshot"] is not None and row["delta_zeroshot"] < 0)
        row["below_zeroshot"] = below
        row["negative_transfer"] = bool(below and row["delta_zeroshot_significant"])


def summarize(records: Iterable[dict[str, Any]], *, alpha: float = ALPHA, correction: str = HOLM,
              claims_metrics: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
    """One row per dataset × model × method × variant over the completed records' seeds, in report order.

    Keys: dataset, model, method, variant, trained, n, seeds, result_paths (one per seed),
    <metric>_{mean,std,ci95,wilson_low,wilson_high} for each metric of ``accuracy_metrics`` (ci95: over seeds;
    wilson: over the test questions), n_eval, trainable_params, total_params, train_time_s_mean,
    train_tokens_per_s_mean, step_time_s_mean, mfu_mean, train_padding_fraction_mean, train_clipped_fraction_mean,
    peak_memory_mb_max (the largest of the seeds' ``cell_peak_memory_mb``), peak_memory_unknown_seeds (re-scored
    seeds left out of it: their files record no training peak),
    eval_time_s_mean, truncated_fraction_mean (answers cut off at eval.max_new_tokens), claims_metric,
    delta_metric (what the deltas and marks are on: ``delta_metric``), delta_zeroshot, delta_fewshot,
    delta_{zeroshot,fewshot}_{p,test} (the paired test of that delta), _p_adjusted (Holm, over the column of the
    dataset's table) and _significant, below_zeroshot, negative_transfer (below and significant at ``alpha``
    after ``correction``), lr, lr_source, lr_at_edge, lr_within_noise, lr_tied (``learning_rate_columns``).
    Accuracies are fractions. ``claims_metrics``: {dataset: metric} read instead of what the records recorded
    (``claims_metric``; checked by ``check_claims_metrics``).
    """
    completed = labelled_records(records)
    metric_names = accuracy_metrics(completed)
    groups: dict[tuple[str, str, str, str], list[dict[str, Any]]] = defaultdict(list)
    for record in completed:
        groups[record["dataset"], record["model"], record["method"], record["variant"]].append(record)
    sizes = model_sizes(completed)
    left_out = not_completed(records)
    delta_metrics: dict[tuple[str, str], str] = {}  # per dataset and claims metric, warned about once

    rows = []
    for (dataset, model, method, variant), group in groups.items():
        group.sort(key=lambda r: r["seed"])
        _check_same_questions(group, lambda r: r["metrics"].get("n_eval"), dataset)
        metrics = [r["metrics"] for r in group]
        claimed = claims_metric(group, claims_metrics)
        if (dataset, claimed) not in delta_metrics:
            delta_metrics[dataset, claimed] = delta_metric(claimed, metric_names, dataset)
        row: dict[str, Any] = {
            "dataset": dataset,
            "model": model,
            "method": method,
            "variant": variant,
            "trained": any(trains(r) for r in group),
            "n": len(group),
            "seeds": [r["seed"] for r in group],
            "result_paths": [r.get("result_path") for r in group if r.get("result_path")],
            "not_completed": left_out.get((dataset, model, method, variant)),
            "retried": retried_note(group),
            "model_source": model_source(group),
            "claims_metric": claimed,
            "delta_metric": delta_metrics[dataset, claimed],
            **learning_rate_columns(group),
            "scored_with": scored_with(group),
            # what the variant label is read from: its settings, for pairing variants across methods like for like
            "settings": configuration_settings(group[0]),
        }
        row.update(_accuracy_columns(metrics, metric_names))
        row["trainable_params"] = _first_int(m.get("trainable_params") for m in metrics)
        row["total_params"] = _first_int(m.get("total_params") for m in metrics)
        # a seed resumed from a checkpoint timed only the steps after it, and one written before the pass on the
        # final weights was timed apart counted that pass too (docs/results.md): their times are left out
        resumed = [bool(r.get("resumed_from_checkpoint")) for r in group]
        older = [not gone and counts_final_validation(m) for m, gone in zip(metrics, resumed)]
        row["train_time_s_mean"] = _mean_or_none(m.get("train_time_s") for m, gone, old in zip(metrics, resumed, older)
                                                 if not gone and not old)
        row["train_time_resumed_seeds"] = sum(resumed)
        row["train_time_older_seeds"] = sum(older)
        row["train_tokens_per_s_mean"] = _mean_or_none(m.get("train_tokens_per_s") for m in metrics)
        row["step_time_s_mean"] = _mean_or_none(m.get("step_time_s") for m in metrics)
        row["mfu_mean"] = _mean_or_none(m.get("mfu") for m in metrics)
        row["train_padding_fraction_mean"] = _mean_or_none(m.get("train_padding_fraction") for m in metrics)
        row["train_clipped_fraction_mean"] = _mean_or_none(m.get("train_clipped_fraction") for m in metrics)
        # training included: a re-scored seed's own peak is of its evaluation alone (docs/results.md)
        row["peak_memory_mb_max"] = _max_or_none(cell_peak_memory_mb(r) for r in group)
        row["peak_memory_unknown_seeds"] = sum(cell_peak_memory_mb(r) is None and bool(r.get("trained_in"))
                                               for r in group)
        row["eval_time_s_mean"] = _mean_or_none(scored_split_eval_time(r) for r in group)
        row["truncated_fraction_mean"] = _mean_or_none(m.get("truncated_fraction") for m in metrics)
        rows.append(row)

    rows.sort(key=lambda r: (r["dataset"], model_sort_key(r["model"], sizes), row_sort_key(r)))
    _add_baseline_columns(rows, ("dataset", "model"), "dataset", deltas=True, alpha=alpha, correction=correction)
    return rows


def learning_rate_columns(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The rate a row's seeds trained at (``lr``), where it came from (``lr_source``: tuned, method, grid; several
    joined by commas), ``lr_at_edge`` (smallest, largest, only: the tuned rate lies at that end of the rates its
    search compared, so the best may lie beyond it), ``lr_within_noise`` (the runner-up rate its search did not
    separate the tuned rate from) and ``lr_tied`` (what chose between them when they tied: validation loss,
    smaller rate). All None for a method that trains nothing."""
    chosen = [r.get("learning_rate") for r in records if isinstance(r.get("learning_rate"), dict)]
    sources = sorted({str(c["source"]) for c in chosen if c.get("source")})
    edges = sorted({str(c["at_edge"]) for c in chosen if c.get("at_edge")})
    close = sorted({f"{rate:g}" if (rate := number(c.get("runner_up"))) is not None else "the runner-up"
                    for c in chosen if c.get("within_noise")})
    tied = sorted({str(c["tied"]) for c in chosen if c.get("tied")})
    return {"lr": next((number(c.get("value")) for c in chosen if number(c.get("value")) is not None), None),
            "lr_source": ",".join(sources) or None, "lr_at_edge": ",".join(edges) or None,
            "lr_within_noise": ",".join(close) or None, "lr_tied": ",".join(tied) or None}


# Models whose weights are drawn, not trained by anyone: controls for throughput and plumbing, never evidence
# about a study's models (claims leave them out unless named; the size plot draws them only when alone).
UNTRAINED_SOURCES = ("random", "tiny")


def scored_split_eval_time(record: dict[str, Any]) -> float | None:
    """The seconds a record's scored split took to generate and score. A record written before the out-of-domain
    sets were timed apart (no ``eval_time_all_sets_s``) with such sets counted them in its ``eval_time_s``: unknown."""
    metrics = record.get("metrics") or {}
    if record.get("eval_sets") and "eval_time_all_sets_s" not in metrics:
        return None
    return metrics.get("eval_time_s")


def model_source(records: Sequence[dict[str, Any]]) -> str | None:
    """The records' ``model.source`` (hub, gguf, random, tiny), when their configs say."""
    for record in records:
        model = (record.get("config") or {}).get("model") if isinstance(record.get("config"), dict) else None
        if isinstance(model, dict) and model.get("source"):
            return str(model["source"])
    return None


def scored_with(records: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """The records' ``identity.scored_with`` (one configuration's seeds share it), None for older files."""
    for record in records:
        identity = record.get("identity")
        if isinstance(identity, dict) and isinstance(identity.get("scored_with"), dict):
            return identity["scored_with"]
    return None


def _check_same_questions(group: Sequence[dict[str, Any]], n_eval, eval_set: str) -> None:
    """Seeds of one row must have scored the same number of questions, or their mean mixes test sets."""
    counts = {r["result_path"] if "result_path" in r else "?": n_eval(r) for r in group}
    if len({c for c in counts.values() if c is not None}) > 1:
        listed = "; ".join(f"{path}: n_eval={count}" for path, count in counts.items())
        raise ReportError(f"{group[0]['model']} x {group[0]['method']} on {eval_set} "
                          f"({group[0].get('variant') or 'one configuration'}): the seeds scored different "
                          f"numbers of questions, so they cannot be averaged: {listed}")


def summarize_ood(records: Iterable[dict[str, Any]], *, alpha: float = ALPHA, correction: str = HOLM,
                  claims_metrics: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
    """One row per training dataset × eval set × model × method from the records' ``eval_sets``.

    Keys: dataset (the training dataset), eval_set, model, method, variant, trained, n, seeds, result_paths,
    <metric>_{mean,std,ci95,wilson_low,wilson_high} for each metric of ``accuracy_metrics``, n_eval,
    truncated_fraction_mean, delta_metric (the evaluation set's ``claims_metric``, as its entries record it: what
    the deltas and marks are on), settings (as ``summarize``'s: what the zero-shot variant compared with is chosen
    by), delta_zeroshot, delta_zeroshot_{p,test,p_adjusted,significant}, below_zeroshot, negative_transfer.
    ``claims_metrics``: {evaluation set: metric} read instead of what the entries recorded (as ``summarize``'s).
    """
    completed = labelled_records(records)
    metric_names = accuracy_metrics(completed)
    groups: dict[tuple[str, str, str, str, str], list[tuple[dict[str, Any], dict[str, Any]]]] = defaultdict(list)
    entries_of: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for record in completed:
        for eval_set, entry in (record.get("eval_sets") or {}).items():
            if isinstance(entry, dict) and number(entry.get(PRIMARY_ACCURACY)) is not None:
                key = (record["dataset"], eval_set, record["model"], record["method"], record["variant"])
                groups[key].append((record, {**entry, "result_path": record.get("result_path")}))
                entries_of[eval_set].append(entry)
    sizes = model_sizes(completed)
    metrics_of = {name: delta_metric(eval_set_claims_metric(name, entries, claims_metrics), metric_names, name)
                  for name, entries in entries_of.items()}

    rows = []
    for (dataset, eval_set, model, method, variant), group in groups.items():
        group.sort(key=lambda item: item[0]["seed"])
        _check_same_questions([{**entry, "model": model, "method": method, "variant": variant}
                               for _, entry in group], lambda r: r.get("n_eval"), eval_set)
        row: dict[str, Any] = {
            "dataset": dataset,
            "eval_set": eval_set,
            "model": model,
            "method": method,
            "variant": variant,
            "trained": any(trains(record) for record, _ in group),
            "n": len(group),
            "seeds": [record["seed"] for record, _ in group],
            "result_paths": [record["result_path"] for record, _ in group if record.get("result_path")],
            "scored_with": scored_with([record for record, _ in group]),
            "delta_metric": metrics_of[eval_set],
            # as in-domain: a baseline variant is chosen by the prompt and data settings too, not the scoring alone
            "settings": configuration_settings(group[0][0]),
        }
        row.update(_accuracy_columns([entry for _, entry in group], metric_names))
        row["truncated_fraction_mean"] = _mean_or_none(entry.get("truncated_fraction") for _, entry in group)
        rows.append(row)

    rows.sort(
        key=lambda r: (
            r["dataset"],
            r["eval_set"],
            model_sort_key(r["model"], sizes),
            row_sort_key(r),
        )
    )
    _add_baseline_columns(rows, ("dataset", "eval_set", "model"), "eval_set", deltas=False, alpha=alpha,
                          correction=correction)
    return rows
