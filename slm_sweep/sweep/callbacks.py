"""Hydra callbacks: keep credentials out of Hydra's config dumps; check what a sweep needs before its first cell;
aggregate a sweep when it ends, and fail it when a cell failed."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, ListConfig, OmegaConf

from slm_sweep.results import atomic_write_text, global_rank, redact, redact_overrides

log = logging.getLogger(__name__)


def scrub_yaml(path: Path, needs_key: str | None = None) -> None:
    """Rewrite a config dump that Hydra saved, with every credential-like value replaced, atomically: the jobs of a
    parallel launcher scrub the sweep's multirun.yaml at once, and one must never read another's half-written
    file. A dump read empty (or, with ``needs_key``, without that top-level key) is left as it is: it is being
    written, and rewriting it from what was read would wipe it."""
    if not path.is_file():
        return
    node = OmegaConf.load(path)
    if not node or (needs_key is not None and (isinstance(node, ListConfig) or needs_key not in node)):
        return
    if isinstance(node, ListConfig):
        cleaned: Any = redact_overrides([str(x) for x in node])
    else:
        cleaned = redact(OmegaConf.to_container(node, resolve=False))
        if isinstance(cleaned, dict) and "hydra" in cleaned:
            overrides = cleaned["hydra"].get("overrides") or {}
            for kind in ("task", "hydra"):  # hydra: +hydra.job.env_set.HF_TOKEN=... sets a job's environment
                if overrides.get(kind):
                    overrides[kind] = redact_overrides([str(x) for x in overrides[kind]])
            job = cleaned["hydra"].get("job") or {}
            if job.get("override_dirname"):
                job["override_dirname"] = ",".join(redact_overrides(job["override_dirname"].split(",")))
    text = OmegaConf.to_yaml(OmegaConf.create(cleaned))
    if text != path.read_text():
        atomic_write_text(path, text)


class RedactSecrets(Callback):
    """Hydra writes .hydra/{config,hydra,overrides}.yaml before the job starts, and a multirun's multirun.yaml in
    its sweep folder before the first; scrub them right after."""

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        from hydra.types import RunMode

        hydra_cfg = config.hydra
        output_dir = Path(hydra_cfg.runtime.output_dir)
        if hydra_cfg.output_subdir is not None:
            for name in ("config.yaml", "hydra.yaml", "overrides.yaml"):
                scrub_yaml(output_dir / str(hydra_cfg.output_subdir) / name)
        if hydra_cfg.mode == RunMode.MULTIRUN:
            # the sweep folder itself: a job's folder (hydra.sweep.subdir) may be more than one level below it
            sweep_dir = Path(str(hydra_cfg.sweep.dir))
            if not sweep_dir.is_absolute():  # from where the sweep was launched: a job may have changed directory
                sweep_dir = Path(str(hydra_cfg.runtime.cwd)) / sweep_dir
            scrub_yaml(sweep_dir / "multirun.yaml", needs_key="hydra")


class Preflight(Callback):
    """Before the first cell: check that every model, training dataset and out-of-domain set of the grid can be
    read; leave out the swept values (and out-of-domain sets) that cannot, or refuse the whole sweep (exit
    non-zero) when nothing could run, a fixed value is missing, or preflight.on_missing=refuse (warn: only list
    them). Writes <sweep dir>/preflight.json either way, unless this launch runs no cell and that file is the plan of
    a launch that ran cells (preflight.write_plan: then preflight-not-run.json). With preflight.only=true it then
    lists the cells that would run and stops the sweep before any does. Before it writes anything, a launch that runs
    cells takes the sweep directory's lock (slm_sweep.folder_lock) until it exits: one started while another holds
    it is refused."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        from slm_sweep.config import ConfigError, validate_job_environment, validate_preflight
        from slm_sweep.config_sources import use_config_sources
        from slm_sweep.sweep.preflight import apply_plan, plan_grid, write_plan

        if OmegaConf.select(config, "hydra.job.chdir", default=False):
            from slm_sweep.config import CHDIR_REFUSED

            raise SystemExit(f"preflight: {CHDIR_REFUSED}; no cell runs")
        sweep_dir = OmegaConf.select(config, "hydra.sweep.dir", default=None)
        # a dry run runs no cell; the other processes of a distributed cell run the sweep's command again (Lightning
        # starts them so), under the lock of the first
        if sweep_dir and not OmegaConf.select(config, "preflight.only", default=False) and global_rank() == 0:
            from slm_sweep.folder_lock import FolderInUse, lock_until_exit

            try:  # before this launch writes anything there: its plan, its cells
                lock_until_exit(Path(str(sweep_dir)))
            except FolderInUse as error:
                raise SystemExit(f"preflight: {error}") from None
        use_config_sources(OmegaConf.select(config, "hydra.runtime.config_sources"))
        from slm_sweep.identity import pin_running_code
        from slm_sweep.tune.cell_rate import check_search_scoring

        if not OmegaConf.select(config, "preflight.only", default=False):  # a dry run runs no cell: no code to pin
            pin_running_code()  # before the preflight computes any key: the code the sweep's cells will run

        try:
            validate_preflight(config)
            # an Optuna study would otherwise fail trial by trial, each refused as it starts
            check_search_scoring(config)
            # before any job is launched: the submitit launchers pickle every job's config to disk
            validate_job_environment(OmegaConf.select(config, "hydra.job.env_set"))
        except ConfigError as error:
            raise SystemExit(f"config error: {error}") from None
        try:
            plan = plan_grid(config, _composer(config))
        except Exception as error:  # noqa: BLE001 - Hydra only warns about a callback's error and runs the cells
            raise SystemExit(f"preflight: the grid could not be checked, so no cell runs: "
                             f"{type(error).__name__}: {error}") from None
        plan.only = bool(OmegaConf.select(config, "preflight.only", default=False))
        try:
            path = write_plan(plan, Path(str(config.hydra.sweep.dir)))
        except Exception as error:  # noqa: BLE001 - see above
            raise SystemExit(f"preflight: the plan could not be written, so no cell runs: "
                             f"{type(error).__name__}: {error}") from None
        if plan.refused:
            if OmegaConf.select(config, "preflight.only", default=False):
                print("\n".join(plan.listing(path)), flush=True)
            raise SystemExit(f"{plan.refused}\n(details: {path})")
        if not plan.missing:
            log.info("preflight: %d models and data sets checked, all readable", len(plan.checked))
        for line in plan.summary_lines():
            log.warning("preflight: %s", line)
        if plan.missing and plan.on_missing == "skip":
            apply_plan(config, plan)
        if OmegaConf.select(config, "preflight.only", default=False):
            print("\n".join(plan.listing(path)), flush=True)
            raise SystemExit(0)


