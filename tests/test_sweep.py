"""Real sweeps: ``python -m slm_sweep -m ...`` as a subprocess over tiny grids, launchers, resume, DDP."""

from __future__ import annotations

import csv
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
from omegaconf import OmegaConf

from slm_sweep.results import read_predictions
from tests.conftest import DATA_ROOT, FAST_TINY, LAST_DIGIT_METRIC, REPO, last_digit_verdict

SWEEP_SETTINGS = [o for o in FAST_TINY if not o.startswith("resume.")]


def _failed_sweep_message(sweep_dir: Path) -> str:
    """What the sweep's end-of-run callback exits with over ``sweep_dir``, whose cells did not all complete."""
    from slm_sweep.sweep.callbacks import AggregateSweep

    config = OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep_dir)}}, "eval": {"split": "test"},
                               "logger": None})
    with pytest.raises(SystemExit) as stop:
        AggregateSweep().on_multirun_end(config)
    return str(stop.value)


def cli(args: list[str], cwd: Path) -> list[str]:
    return [sys.executable, "-m", "slm_sweep", *args]


def env(**extra: str) -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO), "HYDRA_FULL_ERROR": "1", **extra}


def run_sweep(args: list[str], cwd: Path, timeout: int = 600, ok: bool = True,
              **environ: str) -> subprocess.CompletedProcess:
    proc = subprocess.run(cli(["-m", *SWEEP_SETTINGS, *args], cwd), cwd=cwd, env=env(**environ),
                          capture_output=True, text=True, timeout=timeout)
    assert (proc.returncode == 0) == ok, proc.stderr[-4000:]
    return proc


def sweep_dirs(cwd: Path) -> list[Path]:
    return sorted(p for p in (cwd / "multirun").glob("*/*") if p.is_dir())


def results(sweep: Path) -> dict[tuple, dict]:
    out = {}
    for path in sweep.glob("*/result.json"):
        r = json.loads(path.read_text())
        out[(r["model"], r["method"], r["seed"])] = {**r, "dir": path.parent}
    return out


