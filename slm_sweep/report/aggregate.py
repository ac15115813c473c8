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
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import json
import logging
import math
import os
import re
import statistics
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from slm_sweep.identity import EVAL_SCORING_KEYS, TRAINER_NUMERIC_KEYS, prompt_matters
from slm_sweep.scoring import METRICS, PRIMARY_METRIC, accuracy_key
from slm_sweep.settings import TrainerSettings

from .collect import (
    COMPLETED,
    PRIMARY_ACCURACY,
    NoQuestionData,
    ReportError,
    deduplicate,
    flat_config,
    identity_key,
    number,
    question_scores,
)
from .stats import (
    ALPHA,
    DIFFERENT_QUESTIONS,
    DIFFERENT_SCORING,
    HOLM,
    PairedTest,
    describe,
    holm,
    no_test,
    paired_test,
    pooled_paired_test,
    wilson_interval,
)

log = logging.getLogger(__name__)

# Methods that train nothing, also when a record carries no config saying so; the deltas compare with the first
# of each kind.
BASELINE_METHODS = ("zeroshot", "zeroshot_instructed", "fewshot", "fewshot_chat")
DELTA_BASELINES = ("zeroshot", "fewshot")
METHOD_ORDER = ("zeroshot", "zeroshot_instructed", "fewshot", "fewshot_chat", "full", "lora", "dora")
# every scoring metric of the registry, the primary one first (result files may add more: accuracy_metrics)
ACCURACY_METRICS = (PRIMARY_ACCURACY, *(accuracy_key(name) for name in METRICS if name != PRIMARY_METRIC))
NO_DATA = "no per-question data"
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


def trains(record: dict[str, Any]) -> bool:
    """Whether the record's method trains weights: its config's ``method.train``, else its name."""
    config = record.get("config")
    method = config.get("method") if isinstance(config, dict) else None
    if isinstance(method, dict) and isinstance(method.get("train"), bool):
        return method["train"]
    return is_fine_tuned(record["method"])


# ---------------------------------------------------------------- variants

# Config parts that never tell two configurations apart: the seed (rows aggregate over it), where files go,
# logging, resuming, and the settings that change only speed or memory (see slm_sweep/identity.py).
# tuning: where a learning rate came from; the rate itself is method.lr, which does tell runs apart.
_NOT_A_VARIANT = ("seed", "hydra", "logger", "callbacks", "tuning", "resume", "cache_dir", "data_root", "preflight",
                  "optimized_metric", "model.name", "method.name", "dataset.name", "dataset.data_dir",
                  "model.gguf_dir", "model.params_nominal", "dataset.claims_metric")
# Within trainer and eval, only the settings that can change numbers (slm_sweep.identity declares them once).
_NUMERIC_SETTINGS = {"trainer": TRAINER_NUMERIC_KEYS,
                     "eval": (*EVAL_SCORING_KEYS, "dtype", "ood_sets", "ood_limit", "metric_modules")}


def _flatten(config: dict[str, Any]) -> dict[str, str]:
    return {key: json.dumps(value, sort_keys=True) for key, value in flat_config(config).items()}


# Settings added since older result files were written, with the value those files' runs had
_SETTINGS_BEFORE_THEY_EXISTED = {"trainer.lr_schedule": TrainerSettings.lr_schedule}


def configuration_settings(record: dict[str, Any]) -> dict[str, str]:
    """The record's settings that can change its numbers, flattened (``method.r`` -> ``16``): a null
    ``method.optimizer`` or ``method.lr_scale`` left out as unset, and a setting older result files lack
    (``_SETTINGS_BEFORE_THEY_EXISTED``) at the value their runs had."""
    config = record.get("config") if isinstance(record.get("config"), dict) else {}
    settings = {k: v for k, v in _flatten(config).items() if not (k in _NULL_IS_UNSET and v == "null")}
    if isinstance(config.get("trainer"), dict):
        for key, value in _SETTINGS_BEFORE_THEY_EXISTED.items():
            settings.setdefault(key, json.dumps(value))
    method = config.get("method") if isinstance(config.get("method"), dict) else {}
    if not prompt_matters(method):
        # lm-eval's few-shot formats read neither prompt setting: they tell no configuration apart
        settings = {k: v for k, v in settings.items() if not k.startswith("prompt.")}
    elif identity_key(record, "prompt_style") and "prompt.style" in settings:
        # as the cell's key has it: prompt.style=chat where auto renders chat is prompt.style=auto
        settings["prompt.style"] = json.dumps(identity_key(record, "prompt_style"))
    trained = trains(record)
    kept = {}
    for key, value in settings.items():
        group, _, name = key.partition(".")
        if key in _NOT_A_VARIANT or group in _NOT_A_VARIANT:
            continue
        if group in _NUMERIC_SETTINGS and name.split(".")[0] not in _NUMERIC_SETTINGS[group]:
            continue
        if group == "trainer" and not trained:
            continue  # a method that trains nothing is not changed by trainer settings
        kept[key] = value
    return kept


