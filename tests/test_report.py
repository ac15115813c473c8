"""Tests of slm_sweep.report on a small grid of result.json files written here."""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import random
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from slm_sweep.identity import file_sha256
from slm_sweep.report import (
    DEFAULT_CLAIMS,
    REPORT_FILE,
    ReportError,
    collect,
    load_results,
    summarize,
    summarize_ood,
    write_report,
)
from slm_sweep.report.stats import SEED_TEST_DRAWS, SEED_TEST_SEED, t_critical

REPO = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

DATASET = "gsm8k"
OOD_SET = "svamp"
SEEDS = (0, 1, 2)
METHODS = ("zeroshot", "fewshot", "full", "lora")
# "alpha" is the larger model, so sorting by size must put "beta" first
MODELS = {"alpha": 360_000_000, "beta": 135_000_000}
TRAINABLE = {"zeroshot": 0, "fewshot": 0, "full": None, "lora": 1_000_000}
# mean flexible accuracy per cell; alpha's lora is below its zeroshot (negative transfer)
BASE_ACCURACY = {
    ("alpha", "zeroshot"): 0.30, ("alpha", "fewshot"): 0.35, ("alpha", "full"): 0.45, ("alpha", "lora"): 0.20,
    ("beta", "zeroshot"): 0.10, ("beta", "fewshot"): 0.12, ("beta", "full"): 0.25, ("beta", "lora"): 0.22,
}  # fmt: skip


def make_record(model, method, seed, flexible, strict, *, status="completed", finished_at=None, ood=None):
    total = MODELS[model] + (TRAINABLE["lora"] if method == "lora" else 0)
    trainable = total if method == "full" else TRAINABLE[method]
    fine_tuned = method not in ("zeroshot", "fewshot")
    metrics = {
        "accuracy_strict": strict,
        "accuracy_flexible": flexible,
        "n_eval": 100,
        "trainable_params": trainable,
        "total_params": total,
        "train_time_s": 50.0 + 10 * seed if fine_tuned else 0.0, "final_validation_s": 2.0 if fine_tuned else None,
        "eval_time_s": 4.0 + seed,
        "eval_time_all_sets_s": 7.0,  # the scored split and the out-of-domain sets, as a cell records them
        "train_loss": 1.0 if fine_tuned else None,
        "val_loss": 1.1 if fine_tuned else None,
        "train_steps": 10 if fine_tuned else 0,
        "train_tokens": 1000 if fine_tuned else 0,
        "train_tokens_per_s": 1000.0 + seed if fine_tuned else None,
        "eval_tokens_per_s": 200.0,
        "peak_memory_mb": 512.0 + 100 * seed,
        "step_time_s": 0.5 + 0.1 * seed if fine_tuned else None,
        "train_padding_fraction": 0.1 * seed if fine_tuned else None,
        "train_clipped_fraction": 0.25 * seed if fine_tuned else None,
        "mfu": 0.01 * (seed + 1) if fine_tuned else None,
    }
    return {
        "schema_version": 1,
        "status": status,
        "error": None if status == "completed" else "RuntimeError: boom",
        "model": model,
        "model_id": f"org/{model}",
        "method": method,
        "dataset": DATASET,
        "seed": seed,
        "metrics": metrics if status == "completed" else {},
        "eval_sets": ood or {},
        "reused_from": None,
        "config": {},
        "versions": {},
        "git_commit": None,
        "hardware": {},
        "started_at": "2024-01-01T12:00:00Z",
        "finished_at": finished_at or "2024-01-01T13:00:00Z",
    }


def write_json(path: Path, record) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record) if not isinstance(record, str) else record)
    return path


@pytest.fixture
def grid(tmp_path):
    """A sweep directory with 2 models × 4 methods × 3 seeds; returns (dir, expected values per cell)."""
    rng = random.Random(1234)
    sweep = tmp_path / "multirun" / "2024-01-01" / "12-00-00"
    values: dict[tuple[str, str], dict[str, list[float]]] = {}
    job = 0
    for model in MODELS:
        for method in METHODS:
            cell = values.setdefault((model, method), {"flexible": [], "strict": [], "ood": []})
            for seed in SEEDS:
                flexible = BASE_ACCURACY[model, method] + rng.uniform(-0.02, 0.02)
                strict = flexible - rng.uniform(0.0, 0.05)
                ood = BASE_ACCURACY[model, method] / 2 + rng.uniform(-0.02, 0.02)
                cell["flexible"].append(flexible)
                cell["strict"].append(strict)
                cell["ood"].append(ood)
                eval_sets = {OOD_SET: {"accuracy_strict": ood - 0.01, "accuracy_flexible": ood, "n_eval": 50}}
                record = make_record(model, method, seed, flexible, strict, ood=eval_sets)
                write_json(sweep / str(job) / "result.json", record)
                job += 1
    return sweep, values


def expected_stats(values):
    mean = statistics.fmean(values)
    std = statistics.stdev(values)
    return mean, std, t_critical(len(values) - 1) * std / math.sqrt(len(values))


def test_t_critical_matches_student_t():
    assert t_critical(2) == pytest.approx(4.303, abs=1e-3)
    assert t_critical(30) == pytest.approx(2.042, abs=1e-3)


def test_rows_order_and_statistics(grid):
    sweep, values = grid
    rows = summarize(load_results([sweep]))
    assert [(r["model"], r["method"]) for r in rows] == [
        (m, method) for m in ("beta", "alpha") for method in METHODS
    ]
    for row in rows:
        cell = values[row["model"], row["method"]]
        assert row["dataset"] == DATASET
        assert row["n"] == 3 and row["seeds"] == [0, 1, 2]
        for key, metric in (("flexible", "accuracy_flexible"), ("strict", "accuracy_strict")):
            mean, std, ci = expected_stats(cell[key])
            assert row[f"{metric}_mean"] == pytest.approx(mean)
            assert row[f"{metric}_std"] == pytest.approx(std)
            assert row[f"{metric}_ci95"] == pytest.approx(ci)
        assert row["total_params"] == MODELS[row["model"]] + (1_000_000 if row["method"] == "lora" else 0)
        assert row["n_eval"] == 100
        if row["method"] in ("full", "lora"):
            assert row["train_time_s_mean"] == pytest.approx(60.0)
            assert row["train_tokens_per_s_mean"] == pytest.approx(1001.0)
            assert row["step_time_s_mean"] == pytest.approx(0.6)
            assert row["mfu_mean"] == pytest.approx(0.02)
            assert row["train_padding_fraction_mean"] == pytest.approx(0.1)
            assert row["train_clipped_fraction_mean"] == pytest.approx(0.25)
        else:
            assert row["trainable_params"] == 0
            assert row["train_tokens_per_s_mean"] is None and row["mfu_mean"] is None
            assert row["train_clipped_fraction_mean"] is None
        assert row["peak_memory_mb_max"] == pytest.approx(712.0)
        assert row["eval_time_s_mean"] == pytest.approx(5.0)  # of 4, 5 and 6 s


def test_deltas_and_negative_transfer(grid):
    sweep, values = grid
    rows = {(r["model"], r["method"]): r for r in summarize(load_results([sweep]))}
    for (model, method), row in rows.items():
        mean = statistics.fmean(values[model, method]["flexible"])
        zeroshot = statistics.fmean(values[model, "zeroshot"]["flexible"])
        fewshot = statistics.fmean(values[model, "fewshot"]["flexible"])
        # a baseline's own row has no delta against itself
        assert row["delta_zeroshot"] == (None if method == "zeroshot" else pytest.approx(mean - zeroshot))
        assert row["delta_fewshot"] == (None if method == "fewshot" else pytest.approx(mean - fewshot))
        assert row["below_zeroshot"] is ((model, method) == ("alpha", "lora"))
        # without predictions.jsonl there is no paired test, so no ordering is significant
        assert row["negative_transfer"] is False
        if method != "zeroshot":
            assert row["delta_zeroshot_test"] == "no per-question data" and row["delta_zeroshot_p"] is None


def test_single_seed_and_missing_baseline(tmp_path):
    write_json(tmp_path / "a" / "result.json", make_record("beta", "full", 0, 0.4, 0.3))
    (row,) = summarize(load_results([tmp_path]))
    assert row["n"] == 1
    assert row["accuracy_flexible_std"] is None  # one seed has no spread; 0 would read as seeds that agree
    assert row["accuracy_flexible_ci95"] is None
    assert row["delta_zeroshot"] is None and row["delta_fewshot"] is None
    assert row["negative_transfer"] is False


def test_a_metric_some_seeds_lack_is_left_empty_not_averaged_over_the_others(tmp_path):
    for seed, strict in ((0, 0.3), (1, None), (2, 0.5)):  # seed 1 ran before the strict metric existed
        write_json(tmp_path / str(seed) / "result.json", make_record("beta", "full", seed, 0.4, strict))
    (row,) = summarize(load_results([tmp_path]))
    assert row["n"] == 3 and row["accuracy_flexible_mean"] == pytest.approx(0.4)
    assert (row["accuracy_strict_mean"], row["accuracy_strict_std"], row["accuracy_strict_ci95"]) == (None,) * 3


def test_unfinished_cells_skipped_and_counted(grid, tmp_path):
    sweep, _ = grid
    write_json(sweep / "failed" / "result.json", make_record("beta", "full", 3, None, None, status="failed"))
    write_json(sweep / "nan" / "result.json", make_record("beta", "lora", 3, None, None, status="diverged"))
    write_json(sweep / "run" / "result.json", make_record("alpha", "full", 3, None, None, status="running"))
    report = write_report([sweep], tmp_path / "out", plots=False)
    rows = {(r["model"], r["method"]): r for r in report["rows"]}
    assert rows["beta", "full"]["n"] == 3 and rows["beta", "lora"]["n"] == 3
    assert rows["beta", "lora"]["not_completed"] == "seed 3 diverged" and rows["alpha", "lora"]["not_completed"] is None
    counts = report["collection"].skipped_counts
    assert counts == {"running": 1, "failed": 1, "diverged": 1, "interrupted": 0}
    assert "Skipped cells: 1 running, 1 failed, 1 diverged, 0 interrupted." in report["markdown"]
    assert len(report["collection"].files) == 27


def test_malformed_files_skipped_with_warning(grid, caplog):
    sweep, _ = grid
    broken = write_json(sweep / "broken" / "result.json", "{not json")
    no_model = make_record("beta", "full", 7, 0.5, 0.4)
    del no_model["model"]
    incomplete = write_json(sweep / "incomplete" / "result.json", no_model)
    no_accuracy = make_record("beta", "full", 8, None, 0.4)
    nan_accuracy = write_json(sweep / "noacc" / "result.json", no_accuracy)
    write_json(sweep / "list" / "result.json", "[1, 2]")
    with caplog.at_level(logging.WARNING, logger="slm_sweep.report"):
        collection = collect([sweep])
    assert len(collection.malformed) == 4
    for path in (broken, incomplete, nan_accuracy):
        assert any(str(path) in message for message in caplog.messages)
    rows = summarize(collection.records)
    assert len(rows) == 8 and all(r["n"] == 3 for r in rows)


def test_duplicates_keep_most_recent(grid, tmp_path, caplog):
    sweep, values = grid
    rerun = tmp_path / "multirun" / "2024-02-01" / "09-00-00"
    later = make_record("beta", "full", 0, 0.9, 0.8, finished_at="2024-02-01T10:00:00+00:00")
    earlier = make_record("beta", "full", 1, 0.0, 0.0, finished_at="2023-12-01T10:00:00Z")
    failed_later = make_record(
        "beta", "lora", 2, None, None, status="failed", finished_at="2024-03-01T10:00:00Z"
    )
    write_json(rerun / "0" / "result.json", later)
    write_json(rerun / "1" / "result.json", earlier)
    write_json(rerun / "2" / "result.json", failed_later)
    with caplog.at_level(logging.WARNING, logger="slm_sweep.report"):
        collection = collect([sweep, rerun])
    assert len(collection.duplicates) == 3
    assert sum("duplicate cell" in m for m in caplog.messages) == 3
    # passing a directory twice (or nested) does not create duplicates
    assert not collect([sweep, sweep / "0"]).duplicates

    rows = {(r["model"], r["method"]): r for r in summarize(collection.records)}
    flexible = list(values["beta", "full"]["flexible"])
    flexible[0] = 0.9  # seed 0 replaced by the later run, seed 1's older rerun ignored
    assert rows["beta", "full"]["n"] == 3
    assert rows["beta", "full"]["accuracy_flexible_mean"] == pytest.approx(statistics.fmean(flexible))
    # a later failed attempt does not replace a completed cell
    assert rows["beta", "lora"]["n"] == 3
    assert rows["beta", "lora"]["accuracy_flexible_mean"] == pytest.approx(
        statistics.fmean(values["beta", "lora"]["flexible"])
    )


def test_out_of_domain_rows_and_table(grid, tmp_path):
    sweep, values = grid
    report = write_report([sweep], tmp_path / "out", plots=False)
    ood = report["ood_rows"]
    assert [(r["model"], r["method"]) for r in ood] == [
        (m, method) for m in ("beta", "alpha") for method in METHODS
    ]
    for row in ood:
        mean, std, ci = expected_stats(values[row["model"], row["method"]]["ood"])
        assert (row["dataset"], row["eval_set"], row["n"]) == (DATASET, OOD_SET, 3)
        assert row["accuracy_flexible_mean"] == pytest.approx(mean)
        assert row["accuracy_flexible_std"] == pytest.approx(std)
        assert row["accuracy_flexible_ci95"] == pytest.approx(ci)
        assert row["n_eval"] == 50
    assert summarize_ood(load_results([sweep])) == ood

    with open(report["summary_ood_csv"], newline="") as f:
        csv_rows = list(csv.DictReader(f))
    assert len(csv_rows) == 8
    assert float(csv_rows[0]["accuracy_flexible_mean"]) == pytest.approx(ood[0]["accuracy_flexible_mean"])

    markdown = report["markdown"]
    assert "### trained on gsm8k" in markdown
    header = next(line for line in markdown.splitlines() if ", in-domain" in line)
    assert header.startswith("| model | method | gsm8k (n=100, flexible), in-domain | svamp (n=50, flexible) |")
    zeroshot = statistics.fmean(values["alpha", "zeroshot"]["ood"])
    alpha_lora_ood = statistics.fmean(values["alpha", "lora"]["ood"])
    alpha_lora = next(r for r in ood if (r["model"], r["method"]) == ("alpha", "lora"))
    assert alpha_lora["delta_zeroshot"] == pytest.approx(alpha_lora_ood - zeroshot)
    assert alpha_lora["below_zeroshot"] is True and alpha_lora["negative_transfer"] is False  # no predictions
    assert "of 3 seeds)" not in markdown

    # a seed that scored the test split but not svamp: the out-of-domain mean is over the others, and says so
    path = next(p for p in sweep.glob("*/result.json") if (lambda r: (r["model"], r["method"], r["seed"]))(
        json.loads(p.read_text())) == ("beta", "lora", 2))
    record = json.loads(path.read_text())
    write_json(path, {**record, "eval_sets": {}})
    markdown = write_report([sweep], tmp_path / "out2", plots=False)["markdown"]
    beta_lora = next(line for line in markdown.splitlines() if line.startswith("| beta | lora |") and "(2 of 3" in line)
    assert beta_lora.endswith("(2 of 3 seeds) |")


