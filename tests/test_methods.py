"""Methods (slm_sweep/methods.py): what each trains follows from its config's structure (train, peft), the peft
config comes from the method file, and trained adapters are kept, loaded again and merged faithfully."""

from __future__ import annotations

import copy
import functools

import pytest
import torch
from omegaconf import OmegaConf

from slm_sweep.methods import (
    MethodError,
    apply_method,
    count_parameters,
    load_trained,
    merge_adapters_for_eval,
    peft_config,
    save_atomically,
)
from slm_sweep.models import load_model_and_tokenizer
from slm_sweep.settings import steps_share
from tests.conftest import CONF_DIR, compose_config

ADAPTER_METHODS = ("lora", "dora", "pissa", "rslora")
PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@functools.cache
def _tiny():
    return load_model_and_tokenizer(OmegaConf.load(CONF_DIR / "model" / "tiny.yaml"))


def tiny():
    """A fresh copy of the tiny model (built once: its tokenizer is trained on the fly) and its tokenizer."""
    model, tokenizer = _tiny()
    return copy.deepcopy(model), tokenizer


def method(*overrides: str):
    return compose_config(list(overrides)).method


@pytest.mark.parametrize("name", ADAPTER_METHODS)
def test_adapter_methods_train_only_their_adapters_on_every_projection(name):
    model, _ = tiny()
    model = apply_method(model, method(f"method={name}"))
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert any("lora_magnitude_vector" in n for n in trainable) == (name == "dora")
    for proj in PROJECTIONS:
        assert any(proj in n for n in trainable), proj
    assert not any("embed_tokens" in n or "lm_head" in n for n in trainable)


def test_full_trains_every_weight_and_untrained_methods_none():
    model, _ = tiny()
    model = apply_method(model, method("method=full"))
    trainable, total = count_parameters(model)
    assert trainable == total
    model = apply_method(model, method("method=zeroshot"))
    assert count_parameters(model)[0] == 0


def test_what_a_method_does_follows_from_its_structure_not_its_name():
    model, _ = tiny()
    renamed = method("method=dora", "method.name=full")  # a peft block: adapters, whatever the name says
    assert all("lora_" in n for n, p in apply_method(model, renamed).named_parameters() if p.requires_grad)
    model, _ = tiny()
    untrained = method("method=full", "method.train=false")
    assert count_parameters(apply_method(model, untrained))[0] == 0


def test_short_names_and_sweep_overrides_reach_the_peft_config():
    cfg = method("method=lora", "method.r=4", "method.alpha=8", "method.dropout=0.1",
                 "method.target_modules=[q_proj,v_proj]")
    config = peft_config(cfg)
    assert (config.r, config.lora_alpha, config.lora_dropout) == (4, 8, 0.1)
    assert set(config.target_modules) == {"q_proj", "v_proj"} and config.task_type == "CAUSAL_LM"
    # what `python -m slm_sweep -m method=lora method.r=8,16,32` composes for each job
    assert [peft_config(method("method=lora", f"method.r={r}")).r for r in (8, 16, 32)] == [8, 16, 32]
    model, _ = tiny()
    assert apply_method(model, cfg).peft_config["default"].r == 4


def test_lora_family_variants_are_lora_config_arguments():
    assert peft_config(method("method=dora")).use_dora is True
    assert peft_config(method("method=rslora")).use_rslora is True
    pissa = peft_config(method("method=pissa", "method.r=8"))
    assert pissa.init_lora_weights == "pissa" and pissa.lora_alpha == 8 and pissa.lora_dropout == 0.0
    lora = peft_config(method("method=lora"))
    assert (lora.use_dora, lora.use_rslora, lora.init_lora_weights) == (False, False, True)


