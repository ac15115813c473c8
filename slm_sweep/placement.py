"""Where a cell generates and in which dtype: ``eval.device`` and ``eval.dtype`` resolved once, before the first
prompt, and recorded in result.json.

``eval.device``: ``auto`` (the CUDA GPU that trained the model; else CUDA when present; else the CPU: a model
trained on another accelerator, such as Apple's MPS, follows that rule too), ``cpu``,
``cuda`` or ``cuda:N``. ``eval.dtype``: ``auto`` (bfloat16 on a GPU of compute capability 8 or more, float16
on an older GPU, ``model.dtype`` on the CPU, float32 for its ``auto``), or ``float32``, ``bfloat16``,
``float16``. The CPU's rule reads the config, never the loaded weights: the dtype is in the cell's evaluation
key, computed before the model loads, and weights trained in ``bf16-true`` or stored in bf16 must not generate
in another dtype than the key says. Gemma 3 overflows in float16: generating in it logs a warning.
"""

from __future__ import annotations

import logging
import platform
import re
from dataclasses import dataclass
from typing import Any

import torch

DEVICE_CHOICES = ("auto", "cpu", "cuda", "cuda:N")
DTYPE_CHOICES = ("auto", "float32", "bfloat16", "float16")
_CUDA_INDEX = re.compile(r"^cuda:(0|[1-9]\d*)$")  # torch.device refuses leading zeros (cuda:01)
# model_type of the architectures that overflow in float16 (Gemma 3: huggingface/transformers#36822)
FLOAT16_OVERFLOWS = ("gemma3",)

log = logging.getLogger(__name__)


class PlacementError(ValueError):
    """An eval.device or eval.dtype that cannot be used here; the message names the value and the choices."""


