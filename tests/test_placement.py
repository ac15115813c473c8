"""Where a cell generates: eval.device / eval.dtype resolved (with a faked CUDA device), applied before the first
prompt, and recorded in result.json."""

from __future__ import annotations

import pytest
import torch

from slm_sweep.placement import PlacementError, resolve_device, resolve_dtype, resolve_placement
from slm_sweep.results import read_result
from slm_sweep.run import run


@pytest.fixture
def fake_cuda(monkeypatch):
    """torch reports one CUDA device with bf16 support; nothing is allocated on it."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a, **k: (9, 0))


def test_auto_is_the_cpu_without_an_accelerator(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device(None, trained_on="cpu") == torch.device("cpu")
    assert resolve_dtype("auto", torch.device("cpu"), torch.float32) == torch.float32


def test_auto_prefers_cuda_when_present(fake_cuda):
    assert resolve_device("auto") == torch.device("cuda", 0)
    assert resolve_dtype("auto", torch.device("cuda", 0), torch.float32) == torch.bfloat16
    assert resolve_dtype("float32", torch.device("cuda", 0), torch.float32) == torch.float32


def test_auto_follows_the_device_that_trained(fake_cuda, monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("auto", trained_on="cuda:1") == torch.device("cuda", 1)
    # trained on the CPU (e.g. trainer.accelerator=cpu) on a GPU machine: generate on the GPU all the same
    assert resolve_device("auto", trained_on="cpu") == torch.device("cuda", 0)


def test_weights_trained_on_a_gpu_this_machine_lacks_are_scored_where_auto_says(fake_cuda, monkeypatch):
    """Kept weights re-scored on another machine: the GPU that trained them is not a place to generate there."""
    assert resolve_device("auto", trained_on="cuda:1") == torch.device("cuda", 0)  # one GPU here
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto", trained_on="cuda:0") == torch.device("cpu")
    assert resolve_device("auto", trained_on="cuda:0") == resolve_device("auto")  # as the evaluation key says


def test_an_explicit_device_wins(fake_cuda):
    assert resolve_device("cpu", trained_on="cuda:0") == torch.device("cpu")
    assert resolve_device("cuda") == torch.device("cuda", 0)


def test_float16_where_bf16_is_not_native(fake_cuda, monkeypatch):
    """A V100 or T4 (compute capability 7) only emulates bf16, though torch.cuda.is_bf16_supported() says yes."""
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a, **k: (7, 0))
    assert resolve_dtype("auto", torch.device("cuda", 0), torch.float32) == torch.float16
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a, **k: (8, 0))
    assert resolve_dtype("auto", torch.device("cuda", 0), torch.float32) == torch.bfloat16


def test_unusable_devices_are_named(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(PlacementError, match="eval.device='cuda' but CUDA is not available here"):
        resolve_device("cuda")
    with pytest.raises(PlacementError, match="is not one of: auto, cpu, cuda, cuda:N"):
        resolve_device("tpu")


def test_missing_cuda_device_index_is_named(fake_cuda):
    with pytest.raises(PlacementError, match="has 1 CUDA device"):
        resolve_device("cuda:3")


def test_a_device_index_with_a_leading_zero_is_named(fake_cuda):
    """torch.device refuses cuda:01 with a RuntimeError: the setting is refused first, naming it."""
    with pytest.raises(PlacementError, match="eval.device='cuda:01' is not one of: auto, cpu, cuda, cuda:N"):
        resolve_device("cuda:01")
    assert resolve_device("cuda:0") == torch.device("cuda", 0)


class _Model(torch.nn.Module):
    """A model of the config's architecture, of no weights worth loading."""

    def __init__(self, config):
        super().__init__()
        self.config, self.layer = config, torch.nn.Linear(2, 2)


@pytest.mark.parametrize(("capability", "setting", "warned"), [
    ((7, 5), "auto", True),  # a T4: auto is float16
    ((8, 0), "auto", False),  # an A100: auto is bfloat16
    ((8, 0), "float16", True),
    ((7, 5), "float32", False),
])
def test_gemma_3_generating_in_float16_is_warned_of(fake_cuda, monkeypatch, caplog, capability, setting, warned):
    """Gemma 3 overflows in float16 (transformers#36822): a warning, not a refusal, naming what to set instead."""
    from omegaconf import OmegaConf
    from transformers import Gemma3TextConfig, LlamaConfig

    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a, **k: capability)
    eval_cfg, model_cfg = OmegaConf.create({"device": "auto", "dtype": setting}), OmegaConf.create({})
    with caplog.at_level("WARNING", logger="slm_sweep.placement"):
        placement = resolve_placement(eval_cfg, model_cfg, _Model(Gemma3TextConfig()))
    assert (placement.dtype == torch.float16) is warned
    messages = [r.getMessage() for r in caplog.records if r.name == "slm_sweep.placement"]
    assert bool(messages) is warned
    if warned:
        assert "gemma3_text" in messages[0] and "eval.dtype=float32 (or bfloat16)" in messages[0]
        assert ("compute capability below 8" in messages[0]) is (setting == "auto")
    caplog.clear()
    with caplog.at_level("WARNING", logger="slm_sweep.placement"):
        resolve_placement(eval_cfg, model_cfg, _Model(LlamaConfig()))
    assert not [r for r in caplog.records if r.name == "slm_sweep.placement"]  # other architectures: as before


