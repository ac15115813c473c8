"""Hydra callbacks: keep credentials out of Hydra's config dumps; check what a sweep needs before its first cell;
aggregate a sweep when it ends, and fail it when a cell failed."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, ListConfig, OmegaConf

from slm_sweep.results import RESULT_FILE, read_result, redact, redact_overrides

log = logging.getLogger(__name__)


def scrub_yaml(path: Path) -> None:
    """Rewrite a config dump that Hydra saved, with every credential-like value replaced."""
    if not path.is_file():
        return
    node = OmegaConf.load(path)
    if isinstance(node, ListConfig):
        cleaned: Any = redact_overrides([str(x) for x in node])
    else:
        cleaned = redact(OmegaConf.to_container(node, resolve=False))
        if isinstance(cleaned, dict) and "hydra" in cleaned:
            task = ((cleaned["hydra"].get("overrides") or {}).get("task")) or []
            cleaned["hydra"]["overrides"]["task"] = redact_overrides([str(x) for x in task])
            job = cleaned["hydra"].get("job") or {}
            if job.get("override_dirname"):
                job["override_dirname"] = ",".join(redact_overrides(job["override_dirname"].split(",")))
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


class Preflight(Callback):
    """Before the first cell: check that every model, training dataset and out-of-domain set of the grid can be
    read; leave out the swept values (and out-of-domain sets) that cannot, or refuse the whole sweep (exit
    non-zero) when nothing could run, a fixed value is missing, or preflight.on_missing=refuse (warn: only list
    them). Writes <sweep dir>/preflight.json either way. With preflight.only=true it then lists the cells that
    would run and stops the sweep before any does."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        from slm_sweep.config import ConfigError, validate_preflight
        from slm_sweep.config_sources import use_config_sources
        from slm_sweep.sweep.preflight import apply_plan, plan_grid, write_plan

        use_config_sources(OmegaConf.select(config, "hydra.runtime.config_sources"))
        try:
            validate_preflight(config)
        except ConfigError as error:
            raise SystemExit(f"config error: {error}") from None
        try:
            plan = plan_grid(config, _composer(config))
        except Exception as error:  # noqa: BLE001 - Hydra only warns about a callback's error and runs the cells
            raise SystemExit(f"preflight: the grid could not be checked, so no cell runs: "
                             f"{type(error).__name__}: {error}") from None
        path = write_plan(plan, Path(str(config.hydra.sweep.dir)))
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
    """compose(overrides) -> one cell's config, through the Hydra instance that runs the sweep."""
    from hydra import compose
    from hydra.core.global_hydra import GlobalHydra

    if not GlobalHydra.instance().is_initialized():
        raise RuntimeError("preflight runs inside a Hydra multirun only")
    config_name = config.hydra.job.config_name
    # a user's config folders (hydra.searchpath=[file://...]) hold options the cells choose
    searchpath = [str(o) for o in config.hydra.overrides.hydra if str(o).startswith("hydra.searchpath=")]
    return lambda overrides: compose(config_name=config_name, overrides=[*searchpath, *overrides])


