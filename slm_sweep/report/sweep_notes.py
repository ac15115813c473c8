"""What a sweep folder says about itself besides its results: what the preflight left out (preflight.json) and
which of its cells did not complete. summary.md ends with both, whether the end-of-sweep callback or
``python -m slm_sweep.report`` writes it. ``unwritten_jobs`` and ``job_cell``: the jobs killed before writing a
result.json and what their .hydra/ says they ran, which the report counts as lost seeds (collect.unwritten_cells)."""

from __future__ import annotations

import json
from pathlib import Path

from slm_sweep.folder_lock import held_elsewhere
from slm_sweep.results import FAILED_ATTEMPT_FILE, PREFLIGHT_FILE, RESULT_FILE, SUPERSEDED, read_result


def read_plan(sweep_dir: str | Path) -> dict | None:
    """The preflight's record of a sweep (preflight.json), None without a readable one: a file that is no JSON, or
    whose fields the report reads are not of their kind (hand-edited, another tool's) is none."""
    try:
        plan = json.loads((Path(sweep_dir) / PREFLIGHT_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return plan if _well_formed(plan) else None


# the fields of a plan that the report reads, each absent, null or of its kind
_PLAN_FIELDS = {"left_out": dict, "reasons": dict, "ood_sets_dropped": list, "dedup_skipped": list}


def _well_formed(plan) -> bool:
    return (isinstance(plan, dict)
            and all(plan.get(name) is None or isinstance(plan[name], kind) for name, kind in _PLAN_FIELDS.items())
            and all(isinstance(values, list) for values in (plan.get("left_out") or {}).values()))


def ran_cells(plan: dict) -> bool:
    """Whether the launch whose plan (read_plan's) this is ran cells: not refused by its preflight, nor a listing
    (preflight.only=true)."""
    return not plan.get("refused") and not plan.get("preflight_only")


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


def _done(record: dict | None) -> bool:
    return isinstance(record, dict) and record.get("status") == "completed"


def _job_records(sweep_dir: Path) -> tuple[dict[Path, dict | None], dict[Path, dict | None]]:
    """Every job folder of the sweep and its result.json (None where it has none), and the results a rerun set
    aside (superseded*/), which are no job's, by their folders."""
    if not sweep_dir.is_dir():
        return {}, {}
    jobs = {p.parent.parent for p in sweep_dir.rglob(".hydra/overrides.yaml")}
    jobs |= {p.parent for p in sweep_dir.rglob(RESULT_FILE)}
    aside = {job for job in jobs if any(part.startswith(SUPERSEDED) for part in job.relative_to(sweep_dir).parts)}
    return ({job: _shaped(read_result(job)) for job in sorted(jobs - aside)},
            {job: _shaped(read_result(job)) for job in sorted(aside)})


def _shaped(record: dict | None) -> dict | None:
    """A record whose identity or config is no mapping (hand-edited, another tool's) read as one without them."""
    if not isinstance(record, dict):
        return None
    return {**record, **{key: None for key in ("identity", "config") if not isinstance(record.get(key), (dict, type(None)))}}


def _completed(records: dict[Path, dict | None], set_aside: dict[Path, dict | None]) -> tuple[set[str], list]:
    """The evaluation keys and the configs of the completed records among ``records`` (by job folder), with the
    evaluation keys of the completed results a rerun set aside (``set_aside``, by their superseded*/ folders): as
    the report reads them (collect._grid_points), but one that the recomputation of its own job folder set aside and
    did not complete (``resume.enabled=false``) is replaced by that attempt, which is listed."""
    def key(record):
        return (record.get("identity") or {}).get("evaluation_key")

    completed = [r for r in records.values() if _done(r)]
    recomputing = {(job, key(r)) for job, r in records.items() if isinstance(r, dict) and not _done(r) and key(r)}
    aside = [r for folder, r in set_aside.items() if _done(r) and (folder.parent, key(r)) not in recomputing]
    return {key(r) for r in (*completed, *aside)} - {None}, [r.get("config") for r in completed]


def incomplete_cells(sweep_dir: Path) -> list[tuple[Path, str]]:
    """(job dir, '<status>: <error>') for every job of the sweep that has no completed result.json (failed,
    diverged, interrupted, still running, no readable result.json, or a last attempt that failed beside a finished
    result in result.failed.json: not only failed ones), unless another
    folder of the sweep completed the same cell (same evaluation key): a requeued sweep whose jobs were numbered
    otherwise resumes an interrupted cell in another folder."""
    return [(job, why) for job, why, _ in _listed(Path(sweep_dir))]


def incomplete_cell_groups(sweep_dir: Path) -> list[list[tuple[Path, str]]]:
    """``incomplete_cells`` grouped by cell, as the report counts them ("Skipped cells"): the seeds of a baseline
    whose result does not depend on the seed, or a cell's attempts in several folders of a requeued sweep, are
    one."""
    return _by_cell(_listed(Path(sweep_dir)))


def _listed(sweep_dir: Path) -> list[tuple[Path, str, dict | None]]:
    records, aside = _job_records(sweep_dir)
    return _not_completed(records, *_completed(records, aside))


def _not_completed(records: dict[Path, dict | None], done: set[str],
                   finished: list) -> list[tuple[Path, str, dict | None]]:
    """``incomplete_cells`` of the jobs ``records`` holds, given the evaluation keys and configs completed
    (``_completed``) in any folder the report reads, each with the record it lists (None: none could be read)."""
    from .collect import other_cell

    out = []
    for job, record in records.items():
        if (holder := held_elsewhere(job)) is not None:  # whatever its files say until that launch writes its own
            out.append((job, f"running: in another launch ({holder})", record))
            continue
        attempt = read_result(job / FAILED_ATTEMPT_FILE)
        # of another cell, the attempt is the folder's cell and result.json an earlier run's, which the report
        # does not count (collect.failed_attempt): not listed once the attempt's configuration completed
        other = attempt is not None and record is not None and other_cell(attempt, record)
        if attempt is not None and attempt.get("config") in finished:
            if other:
                continue  # the folder's cell completed in another folder of the sweep (a requeue)
            attempt = None  # the same configuration completed in another folder of the sweep (a requeue)
        if attempt is not None:  # the last attempt failed early; the result.json it left is another run's
            held = ("finished result" if (record or {}).get("status") == "completed" else
                    f"{(record or {}).get('status')} record, kept for its keys and trained weights")
            whose = "another cell's" if other else "an earlier run's"
            out.append((job, f"{attempt.get('status')}: {_error(attempt)} (in {FAILED_ATTEMPT_FILE}; the folder's "
                             f"{RESULT_FILE} is {whose} {held})", attempt if other else record))
            continue
        if record is not None and (record.get("identity") or {}).get("evaluation_key") in done:
            continue
        if (record is not None and record.get("status") not in ("completed", "running")
                and not (record.get("identity") or {}).get("evaluation_key") and record.get("config") in finished):
            continue  # failed before its keys were computed, and the same configuration completed since elsewhere
        if record is None:
            out.append((job, _missing_result(job), None))
        elif record.get("status") == "running":
            out.append((job, "running: still running, or stopped without recording why" + _kept_aside(job, record),
                        record))
        elif record.get("status") != "completed":
            out.append((job, f"{record.get('status')}: {_error(record)}{_kept_aside(job, record)}", record))
    return out


def _kept_aside(job: Path, record: dict) -> str:
    """Where the finished result of the same evaluation key that this attempt set aside to compute again is kept
    (``resume.enabled=false``: run.py moves it to superseded*/ first), as a note; '' where there is none."""
    key = (record.get("identity") or {}).get("evaluation_key")
    if not key:
        return ""
    for path in sorted(job.glob(f"{SUPERSEDED}*/{RESULT_FILE}")):
        aside = read_result(path.parent)
        if aside and aside.get("status") == "completed" and (aside.get("identity") or {}).get("evaluation_key") == key:
            return (f" (the finished result of this configuration that it was computing again is kept in "
                    f"`{path.parent.name}/`; running it again with resume.enabled=true, or a sweep without "
                    f"resume.enabled=false, reuses it)")
    return ""


def _by_cell(listed: list[tuple[Path, str, dict | None]]) -> list[list[tuple[Path, str]]]:
    """The listed jobs grouped by the cell each is of, as the report groups their records (collect.group_keys); a
    job without a readable record is a cell of its own."""
    from .collect import group_keys

    def groupable(record: dict) -> bool:
        try:
            group_keys([record])
        except Exception:  # noqa: BLE001 - a malformed record (a name that is no string, a config that is no mapping)
            return False
        return True

    # a record as the report reads it (collect.read_result checks these names; a missing one is unknown here); a
    # malformed one, which the report skips, is a cell of its own
    readable = [(job, read) for job, _, record in listed if isinstance(record, dict)
                for read in [{**dict.fromkeys(("model", "method", "dataset", "seed")), **record,
                              "result_path": str(job / RESULT_FILE)}] if groupable(read)]
    try:
        keys = dict(zip((job for job, _ in readable), group_keys([record for _, record in readable])))
    except Exception:  # noqa: BLE001 - records that group alone but not together: each job alone
        keys = {}
    groups: dict = {}
    for job, why, _ in listed:
        groups.setdefault(keys.get(job, ("job", job)), []).append((job, why))
    return list(groups.values())


def _missing_result(job: Path) -> str:
    """Why a job has no readable result.json: none was written, or the one written cannot be read."""
    path = job / RESULT_FILE
    if not path.exists():
        return f"no {RESULT_FILE} (the cell stopped before writing it)"
    try:
        json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        return f"{RESULT_FILE} unreadable: {' '.join(str(err).split())[:500]}"
    return f"{RESULT_FILE} holds no record"


def _error(record: dict) -> str:
    return " ".join(str(record.get("error") or "no error recorded").split())[:500]


def unwritten_jobs(dirs) -> list[Path]:
    """The job folders of sweeps under ``dirs`` that Hydra started (.hydra/) but that hold no result.json: cells
    killed before writing their first record (out of memory, a time limit), each folder once. A single run
    (``python -m slm_sweep`` without -m) is left out: refused for its config, it stops before writing anything, and
    it is no seed of a planned grid."""
    found: dict[Path, Path] = {}
    for folder in dirs:
        for job, record in _job_records(Path(folder))[0].items():
            if record is None and not (job / RESULT_FILE).exists() and not (job / FAILED_ATTEMPT_FILE).exists() \
                    and _hydra_mode(job) != "RUN":
                found.setdefault(job.resolve(), job)
    return list(found.values())


def _hydra_mode(job: Path) -> str | None:
    """RUN or MULTIRUN, as the job's .hydra/hydra.yaml records it; None where it does not say."""
    hydra = (_yaml(job / ".hydra" / "hydra.yaml") or {}).get("hydra")
    return str(hydra.get("mode")) if isinstance(hydra, dict) and hydra.get("mode") else None


# the groups whose config names a cell, and the seed; the package's defaults (conf/config.yaml) where a job's
# .hydra/ does not say
CELL_GROUPS = ("model", "method", "dataset")


def _yaml(path: Path):
    import yaml

    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None


def _plain(value) -> bool:
    """A value as Hydra composed it, not an interpolation it resolves later (``${..r}``)."""
    return not (isinstance(value, str) and "${" in value)


def _package_defaults() -> dict:
    """The groups and seed conf/config.yaml composes by default: {model: tiny, method: lora, dataset: ..., seed}."""
    config = _yaml(Path(__file__).resolve().parents[1] / "conf" / "config.yaml")
    if not isinstance(config, dict):
        return {}
    found = {key: value for entry in config.get("defaults") or [] if isinstance(entry, dict)
             for key, value in entry.items() if key in (*CELL_GROUPS, "experiment")}
    found["seed"] = config.get("seed")
    return found


def job_cell(job: Path) -> dict:
    """What a job folder's .hydra/ says about the cell it ran: ``model``, ``method``, ``dataset`` and ``seed`` (None
    where nothing says: an experiment file chose it and config.yaml is missing), ``overrides`` (``{key: value}``
    of its dotted ``key=value`` overrides, values as YAML reads them), ``config`` (the composed config.yaml, its
    interpolations unresolved; {} without one) and ``validation`` (a learning-rate search's cell)."""
    hydra = job / ".hydra"
    config = _yaml(hydra / "config.yaml")
    config = config if isinstance(config, dict) else {}
    runtime = ((_yaml(hydra / "hydra.yaml") or {}).get("hydra") or {}).get("runtime") or {}
    choices = runtime.get("choices") if isinstance(runtime.get("choices"), dict) else {}
    given: dict[str, str] = {}
    for override in _yaml(hydra / "overrides.yaml") or []:
        key, sign, value = str(override).lstrip("+~").partition("=")
        if sign:
            given[key.strip()] = value.strip()
    defaults = _package_defaults()
    experiment = choices.get("experiment", given.get("experiment", defaults.get("experiment")))
    fallback = defaults if experiment in (None, "null") else {}  # an experiment may set any of them
    cell: dict = {}
    for group in CELL_GROUPS:
        composed = config.get(group) if isinstance(config.get(group), dict) else {}
        name = composed.get("name") if _plain(composed.get("name")) else None
        cell[group] = next((str(v) for v in (name, given.get(f"{group}.name"), choices.get(group), given.get(group),
                                             fallback.get(group)) if v not in (None, "", "null")), None)
    seed = next((v for v in (config.get("seed"), given.get("seed"), fallback.get("seed")) if v is not None), None)
    try:
        cell["seed"] = None if isinstance(seed, bool) or seed is None else int(seed)
    except ValueError:
        cell["seed"] = None
    cell["overrides"] = {key: _value(value) for key, value in given.items() if "." in key}
    cell["config"] = config
    split = (config.get("eval") or {}).get("split") if isinstance(config.get("eval"), dict) else None
    cell["validation"] = "val" in (split, cell["overrides"].get("eval.split"))
    return cell


def job_claims_metric(job: Path) -> str | None:
    """The claims metric of its dataset that a job folder's .hydra/config.yaml (written by the job's latest launch,
    also one that reused the folder's finished result) says, resolved as the cell resolves it; None where it does
    not say or cannot be read."""
    from omegaconf import OmegaConf

    from slm_sweep.settings import CLAIMS_METRIC_RESOLVER, claims_metric_for

    try:
        if not OmegaConf.has_resolver(CLAIMS_METRIC_RESOLVER):
            OmegaConf.register_new_resolver(CLAIMS_METRIC_RESOLVER, claims_metric_for)
        metric = OmegaConf.select(OmegaConf.load(job / ".hydra" / "config.yaml"), "dataset.claims_metric",
                                  default=None)
    except Exception:  # noqa: BLE001 - a config that cannot be read or resolved says nothing
        return None
    return metric.removeprefix("accuracy_") if isinstance(metric, str) and metric else None


def _set_claims_metric(name: str) -> str | None:
    """The claims metric an out-of-domain set's config (conf/dataset/, or a search-path folder the sweep named)
    says now; None without one that reads."""
    from .claims_metric import configured_claims_metric

    try:
        return configured_claims_metric(name)
    except Exception:  # noqa: BLE001 - the report still runs on what the entries recorded
        return None


def sweep_claims_metrics(sweep_dir: str | Path) -> tuple[dict[str, str], dict[str, str]]:
    """({dataset: claims metric}, {out-of-domain set: claims metric}) as the sweep's own config reads them, for each
    whose completed results in the sweep's job folders recorded another one: cells that found their finished
    result in their folder reused it as it is (their claims metric is in no key: it changes no number), whatever
    the sweep's ``dataset.claims_metric`` says now. A dataset's is its jobs' .hydra/config.yaml's (the latest
    written, where they differ), compared with the in-domain results only; an out-of-domain set's, its config's
    now, compared with the results' ``eval_sets`` entries only (a job that trained on a set says nothing of the
    set's out-of-domain rows, nor the reverse), and passed apart (``write_report``'s ``ood_claims_metrics``). A
    metric none of those results holds an accuracy of is left out, with a warning (the deltas stay on what the
    results recorded)."""
    import logging

    from .claims_metric import entry_claims_metric, held_metrics, recorded_claims_metric

    log = logging.getLogger(__name__)
    records, _ = _job_records(Path(sweep_dir))
    completed = {job: r for job, r in records.items() if r is not None and r.get("status") == "completed"}

    def written(job: Path) -> float:
        try:
            return (job / ".hydra" / "config.yaml").stat().st_mtime
        except OSError:
            return 0.0

    asked: dict[str, str] = {}
    for job in sorted(completed, key=written):  # the latest launch last
        metric = job_claims_metric(job)
        if metric is not None and isinstance(completed[job].get("dataset"), str):
            asked[completed[job]["dataset"]] = metric
    recorded: dict[str, set[str | None]] = {}
    ood_recorded: dict[str, set[str | None]] = {}
    for record in completed.values():
        recorded.setdefault(record.get("dataset"), set()).add(recorded_claims_metric(record))
        for name, entry in (record.get("eval_sets") or {}).items():
            ood_recorded.setdefault(name, set()).add(entry_claims_metric(entry))
    ood_asked = {name: metric for name in ood_recorded if (metric := _set_claims_metric(name)) is not None}

    def read_on(asked: dict[str, str], recorded: dict[str, set[str | None]], held: dict[str, set[str]],
                rows: str) -> dict[str, str]:
        overrides = {}
        for name, metric in asked.items():
            if not (recorded.get(name, set()) - {None, metric}):
                continue  # what the results recorded is what the sweep reads them on
            if metric not in held.get(name, set()):
                log.warning("%s%s: this sweep's config reads it on %s, which none of its results holds; its deltas "
                            "stay on what its results recorded", name, rows, metric)
                continue
            overrides[name] = metric
        return overrides

    results = list(completed.values())
    return (read_on(asked, recorded, held_metrics(results, out_of_domain=False), ""),
            read_on(ood_asked, ood_recorded, held_metrics(results, in_domain=False), " (out of domain)"))


def _value(text: str):
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def never_started(plan: dict | None, jobs: int) -> int:
    """How many of the cells a grid's preflight planned to run have no job folder: a sweep stopped (Ctrl-C, a
    SIGTERM, a time limit) before it reached them, or one still running. Counted, not named: a job folder's
    overrides are not matched to the preflight's labels. 0 for an Optuna search (its trials are not planned)."""
    if not plan or not ran_cells(plan) or plan.get("sweeper") != _BASIC_SWEEPER:
        return 0
    planned = plan.get("cells_to_run")
    return max(0, planned - jobs) if isinstance(planned, int) else 0


_BASIC_SWEEPER = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"  # preflight.BASIC_SWEEPER (no import)


def describe_cell(jobs: list[tuple[Path, str]], sweep_dir: Path) -> str:
    """One cell of ``incomplete_cell_groups`` as summary.md lists it, its job folders named relative to
    ``sweep_dir``."""
    if len(jobs) == 1:
        (job, why), = jobs
        return f"`{job.relative_to(sweep_dir)}`: {why}"
    whys = {why for _, why in jobs}
    if len(whys) == 1:
        return (", ".join(f"`{job.relative_to(sweep_dir)}`" for job, _ in jobs)
                + f" (one cell, run in {len(jobs)} job folders): {whys.pop()}")
    return f"one cell, run in {len(jobs)} job folders: " + "; ".join(f"`{job.relative_to(sweep_dir)}`: {why}"
                                                                      for job, why in jobs)


def sweep_notes_markdown(notes: list[str], failed: list[list[tuple[Path, str]]], sweep_dir: Path,
                         unstarted: int = 0) -> list[str]:
    """``failed``: the cells that did not complete, each its job folders (``incomplete_cell_groups``)."""
    lines: list[str] = []
    if notes:
        lines += ["", "## Left out by the preflight", "",
                  "These could not be read when the sweep started (details in preflight.json); the sweep ran "
                  "without them:",
                  "", *(f"- {note}" for note in notes)]
    if failed or unstarted:
        lines += ["", "## Cells that did not complete", "",
                  *(f"- {describe_cell(jobs, sweep_dir)}" for jobs in failed)]
    if unstarted:
        lines.append(f"- {unstarted} planned cell{'s' * (unstarted != 1)} never started: the sweep was stopped before "
                     f"{'them' if unstarted != 1 else 'it'}, or is still running ({PREFLIGHT_FILE} lists the cells "
                     "it planned; the same command runs what is missing and reuses what completed)")
    return lines


def sweep_sections(dirs) -> list[str]:
    """The markdown sections of every sweep folder among ``dirs``: what its preflight left out, its cells that
    did not complete (in any folder of ``dirs``)."""
    records = {Path(folder): _job_records(Path(folder)) for folder in dirs}
    # a cell interrupted in one folder and completed in another of the report (a resumed sweep) did complete
    completed = _completed({job: r for jobs, _ in records.values() for job, r in jobs.items()},
                           {folder: r for _, aside in records.values() for folder, r in aside.items()})
    lines: list[str] = []
    for folder, (jobs, _) in records.items():
        plan = read_plan(folder)
        # counted for a report of one sweep folder only: the same command run again starts another folder, whose
        # jobs would have to be matched to this plan's cells to say which of them started there
        unstarted = never_started(plan, len(jobs)) if len(records) == 1 else 0
        lines += sweep_notes_markdown(preflight_notes(plan), _by_cell(_not_completed(jobs, *completed)),
                                      folder, unstarted)
    return lines
