"""A study's claims as a YAML file declares them: ``load_claims`` reads the file and refuses what cannot be used
(``ClaimsError``, naming the claim, the bad key and what is allowed).

The file format and the rules are in docs/results.md#claims; the study's own claims are in
``claim_files/paper.yaml`` beside this module. ``claims`` checks them against the summary rows of a sweep.
"""

from __future__ import annotations

import fnmatch
import os
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slm_sweep.scoring import METRICS

DEFAULT_CLAIMS = Path(__file__).resolve().parent / "claim_files" / "paper.yaml"

ABOVE, BELOW, NOT_BELOW, NOT_ABOVE = "above", "below", "not_below", "not_above"
DIRECTIONS = (ABOVE, BELOW, NOT_BELOW, NOT_ABOVE)

TOP_KEYS = ("claims",)
CLAIM_KEYS = ("id", "text", "a", "b", "direction", "metric", "margin", "models", "models_require", "params_below",
              "params_at_least", "datasets", "pool")
SIDE_KEYS = ("method", "require", "models", "models_require", "params_below", "params_at_least")
# a side's list of methods, or a list of models: every one must be in the results for a complete verdict (all), or
# one is enough for that (any: the wordings of one baseline; a model and its 4-bit GGUF). Either way every one
# present is an instance of its own, and the roll-up needs them all.
REQUIRE = ("all", "any")
# pool: models reads the claim on the mean over its models of each model's difference, every model weighted
# equally: one instance per dataset (and pair of methods), not one per model
POOL_MODELS = "models"
POOLS = (POOL_MODELS,)
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_NAME = re.compile(r"[A-Za-z0-9_]+")
_COUNT = re.compile(r"\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*([kKmMbB]?)\s*")
_SCALE = {"": 1, "k": 1e3, "m": 1e6, "b": 1e9}
# A non-inferiority margin is a few points; 0.5 is far more likely "half a point" than 50 points.
MARGIN_LIMIT = 0.2


class ClaimsError(ValueError):
    """A claims file that cannot be used; the message names the file, the claim, the bad key and what is
    allowed."""


@dataclass(frozen=True)
class Selector:
    """Which models a claim or a side covers: names or glob patterns, and bounds on the model's size (its
    smallest ``total_params`` in the results, the base model)."""

    models: tuple[str, ...] = ()
    params_below: float | None = None
    params_at_least: float | None = None
    models_require: str = "all"  # REQUIRE: every model listed must be in the results, or one of them

    @property
    def empty(self) -> bool:
        return not self.models and self.params_below is None and self.params_at_least is None

    def matches(self, model: str, size: int | None) -> bool:
        """Whether the selector covers ``model`` of ``size`` parameters (a model of unknown size under a bound: no;
        ``may_match`` says whether it could)."""
        return self.names(model) and self.within(size) is True

    def may_match(self, model: str, size: int | None) -> bool:
        """``matches``, where a model of unknown size counts as within the bounds: whether the selector could cover
        it (a model none of whose cells completed has no recorded size)."""
        return self.names(model) and self.within(size) is not False

    def names(self, model: str) -> bool:
        """Whether the models list (names or patterns) takes ``model`` in; True without a list."""
        return not self.models or any(fnmatch.fnmatchcase(model, pattern) for pattern in self.models)

    def within(self, size: int | None) -> bool | None:
        """Whether ``size`` is within the bounds; True without bounds, None when it is unknown under a bound."""
        if self.params_below is None and self.params_at_least is None:
            return True
        if size is None:
            return None
        return ((self.params_below is None or size < self.params_below)
                and (self.params_at_least is None or size >= self.params_at_least))

    def bound_missed(self, size: int) -> str:
        """The bound ``size`` is outside of, in words (``under 300M``)."""
        if self.params_below is not None and size >= self.params_below:
            return f"under {count_text(self.params_below)}"
        return f"at least {count_text(self.params_at_least or 0)}"

    def describe(self) -> str:
        parts = []
        if self.models:
            parts.append("models " + ", ".join(self.models))
        if self.params_below is not None:
            parts.append(f"under {count_text(self.params_below)} parameters")
        if self.params_at_least is not None:
            parts.append(f"at least {count_text(self.params_at_least)} parameters")
        return "; ".join(parts)


@dataclass(frozen=True)
class Side:
    methods: tuple[str, ...]
    selector: Selector = Selector()  # the side's own models (then the sides are paired across models)
    require: str = "all"  # REQUIRE

    def describe(self) -> str:
        own = self.selector.describe()
        methods = self.methods[0] if len(self.methods) == 1 else "{" + ", ".join(self.methods) + "} (each)"
        return methods + (f" ({own})" if own else "")


