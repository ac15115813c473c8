"""A cell's learning rate before its identity is computed (``resolve_lr``): ``method.lr``, a grid search's
candidate around it (``lr_grid``, ``method_grid``), or the tuned table's rate (``tuning.lr=tuned``), with what
result.json records of it; and the checks before it: the ``tuning`` settings (``validate``), a search's scoring
(``check_search_scoring``), a tuned rate the table lacks or cannot vouch for (``check_missing``,
``MissingTunedRate``)."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from slm_sweep.config import ConfigError
from slm_sweep.tune.table import (
    DEFAULT_TABLE,
    LEAD_KEYS,
    SEARCH_RECORD,
    TuningError,
    has_search_record,
    lookup,
    not_the_search_choice,
    positive_number,
    read_table,
    search_record,
    table_path,
)
from slm_sweep.tune.trained_with import check_tuned_under

log = logging.getLogger(__name__)


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
PAPER_SEARCH_DIR = "multirun/paper-search"
PAPER_SEARCH = "python -m slm_sweep.tune --paper-search"
PAPER_TUNE = f"python -m slm_sweep.tune {PAPER_SEARCH_DIR}"

GRID_STEPS = 2  # candidates of a derived grid either side of the method's rate: five in all
# an entry's lead error and verdict as tables written before margin_test computed them (the seeds counted as
# questions, an error too small): not passed on to a tuned cell
_STALE_LEAD_KEYS = ("margin_se", "margin_p", "within_noise")


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


def _configured_table(tuning) -> tuple[dict[str, Any], Path]:
    """The table ``tuning.table`` names, read, and its path; a table that cannot be used is a config error."""
    path = table_path(tuning.get("table") or DEFAULT_TABLE)
    try:
        return read_table(path), path
    except TuningError as err:
        raise ConfigError(f"tuning.table: {err}") from None


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
            table, path = _configured_table(tuning)
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
    if given is None and not positive_number(cfg.method.get("lr")):
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
        if not positive_number(value):
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
    table, path = _configured_table(tuning)
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


def _tuned_provenance(table: Mapping[str, Any], path: Path, dataset: str, model: str,
                      method: str) -> dict[str, Any]:
    """What a tuned cell's learning_rate records of the table's entry: ``detail``, the entry's own ``searches``,
    ``seeds`` and ``metric``, ``at_edge`` and the lead. A rate that is not its search's choice gets none of the
    search's record; an entry written before its lead test (``margin_test``) was recorded, not that lead's error
    and verdict; one written before its own ``searches``, the table's (``searches_scope: table``)."""
    searched = search_record(table, dataset, model, method)
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
