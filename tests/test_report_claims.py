"""Paired tests and the claims table of slm_sweep.report, on synthetic sweeps whose result.json and
predictions.jsonl are written with the cell's own writers (slm_sweep.run / slm_sweep.results) and scored by
slm_sweep.scoring."""

from __future__ import annotations

import csv
import json
import math
import os
import re
import shutil
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest
from conftest import CONF_DIR, compose_config
from omegaconf import OmegaConf

from slm_sweep.report import DEFAULT_CLAIMS, ClaimsError, write_report
from slm_sweep.report.__main__ import main
from slm_sweep.report.claim_declaration import load_claims
from slm_sweep.report.claims import check_claims
from slm_sweep.report.collect import NoQuestionData, question_scores
from slm_sweep.report.comparisons import constituents
from slm_sweep.report.stats import (
    MCNEMAR,
    POOLED,
    SEEDS_AND_QUESTIONS,
    format_p,
    holm,
    mcnemar_exact,
    paired_difference_interval,
    paired_test,
    pooled_paired_test,
    pooled_seeds_and_questions_test,
    seed_variance,
    seeds_and_questions_test,
    tango_paired_interval,
    within_seed_noise,
)
from slm_sweep.results import PREDICTIONS_FILE, redact, write_predictions, write_result
from slm_sweep.scoring import METRICS, accuracy_key, score

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from stats_calibration import p_values, rejection_rate  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
QUESTIONS = 60
SIZES = {"smollm135": 134_515_008, "smollm135_q4": 134_515_008, "gemma270": 268_098_176, "qwen05": 494_032_768}
TRAINED_SEEDS = (0, 1, 2)


@cache
def _base(method: str, dataset: str = "gsm8k") -> str:
    """The record run.py starts a cell with, for this method's composed config (as JSON, copied per cell)."""
    from slm_sweep.run import _base_record

    config_method = {"zeroshot_instructed": "zeroshot", "fewshot_chat": "fewshot"}.get(method, method)
    config_dataset = dataset if (CONF_DIR / "dataset" / f"{dataset}.yaml").is_file() else "gsm8k"
    cfg = compose_config(["model=tiny", f"method={config_method}", f"dataset={config_dataset}"])
    record = _base_record(cfg, redact(OmegaConf.to_container(cfg, resolve=True)))
    record["config"]["method"]["name"] = method
    return json.dumps(record)


def predictions(dataset: str, correct: list[bool], extra_metric: str | None = None, prose: bool = False,
                styles: tuple[str, ...] = ()) -> list[dict]:
    """One record per question as the evaluator writes it: every metric's extracted_/correct_ fields. ``prose``:
    right answers stated in prose with a closing check, which only the lenient metric reads as right. ``styles``:
    formats of the right answers, taken in turn ("The final answer is: $\\boxed{}$."), scored as they read."""
    rows = []
    for index, right in enumerate(correct):
        reference = str(index + 1)
        output = f"The total is {reference}.\n#### {reference}" if right else "I am not sure.\n#### 0"
        if prose and right:
            output = f"So the answer is {reference}.\n\n(Check: {reference} - {index} = 1.)"
        if styles and right:
            output = styles[index % len(styles)].format(reference)
        row = {"eval_set": dataset, "index": index, "question": f"Question {index}: what is {index} + 1?",
               "reference": reference, "output": output, **score(output, reference, None)}
        if extra_metric:
            row[f"extracted_{extra_metric}"] = reference if right else "0"
            row[f"correct_{extra_metric}"] = right
        rows.append(row)
    return rows


def write_cell(sweep: Path, model: str, method: str, dataset: str, seed: int, correct: list[bool], *,
               reused_from: Path | None = None, extra_metric: str | None = None,
               ood: dict[str, list[bool]] | None = None, prose: bool = False, ood_prose: bool = False,
               styles: tuple[str, ...] = ()) -> Path:
    """A completed cell's result.json and predictions.jsonl in ``sweep/<job>``, with out-of-domain sets scored
    after the test split as run.py does (``ood_prose``: their right answers in prose); returns the result.json."""
    job = sweep / f"{model}-{method}-{dataset}-seed{seed}"
    preds = predictions(dataset, correct, extra_metric, prose, styles)
    in_domain = preds
    eval_sets = {}
    for name, right in (ood or {}).items():
        scored = predictions(name, right, prose=ood_prose)
        eval_sets[name] = {**{accuracy_key(m): sum(p[f"correct_{m}"] for p in scored) / len(scored) for m in METRICS},
                           "n_eval": len(scored), "truncated_fraction": 0.0}
        preds = [*preds, *scored]
    record = json.loads(_base(method, dataset))
    trained = record["config"]["method"]["train"]
    record["config"]["model"].update(name=model, source="gguf" if model.endswith("_q4") else "hub")
    record["config"]["dataset"]["name"] = dataset
    key = f"{model}-{method}-{dataset}" + (f"-seed{seed}" if trained else "")
    record.update(
        status="completed", model=model, model_id=f"org/{model}", method=method, dataset=dataset, seed=seed,
        identity={"training_key": key if trained else None, "evaluation_key": key,
                  "configuration_key": f"{model}-{method}-{dataset}"},
        finished_at="2024-01-01T13:00:00+00:00", eval_sets=eval_sets,
        reused_from=str(reused_from) if reused_from else None,
        metrics={
            **{accuracy_key(name): sum(p[f"correct_{name}"] for p in in_domain) / len(in_domain) for name in METRICS},
            **({accuracy_key(extra_metric): sum(correct) / len(correct)} if extra_metric else {}),
            "n_eval": len(correct),
            "trainable_params": SIZES[model] if method == "full" else (1_000_000 if trained else 0),
            "total_params": SIZES[model] + (1_000_000 if method in ("lora", "dora") else 0),
        },
    )
    if reused_from:  # as run._reuse does: the numbers and predictions of the computed cell, copied
        job.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(reused_from.parent / PREDICTIONS_FILE, job / PREDICTIONS_FILE)
    else:
        write_predictions(job, preds)
    return write_result(job, record)


def first(k: int) -> list[bool]:
    """The first ``k`` questions right: two such cells disagree only on questions the larger one gets right."""
    return [i < k for i in range(QUESTIONS)]


def write_row(sweep: Path, model: str, method: str, dataset: str, k: int, seeds=None) -> None:
    """A row of the summary: one computed seed for a baseline (copied to the others, as a sweep does), three
    seeds (k-1, k, k+1 right) for a trained method."""
    trained = json.loads(_base(method))["config"]["method"]["train"]
    seeds = seeds if seeds is not None else (TRAINED_SEEDS if trained else (0,))
    if not trained:
        original = write_cell(sweep, model, method, dataset, 0, first(k))
        for seed in seeds[1:]:
            write_cell(sweep, model, method, dataset, seed, first(k), reused_from=original)
        return
    for offset, seed in enumerate(seeds):
        write_cell(sweep, model, method, dataset, seed, first(k + offset - (len(seeds) > 1)))


def claims_of(sweep: Path, claims=DEFAULT_CLAIMS, alpha=0.05, correction="holm"):
    report = write_report([sweep], sweep / f"report-{correction}" if correction != "holm" else sweep / "report",
                          plots=False, claims=claims, alpha=alpha, correction=correction)
    return {r.claim.id: r for r in report["claims"].results}, report


# ---------------------------------------------------------------- tests


@pytest.mark.parametrize(("b", "c", "p"), [
    (0, 6, 0.03125),            # 2 * (1/2)^6
    (6, 0, 0.03125),
    (1, 6, 0.125),              # 2 * (1 + 7) / 2^7
    (2, 10, 2 * 79 / 4096),     # 2 * (1 + 12 + 66) / 2^12
    (0, 5, 0.0625),
    (5, 5, 1.0),
    (0, 0, 1.0),
])  # fmt: skip
def test_exact_mcnemar_matches_the_binomial_by_hand(b, c, p):
    assert mcnemar_exact(b, c) == pytest.approx(p, rel=1e-12)


def test_single_seeds_are_compared_with_exact_mcnemar_on_paired_questions():
    a = [{(i, f"q{i}"): i < 6 for i in range(20)}]
    b = [{(i, f"q{i}"): False for i in range(20)}]
    test = paired_test(a, b)
    assert (test.test, test.discordant, test.n_questions) == (MCNEMAR, (6, 0), 20)
    assert test.p_value == pytest.approx(0.03125) and test.difference == pytest.approx(6 / 20)
    assert test.significant(0.05) and not test.significant(0.01)


def test_rows_scored_on_different_questions_are_not_tested():
    # 60 questions against the first 20 of them: on those 20 the second row is better, on all 60 the first is,
    # so neither a delta of the means nor a test on the shared questions says which is better
    a = [{i: i < 30 for i in range(60)}]
    b = [{i: True for i in range(20)}]
    test = paired_test(a, b)
    assert test.test is None and test.p_value is None
    assert "scored different questions (20 and 60; 20 in common)" in test.reason
    assert "dataset.test_limit" in test.reason


def _seeds(*rights: int, questions: int = 80) -> list[list[bool]]:
    return [[q < right for q in range(questions)] for right in rights]


def test_with_seeds_that_agree_the_seed_test_is_the_exact_paired_test_over_questions():
    """No spread over seeds leaves the questions alone: the exact sign-flip test of the per-question differences,
    which for seeds answering alike is exact McNemar (Student's t on 0/1 differences rejected more often than
    alpha where few questions differ, and gave p = 0 when every question differed alike)."""
    a = [[q % 3 != 0 for q in range(80)]] * 3  # three seeds that answered alike: no spread over seeds
    b = [[q % 2 == 0 for q in range(80)]]
    result = seeds_and_questions_test(a, b)
    only_a = sum(x and not y for x, y in zip(a[0], b[0]))
    only_b = sum(y and not x for x, y in zip(a[0], b[0]))
    assert result.seed_se == (0.0, 0.0)
    assert result.difference == pytest.approx((only_a - only_b) / 80)
    assert result.p_value == pytest.approx(mcnemar_exact(only_a, only_b), rel=1e-9)
    assert result.ci_low < result.difference < result.ci_high
    for extra, p_value in ((4, 0.125), (5, 0.0625)):  # 1319 questions, A right on a few more, in every seed
        sparse = seeds_and_questions_test([[q < 300 + extra for q in range(1319)]] * 3, [[q < 300 for q in range(1319)]])
        assert sparse.p_value == pytest.approx(p_value) and sparse.ci_low <= 0
    every = seeds_and_questions_test([[True] * 3] * 3, [[False] * 3])
    assert every.p_value == pytest.approx(0.25)


def test_the_questions_noise_inside_the_seed_means_is_counted_once():
    import numpy as np

    rng = np.random.default_rng(3)
    scores = (rng.random((3, 50)) < np.linspace(0.1, 0.9, 50)).astype(float)
    seeds, questions = scores.shape
    # the two-way decomposition written out: total = seeds + questions + residual sums of squares
    total = ((scores - scores.mean()) ** 2).sum()
    between_seeds = questions * ((scores.mean(axis=1) - scores.mean()) ** 2).sum()
    between_questions = seeds * ((scores.mean(axis=0) - scores.mean()) ** 2).sum()
    residual = (total - between_seeds - between_questions) / ((seeds - 1) * (questions - 1))
    assert seed_variance(scores) == pytest.approx(between_seeds / (seeds - 1) / questions / seeds)
    assert within_seed_noise(scores) == pytest.approx(residual / (seeds * questions))
    assert seed_variance(scores[:1]) == within_seed_noise(scores[:1]) == 0.0
    # the question part is the per-question differences' variance less that noise, the seed part keeps it
    baseline = (rng.random((1, 50)) < 0.5).astype(float)
    test = seeds_and_questions_test(scores, baseline)
    per_question = scores.mean(axis=0) - baseline[0]
    assert test.question_se ** 2 == pytest.approx(per_question.var(ddof=1) / questions - residual / (seeds * questions))
    assert test.seed_se[0] ** 2 == pytest.approx(seed_variance(scores))
    # a side whose seeds answered differently but to equal means has no seed part: its noise stays counted
    even = np.array([[1.0, 0.0] * 25, [0.0, 1.0] * 25, [1.0, 1.0, 0.0, 0.0] * 12 + [1.0, 0.0]])
    assert seed_variance(even) == 0.0 < within_seed_noise(even)
    both = seeds_and_questions_test(scores, even)
    per_question = scores.mean(axis=0) - even.mean(axis=0)
    assert both.seed_se[1] == 0.0
    assert both.question_se ** 2 == pytest.approx(per_question.var(ddof=1) / questions - residual / (seeds * questions))
    # seeds that differ by whole blocks of questions: their spread counts, and widens the test
    spread = seeds_and_questions_test(_seeds(20, 30, 40), _seeds(20))
    alike = seeds_and_questions_test(_seeds(30, 30, 30), _seeds(20))
    assert spread.difference == alike.difference == pytest.approx(10 / 80)
    assert spread.seed_se[0] > 0 and alike.seed_se == (0.0, 0.0)
    assert spread.p_value > alike.p_value and spread.ci_high - spread.ci_low > alike.ci_high - alike.ci_low
    assert spread.ci_low < spread.difference < spread.ci_high


def test_the_seed_test_is_deterministic_and_its_interval_agrees_with_its_p_value():
    a, b = _seeds(30, 36, 41), _seeds(26)
    once = seeds_and_questions_test(a, b)
    assert seeds_and_questions_test(a, b) == once
    for alpha in (0.05, 0.2):
        at = seeds_and_questions_test(a, b, alpha=alpha)
        assert (at.ci_low > 0) == (at.p_value < alpha)
    same = seeds_and_questions_test(b * 2, b)
    # identical seeds on both sides: nothing varies, yet the interval keeps the width its questions allow
    # (a zero-width one made identical answers on 20 questions "not below" within any margin)
    assert (same.difference, same.p_value) == (0.0, 1.0)
    assert (same.ci_low, same.ci_high) == pytest.approx(tango_paired_interval(0, 0, len(b[0])))
    assert same.ci_high > 0.02
    keyed = [dict(enumerate(row)) for row in a]
    test = paired_test(keyed, [dict(enumerate(b[0]))])
    assert (test.test, test.seeds, test.p_value) == (SEEDS_AND_QUESTIONS, (3, 1), once.p_value)
    assert test.ci_low is None and paired_test(keyed, [dict(enumerate(b[0]))], interval=True).ci_low == once.ci_low


def _sign_flip(per_question, alpha: float) -> tuple[float, float]:
    """By enumeration of every sign pattern of the non-zero per-question differences: the two-sided p of their sum
    and the sign-flip critical value (the largest |mean| of a pattern whose tail is at least alpha)."""
    from itertools import product

    weights = [abs(d) for d in per_question if d]
    observed = abs(sum(per_question))
    sums = [abs(sum(s * w for s, w in zip(signs, weights))) for signs in product((-1, 1), repeat=len(weights))]
    tail = {v: sum(s >= v - 1e-9 for s in sums) / len(sums) for v in sums}
    p = sum(s >= observed - 1e-9 for s in sums) / len(sums)
    return p, max(v for v, t in tail.items() if t >= alpha) / len(per_question)