def varying_settings(settings: Sequence[dict[str, str]]) -> set[str]:
    """The keys whose values differ among ``settings`` (configuration_settings of several records)."""
    return {key for key in {k for s in settings for k in s} if len({s.get(key) for s in settings}) > 1}


# Settings whose own name says too little, named from their block (``optimizer.momentum=0.9``, ``lr_scale.lora_B=16``,
# ``optimizer=torch.optim.SGD``), and what an unset one of them means
_NAMED_FROM_BLOCK = {"method.optimizer._target_": "optimizer", "method.optimizer.": "optimizer.",
                     "method.lr_scale.": "lr_scale."}
_UNSET_MEANS = {"method.optimizer._target_": "AdamW", "method.optimizer.": "–", "method.lr_scale.": "1"}
# blocks whose null is their default (AdamW, every factor 1), as unset: one setting, never two labels for it
_NULL_IS_UNSET = ("method.optimizer", "method.lr_scale")


def _block_prefix(key: str, entries: Mapping[str, str]) -> str | None:
    """The key of ``entries`` that ``key`` is, or the block (a prefix ending in a dot) it lies in."""
    return next((p for p in entries if key == p or (p.endswith(".") and key.startswith(p))), None)


def _block_entry(key: str, entries: Mapping[str, str]) -> str | None:
    prefix = _block_prefix(key, entries)
    return None if prefix is None else entries[prefix]


def _block_name(key: str) -> str | None:
    prefix = _block_prefix(key, _NAMED_FROM_BLOCK)
    if prefix is None:
        return None
    return _NAMED_FROM_BLOCK[prefix] + (key[len(prefix):] if prefix.endswith(".") else "")


def _short_names(keys: Sequence[str]) -> dict[str, str]:
    """``method.r`` -> ``r`` unless another differing key ends the same way; a method's optimizer and rate factors
    by their block (``_NAMED_FROM_BLOCK``)."""
    last = Counter(k.rsplit(".", 1)[-1] for k in keys)
    return {k: _block_name(k)
            or (k.rsplit(".", 1)[-1] if last[k.rsplit(".", 1)[-1]] == 1 else k) for k in keys}


def assign_variants(records: list[dict[str, Any]]) -> None:
    """Set ``record["variant"]``: the settings in which a record's configuration differs from the other
    configurations of the same dataset × model × method ('' when there is only one)."""
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = defaultdict(list)
    for record in records:
        groups[record["dataset"], record["model"], record["method"]].append(record)
    for group in groups.values():
        # the records of one configuration key are one configuration, however their settings are spelt
        # (trainer.precision=32 and 32-true, alpha 32.0 and 32): each is labelled by the first one's
        first: dict[str, dict[str, str]] = {}
        settings = []
        for record in group:
            own, key = configuration_settings(record), identity_key(record, "configuration_key")
            settings.append(first.setdefault(key, own) if key else own)
        differing = sorted(varying_settings(settings))
        # a setting that only mirrors another (method.peft.r = ${..r} of method.r) is named once, by its shorter key
        by_values: dict[tuple, str] = {}
        for k in sorted(differing, key=lambda k: (k.count("."), k)):
            by_values.setdefault(tuple(s.get(k) for s in settings), k)
        differing = [k for k in differing if k in by_values.values()]
        names = _short_names(differing)
        labels = [", ".join(f"{names[k]}={_plain(own.get(k), k)}" for k in differing) for own in settings]
        # configurations the config cannot tell apart (other code, data or library versions) by their key. A cell
        # that did not complete and has no key (it failed before computing it) belongs to the one keyed
        # configuration of its settings, if any; a completed one without a key (written before cells had an
        # identity) is a configuration of its own, of unknown code (None), which is never pooled with a keyed one
        by_label: dict[str, set[str | None]] = defaultdict(set)
        for record, label in zip(group, labels):
            key = identity_key(record, "configuration_key")
            if key or record.get("status") == COMPLETED:
                by_label[label].add(key or None)
        for record, label in zip(group, labels):
            key = identity_key(record, "configuration_key") or ""
            keyed = by_label[label] - {None}
            if not key and record.get("status") != COMPLETED and len(keyed) == 1:
                key = next(iter(keyed))  # a lost seed of the one keyed configuration of its settings
            if len(by_label[label]) > 1:
                label = ", ".join(p for p in (label, f"config {key[:8] or 'unknown'}") if p)
            record["variant"] = label


