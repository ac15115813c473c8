"""The optimizer and learning-rate schedule of a trained method.

- ``method.optimizer``: a ``torch.optim.Optimizer`` class named by ``_target_`` with its own arguments
  (``{_target_: torch.optim.SGD, momentum: 0.9}``); absent or null: AdamW with torch's defaults. It is built over the
  trainable parameters with ``lr=method.lr``; the learning rate and weight decay are never its arguments (they are
  ``method.lr`` and ``trainer.weight_decay``, set per parameter group).
- ``method.lr_scale``: parameters trained at a multiple of ``method.lr``, keyed by a part of their name
  (``{lora_B: 16}``: LoRA+, the B matrices at 16 times A's rate). A key matches a parameter whose dotted name
  holds it as whole components (``lora_B`` matches ``...q_proj.lora_B.default.weight``, not ``lora_B2``).
- ``trainer.lr_schedule``: the factor on every group's rate at each optimizer step, after a linear warm-up of
  ``trainer.warmup_steps``: ``cosine`` decays to zero at ``max_steps``, ``linear`` likewise in a straight line,
  ``constant`` keeps it.

Weight decay (``trainer.weight_decay``) applies to parameters of two or more dimensions only, never to vectors
(norms, biases, DoRA magnitudes). AdaLoRA's singular values are decayed: peft stores them as an (r, 1) column, and a
rule by shape cannot tell it from a rank-1 LoRA matrix.
"""

from __future__ import annotations

import difflib
import inspect
import math
from collections.abc import Iterable, Mapping
from typing import Any

import torch

from slm_sweep.settings import LR_SCHEDULES, TrainerSettings

# what the training loop sets itself, per parameter group; an optimizer block that sets one would be overridden
OPTIMIZER_ARGUMENTS_SET_BY_THE_LOOP = {"params": "the trainable parameters",
                                       "lr": "method.lr (its groups' rates: method.lr_scale)",
                                       "weight_decay": "trainer.weight_decay (applied to matrices only)"}


class OptimizerError(ValueError):
    """An optimizer setting cannot be applied; the message names the setting and what is allowed."""


def optimizer_class(spec: Mapping[str, Any] | None) -> type[torch.optim.Optimizer]:
    """The class ``method.optimizer._target_`` names (AdamW when ``spec`` is None), checked to be an optimizer whose
    arguments include the block's settings and none that the training loop sets."""
    from hydra.utils import get_class

    if spec is None:
        return torch.optim.AdamW
    target = spec.get("_target_") if isinstance(spec, Mapping) else None
    example = "{_target_: torch.optim.SGD, momentum: 0.9}"
    if not isinstance(target, str) or "." not in target:
        raise OptimizerError(f"method.optimizer={spec!r} must be null (AdamW) or a mapping with a _target_ naming a "
                             f"torch.optim.Optimizer class, e.g. {example}")
    hydra_keys = sorted(str(key) for key in spec if str(key).startswith("_") and key != "_target_")
    if hydra_keys:
        raise OptimizerError(f"method.optimizer.{hydra_keys[0]} is not read: the training loop calls the class with "
                             "the parameter groups, lr and the block's named settings only")
    try:
        cls = get_class(target)
    except ValueError as err:  # imported, but not a class
        raise OptimizerError(f"method.optimizer._target_={target!r} is not a class ({err}); name a "
                             f"torch.optim.Optimizer class, e.g. {example}") from None
    except Exception as err:  # noqa: BLE001 - any import problem is the same mistake in the config
        raise OptimizerError(f"method.optimizer._target_={target!r} cannot be imported ({err}); name a "
                             f"torch.optim.Optimizer class, e.g. {example}") from None
    if not (isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer)) or cls is torch.optim.Optimizer:
        raise OptimizerError(f"method.optimizer._target_={target!r} is not a torch.optim.Optimizer class; "
                             f"e.g. {example}")
    settings = optimizer_settings(spec)
    for key, owner in OPTIMIZER_ARGUMENTS_SET_BY_THE_LOOP.items():
        if key in settings:
            raise OptimizerError(f"method.optimizer.{key}={settings[key]!r} is set by the training loop from "
                                 f"{owner}: set it there")
    if not takes_keyword(cls, None):
        taken = [name for name in inspect.signature(cls).parameters
                 if name not in ("self", "params", *OPTIMIZER_ARGUMENTS_SET_BY_THE_LOOP)]
        unknown = sorted(set(settings) - set(taken))
        if unknown:
            close = difflib.get_close_matches(unknown[0], taken, n=1)
            raise OptimizerError(f"method.optimizer.{unknown[0]} is not an argument of {target}"
                                 f"{f' (did you mean {close[0]}?)' if close else ''}; "
                                 + (f"its arguments are: {', '.join(taken)}" if taken else
                                    "it takes no setting of its own (the training loop sets its parameters, lr "
                                    "and, where taken, weight_decay)"))
    return cls


