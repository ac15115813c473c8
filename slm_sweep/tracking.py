"""Metric loggers of a cell, built from conf/logger/<name>.yaml with hydra.utils.instantiate.

A logger config is one ``_target_`` entry (conf/logger/csv.yaml: Lightning's CSVLogger) or several named ones
(conf/logger/wandb_csv.yaml), as in lightning-hydra-template. A Lightning logger whose ``save_dir`` is null writes
into the cell's folder. A ``CellLogger`` subclass is also given the cell (names, tags, config, folder) and the final
result: ``WandbRun`` (conf/logger/wandb.yaml) logs to W&B offline without an API key, falls back to offline when
online fails (and stays offline for the rest of the process), and adds the scores and a table of predictions at the
end.

A W&B problem never stops a cell: a run that cannot start even offline (wandb not importable, its folder not
writable, its service not starting) is left out with a loud error, the other loggers go on, and result.json says
so under ``tracking``. Any other logger that cannot be built fails the cell (recorded as failed, never left at
``running``): its settings are wrong, and every later cell would lose its curves the same way.
"""

from __future__ import annotations

import hashlib
import logging
import math
import netrc
import os
import secrets
import shutil
import string
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from slm_sweep import scoring
from slm_sweep.results import (
    EVAL_SET_FIGURES,
    RESULT_FILE,
    non_finite_places,
    read_result,
    redact,
    redact_overrides,
)

log = logging.getLogger(__name__)

PREDICTION_COLUMNS = ("eval_set", "index", "question", "reference", "output")  # then every metric's fields
WANDB_TARGET = "slm_sweep.tracking.WandbRun"
WANDB_GROUP_COLUMN = "wandb_group"  # the last column of the sweep's summary tables in W&B: each row's run groups
# the figures of the split a cell scores, logged under eval/ with its accuracies (each out-of-domain set's under
# eval_<set>/); the others, eval_time_all_sets_s among them, go under result/
_SCORE_KEYS = ("n_eval", "val_n_eval", "truncated_fraction", *EVAL_SET_FIGURES)
# Why W&B could not start online earlier in this process, None while it has not failed: the later cells log offline
# at once instead of each waiting up to init_timeout for a service that just failed (a 90 s wait per cell of a sweep
# during an outage)
_online_failure: str | None = None


def wandb_api_key_available() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        hosts = netrc.netrc().hosts
    except (OSError, netrc.NetrcParseError):
        return False
    return any("wandb" in host for host in hosts)


def wandb_mode(logger_cfg: Mapping[str, Any]) -> str:
    """``mode`` of the W&B settings, with ``auto`` resolved: WANDB_MODE=offline or disabled in the environment
    first (a key that is merely available must not upload a run the environment keeps offline), else online
    with an API key (setting, WANDB_API_KEY or netrc), else offline."""
    mode = str(logger_cfg.get("mode", "auto"))
    if mode != "auto":
        return mode
    env_mode = os.environ.get("WANDB_MODE", "")
    env_mode = "offline" if env_mode == "dryrun" else env_mode
    if env_mode in ("offline", "disabled"):
        return env_mode
    if logger_cfg.get("api_key") or wandb_api_key_available():
        return "online"
    if env_mode == "online":
        log.warning("WANDB_MODE=online, but no W&B API key is set (WANDB_API_KEY, or `wandb login`): logging "
                    "offline into the cell's wandb/ folder; `wandb sync` uploads it once a key is set")
    return "offline"


def group_name(model: str, method: str, dataset: str, configuration_key: str | None = None,
               split: str = "test") -> str:
    """``model-method-dataset``, then the first 8 characters of the configuration key (the seeds of one
    configuration: a row of the report; runs of another rank, rate or code version are another group), and
    ``-val`` for a cell scored on the validation split (a learning-rate search)."""
    name = f"{model}-{method}-{dataset}"
    if configuration_key:
        name += f"-{configuration_key[:8]}"
    return name + ("-val" if split == "val" else "")


