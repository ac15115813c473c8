"""Statistics of the report: spread over seeds, intervals over test questions, paired tests between two rows.

Pure Python, numpy and scipy (the report imports no torch).

- ``describe``: mean, sample standard deviation and 95% Student-t half-width over seeds.
- ``wilson_interval``: 95% Wilson score interval of an accuracy over the n test questions.
- ``mcnemar_exact``: the exact two-sided McNemar test, from the binomial distribution of the discordant pairs.
- ``seeds_and_questions_test``: the difference of two rows of which one has several seeds, with the questions'
  paired noise and each side's spread over seeds as separate parts of its error (Behrens-Fisher form), never more
  significant than the exact sign-flip test of the same per-question differences.
- ``tango_paired_interval``: the score interval of a difference of two accuracies on the same questions (one seed
  each), which keeps a width when no question is discordant.
- ``conditional_exact_interval``: the interval that inverts the exact McNemar test (Clopper-Pearson on the share
  of the discordant questions the first side gets right); ``paired_difference_interval``, the interval of a
  one-seed-each difference, is the hull of it and Tango's, so that it excludes 0 exactly when the exact McNemar
  p is below alpha (Tango's alone lies above 0 beside p = 0.0625 for b=5, c=0 of 200 questions).
- ``paired_test``: pairs two rows' per-question scores by question and picks the test: exact McNemar when each
  side is a single seed, the seeds-and-questions test when either side has several.
- ``pooled_paired_test``: the same test of the mean over models of each model's difference (a claim with
  ``pool: models``), the models' rows on the same questions.
- ``holm``: Holm's step-down adjustment of a family of p-values, for verdicts that hold jointly.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache

ALPHA = 0.05
SEED_TEST_DRAWS = 10_000
SEED_TEST_SEED = 20240601
MCNEMAR = "exact McNemar"
SEEDS_AND_QUESTIONS = "paired seeds-and-questions test"
POOLED = "paired seeds-and-questions test, pooled over models"
DIFFERENT_QUESTIONS = "scored different questions"
DIFFERENT_SCORING = "were scored differently"
HOLM = "holm"
NO_CORRECTION = "none"
CORRECTIONS = (HOLM, NO_CORRECTION)
_Z_975 = 1.96


@cache
def t_critical(df: float) -> float:
    """Two-sided 95% critical value of Student's t with ``df`` degrees of freedom."""
    if df < 1:
        raise ValueError("df must be at least 1")
    from scipy.stats import t

    return float(t.ppf(0.975, df))


def welch_satterthwaite(parts: Sequence[tuple[float, float]]) -> float | None:
    """The degrees of freedom of a sum of variance estimates, each ``(variance, its degrees of freedom)``: the sum of
    the variances squared over the sum of each one's square over its degrees of freedom. None when no variance is
    above 0 with at least 1 degree of freedom (the others are left out)."""
    parts = [(variance, df) for variance, df in parts if variance > 0 and df >= 1]
    if not parts:
        return None
    return sum(v for v, _ in parts) ** 2 / sum(v**2 / df for v, df in parts)


def describe(values: Sequence[float]) -> tuple[float | None, float | None, float | None]:
    """(mean, sample std, 95% CI half-width) of ``values``; (None, None, None) when empty.

    A single value has neither std nor interval (None): one seed says nothing about the spread over seeds, and a
    std of 0 would read as seeds that agree."""
    n = len(values)
    if n == 0:
        return None, None, None
    if not all(math.isfinite(v) for v in values):
        raise ValueError(f"values to describe must be finite numbers, got {list(values)!r}")
    mean = statistics.fmean(values)
    if n == 1:
        return mean, None, None
    std = statistics.stdev(values)
    return mean, std, t_critical(n - 1) * std / math.sqrt(n)


def wilson_interval(p: float | None, n: int | None, z: float = _Z_975) -> tuple[float | None, float | None]:
    """95% Wilson score interval of an accuracy ``p`` measured on ``n`` questions: the test set's own sampling
    noise (about ±2.7 points at 50 % on GSM8K's 1319 questions), which no number of seeds averages away."""
    if p is None or not n:
        return None, None
    if not math.isfinite(p):
        raise ValueError(f"accuracy {p!r} is not a finite number")
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