def test_a_seed_spread_never_gives_a_lower_p_than_the_sign_flip_test_of_the_same_differences(tmp_path):
    """Three LoRA seeds right on the same 5 questions zero-shot misses: the exact test, p = 0.0625. Seed 0 also
    missing one question zero-shot gets right is less evidence, yet the seed spread it brings used to switch the
    question part to Student's t and gave p = 0.0488 (below the best single seed's McNemar p, and `reproduced`).
    With seeds that spread, p is the larger of that test's and the exact sign-flip test's of the same per-question
    differences, and the interval is at least the sign-flip one, so that it holds 0 exactly when p >= alpha."""
    import numpy as np

    for questions in (60, 1319):
        zeroshot = np.zeros((1, questions), bool)
        zeroshot[0, 5:questions // 2 + 5] = True
        agree = np.repeat(zeroshot, 3, axis=0)
        agree[:, :5] = True
        worse, better = agree.copy(), agree.copy()
        worse[0, questions // 2] = False  # seed 0 misses a question zero-shot gets right
        better[0, questions - 1] = True  # seed 0 right on one more that zero-shot misses
        assert seeds_and_questions_test(agree, zeroshot).p_value == pytest.approx(0.0625)
        for lora, expected in ((worse, 0.0625), (better, 0.03125)):
            test = seeds_and_questions_test(lora, zeroshot)
            per_question = lora.mean(axis=0) - zeroshot[0]
            assert test.seed_se[0] > 0  # the seeds spread: not the exact path itself
            assert test.p_value == pytest.approx(expected) == pytest.approx(_sign_flip(per_question, 0.05)[0])
            for alpha in (0.01, 0.05, 0.1, 0.2):
                at = seeds_and_questions_test(lora, zeroshot, alpha=alpha)
                assert at.p_value == test.p_value
                assert (at.ci_low <= 0 <= at.ci_high) == (at.p_value >= alpha)
                half = _sign_flip(per_question, alpha)[1]
                assert at.ci_low <= at.difference - half + 1e-9 and at.ci_high >= at.difference + half - 1e-9
        # pooled over two models that answered alike: the same sign-flip floor on the averaged differences
        pooled = pooled_seeds_and_questions_test([(worse, zeroshot), (worse, zeroshot)])
        assert pooled.seed_se[0] > 0 and pooled.p_value >= 0.0625 - 1e-12

    # through the report: "LoRA above zero-shot" stays inconclusive when a seed misses one more question
    claims = tmp_path / "claims.yaml"
    claims.write_text("claims:\n  - {id: c, text: t, a: lora, b: zeroshot, direction: above}\n")
    write_row(tmp_path, "gemma270", "zeroshot", "gsm8k", 30)
    for seed in TRAINED_SEEDS:
        write_cell(tmp_path, "gemma270", "lora", "gsm8k", seed, [0 < q < 35 if seed == 0 else q < 35
                                                                 for q in range(QUESTIONS)])
    results, _ = claims_of(tmp_path, claims=claims)
    (instance,) = results["c"].instances
    assert instance.test.test == SEEDS_AND_QUESTIONS and instance.test.difference == pytest.approx(14 / 180)
    assert instance.test.p_value == pytest.approx(0.0625) and instance.verdict == "inconclusive"

def test_the_seed_test_s_interval_stays_within_what_a_difference_of_accuracies_can_be():
    """At a claim family's Bonferroni level on three seeds a side (a t on 2 degrees of freedom), or on one
    question, the half-width runs past 100 points: the interval is clipped to [-1, 1], its p-value unchanged."""
    a, b = [[q < k for q in range(60)] for k in (30, 33, 36)], [[q < 20 for q in range(60)]]
    for alpha in (0.05, 0.05 / 40):
        test = seeds_and_questions_test(a, b, alpha=alpha)
        assert -1.0 <= test.ci_low < test.difference < test.ci_high <= 1.0
        assert test.p_value == seeds_and_questions_test(a, b, alpha=0.05).p_value
    one = seeds_and_questions_test([[True], [False], [True]], [[False]])
    assert -1.0 <= one.ci_low < one.difference < one.ci_high == 1.0


def test_the_seed_test_holds_its_level_where_resampling_seeds_did_not():
    # three trained seeds that spread by 6 points against a baseline decoded once, no true difference: resampling
    # the three seeds with replacement (the test before this one) rejected 0.16 of these 150 comparisons
    rejected = rejection_rate(questions=300, seeds_a=3, seeds_b=1, seed_sd=0.06, reps=150, rng_seed=5)
    assert rejected <= 0.09
    assert rejection_rate(questions=300, seeds_a=3, seeds_b=1, seed_sd=0.0, reps=60, effect=0.12, rng_seed=6) > 0.8


def test_the_seed_test_holds_its_level_at_the_alphas_a_claim_family_tests_at():
    # Holm and a claim's Bonferroni intervals test each comparison at alpha / m. Three seeds 6 points apart
    # against a baseline decoded once, no true difference: the seed part estimated as the seed means' spread less
    # the questions' noise, floored at 0, rejected 8 of these 400 at 0.01 and 5 at 0.005 (2-3x alpha)
    found = p_values(questions=300, seeds_a=3, seeds_b=1, seed_sd=0.06, reps=400, rng_seed=11)
    assert (found < 0.01).mean() <= 0.0075 and (found < 0.005).mean() <= 0.005


# (claim, model, dataset, side a, side b, k right of a, k right of b) for "reproduced"; the other outcomes swap or
# close the gap. Single seeds where a claim's sides are both seed-independent or named with seeds=(0,).
CASES = {
    "full-below-zeroshot-under-300m": ("smollm135", "gsm8k", "full", "zeroshot", 10, 40),
    "peft-not-below-zeroshot-under-300m": ("gemma270", "gsm8k", "lora", "zeroshot", 50, 20),
    "peft-not-below-zeroshot-all-models": ("qwen05", "gsm8k", "lora", "zeroshot", 50, 20),
    "fewshot-above-full-smollm135": ("smollm135_q4", "gsm8k", "fewshot", "full", 30, 8),
    "lora-above-full-qwen05": ("qwen05", "orcamath", "lora", "full", 40, 20),
    "dora-above-lora-gsm8k": ("qwen05", "gsm8k", "dora", "lora", 45, 15),
    "lora-above-dora-orcamath": ("smollm135", "orcamath", "lora", "dora", 45, 15),
    "dora-above-lora-gsm8k-pooled": ("qwen05", "gsm8k", "dora", "lora", 45, 15),
    "lora-above-dora-orcamath-pooled": ("gemma270", "orcamath", "lora", "dora", 45, 15),
}
POOLED_CLAIMS = {claim_id for claim_id in CASES if claim_id.endswith("-pooled")}


@pytest.mark.parametrize("outcome", ["reproduced", "contradicted", "inconclusive"])
@pytest.mark.parametrize("claim_id", list(CASES))
def test_each_claim_is_reproduced_contradicted_or_left_open_by_cells_built_for_it(tmp_path, claim_id, outcome):
    model, dataset, a, b, k_a, k_b = CASES[claim_id]
    if outcome == "contradicted":
        k_a, k_b = k_b, k_a
    elif outcome == "inconclusive":
        k_a = k_b = 30
    single = claim_id == "lora-above-full-qwen05"  # both sides one seed: exact McNemar
    write_row(tmp_path, model, a, dataset, k_a, seeds=(0,) if single else None)
    write_row(tmp_path, model, b, dataset, k_b, seeds=(0,) if single else None)
    results, _ = claims_of(tmp_path)
    result = results[claim_id]
    (instance,) = result.instances
    assert (instance.verdict, result.verdict) == (outcome, outcome)
    # answers every metric reads alike ("#### 18"): the same verdict on each metric other than the claims metric
    assert {m: reading.verdict for m, reading in result.by_metric.items()} == {
        m: outcome for m in METRICS if m != instance.metric}
    assert result.metric_sensitive is False
    pooled = claim_id in POOLED_CLAIMS  # one model of the five: its rows stand for the pool, which says so
    assert (instance.a["method"], instance.b["method"]) == (a, b)
    assert [row["model"] for row in constituents(instance.a)] == [model]
    assert instance.a["model"] == (f"1 model pooled ({model})" if pooled else model)
    assert instance.test.test == (POOLED if pooled else MCNEMAR if single else SEEDS_AND_QUESTIONS)
    if single:
        assert instance.test.discordant == ((k_a - k_b, 0) if k_a > k_b else (0, k_b - k_a))
    # the claims about other methods, models or datasets are not covered by these two rows
    others = {i: r for i, r in results.items() if i != claim_id and not r.instances}
    assert all(r.verdict == "not covered" and r.reason for r in others.values())


def test_a_baseline_claim_is_checked_against_each_wording_and_the_table_says_so(tmp_path):
    write_row(tmp_path, "smollm135", "full", "gsm8k", 10)
    write_row(tmp_path, "smollm135", "zeroshot", "gsm8k", 40)
    write_row(tmp_path, "smollm135", "zeroshot_instructed", "gsm8k", 12)
    write_row(tmp_path, "gemma270", "full", "gsm8k", 45)
    write_row(tmp_path, "gemma270", "zeroshot", "gsm8k", 20)
    write_row(tmp_path, "qwen05", "full", "gsm8k", 5)  # over 300M parameters: outside the claim
    write_row(tmp_path, "qwen05", "zeroshot", "gsm8k", 50)
    results, report = claims_of(tmp_path)
    result = results["full-below-zeroshot-under-300m"]
    verdicts = {(i.a["model"], i.b["method"]): i.verdict for i in result.instances}
    assert verdicts == {("smollm135", "zeroshot"): "reproduced", ("smollm135", "zeroshot_instructed"): "inconclusive",
                        ("gemma270", "zeroshot"): "contradicted"}
    assert result.verdict == "mixed" and result.absent == []
    assert [(a, b, dict(c)) for a, b, c in result.by_sides()] == [
        ("full", "zeroshot", {"reproduced": 1, "contradicted": 1}), ("full", "zeroshot_instructed", {"inconclusive": 1})]

    out = tmp_path / "report"
    markdown = (out / "claims.md").read_text()
    assert "full vs zeroshot: 1 reproduced, 1 contradicted; full vs zeroshot_instructed: 1 inconclusive" in markdown
    assert "| `full-below-zeroshot-under-300m` |" in markdown and "**mixed (incomplete)**" in markdown
    assert "metric each dataset's claims metric" in markdown and "| flexible (gsm8k) |" in markdown
    assert "alpha=0.05" in markdown
    # the claims table is also the last section of the sweep summary
    summary = (out / "summary.md").read_text()
    assert "## Claims" in summary and "### `full-below-zeroshot-under-300m`" in summary
    with open(out / "claims.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    mine = [r for r in rows if r["claim"] == "full-below-zeroshot-under-300m"]
    assert [(r["model_a"], r["method_b"], r["verdict"]) for r in mine] == [
        ("smollm135", "zeroshot", "reproduced"), ("smollm135", "zeroshot_instructed", "inconclusive"),
        ("gemma270", "zeroshot", "contradicted")]
    assert mine[0]["test"] == SEEDS_AND_QUESTIONS and float(mine[0]["p_value"]) < 0.05 and mine[0]["metric"] == "flexible"
    assert float(mine[0]["mean_a"]) == pytest.approx(10 / 60) and float(mine[0]["mean_b"]) == pytest.approx(40 / 60)
    assert float(mine[0]["wilson_low_b"]) < 40 / 60 < float(mine[0]["wilson_high_b"])
    uncovered = {r["claim"]: r["note"] for r in rows if r["verdict"] == "not covered"}
    assert "lora-above-full-qwen05" in uncovered and "lora" in uncovered["lora-above-full-qwen05"]
    data = json.loads((out / "claims.json").read_text())
    entry = next(c for c in data["claims"] if c["id"] == "full-below-zeroshot-under-300m")
    assert entry["verdict"] == "mixed" and len(entry["instances"]) == 3 and data["alpha"] == 0.05
    # the baseline computed once counts once: one seed, no spread shown
    zeroshot = next(r for r in report["rows"] if (r["model"], r["method"]) == ("smollm135", "zeroshot"))
    assert zeroshot["n"] == 1 and zeroshot["accuracy_flexible_ci95"] is None
    assert f"| smollm135 | zeroshot | 1 | 60 | {100 * 40 / 60:.1f} | – |" in summary


def test_peft_below_zero_shot_on_a_model_over_300m_is_outside_the_study_s_claim_not_against_it(tmp_path):
    """The study contrasts full fine-tuning with LoRA and DoRA on models under 300M parameters: LoRA below zero-shot
    on Qwen2.5-0.5B leaves its claim reproduced, and contradicts the claim that extends it to every model."""
    for model, lora, zeroshot in (("smollm135", 50, 20), ("qwen05", 5, 50)):
        write_row(tmp_path, model, "zeroshot", "gsm8k", zeroshot)
        write_row(tmp_path, model, "lora", "gsm8k", lora)
    results, _ = claims_of(tmp_path)
    study = results["peft-not-below-zeroshot-under-300m"]
    assert [(i.a["model"], i.verdict) for i in study.instances] == [("smollm135", "reproduced")]
    assert study.verdict == "reproduced" and study.excluded == []
    extended = results["peft-not-below-zeroshot-all-models"]
    assert {i.a["model"]: i.verdict for i in extended.instances} == {"smollm135": "reproduced",
                                                                     "qwen05": "contradicted"}
    assert extended.verdict == "mixed"


def test_a_verdict_that_depends_on_the_baseline_s_wording_is_partly_reproduced_and_shown_by_wording(tmp_path):
    """require: any makes one wording enough for a complete verdict, not for a reproduced one: full fine-tuning
    below the bare zero-shot prompt and level with the instructed one is partly reproduced, and the table gives
    the verdict against each wording."""
    for method, k in (("full", 10), ("zeroshot", 40), ("zeroshot_instructed", 11), ("fewshot_chat", 30)):
        write_row(tmp_path, "smollm135", method, "gsm8k", k)
    results, _ = claims_of(tmp_path)
    result = results["full-below-zeroshot-under-300m"]
    assert {i.b["method"]: i.verdict for i in result.instances} == {"zeroshot": "reproduced",
                                                                    "zeroshot_instructed": "inconclusive"}
    assert result.verdict == "partly reproduced"
    assert [(side, method, verdict) for side, method, verdict, _ in result.by_wording()] == [
        ("b", "zeroshot", "reproduced"), ("b", "zeroshot_instructed", "inconclusive")]
    # a side of one method, or of methods that are all needed (LoRA and DoRA), has no wordings
    assert results["fewshot-above-full-smollm135"].by_wording()[0][:3] == ("a", "fewshot_chat", "reproduced")
    assert results["dora-above-lora-gsm8k"].by_wording() == []
    markdown = (tmp_path / "report" / "claims.md").read_text()
    (line,) = [row for row in markdown.splitlines() if row.startswith("| `full-below-zeroshot-under-300m` |")]
    assert "| against zeroshot: reproduced; against zeroshot_instructed: inconclusive |" in line
    assert "By wording: against zeroshot: reproduced; against zeroshot_instructed: inconclusive." in markdown
    assert "| fewshot_chat: reproduced |" in markdown
    data = json.loads((tmp_path / "report" / "claims.json").read_text())
    entry = next(c for c in data["claims"] if c["id"] == "full-below-zeroshot-under-300m")
    assert entry["by_wording"] == [
        {"side": "b", "method": "zeroshot", "verdict": "reproduced", "counts": {"reproduced": 1}},
        {"side": "b", "method": "zeroshot_instructed", "verdict": "inconclusive", "counts": {"inconclusive": 1}}]


ZERO_SHOT_PROSE = ("The final answer is: $\\boxed{{{}}}$.", "She pays ${}.00 in all.")


def test_a_verdict_that_hinges_on_the_metric_says_so_beside_the_claims_metric_s(tmp_path):
    """An instruct model's zero-shot answers "The final answer is: $\\boxed{18}$." and "$18.00", which lm-eval's
    flexible filter (GSM8K's claims metric) scores wrong, while full fine-tuning learnt "#### 18": on flexible full
    fine-tuning is above zero-shot, on lenient far below. The verdict stays flexible's; the report gives each
    other metric's, by the same tests and correction, and marks the claim metric-sensitive."""
    from slm_sweep.report.comparisons import compare_rows

    write_cell(tmp_path, "smollm135", "zeroshot", "gsm8k", 0, first(45), styles=ZERO_SHOT_PROSE)
    write_row(tmp_path, "smollm135", "full", "gsm8k", 20)
    write_row(tmp_path, "smollm135", "fewshot", "gsm8k", 30)
    results, _ = claims_of(tmp_path)
    result = results["full-below-zeroshot-under-300m"]
    (instance,) = result.instances
    assert (instance.metric, instance.verdict, result.verdict) == ("flexible", "contradicted", "contradicted")
    assert {m: reading.verdict for m, reading in result.by_metric.items()} == {"strict": "contradicted",
                                                                              "lenient": "reproduced"}
    assert result.metric_sensitive is True
    (lenient,) = result.by_metric["lenient"].instances
    assert lenient.metric == "lenient" and lenient.a is instance.a and lenient.b is instance.b
    assert lenient.test.p_value == compare_rows(instance.a, instance.b, "gsm8k", "lenient").p_value
    # a claim whose rows every metric reads alike is not
    assert results["fewshot-above-full-smollm135"].metric_sensitive is False

    out = tmp_path / "report"
    markdown = (out / "claims.md").read_text()
    (line,) = [row for row in markdown.splitlines() if row.startswith("| `full-below-zeroshot-under-300m` |")]
    assert line.endswith("| on lenient: reproduced; same on strict |")
    (line,) = [row for row in markdown.splitlines() if row.startswith("| `fewshot-above-full-smollm135` |")]
    assert line.endswith("| same on strict, lenient |")
    assert ("Metric-sensitive: on strict contradicted (1 contradicted), on lenient reproduced (1 reproduced), "
            "where the claims metric reads contradicted.") in markdown
    (row,) = [r for r in csv.DictReader(open(out / "claims.csv", newline=""))
              if r["claim"] == "full-below-zeroshot-under-300m"]
    assert (row["verdict"], row["metric_sensitive"]) == ("contradicted", "True")
    assert (row["verdict_strict"], row["verdict_flexible"], row["verdict_lenient"]) == ("contradicted", "",
                                                                                         "reproduced")
    data = json.loads((out / "claims.json").read_text())
    entry = next(c for c in data["claims"] if c["id"] == "full-below-zeroshot-under-300m")
    assert entry["verdict"] == "contradicted" and entry["metric_sensitive"] is True
    assert {m: r["verdict"] for m, r in entry["by_metric"].items()} == {"strict": "contradicted",
                                                                        "lenient": "reproduced"}
    assert entry["instances"][0]["verdict_lenient"] == "reproduced"


def drop_metric(sweep, cells: str, key: str) -> None:
    """Remove ``key`` from the metrics of the cells matching ``cells``: result files written before it existed."""
    for path in sweep.glob(f"{cells}/result.json"):
        record = json.loads(path.read_text())
        del record["metrics"][key]
        write_result(path.parent, record)


def test_the_metric_readings_hold_the_family_s_correction_and_leave_out_rows_without_the_metric(tmp_path):
    """Each reading on another metric is a family of its own, Holm-adjusted as the claims metric's; a row whose
    result files lack a metric (written before it existed) leaves its instances out of that reading, saying so."""
    for dataset in ("gsm8k", "orcamath"):
        write_row(tmp_path, "qwen05", "lora", dataset, 36, seeds=(0,))
        write_row(tmp_path, "qwen05", "full", dataset, 30, seeds=(0,))
    drop_metric(tmp_path, "qwen05-full-orcamath-*", "accuracy_strict")
    results, _ = claims_of(tmp_path)
    result = results["lora-above-full-qwen05"]
    flexible = result.by_metric["flexible"]  # the claims metric of GSM8K, not of OrcaMath
    assert [(i.dataset, i.metric, i.verdict, i.alone) for i in flexible.instances] == [
        ("gsm8k", "flexible", "inconclusive", "reproduced"), ("orcamath", "flexible", "inconclusive", "reproduced")]
    assert all(i.p_adjusted == pytest.approx(0.0625) for i in flexible.instances)
    assert flexible.verdict == "reproduced" and flexible.by_intersection_union and flexible.skipped == 0
    strict = result.by_metric["strict"]
    assert [i.dataset for i in strict.instances] == ["gsm8k"] and strict.skipped == 1
    assert strict.instances[0].verdict == "reproduced" and strict.instances[0].p_adjusted == pytest.approx(0.03125)
    assert "on strict reproduced (1 reproduced; 1 of 2 instances, the other rows lack strict)" in (
        tmp_path / "report" / "claims.md").read_text()


def test_a_reading_that_left_out_rows_without_its_metric_is_compared_on_the_instances_it_kept(tmp_path):
    """Leaving out the instance that was inconclusive is no change of verdict by the metric: the claim is
    metric-sensitive only when the same instances read otherwise."""
    write_row(tmp_path, "qwen05", "lora", "gsm8k", 45, seeds=(0,))
    write_row(tmp_path, "qwen05", "full", "gsm8k", 20, seeds=(0,))
    write_row(tmp_path, "qwen05", "lora", "orcamath", 31, seeds=(0,))
    write_row(tmp_path, "qwen05", "full", "orcamath", 30, seeds=(0,))
    drop_metric(tmp_path, "qwen05-*-orcamath-*", "accuracy_strict")
    results, _ = claims_of(tmp_path)
    result = results["lora-above-full-qwen05"]
    assert result.verdict == "partly reproduced"
    strict = result.by_metric["strict"]
    assert strict.skipped == 1 and strict.verdict == "reproduced" and strict.on_claims_metric == "reproduced"
    assert not result.metric_sensitive
    (row,) = [line for line in (tmp_path / "report" / "claims.md").read_text().splitlines()
              if line.startswith("| `lora-above-full-qwen05`")]
    assert row.endswith("| same on strict, flexible, lenient |")


def test_a_method_of_the_claim_missing_from_the_results_is_named(tmp_path):
    for dataset in ("gsm8k", "orcamath"):
        write_row(tmp_path, "smollm135", "fewshot", dataset, 30)
        write_row(tmp_path, "smollm135", "full", dataset, 8)
    results, _ = claims_of(tmp_path)
    result = results["fewshot-above-full-smollm135"]
    assert result.verdict == "reproduced" and result.absent == ["fewshot_chat"]
    # a wording of the baseline (require: any): one of them is enough for a complete verdict
    # and the claim's models are alternatives (smollm135 or its 4-bit GGUF): the one present is enough
    assert result.stated_verdict == "reproduced" and result.gaps == [] and result.absent_models == ["smollm135_q4"]
    assert "Not in these results: fewshot_chat, model smollm135_q4." in (tmp_path / "report" / "claims.md").read_text()


def test_a_claim_on_part_of_its_datasets_is_incomplete(tmp_path):
    """Every claim of the study's file names its datasets: a sweep without OrcaMath (offline, no local copy)
    reads "5-shot above full fine-tuning" on GSM8K alone, and says so."""
    write_row(tmp_path, "smollm135", "fewshot", "gsm8k", 30)
    write_row(tmp_path, "smollm135", "full", "gsm8k", 8)
    result = claims_of(tmp_path)[0]["fewshot-above-full-smollm135"]
    assert result.verdict == "reproduced" and result.stated_verdict == "reproduced (incomplete)"
    assert any("orcamath" in gap for gap in result.gaps), result.gaps


def test_a_claim_is_incomplete_when_a_method_it_needs_or_a_row_to_pair_or_a_file_is_missing(tmp_path):
    """'LoRA and DoRA do not score below zero-shot' without a DoRA cell, a model whose baseline is missing and a
    result file that cannot be read: each could hold what contradicts the claim, so none is a complete verdict."""
    write_row(tmp_path, "smollm135", "zeroshot", "gsm8k", 30)
    write_row(tmp_path, "smollm135", "full", "gsm8k", 8)
    write_row(tmp_path, "smollm135", "lora", "gsm8k", 31)
    write_row(tmp_path, "gemma270", "full", "gsm8k", 50)
    results, _ = claims_of(tmp_path)
    peft = results["peft-not-below-zeroshot-under-300m"]
    assert [i.a["method"] for i in peft.instances] == ["lora"]
    assert peft.stated_verdict.endswith("(incomplete)")
    assert "dora: no completed cell in these results" in peft.gaps
    full = results["full-below-zeroshot-under-300m"]
    assert [(i.a["model"], i.verdict) for i in full.instances] == [("smollm135", "reproduced")]
    assert full.stated_verdict == "reproduced (incomplete)"
    assert full.gaps == ["dataset 'orcamath': no cell of these results",
                         "gemma270 × full on gsm8k: no {zeroshot, zeroshot_instructed} (each) to compare it with"]

    broken = tmp_path / "gemma270-zeroshot-gsm8k-seed0"
    broken.mkdir()
    (broken / "result.json").write_text('{"status": "completed", "model": "gemma2')  # a truncated file
    results, report = claims_of(tmp_path)
    gaps = results["fewshot-above-full-smollm135"].gaps
    assert gaps == ["dataset 'orcamath': no cell of these results",
                    f"1 result file could not be read ({broken / 'result.json'}): their cells may be ones this "
                    "claim covers"]
    data = json.loads((tmp_path / "report" / "claims.json").read_text())
    assert not any(c["complete"] for c in data["claims"] if c["verdict"] != "not covered")


def test_claims_without_per_question_data_are_inconclusive_not_an_error(tmp_path):
    write_row(tmp_path, "qwen05", "lora", "orcamath", 50, seeds=(0,))
    write_row(tmp_path, "qwen05", "full", "orcamath", 5, seeds=(0,))
    for path in tmp_path.rglob(PREDICTIONS_FILE):
        path.unlink()
    results, report = claims_of(tmp_path)
    (instance,) = results["lora-above-full-qwen05"].instances
    assert instance.verdict == "inconclusive" and instance.test.test is None
    assert "no per-question data" in instance.test.reason and PREDICTIONS_FILE in instance.test.reason
    assert "no per-question data" in report["markdown"]


def test_predictions_that_disagree_with_result_json_are_not_used(tmp_path):
    path = write_cell(tmp_path, "qwen05", "lora", "gsm8k", 0, first(30))
    assert sum(question_scores(path, "gsm8k", "flexible").values()) == 30
    lines = (path.parent / PREDICTIONS_FILE).read_text().splitlines()
    (path.parent / PREDICTIONS_FILE).write_text("\n".join(lines[:-1]) + "\n")
    with pytest.raises(NoQuestionData, match=f"holds {QUESTIONS - 1} rows of gsm8k, .* n_eval={QUESTIONS}"):
        question_scores(path, "gsm8k", "flexible")
    flipped = [json.loads(line) for line in lines]
    flipped[40]["correct_flexible"] = True
    (path.parent / PREDICTIONS_FILE).write_text("".join(json.dumps(r) + "\n" for r in flipped))
    with pytest.raises(NoQuestionData, match="mean of correct_flexible"):
        question_scores(path, "gsm8k", "flexible")
    with pytest.raises(NoQuestionData, match="no rows for svamp"):
        question_scores(path, "svamp", "flexible")


def test_a_mark_on_a_trained_method_of_one_seed_says_it_speaks_for_that_run(tmp_path):
    write_row(tmp_path, "smollm135", "zeroshot", "gsm8k", 40)
    write_row(tmp_path, "smollm135", "full", "gsm8k", 10, seeds=(0,))
    write_row(tmp_path, "smollm135", "fewshot", "gsm8k", 46)
    report = write_report([tmp_path], tmp_path / "out", plots=False)
    full = next(r for r in report["rows"] if r["method"] == "full")
    assert (full["n"], full["delta_zeroshot_test"], full["delta_zeroshot_significant"]) == (1, MCNEMAR, True)
    # fewshot (its delta against zero-shot), also one seed and McNemar, trains nothing: its one run is the method
    assert "2 of 4 comparisons are of a trained method with one seed" in report["markdown"]  # full: both deltas


def test_negative_transfer_and_delta_marks_need_a_significant_paired_test(tmp_path):
    for model in ("smollm135", "gemma270"):  # two models with the same scores: one gsm8k table of both
        write_row(tmp_path, model, "zeroshot", "gsm8k", 40)
        write_row(tmp_path, model, "full", "gsm8k", 10)   # far below: significant
        write_row(tmp_path, model, "lora", "gsm8k", 38)   # a little below: not significant
        write_row(tmp_path, model, "fewshot", "gsm8k", 46)  # 6 questions more than zero-shot, one seed each
    report = write_report([tmp_path], tmp_path / "out", plots=False)
    both = {(r["model"], r["method"]): r for r in report["rows"]}
    rows = {method: r for (model, method), r in both.items() if model == "smollm135"}
    assert rows["full"]["negative_transfer"] is True and rows["full"]["delta_zeroshot_test"] == SEEDS_AND_QUESTIONS
    assert rows["lora"]["below_zeroshot"] is True and rows["lora"]["negative_transfer"] is False
    assert rows["lora"]["delta_zeroshot_p"] > 0.05
    assert rows["fewshot"]["delta_zeroshot_test"] == MCNEMAR
    assert rows["fewshot"]["delta_zeroshot_p"] == pytest.approx(0.03125)
    assert rows["zeroshot"]["delta_zeroshot_test"] is None and rows["zeroshot"]["negative_transfer"] is False
    # the zero-shot column of the gsm8k table is one family of the six tests of both models (full, lora, fewshot
    # each): the two fewshot p's (0.03125) rank third and fourth, after the two full's, far smaller, so Holm
    # multiplies them by 6 - 3 + 1 = 4, and its 6 questions are no longer marked; full's stays far below alpha.
    # A family per model (three tests) would double them instead.
    assert 6 * rows["full"]["delta_zeroshot_p"] < 4 * 0.03125
    for model in ("smollm135", "gemma270"):
        assert both[model, "fewshot"]["delta_zeroshot_p_adjusted"] == pytest.approx(4 * 0.03125)
        assert both[model, "fewshot"]["delta_zeroshot_significant"] is False
        assert both[model, "full"]["delta_zeroshot_significant"] is True
    assert rows["zeroshot"]["delta_zeroshot_p_adjusted"] is None and rows["zeroshot"]["delta_zeroshot_significant"] is None

    def lines(markdown):
        return {line.split(" | ")[1]: line for line in markdown.splitlines() if line.startswith("| smollm135")}

    held = lines(report["markdown"])
    assert "▼" in held["full"] and "▼" not in held["lora"]
    assert "| +10.0 |" in held["fewshot"] and "| -3.3 |" in held["lora"]
    # full against zero-shot (10 against 40 of 60 right) and against few-shot (46): both marked; zero-shot against
    # few-shot (McNemar's 0.03125) is not: Holm at least doubles it in the few-shot column's family of six tests
    assert "| -50.0* | -60.0* |" in held["full"] and "| – | -10.0 | 0 |" in held["zeroshot"]
    assert "Δ zero-shot (pp on flexible, * p<0.05, Holm)" in report["markdown"] and "Holm-adjusted as one family" in report["markdown"]
    assert "trained method with one seed" not in report["markdown"]  # full and lora have three
    with open(tmp_path / "out" / "summary.csv", newline="") as f:
        fewshot = next(r for r in csv.DictReader(f) if r["method"] == "fewshot")
    assert float(fewshot["delta_zeroshot_p_adjusted"]) == pytest.approx(4 * 0.03125)
    assert fewshot["delta_zeroshot_significant"] == "False"
    # each test on its own: the one-seed difference of 6 questions is marked, and not at a stricter level
    alone = write_report([tmp_path], tmp_path / "alone", plots=False, correction="none")
    assert "| +10.0* |" in lines(alone["markdown"])["fewshot"] and "Δ zero-shot (pp on flexible, * p<0.05)" in alone["markdown"]
    assert "No correction for the number of comparisons" in alone["markdown"]
    strict = write_report([tmp_path], tmp_path / "strict", plots=False, alpha=0.01, correction="none")
    assert "| +10.0 |" in lines(strict["markdown"])["fewshot"] and "alpha=0.01" in strict["markdown"]


def test_out_of_domain_negative_transfer_is_tested_on_that_set(tmp_path):
    for method, seeds, k_in, k_ood in (("zeroshot", (0,), 30, 40), ("lora", (0, 1), 45, 5)):
        for seed in seeds:
            write_cell(tmp_path, "qwen05", method, "gsm8k", seed, first(k_in), ood={"svamp": first(k_ood)})
    report = write_report([tmp_path], tmp_path / "out", plots=False)
    (lora,) = [r for r in report["ood_rows"] if r["method"] == "lora"]
    assert lora["eval_set"] == "svamp" and lora["delta_zeroshot"] == pytest.approx(-35 / 60)
    assert lora["delta_zeroshot_test"] == SEEDS_AND_QUESTIONS and lora["negative_transfer"] is True
    (in_domain,) = [r for r in report["rows"] if r["method"] == "lora"]
    assert in_domain["negative_transfer"] is False and in_domain["delta_zeroshot_p"] < 0.05
    ood_line = next(line for line in report["markdown"].splitlines() if line.startswith("| qwen05 | lora |")
                    and "▼" in line)
    assert ood_line.endswith("▼ |")  # marked on svamp, the last column, not in-domain


def test_a_metric_only_the_result_files_know_gets_columns_and_can_back_a_claim(tmp_path):
    for method, k in (("lora", 50), ("dora", 10)):
        for seed in (0, 1):
            write_cell(tmp_path, "qwen05", method, "orcamath", seed, first(k), extra_metric="units")
    claims = tmp_path / "units.yaml"
    claims.write_text("claims:\n  - {id: units, text: LoRA above DoRA on units., a: lora, b: dora, "
                      "direction: above, metric: units}\n")
    results, report = claims_of(tmp_path, claims)
    assert "accuracy_units_mean" in report["rows"][0] and "units (%)" in report["markdown"]
    with open(tmp_path / "report" / "summary.csv", newline="") as f:
        assert "accuracy_units_wilson_high" in next(csv.reader(f))
    assert results["units"].verdict == "reproduced" and results["units"].claim.metric == "units"
    # a claim on a registered metric is read on the files' own metric too, which this process never registered
    claims.write_text("claims:\n  - {id: flexible, text: LoRA above DoRA., a: lora, b: dora, direction: above, "
                      "metric: flexible}\n")
    results, _ = claims_of(tmp_path, claims)
    assert "units" not in METRICS and results["flexible"].by_metric["units"].verdict == "reproduced"
    with open(tmp_path / "report" / "claims.csv", newline="") as f:
        assert next(csv.DictReader(f))["verdict_units"] == "reproduced"
    assert "(strict, flexible, lenient, units)" in (tmp_path / "report" / "claims.md").read_text()
    claims.write_text("claims:\n  - {id: nope, text: x, a: lora, b: dora, direction: above, metric: nope}\n")
    with pytest.raises(ClaimsError, match="metric 'nope' is neither registered nor in the result files; "
                                          "known: strict, flexible, lenient, units"):
        check_claims(load_claims(claims), report["rows"])


BAD_CLAIMS = [
    ("claims:\n  - {id: x, text: t, a: full, b: lora, directon: above}\n",
     r"claims\[0\] \(id x\): unknown key 'directon'; allowed: id, text, a, b, direction, metric, margin"),
    ("claims:\n  - {id: x, text: t, a: full, b: lora, direction: higher}\n",
     r"direction='higher' is not allowed; allowed: above, below, not_below, not_above"),
    ("claims:\n  - {id: x, text: t, a: {methods: full}, b: lora, direction: above}\n",
     r"side a: unknown key 'methods'; allowed: method, require, models, models_require, params_below, "
     r"params_at_least"),
    ("claims:\n  - {id: x, text: t, a: {method: [full, lora], require: some}, b: dora, direction: above}\n",
     r"side a: require='some' is not allowed; allowed: all, any"),
    ("claims:\n  - {id: x, text: t, a: full, b: lora, direction: above, params_below: lots}\n",
     r"params_below='lots' must be a positive parameter count"),
    ("claims:\n  - {id: x, text: t, a: full, b: lora, direction: above, margin: 0.02}\n",
     r"margin applies to the directions not_below and not_above only"),
    ("claims:\n  - {id: x, text: t, a: lora, b: zeroshot, direction: not_below}\n",
     r"direction not_below needs a margin: the largest difference that still counts as not below"),
    ("claims:\n  - {id: x, text: t, a: full, direction: above}\n", r"missing key 'b'"),
    ("claim:\n  - {id: x}\n", r"unknown key 'claim'; allowed: claims"),
    ("claims: []\n", r"'claims' must be a non-empty list"),
    ("claims:\n  - {id: x, text: t, a: full, b: lora, direction: above}\n"
     "  - {id: x, text: u, a: full, b: dora, direction: above}\n", r"the id 'x' is used by more than one claim"),
    ("claims: [unclosed\n", r"cannot read it as YAML"),
]


@pytest.mark.parametrize(("text", "message"), BAD_CLAIMS)
def test_an_invalid_claims_file_names_the_bad_key_and_what_is_allowed(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ClaimsError, match=message) as error:
        load_claims(path)
    assert str(path) in str(error.value)


def test_the_study_claims_file_declares_the_six_claims_and_an_extension():
    claims = {c.id: c for c in load_claims(DEFAULT_CLAIMS)}
    assert list(claims) == list(CASES)
    assert claims["full-below-zeroshot-under-300m"].b.methods == ("zeroshot", "zeroshot_instructed")
    # "full fine-tuning hurts under 300M, while LoRA and DoRA do not": both halves about the same models
    for claim_id in ("full-below-zeroshot-under-300m", "peft-not-below-zeroshot-under-300m"):
        assert claims[claim_id].selector.params_below == 3e8
        assert claims[claim_id].selector.models == ("smollm135*", "gemma270")
    assert claims["peft-not-below-zeroshot-under-300m"].margin == 0.02
    # the same claim on every model is not the study's, and says so
    extended = claims["peft-not-below-zeroshot-all-models"]
    assert extended.selector.params_below is None and "llama1b" in extended.selector.models
    assert "extends the study's claim" in extended.text and extended.margin == 0.02
    assert all(c.metric is None for c in claims.values())  # each dataset's claims metric


def test_the_study_s_pooled_claims_name_the_five_models_so_none_counts_twice():
    claims = {c.id: c for c in load_claims(DEFAULT_CLAIMS)}
    for claim_id in POOLED_CLAIMS:
        claim = claims[claim_id]
        assert claim.pool == "models" and "pooled over models" in claim.describe()
        # "smollm135*" would pool SmolLM2-135M and its 4-bit GGUF as two models
        assert claim.selector.models == ("smollm135", "gemma270", "smollm360", "qwen05", "llama1b")
        unpooled = claims[claim_id.removesuffix("-pooled")]
        assert (claim.a, claim.b, claim.direction, claim.datasets) == (
            unpooled.a, unpooled.b, unpooled.direction, unpooled.datasets)


def _random_seeds(rng, seeds: int, questions: int, rate: float) -> list[list[bool]]:
    return (rng.random((seeds, questions)) < rate).tolist()


def test_the_pooled_test_of_one_model_is_the_seeds_test_to_the_bit():
    import numpy as np

    rng = np.random.default_rng(3)
    for seeds_a, seeds_b in ((3, 3), (3, 1), (2, 1), (1, 1)):
        a, b = _random_seeds(rng, seeds_a, 80, 0.5), _random_seeds(rng, seeds_b, 80, 0.4)
        assert pooled_seeds_and_questions_test([(a, b)]) == seeds_and_questions_test(a, b)


def test_the_pooled_test_averages_the_models_differences_on_shared_questions():
    import numpy as np

    rng = np.random.default_rng(4)
    strata = [(_random_seeds(rng, 3, 100, 0.5 + shift), _random_seeds(rng, 3, 100, 0.45)) for shift in
              (0.0, 0.05, 0.1)]
    pooled = pooled_seeds_and_questions_test(strata)
    alone = [seeds_and_questions_test(a, b) for a, b in strata]
    assert pooled.difference == pytest.approx(sum(t.difference for t in alone) / 3)
    assert pooled.ci_low < pooled.difference < pooled.ci_high
    # each model's seed spread, divided by the number of models, is the pooled side's part
    assert pooled.seed_se[0] == pytest.approx(math.hypot(*(t.seed_se[0] for t in alone)) / 3)
    # the same interval on a second computation: the draws are seeded
    assert pooled_seeds_and_questions_test(strata) == pooled
    # one seed a side everywhere: the exact sign-flip test, the per-question means in steps of 1/3
    singles = [([a[0]], [b[0]]) for a, b in strata]
    exact = pooled_seeds_and_questions_test(singles)
    assert exact.seed_se == (0.0, 0.0) and 0 < exact.p_value <= 1
    with pytest.raises(ValueError, match="same questions"):
        pooled_seeds_and_questions_test([strata[0], ([[True] * 99], [[False] * 99])])


def test_the_pooled_test_needs_every_model_on_the_same_questions():
    a = [{q: q < 30 for q in range(60)}]
    b = [{q: q < 20 for q in range(60)}]
    short = [{q: q < 20 for q in range(50)}]
    test = pooled_paired_test([(a, b), (a, short)])
    assert test.test is None and "scored different questions" in test.reason
    test = pooled_paired_test([(a, b), (a, b)], interval=True)
    assert test.test == POOLED and test.strata == 2 and test.seeds == (2, 2)
    assert "over 2 models" in test.describe()


def test_the_pooled_test_holds_its_level_and_resolves_what_one_model_cannot():
    """Five models of three seeds a side, seeds 3 points apart, on 400 shared questions: the pooled test rejects
    "no difference" at about alpha when there is none, and finds a 3-point mean difference far more often than
    one model's test finds it (bench/stats_calibration.py --models; the full table is in docs/results.md)."""
    level = rejection_rate(400, 3, 3, 0.03, 150, models=5)
    pooled = rejection_rate(400, 3, 3, 0.03, 60, effect=0.03, rng_seed=1, models=5)
    alone = rejection_rate(400, 3, 3, 0.03, 60, effect=0.03, rng_seed=1)
    assert level <= 0.05 + 2 * (0.05 * 0.95 / 150) ** 0.5
    assert pooled > alone + 0.2


def _pooled_sweep(sweep: Path, differences: dict[str, int], lose: str | None = None) -> None:
    """DoRA and LoRA on GSM8K for each model, three seeds a side, DoRA ahead by ``differences[model]`` of 60
    questions (seeds one question apart); ``lose``: a model whose DoRA loses its third seed."""
    for model, gap in differences.items():
        for offset, seed in enumerate(TRAINED_SEEDS):
            write_cell(sweep, model, "lora", "gsm8k", seed, first(20 + offset))
            if not (model == lose and seed == 2):
                write_cell(sweep, model, "dora", "gsm8k", seed, first(20 + gap + (offset * 3) % 4))
    if lose:
        _lose(sweep, lose, "dora", "gsm8k", 2, "diverged")


def _pool_claims(tmp_path: Path, models=("smollm135", "gemma270", "qwen05")) -> Path:
    path = tmp_path / "pooled.yaml"
    entry = {"a": {"method": "dora"}, "b": {"method": "lora"}, "direction": "above", "models": list(models),
             "datasets": ["gsm8k"]}
    path.write_text(json.dumps({"claims": [
        {"id": "per-model", "text": "DoRA above LoRA, model by model.", **entry},
        {"id": "pooled", "text": "DoRA above LoRA on the models' mean.", "pool": "models", **entry},
    ]}))
    return path


def test_a_pooled_claim_reads_the_models_mean_difference_as_one_instance(tmp_path):
    """Each model's DoRA a few questions ahead of its LoRA over seeds that spread: no model alone shows it, the
    mean over three does; the pooled instance names each model's difference."""
    sweep = tmp_path / "sweep"
    _pooled_sweep(sweep, {"smollm135": 3, "gemma270": 4, "qwen05": 3})
    results, _ = claims_of(sweep, claims=_pool_claims(tmp_path))
    per_model, pooled = results["per-model"], results["pooled"]
    assert len(per_model.instances) == 3 and per_model.verdict == "inconclusive"
    (instance,) = pooled.instances
    assert (pooled.verdict, instance.test.test, instance.test.seeds) == ("reproduced", POOLED, (9, 9))
    assert [r["model"] for r in constituents(instance.a)] == ["smollm135", "gemma270", "qwen05"]
    assert instance.test.difference == pytest.approx(
        sum(i.test.difference for i in per_model.instances) / 3)
    assert instance.a["accuracy_flexible_mean"] - instance.b["accuracy_flexible_mean"] == pytest.approx(
        instance.test.difference)
    assert not pooled.gaps
    md = (sweep / "report" / "claims.md").read_text()
    assert "3 models pooled (smollm135, gemma270, qwen05)" in md
    assert "per model, A − B (pp): smollm135 +" in md and "over 3 models" in md
    flat = json.loads((sweep / "report" / "claims.json").read_text())
    pooled_json = next(c for c in flat["claims"] if c["id"] == "pooled")
    assert pooled_json["pool"] == "models" and pooled_json["instances"][0]["test"] == POOLED


def test_a_pooled_claim_missing_a_model_or_a_seed_says_so(tmp_path):
    """The mean over two of three models is another quantity: the verdict is incomplete and names the missing
    model; a model whose DoRA lost a seed makes the favoured side's survivors lucky ones, so no ordering."""
    sweep = tmp_path / "sweep"
    _pooled_sweep(sweep, {"smollm135": 8, "gemma270": 8}, lose="gemma270")
    results, _ = claims_of(sweep, claims=_pool_claims(tmp_path))
    pooled = results["pooled"]
    (instance,) = pooled.instances
    assert instance.tested_verdict == "reproduced" and instance.verdict == "inconclusive" and instance.downgraded
    assert instance.a["not_completed"] == "gemma270: seed 2 diverged"
    assert any("'qwen05' matches no model" in gap for gap in pooled.gaps)
    assert any(gap.startswith("gemma270 × dora on gsm8k: mean over 2 completed seeds") for gap in pooled.gaps)
    assert pooled.stated_verdict == "inconclusive (incomplete)"


def test_a_model_with_an_extra_variant_joins_the_pool_with_its_rows_at_the_others_settings(tmp_path):
    """Qwen2.5-0.5B also ran LoRA and DoRA at r=8: its rows read r=16 and r=8 where the other models' read '', yet
    its r=16 rows are their configuration and pool with them; r=8 pools alone, over one of three models: a gap."""
    sweep = tmp_path / "sweep"
    _pooled_sweep(sweep, {"smollm135": 8, "gemma270": 8, "qwen05": 8})
    for method, k in (("lora", 20), ("dora", 28)):
        for offset, seed in enumerate(TRAINED_SEEDS):
            _variant(write_cell(sweep / "r8", "qwen05", method, "gsm8k", seed, first(k + offset)), r=8)
    results, _ = claims_of(sweep, claims=_pool_claims(tmp_path))
    pooled = results["pooled"]
    pools = {tuple((row["model"], row["variant"]) for row in constituents(i.a)): i for i in pooled.instances}
    assert set(pools) == {(("smollm135", ""), ("gemma270", ""), ("qwen05", "r=16")), (("qwen05", "r=8"),)}
    assert all(i.tested_verdict == "reproduced" for i in pooled.instances)
    assert [gap for gap in pooled.gaps if "pooled over" in gap] == [
        "dora (r=8) against lora (r=8) on gsm8k at method.r=8: pooled over 1 of the 3 models the claim pairs there "
        "(qwen05); gemma270, smollm135 have no pair of these variants, and the mean over part of the models is "
        "another quantity"]
    assert pooled.stated_verdict == "reproduced (incomplete)"


def _rerun(path: Path) -> None:
    """The cell rerun under other code: keys of its own, settings the same."""
    record = json.loads(path.read_text())
    for key in ("evaluation_key", "configuration_key", "training_key"):
        record["identity"][key] = "rerun-" + record["identity"][key]
    path.write_text(json.dumps(record))


def test_configurations_of_the_same_settings_pool_by_their_label_and_say_the_pool_is_partial(tmp_path):
    """Qwen2.5-0.5B's LoRA and DoRA rerun under other code (keys of their own, settings the same): model by model,
    each of its DoRA rows is paired with each of its LoRA rows; pooled, each such pair pools by its label, with no
    other model's, and every pool over part of the models is a gap: the verdict says it is incomplete."""
    sweep = tmp_path / "sweep"
    _pooled_sweep(sweep, {"smollm135": 8, "gemma270": 8, "qwen05": 8})
    for method, k in (("lora", 20), ("dora", 28)):
        for offset, seed in enumerate(TRAINED_SEEDS):
            _rerun(write_cell(sweep / "rerun", "qwen05", method, "gsm8k", seed, first(k + offset)))
    results, _ = claims_of(sweep, claims=_pool_claims(tmp_path))
    per_model, pooled = results["per-model"], results["pooled"]
    qwen = sorted((i.a["variant"], i.b["variant"]) for i in per_model.instances if i.a["model"] == "qwen05")
    assert qwen == [(a, b) for a in ("config qwen05-d", "config rerun-qw")
                    for b in ("config qwen05-l", "config rerun-qw")]
    assert not pairing_gaps(per_model) and per_model.stated_verdict == "reproduced"
    pools = sorted(tuple((row["model"], row["variant"]) for row in constituents(i.a)) for i in pooled.instances)
    assert pools == sorted([(("smollm135", ""), ("gemma270", "")), *[(("qwen05", a),) for a, _ in qwen]])
    partial = [gap for gap in pooled.gaps if "pooled over" in gap]
    assert len(partial) == len(set(partial)) == 5
    assert partial[0] == ("dora against lora on gsm8k: pooled over 2 of the 3 models the claim pairs there (smollm135, "
                          "gemma270); qwen05 has no pair of these variants, and the mean over part of the models is "
                          "another quantity")
    assert pooled.stated_verdict == "reproduced (incomplete)"


def _at_rate(path: Path, lr: float) -> None:
    """The cell at learning rate ``lr`` (tuned per dataset × model × method), with keys of its own."""
    record = json.loads(path.read_text())
    record["config"]["method"]["lr"] = lr
    for key in ("evaluation_key", "configuration_key", "training_key"):
        record["identity"][key] = f"lr{lr}-" + record["identity"][key]
    path.write_text(json.dumps(record))


def test_a_per_model_rate_keys_no_pool_and_a_model_with_two_pairs_alike_stays_out_of_it(tmp_path):
    """Each model at its own tuned rate, Qwen2.5-0.5B also at a second (an ablation): no two models share a rate,
    so the rate keys no pool and SmolLM2-135M and Gemma-3-270M pool together; Qwen's two pairs read alike on what
    the pool is keyed by, so which joins cannot be told: it stays out, a gap names it, and the pool over two of
    three models is a gap."""
    sweep = tmp_path / "sweep"
    rates = {"smollm135": 5e-4, "gemma270": 1e-4, "qwen05": 2e-4}
    for model, lr in rates.items():
        for method, k in (("lora", 20), ("dora", 28)):
            for offset, seed in enumerate(TRAINED_SEEDS):
                _at_rate(write_cell(sweep, model, method, "gsm8k", seed, first(k + offset)), lr)
                if model == "qwen05":
                    _at_rate(write_cell(sweep / "ablation", model, method, "gsm8k", seed, first(k + offset)), 1e-3)
    results, _ = claims_of(sweep, claims=_pool_claims(tmp_path))
    pooled = results["pooled"]
    (instance,) = pooled.instances
    assert [row["model"] for row in constituents(instance.a)] == ["smollm135", "gemma270"]
    assert instance.tested_verdict == "reproduced"
    assert pairing_gaps(pooled) == [
        "qwen05 × dora against qwen05 × lora on gsm8k: dora (lr=0.0002) against lora (lr=0.0002), dora (lr=0.001) "
        "against lora (lr=0.001) read alike on the settings the models' pool is keyed by (none: no setting that "
        "tells a model's variants apart has a value two models share), so which of them joins the pool cannot be "
        "told, and none does",
        "dora against lora on gsm8k: pooled over 2 of the 3 models the claim pairs there (smollm135, gemma270); "
        "qwen05 is left out as ambiguous (several pairs of it read alike), and the mean over part of the models is "
        "another quantity"]
    assert pooled.stated_verdict == "reproduced (incomplete)"
    # model by model, each rate of Qwen is paired with its own
    qwen = sorted(i.a["variant"] for i in results["per-model"].instances if i.a["model"] == "qwen05")
    assert qwen == ["lr=0.0002", "lr=0.001"]


@pytest.mark.parametrize(("entry", "message"), [
    ({"pool": "seeds"}, "pool='seeds' is not allowed; allowed: models"),
    ({"pool": "models", "a": {"method": "dora", "models": ["qwen05"]}}, "pairs across models"),
])
def test_a_pool_the_claims_cannot_read_is_refused(tmp_path, entry, message):
    path = tmp_path / "claims.yaml"
    path.write_text(json.dumps({"claims": [{"id": "c", "text": "t", "a": {"method": "dora"},
                                            "b": {"method": "lora"}, "direction": "above", **entry}]}))
    with pytest.raises(ClaimsError, match=re.escape(message)):
        load_claims(path)


def test_an_orcamath_claim_reads_the_lenient_score(tmp_path):
    """OrcaMath's claims metric is lenient: LoRA answers in prose that ends with a check (its last number is no
    answer), DoRA with "####". Read on the flexible score LoRA would score 0 and the claim be contradicted."""
    for offset, seed in enumerate(TRAINED_SEEDS):
        write_cell(tmp_path, "qwen05", "lora", "orcamath", seed, first(45 + offset), prose=True)
        write_cell(tmp_path, "qwen05", "dora", "orcamath", seed, first(30 + offset))
        write_cell(tmp_path, "qwen05", "lora", "gsm8k", seed, first(45 + offset), prose=True)
        write_cell(tmp_path, "qwen05", "dora", "gsm8k", seed, first(30 + offset))
    results, _ = claims_of(tmp_path)
    (orcamath,) = results["lora-above-dora-orcamath"].instances
    assert orcamath.metric == "lenient" and orcamath.verdict == "reproduced"
    (gsm8k,) = results["dora-above-lora-gsm8k"].instances
    assert gsm8k.metric == "flexible" and gsm8k.verdict == "reproduced"  # LoRA's prose scores 0 there
    markdown = (tmp_path / "report" / "claims.md").read_text()
    assert "| `lora-above-dora-orcamath` | LoRA scores above DoRA on OrcaMath. | lenient (orcamath) |" in markdown
    assert "| orcamath | lenient | qwen05 |" in markdown
    summary = (tmp_path / "report" / "summary.md").read_text()
    orcamath_section = summary.split("## orcamath")[1].split("## ")[0]
    assert "Δ zero-shot (pp on lenient," in orcamath_section
    assert "Δ zero-shot (pp on flexible," in summary.split("## gsm8k")[1].split("## ")[0]
    mine = tmp_path / "mine.yaml"
    mine.write_text("claims:\n  - {id: x, text: LoRA above DoRA., a: {method: lora}, b: {method: dora}, "
                    "direction: above, metric: flexible, datasets: [orcamath]}\n")
    (flexible,) = claims_of(tmp_path, claims=mine)[0]["x"].instances
    assert flexible.metric == "flexible" and flexible.verdict == "contradicted"


def test_a_result_file_written_before_datasets_declared_a_claims_metric_reads_the_dataset_s(tmp_path):
    for method, k in (("lora", 45), ("dora", 30)):
        for offset, seed in enumerate(TRAINED_SEEDS):
            path = write_cell(tmp_path, "qwen05", method, "orcamath", seed, first(k + offset), prose=method == "lora")
            record = json.loads(path.read_text())
            del record["config"]["dataset"]["claims_metric"]
            path.write_text(json.dumps(record))
    (instance,) = claims_of(tmp_path)[0]["lora-above-dora-orcamath"].instances
    assert instance.metric == "lenient" and instance.verdict == "reproduced"


def test_rows_run_with_different_claims_metrics_are_read_on_side_a_s_and_say_so(tmp_path):
    for method, k in (("lora", 45), ("dora", 30)):
        for offset, seed in enumerate(TRAINED_SEEDS):
            path = write_cell(tmp_path, "qwen05", method, "orcamath", seed, first(k + offset))
            if method == "dora":
                record = json.loads(path.read_text())
                record["config"]["dataset"]["claims_metric"] = "flexible"
                path.write_text(json.dumps(record))
    results, report = claims_of(tmp_path)
    result = results["lora-above-dora-orcamath"]
    (instance,) = result.instances
    assert instance.metric == "lenient" and instance.verdict == "reproduced"
    assert any("run with different claims metrics (lenient, flexible), read on lenient" in g for g in result.gaps)
    # the summary's deltas are on each row's own claims metric, which a column of its own names
    assert {r["method"]: r["delta_metric"] for r in report["rows"]} == {"lora": "lenient", "dora": "flexible"}
    table = [line for line in report["markdown"].split("## orcamath")[1].splitlines() if line.startswith("| ")]
    assert "| Δ on | Δ zero-shot (pp on the row's Δ on, * p<0.05, Holm) |" in table[0]
    assert "| lenient | – |" in next(line for line in table if "| lora |" in line)
    assert "were run with different claims metrics (lenient, flexible)" in report["markdown"]


def _prose_lora_against_zeroshot(sweep: Path, datasets=("gsm8k", "orcamath"), ood=None) -> None:
    """Per dataset qwen05's zero-shot (30 of 60 right, answered with "####") and three LoRA seeds (44, 45, 46 of
    60 right, answered in prose ending with a check): lenient reads LoRA 15 points above zero-shot, flexible (the
    check's last number) 1 of 60 right, far below. ``ood``: out-of-domain sets, LoRA's answers in prose there too."""
    for dataset in datasets:
        write_cell(sweep, "qwen05", "zeroshot", dataset, 0, first(30), ood={s: first(30) for s in ood or ()})
        for offset, seed in enumerate(TRAINED_SEEDS):
            write_cell(sweep, "qwen05", "lora", dataset, seed, first(44 + offset), prose=True,
                       ood={s: first(44 + offset) for s in ood or ()}, ood_prose=True)


def test_the_summary_s_deltas_and_marks_read_each_dataset_s_claims_metric_as_its_claims_do(tmp_path):
    """On OrcaMath flexible and lenient disagree about LoRA against zero-shot: flexible puts it far below (its prose
    ends with a check's number), lenient 15 points above. The summary's delta, its test, ▼ and the claim read
    lenient there and agree; on GSM8K all of them read flexible, as before."""
    from slm_sweep.report.comparisons import compare_rows

    _prose_lora_against_zeroshot(tmp_path)
    results, report = claims_of(tmp_path)
    rows = {(r["dataset"], r["method"]): r for r in report["rows"]}
    instances = {i.dataset: i for i in results["peft-not-below-zeroshot-all-models"].instances}

    lora, zeroshot = rows["orcamath", "lora"], rows["orcamath", "zeroshot"]
    assert lora["accuracy_flexible_mean"] < zeroshot["accuracy_flexible_mean"] - 0.4  # flexible: far below
    assert lora["delta_metric"] == zeroshot["delta_metric"] == "lenient"
    assert lora["delta_zeroshot"] == pytest.approx(lora["accuracy_lenient_mean"] - zeroshot["accuracy_lenient_mean"])
    assert lora["delta_zeroshot"] == pytest.approx(0.25)
    assert lora["delta_zeroshot_p"] == compare_rows(lora, zeroshot, "orcamath", "lenient").p_value
    assert lora["delta_zeroshot_significant"] is True
    assert lora["below_zeroshot"] is False and lora["negative_transfer"] is False
    assert instances["orcamath"].metric == "lenient" and instances["orcamath"].verdict == "reproduced"

    lora, zeroshot = rows["gsm8k", "lora"], rows["gsm8k", "zeroshot"]
    assert lora["delta_metric"] == zeroshot["delta_metric"] == "flexible"
    assert lora["delta_zeroshot"] == pytest.approx(lora["accuracy_flexible_mean"] - zeroshot["accuracy_flexible_mean"])
    assert lora["delta_zeroshot_p"] == compare_rows(lora, zeroshot, "gsm8k", "flexible").p_value
    assert lora["below_zeroshot"] is True and lora["negative_transfer"] is True
    assert instances["gsm8k"].metric == "flexible" and instances["gsm8k"].verdict == "contradicted"

    with (tmp_path / "report" / "summary.csv").open(newline="") as f:
        written = {(r["dataset"], r["method"]): r for r in csv.DictReader(f)}
    assert {key: r["delta_metric"] for key, r in written.items()} == {
        ("gsm8k", "zeroshot"): "flexible", ("gsm8k", "lora"): "flexible",
        ("orcamath", "zeroshot"): "lenient", ("orcamath", "lora"): "lenient"}
    assert written["orcamath", "lora"]["negative_transfer"] == "False"
    assert float(written["orcamath", "lora"]["delta_zeroshot"]) == pytest.approx(0.25)

    summary = (tmp_path / "report" / "summary.md").read_text()
    assert "Δ on: flexible (gsm8k), lenient (orcamath)" in summary
    assert "The deltas and ▼ marks of this table are on the flexible score" not in summary
    orcamath = summary.split("## orcamath")[1].split("\n## ")[0]
    gsm8k = summary.split("## gsm8k")[1].split("\n## ")[0]
    assert "Δ zero-shot (pp on lenient," in orcamath and "Δ zero-shot (pp on flexible," in gsm8k
    (orcamath_lora,) = [line for line in orcamath.splitlines() if line.startswith("| qwen05 | lora |")]
    (gsm8k_lora,) = [line for line in gsm8k.splitlines() if line.startswith("| qwen05 | lora |")]
    assert "▼" not in orcamath_lora and "| +25.0* |" in orcamath_lora
    # the mark stands beside the accuracy the delta is on: lenient on OrcaMath, flexible on GSM8K
    assert f"| {100 * rows['gsm8k', 'lora']['accuracy_flexible_mean']:.1f} ± " in gsm8k_lora
    assert gsm8k_lora.count("▼") == 1
    flexible_cell = gsm8k_lora.split(" | ")[4]  # model, method, seeds, questions, then flexible (the primary)
    assert flexible_cell.endswith("▼"), gsm8k_lora


def test_out_of_domain_deltas_read_the_evaluation_set_s_claims_metric(tmp_path):
    """Trained on OrcaMath (lenient) and evaluated on SVAMP (flexible): LoRA's prose answers are 15 points above
    zero-shot in-domain on lenient, and far below on SVAMP's flexible score, which the out-of-domain row reads."""
    _prose_lora_against_zeroshot(tmp_path, datasets=("orcamath",), ood=("svamp",))
    report = write_report([tmp_path], tmp_path / "report", plots=False)
    (lora,) = [r for r in report["ood_rows"] if r["method"] == "lora"]
    (zeroshot,) = [r for r in report["ood_rows"] if r["method"] == "zeroshot"]
    assert lora["eval_set"] == "svamp" and lora["delta_metric"] == zeroshot["delta_metric"] == "flexible"
    assert lora["delta_zeroshot"] == pytest.approx(lora["accuracy_flexible_mean"] - zeroshot["accuracy_flexible_mean"])
    assert lora["below_zeroshot"] is True and lora["negative_transfer"] is True
    (in_domain,) = [r for r in report["rows"] if r["method"] == "lora"]
    assert in_domain["delta_metric"] == "lenient" and in_domain["negative_transfer"] is False
    with (tmp_path / "report" / "summary_ood.csv").open(newline="") as f:
        assert {r["method"]: r["delta_metric"] for r in csv.DictReader(f)} == {"zeroshot": "flexible",
                                                                               "lora": "flexible"}
    table = report["markdown"].split("### trained on orcamath")[1]
    assert "| model | method | orcamath (n=60, lenient), in-domain | svamp (n=60, flexible) |" in table
    (line,) = [row for row in table.splitlines() if row.startswith("| qwen05 | lora |")]
    in_domain_cell, svamp_cell = line.strip(" |").split(" | ")[2:]
    assert "▼" not in in_domain_cell and in_domain_cell.startswith(f"{100 * in_domain['accuracy_lenient_mean']:.1f}")
    assert svamp_cell.endswith("▼") and svamp_cell.startswith(f"{100 * lora['accuracy_flexible_mean']:.1f}")


def test_claims_metric_option_reads_a_set_s_deltas_marks_and_claims_on_another_metric(tmp_path, capsys):
    """--claims-metric NAME=METRIC reads a dataset's (or an out-of-domain set's) deltas, tests, marks and claims on
    METRIC instead of the claims metric its result files recorded (which a rerun that reuses finished cells keeps),
    and summary.md says so; a set or a metric the results do not have is refused, naming what they have."""
    sweep = tmp_path / "sweep"
    _prose_lora_against_zeroshot(sweep, datasets=("orcamath",), ood=("svamp",))
    assert main([str(sweep), "--out", str(tmp_path / "recorded"), "--no-plots", "--claims"]) == 0
    recorded = json.loads((tmp_path / "recorded" / "report.json").read_text())
    assert recorded["settings"]["claims_metrics"] is None
    assert "as --claims-metric asks" not in (tmp_path / "recorded" / "summary.md").read_text()
    capsys.readouterr()

    out = tmp_path / "asked"
    assert main([str(sweep), "--out", str(out), "--no-plots", "--claims", "--claims-metric", "orcamath=flexible",
                 "--claims-metric", "svamp=accuracy_lenient"]) == 0
    with (out / "summary.csv").open(newline="") as f:
        rows = {r["method"]: r for r in csv.DictReader(f)}
    # in-domain: recorded lenient (15 points above zero-shot); read on flexible, LoRA's prose is far below
    assert {r["delta_metric"] for r in rows.values()} == {"flexible"}
    assert rows["lora"]["negative_transfer"] == "True"
    assert float(rows["lora"]["delta_zeroshot"]) == pytest.approx(
        float(rows["lora"]["accuracy_flexible_mean"]) - float(rows["zeroshot"]["accuracy_flexible_mean"]))
    claims = json.loads((out / "claims.json").read_text())
    (instance,) = [i for c in claims["claims"] if c["id"] == "peft-not-below-zeroshot-all-models"
                   for i in c["instances"] if i["dataset"] == "orcamath"]
    assert instance["metric"] == "flexible" and instance["verdict"] == "contradicted"
    # out of domain: svamp's entries record none (its config: flexible, far below); read on lenient, above
    with (out / "summary_ood.csv").open(newline="") as f:
        ood = {r["method"]: r for r in csv.DictReader(f)}
    assert {r["delta_metric"] for r in ood.values()} == {"lenient"}
    assert ood["lora"]["negative_transfer"] == "False" and float(ood["lora"]["delta_zeroshot"]) > 0
    summary = (out / "summary.md").read_text()
    assert "orcamath: deltas on flexible as --claims-metric asks; its 4 results recorded lenient\n" in summary
    assert "svamp: deltas on lenient as --claims-metric asks; its 4 results recorded no claims metric\n" in summary
    assert "Δ on: flexible (orcamath)" in summary
    settings = json.loads((out / "report.json").read_text())["settings"]
    assert settings["claims_metrics"] == {"metrics": {"orcamath": "flexible", "svamp": "lenient"}, "from": "option"}
    capsys.readouterr()

    refused = tmp_path / "refused"
    assert main([str(sweep), "--out", str(refused), "--claims-metric", "orcamath=last_digit"]) == 2
    err = capsys.readouterr().err
    assert "orcamath=last_digit: the results on orcamath hold no accuracy of 'last_digit'" in err
    assert "they hold: " in err and "flexible" in err and "lenient" in err
    assert main([str(sweep), "--out", str(refused), "--claims-metric", "gsm8k=flexible"]) == 2
    assert "no dataset or out-of-domain set 'gsm8k' in the completed results; they have: orcamath, svamp" in \
        capsys.readouterr().err
    assert not refused.exists(), "nothing is written before the claims metrics are checked"
    for bad in (["--claims-metric", "orcamath"], ["--claims-metric", "orcamath=flexible", "--claims-metric",
                                                  "orcamath=strict"]):
        with pytest.raises(SystemExit) as exit_:
            main([str(sweep), "--out", str(refused), *bad])
        assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "'orcamath' is not NAME=METRIC" in err and "--claims-metric names orcamath more than once" in err


def test_the_sweeps_claims_metrics_read_a_sets_in_domain_and_out_of_domain_rows_apart(tmp_path, monkeypatch):
    """One sweep folder, two grids: SVAMP zero-shot and LoRA run with dataset.claims_metric=lenient, then OrcaMath
    evaluated out of domain on SVAMP, whose entries record SVAMP's own flexible. The end-of-sweep summary reads
    each as it was run: the SVAMP job configs' lenient is no out-of-domain set's (it read the out-of-domain rows on
    lenient and called the fresh results "reused"), and it agrees with a report run later. An out-of-domain set
    whose config changed is read on its config's metric out of domain only, its in-domain rows staying on theirs."""
    import functools

    import slm_sweep.report as report
    from slm_sweep.sweep.callbacks import AggregateSweep

    sweep = tmp_path / "sweep"
    _prose_lora_against_zeroshot(sweep, datasets=("orcamath",), ood=("svamp",))
    _prose_lora_against_zeroshot(sweep, datasets=("svamp",))

    def run_with(svamp_in_domain: str, svamp_out_of_domain: str) -> None:
        for path in sweep.glob("*/result.json"):
            record = json.loads(path.read_text())
            if record["dataset"] == "svamp":
                record["config"]["dataset"]["claims_metric"] = svamp_in_domain
            for entry in record["eval_sets"].values():
                entry["claims_metric"] = svamp_out_of_domain
            path.write_text(json.dumps(record))
            (path.parent / ".hydra").mkdir(exist_ok=True)
            (path.parent / ".hydra" / "config.yaml").write_text(
                f"dataset:\n  name: {record['dataset']}\n  claims_metric: {record['config']['dataset']['claims_metric']}\n")

    monkeypatch.setattr(report, "write_report", functools.partial(report.write_report, plots=False))
    config = OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep)}}, "eval": {"split": "test"}, "logger": None})

    run_with(svamp_in_domain="lenient", svamp_out_of_domain="flexible")  # each as its own grid asked
    AggregateSweep().on_multirun_end(config)
    summary = (sweep / "summary.md").read_text()
    assert "as this sweep's config says" not in summary and "reused results" not in summary
    assert json.loads((sweep / "report.json").read_text())["settings"]["claims_metrics"] is None
    with (sweep / "summary_ood.csv").open(newline="") as f:
        ood = {r["method"]: r for r in csv.DictReader(f)}
    assert {r["delta_metric"] for r in ood.values()} == {"flexible"} and ood["lora"]["negative_transfer"] == "True"
    with (sweep / "summary.csv").open(newline="") as f:
        assert {r["dataset"]: r["delta_metric"] for r in csv.DictReader(f)} == {"orcamath": "lenient",
                                                                                 "svamp": "lenient"}
    later = write_report([sweep], tmp_path / "later", plots=False, claims=DEFAULT_CLAIMS)
    assert f"{later['markdown']}\n" == summary, "the sweep's summary and a later report disagree"

    # SVAMP's entries recorded lenient (its config said so then); its config says flexible now
    run_with(svamp_in_domain="lenient", svamp_out_of_domain="lenient")
    AggregateSweep().on_multirun_end(config)
    summary = (sweep / "summary.md").read_text()
    assert ("\nsvamp (out of domain): deltas on flexible as this sweep's config says; its 4 results recorded "
            "lenient\n") in summary
    assert json.loads((sweep / "report.json").read_text())["settings"]["claims_metrics"] == {
        "metrics": {}, "out_of_domain": {"svamp": "flexible"}, "from": "sweep"}
    with (sweep / "summary_ood.csv").open(newline="") as f:
        assert {r["delta_metric"] for r in csv.DictReader(f)} == {"flexible"}
    with (sweep / "summary.csv").open(newline="") as f:
        assert {r["dataset"]: r["delta_metric"] for r in csv.DictReader(f)} == {"orcamath": "lenient",
                                                                                 "svamp": "lenient"}


