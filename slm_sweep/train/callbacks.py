"""Callbacks measuring a training run: tokens/s on non-padding tokens, step time, peak memory, MFU."""

from __future__ import annotations

import re
import resource
import sys
import time
from pathlib import Path

import lightning as L
import torch

_PROC_STATUS, _PROC_CLEAR_REFS = Path("/proc/self/status"), Path("/proc/self/clear_refs")

# Dense bf16 tensor-core peaks in FLOP/s with fp32 accumulation (vendor datasheets, the figures without
# sparsity). Chips without bf16 tensor cores (V100, T4) are absent: they get no MFU.
BF16_PEAK_FLOPS = {
    "B200": 2250e12,
    "H200 NVL": 835e12,
    "H200": 989e12,
    "GH200": 989e12,
    "H100 NVL": 835e12,
    "H100 PCIe": 756e12,
    "H100": 989e12,  # the SXM part reports itself as e.g. "NVIDIA H100 80GB HBM3"
    "A100": 312e12,
    "L40S": 362e12,
    "L40": 181e12,
    "L4": 121e12,
    "RTX 4090": 165.2e12,  # GeForce cards: the bf16 rate with fp32 accumulation, half the fp16-accumulate one
    "RTX 3090 Ti": 80e12,
    "RTX 3090": 71e12,
}


def accelerator_name(device: torch.device | str) -> str:
    """The name of the CUDA chip that ``device`` is (``NVIDIA H200``); "cpu" for any other device."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return "cpu"


def bf16_peak_flops(device_name: str) -> float | None:
    """The bf16 peak of a known accelerator (longest name matching first), None for CPUs and unknown chips."""
    for key in sorted(BF16_PEAK_FLOPS, key=len, reverse=True):
        if key.lower() in device_name.lower():
            return BF16_PEAK_FLOPS[key]
    return None


def matmul_parameter_count(model) -> int:
    """N in the 6N/4N FLOPs-per-token rule: base-model weights that take part in matrix products.

    Adapter weights are left out (their FLOPs are small against the base), and so is an input embedding that is
    not tied to the output head, since a lookup is no product; a tied one counts once, as the head.
    """
    from slm_sweep.methods import parameter_count

    adapters = set(getattr(model, "peft_config", None) or ())  # a PEFT model's adapter names ("default")
    count = sum(parameter_count(p) for n, p in model.named_parameters() if adapters.isdisjoint(n.split(".")))
    embeddings, head = model.get_input_embeddings(), model.get_output_embeddings()
    if embeddings is not None and (head is None or head.weight is not embeddings.weight):
        count -= embeddings.weight.numel()
    return count


def flops_per_token(model, adapters: bool) -> float:
    """6N for full fine-tuning; 4N for adapters: the frozen base needs no weight gradients."""
    return (4 if adapters else 6) * matmul_parameter_count(model)


def attention_flops_per_pair(model) -> float:
    """FLOPs a training step spends on one (query, key) pair of a sequence: 12 x layers x the query heads' width.

    The attention scores and their weighted sum of values are two products with no weights, each taken forward
    (2 FLOPs a multiply-add) and twice backward, so adapters cost the same here as full fine-tuning. A sequence of
    T tokens has T^2 pairs (the usual count, as in PaLM's MFU: the causal mask's half is not taken off); each
    packed sequence counts on its own.
    """
    config = model.config.get_text_config()
    heads, layers = getattr(config, "num_attention_heads", None), getattr(config, "num_hidden_layers", None)
    if not heads or not layers:
        return 0.0  # an architecture that names them otherwise: its MFU counts the weights' products only
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return 12 * layers * heads * head_dim


def mfu(flops_per_s: float | None, peak_flops: float | None, devices: int = 1) -> float | None:
    """The model FLOPs achieved per second over the devices' dense bf16 peak; None without one of them."""
    if not flops_per_s or not peak_flops:
        return None
    return flops_per_s / (peak_flops * devices)


_PEAKS_RESET = False  # whether a cell of this process has started before