def scored_split(config: Mapping[str, Any] | None) -> str:
    """The split a cell's config scores (``eval.split``): ``test`` unless set."""
    config = config if isinstance(config, Mapping) else {}
    return str((config.get("eval") or {}).get("split") or "test")


def run_group(cell: Mapping[str, Any], split: str) -> str:
    """The W&B group of a cell's run (``group_name``), ``-reused`` for a copy of another folder's result: a copy
    is a second run of one computation, kept out of the configuration's group, whose runs a dashboard averages
    over seeds (a baseline copied to three seeds, or a cell reused by a later sweep, would count twice)."""
    configuration = (cell.get("identity") or {}).get("configuration_key")
    return _shortened(group_name(cell["model"], cell["method"], cell["dataset"], configuration, split) + (
        "-reused" if cell.get("reused_from") else ""), MAX_NAME_LENGTH)


def run_name(cell: Mapping[str, Any], split: str) -> str:
    """A run's name: its group (``run_group``), then a search cell's learning rate, then the seed, so that two
    configurations of one model, method and dataset (``method.r=4,8``) never share a name. A long group is cut
    (``_shortened``) so that the learning rate and seed stay at the end."""
    lr = (cell.get("learning_rate") or {}).get("value")
    suffix = (f"-lr{lr:g}" if split == "val" and lr else "") + f"-seed{cell['seed']}"
    return _shortened(run_group(cell, split), MAX_NAME_LENGTH - len(suffix)) + suffix


def task_overrides() -> list[str] | None:
    """The command-line overrides of the Hydra job running now (a sweep job's own values), credentials redacted;
    None outside a Hydra job."""
    try:
        from hydra.core.hydra_config import HydraConfig

        overrides = HydraConfig.get().overrides.task
    except (ImportError, ValueError):  # ValueError: no Hydra job is running
        return None
    return redact_overrides([str(item) for item in overrides])


def tracked_runs(record: Mapping[str, Any] | None) -> list[str]:
    """The ids of the W&B runs a result record names under ``tracking`` (``offline run <id>``)."""
    states = (record or {}).get("tracking")
    if not isinstance(states, Mapping):
        return []
    return [state.split()[-1] for state in states.values()
            if isinstance(state, str) and state.startswith(("offline run ", "online run "))]


def superseded_runs(aside: str | Path | None, evaluation_key: str) -> list[str]:
    """The W&B runs of the finished result of this same computation (``evaluation_key``) that a cell computed
    again has set aside into ``aside`` (sweep.resume.set_aside_earlier), which stay in the run's group."""
    record = read_result(aside) if aside is not None else None
    if not record or (record.get("identity") or {}).get("evaluation_key") != evaluation_key:
        return []
    return tracked_runs(record)


MAX_TAG_LENGTH = 64  # W&B refuses a longer tag, and with it the run
MAX_NAME_LENGTH = 128  # the same for a run's name or group (a model named by a long hub id, say)


