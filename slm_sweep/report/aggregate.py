"""Find, read and aggregate the ``result.json`` files of a sweep (see docs/results.md).

A record is the parsed ``result.json`` of one cell (model × method × dataset × seed) plus a
``result_path`` key naming the file it came from. Reading never raises on a bad file: an unreadable or
malformed file is logged with its path and skipped.

Cells are told apart by their identity (``identity`` in result.json, see slm_sweep/identity.py): runs with the
same evaluation key computed the same thing, so one is kept (a completed original rather than a copy, then the
most recent ``finished_at``) and a seed-independent baseline copied into every seed counts once. Runs of one
model × method × dataset whose configurations differ (a swept ``method.r``, another learning rate, other code)
become separate rows told apart by a ``variant`` column naming the settings that differ (e.g. ``r=8``); rows
never mix configurations. Records written before identities existed are keyed by model × method × dataset ×
seed. Seeds of one row that scored different numbers of questions are an error.

Only completed records enter the statistics. Per group of seeds the mean, the sample standard deviation
(ddof=1, 0 for a single seed) and the half-width of a 95% Student-t confidence interval (None for a
single seed) are reported.

Every method that is not a baseline (``zeroshot``, ``fewshot``) counts as fine-tuned; a fine-tuned
group whose mean flexible accuracy is below the zero-shot mean of the same model and dataset is flagged
as negative transfer. Out-of-domain rows are compared with the zero-shot row of the same model, training
dataset and evaluation set.
"""

from __future__ import annotations

import json
import logging
import math
import os
import statistics
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import cache
from pathlib import Path
from typing import Any

from slm_sweep.scoring import METRICS, PRIMARY_METRIC, accuracy_key
from slm_sweep.identity import EVAL_SCORING_KEYS, TRAINER_NUMERIC_KEYS
from slm_sweep.results import RESULT_FILE, SCHEMA_VERSION, STATUSES

log = logging.getLogger(__name__)

COMPLETED = "completed"
BASELINE_METHODS = ("zeroshot", "fewshot")
METHOD_ORDER = ("zeroshot", "fewshot", "full", "lora", "dora")
# every scoring metric, the primary one first; accuracies missing from older result files stay empty
PRIMARY_ACCURACY = accuracy_key(PRIMARY_METRIC)
ACCURACY_METRICS = (PRIMARY_ACCURACY, *(accuracy_key(name) for name in METRICS if name != PRIMARY_METRIC))

# Two-sided 95% Student-t critical values for df = 1..30, used when scipy is not installed.
_T_975 = (
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
    2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
    2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
)  # fmt: skip
_Z_975 = 1.96

_EPOCH = datetime.min.replace(tzinfo=timezone.utc)


class NoResultsError(FileNotFoundError):
    """No result.json was found under any of the given directories."""


class ReportError(ValueError):
    """Results that cannot be aggregated honestly; the message names the files."""


@dataclass
class Collection:
    """Everything read from a set of directories."""

    dirs: list[Path]
    files: list[Path] = field(default_factory=list)  # every result.json found, readable or not
    records: list[dict[str, Any]] = field(default_factory=list)  # one per cell, any status
    malformed: list[tuple[Path, str]] = field(default_factory=list)  # (file, reason)
    duplicates: list[tuple[Path, Path]] = field(default_factory=list)  # (kept, dropped)

    @property
    def completed(self) -> list[dict[str, Any]]:
        return [r for r in self.records if r["status"] == COMPLETED]

    @property
    def status_counts(self) -> Counter:
        return Counter(r["status"] for r in self.records)

    @property
    def skipped_counts(self) -> dict[str, int]:
        """Cells per status other than completed, known statuses first (zeros included)."""
        counts = self.status_counts
        others = sorted(s for s in counts if s not in STATUSES)
        return {s: counts.get(s, 0) for s in (*(s for s in STATUSES if s != COMPLETED), *others)}


# ---------------------------------------------------------------- finding and reading files