def test_summary_files(grid, tmp_path):
    sweep, _ = grid
    out = tmp_path / "out"
    report = write_report([sweep], out)
    assert report["summary_csv"] == out / "summary.csv"
    with open(report["summary_csv"], newline="") as f:
        csv_rows = list(csv.DictReader(f))
    assert [(r["model"], r["method"]) for r in csv_rows] == [
        (r["model"], r["method"]) for r in report["rows"]
    ]
    for csv_row, row in zip(csv_rows, report["rows"]):
        assert float(csv_row["accuracy_flexible_mean"]) == pytest.approx(row["accuracy_flexible_mean"])
        assert csv_row["negative_transfer"] == str(row["negative_transfer"])
        assert csv_row["seeds"] == "0 1 2"
    # how a row was scored goes to the CSV as JSON, so that rows scored differently can be told apart there too
    from slm_sweep.report.tables import summary_columns, write_csv

    scored = {"scoring": 10, "max_new_tokens": 256, "dtype": "bfloat16"}
    write_csv([{**report["rows"][0], "scored_with": scored}], summary_columns(), tmp_path / "one.csv")
    with open(tmp_path / "one.csv", newline="") as f:
        assert json.loads(next(csv.DictReader(f))["scored_with"]) == scored

    markdown = (out / "summary.md").read_text()
    assert markdown.strip() == report["markdown"].strip()
    assert "Aggregated from 24 result files" in markdown and str(sweep) in markdown
    assert "## gsm8k" in markdown
    alpha_lora = next(r for r in report["rows"] if (r["model"], r["method"]) == ("alpha", "lora"))
    cell = f"{100 * alpha_lora['accuracy_flexible_mean']:.1f} ± {100 * alpha_lora['accuracy_flexible_std']:.1f} |"
    assert cell in markdown
    # below zero-shot, but without per-question data nothing is significant: no mark, and the footnote says why
    table_rows = [line for line in markdown.splitlines() if line.startswith("| ")]
    assert not [line for line in table_rows if not line.startswith("| model |") and ("▼" in line or "*" in line)]
    assert "had no per-question data" in markdown and "alpha=0.05" in markdown
    assert csv_rows[0]["delta_zeroshot_test"] == "" and csv_rows[1]["delta_zeroshot_test"] == "no per-question data"


def test_a_report_removes_the_claims_and_plots_an_earlier_one_left_that_it_does_not_write(
        tmp_path, monkeypatch, caplog):
    """Rewritten into a folder holding an earlier report (the sweep folder, the default --out) without --claims,
    and drawing one plot of those the earlier report drew: the claims and other plots its report.json lists as
    written go, each logged and listed in report.json's ``removed``, so that none is read as this report's.
    Files no report wrote stay whatever their names (a folder of the user's own figures given as --out), and
    so does every file of a folder without an earlier report.json."""
    from slm_sweep.report import plots

    for seed in SEEDS:
        write_json(tmp_path / "sweep" / str(seed) / "result.json", make_record("beta", "lora", seed, 0.3, 0.2))
    earlier = ["claims.md", "claims.csv", "claims.json", "accuracy_by_model_gsm8k.png", "accuracy_vs_size_gsm8k.png",
               "accuracy_vs_train_time_svamp.png", "ood_accuracy_gsm8k.png"]
    others = ["accuracy.png", "my_claims.md", "loss_curve.png", "accuracy_vs_lr_gsm8k.png"]

    def drawn(rows, ood_rows, out_dir):
        (out_dir / "accuracy_by_model_gsm8k.png").write_bytes(PNG_MAGIC)
        return [out_dir / "accuracy_by_model_gsm8k.png"]

    monkeypatch.setattr(plots, "write_plots", drawn)
    written = ["report.json", "summary.csv", "summary.md", "summary_ood.csv"]
    figures = tmp_path / "figures"
    for name in (*earlier, *others):
        write_json(figures / name, "mine")
    report = write_report([tmp_path / "sweep"], figures)
    assert sorted(path.name for path in figures.iterdir()) == sorted({*earlier, *others, *written})
    assert report["removed"] == []

    out = tmp_path / "out"
    for name in (*earlier, *others):
        write_json(out / name, "earlier")
    write_json(out / REPORT_FILE, {"outputs": [str(out / name) for name in (*written[1:], *earlier)]})
    with caplog.at_level(logging.WARNING, logger="slm_sweep.report"):
        report = write_report([tmp_path / "sweep"], out)
    gone = sorted(set(earlier) - {"accuracy_by_model_gsm8k.png"})
    kept = ["accuracy_by_model_gsm8k.png", *others, *written]
    assert sorted(path.name for path in out.iterdir()) == sorted(kept)
    assert (out / "accuracy_by_model_gsm8k.png").read_bytes() == PNG_MAGIC
    assert report["removed"] == [out / name for name in gone]
    assert json.loads((out / REPORT_FILE).read_text())["removed"] == [str(out / name) for name in gone]
    assert [m for m in caplog.messages if m.startswith("removed ")] == [
        f"removed {out / name}: the earlier report in {out} wrote it and this one does not" for name in gone]


def test_report_json_names_the_code_settings_and_every_input(grid, tmp_path):
    sweep, _ = grid
    failed = write_json(sweep / "failed" / "result.json", make_record("beta", "full", 3, None, None, status="failed"))
    write_json(sweep / "broken" / "result.json", "{not json")
    out = tmp_path / "out"
    report = write_report([sweep], out, plots=False, claims=DEFAULT_CLAIMS, alpha=0.01, correction="none")
    record = json.loads((out / REPORT_FILE).read_text())
    assert report["report_json"] == out / REPORT_FILE and report["files"][-1] == out / REPORT_FILE
    assert record["git_commit"] and record["versions"]["numpy"] and record["versions"]["slm_sweep"]
    assert record["settings"] == {"alpha": 0.01, "correction": "none", "seed_test_draws": SEED_TEST_DRAWS,
                                  "seed_test_seed": SEED_TEST_SEED, "plots": False, "claims_metrics": None,
                                  "claims": {"path": str(DEFAULT_CLAIMS), "sha256": file_sha256(DEFAULT_CLAIMS)}}
    inputs = record["inputs"]
    assert inputs["result_files"] == 26 and inputs["dirs"] == [str(sweep)]
    used = {(u["model"], u["method"], u["seed"]): u for u in inputs["used"]}
    assert len(used) == 24 and all(Path(u["path"]).is_file() for u in used.values())
    assert used["alpha", "lora", 2]["path"] == str(sweep / "11" / "result.json")  # alpha: jobs 0-11, lora last
    assert [(s["path"], s["status"]) for s in inputs["skipped"]] == [(str(failed), "failed")]
    # the row whose seed failed says so, in the table and in summary.csv: its mean is over the other seeds
    beta_full = next(r for r in report["rows"] if (r["model"], r["method"]) == ("beta", "full"))
    assert beta_full["not_completed"] == "seed 3 failed" and beta_full["n"] == 3
    assert "left out of the rows above (a row's mean and n are over its completed seeds): beta × full: seed 3 " \
           "failed." in report["markdown"]
    with open(out / "summary.csv", newline="") as f:
        assert {r["not_completed"] for r in csv.DictReader(f)} == {"", "seed 3 failed"}
    assert [m["path"] for m in inputs["malformed"]] == [str(sweep / "broken" / "result.json")]
    assert inputs["cell_commits"] == {"unknown": 24}
    assert inputs["cell_hardware"] == {"train": {"unknown": 12}, "eval": {"unknown": 24}}  # no placement recorded
    assert record["outputs"] == [str(p) for p in report["files"][:-1]]
    assert all(Path(p).is_file() for p in record["outputs"])
    assert "`report.json` beside this file" in (out / "summary.md").read_text()
    assert "git commits" not in (out / "summary.md").read_text()
    # a cell computed by other code is counted, and the summary says so
    other = make_record("beta", "full", 4, 0.3, 0.2)
    other["git_commit"] = "f" * 40 + "-dirty"  # computed from a tree with uncommitted changes
    other["placement"] = {"train": {"device": "cuda:0", "device_name": "NVIDIA H200", "precision": "bf16-mixed"},
                          "eval": {"device": "cuda:0", "device_name": "NVIDIA H200", "dtype": "bfloat16"}}
    write_json(sweep / "other" / "result.json", other)
    report = write_report([sweep], tmp_path / "mixed", plots=False)
    inputs = json.loads((tmp_path / "mixed" / REPORT_FILE).read_text())["inputs"]
    assert inputs["cell_commits"] == {"unknown": 24, "f" * 40 + "-dirty": 1}
    assert "computed at 2 git commits (`unknown` 24, `ffffffffffff-dirty` 1 cells)" in report["markdown"]
    # the chips and number formats behind the numbers
    assert inputs["cell_hardware"] == {"train": {"unknown": 12, "NVIDIA H200, bf16-mixed": 1},
                                       "eval": {"unknown": 24, "NVIDIA H200, bfloat16": 1}}
    assert [u["evaluated_on"] for u in inputs["used"] if u["seed"] == 4] == ["NVIDIA H200, bfloat16"]
    assert "Trained on: unknown (12 cells); NVIDIA H200, bf16-mixed (1 cell)." in report["markdown"]
    assert "Generated on: unknown (24 cells); NVIDIA H200, bfloat16 (1 cell)." in report["markdown"]
    assert inputs["trained_at_other_commits"] == {} and "another commit" not in report["markdown"]
    # a cell that re-scored weights kept by a run at another commit names that commit too
    rescored = make_record("beta", "full", 5, 0.3, 0.2)
    rescored["git_commit"] = "a" * 40
    rescored["trained_in"] = "elsewhere/cell"
    rescored["training_provenance"] = {"result_path": "elsewhere/cell/result.json", "git_commit": "b" * 40}
    write_json(sweep / "rescored" / "result.json", rescored)
    report = write_report([sweep], tmp_path / "rescored", plots=False)
    inputs = json.loads((tmp_path / "rescored" / REPORT_FILE).read_text())["inputs"]
    assert inputs["trained_at_other_commits"] == {"b" * 40: 1}
    (entry,) = [u for u in inputs["used"] if u["seed"] == 5]
    assert (entry["trained_in"], entry["trained_at_commit"]) == ("elsewhere/cell", "b" * 40)
    assert "1 cell re-scored weights trained at another commit than its own (by the training commit, `unknown` " \
           "where not recorded: `bbbbbbbbbbbb` 1 cell)" in report["markdown"]


def test_plots_are_png(grid, tmp_path, monkeypatch):
    import slm_sweep.report.plots as plots

    figures = {}
    save = plots._save
    monkeypatch.setattr(plots, "_save", lambda fig, path: figures.__setitem__(path.name, fig) or save(fig, path))
    sweep, _ = grid
    out = tmp_path / "out"
    report = write_report([sweep], out)
    names = sorted(p.name for p in report["plots"])
    assert names == sorted(
        [
            "accuracy_by_model_gsm8k.png",
            "accuracy_vs_size_gsm8k.png",
            "accuracy_vs_trainable_gsm8k.png",
            "accuracy_vs_train_time_gsm8k.png",
            "ood_accuracy_gsm8k.png",
        ]
    )
    for path in report["plots"]:
        data = path.read_bytes()
        assert path.parent == out and len(data) > 1000 and data.startswith(PNG_MAGIC)

    def xs(name: str) -> dict[str, list[float]]:
        """Each method's line on the plot ``name``: the x of its points."""
        return {bars.get_label(): sorted(bars.lines[0].get_xdata()) for bars in figures[name].axes[0].containers}

    # the fine-tuned rows: full trains each model's every parameter, lora 1M; each trained 50, 60 and 70 s
    assert xs("accuracy_vs_trainable_gsm8k.png") == {"full": sorted(MODELS.values()), "lora": [1_000_000] * 2}
    assert xs("accuracy_vs_train_time_gsm8k.png") == {"full": [60.0, 60.0], "lora": [60.0, 60.0]}


def test_default_out_dir_is_first_dir(grid):
    sweep, _ = grid
    report = write_report([sweep], plots=False)
    assert report["summary_md"] == sweep / "summary.md" and report["summary_md"].exists()


def run_python(*args, cwd):
    """Run this interpreter in a subprocess that finds the package from the repository root."""
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, *map(str, args)],
        cwd=cwd, env=dict(os.environ, PYTHONPATH=path), capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def run_cli(*args, cwd):
    return run_python("-m", "slm_sweep.report", *args, cwd=cwd)