@dataclass(frozen=True)
class Claim:
    id: str
    text: str
    a: Side
    b: Side
    direction: str
    metric: str | None = None  # None: each dataset's claims_metric (flexible; lenient on OrcaMath)
    margin: float = 0.0
    selector: Selector = Selector()
    datasets: tuple[str, ...] = ()
    pool: str | None = None  # POOLS

    def describe(self) -> str:
        relation = {ABOVE: "above", BELOW: "below", NOT_BELOW: "not below", NOT_ABOVE: "not above"}[self.direction]
        margin = f" (margin {100 * self.margin:g} pp)" if self.direction in (NOT_BELOW, NOT_ABOVE) else ""
        scope = [s for s in (self.selector.describe(), "datasets " + ", ".join(self.datasets)
                             if self.datasets else "") if s]
        metric = self.metric or "each dataset's claims metric"
        pooled = ("; pooled over models: the mean of each model's difference, every model weighted equally"
                  if self.pool == POOL_MODELS else "")
        return (f"A = {self.a.describe()} {relation} B = {self.b.describe()}{margin}; metric {metric}"
                + (f"; {'; '.join(scope)}" if scope else "") + pooled)


def count_text(value: float) -> str:
    for scale, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if value >= scale:
            return f"{value / scale:g}{suffix}"
    return f"{value:g}"


def allowed_text(keys: Sequence[str]) -> str:
    return ", ".join(keys)


def _check_keys(entry: Any, allowed: Sequence[str], where: str, what: str) -> dict:
    if not isinstance(entry, dict):
        raise ClaimsError(f"{where}: {what} must be a mapping with the keys {allowed_text(allowed)}, "
                          f"got {type(entry).__name__} {entry!r}")
    for key in entry:
        if key not in allowed:
            raise ClaimsError(f"{where}: unknown key {key!r}; allowed: {allowed_text(allowed)}")
    return entry


def _names(value: Any, where: str, key: str) -> tuple[str, ...]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items or not all(isinstance(v, str) and v.strip() for v in items):
        raise ClaimsError(f"{where}: {key}={value!r} must be a name or a non-empty list of names")
    return tuple(v.strip() for v in items)


def _parameter_count(value: Any, where: str, key: str) -> float:
    """300000000, 3e8, "3e8" or "300M" -> 3e8."""
    count = None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        count = float(value)
    elif isinstance(value, str) and (match := _COUNT.fullmatch(value)):
        count = float(match.group(1)) * _SCALE[match.group(2).lower()]
    if count is None or not count > 0:
        raise ClaimsError(f"{where}: {key}={value!r} must be a positive parameter count (300000000, 3e8 or 300M)")
    return count


def _require(entry: dict, key: str, where: str, what: str) -> str:
    value = entry.get(key, "all")
    if value not in REQUIRE:
        raise ClaimsError(f"{where}: {key}={value!r} is not allowed; allowed: {allowed_text(REQUIRE)} (all: every "
                          f"{what} listed must be in the results for a complete verdict; any: one of them is "
                          "enough for that; either way each one present is checked)")
    return value


def _selector(entry: dict, where: str) -> Selector:
    models = _names(entry["models"], where, "models") if "models" in entry else ()
    models_require = _require(entry, "models_require", where, "model")
    below = _parameter_count(entry["params_below"], where, "params_below") if "params_below" in entry else None
    at_least = (_parameter_count(entry["params_at_least"], where, "params_at_least")
                if "params_at_least" in entry else None)
    if below is not None and at_least is not None and at_least >= below:
        raise ClaimsError(f"{where}: params_at_least={entry['params_at_least']!r} must be below "
                          f"params_below={entry['params_below']!r}")
    return Selector(models, below, at_least, models_require)


def _side(entry: Any, where: str) -> Side:
    if isinstance(entry, (str, list)):
        entry = {"method": entry}
    entry = _check_keys(entry, SIDE_KEYS, where, "a side")
    if "method" not in entry:
        raise ClaimsError(f"{where}: missing key 'method' (a method name or a list of them)")
    return Side(_names(entry["method"], where, "method"), _selector(entry, where),
                _require(entry, "require", where, "method"))