def takes_keyword(cls: type, name: str | None) -> bool:
    """Whether ``cls(...)`` takes the keyword ``name`` (None: any keyword, through ``**kwargs``)."""
    parameters = inspect.signature(cls).parameters
    return (name is not None and name in parameters) or any(
        p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())


def check_optimizer(spec: Mapping[str, Any] | None, lr: float, weight_decay: float) -> None:
    """``spec``'s optimizer built as training builds it, over a small matrix and a vector, and stepped once on a
    dense gradient: a class that refuses parameter groups (LBFGS), dense gradients (SparseAdam), or a setting of
    the wrong shape (``betas: 0.9``) fails here, before any model loads, not after. A class that ignores weight
    decay (takes no ``weight_decay``) is refused with a weight decay to apply."""
    cls = optimizer_class(spec)
    if weight_decay and not takes_keyword(cls, "weight_decay"):
        raise OptimizerError(f"method.optimizer._target_={spec.get('_target_')!r} takes no weight_decay, so "
                             f"trainer.weight_decay={weight_decay} would not be applied: set trainer.weight_decay=0")
    matrix, vector = torch.nn.Parameter(torch.ones(2, 2)), torch.nn.Parameter(torch.ones(2))
    try:
        optimizer = build_optimizer([matrix, vector], lr, weight_decay, spec, fused=False)
        matrix.grad, vector.grad = torch.full_like(matrix, 0.5), torch.full_like(vector, 0.5)
        optimizer.step()
    except Exception as err:  # noqa: BLE001 - whatever the class refuses, the config is at fault
        raise OptimizerError(f"method.optimizer ({spec.get('_target_') if spec else 'AdamW'}) cannot train as the "
                             f"training loop uses it (parameter groups, one step on dense gradients): "
                             f"{type(err).__name__}: {err}") from None


def optimizer_settings(spec: Mapping[str, Any] | None) -> dict[str, Any]:
    """The block's arguments to its class, without Hydra's own keys; lists as tuples (``betas: [0.9, 0.95]``)."""
    return {str(key): tuple(value) if isinstance(value, list) else value
            for key, value in (spec or {}).items() if not str(key).startswith("_")}


def as_container(value: Any) -> Any:
    """A config node as plain Python (``method.optimizer`` from a composed config), anything else as it is."""
    from omegaconf import OmegaConf

    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


def matching_keys(name: str, lr_scale: Mapping[str, float]) -> list[str]:
    """The keys of ``lr_scale`` that the parameter named ``name`` holds as whole components of its name."""
    return [key for key in lr_scale if f".{key}." in f".{name}."]


def scale_of(name: str, lr_scale: Mapping[str, float]) -> float:
    """The factor on ``method.lr`` of the parameter named ``name`` (1 where no key of ``lr_scale`` matches); two
    keys matching one parameter are an error, since either factor could be meant."""
    matched = matching_keys(name, lr_scale)
    if len(matched) > 1:
        raise OptimizerError(f"method.lr_scale keys {matched} all match the parameter {name}: give each parameter "
                             "one factor")
    return float(lr_scale[matched[0]]) if matched else 1.0


def check_lr_scale(lr_scale: Any) -> dict[str, float]:
    """``method.lr_scale`` as a mapping of name parts to positive factors (empty: every group at method.lr)."""
    if lr_scale is None:
        return {}
    if not isinstance(lr_scale, Mapping):
        raise OptimizerError(f"method.lr_scale={lr_scale!r} must be a mapping of parameter-name parts to factors "
                             "on method.lr, e.g. {lora_B: 16}")
    for key, factor in lr_scale.items():
        if not isinstance(key, str) or not key or key.startswith(".") or key.endswith("."):
            raise OptimizerError(f"method.lr_scale key {key!r} must be a part of a parameter's dotted name, "
                                 "such as lora_B or mlp.down_proj")
        if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not 0 < factor < math.inf:
            raise OptimizerError(f"method.lr_scale.{key}={factor!r} must be a positive number")
    return {str(key): float(factor) for key, factor in lr_scale.items()}