def run_cli(*args, cwd):
    """``python -m slm_sweep.report`` in a subprocess that finds the package from the repository root."""
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    return subprocess.run([sys.executable, "-m", "slm_sweep.report", *map(str, args)], cwd=cwd,
                          env=dict(os.environ, PYTHONPATH=path), capture_output=True, text=True, timeout=120)


def test_cli_checks_the_study_claims_or_a_file_and_rejects_a_bad_one(tmp_path, capsys):
    sweep = tmp_path / "sweep"
    write_row(sweep, "smollm135", "dora", "gsm8k", 10)
    write_row(sweep, "smollm135", "lora", "gsm8k", 40)
    result = run_cli(sweep, "--out", tmp_path / "out", "--no-plots", "--claims", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "## Claims" in result.stdout and "| `dora-above-lora-gsm8k` |" in result.stdout
    assert "**contradicted**" in result.stdout and "### Not covered" in result.stdout
    assert all((tmp_path / "out" / name).is_file() for name in ("claims.md", "claims.csv", "claims.json"))

    own = tmp_path / "mine.yaml"
    own.write_text("claims:\n  - id: lora-not-above-dora\n    text: LoRA is not above DoRA.\n"
                   "    a: {method: lora}\n    b: {method: dora}\n    direction: not_above\n    margin: 0.01\n")
    assert main([str(sweep), "--out", str(tmp_path / "own"), "--no-plots", f"--claims={own}"]) == 0
    assert "| `lora-not-above-dora` |" in capsys.readouterr().out
    rows = list(csv.DictReader(open(tmp_path / "own" / "claims.csv", newline="")))
    assert [(r["claim"], r["verdict"]) for r in rows] == [("lora-not-above-dora", "contradicted")]

    own.write_text("claims:\n  - {id: x, text: t, a: lora, b: dora, direction: sideways}\n")
    assert main([str(sweep), "--no-plots", "--claims", str(own)]) == 2
    assert "direction='sideways' is not allowed" in capsys.readouterr().err
    assert not (sweep / "summary.md").exists(), "nothing is written before the claims file is checked"



def test_tango_interval_matches_the_published_example_and_keeps_a_width_without_discordant_questions():
    # Cavo et al. 2012 as in Fagerland, Lydersen & Laake's paired 2x2 chapter: 6 vs 16 discordant of 161,
    # difference -0.0621, Tango 95% interval (-0.1240, -0.0054)
    low, high = tango_paired_interval(6, 16, 161)
    assert (round(low, 4), round(high, 4)) == (-0.1240, -0.0054)
    assert tango_paired_interval(16, 6, 161) == pytest.approx((-high, -low))
    # no discordant question: +-z^2 / (n + z^2) at any accuracy, where a square-and-add interval from the two
    # sides' Wilson intervals narrows to nothing at 50 %
    z2 = 1.959964**2
    for n in (20, 60, 1319):
        assert tango_paired_interval(0, 0, n) == pytest.approx((-z2 / (n + z2), z2 / (n + z2)), rel=1e-5)
    half = [{i: i % 2 == 0 for i in range(60)}]
    test = paired_test(half, half, interval=True)
    assert test.test == MCNEMAR and test.ci_low < -0.05 and test.ci_high > 0.05
    # so a one-seed non-inferiority claim on 20 all-wrong questions is inconclusive, not reproduced
    wrong = [{i: False for i in range(20)}]
    test = paired_test(wrong, wrong, interval=True)
    assert test.ci_low < -0.02 < 0 < test.ci_high
    assert tango_paired_interval(5, 0, 5)[1] == 1.0 and tango_paired_interval(0, 5, 5)[0] == -1.0
    with pytest.raises(ValueError, match="only_first"):
        tango_paired_interval(4, 3, 5)


def test_tango_interval_covers_the_true_difference_about_95_percent_of_the_time():
    import numpy as np

    rng = np.random.default_rng(7)
    n, cells = 100, (0.40, 0.12, 0.06, 0.42)  # both right, first only, second only, neither
    truth = cells[1] - cells[2]
    draws = rng.multinomial(n, cells, size=1500)
    covered = sum(low <= truth <= high for low, high in (tango_paired_interval(int(d[1]), int(d[2]), n)
                                                        for d in draws))
    assert 0.93 <= covered / len(draws) <= 0.97

def _excludes_zero(low: float, high: float) -> bool:
    return low > 0 or high < 0


@pytest.mark.parametrize("alpha", [0.2, 0.125, 0.0625, 92 / 512, 0.05, 0.025, 0.01, 0.05 / 18, 0.0005])
def test_a_one_seed_interval_excludes_zero_exactly_when_the_exact_mcnemar_p_is_below_alpha(alpha):
    """The interval of a one-seed-each difference is the hull of Tango's and the conditional exact interval that
    inverts the exact McNemar test, so that it never reads otherwise than the verdict beside it: Tango's alone
    excluded 0 beside p = 0.0625 (b=5, c=0), and at alpha 0.0005 holds 0 beside p = 0.00049 (b=0, c=12). Ties
    (p = alpha: b=5, c=0 at 0.0625, b=4, c=0 at 0.125, b=2, c=7 at 92/512) hold 0: at the last both Tango's
    interval and the exact one stop short of it (the exact bound by float error)."""
    for n in (20, 200, 1319):
        for b in range(min(n, 40) + 1):
            for c in range(min(n - b, 40) + 1):
                p = mcnemar_exact(b, c)
                low, high = paired_difference_interval(b, c, n, alpha)
                assert _excludes_zero(low, high) == (p < alpha), (b, c, n, alpha, p, low, high)
                assert low <= (b - c) / n <= high
                tango = tango_paired_interval(b, c, n, alpha)
                if p >= alpha or _excludes_zero(*tango):  # else (alpha 0.0005, b=0, c=12) the exact bound at 0
                    assert low <= tango[0] and high >= tango[1]  # only ever wider than Tango's
    for b, c in ((150, 120), (299, 250), (0, 299), (40, 290)):
        p = mcnemar_exact(b, c)
        assert _excludes_zero(*paired_difference_interval(b, c, 1319, alpha)) == (p < alpha)


def test_the_reviewed_one_seed_case_no_longer_shows_an_interval_above_zero_beside_p_0_0625():
    """5-shot right on 5 of 200 questions zero-shot misses, nothing the other way: exact McNemar p = 0.0625,
    inconclusive at 0.05, where Tango's interval [+0.6, +5.7] points lay above 0."""
    fewshot = [{q: q < 7 for q in range(200)}]
    zeroshot = [{q: q < 2 for q in range(200)}]
    test = paired_test(fewshot, zeroshot, interval=True)
    assert (test.test, test.discordant, test.p_value) == (MCNEMAR, (5, 0), pytest.approx(0.0625))
    tango = tango_paired_interval(5, 0, 200)
    assert tango[0] > 0  # what the table showed
    # the conditional exact bound: 5 (2 pi_L - 1) / 200 with pi_L = 0.025 ** (1 / 5), the Clopper-Pearson bound
    assert test.ci_low == pytest.approx(5 * (2 * 0.025 ** 0.2 - 1) / 200) and test.ci_low < 0
    assert test.ci_high == pytest.approx(tango[1])
    assert not test.significant(0.05) and not _excludes_zero(test.ci_low, test.ci_high)


def test_without_seed_spread_the_seed_test_s_interval_excludes_zero_exactly_when_its_p_is_below_alpha():
    """Seeds that answered alike read as one seed a side: the same p and interval. Seeds alike in their means
    only, and models pooled at one seed each, give fractional per-question differences, whose sign-flip p can be
    below alpha where Tango's interval on their sums holds 0 (three seeds each right on 2 other questions, 1/3 on
    6 questions: p = 2 / 2^6): the interval is then the sign-flip one on 0's side."""
    import numpy as np

    a = [[q < 7 for q in range(200)]] * 3  # three seeds that answered alike
    b = [[q < 2 for q in range(200)]]
    alike = seeds_and_questions_test(a, b)
    one = paired_test([dict(enumerate(a[0]))], [dict(enumerate(b[0]))], interval=True)
    assert alike.p_value == pytest.approx(one.p_value) == pytest.approx(0.0625)
    assert (alike.ci_low, alike.ci_high) == pytest.approx((one.ci_low, one.ci_high))
    apart = np.zeros((3, 200), bool)
    for seed in range(3):
        apart[seed, 2 * seed:2 * seed + 2] = True  # equal means, other questions: no seed variance
    never = np.zeros((1, 200), bool)
    fractional = seeds_and_questions_test(apart, never)
    assert fractional.seed_se == (0.0, 0.0) and fractional.p_value == pytest.approx(2 / 2**6)
    assert tango_paired_interval(2, 0, 200)[0] < 0 < fractional.ci_low
    rng = np.random.default_rng(11)
    for trial in range(60):
        questions = (20, 60, 200)[trial % 3]
        strata = [(rng.random((1, questions)) < rng.uniform(0.05, 0.6),
                   rng.random((1, questions)) < rng.uniform(0.05, 0.6)) for _ in range(3)]
        for alpha in (0.05, 0.01):
            pooled = pooled_seeds_and_questions_test(strata, alpha=alpha)
            assert _excludes_zero(pooled.ci_low, pooled.ci_high) == (pooled.p_value < alpha), (trial, alpha)
            assert pooled.ci_low <= pooled.difference <= pooled.ci_high



def test_holm_adjusts_by_hand_and_leaves_untested_out_of_the_family():
    # sorted 0.005, 0.01, 0.03, 0.04 -> 4*0.005, 3*0.01, max(2*0.03, .), max(1*0.04, 0.06); in the order given
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.01, None, 0.04]) == [pytest.approx(0.02), None, pytest.approx(0.04)]
    assert holm([0.6, 0.7]) == [1.0, 1.0] and holm([]) == [] and holm([None]) == [None]
    assert holm([0.03]) == [0.03]
    with pytest.raises(ValueError, match="1.5"):
        holm([0.01, 1.5])


