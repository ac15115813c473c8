"""Greedy batched generation: every sequence stops at its end-of-sequence token or its first stop string.

Engines, all giving the same tokens:

- ``static`` (default): a greedy decode loop over the model's forward with a preallocated KV cache of a fixed
  number of slots (``slot_count``), written in place. Prompts wait longest first; a slot whose sequence ends
  takes the next waiting prompt, and once none waits the running sequences are packed into fewer slots. With
  ``cuda_graphs`` on a CUDA device each decode step is replayed as a CUDA graph, one graph per slot count.
- ``cache``: a decode loop over transformers' dynamic KV cache, which copies the cache at every step, one
  token-budget batch at a time (prompts sorted by length); a finished row leaves its batch. It also serves
  models with sliding-window attention, which ``static`` hands over to it.
- ``plain``: ``model.generate`` per token-budget batch with a per-row stopping criterion; finished rows idle
  until the batch ends.

Prompt encoding and stopping follow lm-evaluation-harness's HF backend (``HFLM.generate_until``): the tokenizer's
default special tokens unless the prompt already starts with the BOS text; prompts left-truncated to the context
window minus ``max_new_tokens``; the model's ``generation_config.eos_token_id`` ends a sequence; a stop string ends
it when it appears in the decoded continuation (special tokens included, as lm-eval's stopping criterion decodes);
the answer is the continuation decoded without special tokens and cut at the first stop string.
"""

from __future__ import annotations

import inspect
import logging
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from transformers import DynamicCache, StoppingCriteria, StoppingCriteriaList

from slm_sweep.scoring import truncate_at_stop
from slm_sweep.memory import is_out_of_memory, release_cached_memory

log = logging.getLogger(__name__)

ENGINES = ("static", "cache", "plain")
DEFAULT_CONTEXT_WINDOW = 2048  # lm-eval's fallback when neither config nor tokenizer gives a length
_CONFIG_LENGTH_KEYS = ("n_positions", "max_position_embeddings", "n_ctx")
_UNSET_TOKENIZER_LENGTH = 1e29
# generation_config settings that change greedy decoding; the cache engines implement only repetition_penalty.
_UNSUPPORTED_PROCESSORS = ("no_repeat_ngram_size", "bad_words_ids", "suppress_tokens", "begin_suppress_tokens",
                           "forced_bos_token_id", "forced_eos_token_id", "sequence_bias", "min_new_tokens",
                           "min_length", "exponential_decay_length_penalty")


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
    config = getattr(model.config, "text_config", None) or model.config
    for key in _CONFIG_LENGTH_KEYS:
        value = getattr(config, key, None)
        if value is not None:
            return int(value)
    tokenizer_length = getattr(tokenizer, "model_max_length", None)
    if tokenizer_length is not None and tokenizer_length < _UNSET_TOKENIZER_LENGTH:
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
    ids = getattr(config, "eos_token_id", None)
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
        tail = self.tokenizer.decode(list(tokens[-self.window:]), skip_special_tokens=False)
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


@dataclass(frozen=True)
class Decoding:
    """How every batch is decoded."""

    max_new_tokens: int
    stop_check: StopCheck
    pad_id: int
    repetition_penalty: float = 1.0
    prefill_batch_size: int | None = None  # prompts per prefill forward; None: 1 on CPU, the whole batch elsewhere
    neutral: bool = False  # the model's generation_config is set aside: plain greedy decoding
    cuda_graphs: bool = False


RowDone = Callable[[int, list[int]], None]  # (row of the batch, its generated token ids), called once per row


