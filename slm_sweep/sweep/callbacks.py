"""Hydra callbacks: keep credentials out of Hydra's config dumps; aggregate a sweep when it ends."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, ListConfig, OmegaConf

from slm_sweep.results import SECRET_KEY, redact

log = logging.getLogger(__name__)


def _redact_overrides(overrides: list[str]) -> list[str]:
    out = []
    for item in overrides:
        key, sep, value = item.partition("=")
        out.append(f"{key}{sep}<redacted>" if sep and SECRET_KEY.search(key) else item)
    return out


def scrub_yaml(path: Path) -> None:
    """Rewrite a config dump that Hydra saved, with every credential-like value replaced."""
    if not path.is_file():
        return
    node = OmegaConf.load(path)
    if isinstance(node, ListConfig):
        cleaned: Any = _redact_overrides([str(x) for x in node])
    else:
        cleaned = redact(OmegaConf.to_container(node, resolve=False))
        if isinstance(cleaned, dict) and "hydra" in cleaned:
            task = ((cleaned["hydra"].get("overrides") or {}).get("task")) or []
            cleaned["hydra"]["overrides"]["task"] = _redact_overrides([str(x) for x in task])
            job = cleaned["hydra"].get("job") or {}
            if job.get("override_dirname"):
                job["override_dirname"] = ",".join(_redact_overrides(job["override_dirname"].split(",")))
    text = OmegaConf.to_yaml(OmegaConf.create(cleaned))
    if text != path.read_text():
        path.write_text(text)


class RedactSecrets(Callback):
    """Hydra writes .hydra/{config,hydra,overrides}.yaml before the job starts; scrub them right after."""

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        hydra_cfg = config.hydra
        output_dir = Path(hydra_cfg.runtime.output_dir)
        if hydra_cfg.output_subdir is not None:
            for name in ("config.yaml", "hydra.yaml", "overrides.yaml"):
                scrub_yaml(output_dir / str(hydra_cfg.output_subdir) / name)
        scrub_yaml(output_dir.parent / "multirun.yaml")


class AggregateSweep(Callback):
    """At the end of every multirun: summary tables and plots in the sweep directory, and (with logger=wandb)
    the summary as one W&B table in a run of its own, tagged with the sweep."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from slm_sweep.report import write_report

        sweep_dir = Path(str(config.hydra.sweep.dir))
        if config.get("eval") and config.eval.get("split", "test") != "test":
            return  # a hyperparameter search scores the validation split: Optuna writes its own summary
        try:
            report = write_report([sweep_dir], sweep_dir)
        except FileNotFoundError as err:
            log.warning("no sweep summary written: %s", err)
            return
        log.info("sweep summary: %s", report["summary_md"])
        if config.get("logger") and config.logger.get("name") == "wandb":
            log_summary_to_wandb(config, sweep_dir, report["rows"])


def sweep_tag(sweep_dir: str | Path) -> str:
    """``sweep-<date>-<time>``: shared by every run of one multirun, so the dashboard can filter on it."""
    return "sweep-" + "-".join(Path(sweep_dir).parts[-2:])


def log_summary_to_wandb(config: DictConfig, sweep_dir: Path, rows: list[dict]) -> None:
    from slm_sweep.tracking import start_wandb_run

    run = start_wandb_run(
        config.logger, name=f"{sweep_tag(sweep_dir)}-summary", group="sweep-summary", job_type="summary",
        tags=[sweep_tag(sweep_dir)], config={"sweep_dir": str(sweep_dir)}, out_dir=sweep_dir,
    )
    if run is None:
        return
    import wandb

    columns = list(rows[0]) if rows else []
    run.log({"sweep/summary": wandb.Table(columns=columns, data=[[r.get(c) for c in columns] for r in rows])})
    run.finish()