def test_cli_success(grid, tmp_path):
    sweep, _ = grid
    out = tmp_path / "cli_out"
    result = run_cli(sweep, "--out", out, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "## gsm8k" in result.stdout
    assert "Wrote:" in result.stdout and str(out / "summary.md") in result.stdout
    assert (out / "summary.csv").exists() and (out / "accuracy_by_model_gsm8k.png").exists()
    # report.json records the command as typed, interpreter arguments included
    assert json.loads((out / "report.json").read_text())["command"][1:] == [
        "-m", "slm_sweep.report", str(sweep), "--out", str(out)]


def test_cli_single_cell_directory(grid, tmp_path):
    sweep, _ = grid
    result = run_cli(sweep / "0", "--out", tmp_path / "one", "--no-plots", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "1 result files" in result.stdout


def test_cli_errors(tmp_path):
    missing = run_cli(tmp_path / "nope", cwd=tmp_path)
    assert missing.returncode == 2
    assert "does not exist" in missing.stderr and "nope" in missing.stderr
    (tmp_path / "empty").mkdir()
    empty = run_cli(tmp_path / "empty", cwd=tmp_path)
    assert empty.returncode == 2
    assert "no result.json found" in empty.stderr
    write_json(tmp_path / "broken" / "0" / "result.json", '{"status": "compl')
    broken = run_cli(tmp_path / "broken", cwd=tmp_path)
    assert broken.returncode == 2 and not (tmp_path / "broken" / "report").exists()
    assert f"none of the 1 result.json files under {tmp_path / 'broken'} could be read" in broken.stderr


@pytest.mark.parametrize("below", ["", "sub"])
def test_cli_out_naming_a_file_is_an_argument_error(tmp_path, capsys, below):
    """--out summary.md (or a folder under a file): one argparse line naming the path, no FileExistsError."""
    from slm_sweep.report.__main__ import main

    (tmp_path / "summary.md").write_text("")
    out = tmp_path / "summary.md" / below if below else tmp_path / "summary.md"
    with pytest.raises(SystemExit) as stop:
        main([str(tmp_path), "--out", str(out), "--no-plots"])
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert stop.value.code == 2 and error.startswith("python -m slm_sweep.report: error: argument --out: ")
    assert f"{tmp_path / 'summary.md'} is a file; --out expects a folder" in error and str(out) in error


def test_report_does_not_import_ml_frameworks(grid, tmp_path):
    sweep, _ = grid
    code = (
        "import sys\n"
        "import slm_sweep.report as report\n"
        f"report.write_report([{str(sweep)!r}], {str(tmp_path / 'out')!r}, claims=report.DEFAULT_CLAIMS)\n"
        "heavy = sorted(m for m in ('torch', 'transformers', 'lightning', 'peft') if m in sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    result = run_python("-c", code, cwd=tmp_path)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(("count", "text"), [(104_000, "104K"), (134_515_008, "135M"), (1_235_814_400, "1.2B"),
                                             (2_000_000_000, "2B"), (270_000, "270K"), (999, "999"),
                                             (999_950, "1M")])
def test_parameter_counts_read_as_people_write_them(count, text):
    from slm_sweep.report.plots import human_count

    assert human_count(count) == text


@pytest.mark.parametrize(("seconds", "text"), [(42, "42 s"), (7.25, "7.2 s"), (400, "6.7 min"), (600, "10 min"),
                                               (5400, "1.5 h"), (7200, "2 h"), (0.5, "0.5 s"),
                                               (59.9, "1 min"), (3599, "1 h")])
def test_durations_read_as_people_write_them(seconds, text):
    from slm_sweep.report.plots import human_duration

    assert human_duration(seconds) == text


def test_the_training_time_plot_writes_its_axis_in_seconds_and_minutes(monkeypatch, tmp_path):
    """Mean training times of 300-700 s put no decade on the log axis, whose labels were then matplotlib's
    4×10^2: the plot's axis now reads as durations."""
    import re

    import slm_sweep.report.plots as plots

    figures = {}
    save = plots._save
    monkeypatch.setattr(plots, "_save", lambda fig, path: figures.setdefault(path.name, fig) and save(fig, path))
    rows = [{"model": "smollm135", "method": method, "dataset": "gsm8k", "n": 3, "trainable_params": trainable,
             "total_params": 134_515_008, "train_time_s_mean": seconds, "accuracy_flexible_mean": 0.3,
             "accuracy_flexible_std": 0.01}
            for method, trainable, seconds in (("full", 134_515_008, 700.0), ("lora", 4_884_480, 300.0),
                                               ("dora", 4_967_424, 450.0))]
    plots.write_plots(rows, [], tmp_path)
    (fig,) = [fig for name, fig in figures.items() if name.startswith("accuracy_vs_train_time")]
    fig.canvas.draw()
    axis = fig.axes[0].xaxis
    labels = [t.get_text() for t in (*axis.get_majorticklabels(), *axis.get_minorticklabels()) if t.get_text()]
    assert labels and all(re.fullmatch(r"\d+(\.\d)? (s|min|h)", text) for text in labels), labels
    assert fig.axes[0].get_xlabel() == "mean training time"


@pytest.mark.parametrize(("means", "std", "top"), [
    ((0.10, 0.20), 0.02, 1.15 * 22.0),  # 1.15 x the highest mean + std: 20 % data fill most of the axis
    ((0.01, 0.01), None, 5.0),          # at least 5 %: a near-zero row still gets an axis
    ((0.80, 0.95), 0.05, 100.0),        # never above 100 %
])
def test_accuracy_axes_end_a_little_above_the_data_within_0_and_100_percent(monkeypatch, means, std, top):
    """Accuracies of a few percent on a 0-100 axis sit in its bottom fifth: the axis ends 15 % above the highest
    mean + std drawn (bars and lines alike), at least at 5 % and at most at 100 %, and starts at 0."""
    import slm_sweep.report.plots as plots

    rows = [{"model": "tiny", "method": m, "dataset": "gsm8k", "total_params": 104_000, "trainable_params": 1000 * i,
             "accuracy_flexible_mean": mean, "accuracy_flexible_std": std}
            for i, (m, mean) in enumerate(zip(("zeroshot", "lora"), means), start=1)]
    figures = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: figures.append(fig) or path)
    plots.plot_accuracy_by_model(rows, "gsm8k", None, plots.label_colors(rows))
    plots.plot_accuracy_vs(rows, "gsm8k", None, plots.label_colors(rows), lambda r: r["trainable_params"],
                           "trainable parameters", "accuracy vs trainable parameters", True)
    for fig in figures:
        assert fig.axes[0].get_ylim() == pytest.approx((0.0, top))
    assert [t.get_text() for t in figures[0].axes[0].get_xticklabels()] == ["tiny\n104K"]


def test_plots_draw_each_dataset_s_claims_metric_and_name_it(monkeypatch):
    """A dataset's plots draw the metric its deltas and claims read (``delta_metric``: lenient on OrcaMath) and say
    so on the axis; the out-of-domain heatmap names the metric of each column (its evaluation set's)."""
    import slm_sweep.report.plots as plots

    rows = [{"model": "tiny", "method": m, "dataset": "orcamath", "total_params": 104_000, "n": 1,
             "delta_metric": "lenient", "accuracy_flexible_mean": 0.01, "accuracy_flexible_std": None,
             "accuracy_lenient_mean": mean, "accuracy_lenient_std": None} for m, mean in (("zeroshot", 0.3),
                                                                                           ("lora", 0.6))]
    ood = [{**row, "eval_set": "svamp", "delta_metric": "flexible", "accuracy_flexible_mean": 0.2} for row in rows]
    captured = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: captured.append(fig) or path)
    plots.plot_accuracy_by_model(rows, "orcamath", None, plots.label_colors(rows))
    ax = captured[-1].axes[0]
    assert ax.get_ylabel() == "lenient accuracy (%)"
    assert sorted(bar.get_height() for bar in ax.patches) == pytest.approx([30.0, 60.0])
    plots.plot_accuracy_vs(rows, "orcamath", None, plots.label_colors(rows), lambda r: r["total_params"],
                           "model parameters (base)", "accuracy vs model size", False)
    ax = captured[-1].axes[0]
    assert ax.get_ylabel() == "lenient accuracy (%)"
    assert sorted(y for bars in ax.containers for y in bars.lines[0].get_ydata()) == pytest.approx([30.0, 60.0])
    plots.plot_ood_heatmap(rows, ood, "orcamath", None)
    ax = captured[-1].axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["orcamath\n(in-domain, lenient)", "svamp\n(flexible)"]
    assert sorted(t.get_text() for t in ax.texts) == ["20.0", "20.0", "30.0", "60.0"]
    # rows without a delta metric (written before they had one) are drawn on the primary metric
    plots.plot_accuracy_by_model([{k: v for k, v in r.items() if k != "delta_metric"} for r in rows], "orcamath",
                                 None, plots.label_colors(rows))
    assert captured[-1].axes[0].get_ylabel() == "flexible accuracy (%)"


def test_plot_titles_fit_and_a_count_axis_spanning_less_than_a_decade_reads_in_counts(monkeypatch, tmp_path):
    """The bar chart's title, caveat included, fits its narrowest figure (6 inches); counts of 135M and 268M put no
    decade on a log axis of parameters, whose labels are then the minor ticks': counts as people write them, not
    2×10^8."""
    import re

    import slm_sweep.report.plots as plots

    rows = [{"model": model, "method": method, "dataset": "gsm8k", "total_params": size, "n": 3,
             "accuracy_flexible_mean": 0.3, "accuracy_flexible_std": 0.01}
            for model, size in (("smollm135", 134_515_008), ("gemma270", 268_098_176))
            for method in ("zeroshot", "fewshot", "lora")]
    save = plots._save
    figures = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: figures.append(fig) or save(fig, path))
    plots.plot_accuracy_by_model(rows, "gsm8k", tmp_path / "bars.png", plots.label_colors(rows))
    plots.plot_accuracy_vs(rows, "gsm8k", tmp_path / "trainable.png", plots.label_colors(rows),
                           lambda r: r["total_params"], "trainable parameters", "accuracy vs trainable parameters",
                           False, write_x=plots.human_count)
    for fig in figures:
        fig.canvas.draw()
        ax = fig.axes[0]
        title = ax.title.get_window_extent(fig.canvas.get_renderer())
        assert "no bar: one seed" in ax.get_title()
        assert 0 <= title.x0 and title.x1 <= fig.bbox.width and title.y1 <= fig.bbox.height
    count_axis = figures[1].axes[0].xaxis
    labels = [t.get_text() for t in (*count_axis.get_majorticklabels(), *count_axis.get_minorticklabels())
              if t.get_text()]
    assert labels and all(re.fullmatch(r"\d+(\.\d)?[KMB]", text) for text in labels), labels


def test_the_out_of_domain_heatmap_slants_its_set_names_and_spans_its_colours_over_the_data(monkeypatch, tmp_path):
    """Level set names as long as "mawps_addsub" run into each other: they are slanted, each ending under its
    column. The colours span 0 to the largest cell, not 0-100 %, and the colourbar says so; the title says the
    cells are means over seeds and over how many."""
    import numpy as np

    import slm_sweep.report.plots as plots

    def row(method, n, mean, **extra):
        return {"model": "smollm360", "method": method, "dataset": "gsm8k", "n": n, "delta_metric": "flexible",
                "accuracy_flexible_mean": mean, "accuracy_flexible_std": None, **extra}

    in_domain = [row("zeroshot", 1, 0.06), row("lora", 3, 0.20)]
    ood = [row(method, n, mean, eval_set=s) for s in ("mawps_addsub", "mawps_singleeq", "mawps_singleop")
           for method, n, mean in (("zeroshot", 1, 0.12), ("lora", 3, 0.295))]
    figures = []
    save = plots._save
    monkeypatch.setattr(plots, "_save", lambda fig, path: figures.append(fig) or save(fig, path))
    plots.plot_ood_heatmap(in_domain, ood, "gsm8k", tmp_path / "ood.png")
    fig = figures[0]
    ax, colorbar = fig.axes
    labels = ax.get_xticklabels()
    assert [t.get_text().split("\n")[0] for t in labels] == ["gsm8k", "mawps_addsub", "mawps_singleeq",
                                                              "mawps_singleop"]
    assert all(t.get_rotation() == 30 and t.get_horizontalalignment() == "right" for t in labels)
    (image,) = ax.images
    assert (image.norm.vmin, image.norm.vmax) == (0, pytest.approx(29.5))
    assert np.allclose(image.to_rgba(29.5), image.cmap(1.0))  # the largest cell takes the brightest colour
    assert "scale 0–29.5, not 0–100" in colorbar.get_ylabel()
    assert "mean over 1–3 seeds per row" in ax.get_title()
    # the slanted names stay inside the figure
    renderer = fig.canvas.get_renderer()
    assert all(t.get_window_extent(renderer).y0 >= 0 for t in labels)


def labelled_trainable_plot(monkeypatch, tmp_path, rows):
    """The trainable-parameters plot of ``rows`` as saved: its axes and each label's text and box, no two of which
    overlap."""
    import slm_sweep.report.plots as plots

    figures = []
    save = plots._save
    monkeypatch.setattr(plots, "_save", lambda fig, path: figures.append(fig) or save(fig, path))
    plots.plot_accuracy_vs(rows, "gsm8k", tmp_path / "trainable.png", plots.label_colors(rows),
                           lambda r: r["trainable_params"], "trainable parameters",
                           "accuracy vs trainable parameters (fine-tuned methods)", True)
    fig = figures[0]
    ax = fig.axes[0]
    renderer = fig.canvas.get_renderer()
    labels = [(t.get_text(), t.get_window_extent(renderer)) for t in ax.texts]
    for i, (text, box) in enumerate(labels):
        for other, other_box in labels[i + 1:]:
            assert not box.overlaps(other_box), (text, other)
    return ax, labels


def test_a_model_is_named_once_where_its_methods_share_a_point(monkeypatch, tmp_path):
    """LoRA and DoRA of one model train as many parameters: their points nearly coincide on the trainable-parameters
    plot, and a label per point printed the model's name over itself. Such points share one label (full
    fine-tuning's point, far away, keeps its own), and no two labels overlap."""
    sizes = {"smollm135": (134_515_008, 896_832), "smollm360": (361_821_120, 2_411_520)}
    means = {("smollm135", "lora"): 0.037, ("smollm135", "dora"): 0.040, ("smollm135", "full"): 0.042,
             ("smollm360", "lora"): 0.202, ("smollm360", "dora"): 0.195, ("smollm360", "full"): 0.125}
    rows = [{"model": model, "method": method, "dataset": "gsm8k", "n": 3, "total_params": total,
             "trainable_params": total if method == "full" else adapter,
             "accuracy_flexible_mean": means[model, method], "accuracy_flexible_std": 0.01}
            for model, (total, adapter) in sizes.items() for method in ("full", "lora", "dora")]
    _, labels = labelled_trainable_plot(monkeypatch, tmp_path, rows)
    assert sorted(text for text, _ in labels) == ["smollm135", "smollm135", "smollm360", "smollm360"]


def test_labels_of_two_models_side_by_side_cover_neither_each_other_nor_a_marker(monkeypatch, tmp_path):
    """Two models' adapters of about one size at about one accuracy put their points side by side: each label
    printed above right covered the other model's label and marker. A label now takes the first free place."""
    points = {("smollm360", "lora"): (2_411_520, 0.202), ("qwen05", "lora"): (2_162_688, 0.205),
              ("smollm360", "dora"): (2_535_936, 0.195), ("qwen05", "dora"): (2_269_184, 0.199)}
    rows = [{"model": model, "method": method, "dataset": "gsm8k", "n": 3, "trainable_params": trainable,
             "accuracy_flexible_mean": mean, "accuracy_flexible_std": 0.01}
            for (model, method), (trainable, mean) in points.items()]
    rows += [{**row, "method": "full", "trainable_params": size, "accuracy_flexible_mean": 0.12}
             for row, size in ((rows[0], 361_821_120), (rows[1], 494_032_768))]
    ax, labels = labelled_trainable_plot(monkeypatch, tmp_path, rows)
    assert sorted(text for text, _ in labels) == ["qwen05", "qwen05", "smollm360", "smollm360"]
    markers = ax.transData.transform([(r["trainable_params"], 100 * r["accuracy_flexible_mean"]) for r in rows])
    for text, box in labels:
        assert not any(box.contains(mx, my) for mx, my in markers), text


def test_a_heatmap_whose_largest_cell_is_100_percent_does_not_say_its_scale_is_not_0_to_100(monkeypatch):
    """The colourbar names a scale narrower than 0-100 ("scale 0–29.5, not 0–100"); a cell at 100 % spans the full
    scale, which "scale 0–100.0, not 0–100" contradicted."""
    import slm_sweep.report.plots as plots

    rows = [{"model": "qwen05", "method": method, "dataset": "gsm8k", "n": n, "delta_metric": "flexible",
             "accuracy_flexible_mean": mean, "accuracy_flexible_std": None}
            for method, n, mean in (("zeroshot", 1, 0.5), ("lora", 3, 0.9996))]
    figures = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: figures.append(fig) or path)
    plots.plot_ood_heatmap(rows, [{**r, "eval_set": "svamp"} for r in rows], "gsm8k", None)
    ax, colorbar = figures[0].axes
    assert ax.images[0].norm.vmax == 100
    assert colorbar.get_ylabel() == "flexible accuracy (%)"


_SIZES = {"smollm135": 134_515_008, "gemma270": 268_098_176, "smollm360": 361_821_120, "qwen05": 494_032_768,
          "llama1b": 1_235_814_400, "smollm370": 370_000_000}


