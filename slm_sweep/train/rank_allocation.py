"""peft adapters whose training needs more than a loss and an optimizer: a call after every optimizer step that
reallocates their ranks (AdaLoRA's ``update_and_allocate``), the state of that allocation kept in checkpoints, and a
regularizer their forward adds to the loss (AdaLoRA's orthogonality term, ``orth_reg_weight``).

Found by what the adapter model has, never by a method's name: a method that brings such an adapter stays one file
in conf/method/.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch

REGULARIZER_WEIGHT = "orth_reg_weight"
ALLOCATOR_STATE = ("ipt", "exp_avg_ipt", "exp_avg_unc")  # peft's RankAllocator: the importance averages


def _tuner(model):
    """The peft tuner under a PeftModel (its ``base_model``); None for a model without adapters."""
    from peft import PeftModel

    return model.base_model if isinstance(model, PeftModel) else None


def rank_allocation(model) -> Callable[[int], None] | None:
    """The adapters' per-step reallocation, ``update_and_allocate(step)``, to call after each optimizer step and
    before the gradients are cleared (it reads them), with the index of the step just taken (from 0); None when the
    adapters have none."""
    allocate = getattr(_tuner(model), "update_and_allocate", None)
    return allocate if callable(allocate) else None


def _regularized_configs(model) -> list:
    tuner = _tuner(model)
    configs = getattr(tuner, "peft_config", None) or {}
    return [config for config in configs.values() if float(getattr(config, REGULARIZER_WEIGHT, 0) or 0) > 0]


def adds_loss_regularizer(model) -> bool:
    """Whether the adapters' forward adds a regularizer of their weights to the model's loss."""
    return bool(_regularized_configs(model))


@contextmanager
def loss_regularizer(model, on: bool) -> Iterator[None]:
    """The adapters' loss regularizer added by the forwards inside (``on``) or left out (weight 0 meanwhile).

    peft adds it at every forward that returns a loss. It depends on the weights alone, which a step does not
    change until its update: added at the step's first forward only, the step's gradient holds it once whatever the
    cut into micro-batches (a DDP step: once on every device, whose gradients are averaged), and validation, which
    measures the model's loss on its data, leaves it out."""
    configs = _regularized_configs(model)
    weights = [getattr(config, REGULARIZER_WEIGHT) for config in configs]
    if not on:
        for config in configs:
            setattr(config, REGULARIZER_WEIGHT, 0.0)
    try:
        yield
    finally:
        for config, weight in zip(configs, weights):
            setattr(config, REGULARIZER_WEIGHT, weight)


def allocation_state(model) -> dict[str, Any] | None:
    """What the reallocation has learnt so far, which the weights do not hold: the importance averages and the rank
    pattern chosen (AdaLoRA's). A checkpoint keeps it, so that a resumed run reallocates as the uninterrupted one
    would. None when the adapters reallocate nothing."""
    tuner = _tuner(model)
    allocator = getattr(tuner, "rankallocator", None)
    if allocator is None or rank_allocation(model) is None:
        return None
    return {**{name: dict(getattr(allocator, name)) for name in ALLOCATOR_STATE},
            "rank_pattern": allocator.peft_config.rank_pattern}


def load_allocation_state(model, state: dict[str, Any], device: torch.device) -> None:
    """Restore ``allocation_state``'s figures, their tensors moved to ``device``."""
    tuner = _tuner(model)
    allocator = getattr(tuner, "rankallocator", None)
    if allocator is None:
        raise RuntimeError("the checkpoint holds a rank allocation, but the model's adapters reallocate no ranks: "
                           "it was written by another method")
    for name in ALLOCATOR_STATE:
        setattr(allocator, name, {key: value.to(device) for key, value in state[name].items()})
    allocator.peft_config.rank_pattern = state["rank_pattern"]



def compile_problem(model, scope: str, replaying: str | None) -> str | None:
    """Why such adapters cannot train compiled as asked (None: they can). Compiling their layers is what is
    tested; the whole model's trace fails in Dynamo on the regularizer's loop over the weights, and a step replayed
    as CUDA graphs would hold the regularizer's on-or-off of its recording while the allocation rewrites weights
    between replays, which nothing here has checked."""
    if rank_allocation(model) is None and not adds_loss_regularizer(model):
        return None
    kind = type(_tuner(model)).__name__
    if scope == "model":
        return (f"trainer.compile_scope=model cannot compile {kind}'s adapters (their loss regularizer does not "
                "trace as one graph): use trainer.compile_scope=layers")
    if replaying:
        return (f"{replaying} replays the training step as CUDA graphs, which {kind}'s adapters (a rank "
                "reallocation between steps, a loss regularizer at a step's first micro-batch) are not checked "
                "under: use trainer.compile_mode=null with trainer.compile_backend=inductor")
    return None
