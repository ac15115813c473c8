"""The learning-rate table: where it is (``table_path``), reading and checking it (``read_table``,
``check_table_file``), an entry's rate and its search record (``lookup``, ``has_search_record``,
``not_the_search_choice``), writing it (``write_table``) and what a search chose as text (``render``)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

# a data file the tune command writes, not a config group: beside conf/, not in it
DEFAULT_TABLE = "tuned/lr.yaml"
# the top level of a table write_table writes
TABLE_KEYS = ("metric", "written_at", "searches", "lr", "searched")
# slm_sweep/, the folder above this package: a relative tuning.table is read from there
PACKAGE_DIR = Path(__file__).resolve().parent.parent
# what the table records as its metric when each dataset was searched on its own claims metric
CLAIMS_METRIC = "claims_metric"
# what a table entry's search record holds when the tune command wrote it, and each one's type: the guards of a
# tuned cell read them
SEARCH_RECORD = {"metric": str, "seeds": list, "trained_with": Mapping}
# what a table entry and a tuned cell's learning_rate record of the winner's lead over the runner-up
LEAD_KEYS = ("runner_up", "margin", "margin_se", "margin_test", "margin_p", "margin_fallback", "within_noise", "tied")

HEADER = """\
# Learning rates chosen on the validation split (carved from train; the test split is never generated on),
# one per dataset x model x method: the highest mean {metric} over seeds, ties to the lower mean
# validation loss, then to the smaller rate; `margin` is the lead over the runner-up. Cells with tuning.lr=tuned
# (experiment=paper) train at lr.<dataset>.<model>.<method>; without an entry they keep method.lr and result.json
# says so (learning_rate), or with tuning.on_missing=refuse (experiment=paper) they are refused.
# Written by `python -m slm_sweep.tune {sources}`; rerun it after a new search
# (entries of other searches are kept). `searched` lists every candidate and its validation scores, each seed's
# run, and the search each entry was chosen from (`searches`).
"""


class TuningError(ValueError):
    """A search or a table that cannot give a learning rate; the message names the file or the setting."""


def table_path(table: str | Path) -> Path:
    """``tuning.table``: an absolute path, or one relative to the package's folder (slm_sweep/)."""
    path = Path(str(table)).expanduser()
    return path if path.is_absolute() else PACKAGE_DIR / path


def positive_number(value: Any) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            and value > 0)


def read_table(path: str | Path) -> dict[str, Any]:
    """The table as plain data; every learning rate checked, and the shape of what the guards of a tuned cell read
    of it (``searched``, ``searches``). Raises TuningError naming the file and key."""
    path = Path(path)
    if path.is_dir():
        raise TuningError(f"the learning-rate table {path} is a folder: name the table's file (such as "
                          f"{path / 'lr.yaml'})")
    if not path.is_file():
        raise TuningError(f"the learning-rate table {path} does not exist: write it with "
                          "`python -m slm_sweep.tune <search dir>`, or set tuning.lr=method")
    try:
        data = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    except Exception as err:  # noqa: BLE001 - any YAML or interpolation problem is a bad file
        raise TuningError(f"the learning-rate table {path} cannot be read: {err}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise TuningError(f"the learning-rate table {path} must be a mapping with an 'lr' key, not "
                          f"{type(data).__name__}")
    lr = data.get("lr")
    if lr is None:
        data["lr"] = lr = {}
    _check_level(path, "lr", lr, ("dataset", "model", "method"))
    _check_level(path, "searched", data.get("searched"), ("dataset", "model", "method"), _check_search_record,
                 "its search record")
    _check_list(path, "searches", data.get("searches"), "the search folders the table was written from")
    return data