@dataclass(frozen=True)
class Placement:
    device: torch.device
    dtype: torch.dtype
    # a quantized model's: the dtype its quantized layers compute in (bnb_4bit_compute_dtype), which ``dtype``,
    # the dtype of its unquantized weights (float32 embeddings and norms after k-bit preparation), is not
    compute_dtype: torch.dtype | None = None

    def describe(self) -> dict[str, Any]:
        described = {"device": str(self.device), "device_name": device_name(self.device),
                     "dtype": dtype_name(self.dtype)}
        if self.compute_dtype is not None:
            described["compute_dtype"] = dtype_name(self.compute_dtype)
        return described


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def device_name(device: torch.device | str) -> str:
    """The chip's name: ``NVIDIA H200`` for a CUDA device, the processor for the CPU."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device.index or 0)
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def model_device(model) -> torch.device:
    return next(model.parameters()).device


def model_dtype(model) -> torch.dtype:
    return next(model.parameters()).dtype


def check_device_setting(value: Any) -> None:
    """Raise PlacementError unless ``value`` is a device setting this module understands (CUDA not required)."""
    text = "auto" if value is None else str(value)
    if text not in ("auto", "cpu", "cuda") and not _CUDA_INDEX.match(text):
        raise PlacementError(f"eval.device={value!r} is not one of: {', '.join(DEVICE_CHOICES)} "
                             "(N: 0, 1, ... without leading zeros)")


def check_dtype_setting(value: Any) -> None:
    text = "auto" if value in (None, "") else str(value)
    if text not in DTYPE_CHOICES:
        raise PlacementError(f"eval.dtype={value!r} is not one of: {', '.join(DTYPE_CHOICES)}")


def resolve_device(setting: str | None, trained_on: torch.device | str | None = None) -> torch.device:
    """The device to generate on. ``trained_on`` is the device training ran on (None when nothing was trained)."""
    check_device_setting(setting)
    text = "auto" if setting is None else str(setting)
    if text == "auto":
        # the accelerator that trained the model, when this machine has it (weights kept by a GPU run may be
        # re-scored on another machine); else the rule for an untrained model
        if trained_on is not None and _available(torch.device(trained_on)):
            return torch.device(trained_on)
        return torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    device = torch.device(text)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise PlacementError(f"eval.device={setting!r} but CUDA is not available here; use eval.device=auto "
                                 "or eval.device=cpu")
        index = device.index or 0
        if index >= torch.cuda.device_count():
            raise PlacementError(f"eval.device={setting!r} but this machine has {torch.cuda.device_count()} CUDA "
                                 f"device(s): use cuda:0 to cuda:{torch.cuda.device_count() - 1}")
        return torch.device("cuda", index)
    return device


def _available(device: torch.device) -> bool:
    if device.type != "cuda":
        return False  # a CPU-trained model follows the rule for an untrained one (CUDA when present)
    return torch.cuda.is_available() and (device.index or 0) < torch.cuda.device_count()


def resolve_dtype(setting: str | None, device: torch.device, own: torch.dtype) -> torch.dtype:
    """The dtype to generate in: ``auto`` is bfloat16 on a GPU that computes in it natively (compute capability
    8 or more: A100, H100, H200), float16 on an older one, ``own`` on CPU. (``torch.cuda.is_bf16_supported()``
    also says yes where bf16 is only emulated, slowly: T4, V100.)"""
    check_dtype_setting(setting)
    text = "auto" if setting in (None, "") else str(setting)
    if text != "auto":
        return getattr(torch, text)
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.get_device_capability(device)[0] >= 8 else torch.float16
    return own


def configured_dtype(model_cfg) -> torch.dtype:
    """``model.dtype`` as a torch dtype; float32 for ``auto`` or unset."""
    dtype = getattr(torch, str(model_cfg.get("dtype") or "float32"), None)
    return dtype if isinstance(dtype, torch.dtype) else torch.float32


def resolve_placement(eval_cfg, model_cfg, model, trained_on: torch.device | str | None = None) -> Placement:
    device = resolve_device(eval_cfg.get("device"), trained_on)
    if getattr(model, "is_quantized", False):  # quantized weights keep the dtypes they were loaded in
        placement = Placement(device, model_dtype(model), quantized_compute_dtype(model))
        if str(eval_cfg.get("dtype") or "auto") != "auto":
            log.warning("eval.dtype=%s is set aside for a quantized model (QLoRA): it generates in the dtypes it "
                        "was loaded in (%s, quantized layers computing in %s), as result.json's placement records",
                        eval_cfg.get("dtype"), placement.dtype, placement.compute_dtype)
        return placement
    dtype = resolve_dtype(eval_cfg.get("dtype"), device, configured_dtype(model_cfg))
    warn_float16_overflow(model, dtype, eval_cfg.get("dtype"), device)
    return Placement(device, dtype)


def warn_float16_overflow(model, dtype: torch.dtype, setting: str | None, device: torch.device) -> None:
    """A warning (the cell runs as asked) where an architecture known to overflow in float16 will generate in it:
    eval.dtype=auto picks float16 on a GPU of compute capability below 8."""
    model_type = str(getattr(getattr(model, "config", None), "model_type", None) or "")
    if dtype != torch.float16 or not model_type.startswith(FLOAT16_OVERFLOWS):
        return
    if setting not in (None, "", "auto"):
        why = f"eval.dtype={setting}"
    elif device.type == "cuda":
        why = f"eval.dtype=auto on {device}, a GPU of compute capability below 8"
    else:
        why = "eval.dtype=auto on the CPU, which follows model.dtype"
    log.warning("the model (model_type %s) generates in float16 (%s), in which Gemma 3 is known to overflow "
                "(huggingface/transformers#36822): its scores may be garbage; set eval.dtype=float32 (or bfloat16)",
                model_type, why)


def quantized_compute_dtype(model) -> torch.dtype | None:
    """The dtype a quantized model's quantized layers compute in (bitsandbytes' ``bnb_4bit_compute_dtype``), as
    its config records it; None where it records none."""
    config = getattr(getattr(model, "config", None), "quantization_config", None)
    value = config.get("bnb_4bit_compute_dtype") if isinstance(config, dict) else \
        getattr(config, "bnb_4bit_compute_dtype", None)
    if isinstance(value, str):
        value = getattr(torch, value.removeprefix("torch."), None)
    return value if isinstance(value, torch.dtype) else None


# transformers' rotary embeddings: the inverse frequencies in use and the ones they were initialised with; models
# with several attention types name one pair per type (Gemma 3: ``sliding_attention_inv_freq``, ...)
ROTARY_BUFFER_SUFFIXES = ("inv_freq", "original_inv_freq")


def to_device(model, device: torch.device):
    """The model on ``device`` (in place); frees the CUDA cache left by training first. A CUDA device also becomes
    the current one: streams and graphs created without a device (CUDA graph capture) land on the current device,
    and a graph captured on another GPU than the model's records nothing."""
    if device.type == "cuda":
        import gc

        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.set_device(device)
    return model.to(device)


def to_dtype(model, dtype: torch.dtype):
    return model if model_dtype(model) == dtype else cast_weights(model, dtype)


def cast_weights(model, dtype: torch.dtype):
    """``model.to(dtype)`` (in place), except for the rotary embeddings' float32 frequency buffers (``inv_freq``).

    ``from_pretrained(dtype=torch.bfloat16)``, as Hugging Face and lm-eval load a model, keeps them in float32:
    transformers computes the rotary angles in float32. Cast along with the weights, they would be rounded to
    bf16, and every angle beyond the first few hundred positions with them.
    """
    kept = float32_rotary_buffers(model)
    model = model.to(dtype)
    restore_buffers(kept)
    return model


def float32_rotary_buffers(model) -> list[tuple[torch.nn.Module, str, torch.Tensor]]:
    """(module, name, tensor) of each float32 rotary frequency buffer of ``model``; casting or moving the model
    replaces the tensors, not the modules, so ``restore_buffers`` can put them back."""
    return [(module, name, buffer) for module in model.modules()
            for name, buffer in module.named_buffers(recurse=False)
            if name.endswith(ROTARY_BUFFER_SUFFIXES) and buffer.dtype == torch.float32]


def restore_buffers(kept: list[tuple[torch.nn.Module, str, torch.Tensor]]) -> None:
    """Put back the buffers ``float32_rotary_buffers`` kept where a cast changed their dtype (on the device the
    cast one is on)."""
    for module, name, buffer in kept:
        current = getattr(module, name)
        if current.dtype != buffer.dtype:
            setattr(module, name, buffer.to(current.device))
