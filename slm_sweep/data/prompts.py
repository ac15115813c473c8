"""Prompts: the text a model sees for a question, in chat or plain style, with or without few-shot examples.

Two styles:

- ``chat``: the model's chat template; the question is the user turn, a worked answer the assistant turn, and
  few-shot examples are earlier turns of the same conversation.
- ``plain``: lm-evaluation-harness's gsm8k format, ``Question: ...\\nAnswer: ...`` with shots separated by a
  blank line. Used for models without a chat template and for parity with lm-eval.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Protocol

STYLES = ("auto", "chat", "plain")
PLAIN_FEWSHOT_DELIMITER = "\n\n"
PLAIN_TARGET_DELIMITER = " "


class QA(Protocol):
    question: str
    answer: str


def resolve_style(style: str, tokenizer) -> str:
    """``auto`` means chat when the tokenizer has a chat template, plain otherwise."""
    if style not in STYLES:
        raise ValueError(f"prompt.style={style!r} is not one of {', '.join(STYLES)}")
    if style == "auto":
        return "chat" if getattr(tokenizer, "chat_template", None) else "plain"
    if style == "chat" and not getattr(tokenizer, "chat_template", None):
        raise ValueError("prompt.style='chat' but this tokenizer has no chat template; use prompt.style=plain")
    return style


def plain_question(question: str) -> str:
    return f"Question: {question}\nAnswer:"


def build_prompt(tokenizer, question: str, shots: Sequence[QA] = (), style: str = "chat",
                 system: str | None = None) -> str:
    """The text after which the model generates its answer."""
    if style == "plain":
        context = "".join(
            plain_question(s.question) + PLAIN_TARGET_DELIMITER + s.answer + PLAIN_FEWSHOT_DELIMITER for s in shots
        )
        return context + plain_question(question)
    messages = [{"role": "system", "content": system}] if system else []
    for shot in shots:
        messages.append({"role": "user", "content": shot.question})
        messages.append({"role": "assistant", "content": shot.answer})
    messages.append({"role": "user", "content": question})
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def build_target(tokenizer, answer: str, style: str) -> str:
    """The text the model is trained to produce after the prompt: the answer and the end-of-turn token."""
    eos = tokenizer.eos_token or ""
    return (PLAIN_TARGET_DELIMITER + answer if style == "plain" else answer) + eos


class ShotSampler:
    """Draws k training examples for each question of an evaluation set, as lm-evaluation-harness does.

    lm-eval (``ContextSampler`` with ``fewshot_random_seed``) seeds one ``random.Random`` per task and calls
    ``rng.sample(train_docs, k)`` once per test document, in document order. ``draw`` does the same: a fresh
    stream from ``seed`` for every evaluation set, one draw per question, the pool in file order. So the shots
    of a question depend only on the seed, the pool and its position in the set, whatever else the run does.

    A question that is itself in the pool is never its own shot: lm-eval's rule for a few-shot split that is
    the test split (draw k + 1, drop the question, keep the first k) is applied to that question only.
    """

    def __init__(self, pool: Sequence[QA], k: int, seed: int):
        if k < 0:
            raise ValueError(f"num_fewshot={k} must be >= 0")
        if k > len(pool):
            raise ValueError(f"num_fewshot={k} is larger than the {len(pool)} training examples to draw shots from")
        self.pool, self.k, self.seed = list(pool), k, seed
        self._pool_questions = {s.question.strip() for s in self.pool}

    def draw(self, questions: Sequence[str]) -> list[list[QA]]:
        """The shots for each question, from a fresh seeded stream."""
        rng = random.Random(self.seed)
        return [self._shots(rng, question) for question in questions]

    def _shots(self, rng: random.Random, question: str) -> list[QA]:
        if self.k == 0:
            return []
        key = question.strip()
        if key not in self._pool_questions:
            return rng.sample(self.pool, self.k)
        others = [s for s in self.pool if s.question.strip() != key]
        if len(others) < self.k:
            raise ValueError(f"fewer than num_fewshot={self.k} training examples differ from the test question")
        shots = [s for s in rng.sample(self.pool, min(self.k + 1, len(self.pool))) if s.question.strip() != key]
        return shots[: self.k] if len(shots) >= self.k else rng.sample(others, self.k)
