"""Find, read and deduplicate the result files of a sweep (see docs/results.md).

A record is the parsed ``result.json`` of one cell (model × method × dataset × seed) plus a ``result_path`` key
naming the file it came from. Reading never raises on a bad file: an unreadable or malformed file is logged with
its path and skipped.

Cells are told apart by their identity (``identity`` in result.json, see slm_sweep/identity.py): runs with the
same evaluation key computed the same thing, so one is kept (a completed original rather than a copy, then the
most recent ``finished_at``) and a seed-independent baseline copied into every seed counts once. Records written
before identities existed are keyed by model × method × dataset × seed; a record without an identity (a cell that
failed before computing it, a baseline copy written without one) belongs with a record of the same settings that
has one (``group_keys``).

A cell killed before it wrote a result.json leaves only the job folder Hydra started (``.hydra/``): it is read
from there as a lost seed of its configuration (``unwritten_cells``; ``Collection.cells``), as a seed that
diverged is, so that the rows and claims do not read its survivors as all there was. A rerun with other settings
that failed early in a folder holding an earlier run's finished result (or an unfinished one that has its keys)
leaves its failure in result.failed.json beside it (run.py): where that attempt is of another cell, it is the
folder's cell, a lost seed of its own configuration, and the earlier result is read as set aside
(``failed_attempt``).

Per-question correctness comes from the cell's ``predictions.jsonl`` beside its result.json
(``question_scores``), keyed by the question's ``index`` in its evaluation set and its text, and only when that
file agrees with result.json (as many rows as ``n_eval``, the same accuracy).
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path
from typing import Any

from slm_sweep.results import (
    FAILED_ATTEMPT_FILE,
    PREDICTIONS_FILE,
    RESULT_FILE,
    SCHEMA_VERSION,
    STATUSES,
    SUPERSEDED,
)
from slm_sweep.scoring import PRIMARY_METRIC, accuracy_key

log = logging.getLogger(__name__)

COMPLETED = "completed"
# the status of a cell killed before it wrote a result.json: "seed 2 left no result.json"
UNWRITTEN = "left no result.json"
PRIMARY_ACCURACY = accuracy_key(PRIMARY_METRIC)
# A question's key in every cell that scored it: its position in the evaluation set and its text (as the text's
# hash: it is compared within one process only, and the keys of a large sweep stay small).
QuestionKey = tuple[int, int]
# per model × method × dataset × settings, the records with an identity per configuration key
Runs = dict[tuple, dict[str | None, list[dict[str, Any]]]]

_EPOCH = datetime.min.replace(tzinfo=timezone.utc)


class NoResultsError(FileNotFoundError):
    """No result.json was found under any of the given directories."""


class ReportError(ValueError):
    """Results that cannot be aggregated honestly; the message names the files."""


class ValidationSplitCell(ValueError):
    """A cell scored on the validation split (a learning-rate search): slm_sweep.tune reads it, a report does not."""


class NoQuestionData(ValueError):
    """A cell's per-question scores cannot be read; the message says why."""


