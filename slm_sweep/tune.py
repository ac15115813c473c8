"""Learning rates chosen on the validation split, one per dataset x model x method, and the cells that use them.

A search is a sweep scored on the validation split carved from train (``hparams_search=lr_grid`` or ``optuna``,
``eval.split=val``); the test split is never generated on. ``python -m slm_sweep.tune DIR [DIR ...]`` reads the
search's result.json files and writes the table (default ``slm_sweep/tuned/lr.yaml``)::

    lr: {<dataset>: {<model>: {<method>: <learning rate>}}}
    searched: {<dataset>: {<model>: {<method>: {metric, chosen, best, margin, ..., val_examples, searches, seeds,
                                                candidates: [{lr, <metric>, ..., runs}], trained_with}}}}

A cell with ``tuning.lr=tuned`` (``experiment=paper``) takes its learning rate from that table before its identity
is computed, so the tuned value is in its training key. Without an entry, ``tuning.on_missing`` decides: ``method``
(the default) keeps ``method.lr`` and says so; ``refuse`` (``experiment=paper``) stops the cell before anything
loads, naming the entry and the search that writes it (``make paper-search`` for the paper's cells; a sweep's
preflight refuses the grid, one line per missing entry). result.json records the value and where it came from
under ``learning_rate``.

Selection: the highest mean validation accuracy over the seeds of a candidate, on the dataset's claims metric (the
one the report's claims read: flexible, lenient on OrcaMath; ``--metric`` for another validation accuracy); a tie
goes to the lower mean validation loss, then to the smaller learning rate, and is flagged (``tied``). Only rates
that completed every seed any rate ran are candidates; a rate of the grid the cells record that no cell ran is
listed as ``not run``. A winner at an end of the candidates compared is marked ``at_edge`` (``smallest``,
``largest``, or ``only`` when no other rate completed). The winner's margin over the runner-up is recorded with
its standard error, and a margin the search did not separate from noise is flagged ``within_noise`` (``_lead``).
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
from collections import defaultdict
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from slm_sweep.arguments import at_least
from slm_sweep.config import ConfigError
from slm_sweep.config_sources import CONF_DIR
from slm_sweep.scoring import accuracy_key

log = logging.getLogger(__name__)

# a data file the tune command writes, not a config group: beside conf/, not in it
DEFAULT_TABLE = "tuned/lr.yaml"
# the top level of a table write_table writes
TABLE_KEYS = ("metric", "written_at", "searches", "lr", "searched")
PACKAGE_DIR = Path(__file__).resolve().parent
# what the table records as its metric when each dataset was searched on its own claims metric
CLAIMS_METRIC = "claims_metric"
# Fewer validation questions than this cannot separate candidates a few points apart (the standard error of an
# accuracy near 0.3 on 500 questions is 2 points); the tune command refuses smaller searches unless told.
MIN_VAL_EXAMPLES = 500
LR_SOURCES = ("method", "tuned")
# tuning.on_missing, for a trained cell with tuning.lr=tuned that the table has no rate for: method trains at
# method.lr (result.json and the claims say the rate was not tuned); refuse stops the cell (experiment=paper)
ON_MISSING = ("method", "refuse")
# What `make paper-search` runs: the validation search of every trained cell of experiment=paper, trained and
# scored as those cells are (its trainer and eval groups; lr_grid scores in float32, as the paper does), read from
# the experiment's file (paper_search_command), then the table from it, where experiment=paper reads it
# (tuning.table's default). A method, model or dataset added to the experiment is searched with no other edit.
PAPER_EXPERIMENT = "paper"
PAPER_SEARCH_DIR = "multirun/paper-search"
PAPER_SEARCH = "python -m slm_sweep.tune --paper-search"
PAPER_TUNE = f"python -m slm_sweep.tune {PAPER_SEARCH_DIR}"


class TuningError(ValueError):
    """A search or a table that cannot give a learning rate; the message names the file or the setting."""


class MissingTunedRate(ConfigError):
    """A trained cell with ``tuning.lr=tuned`` and ``tuning.on_missing=refuse`` whose dataset x model x method has
    no rate in the table. ``entry``: ``lr.<dataset>.<model>.<method>``; a sweep's preflight lists each once."""

    def __init__(self, dataset: str, model: str, method: str, table: Path, method_lr: Any) -> None:
        self.entry = f"lr.{dataset}.{model}.{method}"
        self.table = str(table)
        super().__init__(
            f"tuning.on_missing=refuse: {table} has no learning rate {self.entry}, and this cell (tuning.lr=tuned) "
            f"trains only at a rate searched on the validation split. Fix: {missing_rate_fix(dataset, model, method)}"
            f" (this cell: method.lr={method_lr})")


def missing_rate_fix(dataset: str = "<dataset>", model: str = "<model>", method: str = "<method>") -> str:
    """What to do about a rate the table lacks: search it, or train untuned on purpose."""
    return (f"run the learning-rate search first: `make paper-search` for experiment=paper's cells ({PAPER_SEARCH}: "
            f"the search of its trained cells, then {PAPER_TUNE}), then the grid again; for other cells `python -m slm_sweep -m hparams_search=lr_grid "
            f"model={model} method={method} dataset={dataset}` with the cells' own trainer and eval settings, then "
            "`python -m slm_sweep.tune <its sweep dir>` (docs/tuning.md). Or train at method.lr with tuning.lr=method "
            "(result.json and the claims then say the rate was not tuned), or tuning.on_missing=method to take the "
            "table's rates where it has them and method.lr elsewhere")


# ------------------------------------------------------------------------------------------------ the table


def table_path(table: str | Path) -> Path:
    """``tuning.table``: an absolute path, or one relative to the package's folder (slm_sweep/)."""
    path = Path(str(table)).expanduser()
    return path if path.is_absolute() else PACKAGE_DIR / path


def _positive_number(value: Any) -> bool:
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
    if not _positive_number(value):
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


def _searched(table: Mapping[str, Any], dataset: str, model: str, method: str) -> Mapping[str, Any]:
    entry = (((table.get("searched") or {}).get(dataset) or {}).get(model) or {}).get(method)
    return entry if isinstance(entry, Mapping) else {}


def _cell_config(cfg: DictConfig) -> dict[str, Any]:
    """The parts of a composed cell that ``tuned_under`` reads, as result.json records them; ``prompt.style`` as
    the cell's keys have it (an explicit style that auto renders is auto)."""
    from slm_sweep.identity import auto_prompt_style, prompt_identity

    parts = {part: OmegaConf.to_container(cfg[part], resolve=True)
             for part in ("model", "method", "trainer", "dataset", "prompt", "eval", "callbacks")
             if cfg.get(part) is not None}
    if "prompt" in parts:
        parts["prompt"] = prompt_identity(parts["prompt"], auto_prompt_style(cfg))
    return parts


def _differences(searched: Mapping[str, Any], here: Mapping[str, Any]) -> list[str]:
    import json

    def plain(value: Any) -> str:
        return json.dumps(value, sort_keys=True)

    return [f"{key}: searched {plain(searched.get(key))}, here {plain(here.get(key))}"
            for key in sorted({*searched, *here}) if plain(searched.get(key)) != plain(here.get(key))]


def check_tuned_under(cfg: DictConfig, table: Mapping[str, Any], path: Path) -> None:
    """Refuse a tuned rate that was searched under other training settings than the cell's (steps, batch,
    precision, strategy, rank, data, prompt, training code), or chosen on validation scores computed otherwise than
    the cell is scored (stop strings, generation config, max_new_tokens, dtype, scoring code): its result.json would
    say ``source: tuned`` of a rate tuned for something else. Refuse it too for a cell at one of the seeds it was searched on, which would report
    the search's winner. Tables written before the settings or seeds were recorded are taken as they are (but for a
    cell with ``tuning.on_missing=refuse``, which ``check_missing`` refuses)."""
    dataset, model, method = cfg.dataset.name, cfg.model.name, cfg.method.name
    if lookup(table, dataset, model, method) is None:
        return
    searched = _searched(table, dataset, model, method)
    seeds = searched.get("seeds")
    if isinstance(seeds, list) and any(str(seed) == str(cfg.seed) for seed in seeds):
        raise ConfigError(
            f"seed={cfg.seed}: the rate lr.{dataset}.{model}.{method} in {path} was chosen on seed(s) "
            f"{', '.join(map(str, seeds))}. Of the runs a search compares, the one chosen did best on validation, "
            "partly by the luck of its seed; this cell at the same rate and seed is that run again (the same "
            "weights) and would carry that luck into its test score. Report other seeds than the search's (the "
            "searches run seed=1000 unless told otherwise), or search again on seeds you do not report")
    recorded = searched.get("trained_with")
    if not isinstance(recorded, Mapping):
        return
    from slm_sweep.identity import code_and_process_parts

    # what the cell's training key will say of its code and processes, and its evaluation key of its scoring code;
    # what else only its keys say (data, resolved weights), check_tuned_data compares
    config = _cell_config(cfg)
    modules = any(str(k).startswith("code.metric_modules") for k in recorded)
    cell = {"config": config, "identity": {"parts": {"training": code_and_process_parts(config)},
                                           "scored_with": _running_scoring(config, modules)}}
    recorded, here = _compared(recorded, tuned_under(cell), once_keyed=False)
    if counted_elsewhere(config["trainer"]):  # e.g. a SLURM grid's preflight on a login node: the cell checks
        recorded.pop(_PROCESSES, None)
        here.pop(_PROCESSES, None)
    if recorded.get("prompt.style") == "plain":  # a table written before the plain style's system message was null
        recorded = {**recorded, "prompt.system": here.get("prompt.system")}
    differing = _differences(recorded, here)
    if differing:
        scoring = [d.split(":")[0] for d in differing if d.startswith(("eval.", "code.scoring", "code.metric_modules"))]
        hint = (f" The rates were compared on validation scores computed otherwise than this cell is scored "
                f"({', '.join(scoring)}): the rate that won there need not win under this cell's scoring, as "
                "for another eval.max_new_tokens or eval.dtype.") if scoring else ""
        code = any(d.startswith(("code.scoring", "code.metric_modules")) for d in differing)
        again = (" For other scoring code, rerun the search with this code (`make paper-search` for "
                 "experiment=paper's cells: a cell whose weights were kept is re-scored, not trained again), then "
                 "the tune command.") if code else ""
        raise ConfigError(
            f"tuning.table: the rate lr.{dataset}.{model}.{method} in {path} was searched under other training "
            f"settings than this cell's ({'; '.join(differing)}).{hint}{again} Search again with this cell's "
            "settings (the search takes the same overrides: trainer=..., method.r=..., dataset.*, eval.*), or train "
            "at a rate of your choosing with tuning.lr=method method.lr=<rate>")


