"""Learning-rate tuning: a grid search on the validation split, the table the tune command writes from it, and
cells that read their rate from that table (tuning.lr=tuned)."""

from __future__ import annotations

import csv
import json
import math
import re
import shutil
import subprocess
import sys

import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.utils import get_class
from omegaconf import open_dict

from slm_sweep.config import ConfigError, validate_config
from slm_sweep.run import run
from slm_sweep.tune.cell_rate import resolve_lr
from slm_sweep.tune.choose import choose
from slm_sweep.tune.cli import main
from slm_sweep.tune.table import TuningError, render
from tests.conftest import CONF_DIR, DATA_ROOT, FAST_TINY, REPO
from tests.test_sweep import SWEEP_SETTINGS, env

GRID = {"full": [1.0e-5, 1.0e-3], "lora": [1.0e-4, 1.0e-2]}


@pytest.mark.slow  # a 4-cell multirun in a subprocess, then a cell: about a minute on 2 cores
def test_lr_grid_over_full_and_lora_gives_a_table_that_a_tuned_cell_trains_with(requires_data, tmp_path):
    sweep = tmp_path / "search"
    args = ["-m", *SWEEP_SETTINGS, "hparams_search=lr_grid", "method=full,lora", "trainer.max_steps=2",
            "dataset.test_limit=2", f"+tuning.lr_grid.full=[{GRID['full'][0]},{GRID['full'][1]}]",
            f"+tuning.lr_grid.lora=[{GRID['lora'][0]},{GRID['lora'][1]}]",
            "tuning.lr_candidate=0,1", f"hydra.sweep.dir={sweep}"]
    proc = subprocess.run([sys.executable, "-m", "slm_sweep", *args], cwd=tmp_path, env=env(), capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    cells = [json.loads(p.read_text()) for p in sorted(sweep.glob("*/result.json"))]
    assert len(cells) == 4 and all(c["status"] == "completed" for c in cells)
    searched = {(c["method"], c["learning_rate"]["value"]) for c in cells}
    assert searched == {(m, lr) for m, rates in GRID.items() for lr in rates}
    for cell in cells:
        assert cell["learning_rate"]["source"] == "grid"
        assert cell["config"]["method"]["lr"] == cell["learning_rate"]["value"]
        metrics = cell["metrics"]
        assert metrics["val_n_eval"] == 8 and "accuracy_flexible" not in metrics  # never the test split
    for cell, folder in zip(cells, sorted(p.parent for p in sweep.glob("*/result.json"))):
        index = cell["config"]["tuning"]["lr_candidate"]
        assert f"-lr-candidate{index}-" in folder.name
        assert cell["learning_rate"]["candidates"][index] == cell["learning_rate"]["value"]

    table_file = tmp_path / "lr.yaml"
    # 8 validation questions cannot tell rates apart: refused unless asked for
    assert main([str(sweep), "--out", str(table_file)]) == 2 and not table_file.exists()
    assert main([str(sweep), "--out", str(table_file), "--min-val-examples", "8"]) == 0
    table = yaml.safe_load(table_file.read_text())
    assert table["metric"] == "claims_metric" and table["searches"] == [str(sweep)]
    for method, rates in GRID.items():
        runs = {c["learning_rate"]["value"]: c["metrics"] for c in cells if c["method"] == method}
        # highest validation accuracy; a tie goes to the lower validation loss, then to the smaller rate
        best = min(rates, key=lambda lr: (-runs[lr]["val_accuracy_flexible"], runs[lr]["val_loss"], lr))
        assert table["lr"]["gsm8k"]["tiny"][method] == best
        entry = table["searched"]["gsm8k"]["tiny"][method]
        assert entry["val_examples"] == 8 and entry["best"] == runs[best]["val_accuracy_flexible"]
        assert {c["lr"]: c["val_accuracy_flexible"] for c in entry["candidates"]} == \
            {lr: runs[lr]["val_accuracy_flexible"] for lr in rates}

    from tests.conftest import compose_config

    assert table["searched"]["gsm8k"]["tiny"]["lora"]["trained_with"]["trainer.max_steps"] == 2
    # the rate was searched at 2 steps: a cell of 1 step is refused before it loads anything, one of 2 trains
    with pytest.raises(ConfigError, match=r"trainer.max_steps: searched 2, here 1"):
        validate_config(compose_config([*FAST_TINY, "method=lora", "trainer.max_steps=1", "tuning.lr=tuned",
                                         "eval.dtype=float32", f"tuning.table={table_file}"]))
    # the search scored in float32 (hparams_search=lr_grid), as the paper's cells do
    cfg = compose_config([*FAST_TINY, "method=lora", "trainer.max_steps=2", "dataset.test_limit=2",
                          "tuning.lr=tuned", "eval.dtype=float32", f"tuning.table={table_file}"])
    record = run(cfg, out_dir=tmp_path / "tuned")
    assert record["status"] == "completed", record.get("error")
    tuned = table["lr"]["gsm8k"]["tiny"]["lora"]
    saved = json.loads((tmp_path / "tuned" / "result.json").read_text())
    assert saved["learning_rate"]["value"] == tuned and saved["learning_rate"]["source"] == "tuned"
    assert str(table_file) in saved["learning_rate"]["detail"]
    assert saved["config"]["method"]["lr"] == tuned


def write_table(path, text: str):
    path.write_text(text)
    return path


def sha256(path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("method, candidate", [("full", 3), ("lora", 0), ("dora", 4)])
def test_the_grid_gives_each_method_its_own_candidates(tiny_cfg, method, candidate):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[*FAST_TINY, f"method={method}", "hparams_search=lr_grid",
                                                       f"tuning.lr_candidate={candidate}"], return_hydra_config=True)
    assert cfg.hydra.sweeper.params["tuning.lr_candidate"] == "range(5)" and cfg.eval.split == "val"
    default = tiny_cfg(f"method={method}").method.lr
    grid = {"full": [5e-6, 1e-5, 2e-5, 5e-5, 1e-4]}.get(method, [5e-5, 1e-4, 2e-4, 5e-4, 1e-3])
    assert grid[2] == default
    with open_dict(cfg):
        del cfg["hydra"]
    validate_config(cfg)
    assert resolve_lr(cfg) == {"value": grid[candidate], "source": "grid", "candidates": grid,
                               "detail": f"tuning.lr_grid.{method}[{candidate}]"}
    assert cfg.method.lr == grid[candidate] and list(cfg.tuning.lr_grid[method]) == grid
    assert resolve_lr(cfg)["value"] == grid[candidate]  # resolving again picks the same rate


@pytest.mark.parametrize("lr, grid", [(2e-4, [5e-5, 1e-4, 2e-4, 5e-4, 1e-3]), (1e-3, [2e-4, 5e-4, 1e-3, 2e-3, 5e-3]),
                                      (3e-4, [1e-4, 2e-4, 3e-4, 5e-4, 1e-3]), (5e-6, [1e-6, 2e-6, 5e-6, 1e-5, 2e-5]),
                                      (9.99e-5, [2e-5, 5e-5, 9.99e-5, 2e-4, 5e-4])])  # no near-duplicate 1e-4
def test_a_grid_is_the_1_2_5_series_around_the_rate(lr, grid):
    from slm_sweep.tune.cell_rate import lr_grid

    assert lr_grid(lr) == grid


def test_a_tuned_cell_trains_at_the_table_rate_and_records_where_it_came_from(tiny_cfg, tmp_path):
    table = write_table(tmp_path / "lr.yaml", "lr: {gsm8k: {tiny: {lora: 3.0e-4}}}\n")
    record = run(tiny_cfg("method=lora", "trainer.max_steps=1", "trainer.warmup_steps=10", "dataset.test_limit=2",
                          "tuning.lr=tuned",
                          f"tuning.table={table}", "logger=csv"), out_dir=tmp_path / "cell")
    assert record["status"] == "completed", record.get("error")
    saved = json.loads((tmp_path / "cell" / "result.json").read_text())
    # a table written by hand: taken (tuning.on_missing=method), and result.json says nothing records its search
    assert saved["learning_rate"] == {
        "value": 3.0e-4, "source": "tuned", "table": str(table), "table_sha256": sha256(table), "searches": [],
        "detail": f"lr.gsm8k.tiny.lora in {table} (no search record: searched.gsm8k.tiny.lora lacks metric, seeds, "
                  "trained_with)"}
    assert saved["config"]["method"]["lr"] == 3.0e-4 and saved["config"]["tuning"]["lr"] == "tuned"
    with open(tmp_path / "cell" / "csv" / "metrics.csv", newline="") as f:
        logged = [float(r["train/lr"]) for r in csv.DictReader(f) if r.get("train/lr")]
    # the first steps of the linear warm-up toward the tuned rate (k/10 of it), not toward method.lr's 2e-4
    assert logged and all(any(math.isclose(v, 3.0e-4 * k / 10) for k in (1, 2)) for v in logged)


def test_a_rate_given_on_the_command_line_is_not_silently_replaced_by_the_tuned_one(tmp_path):
    """``experiment=paper method.lr=1e-3`` (tuning.lr=tuned) trained at the table's rate without a word."""
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig

    from slm_sweep.config import ConfigError
    from slm_sweep.tune.cell_rate import resolve_lr
    from tests.conftest import CONF_DIR

    table = write_table(tmp_path / "lr.yaml", "lr: {gsm8k: {tiny: {lora: 3.0e-4}}}\n")
    for overrides, refused in ((["method.lr=1e-3"], True), ([], False)):
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose("config", overrides=["model=tiny", "method=lora", "tuning.lr=tuned",
                                               f"tuning.table={table}", *overrides], return_hydra_config=True)
        HydraConfig.instance().set_config(cfg)
        try:
            if refused:
                with pytest.raises(ConfigError, match="method.lr=1e-3 is given on the command line, but "
                                                      "tuning.lr=tuned takes the rate from the tuned table"):
                    resolve_lr(cfg)
            else:
                assert resolve_lr(cfg)["value"] == 3.0e-4
        finally:
            HydraConfig.instance().cfg = None


def test_a_tuned_cell_without_an_entry_keeps_method_lr_and_says_so(tiny_cfg, tmp_path):
    table = write_table(tmp_path / "lr.yaml", "lr: {gsm8k: {tiny: {lora: 3.0e-4}}}\n")
    cfg = tiny_cfg("method=full", "tuning.lr=tuned", f"tuning.table={table}")
    validate_config(cfg)
    choice = resolve_lr(cfg)
    assert choice["value"] == cfg.method.lr == 2.0e-5 and choice["source"] == "method"
    assert f"no tuned learning rate for gsm8k/tiny/full in {table}" in choice["detail"]
    lora = tiny_cfg("method=lora", "tuning.lr=tuned", f"tuning.table={table}")
    assert resolve_lr(lora)["value"] == lora.method.lr == 3.0e-4
    # a method that trains nothing has no learning rate, tuned or not
    assert resolve_lr(tiny_cfg("method=zeroshot", "tuning.lr=tuned", f"tuning.table={table}")) is None
    # that fallback is tuning.on_missing=method, the default; refuse stops the cell without an entry instead
    assert cfg.tuning.on_missing == "method"
    assert resolve_lr(tiny_cfg("method=full", "tuning.lr=tuned", "tuning.on_missing=method",
                               f"tuning.table={table}"))["source"] == "method"
    strict = ("tuning.lr=tuned", "tuning.on_missing=refuse", f"tuning.table={table}")
    with pytest.raises(ConfigError, match=rf"{table} has no learning rate lr.gsm8k.tiny.full"):
        validate_config(tiny_cfg("method=full", *strict))
    with pytest.raises(ConfigError, match=r"the rate lr.gsm8k.tiny.lora in .* has no search record"):
        validate_config(tiny_cfg("method=lora", *strict))  # it has one for lora, but none records its search
    validate_config(tiny_cfg("method=zeroshot", *strict))  # and a baseline needs none


def test_the_shipped_table_parses_and_the_paper_reads_it(tiny_cfg):
    cfg = tiny_cfg("method=dora", "tuning.lr=tuned")
    validate_config(cfg)
    assert resolve_lr(cfg)["source"] in ("tuned", "method")


RATE = "lr: {gsm8k: {tiny: {lora: 1.0e-4}}}\n"


@pytest.mark.parametrize("text, message", [
    ("lr: {gsm8k: {tiny: {lora: fast}}}\n", "lr.gsm8k.tiny.lora='fast' must be a positive number"),
    ("lr: {gsm8k: {tiny: {lora: -1.0e-4}}}\n", "lr.gsm8k.tiny.lora=-0.0001 must be a positive number"),
    ("lr: {gsm8k: {tiny: {lora: 0}}}\n", "lr.gsm8k.tiny.lora=0 must be a positive number"),
    ("lr: {gsm8k: {tiny: {lora: true}}}\n", "lr.gsm8k.tiny.lora=True must be a positive number"),
    ("lr: {gsm8k: {tiny: {lora: .nan}}}\n", "lr.gsm8k.tiny.lora=nan must be a positive number"),
    ("lr: {gsm8k: {tiny: [1.0e-4]}}\n", "lr.gsm8k.tiny must map each method to its learning rate"),
    ("lr: 3.0e-4\n", "lr must map each dataset to a mapping of models"),
    ("- 3.0e-4\n", "must be a mapping with an 'lr' key"),
    # the search records the guards of a tuned cell read: the wrong shape names its key, not an AttributeError
    (f"{RATE}searched: [1, 2]\n", "searched must map each dataset to a mapping of models, not [1, 2]"),
    (f"{RATE}searched: {{gsm8k: 5}}\n", "searched.gsm8k must map each model to a mapping of methods, not 5"),
    (f"{RATE}searched: {{gsm8k: {{tiny: 5}}}}\n", "searched.gsm8k.tiny must map each method to its search record"),
    (f"{RATE}searched: {{gsm8k: {{tiny: {{lora: {{metric: val_accuracy_flexible, best: 0.3, candidates: 5}}}}}}}}\n",
     "searched.gsm8k.tiny.lora.candidates=5 must be a list"),
    (f"{RATE}searched: {{gsm8k: {{tiny: {{lora: {{candidates: [5]}}}}}}}}\n",
     "searched.gsm8k.tiny.lora.candidates[0]=5 must be a mapping"),
    (f"{RATE}searches: multirun/x\n", "searches='multirun/x' must be a list"),
])
def test_bad_table_values_fail_before_anything_loads_naming_the_file_and_key(tiny_cfg, tmp_path, text, message):
    table = write_table(tmp_path / "lr.yaml", text)
    cfg = tiny_cfg("method=lora", "tuning.lr=tuned", f"tuning.table={table}")
    with pytest.raises(ConfigError, match="tuning.table") as err:
        validate_config(cfg)
    assert message in str(err.value) and str(table) in str(err.value)


def test_a_missing_table_says_how_to_write_it(tiny_cfg, tmp_path):
    cfg = tiny_cfg("method=lora", "tuning.lr=tuned", f"tuning.table={tmp_path / 'none.yaml'}")
    with pytest.raises(ConfigError, match="does not exist: write it with `python -m slm_sweep.tune"):
        validate_config(cfg)


@pytest.mark.parametrize("overrides, message", [
    (["method=zeroshot", "+tuning.lr_candidate=0", "+tuning.lr_grid={lora: [1e-4]}"], "trains nothing"),
    (["method=full", "+tuning.lr_candidate=5", "+tuning.lr_grid={lora: [1e-4]}"],
     "tuning.lr_candidate=5 must be an index into the grid around method.lr=2e-05, which has 5 candidates"),
    (["method=full", "+tuning.lr_candidate=0", "method.lr=0"], "method.lr=0 must be a positive number"),
    (["method=lora", "+tuning.lr_candidate=2", "+tuning.lr_grid={lora: [1e-4, 2e-4]}"],
     "tuning.lr_candidate=2 must be an index into tuning.lr_grid.lora, which has 2 candidates (0 to 1)"),
    (["method=lora", "+tuning.lr_candidate=0", "+tuning.lr_grid={lora: [x]}"],
     "tuning.lr_grid.lora[0]='x' must be a positive number"),
    # one candidate without brackets, and a string: no list, named as such (not a TypeError, nor split into letters)
    (["method=lora", "+tuning.lr_candidate=0", "+tuning.lr_grid.lora=3e-4"],
     "tuning.lr_grid.lora=0.0003 must be a list of positive learning rates"),
    (["method=lora", "+tuning.lr_candidate=0", "+tuning.lr_grid.lora=abc"],
     "tuning.lr_grid.lora='abc' must be a list of positive learning rates"),
    (["method=lora", "+tuning.lr_candidate=0", "+tuning.lr_grid=3"],
     "tuning.lr_grid=3 must map each method to a list of positive learning rates"),
    (["method=lora", "+tuning.lr_candidate=0", "+tuning.lr_grid={lora: [1e-4]}", "tuning.lr=tuned"],
     "tuning.lr=tuned cannot be combined with a learning-rate search"),
    (["method=lora", "tuning.lr=best"], "tuning.lr='best' is not one of: method, tuned"),
    (["method=lora", "tuning.on_missing=skip"], "tuning.on_missing='skip' is not one of: method, refuse"),
    (["method=zeroshot", "tuning.on_missing=true"], "tuning.on_missing=True is not one of: method, refuse"),
    # a misspelt method's candidates would go unused, the grid around method.lr searched in their place
    (["method=lora", "+tuning.lr_candidate=0", "+tuning.lr_grid={lroa: [1e-4, 3e-4]}"],
     "tuning.lr_grid has candidates for 'lroa', which is no method; one of: adalora, dora, fewshot"),
])
def test_bad_search_settings_name_the_value(tiny_cfg, overrides, message):
    with pytest.raises(ConfigError) as err:
        validate_config(tiny_cfg(*overrides))
    assert message in str(err.value)


def test_every_trained_method_has_grid_candidates_and_a_new_one_needs_no_more_than_its_file(tiny_cfg, tmp_path):
    from slm_sweep.config_sources import group_options

    for method in group_options("method"):
        cfg = tiny_cfg(f"method={method}", "hparams_search=lr_grid", "tuning.lr_candidate=4")
        if cfg.method.train:
            validate_config(cfg)
            rate = cfg.method.lr
            assert resolve_lr(cfg)["candidates"][2] == rate and len(cfg.tuning.lr_grid[method]) == 5, method
    (tmp_path / "method").mkdir()
    (tmp_path / "method" / "lora_r32.yaml").write_text("defaults:\n  - lora\n  - _self_\nname: lora_r32\nr: 32\n")
    searchpath = f"hydra.searchpath=[file://{tmp_path}]"
    cfg = tiny_cfg(searchpath, "method=lora_r32", "hparams_search=lr_grid", "tuning.lr_candidate=3")
    validate_config(cfg)
    assert resolve_lr(cfg)["value"] == cfg.method.lr == 5e-4  # the fourth of five around lora's 2e-4


def searched_code() -> dict:
    """What the training key of a search cell run here says of its code: the version, and the sources' hash where
    they differ from the version's."""
    from slm_sweep.identity import (
        TRAINING_CODE_VERSION,
        TRAINING_SOURCES,
        TRAINING_SOURCES_SHA256,
        edited_sources,
    )

    edited = edited_sources(TRAINING_SOURCES, TRAINING_SOURCES_SHA256, TRAINING_CODE_VERSION)
    return {"code": TRAINING_CODE_VERSION, **({"edited_sources": edited} if edited else {})}


def searched_as(record: dict, cfg, lr: float, **training) -> dict:
    """``record`` as a search cell of ``cfg`` at rate ``lr`` writes it: the cell's config with the validation split
    scored, and its training key's parts: the code's (``searched_code``), and ``training``."""
    from slm_sweep.tune.trained_with import cell_config

    config = cell_config(cfg)
    config = {**config, "eval": {**config["eval"], "split": "val"}, "method": {**config["method"], "lr": lr}}
    return {**record, "config": config, "identity": {"parts": {"training": {**searched_code(), **training}}}}


def _record(method, lr, accuracy, val_loss=1.0, n_val=500, seed=0, status="completed", **config):
    return {"dataset": "gsm8k", "model": "m", "method": method, "seed": seed, "status": status,
            "learning_rate": {"value": lr},
            "metrics": {"val_accuracy_flexible": accuracy, "val_loss": val_loss, "val_n_eval": n_val},
            "config": {"method": {"name": method, "train": True, "lr": lr, **config}, "eval": {"split": "val"}}}


def test_choosing_averages_seeds_and_breaks_ties_by_validation_loss_then_the_smaller_rate(caplog):
    chosen = choose([_record("lora", 1e-4, 0.30), _record("lora", 1e-4, 0.40, seed=1),  # mean 0.35
                     _record("lora", 2e-4, 0.35, val_loss=0.9), _record("lora", 2e-4, 0.35, val_loss=0.9, seed=1),
                     _record("lora", 5e-4, 0.1, status="diverged"), _record("lora", 5e-4, 0.1, seed=1),
                     _record("full", 1e-5, 0.2), _record("full", 2e-5, 0.2)])
    lora, full = chosen["gsm8k", "m", "lora"], chosen["gsm8k", "m", "full"]
    assert lora["lr"] == 2e-4 and math.isclose(lora["best"], 0.35)
    assert [c["seeds"] for c in lora["candidates"]] == [2, 2, 1]
    assert lora["candidates"][2]["not_completed"] == ["diverged"]
    # the edge is that of the rates compared: 5e-4 lost a seed, so 2e-4 is the largest
    assert lora["candidates"][1]["at_edge"] == "largest"
    assert full["lr"] == 1e-5 and full["candidates"][0]["at_edge"] == "smallest"
    assert "the chosen rate 1e-05 is the smallest compared" in caplog.text


def test_a_rate_that_is_the_only_one_compared_is_marked_at_an_edge(caplog):
    chosen = choose([_record("full", 5e-6, 0.2), _record("full", 1e-5, 0.3, status="failed"),
                     _record("full", 2e-5, 0.1, status="diverged")])
    full = chosen["gsm8k", "m", "full"]
    assert full["lr"] == 5e-6 and full["candidates"][0]["at_edge"] == "only"
    assert "only one learning rate (5e-06) could be compared" in caplog.text


def test_a_rate_that_kept_a_seed_only_by_training_it_again_after_it_diverged_is_no_candidate(caplog):
    """A retry that completed (resume.retry_diverged) keeps the lucky run: the rate is as unstable as one that lost
    the seed."""
    retried = {**_record("lora", 1e-3, 0.50, seed=1),
               "retried_divergence": {"result_path": "x/superseded/result.json", "error": "training loss is nan"}}
    chosen = choose([*(_record("lora", 1e-4, 0.30, seed=s) for s in range(2)), _record("lora", 1e-3, 0.45), retried])
    lora = chosen["gsm8k", "m", "lora"]
    assert lora["lr"] == 1e-4
    assert lora["candidates"][1]["not_eligible"] == "seeds completed on a retry after diverging: 1"
    assert "lr 0.001 is not a candidate (seeds completed on a retry after diverging: 1)" in caplog.text


def test_a_rate_that_lost_seeds_is_no_candidate_however_well_its_survivors_scored(caplog):
    """Averaging only the seeds a rate did not lose would favour unstable rates."""
    chosen = choose([*(_record("lora", 1e-4, 0.30, seed=s) for s in range(3)),
                     _record("lora", 1e-3, 0.33), _record("lora", 1e-3, 0.0, seed=1, status="diverged"),
                     _record("lora", 1e-3, 0.0, seed=2, status="diverged"),
                     _record("lora", 3e-5, 0.40)])  # one seed of three run
    lora = chosen["gsm8k", "m", "lora"]
    assert lora["lr"] == 1e-4
    reasons = {c["lr"]: c.get("not_eligible") for c in lora["candidates"]}
    assert reasons == {3e-5: "seeds not run: 1, 2", 1e-4: None, 1e-3: "seeds not completed: diverged"}
    assert "lr 0.001 is not a candidate (seeds not completed: diverged)" in caplog.text
    with pytest.raises(TuningError, match="hold seed\\(s\\) 0 of lr 0.0001 more than once"):
        choose([_record("lora", 1e-4, 0.3), _record("lora", 1e-4, 0.31), _record("lora", 2e-4, 0.3)])


def test_each_dataset_is_searched_on_its_claims_metric_and_the_winners_lead_is_recorded(caplog):
    """OrcaMath's claims read the lenient score: its rate is chosen on that, not on flexible, unless --metric says
    otherwise. The lead over the runner-up is recorded with its standard error; a lead within two of them is
    flagged, since the search did not separate the two rates."""
    def orca(lr, flexible, lenient, seed=0):
        record = _record("lora", lr, flexible, seed=seed)
        record["dataset"] = "orcamath"
        record["metrics"]["val_accuracy_lenient"] = lenient
        record["config"]["dataset"] = {"name": "orcamath", "claims_metric": "lenient"}
        return record

    cells = [orca(1e-4, 0.40, 0.30), orca(2e-4, 0.20, 0.50), orca(5e-4, 0.10, 0.46),
             _record("lora", 1e-4, 0.30), _record("lora", 2e-4, 0.38)]
    chosen = choose(cells)
    orcamath, gsm8k = chosen["orcamath", "m", "lora"], chosen["gsm8k", "m", "lora"]
    assert orcamath["lr"] == 2e-4 and orcamath["metric"] == "val_accuracy_lenient"
    assert gsm8k["lr"] == 2e-4 and gsm8k["metric"] == "val_accuracy_flexible"
    assert choose(cells, "val_accuracy_flexible")["orcamath", "m", "lora"]["lr"] == 1e-4
    # 0.50 against 0.46 on 500 questions: a lead of 4 points, standard error sqrt((.25 + .2484) / 500) = 3.2
    assert orcamath["runner_up"] == 5e-4 and math.isclose(orcamath["margin"], 0.04)
    assert math.isclose(orcamath["margin_se"], math.sqrt((0.25 + 0.46 * 0.54) / 500), rel_tol=1e-5)
    assert orcamath["within_noise"] is True
    assert "orcamath/m/lora: the chosen rate 0.0002 leads the runner-up 0.0005 by 4.0 points" in caplog.text
    assert gsm8k["margin"] == pytest.approx(0.08) and "within_noise" not in gsm8k  # 8 points, SE 3.0
    assert "4.0 ± 3.2 points over 0.0005: within noise" in render(chosen)


def test_equal_counts_of_correct_answers_tie_whatever_the_float_rounding():
    """(140, 143, 144) and (144, 143, 140) of 497: the float means differ in the last place; the tie goes to the
    lower validation loss."""
    one = [_record("lora", 1e-4, k / 497, val_loss=1.2, n_val=497, seed=s) for s, k in enumerate((140, 143, 144))]
    two = [_record("lora", 2e-4, k / 497, val_loss=1.1, n_val=497, seed=s) for s, k in enumerate((144, 143, 140))]
    assert choose([*one, *two], min_val_examples=497)["gsm8k", "m", "lora"]["lr"] == 2e-4


def test_choosing_refuses_candidates_that_differ_in_more_than_the_rate():
    with pytest.raises(TuningError, match=r"gsm8k/m/lora differ in more than the learning rate \(method.r: 16, 8"):
        choose([_record("lora", 1e-4, 0.3, r=8), _record("lora", 2e-4, 0.3, r=16)])
    with pytest.raises(TuningError, match="validation sets of different sizes"):
        choose([_record("lora", 1e-4, 0.3), _record("lora", 2e-4, 0.3, n_val=600)])


def test_the_tune_command_keeps_other_entries_of_the_table(tmp_path):
    for i, (method, lr, accuracy) in enumerate([("lora", 1e-4, 0.2), ("lora", 2e-4, 0.3)]):
        cell = tmp_path / "search" / str(i)
        cell.mkdir(parents=True)
        record = {**_record(method, lr, accuracy), "schema_version": 1, "error": None, "eval_sets": {},
                  "identity": {"evaluation_key": f"k{i}"}, "finished_at": "2026-01-01T00:00:00+00:00"}
        (cell / "result.json").write_text(json.dumps(record))
    table = write_table(tmp_path / "lr.yaml", "lr: {orcamath: {m: {full: 1.0e-5}}}\n")
    assert main([str(tmp_path / "search"), "--out", str(table)]) == 0
    data = yaml.safe_load(table.read_text())
    assert data["lr"] == {"orcamath": {"m": {"full": 1e-5}}, "gsm8k": {"m": {"lora": 2e-4}}}
    proc = subprocess.run([sys.executable, "-m", "slm_sweep.tune", str(tmp_path / "nowhere")], cwd=REPO,
                          env=env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "does not exist" in proc.stderr


def test_optuna_searches_the_rate_of_every_method_and_optuna_rank_adds_the_rank(tiny_cfg):
    def sweep_params(*overrides):
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose(config_name="config", overrides=[*FAST_TINY, *overrides], return_hydra_config=True)
        # every trial is scored on the validation split, never on the test split
        assert cfg.eval.split == "val" and cfg.optimized_metric.startswith("val_")
        assert get_class(cfg.hydra.sweeper._target_).__name__ == "OptunaSweeper"
        return dict(cfg.hydra.sweeper.params)

    assert set(sweep_params("hparams_search=optuna", "method=full")) == {"method.lr"}
    assert set(sweep_params("hparams_search=optuna_rank", "method=lora")) == {"method.lr", "method.r"}


def test_a_tuned_rate_is_refused_for_a_cell_trained_otherwise_than_its_search(tiny_cfg, tmp_path):
    """The table records what each rate was searched under; a cell with another step count, rank or precision
    would train at a rate tuned for something else while its result.json says source: tuned."""
    from slm_sweep.identity import TRAINING_CODE_VERSION
    from slm_sweep.tune.table import write_table as write_lr_table
    from slm_sweep.tune.trained_with import cell_config, tuned_under

    searched = tiny_cfg("method=lora", "trainer.max_steps=3")
    records = [{**searched_as(_record("lora", lr, accuracy, n_val=8, seed=1000), searched, lr), "model": "tiny"}
               for lr, accuracy in ((1e-4, 0.3), (2e-4, 0.4))]
    chosen = choose(records, min_val_examples=8)
    trained_with = chosen["gsm8k", "tiny", "lora"]["trained_with"]
    assert trained_with == tuned_under({"config": cell_config(searched), "identity": records[0]["identity"]})
    assert trained_with["code.training"] == TRAINING_CODE_VERSION and trained_with["eval.dtype"] == "auto"
    table = write_lr_table(chosen, tmp_path / "lr.yaml", ["search"], "val_accuracy_flexible")
    assert "trainer.max_steps" in yaml.safe_load(table.read_text())["searched"]["gsm8k"]["tiny"]["lora"]["trained_with"]

    same = tiny_cfg("method=lora", "trainer.max_steps=3", "dataset.test_limit=2", "eval.ood_sets=[svamp]",
                    "tuning.lr=tuned", f"tuning.table={table}")
    validate_config(same)  # other test settings: the same training and scoring, accepted
    # the style auto renders for this tokenizer, spelt out: the same configuration
    validate_config(tiny_cfg("method=lora", "trainer.max_steps=3", "prompt.style=chat", "tuning.lr=tuned",
                             f"tuning.table={table}"))
    assert resolve_lr(same)["value"] == same.method.lr == 2e-4
    for overrides, named in ((["trainer.max_steps=30"], "trainer.max_steps: searched 3, here 30"),
                             (["method.r=4"], "method.peft.r: searched 16, here 4; method.r: searched 16, here 4"),
                             (["dataset.train_limit=40"], "dataset.train_limit: searched 48, here 40"),
                             # another model under the same name: other weights, other shape, other dtype
                             (["model.init_seed=7"], "model.init_seed: searched 0, here 7"),
                             (["model.hidden_size=64"], "model.hidden_size: searched 48, here 64"),
                             (["model.dtype=bfloat16"], 'model.dtype: searched "float32", here "bfloat16"'),
                             (["dataset.dedup.enabled=false"], "dataset.dedup.against: searched .*, here null"),
                             (["prompt.style=plain"], 'prompt.style: searched "auto", here "plain"'),
                             # the scoring the rates were compared by
                             (["eval.dtype=float32"], 'eval.dtype: searched "auto", here "float32"'),
                             (["eval.max_new_tokens=8"], "eval.max_new_tokens: searched 12, here 8"),
                             # a callback that changes the weights
                             (["+callbacks.swa._target_=lightning.pytorch.callbacks.StochasticWeightAveraging",
                               "+callbacks.swa.swa_lrs=0.01"], "callbacks.swa._target_: searched null")):
        with pytest.raises(ConfigError, match=rf"lr.gsm8k.tiny.lora in {table} was searched under other "
                                              rf"training settings than this cell's \({named}"):
            validate_config(tiny_cfg("method=lora", "trainer.max_steps=3", *overrides, "tuning.lr=tuned",
                                     f"tuning.table={table}"))
    # a table written before the model and deduplication settings were recorded is checked without them
    older = yaml.safe_load(table.read_text())
    recorded = older["searched"]["gsm8k"]["tiny"]["lora"]["trained_with"]
    older["searched"]["gsm8k"]["tiny"]["lora"]["trained_with"] = {
        k: v for k, v in recorded.items() if not k.startswith(("model.", "dataset.dedup."))}
    table.write_text(yaml.safe_dump(older))
    validate_config(tiny_cfg("method=lora", "trainer.max_steps=3", "model.init_seed=7", "tuning.lr=tuned",
                             f"tuning.table={table}"))
    # and one written before the code version, scoring and callbacks were, without those
    older["searched"]["gsm8k"]["tiny"]["lora"]["trained_with"] = {
        k: v for k, v in recorded.items() if not k.startswith(("code.", "callbacks.", "eval.", "dataset.test_size"))}
    table.write_text(yaml.safe_dump(older))
    validate_config(tiny_cfg("method=lora", "trainer.max_steps=3", "eval.max_new_tokens=8", "tuning.lr=tuned",
                             f"tuning.table={table}"))
    # a rate searched under another version of the training code is another search's
    older["searched"]["gsm8k"]["tiny"]["lora"]["trained_with"] = {**recorded, "code.training": TRAINING_CODE_VERSION - 1}
    table.write_text(yaml.safe_dump(older))
    with pytest.raises(ConfigError, match=f"code.training: searched {TRAINING_CODE_VERSION - 1}, here "
                                          f"{TRAINING_CODE_VERSION}"):
        validate_config(tiny_cfg("method=lora", "trainer.max_steps=3", "tuning.lr=tuned", f"tuning.table={table}"))


def test_a_tuned_rate_is_refused_for_a_cell_whose_data_files_changed_since_the_search(tiny_cfg, tmp_path):
    """The settings can match while the files do not (a data folder replaced or edited since the search): the
    table records the examples searched on (count and content hash) and the cell compares them with the ones it
    loaded, before it trains."""
    from omegaconf import OmegaConf

    from slm_sweep.run import identify, load_data
    from slm_sweep.tune.table import write_table as write_lr_table

    def cell(*overrides):
        return tiny_cfg("method=lora", "trainer.max_steps=2", "dataset.test_limit=2", *overrides)

    searched = cell()
    examples = identify(searched, OmegaConf.to_container(searched, resolve=True), load_data(searched))
    records = [{**searched_as(_record("lora", lr, accuracy, n_val=8, seed=1000), searched, lr), "model": "tiny"}
               for lr, accuracy in ((1e-4, 0.3), (2e-4, 0.4))]
    for record in records:
        record["identity"]["parts"]["training"]["data"] = examples.parts["training"]["data"]
    table = write_lr_table(choose(records, min_val_examples=8), tmp_path / "lr.yaml", ["search"], None)
    trained_with = yaml.safe_load(table.read_text())["searched"]["gsm8k"]["tiny"]["lora"]["trained_with"]
    assert trained_with["data.train"] == examples.parts["training"]["data"]["train"]

    same = run(cell("tuning.lr=tuned", f"tuning.table={table}"), out_dir=tmp_path / "same")
    assert same["status"] == "completed" and same["learning_rate"]["source"] == "tuned", same.get("error")
    assert same["learning_rate"]["margin"] == pytest.approx(0.1)

    edited = tmp_path / "gsm8k"
    edited.mkdir()
    source = DATA_ROOT / "gsm8k"
    shutil.copy(source / "test.jsonl", edited / "test.jsonl")
    with open(source / "train.jsonl") as f, open(edited / "train.jsonl", "w") as out:
        for line in f:
            row = json.loads(line)
            out.write(json.dumps({**row, "question": row["question"] + " Show your work."}) + "\n")
    changed = run(cell("tuning.lr=tuned", f"tuning.table={table}", f"dataset.data_dir={edited}"),
                  out_dir=tmp_path / "changed")
    assert changed["status"] == "failed"
    assert re.search(r"lr.gsm8k.tiny.lora in .* was searched on other examples than this cell loaded "
                     r'\(data.train: searched "48:\w+", here "48:\w+"; data.val: searched "8:', changed["error"])
    assert changed["metrics"].get("train_steps") in (None, 0) and not (tmp_path / "changed" / "checkpoints").exists()


def test_a_tuned_rate_follows_the_weights_searched_on_not_the_folder_they_were_read_from(tiny_cfg, tmp_path):
    """The training key names a model by the weights it resolves to (a hub commit, a folder's content hash), not by
    where they sit, and so does the table: other weights in the searched folder (retrained in place, a hub branch
    moved on) are refused once the cell has resolved them, the same weights copied elsewhere are taken, and search
    cells that resolved to other weights are no one search."""
    from slm_sweep.tune.table import read_table
    from slm_sweep.tune.table import write_table as write_lr_table
    from slm_sweep.tune.trained_with import check_tuned_data, check_tuned_under

    def cell(folder, *overrides):
        return tiny_cfg("model.source=hub", f"model.id={tmp_path / folder}", "model.name=mine", "method=lora",
                        *overrides)

    def searched(lr, accuracy, weights):
        record = _record("lora", lr, accuracy, n_val=8, seed=1000)
        return {**searched_as(record, cell("A"), lr, model={"source": "hub", "weights": weights}), "model": "mine"}

    with pytest.raises(TuningError, match=r"differ in more than the learning rate \(model.weights: 'folder:1', "
                                          r"'folder:2'\)"):
        choose([searched(1e-4, 0.3, "folder:1"), searched(2e-4, 0.4, "folder:2")], min_val_examples=8)
    chosen = choose([searched(1e-4, 0.3, "folder:1"), searched(2e-4, 0.4, "folder:1")], min_val_examples=8)
    table = write_lr_table(chosen, tmp_path / "lr.yaml", ["search"], None)
    trained_with = read_table(table)["searched"]["gsm8k"]["mine"]["lora"]["trained_with"]
    assert trained_with["model.weights"] == "folder:1" and not {"model.id", "model.revision"} & set(trained_with)
    tuned, rate = ("tuning.lr=tuned", f"tuning.table={table}"), {"source": "tuned", "table": str(table)}
    moved = cell("C", *tuned)
    check_tuned_under(moved, read_table(table), table)
    check_tuned_data(moved, rate, {"model": {"source": "hub", "weights": "folder:1"}})
    with pytest.raises(ConfigError, match=r'searched under other training than this cell\'s keys record '
                                          r'\(model.weights: searched "folder:1", here "folder:2"\)'):
        check_tuned_data(cell("A", *tuned), rate, {"model": {"source": "hub", "weights": "folder:2"}})
    # the processes are in the config: refused before anything loads, as in a sweep's preflight
    with pytest.raises(ConfigError, match=r"trainer.world_size: searched 1, here 2"):
        check_tuned_under(cell("C", *tuned, "trainer=ddp_cpu"), read_table(table), table)
    # searched on 4 GPUs with devices=-1, a grid launched from a machine without them (a SLURM login node): the
    # processes are counted where the cell trains, and checked there with its keys
    import yaml

    on_four = read_table(table)
    on_four["searched"]["gsm8k"]["mine"]["lora"]["trained_with"]["trainer.world_size"] = 4
    (four := tmp_path / "four.yaml").write_text(yaml.safe_dump(on_four))
    counted_there = cell("C", "tuning.lr=tuned", f"tuning.table={four}", "trainer.devices=-1")
    check_tuned_under(counted_there, read_table(four), four)
    rate_four = {"source": "tuned", "table": str(four)}
    check_tuned_data(counted_there, rate_four, {"model": {"weights": "folder:1"}, "world_size": 4})
    with pytest.raises(ConfigError, match=r"trainer.world_size: searched 4, here 1"):
        check_tuned_data(counted_there, rate_four, {"model": {"weights": "folder:1"}})


def test_a_rate_searched_on_one_device_is_no_tuned_rate_for_fsdp(tmp_path):
    """FSDP's bf16-mixed casts the parameters themselves to bf16, where one device autocasts over float32 weights:
    the training key tells the two apart, and so do the table and the search."""
    from slm_sweep.tune.table import read_table
    from slm_sweep.tune.table import write_table as write_lr_table
    from slm_sweep.tune.trained_with import check_tuned_under
    from tests.conftest import compose_config

    def cell(trainer, *overrides):
        return compose_config([*FAST_TINY, "method=full", "eval.dtype=float32", f"trainer={trainer}", *overrides])

    records = {trainer: [{**searched_as(_record("full", lr, accuracy, n_val=8, seed=1000), cell(trainer), lr),
                          "model": "tiny"} for lr, accuracy in ((1e-5, 0.3), (2e-5, 0.4))]
               for trainer in ("gpu", "fsdp")}
    with pytest.raises(TuningError, match=r"differ in more than the learning rate \(trainer.strategy: 'fsdp', "
                                          r"None\)"):
        choose([records["gpu"][0], records["fsdp"][1]], min_val_examples=8)
    table = write_lr_table(choose(records["gpu"], min_val_examples=8), tmp_path / "lr.yaml", ["search"], None)
    tuned = ("tuning.lr=tuned", f"tuning.table={table}")
    check_tuned_under(cell("gpu", *tuned), read_table(table), table)
    with pytest.raises(ConfigError, match=r'trainer.strategy: searched null, here "fsdp"'):
        check_tuned_under(cell("fsdp", *tuned), read_table(table), table)
    # a table written before the strategy was recorded is read without it
    older = read_table(table)
    del older["searched"]["gsm8k"]["tiny"]["full"]["trained_with"]["trainer.strategy"]
    check_tuned_under(cell("fsdp", *tuned), older, table)


def test_a_rate_searched_with_edited_training_code_is_no_tuned_rate_for_other_code(tiny_cfg, tmp_path):
    """The training key keeps cells of edited training sources apart from the released code's (a rate searched
    while the gradients or packing were being changed belongs to that code), and so do the table and the search."""
    from slm_sweep.tune.table import write_table as write_lr_table

    def searched(lr, accuracy, **training):
        record = _record("lora", lr, accuracy, n_val=8, seed=1000)
        return {**searched_as(record, tiny_cfg("method=lora"), lr, **training), "model": "tiny"}

    edited = {"edited_sources": "0123456789abcdef"}
    with pytest.raises(TuningError, match=r"differ in more than the learning rate \(code.training_edited: "):
        choose([searched(1e-4, 0.3, **edited), searched(2e-4, 0.4)], min_val_examples=8)
    chosen = choose([searched(1e-4, 0.3, **edited), searched(2e-4, 0.4, **edited)], min_val_examples=8)
    table = write_lr_table(chosen, tmp_path / "lr.yaml", ["search"], None)
    with pytest.raises(ConfigError, match=r'code.training_edited: searched "0123456789abcdef", here '):
        validate_config(tiny_cfg("method=lora", "tuning.lr=tuned", f"tuning.table={table}"))


def test_a_tuned_rate_is_refused_for_a_cell_at_a_seed_it_was_searched_on(tiny_cfg, tmp_path):
    """The search's winner did best on validation partly by its seed's luck: a reported cell at that rate and seed
    is the same run again. The searches run seed 1000 unless told, apart from the reported 0, 1, 2."""
    from slm_sweep.tune.table import write_table as write_lr_table

    assert tiny_cfg("hparams_search=lr_grid").seed == tiny_cfg("hparams_search=optuna").seed == 1000
    records = [searched_as(_record("lora", lr, accuracy, n_val=8, seed=seed), tiny_cfg("method=lora"), lr)
               for lr, accuracy in ((1e-4, 0.3), (2e-4, 0.4)) for seed in (0, 1000)]
    chosen = choose(records, min_val_examples=8)
    table = write_lr_table(chosen, tmp_path / "lr.yaml", ["search"], "val_accuracy_flexible")
    assert yaml.safe_load(table.read_text())["searched"]["gsm8k"]["m"]["lora"]["seeds"] == [0, 1000]
    tuned = ("model.name=m", "method=lora", "tuning.lr=tuned", f"tuning.table={table}")
    for seed in (0, 1000):
        with pytest.raises(ConfigError, match=rf"seed={seed}: the rate lr.gsm8k.m.lora in {table} was chosen on "
                                              r"seed\(s\) 0, 1000\. .* Report other seeds than the search's"):
            validate_config(tiny_cfg(*tuned, f"seed={seed}"))
    validate_config(tiny_cfg(*tuned, "seed=1"))
    chosen_lr = resolve_lr(tiny_cfg(*tuned, "seed=1"))
    # the larger of the two rates searched won: result.json says the best may lie beyond the grid
    assert chosen_lr["value"] == 2e-4 and chosen_lr["at_edge"] == "largest"


def test_a_search_reads_neither_set_aside_results_nor_other_folders_results_twice(tmp_path):
    """A result a rerun set aside (superseded/) is what the rerun replaced, not a candidate of the search."""
    import json

    from slm_sweep.tune.records import read_search

    def write(folder, lr):
        folder.mkdir(parents=True)
        (folder / "result.json").write_text(json.dumps({
            "status": "completed", "model": "tiny", "method": "lora", "dataset": "gsm8k", "seed": 0,
            "identity": {"evaluation_key": f"k{lr}"}, "learning_rate": {"value": lr}}))

    write(tmp_path / "0-cell", 1e-4)
    write(tmp_path / "0-cell" / "superseded", 5e-4)
    assert [r["learning_rate"]["value"] for r in read_search([tmp_path])] == [1e-4]


def test_a_completed_rerun_of_a_failed_cell_counts_whatever_order_the_folders_come_in(tmp_path):
    """A cell that failed (out of memory) and was rerun into a new search folder: one evaluation key twice. The
    completed rerun is the cell's result whichever folder is named first, so the table is the same either way."""
    _write_cell(tmp_path / "first" / "0", _record("lora", 1e-4, 0.0, status="failed"), "kA")
    _write_cell(tmp_path / "first" / "1", _record("lora", 2e-4, 0.30), "kB")
    _write_cell(tmp_path / "second" / "0", _record("lora", 1e-4, 0.40), "kA")
    tables = []
    for order in (["first", "second"], ["second", "first"]):
        out = tmp_path / f"{order[0]}.yaml"
        assert main([*(str(tmp_path / d) for d in order), "--out", str(out)]) == 0
        tables.append(yaml.safe_load(out.read_text()))
    assert tables[0]["lr"] == tables[1]["lr"] == {"gsm8k": {"m": {"lora": 1e-4}}}
    assert tables[0]["searched"] == tables[1]["searched"]


def test_a_cell_that_failed_before_its_keys_counts_by_its_rerun_in_another_folder(tmp_path):
    """A grid cell that failed while reading its data has no evaluation key to match its rerun by: rerun into a new
    search folder (lr_grid's are dated), the completed run counts, whatever order the folders come in."""
    _write_cell(tmp_path / "first" / "0", _record("lora", 1e-4, 0.30, seed=1000), "kA")
    (tmp_path / "first" / "1").mkdir()
    (tmp_path / "first" / "1" / "result.json").write_text(json.dumps(
        {**_record("lora", 2e-4, None, seed=1000, status="failed"), "identity": None}))
    _write_cell(tmp_path / "second" / "1", _record("lora", 2e-4, 0.40, seed=1000), "kB")
    for order in (["first", "second"], ["second", "first"]):
        out = tmp_path / f"{order[0]}.yaml"
        assert main([*(str(tmp_path / d) for d in order), "--out", str(out)]) == 0
        lora = yaml.safe_load(out.read_text())["searched"]["gsm8k"]["m"]["lora"]
        assert lora["chosen"] == 2e-4 and lora["candidates"][1]["runs"] == [
            {"seed": 1000, "val_accuracy_flexible": 0.4, "val_loss": 1.0, "evaluation_key": "kB"}]
    # not rerun, it still keeps its rate from being compared
    assert main([str(tmp_path / "first"), "--out", str(tmp_path / "alone.yaml")]) == 0
    alone = yaml.safe_load((tmp_path / "alone.yaml").read_text())["searched"]["gsm8k"]["m"]["lora"]
    assert alone["candidates"][1]["not_eligible"] == "seeds not completed: failed"


@pytest.mark.parametrize("order", [(0, 1), (1, 0)])
def test_of_one_cells_results_a_completed_one_counts_then_the_cells_own_over_a_reuse(tmp_path, order):
    """The report's rule: completed, then the cell's own, then the latest finished."""
    from slm_sweep.tune.records import read_search

    def write(folder, lr, status, reused, finished_at="2026-01-01T00:00:00+00:00"):
        record = {**_record("lora", lr, 0.3, status=status), **({"reused_from": "elsewhere"} if reused else {}),
                  "finished_at": finished_at}
        _write_cell(tmp_path / folder, record, "k")
        return tmp_path / folder

    failed_own, completed_reuse = write("a", 1e-4, "failed", False), write("b", 2e-4, "completed", True)
    completed_own = write("c", 5e-4, "completed", False)
    rerun_own = write("d", 3e-4, "completed", False, finished_at="2026-01-02T00:00:00+00:00")
    for pair, kept in (((failed_own, completed_reuse), 2e-4), ((completed_reuse, completed_own), 5e-4),
                       ((completed_own, rerun_own), 3e-4)):
        (record,) = read_search([pair[i] for i in order])
        assert record["learning_rate"]["value"] == kept


def test_a_system_message_the_plain_style_leaves_out_does_not_refuse_the_tuned_rate(requires_data, tmp_path):
    """A search and a cell in the plain style with a system message (which that style leaves out of every
    prompt): the cell trains under the searched settings, and takes the rate."""
    from omegaconf import OmegaConf

    from slm_sweep.results import redact
    from slm_sweep.run import identify, load_data
    from slm_sweep.tune.trained_with import FROM_KEYS, check_tuned_under, tuned_under
    from tests.conftest import compose_config

    plain = ["prompt.style=plain", "prompt.system=Be brief."]
    search = compose_config([*FAST_TINY, "method=lora", *plain, "seed=1000", "eval.split=val"])
    config = redact(OmegaConf.to_container(search, resolve=True))
    record = {"config": config, "identity": identify(search, config, load_data(search)).as_record()}
    table = {"lr": {"gsm8k": {"tiny": {"lora": 5e-4}}},
             "searched": {"gsm8k": {"tiny": {"lora": {"seeds": [1000], "trained_with": tuned_under(record)}}}}}
    check_tuned_under(compose_config([*FAST_TINY, "method=lora", *plain, "tuning.lr=tuned"]), table,
                      tmp_path / "lr.yaml")
    with pytest.raises(ConfigError, match="prompt.style"):
        check_tuned_under(compose_config([*FAST_TINY, "method=lora", "prompt.system=Be brief.", "tuning.lr=tuned"]),
                          table, tmp_path / "lr.yaml")
    # a record without identity (it failed before its keys were computed) and a table written before the plain
    # style's system message was keyed as null read the same settings
    def without_keys(settings):  # what only a record's keys say
        return {k: v for k, v in settings.items() if not k.startswith(FROM_KEYS)}

    assert without_keys(tuned_under({"config": config})) == without_keys(tuned_under(record))
    searched = table["searched"]["gsm8k"]["tiny"]["lora"]
    searched["trained_with"] = {**searched["trained_with"], "prompt.system": "Be brief."}
    check_tuned_under(compose_config([*FAST_TINY, "method=lora", *plain, "tuning.lr=tuned"]), table,
                      tmp_path / "lr.yaml")


def test_a_search_cell_that_failed_before_its_keys_neither_refuses_the_search_nor_blanks_its_code_version(tiny_cfg):
    """A cell that failed while reading its data has no identity, so no training code version: the search's
    other cells decide it, and the table records theirs (null would refuse every cell that reads the rate)."""
    from slm_sweep.identity import TRAINING_CODE_VERSION

    searched = tiny_cfg("method=lora")
    failed = searched_as(_record("lora", 5e-4, None, n_val=8, seed=1000, status="failed"), searched, 5e-4)
    del failed["identity"]
    records = [failed, *(searched_as(_record("lora", lr, accuracy, n_val=8, seed=1000), searched, lr)
                         for lr, accuracy in ((1e-4, 0.3), (2e-4, 0.4)))]
    chosen = choose(records, min_val_examples=8)
    assert chosen["gsm8k", "m", "lora"]["trained_with"]["code.training"] == TRAINING_CODE_VERSION


PAPER_CELL = ["experiment=paper", "model=smollm135", "method=full", "dataset=gsm8k", "seed=0"]


def test_a_paper_cell_without_a_tuned_rate_is_refused_naming_the_entry_and_the_fix(tmp_path):
    """experiment=paper measured at a guessed rate is not the protocol (rates tuned on validation): a trained cell
    the table has no rate for stops before anything loads, and says how to get one or how to opt out."""
    from tests.conftest import compose_config

    table = write_table(tmp_path / "lr.yaml", "lr: {}\n")
    cfg = compose_config([*PAPER_CELL, f"tuning.table={table}"])
    assert cfg.tuning.lr == "tuned" and cfg.tuning.on_missing == "refuse"
    for check in (validate_config, resolve_lr):
        with pytest.raises(ConfigError) as err:
            check(compose_config([*PAPER_CELL, f"tuning.table={table}"]))
        message = str(err.value)
        assert message.startswith(f"tuning.on_missing=refuse: {table} has no learning rate lr.gsm8k.smollm135.full")
        assert "make paper-search" in message and "python -m slm_sweep.tune multirun/paper-search" in message
        assert "python -m slm_sweep.tune --paper-search: the search of its trained cells" in message
        assert "tuning.lr=method" in message and "not tuned" in message
    # the opt-outs: the table's rates where it has them, method.lr elsewhere (today's fallback, with its note) ...
    fallback = compose_config([*PAPER_CELL, f"tuning.table={table}", "tuning.on_missing=method"])
    validate_config(fallback)
    rate = resolve_lr(fallback)
    assert rate["source"] == "method" and rate["value"] == 2e-5
    assert f"no tuned learning rate for gsm8k/smollm135/full in {table}" in rate["detail"]
    # ... or method.lr for every cell
    untuned = compose_config([*PAPER_CELL, f"tuning.table={table}", "tuning.lr=method"])
    validate_config(untuned)
    assert resolve_lr(untuned) == {"value": 2e-5, "source": "method", "detail": "method.lr"}
    # a baseline has no rate to miss
    validate_config(compose_config([*PAPER_CELL, "method=zeroshot", f"tuning.table={table}"]))


def make_commands(target: str, *variables: str) -> list[list[str]]:
    """The command lines ``make -n <target>`` prints (what the target runs), split as the shell would."""
    import shlex

    proc = subprocess.run(["make", "-n", target, *variables], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.replace("\\\n", " ").splitlines()  # a recipe's continued lines are one command
    return [shlex.split(line) for line in lines if " -m slm_sweep" in line]


def test_make_paper_search_searches_every_trained_paper_cell_as_the_paper_trains_it(tmp_path):
    """`make paper-search` then `make paper` must agree: every rate the search chooses is one the paper's cell
    accepts (its trained_with matches the cell's training and scoring settings), for every model x trained method
    x dataset of experiment=paper."""
    from omegaconf import OmegaConf

    from slm_sweep.results import redact
    from slm_sweep.tune.cell_rate import PAPER_SEARCH, PAPER_TUNE
    from slm_sweep.tune.cli import paper_search_command
    from slm_sweep.tune.trained_with import check_tuned_under, tuned_under

    (target,) = make_commands("paper-search", "DATA_ROOT=")
    # what a refused paper cell tells the user to run is what the target runs
    assert " ".join(["python", *target[1:]]) == PAPER_SEARCH
    search_line, tune_line = paper_search_command(), PAPER_TUNE.split()
    shown = (REPO / "docs" / "tuning.md").read_text().replace("\\\n  ", "")
    assert " ".join(["python", *search_line[1:]]) + " [data_root=DATA_ROOT]" in shown  # the docs show what it runs
    assert search_line[1:4] == ["-m", "slm_sweep", "-m"] and tune_line[1:3] == ["-m", "slm_sweep.tune"]
    # an experiment's methods, models and datasets are its search's: one without DoRA searches no DoRA
    copy = tmp_path / "paper.yaml"
    copy.write_text((CONF_DIR / "experiment" / "paper.yaml").read_text().replace(",dora\n", "\n"))
    searched = paper_search_command(copy, ["data_root=x"])
    assert [o for o in searched if o.startswith("method=")] == ["method=full,lora"] and searched[-1] == "data_root=x"
    overrides = dict(o.split("=", 1) for o in search_line[4:])
    assert tune_line[3:] == [overrides.pop("hydra.sweep.dir")]  # the table is written from that search
    swept = {key: overrides.pop(key).split(",") for key in ("model", "method", "dataset")}
    fixed = [f"{k}={v}" for k, v in overrides.items()]
    assert "hparams_search=lr_grid" in fixed

    paper = OmegaConf.load(CONF_DIR / "experiment" / "paper.yaml").hydra.sweeper.params
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        def cell(*chosen: str):
            return compose(config_name="config", overrides=list(chosen))

        trained = [m for m in paper.method.split(",") if cell(f"method={m}").method.train]
        # the search covers every trained cell of the paper, and nothing else
        assert swept == {"model": paper.model.split(","), "method": trained, "dataset": paper.dataset.split(",")}
        table: dict = {"lr": {}, "searched": {}}
        for model in swept["model"]:
            for method in swept["method"]:
                for dataset in swept["dataset"]:
                    search = cell(*fixed, f"model={model}", f"method={method}", f"dataset={dataset}",
                                  "tuning.lr_candidate=2")
                    validate_config(search)
                    lr = resolve_lr(search)["value"]  # what the search cell trains at, and records
                    assert search.eval.split == "val" and str(search.seed) not in paper.seed.split(",")
                    record = {"config": redact(OmegaConf.to_container(search, resolve=True)),
                              "identity": {"parts": {"training": searched_code()}}}
                    table["lr"].setdefault(dataset, {}).setdefault(model, {})[method] = lr
                    table["searched"].setdefault(dataset, {}).setdefault(model, {})[method] = {
                        "metric": search.optimized_metric, "seeds": [search.seed], "trained_with": tuned_under(record)}
        path = tmp_path / "lr.yaml"
        path.write_text(yaml.safe_dump(table))
        for model in swept["model"]:
            for method in swept["method"]:
                for dataset in swept["dataset"]:
                    chosen = ("experiment=paper", f"model={model}", f"method={method}", f"dataset={dataset}",
                              "seed=0", f"tuning.table={path}")
                    check_tuned_under(cell(*chosen), table, path)
                    paper_cell = cell(*chosen)
                    validate_config(paper_cell)  # tuning.on_missing=refuse: the entry is there, and accepted
                    assert resolve_lr(paper_cell)["source"] == "tuned"
        # the check has teeth: a search on the default trainer (32-bit, eager) is no search of the paper's rates
        cpu = cell(*[o for o in fixed if o != "trainer=gpu"], "model=smollm135", "method=lora", "dataset=gsm8k",
                   "tuning.lr_candidate=2")
        resolve_lr(cpu)
        elsewhere = {"lr": {"gsm8k": {"smollm135": {"lora": 2e-4}}}, "searched": {"gsm8k": {"smollm135": {"lora": {
            "trained_with": tuned_under({"config": redact(OmegaConf.to_container(cpu, resolve=True)),
                                         "identity": {"parts": {"training": searched_code()}}})}}}}}
        with pytest.raises(ConfigError, match=r"trainer.precision: searched \"32-true\", here \"bf16-mixed\""):
            check_tuned_under(cell("experiment=paper", "model=smollm135", "method=lora", "dataset=gsm8k", "seed=0"),
                              elsewhere, path)


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_paper_search_help_says_what_it_runs_and_runs_nothing(flag, capsys, monkeypatch):
    """`tune --paper-search --help` is tune's help, not Hydra's (which cannot compose the search's comma lists)."""
    import slm_sweep.tune.cli as tune_cli
    from slm_sweep.tune.cell_rate import PAPER_SEARCH, PAPER_TUNE

    monkeypatch.setattr(tune_cli, "run_paper_search", lambda extra: pytest.fail(f"ran the search with {extra}"))
    assert main(["--paper-search", "data_root=x", flag]) == 0
    shown = capsys.readouterr().out
    assert shown.startswith(f"usage: {PAPER_SEARCH} [OVERRIDE ...]")
    assert " ".join(tune_cli.paper_search_command()[1:]) in shown and PAPER_TUNE in shown
    assert "data_root=DIR" in shown and "preflight.only=true" in shown


def test_make_help_lists_paper_search_before_paper():
    proc = subprocess.run(["make", "help"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    names = [line.split()[0] for line in re.sub(r"\x1b\[[0-9;]*m", "", proc.stdout).splitlines()[1:]]
    assert "paper-search" in names and names.index("paper-search") < names.index("paper")


def _grid_record(lr, accuracy, grid, **kwargs):
    """A grid cell's record: its rate and the candidates it was one of."""
    record = _record("lora", lr, accuracy, **kwargs)
    record["learning_rate"] = {"value": lr, "source": "grid", "candidates": list(grid)}
    return record


def _write_cell(cell, record, key, correct=None):
    """A search cell's result.json (its evaluation key ``key``) and, given ``correct``, its predictions."""
    cell.mkdir(parents=True)
    (cell / "result.json").write_text(json.dumps({**record, "identity": {"evaluation_key": key}}))
    if correct is not None:
        (cell / "predictions.jsonl").write_text("".join(
            json.dumps({"eval_set": "gsm8k/val", "index": q, "question": f"q{q}", "correct_flexible": c}) + "\n"
            for q, c in enumerate(correct)))


def _write_cells(folder, records):
    """``records`` as the result.json files of a search folder."""
    for i, record in enumerate(records):
        _write_cell(folder / str(i), record, f"{folder.name}{i}")
    return folder


def _steady(best: float, runner_up: float) -> list[dict]:
    """Three seeds of two rates whose per-seed differences all equal ``best - runner_up``."""
    return [_record("lora", lr, accuracy + d, seed=s) for lr, accuracy in ((1e-4, best), (2e-4, runner_up))
            for s, d in ((1000, 0.0), (1001, 0.01), (1002, -0.01))]


def test_a_lead_the_seeds_disagree_on_is_within_noise_however_many_seeds():
    """The seeds score the same validation questions: three of them do not make a lead three times surer. Without
    predictions the lead's error is the questions' (the unpaired binomial of the two accuracies) plus the
    per-seed differences' spread: a 4-point lead whose per-seed scores spread 6 points either way is not
    separated, and nor is one the seeds agree on, whose questions are as noisy as one seed's."""
    import statistics

    from slm_sweep.tune.lead import SEED_SPREAD_TEST

    def binomial(p, q):
        return (p * (1 - p) + q * (1 - q)) / 500

    best = [_record("lora", 1e-4, a, seed=s) for s, a in ((1000, 0.29), (1001, 0.35), (1002, 0.41))]
    runner_up = [_record("lora", 2e-4, a, seed=s) for s, a in ((1000, 0.37), (1001, 0.31), (1002, 0.25))]
    lora = choose([*best, *runner_up])["gsm8k", "m", "lora"]
    assert lora["lr"] == 1e-4 and lora["runner_up"] == 2e-4 and lora["margin"] == pytest.approx(0.04)
    assert lora["within_noise"] is True and lora["margin_test"] == SEED_SPREAD_TEST
    assert lora["margin_se"] == pytest.approx(math.sqrt(
        statistics.stdev([-0.08, 0.04, 0.16]) ** 2 / 3 + binomial(0.35, 0.31)), abs=1e-6)
    steady = choose(_steady(0.35, 0.31))["gsm8k", "m", "lora"]
    assert steady["margin"] == pytest.approx(0.04) and steady["within_noise"] is True
    assert steady["margin_se"] == pytest.approx(math.sqrt(binomial(0.35, 0.31)), abs=1e-6)
    # a lead well past the questions' noise still separates
    clear = choose(_steady(0.45, 0.30))["gsm8k", "m", "lora"]
    assert clear["margin"] == pytest.approx(0.15) and "within_noise" not in clear


def test_a_lead_is_judged_by_the_claims_paired_test_when_the_validation_answers_are_there(tmp_path):
    """With each run's predictions, the lead is the paired seeds-and-questions test of the claims: 35 % against
    31 % on 500 questions is separated when the runner-up's right answers are the winner's (20 discordant, all
    the winner's), and not when they are other questions (175 against 155 discordant), whatever the binomial
    error of the two accuracies says."""
    from slm_sweep.report.stats import SEEDS_AND_QUESTIONS
    from slm_sweep.tune.records import read_search

    def search(name, runner_up_right):
        folder = tmp_path / name
        for i, (lr, right) in enumerate(((1e-4, range(175)), (2e-4, runner_up_right))):
            correct = [q in set(right) for q in range(500)]
            _write_cell(folder / str(i), _record("lora", lr, sum(correct) / 500, seed=1000), f"{name}{i}", correct)
        return choose(read_search([folder]))["gsm8k", "m", "lora"]

    nested = search("nested", range(155))
    assert nested["lr"] == 1e-4 and nested["margin"] == pytest.approx(0.04)
    assert nested["margin_test"] == f"{SEEDS_AND_QUESTIONS} (one seed: run-to-run spread not measured)"
    assert nested["margin_p"] < 0.001
    assert "within_noise" not in nested
    differences = [1.0] * 20 + [0.0] * 480  # the per-question differences: their paired standard error
    assert nested["margin_se"] == pytest.approx(math.sqrt(
        sum((d - 0.04) ** 2 for d in differences) / 499 / 500), abs=1e-6)
    apart = search("apart", range(175, 330))
    assert apart["margin_test"].startswith(SEEDS_AND_QUESTIONS) and apart["margin_p"] > 0.05
    assert apart["within_noise"] is True


def _three_seed_search(folder, predictions=True):
    """Three seeds of two rates: the winner right on 175 questions, the runner-up on 155 others, each seed shifted
    by 5 questions; the per-seed differences all 4 points."""
    for i, (lr, seed, right) in enumerate((lr, 1000 + s, range(first + 5 * s, last + 5 * s)) for s in range(3)
                                          for lr, first, last in ((1e-4, 0, 175), (2e-4, 175, 330))):
        correct = [q in right for q in range(500)]
        _write_cell(folder / str(i), _record("lora", lr, sum(correct) / 500, seed=seed), f"{folder.name}{i}",
                    correct if predictions else None)
    return folder


def test_without_predictions_seeds_that_agree_reach_the_paired_tests_verdict(tmp_path):
    """The winner and the runner-up get other questions right, alike on every seed: the paired test finds the
    4-point lead within noise, and so must the test without predictions, though its seeds agree."""
    from slm_sweep.report.stats import SEEDS_AND_QUESTIONS
    from slm_sweep.tune.lead import SEED_SPREAD_TEST
    from slm_sweep.tune.records import read_search

    paired = choose(read_search([_three_seed_search(tmp_path / "paired")]))["gsm8k", "m", "lora"]
    unpaired = choose(read_search([_three_seed_search(tmp_path / "unpaired", False)]))["gsm8k", "m", "lora"]
    assert paired["margin_test"] == SEEDS_AND_QUESTIONS and unpaired["margin_test"] == SEED_SPREAD_TEST
    assert paired["margin"] == unpaired["margin"] == pytest.approx(0.04)
    assert paired["within_noise"] is True and unpaired["within_noise"] is True
    assert unpaired["margin_se"] > 0.02  # the questions' noise, about 3 points, whatever the seeds say


@pytest.mark.parametrize("damage, reason", [
    ("flip", r"the predictions beside .*/0/result.json disagree with its result.json: their mean is 0.348000, its "
             r"val_accuracy_flexible 0.350000"),
    ("drop", r"the predictions beside .*/0/result.json hold 499 rows of gsm8k/val, its result.json val_n_eval=500"),
    ("delete", r"no predictions.jsonl beside .*/0/result.json")])
def test_a_search_whose_predictions_cannot_be_paired_says_why_and_keeps_the_verdict(tmp_path, caplog, damage,
                                                                                     reason):
    """One answer of 3000 flipped, a row lost or a file missing: the lead falls back to the test without
    predictions, with a warning naming the run and why, the reason in the entry, and the same verdict."""
    from slm_sweep.tune.lead import SEED_SPREAD_TEST
    from slm_sweep.tune.records import read_search

    folder = _three_seed_search(tmp_path / "search")
    predictions = folder / "0" / "predictions.jsonl"
    rows = [json.loads(line) for line in predictions.read_text().splitlines()]
    if damage == "flip":
        rows[0]["correct_flexible"] = not rows[0]["correct_flexible"]
    predictions.write_text("".join(json.dumps(r) + "\n" for r in rows[: 499 if damage == "drop" else 500]))
    if damage == "delete":
        predictions.unlink()
    lora = choose(read_search([folder]))["gsm8k", "m", "lora"]
    assert lora["margin_test"] == SEED_SPREAD_TEST and lora["within_noise"] is True
    assert re.search(reason, lora["margin_fallback"])
    assert re.search(r"gsm8k/m/lora: no paired test of the lead of 0.0001 over 0.0002 \(" + reason, caplog.text)


def test_one_seed_tests_say_they_do_not_measure_the_spread_between_runs():
    """One training run a rate: the binomial test (and the paired one, above) measures the questions' noise
    only, and its label says so."""
    lora = choose([_record("lora", 1e-4, 0.40), _record("lora", 2e-4, 0.30)])["gsm8k", "m", "lora"]
    assert lora["margin_test"] == "binomial, unpaired (no predictions) (one seed: run-to-run spread not measured)"
    assert "within_noise" not in lora


def test_a_table_rate_edited_after_its_search_is_not_credited_to_the_search(tmp_path, caplog):
    """The search chose 2e-4 and the table's rate was changed by hand to 3e-4: experiment=paper's refuse stops the
    cell naming both rates; taken on request, result.json says it is not the search's choice and credits it none
    of the search's record."""
    from tests.conftest import compose_config

    search = _write_cells(tmp_path / "search", [{**_record("lora", lr, accuracy, seed=1000), "model": "tiny"}
                                                for lr, accuracy in ((1e-4, 0.30), (2e-4, 0.36), (5e-4, 0.20))])
    table = tmp_path / "lr.yaml"
    assert main([str(search), "--out", str(table)]) == 0
    assert yaml.safe_load(table.read_text())["searched"]["gsm8k"]["tiny"]["lora"]["chosen"] == 2e-4
    cell = [*FAST_TINY, "method=lora", "tuning.lr=tuned", f"tuning.table={table}"]
    assert resolve_lr(compose_config([*cell, "tuning.on_missing=refuse"]))["value"] == 2e-4
    written = table.read_text()
    table.write_text(written.replace("lora: 0.0002\n", "lora: 0.0003\n", 1))
    refused = (r"tuning.on_missing=refuse: the rate lr.gsm8k.tiny.lora=0.0003 in .* is not the rate its search "
               r"chose \(0.0002, searched.gsm8k.tiny.lora\)")
    for check in (validate_config, resolve_lr):
        with pytest.raises(ConfigError, match=refused):
            check(compose_config([*cell, "tuning.on_missing=refuse"]))
    rate = resolve_lr(compose_config([*cell, "tuning.on_missing=method"]))
    assert rate["value"] == 3e-4 and rate["source"] == "tuned" and rate["searches"] == []
    assert "not the rate its search chose, 0.0002" in rate["detail"] and "not the rate its search chose" in caplog.text
    assert not {"seeds", "metric", "runner_up", "margin", "margin_se", "within_noise", "at_edge"} & set(rate)
    # a table written before the entry recorded its choice: the candidate that scored its best
    data = yaml.safe_load(table.read_text())
    del data["searched"]["gsm8k"]["tiny"]["lora"]["chosen"]
    table.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=refused):
        resolve_lr(compose_config([*cell, "tuning.on_missing=refuse"]))


OLD_TABLE = """\
searches: [searchA]
lr: {gsm8k: {tiny: {lora: 1.0e-4}}}
searched:
  gsm8k:
    tiny:
      lora: {metric: val_accuracy_flexible, best: 0.35, runner_up: 2.0e-4, margin: 0.04, margin_se: 0.017154,
             val_examples: 500, seeds: [1000, 1001, 1002], trained_with: {method.name: lora},
             candidates: [{lr: 1.0e-4, val_accuracy_flexible: 0.35, seeds: 3},
                          {lr: 2.0e-4, val_accuracy_flexible: 0.31, seeds: 3}]}
"""


def test_a_table_written_before_the_lead_test_passes_on_no_verdict_of_it(tmp_path):
    """An entry without margin_test was judged with the seeds counted as questions, an error too small: a cell
    at its rate records the lead but not that error or verdict, and says why; an entry without searches of its
    own names the table's."""
    from tests.conftest import compose_config

    table = write_table(tmp_path / "lr.yaml", OLD_TABLE)
    rate = resolve_lr(compose_config([*FAST_TINY, "method=lora", "tuning.lr=tuned", "tuning.on_missing=refuse",
                                      f"tuning.table={table}"]))
    assert rate["value"] == 1e-4 and rate["runner_up"] == 2e-4 and rate["margin"] == 0.04
    assert not {"margin_se", "within_noise", "margin_test"} & set(rate)
    assert "the table predates the current test of the lead over the runner-up" in rate["detail"]
    assert rate["searches"] == ["searchA"] and rate["searches_scope"] == "table"


def _full_below_zeroshot_at_a_tuned_rate(tmp_path, **lead):
    """The claim "full fine-tuning below zero-shot" on rows whose full side trained at a tuned rate 2e-5 whose
    search recorded ``lead`` over its runner-up 5e-5; its one instance."""
    from tests.test_report_claims import claims_of, write_result, write_row

    write_row(tmp_path, "smollm135", "zeroshot", "gsm8k", 40)
    write_row(tmp_path, "smollm135", "full", "gsm8k", 10)
    for path in tmp_path.glob("smollm135-*/result.json"):
        record = json.loads(path.read_text())
        if record["method"] == "full":
            record["learning_rate"] = {"value": 2.0e-5, "source": "tuned", "detail": "lr.gsm8k.smollm135.full in lr.yaml",
                                       "runner_up": 5.0e-5, "margin_se": 0.02, "within_noise": True, **lead}
            write_result(path.parent, record)
    results, _ = claims_of(tmp_path)
    (full,) = results["full-below-zeroshot-under-300m"].instances
    return full


def test_a_tie_reaches_the_summary_and_the_claims_with_what_broke_it(tmp_path):
    full = _full_below_zeroshot_at_a_tuned_rate(tmp_path, margin=0.0, tied="smaller rate")
    assert full.a["lr_tied"] == "smaller rate" and full.b["lr_tied"] is None
    text = (tmp_path / "report" / "claims.md").read_text()
    assert "full: its tuned rate 2e-05 tied with 5e-05 on validation; chosen by the smaller rate" in text
    assert "a lead within noise" not in text
    rows = {r["method"]: r for r in csv.DictReader(open(tmp_path / "report" / "summary.csv", newline=""))}
    assert rows["full"]["lr_tied"] == "smaller rate" and rows["full"]["lr_within_noise"] == "5e-05"


def test_a_search_cell_recording_a_grid_that_is_no_mapping_is_left_out_with_a_warning(tmp_path, caplog):
    """A hand-written or foreign result.json whose tuning.lr_grid is a list: the tune command skips it, naming the
    file and the value, rather than stopping with a traceback."""
    cells = [_grid_record(lr, accuracy, [1e-4, 2e-4]) for lr, accuracy in ((1e-4, 0.3), (2e-4, 0.2))]
    bad = _record("lora", 2e-4, None, status="failed")
    del bad["learning_rate"]
    bad["config"]["tuning"] = {"lr_grid": [1e-4], "lr_candidate": 0}
    search = _write_cells(tmp_path / "search", [*cells, bad])
    table = tmp_path / "lr.yaml"
    assert main([str(search), "--out", str(table)]) == 0
    assert yaml.safe_load(table.read_text())["lr"] == {"gsm8k": {"m": {"lora": 1e-4}}}
    assert re.search(r"skipping .*/2/result.json: config.tuning.lr_grid=\[0.0001\] is not what a search records",
                     caplog.text)


def test_a_tuned_rate_its_search_did_not_separate_is_named_beside_the_verdict(tmp_path):
    full = _full_below_zeroshot_at_a_tuned_rate(tmp_path, margin=0.004)
    assert full.a["lr_within_noise"] == "5e-05" and full.b["lr_within_noise"] is None
    assert ("full: its search did not separate the tuned rate 2e-05 from 5e-05 (a lead within noise)"
            in (tmp_path / "report" / "claims.md").read_text())


def test_grid_rates_that_never_ran_are_listed_as_not_run(caplog):
    """An interrupted search, or a folder not passed: the rates of the grid the cells record that no cell ran are
    no candidates, and say so."""
    grid = [5e-5, 1e-4, 2e-4, 5e-4, 1e-3]
    lora = choose([_grid_record(lr, accuracy, grid) for lr, accuracy in zip(grid, (0.20, 0.25, 0.30))])[
        "gsm8k", "m", "lora"]
    assert [c["lr"] for c in lora["candidates"]] == grid
    assert {c["lr"]: c.get("not_eligible") for c in lora["candidates"]} == {
        5e-5: None, 1e-4: None, 2e-4: None, 5e-4: "not run", 1e-3: "not run"}
    assert "lr 0.0005 is not a candidate (not run)" in caplog.text
    # the largest rate compared, though the grid goes on: the best may lie beyond it
    assert lora["lr"] == 2e-4 and lora["candidates"][2]["at_edge"] == "largest"


def test_a_tuned_cell_counts_only_the_candidates_its_search_compared(tmp_path):
    """3 of a 5-rate grid ran: result.json's learning_rate.detail says 3 were compared, and why the 2 others were
    not, not "of 5 candidates"."""
    from tests.conftest import compose_config

    grid = [5e-5, 1e-4, 2e-4, 5e-4, 1e-3]
    search = _write_cells(tmp_path / "search", [{**_grid_record(lr, accuracy, grid, seed=1000), "model": "tiny"}
                                                for lr, accuracy in zip(grid, (0.20, 0.25, 0.30))])
    table = tmp_path / "lr.yaml"
    assert main([str(search), "--out", str(table)]) == 0
    rate = resolve_lr(compose_config([*FAST_TINY, "method=lora", "tuning.lr=tuned", f"tuning.table={table}"]))
    assert rate["value"] == 2e-4
    assert ("(best val_accuracy_flexible 0.3 on 500 validation examples, of 3 candidates compared; 2 not compared: "
            "not run)") in rate["detail"]


def test_a_search_that_chooses_no_rate_drops_the_earlier_entry_and_exits_non_zero(tmp_path, capsys):
    """Searched again, every LoRA rate diverged: the table must not go on offering the earlier search's LoRA rate
    as if this search had confirmed it."""
    earlier = ("searches: [searchA]\nlr: {gsm8k: {m: {lora: 5.0e-4}}}\nsearched: {gsm8k: {m: {lora: {metric: "
               "val_accuracy_flexible, best: 0.4, val_examples: 500, searches: [searchA], seeds: [0]}}}}\n")
    search = _write_cells(tmp_path / "searchB", [
        _record("lora", 1e-4, 0.0, status="diverged"), _record("lora", 2e-4, 0.0, status="diverged"),
        _record("full", 1e-5, 0.2), _record("full", 2e-5, 0.3)])
    table = write_table(tmp_path / "lr.yaml", earlier)
    assert main([str(search), "--out", str(table)]) == 1
    assert "no rate of gsm8k/m/lora completed every seed" in capsys.readouterr().err
    data = yaml.safe_load(table.read_text())
    assert data["lr"] == {"gsm8k": {"m": {"full": 2e-5}}} and "lora" not in data["searched"]["gsm8k"]["m"]
    # kept on request, still naming only the search it came from
    table = write_table(tmp_path / "lr.yaml", earlier)
    assert main([str(search), "--out", str(table), "--keep-unchosen"]) == 0
    data = yaml.safe_load(table.read_text())
    assert data["lr"]["gsm8k"]["m"] == {"lora": 5e-4, "full": 2e-5}
    assert data["searched"]["gsm8k"]["m"]["lora"]["searches"] == ["searchA"]
    assert data["searched"]["gsm8k"]["m"]["full"]["searches"] == [str(search)]
    # searched alone (the usual re-search), it is dropped all the same, with the same exit status
    failed = _write_cells(tmp_path / "searchC", [_record("lora", 1e-4, 0.0, status="diverged")])
    table = write_table(tmp_path / "lr.yaml", earlier)
    assert main([str(failed), "--out", str(table)]) == 1
    assert "its earlier entry of gsm8k/m/lora is dropped" in capsys.readouterr().err
    data = yaml.safe_load(table.read_text())
    assert data["lr"] == {} and data["searched"] == {}
    # kept on request, the table as it was
    table = write_table(tmp_path / "lr.yaml", earlier)
    assert main([str(failed), "--out", str(table), "--keep-unchosen"]) == 0 and table.read_text() == earlier
    # nothing of it in the table: nothing to drop, the table as it was, the same exit status
    other = "lr: {gsm8k: {m: {full: 2.0e-5}}}\n"
    table = write_table(tmp_path / "lr.yaml", other)
    assert main([str(failed), "--out", str(table)]) == 1 and table.read_text() == other
    # no search cell at all is an error: exit 2, the table as it was
    baseline = _write_cells(tmp_path / "searchD", [{**_record("zeroshot", 2e-4, 0.1), "config": {
        "method": {"name": "zeroshot", "train": False}, "eval": {"split": "val"}}}])
    assert main([str(baseline), "--out", str(table)]) == 2 and table.read_text() == other
    assert "no search cell under" in capsys.readouterr().err


def test_replace_with_no_rate_chosen_drops_only_the_entries_searched_again(tmp_path, capsys):
    """--replace starts the table afresh from the rates chosen; with none chosen there is nothing to start from,
    so it drops what was searched again, as the message says, and keeps the rest of the table."""
    earlier = "lr: {gsm8k: {m: {full: 2.0e-5}, other: {lora: 1.0e-4}}}\n"
    failed = _write_cells(tmp_path / "failed", [_record("full", 1e-4, 0.0, status="diverged")])
    table = write_table(tmp_path / "lr.yaml", earlier)
    assert main([str(failed), "--out", str(table), "--replace"]) == 1
    assert "its earlier entry of gsm8k/m/full is dropped" in capsys.readouterr().err
    assert yaml.safe_load(table.read_text())["lr"] == {"gsm8k": {"other": {"lora": 1e-4}}}
    # nothing of it in the table: the table as it was
    table = write_table(tmp_path / "lr.yaml", earlier)
    lora = _write_cells(tmp_path / "lora", [_record("lora", 1e-4, 0.0, status="diverged")])
    assert main([str(lora), "--out", str(table), "--replace"]) == 1 and table.read_text() == earlier
    # with a rate chosen, --replace writes that rate alone
    chosen = _write_cells(tmp_path / "chosen", [_record("full", 1e-5, 0.2), _record("full", 2e-5, 0.3)])
    assert main([str(chosen), "--out", str(table), "--replace"]) == 0
    assert yaml.safe_load(table.read_text())["lr"] == {"gsm8k": {"m": {"full": 2e-5}}}


def test_replace_keeps_the_unchosen_entries_keep_unchosen_says_it_keeps(tmp_path, capsys):
    """--replace --keep-unchosen: the table is written afresh from the rates chosen, but a dataset x model x method
    searched here that got no rate keeps its earlier entry, as the warning says; the rest of the earlier table goes."""
    earlier = ("searches: [searchA]\nlr: {gsm8k: {m: {full: 2.0e-5, lora: 1.0e-4}, other: {lora: 1.0e-4}}}\n"
               "searched: {gsm8k: {m: {full: {metric: val_accuracy_flexible, chosen: 2.0e-5, best: 0.3, "
               "searches: [searchA], seeds: [1000]}}}}\n")
    search = _write_cells(tmp_path / "searchB", [
        _record("lora", 1e-4, 0.3), _record("lora", 2e-4, 0.4), _record("full", 1e-5, 0.0, status="diverged"),
        _record("dora", 1e-4, 0.0, status="diverged")])
    table = write_table(tmp_path / "lr.yaml", earlier)
    assert main([str(search), "--out", str(table), "--replace", "--keep-unchosen"]) == 0
    err = capsys.readouterr().err
    assert "the table keeps its earlier entry of gsm8k/m/full as it was (--keep-unchosen)" in err
    assert "the table has no entry of gsm8k/m/dora (none earlier to keep)" in err
    data = yaml.safe_load(table.read_text())
    assert data["lr"] == {"gsm8k": {"m": {"full": 2e-5, "lora": 2e-4}}}
    assert data["searched"]["gsm8k"]["m"]["full"] == yaml.safe_load(earlier)["searched"]["gsm8k"]["m"]["full"]
    assert data["searches"] == ["searchA", str(search)]


def test_a_tuned_cell_names_only_its_own_entrys_search_seeds_and_metric(tmp_path):
    """Two tune runs into one table: each entry records its own search, its seeds and each seed's scores, and a
    cell at its rate copies those and the table's hash, not every search the table was ever written from."""
    from tests.conftest import compose_config

    first = _write_cells(tmp_path / "A", [{**_record("lora", lr, accuracy, seed=1000), "model": "tiny"}
                                          for lr, accuracy in ((1e-4, 0.3), (2e-4, 0.2))])
    second = _write_cells(tmp_path / "B", [{**_record("lora", lr, accuracy, seed=1001), "model": "m"}
                                           for lr, accuracy in ((1e-4, 0.1), (2e-4, 0.4))])
    table = tmp_path / "lr.yaml"
    assert main([str(first), "--out", str(table)]) == 0 and main([str(second), "--out", str(table)]) == 0
    data = yaml.safe_load(table.read_text())
    assert data["searches"] == [str(first), str(second)]
    tiny = data["searched"]["gsm8k"]["tiny"]["lora"]
    assert tiny["searches"] == [str(first)] and data["searched"]["gsm8k"]["m"]["lora"]["searches"] == [str(second)]
    assert tiny["candidates"][0]["runs"] == [{"seed": 1000, "val_accuracy_flexible": 0.3, "val_loss": 1.0,
                                              "evaluation_key": "A0"}]
    rate = resolve_lr(compose_config([*FAST_TINY, "method=lora", "tuning.lr=tuned", f"tuning.table={table}"]))
    assert rate["value"] == 1e-4 and rate["searches"] == [str(first)] and rate["seeds"] == [1000]
    assert rate["metric"] == "val_accuracy_flexible" and rate["table_sha256"] == sha256(table)


def test_a_paper_cell_refuses_a_table_rate_that_no_search_record_backs(tmp_path):
    """A rate written by hand has no record of the seeds or settings it was searched on, so neither guard can
    check it: experiment=paper (tuning.on_missing=refuse) refuses it, at any seed; taken on request, result.json
    says what it lacks."""
    from tests.conftest import compose_config

    table = write_table(tmp_path / "lr.yaml", "lr: {gsm8k: {smollm135: {full: 1.0e-4}}}\n")
    for seed in (0, 1000):
        for check in (validate_config, resolve_lr):
            with pytest.raises(ConfigError, match=r"tuning.on_missing=refuse: the rate lr.gsm8k.smollm135.full in .* "
                                                  r"has no search record \(searched.gsm8k.smollm135.full with metric, "
                                                  r"seeds, trained_with\)"):
                check(compose_config([*PAPER_CELL[:-1], f"seed={seed}", f"tuning.table={table}"]))
    rate = resolve_lr(compose_config([*PAPER_CELL, f"tuning.table={table}", "tuning.on_missing=method"]))
    assert rate["value"] == 1e-4 and "no search record" in rate["detail"]


def test_the_tune_command_takes_only_a_validation_accuracy_as_its_metric(tmp_path, capsys):
    """A loss would be maximised as if it were an accuracy (and one above 1 has no binomial error)."""
    search = _write_cells(tmp_path / "search", [_record("lora", 1e-4, 0.3, val_loss=0.5),
                                                _record("lora", 2e-4, 0.2, val_loss=1.5)])
    table = tmp_path / "lr.yaml"
    for metric in ("val_loss", "accuracy_flexible", "val_accuracy_flexibel"):
        assert main([str(search), "--out", str(table), "--metric", metric]) == 2
        assert (f"error: --metric {metric!r} is not the validation accuracy of a registered metric; one of: "
                "val_accuracy_strict, val_accuracy_flexible, val_accuracy_lenient") in capsys.readouterr().err
    assert not table.exists()
    with pytest.raises(TuningError, match="--metric 'val_loss' is not the validation accuracy"):
        choose([_record("lora", 1e-4, 0.3), _record("lora", 2e-4, 0.2)], "val_loss")
    assert main([str(search), "--out", str(table), "--metric", "val_accuracy_flexible"]) == 0


def test_a_grid_cell_refused_before_its_rate_was_set_counts_as_its_own_candidate(caplog):
    """A cell refused at run time records no learning_rate, and its method.lr is the method's rate: its rate is
    its candidate of its grid, not a duplicate of the cell that ran at the method's rate."""
    grid = [5e-5, 1e-4, 2e-4, 5e-4, 1e-3]

    def refused(candidate, **tuning):
        record = _record("lora", 2e-4, None, status="failed")
        del record["learning_rate"]
        record["metrics"] = {}
        record["config"]["tuning"] = {"lr_grid": {}, "lr_candidate": candidate, **tuning}
        return record

    done = [_grid_record(lr, accuracy, grid) for lr, accuracy in zip(grid, (0.2, 0.3, 0.25, 0.22))]
    lora = choose([*done, refused(4)])["gsm8k", "m", "lora"]
    assert lora["lr"] == 1e-4
    assert {c["lr"]: c.get("not_eligible") for c in lora["candidates"]} == {
        5e-5: None, 1e-4: None, 2e-4: None, 5e-4: None, 1e-3: "seeds not completed: failed"}
    # a grid of its own: no phantom candidate at the method's rate
    own = choose([_grid_record(1e-4, 0.3, [1e-4, 3e-4]), refused(1, lr_grid={"lora": [1e-4, 3e-4]})])
    assert [c["lr"] for c in own["gsm8k", "m", "lora"]["candidates"]] == [1e-4, 3e-4]
    # a cell whose rate cannot be told is left out, with a warning; its candidate counts as not run
    unknown = refused(4)
    unknown["config"]["method"]["lr"] = None
    lora = choose([*done, unknown])["gsm8k", "m", "lora"]
    assert lora["candidates"][-1] == {"lr": 1e-3, "val_accuracy_flexible": None, "val_loss": None, "seeds": 0,
                                      "not_eligible": "not run"}
    assert "is left out: it records no learning rate, nor a candidate of a grid it records" in caplog.text


def test_a_tie_is_flagged_with_what_broke_it(caplog):
    """Every rate at 0 accuracy: the validation loss chose, and the table says so rather than a clean lead."""
    chosen = choose([_record("lora", 5e-5, 0.0, val_loss=2.0), _record("lora", 1e-4, 0.0, val_loss=1.5),
                     _record("lora", 2e-4, 0.0, val_loss=1.9)])
    lora = chosen["gsm8k", "m", "lora"]
    assert lora["lr"] == 1e-4 and lora["runner_up"] == 2e-4 and lora["margin"] == 0
    assert lora["tied"] == "validation loss" and lora["within_noise"] is True
    assert ("the chosen rate 0.0001 ties the runner-up 0.0002 on val_accuracy_flexible: chosen by the validation "
            "loss") in caplog.text
    assert "tied with 0.0002: chosen by the validation loss" in render(chosen)
    same = choose([_record("lora", 1e-4, 0.3), _record("lora", 2e-4, 0.3)])["gsm8k", "m", "lora"]
    assert same["lr"] == 1e-4 and same["tied"] == "smaller rate"


def test_a_search_scored_or_maximised_on_the_test_split_is_refused(tiny_cfg):
    """A grid or an Optuna study on the test split would be a test-set selection table: refused before it runs."""
    def search(*overrides):
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            return compose(config_name="config", overrides=[*FAST_TINY, "method=lora", *overrides],
                           return_hydra_config=True)

    with pytest.raises(ConfigError, match=r"tuning.lr_candidate=0 is a learning-rate search's candidate, scored on "
                                          r"the validation split .* but eval.split='test'"):
        validate_config(tiny_cfg("method=lora", "+tuning.lr_candidate=0"))
    for overrides, message in (
            (["hparams_search=lr_grid", "eval.split=test"],
             r"hparams_search=lr_grid is a hyperparameter search, .* but eval.split='test'"),
            (["hparams_search=optuna", "eval.split=test", "optimized_metric=accuracy_flexible"],
             r"hparams_search=optuna is a hyperparameter search, .* but eval.split='test'"),
            (["hparams_search=optuna", "optimized_metric=accuracy_flexible"],
             r"optimized_metric='accuracy_flexible': hparams_search=optuna maximises it, but a search chooses on the "
             r"validation split")):
        with pytest.raises(ConfigError, match=message):
            validate_config(search(*overrides))
    for shipped in ("lr_grid", "optuna"):
        validate_config(search(f"hparams_search={shipped}"))


@pytest.mark.parametrize("search", ["optuna", "optuna_rank"])
def test_an_optuna_search_scores_as_the_paper_does_so_the_paper_accepts_its_rate(search, tmp_path):
    """As lr_grid does: a study scored in another dtype than the float32 paper cells would be refused after its
    trials had run."""
    from omegaconf import OmegaConf

    from slm_sweep.results import redact
    from slm_sweep.tune.trained_with import check_tuned_under, tuned_under

    cell = ("model=smollm135", "method=lora", "dataset=gsm8k")
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        trial = compose(config_name="config", overrides=[f"hparams_search={search}", "trainer=gpu", "eval=gpu", *cell])
        paper = compose(config_name="config", overrides=["experiment=paper", *cell, "seed=0"])
    assert trial.eval.dtype == paper.eval.dtype == "float32" and trial.eval.split == "val"
    record = {"config": redact(OmegaConf.to_container(trial, resolve=True)),
              "identity": {"parts": {"training": searched_code()}}}
    table = {"lr": {"gsm8k": {"smollm135": {"lora": 3e-4}}}, "searched": {"gsm8k": {"smollm135": {"lora": {
        "metric": trial.optimized_metric, "seeds": [trial.seed], "trained_with": tuned_under(record)}}}}}
    check_tuned_under(paper, table, tmp_path / "lr.yaml")


def test_make_report_never_picks_a_search_or_a_set_aside_result(tmp_path):
    """`make report` without SWEEP reads the latest sweep: not the paper's search (whose folder sorts after the
    dated ones), nor a result a rerun set aside (superseded/), which the report would read as a malformed study."""
    import shlex

    for cell in ("2026-11-28/09-00-00/0-tiny-lora-gsm8k", "2026-11-29/10-00-00/0-tiny-lora-gsm8k",
                 "paper-search/0-smollm135-full-gsm8k-lr-candidate0-seed1000",
                 "paper-search/0-smollm135-full-gsm8k-lr-candidate0-seed1000/superseded",
                 "paper-search/1-smollm135-lora-gsm8k-lr-candidate0-seed1000/superseded-2",
                 "hparams/manual/0-smollm135-lora-gsm8k-lr-candidate0-seed1000",
                 "study/0-smollm135-lora-gsm8k-seed0/superseded"):
        (tmp_path / "multirun" / cell).mkdir(parents=True)
        (tmp_path / "multirun" / cell / "result.json").write_text("{}")
    proc = subprocess.run(["make", "-n", "-f", str(REPO / "Makefile"), "report", f"VENV={REPO / '.venv'}"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    (line,) = [shlex.split(line) for line in proc.stdout.splitlines() if "-m slm_sweep.report" in line]
    assert line[3] == "multirun/2026-11-29/10-00-00"


def test_an_optuna_study_on_the_test_split_stops_before_its_first_trial(requires_data, tmp_path):
    """The sweep's preflight refuses it: trial by trial, each would be refused only as it starts."""
    from tests.test_sweep import SWEEP_SETTINGS, cli, env

    proc = subprocess.run(cli(["-m", *SWEEP_SETTINGS, *FAST_TINY, "hparams_search=optuna", "method=full",
                               "hydra.sweeper.n_trials=2", "eval.split=test",
                               "optimized_metric=accuracy_flexible"], tmp_path),
                          cwd=tmp_path, env=env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    # once, by the sweep: no trial started to be refused in its turn
    assert proc.stderr.count("config error: hparams_search=optuna is a hyperparameter search") == 1, \
        proc.stderr[-2000:]
    assert not list(tmp_path.rglob("result.json"))


# ------------------------------------------------------------------------ scoring, make paper-search, the docs


def _scored(**changes) -> dict:
    """A search cell's ``identity.scored_with`` as the code here records it, with ``changes``."""
    from slm_sweep.identity import SCORING_SOURCES, SCORING_SOURCES_SHA256, SCORING_VERSION, edited_sources

    edited = edited_sources(SCORING_SOURCES, SCORING_SOURCES_SHA256, SCORING_VERSION)
    scored = {"scoring": SCORING_VERSION, **({"edited_sources": edited} if edited else {}), "max_new_tokens": 512,
              "stop": ["</s>", "<|im_end|>", "Question:"], "generation_config": "neutral", "dtype": "float32"}
    return {k: v for k, v in {**scored, **changes}.items() if v is not None}


def _scored_record(lr, accuracy, folder, seed=1000, scored=None, **eval_settings):
    """A search cell of lora at ``lr`` in ``folder``, scored as ``scored`` says (``_scored()``)."""
    record = _record("lora", lr, accuracy, n_val=8, seed=seed)
    record["config"]["eval"].update(eval_settings)
    record["identity"] = {"scored_with": scored or _scored(), "parts": {"training": searched_code()}}
    record["result_path"] = f"/searches/{folder}/{lr:g}-{seed}/result.json"
    return record


def test_candidates_scored_by_other_scoring_code_or_settings_are_no_one_search():
    """Accuracies computed by another scoring version, edited scoring sources, other metric modules or other
    generation settings cannot be ranked against each other (the report refuses to compare such rows): the tune
    command refuses them as it refuses another rank, naming what differs and the cells holding each value."""
    alike = [_scored_record(1e-4, 0.3, "one"), _scored_record(2e-4, 0.4, "one")]
    assert choose(alike, min_val_examples=8)["gsm8k", "m", "lora"]["lr"] == 2e-4
    for changed, named in (({"edited_sources": "0dcd64585d5de857"}, "code.scoring_edited"),
                           ({"scoring": 1}, "code.scoring"),
                           ({"metric_modules": {"mine": "abc"}}, "code.metric_modules"),
                           ({"dtype": "bfloat16"}, "eval.dtype_resolved")):
        other = _scored_record(3e-3, 1.0, "other", scored=_scored(**changed))
        with pytest.raises(TuningError) as err:
            choose([*alike, other], min_val_examples=8)
        message = str(err.value)
        assert re.search(rf"gsm8k/m/lora differ in more than the learning rate \({re.escape(named)}: ", message)
        assert "computed by other scoring" in message and "pass only the folders scored alike" in message
        # the cells of each value, by their folders
        assert "1 cell (/searches/other/0.003-1000)" in message
        assert "2 cells (/searches/one/0.0001-1000, /searches/one/0.0002-1000)" in message
    # the eval settings of the config: another stop string or generation config
    for setting, value in (("stop", ["</s>"]), ("generation_config", "model"), ("max_new_tokens", 256)):
        other = _scored_record(3e-3, 1.0, "other", **{setting: value})
        with pytest.raises(TuningError, match=rf"differ in more than the learning rate \(eval.{setting}: "):
            choose([*alike, other], min_val_examples=8)
    # the same stop strings in another order stop every generation alike
    ordered = [_scored_record(lr, a, "one", stop=stop) for lr, a, stop in (
        (1e-4, 0.3, ["Question:", "</s>"]), (2e-4, 0.4, ["</s>", "Question:"]))]
    assert choose(ordered, min_val_examples=8)["gsm8k", "m", "lora"]["lr"] == 2e-4
    # a cell that failed before its keys were computed says nothing of its scoring: it refuses nothing
    failed = _scored_record(5e-4, None, "one")
    failed.update(status="failed", identity=None)
    assert choose([*alike, failed], min_val_examples=8)["gsm8k", "m", "lora"]["lr"] == 2e-4


def test_a_tuned_rate_is_refused_for_a_cell_scored_otherwise_than_its_search(tiny_cfg, tmp_path):
    """The table keeps every setting the validation scores depended on that a cell's config says, as it keeps
    eval.max_new_tokens and eval.dtype: the rate that won under one scoring need not win under another. A cell
    scored with other stop strings, another generation config or other scoring code is refused; a table written
    before these were recorded is read without them."""
    from slm_sweep.identity import SCORING_VERSION
    from slm_sweep.tune.table import read_table
    from slm_sweep.tune.table import write_table as write_lr_table
    from slm_sweep.tune.trained_with import check_tuned_under, tuned_under

    searched = tiny_cfg("method=lora", "eval.dtype=float32")
    scored = _scored(max_new_tokens=searched.eval.max_new_tokens)
    records = [{**searched_as(_record("lora", lr, accuracy, n_val=8, seed=1000), searched, lr), "model": "tiny"}
               for lr, accuracy in ((1e-4, 0.3), (2e-4, 0.4))]
    for record in records:
        record["identity"]["scored_with"] = scored
    table = write_lr_table(choose(records, min_val_examples=8), tmp_path / "lr.yaml", ["search"], None)
    trained_with = read_table(table)["searched"]["gsm8k"]["tiny"]["lora"]["trained_with"]
    assert trained_with["eval.stop"] == ["</s>", "<|im_end|>", "Question:"]
    assert trained_with["eval.generation_config"] == "neutral" and trained_with["code.scoring"] == SCORING_VERSION
    assert "code.scoring_edited" in trained_with
    # a built-in metric was chosen on, which no metric module changes; nor is the dtype auto resolved to kept
    assert not any(k.startswith(("code.metric_modules", "eval.dtype_resolved")) for k in trained_with)

    def cell(*overrides):
        return tiny_cfg("method=lora", "eval.dtype=float32", *overrides, "tuning.lr=tuned", f"tuning.table={table}")

    validate_config(cell())
    validate_config(cell("eval.stop=['Question:','<|im_end|>','</s>']"))  # the same strings in another order
    for overrides, named in ((["eval.stop=['</s>']"], r'eval.stop: searched \["</s>", "<\|im_end\|>", "Question:"\], '
                                                      r'here \["</s>"\]'),
                             (["eval.generation_config=model"], 'eval.generation_config: searched "neutral", here '
                                                                '"model"'),
                             (["eval.max_new_tokens=8"], "eval.max_new_tokens: searched 12, here 8")):
        with pytest.raises(ConfigError, match=rf"lr.gsm8k.tiny.lora in {table} was searched under other training "
                                              rf"settings than this cell's \({named}\)\. The rates were compared on "
                                              "validation scores computed otherwise"):
            validate_config(cell(*overrides))
    # scored by another version of the scoring code
    older = read_table(table)
    older["searched"]["gsm8k"]["tiny"]["lora"]["trained_with"]["code.scoring"] = SCORING_VERSION - 1
    table.write_text(yaml.safe_dump(older))
    with pytest.raises(ConfigError, match=rf"code.scoring: searched {SCORING_VERSION - 1}, here {SCORING_VERSION}\)"
                                          r".* rerun the search with this code \(`make paper-search`"):
        validate_config(cell())
    # a table written before the stop strings, the generation config and the scoring code were recorded: read
    # without them (its rate taken as compared under the cell's own scoring)
    recorded = older["searched"]["gsm8k"]["tiny"]["lora"]["trained_with"]
    older["searched"]["gsm8k"]["tiny"]["lora"]["trained_with"] = {
        k: v for k, v in recorded.items() if not k.startswith(("eval.stop", "eval.generation_config", "code.scoring"))}
    table.write_text(yaml.safe_dump(older))
    validate_config(cell("eval.stop=['</s>']", "eval.generation_config=model"))
    # a rate chosen on a metric module's metric: the modules' code is kept, and a cell scored without it refused
    module_record = {**records[0], "identity": {**records[0]["identity"],
                                                "scored_with": {**scored, "metric_modules": {"mine": "abc"}}}}
    assert "code.metric_modules" not in tuned_under(module_record, "val_accuracy_flexible")
    kept = tuned_under(module_record, "val_accuracy_mine")
    assert kept["code.metric_modules.mine"] == "abc"
    entry = {"metric": "val_accuracy_mine", "seeds": [1000], "trained_with": kept}
    with pytest.raises(ConfigError, match=r'code.metric_modules.mine: searched "abc", here null'):
        check_tuned_under(cell(), {"lr": {"gsm8k": {"tiny": {"lora": 2e-4}}},
                                   "searched": {"gsm8k": {"tiny": {"lora": entry}}}}, table)


def _paper_search(monkeypatch, tmp_path, extra, returncode=0):
    """``tune --paper-search *extra`` run in ``tmp_path``, the search itself replaced by a stub exiting
    ``returncode`` (it needs GPUs); the table written to tmp_path/lr.yaml. Returns its exit status and the search's
    command."""
    import slm_sweep.tune.cli as tune_cli

    ran = []
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(tune_cli, "DEFAULT_TABLE", str(tmp_path / "lr.yaml"))
    monkeypatch.setattr(tune_cli, "MIN_VAL_EXAMPLES", 8)
    monkeypatch.setattr(subprocess, "call", lambda command: ran.append(command) or returncode)
    return tune_cli.main(["--paper-search", *extra]), ran


def test_make_paper_search_writes_the_table_from_the_folder_its_search_wrote_to(monkeypatch, tmp_path):
    """An appended hydra.sweep.dir is where the search writes (Hydra takes the last value): the table comes from
    there, not from an earlier search in multirun/paper-search."""
    _write_cells(tmp_path / "multirun" / "paper-search", [_record("lora", lr, a, n_val=8, seed=1000)
                                                          for lr, a in ((1e-4, 0.5), (2e-4, 0.1))])
    scratch = _write_cells(tmp_path / "scratch" / "search", [_record("lora", lr, a, n_val=8, seed=1000)
                                                             for lr, a in ((1e-4, 0.1), (2e-4, 0.5))])
    status, ran = _paper_search(monkeypatch, tmp_path, ["data_root=x", f"hydra.sweep.dir={scratch}"])
    assert status == 0 and ran[0][-1] == f"hydra.sweep.dir={scratch}"
    table = yaml.safe_load((tmp_path / "lr.yaml").read_text())
    assert table["searches"] == [str(scratch)] and table["lr"]["gsm8k"]["m"]["lora"] == 2e-4
    # a folder Hydra would resolve as the search starts cannot be found again: refused before it runs
    status, ran = _paper_search(monkeypatch, tmp_path, ["hydra.sweep.dir=multirun/${now:%H-%M}"])
    assert status == 2 and not ran


@pytest.mark.parametrize("value", ["true", "True", "yes", "1"])
def test_make_paper_search_writes_no_table_when_it_only_listed_its_cells(monkeypatch, tmp_path, capsys, value):
    """preflight.only as Hydra reads its value (True and yes are true): the search ran nothing, and the table is
    not written from what an earlier search left in its folder."""
    _write_cells(tmp_path / "multirun" / "paper-search", [_record("lora", lr, a, n_val=8, seed=1000)
                                                          for lr, a in ((1e-4, 0.5), (2e-4, 0.1))])
    status, ran = _paper_search(monkeypatch, tmp_path, [f"preflight.only={value}"])
    assert status == 0 and len(ran) == 1 and not (tmp_path / "lr.yaml").exists()
    assert "no table written" in capsys.readouterr().out
    # false runs the search, and the table is written
    assert _paper_search(monkeypatch, tmp_path, [f"preflight.only={value}", "preflight.only=false"])[0] == 0
    assert (tmp_path / "lr.yaml").exists()


def test_make_paper_search_says_which_cells_failed_and_that_no_table_was_written(monkeypatch, tmp_path, capsys):
    """A search cell that failed (not diverged) makes the search exit non-zero: the table is not written from the
    other cells (their rates would be chosen among fewer candidates than the study says), and the message names
    the cells and how to go on."""
    (tmp_path / "lr.yaml").write_text("lr: {}\n")
    failed = {**_record("lora", 5e-4, None, n_val=8, seed=1000, status="failed"), "error": "CUDA out of memory"}
    _write_cells(tmp_path / "multirun" / "paper-search", [
        _record("lora", 1e-4, 0.3, n_val=8, seed=1000), _record("lora", 2e-4, 0.0, n_val=8, seed=1000,
                                                                status="diverged"), failed])
    status, _ = _paper_search(monkeypatch, tmp_path, [], returncode=1)
    err = capsys.readouterr().err
    assert status == 1 and (tmp_path / "lr.yaml").read_text() == "lr: {}\n"
    assert "the search in multirun/paper-search exited with status 1, so no table was written" in err
    assert "1 cell(s) did not complete" in err and "paper-search/2: failed: CUDA out of memory" in err
    assert "paper-search/1" not in err  # a diverged rate is a result
    assert "Run `make paper-search` again" in err and "python -m slm_sweep.tune multirun/paper-search" in err
    # a search refused before any cell ran: said so too
    status, _ = _paper_search(monkeypatch, tmp_path, ["hydra.sweep.dir=nowhere"], returncode=2)
    assert status == 2 and "none of its cells is recorded as failed" in capsys.readouterr().err


def test_make_passes_preflight_only_as_its_value():
    """PREFLIGHT_ONLY=0 runs the search and the grid, as Hydra reads preflight.only=0; 1 lists their cells."""
    for target in ("paper-search", "paper"):
        (listed,) = make_commands(target, "DATA_ROOT=", "PREFLIGHT_ONLY=1")
        (run_it,) = make_commands(target, "DATA_ROOT=", "PREFLIGHT_ONLY=0")
        assert listed[-1] == "preflight.only=1" and run_it[-1] == "preflight.only=0"
        (plain,) = make_commands(target, "DATA_ROOT=")
        assert not any(o.startswith("preflight.only") for o in plain)


def test_the_documented_optuna_searches_give_rates_a_paper_cell_accepts(tmp_path):
    """docs/tuning.md's Optuna commands, composed as written: each study trains and scores as experiment=paper's
    cells do, so the paper accepts its rate."""
    import shlex

    from omegaconf import OmegaConf

    from slm_sweep.results import redact
    from slm_sweep.tune.trained_with import check_tuned_under, tuned_under

    shown = (REPO / "docs" / "tuning.md").read_text()
    commands = [shlex.split(line) for line in shown.splitlines()
                if line.startswith("python -m slm_sweep -m hparams_search=optuna")]
    assert len(commands) == 2
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        for command in commands:
            trial = compose(config_name="config", overrides=[*command[4:], "dataset=gsm8k"])
            paper = compose(config_name="config", overrides=["experiment=paper", f"model={trial.model.name}",
                                                             f"method={trial.method.name}", "dataset=gsm8k",
                                                             "seed=0"])
            record = {"config": redact(OmegaConf.to_container(trial, resolve=True)),
                      "identity": {"parts": {"training": searched_code()}}}
            table = {"lr": {"gsm8k": {trial.model.name: {trial.method.name: 3e-4}}},
                     "searched": {"gsm8k": {trial.model.name: {trial.method.name: {
                         "metric": trial.optimized_metric, "seeds": [trial.seed],
                         "trained_with": tuned_under(record)}}}}}
            check_tuned_under(paper, table, tmp_path / "lr.yaml")



def test_the_tune_command_refuses_an_out_that_is_not_a_table_and_leaves_it_as_it_was(tmp_path, capsys):
    """A result.json or an experiment's YAML given as --out was read as an empty table and replaced; --replace
    replaced it without reading it."""
    search = _write_cells(tmp_path / "search", [_record("lora", lr, a) for lr, a in ((1e-4, 0.2), (2e-4, 0.3))])
    result = tmp_path / "result.json"
    result.write_text(json.dumps({"schema_version": 1, "status": "completed", "lr": {}, "metrics": {}}))
    experiment = tmp_path / "smoke.yaml"
    shutil.copy(CONF_DIR / "experiment" / "smoke.yaml", experiment)
    for out, named in ((result, "schema_version, status, metrics"), (experiment, "defaults, ")):
        before = out.read_text()
        for extra in ([], ["--replace"]):
            assert main([str(search), "--out", str(out), *extra]) == 2
            err = capsys.readouterr().err
            assert f"--out {out} holds {named}" in err and "which writing it would drop" in err
            assert "it is left as it was" in err and out.read_text() == before
    # a table this command wrote is one
    table = tmp_path / "lr.yaml"
    assert main([str(search), "--out", str(table)]) == 0
    assert main([str(search), "--out", str(table), "--replace"]) == 0


def test_the_tune_command_refuses_a_folder_or_a_file_below_a_file_as_out(tmp_path, capsys):
    """A folder got "the learning-rate table ... does not exist: write it with python -m slm_sweep.tune"; a path
    below a file a FileExistsError traceback."""
    search = _write_cells(tmp_path / "search", [_record("lora", lr, a) for lr, a in ((1e-4, 0.2), (2e-4, 0.3))])
    (folder := tmp_path / "tables").mkdir()
    (afile := tmp_path / "notes.txt").write_text("notes\n")
    for out, message in ((folder, f"{folder} is a folder; --out expects the path of the table's file (such as "
                                  f"{folder / 'lr.yaml'})"),
                         (afile / "lr.yaml", f"{afile / 'lr.yaml'} cannot be written: {afile} is a file, not a "
                                             "folder; --out expects the path of the table's file")):
        with pytest.raises(SystemExit) as exit_:
            main([str(search), "--out", str(out)])
        assert exit_.value.code == 2 and f"argument --out: {message}" in capsys.readouterr().err
    assert list(folder.iterdir()) == [] and afile.read_text() == "notes\n"


def test_a_table_setting_that_names_a_folder_says_so(tiny_cfg, tmp_path):
    cfg = tiny_cfg("method=lora", "tuning.lr=tuned", f"tuning.table={tmp_path}")
    with pytest.raises(ConfigError, match=f"tuning.table: the learning-rate table {tmp_path} is a folder: name the "
                                          f"table's file \\(such as {tmp_path / 'lr.yaml'}\\)"):
        validate_config(cfg)


@pytest.mark.parametrize(("value", "message"), [
    ("-5", "argument --min-val-examples: -5: expected a whole number of at least 0"),
    ("2.5", "argument --min-val-examples: '2.5' is not a whole number (expected one of at least 0)")])
def test_the_tune_command_refuses_a_negative_minimum_of_validation_examples(tmp_path, capsys, value, message):
    with pytest.raises(SystemExit) as exit_:
        main([str(tmp_path), "--min-val-examples", value, "--out", str(tmp_path / "lr.yaml")])
    assert exit_.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "lr.yaml").exists()
