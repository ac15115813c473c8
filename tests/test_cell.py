"""One cell per method runs end to end on the tiny model and writes valid result files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from slm_sweep.results import read_predictions, read_result
from slm_sweep.run import run
from slm_sweep.scoring import METRICS
from slm_sweep.train.callbacks import peak_memory_mb
from tests.conftest import last_digit_verdict

METHODS = ("zeroshot", "fewshot", "full", "lora", "dora")
REQUIRED_METRICS = ("accuracy_strict", "accuracy_flexible", "n_eval", "trainable_params", "total_params",
                    "train_time_s", "eval_time_s", "train_tokens_per_s", "eval_tokens_per_s", "peak_memory_mb")


@pytest.mark.parametrize("method", METHODS)
def test_cell_runs_end_to_end(tiny_cfg, tmp_path, method, last_digit_metric):
    cfg = tiny_cfg(f"method={method}", "method.num_fewshot=2" if method == "fewshot" else "seed=0",
                   f"eval.metric_modules=[{last_digit_metric}]")
    returned = run(cfg, out_dir=tmp_path)

    record = read_result(tmp_path)
    assert record == json.loads(json.dumps(returned, default=str))
    assert record["status"] == "completed", record.get("error")
    assert (record["model"], record["method"], record["dataset"], record["seed"]) == ("tiny", method, "gsm8k", 0)
    metrics = record["metrics"]
    for key in REQUIRED_METRICS:
        assert key in metrics, key
    assert metrics["n_eval"] == 12
    assert 0.0 <= metrics["accuracy_strict"] <= 1.0 and 0.0 <= metrics["accuracy_flexible"] <= 1.0
    assert metrics["total_params"] > 0
    trained = method in ("full", "lora", "dora")
    if trained:
        assert metrics["train_steps"] == 3
        assert metrics["train_tokens_per_s"] > 0 and metrics["train_time_s"] > 0
        assert metrics["val_loss"] is not None and metrics["train_loss"] is not None
    else:
        assert metrics["trainable_params"] == 0 and metrics["train_steps"] == 0
    if method == "full":
        assert metrics["trainable_params"] == metrics["total_params"]
    if method in ("lora", "dora"):
        assert 0 < metrics["trainable_params"] < metrics["total_params"]

    assert record["config"]["method"]["name"] == method
    assert record["versions"]["torch"] and record["versions"]["peft"] and record["versions"]["lightning"]
    assert "git_commit" in record and record["hardware"]["cpu_count"] >= 1

    predictions = read_predictions(tmp_path)
    assert len(predictions) == 12
    fields = {"question", "reference", "output", "extracted_strict", "extracted_flexible", "correct_strict",
              "correct_flexible", "correct_last_digit"}
    assert all(fields <= set(p) for p in predictions)
    # each verdict is its metric's on the answer; the built-in metrics score the tiny model 0, the last-digit one not
    for name in ("strict", "flexible"):
        verdicts = [METRICS[name].correct(p["output"], p["reference"], None) for p in predictions]
        assert [p[f"correct_{name}"] for p in predictions] == verdicts, name
        assert metrics[f"accuracy_{name}"] == sum(verdicts) / len(predictions), name
    hits = [last_digit_verdict(p["output"], p["reference"]) for p in predictions]
    assert [p["correct_last_digit"] for p in predictions] == hits
    assert 0 < sum(hits) < len(hits) and metrics["accuracy_last_digit"] == sum(hits) / len(hits)
    # result.json names the predictions file it belongs to
    assert record["files"]["predictions"] == {"rows": 12, "sha256": _sha256(tmp_path / "predictions.jsonl")}
    assert not list(tmp_path.glob(".*.tmp*")), "no temporary files left behind"
    # every field a reader sees is documented (docs/results.md: the result.json table and the metrics table)
    documented = documented_fields()
    assert set(record) - documented["result.json"] == set()
    assert {k for k in metrics if not k.startswith("accuracy_")} - documented["metrics"] == set()


def documented_fields() -> dict[str, set[str]]:
    """The field names of docs/results.md's result.json table and of the metrics table after it."""
    import re

    text = (Path(__file__).resolve().parents[1] / "docs" / "results.md").read_text()
    section = text.split("## result.json", 1)[1]
    tables, current = [], None
    for line in section.splitlines():
        if line.startswith("| `"):
            if current is None:
                current = set()
                tables.append(current)
            current |= set(re.findall(r"`([a-z_<>]+)`", line.split("|")[1]))
        elif current is not None and not line.startswith("|"):
            current = None
        if len(tables) == 2 and current is None:
            break
    return {"result.json": tables[0], "metrics": tables[1]}


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="the resident peak is reset through /proc")
def test_a_cell_reports_its_own_peak_memory_not_an_earlier_cell_s(tiny_cfg, tmp_path):
    """Hydra's basic launcher runs a sweep's cells in one process: a small cell after a large one (here a 1 GB
    buffer, written and freed) must not report the large one's peak."""
    earlier = bytearray(1 << 30)
    earlier[::4096] = b"x" * len(earlier[::4096])
    del earlier
    peak_so_far = peak_memory_mb("cpu")
    record = run(tiny_cfg("method=zeroshot", "dataset.test_limit=2"), out_dir=tmp_path)
    assert record["status"] == "completed", record.get("error")
    assert 0 < record["metrics"]["peak_memory_mb"] < peak_so_far - 512


