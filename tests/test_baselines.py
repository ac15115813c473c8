"""The four baselines (zeroshot, zeroshot_instructed, fewshot, fewshot_chat): their prompts on a real GSM8K
question, independent of how trained cells are prompted, validated, recorded in result.json, run end to end."""

from __future__ import annotations

import random

import pytest
from omegaconf import OmegaConf

from slm_sweep.config import ConfigError, validate_config
from slm_sweep.data.prompts import resolve_format
from slm_sweep.evaluate.evaluator import build_eval_prompts
from slm_sweep.models import build_tiny_tokenizer
from slm_sweep.results import read_result
from slm_sweep.run import load_data, run
from tests.conftest import CONF_DIR, DATA_ROOT, compose_config

BASELINES = ("zeroshot", "zeroshot_instructed", "fewshot", "fewshot_chat")
INSTRUCTION = OmegaConf.load(CONF_DIR / "method" / "zeroshot_instructed.yaml").instruction


def _first_prompt(cfg, tokenizer) -> tuple[str, object]:
    """The cell's prompt for its first test question, and that question with the cell's data."""
    data = load_data(cfg)
    prompt_format = resolve_format(cfg.method, cfg.prompt, tokenizer, int(cfg.seed))
    return build_eval_prompts(tokenizer, data.splits.test[:1], prompt_format, data.sampler)[0], data


def _chat(*turns: tuple[str, str]) -> str:
    """ChatML, the tiny tokenizer's template, written out by hand."""
    return "".join(f"<|im_start|>{role}\n{text}<|im_end|>\n" for role, text in turns) + "<|im_start|>assistant\n"


def test_each_baseline_prompt_on_a_real_gsm8k_question(requires_data):
    tokenizer = build_tiny_tokenizer()
    prompts = {}
    for method in BASELINES:
        cfg = compose_config(["model=tiny", f"method={method}", f"data_root={DATA_ROOT}", "dataset.test_limit=1"])
        prompts[method], data = _first_prompt(cfg, tokenizer)
    question = data.splits.test[0].question
    assert question.startswith("Janet’s ducks lay 16 eggs per day.")
    # lm-eval's sampler: one random.Random(1234) per evaluation set, rng.sample(whole train split, 5)
    shots = random.Random(1234).sample(list(data.splits.train), 5)
    assert len(data.splits.train) == 7473  # no validation split carved out of lm-eval's fewshot split

    assert prompts["zeroshot"] == _chat(("user", question))
    assert prompts["zeroshot_instructed"] == _chat(("user", f"{question}\n\n{INSTRUCTION}"))
    assert INSTRUCTION.endswith('in the form "#### <number>".')
    assert prompts["fewshot"] == "".join(
        f"Question: {s.question}\nAnswer: {s.answer}\n\n" for s in shots) + f"Question: {question}\nAnswer:"
    assert prompts["fewshot_chat"] == _chat(
        *[turn for s in shots for turn in (("user", f"Question: {s.question}\nAnswer:"), ("assistant", s.answer))],
        ("user", f"Question: {question}\nAnswer:"))


def test_few_shot_formats_do_not_follow_the_trained_cells_prompt_settings(tiny_cfg):
    tokenizer = build_tiny_tokenizer()
    other = ("prompt.style=plain", "prompt.system=Be brief.")
    for method in ("fewshot", "fewshot_chat"):
        assert _first_prompt(tiny_cfg(f"method={method}", *other), tokenizer)[0] == \
            _first_prompt(tiny_cfg(f"method={method}"), tokenizer)[0]
    # trained cells (and the zero-shot baselines beside them) are prompted as prompt.style says, as before
    for method in ("lora", "zeroshot"):
        default, data = _first_prompt(tiny_cfg(f"method={method}"), tokenizer)
        question = data.splits.test[0].question
        assert default == _chat(("user", question))
        assert _first_prompt(tiny_cfg(f"method={method}", *other), tokenizer)[0] == \
            f"Question: {question}\nAnswer:"


@pytest.mark.parametrize("override, message", [
    ("method.prompt_format=chat", "method.prompt_format='chat' is not one of: as_trained, lm_eval, lm_eval_chat"),
    ("method.instruction=''", "method.instruction='' must be a non-empty string or null"),
])
def test_bad_prompt_settings_fail_validation(tiny_cfg, override, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        validate_config(tiny_cfg("method=zeroshot_instructed", override))


@pytest.mark.parametrize("override, message", [
    ("+method.prompt_format=lm_eval", "method.prompt_format='lm_eval' cannot be used with method='lora'"),
    # training prompts carry neither, so evaluation prompts must not either
    ("+method.instruction='Answer with a number.'", "method.instruction='Answer with a number.' cannot be used with "
                                                    "method='lora', which is trained without it"),
    ("+method.num_fewshot=5", "method.num_fewshot=5 cannot be used with method='lora', which is trained without it"),
])
def test_a_trained_method_is_scored_as_it_is_trained(tiny_cfg, override, message):
    with pytest.raises(ConfigError, match=message):
        validate_config(tiny_cfg("method=lora", override))
    validate_config(tiny_cfg("method=lora", override.split("=")[0] + "=null"))


@pytest.mark.parametrize("method", ["zeroshot_instructed", "fewshot_chat"])
def test_new_baseline_cell_runs_and_records_its_prompt(tiny_cfg, tmp_path, method):
    cfg = tiny_cfg(f"method={method}", *(["method.num_fewshot=2"] if method == "fewshot_chat" else []))
    returned = run(cfg, out_dir=tmp_path)
    record = read_result(tmp_path)
    assert record["status"] == "completed", record.get("error")
    assert record["method"] == method and record["metrics"]["n_eval"] == 12
    assert record["metrics"]["trainable_params"] == 0 and record["identity"]["training_key"] is None
    prompt = record["prompt"]
    assert prompt == returned["prompt"]
    expected = {
        "zeroshot_instructed": {"format": "as_trained", "style": "chat", "system": None, "instruction": INSTRUCTION,
                                "num_fewshot": 0, "shot_seed": None, "shot_pool_size": None},
        "fewshot_chat": {"format": "lm_eval_chat", "style": "chat", "system": None, "instruction": None,
                         # the whole train split, as lm-eval's, whatever dataset.train_limit limits training to
                         "num_fewshot": 2, "shot_seed": 1234, "shot_pool_size": 7473},
    }[method]
    assert {k: v for k, v in prompt.items() if k != "example"} == expected
    assert prompt["example"] == _first_prompt(cfg, build_tiny_tokenizer())[0]
    assert prompt["example"].count("<|im_start|>user\n") == 1 + expected["num_fewshot"]
