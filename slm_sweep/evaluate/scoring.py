"""Answer extraction and scoring for math word problems.

The rules follow lm-evaluation-harness's ``gsm8k`` task (``lm_eval/tasks/gsm8k/gsm8k.yaml``,
metadata version 3.0) together with ``RegexFilter`` (``lm_eval/filters/extraction.py``) and the
``exact_match`` metric (``exact_match_hf_evaluate`` in ``lm_eval/api/metrics.py``):

* ``strict``: ``#### (\\-?[0-9\\.\\,]+)`` searched with ``findall``; the first match is kept.
* ``flexible``: ``(-?[$0-9.,]{2,})|(-?[0-9]+)``; the last match is kept, and because the pattern
  has two groups the first non-empty group of that match is used.
* Both the extracted prediction and the reference are normalised the same way: the regexes
  ``,``, ``\\$``, ``(?s).*#### `` and ``\\.$`` are deleted in that order, then the text is
  lower-cased (``ignore_case: true``, ``ignore_punctuation: false``); no whitespace is stripped.

Where lm-eval would fall back to ``"[invalid]"`` this module returns ``None``. An extraction
without any digit (``"..."``, ``","``) is also reported as ``None``: lm-eval keeps such strings,
but they can never equal a reference, so the score is the same.
"""

import math
import re
from decimal import Decimal

MODES = ("strict", "flexible")

STRICT_PATTERN = re.compile(r"#### (\-?[0-9\.\,]+)")
FLEXIBLE_PATTERN = re.compile(r"(-?[$0-9.,]{2,})|(-?[0-9]+)")
REGEXES_TO_IGNORE = (",", r"\$", r"(?s).*#### ", r"\.$")

_PATTERNS = {"strict": STRICT_PATTERN, "flexible": FLEXIBLE_PATTERN}
_GROUP_SELECT = {"strict": 0, "flexible": -1}

# A written number inside prose references (OrcaMath style). The minus sign only counts when it
# does not follow a word character, so ranges such as "3-5" do not turn into negative numbers.
_PROSE_NUMBER = re.compile(r"(?:(?<![\w.])-)?\$?(?:\d[\d,]*(?:\.\d+)?|\.\d+)")
_PLAIN_NUMBER = re.compile(r"-?(?:\d+\.?\d*|\.\d+)")
# A reference made only of the characters the strict filter accepts (plus "$"), e.g. "$1,234.".
_BARE_ANSWER = re.compile(r"-?[$0-9.,]*\d[$0-9.,]*")
_DIGIT = re.compile(r"\d")


def check_mode(mode: str) -> None:
    """Raise ValueError unless ``mode`` is one of MODES."""
    if mode not in MODES:
        raise ValueError(f"unknown scoring mode {mode!r}; expected one of {', '.join(MODES)}")


def normalise(text: str) -> str:
    """lm-eval ``exact_match`` normalisation as configured by the gsm8k task."""
    for pattern in REGEXES_TO_IGNORE:
        text = re.sub(pattern, "", text)
    return text.lower()


def select_match(matches: list, group_select: int) -> str | None:
    """Pick one ``findall`` result the way lm-eval's RegexFilter does; None where it falls back."""
    if not matches:
        return None
    match = matches[group_select]
    if isinstance(match, tuple):
        non_empty = [group for group in match if group]
        if not non_empty:
            return None
        match = non_empty[0]
    return match.strip()


def parse_number(text: str) -> float | None:
    """The value of a normalised number string such as "-12.5", ".25" or "72"; None otherwise."""
    if _PLAIN_NUMBER.fullmatch(text) is None:
        return None
    return float(text)


def canonical_number(value: int | float) -> str | None:
    """A plain decimal string for a number: integers without ".0", no exponent; None for nan/inf."""
    if isinstance(value, int):
        return str(value)
    if not math.isfinite(value):
        return None
    if value.is_integer():
        return str(int(value))
    return format(Decimal(repr(value)), "f")


def truncate_at_stop(text: str, stop: list[str]) -> str:
    """Cut ``text`` at the earliest occurrence of any non-empty stop string."""
    positions = [text.find(marker) for marker in stop if marker]
    found = [position for position in positions if position >= 0]
    return text[: min(found)] if found else text


def _answer_or_none(raw: str | None) -> str | None:
    if raw is None:
        return None
    answer = normalise(raw)
    return answer if _DIGIT.search(answer) else None


def extract_answer(text: str, mode: str) -> str | None:
    """The normalised answer a model gave in ``text`` under lm-eval's strict or flexible filter."""
    check_mode(mode)
    matches = _PATTERNS[mode].findall(text)
    return _answer_or_none(select_match(matches, _GROUP_SELECT[mode]))


def _last_prose_number(text: str) -> str | None:
    numbers = _PROSE_NUMBER.findall(text)
    return numbers[-1] if numbers else None


def reference_answer(answer: str | float | int) -> str | None:
    """The normalised reference for a dataset answer; None when it holds no number.

    GSM8K solutions give the part after the last "####"; a bare number string is normalised as
    lm-eval would; other prose gives its final number; ints and floats give canonical_number.
    """
    if isinstance(answer, bool) or not isinstance(answer, (str, int, float)):
        raise TypeError(f"reference answer must be str, int or float, not {type(answer).__name__}")
    if not isinstance(answer, str):
        return canonical_number(answer)
    if "####" in answer:
        return _answer_or_none(answer.split("####")[-1].strip())
    stripped = answer.strip()
    if _BARE_ANSWER.fullmatch(stripped):
        return normalise(stripped)
    return _answer_or_none(_last_prose_number(answer))


def _check_tolerance(tolerance: float) -> None:
    if not (math.isfinite(tolerance) and tolerance >= 0):
        raise ValueError(f"tolerance must be a finite number >= 0, got {tolerance!r}")


def numbers_close(prediction: str, reference: str, tolerance: float) -> bool:
    """|pred - ref| <= tolerance * max(1, |ref|) for two number strings; False if either is not one."""
    predicted, expected = parse_number(prediction), parse_number(reference)
    if predicted is None or expected is None:
        return False
    return abs(predicted - expected) <= tolerance * max(1.0, abs(expected))


def is_correct(text: str, reference: str | float | int, mode: str, tolerance: float | None = None) -> bool:
    """Whether the answer extracted from ``text`` matches the reference.

    With ``tolerance`` None this is lm-eval's exact match of normalised strings ("72.0" != "72");
    otherwise both sides are compared as numbers with a relative tolerance.
    """
    check_mode(mode)
    if tolerance is not None:
        _check_tolerance(tolerance)
    prediction = extract_answer(text, mode)
    expected = reference_answer(reference)
    if prediction is None or expected is None:
        return False
    if tolerance is None:
        return prediction == expected
    return numbers_close(prediction, expected, tolerance)
