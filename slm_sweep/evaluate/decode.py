"""The decode loops behind ``generate``: greedy, the same tokens in every engine up to floating-point rounding
(which can flip a near-tie: generate.py's docstring).

- ``decode_static``: a preallocated KV cache of a fixed number of slots (``SlotKVCache``), refilled as sequences
  end, each decode step optionally replayed as a CUDA graph (``_DecodeStep``).
- ``decode_dynamic``: transformers' dynamic KV cache, one batch at a time; finished rows leave the batch.
- ``decode_plain``: ``model.generate`` with a per-row stopping criterion.
"""

from __future__ import annotations

import inspect
import logging
import time
import weakref
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from transformers import DynamicCache, StoppingCriteria, StoppingCriteriaList

from slm_sweep.evaluate.batching import left_padded, positions_from_mask
from slm_sweep.evaluate.stopping import StopCheck
from slm_sweep.memory import is_out_of_memory

log = logging.getLogger(__name__)

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
    # the static loop's schedule: None, this device's; "cuda", a CUDA device's with cuda_graphs whatever the device
    # (bench/decode_host.py times the GPU's schedule on a CPU)
    schedule_as: str | None = None


RowDone = Callable[[int, list[int]], None]  # (row of the batch, its generated token ids), called once per row


@dataclass
class GraphUse:
    """What became of ``cuda_graphs``: the decode steps captured as CUDA graphs, and the first capture that failed
    (decoding then went on eagerly)."""

    captured: int = 0
    failure: str | None = None


@dataclass
class LoopTimes:
    """Where the static loop's wall time went, summed over its calls. Each phase ends by reading its chosen tokens
    back to the host, which waits for the device, so a phase's device work is counted in it: ``prefill_s`` reads
    prompts into slots, ``capture_s`` is each CUDA graph's first step (its warm-up runs and capture), ``decode_s``
    every other decode step. ``slot_steps`` sums the slots each step ran over, ``live_slot_steps`` those holding a
    sequence: their ratio is the slots' occupancy."""

    prefill_forwards: int = 0
    prefill_s: float = 0.0
    capture_s: float = 0.0
    decode_steps: int = 0
    decode_s: float = 0.0
    slot_steps: int = 0
    live_slot_steps: int = 0

    def as_dict(self) -> dict:
        steps = max(self.decode_steps, 1)
        return {"prefill_forwards": self.prefill_forwards, "prefill_s": round(self.prefill_s, 3),
                "capture_s": round(self.capture_s, 3), "decode_steps": self.decode_steps,
                "decode_s": round(self.decode_s, 3), "decode_ms_per_step": round(1e3 * self.decode_s / steps, 3),
                "slot_occupancy": round(self.live_slot_steps / self.slot_steps, 4) if self.slot_steps else None}


_NEUTRAL_GENERATE_KWARGS = {"repetition_penalty": 1.0, "no_repeat_ngram_size": 0, "bad_words_ids": None,
                            "suppress_tokens": None, "begin_suppress_tokens": None, "forced_bos_token_id": None,
                            "forced_eos_token_id": None, "sequence_bias": None, "min_new_tokens": None,
                            "min_length": 0, "exponential_decay_length_penalty": None}


def _device(model) -> torch.device:
    return next(model.parameters()).device


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


# per model, weakly held: inspect.signature takes ~65 us, which every forward call would otherwise pay
_CACHE_KWARG: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _cache_kwarg(model) -> str:
    """The forward argument that takes the KV cache: ``cache`` in later transformers 5 releases,
    ``past_key_values`` before. Read from the model under a PEFT wrapper, whose own forward keeps the old name
    (passed on through a deprecation shim)."""
    name = _CACHE_KWARG.get(model)
    if name is None:
        inner = model.get_base_model() if hasattr(model, "get_base_model") else model
        name = "cache" if "cache" in inspect.signature(inner.forward).parameters else "past_key_values"
        _CACHE_KWARG[model] = name
    return name


def _forward(model, input_ids, attention_mask, position_ids, cache) -> torch.Tensor:
    """Float32 logits of the last position of each row (``model.generate`` casts them the same way)."""
    out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                use_cache=True, logits_to_keep=1, **{_cache_kwarg(model): cache})
    return out.logits[:, -1, :].float()


