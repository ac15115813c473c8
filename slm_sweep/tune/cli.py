"""``python -m slm_sweep.tune DIR [DIR ...]``: the table from the folders of a search (``main``); with
``--paper-search``, experiment=paper's search first (``run_paper_search``: ``make paper-search``)."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from slm_sweep.arguments import at_least
from slm_sweep.config_sources import CONF_DIR
from slm_sweep.tune.cell_rate import MIN_VAL_EXAMPLES, PAPER_SEARCH, PAPER_SEARCH_DIR, PAPER_TUNE
from slm_sweep.tune.choose import choose
from slm_sweep.tune.records import read_search, search_groups
from slm_sweep.tune.table import (
    DEFAULT_TABLE,
    TuningError,
    check_table_file,
    lookup,
    read_table,
    render,
    search_record,
    table_path,
    write_table,
)

# the experiment whose trained cells `make paper-search` searches (paper_search_command, PAPER_SEARCH)
PAPER_EXPERIMENT = "paper"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--paper-search"]:
        if {"-h", "--help"} & set(argv[1:]):
            print(paper_search_help())
            return 0
        return run_paper_search(argv[1:])
    parser = argparse.ArgumentParser(
        prog="python -m slm_sweep.tune",
        description="Choose each dataset x model x method's learning rate from the validation scores of a search "
                    "and write the table that cells with tuning.lr=tuned read. `python -m slm_sweep.tune "
                    "--paper-search [OVERRIDE ...]` runs experiment=paper's search first (make paper-search).")
    parser.add_argument("dirs", nargs="+", metavar="DIR", help="search directory (multirun/hparams/...), recursive")
    parser.add_argument("--out", type=_table_out, metavar="FILE", default=str(table_path(DEFAULT_TABLE)),
                        help="the table to write (default: %(default)s); its entries of other searches are kept")
    parser.add_argument("--replace", action="store_true",
                        help="write the table afresh from the rates chosen here (with none chosen, only the entries "
                             "searched here are dropped; with --keep-unchosen, the earlier entries of those searched "
                             "here that got no rate are kept)")
    parser.add_argument("--keep-unchosen", action="store_true",
                        help="keep the table's earlier entry of a dataset x model x method searched here that no "
                             "rate was chosen for, under --replace too (by default it is dropped, and the command "
                             "exits 1)")
    parser.add_argument("--metric", default=None,
                        help="validation accuracy to maximise, val_accuracy_<metric> (default: each dataset's "
                             "claims metric, val_accuracy_flexible; val_accuracy_lenient on OrcaMath)")
    parser.add_argument("--min-val-examples", type=at_least(0), default=MIN_VAL_EXAMPLES, metavar="N",
                        help="refuse searches scored on fewer validation questions (%(default)s)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s", stream=sys.stderr)
    try:
        if Path(args.out).exists():
            check_table_file(Path(args.out))
        records = read_search(args.dirs)
        chosen = choose(records, args.metric, args.min_val_examples)
        unchosen = [key for key in search_groups(records) if key not in chosen]
        if not chosen and not unchosen:
            raise TuningError(f"no search cell under {', '.join(args.dirs)} (a trained method scored with "
                              "eval.split=val): the table is left as it was")
        out = Path(args.out)
        # the table as it is, unless --replace starts it afresh from the rates chosen (keeping only what
        # --keep-unchosen keeps); with none chosen, --replace keeps the others and drops only the entries searched
        # again (as without it)
        fresh = bool(args.replace and chosen)
        earlier = read_table(out) if out.exists() and (not fresh or args.keep_unchosen and unchosen) else None
        kept = [k for k in unchosen if args.keep_unchosen and earlier is not None and lookup(earlier, *k) is not None]
        keep = _entries(earlier, kept) if fresh and earlier is not None else earlier
        dropped = [] if args.keep_unchosen or earlier is None else [k for k in unchosen
                                                                     if lookup(earlier, *k) is not None]
        path = write_table(chosen, out, [str(d) for d in args.dirs], args.metric, keep, drop=dropped) \
            if chosen or dropped else None
    except (FileNotFoundError, TuningError) as err:
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
        return 2
    if chosen:
        print(render(chosen))
    print(f"Wrote {path}" if path else f"{out} is left as it was")
    return _report_unchosen(parser.prog, unchosen, dropped, kept, args.keep_unchosen)


def _table_out(text: str) -> str:
    """--out: a file, existing or not; a folder there, or a file above it, could not be written as one."""
    path = Path(text)
    expected = "--out expects the path of the table's file"
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a folder; {expected} (such as {path / 'lr.yaml'})")
    blocking = next((p for p in path.parents if p.exists() and not p.is_dir()), None)
    if blocking is not None:
        raise argparse.ArgumentTypeError(f"{text} cannot be written: {blocking} is a file, not a folder; {expected}")
    return text


def _entries(table: Mapping[str, Any], keys: Sequence[tuple[str, str, str]]) -> dict[str, Any]:
    """``table`` with only the entries of ``keys`` (dataset, model, method), their rates and search records, and
    the searches they name (their own, else the table's): what --replace --keep-unchosen keeps."""
    lr: dict[str, Any] = {}
    searched: dict[str, Any] = {}
    searches: list[str] = []
    for dataset, model, method in keys:
        lr.setdefault(dataset, {}).setdefault(model, {})[method] = lookup(table, dataset, model, method)
        record = search_record(table, dataset, model, method)
        if record:
            searched.setdefault(dataset, {}).setdefault(model, {})[method] = record
        own = record.get("searches")
        searches += own if isinstance(own, list) else table.get("searches") or []
    return {"lr": lr, "searched": searched, "searches": list(dict.fromkeys(searches))}


def _report_unchosen(prog: str, unchosen: Sequence[tuple[str, str, str]], dropped: Sequence[tuple[str, str, str]],
                     kept: Sequence[tuple[str, str, str]], keep_unchosen: bool) -> int:
    """Exit status: 0 when every dataset x model x method searched got a rate (or --keep-unchosen kept the
    earlier entries, ``kept``, of those that did not), else 1, naming them and the entries dropped."""
    if not unchosen:
        return 0
    if keep_unchosen:
        none = [k for k in unchosen if k not in kept]
        what = [*([f"the table keeps its earlier entry of {_names(kept)} as it was (--keep-unchosen)"] if kept else []),
                *([f"the table has no entry of {_names(none)} (none earlier to keep)"] if none else [])]
        print(f"{prog}: warning: no rate of {_names(unchosen)} completed every seed; {'; '.join(what)}",
              file=sys.stderr)
        return 0
    gone = f" (its earlier entry of {_names(dropped)} is dropped: searched again, no rate chosen)" if dropped else ""
    print(f"{prog}: error: no rate of {_names(unchosen)} completed every seed, so the table has none{gone}. Search "
          "again (the warnings above say why each rate is no candidate), or keep an earlier entry with "
          "--keep-unchosen", file=sys.stderr)
    return 1


def _names(keys: Sequence[tuple[str, str, str]]) -> str:
    return ", ".join("/".join(key) for key in keys)


def paper_search_command(experiment: str | Path = PAPER_EXPERIMENT, extra: Sequence[str] = ()) -> list[str]:
    """The search of every trained cell of an experiment (``experiment=paper``: conf/experiment/paper.yaml, or a
    file's path), trained and scored as its cells are: its swept models and datasets, the methods of its list that
    train, the trainer and eval groups it chooses, at hparams_search=lr_grid's candidate rates on the validation
    split; written to PAPER_SEARCH_DIR. ``extra``: more overrides (data_root=..., preflight.only=true)."""
    from omegaconf import OmegaConf

    from slm_sweep.config import compose

    path = Path(experiment) if Path(experiment).suffix == ".yaml" else CONF_DIR / "experiment" / f"{experiment}.yaml"
    spec = OmegaConf.load(path)
    params = OmegaConf.select(spec, "hydra.sweeper.params") or {}
    missing = [key for key in ("model", "method", "dataset") if key not in params]
    if missing:
        raise TuningError(f"{path}: hydra.sweeper.params has no {', '.join(missing)} to search")
    groups = [f"{key.removeprefix('override /')}={value}" for entry in spec.get("defaults") or []
              if isinstance(entry, Mapping) for key, value in entry.items()
              if key.removeprefix("override /") in ("trainer", "eval")]
    trained = [m for m in str(params["method"]).split(",") if compose([f"method={m.strip()}"]).method.train]
    if not trained:
        raise TuningError(f"{path}: none of its methods ({params['method']}) trains, so it has no rate to search")
    return ["python", "-m", "slm_sweep", "-m", "hparams_search=lr_grid", *groups, f"model={params['model']}",
            f"method={','.join(m.strip() for m in trained)}", f"dataset={params['dataset']}",
            f"hydra.sweep.dir={PAPER_SEARCH_DIR}", *extra]


def _override_value(overrides: Sequence[str], key: str) -> tuple[bool, Any]:
    """(given, value) of the last override of ``key`` in ``overrides`` as Hydra parses it (``key=true`` and
    ``key=True`` are True, ``'key=/a b'`` is ``/a b``; ``+key=`` and ``++key=`` set it too, ``~key`` drops it);
    (False, None) when none sets it."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    given, value = False, None
    for text in overrides:
        try:
            override = parser.parse_override(str(text))
        except Exception:  # noqa: BLE001 - not an override Hydra reads: the search refuses it itself
            continue
        if override.key_or_group != key:
            continue
        given, value = (False, None) if override.is_delete() else (True, override.value())
    return given, value


def search_dir_of(extra: Sequence[str]) -> str:
    """The folder the paper's search writes to: PAPER_SEARCH_DIR, or the last ``hydra.sweep.dir=`` of ``extra``
    (Hydra takes the last). Raises TuningError for one Hydra would resolve when the search starts
    (``${now:...}``), which this command could not find again."""
    given, value = _override_value(extra, "hydra.sweep.dir")
    if not given or value is None:
        return PAPER_SEARCH_DIR
    if "${" in str(value):
        raise TuningError(f"hydra.sweep.dir={value}: the table is written from the search's folder, which an "
                          "interpolation resolved when the search starts would hide from this command; give the "
                          "folder itself")
    return str(value)


def preflight_only(extra: Sequence[str]) -> bool:
    """Whether ``extra`` makes the search only list its cells: the last ``preflight.only=`` read as OmegaConf reads
    the typed setting (true, True, yes, on, 1; false, no, off, 0 run the search). A value that is none of them
    (an interpolation, resolved only in the search) counts as true: no table is written from what the search may
    not have run."""
    from omegaconf import BooleanNode

    given, value = _override_value(extra, "preflight.only")
    if not given:
        return False
    try:
        return BooleanNode(value)._value() is not False
    except Exception:  # noqa: BLE001 - no boolean: the search refuses it itself, and no table is written
        return True


def run_paper_search(extra: Sequence[str]) -> int:
    """``make paper-search``: the search (paper_search_command), then the table from the folder it wrote to
    (``search_dir_of``: an appended ``hydra.sweep.dir=`` is where it writes), unless it only listed its cells
    (``preflight_only``). A search that exits non-zero (a cell that did not complete, a refused preflight) writes
    no table: rates chosen without some cells would be chosen among fewer candidates than the study says; the
    message names those cells and how to go on."""
    import subprocess

    try:
        search_dir = search_dir_of(extra)
    except TuningError as err:
        print(f"{PAPER_SEARCH}: error: {err}", file=sys.stderr)
        return 2
    command = [sys.executable, *paper_search_command(extra=extra)[1:]]
    print(" ".join(["python", *command[1:]]), flush=True)
    returncode = subprocess.call(command)
    if preflight_only(extra):
        if returncode == 0:
            print("preflight.only: the search listed its cells and ran none; no table written", flush=True)
        return returncode
    if returncode != 0:
        print(_no_table_written(search_dir, returncode), file=sys.stderr, flush=True)
        return returncode
    return main([search_dir])


def _no_table_written(search_dir: str, returncode: int) -> str:
    """Why the paper's search wrote no table: the cells of ``search_dir`` that did not complete (a diverged rate is
    a result, not one of them), or a search stopped before any did."""
    from slm_sweep.report.sweep_notes import incomplete_cells

    try:
        broken = [(job, why) for job, why in incomplete_cells(Path(search_dir)) if not why.startswith("diverged:")]
    except Exception:  # noqa: BLE001 - the folder unreadable or absent: the search's own message says why
        broken = []
    head = f"{PAPER_SEARCH}: error: the search in {search_dir} exited with status {returncode}, so no table was written"
    if not broken:
        return (f"{head} ({table_path(DEFAULT_TABLE)} is left as it was): none of its cells is recorded as failed, so "
                "it stopped before or outside them (its message above says why). Fix that and run it again")
    cells = "\n".join(f"  {job}: {why}" for job, why in broken)
    return (f"{head} ({table_path(DEFAULT_TABLE)} is left as it was): {len(broken)} cell(s) did not complete, and a "
            f"rate that lost a cell would be no candidate:\n{cells}\nRun `make paper-search` again (the completed "
            f"cells are reused, these run again), or write the table from the completed cells on purpose with "
            f"`python -m slm_sweep.tune {search_dir}` (each rate that lost a cell is then listed as not eligible, and "
            "the command exits 1 where no rate of a dataset x model x method is left)")


def paper_search_help() -> str:
    """``--paper-search --help``: what it runs and the overrides it takes (Hydra's own help cannot compose the
    search's comma lists outside a multirun)."""
    return "\n".join([
        f"usage: {PAPER_SEARCH} [OVERRIDE ...]",
        "",
        "The validation search of every trained cell of experiment=paper (make paper-search), then the table "
        f"experiment=paper reads ({table_path(DEFAULT_TABLE)}). It runs:",
        "",
        "  " + " ".join(paper_search_command(extra=["[OVERRIDE ...]"])),
        f"  {PAPER_TUNE}",
        "",
        "OVERRIDE: any override of python -m slm_sweep, appended to the search, e.g.",
        "  data_root=DIR         the folder holding the datasets",
        "  preflight.only=true   list the search's cells and what they miss, run none, write no table",
        f"  hydra.sweep.dir=DIR   search into DIR in place of {PAPER_SEARCH_DIR}; the table is written from DIR",
        "",
        "A search with a cell that did not complete (a diverged rate is a result) writes no table: the message names "
        "the cells.",
    ])
