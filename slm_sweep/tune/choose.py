"""The learning rate of each dataset x model x method a search ran (``choose``): its cells checked to have
trained and been scored alike but for the rate and the seed, the rates that completed every seed compared on the
validation metric, ties broken, a winner at an edge of the rates compared marked, its lead over the runner-up."""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from slm_sweep.scoring import accuracy_key
from slm_sweep.tune.cell_rate import MIN_VAL_EXAMPLES
from slm_sweep.tune.lead import winner_lead
from slm_sweep.tune.records import record_lr, recorded_grid, search_groups
from slm_sweep.tune.table import TuningError
from slm_sweep.tune.trained_with import (
    FROM_KEYS,
    WEIGHTS_PLACE,
    from_scoring,
    record_scoring,
    training_parts,
    training_settings,
    tuned_under,
)

log = logging.getLogger(__name__)


def choose(records: Sequence[Mapping[str, Any]], metric: str | None = None,
           min_val_examples: int = MIN_VAL_EXAMPLES) -> dict[tuple[str, str, str], dict[str, Any]]:
    """The best learning rate of every dataset x model x method searched in ``records``, on ``metric`` (None:
    each dataset's claims metric, ``search_metric``); a group none of whose rates completed every seed is left
    out, with a warning.

    Only cells scored on the validation split of a trained method count. Raises TuningError for a metric that is
    no validation accuracy (``check_metric``), and when the cells of one search disagree in anything but the
    learning rate and the seed, scored different validation sets, or scored fewer than ``min_val_examples``
    questions.
    """
    if metric is not None:
        check_metric(metric, records)
    chosen = {}
    for key, cells in search_groups(records).items():
        entry = _choose_one("/".join(key), cells, metric or search_metric(cells), min_val_examples)
        if entry is not None:
            chosen[key] = entry
    return chosen


def search_metric(cells: Sequence[Mapping[str, Any]]) -> str:
    """The validation metric a search of one dataset is chosen on: its claims metric, as the report reads it (a
    rate chosen on flexible would be tuned for another score than the one OrcaMath's claims read, lenient)."""
    from slm_sweep.report.claims_metric import claims_metric

    return f"val_{accuracy_key(claims_metric(cells))}"


def check_metric(metric: str, records: Sequence[Mapping[str, Any]]) -> None:
    """``--metric``: the validation accuracy of a registered metric (built in, the metrics folder's, or one the
    search's cells registered with ``eval.metric_modules``); any other key would be maximised as if it were one."""
    from slm_sweep.scoring import METRICS, metric_module_names, use_metric_modules

    modules = sorted({str(m) for r in records
                      for m in (((r.get("config") or {}).get("eval") or {}).get("metric_modules") or [])})
    names = metric_module_names(modules)  # the metrics folder's too
    try:
        use_metric_modules(names)
    except Exception as err:  # noqa: BLE001 - a module's own fault at import (SyntaxError, NameError, ...) too
        raise TuningError(f"the metric modules of the search ({', '.join(names)}) cannot be imported "
                          f"({type(err).__name__}: {err}) to check --metric against: make them importable "
                          "(PYTHONPATH), or leave --metric out to choose on each dataset's claims metric") from None
    allowed = [f"val_{accuracy_key(name)}" for name in METRICS]
    if metric not in allowed:
        raise TuningError(f"--metric {metric!r} is not the validation accuracy of a registered metric; one of: "
                          f"{', '.join(allowed)}")


