"""Aggregate the result.json files of sweeps into tables, plots and a check of the study's claims.

Works on result files alone: nothing here imports torch, transformers, lightning or peft.

- ``collect.py``: finding, reading and deduplicating result files; per-question scores from predictions.jsonl.
- ``aggregate.py``: summary rows (``summarize``: in-domain, ``summarize_ood``: out-of-domain).
- ``variants.py``: a row's variant, the settings that tell its configuration apart from the others' (``r=8``).
- ``ordering.py``: methods (baselines first) and models (by size) in report order, and their labels.
- ``comparisons.py``: paired tests of two rows, computed once per report (``shared_paired_tests``).
- ``claims_metric.py``: which metric a set's claims and deltas are read on (``--claims-metric``).
- ``stats.py``: intervals and paired tests (exact McNemar, the seeds-and-questions test).
- ``claim_declaration.py``: claims declared in a YAML file (``claim_files/paper.yaml``: the study's).
- ``claims.py``: the claims checked on the rows (``claim_pooling.py``: a claim's rows pooled over models).
- ``claims_output.py``: the checked claims written to claims.md, claims.csv and claims.json.
- ``provenance.py``: report.json, the report's own record (code, versions, settings, every input file).
- ``write_report(dirs, out_dir)``: writes summary.csv, summary_ood.csv, summary.md, the PNG plots, with
  ``claims`` claims.md, claims.csv and claims.json, and report.json.

Command line: ``python -m slm_sweep.report DIR [DIR ...] [--out OUTDIR] [--claims [FILE]] [--alpha A]
[--correction holm|none] [--claims-metric NAME=METRIC ...]``.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

from .aggregate import row_metrics, summarize, summarize_ood
from .claim_declaration import DEFAULT_CLAIMS, ClaimsError, load_claims
from .claims import check_claims, check_correction
from .claims_metric import (
    CLAIMS_METRIC_OPTION,
    CLAIMS_METRIC_SWEEP,
    check_claims_metrics,
    claims_metric_notes,
)
from .claims_output import render_claims_markdown, write_claims
from .collect import Collection, NoResultsError, ReportError, collect, load_results
from .comparisons import shared_paired_tests
from .provenance import REPORT_FILE, report_record, write_report_record
from .stats import ALPHA, CORRECTIONS, HOLM, describe
from .sweep_notes import sweep_sections
from .tables import ood_columns, render_markdown, summary_columns, write_csv
from .variants import not_completed

__all__ = [
    "ALPHA",
    "CLAIMS_METRIC_OPTION",
    "CLAIMS_METRIC_SWEEP",
    "REPORT_FILE",
    "CORRECTIONS",
    "HOLM",
    "DEFAULT_CLAIMS",
    "ClaimsError",
    "Collection",
    "NoResultsError",
    "ReportError",
    "collect",
    "default_out_dir",
    "describe",
    "load_results",
    "summarize",
    "summarize_ood",
    "write_report",
]

log = logging.getLogger(__name__)

# the names of the claims and plot files a report writes (claims_output.write_claims, plots.write_plots)
CLAIMS_FILES = ("claims.md", "claims.csv", "claims.json")
PLOT_FILES = ("accuracy_by_model_*.png", "accuracy_vs_*_*.png", "ood_accuracy_*.png")


def default_out_dir(dirs: Sequence[str | os.PathLike]) -> Path:
    """The first given directory (its parent when it names a result.json)."""
    first = Path(dirs[0])
    return first.parent if first.is_file() else first


def write_report(
    dirs: Sequence[str | os.PathLike], out_dir: str | os.PathLike | None = None, *, plots: bool = True,
    claims: str | os.PathLike | None = None, alpha: float = ALPHA, correction: str = HOLM,
    claims_metrics: Mapping[str, str] | None = None, claims_metrics_from: str = CLAIMS_METRIC_OPTION,
    ood_claims_metrics: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Aggregate every result.json under ``dirs`` and write the report into ``out_dir``.

    ``claims``: a claims file (``DEFAULT_CLAIMS`` for the study's) to check; its table is written to claims.md,
    claims.csv and claims.json and appended to summary.md. ``alpha``: the significance level of every paired
    test (deltas, negative transfer, claims). ``correction``: ``"holm"`` (the tests of one column of one summary
    table are one family, and so are the instances of one claim) or ``"none"``; see claims.check_claim. The
    claims and plot files an earlier report wrote into ``out_dir`` (its report.json's ``outputs``) that this
    one does not write are removed (``_remove_stale_outputs``); files no report wrote stay, whatever their
    names, and a summary, claims or report.json file there that no report wrote is refused (a ReportError,
    ``_refuse_foreign_files``) before anything is written. ``claims_metrics``: {dataset or out-of-domain set: metric}, the metric its deltas, tests, marks and
    claims are read on instead of the ``claims_metric`` its records recorded; each must be a set the completed
    records have and a metric some of them hold an accuracy of (a ReportError otherwise). summary.md says so, one
    line per set (``claims_metric_notes``; ``claims_metrics_from``: ``CLAIMS_METRIC_OPTION``, asked for, or
    ``CLAIMS_METRIC_SWEEP``, the end-of-sweep summary's own config over results that recorded another metric).
    ``ood_claims_metrics``: {out-of-domain set: metric} for the out-of-domain rows, ``claims_metrics`` then being
    for the in-domain rows only (the end-of-sweep summary's: a dataset's jobs' config and a set's config are not
    the same); None: ``claims_metrics`` is for both, by the set's name (``--claims-metric``).

    Raises FileNotFoundError when a directory does not exist, NoResultsError (a FileNotFoundError) when no
    result.json is found at all, ClaimsError (a ValueError) for a claims file that cannot be used, and
    ReportError (a ValueError) for files in ``out_dir`` that no report wrote, a ``claims_metrics`` entry the
    records do not have, or seeds of one row that scored different numbers of questions, before anything is
    written. Returns a dict with the written paths (``summary_csv``, ``summary_ood_csv``,
    ``summary_md``, ``plots``, with claims ``claims_md``, ``claims_csv``, ``claims_json``, and ``report_json``;
    all of them in ``files``), the earlier report's files it ``removed`` (report.json's ``removed``), the
    summary ``rows`` and ``ood_rows``, the ``markdown`` text, the ``claims`` report (or None), report.json's
    ``record``, the ``collection`` that was read and the ``claims_metric_notes``. The rows and claims are over ``collection.cells``: the
    records and the cells killed before writing a result.json (lost seeds).
    """
    if isinstance(dirs, (str, os.PathLike)):
        dirs = [dirs]
    if not 0 < alpha < 1:
        raise ValueError(f"alpha={alpha} must be between 0 and 1")
    check_correction(correction)
    declared = load_claims(claims) if claims is not None else None
    out = Path(out_dir) if out_dir is not None else default_out_dir(dirs)
    ours = ["summary.md", "summary.csv", "summary_ood.csv", *(CLAIMS_FILES if declared is not None else ())]
    # a folder of the results read is the reports' own (its summary may predate report.json); elsewhere a summary
    # or claims file that no report wrote is refused, before anything is computed
    if out.resolve() not in {default_out_dir([d]).resolve() for d in dirs}:
        _refuse_foreign_files(out, [*ours, REPORT_FILE])
    collection = collect(dirs)
    # every cell, those killed before writing a result.json included: a lost seed whichever way it was lost
    cells = collection.cells
    # read by every choice of a set's claims metric: rows, deltas, marks, plots and claims; one mapping for both
    # kinds of rows of a set (--claims-metric names a set), or one per kind (the sweep's config)
    apart = ood_claims_metrics is not None
    overrides = check_claims_metrics(claims_metrics, cells, out_of_domain=not apart)
    notes = claims_metric_notes(overrides, cells, claims_metrics_from, out_of_domain=not apart) if overrides else []
    ood_overrides = overrides
    if apart:
        ood_overrides = check_claims_metrics(ood_claims_metrics, cells, in_domain=False)
        notes += claims_metric_notes(ood_overrides, cells, claims_metrics_from, in_domain=False)
    # the tables and the claims test many of the same pairs of rows: each test once, a batch of them side by side
    with shared_paired_tests():
        rows = summarize(cells, alpha=alpha, correction=correction, claims_metrics=overrides)
        ood_rows = summarize_ood(cells, alpha=alpha, correction=correction, claims_metrics=ood_overrides)
        claims_report = (check_claims(declared, rows, alpha=alpha, correction=correction, source=claims,
                                      lost=not_completed(cells),
                                      unreadable=[str(path) for path, _ in collection.malformed],
                                      unattributed=collection.unattributed, dirs=collection.dirs,
                                      report_json=REPORT_FILE)
                         if declared is not None else None)

    out.mkdir(parents=True, exist_ok=True)
    # until the finished record replaces it, report.json names the files being written (and the earlier report's):
    # a report stopped midway leaves them as a report's, which the next one replaces and cleans up after
    write_report_record(out, {"status": "unfinished: the report writing these files stopped before it finished",
                              "outputs": sorted((_earlier_outputs(out) or set()) | set(ours))})
    markdown = render_markdown(collection, rows, ood_rows, alpha=alpha, correction=correction,
                               claims_metric_notes=notes)
    if claims_report is not None:
        markdown += "\n\n" + render_claims_markdown(claims_report, level=2)
    sections = sweep_sections(dirs)  # what a sweep's preflight left out, its cells that did not complete
    if sections:
        markdown += "\n".join(["", *sections])
    summary_md = out / "summary.md"
    summary_md.write_text(markdown + "\n", encoding="utf-8")
    summary_csv = write_csv(rows, summary_columns(row_metrics(rows)), out / "summary.csv")
    summary_ood_csv = write_csv(ood_rows, ood_columns(row_metrics(ood_rows)), out / "summary_ood.csv")
    claim_paths = write_claims(claims_report, out) if claims_report is not None else {}
    plot_paths: list[Path] = []
    if plots:
        from .plots import write_plots  # matplotlib is imported only when plots are drawn

        plot_paths = write_plots(rows, ood_rows, out)
    written = [summary_csv, summary_ood_csv, summary_md, *claim_paths.values(), *plot_paths]
    removed = _remove_stale_outputs(out, {path.name for path in written})
    record = report_record(collection, alpha=alpha, correction=correction, claims=claims, plots=plots,
                           outputs=written,
                           claims_metrics=_claims_metrics_record(overrides, ood_overrides if apart else None,
                                                                 claims_metrics_from))
    record["removed"] = [str(path) for path in removed]
    report_json = write_report_record(out, record)
    return {
        "summary_csv": summary_csv,
        "summary_ood_csv": summary_ood_csv,
        "summary_md": summary_md,
        **claim_paths,
        "plots": plot_paths,
        "report_json": report_json,
        "record": record,
        "files": [*written, report_json],
        "removed": removed,
        "rows": rows,
        "ood_rows": ood_rows,
        "markdown": markdown,
        "claims": claims_report,
        "collection": collection,
        "claims_metric_notes": notes,
    }


