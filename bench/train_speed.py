"""Training throughput of slm_sweep's training path against a plain PyTorch loop, in one process.

Both paths train the same model from the same weights on the same micro-batches (slm_sweep's token-budget
batcher, epoch 0 of the run seed) with the same optimizer, schedule, clipping, loss and precision (32-true or
bf16-mixed, the two the plain loop reproduces; any other trainer precision is refused), for the same number of
optimizer steps. Both leave the first ``--warmup`` steps out of the rate and count non-padding tokens.
The plain loop gets its batches already collated; slm_sweep collates inside its loop. The plain loop is always
eager; slm_sweep's path compiles where the trainer config says so (``trainer=gpu`` does), and its warm-up time
(compilation included) is reported apart.

    python bench/train_speed.py --model tiny --steps 30 --batch-size 16
    python bench/train_speed.py --model smollm135_q4 --steps 4 --batch-size 4 --max-length 256

Prints one row per method: tokens/s of both (the fastest of --repeats runs: other work on the machine only ever
slows a run down), their ratio slm_sweep / plain, the median ratio of runs made back to back, the shortest step
times and the padding fraction; --json writes every run, with CPU time as well.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import lightning as L
import torch
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from slm_sweep.arguments import at_least  # noqa: E402
from slm_sweep.config import compose  # noqa: E402
from slm_sweep.data import dataset_spec, load_splits  # noqa: E402
from slm_sweep.data.encode import encode_all  # noqa: E402
from slm_sweep.data.prompts import resolve_style  # noqa: E402
from slm_sweep.identity import PRECISION_ALIASES  # noqa: E402
from slm_sweep.methods import apply_method  # noqa: E402
from slm_sweep.models import load_model_and_tokenizer  # noqa: E402
from slm_sweep.results import atomic_write_text  # noqa: E402
from slm_sweep.train.data import EncodedDataModule  # noqa: E402
from slm_sweep.train.fit import build_data, fit, without_cudnn_attention  # noqa: E402
from slm_sweep.train.module import micro_batch_loss  # noqa: E402
from slm_sweep.train.optimizers import build_optimizer, lr_factor  # noqa: E402

METHODS = ("full", "lora", "dora")
# the trainer precisions the plain loop reproduces: float32 weights, with bf16 autocast for bf16-mixed. The others
# (bf16-true's bf16 weights, 16-mixed's fp16 autocast with a gradient scaler, ...) it does not, and its rate would
# then be of another dtype than slm_sweep's
PLAIN_LOOP_PRECISIONS = ("32-true", "bf16-mixed")


def plain_loop_precision(precision) -> str:
    """``precision`` (the trainer config's, aliases resolved as Lightning resolves them) when the plain loop mirrors
    it; a ValueError naming it and the ones it mirrors otherwise."""
    name = PRECISION_ALIASES.get(str(precision), str(precision))
    if name not in PLAIN_LOOP_PRECISIONS:
        allowed = ", ".join(f"{p} (or {a})" if (a := next((k for k, v in PRECISION_ALIASES.items() if v == p), None))
                            else p for p in PLAIN_LOOP_PRECISIONS)
        raise ValueError(f"trainer precision {precision!r}: the plain loop mirrors only {allowed}, so its rate would "
                         "not be of the same dtypes as slm_sweep's")
    return name


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """--model, --model-override and --methods, as the training benches take them."""
    parser.add_argument("--model", default="tiny", help="a conf/model/*.yaml name, e.g. tiny, smollm135_q4")
    parser.add_argument("--model-override", nargs="*", default=[], metavar="KEY=VALUE",
                        help="model settings, e.g. gguf_dir=.gpu/weights or id=.gpu/smollm135")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_model_arguments(parser)
    parser.add_argument("--steps", type=at_least(1), default=20, help="measured optimizer steps")
    parser.add_argument("--warmup", type=at_least(0), default=2,
                        help="optimizer steps run first and left out of the rate (0: every step is measured)")
    parser.add_argument("--batch-size", type=at_least(1), default=16, help="sequences per optimizer step")
    parser.add_argument("--micro-batch-size", type=at_least(1), default=None, help="default: the trainer config's")
    parser.add_argument("--micro-batch-tokens", type=at_least(1), default=None, help="token budget per micro-batch")
    parser.add_argument("--max-length", type=at_least(1), default=512)
    parser.add_argument("--trainer-override", nargs="*", default=[], metavar="KEY=VALUE",
                        help="trainer settings, e.g. compile=true packing=true micro_batch_tokens=4096")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--repeats", type=at_least(1), default=1,
                        help="alternate plain/slm_sweep runs; the fastest of each and the median pair ratio are "
                             "reported")
    parser.add_argument("--progress-bar", action="store_true", help="keep Lightning's progress bar on")
    parser.add_argument("--threads", type=at_least(1), default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-root", default=str(ROOT.parent / "shared" / "data"))
    parser.add_argument("--cache-dir", default=str(ROOT / ".cache" / "slm_sweep"))
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    args = parser.parse_args(argv)
    try:  # the trainer config's precision, with --trainer-override's: refused here, before any model loads
        plain_loop_precision(trainer_config(args)["precision"])
    except ValueError as error:
        parser.error(f"{error} (--trainer-override precision=...)")
    return args


def trainer_config(args) -> dict:
    """The trainer config a cell would use on this device, with the benchmark's sizes."""
    name = "gpu" if args.device == "cuda" else "default"
    cfg = compose([f"trainer={name}"]).trainer
    overrides = {
        "accelerator": args.device, "batch_size": args.batch_size, "max_length": args.max_length,
        "max_steps": args.warmup + args.steps, "throughput_warmup_steps": args.warmup,
        "checkpoint_every_n_steps": None, "progress_bar": args.progress_bar,
    }
    if args.micro_batch_size:
        overrides["micro_batch_size"] = args.micro_batch_size
    if args.micro_batch_tokens:
        overrides["micro_batch_tokens"] = args.micro_batch_tokens
    return OmegaConf.to_container(OmegaConf.merge(cfg, overrides, OmegaConf.from_dotlist(args.trainer_override)))


def load_model_config(name: str, overrides: list[str]):
    """conf/model/<name>.yaml as a cell composes it, with ``key=value`` overrides."""
    path = ROOT / "slm_sweep" / "conf" / "model" / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in path.parent.glob("*.yaml"))
        raise SystemExit(f"--model {name!r} is not one of: {', '.join(known)}")
    return compose([f"model={name}", *(f"model.{o}" for o in overrides)]).model


