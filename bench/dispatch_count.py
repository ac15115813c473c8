"""How many operations the host dispatches for one training step per method, and for one decode step.

On a GPU a small model's step is bound by the host's dispatch, not by the arithmetic (docs/performance.md, "First
run on an H200"): its time then grows with the number of operations dispatched, not with their size. Counted on
this CPU at small shapes (the count does not depend on them; the meta device would not do: its attention falls
back to a dozen unfused operations where a real device runs one kernel) by a dispatch mode that sees every aten
operation, views included, and every read of a value back to the host (``.item()``, a branch on a tensor's
value), each of which waits for a GPU. Float32 weights with the forward under bf16 autocast, as
``trainer.precision=bf16-mixed`` trains (this CPU's autocast casts the matrix products' operands as CUDA's does).

    python bench/dispatch_count.py --model smollm135_random --model-override id=.gpu/smollm135

The training step is the project's (``micro_batch_loss`` and its backward, adapters as ``conf/method/*.yaml``
build them, float32 weights under bf16 autocast); the decode step is the static engine's, under the attention it
decodes with. Prints the counts and each method's ratio to full fine-tuning; --json writes them.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from collections import Counter
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from train_speed import add_model_arguments, load_model_config  # noqa: E402

from slm_sweep.arguments import at_least  # noqa: E402
from slm_sweep.config import compose  # noqa: E402
from slm_sweep.evaluate.attention import stacked_gqa_decoding  # noqa: E402
from slm_sweep.evaluate.decode import SlotKVCache, _DecodeStep  # noqa: E402
from slm_sweep.methods import apply_method  # noqa: E402
from slm_sweep.models import load_model_and_tokenizer  # noqa: E402
from slm_sweep.results import atomic_write_text  # noqa: E402
from slm_sweep.train.module import micro_batch_loss  # noqa: E402

# the positions each row of the decode step holds in the cache before the step
CACHED = 4


class DispatchCount(TorchDispatchMode):
    """Counts the aten operations dispatched inside it, and the reads back to the host apart."""

    def __init__(self):
        super().__init__()
        self.operations: Counter = Counter()
        self.host_reads = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:
            self.host_reads += 1
        else:
            self.operations[str(func.overloadpacket)] += 1
        return func(*args, **(kwargs or {}))

    @property
    def total(self) -> int:
        return sum(self.operations.values())


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_model_arguments(parser)
    parser.add_argument("--batch-size", type=at_least(1), default=2, help="sequences in the training step")
    parser.add_argument("--length", type=at_least(1), default=32, help="tokens per sequence in the training step")
    parser.add_argument("--slots", type=at_least(1), default=4, help="rows of the decode step")
    parser.add_argument("--columns", type=at_least(CACHED), default=48,
                        help=f"KV-cache columns of the decode step (each row holds {CACHED} cached positions)")
    parser.add_argument("--json", type=Path, default=None)
    return parser.parse_args(argv)


def training_step(model, batch_size: int, length: int) -> dict:
    """One micro-batch's forward and backward, as ``CausalLMModule`` runs it."""
    model.train()
    ids = torch.ones((batch_size, length), dtype=torch.long)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}
    with DispatchCount() as forward, torch.autocast("cpu", dtype=torch.bfloat16):
        loss = micro_batch_loss(model, batch, batch_size * length)
    with DispatchCount() as backward:
        loss.backward()
    return {"forward": forward.total, "backward": backward.total, "total": forward.total + backward.total,
            "host_reads": forward.host_reads + backward.host_reads,
            "trainable_tensors": sum(1 for p in model.parameters() if p.requires_grad),
            "top": dict((forward.operations + backward.operations).most_common(6))}


def decode_step(model, slots: int, columns: int) -> dict:
    """One eager step of the static engine (the one a CUDA graph records) over ``slots`` rows."""
    config = model.config.get_text_config(decoder=True) if hasattr(model.config, "get_text_config") else model.config
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    dtype = next(model.parameters()).dtype
    layers = [(torch.zeros((1, kv_heads, CACHED, head_dim), dtype=dtype),) * 2
              for _ in range(config.num_hidden_layers)]
    cache = SlotKVCache(layers, slots, columns)
    for index in range(slots):
        cache.write(torch.tensor([index]), layers)
    step = _DecodeStep(model.eval(), cache, slots, use_graph=False)
    inputs = (*(torch.zeros(slots, dtype=torch.long) for _ in range(3)), torch.ones((slots, columns), dtype=torch.bool))
    with torch.inference_mode(), stacked_gqa_decoding(model), DispatchCount() as count:
        step(*inputs, columns)
    return {"total": count.total, "host_reads": count.host_reads, "top": dict(count.operations.most_common(6))}


def main(argv=None) -> dict:
    args = parse_args(argv)
    model_cfg = load_model_config(args.model, args.model_override)
    base, _ = load_model_and_tokenizer(model_cfg)
    base = base.float()
    result: dict = {"model": args.model, "batch_size": args.batch_size, "length": args.length,
                    "torch": torch.__version__, "training": {}}
    for method in args.methods:
        method_cfg = compose([f"method={method}"]).method
        result["training"][method] = training_step(apply_method(copy.deepcopy(base), method_cfg),
                                                   args.batch_size, args.length)
    result["decode"] = {"slots": args.slots, "columns": args.columns, **decode_step(base, args.slots, args.columns)}
    full = result["training"].get("full", {}).get("total")
    print(f"model={args.model} training step: {args.batch_size} x {args.length} tokens; decode step: {args.slots} "
          f"slots x {args.columns} columns; torch {torch.__version__}")
    print("method  forward  backward    total  to full  host reads  trainable tensors")
    for method, counts in result["training"].items():
        ratio = counts["total"] / full if full else float("nan")
        counts["to_full"] = round(ratio, 3)
        print(f"{method:<6} {counts['forward']:>8} {counts['backward']:>9} {counts['total']:>8} {ratio:>8.2f} "
              f"{counts['host_reads']:>11} {counts['trainable_tensors']:>18}")
    print(f"decode {result['decode']['total']:>8} operations, {result['decode']['host_reads']} host reads")
    if args.json:
        atomic_write_text(args.json, json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