@pytest.mark.slow  # the magnitude vectors themselves are checked by tests/test_methods.py in the default suite
def test_dora_trains_more_parameters_than_lora_with_the_same_rank(tiny_cfg, tmp_path):
    lora = run(tiny_cfg("method=lora", "trainer.max_steps=1"), out_dir=tmp_path / "lora")
    dora = run(tiny_cfg("method=dora", "trainer.max_steps=1"), out_dir=tmp_path / "dora")
    # DoRA adds one magnitude vector per adapted layer
    assert dora["metrics"]["trainable_params"] > lora["metrics"]["trainable_params"]


def test_same_seed_gives_identical_metrics(tiny_cfg, tmp_path):
    first = run(tiny_cfg("method=lora", "seed=3"), out_dir=tmp_path / "a")
    second = run(tiny_cfg("method=lora", "seed=3"), out_dir=tmp_path / "b")
    volatile = ("time", "per_s", "peak_memory", "step_time", "mfu", "final_validation_s")
    stable = {k: v for k, v in first["metrics"].items() if not any(s in k for s in volatile)}
    assert stable and stable == {k: second["metrics"][k] for k in stable}
    assert read_predictions(tmp_path / "a") == read_predictions(tmp_path / "b")


def test_different_seeds_train_differently(tiny_cfg, tmp_path):
    a = run(tiny_cfg("method=full", "seed=1"), out_dir=tmp_path / "a")
    b = run(tiny_cfg("method=full", "seed=2"), out_dir=tmp_path / "b")
    assert a["metrics"]["train_loss"] != b["metrics"]["train_loss"]


def test_failure_is_recorded_with_the_error(tiny_cfg, tmp_path):
    cfg = tiny_cfg("method=lora", "method.target_modules=[no_such_module]")
    record = run(cfg, out_dir=tmp_path)
    assert record["status"] == "failed"
    assert "no_such_module" in record["error"]
    assert read_result(tmp_path)["status"] == "failed"
    assert "no_such_module" in record["traceback"] and set(record) - documented_fields()["result.json"] == set()


def test_a_cell_ends_with_one_closing_line(tiny_cfg, tmp_path, capsys):
    run(tiny_cfg("method=zeroshot", "dataset.test_limit=3"), out_dir=tmp_path)
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("cell completed: tiny x zeroshot x gsm8k seed 0 | strict ")
    assert "(n=3)" in last and "eval " in last and last.endswith(str(tmp_path / "result.json"))
    assert " tok/s on cpu float32, peak " in last  # the cell's own performance report


