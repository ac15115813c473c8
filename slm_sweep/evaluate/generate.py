"""Greedy, batched generation with left padding, length-sorted batches under a token budget, and stop strings."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch

from slm_sweep.evaluate.scoring import truncate_at_stop


@dataclass
class Generation:
    text: str            # decoded continuation, cut at the first stop string
    new_tokens: int      # tokens generated before stopping


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


@torch.inference_mode()
def generate(model, tokenizer, prompts: Sequence[str], max_new_tokens: int = 256, stop: Sequence[str] = (),
             token_budget: int = 65536, max_batch_size: int = 64,
             on_batch: Callable[[list[int], list[Generation]], None] | None = None) -> list[Generation]:
    """Greedy continuations of ``prompts``, in input order. ``on_batch(indices, generations)`` sees each batch."""
    tokenizer.padding_side = "left"
    encoded = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    results: list[Generation | None] = [None] * len(prompts)
    for indices in token_budget_batches([len(e) for e in encoded], max_new_tokens, token_budget, max_batch_size):
        batch = tokenizer.pad({"input_ids": [encoded[i] for i in indices]}, return_tensors="pt").to(device)
        output = model.generate(
            **batch,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            temperature=None,
            top_p=None,
            top_k=None,
            stop_strings=list(stop) or None,
            tokenizer=tokenizer if stop else None,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
        new = output[:, batch["input_ids"].shape[1]:]
        gens = []
        for row in new:
            n = _generated_length(row, tokenizer.pad_token_id, tokenizer.eos_token_id)
            text = tokenizer.decode(row[:n], skip_special_tokens=True)
            gens.append(Generation(text=truncate_at_stop(text, stop), new_tokens=n))
        for i, g in zip(indices, gens):
            results[i] = g
        if on_batch:
            on_batch(indices, gens)
    model.train(was_training)
    return results  # type: ignore[return-value]


def _generated_length(row: torch.Tensor, pad_id: int | None, eos_id: int | None) -> int:
    """Tokens up to and including the first end-of-sequence token; padding after a finished row is not counted."""
    ids = row.tolist()
    for j, t in enumerate(ids):
        if t == eos_id:
            return j + 1
    n = len(ids)
    while n and pad_id is not None and ids[n - 1] == pad_id and pad_id != eos_id:
        n -= 1
    return n
