"""Loggers (conf/logger/) and training callbacks (conf/callbacks/) built from `_target_` YAML entries."""

from __future__ import annotations

import csv
import json
import re

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import MissingConfigException
from omegaconf import OmegaConf

from slm_sweep.config import ConfigError, validate_config
from slm_sweep.config_sources import group_options
from slm_sweep.results import read_result
from slm_sweep.run import run
from tests.conftest import CONF_DIR, FAST_TINY

LR_MONITOR = """\
lr_monitor:
  _target_: lightning.pytorch.callbacks.LearningRateMonitor
  logging_interval: step
"""


def with_lr_monitor(tmp_path, *overrides: str):
    """A fast LoRA cell with LearningRateMonitor added from a callbacks file of its own (outside the package)."""
    extra = tmp_path / "conf"
    (extra / "callbacks").mkdir(parents=True)
    (extra / "callbacks" / "lr_monitor.yaml").write_text(LR_MONITOR)
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=[
            *FAST_TINY, "method=lora", f"hydra.searchpath=[file://{extra}]", "callbacks=[default,lr_monitor]",
            *overrides])


def test_a_callback_from_a_yaml_file_of_its_own_runs_in_a_cell_with_two_loggers(requires_data, tmp_path):
    cfg = with_lr_monitor(tmp_path, "logger=wandb_csv", "logger.wandb.mode=disabled")
    assert set(cfg.callbacks) == {"progress_bar", "lr_monitor"}
    record = run(cfg, out_dir=tmp_path / "cell")
    assert record["status"] == "completed", record.get("error")
    with open(tmp_path / "cell" / "csv" / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    rates = [float(v) for r in rows for k, v in r.items() if k.startswith("lr-AdamW") and v]  # per param group
    assert rates and all(0 < lr <= cfg.method.lr for lr in rates)
    # the monitor logs on the axis slm_sweep's metrics use, the optimizer steps done (Lightning's counter counted
    # micro-batches: 0-5 for these 3 steps of 2), but at each micro-batch, before the step: at step s, once per
    # micro-batch of step s + 1, the rate step s + 1 trains at, which train/lr logs at s + 1 (README, W&B)
    steps, micro_batches = cfg.trainer.max_steps, cfg.trainer.batch_size // cfg.trainer.micro_batch_size
    trained_at = {int(r["step"]): float(r["train/lr"]) for r in rows if r.get("train/lr")}
    assert sorted(trained_at) == list(range(1, steps + 1))
    assert len(set(trained_at.values())) == steps  # warming up: one step's rate is no other's
    monitored = [(int(r["step"]), float(r["lr-AdamW/pg1"])) for r in rows if r.get("lr-AdamW/pg1")]
    assert [step for step, _ in monitored] == [step for step in range(steps) for _ in range(micro_batches)]
    assert all(lr == pytest.approx(trained_at[step + 1]) for step, lr in monitored)
    assert any(r.get("train/loss") for r in rows)
    assert not (tmp_path / "cell" / "wandb").exists()  # the W&B entry was built, and disabled
    # the scores, at the last step, as result.json has them
    (final,) = [r for r in rows if r.get("eval/accuracy_flexible")]
    assert int(final["step"]) == record["metrics"]["train_steps"]
    assert float(final["eval/accuracy_flexible"]) == pytest.approx(record["metrics"]["accuracy_flexible"])
    assert float(final["eval/n_eval"]) == record["metrics"]["n_eval"]


def test_a_cell_that_trains_nothing_writes_its_scores_to_the_csv_logger(tiny_cfg, tmp_path):
    record = run(tiny_cfg("method=zeroshot", "logger=csv", "dataset.test_limit=3"), out_dir=tmp_path / "cell")
    with open(tmp_path / "cell" / "csv" / "metrics.csv", newline="") as f:
        (row,) = list(csv.DictReader(f))
    assert float(row["eval/accuracy_strict"]) == pytest.approx(record["metrics"]["accuracy_strict"])
    assert int(row["step"]) == 0 and float(row["eval/n_eval"]) == 3


@pytest.mark.parametrize("overrides, message", [
    (["logger._target_=no_such_package.Logger"],
     "logger._target_='no_such_package.Logger' cannot be imported (no package 'no_such_package'); "
     f"the loggers in conf/logger/ are: {', '.join(group_options('logger'))}"),
    (["logger=wandb_csv", "logger.wandb.mode=sometimes"],
     "logger.wandb.mode='sometimes' is not one of: auto, online, offline, disabled"),
    (["logger=wandb_csv", "logger.csv=3"], "logger.csv=3 must be a mapping with a _target_"),
    (["logger=wandb", f"logger.tags=[ok,{'x' * 65}]"], f"logger.tags has '{'x' * 65}': a W&B tag is a non-empty "
                                                       "string of at most 64 characters"),
    (["logger=wandb", "logger.tags=[ok,'']"], "logger.tags has '': a W&B tag"),
    (["logger=wandb", "logger.tags=[true]"], "logger.tags has True: a W&B tag"),
    (["logger=wandb", "logger.init_timeout=-5"], "logger.init_timeout=-5 must be a positive number of seconds"),
    (["logger=wandb", "logger.log_predictions=maybe"], "logger.log_predictions='maybe' must be true or false"),
    (["+callbacks.extra=3"], "callbacks.extra=3 must be a mapping with a _target_ (a callback class"),
    (["callbacks.progress_bar._target_=nowhere.Bar"],
     "callbacks.progress_bar._target_='nowhere.Bar' cannot be imported (no package 'nowhere'); "
     f"the callbacks in conf/callbacks/ are: {', '.join(group_options('callbacks'))}"),
])
def test_bad_logger_and_callback_entries_fail_validation_naming_them(tiny_cfg, overrides, message):
    with pytest.raises(ConfigError) as err:
        validate_config(tiny_cfg("method=lora", *overrides))
    assert message in str(err.value)


def test_an_unknown_logger_lists_the_logger_files(tiny_cfg):
    with pytest.raises(MissingConfigException) as err:
        tiny_cfg("logger=nope")
    assert "logger/nope" in str(err.value) and all(f"\t{n}" in str(err.value) for n in ("csv", "none", "wandb"))


@pytest.mark.parametrize("override, message", [
    ("callbacks.progress_bar._target_=lightning.pytorch.callbacks.NoSuchBar",
     "callbacks.progress_bar._target_='lightning.pytorch.callbacks.NoSuchBar' cannot be imported"),
    ("logger._target_=lightning.pytorch.loggers.NoSuchLogger",
     "logger._target_='lightning.pytorch.loggers.NoSuchLogger' cannot be imported"),
    ("callbacks.progress_bar._target_=collections.OrderedDict",
     "callbacks.progress_bar._target_='collections.OrderedDict' is not a callback"),
    ("+logger.nme=x", "logger.nme is not an argument of lightning.pytorch.loggers.csv_logs.CSVLogger (did you mean name?); its "
                      "arguments are: save_dir, name, version, prefix, flush_logs_every_n_steps"),
    ("logger._target_=collections.OrderedDict", "logger._target_='collections.OrderedDict' is not a logger "
     "(lightning.pytorch.loggers.logger.Logger or slm_sweep.tracking.CellLogger); the loggers in conf/logger/ are: "
     f"{', '.join(group_options('logger'))}"),
])
def test_a_misspelt_class_fails_the_cell_before_it_reads_any_data(tiny_cfg, tmp_path, override, message):
    """An installed package with no such class passes validation (which imports no Lightning); the cell imports
    its classes before reading data or loading a model, so nothing is computed before the error."""
    from slm_sweep.run import run

    cfg = tiny_cfg("method=lora", "logger=csv", override)
    validate_config(cfg)
    with pytest.raises(ConfigError) as err:
        run(cfg, out_dir=tmp_path)
    assert message in str(err.value)
    assert not list(tmp_path.iterdir())  # nothing written: no result, no data read


@pytest.mark.parametrize(("env_mode", "key", "expected"), [
    ("offline", "k" * 40, "offline"), ("dryrun", "k" * 40, "offline"), ("disabled", None, "disabled"),
    ("", "k" * 40, "online"), ("", None, "offline"),
])
def test_wandb_auto_mode_keeps_an_offline_environment_offline_whatever_key_is_at_hand(monkeypatch, env_mode, key,
                                                                                       expected):
    from slm_sweep import tracking

    monkeypatch.setenv("WANDB_MODE", env_mode)
    monkeypatch.setattr(tracking, "wandb_api_key_available", lambda: False)
    assert tracking.wandb_mode({"mode": "auto", "api_key": key}) == expected
    assert tracking.wandb_mode({"mode": "online", "api_key": key}) == "online"  # an explicit mode is kept


def test_an_online_environment_without_a_key_logs_offline_and_says_why(monkeypatch, caplog):
    from slm_sweep import tracking

    monkeypatch.setenv("WANDB_MODE", "online")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setattr(tracking, "wandb_api_key_available", lambda: False)
    with caplog.at_level("WARNING", logger="slm_sweep.tracking"):
        assert tracking.wandb_mode({"mode": "auto"}) == "offline"
    assert "WANDB_MODE=online, but no W&B API key is set" in caplog.text


def test_a_w_and_b_group_is_a_row_of_the_report_and_a_search_cell_is_named_apart():
    from slm_sweep.tracking import group_name

    assert group_name("m", "lora", "gsm8k") == "m-lora-gsm8k"
    assert group_name("m", "lora", "gsm8k", "0123456789abcdef") == "m-lora-gsm8k-01234567"
    assert group_name("m", "lora", "gsm8k", "0123456789abcdef", "val") == "m-lora-gsm8k-01234567-val"


def test_a_run_s_name_and_group_fit_w_and_b_s_limit_and_keep_their_seed():
    """W&B refuses a run whose name or group is over 128 characters; a model named by a long hub id got there."""
    from slm_sweep.tracking import MAX_NAME_LENGTH, run_group, run_name

    def cell(model, seed=0, lr=None):
        return {"model": model, "method": "lora", "dataset": "gsm8k", "seed": seed,
                "identity": {"configuration_key": "0123456789abcdef"}, "learning_rate": {"value": lr}}

    long = "an-organisation-with-a-long-name/a-model-fine-tuned-on-mathematics-word-problems-v2-instruct-" + "x" * 40
    group, name = run_group(cell(long), "test"), run_name(cell(long, seed=2, lr=3e-4), "val")
    assert len(group) == len(name) == MAX_NAME_LENGTH
    assert name.endswith("-lr0.0003-seed2") and group.startswith(long[:100])
    assert run_group(cell(long + "y"), "test") != group  # two long names sharing their start stay two groups
    assert run_name(cell(long, seed=3), "test") != run_name(cell(long, seed=4), "test")
    short = cell("smollm135", seed=1)
    assert run_group(short, "test") == "smollm135-lora-gsm8k-01234567"
    assert run_name(short, "test") == "smollm135-lora-gsm8k-01234567-seed1"


def test_a_cell_copied_from_another_folder_still_gets_its_w_and_b_run(tiny_cfg, tmp_path, monkeypatch):
    """Filtering the dashboard by sweep must show every cell, the reused ones too (tagged reused)."""
    from slm_sweep.tracking import group_name

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    common = ("method=zeroshot", "dataset.test_limit=2", "resume.enabled=true", f"resume.search_dir={tmp_path}")
    first = run(tiny_cfg(*common, "seed=0"), out_dir=tmp_path / "a")
    # a curve an earlier attempt left in the folder, which Lightning's CSV logger would delete
    (tmp_path / "b" / "csv").mkdir(parents=True)
    (tmp_path / "b" / "csv" / "metrics.csv").write_text("step,train/loss\n1,2.5\n")
    copy = run(tiny_cfg(*common, "seed=1", "logger=wandb_csv", "logger.wandb.mode=offline"), out_dir=tmp_path / "b")
    assert first["status"] == copy["status"] == "completed" and copy["reused_from"]
    assert (tmp_path / "b" / "csv" / "metrics.earlier-1.csv").read_text() == "step,train/loss\n1,2.5\n"
    assert "eval/accuracy_flexible" in (tmp_path / "b" / "csv" / "metrics.csv").read_text()
    # out of the group that averages the configuration's computations, and named after its group
    group = group_name("tiny", "zeroshot", "gsm8k", copy["identity"]["configuration_key"])
    logged = offline_run(tmp_path / "b")
    assert logged["run"]["group"] == f"{group}-reused" and logged["run"]["name"] == f"{group}-reused-seed1"
    assert "reused" in logged["run"]["tags"] and "eval/accuracy_flexible" in logged["summary"]


def test_w_and_b_tags_fit_its_limit_and_one_tag_may_be_a_string(tiny_cfg, tmp_path, monkeypatch):
    """A sweep folder's tag over W&B's 64 characters failed every cell of the sweep; ``logger.tags=paper`` became
    the tags a, e, p, r."""
    from slm_sweep.tracking import MAX_TAG_LENGTH, wandb_tag

    long = "sweep-gsm8k_baselines_rerun_after_tokenizer_fix-2026-11-30_full_grid_seed0"
    assert len(wandb_tag(long)) == MAX_TAG_LENGTH and wandb_tag(long) != wandb_tag(long + "1")
    assert wandb_tag("sweep-2026-11-30-10-00-00") == "sweep-2026-11-30-10-00-00"
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setattr("slm_sweep.run._sweep_tag", lambda: long)
    for tags in ("logger.tags=2024", "logger.tags=[v2,2024]"):  # numbers are tags too
        validate_config(tiny_cfg("logger=wandb", tags))
    cfg = tiny_cfg("method=zeroshot", "dataset.test_limit=2", "logger=wandb", "logger.mode=offline",
                   "logger.tags=paper")
    validate_config(cfg)
    record = run(cfg, out_dir=tmp_path / "cell")
    assert record["status"] == "completed", record.get("error")
    tags = set(offline_run(tmp_path / "cell")["run"]["tags"])
    assert {"paper", wandb_tag(long)} <= tags and not {"a", "e", "p", "r"} & tags


def offline_run_data(folder, *expected: bytes, wait_s: float = 30.0) -> bytes:
    """The bytes of the one offline W&B run under ``folder``, once they hold ``expected`` or after ``wait_s``: W&B's
    service process may still be writing the file when ``run.finish()`` has returned."""
    import time

    deadline = time.monotonic() + wait_s
    while True:
        (stream,) = folder.glob("wandb/offline-run-*/*.wandb")
        data = stream.read_bytes()
        if all(e in data for e in expected) or time.monotonic() > deadline:
            return data
        time.sleep(0.2)


WANDB_BLOCK = 32768  # the record log of a .wandb file: LevelDB's log format, in blocks of this size


def offline_runs(folder, wait_s: float = 30.0) -> list[dict]:
    """Each offline W&B run under ``folder``/wandb, read from its .wandb stream once it holds the run's exit record
    (W&B's service process may still be writing when ``run.finish()`` has returned): ``run`` (id, name, group,
    job_type, tags as the last run record has them), ``config``, ``summary`` (the last value of each key) and
    ``history`` (one dict per logged row)."""
    import struct
    import time

    from google.protobuf.message import DecodeError
    from wandb.proto import wandb_internal_pb2

    def records(data: bytes):
        pos, pending = 7, b""  # after the header ":W&B" and its version
        while pos + 7 <= len(data):
            left = WANDB_BLOCK - pos % WANDB_BLOCK
            if left < 7:
                pos += left
                continue
            _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
            if kind == 0 and length == 0:
                pos += left
                continue
            chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
            if kind == 1:  # a whole record; 2, 3, 4: its first, middle and last parts
                yield chunk
            elif kind == 2:
                pending = chunk
            elif kind == 3:
                pending += chunk
            elif kind == 4:
                yield pending + chunk

    def read(path) -> dict | None:
        out = {"run": {}, "config": {}, "summary": {}, "history": []}
        exited = False
        for data in records(path.read_bytes()):
            record = wandb_internal_pb2.Record()
            try:
                record.ParseFromString(data)
            except DecodeError:  # a record wandb-core is still writing: read the stream again
                return None
            kind = record.WhichOneof("record_type")
            if kind == "run":
                run = record.run
                out["run"] = {"id": run.run_id, "name": run.display_name, "group": run.run_group,
                              "job_type": run.job_type, "tags": list(run.tags)}
                updates = run.config.update
            elif kind == "config":
                updates = record.config.update
            elif kind == "summary":
                out["summary"].update({u.key or "/".join(u.nested_key): json.loads(u.value_json)
                                       for u in record.summary.update})
                continue
            elif kind == "history":
                out["history"].append({i.key or "/".join(i.nested_key): json.loads(i.value_json)
                                       for i in record.history.item})
                continue
            else:
                exited |= kind == "exit"
                continue
            for update in updates:
                out["config"][update.key or "/".join(update.nested_key)] = json.loads(update.value_json)
        return out if exited else None

    deadline = time.monotonic() + wait_s
    while True:
        streams = sorted(folder.glob("wandb/offline-run-*/*.wandb"))
        runs = [read(stream) for stream in streams]
        if (streams and all(runs)) or time.monotonic() > deadline:
            assert streams and all(runs), f"no finished W&B run under {folder}"
            return runs
        time.sleep(0.2)


def offline_run(folder) -> dict:
    """The one offline W&B run under ``folder`` (``offline_runs``)."""
    (run_data,) = offline_runs(folder)
    return run_data


def test_any_run_s_name_and_group_are_cut_to_w_and_b_s_limit(tmp_path, monkeypatch):
    """A sweep's summary run is named after its folder, which a long hydra.sweep.dir makes as long as it is."""
    from slm_sweep.tracking import MAX_NAME_LENGTH, start_wandb_run

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    name, group = "an-experiment-folder-" + "x" * 150 + "-summary", "sweep-summary-" + "y" * 150
    run = start_wandb_run({"mode": "offline"}, name=name, group=group, job_type="summary", tags=[], config={},
                          out_dir=tmp_path)
    run.finish()
    logged = offline_run(tmp_path)["run"]
    assert len(logged["name"]) == len(logged["group"]) == MAX_NAME_LENGTH
    assert logged["name"].startswith(name[:100]) and logged["group"].startswith(group[:100])


def test_runs_of_two_configurations_are_told_apart_by_name_and_command_and_found_from_the_summary(tmp_path,
                                                                                                    monkeypatch):
    """``method.r=4,8`` gave two runs named ``tiny-lora-gsm8k-seed0``: a run is named after its group (which holds
    the configuration key), records the job's overrides (credentials redacted), and the sweep's summary table in
    W&B names each row's group."""
    from hydra.core.hydra_config import HydraConfig

    from slm_sweep.report import write_report
    from slm_sweep.sweep.callbacks import log_summary_to_wandb
    from slm_sweep.tracking import group_name
    from tests.conftest import compose_config

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    sweep = tmp_path / "multirun" / "2026-01-01" / "00-00-00"
    runs = {}
    for tokens in (4, 6):
        overrides = [*FAST_TINY, "method=zeroshot", "dataset.test_limit=2", "logger=wandb",
                     f"eval.max_new_tokens={tokens}"]
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            # a credential as a key's value, and one inside a dict value (a logger entry's settings), which the
            # config validation lets through and result.json's config redacts
            job = compose(config_name="config", overrides=[*overrides, "+eval.hf_token=abc123secret",
                                                           "+logger.extra={settings: {api_key: nested123secret}}"],
                          return_hydra_config=True)
        HydraConfig.instance().set_config(job)  # the job Hydra runs the cell in
        try:
            record = run(compose_config(overrides), out_dir=sweep / f"cell{tokens}")
        finally:
            HydraConfig.instance().cfg = None
        assert record["status"] == "completed", record.get("error")
        logged = offline_run(sweep / f"cell{tokens}")
        group = group_name("tiny", "zeroshot", "gsm8k", record["identity"]["configuration_key"])
        assert logged["run"]["group"] == group and logged["run"]["name"] == f"{group}-seed0"
        provenance = logged["config"]["provenance"]
        assert f"eval.max_new_tokens={tokens}" in provenance["overrides"]
        assert "+eval.hf_token=<redacted>" in provenance["overrides"]
        assert "+logger.extra=<redacted>" in provenance["overrides"]
        stream = next((sweep / f"cell{tokens}").glob("wandb/offline-run-*/*.wandb")).read_bytes()
        assert b"abc123secret" not in stream and b"nested123secret" not in stream
        runs[record["identity"]["configuration_key"]] = logged["run"]
    assert len({r["name"] for r in runs.values()}) == 2
    # a row of the sweep's summary in W&B names the group of its seeds' runs
    report = write_report([sweep], tmp_path / "report", plots=False)
    log_summary_to_wandb({"mode": "offline"}, sweep, report)
    (table,) = sweep.glob("wandb/offline-run-*/files/media/table/sweep/summary_*.table.json")
    logged = json.loads(table.read_text())
    assert logged["columns"][-1] == "wandb_group"
    assert sorted(row[-1] for row in logged["data"]) == sorted(r["group"] for r in runs.values())


def test_a_cell_computed_again_in_its_folder_names_the_run_it_replaces(tiny_cfg, tmp_path, monkeypatch):
    """resume.enabled=false sets the folder's finished result aside (superseded/) and computes it again: the first
    run stays in the group with the same name and tags, and a group mean would count the seed twice. The new run
    is tagged rerun and names the run it replaces; a rerun with other settings, another configuration, does not."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    common = ("method=zeroshot", "dataset.test_limit=2", "logger=wandb", "resume.enabled=false")
    cell = tmp_path / "cell"
    first = run(tiny_cfg(*common), out_dir=cell)
    second = run(tiny_cfg(*common), out_dir=cell)
    other = run(tiny_cfg(*common, "eval.max_new_tokens=4"), out_dir=cell)
    assert first["status"] == second["status"] == other["status"] == "completed"
    assert read_result(cell / "superseded")["tracking"] == first["tracking"]
    ids = [record["tracking"]["wandb"].removeprefix("offline run ") for record in (first, second, other)]
    runs = {logged["run"]["id"]: logged for logged in offline_runs(cell)}
    assert sorted(runs) == sorted(ids)
    old, new, another = (runs[run_id] for run_id in ids)
    assert old["run"]["group"] == new["run"]["group"] and old["run"]["name"] == new["run"]["name"]
    assert new["config"]["provenance"]["supersedes"] == [ids[0]] and "rerun" in new["run"]["tags"]
    for logged in (old, another):
        assert "supersedes" not in logged["config"]["provenance"] and "rerun" not in logged["run"]["tags"]


def test_a_non_finite_number_is_left_out_of_w_and_b_and_listed_as_result_json_lists_it(tmp_path, monkeypatch):
    """NaN and infinities reached the run's summary where result.json has null: they are left out of what is
    logged, and the summary lists their places under non_finite, as result.json does."""
    from slm_sweep.results import write_result
    from slm_sweep.tracking import WandbRun, result_metrics

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    record = {"status": "completed", "metrics": {"train_steps": 3, "val_loss": float("nan"),
                                                  "train_loss": float("inf"), "accuracy_flexible": 0.5},
              "eval_sets": {"svamp": {"accuracy_flexible": float("nan"), "n_eval": 2}}}
    assert set(result_metrics(record)) == {"result/train_steps", "eval/accuracy_flexible", "eval_svamp/n_eval"}
    logger = WandbRun(cell={"model": "tiny", "method": "full", "dataset": "gsm8k", "seed": 0}, config={"seed": 0},
                      out_dir=tmp_path / "cell", mode="offline")
    logger.log_result(record, [])
    logger.finish("completed")
    logged = offline_run(tmp_path / "cell")
    written = json.loads(write_result(tmp_path, record).read_text())
    assert logged["summary"]["non_finite"] == written["non_finite"] == [
        "eval_sets.svamp.accuracy_flexible", "metrics.train_loss", "metrics.val_loss"]
    assert logged["summary"]["eval/accuracy_flexible"] == 0.5 and logged["summary"]["eval_svamp/n_eval"] == 2
    for gone in ("result/val_loss", "result/train_loss", "eval_svamp/accuracy_flexible"):
        assert gone not in logged["summary"] and all(gone not in row for row in logged["history"])


def test_a_resumed_cell_s_run_names_the_step_it_resumed_from_and_the_run_that_trained_the_steps_before(
        tiny_cfg, tmp_path, monkeypatch):
    """An interrupted cell resumed from its checkpoint leaves two runs: the resumed one names the step and the
    checkpoint it resumed from, and (earlier_attempts, as result.json has them) the run of the attempt that trained
    the steps before."""
    import signal

    from tests.test_reliability import STOP_AT_STEP

    (tmp_path / "stop_at.py").write_text(STOP_AT_STEP)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    common = ("method=lora", "trainer.max_steps=4", "resume.enabled=true", "+callbacks.stop._target_=stop_at.StopAt",
              "dataset.test_limit=2", "logger=wandb")
    cell = tmp_path / "cell"
    sigint = signal.getsignal(signal.SIGINT)
    monkeypatch.setenv("STOP_AT_STEP", "2")
    try:
        with pytest.raises((KeyboardInterrupt, SystemExit)):
            run(tiny_cfg(*common), out_dir=cell)
    finally:
        signal.signal(signal.SIGINT, sigint)  # Lightning ignores Ctrl-C once it has handled one
    first = read_result(cell)
    assert first["status"] == "interrupted" and first["tracking"]["wandb"].startswith("offline run ")
    monkeypatch.delenv("STOP_AT_STEP")
    done = run(tiny_cfg(*common), out_dir=cell)
    assert done["status"] == "completed" and done["resumed_at_step"] == 2
    assert [attempt["tracking"] for attempt in done["earlier_attempts"]] == [first["tracking"]]
    runs = {logged["run"]["id"]: logged for logged in offline_runs(cell)}
    interrupted = runs[first["tracking"]["wandb"].removeprefix("offline run ")]
    resumed = runs[done["tracking"]["wandb"].removeprefix("offline run ")]
    assert "status:interrupted" in interrupted["run"]["tags"] and "status:completed" in resumed["run"]["tags"]
    provenance = resumed["config"]["provenance"]
    assert provenance["resumed_at_step"] == 2
    checkpoint = str(cell / "checkpoints" / "last.ckpt")
    assert provenance["resumed_from_checkpoint"] == done["resumed_from_checkpoint"] == checkpoint
    assert [attempt["tracking"] for attempt in provenance["earlier_attempts"]] == [first["tracking"]]


def test_a_w_and_b_run_names_its_code_and_a_failed_cell_its_error(tiny_cfg, tmp_path, monkeypatch):
    """A run carries what produced it (keys, commit, versions, rate); a failed cell's run says why it failed and
    logs none of the zeros of a cell that never trained as if they were measurements."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    good = run(tiny_cfg("method=zeroshot", "dataset.test_limit=2", "logger=wandb", "logger.mode=offline"),
               out_dir=tmp_path / "good")
    data = offline_run_data(tmp_path / "good", good["identity"]["evaluation_key"].encode())
    assert good["identity"]["evaluation_key"].encode() in data and b"provenance" in data
    # the machine and the files behind the run; the run's id is in result.json
    for expected in (b"hostname", b"result_path", str(tmp_path / "good" / "result.json").encode(),
                     b"status:completed"):
        assert expected in offline_run_data(tmp_path / "good", expected), expected
    run_id = good["tracking"]["wandb"].removeprefix("offline run ")
    assert [p.name.endswith(f"-{run_id}") for p in (tmp_path / "good").glob("wandb/offline-run-*")] == [True]
    bad = run(tiny_cfg("method=lora", "trainer.max_length=8", "logger=wandb", "logger.mode=offline"),
              out_dir=tmp_path / "bad")
    assert bad["status"] == "failed" and "fits in trainer.max_length=8" in bad["error"]
    data = offline_run_data(tmp_path / "bad", b"fits in trainer.max_length=8", b"status:failed")
    assert b"fits in trainer.max_length=8" in data and b"result/train_steps" not in data
    # tagged with how the cell ended: a group's view filtered on status:completed leaves the attempt out
    assert b"status:failed" in data and b"status:completed" not in data


