"""Faults a long sweep meets: bad input, divergence, signals, W&B outages. Each is injected for real."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import pytest

from slm_sweep.results import ATTEMPT_PROVENANCE_KEYS
from slm_sweep.run import run
from tests.conftest import FAST_TINY, REPO


def test_k_larger_than_the_train_split_fails_before_the_model_loads(tiny_cfg, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    row = json.dumps({"question": "What is 2+2?", "answer": "2+2=4\n#### 4"})
    (data / "train.jsonl").write_text("\n".join([row] * 3) + "\n")
    (data / "test.jsonl").write_text(row + "\n")
    record = run(tiny_cfg("method=fewshot", f"dataset.data_dir={data}"), out_dir=tmp_path / "out")
    assert record["status"] == "failed"
    assert "num_fewshot=5 is larger than the 3 training examples" in record["error"]
    assert "total_params" not in record["metrics"], "the model must not have been loaded"


def test_malformed_jsonl_names_file_and_line(tiny_cfg, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    good = json.dumps({"question": "What is 2+2?", "answer": "2+2=4\n#### 4"})
    (data / "train.jsonl").write_text("\n".join([good] * 20) + "\n")
    (data / "test.jsonl").write_text(good + "\n" + good + "\n{not json\n")
    record = run(tiny_cfg("method=zeroshot", f"dataset.data_dir={data}"), out_dir=tmp_path / "out")
    assert record["status"] == "failed"
    assert "test.jsonl" in record["error"] and "line 3" in record["error"]
    assert "total_params" not in record["metrics"]


def test_exploding_loss_stops_the_cell_as_diverged(tiny_cfg, tmp_path):
    record = run(tiny_cfg("method=full", "method.lr=1e30", "trainer.gradient_clip_val=null",
                          "trainer.max_steps=6"), out_dir=tmp_path)
    assert record["status"] == "diverged", record.get("error")
    assert "loss" in record["error"]
    assert json.loads((tmp_path / "result.json").read_text())["status"] == "diverged"


def test_a_divergence_stays_the_outcome_of_its_training_and_is_trained_again_only_when_asked(tiny_cfg, tmp_path):
    """Training again until a seed comes out would keep the lucky runs: a rerun keeps the divergence (its own, or
    another folder's copied), for another evaluation of the same training too; resume.retry_diverged=true trains it
    again and records the divergence, kept in superseded/."""
    diverging = ["method=full", "method.lr=1e30", "trainer.gradient_clip_val=null", "trainer.max_steps=6",
                 "resume.enabled=true", f"resume.search_dir={tmp_path}"]
    cell = tmp_path / "cell"
    first = run(tiny_cfg(*diverging), out_dir=cell)
    assert first["status"] == "diverged"
    written = (cell / "result.json").read_bytes()

    again = run(tiny_cfg(*diverging), out_dir=cell)
    assert again["status"] == "diverged" and again["error"] == first["error"]
    assert (cell / "result.json").read_bytes() == written, "the cell trained again"

    other = run(tiny_cfg(*diverging, "eval.max_new_tokens=8"), out_dir=tmp_path / "other")  # another evaluation key
    assert other["identity"]["evaluation_key"] != first["identity"]["evaluation_key"]
    assert other["status"] == "diverged" and other["reused_from"] == str(cell / "result.json")
    assert other["error"] == (f"{first['error']} (this training's divergence in {cell / 'result.json'}; "
                              "resume.retry_diverged=true does not keep it)")
    assert "train_time_s" not in other["metrics"] or other["metrics"] == first["metrics"]

    retried = run(tiny_cfg(*diverging, "resume.retry_diverged=true"), out_dir=cell)
    assert retried["status"] == "diverged" and retried["started_at"] >= first["finished_at"]
    assert (cell / "superseded" / "result.json").read_bytes() == written
    assert retried["retried_divergence"] == {
        "result_path": str(cell / "superseded" / "result.json"), "error": first["error"],
        **{key: first.get(key) for key in ATTEMPT_PROVENANCE_KEYS}}


def test_a_retried_divergence_that_completes_names_the_divergence_it_replaced(tiny_cfg, tmp_path):
    """A divergence that training again does not repeat (on a GPU, whose kernels are not deterministic): written
    here as the record of this cell's own training, diverged, since the CPU repeats every run exactly."""
    settings = ["method=lora", "resume.enabled=true"]
    completed = run(tiny_cfg(*settings), out_dir=tmp_path)
    assert completed["status"] == "completed"
    _diverged_here(tmp_path, completed)

    kept = run(tiny_cfg(*settings), out_dir=tmp_path)
    assert kept["status"] == "diverged" and kept["finished_at"] == completed["finished_at"]
    retried = run(tiny_cfg(*settings, "resume.retry_diverged=true"), out_dir=tmp_path)
    assert retried["status"] == "completed"
    assert retried["metrics"]["accuracy_strict"] == completed["metrics"]["accuracy_strict"]
    assert retried["retried_divergence"]["result_path"] == str(tmp_path / "superseded" / "result.json")
    assert retried["retried_divergence"]["error"] == "training loss is nan at step 2"
    assert json.loads((tmp_path / "result.json").read_text())["retried_divergence"] == retried["retried_divergence"]


def _diverged_here(folder, completed: dict) -> None:
    """``folder``'s record made the divergence of its own training (as a GPU run that a retry does not repeat
    leaves it), its weights and predictions gone."""
    diverged = {**completed, "status": "diverged", "error": "training loss is nan at step 2",
                "metrics": {"train_steps": 2}}
    (folder / "result.json").write_text(json.dumps(diverged))
    (folder / "predictions.jsonl").unlink()
    shutil.rmtree(folder / "adapter", ignore_errors=True)
    shutil.rmtree(folder / "model", ignore_errors=True)


def test_a_retried_seed_stays_marked_in_every_later_evaluation_of_its_training(tiny_cfg, tmp_path):
    """Re-scoring the weights a retry kept (LoRA), or training again where none were kept (full fine-tuning),
    carries the divergence the seed came out of; a divergence a retry answered does not stand in for the
    training."""
    for method in ("lora", "full"):
        settings = [f"method={method}", "resume.enabled=true", f"resume.search_dir={tmp_path / method}"]
        cell = tmp_path / method / "cell"
        completed = run(tiny_cfg(*settings), out_dir=cell)
        _diverged_here(cell, completed)
        retried = run(tiny_cfg(*settings, "resume.retry_diverged=true"), out_dir=cell)
        assert retried["status"] == "completed" and retried["retried_divergence"]["error"].startswith("training loss")
        later = run(tiny_cfg(*settings, "eval.max_new_tokens=8"), out_dir=tmp_path / method / "later")
        assert later["status"] == "completed", later.get("error")
        assert later["retried_divergence"] == retried["retried_divergence"]
        assert (later.get("trained_in") == str(cell)) == (method == "lora")  # full kept no weights: trained again


def test_a_folders_own_divergence_is_kept_on_a_rerun_and_set_aside_when_a_retry_copies_a_completed_run(tiny_cfg,
                                                                                                     tmp_path):
    """Sweep a's seed diverged and sweep b retried it: a's rerun keeps a's divergence; a's own retry copies b's
    completed result, setting a's divergence aside (with its checkpoints) and naming it there."""
    settings = ["method=lora", "resume.enabled=true", f"resume.search_dir={tmp_path}"]
    a, b = tmp_path / "a", tmp_path / "b"
    completed = run(tiny_cfg(*settings), out_dir=a)
    _diverged_here(a, completed)
    (a / "checkpoints").mkdir()
    (a / "checkpoints" / "last.ckpt").write_bytes(b"the diverged run's")
    diverged = (a / "result.json").read_bytes()
    in_b = run(tiny_cfg(*settings, "resume.retry_diverged=true"), out_dir=b)
    assert in_b["status"] == "completed" and in_b["retried_divergence"]["result_path"] == str(a / "result.json")

    rerun = run(tiny_cfg(*settings), out_dir=a)
    assert rerun["status"] == "diverged" and (a / "result.json").read_bytes() == diverged

    retried = run(tiny_cfg(*settings, "resume.retry_diverged=true"), out_dir=a)
    assert retried["status"] == "completed" and retried["reused_from"] == str(b / "result.json")
    assert (a / "superseded" / "result.json").read_bytes() == diverged
    assert (a / "superseded" / "checkpoints" / "last.ckpt").read_bytes() == b"the diverged run's"
    assert retried["retried_divergence"]["result_path"] == str(a / "superseded" / "result.json")


def test_a_retry_trains_from_the_start_not_from_the_diverged_runs_checkpoint(tiny_cfg, tmp_path):
    diverging = ["method=full", "method.lr=1e30", "trainer.gradient_clip_val=null", "trainer.max_steps=6",
                 "trainer.checkpoint_every_n_steps=1", "resume.enabled=true", f"resume.search_dir={tmp_path}"]
    first = run(tiny_cfg(*diverging), out_dir=tmp_path / "cell")
    assert first["status"] == "diverged" and first["checkpoint_step"] is not None
    elsewhere = run(tiny_cfg(*diverging, "resume.retry_diverged=true"), out_dir=tmp_path / "elsewhere")
    assert elsewhere["resumed_from_checkpoint"] is None  # the other folder's diverged checkpoint is not resumed
    retried = run(tiny_cfg(*diverging, "resume.retry_diverged=true"), out_dir=tmp_path / "cell")
    assert retried["resumed_from_checkpoint"] is None and retried.get("earlier_attempts") is None
    assert (tmp_path / "cell" / "superseded" / "checkpoints").is_dir()


@pytest.mark.parametrize("resume", ["auto", "false"])
def test_a_run_that_searches_no_folder_keeps_the_mark_of_its_folders_retried_divergence(tiny_cfg, tmp_path,
                                                                                         monkeypatch, resume):
    """A single run under auto (or resume.enabled=false) computes again what its folder holds: the divergence it
    sets aside, then the retry it sets aside, then after a retry that failed, each run names the divergence."""
    from slm_sweep.train import fit as fit_module

    settings = ["method=full", f"resume.enabled={resume}"]
    completed = run(tiny_cfg(*settings), out_dir=tmp_path)
    _diverged_here(tmp_path, completed)
    divergence = tmp_path / "superseded" / "result.json"
    retried = run(tiny_cfg(*settings), out_dir=tmp_path)
    assert retried["status"] == "completed" and retried["retried_divergence"]["result_path"] == str(divergence)
    again = run(tiny_cfg(*settings), out_dir=tmp_path)
    assert again["status"] == "completed" and again["retried_divergence"] == retried["retried_divergence"]

    def out_of_memory(*args, **kwargs):
        raise RuntimeError("CUDA out of memory (injected)")

    with monkeypatch.context() as patch:
        patch.setattr(fit_module, "fit", out_of_memory)
        failed = run(tiny_cfg(*settings), out_dir=tmp_path)
    assert failed["status"] == "failed" and failed["retried_divergence"] == retried["retried_divergence"]
    after = run(tiny_cfg(*settings), out_dir=tmp_path)
    assert after["status"] == "completed" and after["retried_divergence"]["result_path"] == str(divergence)


def test_a_training_whose_runs_diverged_and_completed_is_marked_in_every_later_evaluation(tiny_cfg, tmp_path):
    """Runs of one training that came out differently (on a GPU): one completed, one diverged. A later evaluation
    re-scores the completed run's weights (LoRA) or trains again (full fine-tuning, no weights kept), and either
    way names the divergence; kept weights that cannot be read, trained again, too."""
    for method in ("lora", "full"):
        root = tmp_path / method
        settings = [f"method={method}", "resume.enabled=true", f"resume.search_dir={root}"]
        completed = run(tiny_cfg(*settings), out_dir=root / "b")
        (root / "a").mkdir()
        shutil.copy(root / "b" / "result.json", root / "a" / "result.json")
        shutil.copy(root / "b" / "predictions.jsonl", root / "a" / "predictions.jsonl")
        _diverged_here(root / "a", {**completed, "finished_at": "2099-01-01T00:00:00+00:00"})
        later = run(tiny_cfg(*settings, "eval.max_new_tokens=8"), out_dir=root / "c")
        assert later["status"] == "completed"
        assert later["retried_divergence"]["result_path"] == str(root / "a" / "result.json")
        assert (later.get("trained_in") == str(root / "b")) == (method == "lora")
    for weights in (tmp_path / "lora" / "b" / "adapter").glob("*.safetensors"):
        weights.write_bytes(b"not a tensor file")
    settings = ["method=lora", "resume.enabled=true", f"resume.search_dir={tmp_path / 'lora'}"]
    unreadable = run(tiny_cfg(*settings, "eval.max_new_tokens=6"), out_dir=tmp_path / "lora" / "d")
    assert unreadable["status"] == "completed" and unreadable.get("trained_in") is None
    assert unreadable["retried_divergence"]["result_path"] == str(tmp_path / "lora" / "a" / "result.json")


def test_another_configurations_divergence_in_the_folder_is_set_aside_not_written_over(tiny_cfg, tmp_path):
    """A divergence is a result: a rerun into the folder with other settings keeps it beside, as a finished one."""
    first = run(tiny_cfg("method=full", "method.lr=1e30", "trainer.gradient_clip_val=null", "trainer.max_steps=6",
                         "trainer.checkpoint_every_n_steps=1"), out_dir=tmp_path)
    assert first["status"] == "diverged"
    diverged = (tmp_path / "result.json").read_bytes()
    other = run(tiny_cfg("method=full"), out_dir=tmp_path)
    assert other["status"] == "completed" and "retried_divergence" not in other
    assert (tmp_path / "superseded" / "result.json").read_bytes() == diverged
    assert (tmp_path / "superseded" / "checkpoints").is_dir() and other["resumed_from_checkpoint"] is None


def test_unknown_launcher_lists_the_choices(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "slm_sweep", "-m", "hydra/launcher=nope"], cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "nope" in proc.stderr and "joblib" in proc.stderr and "submitit_slurm" in proc.stderr


def test_wandb_unreachable_falls_back_to_offline_once_per_process(tiny_cfg, tmp_path, monkeypatch, caplog):
    """The first cell waits for W&B online and falls back to offline; the later cells of the process go offline at
    once (no init_timeout each). No cell keeps the failed online start's folder, which `wandb sync` would upload
    as an empty run."""
    from slm_sweep import tracking

    monkeypatch.setattr(tracking, "_online_failure", None, raising=False)  # the process has not failed online yet
    monkeypatch.setenv("WANDB_API_KEY", "a" * 40)
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # nothing listens there: connection refused
    monkeypatch.delenv("WANDB_MODE", raising=False)
    cfg = tiny_cfg("method=zeroshot", "dataset.test_limit=2", "logger=wandb", "logger.mode=online",
                   "logger.init_timeout=3")
    with caplog.at_level("WARNING"):
        records = [run(cfg, out_dir=tmp_path / cell) for cell in ("first", "second")]
    assert [record["status"] for record in records] == ["completed", "completed"]
    messages = [r.getMessage() for r in caplog.records]
    assert sum("W&B could not start online" in m for m in messages) == 1  # the first cell's attempt only
    assert sum("W&B failed online earlier in this process" in m for m in messages) == 1
    for cell, record in zip(("first", "second"), records):
        assert record["tracking"]["wandb"].startswith("offline run ")
        assert len(list((tmp_path / cell).glob("wandb/offline-run-*"))) == 1
        assert not list((tmp_path / cell).glob("wandb/run-*")), cell


def _start(args, cwd):
    proc = subprocess.Popen([sys.executable, "-m", "slm_sweep", *args], cwd=cwd,
                            # one thread per process: on a loaded 2-core machine a step stays short enough
                            # for the signal to arrive after the first checkpointable step
                            env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"},
                            stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    started = threading.Event()
    lines: list[str] = []

    def read():
        for line in proc.stdout:
            lines.append(line)
            if "training from step" in line:
                started.set()

    threading.Thread(target=read, daemon=True).start()
    return proc, started, lines


def test_sigterm_saves_a_checkpoint_marks_interrupted_and_rerun_resumes(requires_data, tmp_path):
    # enough steps that training outlasts the wait by seconds on an idle machine (60 steps of the tiny model could
    # finish within it)
    steps = 300
    # a single run writes to outputs/, which the reuse search reads by default (beside multirun/)
    args = [*FAST_TINY, "method=lora", f"trainer.max_steps={steps}", "resume.enabled=true"]
    proc, started, lines = _start(args, tmp_path)
    assert started.wait(240), "".join(lines)[-3000:]
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    proc.wait(120)
    assert proc.returncode != 0
    (first,) = list((tmp_path / "outputs").rglob("result.json"))
    record = json.loads(first.read_text())
    assert record["status"] == "interrupted", record.get("error")
    assert "to resume from the checkpoint in" in "".join(lines) and "rerun the same command" in "".join(lines)
    checkpoint = first.parent / "checkpoints" / "last.ckpt"
    assert checkpoint.is_file()
    # how far it got, and no training figures until training finished (zeros would read as measurements)
    assert record["checkpoint_step"] > 0 and record["resumed_at_step"] is None
    assert all(record["metrics"][key] is None for key in ("train_steps", "train_time_s", "train_tokens"))

    proc, _, lines = _start(args, tmp_path)
    assert proc.wait(600) == 0, "".join(lines)[-3000:]
    second = [p for p in (tmp_path / "outputs").rglob("result.json") if p != first][0]
    resumed = json.loads(second.read_text())
    assert resumed["status"] == "completed"
    assert resumed["resumed_from_checkpoint"] == str(checkpoint)
    assert resumed["metrics"]["train_steps"] == steps
    # the step this run's train_tokens and train_time_s count from
    assert resumed["resumed_at_step"] == record["checkpoint_step"] and resumed["checkpoint_step"] is None


def test_lightnings_exit_after_ctrl_c_is_recorded_as_the_interrupt():
    from slm_sweep.run import _error_text

    try:
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt:
            raise SystemExit(1)  # noqa: B904  (what Lightning does once it has handled a Ctrl-C)
    except SystemExit as err:
        assert _error_text(err) == "KeyboardInterrupt (Ctrl-C)"
    assert _error_text(ValueError("bad")) == "ValueError: bad"


@pytest.mark.parametrize("method", ["zeroshot", "lora"])
def test_result_metrics_are_bit_identical_across_runs(tiny_cfg, tmp_path, method):
    a = run(tiny_cfg(f"method={method}", "seed=5"), out_dir=tmp_path / "a")
    b = run(tiny_cfg(f"method={method}", "seed=5"), out_dir=tmp_path / "b")
    keys = ("accuracy_strict", "accuracy_flexible", "n_eval", "train_loss", "val_loss", "train_tokens")
    assert [a["metrics"][k] for k in keys] == [b["metrics"][k] for k in keys]
    assert (tmp_path / "a" / "predictions.jsonl").read_bytes() == (tmp_path / "b" / "predictions.jsonl").read_bytes()


class Guard(Exception):
    """What this test's own SIGTERM handler raises: the cell did not handle the signal itself."""


def test_a_sigterm_while_the_data_is_read_is_recorded_as_an_interrupt(tiny_cfg, tmp_path, monkeypatch):
    import slm_sweep.run as run_module

    def guard(signum, frame):
        raise Guard("the cell's own handler was not installed")

    read = run_module.load_data

    def terminated_while_reading(cfg):
        os.kill(os.getpid(), signal.SIGTERM)
        return read(cfg)

    monkeypatch.setattr(run_module, "load_data", terminated_while_reading)
    previous = signal.signal(signal.SIGTERM, guard)
    try:
        with pytest.raises(KeyboardInterrupt, match="received signal 15"):
            run(tiny_cfg("method=zeroshot"), out_dir=tmp_path / "cell")
        assert signal.getsignal(signal.SIGTERM) is guard  # restored after the cell
    finally:
        signal.signal(signal.SIGTERM, previous)
    record = json.loads((tmp_path / "cell" / "result.json").read_text())
    assert record["status"] == "interrupted" and "received signal 15" in record["error"]


@pytest.mark.parametrize("fault", [BrokenPipeError, KeyboardInterrupt])
def test_a_rerun_that_fails_after_finding_its_finished_result_keeps_that_result(tiny_cfg, tmp_path, monkeypatch,
                                                                                 fault):
    """The rerun's closing line goes to a pipe whose reader has gone (``| head``), or Ctrl-C comes as it is
    printed: the finished result stays result.json, the failure goes beside it."""
    import slm_sweep.run as run_module

    cfg = tiny_cfg("method=zeroshot", "resume.enabled=true", f"resume.search_dir={tmp_path / 'none'}")
    assert run(cfg, out_dir=tmp_path / "cell")["status"] == "completed"
    finished = (tmp_path / "cell" / "result.json").read_bytes()

    def fail(*args, **kwargs):
        raise fault("closing line")

    monkeypatch.setattr(run_module, "closing_line", fail)
    with pytest.raises(fault):
        run(cfg, out_dir=tmp_path / "cell")
    assert (tmp_path / "cell" / "result.json").read_bytes() == finished
    failure = json.loads((tmp_path / "cell" / "result.failed.json").read_text())
    assert failure["status"] == ("failed" if fault is BrokenPipeError else "interrupted")



STOP_AT_STEP = """
import os

from lightning.pytorch.callbacks import Callback


class StopAt(Callback):
    changes_weights = False  # out of the keys: the attempts that stop and the one that finishes are one training

    def on_train_batch_end(self, trainer, *args, **kwargs):
        step = os.environ.get("STOP_AT_STEP")
        if step and trainer.global_step >= int(step):
            raise KeyboardInterrupt
"""


def test_training_resumed_in_its_folder_names_the_attempts_that_trained_the_steps_before(tiny_cfg, tmp_path,
                                                                                           monkeypatch):
    """A requeued job resumes the checkpoint an interrupted one left (Ctrl-C here, at steps 2 and 4): the final
    record names the processes that trained the first steps (commit, versions, host, SLURM job), whose records it
    replaced and whose checkpoint is deleted when the cell completes; a re-score of the weights passes them on."""
    from slm_sweep.results import ATTEMPT_PROVENANCE_KEYS
    from tests.test_cell import documented_fields

    (tmp_path / "stop_at.py").write_text(STOP_AT_STEP)
    monkeypatch.syspath_prepend(str(tmp_path))
    common = ("method=lora", "trainer.max_steps=6", "resume.enabled=true", "+callbacks.stop._target_=stop_at.StopAt",
              "dataset.test_limit=2")
    cell = tmp_path / "cell"
    attempts = []
    sigint = signal.getsignal(signal.SIGINT)
    try:
        for job, step in (("111", 2), ("222", 4)):
            monkeypatch.setenv("SLURM_JOB_ID", job)
            monkeypatch.setenv("STOP_AT_STEP", str(step))
            with pytest.raises((KeyboardInterrupt, SystemExit)):
                run(tiny_cfg(*common), out_dir=cell)
            attempts.append(json.loads((cell / "result.json").read_text()))
            assert attempts[-1]["status"] == "interrupted" and attempts[-1]["checkpoint_step"] == step
    finally:
        signal.signal(signal.SIGINT, sigint)  # Lightning ignores Ctrl-C once it has handled one
    first, second = attempts
    assert "earlier_attempts" not in first
    assert second["resumed_at_step"] == 2 and second["earlier_attempts"] == [
        {key: first[key] for key in ATTEMPT_PROVENANCE_KEYS}]

    monkeypatch.setenv("SLURM_JOB_ID", "333")
    monkeypatch.delenv("STOP_AT_STEP")
    done = run(tiny_cfg(*common), out_dir=cell)
    assert done["status"] == "completed" and done["resumed_at_step"] == 4 and done["metrics"]["train_steps"] == 6
    assert done["resumed_from_checkpoint"] == str(cell / "checkpoints" / "last.ckpt")
    assert not (cell / "checkpoints").exists()  # deleted at completion: the attempts name who trained steps 0-4
    earlier = done["earlier_attempts"]
    assert [(a["hardware"]["slurm_job_id"], a["checkpoint_step"], a["status"]) for a in earlier] == \
        [("111", 2, "interrupted"), ("222", 4, "interrupted")]
    assert earlier[1] == {key: second[key] for key in ATTEMPT_PROVENANCE_KEYS}
    assert done["hardware"]["slurm_job_id"] == "333"
    assert set(done) - documented_fields()["result.json"] == set()

    # a re-score of the weights with another evaluation names them in its training run's provenance
    rescored = run(tiny_cfg(*common, "eval.max_new_tokens=6"), out_dir=cell)
    assert rescored["trained_in"] == str(cell) and "earlier_attempts" not in rescored
    assert rescored["training_provenance"]["earlier_attempts"] == earlier


def test_an_attempt_that_may_not_resume_names_no_earlier_attempt(tiny_cfg, tmp_path, monkeypatch):
    """resume.enabled=false sets the checkpoint an interrupted attempt left aside instead of resuming it: an
    attempt that fails before it trains names no earlier attempt as having trained its steps, as one that trains
    from the first step names none."""
    import slm_sweep.run as run_module
    from slm_sweep.results import read_result

    (tmp_path / "stop_at.py").write_text(STOP_AT_STEP)
    monkeypatch.syspath_prepend(str(tmp_path))
    common = ("method=lora", "trainer.max_steps=6", "+callbacks.stop._target_=stop_at.StopAt", "dataset.test_limit=2")
    cell = tmp_path / "cell"
    sigint = signal.getsignal(signal.SIGINT)
    monkeypatch.setenv("SLURM_JOB_ID", "111")
    monkeypatch.setenv("STOP_AT_STEP", "2")
    try:
        with pytest.raises((KeyboardInterrupt, SystemExit)):
            run(tiny_cfg(*common, "resume.enabled=true"), out_dir=cell)
    finally:
        signal.signal(signal.SIGINT, sigint)  # Lightning ignores Ctrl-C once it has handled one
    assert read_result(cell)["checkpoint_step"] == 2
    monkeypatch.setenv("SLURM_JOB_ID", "222")
    monkeypatch.delenv("STOP_AT_STEP")

    def unreachable(*args, **kwargs):
        raise OSError("hub error")

    with monkeypatch.context() as patch:
        patch.setattr(run_module, "load_model", unreachable)
        failed = run(tiny_cfg(*common, "resume.enabled=false"), out_dir=cell)
    assert failed["status"] == "failed" and failed["resumed_from_checkpoint"] is None
    assert "earlier_attempts" not in failed and "earlier_attempts" not in read_result(cell)
    done = run(tiny_cfg(*common, "resume.enabled=false"), out_dir=cell)
    assert done["status"] == "completed" and done["resumed_from_checkpoint"] is None
    assert "earlier_attempts" not in done