class GenerationWatcher:
    """Records the device and dtype of the weights at every forward the model makes."""

    def __init__(self):
        self.seen: set[tuple[str, torch.dtype]] = set()

    def __call__(self, module, args, kwargs):
        weight = next(module.parameters())
        self.seen.add((weight.device.type, weight.dtype))


def _watch_generation(monkeypatch):
    """Hook every model that generates: wrap slm_sweep.evaluate.evaluator.generate."""
    import slm_sweep.evaluate.evaluator as evaluator

    watcher, real = GenerationWatcher(), evaluator.generate

    def watched(model, *args, **kwargs):
        handle = model.register_forward_pre_hook(watcher, with_kwargs=True)
        try:
            return real(model, *args, **kwargs)
        finally:
            handle.remove()

    monkeypatch.setattr(evaluator, "generate", watched)
    return watcher


@pytest.mark.parametrize("method", ["zeroshot", "lora"])
def test_every_method_generates_where_placement_says_and_records_it(tiny_cfg, tmp_path, monkeypatch, method):
    # eval.dtype=bfloat16 on CPU: a placement step that is skipped leaves the float32 weights and fails here
    watcher = _watch_generation(monkeypatch)
    record = run(tiny_cfg(f"method={method}", "eval.dtype=bfloat16", "dataset.test_limit=4"), out_dir=tmp_path)
    assert record["status"] == "completed", record.get("error")
    assert watcher.seen == {("cpu", torch.bfloat16)}
    stored = read_result(tmp_path)["placement"]
    assert stored["eval"]["device"] == "cpu" and stored["eval"]["dtype"] == "bfloat16"
    assert stored["eval"]["device_name"]
    if method == "lora":
        assert stored["train"]["device"] == "cpu" and stored["train"]["precision"] == "32-true"
        assert stored["train"]["dtype"] == "float32" and stored["train"]["devices"] == 1
    else:
        assert stored["train"] is None


def test_auto_moves_the_model_to_the_resolved_device(tiny_cfg, tmp_path, monkeypatch):
    """The resolver's answer is what the model is moved to (here a CPU device reached through ``auto``)."""
    import slm_sweep.placement as placement

    asked = []
    real = placement.resolve_device

    def spy(setting, trained_on=None):
        device = real(setting, trained_on)
        asked.append((setting, trained_on, device))
        return device

    monkeypatch.setattr(placement, "resolve_device", spy)
    moved = []
    real_to_device = placement.to_device
    monkeypatch.setattr(placement, "to_device", lambda model, device: moved.append(device) or
                        real_to_device(model, device))
    record = run(tiny_cfg("method=full", "dataset.test_limit=2"), out_dir=tmp_path)
    assert record["status"] == "completed", record.get("error")
    assert asked[-1][:2] == ("auto", "cpu") and moved == [asked[-1][2]]


def test_weights_trained_in_bf16_generate_in_the_dtype_their_evaluation_key_names(tiny_cfg, tmp_path, monkeypatch):
    """trainer.precision=bf16-true leaves bf16 weights; eval.dtype=auto on the CPU follows model.dtype (float32),
    which is what the evaluation key (computed before the model loads) says. A result that generated in another
    dtype under the same key is not reused."""
    import json

    from slm_sweep.sweep.resume import find_completed

    watcher = _watch_generation(monkeypatch)
    first = run(tiny_cfg("method=lora", "trainer.precision=bf16-true", "trainer.max_steps=1", "dataset.test_limit=2"),
                out_dir=tmp_path / "a")
    assert first["status"] == "completed", first.get("error")
    assert first["placement"]["train"]["dtype"] == "bfloat16"
    assert watcher.seen == {("cpu", torch.float32)} and first["placement"]["eval"]["dtype"] == "float32"
    # the same key, once written by generation in bf16 (as before the dtype followed the config): not reused
    key = first["identity"]["evaluation_key"]
    assert find_completed([tmp_path], key, own=tmp_path / "b", eval_dtype="float32") == tmp_path / "a"
    stored = json.loads((tmp_path / "a" / "result.json").read_text())
    stored["placement"]["eval"]["dtype"] = "bfloat16"
    (tmp_path / "a" / "result.json").write_text(json.dumps(stored))
    assert find_completed([tmp_path], key, own=tmp_path / "b", eval_dtype="float32") is None