def _composer(config: DictConfig):
    """compose(overrides) -> one cell's config with its hydra node (which options it chose), through the Hydra
    instance that runs the sweep."""
    from hydra import compose
    from hydra.core.global_hydra import GlobalHydra

    if not GlobalHydra.instance().is_initialized():
        raise RuntimeError("preflight runs inside a Hydra multirun only")
    config_name = config.hydra.job.config_name
    # a user's config folders (hydra.searchpath=[file://...]) hold options the cells choose
    searchpath = [str(o) for o in config.hydra.overrides.hydra if str(o).startswith("hydra.searchpath=")]
    return lambda overrides: compose(config_name=config_name, overrides=[*searchpath, *overrides],
                                     return_hydra_config=True)


class AggregateSweep(Callback):
    """At the end of every multirun: summary tables, plots and the study's claims table in the sweep directory,
    and (with logger=wandb) the summary as one W&B table in a run of its own, tagged with the sweep. A grid in
    which a cell failed then exits non-zero, naming the failed cells."""

    def __init__(self, claims: str | None = None) -> None:
        # the claims file whose verdicts the summary ends with; None: the study's (report.DEFAULT_CLAIMS)
        self.claims = claims

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from slm_sweep.report import write_report
        from slm_sweep.report.sweep_notes import incomplete_cell_groups, incomplete_cells

        sweep_dir = Path(str(config.hydra.sweep.dir))
        # the cells that did not complete, each its job folders (the seeds of a baseline whose result does not
        # depend on the seed are one cell, as the summary counts them)
        try:
            groups = incomplete_cell_groups(sweep_dir)
        except Exception:  # noqa: BLE001 - Hydra would only warn and exit 0, naming none of them: each folder alone
            log.exception("grouping the cells that did not complete failed; each job folder is listed as a cell")
            groups = [[entry] for entry in incomplete_cells(sweep_dir)]
        failed = [entry for jobs in groups for entry in jobs]
        if config.get("eval") and config.eval.get("split", "test") != "test":
            # A hyperparameter search scores the validation split; the tune command reads it, and Optuna writes its
            # own summary. A learning rate that diverges is an ordinary outcome of a search (the tune command
            # leaves it out of the candidates). Optuna records any failed trial as FAIL and applies
            # hydra.sweeper.max_failure_rate, so its sweep's exit status stays Optuna's; a grid (the basic
            # sweeper) whose cell failed otherwise exits non-zero, naming it, as any other grid does.
            for job, why in failed:
                log.warning("failed trial %s: %s", job, why)
            from slm_sweep.sweep.preflight import BASIC_SWEEPER

            grid = str(OmegaConf.select(config, "hydra.sweeper._target_", default=BASIC_SWEEPER)) == BASIC_SWEEPER
            broken = [(job, why) for job, why in failed if not why.startswith("diverged:")]
            if grid and broken:
                raise SystemExit(f"{len(broken)} cell(s) of the search in {sweep_dir} did not complete (a diverged "
                                 "rate is a result; these are not):\n"
                                 + "\n".join(f"  {job}: {why}" for job, why in broken))
            return
        from slm_sweep.report import CLAIMS_METRIC_SWEEP, DEFAULT_CLAIMS, ReportError
        from slm_sweep.report.sweep_notes import preflight_notes, read_plan, sweep_claims_metrics

        # Hydra turns an exception of this callback into a warning and exits 0: every failure of the summary is
        # caught here, and the sweep's exit status (failed cells, a summary that could not be written) is
        # decided after it
        problems: list[str] = []
        report = None
        notes: list[str] = []
        try:
            notes = preflight_notes(read_plan(sweep_dir))
        except Exception:  # noqa: BLE001 - see above; summary.md says what its own reading of the plan finds
            log.exception("reading what the preflight left out failed")
        claims_metrics: dict[str, str] = {}
        ood_claims_metrics: dict[str, str] = {}
        try:
            # a cell that found its finished result in its folder reused it with the claims metric it recorded
            # (no key holds it: it changes no number); the summary reads it on the one this sweep's config names,
            # a dataset's (in-domain rows) and an out-of-domain set's (its rows) apart
            claims_metrics, ood_claims_metrics = sweep_claims_metrics(sweep_dir)
        except Exception:  # noqa: BLE001 - see above; the summary then reads what the results recorded
            log.exception("reading the claims metrics of this sweep's config failed; the summary reads the ones its "
                          "results recorded")
        try:
            # the claims (the study's unless hydra.callbacks.aggregate_sweep.claims names a file), for the cells
            # this sweep has (the others are listed as not covered)
            report = write_report([sweep_dir], sweep_dir, claims=self.claims or DEFAULT_CLAIMS,
                                  claims_metrics=claims_metrics, ood_claims_metrics=ood_claims_metrics,
                                  claims_metrics_from=CLAIMS_METRIC_SWEEP)
        except FileNotFoundError as err:
            log.warning("no sweep summary written: %s", err)
        except ReportError as err:  # the results are kept; only their summary cannot be written honestly
            problems.append(f"no sweep summary written: {err}")
        except Exception as err:  # noqa: BLE001 - see above
            log.exception("writing the sweep summary failed")
            problems.append(f"no sweep summary written: {type(err).__name__}: {err}")
        if report is not None:
            for note in report["claims_metric_notes"]:
                log.warning("%s", note)
            log.info("sweep summary: %s", report["summary_md"])
            from slm_sweep.tracking import wandb_settings

            try:
                settings = wandb_settings(config.get("logger"))
                if settings is not None:
                    log_summary_to_wandb(settings, sweep_dir, report)
            except Exception:  # noqa: BLE001 - W&B holds a copy; summary.md is written
                log.exception("logging the sweep summary to W&B failed; %s has it", report["summary_md"])
        for note in notes:
            log.warning("preflight left out %s", note)
        if failed:
            folders = f", in {len(failed)} job folders (one cell's seeds or attempts in several count once)" \
                if len(groups) != len(failed) else ""
            problems.insert(0, f"{len(groups)} cell(s) of the sweep in {sweep_dir} did not complete{folders}:\n"
                            + "\n".join(f"  {job}: {why}" for job, why in failed))
        if problems:
            raise SystemExit("\n".join(problems))


