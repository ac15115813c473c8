"""Train one cell: build the Lightning Trainer from the trainer config, fit, and report what happened."""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Mapping, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import torch

from slm_sweep.config import graph_replay_step_problem, graph_replaying_setting, static_shape_count
from slm_sweep.methods import has_adapters
from slm_sweep.settings import TrainerSettings
from slm_sweep.train.callbacks import (
    ThroughputMonitor,
    accelerator_name,
    attention_flops_per_pair,
    bf16_peak_flops,
    flops_per_token,
)
from slm_sweep.train.checkpoint_io import AtomicCheckpointIO
from slm_sweep.train.compilation import (
    compile_counters,
    compile_figures_since,
    compile_in_place,
    remove_compiled,
    repeated_layers,
    tracing_settings,
)
from slm_sweep.train.data import EncodedDataModule
from slm_sweep.train.module import CausalLMModule
from slm_sweep.train.optimizers import as_container
from slm_sweep.train.rank_allocation import training_problem

log = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"


@dataclass
class TrainOutcome:
    train_time_s: float
    train_steps: int
    train_loss: float | None
    val_loss: float | None
    perf: dict[str, Any] = field(default_factory=dict)
    # where and how training ran: device (e.g. cuda:0), device_name, precision (Lightning's), dtype of the
    # weights, compiled (what torch.compile compiled, or None)
    placement: dict[str, Any] = field(default_factory=dict)


def micro_batch_size(trainer_cfg: Mapping[str, Any]) -> int:
    return int(trainer_cfg.get("micro_batch_size") or trainer_cfg["batch_size"])


def optional_int(value) -> int | None:
    return int(value) if value else None


def prepare_model(model, trainer_cfg: Mapping[str, Any]) -> dict | None:
    """Train mode (Hugging Face loads models in eval mode), gradient checkpointing and torch.compile, as the
    trainer config asks; return what was compiled (None: nothing)."""
    scope = str(trainer_cfg.get("compile_scope") or "layers")
    whole_model = bool(trainer_cfg.get("compile")) and (scope == "model" or not repeated_layers(model))
    problem = training_problem(model, trainer_cfg, whole_model,
                               graph_replaying_setting(trainer_cfg.get("compile_mode"),
                                                       trainer_cfg.get("compile_backend")))
    if problem:
        raise ValueError(problem)
    model.train()
    if trainer_cfg.get("gradient_checkpointing"):
        kwargs = {"use_reentrant": False}
        if hasattr(model, "activation_checkpointing_enable"):
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:  # transformers 4.x; frozen embeddings must still pass gradients on to the adapters
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
            model.enable_input_require_grads()
    if trainer_cfg.get("compile"):
        # gradient checkpointing's input-gradient hook (adapters) breaks the frame before the layers, after which
        # a region cannot be stamped out (an error in Dynamo); the layers are then traced unrolled
        regions = bool(trainer_cfg.get("compile_regions", True)) and not trainer_cfg.get("gradient_checkpointing")
        return compile_in_place(model, scope, trainer_cfg.get("compile_mode"),
                                str(trainer_cfg.get("compile_backend") or "inductor"), regions)
    return None


def build_data(train: Sequence[dict], val: Sequence[dict], trainer_cfg: Mapping[str, Any], seed: int,
               pad_token_id: int) -> EncodedDataModule:
    return EncodedDataModule(
        train, val, batch_size=int(trainer_cfg["batch_size"]), micro_batch_size=micro_batch_size(trainer_cfg),
        pad_token_id=pad_token_id, seed=seed, max_tokens=optional_int(trainer_cfg.get("micro_batch_tokens")),
        packing=bool(trainer_cfg.get("packing", False)), num_workers=int(trainer_cfg.get("num_workers", 0)),
        pad_to_multiple_of=optional_int(trainer_cfg.get("pad_to_multiple_of")),
    )


