"""Prompts: the text a model sees for a question, in chat or plain style, with or without few-shot examples.

Two styles:

- ``chat``: the model's chat template; the question is the user turn, a worked answer the assistant turn, and
  few-shot examples are earlier turns of the same conversation.
- ``plain``: lm-evaluation-harness's gsm8k format, ``Question: ...\\nAnswer: ...`` with shots separated by a
  blank line. Used for models without a chat template and for parity with lm-eval.

A cell's evaluation prompts follow its method's ``prompt_format`` (``PromptFormat``):

- ``as_trained``: as trained cells are trained and scored: ``prompt.style`` and ``prompt.system``; in the chat
  style the user turn is the bare question.
- ``lm_eval``: lm-eval's gsm8k task as its CLI runs it by default: plain text, whatever ``prompt.style`` says.
- ``lm_eval_chat``: lm-eval's gsm8k with ``--apply_chat_template --fewshot_as_multiturn``: each shot is a user
  turn ``Question: ...\\nAnswer:`` and an assistant turn with its worked answer, then the question as the last
  user turn and the template's generation prompt; no system message is passed (a template's own default system
  message, as Qwen2.5's and Llama 3's write, stays, as in lm-eval).

An ``instruction`` is appended to the evaluated question (never to the shots), after a blank line.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Protocol

log = logging.getLogger(__name__)

STYLES = ("auto", "chat", "plain")
PROMPT_FORMATS = ("as_trained", "lm_eval", "lm_eval_chat")
INSTRUCTION_SEPARATOR = "\n\n"
PLAIN_FEWSHOT_DELIMITER = "\n\n"
PLAIN_TARGET_DELIMITER = " "
# Llama 3.x chat templates write "Today Date: <the day it runs>" into the system block unless given a date: the
# template's own fallback date keeps a prompt the same on every day (training and scoring included).
CHAT_TEMPLATE_DATE = "26 Jul 2024"


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
                 system: str | None = None, *, lm_eval_turns: bool = False, instruction: str | None = None) -> str:
    """The text after which the model generates its answer.

    ``lm_eval_turns``: in the chat style, every user turn is lm-eval's ``Question: ...\\nAnswer:`` instead of the
    bare question. ``instruction``: appended to the question after a blank line.
    """
    if instruction:
        question = question + INSTRUCTION_SEPARATOR + instruction
    if style == "plain":
        context = "".join(
            plain_question(s.question) + PLAIN_TARGET_DELIMITER + s.answer + PLAIN_FEWSHOT_DELIMITER for s in shots
        )
        return context + plain_question(question)
    turn = plain_question if lm_eval_turns else str
    messages = [{"role": "system", "content": system}] if system else []
    for shot in shots:
        messages.append({"role": "user", "content": turn(shot.question)})
        messages.append({"role": "assistant", "content": shot.answer})
    messages.append({"role": "user", "content": turn(question)})
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False,
                                         date_string=CHAT_TEMPLATE_DATE)


def build_target(tokenizer, answer: str, style: str) -> str:
    """The text the model is trained to produce after the prompt: in the chat style the answer and the token that
    ends its turn (``end_of_turn``); in the plain style a space, the answer and the tokenizer's EOS."""
    if style == "plain":
        return PLAIN_TARGET_DELIMITER + answer + (tokenizer.eos_token or "")
    return answer + end_of_turn(tokenizer)


_TURN_PROBE = "7c1f0e"  # an assistant message no template alters
_END_OF_TURN: dict[tuple, str] = {}


def end_of_turn(tokenizer) -> str:
    """The special token the chat template writes right after an assistant message (``<|im_end|>``,
    ``<|eot_id|>``, ``<end_of_turn>``), so that a trained turn ends as the template ends one. It is not always
    the tokenizer's ``eos_token``: Gemma 3's is ``<eos>``, which its template never writes. The tokenizer's
    ``eos_token`` when the template writes no special token there."""
    # repr: a tokenizer with several named templates holds them as a dict
    key = (id(tokenizer), repr(tokenizer.chat_template), tokenizer.eos_token)
    if key not in _END_OF_TURN:
        _END_OF_TURN[key] = _template_end_of_turn(tokenizer) or tokenizer.eos_token or ""
    return _END_OF_TURN[key]