@torch.inference_mode()
def generate(model, tokenizer, prompts: Sequence[str], max_new_tokens: int = 256, stop: Sequence[str] = (),
             token_budget: int = 65536, max_batch_size: int = 64,
             on_batch: Callable[[list[int], list[Generation]], None] | None = None,
             engine: str = "static", cuda_graphs: bool = False,
             prefill_batch_size: int | None = None, stats: dict | None = None,
             generation_config: str = "model") -> list[Generation]:
    """Greedy continuations of ``prompts``, in input order.

    ``generation_config="model"`` applies the model's generation config as ``model.generate`` would (its
    repetition penalty and logits processors); ``"neutral"`` sets all of it aside for plain greedy decoding, the
    same for every model, and ``stats["generation_config_ignored"]`` lists what was set aside.

    ``on_batch(indices, generations)`` sees the generations as they finish: a row at a time for the cache engines,
    a batch at a time for ``plain``.

    ``static`` decodes every prompt through one set of slots (see ``slot_count``), a slot taking the next prompt
    as soon as its sequence ends; the other engines decode one token-budget batch at a time. Running out of
    accelerator memory halves the slot count (the batch size), caps every later batch the same way and retries
    what is left; answers already reported are kept. ``stats["oom_halvings"]`` counts the halvings.
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
    if not neutral:
        engine = _usable_engine(model, engine)
    encoded = encode_prompts(tokenizer, prompts, context_window(model, tokenizer) - max_new_tokens)
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
    stats["generation_config_ignored"] = decoding_overrides(model) if neutral else {}
    if stats["generation_config_ignored"]:
        log.warning("decoding greedily without the model's generation config settings %s",
                    stats["generation_config_ignored"])
    stats.setdefault("oom_halvings", 0)
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
                done = _reporter(indices, results, tokenizer, stop, on_batch)
                try:
                    if engine == "static":
                        decode_static(model, rows, settings, done, slots=size)
                    else:
                        _ENGINE_LOOPS[engine](model, rows, settings, done)
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
    return results  # type: ignore[return-value]


def _reporter(indices: list[int], results: list, tokenizer, stop: Sequence[str], on_batch) -> RowDone:
    """The ``done`` callback of one batch: decode the row's tokens, store and report them under its index."""

    def done(row: int, tokens: list[int]) -> None:
        results[indices[row]] = generation = to_generation(tokenizer, tokens, stop)
        if on_batch:
            on_batch([indices[row]], [generation])

    return done


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
    active = [key for key in _UNSUPPORTED_PROCESSORS if _is_set(key, getattr(config, key, None))]
    if active:
        log.warning("the model's generation_config sets %s, which eval.engine=%s does not implement; "
                    "using eval.engine=plain", ", ".join(active), engine)
        return "plain"
    if engine == "static" and _has_sliding_layers(model):
        log.warning("eval.engine=static does not handle sliding-window attention; using eval.engine=cache")
        return "cache"
    return engine


_NEUTRAL_GENERATE_KWARGS = {"repetition_penalty": 1.0, "no_repeat_ngram_size": 0, "bad_words_ids": None,
                            "suppress_tokens": None, "begin_suppress_tokens": None, "forced_bos_token_id": None,
                            "forced_eos_token_id": None, "sequence_bias": None, "min_new_tokens": None,
                            "min_length": 0, "exponential_decay_length_penalty": None}


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
    return found


def _is_set(key: str, value) -> bool:
    """Whether a generation_config value turns its logits processor on (token ids: any id, 0 included)."""
    return value is not None if key.endswith("_token_id") else bool(value)


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


def _append_tokens(outputs: list[list[int]], live: list[int], next_ids: list[int], stop_check: StopCheck,
                   done: RowDone, last_step: bool) -> list[int]:
    """Append each live row's new token and report the rows that end; return the positions (in ``live``) of
    the rows that go on."""
    keep = []
    for j, (row, token) in enumerate(zip(live, next_ids)):
        outputs[row].append(token)
        if last_step or stop_check.finished(outputs[row]):
            done(row, outputs[row])
        else:
            keep.append(j)
    return keep