def _plain(value: str | None, key: str = "") -> str:
    if value is None:
        return _block_entry(key, _UNSET_MEANS) or "unset"
    if key == "method.optimizer._target_":  # the class by its name, as the unset one reads AdamW
        return str(json.loads(value)).rsplit(".", 1)[-1]
    loaded = json.loads(value)
    return value if isinstance(loaded, (list, dict)) else str(loaded)


# ---------------------------------------------------------------- ordering


def method_sort_key(method: str, trained: bool | None = None) -> tuple[bool, int, str]:
    """Baselines before trained methods, each kind in METHOD_ORDER and then by name: a new method sorts among
    its own kind. ``trained``: whether the method trains weights (a row's ``trained``); None: from its name."""
    trained = is_fine_tuned(method) if trained is None else trained
    if method in METHOD_ORDER:
        return trained, METHOD_ORDER.index(method), ""
    return trained, len(METHOD_ORDER), method


def row_sort_key(row: dict[str, Any]) -> tuple:
    """A row's method, then its variant with numbers read as numbers (``r=8`` before ``r=16``)."""
    return *method_sort_key(row["method"], row.get("trained")), natural_key(row.get("variant") or "")


def natural_key(text: str) -> list:
    """``text`` split into its numbers (``8``, ``0.0002``, ``5e-05``), compared as numbers, and the text between
    them: ``r=8`` before ``r=16``, ``lr=5e-05`` before ``lr=0.0001``."""
    return [float(part) if i % 2 else part for i, part in enumerate(re.split(_NUMBER, text))]


_NUMBER = re.compile(r"(\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)")


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
        total = number(record.get("metrics", {}).get("total_params"))
        sizes.setdefault(model, None)
        if total is not None and (sizes[model] is None or total < sizes[model]):
            sizes[model] = int(total)
    return sizes


def model_sort_key(model: str, sizes: dict[str, int | None]) -> tuple[bool, int, str]:
    size = sizes.get(model)
    return size is None, size or 0, model


# ---------------------------------------------------------------- paired comparisons


def compare_rows(first: dict[str, Any], second: dict[str, Any], eval_set: str, metric: str = PRIMARY_METRIC,
                 *, alpha: float = ALPHA, interval: bool = False) -> PairedTest:
    """The paired test of two summary rows (first minus second) on ``eval_set`` under ``metric`` (a registry
    name such as ``flexible``), from the per-question scores of every seed of each row. Two pooled rows
    (``pooled_row``, built from pairs of rows model by model) get the pooled test of their models' pairs."""
    return compare_many([(first, second, eval_set, metric)], alpha=alpha, interval=interval)[0]