def _check_discordant(only_first: int, only_second: int, questions: int) -> None:
    if min(only_first, only_second) < 0 or only_first + only_second > questions or questions == 0:
        raise ValueError(f"need 0 <= only_first + only_second <= questions > 0, "
                         f"got {only_first}, {only_second}, {questions}")


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
    _check_discordant(b, c, n)
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

    observed = (b - c) / n  # the score falls as d rises
    lower = -1.0 if score(-1.0) <= z else falling_crossing(score, z, -1.0, observed)
    upper = 1.0 if score(1.0) >= -z else falling_crossing(score, -z, observed, 1.0)
    return lower, upper


def conditional_exact_interval(only_first: int, only_second: int, questions: int,
                               alpha: float = ALPHA) -> tuple[float, float] | None:
    """(1 - alpha) interval of a one-seed-each difference that inverts the exact McNemar test: given the m = b + c
    discordant questions, the Clopper-Pearson interval [pi_L, pi_U] of pi, the share of them the first side gets
    right (b of m), mapped to the difference (b - c) / n = m (2 pi - 1) / n. It excludes 0 (pi = 1/2) exactly when
    the two-sided exact McNemar p is below alpha. None without a discordant question (nothing to condition on)."""
    b, c, n = only_first, only_second, questions
    _check_discordant(b, c, n)
    m = b + c
    if m == 0:
        return None
    from scipy.stats import beta

    low = float(beta.ppf(alpha / 2, b, c + 1)) if b > 0 else 0.0
    high = float(beta.ppf(1 - alpha / 2, b + 1, c)) if c > 0 else 1.0
    return m * (2 * low - 1) / n, m * (2 * high - 1) / n


def exact_hull(asymptotic: tuple[float, float], exact: tuple[float, float] | None, p_value: float,
               alpha: float) -> tuple[float, float]:
    """The hull (union) of an asymptotic interval and an ``exact`` one that excludes 0 exactly when its test's
    ``p_value`` is below ``alpha``, holding 0 exactly when that p does not reject. The asymptotic interval only
    widens it: where the exact test rejects and the asymptotic interval crosses 0, the bound on 0's side is the
    exact one's (Tango's crosses 0 beside an exact McNemar p below alpha only at alphas under 0.001, b=0, c=12 at
    0.0005, and beside the sign-flip test of fractional differences, more powerful than McNemar's on their sums,
    often). ``exact`` None: the asymptotic interval alone."""
    low, high = asymptotic
    if exact is not None:
        low, high = min(low, exact[0]), max(high, exact[1])
        if p_value < alpha and low <= 0 <= high:
            low, high = (exact[0], high) if exact[0] > 0 else (low, exact[1])
    if p_value >= alpha:  # at a tie (p = alpha) an exact bound lies on 0 up to rounding
        low, high = min(low, 0.0), max(high, 0.0)
    return low, high


def paired_difference_interval(only_first: int, only_second: int, questions: int,
                               alpha: float = ALPHA, p_value: float | None = None) -> tuple[float, float]:
    """(1 - alpha) interval of a one-seed-each difference: the hull of Tango's score interval (a width without
    discordant questions) and the conditional exact interval that inverts the exact McNemar test, so that it
    excludes 0 exactly when the exact McNemar p (``p_value``, else computed) is below alpha. Tango's alone can
    exclude 0 beside an exact p above alpha (b=5, c=0: p = 0.0625, Tango's 95% interval above 0)."""
    if p_value is None:
        p_value = mcnemar_exact(only_first, only_second)
    return exact_hull(tango_paired_interval(only_first, only_second, questions, alpha),
                      conditional_exact_interval(only_first, only_second, questions, alpha), p_value, alpha)


def falling_crossing(function, target: float, low: float, high: float, steps: int = 100) -> float:
    """Where a function that falls from above ``target`` at ``low`` to below it at ``high`` crosses it
    (bisection)."""
    for _ in range(steps):
        middle = (low + high) / 2
        if function(middle) > target:
            low = middle
        else:
            high = middle
    return (low + high) / 2