@pytest.mark.parametrize(("p", "alpha", "text"), [
    (0.0498, 0.05, "0.0498"), (0.0504, 0.05, "0.050"), (0.05, 0.05, "0.050"), (0.031, 0.05, "0.031"),
    (0.0248, 0.025, "0.0248"), (0.01244, 0.0124, "0.0124"), (0.0004, 0.05, "<0.001"), (0.0004, 0.0005, "0.0004"),
    (0.0006, 0.0005, "0.0006"), (0.049999999999999996, 0.05, "0.049999999999999996"), (None, 0.05, "–"),
])  # fmt: skip
def test_a_p_value_is_never_printed_on_the_other_side_of_alpha(p, alpha, text):
    assert format_p(p, alpha) == text


def test_the_claims_table_prints_p_on_the_side_of_alpha_its_verdict_is_on(tmp_path):
    """42 questions only LoRA gets right, 25 only zero-shot, of 200: exact McNemar p = 0.0498, reproduced at 0.05;
    three decimals would print it 0.050 beside that verdict."""
    lora = [q < 42 or 67 <= q < 100 for q in range(200)]
    zeroshot = [42 <= q < 100 for q in range(200)]
    write_cell(tmp_path, "smollm135", "zeroshot", "gsm8k", 0, zeroshot)
    write_cell(tmp_path, "smollm135", "lora", "gsm8k", 0, lora)
    claims = tmp_path / "claims.yaml"
    claims.write_text("claims:\n  - {id: c, text: t, a: lora, b: zeroshot, direction: above}\n")
    results, _ = claims_of(tmp_path, claims)
    (instance,) = results["c"].instances
    assert instance.test.discordant == (42, 25) and instance.test.p_value == pytest.approx(0.0498, abs=1e-4)
    assert instance.verdict == "reproduced"
    (line,) = [line for line in (tmp_path / "report" / "claims.md").read_text().splitlines() if "b=42, c=25" in line]
    assert "| 0.0498 | reproduced |" in line and "0.050" not in line