def compare_many(requests: Sequence[tuple[dict[str, Any], dict[str, Any], str, str]], *, alpha: float = ALPHA,
                 interval: bool = False) -> list[PairedTest]:
    """``compare_rows`` of each (first, second, eval_set, metric) of ``requests``, in order. Inside
    ``shared_paired_tests`` a test already computed for the same rows is not computed again, and the others
    are computed side by side in its threads."""
    shared = _SHARED.get()
    tests: list[PairedTest | None] = [None] * len(requests)
    waiting: dict[tuple, list[int]] = {}  # the requests of each test to compute, by its key
    calls: list[tuple[tuple, Any, tuple]] = []  # (key, the test or its call, the rows it reads)
    for index, (first, second, eval_set, metric) in enumerate(requests):
        key = _test_key(first, second, eval_set, metric, alpha, interval)
        if shared is not None and key in shared.tests:
            tests[index] = shared.tests[key][0]
        elif key in waiting:
            waiting[key].append(index)
        else:
            waiting[key] = [index]
            rows = (*constituents(first), *constituents(second))
            calls.append((key, _prepare_test(first, second, eval_set, metric, alpha, interval), rows))
    pending = [(key, call) for key, call, _ in calls if not isinstance(call, PairedTest)]
    if shared is not None and len(pending) > 1 and shared.workers > 1:
        computed = dict(zip((key for key, _ in pending), shared.map(call for _, call in pending)))
    else:
        computed = {key: call() for key, call in pending}
    for key, call, rows in calls:
        test = call if isinstance(call, PairedTest) else computed[key]
        if shared is not None:
            shared.tests[key] = (test, rows)  # the rows held, so that their ids name them while the report runs
        for index in waiting[key]:
            tests[index] = test
    return tests  # type: ignore[return-value]


def _test_key(first: dict[str, Any], second: dict[str, Any], eval_set: str, metric: str, alpha: float,
              interval: bool) -> tuple:
    """What a paired test is a function of: the rows (the pooled rows' own rows), the set, metric and level."""
    pooled = POOLED_FROM in first or POOLED_FROM in second
    return (pooled, tuple(map(id, constituents(first))), tuple(map(id, constituents(second))), eval_set, metric,
            alpha, interval)


def _prepare_test(first: dict[str, Any], second: dict[str, Any], eval_set: str, metric: str, alpha: float,
                  interval: bool) -> PairedTest | Callable[[], PairedTest]:
    """The per-question scores of both rows read, and the test on them to call; a PairedTest saying why there
    is none."""
    if POOLED_FROM in first or POOLED_FROM in second:
        pairs = list(zip(constituents(first), constituents(second)))
        if len(constituents(first)) != len(constituents(second)) or any(a["model"] != b["model"] for a, b in pairs):
            raise ValueError("pooled rows must be built from pairs of rows of the same models, in the same order")
        return _prepare_pooled(pairs, eval_set, metric, alpha, interval)
    sides = _pair_scores(first, second, eval_set, metric)
    if isinstance(sides, PairedTest):
        return sides
    return functools.partial(paired_test, sides[0], sides[1], alpha=alpha, interval=interval)


def compare_pooled(pairs: Sequence[tuple[dict[str, Any], dict[str, Any]]], eval_set: str,
                   metric: str = PRIMARY_METRIC, *, alpha: float = ALPHA, interval: bool = False) -> PairedTest:
    """The pooled test (stats.pooled_paired_test) of pairs of summary rows, one pair per model (first minus
    second): the mean over the models of each one's difference, every model weighted equally. Each pair must be
    scored alike (its two rows); the models may differ from one another in how they were scored."""
    call = _prepare_pooled(pairs, eval_set, metric, alpha, interval)
    return call if isinstance(call, PairedTest) else call()


def _prepare_pooled(pairs: Sequence[tuple[dict[str, Any], dict[str, Any]]], eval_set: str, metric: str,
                    alpha: float, interval: bool) -> PairedTest | Callable[[], PairedTest]:
    strata = []
    for first, second in pairs:
        sides = _pair_scores(first, second, eval_set, metric)
        if isinstance(sides, PairedTest):
            return no_test(f"{first['model']}: {sides.reason}")
        strata.append(sides)
    return functools.partial(pooled_paired_test, strata, alpha=alpha, interval=interval)


class _SharedTests:
    """The paired tests of one report (``shared_paired_tests``), by ``_test_key``, and the threads that compute
    a batch of them."""

    def __init__(self, workers: int):
        self.workers = workers
        self.tests: dict[tuple, tuple[PairedTest, tuple[dict[str, Any], ...]]] = {}
        self._pool: ThreadPoolExecutor | None = None

    def map(self, calls: Iterable[Callable[[], PairedTest]]) -> list[PairedTest]:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="paired-test")
        return list(self._pool.map(lambda call: call(), calls))

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()