def _seen_tokens(input_ids: torch.Tensor, mask: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """(batch, vocab) booleans: which ids each row's prompt holds (padding excluded), for the repetition penalty."""
    counts = torch.zeros((input_ids.shape[0], vocab_size), dtype=torch.long, device=input_ids.device)
    return counts.scatter_add_(1, input_ids, mask.long()) > 0


def _penalised(logits: torch.Tensor, seen: torch.Tensor | None, penalty: float) -> torch.Tensor:
    """transformers' RepetitionPenaltyLogitsProcessor over the tokens a row has seen."""
    if seen is None:
        return logits
    scaled = torch.where(logits < 0, logits * penalty, logits / penalty)
    return torch.where(seen, scaled, logits)


def _cache_kwarg(model) -> str:
    """The forward argument that takes the KV cache: ``cache`` in transformers 5, ``past_key_values`` before."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def _forward(model, input_ids, attention_mask, position_ids, cache) -> torch.Tensor:
    """Float32 logits of the last position of each row (``model.generate`` casts them the same way)."""
    out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                use_cache=True, logits_to_keep=1, **{_cache_kwarg(model): cache})
    return out.logits[:, -1, :].float()


def _has_sliding_layers(model) -> bool:
    config = model.config.get_text_config(decoder=True) if hasattr(model.config, "get_text_config") else model.config
    types = getattr(config, "layer_types", None) or []
    return bool(getattr(config, "sliding_window", None)) and any(t != "full_attention" for t in types)


def _prefill_group_size(model, rows: int, settings: Decoding) -> int:
    """Prompts per prefill forward. On CPU one at a time: attention over a padded batch takes the slow masked
    path there, while one prompt of a few hundred tokens already keeps the matrix products busy."""
    if settings.prefill_batch_size is not None:
        return min(settings.prefill_batch_size, rows)
    return 1 if _device(model).type == "cpu" else rows


def _read_prompts(model, rows: Sequence[Sequence[int]], settings: Decoding):
    """One prefill forward over ``rows`` left-padded: (last-position logits, per-layer (keys, values), ids, mask)."""
    input_ids, mask = left_padded(rows, settings.pad_id, _device(model))
    own = DynamicCache(config=model.config)
    # As model.generate: no mask at all when nothing is padded, so attention takes its causal fast path.
    logits = _forward(model, input_ids, None if bool(mask.all()) else mask, positions_from_mask(mask), own)
    return logits, [(k, v) for k, v, *_ in own], input_ids, mask


def _prefill(model, rows: Sequence[Sequence[int]], settings: Decoding, cache) -> torch.Tensor:
    """Read the prompts into ``cache`` (left-padded to the longest) and return each row's last-position logits.

    Prompts go through the model in groups of similar length, each group into a cache of its own whose keys and
    values are then copied into place; the padded slots hold zeros and are masked in every later step.
    """
    width = max(len(r) for r in rows)
    group = _prefill_group_size(model, len(rows), settings)
    logits: list[torch.Tensor] = []
    keys: list[torch.Tensor] = []
    values: list[torch.Tensor] = []
    for start in range(0, len(rows), group):
        group_logits, layers, input_ids, _ = _read_prompts(model, rows[start:start + group], settings)
        logits.append(group_logits)
        if not keys:
            keys = [k.new_zeros((len(rows), k.shape[1], width, k.shape[3])) for k, _ in layers]
            values = [v.new_zeros((len(rows), v.shape[1], width, v.shape[3])) for _, v in layers]
        stop = start + input_ids.shape[0]
        for layer, (k, v) in enumerate(layers):
            keys[layer][start:stop, :, width - k.shape[2]:] = k
            values[layer][start:stop, :, width - v.shape[2]:] = v
    for layer, (k, v) in enumerate(zip(keys, values)):
        cache.update(k, v, layer)
    return torch.cat(logits)


# ---------------------------------------------------------------------------------------------- engines


def decode_dynamic(model, rows: Sequence[Sequence[int]], settings: Decoding, done: RowDone) -> None:
    """Greedy continuations of ``rows`` (token ids); a row that ends leaves the batch and the KV cache at once."""
    device = _device(model)
    input_ids, mask = left_padded(rows, settings.pad_id, device)
    cache = DynamicCache(config=model.config)
    if _has_sliding_layers(model):  # a sliding-window cache keeps only its window: read the batch in one pass
        logits = _forward(model, input_ids, None if bool(mask.all()) else mask, positions_from_mask(mask), cache)
    else:
        logits = _prefill(model, rows, settings, cache)
    attention = None if bool(mask.all()) else mask
    seen = _seen_tokens(input_ids, mask, logits.shape[-1]) if settings.repetition_penalty != 1.0 else None
    last_position = positions_from_mask(mask)[:, -1]
    outputs: list[list[int]] = [[] for _ in rows]
    live = list(range(len(rows)))
    for step in range(settings.max_new_tokens):
        next_ids = _penalised(logits, seen, settings.repetition_penalty).argmax(dim=-1)
        last_step = step == settings.max_new_tokens - 1
        keep = _append_tokens(outputs, live, next_ids.tolist(), settings.stop_check, done, last_step)
        if not keep:
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
        logits = _forward(model, next_ids[:, None], attention, last_position[:, None], cache)


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


def decode_plain(model, rows: Sequence[Sequence[int]], settings: Decoding, done: RowDone) -> None:
    """Greedy continuations of ``rows`` by ``model.generate``; a finished row idles in the batch until all end."""
    input_ids, mask = left_padded(rows, settings.pad_id, _device(model))
    stops = _RowStops(settings.stop_check, input_ids.shape[1], len(rows))
    # neutral: every penalty and processor off explicitly (a passed GenerationConfig would be filled in from the
    # model's own for the values it leaves at the library defaults)
    config = _NEUTRAL_GENERATE_KWARGS if settings.neutral else {}
    output = model.generate(
        input_ids=input_ids, attention_mask=mask, max_new_tokens=settings.max_new_tokens, do_sample=False,
        temperature=None, top_p=None, top_k=None, pad_token_id=settings.pad_id,
        eos_token_id=sorted(settings.stop_check.eos_ids) or None, stopping_criteria=StoppingCriteriaList([stops]),
        **config,
    )
    generated = output[:, input_ids.shape[1]:].tolist()
    for row, (tokens, n) in enumerate(zip(generated, stops.lengths)):
        done(row, tokens[:n] if n is not None else tokens)


# ---------------------------------------------------------------------------------------------- static engine


def slot_count(longest: int, max_new_tokens: int, token_budget: int, max_batch_size: int, prompts: int) -> int:
    """Sequences that ``static`` decodes at once: as many as ``token_budget`` holds, counted as (longest prompt +
    max_new_tokens) x sequences, at most ``max_batch_size`` and ``prompts``, at least one."""
    return max(1, min(max_batch_size, prompts, token_budget // (longest + max_new_tokens)))


class SlotKVCache:
    """The keys and values of a fixed number of slots, one sequence per slot, each written at its own column.

    The attention layers of a decode step call ``update`` with the step's key/value of every slot, which goes to
    column ``columns[slot]``; attention then reads the first ``width`` columns, the 4D mask passed with the step
    marking each slot's valid ones. Not a subclass of transformers' ``Cache``: given explicit position ids and a
    4D mask the models call nothing but ``update``, while ``Cache``'s constructor and layer attributes change
    between releases.
    """

    def __init__(self, layers: Sequence[tuple[torch.Tensor, torch.Tensor]], slots: int, length: int):
        # Shaped after one prefill's keys/values: kv heads, head dim, dtype and device as the model writes them.
        self._keys = [k.new_zeros((slots, k.shape[1], length, k.shape[3])) for k, _ in layers]
        self._values = [v.new_zeros((slots, v.shape[1], length, v.shape[3])) for _, v in layers]
        self.keys, self.values = self._keys, self._values
        self.columns = torch.zeros(slots, dtype=torch.long, device=self._keys[0].device)
        self.width = length

    def use_slots(self, slots: int) -> None:
        """Run over the first ``slots`` slots only (views: nothing is copied)."""
        self.keys = [k[:slots] for k in self._keys]
        self.values = [v[:slots] for v in self._values]

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args, **kwargs):
        keys, values = self.keys[layer_idx], self.values[layer_idx]
        index = self.columns.view(-1, 1, 1, 1).expand_as(key_states)
        keys.scatter_(2, index, key_states)
        values.scatter_(2, index, value_states)
        return keys[:, :, :self.width], values[:, :, :self.width]

    def write(self, slots: torch.Tensor, layers: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Put a prefill's keys/values (one row per slot in ``slots``) into columns [0, their length)."""
        for keys, values, (k, v) in zip(self._keys, self._values, layers):
            keys[slots, :, :k.shape[2]] = k
            values[slots, :, :v.shape[2]] = v

    def move(self, source: int, target: int, columns: int) -> None:
        """Copy the first ``columns`` columns of slot ``source`` into slot ``target``."""
        for keys, values in zip(self._keys, self._values):
            keys[target, :, :columns] = keys[source, :, :columns]
            values[target, :, :columns] = values[source, :, :columns]


def _as_attention_mask(mask: torch.Tensor, model) -> torch.Tensor:
    """Boolean masks for sdpa/flex; an additive float mask for eager attention."""
    if getattr(model.config, "_attn_implementation", "sdpa") != "eager":
        return mask
    dtype = next(model.parameters()).dtype
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, torch.finfo(dtype).min)