@dataclass
class Collection:
    """Everything read from a set of directories."""

    dirs: list[Path]
    files: list[Path] = field(default_factory=list)  # every result.json found, readable or not
    records: list[dict[str, Any]] = field(default_factory=list)  # one per cell, any status
    malformed: list[tuple[Path, str]] = field(default_factory=list)  # (file, reason)
    validation: list[Path] = field(default_factory=list)  # cells of a learning-rate search, left out
    duplicates: list[tuple[Path, Path]] = field(default_factory=list)  # (kept, dropped)
    # (kept, copy): a completed cell whose result is a copy of the kept one (a baseline reused for another
    # seed), read and counted once
    copies: list[tuple[Path, Path]] = field(default_factory=list)
    # completed results a rerun into the same folder set aside (superseded*/, or left as result.json beside the
    # rerun's failure of other settings: failed_attempts): points of the grid, read like any cell, or replaced by
    # the rerun and left out (_grid_points says which): one whose recomputation did not complete too (the cell is
    # that attempt)
    set_aside: list[Path] = field(default_factory=list)
    replaced: list[Path] = field(default_factory=list)
    # result.failed.json files of another cell than the result.json beside them, read as cells
    failed_attempts: list[Path] = field(default_factory=list)
    # cells killed before writing a result.json (a job folder with .hydra/ and no result): a record each, of status
    # UNWRITTEN, with the configuration of the cells it is a seed of (``unwritten_cells``), so that the rows and
    # claims count it as a lost seed, as one that diverged; and those whose configuration cannot be told
    # ({job, model, method, dataset, seed}, None where unknown)
    unwritten: list[dict[str, Any]] = field(default_factory=list)
    unattributed: list[dict[str, Any]] = field(default_factory=list)

    @property
    def cells(self) -> list[dict[str, Any]]:
        """Every cell, one record each: ``records`` and the ``unwritten`` ones (what the rows count as lost)."""
        return [*self.records, *self.unwritten]

    @property
    def completed(self) -> list[dict[str, Any]]:
        return [r for r in self.records if r["status"] == COMPLETED]

    @property
    def completed_set_aside(self) -> int:
        """Of the ``completed`` cells, those read from results a rerun set aside (``set_aside``)."""
        paths = {str(path) for path in self.set_aside}
        return sum(r.get("result_path") in paths for r in self.completed)

    @property
    def rows_without_reference(self) -> dict[str, dict[str, int]]:
        """Per dataset and source split, the rows its completed cells left out for want of a numeric reference
        (result.json ``skipped_rows``: unparsable answers, questions asking who): the largest count any cell read,
        since a cell that needs no training split reads none of its rows."""
        return self._largest_counts("skipped_rows")

    @property
    def rows_asking_who(self) -> dict[str, dict[str, int]]:
        """Of ``rows_without_reference``, the questions asking who (result.json ``skipped_rows_asking_who``)."""
        return self._largest_counts("skipped_rows_asking_who")

    def _largest_counts(self, key: str) -> dict[str, dict[str, int]]:
        found: dict[str, dict[str, int]] = {}
        for record in self.completed:
            for split, count in (record.get(key) or {}).items():
                if isinstance(count, int) and count > 0:
                    by_split = found.setdefault(str(record["dataset"]), {})
                    by_split[str(split)] = max(by_split.get(str(split), 0), count)
        return found

    @property
    def status_counts(self) -> Counter:
        """Every cell per status, those killed before writing a result.json (UNWRITTEN) included."""
        return Counter(r["status"] for r in self.cells)

    @property
    def cell_commits(self) -> Counter:
        """Completed cells per git commit of the code that computed them ("unknown" where none is recorded)."""
        return Counter(str(r.get("git_commit") or "unknown") for r in self.completed)

    @property
    def trained_elsewhere(self) -> Counter:
        """Completed cells that re-score weights trained at another commit than their own, per that commit
        (``training_provenance.git_commit``; "unknown" where the training run is not recorded)."""
        return Counter(commit for r in self.completed
                       if (commit := training_commit(r)) is not None and commit != str(r.get("git_commit") or "unknown"))

    def cell_hardware(self, stage: str) -> Counter:
        """Completed cells per chip and number format of ``stage``: ``eval`` (``NVIDIA H200, bfloat16``) or
        ``train`` (``NVIDIA H200, bf16-mixed``; cells that trained nothing are left out). "unknown" where a
        record has no placement (older result files)."""
        counts: Counter = Counter()
        for record in self.completed:
            if stage == "train" and not number((record.get("metrics") or {}).get("train_steps")):
                continue
            counts[placement_label(record, stage)] += 1
        return counts

    @property
    def skipped_counts(self) -> dict[str, int]:
        """Cells per status other than completed, known statuses first (zeros included), then any other: UNWRITTEN
        counts the cells killed before writing a result.json, those whose row cannot be told (``unattributed``)
        included."""
        counts = self.status_counts + Counter({UNWRITTEN: len(self.unattributed)})
        others = sorted(s for s in counts if s not in STATUSES)
        return {s: counts.get(s, 0) for s in (*(s for s in STATUSES if s != COMPLETED), *others)}


def training_commit(record: dict[str, Any]) -> str | None:
    """The commit of the code that trained a re-scored cell's weights ("unknown" where not recorded); None for a
    cell that trained its own weights or none (its own ``git_commit`` covers it)."""
    provenance = record.get("training_provenance")
    if isinstance(provenance, dict):
        return str(provenance.get("git_commit") or "unknown")
    return "unknown" if record.get("trained_in") else None


def placement_label(record: dict[str, Any], stage: str) -> str:
    """Where and in which number format a cell ran ``stage``, as ``chip, format``; "unknown" without a record."""
    placement = (record.get("placement") or {}).get(stage)
    if not isinstance(placement, dict) or not placement.get("device"):
        return "unknown"
    chip = placement.get("device_name") or placement["device"]
    number_format = placement.get("precision") if stage == "train" else placement.get("dtype")
    return f"{chip}, {number_format}" if number_format else str(chip)


# ---------------------------------------------------------------- finding and reading files


def find_result_files(dirs: Iterable[str | os.PathLike], set_aside: bool = False) -> list[Path]:
    """Every result.json under ``dirs`` (recursively), each file once, in a stable order: the cells' own, or with
    ``set_aside`` those in folders a rerun set aside (``superseded*``: sweep.resume.set_aside_earlier).

    A path may also name a result.json directly. Raises FileNotFoundError for a path that does not exist.
    """
    found: list[Path] = []
    seen: set[Path] = set()
    for d in dirs:
        root = Path(d)
        if not root.exists():
            raise FileNotFoundError(f"directory does not exist: {root}")
        if root.is_file():
            candidates = [root] if root.name == RESULT_FILE and not set_aside else []
        else:
            candidates = []
            for parent, subdirs, files in os.walk(root):
                inside = any(part.startswith(SUPERSEDED) for part in Path(parent).relative_to(root).parts)
                if not set_aside:
                    subdirs[:] = [d for d in subdirs if not d.startswith(SUPERSEDED)]
                subdirs.sort()
                if RESULT_FILE in files and inside == set_aside:
                    candidates.append(Path(parent) / RESULT_FILE)
        for path in candidates:
            key = path.resolve()
            if key not in seen:  # overlapping arguments must not look like duplicate cells
                seen.add(key)
                found.append(path)
    return found


