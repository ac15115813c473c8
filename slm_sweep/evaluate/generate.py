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
from transformers import DynamicCache, StoppingCriteria, StoppingCriteriaList

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
    encoded = [tokenizer(p, add_special_tokens=not (bos and p.startswith(bos)))["input_ids"] for p in prompts]
    truncated = sum(len(ids) > max_prompt_tokens for ids in encoded)
    if truncated:
        log.warning("%d of %d prompts were left-truncated to %d tokens (context window minus max_new_tokens)",
                    truncated, len(encoded), max_prompt_tokens)
    return [ids[-max_prompt_tokens:] for ids in encoded]


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
    penalty = float(getattr(getattr(model, "generation_config", None), "repetition_penalty", None) or 1.0)
    if engine == "plain":
        return lambda rows: hf_generate(model, rows, max_new_tokens, stop_check, pad_id)
    if engine == "static":
        return lambda rows: static_cache_decode(model, rows, max_new_tokens, stop_check, pad_id, penalty, cuda_graphs)
    return lambda rows: dynamic_cache_decode(model, rows, max_new_tokens, stop_check, pad_id, penalty)


# ---------------------------------------------------------------------------------------------- shared pieces


def _device(model) -> torch.device:
    return next(model.parameters()).device


def left_padded(rows: Sequence[Sequence[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """``(input_ids, attention_mask)`` with every row padded on the left to the longest."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        if row:
            ids[i, width - len(row):] = torch.tensor(row, dtype=torch.long)
            mask[i, width - len(row):] = 1
    return ids.to(device), mask.to(device)


def positions_from_mask(mask: torch.Tensor) -> torch.Tensor:
    """Position ids that start at 0 on each row's first real token, as ``model.generate`` computes them."""
    return (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)


def _append_tokens(outputs: list[list[int]], live: list[int], next_ids: list[int], stop_check: StopCheck) -> list[int]:
    """Append each live row's new token; return the positions (in ``live``) of rows that go on."""
    keep = []
    for j, (row, token) in enumerate(zip(live, next_ids)):
        outputs[row].append(token)
        if not stop_check.finished(outputs[row]):
            keep.append(j)
    return keep


def _seen_tokens(input_ids: torch.Tensor, mask: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """(batch, vocab) booleans: which ids each row's prompt holds (padding excluded), for the repetition penalty."""
    counts = torch.zeros((input_ids.shape[0], vocab_size), dtype=torch.long, device=input_ids.device)
    return counts.scatter_add_(1, input_ids, mask.long()) > 0


def _penalised(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """transformers' RepetitionPenaltyLogitsProcessor over the tokens a row has seen."""
    scaled = torch.where(logits < 0, logits * penalty, logits / penalty)
    return torch.where(seen, scaled, logits)


def _cache_kwarg(model) -> str:
    """The forward argument that takes the KV cache: ``cache`` in transformers 5, ``past_key_values`` before."""
    import inspect

    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def _forward(model, cache_kwarg: str, input_ids, attention_mask, position_ids, cache) -> torch.Tensor:
    """Float32 logits of the last position of each row (``model.generate`` casts them the same way)."""
    out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                use_cache=True, logits_to_keep=1, **{cache_kwarg: cache})
    return out.logits[:, -1, :].float()


# ---------------------------------------------------------------------------------------------- engines


def dynamic_cache_decode(model, rows: Sequence[Sequence[int]], max_new_tokens: int, stop_check: StopCheck,
                         pad_id: int, penalty: float = 1.0) -> list[list[int]]:
    """Greedy continuations of ``rows`` (token ids); a row that ends leaves the batch and the KV cache at once."""
    device = _device(model)
    input_ids, mask = left_padded(rows, pad_id, device)
    position = positions_from_mask(mask)
    # As model.generate: no mask at all when nothing is padded, so attention takes its causal fast path.
    attention = None if bool(mask.all()) else mask
    seen = _seen_tokens(input_ids, mask, model.config.vocab_size) if penalty != 1.0 else None
    cache, cache_kwarg = DynamicCache(config=model.config), _cache_kwarg(model)
    logits = _forward(model, cache_kwarg, input_ids, attention, position, cache)
    last_position = position[:, -1]
    outputs: list[list[int]] = [[] for _ in rows]
    live = list(range(len(rows)))
    for step in range(max_new_tokens):
        if seen is not None:
            logits = _penalised(logits, seen, penalty)
        next_ids = logits.argmax(dim=-1)
        keep = _append_tokens(outputs, live, next_ids.tolist(), stop_check)
        if not keep or step == max_new_tokens - 1:
            break
        if len(keep) < len(live):
            index = torch.tensor(keep, device=device)
            cache.batch_select_indices(index)
            next_ids, last_position = next_ids[index], last_position[index]
            attention = attention[index] if attention is not None else None
            seen = seen[index] if seen is not None else None
            live = [live[j] for j in keep]
        if seen is not None:
            seen[torch.arange(len(live), device=device), next_ids] = True
        if attention is not None:
            attention = torch.cat([attention, attention.new_ones((len(live), 1))], dim=1)
        last_position = last_position + 1
        logits = _forward(model, cache_kwarg, next_ids[:, None], attention, last_position[:, None], cache)
    return outputs


class _RowStops(StoppingCriteria):
    """A ``model.generate`` stopping criterion that ends each row on its own and records where it ended."""

    def __init__(self, stop_check: StopCheck, prompt_width: int, batch_size: int):
        self.stop_check, self.prompt_width = stop_check, prompt_width
        self.lengths: list[int | None] = [None] * batch_size

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs) -> torch.Tensor:
        generated = input_ids[:, self.prompt_width:].tolist()
        for i, tokens in enumerate(generated):
            if self.lengths[i] is None and tokens and self.stop_check.finished(tokens):
                self.lengths[i] = len(tokens)
        return torch.tensor([n is not None for n in self.lengths], device=input_ids.device)


def hf_generate(model, rows: Sequence[Sequence[int]], max_new_tokens: int, stop_check: StopCheck,
                pad_id: int) -> list[list[int]]:
    """Greedy continuations of ``rows`` by ``model.generate``; a finished row idles in the batch until all end."""
    input_ids, mask = left_padded(rows, pad_id, _device(model))
    stops = _RowStops(stop_check, input_ids.shape[1], len(rows))
    output = model.generate(
        input_ids=input_ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
        temperature=None, top_p=None, top_k=None, pad_token_id=pad_id,
        eos_token_id=sorted(stop_check.eos_ids) or None, stopping_criteria=StoppingCriteriaList([stops]),
    )
    generated = output[:, input_ids.shape[1]:].tolist()
    return [tokens[:n] if n is not None else tokens for tokens, n in zip(generated, stops.lengths)]


# ---------------------------------------------------------------------------------------------- static cache


def _static_masks(prompt_mask: torch.Tensor, cache_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(prefill_mask, key_valid)``: the 4D boolean prefill mask and which cache slots hold real tokens.

    Slot j of the cache holds padded column j of the prompt, then generated token j - width. A padding query
    attends to itself only, so no attention row is empty (an empty row gives NaN, and NaN x 0 spreads).
    """
    batch, width = prompt_mask.shape
    key_valid = torch.ones((batch, cache_len), dtype=torch.bool, device=prompt_mask.device)
    key_valid[:, :width] = prompt_mask.bool()
    slots = torch.arange(cache_len, device=prompt_mask.device)
    queries = torch.arange(width, device=prompt_mask.device)
    causal = slots[None, :] <= queries[:, None]
    prefill = (key_valid[:, None, None, :] & causal[None, None]) | (slots[None, :] == queries[:, None])[None, None]
    return prefill, key_valid


def _decode_mask(key_valid: torch.Tensor, slot: int) -> torch.Tensor:
    """The 4D mask of one decode step whose new token is written to ``slot``."""
    slots = torch.arange(key_valid.shape[1], device=key_valid.device)
    return (key_valid & (slots <= slot))[:, None, None, :]


def _as_attention_mask(mask: torch.Tensor, model) -> torch.Tensor:
    """Boolean masks for sdpa/flex; an additive float mask for eager attention."""
    if getattr(model.config, "_attn_implementation", "sdpa") != "eager":
        return mask
    dtype = next(model.parameters()).dtype
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, torch.finfo(dtype).min)


def _select_static_rows(cache, index: torch.Tensor) -> None:
    """Keep only the rows ``index`` of every layer of a StaticCache (new, smaller backing tensors)."""
    for layer in cache.layers:
        if getattr(layer, "is_initialized", False):
            layer.keys = layer.keys.index_select(0, index).contiguous()
            layer.values = layer.values.index_select(0, index).contiguous()
            layer.batch_size = layer.keys.shape[0]
            if layer.keys.is_cuda:
                torch._dynamo.mark_static_address(layer.keys)
                torch._dynamo.mark_static_address(layer.values)


def _has_sliding_layers(model) -> bool:
    config = model.config.get_text_config(decoder=True) if hasattr(model.config, "get_text_config") else model.config
    types = getattr(config, "layer_types", None) or []
    return bool(getattr(config, "sliding_window", None)) and any(t != "full_attention" for t in types)


class _DecodeStep:
    """One greedy decode step over a static cache for a fixed batch size; on CUDA optionally a captured graph.

    Inputs live in static buffers (token, position, mask) that are overwritten in place before every step, so
    a CUDA graph captured once per batch size replays the whole forward without Python in the loop.
    """

    def __init__(self, model, cache, cache_kwarg: str, batch: int, cache_len: int, use_graph: bool):
        device = _device(model)
        self.model, self.cache, self.cache_kwarg = model, cache, cache_kwarg
        self.token = torch.zeros((batch, 1), dtype=torch.long, device=device)
        self.position = torch.zeros((batch, 1), dtype=torch.long, device=device)
        self.mask = _as_attention_mask(torch.ones((batch, 1, 1, cache_len), dtype=torch.bool, device=device), model)
        self.graph = None
        self.logits: torch.Tensor | None = None
        if use_graph:
            self._capture()

    def _eager(self) -> torch.Tensor:
        return _forward(self.model, self.cache_kwarg, self.token, self.mask, self.position, self.cache)

    def _capture(self) -> None:
        lengths = [layer.cumulative_length.clone() for layer in self.cache.layers]
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(2):  # warm-up, as CUDA graph capture requires
                self._eager()
                self._restore(lengths)
        torch.cuda.current_stream().wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.logits = self._eager()
        self._restore(lengths)

    def _restore(self, lengths: list[torch.Tensor]) -> None:
        for layer, length in zip(self.cache.layers, lengths):
            layer.cumulative_length.copy_(length)

    def __call__(self, token: torch.Tensor, position: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        self.token.copy_(token[:, None])
        self.position.copy_(position[:, None])
        self.mask.copy_(_as_attention_mask(mask, self.model))
        if self.graph is None:
            return self._eager()
        self.graph.replay()
        return self.logits.clone()


def _slots_of(slot_rows: list[int], rows: list[int]) -> list[int]:
    where = {row: slot for slot, row in enumerate(slot_rows)}
    return [where[row] for row in rows]


def static_cache_decode(model, rows: Sequence[Sequence[int]], max_new_tokens: int, stop_check: StopCheck,
                        pad_id: int, penalty: float = 1.0, cuda_graphs: bool = False) -> list[list[int]]:
    """Greedy continuations of ``rows`` over a preallocated KV cache.

    Finished rows stop costing anything beyond their slot; when at most half the rows are still running, the
    cache is compacted to them, so the batch shrinks in halving steps (each size is one CUDA graph when
    ``cuda_graphs`` is on and the model is on a CUDA device).
    """
    from transformers import StaticCache

    if _has_sliding_layers(model):
        log.warning("eval.engine=static does not handle sliding-window attention; using eval.engine=cache")
        return dynamic_cache_decode(model, rows, max_new_tokens, stop_check, pad_id, penalty)
    device = _device(model)
    use_graph = cuda_graphs and device.type == "cuda"
    input_ids, prompt_mask = left_padded(rows, pad_id, device)
    width = input_ids.shape[1]
    cache_len = width + max_new_tokens
    cache, cache_kwarg = StaticCache(config=model.config, max_cache_len=cache_len), _cache_kwarg(model)
    prefill_mask, key_valid = _static_masks(prompt_mask, cache_len)
    position = positions_from_mask(prompt_mask)
    logits = _forward(model, cache_kwarg, input_ids, _as_attention_mask(prefill_mask, model), position, cache)
    last_position = position[:, -1]
    seen = _seen_tokens(input_ids, prompt_mask, model.config.vocab_size) if penalty != 1.0 else None
    outputs: list[list[int]] = [[] for _ in rows]
    live = list(range(len(rows)))   # rows still running
    slot_rows = list(live)          # the row in each batch slot of the cache; finished rows idle in theirs
    steps: dict[int, _DecodeStep] = {}
    for step in range(max_new_tokens):
        if seen is not None:
            logits = _penalised(logits, seen, penalty)
        next_ids = logits.argmax(dim=-1)
        live_slots = _slots_of(slot_rows, live)
        live_ids = next_ids if len(live) == len(slot_rows) else next_ids[torch.tensor(live_slots, device=device)]
        keep = _append_tokens(outputs, live, live_ids.tolist(), stop_check)
        if not keep or step == max_new_tokens - 1:
            break
        live = [live[j] for j in keep]
        if len(live) <= len(slot_rows) // 2:
            index = torch.tensor(_slots_of(slot_rows, live), device=device)
            _select_static_rows(cache, index)
            next_ids, last_position, key_valid = next_ids[index], last_position[index], key_valid[index]
            seen = seen[index] if seen is not None else None
            slot_rows = list(live)
        if seen is not None:
            seen[torch.arange(len(slot_rows), device=device), next_ids] = True
        last_position = last_position + 1
        if len(slot_rows) not in steps:
            steps[len(slot_rows)] = _DecodeStep(model, cache, cache_kwarg, len(slot_rows), cache_len, use_graph)
        logits = steps[len(slot_rows)](next_ids, last_position, _decode_mask(key_valid, width + step))
    return outputs
