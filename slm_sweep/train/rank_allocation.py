"""peft adapters whose training needs more than a loss and an optimizer: a call after every optimizer step that
reallocates their ranks (AdaLoRA's ``update_and_allocate``), the state of that allocation kept in checkpoints, and a
regularizer their forward adds to the loss (AdaLoRA's orthogonality term, ``orth_reg_weight``).

Found by what the adapter model has, never by a method's name: a method that brings such an adapter stays one file
in conf/method/.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
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
    change until its update: added at the step's first forward only (on the first of several devices, whose
    gradients are averaged after each device's loss is multiplied by their number), the step's gradient holds it
    once whatever the cut into micro-batches, and validation, which measures the model's loss on its data, leaves
    it out."""
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




def training_problem(model, trainer_cfg: Mapping[str, Any], whole_model_compiled: bool,
                     replaying: str | None) -> str | None:
    """Why such adapters cannot train under these trainer settings (None: they can). Refused, each for a reason:
    float16 (a step its loss scaler skips leaves non-finite gradients, which the reallocation would carry in its
    importance averages for the rest of the run, masking nothing), an FSDP strategy (the reallocation reads each
    adapter whole; DeepSpeed is not checked), compiling the whole model (its trace fails in Dynamo on the
    regularizer's loop over the weights; ``whole_model_compiled`` also where the layers scope finds no repeated
    layers) and a step replayed as CUDA graphs (``replaying``: the setting that asks for it), which would hold the
    regularizer's state of its recording while the reallocation rewrites weights between replays, which nothing
    here has checked."""
    if rank_allocation(model) is None and not adds_loss_regularizer(model):
        return None
    kind = f"{type(_tuner(model)).__name__}'s adapters (a rank reallocation after each step, a loss regularizer)"
    precision = str(trainer_cfg.get("precision", "32-true"))
    strategy = str(trainer_cfg.get("strategy") or "auto")
    if precision.startswith("16"):
        return (f"trainer.precision={precision} cannot train {kind}: a step the float16 loss scaler skips leaves "
                "non-finite gradients, which the reallocation would keep in its importance for the rest of the "
                "run; use bf16-mixed or 32-true")
    if "fsdp" in strategy.lower():
        return f"trainer.strategy={strategy} shards the weights, and {kind} are reallocated whole: use ddp"
    if not trainer_cfg.get("compile"):
        return None
    if whole_model_compiled:
        return (f"compiling the whole model (trainer.compile_scope=model, or a model without repeated layers) "
                f"cannot trace {kind}: use trainer.compile_scope=layers on a model with decoder layers, or "
                "trainer.compile=false")
    if replaying:
        return (f"{replaying} replays the training step as CUDA graphs, which {kind} are not checked under: use "
                "trainer.compile_mode=null with trainer.compile_backend=inductor")
    return None
