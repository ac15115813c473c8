"""The real entry point, as a user runs it: ``python -m slm_sweep`` in a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import FAST_TINY, REPO


def run_cli(args: list[str], cwd, env_extra: dict | None = None, timeout: int = 300):
    env = {**os.environ, "PYTHONPATH": str(REPO), "HYDRA_FULL_ERROR": "1", **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "slm_sweep", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_a_single_run_writes_under_outputs_logs_to_wandb_offline_and_csv_and_keeps_secrets_out(requires_data, tmp_path):
    fake_key = "fake-wandb-key-0123456789abcdef0123456789abcdef"
    fake_token = "hf_FAKEtoken0123456789"
    env = {"WANDB_MODE": "", "WANDB_API_KEY": fake_key, "HF_TOKEN": fake_token, "WANDB_DIR": str(tmp_path)}
    env.pop("WANDB_MODE")
    # credentials come from the environment; settings may name the variable, resolved in the run
    proc = run_cli([*FAST_TINY, "method=lora", "logger=wandb_csv", "logger.wandb.mode=offline",
                    "+logger.wandb.api_key=${oc.env:WANDB_API_KEY}",
                    # Hydra's way to set a job's environment: an override of the hydra node, dumped in hydra.yaml
                    "+hydra.job.env_set.HF_TOKEN=${oc.env:HF_TOKEN}"], cwd=tmp_path, env_extra=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # bitsandbytes (installed for QLoRA) says at import that a kernel of a path slm_sweep turns off is missing
    assert "kernels-community" not in proc.stdout + proc.stderr
    (result,) = list((tmp_path / "outputs").rglob("result.json"))
    assert json.loads(result.read_text())["status"] == "completed"
    run_dir = result.parent
    assert (run_dir / "predictions.jsonl").is_file() and (run_dir / ".hydra" / "config.yaml").is_file()
    metrics_csv = next(run_dir.rglob("metrics.csv")).read_text()
    assert "train/loss" in metrics_csv and "val/loss" in metrics_csv
    offline_runs = list(run_dir.glob("wandb/offline-run-*"))
    assert len(offline_runs) == 1, list(run_dir.rglob("*"))[:20]
    wandb_files = list(offline_runs[0].rglob("*.wandb"))
    assert len(wandb_files) == 1
    # the run's record stream (protobuf) holds the keys and names as plain strings
    stream = wandb_files[0].read_bytes()
    configuration = json.loads(result.read_text())["identity"]["configuration_key"][:8]
    for expected in (f"tiny-lora-gsm8k-{configuration}".encode(), f"tiny-lora-gsm8k-{configuration}-seed0".encode(), b"train/loss",
                     b"val/loss", b"eval/accuracy_strict", b"eval/accuracy_flexible", b"perf/tokens_per_s",
                     b"result/train_loss", b"split:test", b"trainer/global_step",
                     b"placement/eval_device", b"decoding/engine", b"decoding/cuda_graphs_captured"):
        assert expected in stream, expected
    assert b"eval/train_loss" not in stream  # a training figure is no evaluation score
    table = json.loads(next(offline_runs[0].rglob("predictions*.table.json")).read_text())
    assert table["columns"][:5] == ["eval_set", "index", "question", "reference", "output"]
    assert len(table["data"]) == 12
    for path in tmp_path.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert fake_key.encode() not in data, f"API key written to {path}"
            assert fake_token.encode() not in data, f"HF token written to {path}"


def test_a_sweep_with_a_credential_in_its_config_launches_no_job_and_writes_the_credential_nowhere(requires_data,
                                                                                                 tmp_path):
    """submitit (hydra/launcher=local, slurm) pickles each job's config beside the results and Hydra prints the
    overrides of every job it launches: a key given as a value is refused before the first job."""
    fake_key = "fake-wandb-key-9876543210fedcba9876543210fedcba"
    sweep = tmp_path / "sweep"
    proc = run_cli(["-m", *FAST_TINY, "method=zeroshot", "hydra/launcher=local", f"hydra.sweep.dir={sweep}",
                    "logger=wandb", "logger.mode=offline", "+logger.api_key=" + fake_key], cwd=tmp_path)
    assert proc.returncode != 0
    assert "logger.api_key holds a credential written into the config" in proc.stderr, proc.stderr[-3000:]
    assert fake_key not in proc.stdout + proc.stderr
    assert not list(tmp_path.rglob(".submitit")) and not list(tmp_path.rglob("result.json"))
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert fake_key.encode() not in path.read_bytes(), f"API key written to {path}"


def test_failed_single_run_exits_non_zero_and_records_the_error(requires_data, tmp_path):
    proc = run_cli([*FAST_TINY, "method=lora", "method.target_modules=[no_such_module]"], cwd=tmp_path)
    assert proc.returncode != 0
    record = json.loads(next((tmp_path / "outputs").rglob("result.json")).read_text())
    assert record["status"] == "failed" and "no_such_module" in record["error"]


def test_bad_value_fails_before_loading_anything(requires_data, tmp_path):
    proc = run_cli([*FAST_TINY, "method=lora", "method.r=0"], cwd=tmp_path)
    assert proc.returncode != 0
    assert "method.r=0 must be a positive integer" in proc.stderr


def test_a_name_override_that_relabels_the_chosen_model_is_refused_before_loading_anything(requires_data, tmp_path):
    proc = run_cli([*FAST_TINY, "model.name=qwen05"], cwd=tmp_path)
    assert proc.returncode != 0 and "model.name='qwen05' would record, store and report model=tiny" in proc.stderr
    assert "choose model=qwen05" in proc.stderr and not list(tmp_path.rglob("result.json"))


def test_a_mistyped_setting_on_the_command_line_is_named_with_the_one_meant_and_the_settings_there_are(tmp_path):
    """Hydra's own refusal of ``eval.test_limit=3`` named the key only: the user was left to find dataset.test_limit."""
    for mode in ([], ["-m"]):
        proc = run_cli([*mode, *FAST_TINY, "method=lora,dora", "eval.test_limit=3"], cwd=tmp_path)
        assert proc.returncode != 0
        assert ("config error: eval.test_limit is not a setting: no code reads it; did you mean dataset.test_limit? "
                "the eval settings are split, max_new_tokens") in proc.stderr, proc.stderr[-2000:]
        assert "Traceback" not in proc.stderr and not list(tmp_path.rglob("*.json"))
    script = Path(sys.executable).parent / "slm-sweep"  # the installed command takes the same way in
    proc = subprocess.run([str(script), *FAST_TINY, "eval.test_limit=3"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode != 0 and "did you mean dataset.test_limit?" in proc.stderr, proc.stderr[-2000:]


def test_preflight_only_without_a_sweep_is_refused_not_ignored(requires_data, tmp_path):
    """A single run has no grid to check: it used to train and score the whole test split instead."""
    proc = run_cli([*FAST_TINY, "method=lora", "preflight.only=true"], cwd=tmp_path)
    assert proc.returncode != 0 and "preflight.only=true checks a sweep's grid" in proc.stderr
    assert not list(tmp_path.rglob("result.json"))


def test_the_installed_console_scripts_find_the_packaged_configs(tmp_path):
    """`slm-sweep` (not `python -m slm_sweep`) finds conf/ as the module slm_sweep.conf, from any directory."""
    import pytest

    scripts = Path(sys.executable).parent
    if not (scripts / "slm-sweep").is_file():
        pytest.skip("slm_sweep is not installed with its console scripts in this environment")
    proc = subprocess.run([str(scripts / "slm-sweep"), "--cfg", "job", "model=tiny", "method=dora"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "name: tiny" in proc.stdout and "use_dora: true" in proc.stdout
    report = subprocess.run([str(scripts / "slm-sweep-report"), "--help"], cwd=tmp_path, capture_output=True,
                            text=True, timeout=120)
    assert report.returncode == 0 and "--claims" in report.stdout


def test_help_says_what_the_tool_does_and_lists_only_groups_a_config_composes(tmp_path):
    from slm_sweep.config_sources import CONF_DIR

    proc = run_cli(["--help"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith("slm_sweep: fine-tuning methods compared on small language models")
    listed = proc.stdout.split("== Configuration groups ==", 1)[1].split("== Config ==", 1)[0]
    groups = {line.split(":", 1)[0] for line in listed.splitlines() if ": " in line}
    on_disk = {p.name for p in CONF_DIR.iterdir() if p.is_dir() and p.name not in ("hydra", "__pycache__")}
    assert groups == on_disk and "loraplus" in listed
    for group in groups:  # each is one a cell composes (the first option of each, here)
        option = next(line for line in listed.splitlines() if line.startswith(f"{group}: ")).split(": ")[1]
        proc = run_cli([f"{group}={option.split(',')[0]}", "--cfg", "job"], cwd=tmp_path)
        assert proc.returncode == 0, (group, proc.stderr[-1000:])


def test_only_the_entry_point_imports_the_cell_runner():
    """run.py is one cell from start to end; what a sweep's preflight or the tune command shares with a cell lives in
    the modules below it (config, identity), so that checking a grid never reaches for a cell's whole stage list."""
    import ast

    package = REPO / "slm_sweep"
    importers = []
    for path in sorted(package.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                module = node.module or ""
                if node.level:  # from .run import ..., from . import run
                    parent = ["slm_sweep", *path.relative_to(package).parent.parts]
                    parent = parent[:len(parent) - node.level + 1]
                    module = ".".join([*parent, *([module] if module else [])])
                names = [module, *(f"{module}.{a.name}" for a in node.names)]
            else:
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if "slm_sweep.run" in names:
                importers.append(path.relative_to(package).as_posix())
    assert importers == ["__main__.py"]