class _DecodeStep:
    """One greedy decode step of the first ``slots`` slots; with ``use_graph`` a CUDA graph captured at the first
    call and replayed after.

    Under a graph the inputs (token, position, write column, mask over all columns) are copied into static
    buffers before every replay; the graph records the same forward that runs eagerly.
    """

    def __init__(self, model, cache: SlotKVCache, slots: int, use_graph: bool):
        self.model, self.cache, self.slots, self.use_graph = model, cache, slots, use_graph
        self.graph = None
        self.buffers: tuple[torch.Tensor, ...] = ()
        self.logits: torch.Tensor | None = None

    def _run(self, token, position, column, mask, width: int) -> torch.Tensor:
        self.cache.columns, self.cache.width = column, width
        return _forward(self.model, token[:, None], _as_attention_mask(mask[:, None, None, :width], self.model),
                        position[:, None], self.cache)

    def __call__(self, token, position, column, valid, width: int) -> torch.Tensor:
        if not self.use_graph:
            return self._run(token, position, column, valid, width)
        if self.graph is None:
            self.buffers = tuple(t.clone() for t in (token, position, column, valid))
            try:
                self._capture()
            except Exception as error:  # noqa: BLE001 - a model or library the graph cannot record
                if is_out_of_memory(error):
                    raise
                log.warning("capturing the decode step as a CUDA graph failed (%s: %s); decoding eagerly",
                            type(error).__name__, error)
                self.use_graph, self.graph = False, None
                return self._run(token, position, column, valid, width)
        for buffer, value in zip(self.buffers, (token, position, column, valid)):
            buffer.copy_(value)
        self.graph.replay()
        return self.logits.clone()

    def _capture(self) -> None:
        # The warm-up runs write this step's keys/values, the same ones the first replay writes again.
        length = self.buffers[3].shape[1]
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(2):
                self._run(*self.buffers, length)
        torch.cuda.current_stream().wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.logits = self._run(*self.buffers, length)