def reset_peak_memory() -> None:
    """Start the peaks that ``peak_memory_mb`` reads afresh, so that a cell reports its own and not the largest of
    the cells before it in the same process (Hydra's basic launcher runs a whole sweep in one). On the CPU the
    peak is the process's resident memory: what the cells before left unreachable (reference cycles) or freed but
    kept by the C allocator is released first, so that it does not count as this cell's (a full collection takes
    about 0.2 s with the ML libraries loaded; the first cell of a process has no cell before it)."""
    global _PEAKS_RESET
    if _PEAKS_RESET:
        import gc

        gc.collect()
        _trim_c_heap()
    _PEAKS_RESET = True
    if torch.cuda.is_initialized():
        for index in range(torch.cuda.device_count()):
            torch.cuda.reset_peak_memory_stats(index)
    try:
        _PROC_CLEAR_REFS.write_text("5")  # Linux: resets VmHWM, the process's peak resident memory
    except OSError:
        pass


def _trim_c_heap() -> None:
    """Return the C allocator's free memory to the system (glibc's malloc_trim; elsewhere nothing)."""
    import ctypes
    import ctypes.util

    try:
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def peak_memory_mb(device: torch.device | str) -> float:
    """Peak memory allocated on ``device`` if it is a CUDA device, else the process's peak resident memory since
    ``reset_peak_memory`` (on a system without /proc, since the process started)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        return int(re.search(r"^VmHWM:\s+(\d+) kB", _PROC_STATUS.read_text(), re.M).group(1)) / 2**10
    except (OSError, AttributeError):
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return rss / 2**20 if sys.platform == "darwin" else rss / 2**10


class ThroughputMonitor(L.Callback):
    """Tokens/s, step time, padding, peak memory and MFU of the optimizer steps, logged under ``perf/``.

    Tokens are the non-padding tokens of every micro-batch (counted on the host from the batch's ``num_tokens``),
    summed over devices. Time is wall-clock from the end of one optimizer step to the end of the next, so data
    loading, logging and checkpoint writes are in it; validation is not. The first ``warmup_steps`` steps
    (allocator growth, kernel selection, compilation) are left out of the rates unless the run has no other.
    The accelerator is synchronised only where a measuring window ends (every ``log_every_n_steps`` global
    steps), so measuring does not stall the queue of kernels. MFU counts ``flops_per_token`` for every
    non-padding token and ``flops_per_pair`` for every (query, key) pair of its sequences (the batch's
    ``attention_pairs``).
    """

    def __init__(self, flops_per_token: float, peak_flops: float | None, log_every_n_steps: int = 10,
                 warmup_steps: int = 1, flops_per_pair: float = 0.0):
        self.flops_per_token, self.flops_per_pair, self.peak_flops = flops_per_token, flops_per_pair, peak_flops
        self.log_every_n_steps = max(1, log_every_n_steps)
        self.warmup_steps = max(0, warmup_steps)
        self.steps = 0
        self.tokens = 0
        self.positions = 0
        self.measured = {"steps": 0, "tokens": 0, "flops": 0.0, "seconds": 0.0}
        self.warmup = {"steps": 0, "tokens": 0, "flops": 0.0, "seconds": 0.0}
        self._step_tokens, self._step_flops = 0, 0.0
        self._window = {"steps": 0, "tokens": 0, "flops": 0.0}
        self._window_start: float | None = None
        # seconds of a window that validation closed before any step of it finished (validation inside a step):
        # they belong to the step that finishes in the next window
        self._carried_s = 0.0
        self._train_start = 0.0
        self._paused = False
        self.result: dict = {}

    def _now(self, trainer) -> float:
        if trainer.strategy.root_device.type == "cuda":
            torch.cuda.synchronize(trainer.strategy.root_device)
        return time.perf_counter()

    def on_train_start(self, trainer, pl_module):
        if trainer.strategy.root_device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(trainer.strategy.root_device)
        self._train_start = self._now(trainer)
        if self.warmup_steps == 0:
            self._window_start = self._train_start

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self._step_tokens += batch["num_tokens"]
        self._step_flops += (batch["num_tokens"] * self.flops_per_token
                             + batch["attention_pairs"] * self.flops_per_pair)
        self.positions += batch["input_ids"].numel()
        if not batch["last_in_step"]:
            return
        self.steps += 1
        self.tokens += self._step_tokens
        if self.steps <= self.warmup_steps:
            self.warmup["steps"] += 1
            self.warmup["tokens"] += self._step_tokens
            self.warmup["flops"] += self._step_flops
            if self.steps == self.warmup_steps:
                self._window_start = self._now(trainer)
                self.warmup["seconds"] = self._window_start - self._train_start
        else:
            self._window["steps"] += 1
            self._window["tokens"] += self._step_tokens
            self._window["flops"] += self._step_flops
            if trainer.global_step % self.log_every_n_steps == 0:
                self._window_start = self._close_window(trainer, log=True)
        self._step_tokens, self._step_flops = 0, 0.0

    def on_validation_start(self, trainer, pl_module):
        self._paused = self._window_start is not None
        self._close_window(trainer, log=False, carry=True)

    def on_validation_end(self, trainer, pl_module):
        if self._paused:
            self._window_start = self._now(trainer)
            self._paused = False

    def on_train_end(self, trainer, pl_module):
        if self.steps and self.steps < self.warmup_steps:
            self.warmup["seconds"] = self._now(trainer) - self._train_start
        self._close_window(trainer, log=False)
        self.result = self.summary(trainer)
        # the run's figures under names of their own: under the windows' names they would read as a last window,
        # logged twice at the final step
        renamed = {"step_time_s": "mean_step_time_s", "mfu": "mean_mfu", "peak_memory_mb": "run_peak_memory_mb"}
        self._log(trainer, {f"perf/{renamed.get(k, k)}": v for k, v in self.result.items()})

    def _close_window(self, trainer, log: bool, carry: bool = False) -> float | None:
        """Add the open window to the measured totals (and log its rates); returns when it ended. With ``carry``
        the seconds of a window in which no step finished are kept for the next one."""
        if self._window_start is None:
            return None
        end = self._now(trainer)
        seconds = end - self._window_start + self._carried_s
        self._window_start, self._carried_s = None, 0.0
        steps, tokens = self._window["steps"], self._world_sum(trainer, self._window["tokens"])
        flops = self._world_sum(trainer, self._window["flops"])
        self._window = {"steps": 0, "tokens": 0, "flops": 0.0}
        if not steps:
            # validation inside a step: its micro-batches so far are timed with the step when it finishes (at the
            # end of training an unfinished step's tokens are not counted, and neither is its time)
            self._carried_s = seconds if carry else 0.0
            return end
        self.measured["steps"] += steps
        self.measured["tokens"] += tokens
        self.measured["flops"] += flops
        self.measured["seconds"] += seconds
        if log and seconds > 0:
            self._log(trainer, {"perf/tokens_per_s": tokens / seconds, "perf/step_time_s": seconds / steps,
                                "perf/peak_memory_mb": peak_memory_mb(trainer.strategy.root_device),
                                "perf/mfu": mfu(flops / seconds, self.peak_flops, trainer.world_size)})
        return end

    @staticmethod
    def _world_sum(trainer, value: float) -> float:
        """``value`` summed over devices (float64: a run's attention pairs pass float32's exact integers)."""
        if trainer.world_size == 1:
            return value
        total = trainer.strategy.reduce(
            torch.tensor(float(value), dtype=torch.float64, device=trainer.strategy.root_device), reduce_op="sum")
        return type(value)(total.item())

    @staticmethod
    def _log(trainer, metrics: dict) -> None:
        metrics = {k: v for k, v in metrics.items() if v is not None}
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)

    def summary(self, trainer=None) -> dict:
        """Rates over the measured steps, or over all steps (warm-up included) when none were measured.

        With a trainer, counts are summed over devices (a collective: every device must call it).
        """
        def world_sum(value: float) -> float:
            return value if trainer is None else self._world_sum(trainer, value)

        measured = self.measured["steps"] > 0
        steps = self.measured["steps"] if measured else self.warmup["steps"]
        seconds = self.measured["seconds"] if measured else self.warmup["seconds"]
        tokens = self.measured["tokens"] if measured else world_sum(self.warmup["tokens"])
        flops = self.measured["flops"] if measured else world_sum(self.warmup["flops"])
        tokens_per_s = tokens / seconds if seconds > 0 else None
        all_tokens, positions = world_sum(self.tokens), world_sum(self.positions)
        return {
            "train_tokens": all_tokens,
            "train_tokens_per_s": tokens_per_s,
            "step_time_s": seconds / steps if steps and seconds > 0 else None,
            "mfu": mfu(flops / seconds if seconds > 0 else None, self.peak_flops,
                       trainer.world_size if trainer is not None else 1),
            "train_padding_fraction": 1 - all_tokens / positions if positions else None,
            "throughput_warmup_steps": self.warmup["steps"] if measured else 0,
            "peak_memory_mb": peak_memory_mb(trainer.strategy.root_device if trainer is not None else "cpu"),
        }