def build_module(model, trainer_cfg: Mapping[str, Any], method_cfg: Mapping[str, Any],
                 compiled: dict | None = None, seed: int = 0) -> CausalLMModule:
    """The training module; ``compiled`` is what ``prepare_model`` compiled (its mode or backend decides whether
    the module must keep the step safe for CUDA-graph replays)."""
    replays_graphs = bool(compiled) and graph_replaying_setting(compiled.get("mode"), compiled.get("backend")) is not None
    problem = graph_replay_step_problem(trainer_cfg) if replays_graphs else None
    if problem:
        raise ValueError(problem)
    clip = trainer_cfg.get("gradient_clip_val")
    return CausalLMModule(
        model, lr=float(method_cfg["lr"]), weight_decay=float(trainer_cfg.get("weight_decay", 0.0)),
        warmup_steps=int(trainer_cfg.get("warmup_steps", 0)), max_steps=int(trainer_cfg["max_steps"]),
        optimizer=as_container(method_cfg.get("optimizer")), lr_scale=as_container(method_cfg.get("lr_scale")),
        lr_schedule=str(trainer_cfg.get("lr_schedule") or TrainerSettings.lr_schedule),
        fused_adamw=trainer_cfg.get("fused_adamw"), gradient_clip_val=float(clip) if clip else None,
        log_every_n_steps=int(trainer_cfg.get("log_every_n_steps", 10)),
        replays_graphs=replays_graphs, seed=seed,
    )


def build_trainer(trainer_cfg: Mapping[str, Any], out_dir: Path, callbacks: list, loggers: list | None,
                  checkpointing: bool) -> L.Trainer:
    val_every = trainer_cfg.get("val_check_interval")
    return L.Trainer(
        accelerator=trainer_cfg.get("accelerator", "auto"),
        devices=trainer_cfg.get("devices", 1),
        strategy=trainer_cfg.get("strategy", "auto"),
        precision=trainer_cfg.get("precision", "32-true"),
        max_steps=int(trainer_cfg["max_steps"]),
        max_epochs=-1,
        # Each device plans its own share of every optimizer step (see batching).
        use_distributed_sampler=False,
        # A data loader per epoch: Lightning takes an epoch's micro-batch count from its data loader's length, read
        # when it is loaded, and under a token budget each epoch's shuffle has a count of its own (see data).
        reload_dataloaders_every_n_epochs=1,
        # Periodic validation counts micro-batches; without it, validation runs once, after training.
        val_check_interval=int(val_every) if val_every else None,
        check_val_every_n_epoch=None if val_every else 10**9,
        # every validation micro-batch: they are sorted longest first, so a part of them would be a biased loss
        limit_val_batches=1.0,
        num_sanity_val_steps=0,
        logger=loggers or False,
        callbacks=callbacks,
        enable_checkpointing=checkpointing,
        enable_progress_bar=bool(trainer_cfg.get("progress_bar", True)),
        enable_model_summary=False,
        log_every_n_steps=int(trainer_cfg.get("log_every_n_steps", 10)),
        deterministic=bool(trainer_cfg.get("deterministic", False)),
        default_root_dir=str(out_dir),
        plugins=[AtomicCheckpointIO()],
    )


def configured_callbacks(callbacks_cfg: Mapping[str, Any] | None, progress_bar: bool = True) -> list:
    """The Lightning callbacks of conf/callbacks/: one per named ``_target_`` entry (null entries are off).
    Without ``progress_bar`` (trainer.progress_bar=false), progress-bar callbacks are left out."""
    from hydra.utils import instantiate
    from lightning.pytorch.callbacks import ProgressBar

    callbacks = []
    for (_name, entry), cls in zip(_callback_entries(callbacks_cfg), callback_classes(callbacks_cfg)):
        if issubclass(cls, ProgressBar) and not progress_bar:
            continue
        callbacks.append(instantiate(entry, _convert_="all"))
    return callbacks


def callback_classes(callbacks_cfg: Mapping[str, Any] | None) -> list[type]:
    """The class of each callback entry, imported and checked to be a Lightning callback (ConfigError naming the
    entry otherwise): cells call it before reading any data, so a misspelt class costs nothing."""
    from slm_sweep.config import target_class

    return [target_class(f"callbacks.{name}", entry, "callback", "callbacks", (L.Callback,))
            for name, entry in _callback_entries(callbacks_cfg)]