def load_examples(args, tokenizer, count: int) -> list[dict]:
    splits = load_splits(dataset_spec("gsm8k"), data_root=args.data_root)
    style = resolve_style("auto", tokenizer)
    examples = encode_all(tokenizer, splits.train[: count + count // 4], style, args.max_length)
    if len(examples) < count:
        raise SystemExit(f"only {len(examples)} training examples for {count} sequences")
    return examples[:count]


def step_batches(data: EncodedDataModule) -> list[list[dict]]:
    """The micro-batches of epoch 0, grouped by optimizer step: exactly what ``fit`` will see."""
    steps: list[list[dict]] = [[]]
    for batch in data.train_dataloader():
        steps[-1].append(batch)
        if batch["last_in_step"]:
            steps.append([])
    return steps[:-1]


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def plain_loop(model, steps: list[list[dict]], cfg: dict, method_cfg, device: str, warmup: int) -> dict:
    """The reference: forward, backward, clip, AdamW step, schedule step; nothing else, always eager. With the
    attention kernels slm_sweep trains with (no cuDNN attention on CUDA, as ``fit``), so that between an eager
    slm_sweep path and this loop the ratio compares the loops; where slm_sweep's path compiles (``trainer=gpu``),
    its fused kernels are part of the ratio as well."""
    with without_cudnn_attention(device):
        return _plain_loop(model, steps, cfg, method_cfg, device, warmup)


def _plain_loop(model, steps: list[list[dict]], cfg: dict, method_cfg, device: str, warmup: int) -> dict:
    model.to(device).train()
    optimizer = build_optimizer(model.parameters(), float(method_cfg["lr"]), float(cfg["weight_decay"]),
                                fused=cfg.get("fused_adamw"))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, int(cfg["warmup_steps"]), int(cfg["max_steps"]),
                                       str(cfg.get("lr_schedule") or "cosine")))
    params = [p for p in model.parameters() if p.requires_grad]
    bf16 = plain_loop_precision(cfg["precision"]) == "bf16-mixed"  # 32-true otherwise: float32 throughout
    tokens, start, cpu_start = 0, None, None
    for i, step in enumerate(steps):
        if i == warmup:
            synchronize(device)
            start, cpu_start = time.perf_counter(), time.process_time()
        for batch in step:
            inputs = {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}
            with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=bf16):
                loss = micro_batch_loss(model, inputs, batch["step_loss_tokens"])
            loss.backward()
            if i >= warmup:
                tokens += batch["num_tokens"]
        if cfg.get("gradient_clip_val"):
            torch.nn.utils.clip_grad_norm_(params, float(cfg["gradient_clip_val"]))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()
    synchronize(device)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    return {"tokens_per_s": tokens / seconds, "step_time_s": seconds / (len(steps) - warmup),
            "tokens_per_cpu_s": tokens / cpu_seconds}


