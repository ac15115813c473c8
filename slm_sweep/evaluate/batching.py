"""Prompts for generation: encoded and left-truncated as lm-evaluation-harness does, grouped into batches or
slots by a token budget, and left-padded into tensors."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence

import torch

from slm_sweep.data.encode import prompt_token_ids

log = logging.getLogger(__name__)

DEFAULT_CONTEXT_WINDOW = 2048  # lm-eval's fallback when neither config nor tokenizer gives a length


_CONFIG_LENGTH_KEYS = ("n_positions", "max_position_embeddings", "n_ctx")


_UNSET_TOKENIZER_LENGTH = 1e29


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
    """Token ids of each prompt (``prompt_token_ids``, as training encodes it), left-truncated to
    ``max_prompt_tokens``."""
    if max_prompt_tokens <= 0:
        raise ValueError(f"no room for a prompt: max_new_tokens fills the model's context window ({max_prompt_tokens})")
    encoded = [prompt_token_ids(tokenizer, p) for p in prompts]
    empty = [i for i, ids in enumerate(encoded) if not ids]
    if empty:
        raise ValueError(f"{len(empty)} prompt(s) encode to no tokens (the first: prompt {empty[0]}, "
                         f"{prompts[empty[0]]!r}); a prompt needs at least one token to continue from")
    truncated = sum(len(ids) > max_prompt_tokens for ids in encoded)
    if truncated:
        log.warning("%d of %d prompts were left-truncated to %d tokens (context window minus max_new_tokens)",
                    truncated, len(encoded), max_prompt_tokens)
    return [ids[-max_prompt_tokens:] for ids in encoded]


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


def slot_count(longest: int, max_new_tokens: int, token_budget: int, max_batch_size: int, prompts: int) -> int:
    """Sequences that ``static`` decodes at once: as many as ``token_budget`` holds, counted as (longest prompt +
    max_new_tokens) x sequences, at most ``max_batch_size`` and ``prompts``, at least one."""
    return max(1, min(max_batch_size, prompts, token_budget // (longest + max_new_tokens)))


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
