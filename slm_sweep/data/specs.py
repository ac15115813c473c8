"""Dataset specs: conf/dataset/<name>.yaml read, completed with the defaults of
slm_sweep.settings.DatasetSettings (which says what every key means), and validated."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from slm_sweep.config_sources import group_file, group_options, where
from slm_sweep.data.errors import DataError
from slm_sweep.settings import DatasetSettings, DedupSettings, defaults

ANSWER_FORMATS = ("gsm8k", "prose", "number")
TEST_SPLITS = ("test", "heldout")
UNPARSABLE_POLICIES = ("skip", "error")
SIZE_KEYS = ("val_size", "test_size", "train_limit", "test_limit")
# the roles of local.files and hub.splits that the readers read (data/splits.py); the validation split is carved
# from train (val_size, split_seed), a held-out test split too (test_split: heldout)
SPLIT_ROLES = ("train", "test")
DEDUP_ON_MISSING = ("skip", "error")
# The settings that decide which training examples deduplication removes (on_missing only decides whether a set
# that cannot be read stops the cell; what it removes then shows in the training data itself).
DEDUP_KEYS = ("enabled", "against", "near_threshold")

# every key a dataset file may leave out, with its default (slm_sweep.settings.DatasetSettings holds them)
DEFAULTS: dict[str, Any] = defaults(DatasetSettings)
DEDUP_DEFAULTS: dict[str, Any] = defaults(DedupSettings)


def train_split_use(method: Mapping[str, Any], eval_split: str | None) -> tuple[bool, bool]:
    """(whether a cell reads the dataset's train split, whether it deduplicates what it reads of it against the
    evaluation sets). Trained cells do both; few-shot cells draw their shots from it as lm-eval does, without
    deduplication; scoring the validation split, every method carves it as trained cells do, one set of
    questions for all."""
    trains, on_val = bool(method.get("train")), (eval_split or "test") == "val"
    return bool(trains or method.get("num_fewshot") or on_val), trains or on_val


def known_datasets() -> list[str]:
    """Names of the datasets defined in conf/dataset/ and in the dataset folders of Hydra's search path."""
    return group_options("dataset")


def dataset_spec(name: str) -> DictConfig:
    """The dataset config <name>.yaml of conf/dataset/ or of a search-path folder (slm_sweep.config_sources)."""
    path = _dataset_path(name)
    try:
        return OmegaConf.merge(OmegaConf.structured(DatasetSettings), _dataset_file(name))
    except OmegaConfBaseException as err:
        known = ", ".join(DEFAULTS)
        raise DataError(f"dataset {name!r} ({path}): {getattr(err, 'msg', err)}; a dataset file's keys are: "
                        f"{known} (DatasetSettings in slm_sweep/settings.py)") from None


def _dataset_path(name: str):
    path = group_file("dataset", name)
    if path is None:
        raise DataError(f"unknown dataset {name!r}; the datasets in {where('dataset')} are: "
                        f"{', '.join(known_datasets())}")
    return path


def _dataset_file(name: str, chain: tuple[str, ...] = ()) -> DictConfig:
    """A dataset file with its ``defaults`` list merged as Hydra merges it for ``dataset=<name>`` (other dataset
    files by name, in order, the file itself at ``_self_``, last when not listed), so that a file built on
    another reads the same as an out-of-domain or dedup set."""
    path = _dataset_path(name)
    node = OmegaConf.load(path)
    entries = node.pop("defaults", None) if isinstance(node, DictConfig) else None
    if entries is None:
        return node
    if name in chain:
        raise DataError(f"dataset {name!r}: its defaults list comes back to it ({' -> '.join([*chain, name])})")
    entries = list(entries)
    merged = OmegaConf.create()
    for entry in entries if "_self_" in entries else [*entries, "_self_"]:
        if entry == "_self_":
            merged = OmegaConf.merge(merged, node)
        elif isinstance(entry, str) and "/" not in entry:
            merged = OmegaConf.merge(merged, _dataset_file(entry, (*chain, name)))
        else:
            raise DataError(f"dataset {name!r} ({path}): defaults entry {entry!r} is not supported; a dataset file "
                            "may list other dataset files by name (gsm8k, not /dataset/gsm8k), and _self_")
    return merged


def as_dict(spec: Mapping | DictConfig) -> dict[str, Any]:
    """A spec as a plain dict (no OmegaConf nodes), not yet completed or validated."""
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


def resolved_spec(spec: Mapping | DictConfig) -> dict[str, Any]:
    """The spec with every default filled in (the dedup block key by key), validated."""
    given = as_dict(spec)
    resolved = {**DEFAULTS, **given}
    if isinstance(given.get("dedup"), Mapping):
        resolved["dedup"] = {**DEDUP_DEFAULTS, **given["dedup"]}
    validate(resolved)
    return resolved


