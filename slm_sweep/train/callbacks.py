"""Callbacks measuring a training run: tokens/s on non-padding tokens, step time, peak memory, MFU."""

from __future__ import annotations

import resource
import sys
import time

import lightning as L
import torch

# Dense bf16 tensor-core peaks in FLOP/s (vendor datasheets, without sparsity).
BF16_PEAK_FLOPS = {
    "H200": 989e12,
    "H100 SXM": 989e12,
    "H100 PCIe": 756e12,
    "H100 NVL": 835e12,
    "H100": 989e12,
    "GH200": 989e12,
    "A100": 312e12,
    "A10G": 70e12,
    "L40S": 362e12,
    "L4": 121e12,
    "RTX 4090": 165e12,
    "RTX 3090": 71e12,
    "V100": 125e12,
    "T4": 65e12,
}


def accelerator_name() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return "cpu"


def bf16_peak_flops(device_name: str) -> float | None:
    """The bf16 peak of a known accelerator (longest name matching first), None for CPUs and unknown chips."""
    for key in sorted(BF16_PEAK_FLOPS, key=len, reverse=True):
        if key.lower() in device_name.lower():
            return BF16_PEAK_FLOPS[key]
    return None


def peak_memory_mb() -> float:
    """Peak CUDA memory allocated, or the process's peak resident memory on CPU."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10


class ThroughputMonitor(L.Callback):
    """Counts non-padding tokens and wall time of the training batches.

    ``flops_per_token`` is 6N for full fine-tuning and 4N for adapters (no weight gradients for the frozen base).
    """

    def __init__(self, flops_per_token: float, peak_flops: float | None, log_every_n_steps: int = 10):
        self.flops_per_token, self.peak_flops = flops_per_token, peak_flops
        self.log_every_n_steps = log_every_n_steps
        self.tokens = 0
        self.seconds = 0.0
        self.steps = 0
        self._t0 = 0.0
        self._window_tokens = 0
        self._window_seconds = 0.0

    def _sync(self, trainer):
        if trainer.strategy.root_device.type == "cuda":
            torch.cuda.synchronize()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._sync(trainer)
        self._t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self._sync(trainer)
        dt = time.perf_counter() - self._t0
        n = int(batch["attention_mask"].sum())
        self.tokens += n
        self.seconds += dt
        self._window_tokens += n
        self._window_seconds += dt
        if trainer.global_step > self.steps:
            self.steps = trainer.global_step
            if self.steps % self.log_every_n_steps == 0 and self._window_seconds > 0:
                stats = {"perf/tokens_per_s": self._window_tokens / self._window_seconds,
                         "perf/step_time_s": self._window_seconds / self.log_every_n_steps,
                         "perf/peak_memory_mb": peak_memory_mb()}
                if self.peak_flops:
                    stats["perf/mfu"] = stats["perf/tokens_per_s"] * self.flops_per_token / self.peak_flops
                pl_module.log_dict(stats, on_step=True, on_epoch=False)
                self._window_tokens, self._window_seconds = 0, 0.0

    def summary(self, world_size: int = 1) -> dict:
        tokens_per_s = self.tokens * world_size / self.seconds if self.seconds else None
        mfu = None
        if tokens_per_s and self.peak_flops:
            mfu = tokens_per_s * self.flops_per_token / (self.peak_flops * world_size)
        return {
            "train_tokens": self.tokens * world_size,
            "train_tokens_per_s": tokens_per_s,
            "step_time_s": self.seconds / self.steps if self.steps else None,
            "mfu": mfu,
        }
