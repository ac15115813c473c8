"""The chosen rate's lead over the runner-up (``winner_lead``): its standard error, how it was measured
(``margin_test``: report.stats' paired seeds-and-questions test where every run's predictions are at hand, else a
test of the scores alone) and whether the search separated the two (``within_noise``)."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

from slm_sweep.tune.records import record_lr

log = logging.getLogger(__name__)


# the margin_test labels of the tests without predictions, and the note a one-seed test carries (one training
# run a rate: a test of the lead measures the questions' noise only)
ONE_SEED_NOTE = " (one seed: run-to-run spread not measured)"
SEED_SPREAD_TEST = "spread of the per-seed differences plus the questions' unpaired binomial (no predictions)"
BINOMIAL_TEST = "binomial, unpaired (no predictions)" + ONE_SEED_NOTE


def winner_lead(name: str, best: Mapping[str, Any], runner_up: Mapping[str, Any], metric: str, n_val: int,
                runs: Mapping[float, Sequence[Mapping[str, Any]]]) -> dict[str, Any]:
    """The winner's lead over the runner-up, its standard error (``margin_test`` says how it was measured), and
    ``within_noise`` when the search did not separate the two. The seeds scored the same questions, so more seeds
    measure the runs' spread but do not shrink the questions' noise:

    - with every run's predictions, the claims' paired seeds-and-questions test: within noise at p >= 0.05;
    - else, over two or more seeds, the questions' unpaired binomial error plus the spread of the per-seed
      differences (``_seed_spread_lead``);
    - else (one seed) the binomial error of two accuracies on ``n_val`` questions: within two standard errors.

    Without the paired test, ``margin_fallback`` says why (a warning too). With one seed a rate the test measures
    the questions' noise only, and ``margin_test`` says so. A tie (a margin of 0) is within noise, and ``tied``
    names what broke it."""
    first, second = runs[best["lr"]], runs[runner_up["lr"]]
    margin = round(best[metric] - runner_up[metric], 9)
    paired, why = _paired_test(first, second, metric)
    if paired is not None:
        se, how, separated = _paired_lead(paired, len(first))
    else:
        p, q = best[metric], runner_up[metric]
        question_variance = (p * (1 - p) + q * (1 - q)) / n_val
        differences = _seed_differences(first, second, metric)
        if len(differences) >= 2:
            se, how, separated = _seed_spread_lead(margin, differences, question_variance, n_val)
        else:
            se, how, separated = _unpaired_lead(margin, question_variance)
        how["margin_fallback"] = why
        log.warning("%s: no paired test of the lead of %g over %g (%s): measured by the %s", name, best["lr"],
                    runner_up["lr"], why, how["margin_test"])
    tied = ("validation loss" if best.get("val_loss") != runner_up.get("val_loss") else "smaller rate") \
        if margin == 0 else None
    return {"runner_up": runner_up["lr"], "margin": margin, "margin_se": round(se, 6), **how,
            **({"within_noise": True} if margin == 0 or not separated else {}), **({"tied": tied} if tied else {})}


def _question_scores(record: Mapping[str, Any], metric: str) -> dict:
    """Whether ``metric`` (``val_accuracy_<name>``) scored each validation question of a search cell correct, from
    the predictions beside its result.json. Raises NoQuestionData naming the run and why there are none: no
    predictions, or predictions that disagree with its result.json (another row count or mean)."""
    from slm_sweep.report.collect import NoQuestionData, question_scores

    path = record.get("result_path")
    if not path:
        raise NoQuestionData(f"the run of seed {record.get('seed')} at lr {record_lr(record)} names no "
                             "result.json to find its predictions beside")
    eval_set = f"{record['dataset']}/val"
    try:
        scores = question_scores(path, eval_set, metric.removeprefix("val_accuracy_"))
    except NoQuestionData:
        raise
    except (OSError, ValueError) as err:
        raise NoQuestionData(f"the predictions beside {path} cannot be read ({err})") from None
    metrics = record.get("metrics") or {}
    if not scores or len(scores) != metrics.get("val_n_eval"):
        raise NoQuestionData(f"the predictions beside {path} hold {len(scores)} rows of {eval_set}, its result.json "
                             f"val_n_eval={metrics.get('val_n_eval')}")
    mean = sum(scores.values()) / len(scores)
    if abs(mean - float(metrics[metric])) > 1e-9:
        raise NoQuestionData(f"the predictions beside {path} disagree with its result.json: their mean is "
                             f"{mean:.6f}, its {metric} {float(metrics[metric]):.6f}")
    return scores


def _paired_test(first: Sequence[Mapping[str, Any]], second: Sequence[Mapping[str, Any]], metric: str):
    """The claims' seeds-and-questions test (report/stats.py) of two candidates' runs, first minus second, and
    None; or None and why there is none (a run without its predictions, or on other questions)."""
    from slm_sweep.report.collect import NoQuestionData
    from slm_sweep.report.stats import seeds_and_questions_test

    try:
        sides = [[_question_scores(r, metric) for r in runs] for runs in (first, second)]
    except NoQuestionData as err:
        return None, str(err)
    keys = sorted(sides[0][0])
    odd = next((run for side, runs in zip(sides, (first, second)) for scores, run in zip(side, runs)
                if sorted(scores) != keys), None)
    if odd is not None:
        return None, (f"the predictions beside {odd['result_path']} hold other questions than those beside "
                      f"{first[0]['result_path']}")
    a, b = ([[scores[k] for k in keys] for scores in side] for side in sides)
    return seeds_and_questions_test(a, b, interval=False), None


def _seed_differences(first: Sequence[Mapping[str, Any]], second: Sequence[Mapping[str, Any]],
                      metric: str) -> list[float]:
    """The winner's score minus the runner-up's, seed by seed, over the seeds both ran."""
    other = {str(r.get("seed")): float(r["metrics"][metric]) for r in second}
    return [float(r["metrics"][metric]) - other[str(r.get("seed"))] for r in first if str(r.get("seed")) in other]


def _paired_lead(paired, seeds: int) -> tuple[float, dict[str, Any], bool]:
    """With every run's predictions: the seeds-and-questions test, within noise at p >= ALPHA."""
    from slm_sweep.report.stats import ALPHA, SEEDS_AND_QUESTIONS

    se = math.sqrt(paired.question_se ** 2 + sum(part ** 2 for part in paired.seed_se))
    how = {"margin_test": SEEDS_AND_QUESTIONS + (ONE_SEED_NOTE if seeds == 1 else ""),
           "margin_p": round(paired.p_value, 6)}
    return se, how, paired.p_value < ALPHA