def _shortened(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters, the last 9 a ``~`` and a hash of the whole, so that two long texts
    that share their first characters stay two."""
    if len(text) <= limit:
        return text
    digest = hashlib.sha256(text.encode()).hexdigest()[:8]
    return f"{text[:limit - 9]}~{digest}"


def wandb_tag(text: str) -> str:
    """``text`` as a W&B tag (MAX_TAG_LENGTH at most: ``_shortened``)."""
    return _shortened(text, MAX_TAG_LENGTH)


def new_run_id() -> str:
    """A fresh W&B run id (8 lowercase letters and digits, as W&B draws them)."""
    alphabet = string.ascii_lowercase + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(8))


def start_wandb_run(logger_cfg: Mapping[str, Any], name: str, group: str, job_type: str, tags: Sequence[str],
                    config: Mapping[str, Any], out_dir: str | Path):
    """A W&B run in ``out_dir/wandb``; offline without an API key; falls back to offline if online fails, and
    then starts every later run of the process offline.

    ``logger_cfg`` holds the settings of conf/logger/wandb.yaml. Returns None when W&B is disabled. The run gets an
    id of its own, never resumed: a WANDB_RUN_ID or WANDB_RESUME left in the environment (a batch script, an agent)
    would otherwise send every cell of a process into one run.
    """
    global _online_failure
    mode = wandb_mode(logger_cfg)
    api_key = logger_cfg.get("api_key")
    if mode == "disabled":  # before the import: a machine without wandb runs with it disabled
        return None
    import wandb

    if mode == "online" and _online_failure is not None:
        log.warning("W&B failed online earlier in this process (%s): logging offline into %s/wandb (upload later "
                    "with `wandb sync %s/wandb/offline-run-*`)", _online_failure, out_dir, out_dir)
        mode = "offline"

    def settings(online: bool):
        # W&B's run metadata records the command line, which may carry credentials given as overrides
        return wandb.Settings(x_disable_meta=True, save_code=False,
                              init_timeout=float(logger_cfg.get("init_timeout", 90)),
                              **({"api_key": api_key} if online and api_key else {}))

    kwargs = dict(
        project=logger_cfg.get("project", "slm_sweep"),
        entity=logger_cfg.get("entity"),
        group=_shortened(group, MAX_NAME_LENGTH),  # run_group and run_name fit already; a sweep's summary run may not
        job_type=job_type,
        tags=sorted({wandb_tag(str(tag)) for tag in (*tags, *_as_tags(logger_cfg.get("tags")))}),
        name=_shortened(name, MAX_NAME_LENGTH),
        config=redact(dict(config)),
        dir=str(out_dir),
        id=new_run_id(),
        resume="never",
    )
    try:
        return wandb.init(mode=mode, settings=settings(mode == "online"), **kwargs)
    except Exception as err:  # noqa: BLE001 - any W&B failure must leave the run going
        if mode == "offline":
            raise
        _online_failure = f"{type(err).__name__}: {err}"
        _remove_partial_run(Path(out_dir), kwargs["id"])
        log.warning("W&B could not start online (%s); logging offline into %s/wandb instead, as every later cell of "
                    "this process will (upload later with `wandb sync %s/wandb/offline-run-*`)", err, out_dir,
                    out_dir)
        # an id of its own: W&B refuses the failed start's id as one in use
        return wandb.init(mode="offline", settings=settings(False), **{**kwargs, "id": new_run_id()})


def _remove_partial_run(out_dir: Path, run_id: str) -> None:
    """Delete the folder a failed online start left (``wandb/run-<time>-<id>``, with the run's name, group and
    config but no data): ``wandb sync`` of the cell's folder would upload it as an empty run in the group."""
    for folder in (out_dir / "wandb").glob(f"run-*-{run_id}"):
        shutil.rmtree(folder, ignore_errors=True)


def result_metrics(record: Mapping[str, Any]) -> dict[str, float]:
    """A result's numbers as the loggers record them: the scores of the split it generated on under ``eval/``,
    each out-of-domain set's under ``eval_<set>/``, everything else result.json holds under ``result/``; a NaN or
    infinite number is left out, as result.json writes it as null."""
    metrics = record.get("metrics") or {}
    values = {(f"eval/{k}" if k in _SCORE_KEYS or k.startswith(("accuracy_", "val_accuracy_")) else f"result/{k}"): v
              for k, v in metrics.items() if _finite(v)}
    for name, scores in (record.get("eval_sets") or {}).items():
        values.update({f"eval_{name}/{k}": v for k, v in scores.items() if _finite(v)})
    return values


def _finite(value: Any) -> bool:
    """A number to log: NaN and infinities are null in result.json (listed under ``non_finite``), and left out."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def result_step(record: Mapping[str, Any]) -> int:
    """The step the result is logged at: the last optimizer step, so the scores sit at the end of the curves."""
    return int((record.get("metrics") or {}).get("train_steps") or 0)


def has_figures(record: Mapping[str, Any]) -> bool:
    """Whether a result has numbers to log: a completed cell, or one that trained before it stopped (a cell that
    stopped before training has no training figures)."""
    return record.get("status") == "completed" or result_step(record) > 0


def _as_tags(tags: str | int | float | Sequence[str] | None) -> list[str]:
    """``logger.tags``: a list, or one tag (``logger.tags=paper``, ``logger.tags=2024``), as strings."""
    return [str(tags)] if isinstance(tags, (str, int, float)) else [str(tag) for tag in tags or []]


class CellLogger:
    """A logger that needs the cell: built with ``cell``, ``config`` and ``out_dir`` on top of its YAML settings,
    told the cell's result at the end, closed with the cell's status. ``lightning_logger`` (or None) is what
    the Lightning Trainer logs training metrics to; ``state`` (or None) is what result.json's ``tracking`` records
    under ``name``: where this logger's copy of the cell is, or why there is none."""

    lightning_logger = None
    name = "logger"
    state: str | None = None

    def log_result(self, record: Mapping[str, Any], predictions: Sequence[Mapping[str, Any]]) -> None:
        """Final metrics and predictions. An error raised here is logged, naming this logger, and goes no further
        (the result files are written already; the sweep goes on to its summary)."""

    def finish(self, status: str) -> None:
        """Always called, also when the cell failed; an error raised here is logged, as ``log_result``'s is."""


# What a W&B run's config records under ``provenance``, from result.json (with ``out_dir`` and ``result_path``)
PROVENANCE_KEYS = ("identity", "git_commit", "git_dirty_files", "versions", "hardware", "learning_rate",
                   "reused_from", "trained_in", "training_provenance", "earlier_attempts", "resumed_from_checkpoint",
                   "resumed_at_step")


def _provenance(record: Mapping[str, Any]) -> dict[str, Any]:
    return {key: record[key] for key in PROVENANCE_KEYS if record.get(key) is not None}


class WandbRun(CellLogger):
    """A W&B run per cell, grouped by configuration (``model-method-dataset-<configuration key>``, ``-val`` for a
    search cell: a group is a row of the report; ``-reused`` for a copy of another folder's result), named
    ``<group>[-lr<rate>]-seed<seed>`` (the rate for a search cell), tagged with the model, method,
    dataset, split and sweep, ``reused`` for a copy, ``rerun`` when it computes again a finished result of its folder (whose runs it
    names under ``provenance.supersedes``), and at the end with ``status:<status>`` (a dashboard filters the
    attempts that did not complete out of a group); offline without an API key or with WANDB_MODE=offline,
    offline when online fails (and for every later cell of the process), left out (``state``: ``not started:
    <error>``) when it cannot start at all; the scores and a predictions table at the end, at the last optimizer
    step."""

    name = "wandb"

    def __init__(self, *, cell: Mapping[str, Any], config: Mapping[str, Any], out_dir: str | Path,
                 project: str = "slm_sweep", entity: str | None = None, mode: str = "auto",
                 tags: Sequence[str] = (), log_predictions: bool = True, init_timeout: float = 90,
                 api_key: str | None = None):
        from lightning.pytorch.loggers import WandbLogger

        self.log_predictions = log_predictions
        settings = {"project": project, "entity": entity, "mode": mode, "tags": _as_tags(tags),
                    "init_timeout": init_timeout, "api_key": api_key}
        split = scored_split(config)
        run_tags = [cell["model"], cell["method"], cell["dataset"], f"split:{split}"]
        if cell.get("sweep_tag"):
            run_tags.append(cell["sweep_tag"])
        if cell.get("reused_from"):
            run_tags.append("reused")
        # the runs of the result this one computes again stay in the group beside it, each seed counted twice
        supersedes = list(cell.get("supersedes") or [])
        if supersedes:
            run_tags.append("rerun")
        # what result.json says produced the numbers, so that a run on the dashboard can be traced to its code, its
        # machine and its files; a re-score's training figures, to the run that trained its weights (trained_in,
        # training_provenance), and resumed training's first steps to the attempts that trained them (their runs
        # under earlier_attempts' tracking); the job's command-line overrides, to the command that ran it
        provenance = _provenance(cell)
        folder = Path(out_dir).absolute()
        provenance.update(out_dir=str(folder), result_path=str(folder / RESULT_FILE))
        overrides = task_overrides()
        if overrides is not None:
            provenance["overrides"] = overrides
        if supersedes:
            provenance["supersedes"] = supersedes
        self.provenance = provenance
        try:
            self.run = start_wandb_run(settings, name=run_name(cell, split), group=run_group(cell, split),
                                       job_type=cell["method"], tags=run_tags,
                                       config={**config, "provenance": provenance}, out_dir=out_dir)
        except Exception as err:  # noqa: BLE001 - W&B is a copy of result.json: the cell goes on without it
            self.run = None
            self.state = f"not started: {type(err).__name__}: {err}"
            log.error("W&B could not start (%s: %s): this cell has no W&B run; its other loggers and result.json "
                      "go on, and result.json records it under tracking.wandb", type(err).__name__, err)
            return
        if self.run is None:
            self.state = "disabled"
        else:
            self.state = f"{'offline' if self.run.offline else 'online'} run {self.run.id}"
            # Lightning declares its step axis only for runs it starts itself; this one is handed over
            self.run.define_metric("trainer/global_step")
            self.run.define_metric("*", step_metric="trainer/global_step", step_sync=True)
            self.lightning_logger = WandbLogger(experiment=self.run, log_model=False)

    def log_result(self, record: Mapping[str, Any], predictions: Sequence[Mapping[str, Any]]) -> None:
        """Final metrics, out-of-domain scores and a table of predictions; a W&B error is logged, not raised."""
        if self.run is None:
            return
        try:
            self._log_result(record, predictions)
        except Exception:  # noqa: BLE001 - the result files are written already; W&B is a copy
            log.exception("logging the result to W&B failed; result.json has it")

    def _log_result(self, record: Mapping[str, Any], predictions: Sequence[Mapping[str, Any]]) -> None:
        import wandb

        if record.get("status") != "completed":
            self.run.summary.update({"status": record.get("status"), "error": record.get("error")})
        # the provenance as the final record has it: what it learnt after the run started (a re-score names its
        # training run once it loaded the weights), so that the figures logged below are traced to the run that
        # measured them, and without what it no longer holds (earlier_attempts of training that did not resume
        # from their checkpoint after all, trained_in of kept weights that could not be read and were trained again)
        provenance = {**{k: v for k, v in self.provenance.items() if k not in PROVENANCE_KEYS}, **_provenance(record)}
        if provenance != self.provenance:
            self.provenance = provenance
            self.run.config.update({"provenance": self.provenance}, allow_val_change=True)
        if not has_figures(record):
            return
        values = {**result_metrics(record), "trainer/global_step": result_step(record), "status": record.get("status")}
        non_finite = non_finite_places(record)  # left out of the values, as result.json writes them as null
        if non_finite:
            self.run.summary["non_finite"] = non_finite
        # where and how it generated, to filter runs by in the dashboard (not logged as a step)
        placement = (record.get("placement") or {}).get("eval") or {}
        decoding = record.get("decoding") or {}
        described = {"placement/eval_device": placement.get("device"),
                     "placement/eval_device_name": placement.get("device_name"),
                     "placement/eval_dtype": placement.get("dtype"), "decoding/engine": decoding.get("engine"),
                     "decoding/cuda_graphs_captured": (decoding.get("cuda_graphs") or {}).get("captured")}
        self.run.summary.update({k: v for k, v in described.items() if v is not None})
        self.run.summary.update({k: v for k, v in values.items() if k != "trainer/global_step"})
        self.run.log({k: v for k, v in values.items() if k != "status"})
        if self.log_predictions and predictions:
            # read now: a module of eval.metric_modules may have registered metrics after this module was imported
            columns = [*PREDICTION_COLUMNS, *scoring.PREDICTION_FIELDS]
            table = wandb.Table(columns=columns, data=[[p.get(c) for c in columns] for p in predictions])
            self.run.log({"eval/predictions": table})

    def finish(self, status: str) -> None:
        if self.run is None:
            return
        try:
            self.run.summary["status"] = status
            self.run.tags = (*(self.run.tags or ()), f"status:{status}")
            self.run.finish(exit_code=0 if status == "completed" else 1)
        except Exception:  # noqa: BLE001 - closing W&B must not hide the run's outcome
            log.exception("closing the W&B run failed")
        self.run = None


def stand_in_loggers(logger_cfg: Mapping[str, Any] | None) -> list | None:
    """For a training run without a Lightning logger of its own where the cell has loggers (a rank other than 0 of
    a distributed run, which logs nothing; rank 0 with W&B disabled): a logger that drops what it is given, so that
    callbacks that need one (LearningRateMonitor, DeviceStatsMonitor) run alike on every rank; None where the cell
    has none."""
    if not logger_entries(logger_cfg):
        return None
    from lightning.pytorch.loggers.logger import DummyLogger

    return [DummyLogger()]


def logger_entries(logger_cfg: Mapping[str, Any] | None) -> dict[str, Mapping[str, Any]]:
    """The logger config's entries by their path: ``{"logger": cfg}`` for one ``_target_``, ``{"logger.<name>":
    entry}`` for named ones, ``{}`` for none (``_target_: null``). Raises ValueError on an entry that is neither a
    mapping with ``_target_`` nor null."""
    if logger_cfg is None:
        return {}
    if "_target_" in logger_cfg:
        return {} if logger_cfg["_target_"] is None else {"logger": logger_cfg}
    entries = {}
    for name, entry in logger_cfg.items():
        if entry is None:
            continue
        if not isinstance(entry, Mapping) or not entry.get("_target_"):
            raise ValueError(f"logger.{name}={entry!r} must be a mapping with a _target_ (a logger class) or null")
        entries[f"logger.{name}"] = entry
    return entries


def wandb_settings(logger_cfg: Mapping[str, Any] | None) -> Mapping[str, Any] | None:
    """The settings of the W&B entry of a logger config (a ``WandbRun`` target), None without one."""
    for entry in logger_entries(logger_cfg).values():
        target = entry["_target_"]
        if target == WANDB_TARGET or (target.startswith(f"{__name__}.")
                                      and issubclass(globals().get(target.rpartition(".")[2], object), WandbRun)):
            return entry
    return None


def logger_class(path: str, entry: Mapping[str, Any]) -> type:
    """The class of the logger entry at ``path``, imported and checked to be a Lightning logger or a CellLogger
    (ConfigError naming the entry otherwise)."""
    from lightning.pytorch.loggers import Logger

    from slm_sweep.config import target_class

    return target_class(path, entry, "logger", "logger", (Logger, CellLogger))


def build_logger(path: str, entry: Mapping[str, Any], cell: Mapping[str, Any], config: Mapping[str, Any],
                 out_dir: Path):
    """Instantiate the entry at ``path``: a CellLogger with the cell, a Lightning logger (``save_dir: null``: the
    cell's folder) as it is. A ``_target_`` that is neither fails with a ConfigError naming it."""
    from hydra.utils import instantiate

    cls = logger_class(path, entry)
    make = instantiate(entry, _partial_=True, _convert_="all")
    if issubclass(cls, CellLogger):
        return make(cell=cell, config=config, out_dir=out_dir)
    if "save_dir" in entry and entry["save_dir"] is None:
        return make(save_dir=str(out_dir))
    return make()


class Tracker:
    """Owns the cell's metric loggers (conf/logger/) from the start of the cell to ``finish``."""

    def __init__(self, logger_cfg: Mapping[str, Any] | None, cell: Mapping[str, Any], config: Mapping[str, Any],
                 out_dir: str | Path):
        self.out_dir = Path(out_dir)
        self.cell_loggers: list[CellLogger] = []
        self.lightning_loggers: list = []
        self._plain: list = []  # Lightning loggers of no CellLogger: finalized here
        self.tracking: dict[str, str] = {}  # result.json's ``tracking``: each CellLogger's state
        try:
            for path, entry in logger_entries(logger_cfg).items():
                made = build_logger(path, entry, cell, config, self.out_dir)
                if isinstance(made, CellLogger):
                    self.cell_loggers.append(made)
                    if made.state is not None:
                        self.tracking[made.name] = made.state
                    if made.lightning_logger is not None:
                        self.lightning_loggers.append(made.lightning_logger)
                else:
                    self._plain.append(made)
                    self.lightning_loggers.append(made)
        except BaseException:
            self.finish("failed")  # close what did start
            raise

    def log_result(self, record: Mapping[str, Any], predictions: Sequence[Mapping[str, Any]]) -> None:
        """The result to every logger: a CellLogger as it chooses, a plain Lightning logger (csv/metrics.csv) its
        numbers (``result_metrics``) at the last step. A logger's failure is logged, not raised: result.json is
        written already."""
        for logger in self.cell_loggers:
            try:
                logger.log_result(record, predictions)
            except Exception:  # noqa: BLE001 - a user's logger: the result files are written already
                log.exception("logging the result to logger %s failed; result.json has it", _logger_name(logger))
        if not has_figures(record):
            return
        values = result_metrics(record)
        for logger in self._plain:
            try:
                logger.log_metrics(values, step=result_step(record))
                logger.save()
            except Exception:  # noqa: BLE001 - the result files are written already
                log.exception("logging the result to %s failed; result.json has it", type(logger).__name__)

    def finish(self, status: str) -> None:
        """Always called, also when the cell failed, so W&B never leaves a run open. A logger's failure is logged,
        not raised: the cell's outcome is recorded already, and the other loggers are still closed."""
        for logger in self.cell_loggers:
            try:
                logger.finish(status)
            except Exception:  # noqa: BLE001 - closing a logger must not hide the run's outcome
                log.exception("closing logger %s failed", _logger_name(logger))
        self.cell_loggers = []
        for logger in self._plain:
            try:
                logger.finalize("success" if status == "completed" else "failed")
                _finish_wandb_run(logger, status)
            except Exception:  # noqa: BLE001 - closing a logger must not hide the run's outcome
                log.exception("closing logger %s failed", logger)
        self._plain = []


def _logger_name(logger: CellLogger) -> str:
    """A CellLogger as a log line names it: its ``name`` and its class (``jsonsummary (mylog.JsonSummary)``)."""
    cls = type(logger)
    return f"{getattr(logger, 'name', None) or '?'} ({cls.__module__}.{cls.__qualname__})"


def _finish_wandb_run(logger, status: str) -> None:
    """Finish the run of a plain Lightning WandbLogger (a logger file naming that class): its ``finalize`` leaves
    the run open, and the next cell of a sweep run in one process would log into it (its curves restarting inside
    the first cell's run, its summary overwriting the first's)."""
    from lightning.pytorch.loggers import WandbLogger

    run = getattr(logger, "_experiment", None) if isinstance(logger, WandbLogger) else None
    if run is not None and hasattr(run, "finish"):
        run.finish(exit_code=0 if status == "completed" else 1)