def test_the_closing_line_reports_rates_mfu_placement_and_peak_memory(tmp_path):
    from slm_sweep.run import closing_line

    record = {"model": "smollm135", "method": "lora", "dataset": "gsm8k", "seed": 1, "status": "completed",
              "metrics": {"accuracy_flexible": 0.25, "n_eval": 1319, "train_time_s": 170.04,
                          "train_tokens_per_s": 46812.4, "mfu": 0.0123, "eval_time_s": 12.3,
                          "eval_tokens_per_s": 21034.0, "peak_memory_mb": 9830.4},
              "placement": {"eval": {"device": "cuda:0", "dtype": "bfloat16"}}}
    line = closing_line(record, tmp_path)
    assert ("| train 170.0 s at 46,812 tok/s (MFU 1.2 %), eval 12.3 s at 21,034 tok/s on cuda:0 bfloat16, "
            "peak 9.6 GiB |") in line
    # eval_time_s is the scored split's; with out-of-domain sets, the whole evaluation's time follows
    with_ood = {**record, "eval_sets": {"svamp": {}, "gsm_hard": {}},
                "metrics": {**record["metrics"], "eval_time_all_sets_s": 30.04}}
    assert "eval 12.3 s at 21,034 tok/s on cuda:0 bfloat16 (30.0 s with 2 out-of-domain sets), peak" in \
        closing_line(with_ood, tmp_path)
    untrained = {**record, "method": "zeroshot", "metrics": {"n_eval": 5, "train_time_s": 0.0, "eval_time_s": 2.0}}
    assert "| train 0.0 s, eval 2.0 s on cuda:0 bfloat16 |" in closing_line(untrained, tmp_path)
    # answers cut off at the token limit are named beside the scores they lower
    assert "cut off" not in line
    cut = {**record, "metrics": {**record["metrics"], "truncated_fraction": 0.92}, "decoding": {"max_new_tokens": 96}}
    assert "| 92 % of answers cut off at eval.max_new_tokens=96 |" in closing_line(cut, tmp_path)


def test_a_tracker_that_cannot_start_fails_the_cell_instead_of_leaving_it_running(tiny_cfg, tmp_path, monkeypatch):
    import slm_sweep.tracking as tracking

    def broken(*args, **kwargs):
        raise RuntimeError("tracker down")

    monkeypatch.setattr(tracking, "Tracker", broken)
    record = run(tiny_cfg("method=zeroshot", "dataset.test_limit=2"), out_dir=tmp_path)
    assert record["status"] == "failed" and "tracker down" in record["error"]
    assert read_result(tmp_path)["status"] == "failed"


def test_a_cell_that_cannot_train_its_steps_fails_instead_of_completing(tiny_cfg, tmp_path):
    record = run(tiny_cfg("method=lora", "trainer.max_length=8"), out_dir=tmp_path)
    assert record["status"] == "failed"
    assert "fits in trainer.max_length=8" in record["error"]
    # it never trained: no training figures (not zeros, which would read as measurements), no checkpoint
    written = read_result(tmp_path)
    assert all(written["metrics"][key] is None for key in ("train_steps", "train_time_s", "train_tokens"))
    assert written["checkpoint_step"] is None and written["resumed_at_step"] is None


def test_a_result_file_that_cannot_be_written_still_reaches_the_loggers_and_the_closing_line(tiny_cfg, tmp_path,
                                                                                              monkeypatch, capsys):
    """A full disk at the final write: the CSV logger (or W&B online) and the log may be the only copies of the
    scores left; the error is raised after them."""
    import csv
    import errno

    import slm_sweep.run as run_module

    real_write = run_module.write_result

    def disk_full(out_dir, record, name="result.json"):
        if record["status"] != "running":
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(out_dir, record, name)

    monkeypatch.setattr(run_module, "write_result", disk_full)
    with pytest.raises(OSError, match="No space left on device"):
        run(tiny_cfg("method=zeroshot", "dataset.test_limit=2", "logger=csv"), out_dir=tmp_path)
    with open(tmp_path / "csv" / "metrics.csv", newline="") as f:
        (row,) = list(csv.DictReader(f))
    assert 0 <= float(row["eval/accuracy_flexible"]) <= 1
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("cell completed: tiny x zeroshot x gsm8k seed 0 | strict ")
    assert last.endswith("result.json NOT written: OSError: [Errno 28] No space left on device")
    assert read_result(tmp_path)["status"] == "running"  # what the disk still holds


def test_over_long_training_examples_are_dropped_and_counted(tiny_cfg, tmp_path):
    """An example is kept where its prompt and whole answer, with the token that ends the turn, fit in
    trainer.max_length tokens, counted here with the tokenizer; max_length is one example's own length."""
    from slm_sweep.data.prompts import build_prompt, build_target
    from slm_sweep.models import load_model_and_tokenizer
    from slm_sweep.run import load_data

    cfg = tiny_cfg("method=lora")
    _, tokenizer = load_model_and_tokenizer(cfg.model)
    train = load_data(cfg).splits.train
    assert len(train) == 48  # dataset.train_limit
    lengths = [len(tokenizer(build_prompt(tokenizer, ex.question, style="chat"))["input_ids"])
               + len(tokenizer(build_target(tokenizer, ex.answer, "chat"), add_special_tokens=False)["input_ids"])
               for ex in train]
    max_length = sorted(lengths)[11]
    fitting = sum(length <= max_length for length in lengths)
    assert 12 <= fitting < 48
    record = run(tiny_cfg("method=lora", f"trainer.max_length={max_length}"), out_dir=tmp_path)
    assert record["status"] == "completed", record.get("error")
    metrics = record["metrics"]
    assert metrics["train_examples"] == fitting
    assert metrics["train_too_long_fraction"] == pytest.approx(1 - fitting / 48)
    assert 0 <= metrics["truncated_fraction"] <= 1


