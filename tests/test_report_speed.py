"""bench/report_speed.py at a tiny size (a dry run, so that the benchmark keeps working), and the report's shared
paired tests: each test of a report computed once, and side by side in threads, with the results computed one by
one."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import re
import sys
from collections import Counter
from pathlib import Path

import pytest

from slm_sweep.report import DEFAULT_CLAIMS, collect, comparisons, summarize, write_report
from slm_sweep.report.claim_declaration import load_claims
from slm_sweep.report.claims import check_claims
from slm_sweep.report.claims_output import write_claims
from slm_sweep.report.comparisons import compare_many, compare_rows, shared_paired_tests
from slm_sweep.report.stats import SEEDS_AND_QUESTIONS

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

import report_speed  # noqa: E402

QUESTIONS = 12


def _csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    """The benchmark's command line on 2 models x 7 methods x 2 datasets x 1 seed, 12 questions a set."""
    root = tmp_path_factory.mktemp("report_speed")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = report_speed.main(["--models", "2", "--seeds", "1", "--questions", str(QUESTIONS), "--keep",
                                  str(root), "--no-plots"])
    assert code == 0
    return root, printed.getvalue()


def test_the_benchmark_builds_a_sweep_of_the_paper_s_shape_and_times_its_whole_report(dry_run):
    root, printed = dry_run
    grid = report_speed.paper_grid(models=2, seeds=1)
    assert grid.models == ("smollm135", "gemma270") and len(grid.methods) == 7
    assert grid.datasets == ("gsm8k", "orcamath") and len(grid.ood_sets) == 6
    cells, sets = 2 * 7 * 2, 1 + 6
    assert (f"= {cells} cells ({cells} computed, 0 baseline copies), {cells * sets * QUESTIONS} prediction rows"
            in printed)
    assert re.search(rf"baseline \(json\.loads of {cells} result\.json and {cells * sets * QUESTIONS} prediction "
                     r"lines\): [0-9.]+ s", printed)
    assert re.search(r"report: [0-9.]+ s wall \([0-9.]+x the baseline\)", printed)
    for phase in ("read", "tables", "claims", "write", "per-question scores", "paired tests"):
        assert re.search(rf"\n  {re.escape(phase)} +[0-9.]+ s +[0-9]+ calls", printed), phase

    sweep, report = root / "sweep", root / "report"
    results = sorted(sweep.rglob("result.json"))
    assert len(results) == cells
    records = {(r["dataset"], r["model"], r["method"]): r
               for r in (json.loads(path.read_text(encoding="utf-8")) for path in results)}
    assert len(records) == cells and all(r["status"] == "completed" for r in records.values())
    # every row of the summary is a built cell, at the accuracy its result.json holds
    rows = _csv(report / "summary.csv")
    assert sorted((r["dataset"], r["model"], r["method"]) for r in rows) == sorted(records)
    for row in rows:
        record = records[row["dataset"], row["model"], row["method"]]
        assert (row["n"], row["n_eval"]) == ("1", str(QUESTIONS))
        assert float(row["accuracy_flexible_mean"]) == pytest.approx(record["metrics"]["accuracy_flexible"])
    ood = _csv(report / "summary_ood.csv")
    assert Counter(r["eval_set"] for r in ood) == dict.fromkeys(grid.ood_sets, cells)
    # every claim of the study checked, on the instances of both models
    claims = json.loads((report / "claims.json").read_text(encoding="utf-8"))["claims"]
    assert [c["id"] for c in claims] == [c.id for c in load_claims(DEFAULT_CLAIMS)]
    models = {i[side] for c in claims for i in c["instances"] for side in ("model_a", "model_b")}
    assert {"smollm135", "gemma270"} <= models
    every = next(c for c in claims if c["id"] == "peft-not-below-zeroshot-all-models")
    assert Counter(i["model_a"] for i in every["instances"]) == {"smollm135": 8, "gemma270": 8}
    assert all(i["test"] == "exact McNemar" and i["n_questions"] == QUESTIONS for i in every["instances"])


def test_the_benchmark_refuses_a_grid_the_paper_does_not_have(capsys):
    assert report_speed.main(["--models", "6"]) == 2
    assert "--models 6: experiment=paper has 5 (smollm135, gemma270, smollm360, qwen05, llama1b)" in \
        capsys.readouterr().err


def test_a_report_computes_each_paired_test_once_and_gets_what_each_test_alone_gets(dry_run, tmp_path, monkeypatch):
    root, _ = dry_run
    cells = collect([root / "sweep"]).cells
    declared = load_claims(DEFAULT_CLAIMS)

    # one by one, as the tables and claims asked for them
    rows = summarize(cells)
    alone = check_claims(declared, rows)
    write_claims(alone, tmp_path / "alone")

    computed: Counter = Counter()
    read_from: dict[int, tuple[str, str, str]] = {}  # each per-question score mapping's file, set and metric
    real_scores, real_test = comparisons.question_scores, comparisons.paired_test

    def recorded(path, eval_set, metric):
        scores = real_scores(path, eval_set, metric)
        read_from[id(scores)] = (str(path), eval_set, metric)
        return scores

    def counted(a, b, **options):
        sides = tuple(tuple(read_from[id(seed)] for seed in side) for side in (a, b))
        computed[sides, tuple(sorted(options.items()))] += 1
        return real_test(a, b, **options)

    monkeypatch.setattr(comparisons, "question_scores", recorded)
    monkeypatch.setattr(comparisons, "paired_test", counted)
    with shared_paired_tests(workers=2):
        shared_rows = summarize(cells)
        shared = check_claims(declared, shared_rows)
    write_claims(shared, tmp_path / "shared")
    assert computed and max(computed.values()) == 1  # the tables and several claims ask for the same tests
    assert shared_rows == rows
    for name in ("claims.json", "claims.csv", "claims.md"):
        assert (tmp_path / "shared" / name).read_bytes() == (tmp_path / "alone" / name).read_bytes()


