"""Prompt text and few-shot sampling: the plain style is lm-eval's gsm8k format, the shots are lm-eval's draws."""

from __future__ import annotations

import pytest

from slm_sweep.data.prompts import ShotSampler, build_prompt, build_target
from slm_sweep.data.sources import Example


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
