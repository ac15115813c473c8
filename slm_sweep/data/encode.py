"""Token ids for training: prompt tokens carry no loss, answer tokens do; collation pads or packs a batch."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from slm_sweep.data.prompts import QA, build_prompt, build_target

IGNORE_INDEX = -100


def encode_for_training(tokenizer, example: QA, style: str, max_length: int, system: str | None = None) -> dict:
    """``input_ids`` of prompt + answer and ``labels`` that are IGNORE_INDEX on every prompt token.

    Prompt and answer are tokenized separately and concatenated so the boundary is exact: no token straddles
    it, and the loss covers the answer and its end-of-turn token, nothing else. An example longer than
    ``max_length`` is cut here; ``encode_all`` drops such examples instead.
    """
    prompt_ids = prompt_token_ids(tokenizer, build_prompt(tokenizer, example.question, style=style, system=system))
    target_ids = tokenizer(build_target(tokenizer, example.answer, style), add_special_tokens=False)["input_ids"]
    input_ids = (prompt_ids + target_ids)[:max_length]
    labels = ([IGNORE_INDEX] * len(prompt_ids) + target_ids)[:max_length]
    return {"input_ids": input_ids, "labels": labels}


def prompt_token_ids(tokenizer, prompt: str) -> list[int]:
    """Token ids of a prompt, the same for training and generation: the tokenizer adds its default special tokens
    (a BOS for tokenizers that add one, as lm-eval does) unless the text already starts with the BOS token, as a
    chat template often writes it."""
    bos = tokenizer.bos_token
    return tokenizer(prompt, add_special_tokens=not (bos and prompt.startswith(bos)))["input_ids"]


def encode_all(tokenizer, examples: Sequence[QA], style: str, max_length: int, system: str | None = None) -> list[dict]:
    """Every example that fits in ``max_length`` tokens whole. Longer ones are dropped, not cut: a target cut
    before its final answer would teach the model to stop mid-solution."""
    encoded = [encode_for_training(tokenizer, ex, style, max_length + 1, system) for ex in examples]
    return [e for e in encoded if len(e["input_ids"]) <= max_length]


def loss_token_count(labels: Sequence[int]) -> int:
    """Tokens the next-token loss is computed on: labels after the first position that are not ignored."""
    return sum(1 for label in labels[1:] if label != IGNORE_INDEX)


class PadCollator:
    """Right-pads ``input_ids`` with the pad id and ``labels`` with IGNORE_INDEX; builds the attention mask."""

    def __init__(self, pad_token_id: int, pad_to_multiple_of: int | None = None):
        self.pad_token_id = pad_token_id
        self.pad_to_multiple_of = pad_to_multiple_of

    def __call__(self, batch: Sequence[dict]) -> dict[str, torch.Tensor]:
        length = max(len(b["input_ids"]) for b in batch)
        if self.pad_to_multiple_of:
            m = self.pad_to_multiple_of
            length = (length + m - 1) // m * m
        # Filled in numpy and handed to torch without a copy: several times faster than per-row torch.tensor.
        input_ids = np.full((len(batch), length), self.pad_token_id, dtype=np.int64)
        labels = np.full((len(batch), length), IGNORE_INDEX, dtype=np.int64)
        attention_mask = np.zeros((len(batch), length), dtype=np.int64)
        for i, b in enumerate(batch):
            n = len(b["input_ids"])
            input_ids[i, :n] = b["input_ids"]
            labels[i, :n] = b["labels"]
            attention_mask[i, :n] = 1
        return {"input_ids": torch.from_numpy(input_ids), "labels": torch.from_numpy(labels),
                "attention_mask": torch.from_numpy(attention_mask)}


class PackCollator:
    """Concatenates a batch into one row without padding; ``position_ids`` restart at 0 for every example.

    Without an attention mask, transformers reads the restarts as sequence boundaries and keeps examples apart
    (a block-diagonal causal mask for sdpa and eager, variable-length kernels for flash attention). The first
    label of every example is ignored so no token is predicted across a boundary.
    """

    def __init__(self, pad_token_id: int, pad_to_multiple_of: int | None = None):
        self.pad_token_id = pad_token_id
        self.pad_to_multiple_of = pad_to_multiple_of

    def __call__(self, batch: Sequence[dict]) -> dict[str, torch.Tensor]:
        input_ids: list[int] = []
        labels: list[int] = []
        positions: list[int] = []
        for b in batch:
            n = len(b["input_ids"])
            input_ids += b["input_ids"]
            labels += [IGNORE_INDEX] + list(b["labels"][1:])
            positions += range(n)
        if self.pad_to_multiple_of:
            m = self.pad_to_multiple_of
            extra = -len(input_ids) % m
            # The padding forms one more "example" of its own that carries no loss.
            input_ids += [self.pad_token_id] * extra
            labels += [IGNORE_INDEX] * extra
            positions += range(extra)
        return {"input_ids": torch.tensor([input_ids]), "labels": torch.tensor([labels]),
                "position_ids": torch.tensor([positions])}


def split_micro_batch(batch: dict) -> list[dict] | None:
    """Two halves of a collated micro-batch that together give the same summed loss, or None if it is one sequence.

    Padded batches split by rows and drop the padding columns neither half needs; packed batches (one row) split
    at the sequence boundary nearest the middle. Keys other than the model inputs are left to the caller.
    """
    input_ids = batch["input_ids"]
    if input_ids.shape[0] > 1:
        half = input_ids.shape[0] // 2
        halves = [{k: batch[k][:half] for k in _TENSOR_KEYS if k in batch},
                  {k: batch[k][half:] for k in _TENSOR_KEYS if k in batch}]
        if "attention_mask" in batch:
            halves = [_trim_right_padding(h) for h in halves]
        return halves
    positions = batch.get("position_ids")
    if positions is None:
        return None
    starts = (positions[0] == 0).nonzero().flatten().tolist()[1:]
    if not starts:
        return None
    middle = input_ids.shape[1] / 2
    cut = min(starts, key=lambda s: abs(s - middle))
    return [{k: batch[k][:, :cut] for k in _TENSOR_KEYS if k in batch},
            {k: batch[k][:, cut:] for k in _TENSOR_KEYS if k in batch}]


_TENSOR_KEYS = ("input_ids", "attention_mask", "labels", "position_ids")


def _trim_right_padding(batch: dict) -> dict:
    width = int(batch["attention_mask"].sum(dim=1).max())
    return {k: v[:, :width] for k, v in batch.items()}
