"""Statistics of the report: spread over seeds, intervals over test questions, paired tests between two rows.

Pure Python and numpy (the report imports no torch).

- ``describe``: mean, sample standard deviation and 95% Student-t half-width over seeds.
- ``wilson_interval``: 95% Wilson score interval of an accuracy over the n test questions.
- ``mcnemar_exact``: the exact two-sided McNemar test, from the binomial distribution of the discordant pairs.
- ``paired_bootstrap``: resamples the test questions (the same draw for both sides) and, independently, each
  side's seeds; gives a two-sided p-value for "no difference" and a percentile interval of the difference.
- ``tango_paired_interval``: the score interval of a difference of two accuracies on the same questions (one seed
  each), which keeps a width when no question is discordant.
- ``paired_test``: pairs two rows' per-question scores by question and picks the test: exact McNemar when each
  side is a single seed, the paired bootstrap when either side has several.
- ``holm``: Holm's step-down adjustment of a family of p-values, for verdicts that hold jointly.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache

ALPHA = 0.05
BOOTSTRAP_RESAMPLES = 10_000
BOOTSTRAP_SEED = 20240601
MCNEMAR = "exact McNemar"
BOOTSTRAP = "paired bootstrap"
HOLM = "holm"
NO_CORRECTION = "none"
CORRECTIONS = (HOLM, NO_CORRECTION)

# Two-sided 95% Student-t critical values for df = 1..30, used when scipy is not installed.
_T_975 = (
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
    2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
    2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
)  # fmt: skip
_Z_975 = 1.96


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
    """(mean, sample std, 95% CI half-width) of ``values``; (None, None, None) when empty.

    A single value has std 0 and no interval (None): one seed says nothing about the spread over seeds."""
    n = len(values)
    if n == 0:
        return None, None, None
    mean = statistics.fmean(values)
    if n == 1:
        return mean, 0.0, None
    std = statistics.stdev(values)
    return mean, std, t_critical(n - 1) * std / math.sqrt(n)


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


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value: ``b`` questions only the first side gets right, ``c`` only the second.

    Under "no difference" each of the n = b + c discordant questions is the first side's with probability 1/2,
    so p = min(1, 2 · P(Binomial(n, 1/2) <= min(b, c)))."""
    if b < 0 or c < 0:
        raise ValueError(f"discordant counts must not be negative: b={b}, c={c}")
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(b, c) + 1))
    return min(1.0, 2 * tail / 2**n)


def tango_paired_interval(only_first: int, only_second: int, questions: int,
                          alpha: float = ALPHA) -> tuple[float, float]:
    """(1 - alpha) interval of the difference of two accuracies measured on the same ``questions``: Tango's
    asymptotic score interval for paired proportions (Stat. Med. 1998; among the intervals Fagerland, Lydersen
    and Laake, Stat. Med. 2014, recommend). It depends on the discordant questions only (``only_first`` right on
    the first side alone, ``only_second`` on the second alone) and inverts the score test of each difference d:
    the interval is every d with |Z(d)| <= z, Z(d) = (b - c - n d) / sqrt(n (2 q + d (1 - d))), q the maximum
    likelihood of "second side alone right" under d. It keeps a width when no question is discordant, at any
    accuracy: 0 of n discordant gives +-z^2 / (n + z^2), about +-16 points on 20 questions, +-0.3 on 1319."""
    b, c, n = only_first, only_second, questions
    if min(b, c) < 0 or b + c > n or n == 0:
        raise ValueError(f"need 0 <= only_first + only_second <= questions > 0, got {b}, {c}, {n}")
    z = statistics.NormalDist().inv_cdf(1 - alpha / 2)

    def score(d: float) -> float:
        big_b = -b - c + (2 * n - b + c) * d
        small_c = -c * d * (1 - d)
        q = (math.sqrt(max(0.0, big_b * big_b - 8 * n * small_c)) - big_b) / (4 * n)
        variance = n * (2 * q + d * (1 - d))
        gap = b - c - n * d
        if variance <= 1e-300:
            return math.copysign(math.inf, gap) if gap else 0.0
        return gap / math.sqrt(variance)

    def crossing(low: float, high: float, target: float) -> float:
        # score falls as d rises: bisect for score(d) = target within [low, high]
        for _ in range(100):
            middle = (low + high) / 2
            if score(middle) > target:
                low = middle
            else:
                high = middle
        return (low + high) / 2

    observed = (b - c) / n
    lower = -1.0 if score(-1.0) <= z else crossing(-1.0, observed, z)
    upper = 1.0 if score(1.0) >= -z else crossing(observed, 1.0, -z)
    return lower, upper


@dataclass(frozen=True)
class Bootstrap:
    difference: float  # mean of the first side minus mean of the second, over seeds and questions
    p_value: float
    ci_low: float
    ci_high: float
    resamples: int
    seed: int


