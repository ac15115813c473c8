"""A study's claims, declared in one YAML file, checked against the summary rows of a sweep.

Each claim compares two sides (``a`` and ``b``: a method, or a list of methods evaluated one at a time, such as
the wordings of a baseline) in a direction, on one metric; an instance is one pair of summary rows on the same
dataset (and the same model, unless a side selects its own models). Each instance gets the paired test of
``aggregate.compare_rows`` and a verdict; each claim a roll-up. By default the instances of a claim are one family:
Holm-adjusted p-values and Bonferroni intervals, so that every verdict of a claim holds jointly at alpha. The
file format and the rules are in
docs/results.md#claims; the study's own claims are in ``claim_files/paper.yaml`` beside this module.
"""

from __future__ import annotations

import csv
import fnmatch
import json
import os
import re
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from slm_sweep.scoring import METRICS, PRIMARY_METRIC, accuracy_key

from .aggregate import (
    POOLED_FROM,
    UNTRAINED_SOURCES,
    compare_many,
    constituents,
    method_label,
    method_sort_key,
    pooled_row,
    row_metrics,
    varying_settings,
)
from .stats import (
    ALPHA,
    CORRECTIONS,
    HOLM,
    MCNEMAR,
    POOLED,
    SEED_TEST_DRAWS,
    SEED_TEST_SEED,
    SEEDS_AND_QUESTIONS,
    PairedTest,
    format_p,
    holm,
)
from .tables import TRUNCATION_WARNING, markdown_table

DEFAULT_CLAIMS = Path(__file__).resolve().parent / "claim_files" / "paper.yaml"

ABOVE, BELOW, NOT_BELOW, NOT_ABOVE = "above", "below", "not_below", "not_above"
DIRECTIONS = (ABOVE, BELOW, NOT_BELOW, NOT_ABOVE)
REPRODUCED, CONTRADICTED, INCONCLUSIVE = "reproduced", "contradicted", "inconclusive"
NOT_COVERED = "not covered"
# roll-up of a claim's instances
MIXED, PARTLY_REPRODUCED, PARTLY_CONTRADICTED = "mixed", "partly reproduced", "partly contradicted"

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

CSV_COLUMNS = (
    "claim", "text", "claim_verdict", "complete", "direction", "metric", "margin", "dataset", "model_a", "method_a",
    "model_b", "method_b",
    "n_a", "mean_a", "wilson_low_a", "wilson_high_a", "n_b", "mean_b", "wilson_low_b", "wilson_high_b",
    "difference", "difference_ci_low", "difference_ci_high", "ci_level", "n_questions", "test", "p_value",
    "p_adjusted", "correction", "alpha", "verdict", "difference_ci_low_alone", "difference_ci_high_alone",
    "verdict_alone", "note", "metric_sensitive",
)  # fmt: skip


class ClaimsError(ValueError):
    """A claims file that cannot be used; the message names the file, the claim, the bad key and what is
    allowed."""


# ---------------------------------------------------------------- the declaration


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
            return f"under {_count(self.params_below)}"
        return f"at least {_count(self.params_at_least or 0)}"

    def describe(self) -> str:
        parts = []
        if self.models:
            parts.append("models " + ", ".join(self.models))
        if self.params_below is not None:
            parts.append(f"under {_count(self.params_below)} parameters")
        if self.params_at_least is not None:
            parts.append(f"at least {_count(self.params_at_least)} parameters")
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


def _count(value: float) -> str:
    for scale, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if value >= scale:
            return f"{value / scale:g}{suffix}"
    return f"{value:g}"


def _allowed(keys: Sequence[str]) -> str:
    return ", ".join(keys)


