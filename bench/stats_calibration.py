"""How often the report's paired test of two rows rejects "no difference" when there is none (its level), and
when there is one (its power), on simulated sweeps.

Each simulated question has a difficulty (its chance of being answered, Beta(1, 2): most questions are hard, as
GSM8K is for small models); each training seed shifts every question's chance by one draw of Normal(0,
``seed_sd``), clipped to [0, 1]. Side A has ``seeds_a`` seeds; side B is a baseline decoded once (one seed,
answering each question with the seed-averaged chance, so that the two sides' expected accuracies are equal
under the null) or, with ``seeds_b`` > 1, trained seeds like A's. ``effect`` adds to A's chances.

``--models K`` simulates the pooled test of a claim with ``pool: models`` (``stats.pooled_paired_test``): K models
answer the same questions (a shared difficulty, shifted per model by Normal(0, 0.1)), each with its own seeds
of A and B, and the test is of the mean over the models of each one's difference. ``--uneven`` gives the first
model's seeds four times the spread of the others' (one model whose runs scatter, as small models' full
fine-tuning can), where the pooled seed part has fewer degrees of freedom than the sides' sum.

    python bench/stats_calibration.py --questions 1319 200 --designs 3x1 3x3 2x1 --reps 2000   # docs/results.md
    python bench/stats_calibration.py --questions 500 --reps 1000 --seed-sds 0.03
    python bench/stats_calibration.py --models 5 --designs 3x3 3x1 --questions 1319 --seed-sds 0 0.015 0.03 0.06 \
        --reps 1000                                          # pooled over five models: docs/results.md
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from slm_sweep.arguments import at_least, number_in  # noqa: E402
from slm_sweep.report.stats import ALPHA, paired_test, pooled_paired_test  # noqa: E402

MODEL_SD = 0.1  # how far a model's chance on a question lies from the questions' shared difficulty


def simulate_rows(rng: np.random.Generator, questions: int, seeds_a: int, seeds_b: int, seed_sd: float,
                  effect: float = 0.0, difficulty: np.ndarray | None = None) -> tuple[list[dict], list[dict]]:
    """One simulated comparison: A's and B's seeds as {question: correct} rows, as the report reads them
    (``difficulty``: each question's chance, drawn from Beta(1, 2) when not given)."""
    if difficulty is None:
        difficulty = rng.beta(1.0, 2.0, questions)

    def trained(shift: float) -> np.ndarray:
        chance = np.clip(difficulty + rng.normal(0.0, seed_sd) + shift, 0.0, 1.0)
        return rng.random(questions) < chance

    if seeds_b > 1:
        b = [trained(0.0) for _ in range(seeds_b)]
    else:  # the chance averaged over seeds, so that E[A] = E[B] with effect 0 despite the clipping
        averaged = np.clip(difficulty[None, :] + rng.normal(0.0, seed_sd, (2000, 1)), 0.0, 1.0).mean(axis=0)
        b = [rng.random(questions) < averaged]
    a = [trained(effect) for _ in range(seeds_a)]
    return ([dict(enumerate(row.tolist())) for row in a], [dict(enumerate(row.tolist())) for row in b])


def p_values(questions: int, seeds_a: int, seeds_b: int, seed_sd: float, reps: int, *, effect: float = 0.0,
             rng_seed: int = 0, models: int = 1, uneven: bool = False) -> np.ndarray:
    """The paired test's p-values over ``reps`` simulated comparisons (``models`` > 1: the pooled test over that
    many models on the same questions; ``uneven``: the first model's seeds spread four times as far)."""
    rng = np.random.default_rng(rng_seed)
    found = []
    for _ in range(reps):
        if models == 1:
            a, b = simulate_rows(rng, questions, seeds_a, seeds_b, seed_sd, effect)
            found.append(paired_test(a, b).p_value)
            continue
        shared = rng.beta(1.0, 2.0, questions)
        strata = [simulate_rows(rng, questions, seeds_a, seeds_b, seed_sd * (4 if uneven and m == 0 else 1), effect,
                                np.clip(shared + rng.normal(0.0, MODEL_SD, questions), 0.0, 1.0))
                  for m in range(models)]
        found.append(pooled_paired_test(strata).p_value)
    return np.asarray(found)


def rejection_rate(questions: int, seeds_a: int, seeds_b: int, seed_sd: float, reps: int, *, effect: float = 0.0,
                   alpha: float = ALPHA, rng_seed: int = 0, models: int = 1, uneven: bool = False) -> float:
    """The share of ``reps`` simulated comparisons whose paired test is significant at ``alpha``."""
    return float(np.mean(p_values(questions, seeds_a, seeds_b, seed_sd, reps, effect=effect, rng_seed=rng_seed,
                                  models=models, uneven=uneven) < alpha))


def design(text: str) -> tuple[int, int]:
    """An argparse type: ``AxB``, the seeds of A and of B, each a whole number of at least 1."""
    parts = text.lower().split("x")
    if len(parts) == 2 and all(part.strip().isdigit() and int(part) >= 1 for part in parts):
        return int(parts[0]), int(parts[1])
    raise argparse.ArgumentTypeError(f"{text!r}: expected AxB, the seeds of A and of B, each a whole number of at "
                                     "least 1 (e.g. 3x1)")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--questions", type=at_least(1), nargs="+", default=[1319, 200])
    parser.add_argument("--designs", type=design, nargs="+", default=[(3, 1), (3, 3), (2, 1), (5, 1)],
                        metavar="AxB", help="seeds of A x seeds of B, e.g. 3x1 (default: 3x1 3x3 2x1 5x1)")
    parser.add_argument("--seed-sds", type=number_in(0.0, 1.0), nargs="+", default=[0.0, 0.015, 0.03, 0.06])
    parser.add_argument("--effect", type=number_in(-1.0, 1.0), default=0.03,
                        help="A's true advantage for the power column")
    parser.add_argument("--models", type=at_least(1), nargs="+", default=[1],
                        help="models a comparison pools (1: one model's paired test; K: the pooled test over K)")
    parser.add_argument("--uneven", action="store_true",
                        help="with --models: the first model's seeds spread four times as far as the others'")
    parser.add_argument("--reps", type=at_least(1), default=400)
    parser.add_argument("--alphas", type=number_in(0.0, 1.0, low_open=True, high_open=True), nargs="+",
                        default=[ALPHA, 0.01, 0.005],
                        help="levels to count rejections at: a claim family of m comparisons tests each at about "
                             "alpha / m (Holm, Bonferroni), so the level must hold below 0.05 too")
    args = parser.parse_args(argv)
    print(f"{args.reps} simulated comparisons per line; a calibrated level lies within "
          + ", ".join(f"±{2 * (a * (1 - a) / args.reps) ** 0.5:.3f} of {a:g}" for a in args.alphas)
          + " 95 % of the time")
    levels = " | ".join(f"no difference, at {a:g}" for a in args.alphas)
    pooled = args.models != [1]
    print(f"|{' models |' if pooled else ''} questions | seeds A x B | seed sd (points) | {levels} | "
          f"A +{100 * args.effect:g} points, at {args.alphas[0]:g} |")
    print(f"|{'---:|' if pooled else ''}---:|---|---:|" + "---:|" * (len(args.alphas) + 1))
    start = time.perf_counter()
    for models in args.models:
        for questions in args.questions:
            for seeds_a, seeds_b in args.designs:
                for seed_sd in args.seed_sds:
                    null = p_values(questions, seeds_a, seeds_b, seed_sd, args.reps, models=models,
                                    uneven=args.uneven)
                    power = rejection_rate(questions, seeds_a, seeds_b, seed_sd, args.reps, effect=args.effect,
                                           alpha=args.alphas[0], rng_seed=1, models=models, uneven=args.uneven)
                    rates = " | ".join(f"{np.mean(null < a):.3f}" for a in args.alphas)
                    print(f"|{f' {models} |' if pooled else ''} {questions} | {seeds_a} x {seeds_b} | "
                          f"{100 * seed_sd:g} | {rates} | {power:.3f} |", flush=True)
    print(f"({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