def seed_variance(scores) -> float:
    """The variance of a side's mean accuracy over its seeds, as its seed means show it: their sample variance
    divided by the number of seeds, with seeds - 1 degrees of freedom. ``scores`` is a numpy array, seeds ×
    questions (0/1). It holds the seeds' own spread and the questions' noise inside each seed's mean; the test
    takes the latter out of its question part (``within_seed_noise``), where it is estimated on many degrees of
    freedom, not out of this one, where subtracting it from a two-degree estimate and flooring the rest at 0 made
    the test reject too often at small alphas. 0 for a single seed: one run says nothing about the spread over
    runs."""
    seeds, _ = scores.shape
    if seeds < 2:
        return 0.0
    spread = float(scores.mean(axis=1).var(ddof=1))
    return spread / seeds if spread > 1e-15 else 0.0  # not float noise (identical seeds give about 1e-34)


def within_seed_noise(scores) -> float:
    """The questions' noise inside a side's seed-averaged mean: the residual mean square of a two-way
    decomposition of its seeds × questions scores (seeds and questions crossed), divided by seeds × questions.
    Part of both ``seed_variance`` and the variance of the per-question differences, so counted once. 0 for a
    single seed (its noise is the question part's own)."""
    seeds, questions = scores.shape
    if seeds < 2 or questions < 2:
        return 0.0
    centred = scores - scores.mean(axis=1)[:, None] - scores.mean(axis=0)[None, :] + scores.mean()
    residual = float((centred**2).sum()) / ((seeds - 1) * (questions - 1))
    return residual / (seeds * questions)


_DIRECT_CONVOLUTION_LIMIT = 20_000_000  # products of lengths np.convolve does quickly and exactly; FFT above


def sign_flip_distribution(differences, scale: int):
    """The exact distribution of sum(s_i * |d_i|) over independent fair signs s_i, for per-question differences
    ``d_i`` that are multiples of 1 / ``scale`` (a difference of two means over m and k seeds: scale m * k): the
    randomisation distribution of the paired difference under "no difference" on each question. Returns (sorted
    values, their probabilities), values in the units of ``differences``. One seed a side, it is exact
    McNemar's. A large grid (pooled models with unequal seed counts: a scale in the thousands) is convolved by
    FFT, whose rounding (about 1e-16 of the largest probability) is cut off: a tail it changes by less than
    1e-12."""
    import numpy as np
    from scipy.signal import fftconvolve
    from scipy.stats import binom

    weights = np.rint(np.abs(np.asarray(differences, dtype=np.float64)) * scale).astype(np.int64)
    weights = weights[weights > 0]
    step = int(np.gcd.reduce(weights)) if len(weights) else 1  # sums are multiples of it: a grid step times shorter
    weights //= step
    dist, rounded = np.ones(1), False  # over sums from -total to total, in steps of ``step``
    for weight, count in zip(*np.unique(weights, return_counts=True)):
        # count questions of this weight: weight * (2 j - count), j ~ Binomial(count, 1/2)
        part = np.zeros(2 * weight * count + 1)
        part[:: 2 * weight] = binom.pmf(np.arange(count + 1), count, 0.5)
        if len(dist) * len(part) > _DIRECT_CONVOLUTION_LIMIT:
            dist, rounded = fftconvolve(dist, part), True
        else:
            dist = np.convolve(dist, part)
    total = (len(dist) - 1) // 2
    keep = dist > (dist.max() * 1e-15 if rounded else 0)
    return np.arange(-total, total + 1)[keep] * step / scale, dist[keep] / dist[keep].sum()


@dataclass(frozen=True)
class SeedsAndQuestions:
    difference: float  # mean of the first side minus mean of the second, over seeds and questions
    p_value: float
    ci_low: float | None  # None unless asked for
    ci_high: float | None
    question_se: float  # the paired standard error over questions
    seed_se: tuple[float, float]  # each side's seed part of the standard error (0 for a single seed)