def test_tiny_grid_sweep_writes_every_cell_and_a_correct_summary(requires_data, tmp_path):
    """The summary's means, spreads and deltas are of scores that differ between seeds and methods: the built-in
    metrics score the tiny models 0, so the deltas are read on a metric of the working directory (claims_metric)
    that the tiny models' answers score apart, and a learning rate that changes those answers in 3 steps, for
    each seed otherwise. Which seeds tie depends on the CPU's kernels (those answers are chaotic): three seeds on
    two models make a row whose seeds all tie everywhere unlikely."""
    # full fine-tuning runs in a multirun in the GPU job's dry run (tests/test_gpu_check.py) and its rows are
    # checked in tests/test_report.py; a baseline and one trained method keep the default suite within its time
    (tmp_path / "last_digit_metric.py").write_text(LAST_DIGIT_METRIC)
    run_sweep(["model=tiny,tiny_wide", "method=zeroshot,lora", "seed=0,1,2", "eval.metric_modules=[last_digit_metric]",
               "dataset.claims_metric=last_digit", "++method.lr=0.5", "trainer.warmup_steps=0"], tmp_path)
    (sweep,) = sweep_dirs(tmp_path)
    cells = results(sweep)
    assert len(cells) == 12
    assert all(c["status"] == "completed" for c in cells.values())
    job_dirs = sorted(p.name for p in sweep.iterdir() if p.is_dir())
    assert len(job_dirs) == 12 and len(set(job_dirs)) == 12
    for cell in cells.values():
        assert (cell["dir"] / "predictions.jsonl").is_file() and (cell["dir"] / ".hydra" / "config.yaml").is_file()
        assert cell["dir"].name.endswith(f"-{cell['model']}-{cell['method']}-gsm8k-seed{cell['seed']}")
    # zero-shot does not depend on the seed: computed for seed 0, reused for seed 1
    for model in ("tiny", "tiny_wide"):
        assert cells[(model, "zeroshot", 0)]["reused_from"] is None
        assert cells[(model, "zeroshot", 1)]["reused_from"].endswith("seed0/result.json")
        assert cells[(model, "zeroshot", 1)]["metrics"]["accuracy_flexible"] == \
            cells[(model, "zeroshot", 0)]["metrics"]["accuracy_flexible"]
    # each cell's score worked out here from its answers
    scores = {}
    for key, cell in cells.items():
        hits = [last_digit_verdict(p["output"], p["reference"]) for p in read_predictions(cell["dir"])]
        assert len(hits) == 12 and cell["metrics"]["accuracy_last_digit"] == pytest.approx(sum(hits) / 12), key
        scores[key] = sum(hits) / 12

    with open(sweep / "summary.csv", newline="") as f:
        rows = {(r["model"], r["method"]): r for r in csv.DictReader(f)}
    assert set(rows) == {(m, k) for m in ("tiny", "tiny_wide") for k in ("zeroshot", "lora")}
    spread, deltas = set(), set()
    for (model, method), row in rows.items():
        # a seed-independent baseline is one computation: it counts once, with no spread over seeds
        seeds = (0,) if method == "zeroshot" else (0, 1, 2)
        assert int(row["n"]) == len(seeds) and row["variant"] == "" and row["delta_metric"] == "last_digit"
        for metric in ("accuracy_flexible", "accuracy_last_digit"):
            values = [cells[(model, method, s)]["metrics"][metric] for s in seeds]
            assert float(row[f"{metric}_mean"]) == pytest.approx(statistics.mean(values))
            if len(values) > 1:
                assert float(row[f"{metric}_std"]) == pytest.approx(statistics.stdev(values))
            else:  # one seed has no spread: empty, not 0
                assert row[f"{metric}_std"] == ""
        values = [scores[(model, method, s)] for s in seeds]
        spread.add(len(set(values)))
        assert int(row["trainable_params"]) == cells[(model, method, 0)]["metrics"]["trainable_params"]
        if method != "zeroshot":
            zs = statistics.mean(scores[(model, "zeroshot", s)] for s in (0, 1, 2))
            deltas.add(statistics.mean(values) - zs)
            assert float(row["delta_zeroshot"]) == pytest.approx(statistics.mean(values) - zs)
            assert (row["below_zeroshot"] == "True") == (statistics.mean(values) < zs)
            # negative transfer is a significant drop: the paired test's Holm-adjusted p-value below alpha
            p_value = row["delta_zeroshot_p_adjusted"]
            assert row["negative_transfer"] == str(row["below_zeroshot"] == "True" and p_value not in ("", None)
                                                   and float(p_value) < 0.05)
            assert p_value in ("", None) or float(p_value) >= float(row["delta_zeroshot_p"])
    assert max(spread) > 1 and deltas - {0.0}, "some row's seeds score apart, and some trained row apart from zero-shot"
    assert (sweep / "summary.md").read_text().count("tiny_wide") >= 3
    for name in ("accuracy_by_model_gsm8k.png", "accuracy_vs_size_gsm8k.png", "accuracy_vs_trainable_gsm8k.png",
                 "accuracy_vs_train_time_gsm8k.png"):
        data = (sweep / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 2000, name


# SIGTERM runs with the slow tests: a cell's own SIGTERM checkpoint-and-resume is covered by
# tests/test_reliability.py, and the default suite stays under 10 minutes on 2 cores.
@pytest.mark.parametrize("sig", [signal.SIGKILL, pytest.param(signal.SIGTERM, marks=pytest.mark.slow)],
                         ids=["SIGKILL", "SIGTERM"])
def test_a_sweep_killed_and_rerun_into_its_own_folder_redoes_nothing_and_resumes(requires_data, tmp_path, sig):
    """A requeued job reruns the same command into the same sweep folder: finished cells are kept as they are,
    interrupted training resumes from the cell's own checkpoint, and no file is torn."""
    import random

    import torch

    sweep = tmp_path / "requeued"
    # enough steps that training outlasts the wait below by seconds: 30 steps of the tiny model could finish (and
    # remove their checkpoint) between two looks on an idle machine
    steps = 150
    args = ["-m", *SWEEP_SETTINGS, "method=zeroshot,lora", f"trainer.max_steps={steps}",
            "trainer.checkpoint_every_n_steps=2", f"hydra.sweep.dir={sweep}"]
    proc = subprocess.Popen(cli(args, tmp_path), cwd=tmp_path, env=env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and not list(sweep.glob("*lora*/checkpoints/last.ckpt")):
        time.sleep(0.1)
    time.sleep(random.uniform(0.0, 1.5))  # a random moment of the lora cell's training
    os.killpg(proc.pid, sig)
    proc.wait(120)
    killed = results(sweep)
    zeroshot_file = killed[("tiny", "zeroshot", 0)]["dir"] / "result.json"
    assert killed[("tiny", "zeroshot", 0)]["status"] == "completed"
    assert killed[("tiny", "lora", 0)]["status"] == ("running" if sig == signal.SIGKILL else "interrupted")
    (checkpoint,) = sweep.glob("*lora*/checkpoints/last.ckpt")
    stopped_at = torch.load(checkpoint, map_location="cpu", weights_only=False)["global_step"]
    assert 0 < stopped_at < steps
    finished_before = zeroshot_file.read_bytes()

    subprocess.run(cli(args, tmp_path), cwd=tmp_path, env=env(), check=True, capture_output=True, timeout=600)
    rerun = results(sweep)
    assert len(rerun) == 2, "the rerun wrote into the same cell folders"
    assert zeroshot_file.read_bytes() == finished_before, "a finished cell was redone"
    lora = rerun[("tiny", "lora", 0)]
    assert lora["status"] == "completed" and lora["metrics"]["train_steps"] == steps
    assert lora["resumed_from_checkpoint"] == str(checkpoint)
    for path in sweep.rglob("*"):
        assert not path.name.startswith((".result.json.", ".predictions.jsonl.", ".adapter-")), path
    for path in sweep.glob("*/predictions.jsonl"):
        assert all(json.loads(line) for line in path.read_text().splitlines())


def test_a_rerun_with_another_claims_metric_reads_its_reused_cells_on_it_and_says_so(requires_data, tmp_path):
    """The claims metric is in no key (it changes no number): a rerun of a finished sweep with
    dataset.claims_metric=strict reuses every cell, whose records keep the flexible they recorded. Each reused cell
    says so, and the sweep's summary reads the deltas, marks and claims on strict, as the sweep's config says,
    naming the results that recorded flexible (it stayed on flexible, without a word)."""
    sweep = tmp_path / "sweep"
    args = ["method=zeroshot", "dataset.test_limit=2,3", "eval.max_new_tokens=4", f"hydra.sweep.dir={sweep}"]
    run_sweep(args, tmp_path)
    first = (sweep / "summary.md").read_text()
    assert "Δ on: flexible (gsm8k)" in first and "as this sweep's config says" not in first
    before = {path: path.read_bytes() for path in sweep.glob("*/result.json")}
    assert len(before) == 2

    proc = run_sweep([*args, "dataset.claims_metric=strict"], tmp_path)
    output = proc.stdout + proc.stderr
    assert output.count("already finished") == 2
    assert {path: path.read_bytes() for path in sweep.glob("*/result.json")} == before, "a finished cell was redone"
    assert output.count("gsm8k (in-domain): this finished result recorded claims_metric flexible, this run's config "
                        "names strict; the sweep's summary reads gsm8k's in-domain rows on strict (python -m "
                        "slm_sweep.report reads flexible unless given --claims-metric gsm8k=strict, which reads "
                        "gsm8k's in-domain and out-of-domain rows alike)") == 2
    note = "gsm8k: deltas on strict as this sweep's config says; its 2 results recorded flexible"
    summary = (sweep / "summary.md").read_text()
    assert "Δ on: strict (gsm8k)" in summary and f"\n{note}\n" in summary
    assert note in output  # logged at the end of the sweep too
    with open(sweep / "summary.csv", newline="") as f:
        assert [row["delta_metric"] for row in csv.DictReader(f)] == ["strict", "strict"]
    settings = json.loads((sweep / "report.json").read_text())["settings"]
    assert settings["claims_metrics"] == {"metrics": {"gsm8k": "strict"}, "out_of_domain": {}, "from": "sweep"}


# a metric whose scoring fails when FAIL_SCORING is set: its code, and so every key, is the same either way, so that
# a cell fails after its keys are known, as one whose scoring hits a bug or a full disk
FLAKY_METRIC = """import os

from slm_sweep.scoring import register_metric


def extract(text):
    if os.environ.get("FAIL_SCORING") and "####" not in text:  # the preflight's probe has one
        raise RuntimeError("scoring failed (FAIL_SCORING is set)")
    return None


register_metric("flaky", extract, lambda extracted, reference, tolerance=None: False)
"""


@pytest.mark.slow  # three real sweeps: ~30 s; the report's reading is tested in tests/test_report.py
def test_a_recomputation_that_fails_fails_the_sweep_and_the_result_it_set_aside_is_reused_later(requires_data,
                                                                                                  tmp_path):
    """resume.enabled=false computes a finished cell again, its result first moved to superseded/. When that fails,
    the sweep names the cell, counts it and exits non-zero after writing its summary, whose row is not the
    set-aside result (those are not this sweep's numbers); a rerun with resume on reuses that result."""
    (tmp_path / "flaky_metric.py").write_text(FLAKY_METRIC)  # importable: `python -m` runs from tmp_path
    sweep = tmp_path / "sweep"
    args = ["method=zeroshot", "eval.metric_modules=[flaky_metric]", f"hydra.sweep.dir={sweep}"]
    run_sweep(args, tmp_path)
    job = sweep / "0-tiny-zeroshot-gsm8k-seed0"
    finished = json.loads((job / "result.json").read_text())

    proc = run_sweep([*args, "resume.enabled=false"], tmp_path, ok=False, FAIL_SCORING="1")
    assert json.loads((job / "result.json").read_text())["status"] == "failed"
    assert json.loads((job / "superseded" / "result.json").read_text()) == finished
    summary = (sweep / "summary.md").read_text()
    assert "Skipped cells: 0 running, 1 failed, 0 diverged, 0 interrupted." in summary
    assert f"## Cells that did not complete\n\n- `{job.name}`: failed: MetricError: " in summary
    assert ("kept in `superseded/`; running it again with resume.enabled=true, or a sweep without "
            "resume.enabled=false, reuses it") in summary
    with open(sweep / "summary.csv", newline="") as f:
        assert list(csv.DictReader(f)) == []  # no completed cell: no row of the old numbers
    assert "1 cell(s) of the sweep" in proc.stderr and f"{job}: failed: MetricError: " in proc.stderr

    run_sweep(args, tmp_path)
    again = json.loads((job / "result.json").read_text())
    assert again["status"] == "completed" and again["reused_from"] == str(job / "superseded" / "result.json")
    assert again["metrics"] == finished["metrics"]
    assert "Skipped cells: 0 running, 0 failed" in (sweep / "summary.md").read_text()


def test_a_sweep_or_run_whose_jobs_would_change_directory_is_refused_before_any_cell(requires_data, tmp_path):
    """hydra.job.chdir=true would run each job in its own folder, where relative paths (data_root, cache_dir) no
    longer point where they were written: refused, naming the setting, before any cell runs."""
    (tmp_path / "data").symlink_to(DATA_ROOT)
    proc = run_sweep(["method=zeroshot", "data_root=data", "hydra.job.chdir=true", "hydra.sweep.dir=multirun/A"],
                     tmp_path, ok=False)
    assert "preflight: hydra.job.chdir=true is not supported" in proc.stderr
    assert not list((tmp_path / "multirun" / "A").glob("*/result.json"))
    single = subprocess.run(cli([*SWEEP_SETTINGS, "method=zeroshot", "hydra.job.chdir=true",
                                 "hydra.run.dir=single"], tmp_path), cwd=tmp_path, env=env(),
                            capture_output=True, text=True, timeout=600)
    assert single.returncode != 0 and "config error: hydra.job.chdir=true is not supported" in single.stderr
    assert not (tmp_path / "single" / "result.json").exists()


# submitit's local launcher (what the SLURM launcher builds on) runs with -m slow; joblib's runs by default
# Both launchers run with the slow tests (the default suite stays under 10 minutes on 2 cores); every launcher
# config is composed and checked against the code in tests/test_config.py.
@pytest.mark.parametrize("launcher", [pytest.param("parallel", marks=pytest.mark.slow),
                                      pytest.param("local", marks=pytest.mark.slow)])
def test_joblib_and_submitit_local_launchers_run_a_grid(requires_data, tmp_path, launcher):
    run_sweep([f"hydra/launcher={launcher}", "model=tiny,tiny_wide", "method=zeroshot"], tmp_path)
    (sweep,) = sweep_dirs(tmp_path)
    cells = results(sweep)
    assert {k[0] for k in cells} == {"tiny", "tiny_wide"}
    assert all(c["status"] == "completed" for c in cells.values())
    assert (sweep / "summary.csv").is_file()


def test_failing_cell_is_recorded_the_others_go_on_and_the_sweep_exits_non_zero(requires_data, tmp_path):
    # the target module passes config validation and fails when PEFT wraps the model
    (tmp_path / "conf" / "method").mkdir(parents=True)
    (tmp_path / "conf" / "method" / "lora_broken.yaml").write_text(
        "defaults:\n  - lora\n  - _self_\nname: lora_broken\ntarget_modules: [no_such_module]\n")
    proc = run_sweep(["method=lora_broken,zeroshot", f"hydra.searchpath=[file://{tmp_path / 'conf'}]",
                      "logger=wandb", "logger.mode=offline"], tmp_path, ok=False)
    (sweep,) = sweep_dirs(tmp_path)
    cells = results(sweep)
    assert cells[("tiny", "lora_broken", 0)]["status"] == "failed"
    assert "no_such_module" in cells[("tiny", "lora_broken", 0)]["error"]
    assert cells[("tiny", "zeroshot", 0)]["status"] == "completed"
    # the summary is written first, then the sweep names the failed cell and its error
    failed_dir = cells[("tiny", "lora_broken", 0)]["dir"]
    summary = (sweep / "summary.md").read_text()
    assert "## Cells that did not complete" in summary and f"- `{failed_dir.name}`: failed: " in summary
    assert "1 cell(s) of the sweep" in proc.stderr
    # `make report` writes the same summary: the failed cell is still named there
    from slm_sweep.report import write_report

    again = write_report([sweep], tmp_path / "again", plots=False)
    assert f"- `{failed_dir.name}`: failed: " in again["markdown"]
    (line,) = [x for x in proc.stderr.splitlines() if failed_dir.name in x]
    assert line.strip().startswith(f"{failed_dir.relative_to(tmp_path)}: failed: ") and "no_such_module" in line
    tag = "sweep-" + "-".join(sweep.parts[-2:])
    for cell in cells.values():
        (stream,) = list(cell["dir"].glob("wandb/offline-run-*/*.wandb"))
        data = stream.read_bytes()
        assert tag.encode() in data and f"tiny-{cell['method']}-gsm8k".encode() in data
    # the sweep's summary is one W&B table, in a run of its own
    (table,) = list(sweep.glob("wandb/offline-run-*/files/media/table/sweep/summary*.table.json"))
    rows = json.loads(table.read_text())
    assert "accuracy_flexible_mean" in rows["columns"] and len(rows["data"]) == 1
    # and so are the claims (none covered by a zero-shot cell alone), each verdict in the run's summary
    (claims,) = list(sweep.glob("wandb/offline-run-*/files/media/table/sweep/claims*.table.json"))
    claims = json.loads(claims.read_text())
    verdicts = {row[claims["columns"].index("claim")]: row[claims["columns"].index("verdict")]
                for row in claims["data"]}
    from slm_sweep.report import DEFAULT_CLAIMS
    from slm_sweep.report.claim_declaration import load_claims

    assert set(verdicts) == {claim.id for claim in load_claims(DEFAULT_CLAIMS)}
    assert set(verdicts.values()) == {"not covered"}
    (stream,) = list(sweep.glob("wandb/offline-run-*/*.wandb"))  # offline: the run's summary is in its stream
    assert b"claims/dora-above-lora-gsm8k" in stream.read_bytes()


@pytest.mark.slow  # two processes on two cores: ~20 s; run with -m slow (make test-slow)
def test_ddp_on_two_cpu_processes_trains_a_cell(requires_data, tmp_path):
    """With a logger and a callback that needs one (LearningRateMonitor): the other rank, which logs nothing, gets
    a stand-in logger (it raised "Cannot use LearningRateMonitor callback with Trainer that has no logger")."""
    extra = tmp_path / "conf"
    (extra / "callbacks").mkdir(parents=True)
    (extra / "callbacks" / "lr_monitor.yaml").write_text(
        "lr_monitor:\n  _target_: lightning.pytorch.callbacks.LearningRateMonitor\n  logging_interval: step\n")
    proc = subprocess.run(cli([*FAST_TINY, "trainer=ddp_cpu", "method=lora", "trainer.max_steps=2", "logger=csv",
                               f"hydra.searchpath=[file://{extra}]", "callbacks=[default,lr_monitor]"], tmp_path),
                          cwd=tmp_path, env=env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    (path,) = list((tmp_path / "outputs").rglob("result.json"))
    record = json.loads(path.read_text())
    assert record["status"] == "completed"
    assert record["config"]["trainer"]["devices"] == 2
    assert record["metrics"]["train_steps"] == 2
    assert "world_size=2" in proc.stderr or "distributed_backend=gloo" in proc.stderr
    assert "cell running" not in proc.stdout + proc.stderr  # the second process reports nothing of its own
    # a validation split too small for two devices fails before training, with the cause (not a lost connection)
    small = [o for o in FAST_TINY if not o.startswith(("dataset.val_size=", "trainer.micro_batch_size=", "trainer.max_length="))]
    proc = subprocess.run(cli([*small, "trainer=ddp_cpu", "method=lora", "trainer.max_steps=2",
                               "dataset.val_size=2", "trainer.micro_batch_size=2", "hydra.run.dir=small_val"],
                              tmp_path), cwd=tmp_path, env=env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode != 0
    record = json.loads((tmp_path / "small_val" / "result.json").read_text())
    assert record["status"] == "failed" and "fewer than the 2 devices" in record["error"], record["error"]
    assert record["metrics"]["train_steps"] is None


@pytest.mark.slow  # two processes on two cores, two cells: ~40 s
def test_a_sweep_of_cells_trained_on_two_processes_completes_under_its_folders_lock(requires_data, tmp_path):
    """Lightning starts a cell's second process with the sweep's own command (-m), whose preflight runs again
    there: that process joins the first's launch instead of being refused the sweep folder the first holds."""
    sweep = tmp_path / "sweep"
    proc = run_sweep(["trainer=ddp_cpu", "method=lora", "seed=0,1", "trainer.max_steps=2", "logger=none",
                      f"hydra.sweep.dir={sweep}"], tmp_path)
    assert "is in use by another launch" not in proc.stderr
    records = results(sweep)
    assert sorted(records) == [("tiny", "lora", 0), ("tiny", "lora", 1)]
    assert all(r["status"] == "completed" and r["config"]["trainer"]["devices"] == 2 for r in records.values())


class EditsTrainingDataAsTrainingStarts(L.Callback):
    """Rewrites every training answer when the first process builds its trainer: after that process read its
    data, before the second process starts and reads it (instantiated by the cell from its YAML)."""

    def __init__(self, path: str):
        if "LOCAL_RANK" not in os.environ:
            Path(path).write_text(Path(path).read_text().replace("####", "so the answer is\\n####"))


@pytest.mark.slow  # two processes on two cores: ~20 s
def test_ddp_processes_that_read_different_data_stop_before_training(requires_data, tmp_path):
    """Each process computes the cell's training key from what it read; the second one starts when training does,
    so a data file edited in between would have it train on other data than rank 0's key records."""
    data = tmp_path / "data" / "gsm8k"
    data.mkdir(parents=True)
    for split in ("train", "test"):  # a copy, edited below
        (data / f"{split}.jsonl").write_bytes((DATA_ROOT / "gsm8k" / f"{split}.jsonl").read_bytes())
    extra = tmp_path / "conf"
    (extra / "callbacks").mkdir(parents=True)
    (extra / "callbacks" / "edit.yaml").write_text(
        f"edit:\n  _target_: tests.test_sweep.EditsTrainingDataAsTrainingStarts\n  path: {data / 'train.jsonl'}\n")
    proc = subprocess.run(cli([*FAST_TINY, f"data_root={tmp_path / 'data'}", "trainer=ddp_cpu", "method=lora",
                               "trainer.max_steps=2", "logger=none", "dataset.dedup.enabled=false",
                               f"hydra.searchpath=[file://{extra}]", "callbacks=[default,edit]",
                               "hydra.run.dir=cell"], tmp_path),
                          cwd=tmp_path, env=env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode != 0
    record = json.loads((tmp_path / "cell" / "result.json").read_text())
    assert record["status"] == "failed", record.get("error")
    assert "would train different cells" in record["error"] and "rank 1 computed" in record["error"], record["error"]
    assert record["identity"]["training_key"] in record["error"]
    assert record["metrics"]["train_steps"] is None


class SigtermOnTheFirstProcessAtStep(L.Callback):
    """SIGTERM to the first process at the end of ``step``, as a scheduler's preemption reaches it (instantiated
    by the cell from its YAML)."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_rank == 0 and trainer.global_step == self.step and batch["last_in_step"]:
            os.kill(os.getpid(), signal.SIGTERM)


@pytest.mark.slow  # two processes on two cores, twice: ~40 s
def test_ddp_interrupted_by_sigterm_is_marked_interrupted_and_resumes(requires_data, tmp_path):
    """Only the first process saves the checkpoint: a save that waited for the others, which stop on the same
    signal, failed the cell with a lost connection instead of marking it interrupted."""
    import torch

    extra = tmp_path / "conf"
    (extra / "callbacks").mkdir(parents=True)
    (extra / "callbacks" / "sigterm.yaml").write_text(
        "sigterm:\n  _target_: tests.test_sweep.SigtermOnTheFirstProcessAtStep\n  step: 2\n")
    args = [*FAST_TINY, "trainer=ddp_cpu", "method=lora", "trainer.max_steps=4", "trainer.checkpoint_every_n_steps=null",
            "logger=none", "resume.enabled=true", f"hydra.searchpath=[file://{extra}]", "hydra.run.dir=cell",
            "callbacks=[default,sigterm]"]  # the rerun's too (a callback is in the training key): past step 2
    proc = subprocess.run(cli(args, tmp_path), cwd=tmp_path, env=env(), capture_output=True, text=True, timeout=600)
    assert (tmp_path / "cell" / "result.json").is_file(), proc.stderr[-4000:]
    record = json.loads((tmp_path / "cell" / "result.json").read_text())
    assert proc.returncode != 0 and record["status"] == "interrupted", record.get("error")
    checkpoint = tmp_path / "cell" / "checkpoints" / "last.ckpt"
    assert torch.load(checkpoint, map_location="cpu", weights_only=False)["global_step"] == 2
    proc = subprocess.run(cli(args, tmp_path), cwd=tmp_path, env=env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    record = json.loads((tmp_path / "cell" / "result.json").read_text())
    assert record["status"] == "completed" and record["resumed_at_step"] == 2
    assert record["metrics"]["train_steps"] == 4


# With the slow tests (about 18 s): the lr_grid search's sweep in tests/test_tuning.py checks the same
# validation-only scoring in the default suite, and the Optuna search's composition is checked there too.
@pytest.mark.slow
def test_optuna_search_optimises_validation_accuracy_never_test(requires_data, tmp_path):
    run_sweep(["hparams_search=optuna", "hydra.sweeper.n_trials=2", "method=full", "dataset.val_size=8",
               "hydra.sweep.dir=multirun/hparams"], tmp_path)
    sweep = tmp_path / "multirun" / "hparams"
    best = (sweep / "optimization_results.yaml").read_text()
    assert "best_params" in best and "method.lr" in best and "method.r" not in best
    job_dirs = [p.parent for p in sweep.glob("*/result.json")]
    assert len(job_dirs) == 2
    for job in job_dirs:
        trial = json.loads((job / "result.json").read_text())
        assert trial["status"] == "completed"
        assert trial["metrics"]["val_accuracy_flexible"] is not None and trial["metrics"]["val_n_eval"] == 8
        assert "accuracy_flexible" not in trial["metrics"]
        predictions = [json.loads(line) for line in (job / "predictions.jsonl").read_text().splitlines()]
        assert len(predictions) == 8 and all(p["eval_set"] == "gsm8k/val" for p in predictions)


# ---------------------------------------------------------------------------------------------- end of a sweep


def _job(sweep: Path, name: str, status: str, key: str) -> Path:
    job = sweep / name
    job.mkdir(parents=True)
    (job / "result.json").write_text(json.dumps({
        "schema_version": 1, "status": status, "model": "tiny", "method": "lora", "dataset": "gsm8k", "seed": 0,
        "error": None if status == "completed" else "KeyboardInterrupt", "identity": {"evaluation_key": key},
        "metrics": {"accuracy_strict": 0.1, "accuracy_flexible": 0.1, "accuracy_lenient": 0.1, "n_eval": 4}
        if status == "completed" else {}, "config": {}}))
    return job


def test_a_cell_completed_in_another_folder_of_a_requeued_sweep_is_no_failure(tmp_path):
    """A requeued sweep numbered its jobs otherwise: the interrupted cell resumed and completed in another folder."""
    from slm_sweep.report.sweep_notes import incomplete_cells

    _job(tmp_path, "0-tiny-lora-gsm8k-seed0", "interrupted", "k-lora")
    _job(tmp_path, "1-tiny-lora-gsm8k-seed0", "completed", "k-lora")
    failed = _job(tmp_path, "2-tiny-dora-gsm8k-seed0", "failed", "k-dora")
    assert [job for job, _ in incomplete_cells(tmp_path)] == [failed]


def test_a_report_of_two_sweeps_lists_no_cell_the_later_one_completed(tmp_path):
    """A cell interrupted in one sweep and resumed to completion by a later one (same evaluation key): a report
    of both folders lists only what neither completed."""
    from slm_sweep.report.sweep_notes import sweep_sections

    first, second = tmp_path / "first", tmp_path / "second"
    _job(first, "0-tiny-lora-gsm8k-seed0", "interrupted", "k-lora")
    _job(first, "1-tiny-dora-gsm8k-seed0", "interrupted", "k-dora")
    _job(second, "0-tiny-lora-gsm8k-seed0", "completed", "k-lora")
    assert [line for line in sweep_sections([first, second]) if line.startswith("- ")] == \
        ["- `1-tiny-dora-gsm8k-seed0`: interrupted: KeyboardInterrupt"]
    assert [line for line in sweep_sections([first]) if line.startswith("- ")] == \
        ["- `0-tiny-lora-gsm8k-seed0`: interrupted: KeyboardInterrupt",
         "- `1-tiny-dora-gsm8k-seed0`: interrupted: KeyboardInterrupt"]


def test_a_sweep_stopped_before_some_planned_cells_says_how_many_never_started(tmp_path):
    """A one-process sweep stopped by Ctrl-C or SIGTERM writes no summary and leaves no folder for the cells it
    never reached: the report on it counts them from the preflight's plan, beside the interrupted cell."""
    from slm_sweep.report.sweep_notes import _BASIC_SWEEPER, sweep_sections
    from slm_sweep.results import PREFLIGHT_FILE
    from slm_sweep.sweep.preflight import BASIC_SWEEPER

    assert _BASIC_SWEEPER == BASIC_SWEEPER
    _job(tmp_path, "0-tiny-zeroshot-gsm8k-seed0", "completed", "k-zeroshot")
    _job(tmp_path, "1-tiny-full-gsm8k-seed0", "interrupted", "k-full")
    plan = {"sweeper": BASIC_SWEEPER, "refused": None, "cells_to_run": 4}
    (tmp_path / PREFLIGHT_FILE).write_text(json.dumps(plan))
    assert [line for line in sweep_sections([tmp_path]) if line.startswith("- ")] == [
        "- `1-tiny-full-gsm8k-seed0`: interrupted: KeyboardInterrupt",
        f"- 2 planned cells never started: the sweep was stopped before them, or is still running ({PREFLIGHT_FILE} "
        "lists the cells it planned; the same command runs what is missing and reuses what completed)"]
    rerun = tmp_path.parent / f"{tmp_path.name}-rerun"  # the same command again, in a folder of its own
    _job(rerun, "0-tiny-full-gsm8k-seed0", "completed", "k-full")
    assert not any("never started" in line for line in sweep_sections([tmp_path, rerun]))
    (tmp_path / PREFLIGHT_FILE).write_text(json.dumps({**plan, "cells_to_run": 2}))  # every planned cell started
    assert not any("never started" in line for line in sweep_sections([tmp_path]))
    (tmp_path / PREFLIGHT_FILE).write_text(json.dumps({**plan, "sweeper": "hydra_plugins.optuna.OptunaSweeper"}))
    assert not any("never started" in line for line in sweep_sections([tmp_path]))  # an Optuna search plans none


def test_an_early_failed_attempt_completed_in_another_folder_is_no_failure(tmp_path):
    """A requeued sweep reran into folder 0 a configuration that failed there early (result.failed.json beside an
    earlier run's result), and completed it in folder 5."""
    from slm_sweep.report.sweep_notes import incomplete_cells
    from slm_sweep.results import FAILED_ATTEMPT_FILE

    job = _job(tmp_path, "0-tiny-zeroshot-gsm8k-seed0", "completed", "k-x")
    attempt = {"status": "failed", "error": "DataError: hub offline", "config": {"method": {"name": "y"}}}
    (job / FAILED_ATTEMPT_FILE).write_text(json.dumps(attempt))
    ((listed, why),) = incomplete_cells(tmp_path)
    assert listed == job and why.startswith("failed: DataError: hub offline") and FAILED_ATTEMPT_FILE in why
    done = _job(tmp_path, "5-tiny-y-gsm8k-seed0", "completed", "k-y")
    record = json.loads((done / "result.json").read_text())
    (done / "result.json").write_text(json.dumps({**record, "config": attempt["config"]}))
    assert incomplete_cells(tmp_path) == []


def test_a_result_json_that_cannot_be_read_is_named_unreadable_not_missing(tmp_path, monkeypatch):
    """A truncated result.json exists: summary.md and the sweep's exit message give its error, not "no result.json"."""
    import slm_sweep.report as report
    from slm_sweep.report.sweep_notes import sweep_sections

    job = _job(tmp_path, "1-tiny-lora-gsm8k-seed0", "completed", "k-lora")
    (job / "result.json").write_text((job / "result.json").read_text()[:40])
    (tmp_path / "2-tiny-dora-gsm8k-seed0" / ".hydra").mkdir(parents=True)
    (tmp_path / "2-tiny-dora-gsm8k-seed0" / ".hydra" / "overrides.yaml").write_text("- method=dora\n")
    listed = [line for line in sweep_sections([tmp_path]) if line.startswith("- ")]
    assert listed[0].startswith("- `1-tiny-lora-gsm8k-seed0`: result.json unreadable: Unterminated string")
    assert listed[1] == "- `2-tiny-dora-gsm8k-seed0`: no result.json (the cell stopped before writing it)"
    monkeypatch.setattr(report, "write_report", lambda *args, **kwargs: None)
    assert "1-tiny-lora-gsm8k-seed0: result.json unreadable: Unterminated string" in _failed_sweep_message(tmp_path)


def test_a_learning_rate_grid_whose_cell_failed_exits_non_zero_and_one_that_diverged_does_not(tmp_path):
    """A diverged rate is a result of a search (the tune command leaves it out); a crashed cell is not, and a grid
    search (the basic sweeper) says so by its exit status. Optuna applies its own max_failure_rate."""
    from slm_sweep.sweep.callbacks import AggregateSweep
    from slm_sweep.sweep.preflight import BASIC_SWEEPER

    def search(sweeper: str):
        return OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}, "sweeper": {"_target_": sweeper}},
                                 "eval": {"split": "val"}, "logger": None})

    _job(tmp_path, "0-tiny-lora-gsm8k-lr-candidate0-seed1000", "diverged", "k-0")
    AggregateSweep().on_multirun_end(search(BASIC_SWEEPER))
    _job(tmp_path, "1-tiny-lora-gsm8k-lr-candidate1-seed1000", "failed", "k-1")
    with pytest.raises(SystemExit) as stop:
        AggregateSweep().on_multirun_end(search(BASIC_SWEEPER))
    assert "1 cell(s) of the search" in str(stop.value) and "lr-candidate1-seed1000: failed" in str(stop.value)
    assert "candidate0" not in str(stop.value)
    AggregateSweep().on_multirun_end(search("hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper"))


def test_a_cell_that_failed_before_its_keys_and_completed_in_another_folder_is_no_failure(tmp_path):
    """A grid extended into the same sweep folder numbers its jobs otherwise: a cell that failed early (no keys:
    a data file that did not read) reran, and completed, in another folder once the file was fixed."""
    from slm_sweep.report.sweep_notes import incomplete_cells

    config = {"method": {"name": "zeroshot"}, "seed": 0}
    early = tmp_path / "2-tiny-zeroshot-gsm8k-seed0"
    early.mkdir()
    (early / "result.json").write_text(json.dumps({"status": "failed", "error": "DataError: line 3", "config": config,
                                                   "identity": None}))
    ((listed, why),) = incomplete_cells(tmp_path)
    assert listed == early and why == "failed: DataError: line 3"
    done = _job(tmp_path, "4-tiny-zeroshot-gsm8k-seed0", "completed", "k-z")
    record = json.loads((done / "result.json").read_text())
    (done / "result.json").write_text(json.dumps({**record, "config": {**config, "seed": 1}}))
    assert [job for job, _ in incomplete_cells(tmp_path)] == [early]  # another configuration completed: still failed
    (done / "result.json").write_text(json.dumps({**record, "config": config}))
    assert incomplete_cells(tmp_path) == []


def test_the_sweeps_claims_metrics_are_its_job_configs_where_the_results_it_reused_recorded_others(tmp_path, caplog):
    """What the end-of-sweep summary reads instead of the recorded claims metrics: a dataset's, as its jobs'
    .hydra/config.yaml say (resolved as the cells resolve it; the latest written where they differ), an
    out-of-domain set's, as its config says now; none where the results recorded it already, or hold no accuracy
    of it."""
    from slm_sweep.report.sweep_notes import sweep_claims_metrics

    def job(name: str, dataset: str, recorded: str, asked: str, eval_sets=None, written: float = 0) -> None:
        folder = _job(tmp_path, name, "completed", f"k-{name}")
        record = json.loads((folder / "result.json").read_text())
        record.update(dataset=dataset, config={"dataset": {"name": dataset, "claims_metric": recorded}},
                      eval_sets=eval_sets or {})
        (folder / "result.json").write_text(json.dumps(record))
        (folder / ".hydra").mkdir()
        (folder / ".hydra" / "config.yaml").write_text(
            f"dataset:\n  name: {dataset}\n  answer_format: prose\n  claims_metric: {asked}\n")
        os.utime(folder / ".hydra" / "config.yaml", (written, written))

    svamp = {"svamp": {"accuracy_flexible": 0.5, "accuracy_lenient": 0.5, "n_eval": 4, "claims_metric": "lenient"}}
    # asked through the default's interpolation (prose: lenient), by a job written after one that asked strict
    job("0-tiny-lora-gsm8k-seed0", "gsm8k", "flexible", "strict", written=1_000)
    job("1-tiny-lora-gsm8k-seed1", "gsm8k", "flexible", "${slm_sweep.claims_metric:${.answer_format}}", svamp,
        written=2_000)
    job("2-tiny-lora-orcamath-seed0", "orcamath", "lenient", "lenient")  # recorded as asked
    job("3-tiny-lora-mysums-seed0", "mysums", "flexible", "last_digit")  # its results hold no last_digit
    assert sweep_claims_metrics(tmp_path) == ({"gsm8k": "lenient"}, {"svamp": "flexible"})
    assert "mysums: this sweep's config reads it on last_digit, which none of its results holds" in caplog.text


def test_the_sweeps_claims_metric_of_a_set_is_its_job_configs_in_domain_and_its_config_out_of_domain(tmp_path):
    """A set trained on in one grid of the folder (dataset.claims_metric=last_digit) and evaluated out of domain in
    another: its jobs' config says nothing of its out-of-domain rows, nor its config of its in-domain rows; each is
    compared only with the results of its own kind."""
    from slm_sweep.report.sweep_notes import sweep_claims_metrics

    def job(sweep: Path, name: str, dataset: str, recorded: str, asked: str, eval_sets=None) -> None:
        folder = _job(sweep, name, "completed", f"k-{name}")
        record = json.loads((folder / "result.json").read_text())
        record["metrics"]["accuracy_last_digit"] = 0.1
        record.update(dataset=dataset, config={"dataset": {"name": dataset, "claims_metric": recorded}},
                      eval_sets=eval_sets or {})
        (folder / "result.json").write_text(json.dumps(record))
        (folder / ".hydra").mkdir()
        (folder / ".hydra" / "config.yaml").write_text(f"dataset:\n  name: {dataset}\n  claims_metric: {asked}\n")

    def svamp(recorded: str) -> dict:
        return {"svamp": {"accuracy_flexible": 0.5, "accuracy_last_digit": 0.5, "n_eval": 4,
                          "claims_metric": recorded}}

    for sweep, entries in ((tmp_path / "as-run", "flexible"), (tmp_path / "set-changed", "last_digit")):
        job(sweep, "0-tiny-zeroshot-svamp-seed0", "svamp", "last_digit", "last_digit")
        job(sweep, "1-tiny-lora-gsm8k-seed0", "gsm8k", "flexible", "flexible", svamp(entries))
    # svamp's config says flexible: the entries that recorded it are read on it, whatever svamp's jobs asked
    assert sweep_claims_metrics(tmp_path / "as-run") == ({}, {})
    # and the entries that recorded last_digit are read on flexible, svamp's in-domain rows staying on last_digit
    assert sweep_claims_metrics(tmp_path / "set-changed") == ({}, {"svamp": "flexible"})


def test_a_summary_that_fails_neither_hides_the_failed_cells_nor_exits_zero(tmp_path, monkeypatch):
    """Hydra turns an exception of on_multirun_end into a warning and exits 0: the callback must decide the exit."""
    import slm_sweep.report as report

    _job(tmp_path, "0-tiny-lora-gsm8k-seed0", "failed", "k-lora")

    def broken(*args, **kwargs):
        raise RuntimeError("plots could not be drawn")

    monkeypatch.setattr(report, "write_report", broken)
    message = _failed_sweep_message(tmp_path)
    assert "1 cell(s) of the sweep" in message and "0-tiny-lora-gsm8k-seed0: failed: KeyboardInterrupt" in message
    assert "no sweep summary written: RuntimeError: plots could not be drawn" in message


def test_the_sweeps_closing_message_counts_the_cells_its_summary_counts(tmp_path):
    """Two job folders of one cell (one evaluation key: a baseline's seeds, a cell requeued into another folder)
    count once, in summary.md and in the message the sweep exits with, which names each folder."""

    for name, key in (("0-tiny-lora-gsm8k-seed0", "k-lora"), ("1-tiny-dora-gsm8k-seed0", "k-dora"),
                      ("2-tiny-lora-gsm8k-seed0", "k-lora")):
        _job(tmp_path, name, "failed", key)
    message = _failed_sweep_message(tmp_path).splitlines()
    assert message[0] == (f"2 cell(s) of the sweep in {tmp_path} did not complete, in 3 job folders (one cell's "
                          "seeds or attempts in several count once):")
    assert {line.strip().split(":")[0] for line in message[1:]} == {str(tmp_path / f) for f in (
        "0-tiny-lora-gsm8k-seed0", "1-tiny-dora-gsm8k-seed0", "2-tiny-lora-gsm8k-seed0")}
    summary = (tmp_path / "summary.md").read_text()
    assert "Skipped cells: 0 running, 2 failed, 0 diverged, 0 interrupted." in summary
    assert ("- `0-tiny-lora-gsm8k-seed0`, `2-tiny-lora-gsm8k-seed0` (one cell, run in 2 job folders): failed: "
            "KeyboardInterrupt\n- `1-tiny-dora-gsm8k-seed0`: failed: KeyboardInterrupt") in summary


def test_a_malformed_result_json_is_a_cell_of_its_own_and_the_sweep_still_exits_non_zero(tmp_path):
    """A result.json whose config is no mapping (hand-edited, another tool's) cannot be grouped with any other: it is
    listed as a cell of its own, named by its folder, beside the others, and the sweep exits non-zero naming them."""
    from slm_sweep.report.sweep_notes import incomplete_cell_groups

    for name in ("0-tiny-lora-gsm8k-seed0", "1-tiny-lora-gsm8k-seed0"):
        _job(tmp_path, name, "failed", "k-lora")
    odd = _job(tmp_path, "9-odd", "failed", "k-odd")
    (odd / "result.json").write_text(json.dumps({**json.loads((odd / "result.json").read_text()), "config": "x",
                                                 "error": "boom"}))
    assert incomplete_cell_groups(tmp_path) == [
        [(tmp_path / "0-tiny-lora-gsm8k-seed0", "failed: KeyboardInterrupt"),
         (tmp_path / "1-tiny-lora-gsm8k-seed0", "failed: KeyboardInterrupt")], [(odd, "failed: boom")]]
    message = _failed_sweep_message(tmp_path).splitlines()
    assert message[0] == (f"2 cell(s) of the sweep in {tmp_path} did not complete, in 3 job folders (one cell's "
                          "seeds or attempts in several count once):")
    assert f"  {odd}: failed: boom" in message
    # an identity that is no mapping likewise (the fallback listing each folder read it too, and the sweep exited 0)
    (odd / "result.json").write_text(json.dumps({**json.loads((odd / "result.json").read_text()), "identity": "x"}))
    assert f"  {odd}: failed: boom" in _failed_sweep_message(tmp_path).splitlines()


def test_a_malformed_preflight_record_neither_hides_the_failed_cells_nor_the_summary(tmp_path):
    """A preflight.json that is JSON but no plan (hand-edited, another tool's) is read as none: the sweep's summary
    is written and the sweep exits non-zero naming its failed cell."""

    job = _job(tmp_path, "0-tiny-lora-gsm8k-seed0", "failed", "k-lora")
    (tmp_path / "preflight.json").write_text('{"left_out": {"dataset": 5}}')
    assert _failed_sweep_message(tmp_path).splitlines() == [f"1 cell(s) of the sweep in {tmp_path} did not complete:",
                                            f"  {job}: failed: KeyboardInterrupt"]
    assert "Skipped cells: 0 running, 1 failed" in (tmp_path / "summary.md").read_text()


def test_the_sweeps_summary_checks_the_claims_file_its_config_names(tmp_path, monkeypatch):
    """hydra.callbacks.aggregate_sweep.claims: a new claim reaches the sweep's own summary without editing the
    package's claims file."""
    import slm_sweep.report as report
    from slm_sweep.report import DEFAULT_CLAIMS
    from slm_sweep.sweep.callbacks import AggregateSweep

    _job(tmp_path, "0-tiny-lora-gsm8k-seed0", "completed", "k-lora")
    asked = []
    monkeypatch.setattr(report, "write_report", lambda dirs, out, claims=None, **kw: asked.append(claims) or None)
    config = OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}}, "eval": {"split": "test"},
                               "logger": None})
    AggregateSweep().on_multirun_end(config)
    AggregateSweep(claims="mine.yaml").on_multirun_end(config)
    assert asked == [DEFAULT_CLAIMS, "mine.yaml"]
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from tests.conftest import CONF_DIR

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        composed = compose("config", overrides=["hydra.callbacks.aggregate_sweep.claims=mine.yaml"],
                           return_hydra_config=True)
    assert instantiate(composed.hydra.callbacks.aggregate_sweep).claims == "mine.yaml"