def find_result_files(dirs: Iterable[str | os.PathLike]) -> list[Path]:
    """Every result.json under ``dirs`` (recursively), each file once, in a stable order.

    A path may also name a result.json directly. Raises FileNotFoundError for a path that does not exist.
    """
    found: list[Path] = []
    seen: set[Path] = set()
    for d in dirs:
        root = Path(d)
        if not root.exists():
            raise FileNotFoundError(f"directory does not exist: {root}")
        if root.is_file():
            candidates = [root] if root.name == RESULT_FILE else []
        else:
            candidates = []
            for parent, subdirs, files in os.walk(root):
                subdirs.sort()
                if RESULT_FILE in files:
                    candidates.append(Path(parent) / RESULT_FILE)
        for path in candidates:
            key = path.resolve()
            if key not in seen:  # overlapping arguments must not look like duplicate cells
                seen.add(key)
                found.append(path)
    return found


def _number(value: Any) -> float | None:
    """``value`` as a finite float, else None (bools are not numbers here)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _nonempty_str(value: Any) -> bool:
    return isinstance(value, str) and value != ""


def read_result(path: str | os.PathLike) -> dict[str, Any]:
    """Parse and check one result.json; raise ValueError with the reason when it is not usable."""
    path = Path(path)
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"cannot read: {exc}") from exc
    if not isinstance(record, dict):
        raise ValueError("top level is not a JSON object")
    for key in ("status", "model", "method", "dataset"):
        if not _nonempty_str(record.get(key)):
            raise ValueError(f"missing or invalid {key!r}")
    seed = record.get("seed")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError("missing or invalid 'seed'")
    version = record.get("schema_version")
    if version != SCHEMA_VERSION:
        log.warning("%s: schema_version %r, expected %d; reading it anyway", path, version, SCHEMA_VERSION)

    metrics = record.get("metrics")
    if metrics is None:
        metrics = {}
    if not isinstance(metrics, dict):
        raise ValueError("'metrics' is not an object")
    if record["status"] == COMPLETED and _number(metrics.get(PRIMARY_ACCURACY)) is None:
        raise ValueError(f"completed but metrics.{PRIMARY_ACCURACY} is not a number")
    record["metrics"] = metrics

    eval_sets = record.get("eval_sets")
    if eval_sets is None:
        eval_sets = {}
    if not isinstance(eval_sets, dict):
        log.warning("%s: 'eval_sets' is not an object; ignoring it", path)
        eval_sets = {}
    for name in list(eval_sets):
        entry = eval_sets[name]
        if not isinstance(entry, dict) or _number(entry.get(PRIMARY_ACCURACY)) is None:
            log.warning("%s: eval_sets[%r] has no numeric %s; ignoring it", path, name, PRIMARY_ACCURACY)
            del eval_sets[name]
    record["eval_sets"] = eval_sets

    record["result_path"] = str(path)
    return record


# ---------------------------------------------------------------- duplicates


def _identity(record: dict[str, Any], name: str) -> str | None:
    identity = record.get("identity")
    return identity.get(name) if isinstance(identity, dict) else None


def cell_key(record: dict[str, Any]) -> tuple:
    """What makes two records the same computation: the evaluation key, else model × method × dataset × seed."""
    key = _identity(record, "evaluation_key")
    if key:
        return ("evaluation", key)
    return record["model"], record["method"], record["dataset"], record["seed"]


def _timestamp(value: Any) -> datetime:
    if not isinstance(value, str):
        return _EPOCH
    text = value.strip()
    if text.endswith("Z"):  # fromisoformat accepts "Z" only from Python 3.11
        text = text[:-1] + "+00:00"
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return _EPOCH
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def _preference(record: dict[str, Any]) -> tuple[bool, bool, datetime, datetime]:
    return (
        record["status"] == COMPLETED,
        not record.get("reused_from"),
        _timestamp(record.get("finished_at")),
        _timestamp(record.get("started_at")),
    )


def deduplicate(records: Iterable[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[tuple[Path, Path]]]:
    """One record per cell; returns (kept records, [(kept file, dropped file), ...]) and logs each drop."""
    by_cell: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for record in records:
        by_cell[cell_key(record)].append(record)
    kept: list[dict[str, Any]] = []
    dropped: list[tuple[Path, Path]] = []
    for group in by_cell.values():
        best = max(group, key=_preference)  # max keeps the first of equals: earlier arguments win ties
        kept.append(best)
        for other in group:
            if other is best:
                continue
            if other.get("reused_from") and other["status"] == COMPLETED:
                continue  # a copy of the kept computation (a baseline reused for another seed): counts once
            pair = (Path(best.get("result_path", "?")), Path(other.get("result_path", "?")))
            dropped.append(pair)
            log.warning(
                "duplicate cell model=%s method=%s dataset=%s seed=%s: keeping %s (finished_at %s), "
                "dropping %s (finished_at %s)",
                best["model"], best["method"], best["dataset"], other["seed"],
                pair[0], best.get("finished_at"), pair[1], other.get("finished_at"),
            )  # fmt: skip
    return kept, dropped


# ---------------------------------------------------------------- variants

# Config parts that never tell two configurations apart: the seed (rows aggregate over it), where files go,
# logging, resuming, and the settings that change only speed or memory (see slm_sweep/identity.py).
_NOT_A_VARIANT = ("seed", "hydra", "logger", "resume", "cache_dir", "data_root", "preflight", "optimized_metric",
                  "model.name", "method.name", "dataset.name", "dataset.data_dir", "model.gguf_dir",
                  "model.params_nominal")
# Within trainer and eval, only the settings that can change numbers (slm_sweep.identity declares them once).
_NUMERIC_SETTINGS = {"trainer": TRAINER_NUMERIC_KEYS,
                     "eval": (*EVAL_SCORING_KEYS, "dtype", "ood_sets", "ood_limit")}


def _flatten(value: Any, prefix: str = "") -> dict[str, str]:
    if isinstance(value, dict):
        out: dict[str, str] = {}
        for key, item in value.items():
            out.update(_flatten(item, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: json.dumps(value, sort_keys=True)}


def configuration_settings(record: dict[str, Any]) -> dict[str, str]:
    """The record's settings that can change its numbers, flattened (``method.r`` -> ``16``)."""
    config = record.get("config") if isinstance(record.get("config"), dict) else {}
    settings = _flatten(config)
    trains = is_fine_tuned(record["method"])
    kept = {}
    for key, value in settings.items():
        group, _, name = key.partition(".")
        if key in _NOT_A_VARIANT or group in _NOT_A_VARIANT:
            continue
        if group in _NUMERIC_SETTINGS and name.split(".")[0] not in _NUMERIC_SETTINGS[group]:
            continue
        if group == "trainer" and not trains:
            continue  # a method that trains nothing is not changed by trainer settings
        kept[key] = value
    return kept