class StepClock(L.Callback):
    """An independent clock on slm_sweep's path: tokens, wall and CPU time after the warm-up steps, as the plain
    loop counts them."""

    def __init__(self, warmup: int, device: str):
        self.warmup, self.device = warmup, device
        self.steps, self.tokens = 0, 0
        self.start = self.seconds = self.cpu_start = self.cpu_seconds = self.warmup_seconds = 0.0
        self.train_start = 0.0
        # the end of the warm-up and of each measured step: CUDA events on the device's clock (the host may run
        # ahead of a step replayed as a graph), the host's clock elsewhere
        self.step_ends: list = []

    def on_train_start(self, trainer, pl_module):
        self.train_start = time.perf_counter()
        if self.warmup == 0:  # no warm-up step: every step is measured, from here (as the plain loop's clock)
            synchronize(self.device)
            self.start, self.cpu_start = time.perf_counter(), time.process_time()
            self.step_ends.append(self._mark())

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self.steps >= self.warmup:
            self.tokens += batch["num_tokens"]
        if batch["last_in_step"]:
            self.steps += 1
            if self.steps >= self.warmup:
                self.step_ends.append(self._mark())
            if self.steps == self.warmup:
                synchronize(self.device)
                self.start, self.cpu_start = time.perf_counter(), time.process_time()
                self.warmup_seconds = self.start - self.train_start

    def on_train_end(self, trainer, pl_module):
        synchronize(self.device)
        self.seconds = time.perf_counter() - self.start
        self.cpu_seconds = time.process_time() - self.cpu_start

    def _mark(self):
        if self.device != "cuda":
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def step_spread(self) -> dict:
        """The measured steps' median time, and how many took over twice as long: a step that compiled again or
        recorded a CUDA graph for a new shape (read after training, when the device has finished)."""
        if self.step_ends and not isinstance(self.step_ends[0], float):
            times = [a.elapsed_time(b) / 1000 for a, b in zip(self.step_ends, self.step_ends[1:])]
        else:
            times = [b - a for a, b in zip(self.step_ends, self.step_ends[1:])]
        if not times:
            return {}
        median = statistics.median(times)
        return {"step_time_median_s": median, "slow_steps": sum(t > 2 * median for t in times)}


def slm_sweep_path(model, examples: list[dict], cfg: dict, method_cfg, args, pad_token_id: int) -> dict:
    clock = StepClock(args.warmup, args.device)
    with tempfile.TemporaryDirectory() as out_dir:
        outcome = fit(model, examples, [], cfg, method_cfg, seed=args.seed, out_dir=out_dir,
                      pad_token_id=pad_token_id, extra_callbacks=[clock])
    perf = outcome.perf
    return {"tokens_per_s": perf["train_tokens_per_s"], "step_time_s": perf["step_time_s"],
            "clock_tokens_per_s": clock.tokens / clock.seconds, "tokens_per_cpu_s": clock.tokens / clock.cpu_seconds,
            "padding_fraction": perf["train_padding_fraction"],
            "peak_memory_mb": perf["peak_memory_mb"], "warmup_s": clock.warmup_seconds,
            "compiled": outcome.placement.get("compiled"), **clock.step_spread()}


def fresh_model(base, method_cfg, seed: int):
    torch.manual_seed(seed)  # the same adapter initialisation for both paths
    return apply_method(copy.deepcopy(base), method_cfg)