def test_a_peft_block_must_build_a_peft_config():
    cfg = method("method=lora")
    OmegaConf.set_struct(cfg, False)
    with pytest.raises(MethodError, match="must be a mapping with a _target_"):
        peft_config({"peft": {"r": 4}})
    with pytest.raises(MethodError, match="not a peft config"):
        peft_config({"peft": {"_target_": "collections.OrderedDict"}})
    cfg.peft.not_an_argument = 1
    with pytest.raises(MethodError, match="peft.LoraConfig.*cannot be built"):
        peft_config(cfg)
    with pytest.raises(MethodError, match=r"did you mean lora_alpha\? LoraConfig takes: .*\br\b"):
        peft_config({"peft": {"_target_": "peft.LoraConfig", "r": 4, "lora_alpah": 8}})


@pytest.mark.parametrize("steps, tinit, tfinal", [(460, 46, 92), (25, 2, 5), (3, 0, 0)])
def test_adalora_s_schedule_follows_the_training_steps(steps, tinit, tfinal):
    config = peft_config(compose_config(["method=adalora", f"trainer.max_steps={steps}"]).method)
    assert type(config).__name__ == "AdaLoraConfig"
    assert (config.total_step, config.tinit, config.tfinal) == (steps, tinit, tfinal)
    assert (config.init_r, config.target_r, config.lora_alpha) == (12, 8, 32)


def test_a_share_of_the_steps_is_read_as_written():
    assert steps_share(0.29, 100) == 29 and steps_share(0.1, 460) == 46 and steps_share(1, 7) == 7


@pytest.mark.parametrize("share, steps, error", [
    (1.5, 10, "the share 1.5 is not a number from 0 to 1"),
    ("a", 10, "the share 'a' is not a number from 0 to 1"),
    (0.5, -1, "the steps -1 are not a whole number of at least 0"),
])
def test_a_share_of_the_steps_names_a_bad_value(share, steps, error):
    with pytest.raises(ValueError, match=error):
        steps_share(share, steps)


def test_a_misspelt_target_module_is_named_with_the_models_linear_layers():
    """peft trains the entries that match and ignores the rest: down_prj would leave a layer untrained."""
    model, _ = tiny()
    ia3 = {"_target_": "peft.IA3Config", "target_modules": ["k_proj", "v_proj", "down_prj"],
           "feedforward_modules": ["down_prj"]}
    with pytest.raises(MethodError, match=r"target_modules lists \['down_prj'\], which name no module of this "
                                          r"model; its linear layers are: down_proj, gate_proj, k_proj"):
        apply_method(model, {"train": True, "peft": ia3})


def _logits(model, ids):
    model.eval()
    with torch.no_grad():
        return model(input_ids=ids).logits


def _one_step(name: str):
    """One AdamW step of a method on one fixed batch from the same tiny model; the effective weight of a
    projection afterwards (base + adapter, as merged)."""
    model, tok = tiny()
    torch.manual_seed(0)
    model = apply_method(model, method(f"method={name}", "method.dropout=0.0", "method.r=4"))
    ids = torch.tensor([tok("she bought 12 eggs and sold 5. 12-5=<<12-5=7>>7 #### 7")["input_ids"]])
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model(input_ids=ids, labels=ids).loss.backward()
    optimizer.step()
    merged = merge_adapters_for_eval(model)
    return merged.model.layers[0].self_attn.q_proj.weight.detach().clone()


def test_pissa_and_rslora_train_other_weights_than_lora():
    lora, pissa, rslora = (_one_step(name) for name in ("lora", "pissa", "rslora"))
    base = tiny()[0].model.layers[0].self_attn.q_proj.weight
    for trained in (lora, pissa, rslora):
        assert not torch.allclose(trained, base)
    assert not torch.allclose(pissa, lora, atol=1e-6) and not torch.allclose(rslora, lora, atol=1e-6)


def test_pissa_starts_from_the_principal_components_with_the_same_function():
    model, tok = tiny()
    ids = torch.tensor([tok("how many apples 3 + 4")["input_ids"]])
    before = _logits(model, ids)
    original = model.model.layers[0].self_attn.q_proj.weight.detach().clone()
    model = apply_method(model, method("method=pissa", "method.r=4"))
    layer = model.base_model.model.model.layers[0].self_attn.q_proj
    # the base keeps the residual; the adapter holds the principal part, so the function is unchanged
    assert not torch.allclose(layer.base_layer.weight, original, atol=1e-4)
    assert torch.count_nonzero(layer.lora_B["default"].weight) > 0
    torch.testing.assert_close(_logits(model, ids), before, atol=1e-4, rtol=1e-4)


