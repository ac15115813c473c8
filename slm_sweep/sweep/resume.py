"""Finding earlier runs of a cell by its identity (slm_sweep.identity): a finished result to reuse (same
evaluation key), a checkpoint to resume training from, or kept trained weights to re-score (same training key).

The cell's own directory is searched first (a rerun into the same folder, or a requeued array job, skips what it
finished and resumes what it started), then its sweep's directory and ``resume.search_dir``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

from slm_sweep.results import RESULT_FILE, is_complete, read_result

CHECKPOINT = Path("checkpoints") / "last.ckpt"
KEPT_WEIGHTS = ("adapter", "model")  # LoRA/DoRA adapter folder; full weights (trainer.keep_model)


def search_dirs(own: Path, sweep_dir: Path | None, search_dir: Path | None) -> list[Path]:
    """The cell's own directory, its sweep's and the configured search directory, each once."""
    dirs: list[Path] = []
    for path in (own, sweep_dir, search_dir):
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


def find_completed(dirs: Sequence[Path], evaluation_key: str, own: Path) -> Path | None:
    """A directory holding a complete result with this evaluation key: the cell's own when it has one, else the
    most recently finished original (not itself a copy)."""
    if not dirs:
        return None
    best: tuple[str, Path] | None = None
    for folder, record in _records(dirs, own):
        if _key(record, "evaluation_key") != evaluation_key or not is_complete(record):
            continue
        if _same(folder, own):
            return folder
        if not record.get("reused_from"):
            stamp = record.get("finished_at") or ""
            if best is None or stamp > best[0]:
                best = (stamp, folder)
    return best[1] if best else None


def find_checkpoint(dirs: Sequence[Path], training_key: str | None, own: Path) -> Path | None:
    """The newest last.ckpt of an unfinished training run with this training key."""
    if not dirs or training_key is None:
        return None
    found: list[tuple[float, Path]] = []
    for folder, record in _records(dirs, own):
        ckpt = folder / CHECKPOINT
        if _key(record, "training_key") == training_key and ckpt.is_file():
            found.append((ckpt.stat().st_mtime, ckpt))
    return max(found)[1] if found else None


def kept_weights(folder: Path) -> Path | None:
    for name in KEPT_WEIGHTS:
        if (folder / name).is_dir():
            return folder / name
    return None


def find_trained(dirs: Sequence[Path], training_key: str | None, own: Path) -> Path | None:
    """A run with this training key that finished training and kept its weights (the cell's own first)."""
    if not dirs or training_key is None:
        return None
    for folder, record in _records(dirs, own):
        trained = (record.get("metrics") or {}).get("train_steps")
        if _key(record, "training_key") == training_key and trained and kept_weights(folder) is not None:
            return folder
    return None