def number(value: Any) -> float | None:
    """``value`` as a finite float, else None (bools are not numbers here)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _nonempty_str(value: Any) -> bool:
    return isinstance(value, str) and value != ""


def read_result(path: str | os.PathLike) -> dict[str, Any]:
    """Parse and check one result.json; raise ValueError with the reason when it is not usable."""
    path = Path(path)
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"cannot read: {exc}") from exc
    if not isinstance(record, dict):
        raise ValueError("top level is not a JSON object")
    for key in ("status", "model", "method", "dataset"):
        if not _nonempty_str(record.get(key)):
            raise ValueError(f"missing or invalid {key!r}")
    seed = record.get("seed")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError("missing or invalid 'seed'")
    config = record.get("config")
    if isinstance(config, dict) and isinstance(config.get("eval"), dict) and config["eval"].get("split") == "val":
        raise ValidationSplitCell("scored on the validation split (a learning-rate search)")
    version = record.get("schema_version")
    if isinstance(version, bool) or not isinstance(version, int) or not 1 <= version <= SCHEMA_VERSION:
        log.warning("%s: schema_version %r, this code reads 1 to %d; reading it anyway", path, version, SCHEMA_VERSION)

    metrics = record.get("metrics")
    if metrics is None:
        metrics = {}
    if not isinstance(metrics, dict):
        raise ValueError("'metrics' is not an object")
    if record["status"] == COMPLETED and number(metrics.get(PRIMARY_ACCURACY)) is None:
        raise ValueError(f"completed but metrics.{PRIMARY_ACCURACY} is not a number")
    record["metrics"] = metrics

    eval_sets = record.get("eval_sets")
    if eval_sets is None:
        eval_sets = {}
    if not isinstance(eval_sets, dict):
        log.warning("%s: 'eval_sets' is not an object; ignoring it", path)
        eval_sets = {}
    for name in list(eval_sets):
        entry = eval_sets[name]
        if not isinstance(entry, dict) or number(entry.get(PRIMARY_ACCURACY)) is None:
            log.warning("%s: eval_sets[%r] has no numeric %s; ignoring it", path, name, PRIMARY_ACCURACY)
            del eval_sets[name]
    record["eval_sets"] = eval_sets

    record["result_path"] = str(path)
    return record


# ---------------------------------------------------------------- duplicates


def identity_key(record: dict[str, Any], name: str) -> str | None:
    identity = record.get("identity")
    return identity.get(name) if isinstance(identity, dict) else None


def cell_key(record: dict[str, Any]) -> tuple:
    """What makes two records the same computation: the evaluation key, else ``settings_key``."""
    key = identity_key(record, "evaluation_key")
    if key:
        return ("evaluation", key)
    return settings_key(record)


def settings_key(record: dict[str, Any]) -> tuple:
    """model × method × dataset × seed and the settings that can change a number (files written before cells
    had an identity, and cells that failed before computing theirs: LoRA r=8 and r=16 stay two cells). A method
    that gives the same result for every run seed (zero-shot; few-shot with a fixed shot seed) is one cell
    whatever seeds ran it, as its evaluation key makes it: three copies are one measurement, not three."""
    from slm_sweep.identity import is_seed_independent

    from .variants import configuration_settings

    settings = json.dumps(configuration_settings(record), sort_keys=True)
    method = (record.get("config") or {}).get("method")
    # a config that does not say whether the method trains keeps its seeds apart
    independent = isinstance(method, dict) and "train" in method and is_seed_independent(method)
    seed = None if independent else record["seed"]
    return record["model"], record["method"], record["dataset"], seed, settings


def _timestamp(value: Any) -> datetime:
    if not isinstance(value, str):
        return _EPOCH
    text = value.strip()
    if text.endswith("Z"):  # fromisoformat accepts "Z" only from Python 3.11
        text = text[:-1] + "+00:00"
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return _EPOCH
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def result_preference(record: Mapping[str, Any]) -> tuple[bool, bool, datetime, datetime]:
    """Which of several results of one cell counts (the greatest): a completed one, then the cell's own over a
    reuse, then the latest finished, then the latest started. The report and the rate search both choose by it."""
    return (
        record.get("status") == COMPLETED,
        not record.get("reused_from"),
        _timestamp(record.get("finished_at")),
        _timestamp(record.get("started_at")),
    )


def group_keys(records: Sequence[dict[str, Any]]) -> list[tuple]:
    """The cell each record belongs to (``cell_key``), in order. A record without an identity (a cell that
    failed before computing it, a copy written without one) belongs with a run of the same settings and seed
    that has one, in the configuration key ``_configurations_of`` gives it; where it gives none (runs of other
    code, a rerun read with the earlier sweep, none or several of them in its own sweep folder) it is a cell
    of its own, of unknown configuration."""
    runs = _runs_by_configuration(records)
    keyed: dict[tuple, dict[str | None, tuple]] = defaultdict(dict)  # per settings and seed: each key's cell
    for record in records:
        if identity_key(record, "evaluation_key"):
            keyed[settings_key(record)][identity_key(record, "configuration_key")] = cell_key(record)
    out = []
    for record, key in zip(records, map(cell_key, records)):
        if key in keyed:
            configurations = _configurations_of(record, runs)
            if len(configurations) == 1:
                key = keyed[key].get(configurations[0], key)
        out.append(key)
    return out


def _runs_by_configuration(records: Sequence[dict[str, Any]]) -> Runs:
    """``Runs``: each seed's record under its settings."""
    runs: Runs = defaultdict(lambda: defaultdict(list))
    for record in records:
        if identity_key(record, "evaluation_key"):
            model, method, dataset, _, settings = settings_key(record)
            runs[model, method, dataset, settings][identity_key(record, "configuration_key")].append(record)
    return runs