def _running_scoring(config: Mapping[str, Any], modules: bool) -> dict[str, Any]:
    """What a cell's ``scored_with`` will say of the code that scores it, as this process runs it: the scoring
    version, its sources' hash where edited from that version's, and (``modules``: only where the table records
    them, as importing them is not free) the code of the metric modules it scores with."""
    from slm_sweep.identity import (
        SCORING_SOURCES,
        SCORING_SOURCES_SHA256,
        SCORING_VERSION,
        edited_sources,
        metric_modules_identity,
    )

    edited = edited_sources(SCORING_SOURCES, SCORING_SOURCES_SHA256, SCORING_VERSION)
    scored = {"scoring": SCORING_VERSION, **({"edited_sources": edited} if edited else {})}
    if modules:
        from slm_sweep.scoring import metric_module_names

        scored.update(metric_modules_identity(metric_module_names((config.get("eval") or {}).get("metric_modules"))))
    return scored


def _compared(recorded: Mapping[str, Any], here: Mapping[str, Any],
              once_keyed: bool) -> tuple[dict[str, Any], dict[str, Any]]:
    """The settings of a table entry (``recorded``) and of a cell (``here``) that a guard compares: what a cell
    knows only once it has computed its keys (``_ONCE_KEYED``, check_tuned_data), or the rest (check_tuned_under).
    Left out of ``here``: the settings the table was written before recording (``_LATER_SETTINGS``; the code
    version, scoring and callbacks before ``code.training``), and where the model's files sit when the table
    records which weights were searched on (``model.weights``)."""
    later = _LATER_SETTINGS + (() if "code.training" in recorded else _RECORDED_WITH_CODE)
    unrecorded = tuple(p for p in later if not any(k.startswith(p) for k in recorded))
    place = _WEIGHTS_PLACE if "model.weights" in recorded else ()
    return ({k: v for k, v in recorded.items() if k.startswith(_ONCE_KEYED) == once_keyed},
            {k: v for k, v in here.items() if k.startswith(_ONCE_KEYED) == once_keyed
             and not k.startswith(unrecorded) and k not in place})


# what a table entry's search record holds when the tune command wrote it, and each one's type: the guards of a
# tuned cell read them
SEARCH_RECORD = {"metric": str, "seeds": list, "trained_with": Mapping}


def has_search_record(table: Mapping[str, Any], dataset: str, model: str, method: str) -> bool:
    searched = _searched(table, dataset, model, method)
    return all(isinstance(searched.get(key), kind) for key, kind in SEARCH_RECORD.items())


def _search_choice(searched: Mapping[str, Any]) -> list[float] | None:
    """The rate an entry's search chose: its ``chosen``; for an entry written before that was recorded, the
    candidates that scored its ``best``; None when the entry cannot tell."""
    if _positive_number(searched.get("chosen")):
        return [float(searched["chosen"])]
    metric, best = searched.get("metric"), searched.get("best")
    if not isinstance(metric, str) or not isinstance(best, (int, float)) or isinstance(best, bool):
        return None
    return [float(c["lr"]) for c in searched.get("candidates") or []
            if isinstance(c, Mapping) and _positive_number(c.get("lr")) and not c.get("not_eligible")
            and isinstance(c.get(metric), (int, float)) and round(c[metric], 9) == round(best, 9)] or None


def not_the_search_choice(table: Mapping[str, Any], dataset: str, model: str, method: str) -> str | None:
    """The rate(s) the search of ``lr.<dataset>.<model>.<method>`` chose when the table's rate is not one of them
    (a rate edited after the search); None when it is, or when the entry does not say."""
    rate = lookup(table, dataset, model, method)
    chose = _search_choice(_searched(table, dataset, model, method))
    if rate is None or chose is None or any(math.isclose(rate, c, rel_tol=1e-9) for c in chose):
        return None
    return " or ".join(f"{c:g}" for c in chose)


def check_missing(cfg: DictConfig, table: Mapping[str, Any], path: Path) -> None:
    """For a cell with ``tuning.on_missing=refuse``: raise MissingTunedRate when its dataset x model x method has no
    rate in ``table``, and ConfigError when the rate has no search record (``SEARCH_RECORD``: a rate written by hand
    or by an older tune command, which neither the seed nor the settings guard can check) or is not the rate that
    record's search chose (``not_the_search_choice``). Without that setting such a cell trains at ``method.lr``,
    or at the table's rate, and resolve_lr says so."""
    if (cfg.get("tuning") or {}).get("on_missing", "method") != "refuse":
        return
    dataset, model, method = cfg.dataset.name, cfg.model.name, cfg.method.name
    if lookup(table, dataset, model, method) is None:
        raise MissingTunedRate(dataset, model, method, path, cfg.method.get("lr"))
    if not has_search_record(table, dataset, model, method):
        entry = f"{dataset}.{model}.{method}"
        raise ConfigError(
            f"tuning.on_missing=refuse: the rate lr.{entry} in {path} has no search record (searched.{entry} with "
            f"{', '.join(SEARCH_RECORD)}), so nothing shows it was chosen on the validation split, on other seeds "
            "than this cell's, under this cell's settings. Write the table from a search: "
            f"`make paper-search` for experiment=paper's cells, else `python -m slm_sweep.tune <search dir>`; or "
            "take the table's rate as it is with tuning.on_missing=method (result.json then says it has no search "
            "record)")
    chose = not_the_search_choice(table, dataset, model, method)
    if chose is not None:
        entry = f"{dataset}.{model}.{method}"
        raise ConfigError(
            f"tuning.on_missing=refuse: the rate lr.{entry}={lookup(table, dataset, model, method):g} in {path} is not "
            f"the rate its search chose ({chose}, searched.{entry}): edited after the search, its search record is "
            "another rate's. Write the table again from the search (`python -m slm_sweep.tune <search dir>`), or "
            "take the table's rate as it is with tuning.on_missing=method (result.json then says it is not the "
            "search's choice)")


# ------------------------------------------------------------------------------------------------ in a cell


