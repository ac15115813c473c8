"""Apply a fine-tuning method to a loaded model, and what follows from it: trained weights kept and loaded again,
adapters merged for evaluation, parameter counts.

A method is one file in conf/method/; what it does follows from its structure, never from its name:

- ``train: false``: nothing is trained (zero-shot, few-shot);
- ``train: true`` with a ``peft`` block: adapters. ``peft`` is any peft adapter config with a ``_target_``
  (``peft.LoraConfig``, ``peft.IA3Config``, ...; prompt-learning configs are refused: they cannot be merged),
  built by ``hydra.utils.instantiate`` and handed to ``peft.get_peft_model``; the base weights stay frozen.
  LoRA, DoRA, PiSSA and rsLoRA are LoraConfig arguments;
- ``train: true`` without ``peft``: every weight is trained (full fine-tuning).

On a model whose weights were quantized at load time (``model.quantization``, e.g. 4-bit for QLoRA) the model is
first prepared for training the adapters (``peft.prepare_model_for_kbit_training``).

This module knows nothing of datasets, and nothing of training loops.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from slm_sweep.results import share_as_umask_allows

log = logging.getLogger(__name__)

DEFAULT_TASK_TYPE = "CAUSAL_LM"  # every model here is a causal LM; a peft config that names no task gets this one


class MethodError(ValueError):
    """A method's settings cannot be applied; the message names the setting and what is allowed."""


def has_adapters(method_cfg: Mapping[str, Any]) -> bool:
    """Whether the method trains adapters (a ``peft`` block) rather than the model's own weights."""
    return method_cfg.get("peft") is not None


def peft_config(method_cfg: Mapping[str, Any]):
    """The method's ``peft`` block as a peft config object (``hydra.utils.instantiate``)."""
    from peft import PeftConfig

    from slm_sweep.config import instantiate_checked

    config = instantiate_checked(
        "method.peft", method_cfg["peft"], PeftConfig, "a peft config class",
        "{_target_: peft.LoraConfig, r: 16, lora_alpha: 32}",
        "a peft config (a subclass of peft.PeftConfig such as peft.LoraConfig or peft.IA3Config)", MethodError)
    if getattr(config, "is_prompt_learning", False) or getattr(config, "is_adaption_prompt", False):
        raise MethodError(
            f"method.peft._target_={method_cfg['peft'].get('_target_')!r} learns prompts (virtual tokens), not "
            "weights: evaluation generates from the model with its adapters merged into the weights, which "
            "prompt learning cannot be. Use an adapter config such as peft.LoraConfig, peft.IA3Config, "
            "peft.LoHaConfig or peft.LoKrConfig")
    if getattr(config, "task_type", None) is None:
        config.task_type = DEFAULT_TASK_TYPE
    return config


def check_targets(model, config) -> None:
    """Every module name the adapter config lists (``target_modules``, ``feedforward_modules``) names a module of
    the model: peft trains the ones that match and ignores the others, so a misspelt entry (``down_prj``) would
    leave a layer untrained without a word. A pattern (a string) or ``all-linear`` is left to peft."""
    names = [name for name, _ in model.named_modules() if name]
    for field in ("target_modules", "feedforward_modules"):
        listed = getattr(config, field, None)
        if not isinstance(listed, (list, tuple, set)):
            continue
        # peft's rule: a module's name equal to the entry or ending with "." + entry
        unknown = sorted(str(entry) for entry in listed
                         if not any(name == str(entry) or name.endswith("." + str(entry)) for name in names))
        if unknown:
            linear = sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                             if isinstance(module, torch.nn.Linear) and name})
            raise MethodError(f"method.peft.{field} lists {unknown}, which name no module of this model; its "
                              f"linear layers are: {', '.join(linear)}")


def is_quantized(model) -> bool:
    """Weights quantized at load time (bitsandbytes 4/8-bit and the like), as transformers marks such a model."""
    return bool(getattr(model, "is_quantized", False))


def apply_method(model, method_cfg: Mapping[str, Any]):
    """The model with what the method trains made trainable: adapters, every weight, or nothing."""
    if has_adapters(method_cfg):
        from peft import get_peft_model, prepare_model_for_kbit_training

        config = peft_config(method_cfg)
        check_targets(model, config)
        if is_quantized(model):
            # gradient checkpointing is trainer.gradient_checkpointing's decision, made in train/fit.py
            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
        return get_peft_model(model, config)
    trains = bool(method_cfg.get("train"))
    for param in model.parameters():
        param.requires_grad_(trains)
    return model


def parameter_count(param) -> int:
    """Elements of a weight; a quantized weight counts the elements it stands for, not its packed storage."""
    state = getattr(param, "quant_state", None)
    shape = getattr(state, "shape", None)
    return int(torch.Size(shape).numel()) if shape is not None else param.numel()


def count_parameters(model) -> tuple[int, int]:
    """``(trainable, total)``; for a PEFT model the total includes the adapter weights."""
    trainable = total = 0
    for param in model.parameters():
        count = parameter_count(param)
        total += count
        if param.requires_grad:
            trainable += count
    return trainable, total


def load_trained(base, folder: str | Path):
    """Weights an earlier run of the same training kept: a PEFT adapter folder on ``base``, or full weights.

    peft builds the adapter from its saved config before loading its weights, so a method whose initialisation
    changes the base weights (PiSSA keeps the residual of the principal components) gets that base again.
    """
    folder = Path(folder)
    if (folder / "adapter_config.json").is_file():
        from peft import PeftModel

        return PeftModel.from_pretrained(base, folder)
    from transformers import AutoModelForCausalLM

    # in the dtype kept: full fine-tuning trains a bf16 base's weights in float32 (train.fit's
    # trainable_in_float32), and evaluation casts them as the run that trained them did
    return AutoModelForCausalLM.from_pretrained(folder, dtype="auto")


def save_atomically(model, target: str | Path) -> Path:
    """``model.save_pretrained`` into a temporary sibling, then renamed: a reader never sees half a folder."""
    target = Path(target)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        model.save_pretrained(tmp)
        share_as_umask_allows(tmp)  # mkdtemp's folder, and what a library writes, are its owner's only
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def merge_adapters_for_eval(model, dtype: torch.dtype | None = None):
    """Fold the adapters into the base weights, in float32, and keep the sum in ``dtype`` (None: the model's).

    Generation then runs at the speed of the plain model; the merged model computes the same function, up to the
    rounding of the sum to ``dtype``. Pass the dtype the model is scored in: a bf16 base scored in float32 would
    otherwise have the sum rounded to bf16 first, and with it most of an adapter's update, which is small beside
    the weight (while full fine-tuning's float32 weights are scored as trained). Adapters on quantized weights stay
    unmerged: merging would quantize the sum again and change the function that was trained.
    """
    from peft import PeftModel

    if not isinstance(model, PeftModel):
        return model
    if is_quantized(model):
        log.info("the base weights are quantized: generating with the adapters unmerged")
        return model
    from slm_sweep.placement import cast_weights

    dtype = dtype or next(model.parameters()).dtype
    model = cast_weights(model, torch.float32)
    merged = model.merge_and_unload()
    return cast_weights(merged, dtype)
