"""A search's records: its cells' result.json files read from its folders (``read_search``), grouped by
dataset x model x method (``search_groups``), and the rate each cell trained at (``record_lr``) of the grid it
records (``recorded_grid``)."""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from slm_sweep.tune.cell_rate import method_grid
from slm_sweep.tune.table import positive_number

log = logging.getLogger(__name__)


def read_search(dirs: Sequence[str | Path]) -> list[dict[str, Any]]:
    """Every readable result.json under ``dirs``, one per evaluation key (``_outranks``: a result reused in
    another folder, or a failed attempt at a cell rerun since, counts once), with the file's path
    (``result_path``) and the folder of ``dirs`` it was found under (``search_dir``). The report's reader is not
    used: it takes a completed cell without test scores as malformed. A record that is no result, or whose
    recorded grid cannot be read (``_unreadable_grid``), is skipped with a warning."""
    from slm_sweep.results import RESULT_FILE, SUPERSEDED, read_result

    records: dict[str, dict[str, Any]] = {}
    for d in dirs:
        root = Path(d)
        if not root.exists():
            raise FileNotFoundError(f"{d} does not exist")
        # not what a rerun into the same folder set aside (superseded*/): those are no cells of this search
        paths = [root] if root.is_file() else [path for path in root.rglob(RESULT_FILE) if not any(
            part.startswith(SUPERSEDED) for part in path.relative_to(root).parts)]
        for path in sorted(paths):
            record = read_result(path)
            if not isinstance(record, dict) or not all(record.get(k) for k in ("model", "method", "dataset")):
                log.warning("skipping %s: not a readable result", path)
                continue
            why = _unreadable_grid(record)
            if why:
                log.warning("skipping %s: %s", path, why)
                continue
            key = (record.get("identity") or {}).get("evaluation_key") or str(path)
            if key not in records or _outranks(record, records[key]):
                records[key] = {**record, "result_path": str(path), "search_dir": str(d)}
    return list(records.values())


def _outranks(record: Mapping[str, Any], kept: Mapping[str, Any]) -> bool:
    """Whether ``record`` replaces ``kept``, a record of the same evaluation key, by the report's rule
    (``result_preference``: a completed one over a failed, interrupted or running attempt at the same cell, the
    cell's own result over a reuse, then the latest), so that the table does not depend on the folders' order;
    of equals the first found stays."""
    from slm_sweep.report.collect import result_preference

    return result_preference(record) > result_preference(kept)


def _unreadable_grid(record: Mapping[str, Any]) -> str | None:
    """Why a search cell's recorded grid (``config.tuning.lr_grid``) cannot be read; None when it can, or when it
    records none."""
    tuning = (record.get("config") or {}).get("tuning")
    if tuning is None:
        return None
    if not isinstance(tuning, Mapping):
        return f"config.tuning={tuning!r} is not a mapping"
    grid = tuning.get("lr_grid")
    if grid is None or isinstance(grid, Mapping) and all(
            isinstance(rates, list) and all(positive_number(v) for v in rates) for rates in grid.values()):
        return None
    return (f"config.tuning.lr_grid={grid!r} is not what a search records: a mapping of each method to a list of "
            "positive learning rates")


def search_groups(records: Sequence[Mapping[str, Any]]) -> dict[tuple[str, str, str], list[Mapping[str, Any]]]:
    """The cells a rate is chosen from, by dataset x model x method: those of a trained method scored on the
    validation split."""
    groups: dict[tuple[str, str, str], list[Mapping[str, Any]]] = defaultdict(list)
    for record in records:
        config = record.get("config") or {}
        if (config.get("eval") or {}).get("split") != "val" or not (config.get("method") or {}).get("train"):
            continue
        groups[record["dataset"], record["model"], record["method"]].append(record)
    return dict(sorted(groups.items()))


def recorded_grid(record: Mapping[str, Any]) -> list[float]:
    """The grid a search cell's rate was a candidate of: ``learning_rate.candidates``, else the grid its config
    gives its candidate (a cell refused before its rate was set records no ``learning_rate``); [] for a cell of
    no grid."""
    candidates = (record.get("learning_rate") or {}).get("candidates")
    if isinstance(candidates, list):
        return [float(v) for v in candidates if positive_number(v)]
    config = record.get("config") or {}
    if (config.get("tuning") or {}).get("lr_candidate") is None:
        return []
    try:
        return method_grid(config)[0]
    except (KeyError, TypeError, ValueError):  # no method name, or no rate to build the grid around
        return []


def record_lr(record: Mapping[str, Any]) -> float | None:
    """The rate a search cell trained at. A grid cell refused before its rate was set records none, and its
    ``method.lr`` is the method's, not its candidate's: its candidate of the grid its config gives. None when
    neither tells."""
    value = (record.get("learning_rate") or {}).get("value")
    config = record.get("config") or {}
    candidate = (config.get("tuning") or {}).get("lr_candidate")
    if value is None and candidate is not None:
        grid = recorded_grid(record)
        index_ok = isinstance(candidate, int) and not isinstance(candidate, bool) and 0 <= candidate < len(grid)
        value = grid[candidate] if index_ok else None
    elif value is None:
        value = (config.get("method") or {}).get("lr")  # an Optuna trial: its sampled rate
    return float(value) if positive_number(value) else None