def validate(cfg: DictConfig) -> None:
    """Check the ``tuning`` settings, that a hyperparameter search scores the validation split
    (``check_search_scoring``), and a grid search's candidate, before anything reads ``method.lr``; with
    ``tuning.lr=tuned``, the table's rate for a trained cell (MissingTunedRate where ``tuning.on_missing=refuse`` and
    it has none)."""
    check_search_scoring(cfg)
    tuning = cfg.get("tuning")
    if tuning is None:
        return
    source = tuning.get("lr", "method")
    if source not in LR_SOURCES:
        raise ConfigError(f"tuning.lr={source!r} is not one of: {', '.join(LR_SOURCES)}")
    on_missing = tuning.get("on_missing", "method")
    if on_missing not in ON_MISSING:
        raise ConfigError(f"tuning.on_missing={on_missing!r} is not one of: {', '.join(ON_MISSING)}")
    candidate = tuning.get("lr_candidate")
    if candidate is None:
        if source == "tuned" and cfg.method.get("train"):
            path = table_path(tuning.get("table") or DEFAULT_TABLE)
            try:
                table = read_table(path)
            except TuningError as err:
                raise ConfigError(f"tuning.table: {err}") from None
            check_missing(cfg, table, path)
            check_tuned_under(cfg, table, path)
        return
    method = cfg.method.get("name")
    if not cfg.method.get("train"):
        raise ConfigError(f"tuning.lr_candidate={candidate} searches a learning rate, but method={method!r} "
                          "trains nothing: search a trained method")
    if source != "method":
        raise ConfigError("tuning.lr=tuned cannot be combined with a learning-rate search "
                          f"(tuning.lr_candidate={candidate}): a search sets the rate itself")
    from slm_sweep.config_sources import group_options

    methods = group_options("method")
    grid = tuning.get("lr_grid")
    if grid is not None and not isinstance(grid, Mapping):
        raise ConfigError(f"tuning.lr_grid={_plain(grid)!r} must map each method to a list of positive learning "
                          f"rates ('+tuning.lr_grid.{method}=[...]')")
    unknown = sorted(str(name) for name in (grid or {}) if name not in methods)
    if unknown:  # a misspelt method's candidates would be left unused, and the grid around method.lr searched
        raise ConfigError(f"tuning.lr_grid has candidates for {', '.join(map(repr, unknown))}, which is no method; "
                          f"one of: {', '.join(methods)}")
    given = (grid or {}).get(method)
    if given is not None:
        _check_grid(method, given)
    if given is None and not _positive_number(cfg.method.get("lr")):
        raise ConfigError(f"method.lr={cfg.method.get('lr')!r} must be a positive number: a search's candidates "
                          f"are built around it (or give them: '+tuning.lr_grid.{method}=[...]')")
    values, where = method_grid(cfg)
    val_size = (cfg.get("dataset") or {}).get("val_size")
    if isinstance(val_size, int) and not isinstance(val_size, bool) and val_size < MIN_VAL_EXAMPLES:
        log.warning("dataset.val_size=%d: the tune command reads a search of fewer than %d validation examples "
                    "only with --min-val-examples (fewer cannot separate candidates a few points apart)",
                    val_size, MIN_VAL_EXAMPLES)
    if isinstance(candidate, bool) or not isinstance(candidate, int) or not 0 <= candidate < len(values):
        raise ConfigError(f"tuning.lr_candidate={candidate!r} must be an index into {where}, "
                          f"which has {len(values)} candidates (0 to {len(values) - 1})")
    split = cfg.eval.get("split", "test")
    if split != "val":
        raise ConfigError(f"tuning.lr_candidate={candidate} is a learning-rate search's candidate, scored on the "
                          f"validation split carved from train, but eval.split={split!r}: candidates compared on "
                          "the test split would choose the rate on the questions it is reported on. Set "
                          "eval.split=val (hparams_search=lr_grid does)")


def _plain(value: Any) -> Any:
    return OmegaConf.to_container(value) if OmegaConf.is_config(value) else value


def _check_grid(method: str, given: Any) -> None:
    """``tuning.lr_grid.<method>``: a list of positive rates (one candidate without brackets is no list, and a
    string would be read character by character)."""
    if not (OmegaConf.is_list(given) or isinstance(given, list)):
        raise ConfigError(f"tuning.lr_grid.{method}={_plain(given)!r} must be a list of positive learning rates, "
                          f"e.g. '+tuning.lr_grid.{method}=[1e-4,3e-4]'")
    for i, value in enumerate(given):
        if not _positive_number(value):
            raise ConfigError(f"tuning.lr_grid.{method}[{i}]={value!r} must be a positive number")


def _search_of(cfg: DictConfig) -> str | None:
    """The hyperparameter search the cell is part of (``hparams_search=...``, or a sweeper that optimises
    ``optimized_metric``), as its Hydra config says (composed with it, or the running job's); None when it is
    none or cannot be told."""
    hydra_cfg = cfg.get("hydra") or _running_hydra_config()
    if hydra_cfg is None:
        return None
    choice = OmegaConf.select(hydra_cfg, "runtime.choices.hparams_search", default=None)
    sweeper = str(OmegaConf.select(hydra_cfg, "sweeper._target_", default=None) or "")
    if choice:
        return f"hparams_search={choice}"
    if sweeper and not sweeper.endswith(".BasicSweeper"):
        return f"the sweeper {sweeper.rsplit('.', 1)[-1]}"
    return None


def check_search_scoring(cfg: DictConfig) -> None:
    """A hyperparameter search scores and maximises the validation split: refuse one set to the test split, or
    one whose ``optimized_metric`` (what Optuna maximises) is not a validation score."""
    search = _search_of(cfg)
    if search is None:
        return
    split = (cfg.get("eval") or {}).get("split", "test")
    if split != "val":
        raise ConfigError(f"{search} is a hyperparameter search, which scores the validation split carved from "
                          f"train, but eval.split={split!r}: it would choose on the questions the study reports. "
                          "Set eval.split=val")
    metric = str(cfg.get("optimized_metric"))
    if not metric.startswith("val_"):
        raise ConfigError(f"optimized_metric={metric!r}: {search} maximises it, but a search chooses on the "
                          "validation split: use a val_ score (val_accuracy_<metric>; the search's default is "
                          "val_accuracy_${dataset.claims_metric})")


GRID_STEPS = 2  # candidates of a derived grid either side of the method's rate: five in all


def lr_grid(lr: float, steps: int = GRID_STEPS) -> list[float]:
    """Candidates around ``lr``: the nearest ``steps`` values of the 1-2-5 series below it and above it (none
    within a factor 1.25 of it), and ``lr`` itself in the middle (a factor 20 wide for a rate on the series: 2e-4
    gives 5e-5 ... 1e-3)."""
    exponent = math.floor(math.log10(lr))
    series = sorted(float(f"{m}e{e}") for e in range(exponent - steps, exponent + steps + 1) for m in (1, 2, 5))
    # a step of the series within a factor 1.25 of ``lr`` would be a near-duplicate candidate
    below = [v for v in series if v < lr / 1.25][-steps:]
    above = [v for v in series if v > lr * 1.25][:steps]
    return [*below, float(lr), *above]


def method_grid(cfg: Mapping[str, Any]) -> tuple[list[float], str]:
    """A grid search's candidates for the cell's method and where they come from: ``tuning.lr_grid.<method>``
    when given, else ``lr_grid`` around ``method.lr`` as composed (the method file's rate, or the command
    line's). ``cfg``: a composed config, or a result.json's ``config``."""
    method = cfg["method"]
    given = ((cfg.get("tuning") or {}).get("lr_grid") or {}).get(method["name"])
    if given is not None:
        return [float(v) for v in given], f"tuning.lr_grid.{method['name']}"
    return lr_grid(float(method["lr"])), f"the grid around method.lr={method['lr']:g}"


def resolve_lr(cfg: DictConfig) -> dict[str, Any] | None:
    """Set ``cfg.method.lr`` to the learning rate this cell trains with; returns what result.json records.

    None for a method that trains nothing. With ``tuning.lr=tuned``, the table's value for this dataset x model x
    method replaces ``method.lr``; without an entry ``method.lr`` stays, with a note saying so
    (``tuning.on_missing=method``). Under ``refuse``, a missing entry raises MissingTunedRate, and an entry
    without a search record, or not its search's choice, raises ConfigError (``check_missing``).
    """
    if not cfg.method.get("train"):
        return None
    tuning = cfg.get("tuning") or {}
    source = tuning.get("lr", "method")
    if tuning.get("lr_candidate") is not None:
        index = int(tuning.lr_candidate)
        grid, _ = method_grid(cfg)
        with open_dict(cfg):
            # the grid searched, in the recorded config; set once, so that resolving again picks the same rate
            cfg.tuning.lr_grid = {**(cfg.tuning.get("lr_grid") or {}), cfg.method.name: grid}
        cfg.method.lr = grid[index]
        return {"value": grid[index], "source": "grid", "detail": f"tuning.lr_grid.{cfg.method.name}[{index}]",
                "candidates": grid}
    if source == "method":
        return {"value": float(cfg.method.lr), "source": "method", "detail": "method.lr"}
    given = _command_line_lr()
    if given is not None:
        raise ConfigError(f"{given} is given on the command line, but tuning.lr=tuned takes the rate from the tuned "
                          f"table (experiment=paper sets it): to train at that rate, add tuning.lr=method")
    path = table_path(tuning.get("table") or DEFAULT_TABLE)
    try:
        table = read_table(path)
    except TuningError as err:
        raise ConfigError(f"tuning.table: {err}") from None
    check_missing(cfg, table, path)
    dataset, model, method = cfg.dataset.name, cfg.model.name, cfg.method.name
    tuned = lookup(table, dataset, model, method)
    if tuned is None:
        note = (f"no tuned learning rate for {dataset}/{model}/{method} in {path}: "
                f"method.lr={cfg.method.lr} as composed (tuning.on_missing=method)")
        log.warning("%s", note)
        return {"value": float(cfg.method.lr), "source": "method", "detail": note, "table": str(path)}
    from slm_sweep.identity import file_sha256

    cfg.method.lr = tuned
    return {"value": tuned, "source": "tuned", "table": str(path), "table_sha256": file_sha256(path),
            **_tuned_provenance(table, path, dataset, model, method)}


