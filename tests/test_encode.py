"""Training examples: the loss covers exactly the answer tokens, in chat and plain style."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from slm_sweep.data import Example
from slm_sweep.data.encode import IGNORE_INDEX, PadCollator, encode_for_training
from slm_sweep.models import load_model_and_tokenizer
from tests.conftest import CONF_DIR

EXAMPLE = Example(
    question="Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
    "How many clips did Natalia sell altogether in April and May?",
    answer="Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nNatalia sold 48+24 = <<48+24=72>>72 clips.\n#### 72",
    reference="72",
)


@pytest.fixture(scope="module")
def tokenizer():
    _, tok = load_model_and_tokenizer(OmegaConf.load(CONF_DIR / "model" / "tiny.yaml"))
    return tok


@pytest.mark.parametrize("style", ["chat", "plain"])
def test_loss_mask_covers_exactly_the_answer(tokenizer, style):
    enc = encode_for_training(tokenizer, EXAMPLE, style=style, max_length=1024)
    ids, labels = enc["input_ids"], enc["labels"]
    assert len(ids) == len(labels)
    answer_positions = [i for i, label in enumerate(labels) if label != IGNORE_INDEX]
    # one contiguous block at the end
    assert answer_positions == list(range(answer_positions[0], len(ids)))
    assert [labels[i] for i in answer_positions] == [ids[i] for i in answer_positions]
    answer_text = tokenizer.decode([ids[i] for i in answer_positions])
    expected = (" " if style == "plain" else "") + EXAMPLE.answer + tokenizer.eos_token
    assert answer_text == expected
    prompt_text = tokenizer.decode(ids[: answer_positions[0]])
    assert EXAMPLE.question in prompt_text and "#### 72" not in prompt_text
    if style == "chat":
        assert prompt_text.startswith("<|im_start|>user\n") and prompt_text.endswith("<|im_start|>assistant\n")
    else:
        assert prompt_text == f"Question: {EXAMPLE.question}\nAnswer:"


def test_truncation_keeps_the_prompt_and_cuts_the_answer(tokenizer):
    full = encode_for_training(tokenizer, EXAMPLE, style="chat", max_length=4096)
    n_prompt = full["labels"].count(IGNORE_INDEX)
    cut = encode_for_training(tokenizer, EXAMPLE, style="chat", max_length=n_prompt + 5)
    assert len(cut["input_ids"]) == n_prompt + 5
    assert cut["input_ids"] == full["input_ids"][: n_prompt + 5]
    assert sum(label != IGNORE_INDEX for label in cut["labels"]) == 5


def test_collator_pads_right_with_masked_labels():
    collate = PadCollator(pad_token_id=0)
    batch = collate([{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]}, {"input_ids": [8], "labels": [8]}])
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 6, 7], [8, -100, -100]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]


def test_examples_longer_than_max_length_are_dropped_whole():
    from slm_sweep.data import Example
    from slm_sweep.data.encode import encode_all
    from slm_sweep.models import build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer()
    short = Example("how many apples", "2+3=5\n#### 5", "5")
    long = Example("how many apples", " ".join(["apples"] * 200) + "\n#### 5", "5")
    kept = encode_all(tokenizer, [short, long], "chat", max_length=64)
    assert len(kept) == 1 and len(kept[0]["input_ids"]) <= 64
    assert kept[0]["labels"][-1] != -100  # the whole answer, end of turn included, is trained on


def test_plain_training_prompts_carry_the_bos_that_generation_prompts_carry():
    """A tokenizer that adds BOS (Llama, Gemma) in the plain style: the model is trained on the token ids it is
    scored on, BOS included."""
    from tokenizers import processors

    from slm_sweep.data.prompts import build_prompt
    from slm_sweep.evaluate.batching import encode_prompts
    from slm_sweep.models import build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer()
    bos = tokenizer.bos_token_id
    tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{tokenizer.bos_token} $A", special_tokens=[(tokenizer.bos_token, bos)])
    assert tokenizer("x")["input_ids"][0] == bos  # the tokenizer adds BOS by default
    enc = encode_for_training(tokenizer, EXAMPLE, style="plain", max_length=1024)
    prompt = encode_prompts(tokenizer, [build_prompt(tokenizer, EXAMPLE.question, style="plain")], 1024)[0]
    assert prompt[0] == bos and enc["input_ids"][: len(prompt)] == prompt
    assert enc["labels"][: len(prompt)] == [IGNORE_INDEX] * len(prompt)
    # a chat template that writes BOS itself gets no second one
    tokenizer.chat_template = tokenizer.bos_token + tokenizer.chat_template
    chat = encode_for_training(tokenizer, EXAMPLE, style="chat", max_length=1024)["input_ids"]
    assert chat[0] == bos and chat[1] != bos


GEMMA_LIKE_TEMPLATE = (  # Gemma 3's turn markup, with the newlines as string literals as Gemma's template has them
    "{{ bos_token }}{%- for m in messages -%}"
    "{{ '<start_of_turn>' + ('model' if m.role == 'assistant' else m.role) + '\\n' }}"
    "{{ m.content | trim }}{{ '<end_of_turn>\\n' }}{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<start_of_turn>model\\n' }}{%- endif -%}"
)


def test_a_trained_turn_ends_with_the_token_the_chat_template_ends_turns_with():
    """Gemma 3's tokenizer says eos_token <eos>, but its template ends a turn with <end_of_turn>: the model is
    trained on the conversation as the template writes it, not on an <eos> the template never writes."""
    from slm_sweep.data.prompts import build_prompt, end_of_turn
    from slm_sweep.models import build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer()
    tokenizer.add_special_tokens({"eos_token": "<eos>",
                                  "additional_special_tokens": ["<start_of_turn>", "<end_of_turn>"]})
    tokenizer.chat_template = GEMMA_LIKE_TEMPLATE
    assert end_of_turn(tokenizer) == "<end_of_turn>"
    ids = encode_for_training(tokenizer, EXAMPLE, style="chat", max_length=1024)["input_ids"]
    conversation = tokenizer.apply_chat_template(
        [{"role": "user", "content": EXAMPLE.question}, {"role": "assistant", "content": EXAMPLE.answer}],
        tokenize=False)
    assert conversation.endswith("<end_of_turn>\n")
    assert ids == tokenizer(conversation.removesuffix("\n"), add_special_tokens=False)["input_ids"]
    assert build_prompt(tokenizer, EXAMPLE.question, style="chat").startswith(tokenizer.bos_token)