@pytest.mark.parametrize(("models", "scale", "labels"), [
    (("smollm135", "gemma270", "smollm360"), "linear", ["135M", "268M", "362M"]),  # 2.7x: a log axis gains nothing
    (("smollm135", "gemma270", "smollm360", "qwen05", "llama1b"), "log", ["135M", "268M", "362M", "494M", "1.2B"]),
    (("smollm135", "smollm360", "smollm370", "llama1b"), "log", ["135M", "362M", "370M", "1.2B"]),  # two sizes close
])
def test_the_size_axis_is_ticked_at_each_model_s_size(monkeypatch, tmp_path, models, scale, labels):
    """The models' own sizes carry the ticks, labelled as the bar plot labels them (135M): the axis's own ticks
    fell at 200M and 300M, between the models; a log axis where the sizes span more than 3x, where a linear one would
    crowd the small models; labels of close sizes go on two lines rather than over each other."""
    from matplotlib.transforms import Bbox

    import slm_sweep.report.plots as plots

    rows = [{"model": model, "method": method, "dataset": "gsm8k", "n": 1 if method == "zeroshot" else 3,
             "trained": method == "lora", "total_params": _SIZES[model] + (1_000_000 if method == "lora" else 0),
             "trainable_params": 1_000_000 if method == "lora" else 0, "train_time_s_mean": None,
             "accuracy_flexible_mean": 0.1 + 0.01 * i, "accuracy_flexible_std": None}
            for i, model in enumerate(models) for method in ("zeroshot", "lora")]
    figures = {}
    save = plots._save
    monkeypatch.setattr(plots, "_save", lambda fig, path: figures.setdefault(path.name, fig) and save(fig, path))
    plots.write_plots(rows, [], tmp_path)
    fig = figures["accuracy_vs_size_gsm8k.png"]
    ax = fig.axes[0]
    assert ax.get_xscale() == scale
    assert list(ax.get_xticks()) == sorted(_SIZES[m] for m in models)
    assert [t.get_text().strip() for t in ax.get_xticklabels()] == labels
    assert not [t.get_text() for t in ax.xaxis.get_minorticklabels() if t.get_text()]
    renderer = fig.canvas.get_renderer()
    boxes = []
    for label in ax.get_xticklabels():  # the printed line of a label moved down by blank lines above it
        box, lines = label.get_window_extent(renderer), label.get_text().count("\n") + 1
        boxes.append(Bbox.from_extents(box.x0, box.y0, box.x1, box.y0 + box.height / lines))
    assert all(0 <= box.x0 and box.x1 <= fig.bbox.width and box.y0 >= 0 for box in boxes)
    assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:]), [tuple(b.extents) for b in boxes]


def _with_identity(record, config, configuration_key, evaluation_key=None, reused_from=None):
    return {**record, "config": config, "reused_from": reused_from,
            "identity": {"training_key": None, "configuration_key": configuration_key,
                         "evaluation_key": evaluation_key or f"{configuration_key}-{record['seed']}"}}


def test_a_swept_setting_becomes_a_variant_and_rows_never_mix(tmp_path):
    sweep = tmp_path / "sweep"
    job = 0
    for r, accuracy in ((8, 0.2), (16, 0.4)):
        config = {"method": {"name": "lora", "r": r, "lr": 2e-4}, "trainer": {"micro_batch_size": r}}
        for seed in (0, 1):
            record = make_record("beta", "lora", seed, accuracy + 0.01 * seed, accuracy)
            write_json(sweep / str(job) / "result.json", _with_identity(record, config, f"cfg-r{r}"))
            job += 1
    rows = summarize(collect([sweep]).records)
    assert [(row["variant"], row["n"]) for row in rows] == [("r=8", 2), ("r=16", 2)]  # numbers read as numbers
    assert {row["variant"]: row["accuracy_flexible_mean"] for row in rows} == pytest.approx(
        {"r=8": 0.205, "r=16": 0.405})
    report = write_report([sweep], tmp_path / "out", plots=False)
    assert "| beta | lora (r=8) |" in report["markdown"] and "| beta | lora (r=16) |" in report["markdown"]


def test_an_optimizer_and_rate_factors_are_named_by_their_block_and_the_defaults_by_what_they_mean(tmp_path):
    """A variant label ``lora_B=16`` or ``_target_=unset`` would not say what differs: the optimizer and the rate
    factors are named from their block, and unset reads as what it trains with (AdamW, a factor of 1)."""
    blocks = {"adamw": {}, "sgd": {"optimizer": {"_target_": "torch.optim.SGD", "momentum": 0.9}},
              "plus": {"lr_scale": {"lora_B": 16}}, "nulls": {"optimizer": None, "lr_scale": None}}
    for job, (name, extra) in enumerate(blocks.items()):
        config = {"method": {"name": "lora", "r": 8, "lr": 2e-4, **extra}, "trainer": {"max_steps": 5}}
        write_json(tmp_path / str(job) / "result.json",
                   _with_identity(make_record("beta", "lora", 0, 0.2, 0.2), config, f"cfg-{name}"))
    variants = sorted(row["variant"] for row in summarize(collect([tmp_path]).records))
    # the nulls spell the defaults: the same labels as the first (its own configuration key keeps them apart)
    assert variants == ["lr_scale.lora_B=1, optimizer=AdamW, optimizer.momentum=–, config cfg-adam",
                        "lr_scale.lora_B=1, optimizer=AdamW, optimizer.momentum=–, config cfg-null",
                        "lr_scale.lora_B=1, optimizer=SGD, optimizer.momentum=0.9",
                        "lr_scale.lora_B=16, optimizer=AdamW, optimizer.momentum=–"]


def test_one_configuration_spelt_two_ways_is_one_row(tmp_path):
    """trainer.precision=32 and 32-true (or 32.0 and 32) are one setting: the cells share a configuration key,
    and their seeds one row."""
    for seed, precision in ((0, "32-true"), (1, "32")):
        config = {"method": {"name": "lora", "r": 8}, "trainer": {"precision": precision}}
        record = make_record("beta", "lora", seed, 0.2 + 0.01 * seed, 0.2)
        write_json(tmp_path / str(seed) / "result.json", _with_identity(record, config, "cfg-lora"))
    config = {"method": {"name": "lora", "r": 8}, "trainer": {"precision": "bf16-mixed"}}
    write_json(tmp_path / "2" / "result.json",
               _with_identity(make_record("beta", "lora", 0, 0.3, 0.3), config, "cfg-lora-bf16"))
    rows = summarize(collect([tmp_path]).records)
    assert sorted((row["variant"], row["n"]) for row in rows) == [("precision=32-true", 2),
                                                                  ("precision=bf16-mixed", 1)]


def test_a_new_method_sorts_among_its_own_kind(tmp_path):
    """A method the report has never heard of goes after the built-in ones of its kind: a new baseline (a method
    file with train: false) among the baselines, a new adapter method after the trained ones."""
    methods = {"pissa": True, "lora": True, "fewshot": False, "my_baseline": False, "full": True, "zeroshot": False}
    for job, (method, trains) in enumerate(methods.items()):
        record = make_record("beta", "lora" if trains else "zeroshot", 0, 0.2, 0.2)
        record["method"], record["config"] = method, {"method": {"name": method, "train": trains}}
        write_json(tmp_path / str(job) / "result.json", record)
    rows = summarize(collect([tmp_path]).records)
    assert [row["method"] for row in rows] == ["zeroshot", "fewshot", "my_baseline", "full", "lora", "pissa"]
    assert [row["trained"] for row in rows] == [False, False, False, True, True, True]


def test_two_sweeps_of_other_code_are_told_apart_by_their_configuration_key(tmp_path):
    config = {"method": {"name": "lora", "r": 16}}
    for name, key, accuracy in (("old", "aaaaaaaa1", 0.2), ("new", "bbbbbbbb2", 0.3)):
        record = make_record("beta", "lora", 0, accuracy, accuracy)
        write_json(tmp_path / name / "0" / "result.json", _with_identity(record, config, key))
    rows = summarize(collect([tmp_path / "old", tmp_path / "new"]).records)
    assert sorted(row["variant"] for row in rows) == ["config aaaaaaaa", "config bbbbbbbb"]
    assert all(row["n"] == 1 for row in rows)


def test_seeds_that_scored_different_question_counts_are_an_error(tmp_path):
    for seed, n_eval in ((0, 100), (1, 90)):
        record = make_record("beta", "full", seed, 0.3, 0.2)
        record["metrics"]["n_eval"] = n_eval
        write_json(tmp_path / str(seed) / "result.json", record)
    with pytest.raises(ReportError, match="different numbers of questions.*n_eval=100.*n_eval=90"):
        summarize(collect([tmp_path]).records)


def test_a_baseline_computed_once_counts_once(tmp_path):
    config = {"method": {"name": "zeroshot"}}
    for seed in SEEDS:
        record = make_record("beta", "zeroshot", seed, 0.1, 0.05)
        reused = None if seed == 0 else str(tmp_path / "0" / "result.json")
        write_json(tmp_path / str(seed) / "result.json",
                   _with_identity(record, config, "zs", evaluation_key="zs-eval", reused_from=reused))
    collection = collect([tmp_path])
    (row,) = summarize(collection.records)
    assert row["n"] == 1 and row["seeds"] == [0] and row["accuracy_flexible_std"] is None
    assert row["accuracy_flexible_ci95"] is None and not collection.duplicates
    report = write_report([tmp_path], tmp_path / "out", plots=False)
    provenance = json.loads((tmp_path / "out" / "report.json").read_text())
    copies = {(entry["kept"], entry["copy"]) for entry in provenance["inputs"]["reused_copies"]}
    assert copies == {(str(tmp_path / "0" / "result.json"), str(tmp_path / str(seed) / "result.json"))
                      for seed in SEEDS[1:]}
    assert [entry["seed"] for entry in provenance["inputs"]["used"]] == [0]
    assert f"counted once: {len(SEEDS) - 1} (listed in `report.json`)" in report["markdown"]


def test_a_divergence_copied_into_another_sweep_counts_once_and_is_no_duplicate(tmp_path):
    """A rerun in another sweep copies the divergence of the same training (run.py) instead of training again."""
    config = {"method": {"name": "lora"}}
    first, second = tmp_path / "first", tmp_path / "second"
    for seed in (0, 1):
        write_json(first / str(seed) / "result.json",
                   _with_identity(make_record("beta", "lora", seed, 0.3, 0.2), config, "lora"))
    lost = {**make_record("beta", "lora", 2, None, None, status="diverged"), "error": "training loss is nan at step 4"}
    write_json(first / "2" / "result.json", _with_identity(lost, config, "lora"))
    write_json(second / "2" / "result.json",
               _with_identity(lost, config, "lora", reused_from=str(first / "2" / "result.json")))
    collection = collect([first, second])
    assert not collection.duplicates
    assert collection.copies == [(first / "2" / "result.json", second / "2" / "result.json")]
    (row,) = summarize(collection.records)
    assert row["n"] == 2 and row["not_completed"] == "seed 2 diverged"


def test_wilson_interval_matches_the_closed_form():
    from slm_sweep.report.stats import wilson_interval

    low, high = wilson_interval(0.5, 1319)
    assert (low, high) == pytest.approx((0.4731, 0.5269), abs=1e-4)  # about ±2.7 points on GSM8K's test set
    assert wilson_interval(0.0, 10)[0] == 0.0 and wilson_interval(0.0, 10)[1] == pytest.approx(0.2775, abs=1e-4)
    assert wilson_interval(None, 10) == (None, None) and wilson_interval(0.3, None) == (None, None)


def test_a_number_that_is_not_finite_is_refused_not_read_as_zero():
    from slm_sweep.report.stats import describe, wilson_interval

    with pytest.raises(ValueError, match="accuracy nan is not a finite number"):
        wilson_interval(float("nan"), 100)
    with pytest.raises(ValueError, match=r"must be finite numbers, got \[0.4, nan\]"):
        describe([0.4, float("nan")])
    assert describe([0.4, 0.6])[0] == pytest.approx(0.5)


def test_each_row_carries_the_test_questions_interval(grid, tmp_path):
    from slm_sweep.report.stats import wilson_interval

    sweep, _ = grid
    rows = summarize(collect([sweep]).records)
    for row in rows:
        low, high = row["accuracy_flexible_wilson_low"], row["accuracy_flexible_wilson_high"]
        assert (low, high) == pytest.approx(wilson_interval(row["accuracy_flexible_mean"], 100))  # n_eval of a cell
    report = write_report([sweep], tmp_path / "out", plots=False)
    assert "questions 95% CI" in report["markdown"] and "Wilson interval" in report["markdown"]


def _table(markdown: str, section: str) -> list[dict[str, str]]:
    """The rows of the first markdown table after ``section``, as header -> cell (repeated headers numbered)."""
    lines = [line for line in markdown.split(section, 1)[1].split("\n\n", 2)[1].splitlines()]
    header = [cell.strip() for cell in lines[0].strip("|").split(" | ")]
    named = [h if header[:i].count(h) == 0 else f"{h} #{header[:i].count(h) + 1}" for i, h in enumerate(header)]
    return [dict(zip(named, (cell.strip() for cell in line.strip("|").split(" | ")))) for line in lines[2:]]


def test_a_dataset_s_table_leads_with_the_metric_its_deltas_are_on(grid, tmp_path):
    """A dataset whose deltas are on another metric than the primary one (lenient on OrcaMath; strict here, as
    --claims-metric asks) shows that metric first, with the questions' interval, beside the deltas it gives; the
    count columns name the CSV columns they are, and a baseline, which trains nothing, shows no training time."""
    sweep, values = grid
    report = write_report([sweep], tmp_path / "out", plots=False, claims_metrics={DATASET: "strict"})
    rows = {(r["model"], r["method"]): r for r in report["rows"]}
    table = _table(report["markdown"], f"## {DATASET}")
    assert list(table[0])[:9] == ["model", "method", "seeds (n)", "questions (n_eval)", "strict (%)", "seeds 95% CI",
                                  "questions 95% CI", "flexible (%)", "seeds 95% CI #2"]
    assert "Δ zero-shot (pp on strict, * p<0.05, Holm)" in table[0]
    for cells in table:
        row = rows[cells["model"], cells["method"]]
        assert cells["strict (%)"].startswith(f"{100 * row['accuracy_strict_mean']:.1f}")
        assert cells["questions 95% CI"] == (f"[{100 * row['accuracy_strict_wilson_low']:.1f}, "
                                             f"{100 * row['accuracy_strict_wilson_high']:.1f}]")
        assert (cells["seeds (n)"], cells["questions (n_eval)"]) == (str(row["n"]), "100")
        seeds = values[cells["model"], cells["method"]]
        assert (cells["seeds 95% CI"], cells["seeds 95% CI #2"]) == tuple(
            f"±{100 * expected_stats(seeds[metric])[2]:.1f}" for metric in ("strict", "flexible"))
        trained = cells["method"] in ("full", "lora")
        # seeds 0, 1, 2 of a trained method: 50, 60 and 70 s of training at 1000, 1001 and 1002 tokens/s, MFU 1-3 %;
        # baselines: "–", not "0.0 s"
        expected = ("60.0 s", "1,001", "2.0 %") if trained else ("–", "–", "–")
        assert (cells["train time"], cells["train tok/s"], cells["MFU"]) == expected, cells
    assert "`zeroshot` row's, `fewshot` row's" in report["markdown"]
    # the primary metric leads where the deltas are on it
    default = _table(write_report([sweep], tmp_path / "default", plots=False)["markdown"], f"## {DATASET}")
    assert list(default[0])[4:7] == ["flexible (%)", "seeds 95% CI", "questions 95% CI"]


