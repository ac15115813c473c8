"""Score a model on a list of examples: build prompts, generate, extract, compare; one record per question."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

from slm_sweep.data.prompts import ShotSampler, build_prompt
from slm_sweep.evaluate.generate import generate
from slm_sweep.evaluate.scoring import extract_answer, is_correct


def build_eval_prompts(tokenizer, examples: Sequence, style: str, sampler: ShotSampler | None = None,
                       system: str | None = None) -> list[str]:
    return [
        build_prompt(tokenizer, ex.question, sampler.shots_for(ex.question) if sampler else (), style, system)
        for ex in examples
    ]


def score_output(output: str, reference: str, tolerance: float | None) -> dict[str, Any]:
    return {
        "extracted_strict": extract_answer(output, "strict"),
        "extracted_flexible": extract_answer(output, "flexible"),
        "correct_strict": is_correct(output, reference, "strict", tolerance),
        "correct_flexible": is_correct(output, reference, "flexible", tolerance),
    }


def evaluate(model, tokenizer, examples: Sequence, prompts: Sequence[str], eval_cfg: Mapping[str, Any],
             eval_set: str, tolerance: float | None = None, progress: bool = True) -> tuple[list[dict], dict]:
    """Generate for every prompt and score it; returns (prediction records in input order, metrics)."""
    from tqdm.auto import tqdm

    bar = tqdm(total=len(prompts), desc=f"eval {eval_set}", unit="q", disable=not progress, dynamic_ncols=True)
    counts = {"strict": 0, "flexible": 0, "done": 0}
    start = time.perf_counter()

    def on_batch(indices, gens):
        for i, g in zip(indices, gens):
            scored = score_output(g.text, examples[i].reference, tolerance)
            counts["strict"] += scored["correct_strict"]
            counts["flexible"] += scored["correct_flexible"]
        counts["done"] += len(indices)
        bar.update(len(indices))
        bar.set_postfix(acc_flex=f"{counts['flexible'] / counts['done']:.3f}",
                        acc_strict=f"{counts['strict'] / counts['done']:.3f}")

    generations = generate(
        model, tokenizer, prompts,
        max_new_tokens=int(eval_cfg["max_new_tokens"]),
        stop=list(eval_cfg.get("stop") or []),
        token_budget=int(eval_cfg.get("token_budget", 65536)),
        max_batch_size=int(eval_cfg.get("max_batch_size", 64)),
        on_batch=on_batch,
    )
    seconds = time.perf_counter() - start
    bar.close()

    records = []
    for i, (ex, gen) in enumerate(zip(examples, generations)):
        records.append({"eval_set": eval_set, "index": i, "question": ex.question, "reference": ex.reference,
                        "output": gen.text, **score_output(gen.text, ex.reference, tolerance)})
    n = len(records)
    new_tokens = sum(g.new_tokens for g in generations)
    metrics = {
        "accuracy_strict": sum(r["correct_strict"] for r in records) / n if n else None,
        "accuracy_flexible": sum(r["correct_flexible"] for r in records) / n if n else None,
        "n_eval": n,
        "eval_time_s": seconds,
        "eval_tokens_per_s": new_tokens / seconds if seconds else None,
        "eval_new_tokens": new_tokens,
    }
    return records, metrics
