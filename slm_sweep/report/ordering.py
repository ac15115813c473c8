"""The report's order and labels: which methods train (the baselines train nothing), methods in the study's order,
baselines first, variants with their numbers read as numbers, models by size."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from .collect import number

# Methods that train nothing, also when a record carries no config saying so
BASELINE_METHODS = ("zeroshot", "zeroshot_instructed", "fewshot", "fewshot_chat")
METHOD_ORDER = ("zeroshot", "zeroshot_instructed", "fewshot", "fewshot_chat", "full", "lora", "dora")


def trains(record: dict[str, Any]) -> bool:
    """Whether the record's method trains weights: its config's ``method.train``, else its name."""
    config = record.get("config")
    method = config.get("method") if isinstance(config, dict) else None
    if isinstance(method, dict) and isinstance(method.get("train"), bool):
        return method["train"]
    return is_fine_tuned(record["method"])


def method_sort_key(method: str, trained: bool | None = None) -> tuple[bool, int, str]:
    """Baselines before trained methods, each kind in METHOD_ORDER and then by name: a new method sorts among
    its own kind. ``trained``: whether the method trains weights (a row's ``trained``); None: from its name."""
    trained = is_fine_tuned(method) if trained is None else trained
    if method in METHOD_ORDER:
        return trained, METHOD_ORDER.index(method), ""
    return trained, len(METHOD_ORDER), method


def row_sort_key(row: dict[str, Any]) -> tuple:
    """A row's method, then its variant with numbers read as numbers (``r=8`` before ``r=16``)."""
    return *method_sort_key(row["method"], row.get("trained")), natural_key(row.get("variant") or "")


def natural_key(text: str) -> list:
    """``text`` split into its numbers (``8``, ``0.0002``, ``5e-05``), compared as numbers, and the text between
    them: ``r=8`` before ``r=16``, ``lr=5e-05`` before ``lr=0.0001``."""
    return [float(part) if i % 2 else part for i, part in enumerate(re.split(_NUMBER, text))]


_NUMBER = re.compile(r"(\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)")


def method_label(row: dict[str, Any]) -> str:
    """The method, with the settings that tell its variants apart: ``lora (r=8)``."""
    return f"{row['method']} ({row['variant']})" if row.get("variant") else row["method"]


def is_fine_tuned(method: str) -> bool:
    return method not in BASELINE_METHODS


def model_sizes(records: Iterable[dict[str, Any]]) -> dict[str, int | None]:
    """Per model the smallest reported total_params (the base model: adapters only add to it)."""
    sizes: dict[str, int | None] = {}
    for record in records:
        model = record["model"]
        total = number(record.get("metrics", {}).get("total_params"))
        sizes.setdefault(model, None)
        if total is not None and (sizes[model] is None or total < sizes[model]):
            sizes[model] = int(total)
    return sizes


def model_sort_key(model: str, sizes: dict[str, int | None]) -> tuple[bool, int, str]:
    size = sizes.get(model)
    return size is None, size or 0, model