def test_the_sweeps_w_and_b_summary_holds_the_out_of_domain_table_too(tmp_path, monkeypatch):
    from slm_sweep.report.tables import ood_columns, summary_columns
    from slm_sweep.sweep.callbacks import log_summary_to_wandb

    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    # rows of two methods, whose settings (the variant labels' source) have other keys: one W&B type per column
    rows = [{"dataset": "gsm8k", "model": "tiny", "method": "zeroshot", "accuracy_flexible_mean": 0.1, "seeds": [0],
             "settings": {"prompt.style": '"auto"'}, "scored_with": {"scoring": 10}},
            {"dataset": "gsm8k", "model": "tiny", "method": "lora", "accuracy_flexible_mean": 0.3, "seeds": [0, 1],
             "settings": {"method.r": "16"}, "scored_with": {"scoring": 10, "dtype": "bfloat16"}}]
    ood = [{**rows[0], "eval_set": "svamp", "accuracy_flexible_mean": 0.2}]
    report = {"rows": rows, "ood_rows": ood, "claims": None,
              "record": {"settings": {"alpha": 0.05}, "git_commit": None}}
    log_summary_to_wandb({"mode": "offline"}, tmp_path / "multirun" / "2026-01-01" / "00-00-00", report)
    (summary,) = [p for p in tmp_path.rglob("summary_*.table.json") if "summary_ood" not in p.name]
    logged = json.loads(summary.read_text())
    assert logged["columns"] == [*summary_columns(("accuracy_flexible",)), "wandb_group"]
    row = dict(zip(logged["columns"], logged["data"][1]))
    assert row["method"] == "lora" and row["seeds"] == "[0, 1]" and json.loads(row["scored_with"])["dtype"] == "bfloat16"
    (table,) = tmp_path.rglob("summary_ood*.table.json")
    logged = json.loads(table.read_text())
    assert logged["columns"] == [*ood_columns(("accuracy_flexible",)), "wandb_group"] and len(logged["data"]) == 1


