"""The LightningModule that trains a Hugging Face causal LM, with or without PEFT adapters."""

from __future__ import annotations

import math

import lightning as L
import torch


class DivergedError(RuntimeError):
    """The training loss became NaN or infinite."""


class CausalLMModule(L.LightningModule):
    """Next-token loss on answer tokens (labels carry -100 elsewhere); AdamW with linear warm-up and cosine decay.

    full, lora and dora all train through this one module: which parameters have ``requires_grad`` decides
    what is trained, so the method only changes the model handed in.
    """

    def __init__(self, model, lr: float, weight_decay: float = 0.0, warmup_steps: int = 0,
                 max_steps: int = 1, betas: tuple[float, float] = (0.9, 0.999), fused_adamw: bool | None = None):
        super().__init__()
        self.model = model
        self.lr, self.weight_decay, self.warmup_steps, self.max_steps = lr, weight_decay, warmup_steps, max_steps
        self.betas = tuple(betas)
        self.fused_adamw = fused_adamw
        self.last_train_loss: float | None = None
        self.last_val_loss: float | None = None
        self._val_losses: list[tuple[float, int]] = []

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]
        ).loss

    def training_step(self, batch, batch_idx):
        loss = self(batch)
        if not torch.isfinite(loss):
            raise DivergedError(f"training loss is {loss.item()} at step {self.global_step}")
        self.last_train_loss = loss.detach().item()
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=False)
        self.log("train/lr", self.optimizers().param_groups[0]["lr"], on_step=True, on_epoch=False)
        return loss

    def validation_step(self, batch, batch_idx):
        loss = self(batch)
        n_tokens = int((batch["labels"][:, 1:] != -100).sum())
        self._val_losses.append((loss.detach().float().item() * n_tokens, n_tokens))
        self.log("val/loss", loss, prog_bar=True, sync_dist=True, batch_size=batch["input_ids"].shape[0])

    def on_validation_epoch_end(self):
        total = sum(n for _, n in self._val_losses)
        if total:
            self.last_val_loss = sum(s for s, _ in self._val_losses) / total
        self._val_losses.clear()

    def configure_optimizers(self):
        params = [p for p in self.model.parameters() if p.requires_grad]
        decay = [p for p in params if p.ndim >= 2]
        no_decay = [p for p in params if p.ndim < 2]
        groups = [{"params": decay, "weight_decay": self.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        fused = self.fused_adamw
        if fused is None:
            fused = all(p.is_cuda for p in params)
        optimizer = torch.optim.AdamW(groups, lr=self.lr, betas=self.betas, fused=bool(fused) or None)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, self._lr_factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def _lr_factor(self, step: int) -> float:
        if self.warmup_steps and step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        span = max(1, self.max_steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / span)
        return 0.5 * (1.0 + math.cos(math.pi * progress))