# an entry's lead error and verdict as tables written before margin_test computed them (the seeds counted as
# questions, an error too small): not passed on to a tuned cell
_STALE_LEAD_KEYS = ("margin_se", "margin_p", "within_noise")


def _tuned_provenance(table: Mapping[str, Any], path: Path, dataset: str, model: str,
                      method: str) -> dict[str, Any]:
    """What a tuned cell's learning_rate records of the table's entry: ``detail``, the entry's own ``searches``,
    ``seeds`` and ``metric``, ``at_edge`` and the lead. A rate that is not its search's choice gets none of the
    search's record; an entry written before its lead test (``margin_test``) was recorded, not that lead's error
    and verdict; one written before its own ``searches``, the table's (``searches_scope: table``)."""
    searched = _searched(table, dataset, model, method)
    rate = lookup(table, dataset, model, method)
    recorded = has_search_record(table, dataset, model, method)
    detail = f"lr.{dataset}.{model}.{method} in {path}"
    if not recorded:
        detail += f" (no search record: searched.{dataset}.{model}.{method} lacks {', '.join(SEARCH_RECORD)})"
        log.warning("%s: the table does not say how this rate was chosen", detail)
    chose = not_the_search_choice(table, dataset, model, method)
    if chose is not None:
        detail += (f" (not the rate its search chose, {chose}: the search's record, its searches, seeds and lead, "
                   "is not this rate's; tuning.on_missing=method)")
        log.warning("%s", detail)
        return {"detail": detail, "searches": []}
    if searched.get("metric") and searched.get("best") is not None:
        detail += (f" (best {searched['metric']} {searched['best']} on {searched.get('val_examples')} validation "
                   f"examples, {_compared_count(searched)})")
    edge = next((c.get("at_edge") for c in searched.get("candidates") or []
                 if isinstance(c, Mapping) and c.get("lr") == rate and c.get("at_edge")), None)
    lead, note = _recorded_lead(searched)
    detail += note
    searches, scope = searched.get("searches") or [], {}
    if recorded and not isinstance(searched.get("searches"), list):  # written before each entry recorded its own
        searches, scope = table.get("searches") or [], {"searches_scope": "table"}
    return {"detail": detail, "searches": list(searches), **scope,
            **{k: searched[k] for k in ("metric", "seeds") if k in searched},
            **({"at_edge": str(edge)} if edge else {}), **lead}


def _compared_count(searched: Mapping[str, Any]) -> str:
    """``of N candidates compared``: the rates that were scored on every seed, with how many of the grid were not
    (a rate not run, or one that lost a seed, is listed among the candidates but was never compared)."""
    candidates = [c for c in searched.get("candidates") or [] if isinstance(c, Mapping)]
    left_out = [c for c in candidates if c.get("not_eligible") or c.get(searched["metric"]) is None]
    compared = len(candidates) - len(left_out)
    text = f"of {compared} candidate{'s' if compared != 1 else ''} compared"
    if left_out:
        reasons = sorted({str(c.get("not_eligible") or "no score") for c in left_out})
        text += f"; {len(left_out)} not compared: {'; '.join(reasons)}"
    return text


def _recorded_lead(searched: Mapping[str, Any]) -> tuple[dict[str, Any], str]:
    """The entry's lead over the runner-up, and a note for ``detail``: an entry written before ``margin_test``
    was recorded had its error from the seeds counted as questions, so its ``margin_se`` and ``within_noise``
    are left out and the note says so."""
    lead = {k: searched[k] for k in LEAD_KEYS if k in searched}
    if not lead or "margin_test" in searched:
        return lead, ""
    return ({k: v for k, v in lead.items() if k not in _STALE_LEAD_KEYS},
            " (the table predates the current test of the lead over the runner-up: no margin_se or within_noise; "
            "run `python -m slm_sweep.tune` on its search again to get them)")


def check_tuned_data(cfg: DictConfig, learning_rate: Mapping[str, Any] | None,
                     training: Mapping[str, Any] | None) -> None:
    """Refuse a tuned rate searched on other weights, examples or processes than the cell trains with, by what
    only its keys say (``_ONCE_KEYED``): the weights its model resolves to (a hub branch moved on, a folder
    retrained in place), the training and validation examples (a data file replaced or edited since the search,
    under the same settings); and the processes training runs in, which the config-time check
    (``check_tuned_under``) leaves out where they are counted on the machine that trains. ``training``: the cell's
    training identity (``identity.parts.training``), computed from the examples it loaded. Tables written before
    they recorded these are checked without them."""
    if not learning_rate or learning_rate.get("source") != "tuned" or not training:
        return
    parts = (cfg.dataset.name, cfg.model.name, cfg.method.name)
    recorded = _searched(read_table(learning_rate["table"]), *parts).get("trained_with")
    if not isinstance(recorded, Mapping):
        return
    here = {k: v for key, value in _keyed_settings(training).items() for k, v in _flat(key, value).items()}
    differing = _differences(*_compared(recorded, here, once_keyed=True))
    if _PROCESSES in recorded:
        differing += _differences({_PROCESSES: recorded[_PROCESSES]}, {_PROCESSES: here.get(_PROCESSES)})
    if not differing:
        return
    entry = f"the rate {'.'.join(['lr', *parts])} in {learning_rate['table']}"
    if all(d.startswith("data.") for d in differing):
        raise ConfigError(
            f"tuning.table: {entry} was searched on other examples than this cell loaded ({'; '.join(differing)}: "
            "examples counted, then a hash of their content): the data files changed since the search. Search "
            "again on these files, or train at a rate of your choosing with tuning.lr=method method.lr=<rate>")
    raise ConfigError(
        f"tuning.table: {entry} was searched under other training than this cell's keys record "
        f"({'; '.join(differing)}): the model's weights (the hub commit its revision points at, or its files' "
        "content hash) or the processes training runs in differ from the search's. Search again with this cell's "
        "model files and devices, or "
        "train at a rate of your choosing with tuning.lr=method method.lr=<rate>")


def _running_hydra_config():
    """The running Hydra job's config (HydraConfig), None outside one."""
    try:
        from hydra.core.hydra_config import HydraConfig

        return HydraConfig.get() if HydraConfig.initialized() else None
    except (ImportError, ValueError):
        return None


def _command_line_lr() -> str | None:
    """A ``method.lr=...`` override of the running Hydra job, None outside one or without it."""
    hydra_cfg = _running_hydra_config()
    if hydra_cfg is None:
        return None
    overrides = list(hydra_cfg.overrides.task)
    return next((o for o in overrides if o.lstrip("+~").split("=", 1)[0] == "method.lr"), None)


# ------------------------------------------------------------------------------------------------ choosing


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


# model settings that do not change the weights a rate is tuned for (where files sit, the table's own key)
_NOT_THE_WEIGHTS = ("name", "gguf_dir", "gguf_package")
# where the weights were read from: left out where the training key says which weights they are, so that the
# same weights in another folder are the same, and other weights in the same folder are not
_WEIGHTS_PLACE = ("model.id", "model.revision")
# what the model's identity adds to its settings: the weights resolved, and how a GGUF file was converted
_RESOLVED_MODEL = ("weights", "conversion")
# settings a table's trained_with holds since they were added: an older table is checked without them (its rate
# is taken as chosen under the cell's own settings of that kind, as before they were recorded)
_LATER_SETTINGS = ("model.", "dataset.dedup.", "data.", "model.weights", "model.conversion", "trainer.strategy",
                   "trainer.world_size", "code.training_edited", "code.optimizer", "code.callbacks", "eval.stop",
                   "eval.generation_config", "code.scoring", "code.metric_modules")
# What a record's scored_with (identity.scored_with: how its answers were generated and scored, the split aside)
# says beyond its config's eval settings, and the setting each is compared as: the scoring code's version and the
# hash of its sources where edited from that version's, the code of the metric modules it scored with, and the
# dtype generation ran in as resolved (eval.dtype=auto is bfloat16 on one GPU, float16 on an older one). Another
# entry of scored_with is compared between candidates as scored_with.<entry>. Unknown for a cell that failed before
# computing its keys.
_SCORED_AS = {"scoring": "code.scoring", "edited_sources": "code.scoring_edited",
              "metric_modules": "code.metric_modules", "dtype": "eval.dtype_resolved"}
# scored_with's entries that the config's eval settings give too (eval.<entry>, _training_settings)
_SCORED_IN_CONFIG = ("split", "max_new_tokens", "stop", "generation_config")
# The eval settings a table's trained_with keeps (tuned_under): every one the validation scores depend on, but the
# split (the search scores the validation split, the cell the test split); with the scoring code (code.scoring*,
# code.metric_modules where the metric chosen on is a module's), a cell compares them before anything loads.
_KEPT_SCORING = ("eval.dtype", "eval.max_new_tokens", "eval.stop", "eval.generation_config")
# what only a cell's training key records (_keyed_settings), unknown for a cell that failed before computing it
_FROM_KEYS = ("code.", "data.", "model.weights", "model.conversion", "trainer.world_size")
# of those, what a cell knows only once its data is loaded and its model's weights resolved: compared then
# (check_tuned_data); its code version and edited sources are compared before anything loads
_ONCE_KEYED = ("data.", "model.weights", "model.conversion")
_PROCESSES = "trainer.world_size"