def test_a_kept_pissa_adapter_is_loaded_onto_the_residual_it_was_trained_on(tmp_path):
    """PiSSA trains on the residual of the base weights; the kept adapter, loaded onto a fresh base as a re-scoring
    run does, computes what the trained model computed."""
    model, tok = tiny()
    model = apply_method(model, method("method=pissa", "method.r=4"))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.add_(torch.randn_like(p) * 0.05)
    ids = torch.tensor([tok("they gave 7 books to 3 friends")["input_ids"]])
    trained = _logits(model, ids)
    save_atomically(model, tmp_path / "adapter")

    fresh = tiny()[0]
    assert not torch.allclose(_logits(fresh, ids), trained, atol=1e-3)
    torch.testing.assert_close(_logits(load_trained(fresh, tmp_path / "adapter"), ids), trained,
                               atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("trained_dtype", [torch.float32, torch.bfloat16])
def test_kept_full_weights_are_loaded_in_the_dtype_they_were_kept_in(tmp_path, trained_dtype):
    """A bf16 base trains its weights in float32 under bf16-mixed (train.fit's trainable_in_float32) and keeps
    them so; under bf16-true they stay bf16. A re-scoring run loads them as kept, whatever its base's dtype, so
    that evaluation casts them as the run that trained them did."""
    model = tiny()[0].to(trained_dtype)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 1e-3)  # updates below bf16's resolution of the weights
    save_atomically(model, tmp_path / "model")

    reloaded = load_trained(tiny()[0].to(torch.bfloat16), tmp_path / "model")
    kept = dict(model.named_parameters())
    for name, p in reloaded.named_parameters():
        assert p.dtype == trained_dtype and torch.equal(p, kept[name]), name