def _claims_metrics_record(overrides: Mapping[str, str], ood_overrides: Mapping[str, str] | None,
                           source: str) -> dict[str, Any] | None:
    """report.json's ``settings.claims_metrics``: the metrics read instead of the recorded ones (``metrics``; with
    ``out_of_domain``, given apart, those of the out-of-domain rows, ``metrics`` then being the in-domain rows'),
    and where they came from; None for none."""
    if not overrides and not ood_overrides:
        return None
    record: dict[str, Any] = {"metrics": dict(overrides)}
    if ood_overrides is not None:
        record["out_of_domain"] = dict(ood_overrides)
    record["from"] = source
    return record


def _earlier_outputs(out: Path) -> set[str] | None:
    """The names of the files the earlier report in ``out`` wrote (its report.json's ``outputs``); None when
    ``out`` holds no report.json a report wrote."""
    try:
        earlier = json.loads((out / REPORT_FILE).read_text(encoding="utf-8")).get("outputs")
    except (OSError, ValueError, AttributeError):
        return None
    if not isinstance(earlier, list):
        return None
    # by name in ``out``: a report writes its files there, and a relative --out named them from its own cwd
    return {Path(path).name for path in earlier if isinstance(path, str)}


def _refuse_foreign_files(out: Path, names: Sequence[str]) -> None:
    """Refuse to write into ``out`` over files of these names that no report wrote (none listed in a report.json
    there): a folder of the user's own notes given as --out. Raises ReportError naming them. Plots are not
    checked: their names are known only as they are drawn, and a figure of the same name is replaced."""
    earlier = _earlier_outputs(out)
    written = (earlier or set()) | ({REPORT_FILE} if earlier is not None else set())
    foreign = [name for name in names if name not in written and (out / name).exists()]
    if foreign:
        them = "it" if len(foreign) == 1 else "them"
        raise ReportError(f"{out} holds {', '.join(foreign)}, which no report wrote (no report.json there lists "
                          f"{them}), and this report would replace {them}: move {them} away or write the report "
                          "into another folder (--out)")


def _remove_stale_outputs(out: Path, written: set[str]) -> list[Path]:
    """Remove the claims and plot files that the earlier report in ``out`` lists in its report.json's
    ``outputs`` and whose names are not ``written`` this time (claims.md of a run with --claims, a plot of a
    dataset no longer read), so that none is read as this report's; return them. A file no report wrote is
    never touched, whatever its name (a folder of the user's own figures given as --out)."""
    names = _earlier_outputs(out)
    if names is None:
        return []
    removed = []
    for name in sorted(names - written):
        path = out / name
        if any(fnmatch(name, pattern) for pattern in (*CLAIMS_FILES, *PLOT_FILES)) and path.is_file():
            path.unlink()
            log.warning("removed %s: the earlier report in %s wrote it and this one does not", path, out)
            removed.append(path)
    return removed
