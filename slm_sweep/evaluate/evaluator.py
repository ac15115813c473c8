"""Score a model on a list of examples: build prompts, generate, extract, compare; one record per question."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

from slm_sweep.data.prompts import PromptFormat, ShotSampler
from slm_sweep.evaluate.generate import generate
from slm_sweep.scoring import METRICS, accuracy_key, score
from slm_sweep.settings import EvalSettings

_DEFAULTS = EvalSettings()  # for the keys an ``eval_cfg`` leaves out (a composed cell's has them all)


def build_eval_prompts(tokenizer, examples: Sequence, prompt_format: PromptFormat | str,
                       sampler: ShotSampler | None = None, system: str | None = None) -> list[str]:
    """One prompt per example; with a sampler, its shots are drawn afresh for this evaluation set (as lm-eval).

    ``prompt_format`` is a cell's ``PromptFormat``, or a style (``chat``, ``plain``) for the format trained cells
    use, with ``system`` as its system message.
    """
    if isinstance(prompt_format, str):
        prompt_format = PromptFormat("as_trained", prompt_format, system)
    shots = sampler.draw([ex.question for ex in examples]) if sampler else [()] * len(examples)
    return [prompt_format.render(tokenizer, ex.question, s) for ex, s in zip(examples, shots)]


def score_output(output: str, reference: str, tolerance: float | None) -> dict[str, Any]:
    """``extracted_<name>`` and ``correct_<name>`` for every metric in scoring.METRICS."""
    return score(output, reference, tolerance)


def evaluate(model, tokenizer, examples: Sequence, prompts: Sequence[str], eval_cfg: Mapping[str, Any],
             eval_set: str, tolerance: float | None = None, progress: bool = True) -> tuple[list[dict], dict]:
    """Generate for every prompt and score it; returns (prediction records in input order, metrics).

    ``eval_cfg`` keys (EvalSettings in slm_sweep/settings.py, whose defaults fill any left out): max_new_tokens,
    stop, token_budget, max_batch_size, engine (static | cache | plain), cuda_graphs, prefill_batch_size,
    generation_config. The model generates where it is: the caller places it (``slm_sweep.placement``).
    """
    from tqdm.auto import tqdm

    bar = tqdm(total=len(prompts), desc=f"eval {eval_set}", unit="q", disable=not progress, dynamic_ncols=True)
    scored: dict[int, dict[str, Any]] = {}
    correct = dict.fromkeys(METRICS, 0)

    def on_done(indices, gens):
        for i, g in zip(indices, gens):
            scored[i] = score_output(g.text, examples[i].reference, tolerance)
            for mode in correct:
                correct[mode] += scored[i][f"correct_{mode}"]
        bar.update(len(indices))
        bar.set_postfix({f"acc_{name}": f"{count / len(scored):.3f}" for name, count in correct.items()},
                        refresh=False)

    start = time.perf_counter()
    stats: dict[str, int] = {}
    generations = generate(
        model, tokenizer, prompts,
        max_new_tokens=int(eval_cfg.get("max_new_tokens", _DEFAULTS.max_new_tokens)),
        stop=list(eval_cfg.get("stop", _DEFAULTS.stop) or []),
        token_budget=int(eval_cfg.get("token_budget", _DEFAULTS.token_budget)),
        max_batch_size=int(eval_cfg.get("max_batch_size", _DEFAULTS.max_batch_size)),
        on_done=on_done,
        engine=str(eval_cfg.get("engine") or _DEFAULTS.engine),
        cuda_graphs=bool(eval_cfg.get("cuda_graphs", _DEFAULTS.cuda_graphs)),
        prefill_batch_size=eval_cfg.get("prefill_batch_size", _DEFAULTS.prefill_batch_size),
        stats=stats,
        generation_config=str(eval_cfg.get("generation_config") or _DEFAULTS.generation_config),
    )
    seconds = time.perf_counter() - start
    bar.close()

    records = [
        {"eval_set": eval_set, "index": i, "question": ex.question, "reference": ex.reference,
         "output": gen.text, **scored[i]}
        for i, (ex, gen) in enumerate(zip(examples, generations))
    ]
    n = len(records)
    new_tokens = sum(g.new_tokens for g in generations)
    metrics = {
        **{accuracy_key(name): _mean(r[f"correct_{name}"] for r in records) if n else None for name in METRICS},
        "n_eval": n,
        "eval_set_time_s": seconds,
        "eval_tokens_per_s": new_tokens / seconds if seconds else None,
        "eval_new_tokens": new_tokens,
        # answers cut off at eval.max_new_tokens (not ended by an end-of-sequence id or a stop string): their
        # final number may be missing
        "truncated_fraction": _mean(not g.ended for g in generations) if n else None,
        "eval_oom_halvings": stats["oom_halvings"],
        "generation_config_ignored": stats["generation_config_ignored"],
        "engine": stats["engine"],
        "cuda_graphs": stats["cuda_graphs"],
        "decode_profile": stats["decode_profile"],
    }
    return records, metrics


def _mean(values) -> float:
    values = list(values)
    return sum(values) / len(values)