# the report's own in each thread or task that writes one
_SHARED: contextvars.ContextVar[_SharedTests | None] = contextvars.ContextVar("shared_paired_tests", default=None)


def available_cpus() -> int:
    """The CPUs this process may run on (its affinity where the system says, else all of them)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


@contextlib.contextmanager
def shared_paired_tests(workers: int | None = None) -> Iterator[None]:
    """While it lasts, ``compare_rows`` and ``compare_many`` compute the paired test of the same two row objects
    on the same set, metric, alpha and interval once (a report's tables and several claims test the same pairs),
    and ``compare_many`` computes the tests of a batch in ``workers`` threads (default: ``available_cpus``, at
    most 32).
    Each test is a function of its rows' per-question scores and those arguments alone (its seed draws come from
    a fixed seed), so every result is the one computed on its own; most of a test's time is spent in scipy's
    Student t tails, which run outside the GIL. The rows must not change while it lasts. Nested, the outer one
    serves."""
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise ValueError(f"workers={workers!r}: expected a whole number of threads, at least 1")
    if _SHARED.get() is not None:
        yield
        return
    shared = _SharedTests(workers if workers is not None else min(32, available_cpus()))
    token = _SHARED.set(shared)
    try:
        yield
    finally:
        _SHARED.reset(token)
        shared.close()


def _pair_scores(first: dict[str, Any], second: dict[str, Any], eval_set: str,
                 metric: str) -> tuple[list, list] | PairedTest:
    """Each row's per-seed {question: correct} on ``eval_set``, or a no-test saying why they cannot be compared."""
    differing = scoring_differences(first, second)
    if differing:
        return no_test(f"the two rows {DIFFERENT_SCORING} ({differing}), so their answers are not comparable; "
                       "run both under the same scoring version and eval settings")
    sides = []
    for row in (first, second):
        paths = row.get("result_paths") or []
        if not paths:
            return no_test(f"{NO_DATA} ({row['model']} x {method_label(row)}: no result files named)")
        try:
            sides.append([question_scores(path, eval_set, metric) for path in paths])
        except NoQuestionData as exc:
            return no_test(f"{NO_DATA} ({exc})")
    return sides[0], sides[1]


POOLED_FROM = "pooled_from"
# what a pooled row keeps of its models' rows, when they agree (one method and variant on one dataset)
_POOLED_SAME = ("dataset", "method", "variant", "trained", "claims_metric", "delta_metric", "settings",
                "n_eval")