def _verdicts(results, claim_id):
    return {i.dataset: i.verdict for i in results[claim_id].instances}, results[claim_id].verdict


def test_holm_makes_the_instances_of_a_claim_hold_jointly(tmp_path):
    # LoRA above full on Qwen2.5-0.5B, one seed each, on two datasets: 6 questions only LoRA gets right on each
    # (exact McNemar p = 0.03125 twice). Each alone is significant; as a family of two, neither is.
    weak = tmp_path / "weak"
    for dataset in ("gsm8k", "orcamath"):
        write_row(weak, "qwen05", "lora", dataset, 36, seeds=(0,))
        write_row(weak, "qwen05", "full", dataset, 30, seeds=(0,))
    results, _ = claims_of(weak, correction="none")
    assert _verdicts(results, "lora-above-full-qwen05") == ({"gsm8k": "reproduced", "orcamath": "reproduced"},
                                                            "reproduced")
    assert all(i.p_adjusted is None and i.test.p_value == pytest.approx(0.03125)
               for i in results["lora-above-full-qwen05"].instances)
    results, report = claims_of(weak)
    result = results["lora-above-full-qwen05"]
    # ... but the claim, their conjunction, is: each significant at alpha on its own (an intersection-union test)
    assert _verdicts(results, "lora-above-full-qwen05") == ({"gsm8k": "inconclusive", "orcamath": "inconclusive"},
                                                            "reproduced")
    assert result.by_intersection_union and [i.alone for i in result.instances] == ["reproduced"] * 2
    assert result.tested == 2 and all(i.p_adjusted == pytest.approx(0.0625) for i in result.instances)
    markdown = (weak / "report" / "claims.md").read_text()
    assert "Holm-adjusted" in markdown and "| p (Holm) |" in markdown and "[97.5% Bonferroni CI]" in markdown
    assert "Family of 2 tested instances: verdicts from Holm-adjusted p, 97.5% Bonferroni simultaneous" in markdown
    assert "| alone |" in markdown and "[95% CI]" in markdown and "| verdict (family) |" in markdown
    assert "Family of 2 tested instances" in markdown and "(an intersection-union test)" in markdown
    # one instance not significant even alone: the roll-up reads the family's verdicts
    one_weaker = tmp_path / "one_weaker"
    for dataset, right in (("gsm8k", 36), ("orcamath", 33)):
        write_row(one_weaker, "qwen05", "lora", dataset, right, seeds=(0,))
        write_row(one_weaker, "qwen05", "full", dataset, 30, seeds=(0,))
    results, _ = claims_of(one_weaker)
    assert _verdicts(results, "lora-above-full-qwen05") == ({"gsm8k": "inconclusive", "orcamath": "inconclusive"},
                                                            "inconclusive")
    assert not results["lora-above-full-qwen05"].by_intersection_union
    rows = [r for r in csv.DictReader(open(weak / "report" / "claims.csv", newline=""))
            if r["claim"] == "lora-above-full-qwen05"]
    assert [(r["correction"], float(r["p_value"]), float(r["p_adjusted"]), float(r["ci_level"])) for r in rows] \
        == [("holm", 0.03125, 0.0625, 0.975)] * 2
    data = json.loads((weak / "report" / "claims.json").read_text())
    entry = next(c for c in data["claims"] if c["id"] == "lora-above-full-qwen05")
    assert data["correction"] == "holm" and entry["tested_instances"] == 2 and entry["interval_level"] == 0.975

    # Holm steps down: a strong instance beside the weak one leaves the weak one at its own p (Bonferroni would
    # double it)
    mixed = tmp_path / "mixed"
    write_row(mixed, "qwen05", "lora", "gsm8k", 50, seeds=(0,))
    write_row(mixed, "qwen05", "full", "gsm8k", 10, seeds=(0,))
    write_row(mixed, "qwen05", "lora", "orcamath", 36, seeds=(0,))
    write_row(mixed, "qwen05", "full", "orcamath", 30, seeds=(0,))
    results, _ = claims_of(mixed)
    assert _verdicts(results, "lora-above-full-qwen05") == ({"gsm8k": "reproduced", "orcamath": "reproduced"},
                                                            "reproduced")
    weak_instance = next(i for i in results["lora-above-full-qwen05"].instances if i.dataset == "orcamath")
    assert weak_instance.p_adjusted == pytest.approx(0.03125)


