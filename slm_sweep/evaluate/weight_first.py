"""Linear layers computed weight-first (``W @ x^T``) while a few rows decode on the CPU.

``F.linear(x, W)`` on a few rows of ``x`` takes MKL's general matrix product, which on a 2-core AMD EPYC ran the
49152 x 576 vocabulary projection of SmolLM2 at 2-8 rows in 2-3x the time of one row (20-27 ms against 9), and
the decoder's own layers at 3-4 rows in 1.5-1.8x the weight-first time: a whole SmolLM2-135M decode step at 3-4
rows took 110-117 ms, weight-first 66 ms (docs/performance.md). One row is left alone: both forms are bitwise the
same there. The results equal ``F.linear``'s up to the summation order (logits within ~1e-4).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

OUTPUT_LAYER_MAX_ROWS = 64  # weight-first was faster at every row count measured from 2 to 64
LAYER_MAX_ROWS = 4          # at 6-16 rows a whole decode step was no faster weight-first (within 5 %)


def _weight_first(layer: torch.nn.Linear, max_rows: int):
    def forward(x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, x.shape[-1])
        if rows.shape[0] <= 1 or rows.shape[0] > max_rows:
            return torch.nn.functional.linear(x, layer.weight, layer.bias)
        # contiguous: a transposed view would send attention and elementwise kernels down slower paths
        out = torch.mm(layer.weight, rows.T).T.contiguous()
        if layer.bias is not None:
            out = out + layer.bias
        return out.reshape(*x.shape[:-1], out.shape[-1])

    return forward


@contextlib.contextmanager
def weight_first_linears(model) -> Iterator[None]:
    """Within the block, the model's plain ``nn.Linear`` layers on the CPU compute few-row products weight-first
    (the output layer up to ``OUTPUT_LAYER_MAX_ROWS`` rows, the others up to ``LAYER_MAX_ROWS``); nothing
    changes on other devices, for quantized layers (``nn.Linear`` subclasses), or after the block. An unmerged
    adapter's own linears (PEFT's ``lora_A``, ``lora_B``, and a plain ``base_layer``) are plain ``nn.Linear`` and
    are patched too (evaluation merges adapters first, except on quantized weights)."""
    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    patched = []
    try:
        for module in model.modules():
            if type(module) is torch.nn.Linear and module.weight.device.type == "cpu" and "forward" not in vars(module):
                module.forward = _weight_first(module, OUTPUT_LAYER_MAX_ROWS if module is output else LAYER_MAX_ROWS)
                patched.append(module)
        yield
    finally:
        for module in patched:
            del module.forward
