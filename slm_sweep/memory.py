"""Accelerator out-of-memory faults: recognising one and giving the cached memory back before a retry."""

from __future__ import annotations

import gc

import torch


def is_out_of_memory(error: BaseException) -> bool:
    """True for torch's out-of-memory error (CUDA, MPS, XPU), for the older RuntimeError spellings of it, and for the
    CPU allocator's refusal (a static KV cache of too many slots, on a machine without a GPU)."""
    if isinstance(error, torch.OutOfMemoryError):
        return True
    text = str(error).lower()
    return isinstance(error, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


def release_cached_memory() -> None:
    """Drop unreachable tensors and hand the allocator's cached blocks back, so a smaller retry can use them."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