def test_an_out_of_domain_cell_carries_the_mark_of_its_zero_shot_delta():
    """The out-of-domain table shows accuracies, not deltas: a cell whose Δ vs the zero-shot row on that set is
    significant is marked * (above zero-shot as well as below, as in the in-domain tables), one not tested †, a
    trained method significantly below ▼ as well; a tested, not significant one is unmarked."""
    from slm_sweep.report.tables import _ood_section

    def row(method, mean, delta, significant, eval_set=None, negative=False):
        return {"model": "smollm360", "method": method, "dataset": "gsm8k", "n": 1 if method in ("zeroshot", "fewshot") else 3,
                "n_eval": 200, "delta_metric": "flexible", "accuracy_flexible_mean": mean,
                "accuracy_flexible_std": 0.01, "delta_zeroshot": delta, "delta_zeroshot_significant": significant,
                "negative_transfer": negative, **({"eval_set": eval_set} if eval_set else {})}

    in_domain = [row("zeroshot", 0.06, None, None), row("fewshot", 0.13, 0.07, False),
                 row("lora", 0.20, 0.14, None), row("full", 0.02, -0.04, True, negative=True)]
    ood = [row("zeroshot", 0.08, None, None, "mawps_singleop"), row("fewshot", 0.25, 0.17, True, "mawps_singleop"),
           row("lora", 0.28, 0.20, False, "mawps_singleop"), row("full", 0.01, -0.07, True, "mawps_singleop", True)]
    cells = {(c["method"], s): c[h] for c in _table("\n".join(_ood_section("gsm8k", in_domain, ood)), "### ")
             for s, h in (("in", "gsm8k (n=200, flexible), in-domain"), ("ood", "mawps_singleop (n=200, flexible)"))}
    assert cells == {
        ("zeroshot", "in"): "6.0", ("zeroshot", "ood"): "8.0",
        ("fewshot", "in"): "13.0", ("fewshot", "ood"): "25.0*",
        ("lora", "in"): "20.0 ± 1.0†", ("lora", "ood"): "28.0 ± 1.0",
        ("full", "in"): "2.0 ± 1.0* ▼", ("full", "ood"): "1.0 ± 1.0* ▼",
    }


def test_an_out_of_domain_cell_without_a_zero_shot_row_to_compare_with_is_marked_untested(tmp_path):
    """Zero-shot was not scored on svamp, so LoRA's svamp cell has no delta and no test: unmarked it would read as
    "tested and not significant", which the legend says a cell with no mark is; it is marked † (not tested), and
    the zero-shot row, the reference, carries no mark."""
    from test_report_claims import first, write_cell

    write_cell(tmp_path / "sweep", "qwen05", "zeroshot", "gsm8k", 0, first(30))
    for seed in SEEDS:
        write_cell(tmp_path / "sweep", "qwen05", "lora", "gsm8k", seed, first(44 + seed),
                   ood={"svamp": first(20 + seed)})
    report = write_report([tmp_path / "sweep"], tmp_path / "out", plots=False)
    (lora,) = [r for r in report["ood_rows"] if r["method"] == "lora"]
    assert lora["delta_zeroshot"] is None
    cells = {c["method"]: c for c in _table(report["markdown"], "### trained on gsm8k")}
    assert cells["lora"]["svamp (n=60, flexible)"] == "35.0 ± 1.7†"
    assert cells["zeroshot"]["gsm8k (n=60, flexible), in-domain"] == "50.0"
    assert "no `zeroshot` row on that set to compare with" in report["markdown"]


def test_a_mirrored_setting_is_named_once_and_decimal_variants_sort_as_numbers(tmp_path):
    """method.peft.r mirrors method.r (${..r}): the label says r=8, not both; lr=5e-05 sorts before lr=0.0001."""
    job = 0
    for r in (16, 8):
        config = {"method": {"name": "lora", "r": r, "peft": {"r": r}}}
        write_json(tmp_path / str(job) / "result.json",
                   _with_identity(make_record("beta", "lora", 0, 0.2, 0.2), config, f"cfg-r{r}"))
        job += 1
    for lr in (0.0002, 0.001, 5e-05, 0.0001):
        config = {"method": {"name": "full", "lr": lr}}
        write_json(tmp_path / str(job) / "result.json",
                   _with_identity(make_record("beta", "full", 0, 0.2, 0.2), config, f"cfg-lr{lr}"))
        job += 1
    rows = summarize(collect([tmp_path]).records)
    assert [row["variant"] for row in rows if row["method"] == "lora"] == ["r=8", "r=16"]
    assert [row["variant"] for row in rows if row["method"] == "full"] == \
        ["lr=5e-05", "lr=0.0001", "lr=0.0002", "lr=0.001"]


def test_a_seed_that_failed_before_its_identity_is_a_lost_seed_of_its_configuration(tmp_path):
    """A cell that failed while reading its data has no key: it is not a configuration of its own."""
    config = {"method": {"name": "lora", "r": 16}}
    for seed in (0, 1):
        write_json(tmp_path / f"s{seed}" / "result.json",
                   _with_identity(make_record("beta", "lora", seed, 0.3, 0.2), config, "cfg-r16"))
    write_json(tmp_path / "s2" / "result.json",
               {**make_record("beta", "lora", 2, 0.3, 0.2, status="failed"), "config": config, "identity": None})
    rows = summarize(collect([tmp_path]).records)
    assert [(row["variant"], row["n"], row["not_completed"]) for row in rows] == [("", 2, "seed 2 failed")]


def test_a_prompt_style_is_labelled_as_its_key_has_it(tmp_path):
    """prompt.style=auto and an explicit chat that auto renders are one configuration (identity.prompt_style),
    plain is another; a seed lost before its identity, with the config's auto, is a lost seed of the first."""
    for job, (style, keyed) in enumerate([("auto", "auto"), ("chat", "auto"), ("plain", "plain")]):
        config = {"method": {"name": "lora", "train": True}, "prompt": {"style": style}}
        record = _with_identity(make_record("beta", "lora", job, 0.2, 0.2), config, f"cfg-{keyed}")
        record["identity"]["prompt_style"] = keyed
        record["prompt"] = {"style": "plain" if keyed == "plain" else "chat"}
        write_json(tmp_path / str(job) / "result.json", record)
    lost = {**make_record("beta", "lora", 3, 0.2, 0.2, status="diverged"), "identity": None, "prompt": None,
            "config": {"method": {"name": "lora", "train": True}, "prompt": {"style": "auto"}}}
    write_json(tmp_path / "3" / "result.json", lost)
    rows = summarize(collect([tmp_path]).records)
    assert sorted((row["variant"], row["n"], row["not_completed"]) for row in rows) == [
        ("style=auto", 2, "seed 3 diverged"), ("style=plain", 1, None)]


def test_a_label_with_a_line_break_keeps_its_table_row_on_one_line(tmp_path):
    """A multi-line system prompt in a variant label would end the row mid-cell and split the table."""
    from slm_sweep.report.tables import markdown_table

    assert markdown_table(["a", "b"], [["x|y", "one\r\ntwo\nthree"]]) == [
        "| a | b |", "|---|---|", "| x\\|y | one ⏎ two ⏎ three |"]
    for job, system in enumerate((None, "Be brief.\nThink step by step.")):
        config = {"method": {"name": "zeroshot", "train": False}, "prompt": {"system": system}}
        record = _with_identity(make_record("beta", "zeroshot", 0, 0.2, 0.2), config, f"zs-{job}")
        write_json(tmp_path / str(job) / "result.json", record)
    markdown = write_report([tmp_path], tmp_path / "out", plots=False)["markdown"]
    assert "| beta | zeroshot (system=Be brief. ⏎ Think step by step.) | 1 |" in markdown
    rows = [line for line in markdown.splitlines() if line.startswith("| beta |")]
    assert len(rows) == 2 and all(line.endswith(" |") for line in rows)


def test_a_baseline_with_two_variants_says_why_there_is_no_delta(tmp_path):
    """Two zero-shot configurations (another eval dtype): the report cannot pick the reference, and says so
    instead of showing an empty delta that reads as 'no difference'."""
    for job, (dtype, key) in enumerate((("float32", "cfg-a"), ("bfloat16", "cfg-b"))):
        record = make_record("beta", "zeroshot", 0, 0.5, 0.5)
        write_json(tmp_path / str(job) / "result.json",
                   _with_identity(record, {"eval": {"dtype": dtype}}, key))
    write_json(tmp_path / "2" / "result.json", make_record("beta", "full", 0, 0.09, 0.09))
    report = write_report([tmp_path], tmp_path / "out", plots=False)
    (full,) = [row for row in report["rows"] if row["method"] == "full"]
    assert full["delta_zeroshot"] is None and full["delta_zeroshot_test"] == "baseline has several variants"
    assert "No delta against a baseline with several configuration variants" in report["markdown"]
    assert "beta on gsm8k (zeroshot)" in report["markdown"]


def test_each_row_is_compared_with_the_baseline_variant_scored_as_it_was(tmp_path):
    """A sweep over eval.max_new_tokens gives zero-shot two variants: each trained row has a delta against the
    zero-shot row of its own token limit, the one scored as it was (identity.scored_with); a row scored like
    neither, or like both, still has none."""
    job = 0
    for tokens, zeroshot, lora in ((256, 0.10, 0.30), (512, 0.20, 0.35)):
        scored = {"scoring_version": 15, "max_new_tokens": tokens}
        config = {"method": {"name": "zeroshot", "train": False}, "eval": {"max_new_tokens": tokens}}
        record = _with_identity(make_record("beta", "zeroshot", 0, zeroshot, zeroshot), config, f"zs-{tokens}")
        record["identity"]["scored_with"] = scored
        write_json(tmp_path / str(job) / "result.json", record)
        job += 1
        for seed in (0, 1):
            config = {"method": {"name": "lora", "train": True}, "eval": {"max_new_tokens": tokens}}
            record = _with_identity(make_record("beta", "lora", seed, lora, lora), config, f"lora-{tokens}")
            record["identity"]["scored_with"] = scored
            write_json(tmp_path / str(job) / "result.json", record)
            job += 1
    rows = {(row["method"], row["variant"]): row for row in summarize(collect([tmp_path]).records)}
    assert rows["lora", "max_new_tokens=256"]["delta_zeroshot"] == pytest.approx(0.20)
    assert rows["lora", "max_new_tokens=512"]["delta_zeroshot"] == pytest.approx(0.15)
    assert rows["zeroshot", "max_new_tokens=512"]["delta_zeroshot"] is None  # its own baseline

    from slm_sweep.report.aggregate import _reference

    baselines = [{"scored_with": {"max_new_tokens": 256}}, {"scored_with": {"max_new_tokens": 256}}]
    assert _reference({"scored_with": {"max_new_tokens": 256}}, baselines) == (None, True)
    assert _reference({"scored_with": None}, baselines[:1] + [{"scored_with": None}]) == (None, True)
    assert _reference({"scored_with": None}, baselines[:1]) == (baselines[0], False)
    # scored alike but prompted otherwise: not the row's zero-shot (scored_with holds no prompt)
    chat = {"scored_with": {"max_new_tokens": 256}, "settings": {"prompt.style": '"chat"'}}
    plain = {"scored_with": {"max_new_tokens": 512}, "settings": {"prompt.style": '"plain"'}}
    row = {"scored_with": {"max_new_tokens": 256}, "settings": {"prompt.style": '"plain"', "method.r": "16"}}
    assert _reference(row, [chat, plain]) == (None, True)
    assert _reference({**row, "settings": {"prompt.style": '"chat"'}}, [chat, plain]) == (chat, False)


@pytest.mark.parametrize("plain_tokens, delta", [(512, 0.20), (256, None)])
def test_an_out_of_domain_delta_is_against_the_zero_shot_variant_the_in_domain_one_is(tmp_path, plain_tokens,
                                                                                     delta):
    """Zero-shot run with two system prompts, LoRA with the first, all scored alike: out of domain as in domain,
    LoRA is compared with the zero-shot row of its own prompt (scored_with holds no prompt). Where the zero-shot
    row of LoRA's prompt was scored otherwise (another token limit), in domain refuses to pick one, and so does out
    of domain rather than take the row scored alike with another prompt."""
    def cell(job: int, method: str, seed: int, system: str | None, accuracy: float, tokens: int = 512) -> None:
        config = {"method": {"name": method, "train": method == "lora"}, "prompt": {"system": system},
                  "eval": {"max_new_tokens": tokens}}
        ood = {OOD_SET: {"accuracy_strict": accuracy - 0.05, "accuracy_flexible": accuracy - 0.05, "n_eval": 50}}
        record = make_record("beta", method, seed, accuracy, accuracy, ood=ood)
        record = _with_identity(record, config, f"{method}-{system}-{tokens}")
        record["identity"]["scored_with"] = {"scoring_version": 15, "max_new_tokens": tokens}
        write_json(tmp_path / str(job) / "result.json", record)

    cell(0, "zeroshot", 0, None, 0.10, plain_tokens)
    cell(1, "zeroshot", 0, "Be brief.", 0.20)
    for seed in (0, 1):
        cell(2 + seed, "lora", seed, None, 0.30)
    records = collect([tmp_path]).records
    (lora,) = [row for row in summarize(records) if row["method"] == "lora"]
    (lora_ood,) = [row for row in summarize_ood(records) if row["method"] == "lora"]
    for row in (lora, lora_ood):
        assert row["delta_zeroshot"] == (None if delta is None else pytest.approx(delta))
        assert (row["delta_zeroshot_test"] == "baseline has several variants") == (delta is None)


def test_a_cell_whose_every_seed_diverged_is_named_though_it_has_no_row(grid, tmp_path):
    sweep, _ = grid
    for seed in (0, 1, 2):
        record = make_record("beta", "lora", seed, None, None, status="diverged")
        write_json(sweep / f"gone{seed}" / "result.json", {**record, "method": "dora"})
    report = write_report([sweep], tmp_path / "out", plots=False)
    assert not [row for row in report["rows"] if row["method"] == "dora"]
    assert ("No completed seed, so no row in the tables above: beta × dora on gsm8k: seed 0 diverged; "
            "seed 1 diverged; seed 2 diverged.") in report["markdown"]


