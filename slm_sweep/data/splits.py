"""Carving a dataset into train / validation / test examples: held-out slices, limits, and removing the
training and validation examples that repeat an evaluation question (slm_sweep.data.dedup)."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from slm_sweep.data.dedup import SHINGLE_BYTES, DedupIndex, deduplicate
from slm_sweep.data.errors import DataError
from slm_sweep.data.readers import Example, data_root_hint, local_dir, local_hint, read_examples
from slm_sweep.data.specs import (
    as_dict,
    check_positive_int,
    dataset_spec,
    eval_only_message,
    resolved_spec,
)

log = logging.getLogger(__name__)

OWN_TEST = "test"  # the name the dataset's own test split goes by among the sets training is deduplicated against
OWN_VAL = "validation"  # and its validation split, which training (only) is deduplicated against as well


@dataclass
class Splits:
    train: list[Example]
    val: list[Example]
    test: list[Example]
    skipped: dict[str, int] = field(default_factory=dict)  # source split -> rows without a numeric reference
    skipped_asking_who: dict[str, int] = field(default_factory=dict)  # and how many of them ask who
    dedup: dict[str, Any] | None = None  # what deduplication removed (load_splits(deduplicate=True)), else None


def load_splits(
    spec: Mapping | DictConfig,
    data_root: str | Path | None = None,
    need_train: bool = True,
    deduplicate: bool = False,
) -> Splits:
    """Train, validation and test examples of one dataset.

    Files come from spec.data_dir if set, else data_root/<local.dir_name> if data_root is given, else the hub.
    Carving uses split_seed only, so it is the same for every run seed. Every row is ranked by a hash of
    split_seed and its question (``_ranking``); then (1) with test_split 'heldout', the first test_size rows of
    that ranking become the test set; (2) the next val_size rows the validation set; (3) the rest, in ranking
    order, are the training candidates: with ``deduplicate`` and the spec's dedup enabled, validation and train
    examples that repeat a question of the whole test split or of a dedup.against set are removed; (4)
    train_limit keeps the first N candidates left (a seeded sample of the whole file, not its head), test_limit
    the first N test examples (as lm-eval's --limit does; of a held-out test set, the first N of the ranking).
    Every returned part is in source order. A row added, removed or left out as
    unparsable moves itself and at most one row across each part boundary after it in the ranking; the copies of
    a repeated question stay together, and copies of a held-out test question never train. With need_train=False, train and val are empty and the train
    file is read only when the test set is held out of it.
    """
    spec = resolved_spec(spec)
    if spec["eval_only"] and need_train:
        raise DataError(eval_only_message(spec["name"]))
    folder = local_dir(spec, data_root)
    skipped: dict[str, int] = {}
    who: dict[str, int] = {}
    scored = None
    if spec["test_split"] == "heldout":
        test, scored, val, candidates = _heldout_parts(spec, folder, skipped, who, need_train)
    else:
        test = read_examples(spec, "test", folder, skipped, who)
        val, candidates = _val_and_train(spec, folder, skipped, who) if need_train else ([], _Candidates())
    record = None
    if deduplicate and need_train:
        train, val, record = _deduplicated(spec, data_root, test, candidates, val)
    else:
        train = _limited(candidates.ranked, spec["train_limit"], spec["name"], "train_limit")
    splits = Splits(
        train=candidates.in_source_order(train),
        val=val,
        test=_limited(test if scored is None else scored, spec["test_limit"], spec["name"], "test_limit"),
        skipped=skipped,
        skipped_asking_who={split: count for split, count in who.items() if count},
        dedup=record,
    )
    _log_skipped(spec["name"], skipped, who)
    return splits


def load_eval_set(
    name_or_spec: str | Mapping | DictConfig, data_root: str | Path | None = None, limit: int | None = None
) -> list[Example]:
    """Test examples of a dataset used as an evaluation set (e.g. out of domain), the first `limit` of them."""
    spec = dataset_spec(name_or_spec) if isinstance(name_or_spec, str) else name_or_spec
    spec = as_dict(spec)
    if limit is not None:
        check_positive_int(spec.get("name"), "limit", limit)
        spec["test_limit"] = limit
    try:
        return load_splits(spec, data_root=data_root, need_train=False).test
    except DataError as err:  # the training set's key is no fix for an evaluation set
        resolved = resolved_spec(spec)
        raise DataError(str(err).replace(local_hint(resolved), f"set {data_root_hint(resolved)}")) from None


# ---------------------------------------------------------------------------------------------- carving


def _heldout_parts(
    spec: dict[str, Any], folder: Path | None, skipped: dict[str, int], who: dict[str, int], need_train: bool
) -> tuple[list[Example], list[Example], list[Example], _Candidates]:
    """(the held-out test set, the part of it test_limit scores, val, the training candidates)."""
    pool = read_examples(spec, "train", folder, skipped, who)
    test_size = spec["test_size"]
    if test_size >= len(pool):
        raise DataError(
            f"dataset {spec['name']!r}: test_size={test_size} must be smaller than the {len(pool)} usable "
            "train examples it is held out of"
        )
    val_size = spec["val_size"] if need_train else None
    if val_size is not None:
        _check_val_size(spec["name"], val_size, len(pool) - test_size)
    # test_limit: the ranking's first N of the held-out rows (in file order), so that the slice does not depend on
    # the order of the file's rows; the whole held-out set is still what training is kept apart from
    limit = spec["test_limit"]
    limit = limit if limit is not None and limit < test_size else test_size
    (scored, rest, val), candidates = _carve(pool, [limit, test_size - limit, val_size or 0], spec["split_seed"])
    position = {id(example): i for i, example in enumerate(pool)}
    test = sorted([*scored, *rest], key=lambda example: position[id(example)])
    if not need_train:
        return test, scored, [], _Candidates()
    # a copy of a held-out question that the ranking put past the test set's boundary: never trained or
    # validated on, whatever dataset.dedup says (deduplication is a choice; this would be the test set itself)
    held_out = {example.question for example in test}
    copies = sum(example.question in held_out for example in [*val, *candidates.ranked])
    if copies:
        log.warning("dataset %r: left out %d copies of held-out test questions from validation and training",
                    spec["name"], copies)
        val = [example for example in val if example.question not in held_out]
        candidates.ranked = [example for example in candidates.ranked if example.question not in held_out]
        if val_size and len(val) < val_size:  # refilled from the ranking, as deduplication refills it
            short = val_size - len(val)
            val = candidates.in_source_order([*val, *candidates.ranked[:short]])
            candidates.ranked = candidates.ranked[short:]
    return test, scored, val, candidates


def _val_and_train(
    spec: dict[str, Any], folder: Path | None, skipped: dict[str, int], who: dict[str, int]
) -> tuple[list[Example], _Candidates]:
    pool = read_examples(spec, "train", folder, skipped, who)
    if spec["val_size"] is not None:
        _check_val_size(spec["name"], spec["val_size"], len(pool))
    (val,), candidates = _carve(pool, [spec["val_size"] or 0], spec["split_seed"])
    return val, candidates


def _check_val_size(name: str, val_size: int, available: int) -> None:
    if val_size >= available:
        raise DataError(
            f"dataset {name!r}: val_size={val_size} must be smaller than the {available} train examples "
            "it is carved from"
        )


@dataclass
class _Candidates:
    """The training candidates: the rows no other part took, in ranking order (train_limit and deduplication take
    them from the front), and where each row stands in the source file."""

    ranked: list[Example] = field(default_factory=list)
    source_position: dict[int, int] = field(default_factory=dict)  # id(example) -> row in the source, every part

    def in_source_order(self, kept: list[Example]) -> list[Example]:
        return sorted(kept, key=lambda example: self.source_position[id(example)])


def _carve(pool: list[Example], sizes: list[int], seed: int) -> tuple[list[list[Example]], _Candidates]:
    """Consecutive slices of ``_ranking(pool, seed)``, one per size, each in pool order; the rest as candidates."""
    order = _ranking(pool, seed)
    parts, start = [], 0
    for size in sizes:
        parts.append([pool[i] for i in sorted(order[start : start + size])])
        start += size
    return parts, _Candidates([pool[i] for i in order[start:]], {id(example): i for i, example in enumerate(pool)})


def _ranking(pool: list[Example], seed: int) -> list[int]:
    """Positions of ``pool`` ordered by a hash of the seed and each row's question; the copies of a question that
    repeats follow its first row, in source order, so that they fall into one part unless a part's boundary
    falls between them. A row's key does not depend on the other rows, so adding, removing or skipping one row
    moves it, and at most one row across each part boundary after it, from one part to another (a shuffled
    permutation would move most)."""
    first: dict[str, bytes] = {}
    repeats: dict[str, int] = {}
    keys = []
    for example in pool:
        question = example.question
        repeats[question] = repeats.get(question, 0) + 1
        if question not in first:  # the key every earlier version gave a question's first row
            first[question] = hashlib.sha256(f"{seed}\x001\x00{question}".encode()).digest()
        keys.append((first[question], repeats[question]))
    return sorted(range(len(pool)), key=keys.__getitem__)


def _limited(examples: list[Example], limit: int | None, name: str, key: str) -> list[Example]:
    if limit is not None and limit > len(examples) and examples:
        log.warning(
            "dataset %r: %s=%d exceeds the %d examples available; using all", name, key, limit, len(examples)
        )
    return examples if limit is None else examples[:limit]


def _log_skipped(name: str, skipped: dict[str, int], who: dict[str, int]) -> None:
    for role, count in skipped.items():
        if count:
            log.warning("dataset %r: skipped %d %s rows without a numeric reference (%d without a parsable final "
                        "number, %d asking who)", name, count, role, count - who.get(role, 0), who.get(role, 0))


# ---------------------------------------------------------------------------------------------- deduplication


def _deduplicated(
    spec: dict[str, Any], data_root: str | Path | None, test: list[Example], candidates: _Candidates,
    val: list[Example],
) -> tuple[list[Example], list[Example], dict[str, Any]]:
    """Train (up to train_limit) and validation examples without those that repeat a reference question, and the
    record of what was removed. The references are the whole test split (before test_limit) and every readable
    dedup.against set in full, so what training sees depends on neither eval.ood_sets nor any evaluation limit.
    The validation split keeps its size: each repeat it loses is replaced by the next training candidate of the
    ranking that repeats nothing (a learning-rate search needs its val_size questions). Training is deduplicated
    against the validation split too."""
    settings = spec["dedup"]
    train = candidates.ranked
    if settings is None or not settings["enabled"]:
        return _limited(train, spec["train_limit"], spec["name"], "train_limit"), val, {"enabled": False}
    references = {OWN_TEST: [example.question for example in test]}
    missing: dict[str, str] = {}
    for name in settings["against"]:
        try:
            references[name] = [example.question for example in load_eval_set(name, data_root=data_root)]
        except DataError as err:
            if settings["on_missing"] == "error":
                raise DataError(
                    f"dataset {spec['name']!r}: dedup.against set {name!r} cannot be read ({err}); make it "
                    "readable, remove it from dataset.dedup.against, or set dataset.dedup.on_missing=skip to "
                    "train without it (recorded in result.json under dedup.skipped)"
                ) from None
            missing[name] = str(err)
            folder = (dataset_spec(name).get("local") or {}).get("dir_name") or name
            log.warning("missing: dedup set %s — %s; training is not deduplicated against it (recorded in "
                        "result.json under dedup.skipped); fix: set data_root=<folder holding %s/>, or leave %s "
                        "out of dataset.dedup.against", name, err, folder, name)
    index = _index(references, settings["near_threshold"])
    kept_val, val_counts = deduplicate(val, index)
    refill, _ = deduplicate(train, index, len(val) - len(kept_val)) if len(kept_val) < len(val) else ([], None)
    if refill:
        moved = {id(example) for example in refill}
        train = [example for example in train if id(example) not in moved]
        kept_val = candidates.in_source_order(kept_val + refill)
    # Training is kept apart from the validation split as from the test split: a repeat of a validation question
    # in training would reward learning rates that memorise (GPT-4 variants of one seed problem in OrcaMath).
    train_index = _index({**references, OWN_VAL: [e.question for e in kept_val]}, settings["near_threshold"]) \
        if kept_val else index
    kept_train, train_counts = deduplicate(train, train_index, spec["train_limit"])
    if train and not kept_train:
        raise DataError(
            f"dataset {spec['name']!r}: deduplication removed all {len(train)} training examples "
            f"({train_counts.exact} exact and {train_counts.near} near repeats, Jaccard >= "
            f"{settings['near_threshold']}) of the questions of its test split and dataset.dedup.against "
            f"({', '.join(references)}): its training questions are too close to the evaluation questions to "
            "train on. Raise dataset.dedup.near_threshold, take sets out of dataset.dedup.against, or set "
            "dataset.dedup.enabled=false (recorded in the keys and result.json)")
    limit = spec["train_limit"]
    if limit is not None and limit > len(kept_train) and kept_train:
        log.warning("dataset %r: train_limit=%d exceeds the %d examples left after deduplication; using all",
                    spec["name"], limit, len(kept_train))
    record = {
        "enabled": True,
        "near_threshold": settings["near_threshold"],
        "similarity": f"Jaccard of character {SHINGLE_BYTES}-gram sets of the normalised question",
        "against": {**{name: len(questions) for name, questions in references.items()},
                    **({OWN_VAL: len(kept_val)} if kept_val else {})},
        "skipped": missing,
        "train": train_counts.as_record(),
        "val": {**val_counts.as_record(), "refilled": len(refill)},
    }
    for split, counts in (("train", train_counts), ("validation", val_counts)):
        if counts.exact or counts.near:
            log.info("dataset %r: removed %d %s examples that repeat an evaluation question (%d exact, %d near, "
                     "Jaccard >= %s)", spec["name"], counts.exact + counts.near, split, counts.exact, counts.near,
                     settings["near_threshold"])
    return kept_train, kept_val, record


_INDEXES: dict[str, DedupIndex] = {}


def _index(references: dict[str, list[str]], threshold: float) -> DedupIndex:
    """The index of these reference questions, built once per process."""
    h = hashlib.sha256(repr(threshold).encode())
    for name, questions in references.items():
        h.update(f"{name}\x02{len(questions)}\x02".encode())
        for question in questions:
            h.update(question.encode() + b"\x00")
    key = h.hexdigest()
    if key not in _INDEXES:
        if len(_INDEXES) >= 4:
            _INDEXES.pop(next(iter(_INDEXES)))
        _INDEXES[key] = DedupIndex(references, threshold)
    return _INDEXES[key]