def test_a_credential_in_a_jobs_environment_setting_stops_the_sweep_before_its_first_job():
    """hydra.job.env_set is part of every job's config that submitit pickles to disk."""
    from slm_sweep.sweep.callbacks import Preflight

    config = OmegaConf.create({"hydra": {"job": {"env_set": {"HF_TOKEN": "hf_abc123secret", "OMP_NUM_THREADS": 1}}}})
    with pytest.raises(SystemExit) as stop:
        Preflight().on_multirun_start(config)
    assert str(stop.value.code).startswith("config error: hydra.job.env_set.HF_TOKEN holds a credential")
    assert "abc123secret" not in str(stop.value.code)


def test_scrubbing_never_rewrites_a_config_dump_read_while_it_was_being_written(tmp_path):
    """The jobs of a parallel launcher scrub the sweep's multirun.yaml at once: a job that read it empty (another
    job's write under way) wrote `{}` over it."""
    from slm_sweep.sweep.callbacks import scrub_yaml

    empty = tmp_path / "multirun.yaml"
    empty.write_text("")
    scrub_yaml(empty, needs_key="hydra")
    assert empty.read_text() == ""
    partial = tmp_path / "partial.yaml"
    partial.write_text("logger:\n  api_key: abc123secret\n")  # the hydra node not written yet
    scrub_yaml(partial, needs_key="hydra")
    assert partial.read_text() == "logger:\n  api_key: abc123secret\n"


