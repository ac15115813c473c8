"""A study's claims, declared in one YAML file, checked against the summary rows of a sweep.

Each claim compares two sides (``a`` and ``b``: a method, or a list of methods evaluated one at a time, such as
the wordings of a baseline) in a direction, on one metric; an instance is one pair of summary rows on the same
dataset (and the same model, unless a side selects its own models). Each instance gets the paired test of
``comparisons.compare_rows`` and a verdict; each claim a roll-up. By default the instances of a claim are one family:
Holm-adjusted p-values and Bonferroni intervals, so that every verdict of a claim holds jointly at alpha. The
file format and the rules are in
docs/results.md#claims; the study's own claims are in ``claim_files/paper.yaml`` beside this module, which
``claim_declaration`` reads. A claim pooled over models reads the pairs ``claim_pooling`` pools; ``claims_output``
writes the checked claims.
"""

from __future__ import annotations

import fnmatch
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from slm_sweep.scoring import METRICS, PRIMARY_METRIC, accuracy_key

from .aggregate import UNTRAINED_SOURCES, row_metrics
from .claim_declaration import (
    ABOVE,
    BELOW,
    NOT_ABOVE,
    NOT_BELOW,
    POOL_MODELS,
    Claim,
    ClaimsError,
    Selector,
    Side,
    allowed_text,
    count_text,
)
from .claim_pooling import pooled_pairs
from .comparisons import compare_many, constituents
from .ordering import method_label
from .stats import ALPHA, CORRECTIONS, HOLM, PairedTest, holm
from .variants import varying_settings

REPRODUCED, CONTRADICTED, INCONCLUSIVE = "reproduced", "contradicted", "inconclusive"
NOT_COVERED = "not covered"
# roll-up of a claim's instances
MIXED, PARTLY_REPRODUCED, PARTLY_CONTRADICTED = "mixed", "partly reproduced", "partly contradicted"


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


def favoured_side(claim: Claim, verdict: str) -> str | None:
    """The side a verdict says is the better one (or not the worse): "a" or "b"; None for an inconclusive one.
    above / not_below: reproduced favours A, contradicted B; below / not_above: the other way round."""
    if verdict not in (REPRODUCED, CONTRADICTED):
        return None
    a_claimed_better = claim.direction in (ABOVE, NOT_BELOW)
    return "a" if (verdict == REPRODUCED) == a_claimed_better else "b"


def survivors_cannot_show(claim: Claim, a: dict[str, Any], b: dict[str, Any], verdict: str) -> bool:
    """Whether the side that a significant ``verdict`` favours lost seeds (diverged, failed, killed), or kept a seed
    only by training it again after it diverged (``retried``): its completed seeds are the lucky ones, and the lost
    ones are evidence against that verdict that they cannot stand in for. The other side's losses only add to what
    the verdict says."""
    side = favoured_side(claim, verdict)
    row = a if side == "a" else b
    return side is not None and bool(row.get("not_completed") or row.get("retried"))


def single_runs(*rows: dict[str, Any]) -> list[dict[str, Any]]:
    """The trained rows of one completed seed, planned so: a verdict on them is about one training run, not
    the method (a row that lost its other seeds says so already)."""
    return [row for row in rows if row.get("trained") and row.get("n") == 1 and not row.get("not_completed")]


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
                out[model] = (f"{model}: {count_text(size)} parameters (its smallest total_params), not {missed[0]}: left "
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
        raise ClaimsError(f"correction={correction!r} is not allowed; allowed: {allowed_text(CORRECTIONS)}")


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

    ``lost``: variants.not_completed of the records, so that cells the claim covers but that did not complete
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
                          f"registered nor in the result files; known: {allowed_text(known)}")
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
        pairs = pooled_pairs(pairs, pair_gaps)
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
                          f"result files; known: {allowed_text(known)}")
    return metric


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
