"""Metric loggers of a cell: Weights & Biases (online or offline), Lightning's CSV logger, or none.

A W&B problem (no network, a bad key) never stops a run: it falls back to offline mode and says so.
"""

from __future__ import annotations

import logging
import netrc
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from slm_sweep.scoring import PREDICTION_FIELDS
from slm_sweep.results import redact

log = logging.getLogger(__name__)

PREDICTION_COLUMNS = ("eval_set", "index", "question", "reference", "output", *PREDICTION_FIELDS)


def wandb_api_key_available() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        hosts = netrc.netrc().hosts
    except (OSError, netrc.NetrcParseError):
        return False
    return any("wandb" in host for host in hosts)


def group_name(model: str, method: str, dataset: str) -> str:
    return f"{model}-{method}-{dataset}"


def start_wandb_run(logger_cfg: Mapping[str, Any], name: str, group: str, job_type: str, tags: Sequence[str],
                    config: Mapping[str, Any], out_dir: str | Path):
    """A W&B run in ``out_dir/wandb``; offline without an API key; falls back to offline if online fails.

    Returns None when W&B is disabled.
    """
    import wandb

    mode = logger_cfg.get("mode", "auto")
    if mode == "auto":
        mode = "online" if wandb_api_key_available() else "offline"
    if mode == "disabled":
        return None
    kwargs = dict(
        project=logger_cfg.get("project", "slm_sweep"),
        entity=logger_cfg.get("entity"),
        group=group,
        job_type=job_type,
        tags=sorted({*tags, *(logger_cfg.get("tags") or [])}),
        name=name,
        config=redact(dict(config)),
        dir=str(out_dir),
        # W&B's run metadata records the command line, which may carry credentials given as overrides
        settings=wandb.Settings(x_disable_meta=True, save_code=False,
                                init_timeout=float(logger_cfg.get("init_timeout", 90))),
    )
    try:
        return wandb.init(mode=mode, **kwargs)
    except Exception as err:  # noqa: BLE001 - any W&B failure must leave the run going
        if mode == "offline":
            raise
        log.warning("W&B could not start online (%s); logging offline into %s instead "
                    "(upload later with `wandb sync`)", err, out_dir)
        return wandb.init(mode="offline", **kwargs)


class Tracker:
    """Owns the run's metric loggers from the start of the cell to ``finish``."""

    def __init__(self, logger_cfg: Mapping[str, Any], cell: Mapping[str, Any], config: Mapping[str, Any],
                 out_dir: str | Path):
        self.kind = logger_cfg.get("name", "none")
        self.cfg = logger_cfg
        self.out_dir = Path(out_dir)
        self.wandb_run = None
        self.lightning_loggers: list = []
        if self.kind == "wandb":
            self._start_wandb(cell, config)
        elif self.kind == "csv":
            from lightning.pytorch.loggers import CSVLogger

            self.lightning_loggers = [CSVLogger(save_dir=str(self.out_dir), name="csv", version="")]

    def _start_wandb(self, cell: Mapping[str, Any], config: Mapping[str, Any]) -> None:
        from lightning.pytorch.loggers import WandbLogger

        tags = [cell["model"], cell["method"], cell["dataset"]]
        if cell.get("sweep_tag"):
            tags.append(cell["sweep_tag"])
        group = group_name(cell["model"], cell["method"], cell["dataset"])
        self.wandb_run = start_wandb_run(self.cfg, name=f"{group}-seed{cell['seed']}", group=group,
                                         job_type=cell["method"], tags=tags, config=config, out_dir=self.out_dir)
        if self.wandb_run is not None:
            self.lightning_loggers = [WandbLogger(experiment=self.wandb_run, log_model=False)]

    def log_result(self, record: Mapping[str, Any], predictions: Sequence[Mapping[str, Any]]) -> None:
        """Final metrics, out-of-domain scores and a table of predictions; a W&B error is logged, not raised."""
        if self.wandb_run is None:
            return
        try:
            self._log_result_to_wandb(record, predictions)
        except Exception:  # noqa: BLE001 - the result files are written already; W&B is a copy
            log.exception("logging the result to W&B failed; result.json has it")

    def _log_result_to_wandb(self, record: Mapping[str, Any], predictions: Sequence[Mapping[str, Any]]) -> None:
        import wandb

        metrics = record.get("metrics") or {}
        values = {f"eval/{k}": v for k, v in metrics.items() if isinstance(v, (int, float)) and v is not None}
        for name, scores in (record.get("eval_sets") or {}).items():
            values.update({f"eval_{name}/{k}": v for k, v in scores.items() if isinstance(v, (int, float))})
        values["status"] = record.get("status")
        self.wandb_run.summary.update(values)
        self.wandb_run.log({k: v for k, v in values.items() if k != "status"})
        if self.cfg.get("log_predictions", True) and predictions:
            table = wandb.Table(columns=list(PREDICTION_COLUMNS),
                                data=[[p.get(c) for c in PREDICTION_COLUMNS] for p in predictions])
            self.wandb_run.log({"eval/predictions": table})

    def finish(self, status: str) -> None:
        """Always called, also when the cell failed, so W&B never leaves a run open."""
        if self.wandb_run is not None:
            try:
                self.wandb_run.summary["status"] = status
                self.wandb_run.finish(exit_code=0 if status == "completed" else 1)
            except Exception:  # noqa: BLE001 - closing W&B must not hide the run's outcome
                log.exception("closing the W&B run failed")
            self.wandb_run = None
        for logger in self.lightning_loggers:
            if hasattr(logger, "finalize"):
                try:
                    logger.finalize("success" if status == "completed" else "failed")
                except Exception:  # noqa: BLE001 - closing a logger must not hide the run's outcome
                    log.exception("closing logger %s failed", logger)