def test_the_sweeps_multirun_yaml_is_scrubbed_whatever_the_depth_of_the_job_folders(tmp_path):
    from hydra.types import RunMode

    from slm_sweep.sweep.callbacks import RedactSecrets

    sweep = tmp_path / "sweep"
    job = sweep / "tiny" / "lora" / "0"  # hydra.sweep.subdir=${model.name}/${method.name}/${hydra.job.num}
    job.mkdir(parents=True)
    (sweep / "multirun.yaml").write_text(
        "hydra:\n  overrides:\n    task:\n    - +hydra.job.env_set.HF_TOKEN=hf_abc123secret\n"
        "logger:\n  api_key: abc123secret\n")
    config = OmegaConf.create({"hydra": {"runtime": {"output_dir": str(job)}, "output_subdir": None,
                                         "sweep": {"dir": str(sweep)}}})
    config.hydra.mode = RunMode.MULTIRUN
    RedactSecrets().on_job_start(config)
    scrubbed = (sweep / "multirun.yaml").read_text()
    assert "abc123secret" not in scrubbed and "<redacted>" in scrubbed and "overrides" in scrubbed


def test_a_relative_sweep_folder_is_scrubbed_from_where_the_sweep_started_though_the_job_changed_directory(
        tmp_path, monkeypatch):
    """hydra.job.chdir=true: the job runs in its own folder, and the sweep's relative folder is read from the
    directory the sweep was launched in."""
    from hydra.types import RunMode

    from slm_sweep.sweep.callbacks import RedactSecrets

    sweep = tmp_path / "multirun" / "2026-01-01"
    job = sweep / "0"
    job.mkdir(parents=True)
    (sweep / "multirun.yaml").write_text("hydra:\n  job: {}\nmodel:\n  hub:\n    token: hf_abc123secret\n")
    monkeypatch.chdir(job)
    config = OmegaConf.create({"hydra": {"runtime": {"output_dir": str(job), "cwd": str(tmp_path)},
                                         "output_subdir": None, "sweep": {"dir": "multirun/2026-01-01"}}})
    config.hydra.mode = RunMode.MULTIRUN
    RedactSecrets().on_job_start(config)
    assert "abc123secret" not in (sweep / "multirun.yaml").read_text()