def test_the_cli_refuses_rows_it_cannot_average_with_a_message_not_a_traceback(tmp_path):
    for seed, n_eval in ((0, 100), (1, 90)):
        record = make_record("beta", "full", seed, 0.3, 0.2)
        record["metrics"]["n_eval"] = n_eval
        write_json(tmp_path / "sweep" / str(seed) / "result.json", record)
    proc = run_cli(str(tmp_path / "sweep"), "--out", str(tmp_path / "out"), cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "different numbers of questions" in proc.stderr


def test_a_lost_seed_is_named_on_its_own_variants_row(tmp_path):
    """lora at r=8 and r=16, seed 2 of r=16 diverged and every seed of r=32 failed: the loss is named on the r=16
    row only, and r=32, which has no row, is named with its rank."""
    sweep = tmp_path / "sweep"
    job = 0
    for r in (8, 16, 32):
        config = {"method": {"name": "lora", "r": r, "lr": 2e-4}}
        for seed in (0, 1, 2):
            status = "failed" if r == 32 else "diverged" if (r, seed) == (16, 2) else "completed"
            record = make_record("beta", "lora", seed, 0.3, 0.2, status=status)
            write_json(sweep / str(job) / "result.json", _with_identity(record, config, f"cfg-r{r}"))
            job += 1
    report = write_report([sweep], tmp_path / "out", plots=False)
    rows = {row["variant"]: row for row in report["rows"]}
    assert set(rows) == {"r=8", "r=16"}
    assert rows["r=16"]["not_completed"] == "seed 2 diverged" and rows["r=16"]["n"] == 2
    assert rows["r=8"]["not_completed"] is None and rows["r=8"]["n"] == 3
    assert "beta × lora (r=16): seed 2 diverged." in report["markdown"]
    assert ("No completed seed, so no row in the tables above: beta × lora (r=32) on gsm8k: seed 0 failed; "
            "seed 1 failed; seed 2 failed.") in report["markdown"]


def test_results_a_rerun_set_aside_are_points_of_the_grid_or_replaced(tmp_path):
    """A rerun into the same folder moves the earlier result to superseded/. A grid extended into the same sweep
    (method.r=8,16, then method.r=16,32) sets r=8 aside in the folder r=32 now holds: r=8 differs only in the r
    the sweep varies, a point of the grid. A result of another max_steps (a setting every current cell shares: the
    rerun changed it) or of the same settings (recomputed) was replaced."""
    def cell(folder: str, r: int, max_steps: int = 10) -> dict:
        config = {"method": {"name": "lora", "train": True, "r": r}, "trainer": {"max_steps": max_steps}}
        record = _with_identity(make_record("beta", "lora", 0, 0.2 + r / 100, 0.2), config, f"cfg-r{r}-{max_steps}")
        write_json(tmp_path / folder / "result.json", record)
        return record

    cell("0-beta-lora", 16)
    cell("1-beta-lora", 32)
    cell("1-beta-lora/superseded", 8)
    cell("0-beta-lora/superseded", 16, max_steps=5)
    cell("0-beta-lora/superseded-2", 16)
    report = write_report([tmp_path], tmp_path / "report", plots=False)
    collection = report["collection"]
    assert collection.set_aside == [tmp_path / "1-beta-lora" / "superseded" / "result.json"]
    assert sorted(collection.replaced) == [tmp_path / "0-beta-lora" / "superseded" / "result.json",
                                           tmp_path / "0-beta-lora" / "superseded-2" / "result.json"]
    assert [row["variant"] for row in report["rows"]] == ["r=8", "r=16", "r=32"]
    assert "read as cells of their own (another point of the grid): 1" in report["markdown"]
    # the set-aside cell is read besides the two result files counted: the cells outnumber them, and it says why
    assert (f"Aggregated from 2 result files under `{tmp_path}`: 3 completed cells used (1 of them from results a "
            f"rerun set aside).") in report["markdown"]
    assert "changed a setting the sweep does not vary), left out: 2" in report["markdown"]


def test_a_recomputation_that_failed_is_the_cell_not_the_finished_result_it_set_aside(tmp_path):
    """resume.enabled=false sets a cell's finished result aside (superseded/) before computing it again, so that a
    rerun that fails loses nothing. When it failed, the cell is that failed attempt: a lost seed in the rows, counted
    and listed as failed (the sweep's exit status), and the set-aside result is left out as replaced, not shown as
    the sweep's numbers; the list says where it is kept. A retry that failed before its keys were known, beside a
    set-aside result of its settings (seed 3), is a lost seed in both too: no key says which it ran."""
    from slm_sweep.report.sweep_notes import incomplete_cells

    for seed in (0, 1, 2, 3):
        config = {"method": {"name": "lora", "r": 16}, "seed": seed}
        write_json(tmp_path / f"s{seed}" / "result.json",
                   _with_identity(make_record("beta", "lora", seed, 0.3, 0.2), config, "cfg-r16"))
        if seed < 2:
            continue
        job = tmp_path / f"s{seed}"
        (job / "superseded").mkdir()
        (job / "result.json").rename(job / "superseded" / "result.json")
        finished = json.loads((job / "superseded" / "result.json").read_text())
        failed = {**finished, "status": "failed", "error": "RuntimeError: boom", "metrics": {},
                  "finished_at": "2024-01-02T13:00:00Z"}
        write_json(job / "result.json", failed if seed == 2 else {**failed, "identity": None})
    report = write_report([tmp_path], tmp_path / "out", plots=False)
    (row,) = report["rows"]
    assert (row["n"], row["seeds"], row["not_completed"]) == (2, [0, 1], "seed 2 failed; seed 3 failed")
    collection = report["collection"]
    assert sorted(collection.replaced) == [tmp_path / "s2" / "superseded" / "result.json",
                                           tmp_path / "s3" / "superseded" / "result.json"]
    assert not collection.set_aside and not collection.duplicates
    kept = ("failed: RuntimeError: boom (the finished result of this configuration that it was computing again is "
            "kept in `superseded/`; running it again with resume.enabled=true, or a sweep without "
            "resume.enabled=false, reuses it)")
    assert incomplete_cells(tmp_path) == [(tmp_path / "s2", kept), (tmp_path / "s3", "failed: RuntimeError: boom")]
    assert "Skipped cells: 0 running, 2 failed, 0 diverged, 0 interrupted." in report["markdown"]
    assert ("Set-aside results that a rerun replaced (recomputed them, or tried to and did not complete: the cell is "
            "that attempt; copied them back") in report["markdown"] and "left out: 2 (listed" in report["markdown"]
    assert f"## Cells that did not complete\n\n- `s2`: {kept}\n- `s3`: failed: RuntimeError: boom" in report["markdown"]


def test_a_result_set_aside_by_a_config_change_stays_a_point_beside_a_failure_of_its_key_elsewhere(tmp_path):
    """A grid extended into the same sweep folder (r=8,16, then r=16,32) sets r=8's result aside in superseded/ of
    the job folder r=32 now runs in; a failed run of r=8's key in another folder (S2, which did not search S1)
    recomputed nothing there: r=8 stays a row, and the failure is the same cell completed, not listed."""
    from slm_sweep.report.sweep_notes import sweep_sections

    def lora(r, seed=0, **changes):
        record = _with_identity(make_record("beta", "lora", seed, 0.3, 0.2), {"method": {"name": "lora", "r": r}},
                                f"cfg-r{r}")
        return {**record, **changes}

    write_json(tmp_path / "S1" / "0" / "superseded" / "result.json", lora(8))
    write_json(tmp_path / "S1" / "0" / "result.json", lora(32))
    write_json(tmp_path / "S1" / "1" / "result.json", lora(16))
    write_json(tmp_path / "S2" / "0" / "result.json",
               lora(8, status="failed", error="RuntimeError: boom", metrics={}, finished_at="2024-01-02T13:00:00Z"))
    report = write_report([tmp_path / "S1", tmp_path / "S2"], tmp_path / "out", plots=False)
    assert sorted((row["variant"], row["n"], row["not_completed"]) for row in report["rows"]) == [
        ("r=16", 1, None), ("r=32", 1, None), ("r=8", 1, None)]
    assert not report["collection"].replaced
    assert "Skipped cells: 0 running, 0 failed, 0 diverged, 0 interrupted." in report["markdown"]
    assert "## Cells that did not complete" not in "\n".join(sweep_sections([tmp_path / "S1", tmp_path / "S2"]))


def test_the_cells_that_did_not_complete_are_listed_as_the_summary_counts_them(tmp_path):
    """Both seeds of a zero-shot baseline failed after their keys were known (one evaluation key), both of a few-shot
    baseline with a fixed shot seed before (one setting that does not depend on the seed): each is one cell,
    counted once and listed once, naming its job folders; each seed of a trained method is a cell of its own."""
    methods = {"zeroshot": {"name": "zeroshot", "train": False},
               "fewshot": {"name": "fewshot", "train": False, "num_fewshot": 2, "shot_seed": 1234},
               "lora": {"name": "lora", "train": True, "r": 16}}
    job = 0
    for method, config in methods.items():
        for seed in (0, 1):
            record = _with_identity(make_record("beta", method, seed, 0.3, 0.2, status="failed"), {"method": config},
                                    method, evaluation_key=f"{method}-eval" if method == "zeroshot" else None)
            if method == "fewshot":
                record["identity"] = None
            write_json(tmp_path / f"{job}-{method}-seed{seed}" / "result.json", record)
            job += 1
    write_json(tmp_path / "6-alpha-zeroshot" / "result.json",
               _with_identity(make_record("alpha", "zeroshot", 0, 0.3, 0.2), {"method": methods["zeroshot"]}, "zs"))
    markdown = write_report([tmp_path], tmp_path / "out", plots=False)["markdown"]
    assert "Skipped cells: 0 running, 4 failed, 0 diverged, 0 interrupted." in markdown
    listed = markdown.split("## Cells that did not complete\n\n")[1].split("\n\n")[0].splitlines()
    assert listed == ["- `0-zeroshot-seed0`, `1-zeroshot-seed1` (one cell, run in 2 job folders): failed: "
                      "RuntimeError: boom",
                      "- `2-fewshot-seed0`, `3-fewshot-seed1` (one cell, run in 2 job folders): failed: "
                      "RuntimeError: boom",
                      "- `4-lora-seed0`: failed: RuntimeError: boom", "- `5-lora-seed1`: failed: RuntimeError: boom"]
    from slm_sweep.report.sweep_notes import incomplete_cell_groups

    assert [[job.name for job, _ in cell] for cell in incomplete_cell_groups(tmp_path)] == [
        ["0-zeroshot-seed0", "1-zeroshot-seed1"], ["2-fewshot-seed0", "3-fewshot-seed1"], ["4-lora-seed0"],
        ["5-lora-seed1"]]


def test_cells_without_an_identity_are_told_apart_by_their_settings_and_join_their_rerun(tmp_path):
    """Files of cells that have no identity (written before there was one, or failed before computing it): LoRA
    at r=8 and r=16 stay two cells, and a failed first attempt of a seed is the same cell as its completed rerun,
    not a lost seed of another configuration."""
    sweep = tmp_path / "sweep"
    for r in (8, 16):
        config = {"method": {"name": "lora", "r": r}}
        write_json(sweep / f"old-r{r}" / "result.json", {**make_record("beta", "lora", 0, r / 100, r / 100),
                                                         "config": config})
    rows = summarize(collect([sweep]).records)
    assert {row["variant"]: row["accuracy_flexible_mean"] for row in rows} == pytest.approx({"r=8": 0.08, "r=16": 0.16})

    again = tmp_path / "again"
    config = {"method": {"name": "lora", "r": 8}}
    for seed in (0, 1):
        record = _with_identity(make_record("beta", "lora", seed, 0.3, 0.2), config, "cfg-r8")
        write_json(again / f"rerun-{seed}" / "result.json", record)
    failed = {**make_record("beta", "lora", 1, 0.3, 0.2, status="failed", finished_at="2023-12-31T10:00:00Z"),
              "config": config, "identity": None}
    write_json(again / "first-1" / "result.json", failed)
    report = write_report([again], tmp_path / "out", plots=False)
    (row,) = report["rows"]
    assert (row["variant"], row["n"], row["not_completed"]) == ("", 2, None)
    assert [Path(kept).parent.name for kept, _ in report["collection"].duplicates] == ["rerun-1"]


@pytest.mark.parametrize("ranks", [(8,), (4, 8, 16), (2, 4, 8, 16, 32, 64, 128, 256)])
def test_every_method_label_of_a_report_gets_its_own_color(ranks):
    from slm_sweep.report.plots import label_colors

    rows = [{"model": "tiny", "method": b, "variant": ""} for b in ("zeroshot", "fewshot")]
    rows += [{"model": "tiny", "method": m, "variant": f"r={r}"} for m in ("lora", "dora", "full") for r in ranks]
    colors = label_colors(rows)
    assert len(colors) == len(rows) and len(set(map(tuple, colors.values()))) == len(rows)
    assert list(colors)[:3] == ["zeroshot", "fewshot", f"full (r={ranks[0]})"]


def test_a_nested_learning_rate_search_is_left_out_by_name_not_as_malformed(grid, tmp_path):
    sweep, _ = grid
    searched = []
    for lr in (1e-4, 3e-4):
        record = make_record("beta", "lora", 0, None, None)
        record["metrics"] = {"val_accuracy_flexible": 0.3, "val_accuracy_strict": 0.2, "val_n_eval": 500}
        record["config"] = {"method": {"name": "lora", "lr": lr, "train": True}, "eval": {"split": "val"}}
        searched.append(write_json(sweep / "hparams" / str(lr) / "result.json", record))
    report = write_report([sweep], tmp_path / "out", plots=False)
    collection = report["collection"]
    assert sorted(collection.validation) == sorted(searched) and not collection.malformed
    assert len(report["rows"]) == 8 and all(row["n"] == 3 for row in report["rows"])
    provenance = json.loads((tmp_path / "out" / "report.json").read_text())
    assert sorted(provenance["inputs"]["validation_split"]) == sorted(map(str, searched))
    assert "validation split (a learning-rate search" in report["markdown"]
    assert "left out: 2" in report["markdown"]


def test_report_json_keeps_credentials_of_the_command_line_out(grid, tmp_path, monkeypatch):
    import sys

    secret = "SECRETKEY0123456789abcdef0123456789abcdef"
    monkeypatch.setattr(sys, "orig_argv", ["python", "-m", "slm_sweep", "-m", "logger=wandb",
                                           f"+logger.api_key={secret}"])
    sweep, _ = grid
    write_report([sweep], tmp_path / "out", plots=False)
    text = (tmp_path / "out" / "report.json").read_text()
    assert secret not in text and "+logger.api_key=<redacted>" in text


def test_rows_whose_answers_were_cut_off_at_the_token_limit_are_named(grid, tmp_path):
    """An answer cut off at eval.max_new_tokens may lack its final number: summary.md names the rows where that
    happened to more than TRUNCATION_WARNING of the answers, in-domain and out-of-domain; the CSVs carry the share."""
    sweep, _ = grid
    for path in sweep.glob("*/result.json"):
        record = json.loads(path.read_text())
        # seeds 0, 1, 2 cut off 20, 30 and 40 % of alpha x lora's answers, 0.5, 1 and 1.5 % of the others'
        mean, spread = (0.3, 0.1) if (record["model"], record["method"]) == ("alpha", "lora") else (0.01, 0.005)
        cut = mean + spread * (record["seed"] - 1)
        record["metrics"]["truncated_fraction"] = cut
        record["eval_sets"][OOD_SET]["truncated_fraction"] = cut / 3
        path.write_text(json.dumps(record))
    report = write_report([sweep], tmp_path / "out", plots=False)
    note = next(line for line in report["markdown"].splitlines() if line.startswith("**Answers cut off"))
    assert f"alpha × lora on {DATASET}: 30.0 %; alpha × lora on {DATASET} → {OOD_SET}: 10.0 %." in note
    assert "beta" not in note and "zeroshot" not in note
    with open(report["summary_csv"], newline="") as f:
        rows = {(r["model"], r["method"]): r for r in csv.DictReader(f)}
    assert float(rows["alpha", "lora"]["truncated_fraction_mean"]) == pytest.approx(0.3)
    assert float(rows["beta", "full"]["truncated_fraction_mean"]) == pytest.approx(0.01)


def test_summary_says_how_many_rows_of_the_data_had_no_numeric_reference(grid, tmp_path):
    """OrcaMath's prose answers are parsed to one number, and the rows where none can be read are left out of
    training and of the test set: how many is part of what a reader must know."""
    sweep, _ = grid
    for path in sweep.glob("*/result.json"):
        record = json.loads(path.read_text())
        record["skipped_rows"] = {"train": 37} if record["method"] in ("full", "lora") else {"train": 0}
        path.write_text(json.dumps(record))
    markdown = write_report([sweep], tmp_path / "out", plots=False)["markdown"]
    assert f"neither trained on nor scored: {DATASET} train: 37." in markdown
    for path in sweep.glob("*/result.json"):
        record = json.loads(path.read_text())
        record["skipped_rows_asking_who"] = {"train": 5} if record["method"] == "full" else {}
        path.write_text(json.dumps(record))
    markdown = write_report([sweep], tmp_path / "again", plots=False)["markdown"]
    assert f"neither trained on nor scored: {DATASET} train: 37 (5 asking who)." in markdown


def test_a_baseline_written_before_cells_had_an_identity_counts_once_and_trained_seeds_stay_apart(tmp_path):
    """Zero-shot gives the same result for every run seed: three files of it from before cells had an identity are
    one measurement (n=1, no spread), not three seeds that agree (std 0, a CI of 0). A trained method's seeds, and
    a config that does not say whether its method trains, stay seeds."""
    for seed in SEEDS:
        baseline = make_record("beta", "zeroshot", seed, 0.3, 0.25)
        write_json(tmp_path / f"zs{seed}" / "result.json",
                   {**baseline, "config": {"method": {"name": "zeroshot", "train": False}}})
        trained = make_record("beta", "lora", seed, 0.4 + 0.01 * seed, 0.3)
        write_json(tmp_path / f"lora{seed}" / "result.json",
                   {**trained, "config": {"method": {"name": "lora", "train": True}}})
        unknown = make_record("beta", "fewshot", seed, 0.2, 0.1)
        write_json(tmp_path / f"fs{seed}" / "result.json", {**unknown, "config": {"method": {"name": "fewshot"}}})
    rows = {row["method"]: row for row in summarize(collect([tmp_path]).records)}
    assert rows["zeroshot"]["n"] == 1 and rows["zeroshot"]["accuracy_flexible_std"] is None
    assert rows["zeroshot"]["accuracy_flexible_ci95"] is None
    assert rows["lora"]["n"] == 3 and rows["lora"]["accuracy_flexible_std"] == pytest.approx(0.01)
    assert rows["fewshot"]["n"] == 3


def test_a_seed_resumed_from_a_checkpoint_is_left_out_of_the_training_time(tmp_path):
    """A resumed seed's train_time_s counts the steps after its checkpoint only: averaged in, the row's training
    time would understate the method's cost; the table says which seeds were left out."""
    for seed in SEEDS:
        record = make_record("beta", "lora", seed, 0.4, 0.3)  # train_time_s 50, 60, 70
        record["resumed_from_checkpoint"] = "/ckpt/step-50.ckpt" if seed == 2 else None
        write_json(tmp_path / str(seed) / "result.json", record)
    report = write_report([tmp_path], tmp_path / "out", plots=False)
    (row,) = report["rows"]
    assert row["train_time_s_mean"] == pytest.approx(55.0) and row["train_time_resumed_seeds"] == 1
    assert "seeds resumed from a checkpoint timed only the steps after it and are left out of it (beta × lora: " \
           "1 of 3; none left: empty)" in report["markdown"]
    with (tmp_path / "out" / "summary.csv").open() as f:
        assert next(csv.DictReader(f))["train_time_resumed_seeds"] == "1"


def test_a_seed_whose_training_time_counts_its_final_validation_is_left_out_of_the_training_time(tmp_path):
    """A result file written before the pass on the final weights was timed apart (no final_validation_s) counted
    that pass in train_time_s: averaged with the others it would mix two measures."""
    for seed in SEEDS:
        record = make_record("beta", "lora", seed, 0.4, 0.3)  # train_time_s 50, 60, 70
        if seed == 2:
            del record["metrics"]["final_validation_s"]
        write_json(tmp_path / str(seed) / "result.json", record)
    report = write_report([tmp_path], tmp_path / "out", plots=False)
    (row,) = report["rows"]
    assert row["train_time_s_mean"] == pytest.approx(55.0) and row["train_time_older_seeds"] == 1
    assert row["train_time_resumed_seeds"] == 0
    assert "seeds whose result files counted the validation pass on the final weights in it, written before that " \
           "pass was timed apart (beta × lora: 1 of 3; none left: empty)" in report["markdown"]
    with (tmp_path / "out" / "summary.csv").open() as f:
        assert next(csv.DictReader(f))["train_time_older_seeds"] == "1"


def test_the_peak_memory_of_a_re_scored_seed_is_its_training_run_s(tmp_path):
    """A seed that re-scored kept weights peaked in evaluation alone (peak_memory_mb): its training run's peak
    (train_peak_memory_mb, copied with the other training figures) counts instead where larger; a re-scored file
    written before that peak was recorded is left out and named, not read as the method's memory; a file of a
    seed that trained itself, with or without the key, reads as before."""
    for seed in SEEDS:
        record = make_record("beta", "full", seed, 0.4, 0.3)  # peak_memory_mb 512, 612, 712
        if seed == 0:
            record["trained_in"] = "/elsewhere/cell"
            record["metrics"]["train_peak_memory_mb"] = 4096.0
        if seed == 1:
            record["metrics"]["train_peak_memory_mb"] = 600.0
        if seed == 2:  # re-scored, written before the training peak was recorded: its 712 is evaluation's alone
            record["trained_in"] = "/elsewhere/older"
        write_json(tmp_path / str(seed) / "result.json", record)
    report = write_report([tmp_path], tmp_path / "out", plots=False)
    (row,) = report["rows"]
    assert row["peak_memory_mb_max"] == pytest.approx(4096.0) and row["peak_memory_unknown_seeds"] == 1
    assert "| 4.0 GiB |" in report["markdown"]
    assert "seeds that re-scored kept weights from a result file that records no training peak " \
           "(`train_peak_memory_mb`, written before it was recorded) peaked in evaluation alone and are left out " \
           "of it (beta × full: 1 of 3; none left: empty)" in report["markdown"]
    with (tmp_path / "out" / "summary.csv").open() as f:
        assert next(csv.DictReader(f))["peak_memory_unknown_seeds"] == "1"


def test_the_peak_memory_of_a_seed_is_of_one_kind_of_memory(tmp_path):
    """A cell's own peak is the GPU's where training or evaluation ran on one, else the process's resident memory
    (run.py). Weights trained on a GPU and re-scored on the CPU: the re-score's own peak is host memory, its copied
    training peak the GPU's; the seed's peak is the GPU's, as for a seed of the same placement that trained itself,
    not the larger of the two kinds. Of one kind (both stages on the CPU), the larger."""
    from slm_sweep.report.aggregate import cell_peak_memory_mb

    gpu_train, host = {"device": "cuda:0"}, {"device": "cpu"}
    for seed in SEEDS:
        record = make_record("beta", "full", seed, 0.4, 0.3)
        record["placement"] = {"train": gpu_train, "eval": host}
        if seed == 0:  # trained here: its own peak is the GPU's, training included
            record["metrics"].update(train_peak_memory_mb=900.0, peak_memory_mb=900.0)
        else:  # re-scored on the CPU: its own peak is the process's resident memory
            record["trained_in"] = "/elsewhere/cell"
            record["metrics"].update(train_peak_memory_mb=800.0 + seed, peak_memory_mb=2600.0)
        write_json(tmp_path / "gpu" / str(seed) / "result.json", record)
    (row,) = write_report([tmp_path / "gpu"], tmp_path / "out", plots=False)["rows"]
    assert row["peak_memory_mb_max"] == pytest.approx(900.0) and row["peak_memory_unknown_seeds"] == 0
    on_cpu = {"trained_in": "/elsewhere/cell", "placement": {"train": host, "eval": host},
              "metrics": {"train_peak_memory_mb": 700.0, "peak_memory_mb": 1200.0}}
    assert cell_peak_memory_mb(on_cpu) == 1200.0
    # weights trained on the CPU, scored on a GPU: the GPU's, the evaluation's
    on_gpu = {**on_cpu, "placement": {"train": host, "eval": {"device": "cuda:0"}},
              "metrics": {"train_peak_memory_mb": 1500.0, "peak_memory_mb": 300.0}}
    assert cell_peak_memory_mb(on_gpu) == 300.0
    # a seed that trained itself reads as before: its own peak, the GPU's where either stage ran on one
    assert cell_peak_memory_mb({**on_gpu, "trained_in": None}) == 300.0


def test_a_row_of_one_seed_is_drawn_without_an_error_bar():
    from slm_sweep.report.plots import _error_bar

    assert math.isnan(_error_bar({"accuracy_flexible_std": None}))
    assert _error_bar({"accuracy_flexible_std": 0.02}) == pytest.approx(2.0)


def test_a_completed_seed_without_an_identity_is_not_pooled_into_a_keyed_configuration(tmp_path):
    """Two LoRA seeds with a configuration key and a completed third without one (other code, before cells had an
    identity): nothing shows the third was computed as the others were, so it gets a row of its own, labelled of
    unknown configuration; a seed that failed before its key joins the keyed row as a lost seed."""
    config = {"method": {"name": "lora", "r": 16}}
    for seed in (0, 1):
        write_json(tmp_path / f"s{seed}" / "result.json",
                   _with_identity(make_record("beta", "lora", seed, 0.3, 0.2), config, "cfg-r16-new"))
    write_json(tmp_path / "s2" / "result.json",
               {**make_record("beta", "lora", 2, 0.5, 0.4), "config": config, "identity": None})
    write_json(tmp_path / "s3" / "result.json",
               {**make_record("beta", "lora", 3, 0.3, 0.2, status="failed"), "config": config, "identity": None})
    rows = summarize(collect([tmp_path]).records)
    assert sorted((row["variant"], row["n"], row["seeds"], row["not_completed"]) for row in rows) == [
        ("config cfg-r16-", 2, [0, 1], "seed 3 failed"), ("config unknown", 1, [2], None)]


def test_a_baseline_copy_without_an_identity_counts_once_with_its_original(tmp_path):
    """A seed-independent zero-shot copied into seed 1 by a run that wrote no identity, its original with one: the
    copy is the same measurement, counted once, and the report is written."""
    config = {"method": {"name": "zeroshot", "train": False}}
    original = tmp_path / "0" / "result.json"
    write_json(original, _with_identity(make_record("beta", "zeroshot", 0, 0.1, 0.05), config, "zs",
                                        evaluation_key="zs-eval"))
    write_json(tmp_path / "1" / "result.json", {**make_record("beta", "zeroshot", 1, 0.1, 0.05), "config": config,
                                                "reused_from": str(original)})
    report = write_report([tmp_path], tmp_path / "out", plots=False)
    (row,) = report["rows"]
    assert (row["n"], row["seeds"]) == (1, [0])
    assert report["collection"].copies == [(original, tmp_path / "1" / "result.json")]
    assert not report["collection"].duplicates


def _killed(job: Path, overrides: list[str], config: dict | None = None, mode: str = "MULTIRUN") -> None:
    """A job Hydra started (.hydra/) that was killed before the cell wrote its result.json."""
    import yaml

    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    (job / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump({"hydra": {"mode": mode}}))
    if config is not None:
        (job / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))


