"""Greedy batched generation: prompts sorted by length and batched under a token budget; every sequence stops at
its end-of-sequence token or its first stop string.

Engines, all giving the same tokens:

- ``cache``: a greedy decode loop over the model's forward with a dynamic KV cache; a finished sequence leaves the
  batch (and the cache) at once, so the batch shrinks as answers end.
- ``static``: the same loop over a preallocated static KV cache whose batch shrinks in halving steps; on CUDA the
  decode step can be captured as a CUDA graph (``cuda_graphs``).
- ``plain``: ``model.generate`` with a per-sequence stopping criterion, kept for comparison.

Prompt encoding and stopping follow lm-evaluation-harness's HF backend (``HFLM.generate_until``): the tokenizer's
default special tokens unless the prompt already starts with the BOS text; prompts left-truncated to the context
window minus ``max_new_tokens``; the model's ``generation_config.eos_token_id`` ends a sequence; a stop string ends
it when it appears in the decoded continuation (special tokens included, as lm-eval's stopping criterion decodes);
the answer is the continuation decoded without special tokens and cut at the first stop string.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch

from slm_sweep.evaluate.scoring import truncate_at_stop

log = logging.getLogger(__name__)

ENGINES = ("cache", "static", "plain")
DEFAULT_CONTEXT_WINDOW = 2048  # lm-eval's fallback when neither config nor tokenizer gives a length
_CONFIG_LENGTH_KEYS = ("n_positions", "max_position_embeddings", "n_ctx")
_UNSET_TOKENIZER_LENGTH = 1e29
# generation_config settings that change greedy decoding; the cache engines implement only repetition_penalty.
_UNSUPPORTED_PROCESSORS = ("no_repeat_ngram_size", "bad_words_ids", "suppress_tokens", "begin_suppress_tokens",
                           "forced_bos_token_id", "forced_eos_token_id", "sequence_bias", "min_new_tokens",
                           "exponential_decay_length_penalty")


@dataclass
class Generation:
    text: str            # decoded continuation, cut at the first stop string
    new_tokens: int      # tokens generated, up to and including the one that ended the sequence


# ---------------------------------------------------------------------------------------------- batching


def token_budget_batches(lengths: Sequence[int], max_new_tokens: int, token_budget: int,
                         max_batch_size: int) -> Iterator[list[int]]:
    """Indices grouped into batches of similar length, longest first.

    A batch holds at most ``max_batch_size`` sequences and at most ``token_budget`` tokens counted as
    (longest prompt + max_new_tokens) x batch size, the size of the padded KV cache it needs. Longest first so a
    batch that does not fit in memory fails at once, not at the end.
    """
    order = sorted(range(len(lengths)), key=lambda i: lengths[i], reverse=True)
    batch: list[int] = []
    for i in order:
        longest = lengths[batch[0]] if batch else lengths[i]
        if batch and ((len(batch) + 1) * (longest + max_new_tokens) > token_budget or len(batch) >= max_batch_size):
            yield batch
            batch = []
        batch.append(i)
    if batch:
        yield batch


# ---------------------------------------------------------------------------------------------- encoding


def context_window(model, tokenizer) -> int:
    """The model's maximum sequence length, looked up as lm-eval does (config, then tokenizer, then 2048)."""
    config = model.config
    config = getattr(config, "text_config", None) or config
    for key in _CONFIG_LENGTH_KEYS:
        value = getattr(config, key, None)
        if value:
            return int(value)
    tokenizer_length = getattr(tokenizer, "model_max_length", None)
    if tokenizer_length and tokenizer_length < _UNSET_TOKENIZER_LENGTH:
        return int(tokenizer_length)
    return DEFAULT_CONTEXT_WINDOW


def encode_prompts(tokenizer, prompts: Sequence[str], max_prompt_tokens: int) -> list[list[int]]:
    """Token ids of each prompt, left-truncated to ``max_prompt_tokens``.

    The tokenizer adds its default special tokens (a BOS for tokenizers that add one) unless the prompt text
    already starts with the BOS token, as a chat template often writes it.
    """
    if max_prompt_tokens <= 0:
        raise ValueError(f"no room for a prompt: max_new_tokens fills the model's context window ({max_prompt_tokens})")
    bos = tokenizer.bos_token
    encoded = []
    for prompt in prompts:
        add_special = not (bos and prompt.startswith(bos))
        ids = tokenizer(prompt, add_special_tokens=add_special)["input_ids"]
        encoded.append(ids[-max_prompt_tokens:])
    truncated = sum(len(tokenizer(p)["input_ids"]) > max_prompt_tokens for p in prompts[:0])
    del truncated
    return encoded


def eos_token_ids(model, tokenizer) -> set[int]:
    """The ids that end a sequence: the model's generation config, as ``model.generate`` uses, else the tokenizer's."""
    config = getattr(model, "generation_config", None)
    ids = getattr(config, "eos_token_id", None) if config is not None else None
    if ids is None:
        ids = tokenizer.eos_token_id
    if ids is None:
        return set()
    return {int(ids)} if isinstance(ids, int) else {int(i) for i in ids}


