"""report.json: what a report was made from and with, so that each of its numbers can be traced to the runs,
settings and code that produced it (the report's counterpart of a cell's result.json)."""

from __future__ import annotations

import json
import os
import platform
import sys
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from slm_sweep.identity import file_sha256
from slm_sweep.results import atomic_write_text, git_commit, now_iso, redact_overrides

from .collect import COMPLETED, Collection, identity_key, placement_label, training_commit
from .stats import SEED_TEST_DRAWS, SEED_TEST_SEED

REPORT_FILE = "report.json"
REPORT_SCHEMA_VERSION = 1
# what computes the report's numbers: the statistics (numpy, scipy) and the plots
REPORT_PACKAGES = ("slm_sweep", "numpy", "scipy", "matplotlib", "pyyaml")


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _input(record: dict[str, Any]) -> dict[str, Any]:
    return {"path": record.get("result_path"), "status": record.get("status"), "model": record.get("model"),
            "method": record.get("method"), "dataset": record.get("dataset"), "seed": record.get("seed"),
            "evaluation_key": identity_key(record, "evaluation_key"), "reused_from": record.get("reused_from"),
            "git_commit": record.get("git_commit"), "finished_at": record.get("finished_at"),
            "evaluated_on": placement_label(record, "eval"),
            # a cell that re-scored kept weights: the run that trained them, and its code
            **({"trained_in": record.get("trained_in"), "trained_at_commit": training_commit(record)}
               if training_commit(record) is not None else {})}


def report_record(collection: Collection, *, alpha: float, correction: str, claims: str | os.PathLike | None,
                  plots: bool, outputs: Sequence[Path],
                  claims_metrics: dict[str, Any] | None = None) -> dict[str, Any]:
    """The report's own record: when and by which code it was made, its settings (with the claims file's
    hash; ``claims_metrics``: the metrics read instead of the recorded ones, and where they came from, None for
    none), every result file it read and what became of it, and the files it wrote."""
    used = [_input(r) for r in collection.records if r.get("status") == COMPLETED]
    claims_file = None
    if claims is not None:
        claims_file = {"path": str(claims), "sha256": file_sha256(claims)}
    return {
        "schema_version": REPORT_SCHEMA_VERSION,
        "created_at": now_iso(),
        # as typed: the interpreter's own arguments too (python -m slm_sweep.report ...)
        "command": [Path(sys.orig_argv[0]).name, *redact_overrides(sys.orig_argv[1:])] if sys.orig_argv else None,
        "git_commit": git_commit(),
        "versions": {"python": platform.python_version(), **{name: _version(name) for name in REPORT_PACKAGES}},
        "settings": {"alpha": alpha, "correction": correction, "seed_test_draws": SEED_TEST_DRAWS,
                     "seed_test_seed": SEED_TEST_SEED, "claims": claims_file, "plots": plots,
                     "claims_metrics": claims_metrics},
        "inputs": {
            "dirs": [str(d) for d in collection.dirs],
            "result_files": len(collection.files),
            "used": used,
            # the code that computed the cells: more than one commit is worth a look before quoting a table
            "cell_commits": dict(collection.cell_commits),
            # cells whose weights were trained at another commit than the one that scored them, per that commit
            "trained_at_other_commits": dict(collection.trained_elsewhere),
            # the chips and number formats behind the numbers, as a paper's footnote would give them
            "cell_hardware": {stage: dict(collection.cell_hardware(stage)) for stage in ("train", "eval")},
            "skipped": [_input(r) for r in collection.records if r.get("status") != COMPLETED],
            # cells killed before writing a result.json (the path named is the one they did not write): lost seeds
            # of the rows they are placed on, or, where their configuration cannot be told, of none
            "unwritten": [_input(r) for r in collection.unwritten],
            "unattributed": [{**cell, "job": str(cell["job"])} for cell in collection.unattributed],
            "malformed": [{"path": str(path), "reason": reason} for path, reason in collection.malformed],
            "validation_split": [str(path) for path in collection.validation],
            "duplicates": [{"kept": str(kept), "dropped": str(dropped)} for kept, dropped in collection.duplicates],
            # result files that copy a kept cell's computation (a baseline reused for another seed): counted once
            "reused_copies": [{"kept": str(kept), "copy": str(copy)} for kept, copy in collection.copies],
            # what reruns into the same folders set aside: other settings (read as cells), or recomputed (left out)
            "set_aside_grid_points": [str(path) for path in collection.set_aside],
            "set_aside_recomputed": [str(path) for path in collection.replaced],
        },
        "outputs": [str(path) for path in outputs],
    }


def write_report_record(out_dir: Path, record: dict[str, Any]) -> Path:
    path = out_dir / REPORT_FILE
    atomic_write_text(path, json.dumps(record, indent=2, default=str) + "\n")
    return path