def _short_names(keys: Sequence[str]) -> dict[str, str]:
    """``method.r`` -> ``r`` unless another differing key ends the same way."""
    last = Counter(k.rsplit(".", 1)[-1] for k in keys)
    return {k: k.rsplit(".", 1)[-1] if last[k.rsplit(".", 1)[-1]] == 1 else k for k in keys}


def assign_variants(records: list[dict[str, Any]]) -> None:
    """Set ``record["variant"]``: the settings in which a record's configuration differs from the other
    configurations of the same dataset × model × method ('' when there is only one)."""
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = defaultdict(list)
    for record in records:
        groups[record["dataset"], record["model"], record["method"]].append(record)
    for group in groups.values():
        settings = [configuration_settings(r) for r in group]
        keys = sorted({k for s in settings for k in s})
        differing = [k for k in keys if len({s.get(k) for s in settings}) > 1]
        names = _short_names(differing)
        labels = [", ".join(f"{names[k]}={_plain(own.get(k))}" for k in differing) for own in settings]
        # configurations the config cannot tell apart (other code, data or library versions) by their key
        by_label: dict[str, set[str]] = defaultdict(set)
        for record, label in zip(group, labels):
            by_label[label].add(_identity(record, "configuration_key") or "")
        for record, label in zip(group, labels):
            key = _identity(record, "configuration_key") or ""
            if len(by_label[label]) > 1:
                label = ", ".join(p for p in (label, f"config {key[:8] or 'unknown'}") if p)
            record["variant"] = label