# ---------------------------------------------------------------------------------------------- stopping


class StopCheck:
    """Whether a continuation has ended: an end-of-sequence id, or a stop string in its decoded text.

    Only a token whose own text holds the last character of some stop string can complete one, so the tail is
    decoded only after such tokens; the per-token answer is memoised.
    """

    def __init__(self, tokenizer, stop: Sequence[str], eos_ids: set[int]):
        self.tokenizer = tokenizer
        self.stop = [s for s in stop if s]
        self.eos_ids = set(eos_ids)
        self.window = max((len(s) for s in self.stop), default=0) + 2
        self._last_chars = {s[-1] for s in self.stop}
        self._may_complete: dict[int, bool] = {}

    def finished(self, tokens: Sequence[int]) -> bool:
        last = tokens[-1]
        if last in self.eos_ids:
            return True
        if not self.stop or not self._can_complete(last):
            return False
        tail = self.tokenizer.decode(tokens[-self.window:], skip_special_tokens=False)
        return any(s in tail for s in self.stop)

    def _can_complete(self, token: int) -> bool:
        known = self._may_complete.get(token)
        if known is None:
            text = self.tokenizer.decode([token], skip_special_tokens=False)
            known = not text or any(c in text for c in self._last_chars)
            self._may_complete[token] = known
        return known


def to_generation(tokenizer, tokens: Sequence[int], stop: Sequence[str]) -> Generation:
    text = tokenizer.decode(list(tokens), skip_special_tokens=True)
    return Generation(text=truncate_at_stop(text, list(stop)), new_tokens=len(tokens))


# ---------------------------------------------------------------------------------------------- entry point


@torch.inference_mode()
def generate(model, tokenizer, prompts: Sequence[str], max_new_tokens: int = 256, stop: Sequence[str] = (),
             token_budget: int = 65536, max_batch_size: int = 64,
             on_batch: Callable[[list[int], list[Generation]], None] | None = None,
             engine: str = "cache", cuda_graphs: bool = False) -> list[Generation]:
    """Greedy continuations of ``prompts``, in input order. ``on_batch(indices, generations)`` sees each batch."""
    if engine not in ENGINES:
        raise ValueError(f"eval.engine={engine!r} is not one of {', '.join(ENGINES)}")
    engine = _usable_engine(model, engine)
    encoded = encode_prompts(tokenizer, prompts, context_window(model, tokenizer) - max_new_tokens)
    stop_check = StopCheck(tokenizer, stop, eos_token_ids(model, tokenizer))
    decode = _decoder(model, engine, max_new_tokens, stop_check, _pad_id(tokenizer), cuda_graphs)
    was_training = model.training
    model.eval()
    results: list[Generation | None] = [None] * len(prompts)
    try:
        for indices in token_budget_batches([len(e) for e in encoded], max_new_tokens, token_budget, max_batch_size):
            tokens = decode([encoded[i] for i in indices])
            gens = [to_generation(tokenizer, t, stop) for t in tokens]
            for i, g in zip(indices, gens):
                results[i] = g
            if on_batch:
                on_batch(indices, gens)
    finally:
        model.train(was_training)
    return results  # type: ignore[return-value]


def _pad_id(tokenizer) -> int:
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad is None:
        raise ValueError("the tokenizer has neither a pad nor an end-of-sequence token to pad batches with")
    return int(pad)


def _usable_engine(model, engine: str) -> str:
    """The cache engines implement greedy decoding and repetition_penalty; other logits processors need ``plain``."""
    if engine == "plain":
        return engine
    config = getattr(model, "generation_config", None)
    active = [key for key in _UNSUPPORTED_PROCESSORS if config is not None and getattr(config, key, None)]
    if config is not None and (getattr(config, "min_length", 0) or 0) > 0:
        active.append("min_length")
    if active:
        log.warning("the model's generation_config sets %s, which eval.engine=%s does not implement; "
                    "using eval.engine=plain", ", ".join(active), engine)
        return "plain"
    return engine


def _decoder(model, engine: str, max_new_tokens: int, stop_check: StopCheck, pad_id: int, cuda_graphs: bool):
    from slm_sweep.evaluate import decode

    penalty = float(getattr(getattr(model, "generation_config", None), "repetition_penalty", None) or 1.0)
    if engine == "plain":
        return lambda rows: decode.hf_generate(model, rows, max_new_tokens, stop_check, pad_id)
    if engine == "static":
        return lambda rows: decode.static_cache_decode(model, rows, max_new_tokens, stop_check, pad_id, penalty,
                                                       cuda_graphs)
    return lambda rows: decode.dynamic_cache_decode(model, rows, max_new_tokens, stop_check, pad_id, penalty)