def pooled_row(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """A summary row standing for one method's rows of several models on one dataset: each accuracy the mean
    of the models' means, every model weighted equally (no interval over questions: the models' errors on a
    question are not independent); ``n`` the seeds of them all, ``not_completed`` their lost seeds by model,
    ``pooled_from`` the rows (``compare_rows`` tests two such rows model by model)."""
    if not rows:
        raise ValueError("a pooled row needs at least one row")
    row: dict[str, Any] = {key: rows[0].get(key) for key in _POOLED_SAME
                           if all(r.get(key) == rows[0].get(key) for r in rows)}
    models = [r["model"] for r in rows]
    row.update(model=f"{len(rows)} model{'s' if len(rows) != 1 else ''} pooled ({', '.join(models)})",
               n=sum(r["n"] for r in rows), seeds=[seed for r in rows for seed in r.get("seeds") or []],
               not_completed="; ".join(f"{r['model']}: {r['not_completed']}" for r in rows
                                       if r.get("not_completed")) or None,
               **{POOLED_FROM: list(rows)})
    for key in row_metrics(rows):
        means = [r.get(f"{key}_mean") for r in rows]
        row[f"{key}_mean"] = statistics.fmean(means) if all(m is not None for m in means) else None
    return row


def constituents(row: dict[str, Any]) -> list[dict[str, Any]]:
    """The rows a pooled row stands for; a row of its own for any other."""
    return list(row.get(POOLED_FROM) or [row])


def scoring_differences(first: dict[str, Any], second: dict[str, Any]) -> str:
    """What the two rows' ``scored_with`` settings differ in (``max_new_tokens 256 vs 512``); '' when they agree
    or both rows predate the record (result files without ``identity.scored_with``); a row without it against
    one with it cannot be shown to be scored alike."""
    a, b = first.get("scored_with"), second.get("scored_with")
    if not isinstance(a, dict) and not isinstance(b, dict):
        return ""
    if not isinstance(a, dict) or not isinstance(b, dict):
        return "scoring settings unknown for one row (a result file written before they were recorded)"
    return "; ".join(f"{key} {_plain_value(a.get(key))} vs {_plain_value(b.get(key))}"
                     for key in sorted(set(a) | set(b)) if a.get(key) != b.get(key))


def _plain_value(value: Any) -> str:
    return "unset" if value is None else value if isinstance(value, str) else json.dumps(value, sort_keys=True)


def scored_with(records: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """The records' ``identity.scored_with`` (one configuration's seeds share it), None for older files."""
    for record in records:
        identity = record.get("identity")
        if isinstance(identity, dict) and isinstance(identity.get("scored_with"), dict):
            return identity["scored_with"]
    return None


# ---------------------------------------------------------------- summary rows


def _max_or_none(values: Iterable[Any]) -> float | None:
    numbers = [v for v in (number(x) for x in values) if v is not None]
    return max(numbers) if numbers else None


def _mean_or_none(values: Iterable[Any]) -> float | None:
    numbers = [v for v in (number(x) for x in values) if v is not None]
    return statistics.fmean(numbers) if numbers else None


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


def recorded_claims_metric(record: Mapping[str, Any]) -> str | None:
    """The claims metric of a record's dataset as its config records it (None for a file written before datasets
    declared one)."""
    config = record.get("config")
    dataset = config.get("dataset") if isinstance(config, dict) else None
    if isinstance(dataset, dict) and isinstance(dataset.get("claims_metric"), str):
        return dataset["claims_metric"].removeprefix("accuracy_")
    return None


def claims_metric(records: Sequence[dict[str, Any]], overrides: Mapping[str, str] | None = None) -> str:
    """The metric claims read on the records' dataset: the one ``overrides`` names for it (``--claims-metric``, a
    sweep's config: ``check_claims_metrics``), else its ``claims_metric`` as their configs record it, else (a file
    written before datasets declared one) as the dataset's config says now, else the primary metric."""
    name = records[0]["dataset"] if records else None
    if overrides and name in overrides:
        return overrides[name]
    for record in records:
        if (recorded := recorded_claims_metric(record)) is not None:
            return recorded
    return dataset_claims_metric(name)


def eval_set_claims_metric(name: str, entries: Sequence[dict[str, Any]],
                           overrides: Mapping[str, str] | None = None) -> str:
    """The metric an out-of-domain set is read on: the one ``overrides`` names for it (as ``claims_metric``'s),
    else its ``claims_metric`` as the records' ``eval_sets`` entries record it (the cells read the set's config, a
    search-path folder's included, which a report run on its own may not find), else (files written before the
    entries recorded it) as the set's config says now."""
    if overrides and name in overrides:
        return overrides[name]
    recorded = Counter(metric for entry in entries if (metric := entry_claims_metric(entry)) is not None)
    if not recorded:
        return dataset_claims_metric(name)
    ranked = sorted(recorded, key=lambda metric: (-recorded[metric], metric))
    if len(ranked) > 1:
        log.warning("%s: the result files record different claims metrics for it (%s); its deltas are on %s", name,
                    ", ".join(f"{metric} in {recorded[metric]} of its entries" for metric in ranked), ranked[0])
    return ranked[0]


def configured_claims_metric(name: str | None) -> str | None:
    """The ``claims_metric`` of the dataset ``name`` as its config (conf/dataset/, or a folder of Hydra's search
    path once ``config_sources`` knows it) says now; None for a set without a config here, or whose config names
    none. A config that no longer reads raises."""
    from slm_sweep.data.specs import dataset_spec, known_datasets

    if name not in known_datasets():
        return None
    metric = dataset_spec(name).get("claims_metric")
    return str(metric).removeprefix("accuracy_") if metric else None


def dataset_claims_metric(name: str | None) -> str:
    """The ``claims_metric`` of the dataset ``name`` as its config (conf/dataset/, or a folder of Hydra's search
    path once ``config_sources`` knows it) says now; the primary metric, with a warning, for a dataset without a
    config here or whose config no longer reads. What records that name no claims metric are read on."""
    from slm_sweep.config_sources import where
    from slm_sweep.data.specs import known_datasets

    try:
        configured = configured_claims_metric(name)
    except Exception:  # noqa: BLE001 - a dataset file that no longer reads: the report still runs
        log.warning("dataset %s: its config cannot be read; its claims metric is taken as %s", name, PRIMARY_METRIC)
        return PRIMARY_METRIC
    if configured is not None or name in known_datasets():
        return configured or PRIMARY_METRIC
    if name is not None:
        log.warning("dataset %s: its result files record no claims metric and %s has no config of it; its deltas "
                    "are on %s, which may not be the metric it was meant to be read on", name, where("dataset"),
                    PRIMARY_METRIC)
    return PRIMARY_METRIC


def delta_metric(claimed: str, metric_names: Sequence[str], where: str) -> str:
    """What a row's deltas, their tests and its marks are on: the claims metric of the set it is scored on (so that
    the summary says what the claims say), else, when the results have no accuracy of it, the primary metric."""
    if accuracy_key(claimed) in metric_names:
        return claimed
    log.warning("%s: claims_metric %r is in none of the result files (%s); its deltas are on %s", where, claimed,
                ", ".join(m.removeprefix("accuracy_") for m in metric_names), PRIMARY_METRIC)
    return PRIMARY_METRIC


def entry_claims_metric(entry: Any) -> str | None:
    """The claims metric an out-of-domain set's ``eval_sets`` entry records (None where it records none)."""
    if isinstance(entry, dict) and isinstance(entry.get("claims_metric"), str):
        return entry["claims_metric"].removeprefix("accuracy_")
    return None


def held_metrics(records: Iterable[dict[str, Any]], *, in_domain: bool = True,
                 out_of_domain: bool = True) -> dict[str, set[str]]:
    """Per dataset and out-of-domain set of the completed ``records``, the metrics (``flexible``) some record holds
    an accuracy of on it: what a set's deltas can be read on. ``in_domain``, ``out_of_domain``: whether the
    records' own scores, and their ``eval_sets`` entries, count."""
    held: dict[str, set[str]] = defaultdict(set)

    def add(name: Any, scores: Any) -> None:
        if isinstance(name, str) and isinstance(scores, dict):
            held[name].update(k.removeprefix("accuracy_") for k, v in scores.items()
                              if k.startswith("accuracy_") and len(k) > len("accuracy_") and number(v) is not None)

    for record in labelled_records(records):
        if in_domain:
            add(record.get("dataset"), record.get("metrics"))
        for eval_set, entry in (record.get("eval_sets") or {}).items() if out_of_domain else ():
            add(eval_set, entry)
    return dict(held)


def check_claims_metrics(overrides: Mapping[str, str] | None, records: Iterable[dict[str, Any]], *,
                         in_domain: bool = True, out_of_domain: bool = True) -> dict[str, str]:
    """``overrides`` ({dataset or out-of-domain set: metric}, ``accuracy_`` prefixes dropped) checked against the
    completed records: a ReportError names a set the records have no row of, or a metric none of that set's records
    holds an accuracy of (and the metrics they hold). ``in_domain``, ``out_of_domain``: which rows of a set the
    mapping is for (``held_metrics``: the end-of-sweep summary gives a dataset's and an out-of-domain set's apart)."""
    if not overrides:
        return {}
    held = held_metrics(records, in_domain=in_domain, out_of_domain=out_of_domain)
    kind = " or ".join(k for k, on in (("dataset", in_domain), ("out-of-domain set", out_of_domain)) if on)
    checked = {}
    for name, metric in overrides.items():
        metric = str(metric).removeprefix("accuracy_")
        if name not in held:
            raise ReportError(f"claims metric {name}={metric}: no {kind} {name!r} in the "
                              f"completed results; they have: {', '.join(sorted(held)) or 'none'}")
        if metric not in held[name]:
            raise ReportError(f"claims metric {name}={metric}: the results on {name} hold no accuracy of {metric!r}; "
                              f"they hold: {', '.join(sorted(held[name]))}")
        checked[name] = metric
    return checked


# Where the claims metrics of a report that reads other ones than its records recorded come from, and how its
# summary says so: why
CLAIMS_METRIC_OPTION = "option"  # python -m slm_sweep.report --claims-metric NAME=METRIC
# the end-of-sweep summary: the sweep's config (a dataset's, its jobs'; an out-of-domain set's, its config now), over
# results that recorded another one (cells that reused their finished result, or ran in an earlier grid of the folder)
CLAIMS_METRIC_SWEEP = "sweep"
CLAIMS_METRIC_SOURCES = {CLAIMS_METRIC_OPTION: "as --claims-metric asks",
                         CLAIMS_METRIC_SWEEP: "as this sweep's config says"}


def claims_metric_notes(overrides: Mapping[str, str], records: Iterable[dict[str, Any]],
                        source: str = CLAIMS_METRIC_OPTION, *, in_domain: bool = True,
                        out_of_domain: bool = True) -> list[str]:
    """One line per set of ``overrides`` (checked): ``mysums: deltas on last_digit as --claims-metric asks; its 2
    results recorded flexible``, counting the completed records (in-domain, unless not ``in_domain``) and
    ``eval_sets`` entries (out of domain, unless not ``out_of_domain``) that recorded another claims metric for it.
    A mapping for one kind of rows names it where the set has rows of the other kind too (``svamp (out of
    domain): ...``)."""
    why = CLAIMS_METRIC_SOURCES[source]
    completed = labelled_records(records)
    notes = []
    for name, metric in overrides.items():
        own = [recorded_claims_metric(r) for r in completed if r.get("dataset") == name]
        ood = [entry_claims_metric(entry) for r in completed
               for eval_set, entry in (r.get("eval_sets") or {}).items() if eval_set == name]
        recorded = Counter(m or "no claims metric"
                           for m in [*(own if in_domain else ()), *(ood if out_of_domain else ())])
        label = name
        if not out_of_domain and ood:
            label = f"{name} (in-domain)"
        elif not in_domain and own:
            label = f"{name} (out of domain)"
        other = {m: n for m, n in recorded.items() if m != metric}
        if other:
            listed = ", ".join(f"{m} ({n})" if len(other) > 1 else m for m, n in sorted(other.items()))
            n = sum(other.values())
            notes.append(f"{label}: deltas on {metric} {why}; its {n} result{'s' * (n != 1)} recorded {listed}")
        else:
            notes.append(f"{label}: deltas on {metric} {why}, the claims metric its results recorded")
    return notes


def model_source(records: Sequence[dict[str, Any]]) -> str | None:
    """The records' ``model.source`` (hub, gguf, random, tiny), when their configs say."""
    for record in records:
        model = (record.get("config") or {}).get("model") if isinstance(record.get("config"), dict) else None
        if isinstance(model, dict) and model.get("source"):
            return str(model["source"])
    return None


def _with_variants(records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """One record per cell, any status, each with its ``variant``. Variants are told apart over every cell, the
    ones that did not complete included, so that a lost seed is named on its own configuration's row."""
    unique, _ = deduplicate(records)
    assign_variants(unique)
    return unique


def labelled_records(records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """The completed records, one per cell, each with its ``variant`` (``_with_variants``)."""
    return [r for r in _with_variants(records) if r.get("status") == COMPLETED]


def not_completed(records: Iterable[dict[str, Any]]) -> dict[tuple[str, str, str, str], str]:
    """Per dataset × model × method × variant, the cells that did not complete ("seed 1 diverged; seed 2
    failed"): a row's mean is over its completed seeds only, so a method whose runs diverge must say how many it
    lost."""
    found: dict[tuple[str, str, str, str], list[tuple[Any, str]]] = defaultdict(list)
    for record in _with_variants(records):
        if record.get("status") != COMPLETED:
            key = (record.get("dataset"), record.get("model"), record.get("method"), record["variant"])
            found[key].append((record.get("seed"), str(record.get("status"))))
    return {key: "; ".join(f"seed {seed} {status}" for seed, status in sorted(cells, key=lambda c: str(c[0])))
            for key, cells in found.items()}


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