def test_a_run_id_in_the_environment_never_merges_two_cells_into_one_run(tiny_cfg, tmp_path, monkeypatch):
    """A WANDB_RUN_ID and WANDB_RESUME left in a batch script's environment would make every cell of a process log
    into one run; each cell's run has an id of its own."""
    import wandb

    from slm_sweep.tracking import WandbRun

    monkeypatch.setenv("WANDB_RUN_ID", "sharedrun")
    monkeypatch.setenv("WANDB_RESUME", "allow")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    wandb.teardown()  # W&B reads its environment once per process, when it is first set up
    try:
        ids = []
        for seed in (0, 1):
            cell = {"model": "tiny", "method": "zeroshot", "dataset": "gsm8k", "seed": seed}
            logger = WandbRun(cell=cell, config={"seed": seed}, out_dir=tmp_path / f"cell{seed}", mode="offline")
            ids.append(logger.run.id)
            assert logger.state == f"offline run {logger.run.id}"
            logger.finish("completed")
    finally:
        monkeypatch.undo()
        wandb.teardown()  # the next test's runs read an environment without the shared id
    assert len(set(ids)) == 2 and "sharedrun" not in ids
    for seed, run_id in enumerate(ids):
        (folder,) = (tmp_path / f"cell{seed}").glob("wandb/offline-run-*")
        assert folder.name.endswith(run_id)