def _configurations_of(record: dict[str, Any], runs: Runs) -> list[str | None]:
    """The configuration keys a record may be of: with an evaluation key, its own; without, its configuration
    key (a lost seed, ``unwritten_cells``), else those that ran its settings (``runs``), of several the ones
    with results in its own sweep folder (``_in_its_sweep``: a requeue at a rerun's code that completed)."""
    own = identity_key(record, "configuration_key")
    if identity_key(record, "evaluation_key"):
        return [own]
    model, method, dataset, _, settings = settings_key(record)
    configurations = runs.get((model, method, dataset, settings), {})
    if own:
        return [own] if own in configurations else []
    if len(configurations) > 1 and record.get("result_path"):
        configurations = _in_its_sweep(Path(record["result_path"]).parent, (), configurations)
    return list(configurations)


def deduplicate(records: Iterable[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[tuple[Path, Path]]]:
    """One record per cell; returns (kept records, [(kept file, dropped file), ...]) and logs each drop."""
    records = list(records)
    by_cell: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for record, key in zip(records, group_keys(records)):
        by_cell[key].append(record)
    kept: list[dict[str, Any]] = []
    dropped: list[tuple[Path, Path]] = []
    for group in by_cell.values():
        best = max(group, key=result_preference)  # max keeps the first of equals: earlier arguments win ties
        kept.append(best)
        for other in group:
            if other is best:
                continue
            if other.get("reused_from") and other.get("status") == best.get("status"):
                # a copy of the kept computation (a baseline reused for another seed, a divergence): counts once
                continue
            pair = (Path(best.get("result_path", "?")), Path(other.get("result_path", "?")))
            dropped.append(pair)
            log.warning(
                "duplicate cell model=%s method=%s dataset=%s seed=%s: keeping %s (finished_at %s), "
                "dropping %s (finished_at %s)",
                best["model"], best["method"], best["dataset"], other["seed"],
                pair[0], best.get("finished_at"), pair[1], other.get("finished_at"),
            )  # fmt: skip
    return kept, dropped


def completed_records(records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """The completed records, one per cell."""
    unique, _ = deduplicate(records)
    return [r for r in unique if r.get("status") == COMPLETED]


# ---------------------------------------------------------------- collecting


def collect(dirs: Sequence[str | os.PathLike]) -> Collection:
    """Read every result.json under ``dirs``; raise NoResultsError when there is none at all. A folder whose
    result.failed.json is of another cell than its result.json is read as that failed attempt, its result.json as
    set aside (``failed_attempt``)."""
    collection = Collection(dirs=[Path(d) for d in dirs])
    collection.files = find_result_files(dirs)
    if not collection.files:
        raise NoResultsError(f"no {RESULT_FILE} found under: {', '.join(str(d) for d in dirs)}")
    readable = []
    earlier: list[dict[str, Any]] = []  # results of an earlier run, beside a failed attempt of other settings
    for path in collection.files:
        try:
            record = read_result(path)
        except ValidationSplitCell:
            collection.validation.append(path)
            continue
        except ValueError as exc:
            log.warning("skipping %s: %s", path, exc)
            collection.malformed.append((path, str(exc)))
            continue
        attempt = failed_attempt(record)
        if attempt is not None:
            collection.failed_attempts.append(Path(attempt["result_path"]))
            earlier.append(record)
        readable.append(attempt or record)
    if not readable and not collection.validation:
        listed = "; ".join(f"{path}: {why}" for path, why in collection.malformed[:5])
        raise NoResultsError(f"none of the {len(collection.files)} {RESULT_FILE} files under "
                             f"{', '.join(str(d) for d in dirs)} could be read ({listed}"
                             f"{'; ...' if len(collection.malformed) > 5 else ''})")
    readable += _grid_points(dirs, readable, collection, earlier)
    collection.records, collection.duplicates = deduplicate(readable)
    kept = {id(r) for r in collection.records}
    keys = group_keys(readable)  # as deduplicate grouped them: a copy without an identity is its original's cell
    by_cell = {key: r for r, key in zip(readable, keys) if id(r) in kept}
    collection.copies = [(Path(by_cell[key].get("result_path", "?")), Path(r.get("result_path", "?")))
                         for r, key in zip(readable, keys)
                         if id(r) not in kept and r.get("reused_from")
                         and r.get("status") == by_cell[key].get("status")]
    collection.unwritten, collection.unattributed = unwritten_cells(dirs, collection.records)
    return collection


# settings a cell resolves before its keys are known (the learning rate: resolve_lr, which run.run calls before the
# keys; the key's prompt style), which a record written before that holds as configured
RESOLVED_BEFORE_KEYS = ("method.lr", "prompt.style")


def unresolved_settings(attempt: Mapping[str, Any]) -> tuple[str, ...]:
    """What of ``RESOLVED_BEFORE_KEYS`` a record without keys holds as configured: all of it for one refused before
    the rate was resolved (resolve_lr in run.run; no ``learning_rate`` entry, ``_refused_cell``); the prompt style
    only for one that failed after (a hub error in load_data, a preemption), whose config holds the rate it
    resolved; nothing for one with keys."""
    if attempt.get("identity"):
        return ()
    return RESOLVED_BEFORE_KEYS if "learning_rate" not in attempt else ("prompt.style",)


def _settings_key_less(record: dict[str, Any], settings: Sequence[str]) -> tuple:
    """``settings_key`` less ``settings``."""
    *cell, configuration = settings_key(record)
    configuration = {k: v for k, v in json.loads(configuration).items() if k not in settings}
    return (*cell, json.dumps(configuration, sort_keys=True))


def failed_attempt(record: dict[str, Any]) -> dict[str, Any] | None:
    """The attempt in result.failed.json beside ``record`` (a rerun that failed before it could set the earlier
    result aside: run.py keeps a finished result.json, or an unfinished one that has its keys, and writes the
    failure beside it), read as a record, when it is of another cell (``other_cell``): the folder's cell is then
    that attempt, a lost seed of its own configuration, and ``record`` an earlier run's (a finished one read as set
    aside; an unfinished one is no cell of the report: the seed of another cell that did not complete, which its
    own folder, if the sweep still runs it, counts). None where there is no such file, it cannot be read (its
    cell is named in summary.md's "Cells that did not complete" all the same), or it is of ``record``'s cell (a
    failed retry of a cell that did complete: no seed is lost; of one that did not: its seed is lost once)."""
    path = Path(record["result_path"]).parent / FAILED_ATTEMPT_FILE
    if not path.is_file():
        return None
    try:
        attempt = read_result(path)
    except ValueError:
        return None
    return attempt if other_cell(attempt, record) else None


def other_cell(attempt: Mapping[str, Any], record: Mapping[str, Any]) -> bool:
    """Whether a failed ``attempt`` (result.failed.json) is of another cell than the ``record`` beside it: not the
    same evaluation key, and another model, method, dataset, seed (of a method whose numbers depend on it) or
    configuration (``configuration_settings``; for an attempt that failed before its keys were known, less what a
    cell resolves on its way there, ``RESOLVED_BEFORE_KEYS``). sweep_notes.incomplete_cells asks it too."""
    from slm_sweep.identity import is_seed_independent

    from .variants import configuration_settings

    # a record as sweep_notes reads it, not checked: a name it lacks is unknown
    attempt, record = ({**dict.fromkeys(("model", "method", "dataset", "seed")), **cell} for cell in (attempt, record))
    key = identity_key(attempt, "evaluation_key")
    if key and key == identity_key(record, "evaluation_key"):
        return False
    ours, theirs = configuration_settings(attempt), configuration_settings(record)
    # failed before its keys were known: what a cell resolves on its way there and the attempt holds as configured
    # (a tuned or searched rate into method.lr before resolve_lr, the prompt style its key holds) is resolved in
    # the record that has them only, so it tells nothing
    for setting in unresolved_settings(attempt):
        ours.pop(setting, None)
        theirs.pop(setting, None)

    def names(cell: dict[str, Any]) -> tuple:
        method = (cell.get("config") if isinstance(cell.get("config"), dict) else {}).get("method")
        independent = isinstance(method, dict) and "train" in method and is_seed_independent(method)
        return (cell.get("model"), cell.get("method"), cell.get("dataset"),
                None if independent else cell.get("seed"))

    return (names(attempt), ours) != (names(record), theirs)


def unwritten_cells(dirs: Sequence[str | os.PathLike],
                    records: Sequence[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The cells of ``dirs`` killed before writing a result.json (sweep_notes.unwritten_jobs), as records of status
    UNWRITTEN, and those whose configuration cannot be told.

    A job's model, method, dataset and seed come from its .hydra/ (sweep_notes.job_cell). Its configuration is the
    one of ``records`` (any status) of that model × method × dataset that its dotted overrides (``method.r=16``)
    and, on the settings those configurations differ in, its config.yaml agree with; of several configuration keys
    of those settings (other code: a rerun read with the earlier sweep), the one with results in the job's own
    sweep folder (``_in_its_sweep``). The record is that configuration's with the job's seed and configuration key
    and no other keys, so that it is labelled and grouped as a lost seed of it. A job that matches none or
    several, or whose names cannot be read, is unattributed. A seed some record of its configuration key
    already holds (a requeued job that completed in another folder, a baseline's seed-independent cell, a
    retry that failed before computing its identity, in the configuration ``group_keys`` gives it) is not
    lost; a record with no configuration key holds its seed of its settings."""
    import copy

    from .sweep_notes import job_cell
    from .variants import configuration_settings, varying_settings

    runs = _runs_by_configuration(records)
    held = set()
    for record in records:
        # a failure without an identity holds its seed in the configuration group_keys gives it
        configurations = _configurations_of(record, runs) if record.get("status") != COMPLETED else []
        held.add(_held_key(record, configurations[0] if len(configurations) == 1 else None))
    unwritten: list[dict[str, Any]] = []
    unattributed: list[dict[str, Any]] = []
    for job in _unwritten_jobs(dirs):
        cell = job_cell(job)
        if cell["validation"]:
            continue  # a learning-rate search's cell: not one of the report's
        names = {key: cell[key] for key in ("model", "method", "dataset", "seed")}
        if None in names.values():
            unattributed.append({"job": job, **names})
            continue
        siblings = [r for r in records if (r["model"], r["method"], r["dataset"]) ==
                    (names["model"], names["method"], names["dataset"])]
        by_settings: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for record in siblings:
            by_settings[json.dumps(configuration_settings(record), sort_keys=True)].append(record)
        varying = varying_settings([json.loads(key) for key in by_settings])
        flat = flat_config(cell["config"])
        configurations: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for key, group in by_settings.items():
            if _agrees(json.loads(key), cell["overrides"], flat, varying):
                # a record without a configuration key names one only where no record of its settings has a key
                keyed = [r for r in group if identity_key(r, "configuration_key")]
                for record in keyed or group:
                    configurations[identity_key(record, "configuration_key") or key].append(record)
        if len(configurations) > 1:
            configurations = _in_its_sweep(job, dirs, configurations)
        matching = list(configurations.values())
        if siblings and len(matching) != 1:
            unattributed.append({"job": job, **names})
            continue
        if matching:
            record = copy.deepcopy(matching[0][0])
            config = record.get("config") if isinstance(record.get("config"), dict) else {}
            # labelled as its configuration's cells are
            identity = {name: identity_key(record, name) for name in ("prompt_style", "configuration_key")
                        if identity_key(record, name)} or None
        else:  # no cell of it wrote a result: its configuration is what its method's config says
            method = cell["config"].get("method") if isinstance(cell["config"].get("method"), dict) else {}
            config = {"method": {"name": names["method"], **({"train": method["train"]}
                                                              if isinstance(method.get("train"), bool) else {})}}
            identity = None
        config = {**config, "seed": names["seed"]}
        lost = {**names, "schema_version": SCHEMA_VERSION, "status": UNWRITTEN, "config": config,
                "identity": identity, "reused_from": None, "metrics": {}, "eval_sets": {},
                "error": f"the cell stopped before writing its {RESULT_FILE}", "result_path": str(job / RESULT_FILE)}
        if _held_key(lost) not in held:
            held.add(_held_key(lost))
            unwritten.append(lost)
    return unwritten, unattributed


def _held_key(record: dict[str, Any], configuration: str | None = None) -> tuple:
    """The seed a record holds, for ``unwritten_cells``: of its configuration key (``configuration`` for one
    without), else of its settings."""
    key = identity_key(record, "configuration_key") or configuration
    return (*settings_key(record)[:4], ("configuration", key)) if key else settings_key(record)


def _in_its_sweep(job: Path, dirs: Sequence[str | os.PathLike],
                  configurations: dict[Any, list[dict[str, Any]]]) -> dict[Any, list[dict[str, Any]]]:
    """Of the ``configurations`` (their records each) a job may have run, those with a record in its own sweep
    folder: its parent, else the directory of ``dirs`` it lies in (all of them where none has)."""
    job = job.resolve()
    roots = [job.parent, *(root for root in (Path(d).resolve() for d in dirs) if job.is_relative_to(root))]
    for root in roots:
        near = {key: records for key, records in configurations.items()
                if any(r.get("result_path") and Path(r["result_path"]).resolve().is_relative_to(root)
                       for r in records)}
        if near:
            return near
    return configurations


def _unwritten_jobs(dirs: Sequence[str | os.PathLike]) -> list[Path]:
    from .sweep_notes import unwritten_jobs

    return unwritten_jobs(dirs)


def flat_config(value: Any, prefix: str = "") -> dict[str, Any]:
    """A nested config as {dotted key: value}."""
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(flat_config(item, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: value} if prefix else {}


def _same_value(setting: str, value: Any) -> bool:
    """Whether a configuration's setting (JSON, as configuration_settings gives it) is ``value`` as YAML read it
    from an override or config.yaml (2e-4, which YAML 1.1 reads as text, is 0.0002)."""
    def plain(v: Any) -> Any:
        if isinstance(v, str):
            try:
                return float(v)
            except ValueError:
                return v
        return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v

    return plain(json.loads(setting)) == plain(value)


def _agrees(settings: dict[str, str], overrides: dict[str, Any], composed: dict[str, Any], varying: set[str]) -> bool:
    """Whether a configuration's settings agree with a job's dotted overrides (each one the configuration has) and,
    on the ``varying`` settings, with its composed config.yaml (interpolations, which Hydra resolves later, aside)."""
    if any(key in settings and not _same_value(settings[key], value) for key, value in overrides.items()):
        return False
    return all(_same_value(settings[key], composed[key]) for key in varying
               if key in settings and key in composed and not (isinstance(composed[key], str) and "${" in composed[key]))


def _grid_points(dirs: Sequence[str | os.PathLike], current: Sequence[dict[str, Any]],
                 collection: Collection, earlier: Sequence[dict[str, Any]] = ()) -> list[dict[str, Any]]:
    """The completed results a rerun set aside (in superseded*/, and the ``earlier`` results, read already, that a
    failed attempt of other settings left in place) that are still points of the sweep's grid: a grid extended into the
    same sweep folder (method.r=8,16, then method.r=16,32) puts r=32 in r=8's job folder, and r=8 differs from the
    cells there only in a setting the sweep varies. A result that differs in a setting the sweep does not vary
    (a rerun that changed max_steps for every cell), or that a rerun recomputed (other code or data), was
    replaced: left out, and so is one in the superseded*/ of the job folder of a current cell of its evaluation key
    that did not complete (a recomputation, ``resume.enabled=false``, that failed after setting it aside: the cell
    is that attempt, which did not complete, not the result it was asked to compute again). Of the ``earlier`` results, one whose
    evaluation key a current cell that did not complete has (a job folder's result, completed there), or whose
    settings a current cell that failed before its keys has (less what that one holds as configured,
    ``unresolved_settings``: the same cell, failed in another folder, as ``deduplicate`` groups them) is that cell's
    result: read, and kept over the failure by ``deduplicate``. A result in superseded*/ beside such a failure is
    not: its folder's rerun set it aside to compute it again, and no key says what the failure ran."""
    from .variants import configuration_settings

    now = {settings_key(r) for r in current}
    # the evaluation keys of current cells that did not complete, each with their job folders: a result in
    # superseded*/ of one of those folders is the one that recomputation set aside
    unfinished: dict[str, set[Path]] = defaultdict(set)
    for r in current:
        if r.get("status") != COMPLETED and identity_key(r, "evaluation_key"):
            unfinished[identity_key(r, "evaluation_key")].add(Path(r["result_path"]).resolve().parent)
    # current cells that did not complete, failed before their keys (a hub error, a preemption), by their settings
    # less what they hold as configured (``unresolved_settings``)
    early = [r for r in current if r.get("status") != COMPLETED and not identity_key(r, "evaluation_key")]
    early_keys = {(less, _settings_key_less(r, less)) for r in early for less in [unresolved_settings(r)]}
    kinds = {less for less, _ in early_keys}
    of_early: list[tuple[Path, dict[str, Any]]] = []
    left_in_place = {id(r) for r in earlier}  # not in superseded/: no rerun of its own cell set it aside
    groups: dict[tuple, list[dict[str, str]]] = defaultdict(list)
    for record in current:
        groups[record["dataset"], record["model"], record["method"]].append(configuration_settings(record))
    points = []
    for path, record in [*_readable(find_result_files(dirs, set_aside=True)),
                         *((Path(r["result_path"]), r) for r in earlier)]:
        if record.get("status") != COMPLETED:
            continue
        others = groups.get((record["dataset"], record["model"], record["method"]), [])
        key = identity_key(record, "evaluation_key")
        if key in unfinished:
            recomputed = id(record) not in left_in_place and path.resolve().parent.parent in unfinished[key]
            collection.replaced.append(path) if recomputed else points.append(record)
        elif settings_key(record) not in now and _a_point_of(configuration_settings(record), others):
            collection.set_aside.append(path)
            points.append(record)
        elif id(record) in left_in_place and any((less, _settings_key_less(record, less)) in early_keys
                                                 for less in kinds):
            of_early.append((path, record))
        else:
            collection.replaced.append(path)
    if of_early:  # that cell's result where deduplicate groups it so (one cell, never a seed both kept and lost)
        read = [*current, *points]
        keys = group_keys([*read, *(r for _, r in of_early)])
        early_ids = {id(r) for r in early}
        failed = {key for r, key in zip(read, keys) if id(r) in early_ids}
        for (path, record), key in zip(of_early, keys[len(read):]):
            points.append(record) if key in failed else collection.replaced.append(path)
    return points


def _readable(paths: Sequence[Path]) -> Iterator[tuple[Path, dict[str, Any]]]:
    """(path, record) of each file that reads as a record; validation-split cells and unreadable files of earlier
    runs are not cells of this sweep."""
    for path in paths:
        try:
            yield path, read_result(path)
        except ValueError:
            continue


def _a_point_of(settings: dict[str, str], current: list[dict[str, str]]) -> bool:
    """Whether ``settings`` differ from one of the ``current`` cells' only in settings the current cells vary
    among themselves (or not at all: another seed of a current configuration)."""
    from .variants import varying_settings

    if not current:
        return True
    varying = varying_settings(current)
    return any({k for k in settings.keys() | other.keys() if settings.get(k) != other.get(k)} <= varying
               for other in current)


def load_results(dirs: Sequence[str | os.PathLike]) -> list[dict[str, Any]]:
    """All readable records under ``dirs``, one per cell, of any status (filter on ``status`` yourself)."""
    return collect(dirs).records


# ---------------------------------------------------------------- per-question scores


@dataclass(frozen=True)
class _SetPredictions:
    keys: tuple[QuestionKey, ...]
    correct: dict[str, tuple[bool, ...]]  # metric name -> one value per key (metrics every row records)


def _file_version(path: Path) -> tuple[int, int]:
    stat = path.stat()
    return stat.st_mtime_ns, stat.st_size


@lru_cache(maxsize=512)
def _read_predictions(path: str, version: tuple[int, int]) -> dict[str, _SetPredictions]:
    """predictions.jsonl grouped by evaluation set; raises NoQuestionData naming the bad line."""
    rows: dict[str, list[dict[str, Any]]] = defaultdict(list)
    with open(path, encoding="utf-8") as f:
        for number_, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise NoQuestionData(f"{path} line {number_} is not JSON ({exc})") from None
            if not isinstance(row, dict) or not isinstance(row.get("eval_set"), str) \
                    or isinstance(row.get("index"), bool) or not isinstance(row.get("index"), int) \
                    or not isinstance(row.get("question"), str):
                raise NoQuestionData(f"{path} line {number_} lacks eval_set, index or question")
            rows[row["eval_set"]].append(row)
    out = {}
    for eval_set, group in rows.items():
        keys = tuple((row["index"], hash(row["question"])) for row in group)
        repeated = [key for key, count in Counter(keys).items() if count > 1]
        if repeated:
            raise NoQuestionData(f"{path}: question index {repeated[0][0]} of {eval_set} appears more than once")
        correct = {}
        for key in group[0]:
            if key.startswith("correct_"):
                values = tuple(row.get(key) for row in group)
                if all(isinstance(v, bool) for v in values):  # a metric only some rows record is not used
                    correct[key[len("correct_"):]] = values
        out[eval_set] = _SetPredictions(keys, correct)
    return out


@lru_cache(maxsize=4096)
def _expected(path: str, version: tuple[int, int], eval_set: str, metric: str) -> tuple[Any, Any]:
    """(n_eval, accuracy) that result.json records for ``eval_set`` (the in-domain set is the dataset's name)."""
    record = json.loads(Path(path).read_text(encoding="utf-8"))
    scores = record.get("metrics") or {}
    if eval_set != record.get("dataset"):
        scores = (record.get("eval_sets") or {}).get(eval_set) or {}
    return scores.get("n_eval"), scores.get(accuracy_key(metric))


def question_scores(result_path: str | os.PathLike, eval_set: str, metric: str) -> dict[QuestionKey, bool]:
    """Whether ``metric`` scored each question of ``eval_set`` correct, from the predictions.jsonl beside the
    result.json at ``result_path``, keyed by (index, question). Raises NoQuestionData saying why there is none:
    no such file, no rows for the set, no ``correct_<metric>``, or a file that disagrees with result.json."""
    result = Path(result_path)
    predictions = result.parent / PREDICTIONS_FILE
    if not predictions.is_file():
        raise NoQuestionData(f"no {PREDICTIONS_FILE} beside {result}")
    by_set = _read_predictions(str(predictions), _file_version(predictions))
    if eval_set not in by_set:
        raise NoQuestionData(f"{predictions} has no rows for {eval_set}")
    scored = by_set[eval_set]
    if metric not in scored.correct:
        raise NoQuestionData(f"{predictions} has no correct_{metric} for every row of {eval_set}")
    correct = scored.correct[metric]
    n_eval, accuracy = _expected(str(result), _file_version(result), eval_set, metric)
    if number(n_eval) is not None and int(n_eval) != len(correct):
        raise NoQuestionData(f"{predictions} holds {len(correct)} rows of {eval_set}, {result} n_eval={n_eval}")
    if number(accuracy) is not None and correct and abs(sum(correct) / len(correct) - accuracy) > 1e-9:
        raise NoQuestionData(f"{predictions}: the mean of correct_{metric} on {eval_set} "
                             f"({sum(correct) / len(correct):.6f}) is not {result}'s {accuracy:.6f}")
    return dict(zip(scored.keys, correct))