def test_a_built_cell_records_what_run_py_records_and_the_report_draws_every_plot_of_it(tiny_cfg, one_thread,
                                                                                        tmp_path):
    """A built cell's metrics have the keys run.py writes of a finished cell of its kind, a trained one's training
    figures (run.TRAINING_METRICS) included: without final_validation_s the report reads every trained seed as a
    file that counted the final validation pass in its training time, leaves that time out and draws no
    accuracy-vs-training-time plot, which the benchmark then never times."""
    from slm_sweep.run import TRAINING_METRICS, run

    written = {method: run(tiny_cfg(f"method={method}"), out_dir=tmp_path / "run" / method)
               for method in ("zeroshot", "lora")}
    assert [r["status"] for r in written.values()] == ["completed", "completed"]
    grid = report_speed.Grid(models=("smollm135",), methods=("zeroshot", "lora", "dora"), datasets=("gsm8k",),
                             seeds=(0,), ood_sets=("svamp",))
    report_speed.SweepBuilder(tmp_path / "sweep", grid, questions=QUESTIONS).build()
    built = {r["method"]: r for r in (json.loads(path.read_text(encoding="utf-8"))
                                      for path in (tmp_path / "sweep").rglob("result.json"))}
    assert set(built["zeroshot"]["metrics"]) == set(written["zeroshot"]["metrics"])
    assert set(built["lora"]["metrics"]) == set(built["dora"]["metrics"]) == set(written["lora"]["metrics"])
    for method in ("lora", "dora"):
        figures = {key: built[method]["metrics"][key] for key in TRAINING_METRICS}
        assert all(type(value) in (int, float) for value in figures.values()), (method, figures)

    report = write_report([tmp_path / "sweep"], tmp_path / "report", plots=True)
    assert "accuracy_vs_train_time_gsm8k.png" in {path.name for path in report["plots"]}
    rows = {row["method"]: row for row in _csv(tmp_path / "report" / "summary.csv")}
    for method in ("lora", "dora"):
        assert rows[method]["train_time_older_seeds"] == "0"
        assert float(rows[method]["train_time_s_mean"]) == pytest.approx(built[method]["metrics"]["train_time_s"])


def test_tests_over_seeds_computed_side_by_side_are_the_tests_computed_one_by_one(tmp_path, monkeypatch):
    """The seeds-and-questions test draws its seed parts: threads must not change a bit of it."""
    import threading

    grid = report_speed.Grid(models=("smollm135",), methods=("zeroshot", "lora", "dora"), datasets=("gsm8k",),
                             seeds=(0, 1), ood_sets=("svamp",))
    built = report_speed.SweepBuilder(tmp_path, grid, questions=QUESTIONS).build()
    assert built == {"cells": 6, "computed": 5, "copies": 1, "prediction_rows": 6 * 2 * QUESTIONS}
    collection = collect([tmp_path])
    # seed 1's zero-shot cell is a copy of seed 0's (run._reuse), counted once
    [(original, copy)] = collection.copies
    assert (original.parent.name, copy.parent.name) == ("0", "3")
    assert (copy.parent / "predictions.jsonl").read_bytes() == (original.parent / "predictions.jsonl").read_bytes()
    rows = {(r["method"]): r for r in summarize(collection.cells)}
    assert (rows["zeroshot"]["n"], rows["lora"]["n"], rows["dora"]["n"]) == (1, 2, 2)
    pairs = [(rows[a], rows[b], eval_set, metric) for a, b in (("dora", "lora"), ("lora", "zeroshot"))
             for eval_set in ("gsm8k", "svamp") for metric in ("flexible", "lenient")]
    one_by_one = [compare_rows(*pair, alpha=0.01, interval=True) for pair in pairs]
    threads = []  # the thread each test of the batch ran on
    real_test = comparisons.paired_test

    def on_its_thread(a, b, **options):
        threads.append(threading.current_thread())
        return real_test(a, b, **options)

    monkeypatch.setattr(comparisons, "paired_test", on_its_thread)
    with shared_paired_tests(workers=4):
        together = compare_many(pairs, alpha=0.01, interval=True)
    assert all(t.test == SEEDS_AND_QUESTIONS and t.ci_low is not None for t in one_by_one)
    assert together == one_by_one
    # side by side: every test of the batch ran on one of the threads, none on the caller's
    assert len(threads) == len(pairs) and threading.main_thread() not in threads


@pytest.mark.parametrize("workers", [0, -1, 1.5, True])
def test_shared_paired_tests_refuse_a_thread_count_that_is_not_one(workers):
    with pytest.raises(ValueError, match=rf"workers={workers!r}: expected a whole number of threads, at least 1"):
        with shared_paired_tests(workers=workers):
            pass
