"""Greedy batched generation: every sequence stops at its end-of-sequence token or its first stop string.

Engines, all giving the same tokens up to floating-point rounding: a row's logits can differ in the last bits with
the rows it shares a forward with (matrix products of another shape), and with the attention kernel (``static``
always passes a mask, so grouped-query attention takes another SDPA path than unmasked one-prompt
``model.generate``), which can flip a near-tie: rarely in float32 (on SmolLM2 no token differed from one-prompt
``model.generate``), more often in bfloat16 (4 of 12 SmolLM2 answers at 64 new tokens differed from it at batch
1 already; the GPU check's ``batch_invariance`` counts the batch's share):

- ``static`` (default): a greedy decode loop over the model's forward with a preallocated KV cache of a fixed
  number of slots (``slot_count``), written in place. Prompts wait longest first; a slot whose sequence ends
  takes the next waiting prompt, and once none waits the running sequences are packed into fewer slots. With
  ``cuda_graphs`` on a CUDA device each decode step is replayed as a CUDA graph, one graph per slot count. Its
  one-token steps attend without copying keys and values per query head (``attention.stacked_gqa_decoding``).
- ``cache``: a decode loop over transformers' dynamic KV cache, which copies the cache at every step, one
  token-budget batch at a time (prompts sorted by length); a finished row leaves its batch. It also serves
  models with sliding-window attention, which ``static`` hands over to it.
- ``plain``: ``model.generate`` per token-budget batch with a per-row stopping criterion; finished rows idle
  until the batch ends.

Prompt encoding and stopping follow lm-evaluation-harness's HF backend (``HFLM.generate_until``): the tokenizer's
default special tokens unless the prompt already starts with the BOS text; prompts left-truncated to the context
window minus ``max_new_tokens``; the model's ``generation_config.eos_token_id``, the tokenizer's EOS and the chat
template's end-of-turn token end a sequence (``stopping.eos_token_ids``; lm-eval stops at the first two, the EOS as
a stop string); a stop string ends it when it appears in the decoded continuation (special tokens included, as
lm-eval's stopping criterion decodes); the answer is the continuation decoded without special tokens and cut at the
first stop string.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import torch

from slm_sweep.evaluate.attention import stacked_gqa_decoding
from slm_sweep.evaluate.batching import context_window, encode_prompts, slot_count, token_budget_batches
from slm_sweep.evaluate.decode import (
    ENGINE_LOOPS,
    Decoding,
    GraphUse,
    LoopTimes,
    RowDone,
    decode_static,
    has_sliding_layers,
)
from slm_sweep.evaluate.stopping import Generation, StopCheck, eos_token_ids, to_generation
from slm_sweep.evaluate.weight_first import weight_first_linears
from slm_sweep.memory import is_out_of_memory, release_cached_memory

log = logging.getLogger(__name__)

ENGINES = ("static", "cache", "plain")
# Decoding is greedy under either eval.generation_config: sampling and beam search are always set aside.
ALWAYS_GREEDY = ("do_sample", "num_beams")


_UNSUPPORTED_PROCESSORS = ("no_repeat_ngram_size", "bad_words_ids", "suppress_tokens", "begin_suppress_tokens",
                           "forced_bos_token_id", "forced_eos_token_id", "sequence_bias", "min_new_tokens",
                           "min_length", "exponential_decay_length_penalty")


@torch.inference_mode()
def generate(model, tokenizer, prompts: Sequence[str], max_new_tokens: int = 256, stop: Sequence[str] = (),
             token_budget: int = 65536, max_batch_size: int = 64,
             on_done: Callable[[list[int], list[Generation]], None] | None = None,
             engine: str = "static", cuda_graphs: bool = False,
             prefill_batch_size: int | None = None, stats: dict | None = None,
             generation_config: str = "model") -> list[Generation]:
    """Greedy continuations of ``prompts``, in input order.

    ``generation_config="model"`` applies the model's generation config as ``model.generate`` would (its
    repetition penalty and logits processors); ``"neutral"`` sets all of it aside for plain greedy decoding, the
    same for every model. Decoding is greedy either way (sampling and beam search, ``ALWAYS_GREEDY``, are set
    aside), and ``stats["generation_config_ignored"]`` lists what was set aside.

    ``on_done(indices, generations)`` is called once per finished row, with its index and generation (lists of
    one).

    ``static`` decodes every prompt through one set of slots (see ``slot_count``), a slot taking the next prompt
    as soon as its sequence ends; the other engines decode one token-budget batch at a time. Running out of
    accelerator memory halves the slot count (the batch size), caps every later batch the same way and retries
    what is left; answers already reported are kept. ``stats["oom_halvings"]`` counts the halvings,
    ``stats["engine"]`` names the engine that decoded, ``stats["cuda_graphs"]`` says what became of
    ``cuda_graphs`` (see ``graph_report``) and ``stats["decode_profile"]`` where ``static``'s time went
    (``LoopTimes``; None for the other engines).
    """
    if engine not in ENGINES:
        raise ValueError(f"eval.engine={engine!r} is not one of {', '.join(ENGINES)}")
    if max_new_tokens < 1:
        raise ValueError(f"eval.max_new_tokens={max_new_tokens} must be a positive integer")
    if prefill_batch_size is not None and prefill_batch_size < 1:
        raise ValueError(f"eval.prefill_batch_size={prefill_batch_size} must be a positive integer or null")
    if generation_config not in ("model", "neutral"):
        raise ValueError(f"eval.generation_config={generation_config!r} is not one of: neutral, model")
    neutral = generation_config == "neutral"
    engine = _usable_engine(model, engine, neutral)
    window = context_window(model, tokenizer)
    if max_new_tokens >= window:
        raise ValueError(f"eval.max_new_tokens={max_new_tokens} leaves no room for a prompt in the model's context "
                         f"window of {window} tokens: use at most {window - 1}")
    encoded = encode_prompts(tokenizer, prompts, window - max_new_tokens)
    settings = Decoding(
        max_new_tokens=max_new_tokens,
        stop_check=StopCheck(tokenizer, stop, eos_token_ids(model, tokenizer)),
        pad_id=_pad_id(tokenizer),
        repetition_penalty=1.0 if neutral else
        float(getattr(model.generation_config, "repetition_penalty", None) or 1.0),
        prefill_batch_size=prefill_batch_size,
        cuda_graphs=cuda_graphs,
        neutral=neutral,
    )
    was_training = model.training
    model.eval()
    results: list[Generation | None] = [None] * len(prompts)
    stats = stats if stats is not None else {}
    overrides = decoding_overrides(model)
    stats["generation_config_ignored"] = overrides if neutral else {
        key: value for key, value in overrides.items() if key in ALWAYS_GREEDY}
    if stats["generation_config_ignored"]:
        log.warning("decoding greedily without the model's generation config settings %s",
                    stats["generation_config_ignored"])
    stats.setdefault("oom_halvings", 0)
    stats["engine"], graphs, times = engine, GraphUse(), LoopTimes()
    pending, batch_cap = list(range(len(prompts))), max_batch_size
    try:
        while pending:
            lengths = [len(encoded[i]) for i in pending]
            if engine == "static":
                order = sorted(range(len(pending)), key=lambda j: lengths[j], reverse=True)
                runs = [(order, slot_count(lengths[order[0]], max_new_tokens, token_budget, batch_cap, len(order)))]
            else:
                runs = [(batch, len(batch))
                        for batch in token_budget_batches(lengths, max_new_tokens, token_budget, batch_cap)]
            failed: int | None = None
            for batch, size in runs:
                indices = [pending[j] for j in batch]
                rows = [encoded[i] for i in indices]
                done = _reporter(indices, results, tokenizer, settings.stop_check, on_done)
                try:
                    with weight_first_linears(model):
                        if engine == "static":
                            with stacked_gqa_decoding(model):
                                decode_static(model, rows, settings, done, slots=size, graphs=graphs, times=times)
                        else:
                            ENGINE_LOOPS[engine](model, rows, settings, done)
                except Exception as error:  # noqa: BLE001 - only out-of-memory is retried, the rest re-raised
                    if not is_out_of_memory(error):
                        raise
                    if size == 1:
                        raise RuntimeError(
                            f"out of memory generating for a single prompt of up to {max(map(len, rows))} tokens "
                            f"with eval.max_new_tokens={max_new_tokens}: lower eval.max_new_tokens or use a "
                            "smaller eval.dtype") from error
                    failed = size
                    break
            if failed is None:
                break
            batch_cap = max(1, failed // 2)
            stats["oom_halvings"] += 1
            log.warning("out of memory generating for %d prompts at once; retrying at most %d at once",
                        failed, batch_cap)
            release_cached_memory()
            pending = [i for i in pending if results[i] is None]
    finally:
        model.train(was_training)
        stats["cuda_graphs"] = graph_report(cuda_graphs, engine, model, graphs)
        stats["decode_profile"] = times.as_dict() if engine == "static" else None
    return results  # type: ignore[return-value]


def graph_report(requested: bool, engine: str, model, graphs: GraphUse) -> dict:
    """Whether the decode steps were replayed as CUDA graphs: ``captured`` graphs (one per slot count), the first
    capture that failed, and when graphs were asked for but none was captured, why not (``not_used``)."""
    reason = None
    if requested and not graphs.captured:
        device = next(model.parameters()).device
        reason = (f"eval.engine={engine} (graphs need static)" if engine != "static" else
                  f"the model is on {device.type}" if device.type != "cuda" else
                  f"capture failed: {graphs.failure}" if graphs.failure else "no decode step ran")
    return {"requested": bool(requested), "captured": graphs.captured, "failure": graphs.failure, "not_used": reason}


def _reporter(indices: list[int], results: list, tokenizer, stop_check: StopCheck, on_done) -> RowDone:
    """The ``done`` callback of one batch: decode the row's tokens, store and report them under its index."""

    def done(row: int, tokens: list[int]) -> None:
        results[indices[row]] = generation = to_generation(tokenizer, tokens, stop_check)
        if on_done:
            on_done([indices[row]], [generation])

    return done


