"""A claim read on the mean over its models (``pool: models``): its pairs of rows pooled over the models into one
pair of pooled rows per dataset, pair of methods and variant (``pooled_pairs``), which ``claims.check_claim`` tests.
"""

from __future__ import annotations

import statistics
from collections import Counter, defaultdict
from collections.abc import Sequence
from typing import Any

from .aggregate import row_metrics
from .comparisons import POOLED_FROM, constituents
from .ordering import method_label
from .variants import varying_settings


def pooled_pairs(pairs: Sequence[tuple[dict[str, Any], dict[str, Any]]],
                 gaps: list[str]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """The pairs of one dataset, pair of methods (and variants) and claims metrics, each pooled over its models
    into one pair of pooled rows (``pooled_row``). A model's variant joins the other models' rows by the
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


# what a pooled row keeps of its models' rows, when they agree (one method and variant on one dataset)
_POOLED_SAME = ("dataset", "method", "variant", "trained", "claims_metric", "delta_metric", "settings",
                "n_eval")


def pooled_row(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """A summary row standing for one method's rows of several models on one dataset: each accuracy the mean
    of the models' means, every model weighted equally (no interval over questions: the models' errors on a
    question are not independent); ``n`` the seeds of them all, ``not_completed`` their lost seeds by model,
    ``retried`` the seeds they kept by a retry after a divergence, ``pooled_from`` the rows (``compare_rows``
    tests two such rows model by model)."""
    if not rows:
        raise ValueError("a pooled row needs at least one row")
    row: dict[str, Any] = {key: rows[0].get(key) for key in _POOLED_SAME
                           if all(r.get(key) == rows[0].get(key) for r in rows)}
    models = [r["model"] for r in rows]
    row.update(model=f"{len(rows)} model{'s' if len(rows) != 1 else ''} pooled ({', '.join(models)})",
               n=sum(r["n"] for r in rows), seeds=[seed for r in rows for seed in r.get("seeds") or []],
               not_completed="; ".join(f"{r['model']}: {r['not_completed']}" for r in rows
                                       if r.get("not_completed")) or None,
               retried="; ".join(f"{r['model']}: {r['retried']}" for r in rows if r.get("retried")) or None,
               **{POOLED_FROM: list(rows)})
    for key in row_metrics(rows):
        means = [r.get(f"{key}_mean") for r in rows]
        row[f"{key}_mean"] = statistics.fmean(means) if all(m is not None for m in means) else None
    return row


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
