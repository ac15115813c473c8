"""Aggregate the result.json files of sweeps into tables and plots.

Works on result files alone: nothing here imports torch, transformers, lightning or peft.

- ``load_results(dirs)``: every readable record under ``dirs``, one per cell, any status.
- ``summarize(records)``: the in-domain summary rows (see ``aggregate.summarize`` for the keys).
- ``summarize_ood(records)``: the out-of-domain summary rows.
- ``write_report(dirs, out_dir)``: writes summary.csv, summary_ood.csv, summary.md and the PNG plots.

Command line: ``python -m slm_sweep.report DIR [DIR ...] [--out OUTDIR]``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .aggregate import (
    Collection,
    NoResultsError,
    collect,
    describe,
    load_results,
    summarize,
    summarize_ood,
)
from .tables import OOD_COLUMNS, SUMMARY_COLUMNS, render_markdown, write_csv

__all__ = [
    "Collection",
    "NoResultsError",
    "collect",
    "default_out_dir",
    "describe",
    "load_results",
    "summarize",
    "summarize_ood",
    "write_report",
]


def default_out_dir(dirs: Sequence[str | os.PathLike]) -> Path:
    """The first given directory (its parent when it names a result.json)."""
    first = Path(dirs[0])
    return first.parent if first.is_file() else first


def write_report(
    dirs: Sequence[str | os.PathLike], out_dir: str | os.PathLike | None = None, *, plots: bool = True
) -> dict[str, Any]:
    """Aggregate every result.json under ``dirs`` and write the report into ``out_dir``.

    Raises FileNotFoundError when a directory does not exist and NoResultsError (a FileNotFoundError)
    when no result.json is found at all. Returns a dict with the written paths (``summary_csv``,
    ``summary_ood_csv``, ``summary_md``, ``plots`` and all of them in ``files``), the summary ``rows``
    and ``ood_rows``, the ``markdown`` text and the ``collection`` that was read.
    """
    if isinstance(dirs, (str, os.PathLike)):
        dirs = [dirs]
    collection = collect(dirs)
    rows = summarize(collection.records)
    ood_rows = summarize_ood(collection.records)

    out = Path(out_dir) if out_dir is not None else default_out_dir(dirs)
    out.mkdir(parents=True, exist_ok=True)
    markdown = render_markdown(collection, rows, ood_rows)
    summary_md = out / "summary.md"
    summary_md.write_text(markdown + "\n", encoding="utf-8")
    summary_csv = write_csv(rows, SUMMARY_COLUMNS, out / "summary.csv")
    summary_ood_csv = write_csv(ood_rows, OOD_COLUMNS, out / "summary_ood.csv")
    plot_paths: list[Path] = []
    if plots:
        from .plots import write_plots  # matplotlib is imported only when plots are drawn

        plot_paths = write_plots(rows, ood_rows, out)
    return {
        "summary_csv": summary_csv,
        "summary_ood_csv": summary_ood_csv,
        "summary_md": summary_md,
        "plots": plot_paths,
        "files": [summary_csv, summary_ood_csv, summary_md, *plot_paths],
        "rows": rows,
        "ood_rows": ood_rows,
        "markdown": markdown,
        "collection": collection,
    }