def _choose_one(name: str, cells: Sequence[Mapping[str, Any]], metric: str,
                min_val_examples: int) -> dict[str, Any] | None:
    _check_alike(name, cells)
    by_lr: dict[float, list[Mapping[str, Any]]] = defaultdict(list)
    for record in cells:
        lr = record_lr(record)
        if lr is None:
            log.warning("%s: %s is left out: it records no learning rate, nor a candidate of a grid it records",
                        name, record.get("result_path") or f"a cell of seed {record.get('seed')}")
            continue
        by_lr[lr].append(record)
    for lr, runs in by_lr.items():
        # an attempt that stopped before computing its keys has no evaluation key to be matched with its rerun
        # by (read_search): a completed run of its seed says all it would have
        completed = {str(r.get("seed")) for r in runs if r.get("status") == "completed"}
        by_lr[lr] = [r for r in runs if r.get("status") == "completed" or str(r.get("seed")) not in completed
                     or (r.get("identity") or {}).get("evaluation_key")]
    n_val = _val_size(name, cells)
    all_seeds = sorted({r.get("seed") for r in cells}, key=str)
    candidates = [_candidate(name, lr, runs, all_seeds, metric) for lr, runs in by_lr.items()]
    # the grid the cells record: a rate of it that no cell ran (an interrupted search, a folder not passed)
    grid = {lr for record in cells for lr in recorded_grid(record)} - set(by_lr)
    candidates += [{"lr": lr, metric: None, "val_loss": None, "seeds": 0, "not_eligible": "not run"} for lr in grid]
    candidates.sort(key=lambda c: c["lr"])
    for c in candidates:
        if "not_eligible" in c:
            log.warning("%s: lr %g is not a candidate (%s)", name, c["lr"], c["not_eligible"])
    scored = [c for c in candidates if c[metric] is not None and "not_eligible" not in c]
    if not scored:
        log.warning("no learning rate of %s completed every seed with %s: no learning rate chosen", name, metric)
        return None
    if n_val is None or n_val < min_val_examples:
        raise TuningError(f"the validation split of {name} has {n_val} examples; choosing a learning rate "
                          f"needs at least {min_val_examples} to separate candidates (dataset.val_size; "
                          "--min-val-examples N accepts fewer)")
    # means rounded: equal counts of correct answers must tie whatever order float addition took
    ranked = sorted(scored, key=lambda c: (-round(c[metric], 9), math.inf if c["val_loss"] is None else c["val_loss"],
                                           c["lr"]))
    best = ranked[0]
    _mark_edge(name, best, scored)
    lead = winner_lead(name, best, ranked[1], metric, n_val, by_lr) if len(ranked) > 1 else {}
    _warn_lead(name, best, lead, metric)
    return {"lr": best["lr"], "metric": metric, "best": best[metric], **lead, "val_examples": n_val,
            "candidates": candidates, "seeds": all_seeds,
            "searches": sorted({str(r["search_dir"]) for r in cells if r.get("search_dir")}),
            # from a cell that computed its keys (its weights, code and examples are known there)
            "trained_with": tuned_under(next((c for c in cells if c.get("status") == "completed"), cells[0]),
                                        metric)}


def _check_alike(name: str, cells: Sequence[Mapping[str, Any]]) -> None:
    """Refuse the cells of one dataset x model x method unless they trained and were scored alike but for the rate
    and the seed (``training_settings``): rates trained otherwise, or scored by other scoring code or settings
    (their validation accuracies are not comparable), are no one search. The message names each setting that
    differs, its values, and the cells that hold each."""
    settings = [training_settings(r) for r in cells]
    weighed = any("model.weights" in s for s in settings)

    def known(cell: Mapping[str, Any], key: str) -> bool:
        # a cell that failed before computing its keys says nothing of the weights, code, examples or processes
        # it would have used, nor of how it would have been scored; where its model's files sat is no setting of
        # cells that say which weights they used
        if from_scoring(key):
            return record_scoring(cell) is not None
        unknown = key.startswith(FROM_KEYS) or weighed and key in WEIGHTS_PLACE
        return training_parts(cell) is not None or not unknown

    values: dict[str, dict[str, list[Mapping[str, Any]]]] = {}
    for key in sorted({k for s in settings for k in s}):
        for cell, setting in zip(cells, settings):
            if known(cell, key):
                values.setdefault(key, {}).setdefault(repr(setting.get(key)), []).append(cell)
    differing = {k: seen for k, seen in values.items() if len(seen) > 1}
    if not differing:
        return
    what = "; ".join(f"{k}: {', '.join(sorted(seen))}" for k, seen in differing.items())
    where = "; ".join(f"{k}={value}: {_cell_names(held)}" for k, seen in differing.items()
                      for value, held in sorted(seen.items()))
    scoring = sorted(k for k in differing if from_scoring(k) or k.startswith("eval."))
    hint = (f". Their validation accuracies were computed by other scoring ({', '.join(scoring)}: result.json's "
            "identity.scored_with and config.eval), so they cannot be ranked against each other: score them all with "
            "one code and one set of eval settings (rerun the searches scored otherwise with the code and settings "
            "of the others: a cell whose weights were kept is re-scored, not trained again), or pass only the "
            "folders scored alike") if scoring else ""
    raise TuningError(f"the search cells of {name} differ in more than the learning rate ({what}): pass the "
                      f"directories of one search{hint}. The cells of each value: {where}")


def _cell_names(cells: Sequence[Mapping[str, Any]], shown: int = 3) -> str:
    """The cells' folders (their rate and seed where a record names no file), the first ``shown`` and a count."""
    def named(cell: Mapping[str, Any]) -> str:
        if cell.get("result_path"):
            return str(Path(cell["result_path"]).parent)
        lr = record_lr(cell)
        return f"lr {'?' if lr is None else f'{lr:g}'} seed {cell.get('seed')}"

    names = sorted(named(c) for c in cells)
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return f"{len(names)} cell{'s' if len(names) != 1 else ''} ({', '.join(names[:shown])}{more})"