def seeds_and_questions_test(a: Sequence[Sequence[bool]], b: Sequence[Sequence[bool]], *,
                             draws: int = SEED_TEST_DRAWS, seed: int = SEED_TEST_SEED,
                             alpha: float = ALPHA, interval: bool = True) -> SeedsAndQuestions:
    """Paired test of the difference in accuracy between two sides scored on the same questions, where a side
    holds several seeds (training runs) whose spread the test must count.

    ``a`` and ``b`` hold one row per seed, one column per question (the same questions in the same order on
    both sides). The difference d of the two means has three independent sources of error: the questions
    (paired: the standard error of the per-question difference of the two sides' seed means, with questions - 1
    degrees of freedom, less the questions' noise inside the seed means that the seed parts hold) and each side's
    seeds (``seed_variance``, with seeds - 1 degrees of freedom). Under "no
    difference", d is distributed as the sum of those standard errors each times a Student-t variable of its
    degrees of freedom (the Behrens-Fisher form, generalised to three parts); the two-sided p-value is
    P(|sum| >= |d|) and the interval d +- c with P(|sum| >= c) = alpha. The seed parts are drawn (``draws`` of
    them, a fixed ``seed``: the same inputs give the same result) and the question part is integrated exactly.
    Without seed spread the question part is the exact sign-flip distribution of the per-question differences (for
    seeds that answered alike, exact McNemar's), and the interval is as for one seed a side: the hull of Tango's on
    the seeds' mean discordance and the test's exact interval (``exact_hull``); with spread, p is never below that
    sign-flip test's p (the larger of the two) and the interval never narrower than its, so that seed spread on the
    same per-question differences cannot make a difference more significant. Either way the interval excludes 0
    exactly when p < alpha.

    Unlike resampling three seeds with replacement (which shrinks their spread by a third and reads it on normal
    quantiles), this holds its level with two or three seeds, also at the small alphas a Holm family or a
    Bonferroni interval tests at: under no difference it rejected at most 0.051, 0.007 and 0.004 of 2000 simulated
    comparisons at alpha 0.05, 0.01 and 0.005 (3 seeds against 1 or 3, 2 against 1, seed spreads 0-6 points;
    ``bench/stats_calibration.py``, docs/results.md), conservative where seeds agree."""
    return pooled_seeds_and_questions_test([(a, b)], draws=draws, seed=seed, alpha=alpha, interval=interval)