def _template_end_of_turn(tokenizer) -> str | None:
    user = [{"role": "user", "content": "1 + 1?"}]
    render = dict(tokenize=False, date_string=CHAT_TEMPLATE_DATE)
    prompt = tokenizer.apply_chat_template(user, add_generation_prompt=True, **render)
    whole = tokenizer.apply_chat_template([*user, {"role": "assistant", "content": _TURN_PROBE}], **render)
    if not whole.startswith(prompt + _TURN_PROBE):
        return None
    after = whole[len(prompt) + len(_TURN_PROBE):]
    specials = [t for t in tokenizer.all_special_tokens if t and after.startswith(t)]
    specials += [t.content for t in tokenizer.added_tokens_decoder.values() if t.special and after.startswith(t.content)]
    return max(specials, key=len) if specials else None


def shot_seed(method: Mapping[str, Any], seed: int) -> int | None:
    """The seed that draws a method's shots: its fixed ``shot_seed``, else the run's seed; None without shots."""
    if not int(method.get("num_fewshot") or 0):
        return None
    fixed = method.get("shot_seed")
    return int(seed if fixed is None else fixed)


@dataclass(frozen=True)
class PromptFormat:
    """Everything that decides the text of a cell's evaluation prompts; result.json records it under ``prompt``.

    ``name`` is one of PROMPT_FORMATS (module docstring); ``style`` the resolved rendering, chat or plain.
    """

    name: str = "as_trained"
    style: str = "chat"
    system: str | None = None
    instruction: str | None = None
    num_fewshot: int = 0
    shot_seed: int | None = None

    def render(self, tokenizer, question: str, shots: Sequence[QA] = ()) -> str:
        return build_prompt(tokenizer, question, shots, self.style, self.system,
                            lm_eval_turns=self.name == "lm_eval_chat", instruction=self.instruction)

    def describe(self) -> dict[str, Any]:
        return {"format": self.name, **{k: v for k, v in asdict(self).items() if k != "name"}}


def resolve_format(method: Mapping[str, Any], prompt: Mapping[str, Any], tokenizer, seed: int) -> PromptFormat:
    """The prompt format of a cell from its method (``prompt_format``, ``instruction``, shots) and, for
    ``as_trained``, the run's ``prompt`` settings; a format the tokenizer cannot render is an error here."""
    name = method.get("prompt_format") or "as_trained"
    if name not in PROMPT_FORMATS:
        raise ValueError(f"method.prompt_format={name!r} is not one of {', '.join(PROMPT_FORMATS)}")
    common = {"instruction": method.get("instruction") or None, "num_fewshot": int(method.get("num_fewshot") or 0),
              "shot_seed": shot_seed(method, seed)}
    if name == "as_trained":
        style = resolve_style(str(prompt.get("style") or "auto"), tokenizer)
        system = prompt.get("system") or None
        if system and style != "chat":
            log.warning("prompt.system is set but the prompts are plain text (prompt.style=%s resolved to %s), "
                        "which has no system message: it is left out of the prompts and of result.json",
                        prompt.get("style") or "auto", style)
            system = None
        return PromptFormat(name, style, system, **common)
    if name == "lm_eval_chat" and not getattr(tokenizer, "chat_template", None):
        raise ValueError(f"method={method.get('name')!r} (prompt_format lm_eval_chat) needs a chat template and "
                         "this tokenizer has none; use method=fewshot (lm-eval's plain format) for this model")
    return PromptFormat(name, "chat" if name == "lm_eval_chat" else "plain", None, **common)


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