def test_a_sweep_cell_refused_for_a_setting_its_record_cannot_read_is_still_recorded(tmp_path):
    """A config error in a sweep fails its cell with a result.json saying why, also when the bad value is one the
    record itself reads (a seed that is no integer)."""
    from slm_sweep.config import ConfigError
    from slm_sweep.run import _refused_cell
    from tests.conftest import compose_config

    record = _refused_cell(compose_config(["model=tiny", "seed=abc"]), tmp_path,
                           ConfigError("seed='abc' must be a non-negative integer"))
    written = read_result(tmp_path)
    assert record["status"] == written["status"] == "failed" and written["seed"] == "abc"
    assert written["error"] == "config error: seed='abc' must be a non-negative integer"


def test_each_evaluation_set_records_its_own_time_and_tokens_and_the_whole_evaluation_is_named_apart(tiny_cfg,
                                                                                                     tmp_path):
    """metrics' evaluation figures are all of the scored split (a rate from one set and a time of two would
    overstate the time per question); each out-of-domain set has its own; the whole stage is eval_time_all_sets_s.
    The CSV logger keeps them apart the same way."""
    import csv

    record = run(tiny_cfg("method=zeroshot", "dataset.test_limit=3", "eval.ood_sets=[svamp]", "eval.ood_limit=4",
                          "logger=csv"), out_dir=tmp_path)
    assert record["status"] == "completed", record.get("error")
    metrics, svamp = record["metrics"], record["eval_sets"]["svamp"]
    for figures, n in ((metrics, 3), (svamp, 4)):
        assert figures["n_eval"] == n and figures["eval_oom_halvings"] == 0
        assert figures["eval_time_s"] > 0 and figures["eval_new_tokens"] > 0
        assert figures["eval_tokens_per_s"] == pytest.approx(figures["eval_new_tokens"] / figures["eval_time_s"])
    assert metrics["eval_time_all_sets_s"] > metrics["eval_time_s"] + svamp["eval_time_s"]
    assert "eval_set_time_s" not in metrics
    with open(tmp_path / "csv" / "metrics.csv", newline="") as f:
        (row,) = list(csv.DictReader(f))
    assert float(row["eval/eval_time_s"]) == pytest.approx(metrics["eval_time_s"])
    assert float(row["eval/eval_new_tokens"]) == metrics["eval_new_tokens"]
    assert float(row["eval_svamp/eval_time_s"]) == pytest.approx(svamp["eval_time_s"])
    assert float(row["result/eval_time_all_sets_s"]) == pytest.approx(metrics["eval_time_all_sets_s"])