def _seed_spread_lead(margin: float, differences: Sequence[float], question_variance: float,
                      n_val: int) -> tuple[float, dict[str, Any], bool]:
    """Without predictions, over k >= 2 seeds: the two parts of the seeds-and-questions test, the questions'
    (the unpaired binomial, as pairing cannot be read) and the seeds' (the per-seed differences' variance over
    k), added; within noise unless the lead passes Student's t at their Welch-Satterthwaite degrees of freedom,
    and never on less than the one-seed test's two standard errors. The seeds' part holds the questions' noise
    inside each seed too: counted twice, which errs toward within noise."""
    from slm_sweep.report.stats import describe, t_critical, welch_satterthwaite

    _, spread, _ = describe(differences)
    seed_variance = spread ** 2 / len(differences)
    se = math.sqrt(question_variance + seed_variance)
    df = welch_satterthwaite([(question_variance, n_val - 1), (seed_variance, len(differences) - 1)])
    critical = max(2.0, t_critical(df)) if df is not None else 2.0
    return se, {"margin_test": SEED_SPREAD_TEST}, margin > critical * se


def _unpaired_lead(margin: float, question_variance: float) -> tuple[float, dict[str, Any], bool]:
    """One seed, no predictions: the binomial error of two accuracies, within two standard errors."""
    se = math.sqrt(question_variance)
    return se, {"margin_test": BINOMIAL_TEST}, margin > 2 * se