class AggregateSweep(Callback):
    """At the end of every multirun: summary tables, plots and the study's claims table in the sweep directory,
    and (with logger=wandb) the summary as one W&B table in a run of its own, tagged with the sweep. A grid in
    which a cell failed then exits non-zero, naming the failed cells."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from slm_sweep.report import write_report
        from slm_sweep.sweep.preflight import read_plan

        sweep_dir = Path(str(config.hydra.sweep.dir))
        plan = read_plan(sweep_dir)
        notes = preflight_notes(plan)
        failed = failed_cells(sweep_dir)
        if config.get("eval") and config.eval.get("split", "test") != "test":
            # A hyperparameter search scores the validation split and Optuna writes its own summary. A failed
            # trial (say, a learning rate that diverges) is an ordinary outcome of a search: Optuna records it as
            # FAIL and applies hydra.sweeper.max_failure_rate, so the sweep's exit status stays Optuna's.
            for job, why in failed:
                log.warning("failed trial %s: %s", job, why)
            return
        from slm_sweep.report import DEFAULT_CLAIMS, ReportError

        # Hydra turns an exception of this callback into a warning and exits 0: every failure of the summary is
        # caught here, and the sweep's exit status (failed cells, a summary that could not be written) is
        # decided after it
        problems: list[str] = []
        report = None
        try:
            # the study's claims, for the cells this sweep has (the others are listed as not covered)
            report = write_report([sweep_dir], sweep_dir, claims=DEFAULT_CLAIMS)
        except FileNotFoundError as err:
            log.warning("no sweep summary written: %s", err)
        except ReportError as err:  # the results are kept; only their summary cannot be written honestly
            problems.append(f"no sweep summary written: {err}")
        except Exception as err:  # noqa: BLE001 - see above
            log.exception("writing the sweep summary failed")
            problems.append(f"no sweep summary written: {type(err).__name__}: {err}")
        if report is not None:
            extra = _markdown_notes(notes, failed, sweep_dir)
            if extra:
                with open(report["summary_md"], "a", encoding="utf-8") as f:
                    f.write("\n".join(extra) + "\n")
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
            problems.insert(0, f"{len(failed)} cell(s) of the sweep in {sweep_dir} did not complete:\n"
                            + "\n".join(f"  {job}: {why}" for job, why in failed))
        if problems:
            raise SystemExit("\n".join(problems))


def preflight_notes(plan: dict | None) -> list[str]:
    """What the preflight left out of the sweep and why, one line each."""
    if not plan:
        return []
    reasons = plan.get("reasons") or {}
    notes = [f"{key}={value}: {reasons.get(f'{key}={value}', 'missing')}"
             for key, values in (plan.get("left_out") or {}).items() for value in values]
    notes += [f"out-of-domain set {name}: {reasons.get(f'ood set {name}', 'missing')}"
              for name in plan.get("ood_sets_dropped") or []]
    notes += [f"dedup set {name}: cannot be read, so the trained cells were not deduplicated against it "
              "(dataset.dedup.on_missing=skip; result.json's dedup.skipped)" for name in plan.get("dedup_skipped") or []]
    return notes


def failed_cells(sweep_dir: Path) -> list[tuple[Path, str]]:
    """(job dir, '<status>: <error>') for every job of the sweep that has no completed result.json, unless
    another folder of the sweep completed the same cell (same evaluation key): a requeued sweep whose jobs were
    numbered otherwise resumes an interrupted cell in another folder."""
    if not sweep_dir.is_dir():
        return []
    jobs = {p.parent.parent for p in sweep_dir.rglob(".hydra/overrides.yaml")}
    jobs |= {p.parent for p in sweep_dir.rglob(RESULT_FILE)}
    records = {job: read_result(job) for job in sorted(jobs)}
    done = {(r.get("identity") or {}).get("evaluation_key") for r in records.values()
            if r is not None and r.get("status") == "completed"} - {None}
    out = []
    for job, record in records.items():
        if record is not None and (record.get("identity") or {}).get("evaluation_key") in done:
            continue
        if record is None:
            out.append((job, f"no {RESULT_FILE} (the cell stopped before writing it)"))
        elif record.get("status") != "completed":
            error = " ".join(str(record.get("error") or "no error recorded").split())
            out.append((job, f"{record.get('status')}: {error[:500]}"))
    return out


def _markdown_notes(notes: list[str], failed: list[tuple[Path, str]], sweep_dir: Path) -> list[str]:
    lines: list[str] = []
    if notes:
        lines += ["", "## Left out by the preflight", "",
                  "These could not be read when the sweep started (details in preflight.json); the sweep ran "
                  "without them:",
                  "", *(f"- {note}" for note in notes)]
    if failed:
        lines += ["", "## Cells that did not complete", "",
                  *(f"- `{job.relative_to(sweep_dir)}`: {why}" for job, why in failed)]
    return lines


def sweep_tag(sweep_dir: str | Path) -> str:
    """``sweep-<date>-<time>``: shared by every run of one multirun, so the dashboard can filter on it."""
    return "sweep-" + "-".join(Path(sweep_dir).parts[-2:])


def log_summary_to_wandb(settings, sweep_dir: Path, report: dict[str, Any]) -> None:
    """The sweep's summary rows, its out-of-domain rows and, when checked, its claims (one table each; each
    claim's verdict in the run's summary), in a W&B run of their own whose config holds the report's settings.
    ``settings``: the W&B logger entry of the sweep's config (slm_sweep.tracking.wandb_settings); ``report``:
    what write_report returned."""
    from slm_sweep.report.claims import CSV_COLUMNS, claims_rows
    from slm_sweep.tracking import start_wandb_run

    record = report["record"]
    run = start_wandb_run(
        settings, name=f"{sweep_tag(sweep_dir)}-summary", group="sweep-summary", job_type="summary",
        tags=[sweep_tag(sweep_dir)], config={"sweep_dir": str(sweep_dir), "report": record["settings"],
                                             "git_commit": record["git_commit"]}, out_dir=sweep_dir,
    )
    if run is None:
        return
    import wandb

    def table(rows: list[dict], columns: list[str]) -> wandb.Table:
        return wandb.Table(columns=columns, data=[[r.get(c) for c in columns] for r in rows])

    rows, ood_rows = report["rows"], report.get("ood_rows") or []
    logged = {"sweep/summary": table(rows, list(rows[0]) if rows else [])}
    if ood_rows:
        logged["sweep/summary_ood"] = table(ood_rows, list(ood_rows[0]))
    claims = report.get("claims")
    if claims is not None:
        logged["sweep/claims"] = table(claims_rows(claims), list(CSV_COLUMNS))
        for result in claims.results:
            run.summary[f"claims/{result.claim.id}"] = result.stated_verdict
    run.log(logged)
    run.finish()
