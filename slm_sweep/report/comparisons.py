"""Paired comparisons of summary rows: the paired test of two rows (or of two pooled rows, model by model) from
the per-question scores of their seeds, and a report's tests computed once and side by side
(``shared_paired_tests``)."""

from __future__ import annotations

import contextlib
import contextvars
import functools
import json
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from slm_sweep.scoring import PRIMARY_METRIC

from .collect import NoQuestionData, question_scores
from .ordering import method_label
from .stats import ALPHA, DIFFERENT_SCORING, PairedTest, no_test, paired_test, pooled_paired_test

NO_DATA = "no per-question data"


def compare_rows(first: dict[str, Any], second: dict[str, Any], eval_set: str, metric: str = PRIMARY_METRIC,
                 *, alpha: float = ALPHA, interval: bool = False) -> PairedTest:
    """The paired test of two summary rows (first minus second) on ``eval_set`` under ``metric`` (a registry
    name such as ``flexible``), from the per-question scores of every seed of each row. Two pooled rows
    (``claim_pooling.pooled_row``, built from pairs of rows model by model) get the pooled test of their models'
    pairs."""
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


# the key of a pooled row (claim_pooling.pooled_row) that holds the rows it stands for
POOLED_FROM = "pooled_from"


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