def _claim(entry: Any, where: str) -> Claim:
    if isinstance(entry, dict) and isinstance(entry.get("id"), str):
        where = f"{where} (id {entry['id']})"
    entry = _check_keys(entry, CLAIM_KEYS, where, "a claim")
    for key in ("id", "text", "a", "b", "direction"):
        if key not in entry:
            raise ClaimsError(f"{where}: missing key {key!r}; a claim needs id, text, a, b and direction")
    claim_id = entry["id"]
    if not isinstance(claim_id, str) or not _ID.fullmatch(claim_id):
        raise ClaimsError(f"{where}: id={claim_id!r} must be a name of letters, digits, '_', '.' and '-'")
    if not isinstance(entry["text"], str) or not entry["text"].strip():
        raise ClaimsError(f"{where}: text must be the claim in words")
    direction = entry["direction"]
    if direction not in DIRECTIONS:
        raise ClaimsError(f"{where}: direction={direction!r} is not allowed; allowed: {allowed_text(DIRECTIONS)}")
    metric = entry.get("metric")
    if isinstance(metric, str):
        metric = metric.removeprefix("accuracy_")
    if metric is not None and (not isinstance(metric, str) or not _NAME.fullmatch(metric)):
        raise ClaimsError(f"{where}: metric={entry.get('metric')!r} must be a metric name such as "
                          f"{allowed_text(tuple(METRICS))}")
    margin = entry.get("margin", 0.0)
    if "margin" not in entry and direction in (NOT_BELOW, NOT_ABOVE):
        raise ClaimsError(f"{where}: direction {direction} needs a margin: the largest difference that still counts "
                          f"as {direction.replace('_', ' ')} (0.02 = 2 points); margin: 0 asks for the interval to "
                          f"exclude every difference on the other side, which is a superiority test")
    if "margin" in entry and direction not in (NOT_BELOW, NOT_ABOVE):
        raise ClaimsError(f"{where}: margin applies to the directions {NOT_BELOW} and {NOT_ABOVE} only, "
                          f"not {direction}")
    if isinstance(margin, bool) or not isinstance(margin, (int, float)) or not 0 <= margin < MARGIN_LIMIT:
        reading = f" ({margin!r} would be {100 * margin:g} points)" if isinstance(margin, (int, float)) else ""
        raise ClaimsError(f"{where}: margin={margin!r} must be an accuracy difference, a fraction in "
                          f"[0, {MARGIN_LIMIT:g}): 0.02 = 2 points{reading}")
    datasets = _names(entry["datasets"], where, "datasets") if "datasets" in entry else ()
    side_a, side_b = _side(entry["a"], f"{where}, side a"), _side(entry["b"], f"{where}, side b")
    pool = entry.get("pool")
    if pool is not None and pool not in POOLS:
        raise ClaimsError(f"{where}: pool={pool!r} is not allowed; allowed: {allowed_text(POOLS)} (the mean over the "
                          "claim's models of each model's difference), or no pool key (one instance per model)")
    if pool is not None and not (side_a.selector.empty and side_b.selector.empty):
        raise ClaimsError(f"{where}: pool: {pool} pairs each model's rows with its own model's, while a side with "
                          "its own models, params_below or params_at_least pairs across models; give those on the "
                          "claim instead")
    return Claim(claim_id, " ".join(entry["text"].split()), side_a, side_b, direction, metric, float(margin),
                 _selector(entry, where), datasets, pool)


def _unique_key_loader():
    import yaml

    class UniqueKeyLoader(yaml.SafeLoader):
        """A safe loader that refuses a key given twice in one mapping (YAML would keep the last silently)."""

        def construct_mapping(self, node, deep=False):
            seen = set()
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=deep)
                if key in seen:
                    raise yaml.constructor.ConstructorError(None, None, f"the key {key!r} is given twice",
                                                            key_node.start_mark)
                seen.add(key)
            return super().construct_mapping(node, deep)

    return UniqueKeyLoader


def load_claims(path: str | os.PathLike) -> list[Claim]:
    """The claims declared in the YAML file at ``path``; raises ClaimsError naming what is wrong."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ClaimsError(f"claims file {path} does not exist" if not path.exists()
                          else f"claims file {path} is not a file")
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_unique_key_loader())  # noqa: S506 - SafeLoader
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ClaimsError(f"{path}: cannot read it as YAML: {exc}") from None
    data = _check_keys(data, TOP_KEYS, str(path), "the top level")
    entries = data.get("claims")
    if not isinstance(entries, list) or not entries:
        raise ClaimsError(f"{path}: 'claims' must be a non-empty list of claims (keys {allowed_text(CLAIM_KEYS)})")
    claims = [_claim(entry, f"{path}: claims[{i}]") for i, entry in enumerate(entries)]
    repeated = [claim_id for claim_id, count in Counter(c.id for c in claims).items() if count > 1]
    if repeated:
        raise ClaimsError(f"{path}: the id {repeated[0]!r} is used by more than one claim")
    return claims
