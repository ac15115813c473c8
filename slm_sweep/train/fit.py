"""Train one cell: build the Lightning Trainer from the trainer config, fit, and report what happened."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import torch

from slm_sweep.train.callbacks import ThroughputMonitor, accelerator_name, bf16_peak_flops, peak_memory_mb
from slm_sweep.train.data import EncodedDataModule
from slm_sweep.train.module import CausalLMModule

log = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"


@dataclass
class TrainOutcome:
    train_time_s: float
    train_steps: int
    train_loss: float | None
    val_loss: float | None
    perf: dict[str, Any] = field(default_factory=dict)


def accumulation_steps(batch_size: int, micro_batch_size: int, world_size: int = 1) -> int:
    """Micro-batches per optimizer step so that the effective batch stays ``batch_size`` sequences."""
    per_step = micro_batch_size * world_size
    if batch_size % per_step:
        raise ValueError(
            f"trainer.batch_size={batch_size} is not a multiple of trainer.micro_batch_size={micro_batch_size}"
            f" x {world_size} device(s)"
        )
    return batch_size // per_step


def base_parameter_count(model) -> int:
    """Parameters of the frozen or trained base model, without adapter weights."""
    return sum(p.numel() for n, p in model.named_parameters() if "lora_" not in n)


def fit(model, train: Sequence[dict], val: Sequence[dict], trainer_cfg: Mapping[str, Any], method_cfg: Mapping[str, Any],
        seed: int, out_dir: str | Path, pad_token_id: int, loggers: list | None = None,
        extra_callbacks: list | None = None, resume_from: str | Path | None = None) -> TrainOutcome:
    out_dir = Path(out_dir)
    devices = trainer_cfg.get("devices", 1)
    world_size = devices if isinstance(devices, int) and devices > 0 else 1
    micro = int(trainer_cfg.get("micro_batch_size") or trainer_cfg["batch_size"])
    accumulate = accumulation_steps(int(trainer_cfg["batch_size"]), micro, world_size)
    max_steps = int(trainer_cfg["max_steps"])

    if trainer_cfg.get("gradient_checkpointing"):
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if hasattr(model, "enable_input_require_grads"):
            model.enable_input_require_grads()
    module = CausalLMModule(
        model, lr=float(method_cfg["lr"]), weight_decay=float(trainer_cfg.get("weight_decay", 0.0)),
        warmup_steps=int(trainer_cfg.get("warmup_steps", 0)), max_steps=max_steps,
        fused_adamw=trainer_cfg.get("fused_adamw"),
    )
    if trainer_cfg.get("compile"):
        module.model = torch.compile(module.model)
    data = EncodedDataModule(train, val, micro, pad_token_id, seed=seed,
                             num_workers=int(trainer_cfg.get("num_workers", 0)),
                             pad_to_multiple_of=trainer_cfg.get("pad_to_multiple_of"))

    flops_per_token = (6 if method_cfg["name"] == "full" else 4) * base_parameter_count(model)
    throughput = ThroughputMonitor(flops_per_token, bf16_peak_flops(accelerator_name()),
                                   int(trainer_cfg.get("log_every_n_steps", 10)))
    callbacks = [throughput, *(extra_callbacks or [])]
    ckpt_every = trainer_cfg.get("checkpoint_every_n_steps")
    if ckpt_every:
        from lightning.pytorch.callbacks import ModelCheckpoint

        callbacks.append(ModelCheckpoint(dirpath=out_dir / CHECKPOINT_DIR, save_last=True, save_top_k=0,
                                         every_n_train_steps=int(ckpt_every), save_weights_only=False))

    val_every = trainer_cfg.get("val_check_interval")
    trainer = L.Trainer(
        accelerator=trainer_cfg.get("accelerator", "auto"),
        devices=devices,
        strategy=trainer_cfg.get("strategy", "auto"),
        precision=trainer_cfg.get("precision", "32-true"),
        max_steps=max_steps,
        max_epochs=-1,
        accumulate_grad_batches=accumulate,
        gradient_clip_val=trainer_cfg.get("gradient_clip_val"),
        # Periodic validation counts micro-batches; without it, validation runs once, after training.
        val_check_interval=int(val_every) if val_every else None,
        check_val_every_n_epoch=None if val_every else 10**9,
        limit_val_batches=trainer_cfg.get("limit_val_batches", 1.0),
        num_sanity_val_steps=0,
        logger=loggers or False,
        callbacks=callbacks,
        enable_checkpointing=bool(ckpt_every),
        enable_progress_bar=bool(trainer_cfg.get("progress_bar", True)),
        enable_model_summary=False,
        log_every_n_steps=int(trainer_cfg.get("log_every_n_steps", 10)),
        deterministic=bool(trainer_cfg.get("deterministic", False)),
        default_root_dir=str(out_dir),
    )
    resume_from = resume_from or last_checkpoint(out_dir)
    if resume_from:
        log.info("resuming training from %s", resume_from)
    start = time.perf_counter()
    trainer.fit(module, datamodule=data, ckpt_path=str(resume_from) if resume_from else None)
    # A validation pass on the final weights, so val/loss always describes the model that is evaluated.
    if val:
        trainer.validate(module, datamodule=data, verbose=False)
    train_time = time.perf_counter() - start

    perf = throughput.summary(world_size)
    perf["peak_memory_mb"] = peak_memory_mb()
    return TrainOutcome(train_time_s=train_time, train_steps=trainer.global_step,
                        train_loss=module.last_train_loss, val_loss=module.last_val_loss, perf=perf)


def last_checkpoint(out_dir: str | Path) -> Path | None:
    path = Path(out_dir) / CHECKPOINT_DIR / "last.ckpt"
    return path if path.is_file() else None