def test_a_seed_killed_before_writing_its_result_is_a_lost_seed_of_its_row(tmp_path, capsys):
    """LoRA at r=8 and r=16, seeds 0 and 1 each. Seed 2 of r=16 was killed before writing result.json (its
    .hydra/config.yaml names the cell), seed 2 of r=8 too (its overrides name it; the dataset is the default); a
    requeued seed 0 of r=8 that completed in another folder is not lost; a seed whose overrides do not say which
    rank it ran cannot be placed on a row, and is named so."""
    sweep = tmp_path / "sweep"
    for r in (8, 16):
        config = {"method": {"name": "lora", "r": r}}
        for seed in (0, 1):
            write_json(sweep / f"r{r}-{seed}" / "result.json",
                       _with_identity(make_record("beta", "lora", seed, 0.3, 0.2), config, f"cfg-r{r}"))
    _killed(sweep / "r16-2", ["method=lora", "seed=2"],
            {"model": {"name": "beta"}, "method": {"name": "lora", "r": 16}, "dataset": {"name": DATASET}, "seed": 2})
    _killed(sweep / "r8-2", ["model=beta", "method=lora", "method.r=8", "seed=2"])
    _killed(sweep / "requeued", ["model=beta", "method=lora", "method.r=8", "seed=0"])
    _killed(sweep / "which", ["model=beta", "method=lora", "seed=3"])
    # a single run refused for its config stops before writing anything: no seed of the grid
    _killed(sweep / "single", ["model=beta", "method=lora", "method.r=8", "seed=2", "trainer.max_steps=-3"],
            mode="RUN")
    claims = tmp_path / "claims.yaml"
    claims.write_text("claims:\n  - {id: lora, text: t, a: lora, b: full, direction: above}\n"
                      "  - {id: full, text: t, a: full, b: zeroshot, direction: above}\n")
    report = write_report([sweep], tmp_path / "out", plots=False, claims=claims)
    assert {row["variant"]: (row["n"], row["not_completed"]) for row in report["rows"]} == {
        "r=8": (2, "seed 2 left no result.json"), "r=16": (2, "seed 2 left no result.json")}
    assert [cell["job"] for cell in report["collection"].unattributed] == [sweep / "which"]
    assert "beta × lora (r=16): seed 2 left no result.json" in report["markdown"]
    # counted among the skipped cells, in summary.md and the command line's closing line, the unattributed one too
    skipped = "0 running, 0 failed, 0 diverged, 0 interrupted, 3 left no result.json"
    assert f"Skipped cells: {skipped}." in report["markdown"]
    from slm_sweep.report.__main__ import main

    assert main([str(sweep), "--out", str(tmp_path / "cli"), "--no-plots"]) == 0
    assert f"4 result files, 4 completed cells used; skipped cells: {skipped};" in capsys.readouterr().out
    provenance = json.loads((tmp_path / "out" / "report.json").read_text())["inputs"]
    assert sorted(cell["seed"] for cell in provenance["unwritten"]) == [2, 2]
    assert [cell["job"] for cell in provenance["unattributed"]] == [str(sweep / "which")]
    # a claim that may read the row it belongs to says so; one about other methods does not
    gaps = {result.claim.id: result.gaps for result in report["claims"].results}
    assert gaps["lora"] == [f"1 cell stopped before writing result.json, and which configuration it ran cannot be "
                            f"told ({sweep / 'which'}): it may be a lost seed of the rows this claim reads"]
    assert gaps["full"] == []