def _pad_id(tokenizer) -> int:
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad is None:
        raise ValueError("the tokenizer has neither a pad nor an end-of-sequence token to pad batches with")
    return int(pad)


def _usable_engine(model, engine: str, neutral: bool = False) -> str:
    """The engine that can decode ``model``: the cache engines implement greedy decoding and repetition_penalty,
    so other logits processors of its generation config (unless ``neutral`` sets it aside) need ``plain``;
    sliding-window attention needs ``cache`` rather than ``static``."""
    if engine == "plain":
        return engine
    config = getattr(model, "generation_config", None)
    active = [] if neutral else [key for key in _UNSUPPORTED_PROCESSORS if _is_set(key, getattr(config, key, None))]
    if active:
        log.warning("the model's generation_config sets %s, which eval.engine=%s does not implement; "
                    "using eval.engine=plain", ", ".join(active), engine)
        return "plain"
    if engine == "static" and has_sliding_layers(model):
        log.warning("eval.engine=static does not handle sliding-window attention; using eval.engine=cache")
        return "cache"
    return engine


def decoding_overrides(model) -> dict:
    """The model's generation_config settings that would change plain greedy decoding (sampling included)."""
    config = getattr(model, "generation_config", None)
    found = {key: getattr(config, key, None) for key in _UNSUPPORTED_PROCESSORS
             if _is_set(key, getattr(config, key, None))}
    penalty = getattr(config, "repetition_penalty", None)
    if penalty not in (None, 1.0):
        found["repetition_penalty"] = penalty
    if getattr(config, "do_sample", False):
        found["do_sample"] = True
    if (getattr(config, "num_beams", None) or 1) > 1:
        found["num_beams"] = config.num_beams
    return found


def _is_set(key: str, value) -> bool:
    """Whether a generation_config value turns its logits processor on (token ids: any id, 0 included)."""
    return value is not None if key.endswith("_token_id") else bool(value)