# recorded since the training code's version is: a table without it was written before, and is read without them
_RECORDED_WITH_CODE = ("code.", "callbacks.", "eval.dtype", "eval.max_new_tokens", "dataset.test_size")


def counted_elsewhere(trainer: Mapping[str, Any]) -> bool:
    """Whether the processes ``trainer`` trains in are counted on the machine that trains (devices -1 or auto,
    every CUDA device there) and this one, without CUDA, cannot count them."""
    import torch

    return str(trainer.get("devices", 1)) in ("-1", "auto") and not torch.cuda.is_available()


def _training_parts(record: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """A record's training identity (``identity.parts.training``); None for a cell that failed before computing
    its keys."""
    parts = (record.get("identity") or {}).get("parts")
    training = parts.get("training") if isinstance(parts, Mapping) else None
    return training if isinstance(training, Mapping) else None


def _keyed_settings(training: Mapping[str, Any] | None) -> dict[str, Any]:
    """What a cell's training key holds that its config does not say, but the seed and the library versions: the
    weights its model resolves to, the training code's version (a rate searched before gradients or dropout
    changed is another search's) and the hash of its sources when edited, the code of an optimizer or callbacks
    from outside torch and Lightning, the examples trained on and scored (count and content hash), and how many
    processes trained (several cut the epoch's last step to a multiple of them). Nothing for a cell without keys
    (``training`` None)."""
    if training is None:
        return {}
    model = training.get("model") or {}
    return {
        **{f"model.{k}": model[k] for k in _RESOLVED_MODEL if k in model},
        "code.training": training.get("code"),
        "code.training_edited": training.get("edited_sources"),
        "code.optimizer": training.get("optimizer_source"),
        "code.callbacks": training.get("callback_sources") or None,
        "trainer.world_size": training.get("world_size") or 1,
        **{f"data.{k}": v for k, v in (training.get("data") or {}).items()},
    }


def _scored_with(record: Mapping[str, Any]) -> dict[str, Any] | None:
    """How a record's answers were generated and scored (``identity.scored_with``; for a record written before it
    was, the same read from ``identity.parts.evaluation``); None for a cell that failed before computing its
    keys."""
    identity = record.get("identity")
    if not isinstance(identity, Mapping):
        return None
    if isinstance(identity.get("scored_with"), Mapping):
        return dict(identity["scored_with"])
    evaluation = (identity.get("parts") or {}).get("evaluation") if isinstance(identity.get("parts"), Mapping) \
        else None
    if not isinstance(evaluation, Mapping):
        return None
    return {"scoring": evaluation.get("scoring"),
            **({"edited_sources": evaluation["edited_sources"]} if evaluation.get("edited_sources") else {}),
            **{k: v for k, v in (evaluation.get("eval") or {}).items() if k != "split"}}


def _scoring_settings(scored: Mapping[str, Any] | None) -> dict[str, Any]:
    """A record's ``scored_with`` as settings (``_SCORED_AS``), but what its config's eval settings say; nothing
    when it is unknown."""
    if scored is None:
        return {}
    return {**{setting: scored.get(entry) for entry, setting in _SCORED_AS.items()},
            **{f"scored_with.{k}": v for k, v in scored.items() if k not in _SCORED_AS and k not in _SCORED_IN_CONFIG}}


def _from_scoring(key: str) -> bool:
    """Whether ``key`` is one of what only a record's ``scored_with`` says (``_scoring_settings``)."""
    return key in _SCORED_AS.values() or key.startswith("scored_with.")


def _eval_setting(eval_cfg: Mapping[str, Any], key: str) -> Any:
    """``eval.<key>`` as the evaluation key has it: stop strings as a set (a generation is cut at the earliest)."""
    from slm_sweep.identity import stop_strings

    value = eval_cfg.get(key)
    return stop_strings(value) if key == "stop" and value is not None else value


def _training_settings(record: Mapping[str, Any]) -> dict[str, Any]:
    """What a search cell trained and scored with, apart from its learning rate and seed: its training key's parts
    (``_keyed_settings`` and the settings each part is computed from) and the scoring the rates were compared by
    (its eval settings and its ``scored_with``: the scoring code's version and edited sources, its metric modules,
    the dtype generation ran in). Candidates compared against each other must agree on all of it."""
    from slm_sweep.data.specs import dedup_settings
    from slm_sweep.identity import (
        EVAL_SCORING_KEYS,
        method_identity,
        strategy_family,
        trainer_identity,
        weight_changing_callbacks,
    )

    config = record.get("config") or {}
    keyed = _keyed_settings(_training_parts(record))
    method = {k: v for k, v in method_identity(config.get("method") or {}).items() if k != "lr"}
    dataset = config.get("dataset") or {}
    trainer = config.get("trainer") or {}
    # the weights trained from (a table is keyed by model.name, which another id, revision or dtype keeps)
    model = {f"model.{k}": v for k, v in (config.get("model") or {}).items()
             if k not in _NOT_THE_WEIGHTS and v is not None}
    if "model.weights" in keyed:
        model = {k: v for k, v in model.items() if k not in _WEIGHTS_PLACE}
    return {
        **model,
        **{f"method.{k}": v for k, v in method.items()},
        **({f"dataset.dedup.{k}": v for k, v in dedup_settings(dataset).items()} if dataset.get("name") else {}),
        **{f"trainer.{k}": v for k, v in trainer_identity(trainer).items()},
        # FSDP's and DeepSpeed's bf16-mixed cast the parameters themselves to bf16, where one device and DDP
        # autocast over float32 weights: a rate searched on one is not tuned for the other
        "trainer.strategy": strategy_family(trainer),
        **{f"dataset.{k}": dataset.get(k) for k in ("val_size", "train_limit", "split_seed", "test_split",
                                                    "test_size")},
        # the scoring the rates were compared by: bf16 rounds away part of full fine-tuning's updates, which a
        # float32 paper cell keeps, so a rate chosen in bf16 is not the one chosen in float32; other stop strings,
        # generation settings or scoring code count other answers correct
        **{f"eval.{k}": _eval_setting(config.get("eval") or {}, k) for k in (*EVAL_SCORING_KEYS, "dtype")},
        **_scoring_settings(_scored_with(record)),
        # callbacks that change the weights (stochastic weight averaging) are in the cell's training key too
        **{f"callbacks.{name}": entry for name, entry in weight_changing_callbacks(config.get("callbacks")).items()},
        **keyed,
        # as the cell's keys have it (a system message the plain style leaves out is null), where result.json
        # records what its keys were computed from
        **{f"prompt.{k}": v for k, v in (_keyed_prompt(record) or {}).items()},
        # as the cell's keys have it, where result.json says (a record of a search)
        **({"prompt.style": style} if (style := (record.get("identity") or {}).get("prompt_style")) else {}),
    }


def _keyed_prompt(record: Mapping[str, Any]) -> dict[str, Any] | None:
    """The prompt settings as a record's training key has them (``identity.parts``); for a record without them
    (older, or failed before its keys were computed) its config's, with the system message a plain style leaves
    out as null; None without either."""
    prompt = (_training_parts(record) or {}).get("prompt")
    if isinstance(prompt, Mapping):
        return dict(prompt)
    from slm_sweep.identity import prompt_identity

    prompt = (record.get("config") or {}).get("prompt")
    if not isinstance(prompt, Mapping):
        return None
    keyed = (record.get("identity") or {}).get("prompt_style") or prompt.get("style")
    return prompt_identity({**prompt, "style": keyed}, None)


def tuned_under(record: Mapping[str, Any], metric: str | None = None) -> dict[str, Any]:
    """The settings a searched rate was chosen under that a cell training at it must share: its training key's
    parts but the rate, the seed and the library versions (the model's settings and the weights they resolve to,
    the method, the trainer's numeric settings and strategy family, the processes, the training data and the
    examples, the prompt, the callbacks that change the weights, the training code's version and edited sources),
    and the scoring the rates were compared by: every setting of a cell's config the validation scores depend on
    (``eval.dtype``, ``eval.max_new_tokens``, ``eval.stop``, ``eval.generation_config``) and the scoring code that
    computed them (``code.scoring``, ``code.scoring_edited``; ``code.metric_modules`` unless ``metric``, the score
    chosen on, is a built-in metric, which no metric module changes). Not the split scored (the search scores the
    validation split, the cell the test split), nor what a cell knows only once it generates (the dtype ``auto``
    resolves to). ``record``: a result.json's ``config`` (and ``identity``: its ``parts``, ``prompt_style``, the
    style as keyed, and ``scored_with``)."""
    modules = metric is None or not _built_in_metric(metric)
    return {k: v for key, value in _training_settings(record).items()
            if (not key.startswith(("eval.", "scored_with.")) or key in _KEPT_SCORING)
            and key != "dataset.test_split" and (modules or key != "code.metric_modules")
            for k, v in _flat(key, value).items()}


def _built_in_metric(metric: str) -> bool:
    """Whether ``metric`` (``val_accuracy_<name>``) is a built-in metric's score, not a metric module's."""
    from slm_sweep import scoring

    built_in = getattr(scoring, "_BUILT_IN", None) or scoring.METRICS
    return metric.removeprefix("val_") in {accuracy_key(name) for name in built_in}


def _flat(key: str, value: Any) -> dict[str, Any]:
    """A setting as dotted keys, one per value of a mapping."""
    if isinstance(value, Mapping):
        return {k: v for name, item in value.items() for k, v in _flat(f"{key}.{name}", item).items()}
    return {key: value}


def _recorded_grid(record: Mapping[str, Any]) -> list[float]:
    """The grid a search cell's rate was a candidate of: ``learning_rate.candidates``, else the grid its config
    gives its candidate (a cell refused before its rate was set records no ``learning_rate``); [] for a cell of
    no grid."""
    candidates = (record.get("learning_rate") or {}).get("candidates")
    if isinstance(candidates, list):
        return [float(v) for v in candidates if _positive_number(v)]
    config = record.get("config") or {}
    if (config.get("tuning") or {}).get("lr_candidate") is None:
        return []
    try:
        return method_grid(config)[0]
    except (KeyError, TypeError, ValueError):  # no method name, or no rate to build the grid around
        return []


def _record_lr(record: Mapping[str, Any]) -> float | None:
    """The rate a search cell trained at. A grid cell refused before its rate was set records none, and its
    ``method.lr`` is the method's, not its candidate's: its candidate of the grid its config gives. None when
    neither tells."""
    value = (record.get("learning_rate") or {}).get("value")
    config = record.get("config") or {}
    candidate = (config.get("tuning") or {}).get("lr_candidate")
    if value is None and candidate is not None:
        grid = _recorded_grid(record)
        index_ok = isinstance(candidate, int) and not isinstance(candidate, bool) and 0 <= candidate < len(grid)
        value = grid[candidate] if index_ok else None
    elif value is None:
        value = (config.get("method") or {}).get("lr")  # an Optuna trial: its sampled rate
    return float(value) if _positive_number(value) else None


def search_metric(cells: Sequence[Mapping[str, Any]]) -> str:
    """The validation metric a search of one dataset is chosen on: its claims metric, as the report reads it (a
    rate chosen on flexible would be tuned for another score than the one OrcaMath's claims read, lenient)."""
    from slm_sweep.report.aggregate import claims_metric

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


# what a table entry and a tuned cell's learning_rate record of the winner's lead over the runner-up
LEAD_KEYS = ("runner_up", "margin", "margin_se", "margin_test", "margin_p", "margin_fallback", "within_noise", "tied")
# the margin_test labels of the tests without predictions, and the note a one-seed test carries (one training
# run a rate: a test of the lead measures the questions' noise only)
ONE_SEED_NOTE = " (one seed: run-to-run spread not measured)"
SEED_SPREAD_TEST = "spread of the per-seed differences plus the questions' unpaired binomial (no predictions)"
BINOMIAL_TEST = "binomial, unpaired (no predictions)" + ONE_SEED_NOTE


def _question_scores(record: Mapping[str, Any], metric: str) -> dict:
    """Whether ``metric`` (``val_accuracy_<name>``) scored each validation question of a search cell correct, from
    the predictions beside its result.json. Raises NoQuestionData naming the run and why there are none: no
    predictions, or predictions that disagree with its result.json (another row count or mean)."""
    from slm_sweep.report.collect import NoQuestionData, question_scores

    path = record.get("result_path")
    if not path:
        raise NoQuestionData(f"the run of seed {record.get('seed')} at lr {_record_lr(record)} names no "
                             "result.json to find its predictions beside")
    eval_set = f"{record['dataset']}/val"
    try:
        scores = question_scores(path, eval_set, metric.removeprefix("val_accuracy_"))
    except NoQuestionData:
        raise
    except (OSError, ValueError) as err:
        raise NoQuestionData(f"the predictions beside {path} cannot be read ({err})") from None
    metrics = record.get("metrics") or {}
    if not scores or len(scores) != metrics.get("val_n_eval"):
        raise NoQuestionData(f"the predictions beside {path} hold {len(scores)} rows of {eval_set}, its result.json "
                             f"val_n_eval={metrics.get('val_n_eval')}")
    mean = sum(scores.values()) / len(scores)
    if abs(mean - float(metrics[metric])) > 1e-9:
        raise NoQuestionData(f"the predictions beside {path} disagree with its result.json: their mean is "
                             f"{mean:.6f}, its {metric} {float(metrics[metric]):.6f}")
    return scores


def _paired_test(first: Sequence[Mapping[str, Any]], second: Sequence[Mapping[str, Any]], metric: str):
    """The claims' seeds-and-questions test (report/stats.py) of two candidates' runs, first minus second, and
    None; or None and why there is none (a run without its predictions, or on other questions)."""
    from slm_sweep.report.collect import NoQuestionData
    from slm_sweep.report.stats import seeds_and_questions_test

    try:
        sides = [[_question_scores(r, metric) for r in runs] for runs in (first, second)]
    except NoQuestionData as err:
        return None, str(err)
    keys = sorted(sides[0][0])
    odd = next((run for side, runs in zip(sides, (first, second)) for scores, run in zip(side, runs)
                if sorted(scores) != keys), None)
    if odd is not None:
        return None, (f"the predictions beside {odd['result_path']} hold other questions than those beside "
                      f"{first[0]['result_path']}")
    a, b = ([[scores[k] for k in keys] for scores in side] for side in sides)
    return seeds_and_questions_test(a, b, interval=False), None


def _seed_differences(first: Sequence[Mapping[str, Any]], second: Sequence[Mapping[str, Any]],
                      metric: str) -> list[float]:
    """The winner's score minus the runner-up's, seed by seed, over the seeds both ran."""
    other = {str(r.get("seed")): float(r["metrics"][metric]) for r in second}
    return [float(r["metrics"][metric]) - other[str(r.get("seed"))] for r in first if str(r.get("seed")) in other]


def _paired_lead(paired, seeds: int) -> tuple[float, dict[str, Any], bool]:
    """With every run's predictions: the seeds-and-questions test, within noise at p >= ALPHA."""
    from slm_sweep.report.stats import ALPHA, SEEDS_AND_QUESTIONS

    se = math.sqrt(paired.question_se ** 2 + sum(part ** 2 for part in paired.seed_se))
    how = {"margin_test": SEEDS_AND_QUESTIONS + (ONE_SEED_NOTE if seeds == 1 else ""),
           "margin_p": round(paired.p_value, 6)}
    return se, how, paired.p_value < ALPHA


def _seed_spread_lead(margin: float, differences: Sequence[float], question_variance: float,
                      n_val: int) -> tuple[float, dict[str, Any], bool]:
    """Without predictions, over k >= 2 seeds: the two parts of the seeds-and-questions test, the questions'
    (the unpaired binomial, as pairing cannot be read) and the seeds' (the per-seed differences' variance over
    k), added; within noise unless the lead passes Student's t at their Welch-Satterthwaite degrees of freedom,
    and never on less than the one-seed test's two standard errors. The seeds' part holds the questions' noise
    inside each seed too: counted twice, which errs toward within noise."""
    from slm_sweep.report.stats import describe, t_critical, welch_satterthwaite

    _, spread, _ = describe(differences)
    seed_variance = spread ** 2 / len(differences)
    se = math.sqrt(question_variance + seed_variance)
    df = welch_satterthwaite([(question_variance, n_val - 1), (seed_variance, len(differences) - 1)])
    critical = max(2.0, t_critical(df)) if df is not None else 2.0
    return se, {"margin_test": SEED_SPREAD_TEST}, margin > critical * se


def _unpaired_lead(margin: float, question_variance: float) -> tuple[float, dict[str, Any], bool]:
    """One seed, no predictions: the binomial error of two accuracies, within two standard errors."""
    se = math.sqrt(question_variance)
    return se, {"margin_test": BINOMIAL_TEST}, margin > 2 * se


def _lead(name: str, best: Mapping[str, Any], runner_up: Mapping[str, Any], metric: str, n_val: int,
          runs: Mapping[float, Sequence[Mapping[str, Any]]]) -> dict[str, Any]:
    """The winner's lead over the runner-up, its standard error (``margin_test`` says how it was measured), and
    ``within_noise`` when the search did not separate the two. The seeds scored the same questions, so more seeds
    measure the runs' spread but do not shrink the questions' noise:

    - with every run's predictions, the claims' paired seeds-and-questions test: within noise at p >= 0.05;
    - else, over two or more seeds, the questions' unpaired binomial error plus the spread of the per-seed
      differences (``_seed_spread_lead``);
    - else (one seed) the binomial error of two accuracies on ``n_val`` questions: within two standard errors.

    Without the paired test, ``margin_fallback`` says why (a warning too). With one seed a rate the test measures
    the questions' noise only, and ``margin_test`` says so. A tie (a margin of 0) is within noise, and ``tied``
    names what broke it."""
    first, second = runs[best["lr"]], runs[runner_up["lr"]]
    margin = round(best[metric] - runner_up[metric], 9)
    paired, why = _paired_test(first, second, metric)
    if paired is not None:
        se, how, separated = _paired_lead(paired, len(first))
    else:
        p, q = best[metric], runner_up[metric]
        question_variance = (p * (1 - p) + q * (1 - q)) / n_val
        differences = _seed_differences(first, second, metric)
        if len(differences) >= 2:
            se, how, separated = _seed_spread_lead(margin, differences, question_variance, n_val)
        else:
            se, how, separated = _unpaired_lead(margin, question_variance)
        how["margin_fallback"] = why
        log.warning("%s: no paired test of the lead of %g over %g (%s): measured by the %s", name, best["lr"],
                    runner_up["lr"], why, how["margin_test"])
    tied = ("validation loss" if best.get("val_loss") != runner_up.get("val_loss") else "smaller rate") \
        if margin == 0 else None
    return {"runner_up": runner_up["lr"], "margin": margin, "margin_se": round(se, 6), **how,
            **({"within_noise": True} if margin == 0 or not separated else {}), **({"tied": tied} if tied else {})}


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


def _check_alike(name: str, cells: Sequence[Mapping[str, Any]]) -> None:
    """Refuse the cells of one dataset x model x method unless they trained and were scored alike but for the rate
    and the seed (``_training_settings``): rates trained otherwise, or scored by other scoring code or settings
    (their validation accuracies are not comparable), are no one search. The message names each setting that
    differs, its values, and the cells that hold each."""
    settings = [_training_settings(r) for r in cells]
    weighed = any("model.weights" in s for s in settings)

    def known(cell: Mapping[str, Any], key: str) -> bool:
        # a cell that failed before computing its keys says nothing of the weights, code, examples or processes
        # it would have used, nor of how it would have been scored; where its model's files sat is no setting of
        # cells that say which weights they used
        if _from_scoring(key):
            return _scored_with(cell) is not None
        unknown = key.startswith(_FROM_KEYS) or weighed and key in _WEIGHTS_PLACE
        return _training_parts(cell) is not None or not unknown

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
    scoring = sorted(k for k in differing if _from_scoring(k) or k.startswith("eval."))
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
        lr = _record_lr(cell)
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


def _run(record: Mapping[str, Any], metric: str) -> dict[str, Any]:
    """One seed of a candidate as the table records it."""
    metrics = record.get("metrics") or {}
    key = (record.get("identity") or {}).get("evaluation_key")
    return {"seed": record.get("seed"),
            **({"status": record.get("status")} if record.get("status") != "completed" else {}),
            metric: metrics.get(metric), "val_loss": metrics.get("val_loss"),
            **({"evaluation_key": key} if key else {})}


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
    # a rate is compared only over the seeds every rate ran, all completed: dropping the seeds a rate lost
    # (diverged, failed) would favour rates that are unstable
    reasons = []
    if len(done) < len(runs):
        reasons.append(f"seeds not completed: {', '.join(statuses)}")
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


def _choose_one(name: str, cells: Sequence[Mapping[str, Any]], metric: str,
                min_val_examples: int) -> dict[str, Any] | None:
    _check_alike(name, cells)
    by_lr: dict[float, list[Mapping[str, Any]]] = defaultdict(list)
    for record in cells:
        lr = _record_lr(record)
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
    grid = {lr for record in cells for lr in _recorded_grid(record)} - set(by_lr)
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
    lead = _lead(name, best, ranked[1], metric, n_val, by_lr) if len(ranked) > 1 else {}
    _warn_lead(name, best, lead, metric)
    return {"lr": best["lr"], "metric": metric, "best": best[metric], **lead, "val_examples": n_val,
            "candidates": candidates, "seeds": all_seeds,
            "searches": sorted({str(r["search_dir"]) for r in cells if r.get("search_dir")}),
            # from a cell that computed its keys (its weights, code and examples are known there)
            "trained_with": tuned_under(next((c for c in cells if c.get("status") == "completed"), cells[0]),
                                        metric)}


# ------------------------------------------------------------------------------------------------ writing

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
            isinstance(rates, list) and all(_positive_number(v) for v in rates) for rates in grid.values()):
        return None
    return (f"config.tuning.lr_grid={grid!r} is not what a search records: a mapping of each method to a list of "
            "positive learning rates")


