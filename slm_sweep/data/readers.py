"""Reading a dataset's rows (local JSON/JSONL files, or the Hugging Face hub) into examples.

Each row becomes an Example: the question text (one or more fields joined), the training target and the
reference final number; rows without a parsable final number, and prose-answered questions asking who (whose
answer is a name), are skipped and counted apart, or are an error (the spec's ``unparsable_answers``).
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slm_sweep.data.errors import DataError
from slm_sweep.data.specs import as_list

log = logging.getLogger(__name__)

LOCAL_SUFFIXES = (".jsonl", ".json")
GSM8K_MARKER = "####"
SENTENCE_END = (".", "?", "!")
OFFLINE_ENV_VARS = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")


@dataclass(frozen=True)
class Example:
    question: str
    answer: str  # training target: the worked solution, or the number as text for numeric-target sets
    reference: str  # normalised final number (≈ in front: stated as a rounding), as scoring.reference_answer gives it


@dataclass(frozen=True)
class _Row:
    fields: Mapping[str, Any]
    where: str  # file and line/row, or hub split and row, for error messages


# ---------------------------------------------------------------------------------------------- files and the hub


def local_dir(spec: dict[str, Any], data_root: str | Path | None) -> Path | None:
    """The folder to read files from, or None to read from the hub: ``dataset.data_dir`` when set; else
    data_root/<local.dir_name> when data_root is set, unless that folder does not exist and the set has a hub
    id (data_root holds the sets that are local; OrcaMath, absent from it, still comes from the hub)."""
    if spec["data_dir"] is not None:
        return _existing_dir(Path(spec["data_dir"]).expanduser(), f"dataset.data_dir={spec['data_dir']}")
    if data_root is not None:
        _existing_dir(Path(data_root).expanduser(), f"data_root={data_root}")  # a mistyped root is no fallback
        path = data_root_folder(spec, data_root)
        if not read_from_data_root(spec, data_root):
            log.warning("dataset %r: %s/ is not in data_root=%s; reading it from the hub (%s)", spec["name"],
                        path.name, data_root, spec["hub"]["path"])
            return None
        return _existing_dir(path, f"data_root={data_root} with local.dir_name={path.name}")
    return None


def read_from_data_root(spec: Mapping[str, Any], data_root: str | Path) -> bool:
    """Whether a set is read from its folder under ``data_root``: when the folder is there, or the set has no hub
    id to fall back to."""
    return data_root_folder(spec, data_root).exists() or not (spec.get("hub") or {}).get("path")


def data_root_folder(spec: Mapping[str, Any], data_root: str | Path) -> Path:
    return Path(data_root).expanduser() / str((spec.get("local") or {}).get("dir_name") or spec["name"])


def _existing_dir(path: Path, origin: str) -> Path:
    if not path.is_dir():
        what = "is not a directory" if path.exists() else "does not exist"
        raise DataError(f"dataset folder {path} (from {origin}) {what}")
    return path


def read_examples(
    spec: dict[str, Any], role: str, folder: Path | None, skipped: dict[str, int],
    asking_who: dict[str, int] | None = None,
) -> list[Example]:
    """The examples of one role (train or test) of a resolved spec, from ``folder`` (see ``local_dir``) or the
    hub when it is None; ``skipped[role]`` gets the count of rows left out for want of a numeric reference, and
    ``asking_who[role]`` how many of them ask who (a prose answer's numbers are not a name)."""
    rows = _hub_rows(spec, role) if folder is None else _local_rows(spec, role, folder)
    examples, skipped[role], who = _to_examples(rows, spec, role)
    if asking_who is not None:
        asking_who[role] = who
    return examples


def _local_rows(spec: dict[str, Any], role: str, local_dir: Path) -> list[_Row]:
    return [row for path in _local_files(spec, role, local_dir) for row in _read_file(path)]


def _local_files(spec: dict[str, Any], role: str, local_dir: Path) -> list[Path]:
    files = (spec["local"] or {}).get("files") or {}
    names = as_list(files.get(role)) or [f"{role}.jsonl"]
    paths = [local_dir / name for name in names]
    for path in paths:
        if not path.is_file():
            present = sorted(p.name for p in local_dir.iterdir())
            raise DataError(
                f"dataset {spec['name']!r}: expected {role} file {path.name} in {local_dir}; "
                f"found: {', '.join(present) or 'nothing'}"
            )
    return paths


def _read_file(path: Path) -> list[_Row]:
    if path.suffix == ".jsonl":
        rows = _read_jsonl(path)
    elif path.suffix == ".json":
        rows = _read_json(path)
    else:
        raise DataError(
            f"{path}: can't read {path.suffix or 'suffix-less'} files; use one of {', '.join(LOCAL_SUFFIXES)}"
        )
    if not rows:
        raise DataError(f"{path} has no rows")
    return rows


def _read_jsonl(path: Path) -> list[_Row]:
    rows = []
    # lines end at "\n" alone: JSON strings may hold U+2028, U+2029 or U+0085 unescaped, which splitlines() breaks at
    for line_no, line in enumerate(_text(path).split("\n"), start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(
                f"{path}: line {line_no} is not valid JSON ({exc.msg.removesuffix(' at')} at column {exc.colno})"
            ) from None
        rows.append(_row(value, f"{path} line {line_no}"))
    return rows


def _read_json(path: Path) -> list[_Row]:
    try:
        value = json.loads(_text(path))
    except json.JSONDecodeError as exc:
        raise DataError(
            f"{path} is not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno} (char {exc.pos})"
        ) from None
    if not isinstance(value, list):
        raise DataError(f"{path}: expected a JSON array of row objects, got a JSON {type(value).__name__}")
    return [_row(item, f"{path} row {index}") for index, item in enumerate(value, start=1)]


def _text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path} is not UTF-8 text (byte {exc.start})") from None


def _row(value: Any, where: str) -> _Row:
    if not isinstance(value, dict):
        raise DataError(
            f"{where}: expected a JSON object with the question and answer fields, got {value!r:.80}"
        )
    return _Row(value, where)


def _hub_rows(spec: dict[str, Any], role: str) -> list[_Row]:
    hub = spec["hub"]
    if not hub or not hub.get("path"):
        raise DataError(_local_only_message(spec))
    splits = hub.get("splits") or {}
    if role not in splits:
        raise DataError(
            f"dataset {spec['name']!r}: hub.splits has no {role!r} entry (it has: {', '.join(splits) or 'none'})"
        )
    rows = []
    for split in as_list(splits[role]):
        where = f"hub {hub['path']} split {split!r}"
        rows.extend(
            _row(dict(item), f"{where} row {i}") for i, item in enumerate(_hub_split(spec, split), start=1)
        )
    if not rows:
        raise DataError(f"dataset {spec['name']!r}: hub {hub['path']} split(s) {splits[role]!r} have no rows")
    return rows


def _hub_split(spec: dict[str, Any], split: str):
    hub = spec["hub"]
    try:
        import datasets  # inside: a machine without the library cannot read the hub, which is a data problem

        return datasets.load_dataset(hub["path"], hub.get("name"), split=split, revision=hub.get("revision"))
    except Exception as exc:  # any hub/network/cache failure becomes one actionable message
        raise DataError(_hub_failure_message(spec, split, exc)) from exc


def _hub_failure_message(spec: dict[str, Any], split: str, exc: Exception) -> str:
    hub = spec["hub"]
    offline = [
        var for var in OFFLINE_ENV_VARS if os.environ.get(var, "").lower() in ("1", "true", "yes", "on")
    ]
    reason = f" ({' and '.join(offline)} set: offline, and it is not in the local cache)" if offline else ""
    return (
        f"dataset {spec['name']!r} could not be loaded from the Hugging Face hub{reason}: "
        f"{hub['path']} config {hub.get('name')!r} split {split!r}: {type(exc).__name__}: {exc}. "
        f"To read local files instead, {local_hint(spec)}"
    )


def _local_only_message(spec: dict[str, Any]) -> str:
    return f"dataset {spec['name']!r} is local only (no hub id is configured): {local_hint(spec)}"


def local_hint(spec: dict[str, Any]) -> str:
    local = spec["local"] or {}
    files = [name for names in (local.get("files") or {}).values() for name in as_list(names)]
    return (
        f"set dataset.data_dir=<folder holding {', '.join(files) or 'train.jsonl, test.jsonl'}> "
        f"or {data_root_hint(spec)}"
    )


def data_root_hint(spec: dict[str, Any]) -> str:
    """The fix for a set read only as an evaluation (out-of-domain or dedup) set: ``dataset.data_dir`` names the
    training set's folder, so only ``data_root`` applies to it."""
    return f"data_root=<folder holding {(spec['local'] or {}).get('dir_name') or spec['name']}/>"


# ---------------------------------------------------------------------------------------------- rows -> examples


ASKS_WHO = "asks who"  # why a row was left out: its answer is a name, and a number in its prose is not it


def _to_examples(rows: list[_Row], spec: dict[str, Any], role: str) -> tuple[list[Example], int, int]:
    """The rows' examples, how many rows were left out, and how many of those ask who."""
    examples = [_to_example(row, spec) for row in rows]
    kept = [example for example in examples if isinstance(example, Example)]
    who = sum(example == ASKS_WHO for example in examples)
    if not kept:
        raise DataError(
            f"dataset {spec['name']!r}: none of the {len(rows)} {role} rows (from {rows[0].where}) "
            f"has a numeric reference: {len(rows) - who} without a parsable final answer in field "
            f"{spec['answer']!r} ({spec['answer_format']} format), {who} asking who"
        )
    return kept, len(examples) - len(kept), who


def _to_example(row: _Row, spec: dict[str, Any]) -> Example | str | None:
    """The row's example; else None (no parsable number) or ASKS_WHO (skipped or an error, as the spec says)."""
    question = _question_text(row, as_list(spec["question"]))
    value = _field(row, spec["answer"])
    answer, reference = _answer_and_reference(row, spec["answer"], value, spec["answer_format"])
    if spec["answer_format"] == "prose" and asks_who(question):
        if spec["unparsable_answers"] == "error":
            raise DataError(f"{row.where}: the question asks who, so its answer has no numeric reference: "
                            f"{question!r:.120}; set unparsable_answers: skip to skip such rows")
        return ASKS_WHO
    if reference is None:
        if spec["unparsable_answers"] == "error":
            raise DataError(
                f"{row.where}: no parsable final number in field {spec['answer']!r} "
                f"({_format_rule(spec['answer_format'])}): {value!r:.120}; "
                "set unparsable_answers: skip to skip such rows"
            )
        return None
    return Example(question=question, answer=answer, reference=reference)


def _field(row: _Row, key: str) -> Any:
    value = row.fields.get(key)
    if value is None:
        problem = f"field {key!r} is null" if key in row.fields else f"missing field {key!r}"
        present = ", ".join(sorted(map(str, row.fields))) or "none"
        raise DataError(f"{row.where}: {problem}; fields present: {present}")
    return value


def _text_field(row: _Row, key: str) -> str:
    value = _field(row, key)
    if not isinstance(value, str):
        raise DataError(f"{row.where}: field {key!r} must be text, got {type(value).__name__} {value!r:.80}")
    return value


def _question_text(row: _Row, keys: list[str]) -> str:
    text = _join_sentences(_text_field(row, key) for key in keys)
    if not text:
        raise DataError(f"{row.where}: empty question text in field(s) {', '.join(keys)}")
    return text


def _join_sentences(parts) -> str:
    """Join text parts with a space, ending a part that lacks end punctuation with '.' (SVAMP bodies)."""
    text = ""
    for part in (p.strip() for p in parts):
        if not part:
            continue
        if text and not text.endswith(SENTENCE_END):
            text += "."
        text = f"{text} {part}" if text else part
    return text


def _answer_and_reference(row: _Row, key: str, value: Any, answer_format: str) -> tuple[str, str | None]:
    from slm_sweep.scoring import has_gsm8k_marker, reference_answer

    if answer_format == "number":
        number = _as_number(value)
        reference = None if number is None else reference_answer(number)
        return reference or "", reference
    text = _text_field(row, key)
    if answer_format == "gsm8k" and not has_gsm8k_marker(text):
        return text, None
    return text, reference_answer(text)


def asks_who(question: str) -> bool:
    """Whether a question asks for a person: its last question (the last sentence ending in "?", else its last
    sentence) starts with who/whose/whom ("Who has the most?"), has it after a list or an "among ..." opening
    ("Among A, B and C, who is the tallest?", "..., who then has more?"), asks to find out who ("Find out whose
    bag is heavier.") or which person ("Which student read more?") or the name of one ("What is the name of the
    2nd tallest student?") or of a thing that is no number ("What is the name of the shape?", not "What is the
    name of the largest number?"), or, with no digit in it, which (or what) team, box, color, fruit or other thing
    that is no number ("Which color has more balls?", "In which box are there more apples?", "In which of the two
    boxes ...?", "What fruit is more expensive?", "What is the color of ...?", "What kind of fruit ...?"; not
    "Which number is the largest?", "In which year ...?", "In which of the two years ...?", "Which smallest
    natural number ...?") or which of alternatives ("Which is heavier, bag A or bag B?", not "Which is greater,
    3/4 or 0.7?"); "which one" asks for a number where a sentence of the question lists the numbers themselves
    ("There are 0.8, 1/2 and 0.9. Among them, which one is the largest?", "The numbers 10, 11 and 12 are ...";
    not "The heights of Yuna, Jimin and Yoongi are 150, 145 and 148 cm. Which one is the tallest?"); a question
    that asks how many or how much asks for a number ("How many students, who like math, are left?", "Who read
    more, and by how much?")."""
    sentences = [s.strip() for s in _SENTENCE.split(question.strip()) if s.strip()]
    if not sentences:
        return False
    asked = next((s for s in reversed(sentences) if s.endswith("?")), sentences[-1])
    if _HOW_MUCH.search(asked):
        return False
    numbers = re.search(r"\d", asked) is not None
    if _NAME_ASKED.search(asked) or ((_WHICH_OF_THEM.search(asked) or _CATEGORY_ASKED.search(asked)) and not numbers):
        return True
    # "If Jimin, who is 10, ..., what is Yuna's age?": a clause about a person inside a question asking for a number
    if _WHAT_NUMBER.search(asked) and not _WHO_FIRST.search(asked):
        return False
    if _WHO.search(asked) is not None:
        return True
    # "There are 0.8, 1/2 and 0.9. Among them, which one is the largest?": the ones compared are the numbers listed
    # (not "The heights of Yuna, Jimin and Yoongi are 150, 145 and 148 cm. Which one is the tallest?")
    if _WHICH_ONE.search(asked) and any(_lists_numbers(s) for s in sentences if s is not asked):
        return False
    # which team, box, color or fruit, or which of alternatives: no number unless the alternatives are numbers
    # ("Which is greater, 3/4 or 0.7?")
    return _WHICH_OF.search(asked) is not None and not numbers


_SENTENCE = re.compile(r"(?<=[.!?])\s+")
_WHO = re.compile(r"^(?:who|whose|whom)\b|[,:;]\s*(?:who|whose|whom)\b|(?:^|\band\s)\s*among\b[^?]*\s(?:who|whose)\b"
                  r"|\b(?:find|determine|tell|guess|identify|say|know|wonder|write down)\s+(?:out\s+|me\s+|us\s+)?(?:who|whose|whom)\b"
                  r"|^which\s+(?:person|student|child|kid|friend|boy|girl|man|woman|player|one of them)\b",
                  re.IGNORECASE)
# "Which team/box/color/fruit ...": a noun whose answer is a name or a category; not one whose answer is a number
# ("Which number ...", "Which year ...", "Which two numbers ...", "Which natural number ..."), nor a verb in the
# noun's place ("Which is the largest?" may ask for a number); also after an opening "Among A, B and C, ..."
_QUANTITY_NOUN = (r"(?:number|numeral|digit|value|amount|quantity|sum|total|difference|product|quotient|fraction"
                  r"|decimal|integer|multiple|factor|divisor|remainder|result|answer|figure|percent|percentage|ratio"
                  r"|rate|price|cost|score|age|year|page|floor|row|length|width|height|weight|area|volume|distance"
                  r"|speed|time)s?")
_NOT_A_NOUN = r"(?:is|are|was|were|has|have|had|do|does|did|will|would|can|could|should|must|may|might|of)"
# the same after up to three words that qualify it ("two", "natural", "smallest natural", "three-digit"), none a verb
# ("Which box has the largest number?" asks for a box): only nouns that are no verb as well ("Which fruit costs
# more?" asks for a fruit)
_QUALIFIED_QUANTITY = (rf"(?:(?!{_NOT_A_NOUN}\b)[\w-]+\s+){{1,3}}?(?:number|numeral|digit|value|amount|quantity|sum"
                       r"|fraction|decimal|integer|multiple|factor|divisor)s?")
# ... also after a preposition ("In which box ...?", not "In which year ...?"), and "What color/fruit ...?"
_WHICH_OF = re.compile(
    rf"^(?:among\b[^?]*,\s*)?(?:(?:in|on|at|from|to|for|into|by|with)\s+)?which\s+"
    rf"(?!(?:{_QUANTITY_NOUN}|{_QUALIFIED_QUANTITY}|{_NOT_A_NOUN})\b)[a-z]"
    r"|^(?:(?:in|on|at|from|to|for|into|by|with)\s+)?what\s+(?:colou?r|fruit|shape|animal|flower|vegetable|sport)s?\b"
    r"|^which\b[^?]*\bor\b", re.IGNORECASE)
# "Which one ...?" (not "which one of them", a person: ``_WHO``), and numbers listed in the question ("0.8, 1/2 and
# 0.9", "3, 5, and 7"; not "1,000", nor "3 red and 4 blue balls")
_WHICH_ONE = re.compile(r"^(?:among\b[^?]*,\s*)?which\s+one\b(?!\s+of\b)", re.IGNORECASE)
_NUMBER_LIST = re.compile(r"\d(?:[\d./]*\d)?\s*(?:,\s+(?:and\s+)?|\s+and\s+)-?\.?\d")
# A sentence that lists the numbers themselves: it says "numbers" ("There are four numbers 0.8, 1/2, 0.9, and 1/3.",
# "The numbers 10, 11 and 12 are written on cards.") or names nothing beside them ("There are 0.8, 1/2 and 0.9."):
# no name (a capitalised word after the first: "The heights of Yuna, Jimin and Yoongi are 150, 145 and 148 cm.",
# "Students A, B and C scored 80, 90 and 85 points.") and no list of things ("the pencil, the pen and the crayon")
_NUMBERS_WORD = re.compile(r"\bnumbers?\b", re.IGNORECASE)
_NAMED = re.compile(r"(?<=\s)(?!I\b)[A-Z]|\b[a-z]+,\s+(?:and\s+)?the\s+[a-z]+\b|\b[a-z]+,\s+[a-z]+,?\s+and\s+[a-z]+\b")


def _lists_numbers(sentence: str) -> bool:
    """Whether ``sentence`` lists numbers and is about the numbers themselves (``_NUMBERS_WORD``, ``_NAMED``)."""
    if _NUMBER_LIST.search(sentence) is None:
        return False
    return _NUMBERS_WORD.search(sentence) is not None or _NAMED.search(sentence) is None


_HOW_MUCH = re.compile(r"\bhow\s+(?:many|much)\b", re.IGNORECASE)
_PERSON = r"(?:person|people|student|child|kid|friend|boy|girl|man|woman|player|one)s?"
# a question that wants a name: "the name of the person ...", "Find the person who ...", "Which of the two ..."
# ("the name of the tallest student", "the name of the 2nd tallest student": up to three words, an ordinal among
# them, before the person), or the name of a thing when it is asked for and no number ("What is the name of the
# shape?", "Write the names of the polygons."; not "What is the name of the largest number?")
_NAME_ASKED = re.compile(rf"\bnames?\s+of\s+the\s+(?:(?:[a-z-]+|\d+(?:st|nd|rd|th))\s+){{0,3}}?{_PERSON}\b"
                         rf"|\b(?:find|identify|determine|name)\s+the\s+{_PERSON}\s+(?:who|whose|with|that)\b"
                         r"|(?:^what(?:'s|\s+(?:is|are|was|were|will\s+be))|\b(?:find|write|give|tell|state|identify"
                         r"|determine)(?:\s+(?:me|us|down))?)\s+the\s+names?\s+of\s+(?:the|this|that|these|those|a|an)\s+"
                         rf"(?!(?:{_QUANTITY_NOUN}|{_QUALIFIED_QUANTITY})\b)",
                         re.IGNORECASE)
# "Which of them/the two ...?", also after a preposition ("In which of the two boxes ...?"); not of numbers or years
# ("In which of the two years ...?", "Which of the two numbers is larger?")
_WHICH_OF_THEM = re.compile(r"^(?:(?:in|on|at|from|to|for|into|by|with)\s+)?which\s+of\s+(?:them|the\s+(?:two|three"
                            rf"|four|five)|these\s+(?:two|three))\b(?!\s+{_QUANTITY_NOUN}\b)",
                            re.IGNORECASE)
# a color or a kind asked for ("What is the color of the balls that are more numerous?", "What kind of fruit is
# more expensive?"): no number when the question holds no digit
_CATEGORY_ASKED = re.compile(r"^what(?:'s|\s+(?:is|are|was|were))\s+the\s+colou?rs?\s+of\b"
                             r"|^what\s+(?:kinds?|types?|sorts?)\s+of\b", re.IGNORECASE)
_WHAT_NUMBER = re.compile(r"\bwhat\s+(?:is|are|was|were|will\s+be)\b|\bhow\s+(?:old|long|far|tall|heavy|fast)\b",
                          re.IGNORECASE)
_WHO_FIRST = re.compile(r"^(?:who|whose|whom)\b", re.IGNORECASE)


def _as_number(value: Any) -> int | float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return value if math.isfinite(value) else None
    if isinstance(value, str):
        text = value.strip().replace(",", "")
        for parse in (int, float):
            try:
                number = parse(text)
            except ValueError:
                continue
            return number if math.isfinite(number) else None
    return None


def _format_rule(answer_format: str) -> str:
    return {
        "gsm8k": f"gsm8k format: a line of '{GSM8K_MARKER}' and a number, or '{GSM8K_MARKER}' and a number "
                 "on the last line",
        "prose": "prose format: one number from \\boxed{}, 'the answer is' or the final sentence "
                 "(slm_sweep.scoring.prose_reference_value), for a question that does not ask who",
        "number": "number format: a numeric value",
    }[answer_format]