def _callback_entries(callbacks_cfg: Mapping[str, Any] | None) -> list[tuple[str, Any]]:
    return [(name, entry) for name, entry in (callbacks_cfg or {}).items() if entry is not None]


def fit(model, train: Sequence[dict], val: Sequence[dict], trainer_cfg: Mapping[str, Any], method_cfg: Mapping[str, Any],
        seed: int, out_dir: str | Path, pad_token_id: int, loggers: list | None = None,
        extra_callbacks: list | None = None, resume_from: str | Path | None = None,
        callbacks_cfg: Mapping[str, Any] | None = None, resume_own: bool = True) -> TrainOutcome:
    """Train ``model`` in place for ``trainer.max_steps`` optimizer steps of ``trainer.batch_size`` sequences.

    Training resumes from ``resume_from``, else (``resume_own``) from the checkpoint ``out_dir`` holds; with
    ``resume_own=False`` (``resume.enabled=false``) and no ``resume_from`` it starts afresh.

    The Trainer's callbacks: the throughput monitor (what result.json reports), those of ``callbacks_cfg``
    (conf/callbacks/), then ``extra_callbacks``; with ``trainer.checkpoint_every_n_steps``, the checkpoint callback
    (what resume reads).
    """
    out_dir = Path(out_dir)
    upcast = trainable_in_float32(model, str(trainer_cfg.get("precision", "32-true")))
    flops = flops_per_token(model, adapters=has_adapters(method_cfg))
    compiled = prepare_model(model, trainer_cfg)
    module = build_module(model, trainer_cfg, method_cfg, compiled, seed)
    data = build_data(train, val, trainer_cfg, seed, pad_token_id)

    throughput = ThroughputMonitor(flops, None, int(trainer_cfg.get("log_every_n_steps", 10)),
                                   int(trainer_cfg.get("throughput_warmup_steps", 1)),
                                   flops_per_pair=attention_flops_per_pair(model))
    callbacks = [throughput,
                 *configured_callbacks(callbacks_cfg, progress_bar=bool(trainer_cfg.get("progress_bar", True))),
                 *(extra_callbacks or [])]
    ckpt_every = trainer_cfg.get("checkpoint_every_n_steps")
    if ckpt_every:
        from slm_sweep.train.interrupt import StepCheckpoint

        callbacks.append(StepCheckpoint(dirpath=out_dir / CHECKPOINT_DIR, save_last=True, save_top_k=0,
                                         every_n_train_steps=int(ckpt_every), save_weights_only=False))
    trainer = build_trainer(trainer_cfg, out_dir, callbacks, loggers, checkpointing=bool(ckpt_every))
    # the chip training runs on: a CPU run on a GPU machine has no bf16 peak (and gets no MFU)
    throughput.peak_flops = bf16_peak_flops(accelerator_name(trainer.strategy.root_device))

    resume_from = resume_from or (last_checkpoint(out_dir) if resume_own else None)
    if resume_from:
        log.info("resuming training from %s", resume_from)
    start = time.perf_counter()
    with without_cudnn_attention(trainer.strategy.root_device), warnings.catch_warnings():
        # StepBatchSampler resumes mid-epoch at the checkpoint's step (it skips the finished steps): Lightning's
        # warning that the data loader cannot does not apply.
        warnings.filterwarnings("ignore", message="You're resuming from a checkpoint that ended before the epoch")
        before = compile_counters()
        try:
            shapes = static_shape_count(trainer_cfg) if compiled and compiled.get("static_shapes") else None
            with tracing_settings(shapes) if compiled and "skipped" not in compiled else nullcontext():
                trainer.fit(module, datamodule=data, ckpt_path=str(resume_from) if resume_from else None)
            # read as training ends, not assumed from the device: on if training turned it back on
            cudnn_attention = (torch.backends.cuda.cudnn_sdp_enabled()
                               if trainer.strategy.root_device.type == "cuda" else None)
            if not throughput.result:  # resumed from a checkpoint of the last step: Lightning trains nothing
                throughput.result = throughput.summary(trainer)
        finally:
            if compiled:  # the last validation pass and evaluation run the eager model (no inference-mode recompile)
                if "scope" in compiled:
                    compiled.update(compile_figures_since(before))
                remove_compiled(model, compiled)
        train_time = time.perf_counter() - start
        # A validation pass on the final weights, so val/loss always describes the model that is evaluated; timed
        # apart: its share of a cell's time differs between methods (DoRA's forward costs more than LoRA's).
        validated = time.perf_counter()
        if val:
            trainer.validate(module, datamodule=data, verbose=False)
        final_validation = time.perf_counter() - validated if val else None
    return TrainOutcome(train_time_s=train_time, train_steps=trainer.global_step,
                        train_loss=module.last_train_loss, val_loss=module.last_val_loss,
                        perf={**throughput.result, "final_validation_s": final_validation,
                              "train_oom_halvings": module.oom_halvings,
                              **module.clipping_figures(), **module.loss_figures()},
                        placement={**training_placement(trainer, model, cudnn_attention), "compiled": compiled,
                                   **({"trainable_upcast_to_float32": upcast} if upcast else {})})


