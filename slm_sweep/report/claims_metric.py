"""Which metric a set's claims and its rows' deltas are read on: the ``claims_metric`` its records recorded, else
its config's, or one given instead (``--claims-metric``, a sweep's config), checked against the metrics the
records hold, and the lines a summary says so with."""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from slm_sweep.scoring import PRIMARY_METRIC, accuracy_key

from .collect import ReportError, number
from .variants import labelled_records

log = logging.getLogger(__name__)


def recorded_claims_metric(record: Mapping[str, Any]) -> str | None:
    """The claims metric of a record's dataset as its config records it (None for a file written before datasets
    declared one)."""
    config = record.get("config")
    dataset = config.get("dataset") if isinstance(config, dict) else None
    if isinstance(dataset, dict) and isinstance(dataset.get("claims_metric"), str):
        return dataset["claims_metric"].removeprefix("accuracy_")
    return None


def claims_metric(records: Sequence[dict[str, Any]], overrides: Mapping[str, str] | None = None) -> str:
    """The metric claims read on the records' dataset: the one ``overrides`` names for it (``--claims-metric``, a
    sweep's config: ``check_claims_metrics``), else its ``claims_metric`` as their configs record it, else (a file
    written before datasets declared one) as the dataset's config says now, else the primary metric."""
    name = records[0]["dataset"] if records else None
    if overrides and name in overrides:
        return overrides[name]
    for record in records:
        if (recorded := recorded_claims_metric(record)) is not None:
            return recorded
    return dataset_claims_metric(name)


def eval_set_claims_metric(name: str, entries: Sequence[dict[str, Any]],
                           overrides: Mapping[str, str] | None = None) -> str:
    """The metric an out-of-domain set is read on: the one ``overrides`` names for it (as ``claims_metric``'s),
    else its ``claims_metric`` as the records' ``eval_sets`` entries record it (the cells read the set's config, a
    search-path folder's included, which a report run on its own may not find), else (files written before the
    entries recorded it) as the set's config says now."""
    if overrides and name in overrides:
        return overrides[name]
    recorded = Counter(metric for entry in entries if (metric := entry_claims_metric(entry)) is not None)
    if not recorded:
        return dataset_claims_metric(name)
    ranked = sorted(recorded, key=lambda metric: (-recorded[metric], metric))
    if len(ranked) > 1:
        log.warning("%s: the result files record different claims metrics for it (%s); its deltas are on %s", name,
                    ", ".join(f"{metric} in {recorded[metric]} of its entries" for metric in ranked), ranked[0])
    return ranked[0]


def configured_claims_metric(name: str | None) -> str | None:
    """The ``claims_metric`` of the dataset ``name`` as its config (conf/dataset/, or a folder of Hydra's search
    path once ``config_sources`` knows it) says now; None for a set without a config here, or whose config names
    none. A config that no longer reads raises."""
    from slm_sweep.data.specs import dataset_spec, known_datasets

    if name not in known_datasets():
        return None
    metric = dataset_spec(name).get("claims_metric")
    return str(metric).removeprefix("accuracy_") if metric else None


def dataset_claims_metric(name: str | None) -> str:
    """The ``claims_metric`` of the dataset ``name`` as its config (conf/dataset/, or a folder of Hydra's search
    path once ``config_sources`` knows it) says now; the primary metric, with a warning, for a dataset without a
    config here or whose config no longer reads. What records that name no claims metric are read on."""
    from slm_sweep.config_sources import where
    from slm_sweep.data.specs import known_datasets

    try:
        configured = configured_claims_metric(name)
    except Exception:  # noqa: BLE001 - a dataset file that no longer reads: the report still runs
        log.warning("dataset %s: its config cannot be read; its claims metric is taken as %s", name, PRIMARY_METRIC)
        return PRIMARY_METRIC
    if configured is not None or name in known_datasets():
        return configured or PRIMARY_METRIC
    if name is not None:
        log.warning("dataset %s: its result files record no claims metric and %s has no config of it; its deltas "
                    "are on %s, which may not be the metric it was meant to be read on", name, where("dataset"),
                    PRIMARY_METRIC)
    return PRIMARY_METRIC


def delta_metric(claimed: str, metric_names: Sequence[str], where: str) -> str:
    """What a row's deltas, their tests and its marks are on: the claims metric of the set it is scored on (so that
    the summary says what the claims say), else, when the results have no accuracy of it, the primary metric."""
    if accuracy_key(claimed) in metric_names:
        return claimed
    log.warning("%s: claims_metric %r is in none of the result files (%s); its deltas are on %s", where, claimed,
                ", ".join(m.removeprefix("accuracy_") for m in metric_names), PRIMARY_METRIC)
    return PRIMARY_METRIC


def entry_claims_metric(entry: Any) -> str | None:
    """The claims metric an out-of-domain set's ``eval_sets`` entry records (None where it records none)."""
    if isinstance(entry, dict) and isinstance(entry.get("claims_metric"), str):
        return entry["claims_metric"].removeprefix("accuracy_")
    return None