def test_a_w_and_b_run_that_cannot_start_leaves_the_cell_and_its_other_loggers_going(tiny_cfg, tmp_path):
    """W&B's offline folder cannot be made (a file stands where it would go): the cell completes, the CSV logger
    has its scores, and result.json says the dashboard lacks this run."""
    out = tmp_path / "cell"
    out.mkdir()
    (out / "wandb").write_text("not a folder")
    record = run(tiny_cfg("method=zeroshot", "dataset.test_limit=2", "logger=wandb_csv", "logger.wandb.mode=offline"),
                 out_dir=out)
    assert record["status"] == "completed", record.get("error")
    assert record["tracking"]["wandb"].startswith("not started: ")
    assert read_result(out)["tracking"] == record["tracking"]
    with open(out / "csv" / "metrics.csv", newline="") as f:
        (row,) = list(csv.DictReader(f))
    assert float(row["eval/accuracy_flexible"]) == pytest.approx(record["metrics"]["accuracy_flexible"])


def test_w_and_b_not_importable_leaves_a_logger_without_a_run(monkeypatch, tmp_path, caplog):
    import sys

    from slm_sweep.tracking import Tracker

    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb raises ImportError
    cell = {"model": "tiny", "method": "zeroshot", "dataset": "gsm8k", "seed": 0}
    entry = {"_target_": "slm_sweep.tracking.WandbRun", "mode": "offline"}
    with caplog.at_level("ERROR", logger="slm_sweep.tracking"):
        tracker = Tracker(entry, cell, {}, tmp_path)
    assert tracker.tracking["wandb"].startswith("not started: ModuleNotFoundError")
    assert tracker.lightning_loggers == [] and "W&B could not start" in caplog.text
    tracker.log_result({"status": "completed", "metrics": {"accuracy_flexible": 0.5}}, [])
    tracker.finish("completed")


