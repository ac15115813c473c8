"""Grouped-query attention for one-token decode steps, without copying the keys and values per query head.

In a decode step each row has one query per head, and the query heads of a group share one key/value head and one
mask row. Their queries are stacked as that key/value head's query rows, (batch, kv heads, group, head dim), and
attention runs on the cache's own keys and values. transformers' ``sdpa`` does this only in later releases
(5.24); before, with a mask (every static decode step passes one), it expanded each layer's keys and values to
every query head first (``repeat_kv``): at 256 slots over ~520 columns of SmolLM2-135M (9 query heads on 3
key/value heads, 30 layers), about 21 GB of memory traffic per step in bf16, where the attention itself reads
3 GB. Prompts (several query positions) take transformers' own ``sdpa`` unchanged.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

NAME = "slm_sweep_decode_sdpa"


def decode_sdpa(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                **kwargs) -> tuple[torch.Tensor, None]:
    """transformers' attention-function signature: (batch, heads, 1, dim) queries against (batch, kv heads,
    columns, dim) keys/values, returned as (batch, 1, heads, dim)."""
    groups = getattr(module, "num_key_value_groups", 1)
    batch, heads, positions, dim = query.shape
    mask_per_head = attention_mask is not None and attention_mask.shape[1] != 1
    # what plain attention over the mask does not compute is left to transformers (which refuses what it lacks)
    extra = any(kwargs.get(key) is not None for key in ("position_bias", "softcap", "s_aux"))
    if positions != 1 or groups == 1 or dropout or mask_per_head or extra:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    # head h reads key/value head h // groups (transformers' repeat_kv), so the groups are consecutive heads
    stacked = query.reshape(batch, heads // groups, groups, dim)
    out = torch.nn.functional.scaled_dot_product_attention(stacked, key, value, attn_mask=attention_mask,
                                                           scale=scaling)
    return out.reshape(batch, heads, 1, dim).transpose(1, 2).contiguous(), None


def _configs(config) -> list:
    """``config`` and every sub-config under it (a text config, a vision config), each once."""
    found, queue = {}, [config]
    while queue:
        current = queue.pop()
        if current is None or id(current) in found:
            continue
        found[id(current)] = current
        queue.extend(getattr(current, key, None) for key in (getattr(current, "sub_configs", None) or {}))
    return list(found.values())


@contextlib.contextmanager
def stacked_gqa_decoding(model) -> Iterator[None]:
    """Within the block, a model that attends with ``sdpa`` runs its one-token steps through ``decode_sdpa``;
    any other attention implementation is left alone. Every config is given back the implementation it had."""
    text = model.config.get_text_config(decoder=True) if hasattr(model.config, "get_text_config") else model.config
    if getattr(text, "_attn_implementation", None) != "sdpa":
        yield
        return
    if NAME not in AttentionInterface._global_mapping:
        AttentionInterface.register(NAME, decode_sdpa)
        AttentionMaskInterface.register(NAME, sdpa_mask)  # masks are built as for sdpa
    before = [(config, config._attn_implementation) for config in _configs(model.config)]
    try:
        text._attn_implementation = NAME
        if model.config is not text and model.config._attn_implementation == "sdpa":
            model.config._attn_implementation = NAME
        yield
    finally:
        for config, implementation in before:  # parents first: a parent's setter may reach its sub-configs
            config._attn_implementation = implementation