def test_every_instance_contradicted_alone_contradicts_the_claim_by_the_intersection_union_rule(tmp_path):
    """The mirror of the rule above: LoRA 6 questions above full fine-tuning on both datasets (one seed each, exact
    McNemar p = 0.03125 each). "Full above LoRA" and "LoRA below full" are contradicted by each instance alone and
    by neither in the family of two: "every instance is against the claim" is a conjunction too, so the claim is
    contradicted, as "LoRA above full" on the same data is reproduced (both read inconclusive before). A
    contradiction alone that rests on the survivor of the side it favours, which lost a seed, does not count."""
    claims = tmp_path / "claims.yaml"
    claims.write_text("claims:\n"
                      "  - {id: lora-above-full, text: t, a: lora, b: full, direction: above}\n"
                      "  - {id: full-above-lora, text: t, a: full, b: lora, direction: above}\n"
                      "  - {id: lora-below-full, text: t, a: lora, b: full, direction: below}\n")
    both = tmp_path / "both"
    for dataset in ("gsm8k", "orcamath"):
        write_row(both, "qwen05", "lora", dataset, 36, seeds=(0,))
        write_row(both, "qwen05", "full", dataset, 30, seeds=(0,))
    results, _ = claims_of(both, claims)
    for claim_id, rule in (("full-above-lora", "contradicted"), ("lora-below-full", "contradicted"),
                           ("lora-above-full", "reproduced")):
        result = results[claim_id]
        assert [(i.verdict, i.alone) for i in result.instances] == [("inconclusive", rule)] * 2
        assert (result.verdict, result.by_intersection_union) == (rule, True)
        assert result.intersection_union == rule
    markdown = (both / "report" / "claims.md").read_text()
    assert ("Every instance is contradicted at alpha=0.05 on its own, so the claim is contradicted: that every "
            "instance is against it is a conjunction too (an intersection-union test, which went against the "
            "claim)") in markdown
    assert "Roll-up: reproduced (contradicted) when every instance is, in the family or at alpha on its own" \
        in markdown
    assert "contradicted at alpha on their own" not in markdown  # the claim is contradicted: no note of them
    saved = {c["id"]: c for c in json.loads((both / "report" / "claims.json").read_text())["claims"]}
    assert [(saved[c]["verdict"], saved[c]["by_intersection_union"], saved[c].get("intersection_union"))
            for c in ("lora-above-full", "full-above-lora")] == [("reproduced", True, "reproduced"),
                                                                  ("contradicted", True, "contradicted")]
    assert saved["full-above-lora"]["by_metric"]["strict"]["intersection_union"] == "contradicted"

    # LoRA, which "full above LoRA" contradicted would favour, lost its second seed on orcamath: that instance is
    # contradicted alone only by the survivor, so inconclusive alone, and the family's verdicts decide (as they
    # do for "LoRA above full", which the survivor cannot reproduce either)
    lost = tmp_path / "lost"
    for dataset in ("gsm8k", "orcamath"):
        write_row(lost, "qwen05", "lora", dataset, 36, seeds=(0,))
        write_row(lost, "qwen05", "full", dataset, 30, seeds=(0,))
    _lose(lost, "qwen05", "lora", "orcamath", 1, "diverged")
    results, _ = claims_of(lost, claims)
    for claim_id in ("lora-above-full", "full-above-lora"):
        result = results[claim_id]
        assert result.instances[1].test.p_value == pytest.approx(0.03125) and result.instances[1].alone == \
            "inconclusive"
        assert (result.verdict, result.by_intersection_union) == ("inconclusive", False)


def test_a_non_inferiority_claim_far_below_in_every_instance_is_contradicted(tmp_path):
    """LoRA and DoRA 25 points below zero-shot over three seeds on Gemma (seeds 4 points apart): each 95% interval
    lies beyond the 2-point margin, while the family's 97.5% ones reach past it. Every instance is contradicted
    alone, so "LoRA and DoRA not below zero-shot" is contradicted: it read inconclusive, while LoRA and DoRA as far
    above read reproduced."""
    claims = tmp_path / "claims.yaml"
    claims.write_text("claims:\n  - {id: peft, text: t, a: [lora, dora], b: zeroshot, direction: not_below, "
                      "margin: 0.02}\n")
    write_row(tmp_path, "gemma270", "zeroshot", "gsm8k", 30)
    for method in ("lora", "dora"):
        for seed, right in zip(TRAINED_SEEDS, (11, 15, 19)):
            write_cell(tmp_path, "gemma270", method, "gsm8k", seed, first(right))
    results, _ = claims_of(tmp_path, claims)
    peft = results["peft"]
    assert [(i.verdict, i.alone) for i in peft.instances] == [("inconclusive", "contradicted")] * 2
    assert all(i.test_alone.ci_high < -0.02 < i.test.ci_high for i in peft.instances) and peft.tested == 2
    assert (peft.verdict, peft.by_intersection_union) == ("contradicted", True)
    (saved,) = json.loads((tmp_path / "report" / "claims.json").read_text())["claims"]
    assert (saved["verdict"], saved.get("intersection_union")) == ("contradicted", "contradicted")


def test_instances_contradicted_alone_but_not_in_the_family_are_counted_in_the_roll_up(tmp_path):
    """A claim that is not contradicted, some of whose instances are contradicted at alpha on their own: at a
    Bonferroni level on three seeds a family of many instances hides even a large deficit (the extension of
    "LoRA and DoRA not below zero-shot" to every model read plain inconclusive with LoRA 25 points below on one of
    them), so the roll-up line and claims.json count them. LoRA far below zero-shot on Gemma and level on SmolLM;
    and, one seed each, full fine-tuning 6 questions below LoRA on GSM8K (contradicted alone) and 3 on OrcaMath."""
    claims = tmp_path / "claims.yaml"
    claims.write_text("claims:\n"
                      "  - {id: lora-both, text: t, a: lora, b: zeroshot, direction: not_below, margin: 0.02, "
                      "models: [gemma270, smollm135]}\n"
                      "  - {id: full-above-lora, text: t, a: full, b: lora, direction: above, models: [qwen05]}\n")
    for model in ("gemma270", "smollm135"):
        write_row(tmp_path, model, "zeroshot", "gsm8k", 30)
    for model, rights in (("gemma270", (11, 15, 19)), ("smollm135", (29, 30, 31))):
        for seed, right in zip(TRAINED_SEEDS, rights):
            write_cell(tmp_path, model, "lora", "gsm8k", seed, first(right))
    for dataset, right in (("gsm8k", 36), ("orcamath", 33)):
        write_row(tmp_path, "qwen05", "lora", dataset, right, seeds=(0,))
        write_row(tmp_path, "qwen05", "full", dataset, 30, seeds=(0,))
    results, _ = claims_of(tmp_path, claims)
    markdown = (tmp_path / "report" / "claims.md").read_text()
    saved = {c["id"]: c for c in json.loads((tmp_path / "report" / "claims.json").read_text())["claims"]}
    note = "1 of 2 instances contradicted at alpha on its own (not in the family)"
    for claim_id in ("lora-both", "full-above-lora"):
        result = results[claim_id]
        assert sorted(i.alone for i in result.instances) == ["contradicted", "inconclusive"]
        assert all(i.verdict == "inconclusive" for i in result.instances) and result.verdict == "inconclusive"
        section = markdown.split(f"# `{claim_id}`")[1].split("\n#")[0]
        assert "Verdict: **inconclusive" in section and "(2 inconclusive). Family of 2 tested instances" in section
        assert f". {note[0].upper()}{note[1:]}." in section
        assert saved[claim_id].get("contradicted_alone_note") == note and saved[claim_id]["margin_note"] is None
    # under --correction none each instance's verdict is its verdict alone: nothing hidden, no note
    results, _ = claims_of(tmp_path, claims, correction="none")
    assert results["full-above-lora"].verdict == "partly contradicted"
    saved = {c["id"]: c for c in json.loads((tmp_path / "report-none" / "claims.json").read_text())["claims"]}
    assert saved["full-above-lora"]["contradicted_alone_note"] is None


def test_non_inferior_within_the_margin_yet_significantly_below_says_so(tmp_path):
    # LoRA 6 questions below zero-shot of 200 (one seed each, exact McNemar p = 0.031): the interval lies below 0
    # but above a 7-point margin
    claims = tmp_path / "claims.yaml"
    claims.write_text("claims:\n  - {id: wide, text: LoRA is not far below zero-shot., a: lora, b: zeroshot, "
                      "direction: not_below, margin: 0.07}\n")
    write_cell(tmp_path, "gemma270", "zeroshot", "gsm8k", 0, [q < 40 for q in range(200)])
    write_cell(tmp_path, "gemma270", "lora", "gsm8k", 0, [q < 34 for q in range(200)])
    results, _ = claims_of(tmp_path, claims=claims)
    (instance,) = results["wide"].instances
    assert instance.verdict == "reproduced" and -0.07 < instance.test.ci_low < instance.test.ci_high < 0
    note = "within the 7-point margin, yet below B (the interval lies below 0)"
    single = "lora: one training run, so the spread between training seeds is not measured"
    assert f"**reproduced** ({note}; {single}" in (tmp_path / "report" / "claims.md").read_text()
    (row,) = csv.DictReader(open(tmp_path / "report" / "claims.csv", newline=""))
    assert row["note"].startswith(f"{note}; {single}")


def test_non_inferior_by_the_intersection_union_rule_yet_significantly_below_says_so(tmp_path):
    """LoRA and DoRA 6 questions below zero-shot of 200 (one seed each, exact McNemar p = 0.031): as a family of
    two, their Bonferroni intervals reach past 0, so their verdicts there are inconclusive, while each alone lies
    below 0 and within the 6.5-point margin: the claim is reproduced by the intersection-union rule, and says they
    lie below B."""
    claims = tmp_path / "claims.yaml"
    claims.write_text("claims:\n  - {id: wide, text: LoRA and DoRA are not far below zero-shot., a: [lora, dora], "
                      "b: zeroshot, direction: not_below, margin: 0.065}\n")
    write_cell(tmp_path, "gemma270", "zeroshot", "gsm8k", 0, [q < 40 for q in range(200)])
    for method in ("lora", "dora"):
        write_cell(tmp_path, "gemma270", method, "gsm8k", 0, [q < 34 for q in range(200)])
    results, _ = claims_of(tmp_path, claims=claims)
    result = results["wide"]
    assert (result.verdict, result.by_intersection_union) == ("reproduced", True)
    assert all(i.verdict == "inconclusive" and i.test.ci_high > 0 and i.alone == "reproduced"
               and -0.065 < i.test_alone.ci_low < i.test_alone.ci_high < 0 for i in result.instances)
    note = "alone: within the 6.5-point margin, yet below B (the interval lies below 0)"
    assert [row["note"].split("; ")[0] for row in csv.DictReader(open(tmp_path / "report" / "claims.csv"))] \
        == [note, note]
    roll_up = ("2 of 2 instances within the 6.5-point margin, yet significantly below B (the interval lies below "
               "0, in the family or alone)")
    markdown = (tmp_path / "report" / "claims.md").read_text()
    assert f"(an intersection-union test); read one by one, the family's verdicts hold jointly. {roll_up[0].upper()}" \
        f"{roll_up[1:]}." in markdown and f"**inconclusive** ({note};" in markdown
    (entry,) = json.loads((tmp_path / "report" / "claims.json").read_text())["claims"]
    assert entry["margin_note"] == roll_up


def test_a_trained_side_at_an_untuned_or_edge_rate_is_named_in_the_verdict(tmp_path):
    """Full fine-tuning below zero-shot at a rate at the small end of its search (or never searched) may only
    say the rate was too high: the note goes beside the verdict and the rows carry where each rate came from."""
    write_row(tmp_path, "smollm135", "zeroshot", "gsm8k", 40)
    write_row(tmp_path, "smollm135", "full", "gsm8k", 10)
    write_row(tmp_path, "smollm135", "lora", "gsm8k", 41)
    chosen = {"full": {"value": 5.0e-6, "source": "tuned", "detail": "lr.gsm8k.smollm135.full in lr.yaml",
                       "at_edge": "smallest"},
              "lora": {"value": 2.0e-4, "source": "method", "detail": "method.lr"}}
    for path in tmp_path.glob("smollm135-*/result.json"):
        record = json.loads(path.read_text())
        if record["method"] in chosen:
            record["learning_rate"] = chosen[record["method"]]
        record["metrics"]["truncated_fraction"] = 0.4 if record["method"] == "zeroshot" else 0.0
        write_result(path.parent, record)
    results, _ = claims_of(tmp_path)
    (full,) = results["full-below-zeroshot-under-300m"].instances
    (lora,) = [i for i in results["peft-not-below-zeroshot-under-300m"].instances if i.a["method"] == "lora"]
    text = (tmp_path / "report" / "claims.md").read_text()
    assert "full: its tuned rate 5e-06 is the smallest its search compared, the best may lie beyond" in text
    assert "lora: rate 0.0002 not tuned (method)" in text
    # a side whose answers were often cut off at the token limit is named too
    assert "zeroshot: 40 % of its answers cut off at the token limit" in text
    assert (full.a["lr"], full.a["lr_source"], full.a["lr_at_edge"]) == (5.0e-6, "tuned", "smallest")
    assert (lora.a["lr"], lora.a["lr_source"], lora.a["lr_at_edge"]) == (2.0e-4, "method", None)
    assert full.b["lr"] is None and full.b["lr_source"] is None  # zero-shot trains nothing
    rows = {(r["method"]): r for r in csv.DictReader(open(tmp_path / "report" / "summary.csv", newline=""))}
    assert (rows["full"]["lr_source"], rows["full"]["lr_at_edge"], rows["zeroshot"]["lr"]) == ("tuned", "smallest", "")


def test_rows_scored_under_different_settings_are_not_compared(tmp_path):
    """A zero-shot row scored by an older scoring version, or with another max_new_tokens, against a current
    full fine-tuning row: the difference could be the scoring's, so there is no test and the delta says why."""
    write_row(tmp_path, "smollm135", "zeroshot", "gsm8k", 40)
    write_row(tmp_path, "smollm135", "full", "gsm8k", 10)
    scored = {"scoring": 7, "max_new_tokens": 256, "stop": None, "generation_config": "neutral", "dtype": "float32"}
    for path in tmp_path.glob("smollm135-*/result.json"):
        record = json.loads(path.read_text())
        older = record["method"] == "zeroshot"
        record["identity"]["scored_with"] = {**scored, **({"scoring": 6, "max_new_tokens": 512} if older else {})}
        write_result(path.parent, record)
    results, report = claims_of(tmp_path)
    (instance,) = results["full-below-zeroshot-under-300m"].instances
    assert instance.test.p_value is None and instance.verdict == "inconclusive"
    assert instance.test.reason == ("the two rows were scored differently (max_new_tokens 256 vs 512; scoring 7 vs "
                                    "6), so their answers are not comparable; run both under the same scoring "
                                    "version and eval settings")
    full = next(r for r in report["rows"] if r["method"] == "full")
    assert full["delta_zeroshot"] == pytest.approx(-0.5) and full["delta_zeroshot_p"] is None
    assert full["delta_zeroshot_test"] == "were scored differently"
    assert "1 of 1 comparisons are of rows that were scored differently" in (tmp_path / "report" / "summary.md").read_text()
    # a row written before scored_with was recorded, against one with it: not shown to be scored alike
    for path in tmp_path.glob("smollm135-zeroshot-*/result.json"):
        record = json.loads(path.read_text())
        del record["identity"]["scored_with"]
        write_result(path.parent, record)
    results, _ = claims_of(tmp_path)
    (instance,) = results["full-below-zeroshot-under-300m"].instances
    assert instance.test.p_value is None and "scoring settings unknown for one row" in instance.test.reason


def _claim_section(markdown: str, claim_id: str) -> str:
    return markdown.split(f"# `{claim_id}`")[1].split("\n#")[0]


def _table_rows(section: str) -> dict[str, dict[str, str]]:
    """The instance table of a claim's section: per dataset, its cells by column."""
    lines = [line for line in section.splitlines() if line.startswith("| ")]
    header = [cell.strip() for cell in lines[0].strip("|").split(" | ")]
    rows = [dict(zip(header, (cell.strip() for cell in line.strip("|").split(" | ")))) for line in lines[1:]]
    return {row["dataset"]: row for row in rows}


def test_a_holm_verdict_beside_a_bonferroni_interval_holding_zero_is_marked_and_explained(tmp_path):
    """LoRA above full fine-tuning, one seed each: 40 questions apart on GSM8K, 6 on OrcaMath (exact McNemar
    p = 0.031). Holm steps down: OrcaMath is tested at 0.05 once GSM8K is rejected, and is reproduced, while its
    Bonferroni interval at 97.5% (alpha/2 for every instance) holds 0. The row is marked (‡: summary.md's tables
    above the claims mark an untested delta †) and the mark explained; the header names the intervals Bonferroni
    simultaneous ones and the verdicts Holm's."""
    for dataset, right in (("gsm8k", 50), ("orcamath", 36)):
        write_row(tmp_path, "qwen05", "lora", dataset, right, seeds=(0,))
        write_row(tmp_path, "qwen05", "full", dataset, 10 if dataset == "gsm8k" else 30, seeds=(0,))
    claims = tmp_path / "claims.yaml"
    claims.write_text("claims:\n  - {id: above, text: t, a: lora, b: full, direction: above, models: [qwen05]}\n")
    results, _ = claims_of(tmp_path, claims)
    weak = next(i for i in results["above"].instances if i.dataset == "orcamath")
    assert (weak.verdict, weak.p_adjusted) == ("reproduced", pytest.approx(0.03125))
    assert weak.test.ci_low < 0 < weak.test.ci_high
    section = _claim_section((tmp_path / "report" / "claims.md").read_text(), "above")
    assert "Family of 2 tested instances: verdicts from Holm-adjusted p, 97.5% Bonferroni simultaneous " \
           "intervals" in section
    rows = _table_rows(section)
    assert rows["orcamath"]["A − B [97.5% Bonferroni CI]"].endswith("]‡")
    assert not rows["gsm8k"]["A − B [97.5% Bonferroni CI]"].endswith("‡")
    assert section.count("‡ Holm's step-down test rejects, while the 97.5% Bonferroni interval still holds 0") == 1
    # summary.md ends with the claims, below tables whose † says "not tested": the claims' mark is another one
    tables, claims_section = (tmp_path / "report" / "summary.md").read_text().split("\n## Claims\n")
    assert "†: not tested" in tables and "‡" not in tables
    assert "]‡" in claims_section and "†" not in claims_section
    # without a row so marked, no footnote
    results, _ = claims_of(tmp_path, claims, correction="none")
    assert "‡" not in (tmp_path / "report-none" / "claims.md").read_text()


def test_a_margin_claim_shows_no_holm_p_and_says_its_p_tests_no_difference(tmp_path):
    """A non-inferiority verdict reads the interval against the margin; its p tests A = B and its Holm-adjusted p
    decided nothing (it read 1.000 on every row). The table labels the p, shows no Holm p, and says so under the
    claim; an above claim on the same rows keeps its Holm p."""
    for dataset, right in (("gsm8k", 50), ("orcamath", 36)):
        write_row(tmp_path, "qwen05", "lora", dataset, right, seeds=(0,))
        write_row(tmp_path, "qwen05", "full", dataset, 10 if dataset == "gsm8k" else 30, seeds=(0,))
    claims = tmp_path / "claims.yaml"
    claims.write_text("claims:\n"
                      "  - {id: above, text: t, a: lora, b: full, direction: above, models: [qwen05]}\n"
                      "  - {id: margin, text: t, a: lora, b: full, direction: not_below, margin: 0.02, "
                      "models: [qwen05]}\n")
    results, _ = claims_of(tmp_path, claims)
    assert [i.verdict for i in results["margin"].instances] == ["reproduced"] * 2
    markdown = (tmp_path / "report" / "claims.md").read_text()
    margin = _claim_section(markdown, "margin")
    assert "The verdict is the interval's bound against the margin (reproduced when the interval of A − B lies " \
           "entirely above −2 pp, contradicted when entirely below it); p tests no difference (A = B), not the " \
           "margin, and decides nothing here, so no Holm-adjusted p is shown." in margin
    rows = _table_rows(margin)
    assert all(row["p (Holm)"] == "–" and row["p (A = B)"] != "–" and "p" not in row for row in rows.values())
    above = _table_rows(_claim_section(markdown, "above"))
    assert above["orcamath"]["p (Holm)"] == "0.031" and above["orcamath"]["p"] == "0.031"
    flat = list(csv.DictReader(open(tmp_path / "report" / "claims.csv", newline="")))
    assert [r["p_adjusted"] for r in flat if r["claim"] == "margin"] == ["", ""]
    assert all(r["p_adjusted"] for r in flat if r["claim"] == "above")
    saved = {c["id"]: c for c in json.loads((tmp_path / "report" / "claims.json").read_text())["claims"]}
    assert [i["p_adjusted"] for i in saved["margin"]["instances"]] == [None, None]
    assert all(i["p_value"] is not None for i in saved["margin"]["instances"])