def check_table_file(path: Path) -> None:
    """tune's --out, when it exists: refuse a file that is no learning-rate table (a result.json, an experiment's
    YAML), which writing the table would replace. Only its top level is read: --replace rewrites a table whose
    entries do not parse."""
    try:
        node = OmegaConf.load(path)
    except Exception as err:  # noqa: BLE001 - any YAML problem: not a table this command wrote
        raise TuningError(f"--out {path} is not a learning-rate table (it cannot be read as YAML: {err}); it is "
                          "left as it was: give --out a table or a new file") from None
    if not isinstance(node, DictConfig):
        raise TuningError(f"--out {path} is not a learning-rate table (a mapping with an 'lr' key) but a list; it "
                          "is left as it was: give --out a table or a new file")
    foreign = [str(key) for key in node if str(key) not in TABLE_KEYS]
    if foreign:
        named = ", ".join(foreign[:6]) + (f", ... ({len(foreign)} keys)" if len(foreign) > 6 else "")
        raise TuningError(f"--out {path} holds {named} at its top level, which a table this command writes does not "
                          f"(it writes {', '.join(TABLE_KEYS)}): a file that is no table (a result.json, an "
                          "experiment's YAML), or a table with keys of its own, which writing it would drop; it is "
                          "left as it was: give --out a table without them or a new file")


def _check_rate(path: Path, key: str, value: Any) -> None:
    if not positive_number(value):
        raise TuningError(f"{path}: {key}={value!r} must be a positive number (a learning rate)")


def _check_level(path: Path, key: str, value: Any, levels: Sequence[str], check_leaf=_check_rate,
                 leaf: str = "its learning rate") -> None:
    if not levels:
        check_leaf(path, key, value)
        return
    if value is None:
        return
    if not isinstance(value, dict):
        raise TuningError(f"{path}: {key} must map each {levels[0]} to "
                          + (leaf if len(levels) == 1 else f"a mapping of {levels[1]}s") + f", not {value!r}")
    for name, item in value.items():
        _check_level(path, f"{key}.{name}", item, levels[1:], check_leaf, leaf)


def _check_search_record(path: Path, key: str, value: Any) -> None:
    """An entry of ``searched`` as a tuned cell reads it: a mapping whose ``candidates`` are mappings."""
    if value is None:
        return
    if not isinstance(value, dict):
        raise TuningError(f"{path}: {key}={value!r} must be a mapping (the search record of the rate: metric, "
                          "chosen, candidates, seeds, ...)")
    _check_list(path, f"{key}.candidates", value.get("candidates"), "each rate compared, a mapping of its scores")
    _check_list(path, f"{key}.searches", value.get("searches"), "the search folders the entry was chosen from")
    for i, candidate in enumerate(value.get("candidates") or []):
        if not isinstance(candidate, dict):
            raise TuningError(f"{path}: {key}.candidates[{i}]={candidate!r} must be a mapping (a rate compared "
                              "and its scores)")


def _check_list(path: Path, key: str, value: Any, what: str) -> None:
    if value is not None and not isinstance(value, list):
        raise TuningError(f"{path}: {key}={value!r} must be a list ({what})")


def lookup(table: Mapping[str, Any], dataset: str, model: str, method: str) -> float | None:
    entry = (((table.get("lr") or {}).get(dataset) or {}).get(model) or {}).get(method)
    return None if entry is None else float(entry)


def search_record(table: Mapping[str, Any], dataset: str, model: str, method: str) -> Mapping[str, Any]:
    entry = (((table.get("searched") or {}).get(dataset) or {}).get(model) or {}).get(method)
    return entry if isinstance(entry, Mapping) else {}


def has_search_record(table: Mapping[str, Any], dataset: str, model: str, method: str) -> bool:
    searched = search_record(table, dataset, model, method)
    return all(isinstance(searched.get(key), kind) for key, kind in SEARCH_RECORD.items())


def _search_choice(searched: Mapping[str, Any]) -> list[float] | None:
    """The rate an entry's search chose: its ``chosen``; for an entry written before that was recorded, the
    candidates that scored its ``best``; None when the entry cannot tell."""
    if positive_number(searched.get("chosen")):
        return [float(searched["chosen"])]
    metric, best = searched.get("metric"), searched.get("best")
    if not isinstance(metric, str) or not isinstance(best, (int, float)) or isinstance(best, bool):
        return None
    return [float(c["lr"]) for c in searched.get("candidates") or []
            if isinstance(c, Mapping) and positive_number(c.get("lr")) and not c.get("not_eligible")
            and isinstance(c.get(metric), (int, float)) and round(c[metric], 9) == round(best, 9)] or None


