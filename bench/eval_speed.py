"""Time our evaluator against lm-evaluation-harness's HF backend on the same model, questions and prompts.

Both run GSM8K 5-shot in lm-eval's plain format (seed 1234, stop strings "Question:", "</s>", "<|im_end|>",
greedy, the same max new tokens) in one process on the same in-memory model, the runs interleaved over
``--rounds`` rounds so that a change in machine load hits all of them alike. Prints each run's median wall and
CPU seconds, questions/s and accuracy, the speed ratio, and whether the answers are identical.

    python bench/eval_speed.py --model smollm135_q4 --questions 16 --lm-eval-batch-sizes 1 16 --rounds 2

Needs the dev extra (lm-eval) and the local GSM8K files (``--data-root``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from slm_sweep.arguments import at_least  # noqa: E402
from slm_sweep.evaluate.generate import ENGINES  # noqa: E402

GSM8K_STOP = ["Question:", "</s>", "<|im_end|>"]
LM_EVAL_SHOT_SEED = 1234


@dataclass
class Timed:
    name: str
    seconds: float       # wall time
    cpu_seconds: float   # CPU time of this process (all its threads)
    outputs: list[str]
    accuracy: dict[str, float]
    rounds_agree: bool = True  # folded runs (median_run): whether every round decoded the same outputs
    phases: str = ""  # ours: where the evaluator's time went (its decode profile), printed with the round


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm135_q4", help="a conf/model/*.yaml name")
    parser.add_argument("--questions", type=at_least(1), default=16, help="first N GSM8K test questions")
    parser.add_argument("--max-new-tokens", type=at_least(1), default=256)
    parser.add_argument("--engines", nargs="+", choices=ENGINES, default=["static"], help="our engines to time")
    parser.add_argument("--max-batch-size", type=at_least(1), default=64, help="our eval.max_batch_size")
    parser.add_argument("--token-budget", type=at_least(1), default=65536, help="our eval.token_budget")
    parser.add_argument("--lm-eval-batch-sizes", nargs="+", default=["1"],
                        help="lm-eval HFLM batch_size values to time (1 is its default; 'auto' is allowed)")
    parser.add_argument("--threads", type=at_least(1), default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--rounds", type=at_least(1), default=1,
                        help="interleaved repetitions of every run; medians shown")
    parser.add_argument("--data-root", default=str(REPO.parent / "shared" / "data"))
    parser.add_argument("--cache-dir", default=str(REPO / ".cache" / "slm_sweep"))
    return parser.parse_args(argv)


def load(args):
    from slm_sweep.config import compose
    from slm_sweep.models import load_model_and_tokenizer

    model_cfg = compose([f"model={args.model}"]).model
    model, tokenizer = load_model_and_tokenizer(model_cfg, cache_dir=args.cache_dir)
    return model.eval(), tokenizer


def time_ours(model, tokenizer, args, engine: str) -> Timed:
    from slm_sweep.data import dataset_spec, load_splits
    from slm_sweep.data.prompts import ShotSampler
    from slm_sweep.evaluate.evaluator import build_eval_prompts, evaluate

    start, cpu = time.perf_counter(), time.process_time()
    splits = load_splits({**dataset_spec("gsm8k"), "val_size": None}, data_root=args.data_root)
    test = splits.test[: args.questions]
    prompts = build_eval_prompts(tokenizer, test, "plain", ShotSampler(splits.train, 5, seed=LM_EVAL_SHOT_SEED))
    # generation_config=model: as lm-eval's model.generate applies it
    eval_cfg = {"max_new_tokens": args.max_new_tokens, "stop": GSM8K_STOP, "engine": engine,
                "max_batch_size": args.max_batch_size, "token_budget": args.token_budget, "generation_config": "model"}
    records, metrics = evaluate(model, tokenizer, test, prompts, eval_cfg, "gsm8k", progress=False)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    return Timed(f"ours engine={engine}", seconds, cpu, [r["output"] for r in records],
                 {"strict": metrics["accuracy_strict"], "flexible": metrics["accuracy_flexible"]},
                 phases=describe_phases(metrics["decode_profile"]))


def describe_phases(profile: dict | None) -> str:
    """The static engine's split of its time (``LoopTimes``): reading the prompts, the decode steps."""
    if not profile:
        return ""
    return (f"prompts read {profile['prefill_s']:.1f} s in {profile['prefill_forwards']} forwards, "
            f"{profile['decode_steps']} decode steps {profile['decode_s']:.1f} s "
            f"({profile['decode_ms_per_step']:.1f} ms each)")