def has_sliding_layers(model) -> bool:
    """Whether some attention layer of ``model`` sees a sliding window only: one named so in ``layer_types``, or,
    for a config without ``layer_types`` (Mistral, Phi-3), every layer when ``sliding_window`` is set and
    ``use_sliding_window`` does not turn it off (Qwen2's configs carry a window they do not use)."""
    config = model.config.get_text_config(decoder=True) if hasattr(model.config, "get_text_config") else model.config
    if not getattr(config, "sliding_window", None):
        return False
    types = getattr(config, "layer_types", None)
    if types is None:
        return getattr(config, "use_sliding_window", True) is not False
    return any(t != "full_attention" for t in types)


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


def _zeros_at_padding(layers, mask: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """A prefill's keys/values with zeros at padding positions. A padding position's query sees no key, and what an
    attention kernel leaves there is not defined (NaN with some); later steps still read those columns, masked, and
    a NaN value survives its zero weight."""
    if bool(mask.all()):
        return list(layers)
    padding = (mask == 0)[:, None, :, None]
    return [(k.masked_fill(padding, 0), v.masked_fill(padding, 0)) for k, v in layers]


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
        group_logits, layers, input_ids, mask = _read_prompts(model, rows[start:start + group], settings)
        logits.append(group_logits)
        if not keys:
            keys = [k.new_zeros((len(rows), k.shape[1], width, k.shape[3])) for k, _ in layers]
            values = [v.new_zeros((len(rows), v.shape[1], width, v.shape[3])) for _, v in layers]
        stop = start + input_ids.shape[0]
        for layer, (k, v) in enumerate(_zeros_at_padding(layers, mask)):
            keys[layer][start:stop, :, width - k.shape[2]:] = k
            values[layer][start:stop, :, width - v.shape[2]:] = v
    for layer, (k, v) in enumerate(zip(keys, values)):
        cache.update(k, v, layer)
    return torch.cat(logits)


def decode_dynamic(model, rows: Sequence[Sequence[int]], settings: Decoding, done: RowDone) -> None:
    """Greedy continuations of ``rows`` (token ids); a row that ends leaves the batch and the KV cache at once."""
    device = _device(model)
    input_ids, mask = left_padded(rows, settings.pad_id, device)
    cache = DynamicCache(config=model.config)
    if has_sliding_layers(model):  # a sliding-window cache keeps only its window: read the batch in one pass
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
        num_beams=1, temperature=None, top_p=None, top_k=None, pad_token_id=settings.pad_id,
        eos_token_id=sorted(settings.stop_check.eos_ids) or None, stopping_criteria=StoppingCriteriaList([stops]),
        **config,
    )
    generated = output[:, input_ids.shape[1]:].tolist()
    for row, (tokens, n) in enumerate(zip(generated, stops.lengths)):
        done(row, tokens[:n] if n is not None else tokens)


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
        # Left uninitialised: ``write`` fills a slot's every column (prompt, then zeros), so memory is touched
        # once; zero-filling it here as well cost seconds of page faults on CPU (32 slots: ~2 GB).
        self._keys = [k.new_empty((slots, k.shape[1], length, k.shape[3])) for k, _ in layers]
        self._values = [v.new_empty((slots, v.shape[1], length, v.shape[3])) for _, v in layers]
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
        """Put a prefill's keys/values (one row per slot in ``slots``) into columns [0, their length) and zeros
        into the rest: masked columns are still read, and a NaN left there would survive its zero weight."""
        for keys, values, (k, v) in zip(self._keys, self._values, layers):
            keys[slots, :, :k.shape[2]] = k
            values[slots, :, :v.shape[2]] = v
            keys[slots, :, k.shape[2]:] = 0
            values[slots, :, v.shape[2]:] = 0

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

    def __init__(self, model, cache: SlotKVCache, slots: int, use_graph: bool, graphs: GraphUse | None = None):
        self.model, self.cache, self.slots, self.use_graph = model, cache, slots, use_graph
        self.graphs = graphs if graphs is not None else GraphUse()
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
                self.graphs.failure = self.graphs.failure or f"{type(error).__name__}: {error}"
                self.use_graph, self.graph = False, None
                return self._run(token, position, column, valid, width)
            self.graphs.captured += 1
        for buffer, value in zip(self.buffers, (token, position, column, valid)):
            buffer.copy_(value)
        self.graph.replay()
        return self.logits.clone()

    def _capture(self) -> None:
        # The warm-up runs write this step's keys/values, the same ones the first replay writes again.
        # Warm-up and capture on a side stream of the cache's device, named: torch.cuda.graph's default capture
        # stream is made once, on whichever device was current then, and a capture on another device than the
        # model's records an empty graph.
        length = self.buffers[3].shape[1]
        device = self.cache.columns.device
        current = torch.cuda.current_stream(device)
        try:
            stream = torch.cuda.Stream(device)
            stream.wait_stream(current)
            with torch.cuda.stream(stream):
                for _ in range(2):
                    self._run(*self.buffers, length)
            current.wait_stream(stream)
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph, stream=stream):
                self.logits = self._run(*self.buffers, length)
        except BaseException:
            # torch.cuda.graph ends a failed capture (which raises) before leaving its capture stream, which
            # would then stay current for the rest of the process
            torch.cuda.set_stream(current)
            raise