def _plain(value: str | None) -> str:
    if value is None:
        return "unset"
    loaded = json.loads(value)
    return value if isinstance(loaded, (list, dict)) else str(loaded)


# ---------------------------------------------------------------- collecting


def collect(dirs: Sequence[str | os.PathLike]) -> Collection:
    """Read every result.json under ``dirs``; raise NoResultsError when there is none at all."""
    collection = Collection(dirs=[Path(d) for d in dirs])
    collection.files = find_result_files(dirs)
    if not collection.files:
        raise NoResultsError(f"no {RESULT_FILE} found under: {', '.join(str(d) for d in dirs)}")
    readable = []
    for path in collection.files:
        try:
            readable.append(read_result(path))
        except ValueError as exc:
            log.warning("skipping %s: %s", path, exc)
            collection.malformed.append((path, str(exc)))
    collection.records, collection.duplicates = deduplicate(readable)
    return collection


def load_results(dirs: Sequence[str | os.PathLike]) -> list[dict[str, Any]]:
    """All readable records under ``dirs``, one per cell, of any status (filter on ``status`` yourself)."""
    return collect(dirs).records


# ---------------------------------------------------------------- statistics


@cache
def t_critical(df: int) -> float:
    """Two-sided 95% critical value of Student's t with ``df`` degrees of freedom."""
    if df < 1:
        raise ValueError("df must be at least 1")
    try:
        from scipy.stats import t
    except ImportError:
        return _T_975[df - 1] if df <= len(_T_975) else _Z_975
    return float(t.ppf(0.975, df))


def describe(values: Sequence[float]) -> tuple[float | None, float | None, float | None]:
    """(mean, sample std, 95% CI half-width) of ``values``; (None, None, None) when empty."""
    n = len(values)
    if n == 0:
        return None, None, None
    mean = statistics.fmean(values)
    if n == 1:
        return mean, 0.0, None
    std = statistics.stdev(values)
    return mean, std, t_critical(n - 1) * std / math.sqrt(n)


def _max_or_none(values: Iterable[Any]) -> float | None:
    numbers = [v for v in (_number(x) for x in values) if v is not None]
    return max(numbers) if numbers else None


def _mean_or_none(values: Iterable[Any]) -> float | None:
    numbers = [v for v in (_number(x) for x in values) if v is not None]
    return statistics.fmean(numbers) if numbers else None


def _first_int(values: Iterable[Any]) -> int | None:
    for value in values:
        number = _number(value)
        if number is not None:
            return int(number)
    return None


# ---------------------------------------------------------------- ordering


def method_sort_key(method: str) -> tuple[int, str]:
    if method in METHOD_ORDER:
        return METHOD_ORDER.index(method), ""
    return len(METHOD_ORDER), method


def method_label(row: dict[str, Any]) -> str:
    """The method, with the settings that tell its variants apart: ``lora (r=8)``."""
    return f"{row['method']} ({row['variant']})" if row.get("variant") else row["method"]


def is_fine_tuned(method: str) -> bool:
    return method not in BASELINE_METHODS


def model_sizes(records: Iterable[dict[str, Any]]) -> dict[str, int | None]:
    """Per model the smallest reported total_params (the base model: adapters only add to it)."""
    sizes: dict[str, int | None] = {}
    for record in records:
        model = record["model"]
        total = _number(record.get("metrics", {}).get("total_params"))
        sizes.setdefault(model, None)
        if total is not None and (sizes[model] is None or total < sizes[model]):
            sizes[model] = int(total)
    return sizes


