"""Throughput arithmetic (slm_sweep.train.callbacks): accelerator peaks, FLOPs per token, MFU."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from transformers import LlamaConfig, LlamaForCausalLM

from slm_sweep.methods import apply_method
from slm_sweep.models import load_model_and_tokenizer
from slm_sweep.train.callbacks import (
    accelerator_name,
    attention_flops_per_pair,
    bf16_peak_flops,
    flops_per_token,
    matmul_parameter_count,
    mfu,
    peak_memory_mb,
)
from tests.conftest import CONF_DIR, compose_config


@pytest.mark.parametrize("name, peak", [
    ("NVIDIA H200", 989e12),
    ("NVIDIA H200 NVL", 835e12),
    ("NVIDIA H100 80GB HBM3", 989e12),
    ("NVIDIA H100 PCIe", 756e12),
    ("NVIDIA H100 NVL", 835e12),
    ("NVIDIA GH200 480GB", 989e12),
    ("NVIDIA A100-SXM4-80GB", 312e12),
    ("NVIDIA L40S", 362e12),
    ("NVIDIA L4", 121e12),
    ("NVIDIA GeForce RTX 4090", 165.2e12),
    ("NVIDIA GeForce RTX 3090 Ti", 80e12),
    ("NVIDIA GeForce RTX 3090", 71e12),
    ("Tesla V100-SXM2-16GB", None),
    ("Tesla T4", None),
    ("cpu", None),
])
def test_bf16_peaks_of_known_accelerators(name, peak):
    assert bf16_peak_flops(name) == peak


def resident_peak_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10  # KiB on Linux


# /proc's VmHWM and getrusage's ru_maxrss read the same peak through per-thread counters that lag by up to 64 pages
COUNTER_LAG_MB = 1.0


def test_the_figures_are_those_of_the_device_named_whatever_the_machine_has():
    """On a GPU machine too, the CPU has no bf16 peak and its memory is the process's peak resident memory."""
    assert accelerator_name(torch.device("cpu")) == accelerator_name("cpu") == "cpu"
    before = resident_peak_mb()
    assert before - COUNTER_LAG_MB <= peak_memory_mb(torch.device("cpu")) <= resident_peak_mb() + COUNTER_LAG_MB
    if torch.cuda.is_available():
        assert accelerator_name("cuda:0") == torch.cuda.get_device_name(0)
        assert peak_memory_mb("cuda:0") == torch.cuda.max_memory_allocated(0) / 2**20


def test_mfu_is_achieved_over_peak_flops():
    # 10k tokens/s of a 135M-parameter model in full fine-tuning on one H200
    flops_per_s = 10_000 * 6 * 135e6
    assert mfu(flops_per_s, bf16_peak_flops("NVIDIA H200")) == pytest.approx(flops_per_s / 989e12)
    assert mfu(2 * flops_per_s, 989e12, devices=2) == pytest.approx(mfu(flops_per_s, 989e12))
    assert mfu(flops_per_s, None) is None
    assert mfu(None, 989e12) is None


def test_attention_flops_count_every_layer_s_query_heads():
    """SmolLM2-135M's shape: 30 layers of 9 query heads of 64 (3 key/value heads, which do not count)."""
    config = LlamaConfig(vocab_size=100, hidden_size=576, intermediate_size=32, num_hidden_layers=30,
                         num_attention_heads=9, num_key_value_heads=3)
    model = apply_method(LlamaForCausalLM(config), compose_config(["method=lora"]).method)
    assert attention_flops_per_pair(model) == 12 * 30 * 9 * 64
    config.head_dim = 32  # a head width of its own (Gemma 3: 256 with a hidden size of 640)
    assert attention_flops_per_pair(LlamaForCausalLM(config)) == 12 * 30 * 9 * 32