def decode_static(model, rows: Sequence[Sequence[int]], settings: Decoding, done: RowDone, slots: int,
                  graphs: GraphUse | None = None, times: LoopTimes | None = None) -> None:
    """Greedy continuations of ``rows`` (longest first), ``slots`` of them at a time over one preallocated KV cache.

    A slot whose sequence ends takes the next waiting prompt (on CPU at once; elsewhere once an eighth of the
    slots are free, so that one prefill forward refills several). Once no prompt waits, the running sequences
    are packed into fewer slots: at once, or with CUDA graphs (``cuda_graphs`` on a CUDA device) in halving
    steps, one graph per slot count, each counted in ``graphs``.
    """
    device = _device(model)
    use_graph = settings.cuda_graphs and device.type == "cuda"
    as_cuda = settings.schedule_as == "cuda"
    on_cpu = device.type == "cpu" and not as_cuda
    halving = use_graph or as_cuda  # pack in halving steps, one graph per slot count
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
    times = times if times is not None else LoopTimes()

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
            began = time.perf_counter()
            admit = free[:len(waiting)]
            for start in range(0, len(admit), group):
                at = admit[start:start + group]
                new = [waiting.popleft() for _ in at]
                logits, layers, input_ids, mask = _read_prompts(model, [rows[i] for i in new], settings)
                if cache is None:
                    cache = SlotKVCache(layers, slots, length)
                index = torch.tensor(at, device=device)
                cache.write(index, _zeros_at_padding(layers, mask))
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
                times.prefill_forwards += 1
            times.prefill_s += time.perf_counter() - began
            continue
        if running == 0:
            return
        if not waiting and running < used and (not halving or running <= used // 2):
            target = used if halving else running
            while halving and running <= target // 2:
                target //= 2
            holes = [s for s in range(target) if slot_row[s] is None]
            for hole, source in zip(holes, [s for s in range(target, used) if slot_row[s] is not None]):
                move(source, hole)
            used = target
            cache.use_slots(used)
        if step is None or step.slots != used:
            step = None
            step = _DecodeStep(model, cache, used, use_graph, graphs)
        began, capturing = time.perf_counter(), step.use_graph and step.graph is None
        times.slot_steps += used
        times.live_slot_steps += running
        columns = torch.tensor(column[:used], device=device)
        valid[:used].scatter_(1, columns[:, None], True)
        width = length if use_graph else max(column[s] for s in range(used) if slot_row[s] is not None) + 1
        logits = step(token[:used], torch.tensor(position[:used], device=device), columns, valid[:used], width)
        use_graph = use_graph and step.use_graph  # a capture that failed is not tried again at other slot counts
        for s in range(used):
            column[s] = min(column[s] + 1, length - 1)  # a free slot stays at the last column
            if slot_row[s] is not None:  # a free slot keeps its position: never past the context window
                position[s] += 1
        take([s for s in range(used)], logits)
        if capturing:
            times.capture_s += time.perf_counter() - began
        else:
            times.decode_steps += 1
            times.decode_s += time.perf_counter() - began


ENGINE_LOOPS = {"cache": decode_dynamic, "static": decode_static, "plain": decode_plain}