def model_sort_key(model: str, sizes: dict[str, int | None]) -> tuple[bool, int, str]:
    size = sizes.get(model)
    return size is None, size or 0, model


# ---------------------------------------------------------------- summary rows


def wilson_interval(p: float | None, n: int | None, z: float = _Z_975) -> tuple[float | None, float | None]:
    """95% Wilson score interval of an accuracy ``p`` measured on ``n`` questions: the test set's own sampling
    noise (about ±2.5 points at 50 % on GSM8K's 1319 questions), which no number of seeds averages away."""
    if p is None or not n:
        return None, None
    p = min(1.0, max(0.0, p))
    denominator = 1 + z * z / n
    center = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return max(0.0, center - half), min(1.0, center + half)


def _accuracy_columns(entries: Sequence[dict[str, Any]]) -> dict[str, Any]:
    row: dict[str, Any] = {"n_eval": _first_int(e.get("n_eval") for e in entries)}
    for metric in ACCURACY_METRICS:
        values = [v for v in (_number(e.get(metric)) for e in entries) if v is not None]
        mean, std, ci95 = describe(values)
        row[f"{metric}_mean"] = mean
        row[f"{metric}_std"] = std
        row[f"{metric}_ci95"] = ci95
        # the seeds score the same questions, so the questions' interval is taken at their mean
        row[f"{metric}_wilson_low"], row[f"{metric}_wilson_high"] = wilson_interval(mean, row["n_eval"])
    return row