def trainable_in_float32(model, precision: str) -> int:
    """Upcast trainable parameters held in a half dtype to float32; returns how many there were.

    Mixed precision computes in bf16 on float32 master weights. Weights loaded in bf16 (``model.dtype=bfloat16``,
    or ``auto`` on a bf16 checkpoint) would instead have AdamW update bf16 values, losing every update under half
    a bf16 step: at full fine-tuning's 2e-5 most of them, while PEFT keeps its adapters in float32 whatever the
    base's dtype, a handicap for full fine-tuning alone. A half "true" precision (``bf16-true``) asks for half
    weights: left as they are."""
    if precision.endswith("-true") and not precision.startswith(("32", "64")):
        return 0
    upcast = 0
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.requires_grad and parameter.dtype in (torch.bfloat16, torch.float16):
                parameter.data = parameter.data.float()
                upcast += 1
    if upcast:
        log.warning("%d trainable parameter tensors were in a half dtype: upcast to float32 for %s training",
                    upcast, precision)
    return upcast


@contextmanager
def without_cudnn_attention(device: torch.device | str):
    """Training on CUDA without cuDNN's attention kernels, which PyTorch 2.11 prefers on Hopper chips and whose
    backward returns NaN gradients for a masked query of length 64 mod 128 whose log-sum-exp is below about -88.7
    (pytorch/pytorch#196678; seen training Qwen2.5-0.5B): padded batches of every length occur in training. The
    flash, memory-efficient and math kernels remain. The setting is process-wide, so it is restored afterwards
    (generation keeps PyTorch's choice: the fault is in the backward pass)."""
    if torch.device(device).type != "cuda":
        yield
        return
    enabled = torch.backends.cuda.cudnn_sdp_enabled()
    torch.backends.cuda.enable_cudnn_sdp(False)
    try:
        yield
    finally:
        torch.backends.cuda.enable_cudnn_sdp(enabled)


def training_placement(trainer: L.Trainer, model, cudnn_attention: bool | None = None) -> dict[str, Any]:
    """Where the run trained. Read from the strategy: Lightning moves the model back to the CPU when fit ends.
    ``cudnn_attention``: whether cuDNN's attention kernels were on while it trained (None off CUDA)."""
    from slm_sweep.placement import device_name, dtype_name, model_dtype

    device = trainer.strategy.root_device
    return {"device": str(device), "device_name": device_name(device), "precision": str(trainer.precision),
            "dtype": dtype_name(model_dtype(model)), "devices": trainer.num_devices,
            "cudnn_attention": cudnn_attention}


def last_checkpoint(out_dir: str | Path) -> Path | None:
    path = Path(out_dir) / CHECKPOINT_DIR / "last.ckpt"
    return path if path.is_file() else None