def test_moving_to_a_gpu_makes_it_the_current_device(monkeypatch):
    """Streams and CUDA graphs made without a device land on the current one: evaluation on cuda:1 must make cuda:1
    current, or the decode step's graph is captured on cuda:0 and records nothing (faked CUDA calls)."""
    from slm_sweep import placement

    made_current, moved = [], []
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    monkeypatch.setattr(torch.cuda, "set_device", made_current.append)

    class Model:
        def to(self, device):
            moved.append(device)
            return self

    placement.to_device(Model(), torch.device("cuda", 1))
    placement.to_device(Model(), torch.device("cpu"))
    assert made_current == [torch.device("cuda", 1)] and moved == [torch.device("cuda", 1), torch.device("cpu")]


@pytest.mark.parametrize("compute", [torch.bfloat16, "bfloat16", "torch.bfloat16"])
def test_a_quantized_model_records_the_dtype_its_quantized_layers_compute_in(compute, caplog):
    """After k-bit preparation a 4-bit model's first weights are float32 embeddings; its 4-bit layers compute in
    bnb_4bit_compute_dtype, which is what a reader of result.json needs."""
    from omegaconf import OmegaConf
    from transformers import BitsAndBytesConfig

    class Quantized(torch.nn.Module):
        is_quantized = True

        def __init__(self):
            super().__init__()
            self.embed = torch.nn.Embedding(4, 2)  # float32
            self.config = type("Config", (), {})()
            bnb = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=torch.bfloat16)
            self.config.quantization_config = bnb if compute is torch.bfloat16 else \
                {**bnb.to_dict(), "bnb_4bit_compute_dtype": compute}

    placement = resolve_placement(OmegaConf.create({"device": "cpu", "dtype": "auto"}), OmegaConf.create({}),
                                  Quantized())
    assert placement.describe()["dtype"] == "float32" and placement.describe()["compute_dtype"] == "bfloat16"
    with caplog.at_level("WARNING", logger="slm_sweep.placement"):
        asked = resolve_placement(OmegaConf.create({"device": "cpu", "dtype": "float16"}), OmegaConf.create({}),
                                  Quantized())
    assert asked == placement  # the setting does not change a quantized model's dtypes, and says so
    assert "eval.dtype=float16 is set aside for a quantized model (QLoRA)" in caplog.text
    plain = resolve_placement(OmegaConf.create({"device": "cpu", "dtype": "auto"}), OmegaConf.create({}),
                              torch.nn.Linear(2, 2))
    assert "compute_dtype" not in plain.describe()


def tiny_gemma3():
    """A small random Gemma 3 (gemma270's architecture): one rotary frequency pair per attention type."""
    from transformers import AutoModelForCausalLM, Gemma3TextConfig

    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(Gemma3TextConfig(
        vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, head_dim=32, max_position_embeddings=1024,
        layer_types=["sliding_attention", "full_attention"]))


def rotary_dtypes(model) -> dict[str, torch.dtype]:
    return {name: buffer.dtype for name, buffer in model.named_buffers() if name.endswith("inv_freq")}


@pytest.mark.parametrize("architecture", ["llama", "gemma3"])
def test_a_cast_for_evaluation_computes_what_loading_in_that_dtype_does(tmp_path, architecture):
    """Evaluation casts a float32 model to bf16 (eval=gpu) and merges adapters through float32: the weights are
    cast, the rotary frequencies stay float32 as from_pretrained(dtype=bfloat16) keeps them (Gemma 3's one pair
    per attention type too), so the logits are those of the model loaded in bf16, at every position (a rounded
    frequency moves the later angles most)."""
    from transformers import AutoModelForCausalLM

    from slm_sweep.methods import apply_method, merge_adapters_for_eval
    from slm_sweep.placement import to_dtype
    from tests.conftest import compose_config
    from tests.test_methods import tiny

    (tiny()[0] if architecture == "llama" else tiny_gemma3()).save_pretrained(tmp_path / "model")
    ids = torch.randint(0, 100, (1, 600))
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "model", dtype=torch.bfloat16)
    assert rotary_dtypes(loaded) and set(rotary_dtypes(loaded).values()) == {torch.float32}
    cast = to_dtype(AutoModelForCausalLM.from_pretrained(tmp_path / "model", dtype=torch.float32), torch.bfloat16)
    assert rotary_dtypes(cast) == rotary_dtypes(loaded) and cast.dtype == torch.bfloat16
    with torch.no_grad():
        torch.testing.assert_close(cast(ids).logits, loaded(ids).logits, rtol=0, atol=0)

    adapted = apply_method(AutoModelForCausalLM.from_pretrained(tmp_path / "model", dtype=torch.bfloat16),
                           compose_config(["method=lora"]).method)
    merged = merge_adapters_for_eval(adapted)  # LoRA's B starts at zero: the base's function
    assert rotary_dtypes(merged) == rotary_dtypes(loaded)
    with torch.no_grad():
        torch.testing.assert_close(merged(ids).logits, loaded(ids).logits, rtol=0, atol=0)