def _val_size(name: str, cells: Sequence[Mapping[str, Any]]) -> int | None:
    sizes = {r["metrics"].get("val_n_eval") for r in cells if r.get("status") == "completed" and r.get("metrics")}
    if len(sizes) > 1:
        raise TuningError(f"the search cells of {name} scored validation sets of different sizes "
                          f"({', '.join(map(str, sorted(sizes)))}): candidates must see the same questions")
    return next(iter(sizes), None)


def _candidate(name: str, lr: float, runs: Sequence[Mapping[str, Any]], all_seeds: Sequence[Any],
               metric: str) -> dict[str, Any]:
    seeds = [r.get("seed") for r in runs]
    if len(set(map(str, seeds))) < len(seeds):
        raise TuningError(f"the search cells of {name} hold seed(s) "
                          f"{', '.join(sorted({str(x) for x in seeds if seeds.count(x) > 1}))} of lr {lr:g} "
                          "more than once (from other searches or code versions): pass one search's folders")
    done = [r for r in runs if r.get("status") == "completed"
            and isinstance((r.get("metrics") or {}).get(metric), (int, float))]
    statuses = sorted({str(r.get("status")) for r in runs} - {"completed"})
    missing = [x for x in all_seeds if x not in seeds]
    # a rate is compared only over the seeds every rate ran, all completed at their first training: dropping the
    # seeds a rate lost (diverged, failed), or keeping one trained again after it diverged, would favour rates that
    # are unstable
    retried = [str(r.get("seed")) for r in done if r.get("retried_divergence")]
    reasons = []
    if len(done) < len(runs):
        reasons.append(f"seeds not completed: {', '.join(statuses)}")
    if retried:
        reasons.append(f"seeds completed on a retry after diverging: {', '.join(retried)}")
    if missing:
        reasons.append(f"seeds not run: {', '.join(map(str, missing))}")
    why = "; ".join(reasons) or None
    return {
        "lr": lr,
        metric: _mean([float(r["metrics"][metric]) for r in done]),
        "val_loss": _mean([float(r["metrics"]["val_loss"]) for r in done
                           if isinstance(r["metrics"].get("val_loss"), (int, float))]),
        "seeds": len(done),
        **({"not_completed": statuses} if statuses else {}),
        **({"not_eligible": why} if why else {}),
        "runs": [_run(r, metric) for r in sorted(runs, key=lambda r: str(r.get("seed")))],
    }


def _run(record: Mapping[str, Any], metric: str) -> dict[str, Any]:
    """One seed of a candidate as the table records it."""
    metrics = record.get("metrics") or {}
    key = (record.get("identity") or {}).get("evaluation_key")
    return {"seed": record.get("seed"),
            **({"status": record.get("status")} if record.get("status") != "completed" else {}),
            metric: metrics.get(metric), "val_loss": metrics.get("val_loss"),
            **({"evaluation_key": key} if key else {})}


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _mark_edge(name: str, best: dict[str, Any], scored: Sequence[Mapping[str, Any]]) -> None:
    # the edge of what was compared: a rate beyond the winner that failed, lost a seed or never ran tells nothing
    # of whether the best lies there
    if len(scored) == 1:
        best["at_edge"] = "only"
        log.warning("%s: only one learning rate (%g) could be compared; the best may lie either side", name,
                    best["lr"])
    elif best["lr"] in (scored[0]["lr"], scored[-1]["lr"]):  # candidates are sorted by rate
        edge = "smallest" if best["lr"] == scored[0]["lr"] else "largest"
        best["at_edge"] = edge
        log.warning("%s: the chosen rate %g is the %s compared; the best may lie beyond the grid", name,
                    best["lr"], edge)


def _warn_lead(name: str, best: Mapping[str, Any], lead: Mapping[str, Any], metric: str) -> None:
    if lead.get("tied"):
        log.warning("%s: the chosen rate %g ties the runner-up %g on %s: chosen by the %s", name, best["lr"],
                    lead["runner_up"], metric, lead["tied"])
    elif lead.get("within_noise"):
        log.warning("%s: the chosen rate %g leads the runner-up %g by %.1f points of %s, within noise (standard "
                    "error %.1f, %s): the search did not separate them", name, best["lr"], lead["runner_up"],
                    100 * lead["margin"], metric, 100 * lead["margin_se"], lead["margin_test"])