@pytest.mark.parametrize("method, factor", [("full", 6), ("lora", 4), ("dora", 4)])
def test_flops_per_token_count_the_base_weights_only(method, factor):
    model, _ = load_model_and_tokenizer(OmegaConf.load(CONF_DIR / "model" / "tiny.yaml"))
    base = sum(p.numel() for p in model.parameters())  # tied embeddings: the head counts once
    model = apply_method(model, compose_config([f"method={method}"]).method)
    assert matmul_parameter_count(model) == base
    assert flops_per_token(model, adapters=method != "full") == factor * base


def test_an_untied_input_embedding_is_no_matmul():
    config = LlamaConfig(vocab_size=100, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, tie_word_embeddings=False)
    model = LlamaForCausalLM(config)
    total = sum(p.numel() for p in model.parameters())
    assert matmul_parameter_count(model) == total - 100 * 16


def test_adamw_is_fused_where_torch_has_the_kernel():
    import torch

    from slm_sweep.train.optimizers import build_optimizer

    params = [torch.nn.Parameter(torch.randn(4, 4)), torch.nn.Parameter(torch.randn(4))]
    assert build_optimizer(params, 1e-3).defaults["fused"] is True  # CPU kernel since torch 2.4
    assert not build_optimizer(params, 1e-3, fused=False).defaults["fused"]


def test_weight_decay_follows_the_shapes_the_parameters_had_before_sharding():
    """FSDP hands the optimizer flat 1-D shards: the matrices must still be decayed, the vectors not."""
    import torch

    from slm_sweep.train.module import CausalLMModule

    model = torch.nn.Linear(4, 4)
    module = CausalLMModule(model, lr=1e-3, weight_decay=0.1)
    for param in model.parameters():
        param.data = param.data.flatten()  # what FSDP's sharded views look like
    groups = module.configure_optimizers()["optimizer"].param_groups
    assert [(g["weight_decay"], [p.numel() for p in g["params"]]) for g in groups] == [(0.1, [16]), (0.0, [4])]


def test_a_cell_s_cpu_peak_leaves_out_what_earlier_cells_left_unreachable():
    """Cells of a sweep share one process: 400 MB held only by a reference cycle (as a finished cell's objects can
    be) is freed before the peak starts again, so the next cell does not report it as its own."""
    import gc

    from slm_sweep.train.callbacks import reset_peak_memory

    class Holder:
        pass

    reset_peak_memory()
    before = peak_memory_mb("cpu")
    gc.disable()  # as between two collections: the cycle is still there when the next cell starts
    try:
        holder = Holder()
        holder.itself, holder.buffer = holder, torch.ones(100 * 2**20)  # 400 MB, resident
        del holder
        assert peak_memory_mb("cpu") > before + 300
        reset_peak_memory()
        assert peak_memory_mb("cpu") < before + 100
    finally:
        gc.enable()


def test_the_dispatch_count_follows_each_method_s_extra_work_and_a_decode_step_reads_nothing_back(tmp_path):
    """bench/dispatch_count.py on the tiny model: LoRA's adapted layers dispatch more operations than full
    fine-tuning, DoRA's more again (the order of their step times on a GPU bound by dispatch), and the static
    engine's decode step, which a CUDA graph records, reads no value back to the host."""
    import json
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    import dispatch_count

    result = dispatch_count.main(["--model", "tiny", "--batch-size", "2", "--length", "16", "--slots", "4",
                                  "--columns", "24", "--json", str(tmp_path / "counts.json")])
    training = result["training"]
    assert training["full"]["total"] < training["lora"]["total"] < training["dora"]["total"]
    assert training["full"]["trainable_tensors"] < training["lora"]["trainable_tensors"]
    assert all(counts["forward"] > 0 and counts["backward"] > 0 for counts in training.values())
    assert result["decode"]["total"] > 0 and result["decode"]["host_reads"] == 0
    assert json.loads((tmp_path / "counts.json").read_text())["training"]["lora"]["to_full"] > 1