def _completed(records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    unique, _ = deduplicate(records)
    return [r for r in unique if r.get("status") == COMPLETED]


def _add_baseline_columns(rows: list[dict[str, Any]], group_keys: Sequence[str], deltas: bool) -> None:
    """Set delta_zeroshot/delta_fewshot (when ``deltas``) and negative_transfer on ``rows`` in place."""
    candidates: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        candidates[tuple(row[k] for k in group_keys), row["method"]].append(row)
    # a baseline with several variants gives no single reference: deltas against it stay empty
    means = {key: found[0][f"{PRIMARY_ACCURACY}_mean"] for key, found in candidates.items() if len(found) == 1}
    for row in rows:
        group = tuple(row[k] for k in group_keys)
        mean = row[f"{PRIMARY_ACCURACY}_mean"]
        zeroshot = means.get((group, "zeroshot"))
        for baseline in BASELINE_METHODS if deltas else ("zeroshot",):
            reference = means.get((group, baseline))
            row[f"delta_{baseline}"] = None if reference is None or mean is None else mean - reference
        row["negative_transfer"] = bool(
            is_fine_tuned(row["method"]) and zeroshot is not None and mean is not None and mean < zeroshot
        )


def summarize(records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per dataset × model × method × variant over the completed records' seeds, in report order.

    Keys: dataset, model, method, variant, n, seeds, <metric>_{mean,std,ci95,wilson_low,wilson_high} for each of
    ACCURACY_METRICS (ci95: over seeds; wilson: over the test questions),
    n_eval, trainable_params, total_params, train_time_s_mean,
    train_tokens_per_s_mean, step_time_s_mean, mfu_mean, train_padding_fraction_mean, peak_memory_mb_max,
    eval_time_s_mean, delta_zeroshot, delta_fewshot, negative_transfer. Accuracies are fractions.
    """
    completed = _completed(records)
    assign_variants(completed)
    groups: dict[tuple[str, str, str, str], list[dict[str, Any]]] = defaultdict(list)
    for record in completed:
        groups[record["dataset"], record["model"], record["method"], record["variant"]].append(record)
    sizes = model_sizes(completed)

    rows = []
    for (dataset, model, method, variant), group in groups.items():
        group.sort(key=lambda r: r["seed"])
        _check_same_questions(group, lambda r: r["metrics"].get("n_eval"), dataset)
        metrics = [r["metrics"] for r in group]
        row: dict[str, Any] = {
            "dataset": dataset,
            "model": model,
            "method": method,
            "variant": variant,
            "n": len(group),
            "seeds": [r["seed"] for r in group],
        }
        row.update(_accuracy_columns(metrics))
        row["trainable_params"] = _first_int(m.get("trainable_params") for m in metrics)
        row["total_params"] = _first_int(m.get("total_params") for m in metrics)
        row["train_time_s_mean"] = _mean_or_none(m.get("train_time_s") for m in metrics)
        row["train_tokens_per_s_mean"] = _mean_or_none(m.get("train_tokens_per_s") for m in metrics)
        row["step_time_s_mean"] = _mean_or_none(m.get("step_time_s") for m in metrics)
        row["mfu_mean"] = _mean_or_none(m.get("mfu") for m in metrics)
        row["train_padding_fraction_mean"] = _mean_or_none(m.get("train_padding_fraction") for m in metrics)
        row["peak_memory_mb_max"] = _max_or_none(m.get("peak_memory_mb") for m in metrics)
        row["eval_time_s_mean"] = _mean_or_none(m.get("eval_time_s") for m in metrics)
        rows.append(row)

    _add_baseline_columns(rows, ("dataset", "model"), deltas=True)
    rows.sort(key=lambda r: (r["dataset"], model_sort_key(r["model"], sizes), method_sort_key(r["method"]),
                             r["variant"]))
    return rows


def _check_same_questions(group: Sequence[dict[str, Any]], n_eval, eval_set: str) -> None:
    """Seeds of one row must have scored the same number of questions, or their mean mixes test sets."""
    counts = {r["result_path"] if "result_path" in r else "?": n_eval(r) for r in group}
    if len({c for c in counts.values() if c is not None}) > 1:
        listed = "; ".join(f"{path}: n_eval={count}" for path, count in counts.items())
        raise ReportError(f"{group[0]['model']} x {group[0]['method']} on {eval_set} "
                          f"({group[0].get('variant') or 'one configuration'}): the seeds scored different "
                          f"numbers of questions, so they cannot be averaged: {listed}")


def summarize_ood(records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per training dataset × eval set × model × method from the records' ``eval_sets``.

    Keys: dataset (the training dataset), eval_set, model, method, variant, n, seeds,
    <metric>_{mean,std,ci95} for each of ACCURACY_METRICS, n_eval, delta_zeroshot,
    negative_transfer.
    """
    completed = _completed(records)
    assign_variants(completed)
    groups: dict[tuple[str, str, str, str, str], list[tuple[int, dict[str, Any]]]] = defaultdict(list)
    for record in completed:
        for eval_set, entry in (record.get("eval_sets") or {}).items():
            if isinstance(entry, dict) and _number(entry.get(PRIMARY_ACCURACY)) is not None:
                key = (record["dataset"], eval_set, record["model"], record["method"], record["variant"])
                groups[key].append((record["seed"], {**entry, "result_path": record.get("result_path")}))
    sizes = model_sizes(completed)

    rows = []
    for (dataset, eval_set, model, method, variant), group in groups.items():
        group.sort(key=lambda item: item[0])
        _check_same_questions([{**entry, "model": model, "method": method, "variant": variant}
                               for _, entry in group], lambda r: r.get("n_eval"), eval_set)
        row: dict[str, Any] = {
            "dataset": dataset,
            "eval_set": eval_set,
            "model": model,
            "method": method,
            "variant": variant,
            "n": len(group),
            "seeds": [seed for seed, _ in group],
        }
        row.update(_accuracy_columns([entry for _, entry in group]))
        rows.append(row)

    _add_baseline_columns(rows, ("dataset", "eval_set", "model"), deltas=False)
    rows.sort(
        key=lambda r: (
            r["dataset"],
            r["eval_set"],
            model_sort_key(r["model"], sizes),
            method_sort_key(r["method"]),
            r["variant"],
        )
    )
    return rows
