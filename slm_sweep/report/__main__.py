"""``python -m slm_sweep.report DIR [DIR ...] [--out OUTDIR]``: write and print the sweep report.

Exit code 0 on success, 2 when a directory does not exist or no result.json is found.
"""

from __future__ import annotations

import argparse
import logging
import sys

from . import write_report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m slm_sweep.report",
        description="Aggregate the result.json files found under DIRs into summary tables and plots.",
    )
    parser.add_argument("dirs", nargs="+", metavar="DIR", help="sweep or run directory, searched recursively")
    parser.add_argument("--out", metavar="OUTDIR", help="where to write the report (default: the first DIR)")
    parser.add_argument("--no-plots", action="store_true", help="write only the tables")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s", stream=sys.stderr)

    try:
        report = write_report(args.dirs, args.out, plots=not args.no_plots)
    except FileNotFoundError as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 2

    print(report["markdown"])
    print()
    collection = report["collection"]
    skipped = ", ".join(f"{n} {status}" for status, n in collection.skipped_counts.items())
    print(
        f"{len(collection.files)} result files, {len(collection.completed)} completed cells used; "
        f"skipped cells: {skipped}; malformed files: {len(collection.malformed)}; "
        f"duplicates dropped: {len(collection.duplicates)}"
    )
    print("Wrote:")
    for path in report["files"]:
        print(f"  {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