def paper_search_command(experiment: str | Path = PAPER_EXPERIMENT, extra: Sequence[str] = ()) -> list[str]:
    """The search of every trained cell of an experiment (``experiment=paper``: conf/experiment/paper.yaml, or a
    file's path), trained and scored as its cells are: its swept models and datasets, the methods of its list that
    train, the trainer and eval groups it chooses, at hparams_search=lr_grid's candidate rates on the validation
    split; written to PAPER_SEARCH_DIR. ``extra``: more overrides (data_root=..., preflight.only=true)."""
    from omegaconf import OmegaConf

    from slm_sweep.config import compose

    path = Path(experiment) if Path(experiment).suffix == ".yaml" else CONF_DIR / "experiment" / f"{experiment}.yaml"
    spec = OmegaConf.load(path)
    params = OmegaConf.select(spec, "hydra.sweeper.params") or {}
    missing = [key for key in ("model", "method", "dataset") if key not in params]
    if missing:
        raise TuningError(f"{path}: hydra.sweeper.params has no {', '.join(missing)} to search")
    groups = [f"{key.removeprefix('override /')}={value}" for entry in spec.get("defaults") or []
              if isinstance(entry, Mapping) for key, value in entry.items()
              if key.removeprefix("override /") in ("trainer", "eval")]
    trained = [m for m in str(params["method"]).split(",") if compose([f"method={m.strip()}"]).method.train]
    if not trained:
        raise TuningError(f"{path}: none of its methods ({params['method']}) trains, so it has no rate to search")
    return ["python", "-m", "slm_sweep", "-m", "hparams_search=lr_grid", *groups, f"model={params['model']}",
            f"method={','.join(m.strip() for m in trained)}", f"dataset={params['dataset']}",
            f"hydra.sweep.dir={PAPER_SEARCH_DIR}", *extra]