def time_lm_eval(model, tokenizer, args, batch_size: str) -> Timed:
    from slm_sweep.evaluate.lm_eval_gsm8k import run_lm_eval_gsm8k

    size = int(batch_size) if batch_size.isdigit() else batch_size
    start, cpu = time.perf_counter(), time.process_time()
    run = run_lm_eval_gsm8k(model, tokenizer, Path(args.data_root), limit=args.questions, batch_size=size,
                            max_gen_toks=args.max_new_tokens)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    return Timed(f"lm-eval {run.version} batch_size={batch_size}", seconds, cpu, run.outputs, run.accuracy)


def warm_up(model, tokenizer) -> None:
    """One short generation, so that one-time library setup is not charged to whichever run goes first."""
    from slm_sweep.evaluate.generate import generate

    generate(model, tokenizer, ["Question: What is 2 + 3?\nAnswer:"], max_new_tokens=4)


def median_run(runs: list[Timed]) -> Timed:
    """The runs of one configuration folded into one: median wall and CPU time, the first round's outputs, and
    whether every round's outputs agree with them."""
    first = runs[0]
    return Timed(first.name, statistics.median(r.seconds for r in runs), statistics.median(r.cpu_seconds for r in runs),
                 first.outputs, first.accuracy, rounds_agree=all(r.outputs == first.outputs for r in runs))


def identical(run: Timed, reference: Timed) -> str:
    """The "identical" column: yes only when both runs decoded the same outputs in every round."""
    if not run.rounds_agree:
        return "NO (its rounds differ)"
    if not reference.rounds_agree:
        return "NO (the reference's rounds differ)"
    return "yes" if run.outputs == reference.outputs else "NO"


def report(runs: list[Timed], reference: Timed, questions: int) -> None:
    print(f"\n{'run':<34} {'wall s':>8} {'cpu s':>8} {'q/s':>7} {'strict':>7} {'flex':>7} {'x ours':>7} identical")
    for run in runs:
        verdict = identical(run, reference)
        print(f"{run.name:<34} {run.seconds:8.1f} {run.cpu_seconds:8.1f} {questions / run.seconds:7.3f} "
              f"{run.accuracy['strict']:7.3f} {run.accuracy['flexible']:7.3f} {run.seconds / reference.seconds:7.2f} "
              f"{verdict}")
        if verdict == "NO":
            differ = [i for i, (a, b) in enumerate(zip(run.outputs, reference.outputs)) if a != b] or "all"
            print(f"    outputs differ from {reference.name} at questions {differ}")


def main(argv=None) -> None:
    args = parse_args(argv)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    model, tokenizer = load(args)
    print(f"model={args.model} questions={args.questions} max_new_tokens={args.max_new_tokens} "
          f"threads={torch.get_num_threads()} device={next(model.parameters()).device} "
          f"load_avg_before={os.getloadavg()[0]:.1f}")
    warm_up(model, tokenizer)
    runs = [("ours", engine) for engine in args.engines] + [("lm-eval", size) for size in args.lm_eval_batch_sizes]
    timed: dict[tuple[str, str], list[Timed]] = {run: [] for run in runs}
    for round_index in range(args.rounds):
        for kind, setting in runs:
            time_run = time_ours if kind == "ours" else time_lm_eval
            result = time_run(model, tokenizer, args, setting)
            timed[(kind, setting)].append(result)
            print(f"round {round_index + 1}: {result.name}: {result.seconds:.1f} s wall, {result.cpu_seconds:.1f} s cpu, "
                  f"load {os.getloadavg()[0]:.1f}" + (f"; {result.phases}" if result.phases else ""), flush=True)
    folded = [median_run(timed[run]) for run in runs]
    report(folded, folded[0], args.questions)


if __name__ == "__main__":
    main()