def held_metrics(records: Iterable[dict[str, Any]], *, in_domain: bool = True,
                 out_of_domain: bool = True) -> dict[str, set[str]]:
    """Per dataset and out-of-domain set of the completed ``records``, the metrics (``flexible``) some record holds
    an accuracy of on it: what a set's deltas can be read on. ``in_domain``, ``out_of_domain``: whether the
    records' own scores, and their ``eval_sets`` entries, count."""
    held: dict[str, set[str]] = defaultdict(set)

    def add(name: Any, scores: Any) -> None:
        if isinstance(name, str) and isinstance(scores, dict):
            held[name].update(k.removeprefix("accuracy_") for k, v in scores.items()
                              if k.startswith("accuracy_") and len(k) > len("accuracy_") and number(v) is not None)

    for record in labelled_records(records):
        if in_domain:
            add(record.get("dataset"), record.get("metrics"))
        for eval_set, entry in (record.get("eval_sets") or {}).items() if out_of_domain else ():
            add(eval_set, entry)
    return dict(held)


def check_claims_metrics(overrides: Mapping[str, str] | None, records: Iterable[dict[str, Any]], *,
                         in_domain: bool = True, out_of_domain: bool = True) -> dict[str, str]:
    """``overrides`` ({dataset or out-of-domain set: metric}, ``accuracy_`` prefixes dropped) checked against the
    completed records: a ReportError names a set the records have no row of, or a metric none of that set's records
    holds an accuracy of (and the metrics they hold). ``in_domain``, ``out_of_domain``: which rows of a set the
    mapping is for (``held_metrics``: the end-of-sweep summary gives a dataset's and an out-of-domain set's apart)."""
    if not overrides:
        return {}
    held = held_metrics(records, in_domain=in_domain, out_of_domain=out_of_domain)
    kind = " or ".join(k for k, on in (("dataset", in_domain), ("out-of-domain set", out_of_domain)) if on)
    checked = {}
    for name, metric in overrides.items():
        metric = str(metric).removeprefix("accuracy_")
        if name not in held:
            raise ReportError(f"claims metric {name}={metric}: no {kind} {name!r} in the "
                              f"completed results; they have: {', '.join(sorted(held)) or 'none'}")
        if metric not in held[name]:
            raise ReportError(f"claims metric {name}={metric}: the results on {name} hold no accuracy of {metric!r}; "
                              f"they hold: {', '.join(sorted(held[name]))}")
        checked[name] = metric
    return checked


# Where the claims metrics of a report that reads other ones than its records recorded come from, and how its
# summary says so: why
CLAIMS_METRIC_OPTION = "option"  # python -m slm_sweep.report --claims-metric NAME=METRIC
# the end-of-sweep summary: the sweep's config (a dataset's, its jobs'; an out-of-domain set's, its config now), over
# results that recorded another one (cells that reused their finished result, or ran in an earlier grid of the folder)
CLAIMS_METRIC_SWEEP = "sweep"
CLAIMS_METRIC_SOURCES = {CLAIMS_METRIC_OPTION: "as --claims-metric asks",
                         CLAIMS_METRIC_SWEEP: "as this sweep's config says"}


def claims_metric_notes(overrides: Mapping[str, str], records: Iterable[dict[str, Any]],
                        source: str = CLAIMS_METRIC_OPTION, *, in_domain: bool = True,
                        out_of_domain: bool = True) -> list[str]:
    """One line per set of ``overrides`` (checked): ``mysums: deltas on last_digit as --claims-metric asks; its 2
    results recorded flexible``, counting the completed records (in-domain, unless not ``in_domain``) and
    ``eval_sets`` entries (out of domain, unless not ``out_of_domain``) that recorded another claims metric for it.
    A mapping for one kind of rows names it where the set has rows of the other kind too (``svamp (out of
    domain): ...``)."""
    why = CLAIMS_METRIC_SOURCES[source]
    completed = labelled_records(records)
    notes = []
    for name, metric in overrides.items():
        own = [recorded_claims_metric(r) for r in completed if r.get("dataset") == name]
        ood = [entry_claims_metric(entry) for r in completed
               for eval_set, entry in (r.get("eval_sets") or {}).items() if eval_set == name]
        recorded = Counter(m or "no claims metric"
                           for m in [*(own if in_domain else ()), *(ood if out_of_domain else ())])
        label = name
        if not out_of_domain and ood:
            label = f"{name} (in-domain)"
        elif not in_domain and own:
            label = f"{name} (out of domain)"
        other = {m: n for m, n in recorded.items() if m != metric}
        if other:
            listed = ", ".join(f"{m} ({n})" if len(other) > 1 else m for m, n in sorted(other.items()))
            n = sum(other.values())
            notes.append(f"{label}: deltas on {metric} {why}; its {n} result{'s' * (n != 1)} recorded {listed}")
        else:
            notes.append(f"{label}: deltas on {metric} {why}, the claims metric its results recorded")
    return notes
