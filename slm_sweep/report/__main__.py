"""``python -m slm_sweep.report DIR [DIR ...] [--out OUTDIR] [--claims [FILE]] [--alpha A] [--correction C]
[--claims-metric NAME=METRIC ...]``: write and print the sweep report.

Exit code 0 on success, 2 when a directory does not exist, no result.json is found, the claims file cannot
be used, a --claims-metric names a set or a metric the results do not have, the --out folder holds a summary,
claims or report.json file that no report wrote, or the seeds of one row scored different numbers of questions.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from slm_sweep.results import RESULT_FILE

from . import ALPHA, CORRECTIONS, DEFAULT_CLAIMS, HOLM, ClaimsError, write_report
from .collect import ReportError
from .tables import cells_used


def _alpha(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a significance level between 0 and 1 (e.g. 0.05)")
    return value


def _results_dir(text: str) -> str:
    """DIR: a folder (searched recursively) or a cell's result.json; another file would be read as no results."""
    path = Path(text)
    if path.is_file() and path.name != RESULT_FILE:
        raise argparse.ArgumentTypeError(f"{text} is a file; DIR expects a sweep or run folder (searched "
                                         f"recursively) or a cell's {RESULT_FILE}")
    return text


def _out_dir(text: str) -> str:
    """--out: a folder, existing or not; a file there (or above it) would stop the report after reading the sweep."""
    path = Path(text)
    blocking = next((p for p in (path, *path.parents) if p.exists() and not p.is_dir()), None)
    expected = "--out expects a folder (the report writes summary.md and the rest into it)"
    if blocking == path:
        raise argparse.ArgumentTypeError(f"{text} is a file; {expected}")
    if blocking is not None:
        raise argparse.ArgumentTypeError(f"{text} cannot be a folder: {blocking} is a file; {expected}")
    return text


def _claims_metric(text: str) -> tuple[str, str]:
    """--claims-metric NAME=METRIC: a dataset or out-of-domain set and the metric its deltas are read on."""
    name, sign, metric = text.partition("=")
    name, metric = name.strip(), metric.strip().removeprefix("accuracy_")
    if not sign or not name or not metric:
        raise argparse.ArgumentTypeError(f"{text!r} is not NAME=METRIC (a dataset or out-of-domain set and a "
                                         "metric, e.g. gsm8k=strict)")
    return name, metric


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m slm_sweep.report",
        description="Aggregate the result.json files found under DIRs into summary tables and plots, and check "
                    "the study's claims against them.",
    )
    parser.add_argument("dirs", type=_results_dir, nargs="+", metavar="DIR",
                        help="sweep or run directory, searched recursively, or a cell's result.json")
    parser.add_argument("--out", type=_out_dir, metavar="OUTDIR",
                        help="the folder to write the report into (default: the first DIR)")
    parser.add_argument("--no-plots", action="store_true", help="write only the tables")
    parser.add_argument("--claims", nargs="?", const=str(DEFAULT_CLAIMS), metavar="FILE",
                        help="check the claims declared in FILE (without FILE: the study's, "
                             "slm_sweep/report/claim_files/paper.yaml); writes claims.md, claims.csv, claims.json")
    parser.add_argument("--alpha", type=_alpha, default=ALPHA,
                        help=f"significance level of the paired tests (default {ALPHA})")
    parser.add_argument("--correction", choices=CORRECTIONS, default=HOLM,
                        help="multiple comparisons: holm (default; the delta marks of one column of one summary "
                             "table are Holm-adjusted as one family, a claim's instances get Holm-adjusted "
                             "p-values and Bonferroni intervals, so marks and verdicts hold jointly) or none "
                             "(each test at alpha on its own)")
    parser.add_argument("--claims-metric", type=_claims_metric, action="append", default=[],
                        metavar="NAME=METRIC",
                        help="read the deltas, tests, marks and claims of the dataset or out-of-domain set NAME on "
                             "METRIC (a metric its results hold), instead of the claims_metric its result files "
                             "recorded; repeatable, one per set")
    args = parser.parse_args(argv)
    claims_metrics = dict(args.claims_metric)
    if len(claims_metrics) < len(args.claims_metric):
        twice = sorted({name for name, _ in args.claims_metric
                        if sum(n == name for n, _ in args.claims_metric) > 1})
        parser.error(f"--claims-metric names {', '.join(twice)} more than once")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s", stream=sys.stderr)

    try:
        report = write_report(args.dirs, args.out, plots=not args.no_plots, claims=args.claims, alpha=args.alpha,
                              correction=args.correction, claims_metrics=claims_metrics)
    except (FileNotFoundError, ClaimsError, ReportError) as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 2

    print(report["markdown"])  # with --claims, the claims table is its last section
    print()
    collection = report["collection"]
    skipped = ", ".join(f"{n} {status}" for status, n in collection.skipped_counts.items())
    print(
        f"{len(collection.files)} result files, {cells_used(collection)}; "
        f"skipped cells: {skipped}; validation-split cells left out: {len(collection.validation)}; "
        f"malformed files: {len(collection.malformed)}; "
        f"duplicates dropped: {len(collection.duplicates)}; "
        f"copies of a seed-independent baseline counted once: {len(collection.copies)}; "
        f"set aside by a rerun: {len(collection.set_aside)} read as other settings, "
        f"{len(collection.replaced)} recomputed and left out"
    )
    print("Wrote:")
    for path in report["files"]:
        print(f"  {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