def _sha256(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def _earlier_unfinished_attempt(folder: Path) -> None:
    """What an attempt of another configuration that failed after scoring its test set leaves in ``folder``."""
    folder.mkdir(parents=True)
    (folder / "result.json").write_text(json.dumps({"status": "failed", "error": "RuntimeError: out of memory",
                                                    "metrics": {"n_eval": 99}}))
    (folder / "predictions.jsonl").write_text('{"eval_set": "gsm8k", "index": 0, "output": "stale"}\n')


def test_predictions_sit_only_beside_the_result_they_belong_to_and_a_copy_replaces_them_whole(tiny_cfg, tmp_path):
    """An attempt that fails before scoring does not leave an earlier attempt's predictions beside its result; a
    copied result brings its source's predictions, written as a new file (a reader of the old one keeps reading
    the old one whole, never a file being written)."""
    search = ("method=zeroshot", "dataset.test_limit=2", "resume.enabled=true", f"resume.search_dir={tmp_path / 'a'}")
    source = run(tiny_cfg(*search, "seed=0"), out_dir=tmp_path / "a")
    assert source["files"]["predictions"] == {"rows": 2, "sha256": _sha256(tmp_path / "a" / "predictions.jsonl")}

    _earlier_unfinished_attempt(tmp_path / "b")
    with open(tmp_path / "b" / "predictions.jsonl") as reader:
        copy = run(tiny_cfg(*search, "seed=1"), out_dir=tmp_path / "b")
        assert reader.read() == '{"eval_set": "gsm8k", "index": 0, "output": "stale"}\n'
    assert copy["reused_from"] == str(tmp_path / "a" / "result.json")
    assert (tmp_path / "b" / "predictions.jsonl").read_bytes() == (tmp_path / "a" / "predictions.jsonl").read_bytes()
    assert read_result(tmp_path / "b")["files"] == source["files"]

    # failed after its keys were known (training), and before they were (data it cannot read)
    empty = tmp_path / "empty"
    empty.mkdir()
    for folder, overrides in (("c", ("method=lora", "trainer.max_length=8")),
                              ("d", ("method=zeroshot", f"dataset.data_dir={empty}"))):
        _earlier_unfinished_attempt(tmp_path / folder)
        failed = run(tiny_cfg(*overrides), out_dir=tmp_path / folder)
        assert failed["status"] == "failed" and read_result(tmp_path / folder)["status"] == "failed"
        assert not (tmp_path / folder / "predictions.jsonl").exists(), folder
    assert read_result(tmp_path / "c")["files"] == {"predictions": None}

    # a source without predictions: the copy has none either
    (tmp_path / "a" / "predictions.jsonl").unlink()
    _earlier_unfinished_attempt(tmp_path / "e")
    copy = run(tiny_cfg(*search, "seed=2"), out_dir=tmp_path / "e")
    assert copy["reused_from"] and copy["files"] == {"predictions": None}
    assert not (tmp_path / "e" / "predictions.jsonl").exists()


def test_a_copy_is_reused_where_no_original_of_its_key_is_found(tiny_cfg, tmp_path):
    """A finished original is preferred to a copy of it; once the original's folder is gone (an older sweep
    removed), a complete copy with the same evaluation key is reused, naming the file it copied: its numbers and
    predictions are the original's, and nothing is computed again."""
    import shutil

    search = ("method=zeroshot", "dataset.test_limit=2", "resume.enabled=true", f"resume.search_dir={tmp_path}")
    original = run(tiny_cfg(*search, "seed=0"), out_dir=tmp_path / "a")
    assert run(tiny_cfg(*search, "seed=1"), out_dir=tmp_path / "b")["reused_from"] == str(tmp_path / "a" / "result.json")
    assert run(tiny_cfg(*search, "seed=2"), out_dir=tmp_path / "c")["reused_from"] == str(tmp_path / "a" / "result.json")
    predictions = (tmp_path / "a" / "predictions.jsonl").read_bytes()
    shutil.rmtree(tmp_path / "a")
    again = run(tiny_cfg(*search, "seed=3"), out_dir=tmp_path / "d")
    assert again["reused_from"] in (str(tmp_path / "b" / "result.json"), str(tmp_path / "c" / "result.json"))
    assert again["metrics"] == original["metrics"]
    assert (tmp_path / "d" / "predictions.jsonl").read_bytes() == predictions


def test_an_attempt_that_fails_beside_a_finished_result_leaves_its_training_curve_as_it_was(tiny_cfg, tmp_path):
    """A rerun into the folder of a finished cell that fails before its keys are known (data it cannot read) keeps
    the finished result.json, and its loggers write under failed-attempt/, not over the finished run's curve."""
    run(tiny_cfg("method=lora", "logger=csv"), out_dir=tmp_path / "cell")
    curve = (tmp_path / "cell" / "csv" / "metrics.csv").read_bytes()
    (tmp_path / "empty").mkdir()
    failed = run(tiny_cfg("method=lora", "logger=csv", f"dataset.data_dir={tmp_path / 'empty'}"),
                 out_dir=tmp_path / "cell")
    assert failed["status"] == "failed" and read_result(tmp_path / "cell")["status"] == "completed"
    assert (tmp_path / "cell" / "csv" / "metrics.csv").read_bytes() == curve
    assert not list((tmp_path / "cell" / "csv").glob("metrics.earlier-*"))


def test_a_copy_of_an_older_result_keeps_none_of_the_copying_process_s_provenance(tiny_cfg, tmp_path):
    """A source written before git_dirty_files existed: the copy has its commit and no dirty-file list (unknown),
    not the list of the process that copies."""
    from omegaconf import OmegaConf

    from slm_sweep.results import redact, write_result
    from slm_sweep.run import _base_record, _reuse

    source = {"schema_version": 1, "status": "completed", "git_commit": "aaaa-dirty", "versions": {"torch": "0"},
              "metrics": {"n_eval": 1, "accuracy_flexible": 1.0}, "eval_sets": {}}
    write_result(tmp_path / "source", source)
    cfg = tiny_cfg("method=zeroshot")
    record = _base_record(cfg, redact(OmegaConf.to_container(cfg, resolve=True)))
    record["git_dirty_files"] = ["slm_sweep/run.py"]
    (tmp_path / "copy").mkdir()
    copy = _reuse(tmp_path / "source", tmp_path / "copy", record)
    assert copy["git_commit"] == "aaaa-dirty" and copy["git_dirty_files"] is None
    assert copy["hardware"] is None and copy["eval_sets"] == {} and copy["skipped_rows_asking_who"] is None
    assert copy["schema_version"] == 1  # the meaning its copied figures were written under


def _trained_then_failed_to_evaluate(tiny_cfg, out: Path, monkeypatch, *overrides: str) -> dict:
    """An attempt of a cell that trains and keeps its adapter, then fails while it evaluates."""
    import slm_sweep.evaluate.evaluator as evaluator

    def fails(*args, **kwargs):
        raise RuntimeError("evaluation failed")

    with monkeypatch.context() as patch:
        patch.setattr(evaluator, "evaluate", fails)
        record = run(tiny_cfg(*overrides), out_dir=out)
    assert record["status"] == "failed" and record["metrics"]["train_steps"] == 3, record.get("error")
    assert (out / "adapter").is_dir()
    return record


def test_a_re_score_carries_the_training_run_s_peak_memory_and_the_report_shows_the_larger(tiny_cfg, tmp_path,
                                                                                           monkeypatch):
    """A cell that re-scores kept weights measures the peak of its evaluation alone: the training run's peak
    travels with the other training figures (train_peak_memory_mb), and the report's peak memory includes it."""
    from slm_sweep.report import collect, summarize

    common = ("method=lora", "resume.enabled=true", "dataset.test_limit=4")
    first = _trained_then_failed_to_evaluate(tiny_cfg, tmp_path / "cell", monkeypatch, *common)
    trained_peak = first["metrics"]["train_peak_memory_mb"]
    assert trained_peak > 0
    rescored = run(tiny_cfg(*common), out_dir=tmp_path / "cell")
    assert rescored["status"] == "completed" and rescored["trained_in"] == str(tmp_path / "cell")
    metrics = rescored["metrics"]
    assert metrics["train_peak_memory_mb"] == trained_peak and metrics["peak_memory_mb"] > 0
    assert metrics["train_time_s"] == first["metrics"]["train_time_s"]
    (row,) = summarize(collect([tmp_path / "cell"]).records)
    assert row["peak_memory_mb_max"] == max(trained_peak, metrics["peak_memory_mb"])
    assert row["peak_memory_unknown_seeds"] == 0
    # a cell that trained itself records both, its own peak covering its training
    trained = run(tiny_cfg("method=lora", "dataset.test_limit=2"), out_dir=tmp_path / "fresh")["metrics"]
    assert 0 < trained["train_peak_memory_mb"] <= trained["peak_memory_mb"]


def test_an_attempt_that_stops_before_loading_what_it_re_scores_leaves_the_trained_record(tiny_cfg, tmp_path,
                                                                                          monkeypatch):
    """A requeued attempt preempted while it reads its data (before its keys), or one that fails before it loads
    the weights it was to re-score, does not write over the record of the attempt that trained: the next attempt
    still finds the kept adapter through it and re-scores it instead of training again."""
    import slm_sweep.run as run_module
    import slm_sweep.train.fit as fit_module
    from slm_sweep.report import collect

    cell = tmp_path / "cell"
    common = ("method=lora", "resume.enabled=true", "dataset.test_limit=4")
    first = _trained_then_failed_to_evaluate(tiny_cfg, cell, monkeypatch, *common)
    trained = (cell / "result.json").read_bytes()

    def preempted(cfg):
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(run_module, "load_data", preempted)
        with pytest.raises(KeyboardInterrupt):
            run(tiny_cfg(*common), out_dir=cell)
    assert (cell / "result.json").read_bytes() == trained
    attempt = read_result(cell / "result.failed.json")
    assert attempt["status"] == "interrupted" and attempt["identity"] is None
    # the report reads the folder as one cell, the one that did not complete
    (record,) = collect([cell]).records
    assert record["status"] == "failed" and record["error"] == first["error"]

    def preempted_while_searching(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:  # its keys known, before it took the folder over
        patch.setattr(run_module, "find_completed", preempted_while_searching)
        with pytest.raises(KeyboardInterrupt):
            run(tiny_cfg(*common), out_dir=cell)
    assert (cell / "result.json").read_bytes() == trained
    attempt = read_result(cell / "result.failed.json")
    assert attempt["status"] == "interrupted" and attempt["identity"] == first["identity"]

    def unreachable(*args, **kwargs):
        raise OSError("the hub did not answer")

    with monkeypatch.context() as patch:
        patch.setattr(run_module, "load_kept", unreachable)
        failed = run(tiny_cfg(*common), out_dir=cell)
    assert failed["status"] == "failed" and "the hub did not answer" in failed["error"]
    written = read_result(cell)
    assert written["trained_in"] == str(cell) and written["training_provenance"]["started_at"] == first["started_at"]
    assert written["metrics"]["train_time_s"] == first["metrics"]["train_time_s"]
    assert not (cell / "result.failed.json").exists()  # superseded by an attempt that knew its keys

    monkeypatch.setattr(fit_module, "fit", lambda *a, **k: pytest.fail("trained again"))
    rescored = run(tiny_cfg(*common), out_dir=cell)
    assert rescored["status"] == "completed" and rescored["trained_in"] == str(cell)
    assert rescored["metrics"]["train_time_s"] == first["metrics"]["train_time_s"]
    assert rescored["training_provenance"]["started_at"] == first["started_at"]


def test_a_sweep_cell_refused_for_its_config_leaves_the_record_of_an_attempt_that_trained(tiny_cfg, tmp_path):
    from slm_sweep.config import ConfigError
    from slm_sweep.results import write_result
    from slm_sweep.run import _refused_cell

    trained = {"status": "interrupted", "model": "tiny", "method": "lora", "dataset": "gsm8k", "seed": 0,
               "identity": {"training_key": "0123456789abcdef"}, "metrics": {"train_steps": 3}}
    write_result(tmp_path, trained)
    before = (tmp_path / "result.json").read_bytes()
    record = _refused_cell(tiny_cfg("method=lora"), tmp_path, ConfigError("method.lr=-1 must be positive"))
    assert (tmp_path / "result.json").read_bytes() == before
    assert read_result(tmp_path / "result.failed.json") == json.loads(json.dumps(record))


def test_a_damaged_result_is_set_aside_and_named_not_written_over(tiny_cfg, tmp_path, caplog):
    """A finished result.json that no longer parses (a bad copy, a hand edit): the rerun renames it and the
    predictions beside it, says so, and runs as in an empty folder."""
    cfg = tiny_cfg("method=zeroshot", "dataset.test_limit=2", "resume.enabled=true")
    assert run(cfg, out_dir=tmp_path)["status"] == "completed"
    damaged = (tmp_path / "result.json").read_bytes() + b"x"
    (tmp_path / "result.json").write_bytes(damaged)
    predictions = (tmp_path / "predictions.jsonl").read_bytes()
    with caplog.at_level("WARNING"):
        again = run(cfg, out_dir=tmp_path)
    assert again["status"] == "completed" and read_result(tmp_path)["status"] == "completed"
    (aside,) = tmp_path.glob("result.damaged-*.json")
    assert aside.read_bytes() == damaged
    (kept,) = tmp_path.glob("predictions.damaged-*.jsonl")
    assert kept.read_bytes() == predictions and kept.name.removeprefix("predictions.") == \
        aside.name.removeprefix("result.").replace(".json", ".jsonl")
    assert any(str(aside) in r.getMessage() and str(tmp_path / "result.json") in r.getMessage()
               for r in caplog.records)


def test_an_early_failure_of_another_cell_beside_an_unfinished_record_is_that_cell_s_lost_seed(tiny_cfg, tmp_path,
                                                                                              monkeypatch):
    """A job folder of a renumbered sweep (or a reused hydra.run.dir) holds an attempt of another cell that trained
    and failed; this job's cell fails there before its keys. The trained record stays result.json (its kept
    weights are found through it), and the report reads the folder as this job's cell, a lost seed of its own,
    as the sweep's list of failed cells does; each counted once, also after either completes elsewhere."""
    import slm_sweep.run as run_module
    from slm_sweep.report import collect
    from slm_sweep.report.sweep_notes import incomplete_cells

    sweep = tmp_path / "sweep"
    job = sweep / "1"
    common = ("method=lora", "dataset.test_limit=2")
    _trained_then_failed_to_evaluate(tiny_cfg, job, monkeypatch, *common, "seed=0")
    trained = (job / "result.json").read_bytes()

    def unreadable(cfg):
        raise OSError("hub error while reading data")

    with monkeypatch.context() as patch:
        patch.setattr(run_module, "load_data", unreadable)
        assert run(tiny_cfg(*common, "seed=1"), out_dir=job)["status"] == "failed"
    assert (job / "result.json").read_bytes() == trained  # nothing lost: the adapter is still named
    assert read_result(job / "result.failed.json")["seed"] == 1

    def cells() -> list[tuple]:
        return sorted((r["seed"], r["status"]) for r in collect([sweep]).records)

    assert cells() == [(1, "failed")]
    ((listed, why),) = incomplete_cells(sweep)
    assert listed == job and why.startswith("failed: OSError: hub error while reading data")
    # this job's cell completes in another folder: no seed of it is lost, and none is listed
    assert run(tiny_cfg(*common, "seed=1"), out_dir=sweep / "2")["status"] == "completed"
    assert cells() == [(1, "completed")]
    assert incomplete_cells(sweep) == []
    # and so does the cell that trained in the folder
    assert run(tiny_cfg(*common, "seed=0"), out_dir=sweep / "3")["status"] == "completed"
    assert cells() == [(0, "completed"), (1, "completed")]
    assert incomplete_cells(sweep) == []


def test_kept_weights_that_cannot_be_read_are_moved_aside_and_the_cell_trains_them_again(tiny_cfg, tmp_path,
                                                                                         monkeypatch, caplog):
    """A kept adapter whose file was damaged (a truncated copy, a full disk): a re-score of it would fail the same
    way on every rerun. It is renamed, with the record of the run that trained it, a warning names both, and the
    cell trains again, as a cell that kept nothing: the same weights, and a record that names no kept weights and
    holds none of their figures, also when that training fails."""
    import torch
    from safetensors.torch import load_file

    import slm_sweep.train.fit as fit_module

    common = ("method=lora", "resume.enabled=true", "dataset.test_limit=2")

    def damaged(cell: Path) -> tuple[dict, dict, bytes]:
        first = _trained_then_failed_to_evaluate(tiny_cfg, cell, monkeypatch, *common)
        weights = cell / "adapter" / "adapter_model.safetensors"
        tensors = {key: tensor.clone() for key, tensor in load_file(weights).items()}  # not the mapped file
        weights.write_bytes(weights.read_bytes()[:1000])
        return first, tensors, weights.read_bytes()

    cell = tmp_path / "cell"
    first, tensors, truncated = damaged(cell)
    with caplog.at_level("WARNING"):
        again = run(tiny_cfg(*common), out_dir=cell)
    assert again["status"] == "completed", again.get("error")
    assert "trained_in" not in again and "training_provenance" not in again
    assert again["metrics"]["train_loss"] == first["metrics"]["train_loss"]
    retrained = {key: tensor.clone() for key, tensor in load_file(cell / "adapter" / "adapter_model.safetensors").items()}
    assert retrained.keys() == tensors.keys() and all(torch.equal(retrained[k], tensors[k]) for k in tensors)
    (aside,) = cell.glob("adapter.damaged-*")
    assert (aside / "adapter_model.safetensors").read_bytes() == truncated
    kept = read_result(aside / "trained_record.json")  # the figures of those weights stay with them
    assert kept["started_at"] == first["started_at"] and kept["metrics"] == first["metrics"]
    assert any(str(cell / "adapter") in r.getMessage() and str(aside) in r.getMessage()
               and "trains them again" in r.getMessage() for r in caplog.records)

    def fails(*args, **kwargs):
        raise RuntimeError("training failed")

    cell = tmp_path / "fails"
    damaged(cell)
    with monkeypatch.context() as patch:
        patch.setattr(fit_module, "fit", fails)
        failed = run(tiny_cfg(*common), out_dir=cell)
    assert failed["status"] == "failed" and failed["error"] == "RuntimeError: training failed"
    for record in (failed, read_result(cell)):
        assert "trained_in" not in record and "training_provenance" not in record
        assert record["placement"]["train"] is None and record["resumed_from_checkpoint"] is None
        assert all(record["metrics"].get(key) is None for key in
                   ("train_time_s", "train_loss", "train_steps", "train_peak_memory_mb", "train_tokens_per_s"))
    assert len(list(cell.glob("adapter.damaged-*"))) == 1 and not (cell / "adapter").exists()