def _check_keys(entry: Any, allowed: Sequence[str], where: str, what: str) -> dict:
    if not isinstance(entry, dict):
        raise ClaimsError(f"{where}: {what} must be a mapping with the keys {_allowed(allowed)}, "
                          f"got {type(entry).__name__} {entry!r}")
    for key in entry:
        if key not in allowed:
            raise ClaimsError(f"{where}: unknown key {key!r}; allowed: {_allowed(allowed)}")
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
        raise ClaimsError(f"{where}: {key}={value!r} is not allowed; allowed: {_allowed(REQUIRE)} (all: every "
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
        raise ClaimsError(f"{where}: direction={direction!r} is not allowed; allowed: {_allowed(DIRECTIONS)}")
    metric = entry.get("metric")
    if isinstance(metric, str):
        metric = metric.removeprefix("accuracy_")
    if metric is not None and (not isinstance(metric, str) or not _NAME.fullmatch(metric)):
        raise ClaimsError(f"{where}: metric={entry.get('metric')!r} must be a metric name such as "
                          f"{_allowed(tuple(METRICS))}")
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
        raise ClaimsError(f"{where}: pool={pool!r} is not allowed; allowed: {_allowed(POOLS)} (the mean over the "
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
        raise ClaimsError(f"{path}: 'claims' must be a non-empty list of claims (keys {_allowed(CLAIM_KEYS)})")
    claims = [_claim(entry, f"{path}: claims[{i}]") for i, entry in enumerate(entries)]
    repeated = [claim_id for claim_id, count in Counter(c.id for c in claims).items() if count > 1]
    if repeated:
        raise ClaimsError(f"{path}: the id {repeated[0]!r} is used by more than one claim")
    return claims


# ---------------------------------------------------------------- checking


@dataclass
class Instance:
    """One pair of rows a claim covers, its paired test and its verdict."""

    dataset: str
    a: dict[str, Any]
    b: dict[str, Any]
    test: PairedTest
    verdict: str
    p_adjusted: float | None = None  # Holm-adjusted over the claim's tested instances; None without a correction
    # significant by its test (reproduced or contradicted), inconclusive because the side that verdict favours lost
    # seeds (favoured_side): its survivors are the lucky ones
    downgraded: bool = False
    # at alpha on its own (raw p, 1 - alpha interval): what the intersection-union roll-up reads; under no
    # correction the same as test and verdict
    test_alone: PairedTest | None = None
    alone: str = INCONCLUSIVE
    metric: str = PRIMARY_METRIC  # what both sides are read on: the claim's metric, else the dataset's
    tested_verdict: str = INCONCLUSIVE  # what the family's test says, before a downgrade for lost seeds


@dataclass
class ClaimResult:
    claim: Claim
    instances: list[Instance] = field(default_factory=list)
    verdict: str = NOT_COVERED
    reason: str | None = None  # why the claim is not covered
    absent: list[str] = field(default_factory=list)  # methods a side names that are in none of the rows it covers
    # models of a models_require: any list that match no row, where another of it does (smollm135 or its 4-bit
    # GGUF); a model of a models_require: all list that matches nothing is a gap
    absent_models: list[str] = field(default_factory=list)
    tested: int = 0  # instances with a paired test: the size of the family a correction adjusts for
    # reproduced (contradicted) because every instance is reproduced (contradicted) at alpha on its own (an
    # intersection-union test), while the family's corrected verdicts, read one by one, are not all so; the verdict
    # says which way (``intersection_union``)
    by_intersection_union: bool = False
    interval_alpha: float = ALPHA  # the intervals are at 1 - interval_alpha (alpha / tested under Holm)
    # what the claim covers but the verdict could not use: lost seeds, cells without a completed seed, model
    # patterns that match nothing, models of unknown size under a size bound, variants that cannot be paired
    gaps: list[str] = field(default_factory=list)
    # what the claim's own rules leave out (random-weight controls a pattern or size bound matches; models its
    # models list takes in whose recorded size its size bound leaves out): named, but not a gap
    excluded: list[str] = field(default_factory=list)
    # the claim read on each other metric of scoring.METRICS the rows carry; the verdict above stays the claims
    # metric's
    by_metric: dict[str, MetricReading] = field(default_factory=dict)

    @property
    def stated_verdict(self) -> str:
        """The roll-up as the tables state it: qualified when part of what the claim covers is missing."""
        return f"{self.verdict} (incomplete)" if self.gaps and self.instances else self.verdict

    @property
    def intersection_union(self) -> str | None:
        """The verdict the intersection-union rule gave (reproduced or contradicted); None where it decided
        nothing (the family's verdicts did)."""
        return self.verdict if self.by_intersection_union else None

    @property
    def counts(self) -> Counter:
        return Counter(i.verdict for i in self.instances)

    def by_sides(self) -> list[tuple[str, str, Counter]]:
        """(method of a, method of b, verdict counts) per pair of methods, so a baseline's wordings show apart."""
        groups: dict[tuple[str, str], Counter] = {}
        for instance in self.instances:
            groups.setdefault((instance.a["method"], instance.b["method"]), Counter())[instance.verdict] += 1
        return [(a, b, counts) for (a, b), counts in groups.items()]

    def by_wording(self) -> list[tuple[str, str, str, Counter]]:
        """(side, method, roll-up, verdict counts) per method present of a side that lists alternatives (``require:
        any``: a baseline's wordings), rolled up as the claim is: the claim against that wording alone."""
        out = []
        for name, side in (("a", self.claim.a), ("b", self.claim.b)):
            if side.require != "any" or len(side.methods) < 2:
                continue
            for method in side.methods:
                mine = [i for i in self.instances if getattr(i, name)["method"] == method]
                if mine:
                    out.append((name, method, roll_up_instances(mine)[0], Counter(i.verdict for i in mine)))
        return out

    @property
    def metric_sensitive(self) -> bool:
        """Whether the claim read on another metric has another verdict than on the claims metric, over the same
        instances (a reading that left out rows lacking its metric is compared with the claims metric's verdict on
        the instances it kept)."""
        return any(reading.verdict != reading.on_claims_metric for reading in self.by_metric.values())

    def verdicts_by_metric(self, instance: Instance) -> dict[str, str]:
        """An instance's verdict in each reading on another metric that holds it."""
        return {metric: other.verdict for metric, reading in self.by_metric.items() for other in reading.instances
                if other.a is instance.a and other.b is instance.b}


@dataclass
class MetricReading:
    """A claim with every instance read on one metric, by the same tests, correction and roll-up as on the claims
    metric: whether its verdict hinges on how answers are extracted."""

    metric: str
    instances: list[Instance]
    verdict: str
    by_intersection_union: bool = False
    skipped: int = 0  # instances a row of which lacks the metric (result files written before it existed)
    on_claims_metric: str = ""  # the claims metric's verdict rolled up over the instances this reading kept

    @property
    def counts(self) -> Counter:
        return Counter(i.verdict for i in self.instances)

    @property
    def intersection_union(self) -> str | None:
        """``ClaimResult.intersection_union`` of this reading."""
        return self.verdict if self.by_intersection_union else None


@dataclass
class ClaimsReport:
    source: str
    alpha: float
    results: list[ClaimResult]
    correction: str = HOLM
    # what the claims were checked on and with: the folders read, the code's commit, the claims file's hash, and
    # the name of the report.json beside the claims files that names every result file, version and setting (None
    # where a report writes none)
    dirs: list[str] = field(default_factory=list)
    git_commit: str | None = None
    claims_sha256: str | None = None
    report_json: str | None = None


def judge(direction: str, test: PairedTest, alpha: float, margin: float = 0.0,
          p_value: float | None = None) -> str:
    """An instance's verdict. above/below: the paired test's p-value (``p_value``, the adjusted one, when given)
    below ``alpha`` with the difference in the claimed direction (reproduced) or against it (contradicted).
    not_below/not_above: non-inferiority within ``margin``, from the interval of the difference (for one seed
    each the hull of Tango's paired score interval and the exact McNemar test's conditional one, else the
    seeds-and-questions test's; at the level the test was computed at): entirely on the claimed side of -margin
    (reproduced) or entirely beyond it (contradicted); its p, of no difference, decides nothing. Anything else,
    and no per-question data, is inconclusive."""
    if test.p_value is None or test.difference is None:
        return INCONCLUSIVE
    p = test.p_value if p_value is None else p_value
    if direction in (ABOVE, BELOW):
        if p >= alpha or test.difference == 0:
            return INCONCLUSIVE
        return REPRODUCED if (test.difference > 0) == (direction == ABOVE) else CONTRADICTED
    if test.ci_low is None or test.ci_high is None:
        return INCONCLUSIVE
    sign = 1.0 if direction == NOT_BELOW else -1.0
    low, high = sorted((sign * test.ci_low, sign * test.ci_high))
    if low > -margin:
        return REPRODUCED
    if high < -margin:
        return CONTRADICTED
    return INCONCLUSIVE


def margin_note(direction: str, test: PairedTest, verdict: str, margin: float) -> str | None:
    """For a non-inferiority verdict reproduced within the margin although the interval lies entirely on the
    other side of 0: A is significantly below B (above, for not_above), by less than the margin."""
    if verdict != REPRODUCED or direction not in (NOT_BELOW, NOT_ABOVE) or test.ci_low is None:
        return None
    if direction == NOT_BELOW and test.ci_high < 0:
        return f"within the {100 * margin:g}-point margin, yet below B (the interval lies below 0)"
    if direction == NOT_ABOVE and test.ci_low > 0:
        return f"within the {100 * margin:g}-point margin, yet above B (the interval lies above 0)"
    return None


def favoured_side(claim: Claim, verdict: str) -> str | None:
    """The side a verdict says is the better one (or not the worse): "a" or "b"; None for an inconclusive one.
    above / not_below: reproduced favours A, contradicted B; below / not_above: the other way round."""
    if verdict not in (REPRODUCED, CONTRADICTED):
        return None
    a_claimed_better = claim.direction in (ABOVE, NOT_BELOW)
    return "a" if (verdict == REPRODUCED) == a_claimed_better else "b"


def survivors_cannot_show(claim: Claim, a: dict[str, Any], b: dict[str, Any], verdict: str) -> bool:
    """Whether the side that a significant ``verdict`` favours lost seeds (diverged, failed, killed): its completed
    seeds are the lucky ones, and the lost ones are evidence against that verdict that they cannot stand in for.
    The other side's losses only add to what the verdict says."""
    side = favoured_side(claim, verdict)
    return side is not None and bool((a if side == "a" else b).get("not_completed"))


def instance_margin_note(claim: Claim, instance: Instance) -> str | None:
    """The margin note of an instance's verdict in the family, else of its verdict alone (what the
    intersection-union roll-up reads), marked so."""
    family = margin_note(claim.direction, instance.test, instance.verdict, claim.margin)
    alone = margin_note(claim.direction, instance.test_alone or instance.test, instance.alone, claim.margin)
    return family or (alone and f"alone: {alone}")


def margin_roll_up(r: ClaimResult) -> str | None:
    """The roll-up's word on the instances reproduced within the margin whose interval lies on the other side of 0
    (in the family, or alone: an intersection-union roll-up reads those)."""
    beyond = [i for i in r.instances if instance_margin_note(r.claim, i)]
    if not beyond:
        return None
    side = "below" if r.claim.direction == NOT_BELOW else "above"
    return (f"{len(beyond)} of {len(r.instances)} instance{'s' if len(r.instances) != 1 else ''} within the "
            f"{100 * r.claim.margin:g}-point margin, yet significantly {side} B (the interval lies {side} 0, in the "
            "family or alone)")


def contradicted_alone_roll_up(r: ClaimResult) -> str | None:
    """The roll-up's word on the instances contradicted at alpha on their own but not in the family, where the
    claim is not contradicted: a family of many instances at a Bonferroni level (or Holm-adjusted p) on three
    seeds can hide a large difference against the claim, which only the "alone" column would otherwise show.
    Under ``--correction none`` an instance's verdict is its verdict alone, so there are none."""
    if r.verdict == CONTRADICTED:
        return None
    alone = [i for i in r.instances if i.alone == CONTRADICTED and i.verdict != CONTRADICTED]
    if not alone:
        return None
    return (f"{len(alone)} of {len(r.instances)} instance{'s' if len(r.instances) != 1 else ''} "
            f"{CONTRADICTED} at alpha on {'their' if len(alone) != 1 else 'its'} own (not in the family)")


# the roll-up's notes, by their key in claims.json: each a sentence under the claim's heading in claims.md
ROLL_UP_NOTES = {"margin_note": margin_roll_up, "contradicted_alone_note": contradicted_alone_roll_up}


def roll_up_notes(r: ClaimResult) -> dict[str, str | None]:
    """Each of ``ROLL_UP_NOTES`` of the claim, None where it has nothing to say."""
    return {key: note(r) for key, note in ROLL_UP_NOTES.items()}


def instance_note(claim: Claim, instance: Instance) -> str | None:
    """What a reader of one instance's verdict must know: the margin note, lost seeds, a row of few seeds."""
    notes = [instance_margin_note(claim, instance)]
    lost = [f"{row['method']} lost seeds ({row['not_completed']})" for row in (instance.a, instance.b)
            if row.get("not_completed")]
    if instance.downgraded:
        shown = "the claim" if instance.tested_verdict == REPRODUCED else "the contradiction"
        lost.append(f"its completed seeds alone cannot show {shown}")
    notes += lost
    pooled = POOLED_FROM in instance.a
    if pooled:
        key = f"{accuracy_key(instance.metric)}_mean"
        notes.append("per model, A − B (pp): " + ", ".join(
            f"{a['model']} {_points(a.get(key), b.get(key))}"
            for a, b in zip(constituents(instance.a), constituents(instance.b))))
    for a, b in zip(constituents(instance.a), constituents(instance.b)):
        prefix = f"{a['model']} × " if pooled else ""
        notes += [f"{prefix}{method_label(row)}: one training run, so the spread between training seeds is not "
                  "measured (the test covers the questions only)" for row in single_runs(a, b)]
        if 2 in (a.get("n"), b.get("n")) and instance.test.test in (SEEDS_AND_QUESTIONS, POOLED):
            notes.append(f"{prefix.removesuffix(' × ')}{': ' if pooled else ''}a row of 2 seeds: the seeds test "
                         "rests on one degree of freedom for their spread and resolves little")
        notes += [prefix + note for note in learning_rate_notes(a, b)]
        notes += [f"{prefix}{method_label(row)}: {100 * row['truncated_fraction_mean']:.0f} % of its answers cut off "
                  "at the token limit" for row in (a, b)
                  if (row.get("truncated_fraction_mean") or 0) > TRUNCATION_WARNING]
    return "; ".join(dict.fromkeys(n for n in notes if n)) or None


def _points(a: float | None, b: float | None) -> str:
    return "–" if a is None or b is None else signed_points(a - b)


def zero_noise(value: float) -> float:
    """``value``, read as 0.0 within 1e-12 of 0: float noise (a difference of -2.2e-18 between two rows of equal
    means) neither prints as -0.0 nor reads as a sign."""
    return 0.0 if abs(value) < 1e-12 else value


def signed_points(value: float) -> str:
    """A difference of accuracies in points with its sign: ``+2.5``, ``+0.0`` for 0 and float noise."""
    return f"{100 * zero_noise(value):+.1f}"


def _pooled_pairs(pairs: Sequence[tuple[dict[str, Any], dict[str, Any]]],
                  gaps: list[str]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """The pairs of one dataset, pair of methods (and variants) and claims metrics, each pooled over its models
    into one pair of pooled rows (aggregate.pooled_row). A model's variant joins the other models' rows by the
    values of the settings that tell any model's variants apart and that two models or more share a value of, not
    by its label: a label names what differs among one model's own rows, so the r=16 of a model that also ran r=8
    reads ``r=16`` where the r=16 of a model that ran it alone reads ``''``; a learning rate tuned per model tells no
    two models' rows together. Rows whose settings equal another's of their model (other code, data or library
    versions: ``config <key>`` variants) pool by their label, with no other model's. A model with several pairs in
    one pool is ambiguous: it stays out of that pool, and a gap names it. A pool over fewer models than the claim
    pairs on its dataset is a gap: the mean over part of the models is another quantity."""
    telling = _pool_settings(pairs)
    alike = _alike_configurations(pairs)
    groups: dict[tuple, list[tuple[dict[str, Any], dict[str, Any]]]] = {}
    for a, b in pairs:
        key = (a["dataset"], a["method"], b["method"], _variant_key(a, telling, alike),
               _variant_key(b, telling, alike), a.get("claims_metric"), b.get("claims_metric"))
        groups.setdefault(key, []).append((a, b))
    models: dict[str, set[str]] = defaultdict(set)
    for a, _ in pairs:
        models[a["dataset"]].add(a["model"])
    pooled = []
    for (dataset, method_a, method_b, key_a, key_b, *_), group in groups.items():
        by_model: dict[str, list[tuple[dict[str, Any], dict[str, Any]]]] = defaultdict(list)
        for a, b in group:
            by_model[a["model"]].append((a, b))
        ambiguous = sorted(model for model, own in by_model.items() if len(own) > 1)
        keys = sorted(telling[dataset, method_a] | telling[dataset, method_b])
        keyed_by = (", ".join(keys) if keys else
                    "none: no setting that tells a model's variants apart has a value two models share")
        for model in ambiguous:
            gaps.append(f"{model} × {method_a} against {model} × {method_b} on {dataset}: "
                        f"{', '.join(f'{method_label(a)} against {method_label(b)}' for a, b in by_model[model])} "
                        f"read alike on the settings the models' pool is keyed by ({keyed_by}), so which of them "
                        "joins the pool cannot be told, and none does")
        kept = [own[0] for own in by_model.values() if len(own) == 1]
        if not kept:
            continue
        a, b = pooled_row([a for a, _ in kept]), pooled_row([b for _, b in kept])
        inside = [row["model"] for row in constituents(a)]
        unpaired = sorted(models[dataset] - set(inside) - set(ambiguous))
        if unpaired or ambiguous:
            at = sorted({f"{name}={value}" for own in (key_a, key_b) if own[:1] != ("variant",) for name, value in own})
            why = [f"{', '.join(unpaired)} {'has' if len(unpaired) == 1 else 'have'} no pair of these variants"
                   if unpaired else "",
                   f"{', '.join(ambiguous)} {'is' if len(ambiguous) == 1 else 'are'} left out as ambiguous (several "
                   "pairs of it read alike)" if ambiguous else ""]
            gaps.append(f"{method_label(a)} against {method_label(b)} on {dataset}"
                        f"{' at ' + ', '.join(at) if at else ''}: pooled over {len(kept)} of the "
                        f"{len(models[dataset])} models the claim pairs there ({', '.join(inside)}); "
                        f"{'; '.join(w for w in why if w)}, and the mean over part of the models is another quantity")
        pooled.append((a, b))
    return pooled


def _model_rows(pairs: Sequence[tuple[dict[str, Any], dict[str, Any]]]) -> dict[tuple, list[dict[str, Any]]]:
    """The rows of the pairs per dataset, model and method, each once."""
    rows: dict[tuple, dict[int, dict[str, Any]]] = defaultdict(dict)
    for pair in pairs:
        for row in pair:
            rows[row["dataset"], row["model"], row["method"]][id(row)] = row
    return {key: list(own.values()) for key, own in rows.items()}


def _pool_settings(pairs: Sequence[tuple[dict[str, Any], dict[str, Any]]]) -> dict[tuple[str, str], set[str]]:
    """Per dataset and method, the settings a pool is keyed by: those whose values differ among one model's rows
    of it (what its variant labels are made of), over the models of the pairs, where two models or more share a
    value of it (a learning rate tuned per model, one model's at two rates, keys no pool)."""
    varying: dict[tuple[str, str], set[str]] = defaultdict(set)
    holders: dict[tuple[str, str, str, str], set[str]] = defaultdict(set)
    for (dataset, model, method), own in _model_rows(pairs).items():
        varying[dataset, method] |= varying_settings([row.get("settings") or {} for row in own])
        for row in own:
            for key, value in (row.get("settings") or {}).items():
                holders[dataset, method, key, value].add(model)
    shared = {(dataset, method, key) for (dataset, method, key, _), held in holders.items() if len(held) > 1}
    telling: dict[tuple[str, str], set[str]] = defaultdict(set)
    for (dataset, method), keys in varying.items():
        telling[dataset, method] = {key for key in keys if (dataset, method, key) in shared}
    return telling


def _alike_configurations(pairs: Sequence[tuple[dict[str, Any], dict[str, Any]]]) -> set[int]:
    """The rows (by id) whose settings equal another row's of their dataset, model and method: configurations that
    other code, data or library versions tell apart (``config <key>`` variants, a rerun under other code)."""
    alike = set()
    for own in _model_rows(pairs).values():
        counts = Counter(_settings_of(row) for row in own)
        alike |= {id(row) for row in own if row.get("settings") is not None and counts[_settings_of(row)] > 1}
    return alike


def _settings_of(row: dict[str, Any]) -> tuple:
    return tuple(sorted((row.get("settings") or {}).items()))


def _variant_key(row: dict[str, Any], telling: dict[tuple[str, str], set[str]], alike: set[int]) -> tuple:
    """What a row is pooled by with other models' rows: its values of the settings a pool is keyed by. A row
    without settings, and one of configurations its settings cannot tell apart (other code, data or library
    versions), by its label: it pools with no other model's."""
    settings = row.get("settings")
    if settings is None or id(row) in alike:
        return ("variant", row.get("variant") or "")
    return tuple((key, settings.get(key)) for key in sorted(telling[row["dataset"], row["method"]]))


def single_runs(*rows: dict[str, Any]) -> list[dict[str, Any]]:
    """The trained rows of one completed seed, planned so: a verdict on them is about one training run, not
    the method (a row that lost its other seeds says so already)."""
    return [row for row in rows if row.get("trained") and row.get("n") == 1 and not row.get("not_completed")]


def learning_rate_notes(*rows: dict[str, Any]) -> list[str]:
    """Why a trained side's rate may not be its best: not tuned, tuned at an end of its search, chosen on a lead
    within noise, or tied with another rate and chosen by what broke the tie. A method trained below its best
    rate is judged on less than it can do (and full fine-tuning at a rate too high is what "below zero-shot" can
    also mean)."""
    notes = []
    for row in rows:
        if not row.get("trained") or row.get("lr") is None:
            continue
        if row.get("lr_at_edge"):
            edge = "only rate" if row["lr_at_edge"] == "only" else row["lr_at_edge"]
            notes.append(f"{method_label(row)}: its tuned rate {row['lr']:g} is the {edge} its search compared, the "
                         "best may lie beyond")
        elif row.get("lr_source") and "tuned" not in row["lr_source"].split(","):
            notes.append(f"{method_label(row)}: rate {row['lr']:g} not tuned ({row['lr_source']})")
        if row.get("lr_tied"):
            notes.append(f"{method_label(row)}: its tuned rate {row['lr']:g} tied with "
                         f"{row.get('lr_within_noise') or 'the runner-up'} on validation; chosen by the "
                         f"{row['lr_tied']}")
        elif row.get("lr_within_noise"):
            notes.append(f"{method_label(row)}: its search did not separate the tuned rate {row['lr']:g} from "
                         f"{row['lr_within_noise']} (a lead within noise)")
    return notes


def roll_up_instances(instances: Sequence[Instance]) -> tuple[str, bool]:
    """The roll-up of instances and whether it is reproduced, or contradicted, by the intersection-union rule only
    (the verdict says which)."""
    verdict = roll_up([i.verdict for i in instances])
    for rule in (REPRODUCED, CONTRADICTED):
        if instances and verdict != rule and all(i.alone == rule for i in instances):
            # the claim is the conjunction of its instances, and so is "every instance is against it": every one
            # significant at alpha on its own (untested ones are not; a verdict whose favoured side lost seeds is
            # already inconclusive alone) rejects the union of their nulls at alpha (an intersection-union test),
            # whatever their number
            return rule, True
    return verdict, False


def roll_up(verdicts: Sequence[str]) -> str:
    if not verdicts:
        return NOT_COVERED
    counts = Counter(verdicts)
    for verdict in (REPRODUCED, CONTRADICTED, INCONCLUSIVE):
        if counts[verdict] == len(verdicts):
            return verdict
    if counts[REPRODUCED] and counts[CONTRADICTED]:
        return MIXED
    return PARTLY_REPRODUCED if counts[REPRODUCED] else PARTLY_CONTRADICTED


def _named(model: str, *selectors: Selector) -> bool:
    """Whether a selector names ``model`` itself (not through a pattern or a size bound)."""
    return any(model in selector.models for selector in selectors)


def _sizes(rows: Sequence[dict[str, Any]]) -> dict[str, int | None]:
    """Per model the smallest total_params of its rows: the base model (adapters only add to it)."""
    sizes: dict[str, int | None] = {}
    for row in rows:
        total, current = row.get("total_params"), sizes.get(row["model"])
        sizes[row["model"]] = total if current is None or (total is not None and total < current) else current
    return sizes


def _covers(claim: Claim, side: Side, model: str, method: str, sizes) -> bool:
    """Whether the claim's side covers ``model`` x ``method`` by its selectors (model sources aside)."""
    return (method in side.methods and claim.selector.matches(model, sizes.get(model))
            and side.selector.matches(model, sizes.get(model)))


def _may_cover(claim: Claim, side: Side, model: str, method: str, sizes) -> bool:
    """``_covers``, where a model of unknown size counts as within the size bounds: whether the side could cover
    ``model`` x ``method`` (a model none of whose cells completed has no recorded size)."""
    return (method in side.methods and claim.selector.may_match(model, sizes.get(model))
            and side.selector.may_match(model, sizes.get(model)))


def _side_rows(claim: Claim, side: Side, rows: Sequence[dict[str, Any]], sizes) -> list[dict[str, Any]]:
    return [r for r in rows if _covers(claim, side, r["model"], r["method"], sizes)
            and (r.get("model_source") not in UNTRAINED_SOURCES or _named(r["model"], claim.selector, side.selector))]


def _pairs(claim: Claim, side_a: list[dict[str, Any]], side_b: list[dict[str, Any]],
           gaps: list[str]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """The instances: rows of a and b on one dataset (and model, unless a side selects its own). When either side
    holds several configuration variants of one method (r=8 and r=16), a pair must agree on the settings that
    tell those variants apart wherever both sides share a value of it: DoRA at r=8 against LoRA at r=16 compares
    the ranks, not the methods. A setting only one side has (full fine-tuning against LoRA's r), or whose values
    the sides never share (each method at its own learning rates), does not count."""
    across_models = not (claim.a.selector.empty and claim.b.selector.empty)
    candidates: dict[tuple, list[tuple[dict[str, Any], dict[str, Any]]]] = {}
    for a in side_a:
        for b in side_b:
            if a is not b and a["dataset"] == b["dataset"] and (across_models or a["model"] == b["model"]):
                candidates.setdefault((a["dataset"], a["model"], a["method"], b["model"], b["method"]),
                                      []).append((a, b))
    pairs = []
    for (dataset, model_a, method_a, model_b, method_b), found in candidates.items():
        rows_a, rows_b = {id(a): a for a, _ in found}.values(), {id(b): b for _, b in found}.values()
        varying = (varying_settings([row.get("settings") or {} for row in rows])  # what their labels are made of
                   for rows in (rows_a, rows_b))
        keys = {key for key in set().union(*varying) if _values(rows_a, key) & _values(rows_b, key)}
        if keys:
            matched = [(a, b) for a, b in found if _alike(a, b, keys)]
            if not matched:
                variants_a = sorted({a.get("variant") or "" for a, _ in found})
                variants_b = sorted({b.get("variant") or "" for _, b in found})
                gaps.append(f"{model_a} × {method_a} and {model_b} × {method_b} on {dataset}: their variants "
                            f"({', '.join(variants_a)}; {', '.join(variants_b)}) share no setting of "
                            f"{', '.join(sorted(keys))}, so no pair of them compares the methods alone")
            found = matched
        pairs += found
    return pairs


def _values(rows, key: str) -> set:
    return {(row.get("settings") or {}).get(key) for row in rows} - {None}


def _alike(a: dict[str, Any], b: dict[str, Any], keys: set[str]) -> bool:
    """Whether two rows agree on each of ``keys`` that both have (a row without settings: by its label)."""
    own_a, own_b = a.get("settings"), b.get("settings")
    if own_a is None or own_b is None:
        return (a.get("variant") or "") == (b.get("variant") or "")
    return all(own_a[key] == own_b[key] for key in keys if key in own_a and key in own_b)


def _coverage_gaps(claim: Claim, rows: Sequence[dict[str, Any]], in_scope: Sequence[dict[str, Any]],
                   used: Sequence[dict[str, Any]], sizes, lost: dict[tuple, str]) -> list[str]:
    """What the claim covers that its instances leave out, one line each."""
    gaps = []
    in_datasets = [key for key in lost if not claim.datasets
                   or any(fnmatch.fnmatchcase(str(key[0]), pattern) for pattern in claim.datasets)]
    known_models = _known_models(rows, lost)
    for selector in (claim.selector, claim.a.selector, claim.b.selector):
        unmatched = unmatched_models(selector, known_models)
        # a list of alternatives (models_require: any) is covered when one of them matches: the others are named
        if selector.models_require == "all" or len(unmatched) == len(selector.models):
            gaps += [f"model pattern {pattern!r} matches no model of these results" for pattern in unmatched]
    known_datasets = {r["dataset"] for r in rows} | {str(key[0]) for key in lost}
    gaps += [f"dataset {pattern!r}: no cell of these results" for pattern in claim.datasets
             if not any(fnmatch.fnmatchcase(dataset, pattern) for dataset in known_datasets)]

    def size_unknown(model: str, method: str) -> bool:  # a side could cover it, were its size known
        return any(_may_cover(claim, side, model, method, sizes) and not _covers(claim, side, model, method, sizes)
                   for side in (claim.a, claim.b))

    unknown = sorted({r["model"] for r in in_scope if size_unknown(r["model"], r["method"])
                      and (r.get("model_source") not in UNTRAINED_SOURCES
                           or _named(r["model"], claim.selector, claim.a.selector, claim.b.selector))})
    gaps += [f"{model}: size unknown (no total_params in its results), so left out of a claim bounded by size"
             for model in unknown]
    # a model none of whose cells completed records no size: the claim may cover its lost cells (below)
    rowless = sorted({str(key[1]) for key in in_datasets if str(key[1]) not in sizes
                      and size_unknown(str(key[1]), str(key[2]))})
    gaps += [f"{model}: size unknown (no completed cell), so whether the claim's size bound covers it is unknown"
             for model in rowless]
    for r in {id(row): row for row in used}.values():
        if single_runs(r):
            gaps.append(f"{r['model']} × {method_label(r)} on {r['dataset']}: one training run (seed "
                        f"{', '.join(map(str, r.get('seeds') or [])) or '?'}), a verdict about that run rather "
                        "than the method (more seeds: seed=0,1,2)")
        if r.get("not_completed"):
            gaps.append(f"{r['model']} × {method_label(r)} on {r['dataset']}: mean over {r['n']} completed "
                        f"seed{'s' if r['n'] != 1 else ''} only ({r['not_completed']})")
    with_rows = {(r["dataset"], r["model"], r["method"], r.get("variant") or "") for r in rows}
    for side in (claim.a, claim.b):
        for key in in_datasets:
            dataset, model, method, variant = (str(k) if k is not None else "" for k in key)
            if (dataset, model, method, variant) not in with_rows and _may_cover(claim, side, model, method, sizes):
                label = f"{method} ({variant})" if variant else method
                gaps.append(f"{model} × {label} on {dataset}: no completed seed ({lost[key]})")
    return list(dict.fromkeys(gaps))


def _random_controls(claim: Claim, in_scope: Sequence[dict[str, Any]], sizes) -> list[str]:
    """Random-weight models a side's pattern or size bound matches but no models list names: left out."""
    untrained = sorted({r["model"] for r in in_scope if r.get("model_source") in UNTRAINED_SOURCES
                        and any(_covers(claim, side, r["model"], r["method"], sizes) for side in (claim.a, claim.b))
                        and not _named(r["model"], claim.selector, claim.a.selector, claim.b.selector)})
    return [f"{model}: random weights, left out (name it in the claim's models to include it; a pattern does not)"
            for model in untrained]


def _outside_bounds(claim: Claim, in_scope: Sequence[dict[str, Any]], sizes) -> list[str]:
    """Models a claim's (or a side's) models list takes in whose recorded size its size bound leaves out: named,
    so that a model the claim lists does not vanish from its verdict unseen."""
    out: dict[str, str] = {}
    for r in in_scope:
        model, size = r["model"], sizes.get(r["model"])
        if size is None or model in out or (r.get("model_source") in UNTRAINED_SOURCES
                                             and not _named(model, claim.selector, claim.a.selector, claim.b.selector)):
            continue
        for side in (claim.a, claim.b):
            selectors = (claim.selector, side.selector)
            if r["method"] not in side.methods or not any(sel.models for sel in selectors) \
                    or not all(sel.names(model) for sel in selectors):
                continue
            missed = [sel.bound_missed(size) for sel in selectors if sel.within(size) is False]
            if missed:
                out[model] = (f"{model}: {_count(size)} parameters (its smallest total_params), not {missed[0]}: left "
                              "out by the claim's size bound, although its models list matches it")
                break
    return [out[model] for model in sorted(out)]


def _may_hold(claim: Claim, cell: dict[str, Any], sizes) -> bool:
    """Whether a cell known only in part (model, method, dataset: None where unknown) may be one the claim covers."""
    dataset, model, method = cell.get("dataset"), cell.get("model"), cell.get("method")
    if dataset is not None and claim.datasets and not any(fnmatch.fnmatchcase(dataset, p) for p in claim.datasets):
        return False
    return any((method is None or method in side.methods) and (model is None or _may_cover(
        claim, side, model, method or side.methods[0], sizes)) for side in (claim.a, claim.b))


def _known_models(rows: Sequence[dict[str, Any]], lost: dict[tuple, str]) -> set[str]:
    """The models of the results: those with a row and those whose cells all failed."""
    return {r["model"] for r in rows} | {str(key[1]) for key in lost}


def unmatched_models(selector: Selector, models: set[str]) -> list[str]:
    """The selector's model names or patterns that match none of ``models``."""
    return [p for p in selector.models if not any(fnmatch.fnmatchcase(model, p) for model in models)]


def _known_metrics(rows: Sequence[dict[str, Any]]) -> list[str]:
    found = [m.removeprefix("accuracy_") for m in row_metrics(rows)] if rows else []
    return list(dict.fromkeys([*METRICS, *found]))


def check_correction(correction: str) -> None:
    if correction not in CORRECTIONS:
        raise ClaimsError(f"correction={correction!r} is not allowed; allowed: {_allowed(CORRECTIONS)}")


def judge_instances(claim: Claim, pairs: Sequence[tuple[dict[str, Any], dict[str, Any]]], metrics: Sequence[str], *,
                    alpha: float, correction: str, done: dict[tuple, PairedTest] | None = None,
                    intervals: bool = True) -> tuple[list[Instance], int, float]:
    """The pairs of rows tested on their metrics and judged as one family (check_claim says how): the instances,
    the number tested and the alpha of their intervals. ``done``: the tests already computed, by rows, metric and
    alpha (a reading on another metric repeats those of the instances read on it already). ``intervals=False``: no
    interval where the verdict does not read one (above, below), for a reading whose intervals nobody shows."""
    done = {} if done is None else done
    intervals = intervals or claim.direction in (NOT_BELOW, NOT_ABOVE)

    def compare(requests: Sequence[tuple[dict[str, Any], dict[str, Any], str]], level: float) -> list[PairedTest]:
        """The tests of (a, b, metric) at ``level``: from ``done``, else computed together (compare_many)."""
        keys = [(id(a), id(b), metric, level) for a, b, metric in requests]
        missing: dict[tuple, tuple[dict[str, Any], dict[str, Any], str, str]] = {}
        for (a, b, metric), key in zip(requests, keys):
            if (*key, True) not in done and (*key, intervals) not in done:
                missing.setdefault(key, (a, b, a["dataset"], metric))
        for key, test in zip(missing, compare_many(list(missing.values()), alpha=level, interval=intervals)):
            done[(*key, intervals)] = test
        # a test with its interval serves either
        return [done[(*key, True)] if (*key, True) in done else done[(*key, intervals)] for key in keys]

    tests = compare([(a, b, metric) for (a, b), metric in zip(pairs, metrics)], alpha)
    alone_tests = tests
    tested = sum(t.p_value is not None for t in tests)
    interval_alpha = alpha
    adjusted: list[float | None] = [None] * len(tests)
    if correction == HOLM:
        adjusted = holm([t.p_value for t in tests])
        if tested > 1 and intervals:
            interval_alpha = alpha / tested
            # the p-values do not depend on alpha; only the intervals are computed again, wider
            wider = iter(compare([(a, b, metric) for (a, b), t, metric in zip(pairs, tests, metrics)
                                  if t.p_value is not None], interval_alpha))
            tests = [next(wider) if t.p_value is not None else t for t in tests]
    instances = []
    for (a, b), test, p, test_alone, metric in zip(pairs, tests, adjusted, alone_tests, metrics):
        verdict = judge(claim.direction, test, alpha, claim.margin, p_value=p)
        alone = judge(claim.direction, test_alone, alpha, claim.margin)
        downgraded = survivors_cannot_show(claim, a, b, verdict)
        instances.append(Instance(
            a["dataset"], a, b, test, INCONCLUSIVE if downgraded else verdict, p, downgraded, test_alone,
            INCONCLUSIVE if survivors_cannot_show(claim, a, b, alone) else alone, metric, verdict))
    return instances, tested, interval_alpha


def check_claim(claim: Claim, rows: Sequence[dict[str, Any]], *, alpha: float = ALPHA,
                correction: str = HOLM, lost: dict[tuple, str] | None = None, source: str = "",
                unreadable: Sequence[str] = (), unattributed: Sequence[dict[str, Any]] = ()) -> ClaimResult:
    """Every instance of ``claim`` in the in-domain summary ``rows`` (aggregate.summarize), tested and judged.

    ``correction="holm"``: the claim's m tested instances are one family. above/below verdicts use Holm-adjusted
    p-values, and every interval is a Bonferroni one at 1 - alpha/m (so non-inferiority verdicts hold jointly
    too). ``"none"``: each instance at alpha on its own. An all-``reproduced`` (all-``contradicted``) claim needs
    every instance significant either way (an intersection-union test, valid at alpha without a correction); the
    correction matters for the instances read one by one and for the partial roll-ups.

    ``lost``: aggregate.not_completed of the records, so that cells the claim covers but that did not complete
    are named in ``gaps``. A significant verdict (reproduced or contradicted) whose favoured side lost seeds
    (``favoured_side``) is inconclusive: the seeds that diverged, failed or were killed are evidence its survivors
    cannot stand in for. Also gaps: a
    trained row of one seed, a row of either side that found nothing to pair with, a method of a ``require:
    all`` side missing from the results, a listed dataset no cell has, ``unreadable`` result files (the
    collector's malformed ones), whose cells the claim may cover, and ``unattributed`` cells killed before writing
    a result.json whose row cannot be told (collect.Collection.unattributed) that the claim may cover.

    ``by_metric``: the claim read on each other metric of scoring.METRICS and of the result files (every
    instance on it, those whose rows both carry it; a metric a plug-in registered is read from the files whether
    or not the process that reports imported it), by the same tests, correction and roll-up; the verdict stays the claims metric's."""
    check_correction(correction)
    known = _known_metrics(rows)
    if claim.metric is not None and claim.metric not in known:
        raise ClaimsError(f"{source + ': ' if source else ''}claim {claim.id}: metric {claim.metric!r} is neither "
                          f"registered nor in the result files; known: {_allowed(known)}")
    result = ClaimResult(claim)
    sizes = _sizes(rows)
    in_scope = [r for r in rows if not claim.datasets
                or any(fnmatch.fnmatchcase(r["dataset"], pattern) for pattern in claim.datasets)]
    side_a = _side_rows(claim, claim.a, in_scope, sizes)
    side_b = _side_rows(claim, claim.b, in_scope, sizes)
    pair_gaps: list[str] = []
    pairs = _pairs(claim, side_a, side_b, pair_gaps)
    paired: set[int] = set()
    if claim.pool == POOL_MODELS:
        # a row paired, yet left out of its pool as ambiguous, is named by the pooling's gap already
        paired = {id(row) for pair in pairs for row in pair}
        pairs = _pooled_pairs(pairs, pair_gaps)
    metrics = [claim_metric(claim, a, b, known, pair_gaps) for a, b in pairs]
    done: dict[tuple, PairedTest] = {}
    result.instances, result.tested, result.interval_alpha = judge_instances(claim, pairs, metrics, alpha=alpha,
                                                                             correction=correction, done=done)
    result.verdict, result.by_intersection_union = roll_up_instances(result.instances)
    for metric in known if pairs else ():
        if all(m == metric for m in metrics):
            continue  # the claims metric of every instance: the verdict itself
        carried = [(a, b) for a, b in pairs if all(row.get(f"{accuracy_key(metric)}_mean") is not None
                                                   for row in (a, b))]
        if carried:
            instances = judge_instances(claim, carried, [metric] * len(carried), alpha=alpha,
                                        correction=correction, done=done, intervals=False)[0]
            kept = {(id(a), id(b)) for a, b in carried}
            same = [i for i in result.instances if (id(i.a), id(i.b)) in kept]
            result.by_metric[metric] = MetricReading(metric, instances, *roll_up_instances(instances),
                                                     skipped=len(pairs) - len(carried),
                                                     on_claims_metric=roll_up_instances(same)[0])
    used = [row for i in result.instances for pooled in (i.a, i.b) for row in constituents(pooled)]
    paired |= {id(row) for row in used}
    # (a counterpart that did not complete is named by the coverage gaps already)
    failed = {(str(key[0]), str(key[1]), str(key[2])) for key in (lost or {})}
    unpaired = [f"{r['model']} × {method_label(r)} on {r['dataset']}: no {other.describe()} to compare it with"
                for rows_of, other in ((side_a, claim.b), (side_b, claim.a)) for r in rows_of if id(r) not in paired
                and not any((r["dataset"], r["model"], m) in failed for m in other.methods)]
    present = {r["method"] for r in (*side_a, *side_b)}
    missing = [f"{m}: no completed cell in these results" for side in (claim.a, claim.b) if side.require == "all"
               for m in side.methods if m not in present]
    files = ([f"{len(unreadable)} result file{'s' if len(unreadable) != 1 else ''} could not be read "
              f"({', '.join(unreadable[:3])}{', ...' if len(unreadable) > 3 else ''}): their cells may be ones "
              "this claim covers"] if unreadable else [])
    unplaced = [str(cell["job"]) for cell in unattributed if _may_hold(claim, cell, sizes)]
    files += ([f"{len(unplaced)} cell{'s' if len(unplaced) != 1 else ''} stopped before writing result.json, "
               f"and which configuration {'they' if len(unplaced) != 1 else 'it'} ran cannot be told "
               f"({', '.join(unplaced[:3])}{', ...' if len(unplaced) > 3 else ''}): "
               f"{'they may be lost seeds' if len(unplaced) != 1 else 'it may be a lost seed'} of the rows this "
               "claim reads"]
              if unplaced else [])
    result.excluded = [*_random_controls(claim, in_scope, sizes), *_outside_bounds(claim, in_scope, sizes)]
    result.gaps = list(dict.fromkeys([*pair_gaps, *_coverage_gaps(claim, rows, in_scope, used, sizes, lost or {}),
                                      *(unpaired + missing if result.instances else []), *files]))
    scope = "; ".join(s for s in (claim.selector.describe(),
                                  "datasets " + ", ".join(claim.datasets) if claim.datasets else "") if s)
    scope = f" ({scope})" if scope else ""
    if not in_scope:
        result.reason = "no completed cell" + (f" on {', '.join(claim.datasets)}" if claim.datasets else "")
    elif not side_a or not side_b:
        missing = claim.a if not side_a else claim.b
        untrained = sorted({r["model"] for r in in_scope if r["method"] in missing.methods
                            and r.get("model_source") in UNTRAINED_SOURCES})
        result.reason = (f"the cells of {missing.describe()}{scope} are of random-weight models only "
                         f"({', '.join(untrained)}), which a claim leaves out unless its models list names them "
                         "(by name: a pattern does not)" if untrained else
                         f"no completed cell of {missing.describe()}{scope}")
    elif not result.instances:
        result.reason = f"no model and dataset has both {claim.a.describe()} and {claim.b.describe()}{scope}"
    if result.instances:
        result.absent = [m for m in (*claim.a.methods, *claim.b.methods) if m not in present]
        known = _known_models(rows, lost or {})
        result.absent_models = list(dict.fromkeys(
            p for sel in (claim.selector, claim.a.selector, claim.b.selector) if sel.models_require == "any"
            and len(unmatched := unmatched_models(sel, known)) < len(sel.models) for p in unmatched))
    return result


def claim_metric(claim: Claim, a: dict[str, Any], b: dict[str, Any], known: Sequence[str],
                 gaps: list[str]) -> str:
    """The metric an instance is read on: the claim's, else its dataset's ``claims_metric`` (which the results
    must know). Rows run with different claims metrics are read on side A's, and ``gaps`` says so."""
    if claim.metric is not None:
        return claim.metric
    metric, other = (row.get("claims_metric") or PRIMARY_METRIC for row in (a, b))
    if metric != other:
        gaps.append(f"{a['model']} × {method_label(a)} and {method_label(b)} on {a['dataset']}: run with different "
                    f"claims metrics ({metric}, {other}), read on {metric}; a claim that names its metric reads one")
    if metric not in known:
        raise ClaimsError(f"dataset {a['dataset']}: claims_metric {metric!r} is neither registered nor in the "
                          f"result files; known: {_allowed(known)}")
    return metric


def metrics_text(r: ClaimResult) -> str:
    """The metric column of a claim: its own, else each dataset's ("flexible (gsm8k), lenient (orcamath)")."""
    if r.claim.metric is not None:
        return r.claim.metric
    by_dataset = dict.fromkeys((i.metric, i.dataset) for i in r.instances)
    return ", ".join(f"{metric} ({dataset})" for metric, dataset in by_dataset) or "each dataset's"


def check_claims(claims: Sequence[Claim], rows: Sequence[dict[str, Any]], *, alpha: float = ALPHA,
                 correction: str = HOLM, source: str | os.PathLike = "",
                 lost: dict[tuple, str] | None = None, unreadable: Sequence[str] = (),
                 unattributed: Sequence[dict[str, Any]] = (), dirs: Sequence[str | os.PathLike] = (),
                 report_json: str | os.PathLike | None = None) -> ClaimsReport:
    """Every claim checked on ``rows`` (check_claim). ``dirs``: the folders the rows were read from, and
    ``report_json``: the name of the report's record written beside the claims files, both named in their headers
    with the code's commit and the claims file's sha256."""
    from slm_sweep.identity import file_sha256
    from slm_sweep.results import git_commit

    check_correction(correction)
    results = [check_claim(claim, rows, alpha=alpha, correction=correction, lost=lost, source=str(source),
                           unreadable=unreadable, unattributed=unattributed) for claim in claims]
    sha256 = file_sha256(source) if str(source) and Path(source).is_file() else None
    return ClaimsReport(str(source), alpha, results, correction, [str(d) for d in dirs], git_commit(), sha256,
                        str(report_json) if report_json is not None else None)


# ---------------------------------------------------------------- writing


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}"


def _side_cell(row: dict[str, Any], metric: str) -> str:
    key = accuracy_key(metric)
    mean, low, high = row.get(f"{key}_mean"), row.get(f"{key}_wilson_low"), row.get(f"{key}_wilson_high")
    seeds = f"{row['n']} seed{'s' if row['n'] != 1 else ''}"
    interval = f" [{_pct(low)}, {_pct(high)}]" if low is not None and high is not None else ""
    return f"{_pct(mean)}{interval} ({seeds})"


def _difference_cell(test: PairedTest) -> str:
    if test.difference is None:
        return "–"
    interval = f" [{signed_points(test.ci_low)}, {signed_points(test.ci_high)}]" if test.ci_low is not None else ""
    return f"{signed_points(test.difference)}{interval}"


def _test_cell(test: PairedTest) -> str:
    if test.test is None:
        return f"none ({test.reason})"
    detail = f"b={test.discordant[0]}, c={test.discordant[1]}" if test.discordant else \
        f"{test.seeds[0]} vs {test.seeds[1]} seeds{test.over()}"
    return f"{test.test} ({detail}, {test.n_questions} questions)"


def _counts_text(counts: Counter) -> str:
    return ", ".join(f"{counts[v]} {v}" for v in (REPRODUCED, CONTRADICTED, INCONCLUSIVE) if counts[v]) or "none"


def _wording_text(r: ClaimResult) -> str:
    """The claim's verdict against each wording of a side that lists them ("against zeroshot: reproduced")."""
    return "; ".join(f"{'against ' if side == 'b' else ''}{method}: {verdict}"
                     for side, method, verdict, _ in r.by_wording())


def _metrics_cell(r: ClaimResult) -> str:
    """The summary table's cell: the other metrics' verdicts where they differ, the metrics that agree."""
    differ = [f"on {metric}: {reading.verdict}" for metric, reading in r.by_metric.items()
              if reading.verdict != reading.on_claims_metric]
    same = [metric for metric, reading in r.by_metric.items() if reading.verdict == reading.on_claims_metric]
    return "; ".join([*differ, *(["same on " + ", ".join(same)] if same else [])]) or ("–" if r.instances else "")


def _reading_text(reading: MetricReading, total: int) -> str:
    skipped = (f"; {total - reading.skipped} of {total} instances, the other rows lack {reading.metric}"
               if reading.skipped else "")
    return f"on {reading.metric} {reading.verdict} ({_counts_text(reading.counts)}{skipped})"


def _level(interval_alpha: float) -> str:
    """The confidence level of an interval: 95%, 98.33%."""
    return f"{100 * (1 - interval_alpha):.4g}%"


# not tables.UNTESTED_MARK (†, "not tested"): summary.md holds the claims below its tables
HOLM_MARK = "‡"


def holm_beyond_interval(correction: str, claim: Claim, instance: Instance) -> bool:
    """Whether an above/below instance is significant in the family by its Holm-adjusted p while its Bonferroni
    interval (at 1 - alpha/m) holds 0: Holm's step-down test rejects more than the intervals exclude 0 (never the
    other way round), and claims.md marks such a row."""
    test = instance.test
    return (correction == HOLM and claim.direction in (ABOVE, BELOW)
            and instance.verdict in (REPRODUCED, CONTRADICTED) and test.ci_low is not None
            and test.ci_low <= 0 <= test.ci_high)


def _margin_rule(claim: Claim, correction: str) -> str:
    """How a non-inferiority verdict is read, and what its p is not."""
    if claim.direction == NOT_BELOW:
        bound = f"lies entirely above −{100 * claim.margin:g} pp, {CONTRADICTED} when entirely below it"
    else:
        bound = f"lies entirely below +{100 * claim.margin:g} pp, {CONTRADICTED} when entirely above it"
    return (f"The verdict is the interval's bound against the margin ({REPRODUCED} when the interval of A − B "
            f"{bound}); p tests no difference (A = B), not the margin, and decides nothing here"
            + (", so no Holm-adjusted p is shown." if correction == HOLM else "."))


def _provenance_text(report: ClaimsReport) -> str:
    """What the claims were checked on and with, for the header of claims.md; '' when nothing is known."""
    parts = []
    if report.dirs:
        parts.append("Results read from " + ", ".join(f"`{d}`" for d in report.dirs))
    if report.git_commit:
        parts.append(f"checked by the report code at commit `{report.git_commit}` (the commits that computed the "
                     "cells: report.json's `inputs.cell_commits`)")
    if report.claims_sha256:
        parts.append(f"claims file sha256 `{report.claims_sha256}`")
    if report.report_json:
        parts.append(f"`{report.report_json}` beside this file names every result file read, the library versions "
                     "and the settings")
    if not parts:
        return ""
    text = "; ".join(parts) + "."
    return text[0].upper() + text[1:]


def _correction_text(report: ClaimsReport) -> str:
    if report.correction == HOLM:
        return (f"The instances of a claim are one family: the p-values are Holm-adjusted over its m tested "
                f"instances (above/below verdicts use them) and the intervals are Bonferroni simultaneous intervals "
                f"at 1 − alpha/m (non-inferiority verdicts read them), so every verdict of a claim holds jointly at "
                f"alpha={report.alpha:g}; Holm's step-down test rejects more than these intervals exclude 0, and "
                f"a verdict it reaches beside a Bonferroni interval that holds 0 is marked {HOLM_MARK}. Roll-up: "
                f"{REPRODUCED} ({CONTRADICTED}) when every instance is, in the family or at alpha on its own "
                f"(\"alone\": the claim is the conjunction of its instances, as is \"every instance is against "
                f"it\", and every one significant at alpha rejects the union of their nulls at alpha, an "
                f"intersection-union test that needs no correction); the partial roll-ups read the family's "
                f"verdicts.")
    return (f"Each instance at alpha={report.alpha:g} on its own, no correction for the number of instances "
            f"(`--correction none`): an all-{REPRODUCED} or all-{CONTRADICTED} roll-up is still a valid test at "
            f"alpha (every instance must be significant), but single instances and partial roll-ups are not "
            f"corrected.")


def report_metrics(report: ClaimsReport) -> list[str]:
    """The registered metrics and every other one a claim was read on (from the result files)."""
    return list(dict.fromkeys([*METRICS, *(metric for r in report.results for metric in r.by_metric),
                               *(i.metric for r in report.results for i in r.instances)]))


def render_claims_markdown(report: ClaimsReport, level: int = 1) -> str:
    """The claims table: the rules, one roll-up line per claim, then each claim's instances."""
    h = "#" * level
    results = report.results
    lines = [
        f"{h} Claims",
        "",
        *([provenance, ""] if (provenance := _provenance_text(report)) else []),
        f"Claims from `{report.source}`. Each instance compares side A with side B on one dataset and model "
        f"(rows of summary.csv), on the metric the claim names (else the dataset's claims metric: lenient on "
        f"OrcaMath, whose prose answers the flexible extraction misreads, flexible elsewhere), over the test "
        f"questions both scored: "
        f"{MCNEMAR} when both rows are one seed, otherwise a {SEEDS_AND_QUESTIONS} (the questions' paired noise "
        f"and each side's spread over seeds as separate parts; {SEED_TEST_DRAWS} draws, seed {SEED_TEST_SEED}); "
        f"two-sided, alpha={report.alpha:g}. "
        f"above/below: {REPRODUCED} when the difference is significant in the claimed direction, {CONTRADICTED} "
        f"when significant against it, else {INCONCLUSIVE}. not_below/not_above: non-inferiority, from the "
        f"interval of A − B (when both rows are one seed, the hull of Tango's paired score interval and the "
        f"exact McNemar test's conditional interval, else that test's) against the claim's margin; their p "
        f"tests no difference (A = B), not the margin. Each interval excludes 0 exactly when its p is below its "
        f"level's alpha. Sides: mean accuracy (%) with the 95% Wilson interval over the test "
        f"questions. {_correction_text(report)} A side that lists a baseline's wordings (require: any) is checked "
        f"against each, and the claim needs them all: \"by wording\" gives the verdict against each alone. "
        f"\"On other metrics\": the claim read on each other metric the rows carry ({', '.join(report_metrics(report))}), by the "
        f"same tests and correction; the verdict stays the claims metric's, and a verdict that differs on another "
        f"metric (flexible scores answers such as \"$\\boxed{{18}}$\" or \"$18.00\" wrong) hinges on how answers "
        f"are extracted."
        + (" A claim pooled over models (pool: models) has one instance per dataset and pair of methods: A − B is "
           "the mean over its models of each model's difference, every model weighted equally, tested by the "
           f"{POOLED} (the questions' paired noise of the averaged difference, each model's seed spread apart); it "
           "is about these models, not models in general, and its note gives each model's difference."
           if any(r.claim.pool for r in results) else ""),
        "",
    ]
    body = []
    for r in results:
        sides = "; ".join(f"{a} vs {b}: {_counts_text(c)}" for a, b, c in r.by_sides()) or (r.reason or "")
        body.append((f"`{r.claim.id}`", r.claim.text, metrics_text(r), f"**{r.stated_verdict}**",
                     _wording_text(r) or "–", str(len(r.instances)), sides, _metrics_cell(r)))
    lines += markdown_table(("claim", "text", "metric", "verdict", "by wording", "instances", "by sides",
                             "on other metrics"), body)
    lines.append("")
    for r in results:
        if not r.instances:
            continue
        margin_claim = r.claim.direction in (NOT_BELOW, NOT_ABOVE)
        family = ""
        if report.correction == HOLM:
            family = (f" Family of {r.tested} tested instance{'s' if r.tested != 1 else ''}: "
                      + (f"{_level(r.interval_alpha)} Bonferroni simultaneous intervals (at 1 − alpha/m), which "
                         "the verdicts read." if margin_claim else
                         f"verdicts from Holm-adjusted p, {_level(r.interval_alpha)} Bonferroni simultaneous "
                         "intervals (at 1 − alpha/m)."))
        if margin_claim:
            family += " " + _margin_rule(r.claim, report.correction)
        if r.intersection_union == REPRODUCED:
            family += (f" Every instance is {REPRODUCED} at alpha={report.alpha:g} on its own, so the claim, their "
                       "conjunction, is (an intersection-union test); read one by one, the family's verdicts hold "
                       "jointly.")
        elif r.intersection_union == CONTRADICTED:
            family += (f" Every instance is {CONTRADICTED} at alpha={report.alpha:g} on its own, so the claim is "
                       f"{CONTRADICTED}: that every instance is against it is a conjunction too (an "
                       "intersection-union test, which went against the claim); read one by one, the family's "
                       "verdicts hold jointly.")
        for note in roll_up_notes(r).values():
            family += f" {note[0].upper()}{note[1:]}." if note else ""
        wording = f" By wording: {_wording_text(r)}." if r.by_wording() else ""
        readings = ", ".join(_reading_text(reading, len(r.instances)) for reading in r.by_metric.values())
        if readings:
            readings = (f" Metric-sensitive: {readings}, where the claims metric reads {r.verdict}." if
                        r.metric_sensitive else f" The same on other metrics: {readings}.")
        lines += [f"{h}# `{r.claim.id}`: {r.claim.text}", "", f"{r.claim.describe()}. Verdict: "
                  f"**{r.stated_verdict}** ({_counts_text(r.counts)}).{family}{wording}{readings}", ""]
        body, any_marked = [], False
        for i in r.instances:
            model = i.a["model"] if i.a["model"] == i.b["model"] else f"{i.a['model']} / {i.b['model']}"
            marked = holm_beyond_interval(report.correction, r.claim, i)
            family_cells = ((i.alone, _difference_cell(i.test) + (HOLM_MARK if marked else ""),
                             "–" if margin_claim else format_p(i.p_adjusted, report.alpha))
                            if report.correction == HOLM else ())
            any_marked = any_marked or marked
            note = instance_note(r.claim, i)
            others = "; ".join(f"{metric}: {verdict}" for metric, verdict in r.verdicts_by_metric(i).items()
                               if metric != i.metric)  # its own metric's is its verdict, but for the family
            body.append((i.dataset, i.metric, model, method_label(i.a), _side_cell(i.a, i.metric), method_label(i.b),
                         _side_cell(i.b, i.metric), _difference_cell(i.test_alone or i.test),
                         _test_cell(i.test), format_p(i.test.p_value, report.alpha), *family_cells,
                         f"**{i.verdict}**" + (f" ({note})" if note else ""), others or "–"))
        holm_columns = (("alone", f"A − B [{_level(r.interval_alpha)} Bonferroni CI]", "p (Holm)")
                        if report.correction == HOLM else ())
        lines += markdown_table(("dataset", "metric", "model", "A", "A (%)", "B", "B (%)",
                         f"A − B (pp) [{_level(report.alpha)} CI]", "test", "p (A = B)" if margin_claim else "p",
                         *holm_columns, "verdict" + (" (family)" if report.correction == HOLM else ""),
                         "on other metrics"), body)
        if any_marked:
            lines += ["", f"{HOLM_MARK} Holm's step-down test rejects, while the {_level(r.interval_alpha)} "
                          "Bonferroni interval still holds 0: the interval tests every instance at alpha/m, Holm's "
                          "test only the smallest p (the next at alpha/(m − 1), and so on), so the interval is the "
                          "more conservative of the two; both hold the family-wise error at "
                          f"alpha={report.alpha:g}, and the verdict is Holm's."]
        if r.absent or r.absent_models:
            named = [*sorted(set(r.absent), key=method_sort_key), *(f"model {m}" for m in r.absent_models)]
            lines += ["", f"Not in these results: {', '.join(named)}."]
        if r.gaps:
            lines += ["", "Incomplete: the claim covers more than these instances could use, so its verdict rests on "
                          "part of it:", "", *(f"- {gap}" for gap in r.gaps)]
        if r.excluded:
            lines += ["", "Left out by the claim's rules:", "", *(f"- {line}" for line in r.excluded)]
        lines.append("")
    uncovered = [r for r in results if not r.instances]
    if uncovered:
        lines += [f"{h}# Not covered", "", "The results hold no pair of cells these claims need:", ""]
        lines += [f"- `{r.claim.id}` ({r.claim.text}): {r.reason}"
                  + (f" ({'; '.join(r.gaps)})" if r.gaps else "") for r in uncovered]
        lines.append("")
    return "\n".join(lines)


def _flat_rows(r: ClaimResult, alpha: float, correction: str) -> list[dict[str, Any]]:
    """One flat row per instance of a claim, or one saying it is not covered."""
    claim = r.claim
    common = {"claim": claim.id, "text": claim.text, "claim_verdict": r.verdict, "complete": not r.gaps,
              "direction": claim.direction, "metric": metrics_text(r),
              "margin": claim.margin if claim.direction in (NOT_BELOW, NOT_ABOVE) else None, "alpha": alpha,
              "correction": correction, "metric_sensitive": r.metric_sensitive if r.instances else None}
    if not r.instances:
        return [{**common, "verdict": NOT_COVERED, "note": r.reason}]
    out = []
    for i in r.instances:
        key = accuracy_key(i.metric)
        out.append({
            **common, "metric": i.metric, "dataset": i.dataset, "model_a": i.a["model"], "method_a": method_label(i.a),
            "model_b": i.b["model"], "method_b": method_label(i.b), "n_a": i.a["n"], "n_b": i.b["n"],
            **{f"{stat}_{side}": row.get(f"{key}_{stat}") for side, row in (("a", i.a), ("b", i.b))
               for stat in ("mean", "wilson_low", "wilson_high")},
            "difference": zero_noise(i.test.difference) if i.test.difference is not None else None,
            "difference_ci_low": i.test.ci_low,
            "difference_ci_high": i.test.ci_high,
            "ci_level": round(1 - r.interval_alpha, 6) if i.test.ci_low is not None else None,
            "n_questions": i.test.n_questions or None, "test": i.test.test, "p_value": i.test.p_value,
            # a margin claim's verdict reads its interval: an adjusted p of "no difference" decides nothing there
            "p_adjusted": None if claim.direction in (NOT_BELOW, NOT_ABOVE) else i.p_adjusted,
            "verdict": i.verdict, "verdict_alone": i.alone,
            "difference_ci_low_alone": (i.test_alone or i.test).ci_low,
            "difference_ci_high_alone": (i.test_alone or i.test).ci_high,
            "note": i.test.reason or instance_note(claim, i),
            **{f"verdict_{metric}": verdict for metric, verdict in r.verdicts_by_metric(i).items()},
        })  # fmt: skip
    return out


def claims_rows(report: ClaimsReport) -> list[dict[str, Any]]:
    """One flat row per instance, and one per claim not covered (the CSV's rows)."""
    return [row for r in report.results for row in _flat_rows(r, report.alpha, report.correction)]


def claims_json(report: ClaimsReport) -> dict[str, Any]:
    claims = []
    for r in report.results:
        claims.append({
            "id": r.claim.id, "text": r.claim.text, "a": list(r.claim.a.methods), "b": list(r.claim.b.methods),
            "description": r.claim.describe(), "direction": r.claim.direction, "metric": metrics_text(r),
            "margin": r.claim.margin, "pool": r.claim.pool, "verdict": r.verdict, "by_intersection_union": r.by_intersection_union,
            "intersection_union": r.intersection_union,
            "complete": not r.gaps, "gaps": r.gaps, **roll_up_notes(r),
            "excluded": r.excluded,
            "counts": dict(r.counts),
            "by_sides": [{"a": a, "b": b, "counts": dict(c)} for a, b, c in r.by_sides()],
            "by_wording": [{"side": side, "method": method, "verdict": verdict, "counts": dict(c)}
                           for side, method, verdict, c in r.by_wording()],
            "metric_sensitive": r.metric_sensitive if r.instances else None,
            "by_metric": {metric: {"verdict": reading.verdict, "counts": dict(reading.counts),
                                   "by_intersection_union": reading.by_intersection_union,
                                   "intersection_union": reading.intersection_union,
                                   "instances": len(reading.instances), "skipped": reading.skipped}
                          for metric, reading in r.by_metric.items()},
            "not_in_results": r.absent, "models_not_in_results": r.absent_models, "not_covered": r.reason if not r.instances else None,
            "tested_instances": r.tested, "interval_level": round(1 - r.interval_alpha, 6),
            "instances": _flat_rows(r, report.alpha, report.correction) if r.instances else [],
        })  # fmt: skip
    return {"source": report.source, "claims_sha256": report.claims_sha256, "sweep_dirs": report.dirs,
            "git_commit": report.git_commit, "report_json": report.report_json,
            "alpha": report.alpha, "correction": report.correction,
            "tests": {"single seeds": MCNEMAR, "several seeds": SEEDS_AND_QUESTIONS, "pooled over models": POOLED,
                      "seed_test_draws": SEED_TEST_DRAWS, "seed_test_seed": SEED_TEST_SEED},
            "claims": claims}


def write_claims(report: ClaimsReport, out_dir: str | os.PathLike) -> dict[str, Path]:
    """claims.md, claims.csv and claims.json in ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"claims_md": out / "claims.md", "claims_csv": out / "claims.csv", "claims_json": out / "claims.json"}
    paths["claims_md"].write_text(render_claims_markdown(report) + "\n", encoding="utf-8")
    columns = (*CSV_COLUMNS, *(f"verdict_{metric}" for metric in report_metrics(report)))
    with paths["claims_csv"].open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        for row in claims_rows(report):
            writer.writerow({k: "" if row.get(k) is None else row[k] for k in columns})
    paths["claims_json"].write_text(json.dumps(claims_json(report), indent=2) + "\n", encoding="utf-8")
    return paths