def test_a_difference_of_float_noise_prints_and_saves_as_zero(tmp_path):
    """Three LoRA seeds right on 1, 2 and 3 of 60 questions against zero-shot's 2: the means are equal, and the
    mean of the per-question differences is -9.3e-19, which printed as -0.0 (summary.md: +0.0)."""
    from slm_sweep.report.claims_output import signed_points, zero_noise

    assert seeds_and_questions_test(_seeds(1, 2, 3, questions=60), _seeds(2, questions=60)).difference < 0
    assert (signed_points(-2.22e-18), signed_points(2e-13), signed_points(-0.0125)) == ("+0.0", "+0.0", "-1.2")
    assert (zero_noise(-2.22e-18), zero_noise(-1e-9)) == (0.0, -1e-9)
    write_row(tmp_path, "gemma270", "zeroshot", "gsm8k", 2)
    write_row(tmp_path, "gemma270", "lora", "gsm8k", 2)
    claims = tmp_path / "claims.yaml"
    claims.write_text("claims:\n  - {id: level, text: t, a: lora, b: zeroshot, direction: above}\n")
    results, _ = claims_of(tmp_path, claims)
    (instance,) = results["level"].instances
    assert instance.test.difference != 0 and abs(instance.test.difference) < 1e-12
    (row,) = _table_rows(_claim_section((tmp_path / "report" / "claims.md").read_text(), "level")).values()
    assert row["A − B (pp) [95% CI]"].startswith("+0.0 [-")
    (saved,) = json.loads((tmp_path / "report" / "claims.json").read_text())["claims"]
    assert saved["instances"][0]["difference"] == 0.0
    (flat,) = csv.DictReader(open(tmp_path / "report" / "claims.csv", newline=""))
    assert float(flat["difference"]) == 0.0 and not flat["difference"].startswith("-")


def test_the_claims_files_name_the_sweep_the_code_the_claims_file_and_the_report_record(tmp_path):
    """claims.md, claims.json and claims.csv are read apart from the report: each says which results, code and
    claims file it is about, and the csv gives each claim's roll-up and whether it is complete beside its
    instances (claims.md's "contradicted (incomplete)" read "contradicted" in the csv)."""
    from slm_sweep.identity import file_sha256

    sweep = tmp_path / "sweep"
    write_row(sweep, "gemma270", "zeroshot", "gsm8k", 30)
    write_row(sweep, "gemma270", "lora", "gsm8k", 50)
    claims = tmp_path / "claims.yaml"
    claims.write_text("claims:\n"
                      "  - {id: here, text: t, a: lora, b: zeroshot, direction: above, models: [gemma270]}\n"
                      "  - {id: partial, text: t, a: lora, b: zeroshot, direction: above, models: [gemma270, qwen05]}\n"
                      "  - {id: absent, text: t, a: dora, b: zeroshot, direction: above}\n")
    out = tmp_path / "out"
    report = write_report([sweep], out, plots=False, claims=claims)
    record = json.loads((out / "report.json").read_text())
    sha = file_sha256(claims)
    assert record["settings"]["claims"]["sha256"] == sha
    saved = json.loads((out / "claims.json").read_text())
    assert (saved["sweep_dirs"], saved["git_commit"], saved["claims_sha256"], saved["report_json"]) \
        == ([str(sweep)], record["git_commit"], sha, "report.json")
    header = (out / "claims.md").read_text().split("\n\n")[1]
    assert f"Results read from `{sweep}`" in header and f"claims file sha256 `{sha}`" in header
    assert f"report code at commit `{record['git_commit']}`" in header if record["git_commit"] else "commit" not in header
    assert "`report.json` beside this file names every result file read" in header
    assert header in report["markdown"]  # summary.md's claims section too
    verdicts = {r.claim.id: (r.verdict, not r.gaps) for r in report["claims"].results}
    assert verdicts == {"here": ("reproduced", True), "partial": ("reproduced", False),
                        "absent": ("not covered", True)}  # complete: nothing it covers is missing
    for row in csv.DictReader(open(out / "claims.csv", newline="")):
        assert (row["claim_verdict"], row["complete"]) == (verdicts[row["claim"]][0], str(verdicts[row["claim"]][1]))
    assert {c["id"]: (c["verdict"], c["complete"]) for c in saved["claims"]} == verdicts


def test_holm_widens_the_non_inferiority_intervals_to_bonferroni_ones(tmp_path):
    # LoRA and DoRA 4 questions above zero-shot (24 vs 20 of 60, one seed each): the 95% interval (Tango's hulled
    # with the exact McNemar one) lies above the -2 point margin, the 97.5% one (a family of two) does not
    write_row(tmp_path, "gemma270", "zeroshot", "gsm8k", 20)
    for method in ("lora", "dora"):
        write_row(tmp_path, "gemma270", method, "gsm8k", 24, seeds=(0,))
    plain, _ = claims_of(tmp_path, correction="none")
    joint, _ = claims_of(tmp_path)
    peft = "peft-not-below-zeroshot-under-300m"
    assert plain[peft].verdict == "reproduced"
    # read one by one, neither instance holds in the family; the claim, their conjunction, does (both alone)
    assert [i.verdict for i in joint[peft].instances] == ["inconclusive"] * 2
    assert joint[peft].verdict == "reproduced"
    assert joint[peft].by_intersection_union
    for alone, together in zip(plain[peft].instances, joint[peft].instances):
        assert together.test.p_value == alone.test.p_value and together.test.difference == alone.test.difference
        assert together.test.ci_low < -0.02 < alone.test.ci_low and together.test.ci_high > alone.test.ci_high
        assert together.test.ci_low == pytest.approx(paired_difference_interval(4, 0, 60, alpha=0.025)[0])
    assert "[95% CI]" in (tmp_path / "report-none" / "claims.md").read_text()
    # a family of one at alpha=0.01: a 99% interval, nothing widened
    single = tmp_path / "single"
    write_row(single, "gemma270", "zeroshot", "gsm8k", 20)
    write_row(single, "gemma270", "lora", "gsm8k", 23, seeds=(0,))
    results, _ = claims_of(single, alpha=0.01)
    result = results["peft-not-below-zeroshot-under-300m"]
    assert (result.tested, result.interval_alpha) == (1, 0.01)
    assert result.instances[0].test.ci_low == pytest.approx(paired_difference_interval(3, 0, 60, alpha=0.01)[0])
    assert "no correction for the number of instances" in (tmp_path / "report-none" / "claims.md").read_text()


def test_an_unknown_correction_is_refused_naming_the_allowed_ones(tmp_path, capsys):
    write_row(tmp_path, "qwen05", "lora", "gsm8k", 36, seeds=(0,))
    with pytest.raises(ClaimsError, match="correction='bonferroni' is not allowed; allowed: holm, none"):
        write_report([tmp_path], tmp_path / "out", plots=False, claims=DEFAULT_CLAIMS, correction="bonferroni")
    assert not (tmp_path / "out").exists()
    with pytest.raises(SystemExit):
        main([str(tmp_path), "--claims", "--correction", "bonferroni"])
    err = capsys.readouterr().err  # argparse quotes the choices from Python 3.12 on
    assert "invalid choice: 'bonferroni'" in err and all(c in err for c in ("holm", "none"))


