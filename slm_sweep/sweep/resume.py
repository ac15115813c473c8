"""Finding earlier runs of a cell by its identity (slm_sweep.identity): a finished result to reuse (same
evaluation key), a checkpoint to resume training from, kept trained weights to re-score, or a divergence of its
training, which stays its outcome (same training key); setting aside what a cell replaces.

The cell's own directory is searched first (a rerun into the same folder, or a requeued array job, skips what it
finished and resumes what it started), then its sweep's directory and ``resume.search_dir``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from slm_sweep.results import (
    ATTEMPT_PROVENANCE_KEYS,
    FAILED_ATTEMPT_FILE,
    PREDICTIONS_FILE,
    RESULT_FILE,
    SUPERSEDED,
    is_complete,
    read_result,
)

CHECKPOINT = Path("checkpoints") / "last.ckpt"
KEPT_WEIGHTS = ("adapter", "model")  # LoRA/DoRA adapter folder; full weights (trainer.keep_model)
CURVE_FILE = "metrics.csv"  # what Lightning's CSVLogger writes into its folder (conf/logger/csv.yaml: csv/)
# A file in a checkpoint or kept-weights folder naming the training key of the run that wrote it: a folder's
# result.json can be a later run's (another configuration rerun into it, or a copied result), so the weights
# say themselves what they are.
KEY_STAMP = "training_key"

log = logging.getLogger(__name__)


def stamp_training_key(folder: Path, training_key: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / KEY_STAMP).write_text(training_key + "\n")


def stamped_key(folder: Path) -> str | None:
    path = folder / KEY_STAMP
    return path.read_text().strip() if path.is_file() else None


def own_checkpoint(out: Path, training_key: str, resume: bool = True) -> Path | None:
    """The cell's own last.ckpt when its training key is this one. A checkpoint another configuration left in the
    folder (a rerun with another learning rate, say) is moved aside, not resumed from and not deleted; so is this
    configuration's own when ``resume`` is off (``resume.enabled=false``: training starts afresh)."""
    ckpt = out / CHECKPOINT
    if not ckpt.is_file():
        return None
    if stamped_key(ckpt.parent) == training_key and resume:
        return ckpt
    aside = _free(ckpt.parent.with_name(ckpt.parent.name + ".superseded"))
    ckpt.parent.rename(aside)
    if stamped_key(aside) == training_key:
        log.warning("resume.enabled=false: the checkpoint %s of this configuration moved to %s, training starts "
                    "afresh", ckpt, aside)
    else:
        log.warning("%s was written by a run with another training key (%s): moved to %s, training starts afresh",
                    ckpt, stamped_key(aside) or "not recorded", aside)
    return None


def _free(path: Path) -> Path:
    """``path``, or ``<path>-2``, ``-3``... when taken."""
    found, number = path, 1
    while found.exists():
        number += 1
        found = path.with_name(f"{path.name}-{number}")
    return found


def set_aside_earlier(out: Path, evaluation_key: str, training_key: str | None,
                      with_weights: bool = False, recomputing: bool = False) -> Path | None:
    """Move a finished result of another configuration out of the way of this cell's files, instead of writing
    over it (a rerun into the same folder with other settings): its result.json and predictions go to
    ``out/superseded`` (where the reuse search still finds them, and the report reads them as a cell when
    they differ from the sweep's cells only in settings the sweep varies), and so do its kept weights when they
    were trained under another training key, with their training curve. ``with_weights`` (the cell copies
    another folder's result here, which describes no weights of this folder): the kept weights and curve go with
    the result whatever their key, so that they stay beside the record of the run that trained them.
    ``recomputing`` (the cell runs again, reusing no finished result: ``resume.enabled=false``, a single run
    under ``auto``): a finished result of this same configuration goes aside too, before the rerun writes
    anything, so that a rerun that fails or is interrupted loses nothing. A divergence goes aside with its
    checkpoints too: another configuration's, and this training's whenever the cell does not keep it (it trains
    again, or copies another folder's result here). Returns that folder, or None when there was nothing to
    keep."""
    record = read_result(out)
    if not record or record.get("status") not in ("completed", "diverged"):
        return None
    diverged = record.get("status") == "diverged"
    # the divergence of this training: the cell's outcome, unless it trains again or copies a result here
    this_training = _diverged(record, training_key)
    if this_training and not (recomputing or with_weights):
        return None
    same = _key(record, "evaluation_key") == evaluation_key
    if same and not diverged and not recomputing:
        return None
    aside = _free(out / SUPERSEDED)
    aside.mkdir(parents=True)
    for name in (RESULT_FILE, PREDICTIONS_FILE):
        if (out / name).is_file():
            (out / name).rename(aside / name)
    kept = [out / name for name in KEPT_WEIGHTS if (out / name).is_dir()]
    moved = [weights for weights in kept if with_weights or not _matches(weights, record, training_key)]
    for weights in moved:
        weights.rename(aside / weights.name)
    if moved or not kept:  # the training curve goes with the weights it trained (a re-score keeps both here)
        for curve in out.glob(f"*/{CURVE_FILE}"):
            if curve.parent != aside:
                curve.parent.rename(aside / curve.parent.name)
    if diverged and (out / CHECKPOINT.parent).is_dir():  # a diverged run's: never resumed, kept beside its record
        (out / CHECKPOINT.parent).rename(aside / CHECKPOINT.parent.name)
    if this_training:
        log.warning("%s held the divergence of this training, which this run %s: moved to %s", out,
                    "trains again" if recomputing else "replaces by a copy of a completed run", aside)
    elif diverged:
        log.warning("%s held the divergence of another configuration (training key %s): moved to %s", out,
                    _key(record, "training_key") or "not recorded", aside)
    elif same:
        log.warning("%s held a finished result of this configuration, which this run computes again: moved to %s",
                    out, aside)
    else:
        log.warning("%s held the finished result of another configuration (evaluation key %s): moved to %s",
                    out, _key(record, "evaluation_key") or "not recorded", aside)
    return aside