@pytest.mark.parametrize("how", ["setting", "environment"])
def test_w_and_b_disabled_needs_no_wandb_installed(monkeypatch, tmp_path, caplog, how):
    """The GPU machine has no wandb and runs with WANDB_MODE=disabled: no error, and the result says disabled."""
    import sys

    from slm_sweep.tracking import Tracker

    monkeypatch.setitem(sys.modules, "wandb", None)
    entry = {"_target_": "slm_sweep.tracking.WandbRun", "mode": "disabled" if how == "setting" else "auto"}
    if how == "environment":
        monkeypatch.setenv("WANDB_MODE", "disabled")
    cell = {"model": "tiny", "method": "zeroshot", "dataset": "gsm8k", "seed": 0}
    with caplog.at_level("ERROR", logger="slm_sweep.tracking"):
        tracker = Tracker(entry, cell, {}, tmp_path)
    assert tracker.tracking["wandb"] == "disabled" and "W&B could not start" not in caplog.text


def test_a_credential_written_into_the_config_is_refused_and_one_read_from_the_environment_is_not(tiny_cfg,
                                                                                                 tmp_path):
    """Hydra prints a sweep's overrides and the submitit launchers pickle every job's config to disk: a key given
    as a value is refused before anything runs, naming where a key belongs and never showing it."""
    from hydra.core.hydra_config import HydraConfig

    from slm_sweep.config import validate_job_environment

    for overrides, path in ((["logger=wandb", "+logger.api_key=abc123secret"], "logger.api_key"),
                            (["logger=wandb_csv", "+logger.wandb.api_key=abc123secret"], "logger.wandb.api_key")):
        with pytest.raises(ConfigError) as err:
            validate_config(tiny_cfg("method=zeroshot", *overrides))
        message = str(err.value)
        assert message.startswith(f"{path} holds a credential written into the config")
        assert "WANDB_API_KEY" in message and "wandb login" in message and "abc123secret" not in message
        # the command-line form the message offers is one Hydra takes
        offered = re.search(r"(\+\S+)='(\$\{oc\.env:WANDB_API_KEY\})' on the command line", message)
        assert offered[1] == f"+{path}"
        validate_config(tiny_cfg("method=zeroshot", overrides[0], f"{offered[1]}={offered[2]}"))
    with pytest.raises(ConfigError, match="logger.api_key holds a credential"):
        run(tiny_cfg("method=zeroshot", "logger=wandb", "+logger.api_key=abc123secret"), out_dir=tmp_path / "cell")
    assert not (tmp_path / "cell").exists()
    validate_config(tiny_cfg("method=zeroshot", "logger=wandb", "+logger.api_key=${oc.env:WANDB_API_KEY}"))
    validate_config(tiny_cfg("method=zeroshot", "logger=wandb", "+logger.api_key=${oc.env:WANDB_API_KEY,null}"))
    with pytest.raises(ConfigError, match="logger.api_key holds a credential"):  # a default is a written key
        validate_config(tiny_cfg("method=zeroshot", "logger=wandb", "+logger.api_key=${oc.env:X,abc123secret}"))

    # hydra.job.env_set: refused in a single run too
    with pytest.raises(ConfigError) as err:
        validate_job_environment(OmegaConf.create({"HF_TOKEN": "hf_abc123secret", "OMP_NUM_THREADS": "1"}))
    assert str(err.value).startswith("hydra.job.env_set.HF_TOKEN holds a credential") \
        and "export HF_TOKEN" in str(err.value) and "abc123secret" not in str(err.value)
    validate_job_environment(OmegaConf.create({"HF_TOKEN": "${oc.env:HF_TOKEN}", "OMP_NUM_THREADS": "1"}))
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[*FAST_TINY, "method=zeroshot",
                                                       "+hydra.job.env_set.HF_TOKEN=hf_abc123secret"],
                      return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    try:
        with pytest.raises(ConfigError, match="hydra.job.env_set.HF_TOKEN holds a credential"):
            run(cfg, out_dir=tmp_path / "cell")
    finally:
        HydraConfig.instance().cfg = None
    assert not (tmp_path / "cell").exists()