def pooled_seeds_and_questions_test(strata: Sequence[tuple[Sequence[Sequence[bool]], Sequence[Sequence[bool]]]], *,
                                    draws: int = SEED_TEST_DRAWS, seed: int = SEED_TEST_SEED,
                                    alpha: float = ALPHA, interval: bool = True) -> SeedsAndQuestions:
    """``seeds_and_questions_test`` of the mean over ``strata`` of each stratum's difference, every stratum
    weighted equally: one (a, b) pair of seeds × questions arrays per model, all on the same questions in the
    same order. The strata answer the same questions, so their errors on one question are correlated: the
    per-question difference is averaged over the strata before its paired part is taken. Each stratum's sides
    were trained apart, so each has its own seed variance, divided by the number of strata squared. Over several
    strata the seed parts are one part, of Welch-Satterthwaite's degrees of freedom (the sum of the seed variances
    squared over the sum of each one's square over its degrees of freedom: 20 for ten sides of three seeds that
    spread alike, fewer where one side spreads more): a sum of ten Student-t variables of two degrees of freedom
    each, as the two sides of one model are drawn, has tails that do not shrink as the strata add up, and would
    give the pooled test no more power than one model's. The models are fixed, not drawn: the test is of these
    models' mean difference, and says nothing of other models. With one stratum it is
    ``seeds_and_questions_test``, to the bit."""
    import numpy as np
    from scipy.stats import t as student_t

    if not strata:
        raise ValueError("need at least one stratum")
    arrays = [(np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)) for a, b in strata]
    questions = arrays[0][0].shape[1] if arrays[0][0].ndim == 2 else 0
    for first, second in arrays:
        if first.ndim != 2 or second.ndim != 2 or first.shape[1] != second.shape[1] or first.shape[1] == 0 \
                or first.shape[1] != questions:
            raise ValueError(f"need seeds × questions arrays over the same questions, got {first.shape} and "
                             f"{second.shape}" + (f" (the first stratum has {questions} questions)"
                                                  if len(arrays) > 1 else ""))
    if draws < 1:
        raise ValueError(f"draws={draws} must be at least 1")
    k = len(arrays)
    per_question = sum(first.mean(axis=0) - second.mean(axis=0) for first, second in arrays) / k
    difference = float(per_question.mean())
    rng = np.random.default_rng(seed)
    seed_part = np.zeros(draws)
    sides = [side for pair in arrays for side in pair]  # every side of every stratum, in order
    seed_se = []
    for side in sides:
        se = math.sqrt(seed_variance(side)) / k
        seed_se.append(se)
        if side.shape[0] > 1 and k == 1:
            seed_part += se * rng.standard_t(side.shape[0] - 1, size=draws)
    if k > 1 and any(seed_se):
        parts = [(se**2, side.shape[0] - 1) for side, se in zip(sides, seed_se) if se]
        variance = sum(v for v, _ in parts)
        seed_part += math.sqrt(variance) * rng.standard_t(welch_satterthwaite(parts), size=draws)
    question_variance = float(per_question.var(ddof=1)) / questions if questions > 1 else 0.0
    # a side's seed part holds the questions' noise inside its seed means: counted there only (a side whose seed
    # means are equal has no seed part, and its noise stays in the question part)
    question_variance -= sum(within_seed_noise(side) / k**2 for side, se in zip(sides, seed_se) if se)
    question_se = math.sqrt(max(question_variance, 0.0))
    side_se = (math.hypot(*seed_se[0::2]), math.hypot(*seed_se[1::2]))

    # The exact sign-flip (randomisation) distribution of the per-question differences: the test on the questions
    # alone, as if no side's seeds spread.
    scale = k * math.lcm(*(first.shape[0] * second.shape[0] for first, second in arrays))
    values, probs = sign_flip_distribution(per_question, scale)
    exact = (np.abs(values) / questions, probs)  # |difference of the means| each sign pattern gives
    spread = any(seed_se)

    def exact_tail(c: float) -> float:
        """P(|difference| >= c) over the sign patterns of the per-question differences."""
        return float(exact[1][exact[0] >= c - 1e-12].sum())

    def tail(c: float) -> float:
        """P(|seed part + question part| >= c) under no difference. When no side's seed means differ (one seed
        each, or seeds that answered alike), the test is a paired test on the questions alone: its question part
        is then the exact sign-flip distribution, not Student's t, which on a few discordant questions rejects
        more often than alpha, and with every question alike would give p = 0."""
        if not spread:
            return exact_tail(c)
        if question_se == 0:
            return float(np.mean(np.abs(seed_part) >= c - 1e-12))
        upper = student_t.sf((c - seed_part) / question_se, questions - 1)
        lower = student_t.cdf((-c - seed_part) / question_se, questions - 1)
        return float(np.mean(upper + lower))

    # A seed spread only adds uncertainty to the same per-question differences: p is never below the exact
    # sign-flip test's of them (else one seed missing one more question could turn p = 0.0625 into 0.049). The
    # larger of two tests at alpha is a test at alpha; its interval is the union of theirs (below).
    p_value = min(1.0, tail(abs(difference)))
    if spread:
        p_value = min(1.0, max(p_value, exact_tail(abs(difference))))
    if not interval:
        return SeedsAndQuestions(difference, p_value, None, None, question_se, side_se)
    # the sign-flip interval, d +- its critical value: the largest |difference| of a sign pattern whose tail is
    # still >= alpha, found among the patterns' values (exact, where a bisection of a step function could land a
    # hair either side), so that it holds 0 exactly when the sign-flip p >= alpha
    atoms = np.unique(exact[0])  # ascending; the tail falls along them, the smallest's is 1
    holds, past = 0, len(atoms)  # exact_tail(atoms[holds]) >= alpha; from atoms[past] on, below alpha
    while past - holds > 1:
        middle = (holds + past) // 2
        holds, past = (middle, past) if exact_tail(float(atoms[middle])) >= alpha else (holds, middle)
    exact_half = float(atoms[holds]) + 1e-12  # |d| within float error of that atom: p >= alpha, 0 inside
    if not spread:
        # Without seed spread p is the sign-flip p, and the interval is as for one seed a side, from the seeds'
        # mean discordance: Tango's (with every question and seed alike there is no spread to read a width from: a
        # zero-width interval would turn identical answers on 20 questions into certainty; Tango keeps +-16 points
        # on 20, +-0.3 on 1319) hulled with an exact interval of the test, so that it excludes 0 exactly when
        # p < alpha. Differences of -1, 0 or 1 (seeds that answered alike) give exact McNemar's p and its
        # conditional interval; fractional ones (seeds alike in their means only, models pooled) the sign-flip
        # interval, where Tango's on their sums can cross 0 beside a p below alpha (exact_hull).
        only_first = float(np.clip(per_question, 0, None).sum())
        only_second = float(np.clip(-per_question, 0, None).sum())
        if np.allclose(per_question, np.rint(per_question), rtol=0, atol=1e-9):
            low, high = paired_difference_interval(round(only_first), round(only_second), questions, alpha,
                                                   p_value=p_value)
        else:
            low, high = exact_hull(tango_paired_interval(only_first, only_second, questions, alpha),
                                   (difference - exact_half, difference + exact_half), p_value, alpha)
        return SeedsAndQuestions(difference, p_value, max(-1.0, low), min(1.0, high), question_se, side_se)
    high = abs(difference) + 10 * (question_se + sum(seed_se)) + 1e-9
    while tail(high) > alpha:
        high *= 2
    # at least the sign-flip interval, so that the interval holds 0 exactly when p >= alpha
    half = max(falling_crossing(tail, alpha, 0.0, high, steps=40), exact_half)
    # a difference of two accuracies lies in [-1, 1]; at a Bonferroni level on few seeds the t half-width can run
    # past it
    low, high = max(-1.0, difference - half), min(1.0, difference + half)
    return SeedsAndQuestions(difference, p_value, low, high, question_se, side_se)


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

    test: str | None  # MCNEMAR, SEEDS_AND_QUESTIONS, POOLED, or None when there is no test (``reason`` says why)
    p_value: float | None
    difference: float | None  # mean accuracy of the first side minus the second, on the paired questions
    # (1 - alpha) interval of the difference (one seed each: paired_difference_interval, else
    # seeds_and_questions_test's); it excludes 0 exactly when p_value < alpha
    ci_low: float | None = None
    ci_high: float | None = None
    n_questions: int = 0
    seeds: tuple[int, int] = (0, 0)
    discordant: tuple[int, int] | None = None  # (first only right, second only right), single seeds
    reason: str | None = None  # why there is no test
    strata: int = 1  # models pooled (POOLED: the mean over them of each one's difference)

    def over(self) -> str:
        """`` over 5 models`` for a pooled test, else ''."""
        return f" over {self.strata} models" if self.test == POOLED else ""

    def significant(self, alpha: float = ALPHA) -> bool:
        return self.p_value is not None and self.p_value < alpha

    def describe(self, alpha: float = ALPHA) -> str:
        """``exact McNemar, p=0.031 (b=0, c=6, 200 questions)`` or why there is no test; p printed on its side of
        ``alpha`` (``format_p``)."""
        if self.test is None:
            return f"no test: {self.reason}"
        detail = (f"b={self.discordant[0]}, c={self.discordant[1]}, " if self.discordant else
                  f"{self.seeds[0]} vs {self.seeds[1]} seeds{self.over()}, ")
        return f"{self.test}, p={format_p(self.p_value, alpha)} ({detail}{self.n_questions} questions)"


