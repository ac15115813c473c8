"""A row's variant: the settings in which a record's configuration differs from the other configurations of its
dataset × model × method (``r=8``), and the records labelled with it."""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from slm_sweep.identity import EVAL_SCORING_KEYS, TRAINER_NUMERIC_KEYS, prompt_matters
from slm_sweep.settings import TrainerSettings

from .collect import COMPLETED, deduplicate, flat_config, identity_key
from .ordering import trains

# Config parts that never tell two configurations apart: the seed (rows aggregate over it), where files go,
# logging, resuming, and the settings that change only speed or memory (see slm_sweep/identity.py).
# tuning: where a learning rate came from; the rate itself is method.lr, which does tell runs apart.
_NOT_A_VARIANT = ("seed", "hydra", "logger", "callbacks", "tuning", "resume", "cache_dir", "data_root", "preflight",
                  "optimized_metric", "model.name", "method.name", "dataset.name", "dataset.data_dir",
                  "model.gguf_dir", "model.params_nominal", "dataset.claims_metric")
# Within trainer and eval, only the settings that can change numbers (slm_sweep.identity declares them once).
_NUMERIC_SETTINGS = {"trainer": TRAINER_NUMERIC_KEYS,
                     "eval": (*EVAL_SCORING_KEYS, "dtype", "ood_sets", "ood_limit", "metric_modules")}


def _flatten(config: dict[str, Any]) -> dict[str, str]:
    return {key: json.dumps(value, sort_keys=True) for key, value in flat_config(config).items()}


# Settings added since older result files were written, with the value those files' runs had
_SETTINGS_BEFORE_THEY_EXISTED = {"trainer.lr_schedule": TrainerSettings.lr_schedule}


def configuration_settings(record: dict[str, Any]) -> dict[str, str]:
    """The record's settings that can change its numbers, flattened (``method.r`` -> ``16``): a null
    ``method.optimizer`` or ``method.lr_scale`` left out as unset, and a setting older result files lack
    (``_SETTINGS_BEFORE_THEY_EXISTED``) at the value their runs had."""
    config = record.get("config") if isinstance(record.get("config"), dict) else {}
    settings = {k: v for k, v in _flatten(config).items() if not (k in _NULL_IS_UNSET and v == "null")}
    if isinstance(config.get("trainer"), dict):
        for key, value in _SETTINGS_BEFORE_THEY_EXISTED.items():
            settings.setdefault(key, json.dumps(value))
    method = config.get("method") if isinstance(config.get("method"), dict) else {}
    if not prompt_matters(method):
        # lm-eval's few-shot formats read neither prompt setting: they tell no configuration apart
        settings = {k: v for k, v in settings.items() if not k.startswith("prompt.")}
    elif identity_key(record, "prompt_style") and "prompt.style" in settings:
        # as the cell's key has it: prompt.style=chat where auto renders chat is prompt.style=auto
        settings["prompt.style"] = json.dumps(identity_key(record, "prompt_style"))
    trained = trains(record)
    kept = {}
    for key, value in settings.items():
        group, _, name = key.partition(".")
        if key in _NOT_A_VARIANT or group in _NOT_A_VARIANT:
            continue
        if group in _NUMERIC_SETTINGS and name.split(".")[0] not in _NUMERIC_SETTINGS[group]:
            continue
        if group == "trainer" and not trained:
            continue  # a method that trains nothing is not changed by trainer settings
        kept[key] = value
    return kept


def varying_settings(settings: Sequence[dict[str, str]]) -> set[str]:
    """The keys whose values differ among ``settings`` (configuration_settings of several records)."""
    return {key for key in {k for s in settings for k in s} if len({s.get(key) for s in settings}) > 1}


# Settings whose own name says too little, named from their block (``optimizer.momentum=0.9``, ``lr_scale.lora_B=16``,
# ``optimizer=torch.optim.SGD``), and what an unset one of them means
_NAMED_FROM_BLOCK = {"method.optimizer._target_": "optimizer", "method.optimizer.": "optimizer.",
                     "method.lr_scale.": "lr_scale."}
_UNSET_MEANS = {"method.optimizer._target_": "AdamW", "method.optimizer.": "–", "method.lr_scale.": "1"}
# blocks whose null is their default (AdamW, every factor 1), as unset: one setting, never two labels for it
_NULL_IS_UNSET = ("method.optimizer", "method.lr_scale")


def _block_prefix(key: str, entries: Mapping[str, str]) -> str | None:
    """The key of ``entries`` that ``key`` is, or the block (a prefix ending in a dot) it lies in."""
    return next((p for p in entries if key == p or (p.endswith(".") and key.startswith(p))), None)


def _block_entry(key: str, entries: Mapping[str, str]) -> str | None:
    prefix = _block_prefix(key, entries)
    return None if prefix is None else entries[prefix]