def _override_value(overrides: Sequence[str], key: str) -> tuple[bool, Any]:
    """(given, value) of the last override of ``key`` in ``overrides`` as Hydra parses it (``key=true`` and
    ``key=True`` are True, ``'key=/a b'`` is ``/a b``; ``+key=`` and ``++key=`` set it too, ``~key`` drops it);
    (False, None) when none sets it."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    given, value = False, None
    for text in overrides:
        try:
            override = parser.parse_override(str(text))
        except Exception:  # noqa: BLE001 - not an override Hydra reads: the search refuses it itself
            continue
        if override.key_or_group != key:
            continue
        given, value = (False, None) if override.is_delete() else (True, override.value())
    return given, value


def search_dir_of(extra: Sequence[str]) -> str:
    """The folder the paper's search writes to: PAPER_SEARCH_DIR, or the last ``hydra.sweep.dir=`` of ``extra``
    (Hydra takes the last). Raises TuningError for one Hydra would resolve when the search starts
    (``${now:...}``), which this command could not find again."""
    given, value = _override_value(extra, "hydra.sweep.dir")
    if not given or value is None:
        return PAPER_SEARCH_DIR
    if "${" in str(value):
        raise TuningError(f"hydra.sweep.dir={value}: the table is written from the search's folder, which an "
                          "interpolation resolved when the search starts would hide from this command; give the "
                          "folder itself")
    return str(value)


def preflight_only(extra: Sequence[str]) -> bool:
    """Whether ``extra`` makes the search only list its cells: the last ``preflight.only=`` read as OmegaConf reads
    the typed setting (true, True, yes, on, 1; false, no, off, 0 run the search). A value that is none of them
    (an interpolation, resolved only in the search) counts as true: no table is written from what the search may
    not have run."""
    from omegaconf import BooleanNode

    given, value = _override_value(extra, "preflight.only")
    if not given:
        return False
    try:
        return BooleanNode(value)._value() is not False
    except Exception:  # noqa: BLE001 - no boolean: the search refuses it itself, and no table is written
        return True


def run_paper_search(extra: Sequence[str]) -> int:
    """``make paper-search``: the search (paper_search_command), then the table from the folder it wrote to
    (``search_dir_of``: an appended ``hydra.sweep.dir=`` is where it writes), unless it only listed its cells
    (``preflight_only``). A search that exits non-zero (a cell that did not complete, a refused preflight) writes
    no table: rates chosen without some cells would be chosen among fewer candidates than the study says; the
    message names those cells and how to go on."""
    import subprocess

    try:
        search_dir = search_dir_of(extra)
    except TuningError as err:
        print(f"{PAPER_SEARCH}: error: {err}", file=sys.stderr)
        return 2
    command = [sys.executable, *paper_search_command(extra=extra)[1:]]
    print(" ".join(["python", *command[1:]]), flush=True)
    returncode = subprocess.call(command)
    if preflight_only(extra):
        if returncode == 0:
            print("preflight.only: the search listed its cells and ran none; no table written", flush=True)
        return returncode
    if returncode != 0:
        print(_no_table_written(search_dir, returncode), file=sys.stderr, flush=True)
        return returncode
    return main([search_dir])


def _no_table_written(search_dir: str, returncode: int) -> str:
    """Why the paper's search wrote no table: the cells of ``search_dir`` that did not complete (a diverged rate is
    a result, not one of them), or a search stopped before any did."""
    from slm_sweep.report.sweep_notes import failed_cells

    try:
        broken = [(job, why) for job, why in failed_cells(Path(search_dir)) if not why.startswith("diverged:")]
    except Exception:  # noqa: BLE001 - the folder unreadable or absent: the search's own message says why
        broken = []
    head = f"{PAPER_SEARCH}: error: the search in {search_dir} exited with status {returncode}, so no table was written"
    if not broken:
        return (f"{head} ({table_path(DEFAULT_TABLE)} is left as it was): none of its cells is recorded as failed, so "
                "it stopped before or outside them (its message above says why). Fix that and run it again")
    cells = "\n".join(f"  {job}: {why}" for job, why in broken)
    return (f"{head} ({table_path(DEFAULT_TABLE)} is left as it was): {len(broken)} cell(s) did not complete, and a "
            f"rate that lost a cell would be no candidate:\n{cells}\nRun `make paper-search` again (the completed "
            f"cells are reused, these run again), or write the table from the completed cells on purpose with "
            f"`python -m slm_sweep.tune {search_dir}` (each rate that lost a cell is then listed as not eligible, and "
            "the command exits 1 where no rate of a dataset x model x method is left)")


def paper_search_help() -> str:
    """``--paper-search --help``: what it runs and the overrides it takes (Hydra's own help cannot compose the
    search's comma lists outside a multirun)."""
    return "\n".join([
        f"usage: {PAPER_SEARCH} [OVERRIDE ...]",
        "",
        "The validation search of every trained cell of experiment=paper (make paper-search), then the table "
        f"experiment=paper reads ({table_path(DEFAULT_TABLE)}). It runs:",
        "",
        "  " + " ".join(paper_search_command(extra=["[OVERRIDE ...]"])),
        f"  {PAPER_TUNE}",
        "",
        "OVERRIDE: any override of python -m slm_sweep, appended to the search, e.g.",
        "  data_root=DIR         the folder holding the datasets",
        "  preflight.only=true   list the search's cells and what they miss, run none, write no table",
        f"  hydra.sweep.dir=DIR   search into DIR in place of {PAPER_SEARCH_DIR}; the table is written from DIR",
        "",
        "A search with a cell that did not complete (a diverged rate is a result) writes no table: the message names "
        "the cells.",
    ])


def _table_out(text: str) -> str:
    """--out: a file, existing or not; a folder there, or a file above it, could not be written as one."""
    path = Path(text)
    expected = "--out expects the path of the table's file"
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a folder; {expected} (such as {path / 'lr.yaml'})")
    blocking = next((p for p in path.parents if p.exists() and not p.is_dir()), None)
    if blocking is not None:
        raise argparse.ArgumentTypeError(f"{text} cannot be written: {blocking} is a file, not a folder; {expected}")
    return text


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--paper-search"]:
        if {"-h", "--help"} & set(argv[1:]):
            print(paper_search_help())
            return 0
        return run_paper_search(argv[1:])
    parser = argparse.ArgumentParser(
        prog="python -m slm_sweep.tune",
        description="Choose each dataset x model x method's learning rate from the validation scores of a search "
                    "and write the table that cells with tuning.lr=tuned read. `python -m slm_sweep.tune "
                    "--paper-search [OVERRIDE ...]` runs experiment=paper's search first (make paper-search).")
    parser.add_argument("dirs", nargs="+", metavar="DIR", help="search directory (multirun/hparams/...), recursive")
    parser.add_argument("--out", type=_table_out, metavar="FILE", default=str(table_path(DEFAULT_TABLE)),
                        help="the table to write (default: %(default)s); its entries of other searches are kept")
    parser.add_argument("--replace", action="store_true",
                        help="write the table afresh from the rates chosen here (with none chosen, only the entries "
                             "searched here are dropped; with --keep-unchosen, the earlier entries of those searched "
                             "here that got no rate are kept)")
    parser.add_argument("--keep-unchosen", action="store_true",
                        help="keep the table's earlier entry of a dataset x model x method searched here that no "
                             "rate was chosen for, under --replace too (by default it is dropped, and the command "
                             "exits 1)")
    parser.add_argument("--metric", default=None,
                        help="validation accuracy to maximise, val_accuracy_<metric> (default: each dataset's "
                             "claims metric, val_accuracy_flexible; val_accuracy_lenient on OrcaMath)")
    parser.add_argument("--min-val-examples", type=at_least(0), default=MIN_VAL_EXAMPLES, metavar="N",
                        help="refuse searches scored on fewer validation questions (%(default)s)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s", stream=sys.stderr)
    try:
        if Path(args.out).exists():
            check_table_file(Path(args.out))
        records = read_search(args.dirs)
        chosen = choose(records, args.metric, args.min_val_examples)
        unchosen = [key for key in search_groups(records) if key not in chosen]
        if not chosen and not unchosen:
            raise TuningError(f"no search cell under {', '.join(args.dirs)} (a trained method scored with "
                              "eval.split=val): the table is left as it was")
        out = Path(args.out)
        # the table as it is, unless --replace starts it afresh from the rates chosen (keeping only what
        # --keep-unchosen keeps); with none chosen, --replace keeps the others and drops only the entries searched
        # again (as without it)
        fresh = bool(args.replace and chosen)
        earlier = read_table(out) if out.exists() and (not fresh or args.keep_unchosen and unchosen) else None
        kept = [k for k in unchosen if args.keep_unchosen and earlier is not None and lookup(earlier, *k) is not None]
        keep = _entries(earlier, kept) if fresh and earlier is not None else earlier
        dropped = [] if args.keep_unchosen or earlier is None else [k for k in unchosen
                                                                     if lookup(earlier, *k) is not None]
        path = write_table(chosen, out, [str(d) for d in args.dirs], args.metric, keep, drop=dropped) \
            if chosen or dropped else None
    except (FileNotFoundError, TuningError) as err:
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
        return 2
    if chosen:
        print(render(chosen))
    print(f"Wrote {path}" if path else f"{out} is left as it was")
    return _report_unchosen(parser.prog, unchosen, dropped, kept, args.keep_unchosen)


def _entries(table: Mapping[str, Any], keys: Sequence[tuple[str, str, str]]) -> dict[str, Any]:
    """``table`` with only the entries of ``keys`` (dataset, model, method), their rates and search records, and
    the searches they name (their own, else the table's): what --replace --keep-unchosen keeps."""
    lr: dict[str, Any] = {}
    searched: dict[str, Any] = {}
    searches: list[str] = []
    for dataset, model, method in keys:
        lr.setdefault(dataset, {}).setdefault(model, {})[method] = lookup(table, dataset, model, method)
        record = _searched(table, dataset, model, method)
        if record:
            searched.setdefault(dataset, {}).setdefault(model, {})[method] = record
        own = record.get("searches")
        searches += own if isinstance(own, list) else table.get("searches") or []
    return {"lr": lr, "searched": searched, "searches": list(dict.fromkeys(searches))}


def _report_unchosen(prog: str, unchosen: Sequence[tuple[str, str, str]], dropped: Sequence[tuple[str, str, str]],
                     kept: Sequence[tuple[str, str, str]], keep_unchosen: bool) -> int:
    """Exit status: 0 when every dataset x model x method searched got a rate (or --keep-unchosen kept the
    earlier entries, ``kept``, of those that did not), else 1, naming them and the entries dropped."""
    if not unchosen:
        return 0
    if keep_unchosen:
        none = [k for k in unchosen if k not in kept]
        what = [*([f"the table keeps its earlier entry of {_names(kept)} as it was (--keep-unchosen)"] if kept else []),
                *([f"the table has no entry of {_names(none)} (none earlier to keep)"] if none else [])]
        print(f"{prog}: warning: no rate of {_names(unchosen)} completed every seed; {'; '.join(what)}",
              file=sys.stderr)
        return 0
    gone = f" (its earlier entry of {_names(dropped)} is dropped: searched again, no rate chosen)" if dropped else ""
    print(f"{prog}: error: no rate of {_names(unchosen)} completed every seed, so the table has none{gone}. Search "
          "again (the warnings above say why each rate is no candidate), or keep an earlier entry with "
          "--keep-unchosen", file=sys.stderr)
    return 1


def _names(keys: Sequence[tuple[str, str, str]]) -> str:
    return ", ".join("/".join(key) for key in keys)


if __name__ == "__main__":
    sys.exit(main())