def not_the_search_choice(table: Mapping[str, Any], dataset: str, model: str, method: str) -> str | None:
    """The rate(s) the search of ``lr.<dataset>.<model>.<method>`` chose when the table's rate is not one of them
    (a rate edited after the search); None when it is, or when the entry does not say."""
    rate = lookup(table, dataset, model, method)
    chose = _search_choice(search_record(table, dataset, model, method))
    if rate is None or chose is None or any(math.isclose(rate, c, rel_tol=1e-9) for c in chose):
        return None
    return " or ".join(f"{c:g}" for c in chose)


def write_table(chosen: Mapping[tuple[str, str, str], Mapping[str, Any]], path: str | Path, sources: Sequence[str],
                metric: str | None, keep: Mapping[str, Any] | None = None,
                drop: Sequence[tuple[str, str, str]] = ()) -> Path:
    """Write (atomically) the table at ``path``: ``keep``'s entries but those of ``drop`` (dataset, model, method),
    then the ``chosen`` ones over them. Each chosen entry names its own search folders (``searches``: its cells',
    else ``sources``). ``metric`` None: each dataset's claims metric was maximised (the table says
    ``claims_metric``)."""
    import copy

    import yaml

    from slm_sweep.results import atomic_write_text

    lr: dict[str, Any] = copy.deepcopy(dict((keep or {}).get("lr") or {}))
    searched: dict[str, Any] = copy.deepcopy(dict((keep or {}).get("searched") or {}))
    for key in drop:
        for tree in (lr, searched):
            _remove_entry(tree, *key)
    for (dataset, model, method), entry in chosen.items():
        lr.setdefault(dataset, {}).setdefault(model, {})[method] = entry["lr"]
        searched.setdefault(dataset, {}).setdefault(model, {})[method] = {
            "metric": entry["metric"], "chosen": entry["lr"], "best": entry["best"],
            **{k: entry[k] for k in LEAD_KEYS if k in entry},
            "val_examples": entry["val_examples"],
            "searches": list(entry.get("searches") or sources),
            "candidates": [dict(c) for c in entry["candidates"]],
            **({"seeds": list(entry["seeds"])} if entry.get("seeds") is not None else {}),
            **({"trained_with": dict(entry["trained_with"])} if entry.get("trained_with") else {})}
    searches = list(dict.fromkeys([*((keep or {}).get("searches") or []), *sources]))
    metric = metric or CLAIMS_METRIC
    data = {"metric": metric, "written_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "searches": searches, "lr": lr, "searched": searched}
    path = Path(path)
    described = ("validation accuracy on each dataset's claims metric (searched.<...>.metric)"
                 if metric == CLAIMS_METRIC else metric)
    text = HEADER.format(metric=described, sources=" ".join(sources)) + yaml.safe_dump(data, sort_keys=False)
    atomic_write_text(path, text)
    return path


def _remove_entry(tree: dict[str, Any], dataset: str, model: str, method: str) -> None:
    """Remove ``tree[dataset][model][method]``, and the levels it leaves empty."""
    models = tree.get(dataset) or {}
    methods = models.get(model) or {}
    methods.pop(method, None)
    if not methods:
        models.pop(model, None)
    if not models:
        tree.pop(dataset, None)


def render(chosen: Mapping[tuple[str, str, str], Mapping[str, Any]]) -> str:
    """A short text table of what was chosen, with every candidate's score."""
    lines = []
    for (dataset, model, method), entry in chosen.items():
        metric = entry["metric"]
        scores = ", ".join(f"{c['lr']:g}: " + ("n/a" if c[metric] is None else f"{c[metric]:.3f}")
                           for c in entry["candidates"])
        lead = ""
        if entry.get("tied"):
            lead = f", tied with {entry['runner_up']:g}: chosen by the {entry['tied']}"
        elif entry.get("margin") is not None:
            lead = (f", {100 * entry['margin']:.1f} ± {100 * entry['margin_se']:.1f} points over {entry['runner_up']:g}"
                    + (": within noise" if entry.get("within_noise") else ""))
        lines.append(f"{dataset}/{model}/{method}: lr {entry['lr']:g} ({metric} {entry['best']:.3f} on "
                     f"{entry['val_examples']} examples{lead}; candidates {scores})")
    return "\n".join(lines)