def bench_method(method: str, base, examples, steps, cfg, args, pad_token_id) -> dict:
    method_cfg = compose([f"method={method}"]).method
    plain, ours = [], []
    for repeat in range(args.repeats):
        runs = [
            lambda: plain.append(plain_loop(fresh_model(base, method_cfg, args.seed), steps, cfg, method_cfg,
                                            args.device, args.warmup)),
            lambda: ours.append(slm_sweep_path(fresh_model(base, method_cfg, args.seed), examples, cfg,
                                               method_cfg, args, pad_token_id)),
        ]
        for run in runs if repeat % 2 == 0 else reversed(runs):  # neither path always goes first
            run()
    best_plain = max(r["tokens_per_s"] for r in plain)
    best_ours = max(r["tokens_per_s"] for r in ours)
    return {
        "method": method,
        "plain_tokens_per_s": best_plain,
        "slm_sweep_tokens_per_s": best_ours,
        "ratio": best_ours / best_plain,
        # Runs of a pair follow each other and share the machine's load.
        "pair_ratio_median": statistics.median(o["tokens_per_s"] / p["tokens_per_s"] for p, o in zip(plain, ours)),
        "plain_step_time_s": min(r["step_time_s"] for r in plain),
        "slm_sweep_step_time_s": min(r["step_time_s"] for r in ours),
        "padding_fraction": ours[0]["padding_fraction"],
        "slm_sweep_warmup_s": min(r["warmup_s"] for r in ours),  # the first --warmup steps, compilation included
        # steps measured that compiled again or recorded a graph for a new shape, and the steady state's step
        "slm_sweep_slow_steps": max((r.get("slow_steps", 0) for r in ours), default=0),
        **({"slm_sweep_step_time_median_s": min(r["step_time_median_s"] for r in ours)}
           if all("step_time_median_s" in r for r in ours) else {}),
        "compiled": ours[0]["compiled"],
        "runs": {"plain": plain, "slm_sweep": ours},
    }


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore")
    model_cfg = load_model_config(args.model, args.model_override)
    base, tokenizer = load_model_and_tokenizer(model_cfg, cache_dir=args.cache_dir)
    cfg = trainer_config(args)
    examples = load_examples(args, tokenizer, (args.warmup + args.steps) * args.batch_size)
    steps = step_batches(build_data(examples, [], cfg, args.seed, tokenizer.pad_token_id))
    print(f"model={args.model} device={args.device} precision={cfg['precision']} threads={torch.get_num_threads()}"
          f" steps={args.warmup}+{args.steps} batch={args.batch_size} micro_batch_size={cfg['micro_batch_size']}"
          f" micro_batch_tokens={cfg.get('micro_batch_tokens')} max_length={args.max_length}"
          f" compile={cfg.get('compile')}/{cfg.get('compile_scope')} packing={cfg.get('packing')}"
          f" repeats={args.repeats} load_avg={os.getloadavg()[0]:.2f}", flush=True)
    print(f"{'method':<6} {'plain tok/s':>12} {'slm_sweep tok/s':>16} {'ratio':>6} {'pair ratio':>11}"
          f" {'plain step s':>13} {'slm step s':>11} {'padding':>8} {'slm warm-up s':>14}", flush=True)
    results = []
    for method in args.methods:
        try:
            r = bench_method(method, base, examples, steps, cfg, args, tokenizer.pad_token_id)
        except Exception as error:  # noqa: BLE001 - one method's failure (a compiler error) must not cost the others
            results.append({"method": method, "error": f"{type(error).__name__}: {error}"[:2000]})
            print(f"{method:<6} failed: {type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}",
                  flush=True)
            _write_json(args, cfg, results)
            continue
        results.append(r)
        print(f"{method:<6} {r['plain_tokens_per_s']:>12.0f} {r['slm_sweep_tokens_per_s']:>16.0f} {r['ratio']:>6.3f}"
              f" {r['pair_ratio_median']:>11.3f} {r['plain_step_time_s']:>13.4f} {r['slm_sweep_step_time_s']:>11.4f}"
              f" {r['padding_fraction']:>8.3f} {r['slm_sweep_warmup_s']:>14.1f}", flush=True)
        _write_json(args, cfg, results)  # after every method: a run cut short keeps the methods it finished
    return results


def _write_json(args, cfg, results: list[dict]) -> None:
    if args.json:
        atomic_write_text(args.json, json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                                 "trainer": cfg, "results": results}, indent=2, default=str))


if __name__ == "__main__":
    sys.exit(1 if any("error" in r for r in main()) else 0)
