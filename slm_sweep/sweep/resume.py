"""Recognise a cell that was already run: same configuration, found under the sweep search directory.

A cell's key is a hash of the parts of its resolved config that can change its numbers. Logging, output and
progress settings are left out; so is the seed, and the trainer, for methods that train nothing and draw no
seeded shots, so that zero-shot and fixed-seed few-shot are computed once per model x dataset.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from slm_sweep.results import RESULT_FILE, is_complete, read_result

IGNORED_TOP_LEVEL = ("hydra", "logger", "resume", "cache_dir", "data_root", "preflight")
IGNORED_NESTED = {"eval": ("progress",), "trainer": ("progress_bar", "log_every_n_steps", "checkpoint_every_n_steps",
                                                      "num_workers")}


def is_seed_independent(config: Mapping[str, Any]) -> bool:
    method = config["method"]
    if method.get("train"):
        return False
    return method.get("name") == "zeroshot" or method.get("shot_seed") is not None


def cell_key(config: Mapping[str, Any]) -> str:
    relevant = {k: v for k, v in config.items() if k not in IGNORED_TOP_LEVEL}
    for group, keys in IGNORED_NESTED.items():
        if isinstance(relevant.get(group), Mapping):
            relevant[group] = {k: v for k, v in relevant[group].items() if k not in keys}
    if is_seed_independent(config):
        relevant.pop("seed", None)
        relevant.pop("trainer", None)
    blob = json.dumps(relevant, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _result_files(search_dir: Path) -> Iterator[Path]:
    if search_dir.is_dir():
        yield from search_dir.rglob(RESULT_FILE)


def find_completed(search_dir: str | Path, key: str, exclude: Path | None = None) -> Path | None:
    """Directory of a complete result with this key (the most recently finished), or None."""
    best: tuple[str, Path] | None = None
    for path in _result_files(Path(search_dir)):
        if exclude is not None and path.parent.resolve() == exclude.resolve():
            continue
        record = read_result(path)
        if record and record.get("cell_key") == key and is_complete(record) and not record.get("reused_from"):
            stamp = record.get("finished_at") or ""
            if best is None or stamp > best[0]:
                best = (stamp, path.parent)
    return best[1] if best else None


def find_checkpoint(search_dir: str | Path, key: str, exclude: Path | None = None) -> Path | None:
    """The newest last.ckpt of an unfinished run of this cell, to resume training from."""
    found: list[tuple[float, Path]] = []
    for path in _result_files(Path(search_dir)):
        if exclude is not None and path.parent.resolve() == exclude.resolve():
            continue
        record = read_result(path)
        if not record or record.get("cell_key") != key or is_complete(record):
            continue
        ckpt = path.parent / "checkpoints" / "last.ckpt"
        if ckpt.is_file():
            found.append((ckpt.stat().st_mtime, ckpt))
    return max(found)[1] if found else None