def decode_static(model, rows: Sequence[Sequence[int]], settings: Decoding, done: RowDone, slots: int) -> None:
    """Greedy continuations of ``rows`` (longest first), ``slots`` of them at a time over one preallocated KV cache.

    A slot whose sequence ends takes the next waiting prompt (on CPU at once; elsewhere once an eighth of the
    slots are free, so that one prefill forward refills several). Once no prompt waits, the running sequences
    are packed into fewer slots: at once, or with CUDA graphs (``cuda_graphs`` on a CUDA device) in halving
    steps, one graph per slot count.
    """
    device = _device(model)
    on_cpu, use_graph = device.type == "cpu", settings.cuda_graphs and device.type == "cuda"
    slots = max(1, min(slots, len(rows)))
    length = max(len(r) for r in rows) + settings.max_new_tokens
    penalty, max_new = settings.repetition_penalty, settings.max_new_tokens
    refill_at = 1 if on_cpu else max(1, slots // 8)
    group = settings.prefill_batch_size or (1 if on_cpu else slots)
    waiting = deque(range(len(rows)))
    outputs: list[list[int]] = [[] for _ in rows]
    slot_row: list[int | None] = [None] * slots  # the sequence in each slot; None: free
    column = [0] * slots    # where each slot's next key/value goes
    position = [0] * slots  # its position id
    token = torch.zeros(slots, dtype=torch.long, device=device)      # each slot's last token, the next input
    valid = torch.zeros((slots, length), dtype=torch.bool, device=device)  # the columns each slot attends to
    seen: torch.Tensor | None = None  # (slots, vocab) for the repetition penalty
    cache: SlotKVCache | None = None
    used = slots  # the step runs over slots [0, used)
    step: _DecodeStep | None = None

    def take(at: list[int], logits: torch.Tensor) -> None:
        """Choose the next token of the slots ``at`` from their logits; report and free the ones that end."""
        picked = _penalised(logits, seen[at] if seen is not None else None, penalty).argmax(dim=-1)
        index = torch.tensor(at, device=device)
        token[index] = picked
        if seen is not None:
            seen[index, picked] = True
        for slot, t in zip(at, picked.tolist()):
            row = slot_row[slot]
            if row is None:
                continue
            outputs[row].append(t)
            if len(outputs[row]) == max_new or settings.stop_check.finished(outputs[row]):
                done(row, outputs[row])
                slot_row[slot] = None

    def move(source: int, target: int) -> None:
        cache.move(source, target, column[source])
        valid[target], token[target] = valid[source], token[source]
        if seen is not None:
            seen[target] = seen[source]
        slot_row[target], column[target], position[target] = slot_row[source], column[source], position[source]
        slot_row[source] = None

    while True:
        free = [s for s in range(used) if slot_row[s] is None]
        running = used - len(free)
        if waiting and free and (len(free) >= refill_at or running == 0):
            admit = free[:len(waiting)]
            for start in range(0, len(admit), group):
                at = admit[start:start + group]
                new = [waiting.popleft() for _ in at]
                logits, layers, input_ids, mask = _read_prompts(model, [rows[i] for i in new], settings)
                if cache is None:
                    cache = SlotKVCache(layers, slots, length)
                index = torch.tensor(at, device=device)
                cache.write(index, layers)
                width = input_ids.shape[1]
                valid[index] = False
                valid[index, :width] = mask.bool()
                if penalty != 1.0:
                    if seen is None:
                        seen = torch.zeros((slots, logits.shape[-1]), dtype=torch.bool, device=device)
                    seen[index] = _seen_tokens(input_ids, mask, logits.shape[-1])
                for j, (slot, row) in enumerate(zip(at, new)):
                    slot_row[slot], column[slot], position[slot] = row, width, int(mask[j].sum())
                take(at, logits)
            continue
        if running == 0:
            return
        if not waiting and running < used and (not use_graph or running <= used // 2):
            target = used if use_graph else running
            while use_graph and running <= target // 2:
                target //= 2
            holes = [s for s in range(target) if slot_row[s] is None]
            for hole, source in zip(holes, [s for s in range(target, used) if slot_row[s] is not None]):
                move(source, hole)
            used = target
            cache.use_slots(used)
        if step is None or step.slots != used:
            step = None
            step = _DecodeStep(model, cache, used, use_graph)
        columns = torch.tensor(column[:used], device=device)
        valid[:used].scatter_(1, columns[:, None], True)
        width = length if use_graph else max(column[s] for s in range(used) if slot_row[s] is not None) + 1
        logits = step(token[:used], torch.tensor(position[:used], device=device), columns, valid[:used], width)
        for s in range(used):
            column[s] = min(column[s] + 1, length - 1)  # a free slot stays at the last column
            position[s] += 1
        take([s for s in range(used)], logits)


_ENGINE_LOOPS = {"cache": decode_dynamic, "static": decode_static, "plain": decode_plain}
