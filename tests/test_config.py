"""Every config file composes, and the composed config validates; bad values give clear errors."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from slm_sweep.config import ConfigError, group_options, validate_config
from tests.conftest import compose_config

GROUPS = ("model", "method", "dataset", "trainer", "eval", "logger")


@pytest.mark.parametrize("group", GROUPS)
def test_every_option_of_every_group_composes(group):
    options = group_options(group)
    assert options, f"conf/{group}/ has no config files"
    for option in options:
        cfg = compose_config([f"{group}={option}"])
        OmegaConf.to_container(cfg, resolve=True)  # every interpolation resolves
        if group == "dataset" and cfg.dataset.eval_only:
            with pytest.raises(ConfigError, match="evaluation-only"):
                validate_config(cfg)
            validate_config(compose_config([f"{group}={option}", "method=zeroshot"]))
        else:
            validate_config(cfg)


@pytest.mark.parametrize("model", group_options("model"))
@pytest.mark.parametrize("method", group_options("method"))
def test_every_model_method_pair_composes(model, method):
    cfg = compose_config([f"model={model}", f"method={method}", "dataset=gsm8k"])
    validate_config(cfg)
    assert cfg.model.name == model and cfg.method.name == method


def test_study_models_point_at_the_hub_ids():
    expected = {
        "smollm135": "HuggingFaceTB/SmolLM2-135M-Instruct",
        "gemma270": "google/gemma-3-270m-it",
        "smollm360": "HuggingFaceTB/SmolLM2-360M-Instruct",
        "qwen05": "Qwen/Qwen2.5-0.5B-Instruct",
        "llama1b": "meta-llama/Llama-3.2-1B-Instruct",
    }
    for name, hub_id in expected.items():
        cfg = compose_config([f"model={name}"])
        assert cfg.model.source == "hub" and cfg.model.id == hub_id
        assert cfg.model.trust_remote_code is False


def test_method_defaults():
    lora = compose_config(["method=lora"]).method
    assert (lora.r, lora.alpha, lora.dropout, lora.target_modules, lora.use_dora) == (16, 32, 0.05, "all-linear", False)
    dora = compose_config(["method=dora"]).method
    assert dora.use_dora is True and dora.r == 16 and dora.name == "dora"
    assert compose_config(["method=fewshot"]).method.num_fewshot == 5
    assert compose_config(["method=zeroshot"]).method.train is False


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("method.lr=-0.001", "method.lr=-0.001 must be a positive number"),
        ("method.r=0", "method.r=0 must be a positive integer"),
        ("method.dropout=1.5", "method.dropout=1.5"),
        ("dataset.test_limit=0", "dataset.test_limit=0 must be a positive integer"),
        ("trainer.max_steps=-3", "trainer.max_steps=-3"),
        ("trainer.micro_batch_size=3", "multiple of trainer.micro_batch_size=3"),
        ("dataset.data_dir=/no/such/dir", "dataset.data_dir='/no/such/dir' is not an existing directory"),
        ("prompt.style=fancy", "prompt.style='fancy' is not one of: auto, chat, plain"),
        ("eval.ood_sets=[svamp,nope]", "eval.ood_sets[]='nope' is not one of"),
        ("seed=-1", "seed=-1 must be a non-negative integer"),
        ("trainer.micro_batch_tokens=-5", "trainer.micro_batch_tokens=-5 must be a positive integer or null"),
        ("trainer.packing=maybe", "trainer.packing='maybe' must be true or false"),
        ("trainer.throughput_warmup_steps=-1", "trainer.throughput_warmup_steps=-1 must be a non-negative integer"),
        ("trainer.precision=17", "trainer.precision='17' is not one of: 32-true"),
        ("trainer.weight_decay=-0.1", "trainer.weight_decay=-0.1 must be a non-negative number"),
        ("trainer.devices=3", "trainer.batch_size=16 must be a multiple of trainer.devices=3"),
        ("trainer.fused_adamw=sometimes", "trainer.fused_adamw='sometimes' must be true or false or null"),
        ("eval.device=gpu", "eval.device='gpu' is not one of: auto, cpu, cuda, cuda:N"),
        ("eval.dtype=fp8", "eval.dtype='fp8' is not one of: auto, float32, bfloat16, float16"),
        ("eval.cuda_graphs=often", "eval.cuda_graphs='often' must be true or false"),
    ],
)
def test_bad_values_are_named_with_what_is_allowed(override, message):
    cfg = compose_config(["method=lora", override])
    with pytest.raises(ConfigError) as err:
        validate_config(cfg)
    assert message in str(err.value)


@pytest.mark.parametrize(("group", "known"), [("model", "smollm135"), ("method", "dora"), ("dataset", "orcamath")])
def test_unknown_group_option_is_rejected_by_hydra_with_the_choices(group, known):
    from hydra.errors import MissingConfigException

    with pytest.raises(MissingConfigException) as err:
        compose_config([f"{group}=gpt5"])
    text = str(err.value)
    assert f"{group}/gpt5" in text and known in text
