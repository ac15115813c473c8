"""Prompt text and few-shot sampling: the plain style is lm-eval's gsm8k format, the shots are lm-eval's draws."""

from __future__ import annotations

import pytest

from slm_sweep.data import Example
from slm_sweep.data.prompts import ShotSampler, build_prompt, build_target


def _pool(n: int) -> list[Example]:
    return [Example(f"question {i}?", f"step {i}\n#### {i}", str(i)) for i in range(n)]


def test_plain_prompt_is_lm_eval_gsm8k_format():
    shots = [Example("What is 1+1?", "1+1=2\n#### 2", "2"), Example("What is 2+2?", "2+2=4\n#### 4", "4")]
    prompt = build_prompt(None, "What is 3+3?", shots, style="plain")
    assert prompt == (
        "Question: What is 1+1?\nAnswer: 1+1=2\n#### 2\n\n"
        "Question: What is 2+2?\nAnswer: 2+2=4\n#### 4\n\n"
        "Question: What is 3+3?\nAnswer:"
    )
    assert build_prompt(None, "What is 3+3?", (), style="plain") == "Question: What is 3+3?\nAnswer:"


def test_plain_target_starts_with_the_target_delimiter():
    class Tok:
        eos_token = "<eos>"

    assert build_target(Tok(), "x\n#### 1", "plain") == " x\n#### 1<eos>"


def test_draw_is_lm_eval_context_sampler_with_its_seed():
    samplers = pytest.importorskip("lm_eval.api.samplers")
    pool = _pool(50)
    docs = [{"question": e.question, "answer": e.answer} for e in pool]
    reference = samplers.ContextSampler(docs, rnd=1234)
    questions = [f"test question {i}" for i in range(30)]

    ours = ShotSampler(pool, 5, seed=1234).draw(questions)

    theirs = [reference.sample(n=5) for _ in questions]
    assert [[s.question for s in shots] for shots in ours] == [[d["question"] for d in shots] for shots in theirs]


def test_each_draw_starts_a_fresh_stream():
    sampler = ShotSampler(_pool(40), 3, seed=7)
    questions = [f"q{i}" for i in range(5)]
    first = sampler.draw(questions)
    assert sampler.draw(questions) == first
    assert sampler.draw(questions[:2]) == first[:2]
    assert ShotSampler(_pool(40), 3, seed=8).draw(questions) != first


def test_a_question_from_the_pool_follows_lm_eval_same_split_rule():
    samplers = pytest.importorskip("lm_eval.api.samplers")
    pool = _pool(12)
    docs = [{"question": e.question, "answer": e.answer} for e in pool]
    reference = samplers.ContextSampler(docs, rnd=3)
    questions = [e.question for e in pool[:8]]

    ours = ShotSampler(pool, 4, seed=3).draw(questions)

    theirs = [reference.sample(n=4, eval_doc=docs[i]) for i in range(8)]
    assert [[s.question for s in shots] for shots in ours] == [[d["question"] for d in shots] for shots in theirs]
    for question, shots in zip(questions, ours):
        assert question not in [s.question for s in shots]


def test_zero_shots_and_bad_k():
    assert ShotSampler(_pool(3), 0, seed=0).draw(["a", "b"]) == [[], []]
    with pytest.raises(ValueError, match="must be >= 0"):
        ShotSampler(_pool(3), -1, seed=0)
    with pytest.raises(ValueError, match="num_fewshot=4 is larger than the 3 training examples"):
        ShotSampler(_pool(3), 4, seed=0)
    with pytest.raises(ValueError, match="differ from the test question"):
        ShotSampler(_pool(3), 3, seed=0).draw(["question 0?"])


def test_lm_eval_chat_turns_hold_lm_eval_question_text():
    from slm_sweep.models import build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer()
    shots = [Example("What is 1+1?", "1+1=2\n#### 2", "2")]
    prompt = build_prompt(tokenizer, "What is 3+3?", shots, style="chat", lm_eval_turns=True)
    assert prompt == ("<|im_start|>user\nQuestion: What is 1+1?\nAnswer:<|im_end|>\n"
                      "<|im_start|>assistant\n1+1=2\n#### 2<|im_end|>\n"
                      "<|im_start|>user\nQuestion: What is 3+3?\nAnswer:<|im_end|>\n<|im_start|>assistant\n")
    # without lm_eval_turns the user turn is the bare question, as trained cells see it
    assert build_prompt(tokenizer, "What is 3+3?", style="chat") == \
        "<|im_start|>user\nWhat is 3+3?<|im_end|>\n<|im_start|>assistant\n"


def test_instruction_follows_the_question_and_never_the_shots():
    from slm_sweep.models import build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer()
    shots = [Example("What is 1+1?", "1+1=2\n#### 2", "2")]
    assert build_prompt(tokenizer, "What is 3+3?", style="chat", system="Be brief.", instruction="End with ####.") \
        == ("<|im_start|>system\nBe brief.<|im_end|>\n"
            "<|im_start|>user\nWhat is 3+3?\n\nEnd with ####.<|im_end|>\n<|im_start|>assistant\n")
    assert build_prompt(None, "What is 3+3?", shots, style="plain", instruction="End with ####.") == (
        "Question: What is 1+1?\nAnswer: 1+1=2\n#### 2\n\nQuestion: What is 3+3?\n\nEnd with ####.\nAnswer:")


