"""Read math word-problem datasets (from the Hugging Face hub or from local JSON/JSONL files) into examples,
and carve the train / validation / test splits.

Each dataset is described by conf/dataset/<name>.yaml; gsm8k.yaml documents every key.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from slm_sweep.data.errors import DataError
from slm_sweep.settings import DatasetSettings, defaults

log = logging.getLogger(__name__)

DATASET_CONF_DIR = Path(__file__).resolve().parents[1] / "conf" / "dataset"

ANSWER_FORMATS = ("gsm8k", "prose", "number")
TEST_SPLITS = ("test", "heldout")
UNPARSABLE_POLICIES = ("skip", "error")
LOCAL_SUFFIXES = (".jsonl", ".json")
SIZE_KEYS = ("val_size", "test_size", "train_limit", "test_limit")
GSM8K_MARKER = "####"
SENTENCE_END = (".", "?", "!")
OFFLINE_ENV_VARS = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")

# every key a dataset file may leave out, with its default (slm_sweep.settings.DatasetSettings holds them)
DEFAULTS: dict[str, Any] = defaults(DatasetSettings)


@dataclass(frozen=True)
class Example:
    question: str
    answer: str  # training target: the worked solution, or the number as text for numeric-target sets
    reference: str  # normalised final number, as slm_sweep.scoring.reference_answer gives it


@dataclass
class Splits:
    train: list[Example]
    val: list[Example]
    test: list[Example]
    skipped: dict[str, int] = field(default_factory=dict)  # source split -> rows without a parsable answer


@dataclass(frozen=True)
class _Row:
    fields: Mapping[str, Any]
    where: str  # file and line/row, or hub split and row, for error messages


# ---------------------------------------------------------------------------------------------- specs


def known_datasets() -> list[str]:
    """Names of the datasets defined in conf/dataset/."""
    return sorted(path.stem for path in DATASET_CONF_DIR.glob("*.yaml"))


def dataset_spec(name: str) -> DictConfig:
    """The dataset config conf/dataset/<name>.yaml."""
    known = known_datasets()
    if name not in known:
        raise DataError(f"unknown dataset {name!r}; known datasets (conf/dataset/*.yaml): {', '.join(known)}")
    return OmegaConf.merge(OmegaConf.structured(DatasetSettings), OmegaConf.load(DATASET_CONF_DIR / f"{name}.yaml"))


def _as_dict(spec: Mapping | DictConfig) -> dict[str, Any]:
    if not isinstance(spec, (Mapping, DictConfig)):
        raise DataError(
            f"a dataset spec must be a mapping like conf/dataset/*.yaml, got {type(spec).__name__}"
        )
    return _plain(spec)


def _plain(value: Any) -> Any:
    """Plain dicts and lists, also for a dict that holds OmegaConf nodes (e.g. {**spec, "val_size": 5})."""
    if isinstance(value, (DictConfig, ListConfig)):
        return OmegaConf.to_container(value, resolve=True)
    if isinstance(value, Mapping):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return value


def _resolved(spec: Mapping | DictConfig) -> dict[str, Any]:
    resolved = {**DEFAULTS, **_as_dict(spec)}
    _validate(resolved)
    return resolved


def _validate(spec: dict[str, Any]) -> None:
    name = spec.get("name")
    if not isinstance(name, str) or not name:
        raise DataError(f"a dataset spec needs a non-empty 'name', got {name!r}")
    _check_choice(spec, "answer_format", ANSWER_FORMATS)
    _check_choice(spec, "test_split", TEST_SPLITS)
    _check_choice(spec, "unparsable_answers", UNPARSABLE_POLICIES)
    for key in SIZE_KEYS:
        _check_positive_int(name, key, spec[key])
    _check_seed(spec)
    _check_tolerance(spec)
    _check_field_names(spec)
    _check_split_layout(spec)


def _check_choice(spec: dict[str, Any], key: str, allowed: Sequence[str]) -> None:
    if spec[key] not in allowed:
        raise DataError(
            f"dataset {spec['name']!r}: {key}={spec[key]!r} is not allowed; use one of {', '.join(allowed)}"
        )


def _check_positive_int(name: str, key: str, value: Any) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise DataError(f"dataset {name!r}: {key}={value!r} must be a positive integer or null")


def _check_seed(spec: dict[str, Any]) -> None:
    seed = spec["split_seed"]
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise DataError(f"dataset {spec['name']!r}: split_seed={seed!r} must be an integer")


def _check_tolerance(spec: dict[str, Any]) -> None:
    tolerance = spec["answer_tolerance"]
    if tolerance is None:
        return
    if (
        isinstance(tolerance, bool)
        or not isinstance(tolerance, (int, float))
        or not 0 <= tolerance < math.inf
    ):
        raise DataError(
            f"dataset {spec['name']!r}: answer_tolerance={tolerance!r} must be null (exact match) "
            "or a non-negative number (relative tolerance)"
        )


def _check_field_names(spec: dict[str, Any]) -> None:
    names = _as_list(spec["question"])
    if not names or not all(isinstance(n, str) and n for n in names):
        raise DataError(
            f"dataset {spec['name']!r}: question={spec['question']!r} must be a field name or a list of field names"
        )
    if not isinstance(spec["answer"], str) or not spec["answer"]:
        raise DataError(f"dataset {spec['name']!r}: answer={spec['answer']!r} must be a field name")


def _check_split_layout(spec: dict[str, Any]) -> None:
    name = spec["name"]
    if spec["test_split"] == "heldout":
        if spec["eval_only"]:
            raise DataError(
                f"dataset {name!r}: an eval-only set has no train split to hold a test slice out of; "
                "use test_split: test"
            )
        if spec["test_size"] is None:
            raise DataError(f"dataset {name!r}: test_split: heldout needs test_size (a positive integer)")
    elif spec["test_size"] is not None:
        raise DataError(
            f"dataset {name!r}: test_size={spec['test_size']!r} applies only with test_split: heldout; "
            "to score fewer test examples set test_limit"
        )


def _as_list(value: Any) -> list:
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return list(value)
    return [value]


# ---------------------------------------------------------------------------------------------- public API


def load_splits(
    spec: Mapping | DictConfig, data_root: str | Path | None = None, need_train: bool = True
) -> Splits:
    """Train, validation and test examples of one dataset.

    Files come from spec.data_dir if set, else data_root/<local.dir_name> if data_root is given, else the hub.
    Carving uses split_seed only, so it is the same for every run seed: (1) with test_split 'heldout', test_size
    examples of the full train split become the test set; (2) val_size of the remaining train examples become
    the validation set; (3) train_limit and test_limit keep the first N examples. Every carved part keeps the
    source order. With need_train=False, train and val are empty and the train file is read only when the test
    set is held out of it.
    """
    spec = _resolved(spec)
    if spec["eval_only"] and need_train:
        raise DataError(_eval_only_message(spec["name"]))
    local_dir = _local_dir(spec, data_root)
    skipped: dict[str, int] = {}
    if spec["test_split"] == "heldout":
        test, val, train = _heldout_parts(spec, local_dir, skipped, need_train)
    else:
        test = _load_role(spec, "test", local_dir, skipped)
        val, train = _val_and_train(spec, local_dir, skipped) if need_train else ([], [])
    splits = Splits(
        train=_limited(train, spec["train_limit"], spec["name"], "train_limit"),
        val=val,
        test=_limited(test, spec["test_limit"], spec["name"], "test_limit"),
        skipped=skipped,
    )
    _log_skipped(spec["name"], skipped)
    return splits


def load_eval_set(
    name_or_spec: str | Mapping | DictConfig, data_root: str | Path | None = None, limit: int | None = None
) -> list[Example]:
    """Test examples of a dataset used as an evaluation set (e.g. out of domain), the first `limit` of them."""
    spec = dataset_spec(name_or_spec) if isinstance(name_or_spec, str) else name_or_spec
    spec = _as_dict(spec)
    if limit is not None:
        _check_positive_int(spec.get("name"), "limit", limit)
        spec["test_limit"] = limit
    return load_splits(spec, data_root=data_root, need_train=False).test


def _eval_only_message(name: str) -> str:
    trainable = [
        n for n in known_datasets() if not OmegaConf.load(DATASET_CONF_DIR / f"{n}.yaml").get("eval_only")
    ]
    return (
        f"dataset {name!r} is eval-only (it has no train split): it can't be used for training or as the "
        f"source of few-shot shots; use it as an evaluation set, or train on one of: {', '.join(trainable)}"
    )


# ---------------------------------------------------------------------------------------------- carving


def _heldout_parts(
    spec: dict[str, Any], local_dir: Path | None, skipped: dict[str, int], need_train: bool
) -> tuple[list[Example], list[Example], list[Example]]:
    pool = _load_role(spec, "train", local_dir, skipped)
    test_size = spec["test_size"]
    if test_size >= len(pool):
        raise DataError(
            f"dataset {spec['name']!r}: test_size={test_size} must be smaller than the {len(pool)} usable "
            "train examples it is held out of"
        )
    val_size = spec["val_size"] if need_train else None
    if val_size is not None:
        _check_val_size(spec["name"], val_size, len(pool) - test_size)
    test, val, train = _carve(pool, [test_size, val_size or 0], spec["split_seed"])
    return test, (val if need_train else []), (train if need_train else [])


def _val_and_train(
    spec: dict[str, Any], local_dir: Path | None, skipped: dict[str, int]
) -> tuple[list[Example], list[Example]]:
    pool = _load_role(spec, "train", local_dir, skipped)
    if spec["val_size"] is not None:
        _check_val_size(spec["name"], spec["val_size"], len(pool))
    val, train = _carve(pool, [spec["val_size"] or 0], spec["split_seed"])
    return val, train


def _check_val_size(name: str, val_size: int, available: int) -> None:
    if val_size >= available:
        raise DataError(
            f"dataset {name!r}: val_size={val_size} must be smaller than the {available} train examples "
            "it is carved from"
        )


def _carve(pool: list[Example], sizes: list[int], seed: int) -> list[list[Example]]:
    """Consecutive slices of one seeded permutation of `pool` (one per size, then the rest), each in pool order."""
    order = list(range(len(pool)))
    random.Random(seed).shuffle(order)
    parts, start = [], 0
    for size in [*sizes, len(pool)]:
        parts.append([pool[i] for i in sorted(order[start : start + size])])
        start += size
    return parts


def _limited(examples: list[Example], limit: int | None, name: str, key: str) -> list[Example]:
    if limit is not None and limit > len(examples) and examples:
        log.warning(
            "dataset %r: %s=%d exceeds the %d examples available; using all", name, key, limit, len(examples)
        )
    return examples if limit is None else examples[:limit]


def _log_skipped(name: str, skipped: dict[str, int]) -> None:
    for role, count in skipped.items():
        if count:
            log.warning("dataset %r: skipped %d %s rows without a parsable final answer", name, count, role)


# ---------------------------------------------------------------------------------------------- sources


def _local_dir(spec: dict[str, Any], data_root: str | Path | None) -> Path | None:
    """The folder to read files from, or None to read from the hub."""
    if spec["data_dir"] is not None:
        return _existing_dir(Path(spec["data_dir"]).expanduser(), f"dataset.data_dir={spec['data_dir']}")
    if data_root is not None:
        dir_name = (spec["local"] or {}).get("dir_name") or spec["name"]
        path = Path(data_root).expanduser() / dir_name
        return _existing_dir(path, f"data_root={data_root} with local.dir_name={dir_name}")
    return None


def _existing_dir(path: Path, origin: str) -> Path:
    if not path.is_dir():
        what = "is not a directory" if path.exists() else "does not exist"
        raise DataError(f"dataset folder {path} (from {origin}) {what}")
    return path


def _load_role(
    spec: dict[str, Any], role: str, local_dir: Path | None, skipped: dict[str, int]
) -> list[Example]:
    rows = _hub_rows(spec, role) if local_dir is None else _local_rows(spec, role, local_dir)
    examples, skipped[role] = _to_examples(rows, spec, role)
    return examples


def _local_rows(spec: dict[str, Any], role: str, local_dir: Path) -> list[_Row]:
    return [row for path in _local_files(spec, role, local_dir) for row in _read_file(path)]


def _local_files(spec: dict[str, Any], role: str, local_dir: Path) -> list[Path]:
    files = (spec["local"] or {}).get("files") or {}
    names = _as_list(files.get(role)) or [f"{role}.jsonl"]
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
    for line_no, line in enumerate(_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(
                f"{path}: line {line_no} is not valid JSON ({exc.msg}, column {exc.colno})"
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
    for split in _as_list(splits[role]):
        where = f"hub {hub['path']} split {split!r}"
        rows.extend(
            _row(dict(item), f"{where} row {i}") for i, item in enumerate(_hub_split(spec, split), start=1)
        )
    if not rows:
        raise DataError(f"dataset {spec['name']!r}: hub {hub['path']} split(s) {splits[role]!r} have no rows")
    return rows


def _hub_split(spec: dict[str, Any], split: str):
    import datasets

    hub = spec["hub"]
    try:
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
        f"To read local files instead, {_local_hint(spec)}"
    )


def _local_only_message(spec: dict[str, Any]) -> str:
    return f"dataset {spec['name']!r} is local only (no hub id is configured): {_local_hint(spec)}"


def _local_hint(spec: dict[str, Any]) -> str:
    local = spec["local"] or {}
    files = [name for names in (local.get("files") or {}).values() for name in _as_list(names)]
    dir_name = local.get("dir_name") or spec["name"]
    return (
        f"set dataset.data_dir=<folder holding {', '.join(files) or 'train.jsonl, test.jsonl'}> "
        f"or data_root=<folder holding {dir_name}/>"
    )


# ---------------------------------------------------------------------------------------------- rows -> examples


def _to_examples(rows: list[_Row], spec: dict[str, Any], role: str) -> tuple[list[Example], int]:
    examples = [_to_example(row, spec) for row in rows]
    kept = [example for example in examples if example is not None]
    if not kept:
        raise DataError(
            f"dataset {spec['name']!r}: none of the {len(rows)} {role} rows (from {rows[0].where}) "
            f"has a parsable final answer in field {spec['answer']!r} ({spec['answer_format']} format)"
        )
    return kept, len(examples) - len(kept)


def _to_example(row: _Row, spec: dict[str, Any]) -> Example | None:
    question = _question_text(row, _as_list(spec["question"]))
    value = _field(row, spec["answer"])
    answer, reference = _answer_and_reference(row, spec["answer"], value, spec["answer_format"])
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
    from slm_sweep.scoring import reference_answer

    if answer_format == "number":
        number = _as_number(value)
        reference = None if number is None else reference_answer(number)
        return reference or "", reference
    text = _text_field(row, key)
    if answer_format == "gsm8k" and GSM8K_MARKER not in text:
        return text, None
    return text, reference_answer(text)


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
        "gsm8k": f"gsm8k format: the number after the last '{GSM8K_MARKER}'",
        "prose": "prose format: one number from \\boxed{}, 'the answer is' or the final sentence "
                 "(slm_sweep.scoring.prose_reference_value)",
        "number": "number format: a numeric value",
    }[answer_format]