def test_make_report_writes_the_claims_table_as_the_end_of_sweep_report_does(tmp_path):
    sweep = tmp_path / "sweep"
    write_row(sweep, "qwen05", "lora", "gsm8k", 36, seeds=(0,))
    write_row(sweep, "qwen05", "full", "gsm8k", 30, seeds=(0,))
    proc = subprocess.run(["make", "-s", "report", f"SWEEP={sweep}", f"PY={sys.executable}", "CORRECTION=none"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert (sweep / "claims.md").is_file() and "## Claims" in (sweep / "summary.md").read_text()
    settings = json.loads((sweep / "report.json").read_text())["settings"]
    assert settings["correction"] == "none" and settings["claims"]["path"].endswith("paper.yaml")


def test_make_report_takes_the_latest_sweep_that_holds_a_result(tmp_path):
    """A refused or preflight-only sweep leaves a folder with its preflight.json alone, and a learning-rate search
    lives under multirun/hparams/: neither is the sweep `make report` means."""
    write_row(tmp_path / "multirun" / "2026-01-01" / "10-00-00", "qwen05", "lora", "gsm8k", 36, seeds=(0,))
    (tmp_path / "multirun" / "2026-01-02" / "10-00-00").mkdir(parents=True)
    (tmp_path / "multirun" / "2026-01-02" / "10-00-00" / "preflight.json").write_text("{}")
    write_row(tmp_path / "multirun" / "hparams" / "2026-01-03" / "10-00-00", "qwen05", "lora", "gsm8k", 36, seeds=(0,))
    proc = subprocess.run(["make", "-s", "-n", "-f", str(REPO / "Makefile"), "report", "PY=python"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "python -m slm_sweep.report multirun/2026-01-01/10-00-00 --claims" in proc.stdout


# ---------------------------------------------------------------------------------------------- completeness


def _lose(sweep: Path, model: str, method: str, dataset: str, seed: int, status: str) -> None:
    """A cell of that seed that did not complete (its result.json as run.py leaves it)."""
    path = write_cell(sweep, model, method, dataset, seed, first(0))
    record = json.loads(path.read_text())
    record.update(status=status, metrics={}, error="RuntimeError: boom")
    path.write_text(json.dumps(record))
    (path.parent / PREDICTIONS_FILE).unlink()


def test_a_claim_says_what_it_covers_but_could_not_use(tmp_path):
    """Full fine-tuning below zero-shot under 300M: smollm135 kept one seed of three, every seed of gemma270 failed.
    The verdict on what is left is stated as incomplete, and each gap is named."""
    write_row(tmp_path, "smollm135", "zeroshot", "gsm8k", 40)
    write_cell(tmp_path, "smollm135", "full", "gsm8k", 0, first(10))
    for seed in (1, 2):
        _lose(tmp_path, "smollm135", "full", "gsm8k", seed, "diverged")
    write_row(tmp_path, "gemma270", "zeroshot", "gsm8k", 40)
    for seed in TRAINED_SEEDS:
        _lose(tmp_path, "gemma270", "full", "gsm8k", seed, "failed")
    results, _ = claims_of(tmp_path)
    result = results["full-below-zeroshot-under-300m"]
    assert result.verdict == "reproduced" and result.stated_verdict == "reproduced (incomplete)"
    assert result.gaps == [
        "dataset 'orcamath': no cell of these results",
        "smollm135 × full on gsm8k: mean over 1 completed seed only (seed 1 diverged; seed 2 diverged)",
        "gemma270 × full on gsm8k: no completed seed (seed 0 failed; seed 1 failed; seed 2 failed)"]
    text = (tmp_path / "report" / "claims.md").read_text()
    assert "**reproduced (incomplete)**" in text and "- gemma270 × full on gsm8k: no completed seed" in text
    saved = {c["id"]: c for c in json.loads((tmp_path / "report" / "claims.json").read_text())["claims"]}
    assert saved["full-below-zeroshot-under-300m"]["complete"] is False


def test_non_inferiority_is_not_shown_by_the_seeds_that_survived(tmp_path):
    """Two of three LoRA seeds diverged; the survivor matches zero-shot: the lost seeds are evidence against
    'not below' that the survivor cannot stand in for."""
    answers = [i < 400 for i in range(1000)]  # enough questions that the survivor alone would show it
    write_cell(tmp_path, "gemma270", "zeroshot", "gsm8k", 0, answers)
    write_cell(tmp_path, "gemma270", "lora", "gsm8k", 0, answers)
    for seed in (1, 2):
        _lose(tmp_path, "gemma270", "lora", "gsm8k", seed, "diverged")
    results, _ = claims_of(tmp_path)
    (instance,) = results["peft-not-below-zeroshot-under-300m"].instances
    assert instance.test.ci_low > -0.02 and instance.verdict == "inconclusive" and instance.downgraded
    assert "its completed seeds alone cannot show the claim" in (tmp_path / "report" / "claims.md").read_text()


@pytest.mark.parametrize("lost_by, verdict", [("dora", "inconclusive"), ("lora", "reproduced")])
def test_an_ordering_is_not_shown_by_the_seeds_that_survived_on_the_side_claimed_better(tmp_path, lost_by,
                                                                                       verdict):
    """DoRA above LoRA: two DoRA seeds that diverged leave its survivor the lucky one; LoRA's losses only work
    against the claim."""
    for method, correct in (("dora", 45), ("lora", 30)):
        for seed in TRAINED_SEEDS:
            if method == lost_by and seed:
                _lose(tmp_path, "smollm135", method, "gsm8k", seed, "diverged")
            else:
                write_cell(tmp_path, "smollm135", method, "gsm8k", seed, first(correct + seed))
    results, _ = claims_of(tmp_path)
    (instance,) = results["dora-above-lora-gsm8k"].instances
    assert instance.test.p_value < 0.05 and instance.verdict == verdict


def test_a_study_claim_checked_on_part_of_the_study_says_what_is_missing(tmp_path):
    """One model under 300M on one dataset cannot settle "full fine-tuning hurts models under 300M"."""
    for method, correct in (("zeroshot", 20), ("full", 8)):
        write_row(tmp_path, "smollm135", method, "gsm8k", correct)
    results, _ = claims_of(tmp_path)
    result = results["full-below-zeroshot-under-300m"]
    assert result.stated_verdict == "reproduced (incomplete)"
    assert result.gaps[:2] == ["model pattern 'gemma270' matches no model of these results",
                               "dataset 'orcamath': no cell of these results"]


def test_a_verdict_on_one_training_run_is_stated_as_incomplete(tmp_path):
    """One seed of each: the exact test covers the questions only, not how far another training run lands."""
    write_row(tmp_path, "smollm135", "dora", "gsm8k", 45, seeds=(0,))
    write_row(tmp_path, "smollm135", "lora", "gsm8k", 30, seeds=(0,))
    results, _ = claims_of(tmp_path)
    result = results["dora-above-lora-gsm8k"]
    assert [i.verdict for i in result.instances] == ["reproduced"]
    assert result.stated_verdict == "reproduced (incomplete)"
    assert any(gap.startswith("smollm135 × dora on gsm8k: one training run (seed 0)") for gap in result.gaps)


def test_a_verdict_on_two_training_runs_says_their_spread_rests_on_one_degree_of_freedom(tmp_path):
    write_row(tmp_path, "smollm135", "dora", "gsm8k", 45, seeds=(0, 1))
    write_row(tmp_path, "smollm135", "lora", "gsm8k", 30, seeds=(0, 1, 2))
    results, report = claims_of(tmp_path)
    (instance,) = results["dora-above-lora-gsm8k"].instances
    assert instance.test.seeds == (2, 3)
    assert "a row of 2 seeds: the seeds test rests on one degree of freedom" in (tmp_path / "report" / "claims.md").read_text()


def test_identical_seeds_on_few_questions_show_no_non_inferiority(tmp_path):
    """Three LoRA seeds answering exactly as zero-shot on 60 questions: nothing varies, but 60 questions cannot
    place the difference within 2 points (Tango's width for no discordance, ±6 points)."""
    write_row(tmp_path, "gemma270", "zeroshot", "gsm8k", 40)
    for seed in TRAINED_SEEDS:
        write_cell(tmp_path, "gemma270", "lora", "gsm8k", seed, first(40))
    results, _ = claims_of(tmp_path)
    (instance,) = results["peft-not-below-zeroshot-under-300m"].instances
    assert instance.test.ci_low < -0.02 and instance.verdict == "inconclusive"


def _variant(path: Path, **method_settings) -> None:
    """The cell at other method settings (``r=8``, ``lr=1e-4``), with keys of their own."""
    record = json.loads(path.read_text())
    record["config"]["method"].update(method_settings)
    for key in ("evaluation_key", "configuration_key", "training_key"):
        record["identity"][key] += "".join(f"-{name}{value}" for name, value in method_settings.items())
    path.write_text(json.dumps(record))


def pairing_gaps(result) -> list[str]:
    """A result's gaps other than the models and datasets of the claim the results do not hold at all (the
    study's claims name all five models and both datasets; these tests write a few)."""
    return [gap for gap in result.gaps if "matches no model of these results" not in gap
            and not re.fullmatch(r"dataset '\w+': no cell of these results", gap)]


def test_variants_of_both_sides_are_paired_like_with_like(tmp_path):
    """DoRA 10 points above LoRA at r=8 and at r=16 (300 questions, 3 seeds): two instances, both reproduced;
    DoRA at r=8 against LoRA at r=16 would compare the ranks."""
    for r, base in ((8, 100), (16, 160)):
        for method, k in (("lora", base), ("dora", base + 30)):
            for offset, seed in enumerate(TRAINED_SEEDS):
                _variant(write_cell(tmp_path / f"r{r}", "qwen05", method, "gsm8k", seed,
                                    [i < k + offset - 1 for i in range(300)]), r=r)
    results, _ = claims_of(tmp_path)
    result = results["dora-above-lora-gsm8k"]
    assert sorted((i.a["variant"], i.b["variant"]) for i in result.instances) == [("r=16", "r=16"), ("r=8", "r=8")]
    assert result.verdict == "reproduced" and result.tested == 2 and not pairing_gaps(result)


def test_variants_of_one_side_are_paired_with_the_other_side_at_the_same_setting(tmp_path):
    """DoRA at r=8 and r=16, LoRA at r=16 only: DoRA r=8 has no LoRA to compare with (a gap), not LoRA r=16."""
    for method, r in (("dora", 8), ("dora", 16), ("lora", 16)):
        for seed in TRAINED_SEEDS:
            _variant(write_cell(tmp_path / f"{method}{r}", "qwen05", method, "gsm8k", seed,
                                [i < 100 + seed for i in range(300)]), r=r)
    results, _ = claims_of(tmp_path)
    result = results["dora-above-lora-gsm8k"]
    assert [(i.a["variant"], i.b["variant"]) for i in result.instances] == [("r=16", "")]
    assert "qwen05 × dora (r=8) on gsm8k: no lora to compare it with" in result.gaps


def test_a_setting_whose_values_the_sides_never_share_does_not_stop_the_pairing(tmp_path):
    """LoRA at two learning rates against full fine-tuning at its own: each rate is a method's own, so both LoRA
    rows are compared with full fine-tuning."""
    for lr in (1e-4, 2e-4):
        for seed in TRAINED_SEEDS:
            _variant(write_cell(tmp_path / f"lora{lr}", "qwen05", "lora", "gsm8k", seed,
                                [i < 160 + seed for i in range(300)]), lr=lr)
    for seed in TRAINED_SEEDS:
        write_cell(tmp_path / "full", "qwen05", "full", "gsm8k", seed, [i < 100 + seed for i in range(300)])
    results, _ = claims_of(tmp_path)
    result = results["lora-above-full-qwen05"]
    assert [i.verdict for i in result.instances] == ["reproduced", "reproduced"] and not pairing_gaps(result)


def test_claims_files_refuse_a_key_given_twice_and_a_margin_in_points(tmp_path):
    twice = tmp_path / "twice.yaml"
    twice.write_text("claims:\n  - id: x\n    text: t\n    a: lora\n    b: zeroshot\n    direction: above\n"
                     "    direction: below\n")
    with pytest.raises(ClaimsError, match="the key 'direction' is given twice"):
        load_claims(twice)
    points = tmp_path / "points.yaml"
    points.write_text("claims:\n  - {id: x, text: t, a: lora, b: zeroshot, direction: not_below, margin: 0.5}\n")
    with pytest.raises(ClaimsError, match=r"margin=0.5 must be an accuracy difference.*\(0.5 would be 50 points\)"):
        load_claims(points)


def test_a_model_of_random_weights_is_left_out_unless_named_and_a_pattern_matching_nothing_is_named(tmp_path):
    write_row(tmp_path, "smollm135", "zeroshot", "gsm8k", 40)
    write_row(tmp_path, "smollm135", "full", "gsm8k", 10)
    for method in ("zeroshot", "full"):
        for path in tmp_path.glob(f"smollm135-{method}-*/result.json"):
            record = json.loads(path.read_text())
            record["model"] = record["config"]["model"]["name"] = "smollm135_random"
            record["config"]["model"]["source"] = "random"
            for key in ("evaluation_key", "configuration_key", "training_key"):
                if record["identity"][key]:
                    record["identity"][key] += "-random"
            (tmp_path / f"random-{path.parent.name}").mkdir()
            (tmp_path / f"random-{path.parent.name}" / "result.json").write_text(json.dumps(record))
            shutil.copy(path.parent / PREDICTIONS_FILE, tmp_path / f"random-{path.parent.name}" / PREDICTIONS_FILE)
    claims = tmp_path / "claims.yaml"
    claims.write_text("claims:\n  - {id: under, text: t, a: full, b: zeroshot, direction: below, params_below: 300M}\n"
                      "  - {id: typo, text: t, a: full, b: zeroshot, direction: below, models: [smollm135, smolm135_q4]}\n"
                      "  - {id: either, text: t, a: full, b: zeroshot, direction: below, models: [smollm135, "
                      "smolm135_q4], models_require: any}\n")
    claims.write_text(claims.read_text() + "  - {id: lost, text: t, a: full, b: zeroshot, direction: below, "
                      "models: ['smollm135_r*']}\n")
    results, _ = claims_of(tmp_path, claims=claims)
    assert [i.a["model"] for i in results["under"].instances] == ["smollm135"]
    # a claim whose cells are all of random weights says so, rather than that there are none
    assert results["lost"].reason.startswith("the cells of full") and "random-weight models only (smollm135_random)" \
        in results["lost"].reason
    # a control the claim's rules leave out is named, but does not make the verdict incomplete
    assert results["under"].gaps == [] and results["under"].stated_verdict == results["under"].verdict
    assert results["under"].excluded == ["smollm135_random: random weights, left out (name it in the claim's models "
                                         "to include it; a pattern does not)"]
    assert "Left out by the claim's rules:\n\n- smollm135_random: random weights" in \
        (tmp_path / "report" / "claims.md").read_text()
    assert results["typo"].gaps == ["model pattern 'smolm135_q4' matches no model of these results"]
    # models listed as alternatives (models_require: any): one that matches nothing is named, not a gap
    assert results["either"].gaps == [] and results["either"].absent_models == ["smolm135_q4"]
    assert "Not in these results: model smolm135_q4." in (tmp_path / "report" / "claims.md").read_text()


def test_the_size_plot_leaves_random_weight_controls_out_and_names_models_sharing_a_size(tmp_path, monkeypatch):
    """smollm135, its 4-bit GGUF and its random-weight control share one size: the control's 0 % drawn on the
    same line would read as a size effect."""
    import slm_sweep.report.plots as plots
    from slm_sweep.report import collect, summarize

    monkeypatch.setitem(SIZES, "smollm135_random", SIZES["smollm135"])
    for model, correct in (("smollm135", 20), ("smollm135_q4", 18), ("smollm135_random", 0), ("gemma270", 25)):
        write_row(tmp_path, model, "zeroshot", "gsm8k", correct)
    for path in tmp_path.glob("smollm135_random-*/result.json"):
        record = json.loads(path.read_text())
        record["config"]["model"]["source"] = "random"
        path.write_text(json.dumps(record))
    # an adapter adds to its row's total: the plot still puts the model at its base size
    write_row(tmp_path, "gemma270", "lora", "gsm8k", 28)
    for path in tmp_path.glob("gemma270-lora-*/result.json"):
        record = json.loads(path.read_text())
        record["metrics"]["total_params"] += 1_000_000
        path.write_text(json.dumps(record))
    figures = {}
    monkeypatch.setattr(plots, "_save", lambda fig, path: figures.setdefault(path.name, fig) and path)
    plots.write_plots(summarize(collect([tmp_path]).records), [], tmp_path / "plots")
    axes = figures["accuracy_vs_size_gsm8k.png"].axes[0]
    zeroshot, lora = [container.lines[0] for container in axes.containers]
    assert sorted(zeroshot.get_ydata()) == pytest.approx([30.0, 33.3, 41.7], abs=0.1)  # no 0 % of the control
    assert list(lora.get_xdata()) == [SIZES["gemma270"]]
    assert sorted(text.get_text() for text in axes.texts) == ["gemma270", "gemma270", "smollm135", "smollm135_q4"]


def test_an_exact_tie_with_zero_shot_is_no_delta_and_not_below_it(tmp_path):
    """Seeds with 2, 3 and 4 of 60 right average to zero-shot's 3 of 60 up to a rounding error (fmean gives
    0.04999...): that is a tie, not a row below zero-shot, and it reads +0.0."""
    write_row(tmp_path, "smollm135", "zeroshot", "gsm8k", 3)
    write_row(tmp_path, "smollm135", "lora", "gsm8k", 3)
    report = write_report([tmp_path], tmp_path / "out", plots=False)
    (lora,) = [r for r in report["rows"] if r["method"] == "lora"]
    assert lora["delta_zeroshot"] == 0.0 and lora["below_zeroshot"] is False
    line = next(x for x in report["markdown"].splitlines() if x.startswith("| smollm135 | lora"))
    assert "+0.0" in line and "-0.0" not in line


def test_a_delta_that_was_not_tested_is_marked_so_not_read_as_not_significant(tmp_path):
    """LoRA scored the first 40 questions, zero-shot all 60: their delta compares means over different questions
    and has no test, which the table marks (†) rather than leaving it to read as tested and not significant."""
    write_row(tmp_path, "smollm135", "zeroshot", "gsm8k", 20)
    for seed, right in zip(TRAINED_SEEDS, (30, 31, 32)):
        write_cell(tmp_path, "smollm135", "lora", "gsm8k", seed, [i < right for i in range(40)])
    report = write_report([tmp_path], tmp_path / "out", plots=False)
    (lora,) = [r for r in report["rows"] if r["method"] == "lora"]
    assert lora["delta_zeroshot_significant"] is None and lora["delta_zeroshot"] is not None
    line = next(x for x in report["markdown"].splitlines() if x.startswith("| smollm135 | lora"))
    assert f"{100 * lora['delta_zeroshot']:+.1f}†" in line
    assert "†: not tested (why: below); deltas with neither mark were tested and are not significant" in \
        report["markdown"]
    from slm_sweep.report.tables import points

    assert points(0.05, True) == "+5.0*" and points(0.05, False) == "+5.0" and points(0.05, None) == "+5.0†"


# ---------------------------------------------------------------------------------------------- lost and left out


def test_a_model_whose_every_cell_failed_is_a_gap_of_a_claim_bounded_by_size(tmp_path):
    """Full fine-tuning below zero-shot under 300M: every cell of gemma270 failed, so no result records its size.
    Its lost cells are gaps, not a model the size bound drops unseen (the verdict on smollm135 alone would read
    complete); a claim bounded by size alone cannot tell whether it covers gemma270 either, and says so."""
    for method, k in (("zeroshot", 40), ("full", 10)):
        write_row(tmp_path, "smollm135", method, "gsm8k", k)
    _lose(tmp_path, "gemma270", "zeroshot", "gsm8k", 0, "failed")
    for seed in TRAINED_SEEDS:
        _lose(tmp_path, "gemma270", "full", "gsm8k", seed, "failed")
    lost = ["gemma270: size unknown (no completed cell), so whether the claim's size bound covers it is unknown",
            "gemma270 × full on gsm8k: no completed seed (seed 0 failed; seed 1 failed; seed 2 failed)",
            "gemma270 × zeroshot on gsm8k: no completed seed (seed 0 failed)"]
    results, _ = claims_of(tmp_path)
    result = results["full-below-zeroshot-under-300m"]
    assert [i.verdict for i in result.instances] == ["reproduced"]
    assert result.stated_verdict == "reproduced (incomplete)" and sorted(pairing_gaps(result)) == sorted(lost)
    claims = tmp_path / "claims.yaml"
    claims.write_text("claims:\n  - {id: under, text: t, a: full, b: zeroshot, direction: below, params_below: 300M}\n")
    results, _ = claims_of(tmp_path, claims=claims)
    assert sorted(results["under"].gaps) == sorted(lost) and results["under"].stated_verdict == "reproduced (incomplete)"


def test_a_model_the_claim_lists_but_its_size_bound_leaves_out_is_named(tmp_path, monkeypatch):
    """gemma270 recorded at 310M parameters: the claim lists it among its models under 300M, and its size bound
    leaves it out. The verdict rests on smollm135 alone, and the claim's table says why gemma270 is not in it."""
    monkeypatch.setitem(SIZES, "gemma270", 310_000_000)
    for model in ("smollm135", "gemma270"):
        for method, k in (("zeroshot", 40), ("full", 10)):
            write_row(tmp_path, model, method, "gsm8k", k)
    results, _ = claims_of(tmp_path)
    result = results["full-below-zeroshot-under-300m"]
    assert [i.a["model"] for i in result.instances] == ["smollm135"] and not pairing_gaps(result)
    left_out = ("gemma270: 310M parameters (its smallest total_params), not under 300M: left out by the claim's "
                "size bound, although its models list matches it")
    assert result.excluded == [left_out]
    assert f"Left out by the claim's rules:\n\n- {left_out}" in (tmp_path / "report" / "claims.md").read_text()
    saved = {c["id"]: c for c in json.loads((tmp_path / "report" / "claims.json").read_text())["claims"]}
    assert saved["full-below-zeroshot-under-300m"]["excluded"] == [left_out]


def _trained_side(sweep: Path, method: str, k: int, lose: bool, how: str = "diverged") -> None:
    """Three seeds of a trained method (k-1, k, k+1 right), seed 2 diverged when ``lose``: lost, or (``how`` is
    "retried") completed when trained again (resume.retry_diverged), its record naming the divergence."""
    for seed in TRAINED_SEEDS:
        if lose and seed == 2 and how == "diverged":
            _lose(sweep, "qwen05", method, "gsm8k", seed, "diverged")
            continue
        path = write_cell(sweep, "qwen05", method, "gsm8k", seed, first(k + seed - 1))
        if lose and seed == 2:
            record = json.loads(path.read_text())
            record["retried_divergence"] = {"result_path": str(path.parent / "superseded" / "result.json"),
                                            "error": "training loss is nan at step 40", "status": "diverged"}
            path.write_text(json.dumps(record))


@pytest.mark.parametrize(("a", "b", "direction", "k_a", "k_b", "lost", "tested", "verdict"), [
    # the verdict favours the side that lost a seed: its survivors are the lucky ones, and cannot show it
    ("full", "zeroshot", "below", 40, 20, "a", "contradicted", "inconclusive"),
    ("dora", "lora", "above", 45, 20, "a", "reproduced", "inconclusive"),
    ("dora", "lora", "above", 20, 45, "b", "contradicted", "inconclusive"),
    ("lora", "full", "not_below", 20, 45, "b", "contradicted", "inconclusive"),
    ("lora", "full", "not_below", 45, 20, "a", "reproduced", "inconclusive"),
    ("lora", "full", "not_above", 20, 45, "b", "reproduced", "inconclusive"),
    ("lora", "full", "not_above", 45, 20, "a", "contradicted", "inconclusive"),
    # the other side lost it: its lost seed only adds to what the verdict says
    ("full", "zeroshot", "below", 10, 40, "a", "reproduced", "reproduced"),
    ("dora", "lora", "above", 20, 45, "a", "contradicted", "contradicted"),
    ("lora", "full", "not_below", 20, 45, "a", "contradicted", "contradicted"),
    ("lora", "full", "not_below", 45, 20, "b", "reproduced", "reproduced"),
    ("lora", "full", "not_above", 20, 45, "a", "reproduced", "reproduced"),
])  # fmt: skip
@pytest.mark.parametrize("how", ["diverged", "retried"])
def test_a_verdict_is_not_shown_by_the_survivors_of_the_side_it_favours(tmp_path, a, b, direction, k_a, k_b, lost,
                                                                       tested, verdict, how):
    """Seeds that diverged leave the survivors of their side the lucky ones, and so does a seed that diverged and
    completed when trained again: a significant verdict (reproduced or contradicted) that favours that side is
    inconclusive; one that favours the other side stands."""
    margin = ", margin: 0.02" if direction.startswith("not_") else ""
    claims = tmp_path / "claims.yaml"
    claims.write_text(f"claims:\n  - {{id: c, text: t, a: {a}, b: {b}, direction: {direction}{margin}}}\n")
    for method, k, side in ((a, k_a, "a"), (b, k_b, "b")):
        if method == "zeroshot":
            write_row(tmp_path, "qwen05", method, "gsm8k", k)
        else:
            _trained_side(tmp_path, method, k, lose=lost == side, how=how)
    results, _ = claims_of(tmp_path, claims=claims)
    (instance,) = results["c"].instances
    losing = instance.a if lost == "a" else instance.b
    if how == "diverged":
        assert losing["not_completed"] == "seed 2 diverged" and losing["retried"] is None
    else:
        assert losing["not_completed"] is None and losing["n"] == 3
        assert losing["retried"] == "seed 2 diverged, then completed on a retry"
        assert f"{losing['method']} kept seeds by a retry (seed 2 diverged, then completed on a retry)" in \
            (tmp_path / "report" / "claims.md").read_text()
        summary = (tmp_path / "report" / "summary.md").read_text()
        assert "Completed only when trained again after diverging" in summary
        assert f"qwen05 × {losing['method']}: seed 2 diverged, then completed on a retry." in summary
    assert instance.tested_verdict == tested and instance.verdict == verdict and instance.alone == verdict
    assert instance.downgraded == (verdict != tested)
    if instance.downgraded:
        shown = "the claim" if tested == "reproduced" else "the contradiction"
        assert f"its completed seeds alone cannot show {shown}" in (tmp_path / "report" / "claims.md").read_text()


@pytest.mark.parametrize("how", ["diverged", "killed before writing result.json"])
def test_a_seed_killed_before_writing_its_result_is_lost_as_one_that_diverged(tmp_path, how):
    """DoRA above LoRA, seed 2 of DoRA lost: whether it diverged or was killed before writing its result.json (the
    sweep knows its job from .hydra/), the surviving seeds alone cannot show the claim."""
    write_row(tmp_path, "qwen05", "lora", "gsm8k", 15)
    for seed in (0, 1):
        write_cell(tmp_path, "qwen05", "dora", "gsm8k", seed, first(45 + seed))
    if how == "diverged":
        _lose(tmp_path, "qwen05", "dora", "gsm8k", 2, "diverged")
    else:
        hydra = tmp_path / "qwen05-dora-gsm8k-seed2" / ".hydra"
        hydra.mkdir(parents=True)
        (hydra / "overrides.yaml").write_text("- model=qwen05\n- method=dora\n- seed=2\n")
    results, report = claims_of(tmp_path)
    (instance,) = results["dora-above-lora-gsm8k"].instances
    assert instance.test.p_value < 0.05 and instance.verdict == "inconclusive" and instance.downgraded
    lost = "seed 2 diverged" if how == "diverged" else "seed 2 left no result.json"
    assert instance.a["not_completed"] == lost
    assert f"qwen05 × dora on gsm8k: mean over 2 completed seeds only ({lost})" in results["dora-above-lora-gsm8k"].gaps
    assert f"qwen05 × dora: {lost}." in report["markdown"]


def _fail_beside(result: Path, **method_settings) -> Path:
    """A rerun of the cell at other method settings (``r=16``) that failed before its keys were known: run.py keeps
    the folder's finished result.json and writes the failure beside it, in result.failed.json."""
    attempt = json.loads(result.read_text())
    attempt["config"]["method"].update(method_settings)
    attempt.update(status="failed", error="config error: cannot read set", identity=None, metrics={}, eval_sets={})
    path = result.parent / "result.failed.json"
    path.write_text(json.dumps(attempt))
    return path


def test_a_seed_whose_rerun_failed_beside_an_earlier_result_is_lost_on_its_own_row(tmp_path):
    """A sweep of LoRA r=8 rerun into the same folders at r=16: seeds 0 and 1 completed (r=8's results set aside in
    superseded/), seed 2 failed before its keys were known, so its folder still holds r=8's finished result.json.
    The r=16 row and the claim count seed 2 as lost; r=8's results are all an earlier run's, which the rerun
    replaced (it changed r for every cell), not a row of their own."""
    write_row(tmp_path, "smollm135", "zeroshot", "gsm8k", 20)
    for seed in TRAINED_SEEDS:
        job = tmp_path / f"job{seed}"
        _variant(write_cell(job / "superseded" if seed < 2 else job, "smollm135", "lora", "gsm8k", seed,
                            first(30 + seed)), r=8)
        if seed < 2:
            _variant(write_cell(job, "smollm135", "lora", "gsm8k", seed, first(40 + seed)), r=16)
        else:
            failed = _fail_beside(job / "smollm135-lora-gsm8k-seed2" / "result.json", r=16)
    claims = tmp_path / "claims.yaml"
    claims.write_text("claims:\n  - {id: c, text: t, a: lora, b: zeroshot, direction: above}\n")
    results, report = claims_of(tmp_path, claims)
    assert [(row["variant"], row["n"], row["seeds"], row["not_completed"]) for row in report["rows"]
            if row["method"] == "lora"] == [("", 2, [0, 1], "seed 2 failed")]
    assert results["c"].gaps == ["smollm135 × lora on gsm8k: mean over 2 completed seeds only (seed 2 failed)"]
    collection = report["collection"]
    assert collection.failed_attempts == [failed] and collection.set_aside == []
    assert sorted(collection.replaced) == sorted([*tmp_path.glob("job[01]/superseded/*/result.json"),
                                                  failed.parent / "result.json"])
    assert "Skipped cells: 0 running, 1 failed, 0 diverged, 0 interrupted." in report["markdown"]
    assert "smollm135 × lora: seed 2 failed." in report["markdown"]


@pytest.mark.parametrize("resolved", [pytest.param({"lr": 2.0e-4}, id="tuned-rate-as-configured"),
                                      pytest.param({"prompt": "chat"}, id="style-as-configured")])
def test_a_retry_refused_before_its_keys_differs_only_where_the_finished_cell_resolved_more(tmp_path, resolved):
    """A relaunch refused on a machine that cannot run it (no CUDA) records its rate and prompt style as configured,
    while the finished result holds the tuned rate it trained at and its key's style: the same cell, nothing lost."""
    write_row(tmp_path, "smollm135", "zeroshot", "gsm8k", 20)
    for seed in TRAINED_SEEDS:
        path = write_cell(tmp_path, "smollm135", "lora", "gsm8k", seed, first(30 + seed))
        record = json.loads(path.read_text())
        record["config"]["method"]["lr"] = 5.0e-5
        path.write_text(json.dumps(record))
        attempt = _fail_beside(path, **({"lr": resolved["lr"]} if "lr" in resolved else {}))
        if "prompt" in resolved:
            record = json.loads(attempt.read_text())
            record["config"].setdefault("prompt", {})["style"] = resolved["prompt"]
            attempt.write_text(json.dumps(record))
    report = write_report([tmp_path], tmp_path / "report", plots=False)
    assert [(row["n"], row["not_completed"]) for row in report["rows"] if row["method"] == "lora"] == [(3, None)]
    assert report["collection"].failed_attempts == []


def test_a_failed_retry_beside_a_result_of_its_own_configuration_loses_no_seed(tmp_path):
    """A retry of a completed cell that failed before its keys were known (a set it could not read this time): the
    finished result.json is that cell's, so no seed is lost."""
    write_row(tmp_path, "smollm135", "zeroshot", "gsm8k", 20)
    for seed in TRAINED_SEEDS:
        path = write_cell(tmp_path, "smollm135", "lora", "gsm8k", seed, first(30 + seed))
    _fail_beside(path)
    report = write_report([tmp_path], tmp_path / "report", plots=False)
    assert [(row["n"], row["not_completed"]) for row in report["rows"] if row["method"] == "lora"] == [(3, None)]
    assert report["collection"].failed_attempts == [] and report["collection"].replaced == []


def test_the_sign_flip_distribution_of_a_fine_grid_is_quick_and_its_fft_tail_equals_the_direct_one(monkeypatch):
    """Five models pooled at 8 seeds a side with two seeds lost put the per-question differences on a grid of
    1/6720: the direct convolution took minutes per test there. The grid step of the differences' common factor
    and an FFT above the direct limit keep it under seconds, with the tails of the direct convolution."""
    import time

    import numpy as np

    import slm_sweep.report.stats as stats

    rng = np.random.default_rng(0)
    n = 1319

    def side(seeds, base):
        return np.array([np.where(rng.random(n) < 0.15, ~base, base) for _ in range(seeds)])

    designs = [(8, 8), (7, 8), (8, 6), (8, 8), (8, 8)]
    strata = [(side(a, base), side(b, base)) for a, b in designs for base in [rng.random(n) < 0.5]]
    scale = len(strata) * math.lcm(*(a.shape[0] * b.shape[0] for a, b in strata))
    per_question = sum(a.mean(0) - b.mean(0) for a, b in strata) / len(strata)
    observed = abs(per_question.sum())
    started = time.perf_counter()
    values, probabilities = stats.sign_flip_distribution(per_question, scale)
    assert time.perf_counter() - started < 60  # minutes before the grid step and the FFT
    assert probabilities.sum() == pytest.approx(1, abs=1e-12)
    tail = probabilities[np.abs(values) >= observed - 1e-9].sum()

    smaller = per_question[:400]  # direct and FFT on the same grid, both quick
    direct = stats.sign_flip_distribution(smaller, scale)
    monkeypatch.setattr(stats, "_DIRECT_CONVOLUTION_LIMIT", 0)
    by_fft = stats.sign_flip_distribution(smaller, scale)
    for cut in (0.0, abs(smaller.sum()), np.quantile(np.abs(direct[0]), 0.99)):
        assert by_fft[1][np.abs(by_fft[0]) >= cut - 1e-9].sum() == pytest.approx(
            direct[1][np.abs(direct[0]) >= cut - 1e-9].sum(), abs=1e-12)
    assert 0 < tail <= 1
