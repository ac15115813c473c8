"""The LightningModule that trains a Hugging Face causal LM, with or without PEFT adapters."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import statistics
from collections.abc import Mapping
from typing import Any

import lightning as L
import torch

from slm_sweep.data.encode import split_micro_batch
from slm_sweep.memory import is_out_of_memory, release_cached_memory
from slm_sweep.placement import float32_rotary_buffers, restore_buffers
from slm_sweep.settings import TrainerSettings
from slm_sweep.train.batching import StepBatchSampler
from slm_sweep.train.optimizers import build_optimizer, lr_factor, parameter_scales, unwrapped_name
from slm_sweep.train.rank_allocation import (
    allocation_state,
    load_allocation_state,
    loss_regularizer,
    rank_allocation,
)

log = logging.getLogger(__name__)

MODEL_INPUTS = ("input_ids", "attention_mask", "position_ids", "labels")


RNG_STATES_KEY = "slm_sweep_rng_states"
GRAD_NORMS_KEY = "slm_sweep_grad_norms"
STEP_LOSSES_KEY = "slm_sweep_step_losses"
RANK_ALLOCATION_KEY = "slm_sweep_rank_allocation"
# train_loss_tail_mean: the mean loss over this share of the last optimizer steps (at least one); one step's loss
# is one batch's, a noisy read of where training ended
LOSS_TAIL_FRACTION = 0.1


class DivergedError(RuntimeError):
    """The training loss became NaN or infinite."""


def rng_states(device: torch.device) -> dict[str, torch.Tensor]:
    """The generators training draws from: the CPU's, and the CUDA device's when training runs on one."""
    states = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        states["cuda"] = torch.cuda.get_rng_state(device)
    return states


def set_rng_states(states: dict[str, torch.Tensor], device: torch.device) -> None:
    torch.set_rng_state(states["cpu"])
    if device.type == "cuda" and "cuda" in states:
        torch.cuda.set_rng_state(states["cuda"], device)


def device_step_seed(seed: int, step: int, rank: int) -> int:
    """The seed one device of a multi-device run draws from in one optimizer step (dropout, LoRA's included).

    Every device is seeded alike (the same initial weights), so without it the devices would draw the same
    dropout masks for micro-batches of one shape, and correlated ones for others (the same random stream at the
    same offsets). Derived from the run's seed, the step and the device alone, so a run resumed from a checkpoint
    (which holds the first device's random state only) draws what the uninterrupted run drew.
    """
    digest = hashlib.blake2b(f"{seed}/{step}/{rank}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1  # below 2**63: torch.manual_seed's range


def micro_batch_loss(model, batch: dict, loss_tokens) -> torch.Tensor:
    """Summed next-token loss of the micro-batch divided by ``loss_tokens``, the answer tokens of the whole step.

    Summing these over the micro-batches of a step gives the mean loss per answer token of the step, whatever
    the cut into micro-batches (transformers' ``num_items_in_batch``). No key/value cache: training needs none,
    and with one transformers would not read packed ``position_ids`` as sequence boundaries.
    """
    inputs = {k: batch[k] for k in MODEL_INPUTS if k in batch}
    return model(**inputs, num_items_in_batch=loss_tokens, use_cache=False).loss


class CausalLMModule(L.LightningModule):
    """Next-token loss on answer tokens (labels carry -100 elsewhere); the method's optimizer (AdamW by default)
    under a linear warm-up and the trainer's schedule (``train.optimizers``).

    full, lora and dora all train through this one module: which parameters have ``requires_grad`` decides
    what is trained, so the method only changes the model handed in.

    Optimization is manual because a step has a varying number of micro-batches (see ``batching``): gradients
    accumulate until the batch marked ``last_in_step``, then the optimizer steps. The loss is read back from the
    device only every ``log_every_n_steps`` steps, so the host never waits on the accelerator in between.

    Out of accelerator memory in a single-device run (without CUDA-graph replay), the step starts over: its
    gradients are dropped and its micro-batches so far are replayed cut in halves (and every later micro-batch
    too). The step's sequences and the loss normalisation stay the same, so the effective batch and the gradient
    do not change.
    """

    def __init__(self, model, lr: float, weight_decay: float = 0.0, warmup_steps: int = 0,
                 max_steps: int = 1, optimizer: Mapping[str, Any] | None = None,
                 lr_scale: Mapping[str, float] | None = None, lr_schedule: str = TrainerSettings.lr_schedule,
                 fused_adamw: bool | None = None,
                 gradient_clip_val: float | None = None, log_every_n_steps: int = 10, replays_graphs: bool = False,
                 seed: int = 0):
        super().__init__()
        self.automatic_optimization = False
        self.model = model
        # a half "true" precision casts the whole model (Lightning's convert_module), its rotary frequencies too;
        # copies, since FSDP's mixed precision casts buffers in place at its first forward
        self._rotary = [(module, name, buffer.clone()) for module, name, buffer in float32_rotary_buffers(model)]
        self.lr, self.weight_decay, self.warmup_steps, self.max_steps = lr, weight_decay, warmup_steps, max_steps
        self.optimizer_spec, self.lr_schedule = optimizer, lr_schedule
        # each parameter's shape class and rate factor by name, taken before a strategy shards them (FSDP hands the
        # optimizer 1-D shards): by name, since a spawned process (ddp_spawn) unpickles other objects
        scales = parameter_scales(model.named_parameters(), lr_scale)
        self._shape_and_factor = {unwrapped_name(name): (p.ndim >= 2, scales.get(id(p), 1.0))
                                  for name, p in model.named_parameters()}
        self.fused_adamw = fused_adamw
        self.gradient_clip_val = gradient_clip_val
        self.log_every_n_steps = max(1, log_every_n_steps)
        # the compiled model replays CUDA graphs (config.graph_replaying_setting): each replay overwrites the last
        # one's outputs, so what outlives a micro-batch is copied, and the step's loss tokens are a device tensor (as
        # a Python int, each value would record a graph of its own). A step is then one micro-batch (the config
        # check): gradients the backward graph wrote would be overwritten by the next micro-batch's replay before
        # they were accumulated into, so out of memory is not met by cutting the step finer either.
        self.replays_graphs = replays_graphs
        self.seed = seed  # of the device_step_seed of each step on several devices
        self.last_train_loss: float | None = None
        self._step_lr: float | None = None
        self.last_val_loss: float | None = None
        self._step_loss: torch.Tensor | None = None
        self._pending: list[tuple[int, torch.Tensor, torch.Tensor | None]] = []  # (step, loss, gradient norm)
        # each finished step's global gradient norm before clipping (with clipping on), read back with the losses
        self.grad_norms: list[float] = []
        self.step_losses: dict[int, float] = {}  # each finished step's loss by its number, read back with the latest
        self._val_sums: list[torch.Tensor] = []
        self._no_sync = contextlib.ExitStack()
        self.split_depth = 0      # each micro-batch is halved this many times (raised on out-of-memory)
        self.oom_halvings = 0
        self._step_batches: list[dict] = []
        self._rng_after_step: dict[str, torch.Tensor] | None = None  # what a checkpoint saves (a step boundary)
        self._rng_to_restore: dict[str, torch.Tensor] | None = None  # read from the checkpoint resumed from
        # adapters that reallocate their ranks after each step (AdaLoRA; train.rank_allocation)
        self._allocates = rank_allocation(model) is not None
        self._allocation_to_restore: dict[str, Any] | None = None  # read from the checkpoint resumed from

    def forward(self, batch: dict, loss_tokens) -> torch.Tensor:
        if self.replays_graphs:
            torch.compiler.cudagraph_mark_step_begin()
            loss_tokens = torch.full((), loss_tokens, dtype=torch.long, device=batch["input_ids"].device)
        return micro_batch_loss(self.model, batch, loss_tokens)

    def on_fit_start(self):
        # after the strategy's precision has cast the model: the rotary angles are computed in float32, as in a
        # model loaded in bf16 (from_pretrained keeps these buffers float32), and as evaluation computes them
        restore_buffers(self._rotary)

    def on_train_start(self):
        # Hugging Face loads models in eval mode and Lightning keeps the mode it finds (it switches to eval for
        # validation and back): without this, dropout, LoRA's included, would never act while training.
        self.model.train()
        if self._allocation_to_restore is not None:  # the model is on its device now
            load_allocation_state(self.model, self._allocation_to_restore, self.device)
            self._allocation_to_restore = None

    def on_train_batch_start(self, batch, batch_idx):
        if self._rng_to_restore is not None:
            set_rng_states(self._rng_to_restore, self.device)
            self._rng_to_restore = None
        if not self._step_batches and self.trainer.world_size > 1:  # a step's first micro-batch
            torch.manual_seed(device_step_seed(self.seed, self.global_step, self.trainer.global_rank))
        # Only the last micro-batch of a step reduces gradients across devices (DDP's no_sync otherwise).
        block = getattr(self.trainer.strategy, "block_backward_sync", None)
        if block is not None and not batch["last_in_step"]:
            self._no_sync.enter_context(block())

    def on_train_batch_end(self, outputs, batch, batch_idx):
        self._no_sync.close()
        # Lightning's step for what it logs (callbacks such as LearningRateMonitor, self.log) counts batches, which
        # under manual optimization are micro-batches, and adds one after this hook: held at the optimizer steps
        # done, the axis slm_sweep's own metrics use, so that one W&B step axis does not jump back and forth
        loop = self.trainer.fit_loop.epoch_loop
        if hasattr(loop, "_batches_that_stepped"):
            loop._batches_that_stepped = self.global_step - 1

    def on_train_epoch_end(self):
        """An epoch ends after its last step's last micro-batch, or at ``max_steps``. Lightning ends it after as many
        micro-batches as its data loader's length says: were that length another epoch's, the epoch would end inside
        a step (the step's gradient so far carried into the next epoch's first step) or steps early (its last
        sequences never trained on, and a resumed run would skip other steps than the uninterrupted one took).
        Training stopped by a callback (``trainer.should_stop``) may end anywhere: an unfinished step is not taken."""
        trainer = self._trainer
        if trainer is not None and trainer.should_stop:
            return
        if self._step_batches:
            raise RuntimeError(
                f"epoch {self.current_epoch} ended inside optimizer step {self.global_step}, after "
                f"{len(self._step_batches)} of its micro-batches: the data loader's length does not match the "
                "epoch's plan of micro-batches (slm_sweep.train.batching)")
        sampler = getattr(trainer.train_dataloader, "sampler", None) if trainer is not None else None
        if isinstance(sampler, StepBatchSampler):
            end = (sampler.epoch + 1) * len(sampler.steps(sampler.epoch))
            if self.global_step != end and self.global_step < trainer.max_steps:
                raise RuntimeError(
                    f"epoch {sampler.epoch} ended at optimizer step {self.global_step} instead of {end}: the data "
                    "loader's length does not match the epoch's plan of micro-batches (slm_sweep.train.batching)")

    def training_step(self, batch, batch_idx):
        self._step_batches.append(batch)
        if not self._fits(lambda: self._accumulate(batch)):
            self._replay_step_in_halves()
        if batch["last_in_step"]:
            self._step_batches.clear()
            self._optimizer_step()

    def _fits(self, work) -> bool:
        """Run ``work``; False if it ran out of memory and the step can still be cut finer, else re-raise.

        Returning (rather than retrying inside the ``except``) lets the failed attempt's tensors be freed first.
        """
        try:
            work()
            return True
        except Exception as error:  # noqa: BLE001 - only out-of-memory is handled, the rest re-raised
            if not is_out_of_memory(error):
                raise
            self._check_can_split(error)
            return False

    def _pieces(self, batch: dict) -> list[dict]:
        """``batch`` cut in halves ``split_depth`` times over (pieces of one sequence stay whole)."""
        pieces = [batch]
        for _ in range(self.split_depth):
            pieces = [half for piece in pieces for half in (split_micro_batch(piece) or [piece])]
        return pieces

    def _accumulate(self, batch: dict) -> None:
        """Forward and backward of one micro-batch, piece by piece."""
        world_size = self.trainer.world_size
        for piece in self._pieces(batch):
            # an adapter's loss regularizer once per step: at its first forward, on the first device only (the loss
            # is multiplied by the device count below and the gradients averaged; train.rank_allocation)
            with loss_regularizer(self.model, on=self._step_loss is None and self.trainer.global_rank == 0):
                loss = self(piece, batch["step_loss_tokens"])
            # DDP averages gradients over devices; the loss is already normalised by the step's answer tokens.
            self.manual_backward(loss * world_size if world_size > 1 else loss)
            detached = loss.detach().clone() if self.replays_graphs else loss.detach()
            self._step_loss = detached if self._step_loss is None else self._step_loss + detached

    def _check_can_split(self, error: BaseException) -> None:
        if self.replays_graphs:
            raise RuntimeError(
                "out of memory with the training step replayed as CUDA graphs, which cannot be cut into "
                "micro-batches: lower trainer.max_length or train without them (trainer.compile_mode=null, "
                "trainer.compile_backend=inductor)") from error
        if self.trainer.world_size > 1:
            raise RuntimeError(
                "out of memory on one of several devices, which the others cannot wait for: lower "
                "trainer.micro_batch_size or trainer.micro_batch_tokens") from error
        if not any(split_micro_batch(p) is not None for b in self._step_batches for p in self._pieces(b)):
            raise RuntimeError(
                "out of memory on a micro-batch of a single sequence: lower trainer.max_length, turn on "
                "trainer.gradient_checkpointing or use a smaller model") from error

    def _replay_step_in_halves(self) -> None:
        """Drop the step's gradients and redo its micro-batches so far, each cut once more, until they fit.

        The whole step is redone, not just the failed piece: an error inside backward may already have added
        part of that piece's gradient to some parameters.
        """
        while True:
            self.split_depth += 1
            self.oom_halvings += 1
            log.warning("out of memory in training step %d; micro-batches are now cut into %d pieces",
                        self.global_step, 2 ** self.split_depth)
            self.optimizers().zero_grad(set_to_none=True)
            self._step_loss = None
            release_cached_memory()
            if self._fits(lambda: [self._accumulate(b) for b in self._step_batches]):
                return

    def _optimizer_step(self) -> None:
        optimizer = self.optimizers()
        norm = self._clip_gradients(optimizer) if self.gradient_clip_val else None
        # the rate this step trains at, logged beside its loss: the first group's is method.lr's under the schedule,
        # whether or not a parameter trains at it (method.lr_scale may give them all another factor)
        self._step_lr = optimizer.param_groups[0]["lr"]
        optimizer.step()
        if self._allocates:  # reads the step's gradients: before they are cleared
            rank_allocation(self.model)(self.global_step - 1)
        optimizer.zero_grad(set_to_none=True)
        self.lr_schedulers().step()
        self._rng_after_step = rng_states(self.device)
        self._pending.append((self.global_step, self._step_loss, norm))
        self._step_loss = None
        if self.global_step % self.log_every_n_steps == 0 or self.global_step >= self.max_steps:
            self._flush_losses()
            self.log("train/loss", self.last_train_loss, prog_bar=True, logger=False, on_step=True, on_epoch=False)

    def _clip_gradients(self, optimizer) -> torch.Tensor:
        """Clip the step's gradients to gradient_clip_val by their global norm; return that norm before clipping
        (a tensor: read back with the losses, not here)."""
        wrapped = self.trainer.strategy.model
        if hasattr(wrapped, "clip_grad_norm_"):
            # FSDP shards the gradients: only its root module can take their global norm.
            return wrapped.clip_grad_norm_(self.gradient_clip_val).detach().float()
        else:
            # Not Lightning's clip_gradients: under mixed precision it refuses fused optimizers, which unscale
            # inside their step, although bf16 has no loss scaler. A float16 GradScaler has scaled the gradients
            # by its scale (they are unscaled only in optimizer.step): the limit is scaled the same way.
            params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
            scaler = getattr(self.trainer.precision_plugin, "scaler", None)
            scale = scaler.get_scale() if scaler is not None and scaler.is_enabled() else 1.0
            return torch.nn.utils.clip_grad_norm_(params, self.gradient_clip_val * scale).detach().float() / scale

    def _flush_losses(self) -> None:
        """Read the pending step losses back (one wait), keep each in step_losses, stop on a non-finite one, log the
        latest."""
        if not self._pending:
            return
        self._read_grad_norms()
        steps = [s for s, _, _ in self._pending]
        losses = self.trainer.strategy.reduce(torch.stack([v for _, v, _ in self._pending]), reduce_op="sum")
        self._pending.clear()
        for step, value in zip(steps, losses.tolist()):
            if not math.isfinite(value):
                raise DivergedError(f"training loss is {value} at step {step}")
            self.step_losses[step] = value
        self.last_train_loss = losses[-1].item()
        metrics = {"train/loss": self.last_train_loss, "train/lr": self._step_lr}
        if self.grad_norms:
            metrics["train/grad_norm"] = self.grad_norms[-1]
        for logger in self.trainer.loggers:
            logger.log_metrics(metrics, step=self.global_step)

    def _read_grad_norms(self) -> None:
        """Move the pending steps' gradient norms into grad_norms. No collective: they are the same on every rank
        (DDP reduces the gradients before the norm is taken, FSDP takes it globally), so a checkpoint written
        after an interrupt on one rank can read them too."""
        norms = [n for _, _, n in self._pending if n is not None]
        if norms:
            self.grad_norms += torch.stack(norms).tolist()
            self._pending = [(step, loss, None) for step, loss, _ in self._pending]

    def on_train_end(self):
        self._flush_losses()
        # FSDP's bf16 buffer dtype rounded them for training (its first forward casts buffers in place, after
        # on_fit_start): evaluation gets the float32 frequencies back
        restore_buffers(self._rotary)

    def clipping_figures(self) -> dict[str, float | None]:
        """How much clipping acted: the median global gradient norm before clipping over the steps trained, and the
        share of steps whose norm exceeded gradient_clip_val (None without clipping). Full fine-tuning's gradient
        norms are far larger than an adapter's, so one clip value can clip one method on most steps and the other
        on none."""
        # a float16 step the loss scaler skipped has a non-finite norm: no update, so no clipping either
        norms = [n for n in self.grad_norms if math.isfinite(n)]
        if not norms:
            return {"train_grad_norm_median": None, "train_clipped_fraction": None}
        clipped = sum(n > self.gradient_clip_val for n in norms) / len(norms)
        return {"train_grad_norm_median": statistics.median(norms), "train_clipped_fraction": clipped}

    def loss_figures(self) -> dict[str, float | None]:
        """The mean training loss over the last LOSS_TAIL_FRACTION of the steps trained (at least one), by step
        number: of those, the ones whose loss this run holds (a run resumed from a checkpoint without the losses
        of its last steps, on several devices or from an older version, has the steps since)."""
        steps = self.global_step
        first = steps - max(1, math.ceil(LOSS_TAIL_FRACTION * steps))
        tail = [loss for step, loss in self.step_losses.items() if step > first]  # steps count from 1
        return {"train_loss_tail_mean": statistics.fmean(tail) if tail else None}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # The random state after the last finished step (dropout, LoRA's included, draws from it), so a resumed
        # run draws what the uninterrupted one would; a checkpoint written mid-step still resumes at its start.
        if self._rng_after_step is not None:
            checkpoint[RNG_STATES_KEY] = self._rng_after_step
        self._read_grad_norms()  # (a checkpoint is written at a step boundary) its steps' norms go with it
        checkpoint[GRAD_NORMS_KEY] = list(self.grad_norms)
        # likewise the losses, so that a resumed run's tail covers the steps before it; on several devices reading
        # the pending ones back is a collective, which a checkpoint written on one rank (an interrupt) cannot
        # make: there the tail leaves out the steps after the last read-back (at most log_every_n_steps - 1)
        if self.trainer.world_size == 1:
            self._flush_losses()
        checkpoint[STEP_LOSSES_KEY] = sorted(self.step_losses.items())
        # still waiting for the training to start on its device: what the checkpoint resumed from held
        allocation = self._allocation_to_restore or allocation_state(self.model)
        if allocation is not None:
            checkpoint[RANK_ALLOCATION_KEY] = allocation

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        # also what a checkpoint written before the first resumed step finishes saves
        self._rng_to_restore = self._rng_after_step = checkpoint.get(RNG_STATES_KEY)
        self.grad_norms = list(checkpoint.get(GRAD_NORMS_KEY) or [])
        self.step_losses = {int(step): float(loss) for step, loss in checkpoint.get(STEP_LOSSES_KEY) or []}
        if self.step_losses:  # the training loss so far; a checkpoint at max_steps trains no step to replace it
            self.last_train_loss = self.step_losses[max(self.step_losses)]
        self._allocation_to_restore = checkpoint.get(RANK_ALLOCATION_KEY)
        if self._allocates and self._allocation_to_restore is None:
            log.warning("the checkpoint holds no state of the adapters' rank reallocation: the resumed run "
                        "reallocates from importance gathered anew")
        trainer = getattr(self, "_trainer", None)
        datamodule = getattr(trainer, "datamodule", None) if trainer is not None else None
        if hasattr(datamodule, "train_sampler"):
            from slm_sweep.train.data import align_to_next_epoch
            from slm_sweep.train.interrupt import align_to_plan

            sampler = datamodule.train_sampler()
            align_to_plan(checkpoint, sampler)  # before Lightning restores its loops from it
            align_to_next_epoch(checkpoint, sampler)

    def on_validation_model_zero_grad(self) -> None:
        # Lightning zeroes the gradients before it validates, to free their memory; validation can fall inside an
        # optimizer step (trainer.val_check_interval counts micro-batches), whose gradients so far must survive
        # it. At a step boundary there are none to free: _optimizer_step has set them to None.
        pass

    def validation_step(self, batch, batch_idx):
        # eagerly: a compiled model would trace again for evaluation mode (the whole model, with
        # trainer.compile_scope=model, for a few batches), and a replayed graph would overwrite the sums kept
        with torch.compiler.set_stance("force_eager"):
            self._val_sums.append(self._validation_sums(batch))

    def _validation_sums(self, batch: dict) -> torch.Tensor:
        """(summed loss, answer tokens) of a validation batch; out of memory, the sum of its two halves."""
        try:
            with loss_regularizer(self.model, on=False):  # the loss on the data alone
                summed = micro_batch_loss(self.model, batch, 1).detach().float()
            n_tokens = (batch["labels"][:, 1:] != -100).sum()
            return torch.stack([summed, n_tokens.to(summed)])
        except Exception as error:  # noqa: BLE001 - only out-of-memory is handled, the rest re-raised
            if not is_out_of_memory(error):
                raise
            halves = split_micro_batch(batch)
            if halves is None:
                raise RuntimeError("out of memory validating a single sequence: lower trainer.max_length") from error
        self.oom_halvings += 1
        release_cached_memory()
        return self._validation_sums(halves[0]) + self._validation_sums(halves[1])

    def on_validation_epoch_end(self):
        local = torch.stack(self._val_sums).sum(0) if self._val_sums else torch.zeros(2, device=self.device)
        self._val_sums.clear()
        total_loss, total_tokens = self.trainer.strategy.reduce(local, reduce_op="sum").tolist()
        if total_tokens:
            self.last_val_loss = total_loss / total_tokens
            if not self.trainer.sanity_checking:
                for logger in self.trainer.loggers:
                    logger.log_metrics({"val/loss": self.last_val_loss}, step=self.global_step)

    def _parameter_plan(self) -> tuple[set[int], dict[int, float]]:
        """The matrices (ids) and each parameter's rate factor (by id) among the model's parameters as they are
        now: wrapped, sharded or unpickled in another process, found by their names before any of it."""
        matrices, scales = set(), {}
        for name, param in self.model.named_parameters():
            entry = self._shape_and_factor.get(unwrapped_name(name))
            if entry is None:
                if param.requires_grad:
                    raise RuntimeError(f"the trainable parameter {name} was not in the model the training module "
                                       "was built on")
                continue
            is_matrix, factor = entry
            if is_matrix:
                matrices.add(id(param))
            scales[id(param)] = factor
        return matrices, scales

    def configure_optimizers(self):
        matrices, scales = self._parameter_plan()
        optimizer = build_optimizer(self.model.parameters(), self.lr, self.weight_decay, self.optimizer_spec,
                                    self.fused_adamw, matrices=matrices, scales=scales)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: lr_factor(step, self.warmup_steps, self.max_steps, self.lr_schedule))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