def test_a_seed_lost_in_a_rerun_at_other_code_is_not_held_by_the_earlier_sweep_s_seed(tmp_path):
    """A rerun at new code (other configuration keys, the same settings) read with the earlier sweep: its seed 2,
    killed before writing result.json, is a lost seed of the rerun's row, not held by the earlier code's seed 2;
    its seed 3, failed before computing its identity, is not filed under the earlier code's seed 3 either: which
    code it ran cannot be told, so it is named as of unknown configuration."""
    config = {"method": {"name": "lora", "r": 16}}
    for sweep, key, seeds in (("old", "aaaaaaaa-v1", (0, 1, 2, 3)), ("new", "bbbbbbbb-v2", (0, 1))):
        for seed in seeds:
            write_json(tmp_path / sweep / f"s{seed}" / "result.json",
                       _with_identity(make_record("beta", "lora", seed, 0.3, 0.2), config, key))
    _killed(tmp_path / "new" / "s2", ["method=lora", "seed=2"],
            {"model": {"name": "beta"}, "method": {"name": "lora", "r": 16}, "dataset": {"name": DATASET}, "seed": 2})
    write_json(tmp_path / "new" / "s3" / "result.json",
               {**make_record("beta", "lora", 3, 0.3, 0.2, status="failed"), "config": config, "identity": None})
    report = write_report([tmp_path / "old", tmp_path / "new"], tmp_path / "out", plots=False)
    assert {row["variant"]: (row["n"], row["not_completed"]) for row in report["rows"]} == {
        "config aaaaaaaa": (4, None), "config bbbbbbbb": (2, "seed 2 left no result.json")}
    assert not report["collection"].duplicates and not report["collection"].unattributed
    assert "beta × lora (config unknown) on gsm8k: seed 3 failed." in report["markdown"]


def test_a_first_attempt_without_an_identity_whose_requeue_completed_in_a_rerun_loses_no_seed(tmp_path):
    """A rerun at new code, read with the earlier sweep: its seed 2 failed before computing its identity, and
    the requeue completed it in another folder. That attempt is the completed cell's duplicate, of the
    configuration run in its own sweep folder, as when the rerun is read alone: no seed is lost."""
    config = {"method": {"name": "lora", "r": 16}}
    for sweep, key in (("old", "aaaaaaaa-v1"), ("new", "bbbbbbbb-v2")):
        for seed in (0, 1, 2):
            write_json(tmp_path / sweep / f"s{seed}" / "result.json",
                       _with_identity(make_record("beta", "lora", seed, 0.3, 0.2), config, key))
    failed = make_record("beta", "lora", 2, 0.3, 0.2, status="failed", finished_at="2024-01-01T10:00:00Z")
    write_json(tmp_path / "new" / "s2-first" / "result.json", {**failed, "config": config, "identity": None})
    report = write_report([tmp_path / "old", tmp_path / "new"], tmp_path / "out", plots=False)
    assert {row["variant"]: (row["n"], row["not_completed"]) for row in report["rows"]} == {
        "config aaaaaaaa": (3, None), "config bbbbbbbb": (3, None)}
    assert report["collection"].duplicates == [(tmp_path / "new" / "s2" / "result.json",
                                                tmp_path / "new" / "s2-first" / "result.json")]
    assert "Skipped cells: 0 running, 0 failed, 0 diverged, 0 interrupted." in report["markdown"]


def test_a_seed_killed_and_then_failed_before_its_identity_in_a_retry_is_counted_once(tmp_path):
    """Seed 2 was killed before writing result.json, and its retry in another folder failed before computing
    its identity: one lost seed, the failed retry, which holds the seed of the one configuration of its
    settings."""
    config = {"method": {"name": "lora", "r": 16}}
    for seed in (0, 1):
        write_json(tmp_path / f"s{seed}" / "result.json",
                   _with_identity(make_record("beta", "lora", seed, 0.3, 0.2), config, "aaaaaaaa-v1"))
    _killed(tmp_path / "s2-killed", ["method=lora", "seed=2"],
            {"model": {"name": "beta"}, **config, "dataset": {"name": DATASET}, "seed": 2})
    failed = make_record("beta", "lora", 2, 0.3, 0.2, status="failed")
    write_json(tmp_path / "s2-retry" / "result.json", {**failed, "config": config, "identity": None})
    report = write_report([tmp_path], tmp_path / "out", plots=False)
    (row,) = report["rows"]
    assert (row["n"], row["not_completed"]) == (2, "seed 2 failed") and not report["collection"].unwritten
    assert "Skipped cells: 0 running, 1 failed, 0 diverged, 0 interrupted." in report["markdown"]


def test_an_older_record_whose_eval_time_counted_its_out_of_domain_sets_is_not_averaged_with_newer_ones():
    from slm_sweep.report.aggregate import scored_split_eval_time

    old = {"metrics": {"eval_time_s": 100.0}, "eval_sets": {"svamp": {"n_eval": 4}}}
    new = {"metrics": {"eval_time_s": 10.0, "eval_time_all_sets_s": 100.0}, "eval_sets": {"svamp": {"n_eval": 4}}}
    alone = {"metrics": {"eval_time_s": 12.0}, "eval_sets": {}}
    assert [scored_split_eval_time(r) for r in (old, new, alone)] == [None, 10.0, 12.0]


@pytest.mark.parametrize("version, warned", [(1, False), (2, False), (3, True), (None, True), ("2", True)])
def test_every_schema_version_this_code_knows_reads_quietly_and_others_are_named(version, warned, tmp_path, caplog):
    from slm_sweep.report.collect import read_result
    from slm_sweep.results import SCHEMA_VERSION

    assert SCHEMA_VERSION == 2  # a bump adds its versions to the cases above
    record = make_record("alpha", "lora", 0, 0.3, 0.2)
    record["schema_version"] = version
    path = write_json(tmp_path / "result.json", record)
    with caplog.at_level(logging.WARNING, logger="slm_sweep.report.collect"):
        assert read_result(path)["model"] == "alpha"
    assert (f"schema_version {version!r}, this code reads 1 to 2" in caplog.text) == warned


def test_a_completed_result_beside_an_early_failure_is_its_cell_s_when_another_folder_failed_early_at_it(tmp_path):
    """A grid extended into the same sweep folder (method.r=8,16, then r=16,32) while the hub is down: job 0 holds
    r=8's finished result beside r=16's early failure, job 1 r=16's finished result beside r=32's. The completed
    r=16 seed 0 is r=16's result, kept over its failure in job 0, not dropped as replaced; r=32 is lost once."""
    from test_report_claims import _fail_beside, _variant, first, write_cell, write_row

    from slm_sweep.report.sweep_notes import incomplete_cells

    write_row(tmp_path, "smollm135", "zeroshot", "gsm8k", 20)
    for job, (old, new) in enumerate([(8, 16), (16, 32)]):
        path = write_cell(tmp_path / f"job{job}", "smollm135", "lora", "gsm8k", 0, first(30 + old))
        _variant(path, r=old)
        _fail_beside(path, r=new)
    report = write_report([tmp_path], tmp_path / "report", plots=False)
    rows = {row["variant"]: (row["seeds"], row["not_completed"]) for row in report["rows"] if row["method"] == "lora"}
    assert rows == {"r=8": ([0], None), "r=16": ([0], None)}
    collection = report["collection"]
    assert collection.replaced == []
    lora = sorted((r["config"]["method"]["r"], r["status"]) for r in collection.records if r["method"] == "lora")
    assert lora == [(8, "completed"), (16, "completed"), (32, "failed")]  # each cell once
    assert "smollm135 × lora (r=32) on gsm8k: seed 0 failed." in report["markdown"]
    assert "(r=16) on gsm8k: seed 0 failed" not in report["markdown"]
    assert [job.name for job in map(lambda f: f[0].parent, incomplete_cells(tmp_path))] == ["job1"]  # r=32's folder


def test_an_early_failure_after_its_rate_was_resolved_is_another_cell_beside_another_rate_s_result(tmp_path):
    """A method.lr=1e-4,2e-4 sweep rerun into the same folders: lr=2e-4 seed 0 fails in load_data, after
    resolve_lr (its record has learning_rate, its config the rate it resolved), beside lr=1e-4 seed 0's finished
    result. Its rate tells the cells apart: lr=2e-4 seed 0 is lost on its row, and the sweep notes agree."""
    from test_report_claims import _variant, first, write_cell, write_row

    from slm_sweep.report.collect import other_cell
    from slm_sweep.report.sweep_notes import incomplete_cells

    write_row(tmp_path, "smollm135", "zeroshot", "gsm8k", 20)
    for lr in (1e-4, 2e-4):
        for seed in (0, 1, 2):
            if (lr, seed) == (2e-4, 0):
                continue
            path = write_cell(tmp_path / f"lr{lr}-job{seed}", "smollm135", "lora", "gsm8k", seed,
                              first(30 + seed + (10 if lr == 2e-4 else 0)))
            record = json.loads(path.read_text())
            record["config"]["seed"] = seed
            path.write_text(json.dumps(record))
            _variant(path, lr=lr)
    finished = tmp_path / "lr0.0001-job0" / "smollm135-lora-gsm8k-seed0" / "result.json"
    attempt = json.loads(finished.read_text())
    attempt["config"]["method"]["lr"] = 2e-4
    attempt.update(status="failed", error="OSError: hub error while reading data", identity=None, metrics={},
                   eval_sets={}, learning_rate={"value": 2e-4, "source": "method", "detail": "method.lr"})
    write_json(finished.parent / "result.failed.json", attempt)
    assert other_cell(attempt, json.loads(finished.read_text()))
    refused = {k: v for k, v in attempt.items() if k != "learning_rate"}  # refused before resolve_lr: as configured
    assert not other_cell(refused, json.loads(finished.read_text()))
    report = write_report([tmp_path], tmp_path / "report", plots=False)
    rows = {row["variant"]: (row["seeds"], row["not_completed"]) for row in report["rows"] if row["method"] == "lora"}
    assert rows == {"lr=0.0001": ([0, 1, 2], None), "lr=0.0002": ([1, 2], "seed 0 failed")}
    assert report["collection"].replaced == []
    (job, why), = incomplete_cells(tmp_path)
    assert job == finished.parent and "another cell's finished result" in why


def test_a_report_refuses_to_replace_summaries_no_report_wrote(grid, tmp_path, capsys):
    """--out a folder holding the user's own summary.md and summary.csv: both were replaced without a word. The
    files of an earlier report (listed in its report.json) are replaced as before."""
    from slm_sweep.report.__main__ import main

    sweep, _ = grid
    mine = tmp_path / "notes"
    write_json(mine / "summary.md", "my hand-written notes")
    write_json(mine / "summary.csv", "a,b")
    assert main([str(sweep), "--out", str(mine), "--no-plots"]) == 2
    assert (f"error: {mine} holds summary.md, summary.csv, which no report wrote (no report.json there lists "
            "them), and this report would replace them: move them away or write the report into another folder "
            "(--out)") in capsys.readouterr().err
    assert sorted(p.name for p in mine.iterdir()) == ["summary.csv", "summary.md"]
    assert (mine / "summary.md").read_text() == "my hand-written notes" and (mine / "summary.csv").read_text() == "a,b"
    # the claims files when the report writes them, and a report.json that is no report's record
    write_json(tmp_path / "claims" / "claims.md", "mine")
    with pytest.raises(ReportError, match=r"holds claims.md, which no report wrote \(no report.json there lists it\)"):
        write_report([sweep], tmp_path / "claims", plots=False, claims=DEFAULT_CLAIMS)
    write_report([sweep], tmp_path / "claims", plots=False)  # without --claims it writes none of them
    write_json(tmp_path / "record" / REPORT_FILE, {"mine": 1})
    with pytest.raises(ReportError, match=f"holds {REPORT_FILE}, which no report wrote"):
        write_report([sweep], tmp_path / "record", plots=False)
    # a report's own folder, written again, with claims this time
    out = tmp_path / "report"
    write_report([sweep], out, plots=False)
    write_report([sweep], out, plots=False, claims=DEFAULT_CLAIMS)
    assert (out / "claims.md").exists()
    # the sweep's own folder is the reports' whatever it holds: a summary written before report.json existed, or
    # by a report that stopped before writing report.json
    (sweep / REPORT_FILE).unlink(missing_ok=True)
    write_json(sweep / "summary.md", "an older report's summary")
    write_report([sweep], plots=False)
    assert (sweep / "summary.md").read_text().startswith("# Sweep summary") and (sweep / REPORT_FILE).is_file()


def test_cli_dir_naming_a_file_other_than_a_result_is_an_argument_error(grid, tmp_path, capsys):
    """A file that is not a result.json was read as a folder holding none: "no result.json found under: FILE"."""
    from slm_sweep.report.__main__ import main

    sweep, _ = grid
    notes = write_json(tmp_path / "notes.txt", "notes")
    with pytest.raises(SystemExit) as stop:
        main([str(sweep), str(notes), "--out", str(tmp_path / "out"), "--no-plots"])
    assert stop.value.code == 2 and (f"argument DIR: {notes} is a file; DIR expects a sweep or run folder (searched "
                                     "recursively) or a cell's result.json") in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    assert main([str(sweep / "0" / "result.json"), "--out", str(tmp_path / "one"), "--no-plots"]) == 0


def test_a_report_stopped_midway_is_replaced_by_the_next_and_a_refusal_comes_first(grid, tmp_path, monkeypatch):
    """A report stopped while drawing its plots left summaries without the report.json naming them, and the next
    report into that --out was refused as if the user had written them; a folder that would be refused was
    refused only after the whole report was computed."""
    import slm_sweep.report as report
    import slm_sweep.report.plots as plots

    sweep, _ = grid
    out = tmp_path / "out"

    def stopped(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(plots, "write_plots", stopped)
        with pytest.raises(KeyboardInterrupt):
            write_report([sweep], out, claims=DEFAULT_CLAIMS)
    assert {"summary.md", "claims.md", REPORT_FILE} <= {p.name for p in out.iterdir()}
    assert json.loads((out / REPORT_FILE).read_text())["status"].startswith("unfinished")
    finished = write_report([sweep], out, plots=False, claims=DEFAULT_CLAIMS)
    assert finished["record"].get("status") is None and (out / "claims.md").is_file()

    write_json(tmp_path / "notes" / "summary.md", "mine")

    def computed(*args, **kwargs):
        raise AssertionError("the report was computed before the refusal")

    monkeypatch.setattr(report, "collect", computed)
    with pytest.raises(ReportError, match="holds summary.md, which no report wrote"):
        write_report([sweep], tmp_path / "notes", plots=False)