def _block_name(key: str) -> str | None:
    prefix = _block_prefix(key, _NAMED_FROM_BLOCK)
    if prefix is None:
        return None
    return _NAMED_FROM_BLOCK[prefix] + (key[len(prefix):] if prefix.endswith(".") else "")


def _short_names(keys: Sequence[str]) -> dict[str, str]:
    """``method.r`` -> ``r`` unless another differing key ends the same way; a method's optimizer and rate factors
    by their block (``_NAMED_FROM_BLOCK``)."""
    last = Counter(k.rsplit(".", 1)[-1] for k in keys)
    return {k: _block_name(k)
            or (k.rsplit(".", 1)[-1] if last[k.rsplit(".", 1)[-1]] == 1 else k) for k in keys}


def assign_variants(records: list[dict[str, Any]]) -> None:
    """Set ``record["variant"]``: the settings in which a record's configuration differs from the other
    configurations of the same dataset × model × method ('' when there is only one)."""
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = defaultdict(list)
    for record in records:
        groups[record["dataset"], record["model"], record["method"]].append(record)
    for group in groups.values():
        # the records of one configuration key are one configuration, however their settings are spelt
        # (trainer.precision=32 and 32-true, alpha 32.0 and 32): each is labelled by the first one's
        first: dict[str, dict[str, str]] = {}
        settings = []
        for record in group:
            own, key = configuration_settings(record), identity_key(record, "configuration_key")
            settings.append(first.setdefault(key, own) if key else own)
        differing = sorted(varying_settings(settings))
        # a setting that only mirrors another (method.peft.r = ${..r} of method.r) is named once, by its shorter key
        by_values: dict[tuple, str] = {}
        for k in sorted(differing, key=lambda k: (k.count("."), k)):
            by_values.setdefault(tuple(s.get(k) for s in settings), k)
        differing = [k for k in differing if k in by_values.values()]
        names = _short_names(differing)
        labels = [", ".join(f"{names[k]}={_plain(own.get(k), k)}" for k in differing) for own in settings]
        # configurations the config cannot tell apart (other code, data or library versions) by their key. A cell
        # that did not complete and has no key (it failed before computing it) belongs to the one keyed
        # configuration of its settings, if any; a completed one without a key (written before cells had an
        # identity) is a configuration of its own, of unknown code (None), which is never pooled with a keyed one
        by_label: dict[str, set[str | None]] = defaultdict(set)
        for record, label in zip(group, labels):
            key = identity_key(record, "configuration_key")
            if key or record.get("status") == COMPLETED:
                by_label[label].add(key or None)
        for record, label in zip(group, labels):
            key = identity_key(record, "configuration_key") or ""
            keyed = by_label[label] - {None}
            if not key and record.get("status") != COMPLETED and len(keyed) == 1:
                key = next(iter(keyed))  # a lost seed of the one keyed configuration of its settings
            if len(by_label[label]) > 1:
                label = ", ".join(p for p in (label, f"config {key[:8] or 'unknown'}") if p)
            record["variant"] = label


def _plain(value: str | None, key: str = "") -> str:
    if value is None:
        return _block_entry(key, _UNSET_MEANS) or "unset"
    if key == "method.optimizer._target_":  # the class by its name, as the unset one reads AdamW
        return str(json.loads(value)).rsplit(".", 1)[-1]
    loaded = json.loads(value)
    return value if isinstance(loaded, (list, dict)) else str(loaded)


def _with_variants(records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """One record per cell, any status, each with its ``variant``. Variants are told apart over every cell, the
    ones that did not complete included, so that a lost seed is named on its own configuration's row."""
    unique, _ = deduplicate(records)
    assign_variants(unique)
    return unique


def labelled_records(records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """The completed records, one per cell, each with its ``variant`` (``_with_variants``)."""
    return [r for r in _with_variants(records) if r.get("status") == COMPLETED]


def not_completed(records: Iterable[dict[str, Any]]) -> dict[tuple[str, str, str, str], str]:
    """Per dataset × model × method × variant, the cells that did not complete ("seed 1 diverged; seed 2
    failed"): a row's mean is over its completed seeds only, so a method whose runs diverge must say how many it
    lost."""
    found: dict[tuple[str, str, str, str], list[tuple[Any, str]]] = defaultdict(list)
    for record in _with_variants(records):
        if record.get("status") != COMPLETED:
            key = (record.get("dataset"), record.get("model"), record.get("method"), record["variant"])
            found[key].append((record.get("seed"), str(record.get("status"))))
    return {key: "; ".join(f"seed {seed} {status}" for seed, status in sorted(cells, key=lambda c: str(c[0])))
            for key, cells in found.items()}