PLAIN_WANDB = """\
# Lightning's own WandbLogger, as a user may name it in a logger file
_target_: lightning.pytorch.loggers.WandbLogger
save_dir: null
offline: true
project: slm_sweep_test
"""


def test_a_plain_lightning_wandb_logger_gets_a_run_of_its_own_for_each_cell_of_a_process(requires_data, tmp_path):
    """Lightning's WandbLogger.finalize leaves its run open: the next cell of a multirun (one process, Hydra's basic
    launcher) logged into the first cell's run, one .wandb file for two cells. Each cell now finishes its run. In a
    process of its own: W&B's process-wide settings left by other tests would reach Lightning's logger here."""
    import os
    import subprocess
    import sys

    from tests.conftest import REPO

    extra = tmp_path / "conf"
    (extra / "logger").mkdir(parents=True)
    (extra / "logger" / "plain_wandb.yaml").write_text(PLAIN_WANDB)
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_") or k in ("WANDB_MODE", "WANDB_SILENT")}
    proc = subprocess.run([sys.executable, "-m", "slm_sweep", "-m", *FAST_TINY, "method=zeroshot",
                           "dataset.test_limit=2,3", f"hydra.searchpath=[file://{extra}]", "logger=plain_wandb",
                           f"hydra.sweep.dir={tmp_path / 'sweep'}"],
                          cwd=tmp_path, env={**env, "PYTHONPATH": str(REPO), "WANDB_MODE": "offline"},
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = sorted(p.parent for p in (tmp_path / "sweep").glob("*/result.json"))
    assert len(jobs) == 2
    assert [len(list(job.glob("wandb/offline-run-*/*.wandb"))) for job in jobs] == [1, 1]
    assert "There is a wandb run already in progress" not in proc.stderr


def test_a_cell_that_fails_before_its_loggers_start_still_has_a_failed_run(tiny_cfg, tmp_path):
    """Data that cannot be read fails a cell before its loggers start: the dashboard still gets a short run, marked
    failed with the error, so that filtering it by sweep shows every cell."""
    empty = tmp_path / "empty"
    empty.mkdir()
    record = run(tiny_cfg("method=zeroshot", f"dataset.data_dir={empty}", "logger=wandb"), out_dir=tmp_path / "cell")
    assert record["status"] == "failed"
    logged = offline_run(tmp_path / "cell")
    assert logged["summary"]["status"] == "failed" and logged["summary"]["error"] == record["error"]
    assert "status:failed" in logged["run"]["tags"] and "status:completed" not in logged["run"]["tags"]


def test_the_other_ranks_of_a_distributed_cell_get_a_stand_in_logger_where_the_cell_has_loggers():
    from lightning.pytorch.loggers.logger import DummyLogger

    from slm_sweep.tracking import stand_in_loggers

    (stand_in,) = stand_in_loggers({"_target_": "lightning.pytorch.loggers.CSVLogger", "save_dir": None})
    assert isinstance(stand_in, DummyLogger)
    assert stand_in_loggers({"_target_": None}) is None and stand_in_loggers(None) is None


def test_a_callback_that_needs_a_logger_runs_when_w_and_b_is_disabled(requires_data, tmp_path):
    """logger=wandb with W&B disabled leaves the cell no Lightning logger: it gets the stand-in every rank gets, so
    LearningRateMonitor runs (it failed the cell, and under DDP failed rank 0 alone, leaving the others waiting)."""
    record = run(with_lr_monitor(tmp_path, "logger=wandb", "logger.mode=disabled"), out_dir=tmp_path / "cell")
    assert record["status"] == "completed", record.get("error")


def test_a_cell_refused_for_its_logger_settings_builds_no_logger_and_one_refused_otherwise_has_a_run(tiny_cfg,
                                                                                                     tmp_path):
    from slm_sweep.run import _refused_cell

    bad = tiny_cfg("logger=wandb", "logger.mode=bogus")
    record = _refused_cell(bad, tmp_path / "bad", ConfigError("logger.mode='bogus' is not one of: ..."))
    assert record["status"] == "failed" and not (tmp_path / "bad" / "wandb").exists()
    good = tiny_cfg("logger=wandb", "trainer.max_steps=-3")
    record = _refused_cell(good, tmp_path / "good", ConfigError("trainer.max_steps=-3 must be a positive integer"))
    assert record["status"] == "failed"
    assert b"trainer.max_steps=-3" in offline_run_data(tmp_path / "good", b"trainer.max_steps=-3")


def test_a_re_score_s_w_and_b_run_names_the_run_that_trained_its_weights(tiny_cfg, tmp_path, monkeypatch):
    """The training figures a re-score logs (result/train_time_s, ...) were measured by the run that trained the
    weights, on its machine, with its code: the W&B run's provenance says so (trained_in, training_provenance),
    as result.json does, beside the re-scoring run's own hardware and commit."""
    import slm_sweep.evaluate.evaluator as evaluator
    from slm_sweep.tracking import WandbRun

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    common = ("method=lora", "resume.enabled=true", "dataset.test_limit=2")
    cell = tmp_path / "cell"

    def fails(*args, **kwargs):
        raise RuntimeError("evaluation failed")

    monkeypatch.setenv("SLURM_JOB_ID", "trainer-job-111")
    with monkeypatch.context() as patch:
        patch.setattr(evaluator, "evaluate", fails)
        assert run(tiny_cfg(*common), out_dir=cell)["status"] == "failed"
    monkeypatch.setenv("SLURM_JOB_ID", "rescorer-job-222")
    rescored = run(tiny_cfg(*common, "logger=wandb", "logger.mode=offline"), out_dir=cell)
    assert rescored["status"] == "completed" and rescored["trained_in"] == str(cell)
    assert rescored["training_provenance"]["hardware"]["slurm_job_id"] == "trainer-job-111"
    expected = (b"training_provenance", b"trained_in", b"trainer-job-111", b"rescorer-job-222", b"train_time_s")
    data = offline_run_data(cell, *expected)
    for text in expected:
        assert text in data, text

    # a record that learns where its weights were trained after its run started: the run's config is updated
    logger = WandbRun(cell={"model": "tiny", "method": "lora", "dataset": "gsm8k", "seed": 0},
                      config={"seed": 0}, out_dir=tmp_path / "later", mode="offline")
    later = {**rescored, "training_provenance": {**rescored["training_provenance"], "git_commit": "f" * 40}}
    logger.log_result(later, [])
    logger.finish("completed")
    assert logger.provenance["training_provenance"]["git_commit"] == "f" * 40
    assert ("f" * 40).encode() in offline_run_data(tmp_path / "later", ("f" * 40).encode())


def test_a_w_and_b_run_s_provenance_drops_what_the_final_record_no_longer_holds(tmp_path, monkeypatch):
    """A record started with keys it drops later (earlier_attempts of training that did not resume from their
    checkpoint after all; trained_in and training_provenance of kept weights that could not be read and were
    trained again): the run's provenance is the final record's, not naming what did not produce its figures."""
    from slm_sweep.tracking import WandbRun

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    cell = {"model": "tiny", "method": "lora", "dataset": "gsm8k", "seed": 0, "git_commit": "a" * 40,
            "earlier_attempts": [{"status": "interrupted", "checkpoint_step": 2}], "trained_in": "/elsewhere",
            "training_provenance": {"git_commit": "b" * 40}}
    logger = WandbRun(cell=cell, config={"seed": 0}, out_dir=tmp_path / "cell", mode="offline")
    assert logger.run is not None and "earlier_attempts" in logger.run.config["provenance"]
    final = {key: value for key, value in cell.items()
             if key not in ("earlier_attempts", "trained_in", "training_provenance")}
    logger.log_result({**final, "status": "failed", "error": "RuntimeError: boom"}, [])
    provenance = dict(logger.run.config["provenance"])
    logger.finish("failed")
    for gone in ("earlier_attempts", "trained_in", "training_provenance"):
        assert gone not in logger.provenance and gone not in provenance
    assert provenance["git_commit"] == "a" * 40 and provenance["out_dir"] == str((tmp_path / "cell").absolute())


BROKEN_LOGGERS = '''\
from pathlib import Path

from slm_sweep.tracking import CellLogger


class Broken(CellLogger):
    name = "broken"

    def __init__(self, *, cell, config, out_dir):
        pass

    def log_result(self, record, predictions):
        raise RuntimeError("my logger broke in log_result")

    def finish(self, status):
        raise RuntimeError("my logger broke in finish")


class Recorder(CellLogger):
    name = "recorder"

    def __init__(self, *, cell, config, out_dir):
        self.path = Path(out_dir) / "recorder.txt"

    def log_result(self, record, predictions):
        with open(self.path, "a") as f:
            f.write(f"result {record['status']}\\n")

    def finish(self, status):
        with open(self.path, "a") as f:
            f.write(f"finish {status}\\n")
'''

BROKEN_LOGGER_FILE = """\
broken:
  _target_: broken_loggers.Broken
recorder:
  _target_: broken_loggers.Recorder
csv:
  _target_: lightning.pytorch.loggers.CSVLogger
  save_dir: null
  name: csv
  version: ""
"""


def test_a_user_logger_that_raises_leaves_the_sweep_its_summary_and_its_exit_status(requires_data, tmp_path):
    """A CellLogger (README: a logger that also gets the cell and its result) whose log_result and finish raise:
    the error is logged, naming the logger, and goes no further; the cell's other loggers still get the result and
    are closed, and the sweep, whose cells all completed, writes its summary and exits 0 (the error escaped the
    Hydra job: no summary, exit status 1)."""
    import os
    import subprocess
    import sys

    from tests.conftest import REPO

    code = tmp_path / "usercode"
    code.mkdir()
    (code / "broken_loggers.py").write_text(BROKEN_LOGGERS)
    extra = tmp_path / "conf"
    (extra / "logger").mkdir(parents=True)
    (extra / "logger" / "broken.yaml").write_text(BROKEN_LOGGER_FILE)
    sweep = tmp_path / "sweep"
    proc = subprocess.run([sys.executable, "-m", "slm_sweep", "-m", *FAST_TINY, "method=zeroshot",
                           "dataset.test_limit=2,3", f"hydra.searchpath=[file://{extra}]", "logger=broken",
                           f"hydra.sweep.dir={sweep}"],
                          cwd=tmp_path, env={**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{code}"},
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = sorted(p.parent for p in sweep.glob("*/result.json"))
    assert len(jobs) == 2
    for job in jobs:
        assert read_result(job)["status"] == "completed"
        assert (job / "recorder.txt").read_text() == "result completed\nfinish completed\n"
        with open(job / "csv" / "metrics.csv", newline="") as f:
            assert any(row.get("eval/accuracy_flexible") for row in csv.DictReader(f))
    assert (sweep / "summary.md").is_file()
    output = proc.stdout + proc.stderr
    assert output.count("logging the result to logger broken (broken_loggers.Broken) failed") == 2
    assert output.count("closing logger broken (broken_loggers.Broken) failed") == 2
    assert "my logger broke in log_result" in output and "my logger broke in finish" in output