def test_resolve_format_per_method_and_prompt_settings():
    from slm_sweep.data.prompts import resolve_format
    from slm_sweep.models import build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer()
    chat, plain = {"style": "auto", "system": "Be brief."}, {"style": "plain", "system": None}
    zeroshot = {"name": "zeroshot", "num_fewshot": 0, "prompt_format": "as_trained"}
    fewshot = {"name": "fewshot", "num_fewshot": 5, "shot_seed": 1234, "prompt_format": "lm_eval"}
    fewshot_chat = {**fewshot, "name": "fewshot_chat", "prompt_format": "lm_eval_chat"}

    assert resolve_format(zeroshot, chat, tokenizer, seed=3).describe() == {
        "format": "as_trained", "style": "chat", "system": "Be brief.", "instruction": None, "num_fewshot": 0,
        "shot_seed": None}
    assert resolve_format(zeroshot, plain, tokenizer, seed=3).style == "plain"
    for prompt in (chat, plain):  # the few-shot formats ignore prompt.style and prompt.system
        assert resolve_format(fewshot, prompt, tokenizer, seed=3).describe() == {
            "format": "lm_eval", "style": "plain", "system": None, "instruction": None, "num_fewshot": 5,
            "shot_seed": 1234}
        assert resolve_format(fewshot_chat, prompt, tokenizer, seed=3).style == "chat"
    # a trained method (no prompt_format) is scored as it is trained
    assert resolve_format({"name": "lora", "train": True}, chat, tokenizer, seed=3).name == "as_trained"
    # shot_seed null: the run seed draws the shots
    assert resolve_format({**fewshot, "shot_seed": None}, chat, tokenizer, seed=3).shot_seed == 3

    tokenizer.chat_template = None
    with pytest.raises(ValueError, match="method='fewshot_chat' .* needs a chat template .* use method=fewshot"):
        resolve_format(fewshot_chat, chat, tokenizer, seed=0)
    with pytest.raises(ValueError, match="prompt_format='plain' is not one of as_trained, lm_eval, lm_eval_chat"):
        resolve_format({**fewshot, "prompt_format": "plain"}, chat, tokenizer, seed=0)


# The date logic of Llama 3.x chat templates: today's date unless the caller passes date_string.
DATED_TEMPLATE = (
    "{%- if not date_string is defined %}{%- if strftime_now is defined %}"
    "{%- set date_string = strftime_now('%d %b %Y') %}{%- else %}{%- set date_string = 'never' %}{%- endif %}"
    "{%- endif %}<|im_start|>system\nToday Date: {{ date_string }}<|im_end|>\n"
    "{%- for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{%- endfor %}"
    "{%- if add_generation_prompt %}<|im_start|>assistant\n{%- endif %}"
)


def test_a_dated_chat_template_gets_a_fixed_date_not_today():
    from slm_sweep.data.prompts import CHAT_TEMPLATE_DATE
    from slm_sweep.models import build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer()
    tokenizer.chat_template = DATED_TEMPLATE
    prompt = build_prompt(tokenizer, "What is 3+3?", style="chat")
    assert f"Today Date: {CHAT_TEMPLATE_DATE}" in prompt
    undated = tokenizer.apply_chat_template([{"role": "user", "content": "x"}], tokenize=False)
    assert "Today Date: " in undated and CHAT_TEMPLATE_DATE not in undated  # what the template does on its own


def test_a_system_message_that_plain_prompts_leave_out_is_not_recorded(caplog):
    """result.json recorded a system message the plain prompts never held (the evaluation key held none)."""
    from slm_sweep.data.prompts import resolve_format
    from slm_sweep.models import build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer()
    zeroshot = {"name": "zeroshot", "num_fewshot": 0, "prompt_format": "as_trained"}
    tutor = "You are a careful math tutor."
    with caplog.at_level("WARNING"):
        plain = resolve_format(zeroshot, {"style": "plain", "system": tutor}, tokenizer, seed=0)
    assert plain.describe()["system"] is None and plain.render(tokenizer, "What is 2+2?") == \
        "Question: What is 2+2?\nAnswer:"
    assert "prompt.system is set but the prompts are plain text" in caplog.text
    tokenizer.chat_template = None  # auto resolves to plain: the same
    assert resolve_format(zeroshot, {"style": "auto", "system": tutor}, tokenizer, seed=0).system is None


def test_a_tokenizer_with_named_chat_templates_ends_a_turn_and_generates():
    """Several named templates load as a dict, which end_of_turn's cache could not hash: every chat cell failed."""
    from omegaconf import OmegaConf

    from slm_sweep.config import CONF_DIR
    from slm_sweep.data.prompts import end_of_turn
    from slm_sweep.evaluate.generate import generate
    from slm_sweep.models import load_model_and_tokenizer

    model, tokenizer = load_model_and_tokenizer(OmegaConf.load(CONF_DIR / "model" / "tiny.yaml"))
    template = tokenizer.chat_template
    tokenizer.chat_template = {"default": template, "tool_use": template}
    assert end_of_turn(tokenizer) == "<|im_end|>"
    prompt = build_prompt(tokenizer, "What is 2+2?", style="chat")
    assert prompt == "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n"
    [generation] = generate(model, tokenizer, [prompt], max_new_tokens=4)
    assert generation.new_tokens >= 1