def format_p(p: float | None, alpha: float = ALPHA) -> str:
    """``p`` to 3 decimals (``<0.001`` below, or in significant digits where ``alpha`` is smaller), with as many
    more as it takes to print it on its own side of ``alpha`` (0.0498 at 0.05 reads ``0.0498``, not ``0.050``), so
    that the printed p never contradicts a verdict or mark at ``alpha``; "–" for no p."""
    if p is None:
        return "–"
    if p < 0.001 <= alpha:
        return "<0.001"
    for digits in range(3, 18):
        text = f"{p:.{digits}f}" if p >= 0.001 else f"{p:.{digits - 1}g}"
        if (float(text) < alpha) == (p < alpha):
            return text
    return repr(p)  # reads back as p itself


def no_test(reason: str) -> PairedTest:
    return PairedTest(None, None, None, reason=reason)


def _question_keys(sides: Sequence[Sequence[Mapping[Hashable, bool]]]) -> list | str:
    """The questions every seed of every side scored, sorted; or why there are none to pair on."""
    seeds = [scores for side in sides for scores in side]
    common = set(seeds[0])
    every = set(seeds[0])
    for scores in seeds[1:]:
        common &= set(scores)
        every |= set(scores)
    if not common:
        return "the two sides scored no question in common"
    if common != every:
        sizes = " and ".join(str(n) for n in sorted({len(scores) for scores in seeds}))
        return (f"the two sides {DIFFERENT_QUESTIONS} ({sizes}; {len(common)} in common), so their means are not "
                f"paired: score both on the same questions (the same dataset.test_limit and eval.ood_limit)")
    return sorted(common)


