"""When a continuation ends (an end-of-sequence id, or a stop string in its decoded text) and what is kept of it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from slm_sweep.scoring import truncate_at_stop


@dataclass
class Generation:
    text: str            # decoded continuation, cut at the first stop string
    new_tokens: int      # tokens generated, up to and including the one that ended the sequence
    ended: bool          # by an end-of-sequence id or a stop string; False: cut off at max_new_tokens


def eos_token_ids(model, tokenizer) -> set[int]:
    """The ids that end a sequence: the model's generation config's (those ``model.generate`` stops at), the
    tokenizer's EOS (which plain-style training ends an answer with, and at whose text lm-eval cuts a generation)
    and the chat template's end-of-turn token (which chat-style training ends an answer with). A model whose
    generation config lacks one of them would otherwise write on past the end it was trained to write."""
    config = getattr(model, "generation_config", None)
    ids = getattr(config, "eos_token_id", None)
    found = set() if ids is None else {int(ids)} if isinstance(ids, int) else {int(i) for i in ids}
    if tokenizer is None:
        return found
    from slm_sweep.data.prompts import end_of_turn

    if tokenizer.eos_token_id is not None:
        found.add(int(tokenizer.eos_token_id))
    turn_end = end_of_turn(tokenizer) if getattr(tokenizer, "chat_template", None) else None
    if turn_end:
        token_id = tokenizer.convert_tokens_to_ids(turn_end)
        if isinstance(token_id, int) and token_id != tokenizer.unk_token_id:
            found.add(token_id)
    return found


class StopCheck:
    """Whether a continuation has ended: an end-of-sequence id, or a stop string in its decoded text.

    Only a token whose own text holds the last character of some stop string can complete one, so the tail is
    decoded only after such tokens; the per-token answer is memoised. A byte-level tokenizer may spend several
    tokens on one character: the tail is as many tokens as the longest stop string has UTF-8 bytes (plus two),
    and a token that alone decodes to part of a character (U+FFFD) may complete one.
    """

    def __init__(self, tokenizer, stop: Sequence[str], eos_ids: set[int]):
        self.tokenizer = tokenizer
        self.stop = [s for s in stop if s]
        self.eos_ids = set(eos_ids)
        self.window = max((len(s.encode("utf-8")) for s in self.stop), default=0) + 2
        self._last_chars = {s[-1] for s in self.stop}
        self._may_complete: dict[int, bool] = {}

    def finished(self, tokens: Sequence[int]) -> bool:
        last = tokens[-1]
        if last in self.eos_ids:
            return True
        if not self.stop or not self._can_complete(last):
            return False
        tail = self.tokenizer.decode(list(tokens[-self.window:]), skip_special_tokens=False)
        return any(s in tail for s in self.stop)

    def _can_complete(self, token: int) -> bool:
        known = self._may_complete.get(token)
        if known is None:
            text = self.tokenizer.decode([token], skip_special_tokens=False)
            known = not text or "\ufffd" in text or any(c in text for c in self._last_chars)
            self._may_complete[token] = known
        return known


def to_generation(tokenizer, tokens: Sequence[int], stop_check: StopCheck) -> Generation:
    text = tokenizer.decode(list(tokens), skip_special_tokens=True)
    return Generation(text=truncate_at_stop(text, stop_check.stop), new_tokens=len(tokens),
                      ended=bool(tokens) and stop_check.finished(tokens))