def keep_earlier_curves(out: Path) -> list[Path]:
    """Rename the training curves an earlier attempt of this cell left in ``out`` (an interrupted run now resumed,
    a failed one run again) to ``metrics.earlier-N.csv`` beside them: Lightning's CSV logger starts its file
    afresh, and the resumed run's curve begins at its checkpoint's step. Returns the new paths."""
    kept = []
    for curve in sorted(out.glob(f"*/{CURVE_FILE}")):
        n = 1
        while (target := curve.with_name(f"metrics.earlier-{n}.csv")).exists():
            n += 1
        kept.append(curve.rename(target))
    return kept


def search_dirs(own: Path, sweep_dir: Path | None, *searched: Path) -> list[Path]:
    """The cell's own directory, its sweep's and the configured search directories, each once."""
    dirs: list[Path] = []
    for path in (own, sweep_dir, *searched):
        if path is not None and not any(_same(path, d) for d in dirs):
            dirs.append(path)
    return dirs


def _same(a: Path, b: Path) -> bool:
    return a.resolve() == b.resolve()


def _records(dirs: Sequence[Path], own: Path) -> Iterator[tuple[Path, dict]]:
    """(directory, record) of every result under ``dirs``; the cell's own directory first."""
    seen: set[Path] = set()
    own_record = read_result(own)
    if own_record:
        seen.add(own.resolve())
        yield own, own_record
    for root in dirs:
        if not root.is_dir():
            continue
        for path in root.rglob(RESULT_FILE):
            folder = path.parent.resolve()
            if folder in seen:
                continue
            seen.add(folder)
            record = read_result(path)
            if record:
                yield path.parent, record


def _key(record: dict, name: str) -> str | None:
    return (record.get("identity") or {}).get(name)


def find_completed(dirs: Sequence[Path], evaluation_key: str, own: Path, eval_dtype: str | None = None) -> Path | None:
    """A directory holding a complete result with this evaluation key: the cell's own when it has one, else the
    most recently finished original, else (its original's folder removed or not searched) the most recently
    finished copy, whose numbers and predictions are that original's. With ``eval_dtype`` (the dtype the key
    names), a result that generated in another dtype is passed over: the key's dtype once came from the config
    while generation followed the weights, so results of bf16 weights scored on the CPU carry a float32 key."""
    def finished(record: dict) -> bool:
        if _key(record, "evaluation_key") != evaluation_key or not is_complete(record):
            return False
        generated_in = ((record.get("placement") or {}).get("eval") or {}).get("dtype")
        return eval_dtype is None or generated_in is None or generated_in == eval_dtype

    return _preferred(dirs, own, finished)


def holds_divergence(folder: Path, training_key: str | None) -> bool:
    """Whether ``folder``'s record is a divergence of this training."""
    record = read_result(folder)
    return bool(record) and _diverged(record, training_key)


def _diverged(record: dict, training_key: str | None) -> bool:
    return training_key is not None and record.get("status") == "diverged" and \
        _key(record, "training_key") == training_key


def find_diverged(dirs: Sequence[Path], training_key: str | None, own: Path) -> Path | None:
    """A directory holding a run with this training key whose training diverged, chosen as ``find_completed``
    chooses: a divergence is the outcome of training these weights, whatever the evaluation that was to follow."""
    return _preferred(dirs, own, lambda r: _diverged(r, training_key))