def test_merged_adapters_compute_the_same_function():
    model, tok = tiny()
    model = apply_method(model, method("method=dora"))
    with torch.no_grad():  # move the adapters away from their identity initialisation
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    ids = torch.tensor([tok("How many eggs are left? 16 - 3 = 13")["input_ids"]])
    before = _logits(model, ids)
    merged = merge_adapters_for_eval(model)
    assert not any("lora_" in n for n, _ in merged.named_parameters())
    torch.testing.assert_close(_logits(merged, ids), before, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", ["lora", "dora"])
def test_adapters_on_a_bf16_base_scored_in_float32_keep_their_whole_update(name):
    """An adapter's update is small beside the weight: rounding the merged sum to the base's bf16 before the
    float32 evaluation cast would keep little of it, while full fine-tuning's float32 weights are scored as
    trained. Merged for a float32 evaluation, the weight is the float32 sum."""
    model, tok = tiny()
    model = apply_method(model.to(torch.bfloat16), method(f"method={name}"))
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_" in n:
                p.data = p.data.float()
            if "lora_B" in n:  # an update of a few parts in a thousand of the weight, as training leaves
                p.normal_(0, 1e-4)
    layer = model.base_model.model.model.layers[0].self_attn.q_proj
    base = layer.base_layer.weight.detach().float().clone()
    exact = layer.get_delta_weight("default").float()
    if name == "dora":  # DoRA's merged weight: magnitude times the unit-norm direction of W + delta
        combined = base + exact
        exact = layer.lora_magnitude_vector["default"].weight.float().view(-1, 1) * combined / \
            combined.norm(dim=1, keepdim=True) - base
    ids = torch.tensor([tok("How many eggs are left? 16 - 3 = 13")["input_ids"]])
    merged = merge_adapters_for_eval(copy.deepcopy(model), torch.float32)
    weight = merged.model.layers[0].self_attn.q_proj.weight
    assert weight.dtype == torch.float32
    torch.testing.assert_close(weight - base, exact, rtol=1e-4, atol=1e-7)
    # merged in the model's own dtype, the sum is rounded to bf16: most of the update is lost
    rounded = merge_adapters_for_eval(copy.deepcopy(model)).model.layers[0].self_attn.q_proj.weight
    assert rounded.dtype == torch.bfloat16
    assert exact.norm() < 0.01 * base.norm()
    assert (rounded.float() - base - exact).norm() > 0.3 * exact.norm()
    assert _logits(merged, ids).dtype == torch.float32


def test_qlora_trains_adapters_on_4_bit_weights_and_generates_unmerged():
    pytest.importorskip("bitsandbytes", reason="QLoRA needs bitsandbytes: pip install 'slm_sweep[qlora]'")
    from peft import PeftModel

    from slm_sweep.methods import is_quantized

    cfg = compose_config(["method=qlora", "method.r=4", "model.quantization.bnb_4bit_compute_dtype=float32"])
    assert cfg.model.quantization._target_ == "transformers.BitsAndBytesConfig" and cfg.method.name == "qlora"
    model, tok = load_model_and_tokenizer(cfg.model)
    model = apply_method(model, cfg.method)
    assert is_quantized(model)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    ids = torch.tensor([tok("she bought 12 eggs and sold 5")["input_ids"]])
    model.train()
    model(input_ids=ids, labels=ids).loss.backward()
    assert all(p.grad is not None for n, p in model.named_parameters() if p.requires_grad)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05, generator=generator)
    before = _logits(model, ids)
    with model.disable_adapter():
        assert (_logits(model, ids) - before).abs().max() > 0.1  # the adapters change what is compared below
    evaluated = merge_adapters_for_eval(model)
    assert isinstance(evaluated, PeftModel)  # merging into 4-bit weights would change the trained function
    torch.testing.assert_close(_logits(evaluated, ids), before)
    # greedy generation (cached, one token a step) picks what the full forward pass of the adapted model picks
    generated = evaluated.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=4,
                                   do_sample=False)
    expected = ids
    for _ in range(4):
        expected = torch.cat([expected, _logits(evaluated, expected)[:, -1:].argmax(-1)], dim=1)
    assert torch.equal(generated, expected)


@pytest.mark.slow
def test_pissa_and_rslora_cells_run_and_keep_other_weights_than_lora(tiny_cfg, tmp_path):
    """Whole cells (train, keep the adapter, merge, generate, score) of PiSSA and rsLoRA beside plain LoRA."""
    from safetensors.torch import load_file

    from slm_sweep.run import run

    adapters = {}
    for name in ("lora", "pissa", "rslora"):
        record = run(tiny_cfg(f"method={name}"), out_dir=tmp_path / name)
        assert record["status"] == "completed", record.get("error")
        assert record["method"] == name and record["metrics"]["train_steps"] == 3
        assert record["config"]["method"]["peft"]["_target_"] == "peft.LoraConfig"
        adapters[name] = load_file(tmp_path / name / "adapter" / "adapter_model.safetensors")
    assert adapters["lora"].keys() == adapters["pissa"].keys() == adapters["rslora"].keys()
    for other in ("pissa", "rslora"):
        assert any(not torch.allclose(adapters["lora"][k], adapters[other][k]) for k in adapters["lora"]), other


def test_an_adapter_whose_initialisation_is_randomized_is_trained_again_not_reloaded(tiny_cfg):
    """peft initialises an adapter again when loading it: PiSSA's randomized SVD (pissa_niter_N) gives another
    residual base each time, so kept weights would not be the trained model."""
    from slm_sweep.run import reloads_exactly

    assert reloads_exactly(tiny_cfg("method=pissa").method)
    assert reloads_exactly(tiny_cfg("method=lora").method)
    assert not reloads_exactly(tiny_cfg("method=pissa", "method.peft.init_lora_weights=pissa_niter_4").method)