def sweep_tag(sweep_dir: str | Path) -> str:
    """``sweep-<date>-<time>``: shared by every run of one multirun, so the dashboard can filter on it."""
    return "sweep-" + "-".join(Path(sweep_dir).parts[-2:])


def log_summary_to_wandb(settings, sweep_dir: Path, report: dict[str, Any]) -> None:
    """The sweep's summary rows, its out-of-domain rows and, when checked, its claims (one table each; each
    claim's verdict in the run's summary), in a W&B run of their own whose config holds the report's settings.
    A summary row ends with ``wandb_group``: the W&B groups of its seeds' runs (``row_groups``), so that a row of
    the report can be found in the dashboard. ``settings``: the W&B logger entry of the sweep's config
    (slm_sweep.tracking.wandb_settings); ``report``: what write_report returned."""
    from slm_sweep.report.aggregate import row_metrics
    from slm_sweep.report.claims_output import CSV_COLUMNS, claims_rows
    from slm_sweep.report.tables import ood_columns, summary_columns
    from slm_sweep.tracking import WANDB_GROUP_COLUMN, start_wandb_run

    record = report["record"]
    run = start_wandb_run(
        settings, name=f"{sweep_tag(sweep_dir)}-summary", group="sweep-summary", job_type="summary",
        tags=[sweep_tag(sweep_dir)], config={"sweep_dir": str(sweep_dir), "report": record["settings"],
                                             "git_commit": record["git_commit"]}, out_dir=sweep_dir,
    )
    if run is None:
        return
    import wandb

    def cell(value):
        # a W&B column holds one type: lists and objects (seeds, scored_with) as their JSON text
        return value if value is None or isinstance(value, (str, int, float, bool)) else json.dumps(value, default=str)

    def table(rows: list[dict], columns: list[str]) -> wandb.Table:
        return wandb.Table(columns=columns, data=[[cell(r.get(c)) for c in columns] for r in rows])

    # the columns of summary.csv and summary_ood.csv, then the rows' W&B groups
    rows, ood_rows = report["rows"], report.get("ood_rows") or []
    rows, ood_rows = ([{**row, WANDB_GROUP_COLUMN: row_groups(row)} for row in kind] for kind in (rows, ood_rows))
    logged = {"sweep/summary": table(rows, [*summary_columns(row_metrics(rows)), WANDB_GROUP_COLUMN])}
    if ood_rows:
        logged["sweep/summary_ood"] = table(ood_rows, [*ood_columns(row_metrics(ood_rows)), WANDB_GROUP_COLUMN])
    claims = report.get("claims")
    if claims is not None:
        logged["sweep/claims"] = table(claims_rows(claims), list(CSV_COLUMNS))
        for result in claims.results:
            run.summary[f"claims/{result.claim.id}"] = result.stated_verdict
    run.log(logged)
    run.finish()


def row_groups(row: dict[str, Any]) -> str | None:
    """The W&B groups of the runs of a summary row's seeds (read from their result files, ``result_paths``),
    comma-separated: the configuration's group, and ``<group>-reused`` where a seed is a copy of another folder's
    result; None when none of its files can be read."""
    from slm_sweep.results import read_result
    from slm_sweep.tracking import run_group, scored_split

    groups = set()
    for path in row.get("result_paths") or []:
        record = read_result(path)
        if record and all(record.get(key) for key in ("model", "method", "dataset")):
            groups.add(run_group(record, scored_split(record.get("config"))))
    return ", ".join(sorted(groups)) or None