def parameter_scales(named_parameters: Iterable[tuple[str, torch.nn.Parameter]],
                     lr_scale: Mapping[str, float] | None) -> dict[int, float]:
    """Each trainable parameter's factor on method.lr, by ``id``; every key of ``lr_scale`` must match one (a
    misspelt key would otherwise train everything at one rate under a method that says otherwise)."""
    lr_scale = check_lr_scale(lr_scale)
    named_parameters = list(named_parameters)
    scales, used = {}, set()
    for name, param in named_parameters:
        if param.requires_grad:
            scales[id(param)] = scale_of(name, lr_scale)
            used |= set(matching_keys(name, lr_scale))
    unused = sorted(set(lr_scale) - used)
    if unused:
        raise OptimizerError(f"method.lr_scale keys {unused} match no trainable parameter of this model; its "
                             f"trainable parameters are named like {trainable_name_examples(named_parameters)}")
    return scales


# the components a wrapper inserts in its parameters' names: FSDP, activation checkpointing, torch.compile
WRAPPER_COMPONENTS = ("_fsdp_wrapped_module", "_checkpoint_wrapped_module", "_orig_mod")


def unwrapped_name(name: str) -> str:
    """A parameter's name as the model had it before a strategy or compiler wrapped its modules."""
    return ".".join(part for part in name.split(".") if part not in WRAPPER_COMPONENTS)


def trainable_name_examples(named_parameters, count: int = 3) -> str:
    names = [name for name, param in named_parameters if param.requires_grad]
    return ", ".join(names[:count]) + (", ..." if len(names) > count else "") if names else "(none)"


def parameter_groups(params: Iterable[torch.nn.Parameter], lr: float, weight_decay: float = 0.0,
                     matrices: set[int] | None = None, scales: Mapping[int, float] | None = None) -> list[dict]:
    """The trainable parameters in groups of one weight decay and one rate: for each factor (1 first), the
    matrices decayed, then the vectors not.

    ``matrices``: the ids of the parameters that are matrices, taken before a sharding strategy flattens them
    (FSDP hands the optimizer 1-D shards); None: read from the parameters' shapes. ``scales``: each parameter's
    factor on ``lr`` by id (``parameter_scales``); None or missing: 1.
    """
    params = [p for p in params if p.requires_grad]
    scales = scales or {}
    factor = {id(p): float(scales.get(id(p), 1.0)) for p in params}
    groups = []
    for scale in sorted(set(factor.values()) | {1.0}, key=lambda s: (s != 1.0, s)):
        members = [p for p in params if factor[id(p)] == scale]
        if scale != 1.0 and not members:
            continue
        decayed = [(id(p) in matrices) if matrices is not None else p.ndim >= 2 for p in members]
        for decay, rate in ((True, weight_decay), (False, 0.0)):
            group = {"params": [p for p, d in zip(members, decayed) if d == decay], "weight_decay": rate}
            if scale != 1.0:
                group["lr"] = lr * scale
            groups.append(group)
    return groups


def build_optimizer(params: Iterable[torch.nn.Parameter], lr: float, weight_decay: float = 0.0,
                    spec: Mapping[str, Any] | None = None, fused: bool | None = None, matrices: set[int] | None = None,
                    scales: Mapping[int, float] | None = None) -> torch.optim.Optimizer:
    """``spec``'s optimizer (AdamW when None) over ``parameter_groups``.

    ``fused`` (``trainer.fused_adamw``) applies to an optimizer class that takes ``fused`` and whose block does not
    set it: None takes the fused kernel wherever torch has one for the parameters' device (CUDA, and CPU since
    torch 2.4, where AdamW's is several times faster than the per-tensor loop), the default kernel elsewhere.
    """
    cls = optimizer_class(spec)
    settings = optimizer_settings(spec)
    groups = parameter_groups(params, lr, weight_decay, matrices, scales)
    if "fused" in settings or "fused" not in inspect.signature(cls).parameters:
        return cls(groups, lr=lr, **settings)
    if fused is None:
        try:
            return cls(groups, lr=lr, fused=True, **settings)
        except RuntimeError:  # no fused kernel for this device or dtype
            fused = False
    return cls(groups, lr=lr, fused=bool(fused) or None, **settings)


def lr_factor(step: int, warmup_steps: int, max_steps: int, schedule: str = TrainerSettings.lr_schedule) -> float:
    """Linear warm-up over ``warmup_steps``, then ``schedule``'s factor (cosine or linear decay to zero at
    ``max_steps``, or constant)."""
    if warmup_steps and step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    span = max(1, max_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    if schedule == "linear":
        return 1.0 - progress
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    raise OptimizerError(f"trainer.lr_schedule={schedule!r} is none of: {', '.join(LR_SCHEDULES)}")