def dedup_settings(spec: Mapping | DictConfig) -> dict[str, Any]:
    """What decides which training examples a spec's deduplication removes (part of a cell's training key):
    ``{"enabled": False}`` when it is off, else the enabled flag, the sets and the threshold."""
    dedup = resolved_spec(spec)["dedup"]
    if dedup is None or not dedup["enabled"]:
        return {"enabled": False}
    # the sets as a set: what is removed does not depend on their order
    return {key: sorted(dedup[key]) if key == "against" else dedup[key] for key in DEDUP_KEYS}


def validate(spec: dict[str, Any]) -> None:
    name = spec.get("name")
    if not isinstance(name, str) or not name:
        raise DataError(f"a dataset spec needs a non-empty 'name', got {name!r}")
    _check_choice(spec, "answer_format", ANSWER_FORMATS)
    _check_choice(spec, "test_split", TEST_SPLITS)
    _check_choice(spec, "unparsable_answers", UNPARSABLE_POLICIES)
    for key in SIZE_KEYS:
        check_positive_int(name, key, spec[key])
    _check_seed(spec)
    _check_tolerance(spec)
    _check_field_names(spec)
    _check_split_roles(spec)
    _check_split_layout(spec)
    _check_dedup(spec)


def _check_choice(spec: dict[str, Any], key: str, allowed: Sequence[str]) -> None:
    if spec[key] not in allowed:
        raise DataError(
            f"dataset {spec['name']!r}: {key}={spec[key]!r} is not allowed; use one of {', '.join(allowed)}"
        )


def check_positive_int(name: str, key: str, value: Any) -> None:
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
    names = as_list(spec["question"])
    if not names or not all(isinstance(n, str) and n for n in names):
        raise DataError(
            f"dataset {spec['name']!r}: question={spec['question']!r} must be a field name or a list of field names"
        )
    if not isinstance(spec["answer"], str) or not spec["answer"]:
        raise DataError(f"dataset {spec['name']!r}: answer={spec['answer']!r} must be a field name")


def _check_split_roles(spec: dict[str, Any]) -> None:
    """Each role of ``local.files`` and ``hub.splits`` is one the readers read: another (``validation``, a misspelt
    ``tset``) would never be read, and the role it was meant for would fall back to ``<role>.jsonl``."""
    for source, key in (("local", "files"), ("hub", "splits")):
        block = spec.get(source)
        roles = block.get(key) if isinstance(block, Mapping) else None
        for role in roles if isinstance(roles, Mapping) else ():
            if role not in SPLIT_ROLES:
                raise DataError(f"dataset {spec['name']!r}: {source}.{key} has the role {role!r}, which nothing "
                                f"reads; the roles are: {', '.join(SPLIT_ROLES)} (the validation split is carved "
                                "from train: val_size, split_seed)")


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


def _check_dedup(spec: dict[str, Any]) -> None:
    name, dedup = spec["name"], spec["dedup"]
    if dedup is None:
        return
    if not isinstance(dedup, Mapping):
        raise DataError(f"dataset {name!r}: dedup={dedup!r} must be a mapping with keys "
                        f"{', '.join(DEDUP_DEFAULTS)}, or null (no deduplication)")
    unknown = sorted(set(dedup) - set(DEDUP_DEFAULTS))
    if unknown:
        raise DataError(f"dataset {name!r}: dedup has unknown key(s) {', '.join(unknown)}; "
                        f"allowed: {', '.join(DEDUP_DEFAULTS)}")
    if not isinstance(dedup["enabled"], bool):
        raise DataError(f"dataset {name!r}: dedup.enabled={dedup['enabled']!r} must be true or false")
    against = dedup["against"]
    known = known_datasets()
    if not isinstance(against, list) or not all(isinstance(item, str) for item in against):
        raise DataError(f"dataset {name!r}: dedup.against={against!r} must be a list of dataset names "
                        f"({where('dataset')}): {', '.join(known)}")
    for item in against:
        if item not in known:
            raise DataError(f"dataset {name!r}: dedup.against has {item!r}, which is not a dataset; known datasets "
                            f"({where('dataset')}): {', '.join(known)} (the dataset's own test split is always "
                            "included)")
    threshold = dedup["near_threshold"]
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 < threshold <= 1:
        raise DataError(f"dataset {name!r}: dedup.near_threshold={threshold!r} must be a number in (0, 1] "
                        "(Jaccard similarity of character 5-gram sets)")
    if dedup["on_missing"] not in DEDUP_ON_MISSING:
        raise DataError(f"dataset {name!r}: dedup.on_missing={dedup['on_missing']!r} is not allowed; use one of "
                        f"{', '.join(DEDUP_ON_MISSING)}")


def as_list(value: Any) -> list:
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return list(value)
    return [value]


def training_datasets() -> list[str]:
    """The known datasets that have a train split (not ``eval_only``); a file that does not read is left out."""
    trainable = []
    for name in known_datasets():
        try:
            if not dataset_spec(name).eval_only:
                trainable.append(name)
        except DataError:
            continue
    return trainable


def eval_only_message(name: str) -> str:
    return (
        f"dataset {name!r} is eval-only (it has no train split): it can't be used for training or as the "
        f"source of few-shot shots; use it as an evaluation set, or train on one of: {', '.join(training_datasets())}"
    )