def divergence_history(out: Path, dirs: Sequence[Path], training_key: str | None) -> dict[str, Any] | None:
    """What a cell that trains, re-scores or copies a completed result of this training names as
    ``retried_divergence``. It searches the cell's own folder first (its result, failed attempt and set-aside
    records, whatever ``resume`` says: they are this folder's history), then ``dirs``; in each it takes the latest
    diverged run of this training, else the ``retried_divergence`` a run of it carries already. None where this
    training never diverged as far as can be seen."""
    if training_key is None:
        return None
    own = [path for path in (out / RESULT_FILE, out / FAILED_ATTEMPT_FILE,
                             *sorted(out.glob(f"{SUPERSEDED}*/{RESULT_FILE}"))) if path.is_file()]
    elsewhere = [(folder / RESULT_FILE, record) for folder, record in _records(dirs, out) if not _same(folder, out)]
    for found in ([(path, read_result(path)) for path in own], elsewhere):
        ours = sorted(((path, r) for path, r in found if r and _key(r, "training_key") == training_key),
                      key=lambda item: item[1].get("finished_at") or "", reverse=True)
        for path, record in ours:
            if record.get("status") == "diverged":
                return {"result_path": str(path), "error": record.get("error"),
                        **{key: record.get(key) for key in ATTEMPT_PROVENANCE_KEYS}}
        for _, record in ours:
            if record.get("retried_divergence"):
                return record["retried_divergence"]
    return None


def find_completed_training(dirs: Sequence[Path], training_key: str | None, own: Path) -> Path | None:
    """A directory holding a completed run of this training (any evaluation of it, a copy included)."""
    return _preferred(dirs, own, lambda r: training_key is not None and r.get("status") == "completed"
                      and _key(r, "training_key") == training_key)


def _preferred(dirs: Sequence[Path], own: Path, accept: Callable[[dict], bool]) -> Path | None:
    """Of the folders whose record ``accept``s: the cell's own, else the one of the most recently finished
    original, else of the most recently finished copy (``reused_from``)."""
    if not dirs:
        return None
    best: dict[bool, tuple[str, Path]] = {}  # per kind (a copy or not): the latest finished
    for folder, record in _records(dirs, own):
        if not accept(record):
            continue
        if _same(folder, own):
            return folder
        copy = bool(record.get("reused_from"))
        stamp = record.get("finished_at") or ""
        if copy not in best or stamp > best[copy][0]:
            best[copy] = (stamp, folder)
    found = best.get(False) or best.get(True)
    return found[1] if found else None


def find_checkpoint(dirs: Sequence[Path], training_key: str | None, own: Path) -> Path | None:
    """The newest last.ckpt another folder holds of a training run with this training key: an unfinished run's,
    or a finished one's that kept its checkpoints (``trainer.keep_checkpoints``; at ``max_steps``, its final
    weights, which the cell then evaluates without a step to train)."""
    if not dirs or training_key is None:
        return None
    found: list[tuple[float, Path]] = []
    for folder, record in _records(dirs, own):
        ckpt = folder / CHECKPOINT
        if _same(folder, own):
            continue  # own_checkpoint decides on the cell's own one
        # a diverged run's checkpoint is never resumed: a retry trains from the start
        if _matches(ckpt.parent, record, training_key) and ckpt.is_file() and record.get("status") != "diverged":
            found.append((ckpt.stat().st_mtime, ckpt))
    return max(found)[1] if found else None


def _matches(weights: Path, record: dict, training_key: str | None) -> bool:
    """Whether the weights in ``weights`` were trained under ``training_key``: by their stamp; weights kept
    before stamps existed, by the folder's record when that record is the run's own (not a copy)."""
    stamp = stamped_key(weights)
    if stamp is not None:
        return stamp == training_key
    return _key(record, "training_key") == training_key and not record.get("reused_from")


def kept_weights(folder: Path, training_key: str | None = None, record: dict | None = None) -> Path | None:
    """The adapter or full-weights folder that ``folder`` kept, trained under ``training_key`` (any when None)."""
    record = read_result(folder) if record is None else record
    for name in KEPT_WEIGHTS:
        weights = folder / name
        if weights.is_dir() and (training_key is None or _matches(weights, record or {}, training_key)):
            return weights
    return None


def find_trained(dirs: Sequence[Path], training_key: str | None, own: Path) -> Path | None:
    """A run with this training key that finished training and kept its weights (the cell's own first). A copy of
    another folder's result (``reused_from``) is passed over: its training figures are another run's than the
    weights beside it."""
    if not dirs or training_key is None:
        return None
    for folder, record in _records(dirs, own):
        trained = (record.get("metrics") or {}).get("train_steps")
        if _key(record, "training_key") == training_key and trained and not record.get("reused_from") and \
                kept_weights(folder, training_key, record) is not None:
            return folder
    return None