def paired_bootstrap(a: Sequence[Sequence[bool]], b: Sequence[Sequence[bool]], *,
                     resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED,
                     alpha: float = ALPHA) -> Bootstrap:
    """Paired bootstrap of the difference in accuracy between two sides scored on the same questions.

    ``a`` and ``b`` hold one row per seed, one column per question (the same questions in the same order on
    both sides). Each resample draws the questions with replacement, the same draw for both sides (the pairing),
    and each side's seeds with replacement, independently (seeds of two methods are separate runs). The p-value
    is two-sided, from the resampled differences centred on the observed one (the null distribution):
    (1 + #{|d* - d| >= |d|}) / (1 + resamples). The interval is the (alpha/2, 1 - alpha/2) percentile interval.
    The same inputs and seed give the same result."""
    import numpy as np

    first = np.asarray(a, dtype=bool)
    second = np.asarray(b, dtype=bool)
    if first.ndim != 2 or second.ndim != 2 or first.shape[1] != second.shape[1] or first.shape[1] == 0:
        raise ValueError(f"need seeds × questions arrays over the same questions, got {first.shape} and "
                         f"{second.shape}")
    if resamples < 1:
        raise ValueError(f"resamples={resamples} must be at least 1")
    questions = first.shape[1]
    observed = float(first.mean() - second.mean())
    # A question enters the statistic only through its column of results (every seed of both sides), so drawing
    # questions with replacement is drawing how many of each distinct column there are: a multinomial over the
    # distinct columns (at most 2^seeds of them) instead of over every question. Same distribution, far faster.
    columns, counts = np.unique(np.vstack([first, second]), axis=1, return_counts=True)
    rng = np.random.default_rng(seed)
    drawn = rng.multinomial(questions, counts / questions, size=resamples)  # resample × distinct column
    means = []
    for side in (columns[: first.shape[0]], columns[first.shape[0]:]):
        per_seed = drawn @ side.T.astype(np.float64) / questions  # resample × seed: accuracy on the drawn questions
        chosen = rng.integers(0, side.shape[0], size=(resamples, side.shape[0]))  # the seeds, with replacement
        means.append(np.take_along_axis(per_seed, chosen, axis=1).mean(axis=1))
    differences = means[0] - means[1]
    extreme = int(np.count_nonzero(np.abs(differences - observed) >= abs(observed) - 1e-12))
    low, high = np.quantile(differences, [alpha / 2, 1 - alpha / 2])
    return Bootstrap(observed, (1 + extreme) / (1 + resamples), float(low), float(high), resamples, seed)


def holm(p_values: Sequence[float | None]) -> list[float | None]:
    """Holm's step-down adjusted p-values (Scand. J. Statist. 1979), in the order given; None (no test) stays
    None and is not counted in the family. With the m p-values sorted, the i-th smallest becomes
    max over j <= i of min(1, (m - j + 1) * p_(j)); rejecting where the adjusted value is below alpha keeps the
    chance of any false rejection in the family at most alpha, whatever the dependence between the tests."""
    tested = sorted((p, i) for i, p in enumerate(p_values) if p is not None)
    m = len(tested)
    adjusted: list[float | None] = [None] * len(p_values)
    running = 0.0
    for rank, (p, index) in enumerate(tested):
        if not 0 <= p <= 1:
            raise ValueError(f"p-value {p!r} is not in [0, 1]")
        running = max(running, min(1.0, (m - rank) * p))
        adjusted[index] = running
    return adjusted


@dataclass(frozen=True)
class PairedTest:
    """A paired comparison of two rows (first minus second) on the questions both scored."""

    test: str | None  # MCNEMAR, BOOTSTRAP, or None when there is no per-question data
    p_value: float | None
    difference: float | None  # mean accuracy of the first side minus the second, on the paired questions
    ci_low: float | None = None  # (1 - alpha) interval of the difference (Tango one seed each, else bootstrap)
    ci_high: float | None = None
    n_questions: int = 0
    seeds: tuple[int, int] = (0, 0)
    discordant: tuple[int, int] | None = None  # (first only right, second only right), single seeds
    reason: str | None = None  # why there is no test

    def significant(self, alpha: float = ALPHA) -> bool:
        return self.p_value is not None and self.p_value < alpha

    def describe(self) -> str:
        """``exact McNemar, p=0.031 (b=0, c=6, 200 questions)`` or why there is no test."""
        if self.test is None:
            return f"no test: {self.reason}"
        detail = (f"b={self.discordant[0]}, c={self.discordant[1]}, " if self.discordant else
                  f"{self.seeds[0]} vs {self.seeds[1]} seeds, ")
        return f"{self.test}, p={format_p(self.p_value)} ({detail}{self.n_questions} questions)"


def format_p(p: float | None) -> str:
    if p is None:
        return "–"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def no_test(reason: str) -> PairedTest:
    return PairedTest(None, None, None, reason=reason)


def paired_test(a: Sequence[Mapping[Hashable, bool]], b: Sequence[Mapping[Hashable, bool]], *,
                alpha: float = ALPHA, interval: bool = False, resamples: int = BOOTSTRAP_RESAMPLES,
                seed: int = BOOTSTRAP_SEED) -> PairedTest:
    """Compare two rows given as one {question key: correct} per seed, on the questions every seed of both
    scored. Exact McNemar when both sides are one seed, else the paired bootstrap; ``interval`` also computes an
    interval of the difference for single seeds (Tango's paired score interval)."""
    if not a or not b:
        return no_test("a side has no seeds")
    common = set(a[0])
    for scores in (*a[1:], *b):
        common &= set(scores)
    if not common:
        return no_test("the two sides scored no question in common")
    keys = sorted(common)
    first = [[bool(s[k]) for k in keys] for s in a]
    second = [[bool(s[k]) for k in keys] for s in b]
    seeds = (len(a), len(b))
    if seeds == (1, 1):
        only_first = sum(x and not y for x, y in zip(first[0], second[0]))
        only_second = sum(y and not x for x, y in zip(first[0], second[0]))
        low = high = None
        if interval:
            low, high = tango_paired_interval(only_first, only_second, len(keys), alpha)
        return PairedTest(MCNEMAR, mcnemar_exact(only_first, only_second), (only_first - only_second) / len(keys),
                          low, high, len(keys), seeds, (only_first, only_second))
    boot = paired_bootstrap(first, second, resamples=resamples, seed=seed, alpha=alpha)
    return PairedTest(BOOTSTRAP, boot.p_value, boot.difference, boot.ci_low, boot.ci_high, len(keys), seeds)