def _as_array(side: Sequence[Mapping[Hashable, bool]], keys: list) -> list[list[bool]]:
    return [[bool(scores[k]) for k in keys] for scores in side]


def paired_test(a: Sequence[Mapping[Hashable, bool]], b: Sequence[Mapping[Hashable, bool]], *,
                alpha: float = ALPHA, interval: bool = False, draws: int = SEED_TEST_DRAWS,
                seed: int = SEED_TEST_SEED) -> PairedTest:
    """Compare two rows given as one {question key: correct} per seed; every seed of both must have scored the
    same questions (else there is no test: the rows' means would be over different questions, and a test on the
    shared ones could even point the other way). Exact McNemar when both sides are one seed, else the
    seeds-and-questions test; ``interval`` also computes an interval of the difference (for single seeds the hull
    of Tango's paired score interval and the conditional exact interval of the McNemar test,
    ``paired_difference_interval``: it excludes 0 exactly when p < alpha)."""
    if not a or not b:
        return no_test("a side has no seeds")
    keys = _question_keys([a, b])
    if isinstance(keys, str):
        return no_test(keys)
    first, second = _as_array(a, keys), _as_array(b, keys)
    seeds = (len(a), len(b))
    if seeds == (1, 1):
        only_first = sum(x and not y for x, y in zip(first[0], second[0]))
        only_second = sum(y and not x for x, y in zip(first[0], second[0]))
        low = high = None
        p_value = mcnemar_exact(only_first, only_second)
        if interval:
            low, high = paired_difference_interval(only_first, only_second, len(keys), alpha, p_value=p_value)
        return PairedTest(MCNEMAR, p_value, (only_first - only_second) / len(keys),
                          low, high, len(keys), seeds, (only_first, only_second))
    result = seeds_and_questions_test(first, second, draws=draws, seed=seed, alpha=alpha, interval=interval)
    return PairedTest(SEEDS_AND_QUESTIONS, result.p_value, result.difference, result.ci_low, result.ci_high,
                      len(keys), seeds)


def pooled_paired_test(strata: Sequence[tuple[Sequence[Mapping[Hashable, bool]], Sequence[Mapping[Hashable, bool]]]],
                       *, alpha: float = ALPHA, interval: bool = False, draws: int = SEED_TEST_DRAWS,
                       seed: int = SEED_TEST_SEED) -> PairedTest:
    """``paired_test`` of the mean over strata (models) of each one's difference, every stratum weighted equally
    (``pooled_seeds_and_questions_test``); every seed of every stratum must have scored the same questions. With
    one seed a side everywhere its p-value is the exact sign-flip test of the per-question mean difference."""
    if not strata or any(not a or not b for a, b in strata):
        return no_test("a side has no seeds")
    keys = _question_keys([side for pair in strata for side in pair])
    if isinstance(keys, str):
        return no_test(keys.replace("the two sides", "the models' rows"))
    arrays = [(_as_array(a, keys), _as_array(b, keys)) for a, b in strata]
    result = pooled_seeds_and_questions_test(arrays, draws=draws, seed=seed, alpha=alpha, interval=interval)
    seeds = (sum(len(a) for a, _ in strata), sum(len(b) for _, b in strata))
    return PairedTest(POOLED, result.p_value, result.difference, result.ci_low, result.ci_high, len(keys), seeds,
                      strata=len(strata))
