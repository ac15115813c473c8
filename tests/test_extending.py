"""The README's "Extending" rows, each added from files outside the package and run without a code change: a
model, a dataset, a method (conf/<group>/<name>.yaml in a folder named by hydra.searchpath), a metric (a Python
module named in eval.metric_modules) and a launcher (conf/hydra/launcher/<name>.yaml). A cell uses the first four at
once; a 2-cell sweep (marked slow) runs all five through `python -m slm_sweep -m`."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from slm_sweep import scoring
from tests.conftest import LAST_DIGIT_METRIC, REPO, compose_config, last_digit_verdict

MODEL = """\
# a random Llama smaller than tiny, with its own seed
name: mytiny
source: tiny
id: my-tiny-llama
vocab_size: 1000
hidden_size: 32
intermediate_size: 64
num_layers: 1
num_heads: 2
init_seed: 7
"""

DATASET = """\
# sums in my own format: {"problem": ..., "result": <number>}
name: mysums
local: {dir_name: mysums, files: {train: train.jsonl, test: test.jsonl}}
question: [problem]
answer: result
answer_format: number
val_size: 4
"""

OOD_DATASET = """\
# differences, scored only (no train split): an out-of-domain set and a deduplication set from my own folder
name: mydiffs
local: {dir_name: mydiffs, files: {test: test.jsonl}}
question: [problem]
answer: result
answer_format: number
val_size: null
eval_only: true
"""

METHOD = """\
# (IA)^3: learned rescaling vectors on keys, values and the feed-forward input, a peft method that is no LoRA
name: ia3
train: true
lr: 1.0e-2
peft:
  _target_: peft.IA3Config
  target_modules: [k_proj, v_proj, down_proj]
  feedforward_modules: [down_proj]
"""

LAUNCHER = """\
# the cells one after another in this process, as Hydra's basic launcher runs them
defaults:
  - basic
"""


def write_extensions(root: Path) -> dict[str, Path]:
    conf, data = root / "conf", root / "data" / "mysums"
    for folder in ("model", "dataset", "method", "hydra/launcher"):
        (conf / folder).mkdir(parents=True, exist_ok=True)
    (conf / "model" / "mytiny.yaml").write_text(MODEL)
    (conf / "dataset" / "mysums.yaml").write_text(DATASET)
    (conf / "dataset" / "mydiffs.yaml").write_text(OOD_DATASET)
    (conf / "method" / "ia3.yaml").write_text(METHOD)
    (conf / "hydra" / "launcher" / "inline.yaml").write_text(LAUNCHER)
    (root / "mymetrics.py").write_text(LAST_DIGIT_METRIC)
    data.mkdir(parents=True)
    for split, count, offset in (("train", 24, 0), ("test", 4, 100)):
        rows = [{"problem": f"What is {offset + i} plus {i + 3}?", "result": offset + 2 * i + 3} for i in range(count)]
        (data / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    diffs = root / "data" / "mydiffs"
    diffs.mkdir()
    rows = [{"problem": f"What is {50 + i} minus {i}?", "result": 50} for i in range(3)]
    (diffs / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return {"conf": conf, "data_root": root / "data"}


# a dataset of the user's folder as an out-of-domain set and a deduplication set, not only as dataset=
OOD_AND_DEDUP = ["eval.ood_sets=[mydiffs]", "dataset.dedup.against=[mydiffs]"]


FAST = ["trainer.max_steps=2", "trainer.batch_size=4", "trainer.micro_batch_size=4", "trainer.max_length=64",
        "trainer.progress_bar=false", "trainer.checkpoint_every_n_steps=null", "trainer.log_every_n_steps=1",
        "eval.max_new_tokens=4", "eval.progress=false", "logger=none"]


def test_a_model_dataset_method_and_metric_from_outside_the_package_run_a_cell(tmp_path, monkeypatch,
                                                                               restored_metrics):
    from slm_sweep.config_sources import use_config_sources
    from slm_sweep.run import run

    paths = write_extensions(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))  # where the metric module is
    cfg = compose_config([f"hydra.searchpath=[file://{paths['conf']}]", "model=mytiny", "dataset=mysums",
                          "method=ia3", f"data_root={paths['data_root']}", "eval.metric_modules=[mymetrics]",
                          "resume.enabled=false", *OOD_AND_DEDUP, *FAST])
    # what `python -m slm_sweep` does with the Hydra job's config sources
    use_config_sources([{"schema": "file", "path": str(paths["conf"]), "provider": "hydra.searchpath"}])
    record = run(cfg, out_dir=tmp_path / "cell")
    assert record["status"] == "completed", record.get("error")
    assert record["eval_sets"]["mydiffs"]["n_eval"] == 3
    assert record["dedup"]["against"] == {"test": 4, "mydiffs": 3, "validation": 4} and not record["dedup"]["skipped"]
    assert (record["model"], record["method"], record["dataset"]) == ("mytiny", "ia3", "mysums")
    metrics = record["metrics"]
    assert metrics["n_eval"] == 4 and metrics["train_steps"] == 2
    assert 0 < metrics["trainable_params"] < metrics["total_params"]
    predictions = [json.loads(line) for line in (tmp_path / "cell" / "predictions.jsonl").read_text().splitlines()]
    assert {p["reference"] for p in predictions if p["eval_set"] == "mydiffs"} == {"50"}
    assert {p["reference"] for p in predictions if p["eval_set"] == "mysums"} == {"103", "105", "107", "109"}
    verdicts = []
    for eval_set, scores in (("mysums", metrics), ("mydiffs", record["eval_sets"]["mydiffs"])):
        hits = [last_digit_verdict(p["output"], p["reference"]) for p in predictions if p["eval_set"] == eval_set]
        assert [p["correct_last_digit"] for p in predictions if p["eval_set"] == eval_set] == hits, eval_set
        assert scores["accuracy_last_digit"] == pytest.approx(sum(hits) / len(hits)), eval_set
        verdicts += hits
    assert len(set(verdicts)) == 2, "the metric is right on some answers and wrong on others"
    adapter = json.loads((tmp_path / "cell" / "adapter" / "adapter_config.json").read_text())
    assert adapter["peft_type"] == "IA3" and sorted(adapter["target_modules"]) == ["down_proj", "k_proj", "v_proj"]


def test_a_dataset_file_built_on_another_reads_the_same_as_dataset_and_as_an_out_of_domain_set(tmp_path):
    """``defaults: [mysums, _self_]`` in a dataset file: Hydra merges it for ``dataset=``; the readers of
    out-of-domain and dedup sets merge it the same way (they failed on the ``defaults`` key)."""
    from slm_sweep.config_sources import use_config_sources
    from slm_sweep.data import DataError, dataset_spec, load_eval_set

    paths = write_extensions(tmp_path)
    (paths["conf"] / "dataset" / "mysums_test.yaml").write_text(
        "defaults: [mysums, _self_]\nname: mysums_test\neval_only: true\nval_size: null\n")
    (paths["conf"] / "dataset" / "loop_a.yaml").write_text("defaults: [loop_b]\nname: loop_a\n")
    (paths["conf"] / "dataset" / "loop_b.yaml").write_text("defaults: [loop_a]\nname: loop_b\n")
    composed = compose_config([f"hydra.searchpath=[file://{paths['conf']}]", "dataset=mysums_test"]).dataset
    use_config_sources([{"schema": "file", "path": str(paths["conf"]), "provider": "hydra.searchpath"}])
    try:
        spec = dataset_spec("mysums_test")
        assert OmegaConf.to_container(spec) == OmegaConf.to_container(composed)
        assert spec.local.dir_name == "mysums" and spec.question == ["problem"] and spec.eval_only
        assert len(load_eval_set("mysums_test", data_root=paths["data_root"])) == 4
        with pytest.raises(DataError, match="its defaults list comes back to it"):
            dataset_spec("loop_a")
    finally:
        use_config_sources([])


def test_a_user_file_that_a_package_file_shadows_is_named(tmp_path, caplog):
    """Hydra composes the package's conf/model/tiny.yaml before a search-path folder's own tiny.yaml, silently."""
    import logging

    from slm_sweep.config_sources import CONF_DIR, shadowed_files, use_config_sources

    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "tiny.yaml").write_text("name: tiny\nsource: tiny\nhidden_size: 96\n")
    (tmp_path / "model" / "mine.yaml").write_text("name: mine\nsource: tiny\n")
    try:
        with caplog.at_level(logging.WARNING):
            use_config_sources([{"schema": "file", "path": str(tmp_path), "provider": "hydra.searchpath"}])
        assert shadowed_files() == [(tmp_path.resolve() / "model" / "tiny.yaml", CONF_DIR / "model" / "tiny.yaml")]
        assert f"{tmp_path.resolve() / 'model' / 'tiny.yaml'} is not used" in caplog.text
        assert "mine.yaml" not in caplog.text
    finally:
        use_config_sources([])


def test_a_hydra_job_reads_dataset_files_from_its_search_path(tmp_path):
    """``python -m slm_sweep`` hands the job's config sources to slm_sweep.config_sources; a dataset of the user's
    folder is then known by name, and an unknown one's error names both folders."""
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig

    from slm_sweep.config_sources import CONF_DIR, use_hydra_search_path
    from slm_sweep.data import DataError, dataset_spec, known_datasets

    paths = write_extensions(tmp_path)
    assert "mydiffs" not in known_datasets()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=[f"hydra.searchpath=[file://{paths['conf']}]"], return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    try:
        assert use_hydra_search_path() == (CONF_DIR, paths["conf"].resolve())
    finally:
        HydraConfig.instance().cfg = None
    assert {"mydiffs", "mysums", "gsm8k"} <= set(known_datasets())
    assert dataset_spec("mydiffs").eval_only is True
    with pytest.raises(DataError, match=f"the datasets in conf/dataset/ and {paths['conf'].resolve()}/dataset are"):
        dataset_spec("nosuchset")
    assert use_hydra_search_path() == (CONF_DIR,)  # outside a job: the package's folder alone
    assert "mydiffs" not in known_datasets()


def test_a_sweep_checks_out_of_domain_and_dedup_sets_from_the_user_folder_before_it_starts(tmp_path):
    """Two out-of-domain sets of the user's folder: one readable (checked), one whose files are not there (left
    out before any cell, named in the output)."""
    paths = write_extensions(tmp_path)
    (paths["conf"] / "dataset" / "mymissing.yaml").write_text(OOD_DATASET.replace("mydiffs", "mymissing"))
    proc = subprocess.run(
        [sys.executable, "-m", "slm_sweep", "-m", f"hydra.searchpath=[file://{paths['conf']}]", "model=mytiny",
         "dataset=mysums", f"data_root={paths['data_root']}", "method=ia3,zeroshot",
         "eval.ood_sets=[mydiffs,mymissing]", "dataset.dedup.against=[mydiffs]", "preflight.only=true",
         f"hydra.sweep.dir={tmp_path / 'sweep'}"],
        cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "preflight.only: 2 of 2 cells would run" in proc.stdout
    assert "mymissing" in proc.stdout + proc.stderr
    plan = json.loads((tmp_path / "sweep" / "preflight.json").read_text())
    assert any(c["ok"] and c["name"] == "mydiffs" for c in plan["checked"]), plan["checked"]
    assert plan["ood_sets_dropped"] == ["mymissing"] and not plan["config_errors"], plan


def test_a_launcher_from_outside_the_package_is_chosen_by_name(tmp_path):
    from hydra import compose, initialize_config_dir

    from tests.conftest import CONF_DIR

    paths = write_extensions(tmp_path)
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=[f"hydra.searchpath=[file://{paths['conf']}]", "hydra/launcher=inline"],
                      return_hydra_config=True)
    assert cfg.hydra.launcher._target_ == "hydra._internal.core_plugins.basic_launcher.BasicLauncher"


@pytest.mark.slow
def test_a_model_dataset_method_metric_and_launcher_from_outside_the_package_run_a_sweep(tmp_path):
    paths = write_extensions(tmp_path)
    args = [sys.executable, "-m", "slm_sweep", "-m", f"hydra.searchpath=[file://{paths['conf']}]",
            "hydra/launcher=inline", "model=mytiny", "dataset=mysums", f"data_root={paths['data_root']}",
            "eval.metric_modules=[mymetrics]", "method=ia3,zeroshot", *OOD_AND_DEDUP, *FAST]
    # the working directory is on the Python path of `python -m`, as for a user's own metric module
    proc = subprocess.run(args, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO), "HYDRA_FULL_ERROR": "1"},
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    (sweep,) = [p for p in (tmp_path / "multirun").glob("*/*") if p.is_dir()]
    cells = {json.loads(p.read_text())["method"]: p for p in sweep.glob("*/result.json")}
    assert sorted(cells) == ["ia3", "zeroshot"]
    for path in cells.values():
        record = json.loads(path.read_text())
        assert record["status"] == "completed", record.get("error")
        assert (record["model"], record["dataset"]) == ("mytiny", "mysums")
        assert record["metrics"]["n_eval"] == 4 and record["eval_sets"]["mydiffs"]["n_eval"] == 3
        assert record["config"]["model"]["hidden_size"] == 32
        every = [json.loads(line) for line in (path.parent / "predictions.jsonl").read_text().splitlines()]
        predictions = [p for p in every if p["eval_set"] == "mysums"]
        assert {p["reference"] for p in predictions} == {"103", "105", "107", "109"}
        assert all("extracted_last_digit" in p for p in predictions)
        # each set's verdicts and accuracy worked out here from the answers
        for eval_set, scores in (("mysums", record["metrics"]), ("mydiffs", record["eval_sets"]["mydiffs"])):
            answers = [p for p in every if p["eval_set"] == eval_set]
            hits = [last_digit_verdict(p["output"], p["reference"]) for p in answers]
            assert [p["correct_last_digit"] for p in answers] == hits, eval_set
            assert scores["accuracy_last_digit"] == pytest.approx(sum(hits) / len(hits)), eval_set
        hydra_cfg = OmegaConf.load(path.parent / ".hydra" / "hydra.yaml")
        assert hydra_cfg.hydra.runtime.choices["hydra/launcher"] == "inline"
    ia3 = json.loads(cells["ia3"].read_text())
    assert ia3["metrics"]["train_steps"] == 2 and 0 < ia3["metrics"]["trainable_params"] < ia3["metrics"]["total_params"]
    adapter = json.loads((cells["ia3"].parent / "adapter" / "adapter_config.json").read_text())
    assert adapter["peft_type"] == "IA3" and sorted(adapter["target_modules"]) == ["down_proj", "k_proj", "v_proj"]
    with open(sweep / "summary.csv", newline="") as f:
        rows = {(r["model"], r["method"], r["dataset"]) for r in csv.DictReader(f)}
    assert rows == {("mytiny", "ia3", "mysums"), ("mytiny", "zeroshot", "mysums")}


def test_a_registered_metric_is_scored_everywhere_a_built_in_one_is(restored_metrics):
    scoring.register_metric("has_digit", lambda text: "1" if any(c.isdigit() for c in text) else None,
                            lambda text, reference, tolerance: any(c.isdigit() for c in text))
    assert "accuracy_has_digit" in scoring.ACCURACY_KEYS and "has_digit" in scoring.MODES
    assert scoring.score("the answer is 4", "4", None)["correct_has_digit"] is True
    assert scoring.is_correct("no number", "4", "has_digit") is False
    with pytest.raises(ValueError, match="already registered"):
        scoring.register_metric("strict", len, len)
    with pytest.raises(ValueError, match="lower-case letters"):
        scoring.register_metric("Has Digit", len, len)


@pytest.mark.parametrize("body, message", [
    ("def correct(text, reference, tolerance):\n    return 1 / 0\n",
     "metric 'faulty' (faultymetrics.correct) raised ZeroDivisionError: division by zero on the output"),
    ("def correct(text, reference, tolerance):\n    return 'yes'\n",
     "metric 'faulty' (faultymetrics.correct) returned 'yes' (str); correct must return a bool"),
    ("def correct(text, reference, tolerance):\n    return True\nundefined_name\n", "NameError"),
])
def test_a_faulty_metric_fails_the_cell_before_it_reads_data(restored_metrics, tiny_cfg, tmp_path, monkeypatch,
                                                             body, message):
    from slm_sweep.config import ConfigError
    from slm_sweep.run import run

    (tmp_path / "faultymetrics.py").write_text("from slm_sweep.scoring import register_metric\n\n" + body
                                               + "\nregister_metric('faulty', lambda text: None, correct)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("faultymetrics", None)
    with pytest.raises(ConfigError, match="eval.metric_modules=\\['faultymetrics'\\]") as err:
        run(tiny_cfg("eval.metric_modules=[faultymetrics]"), out_dir=tmp_path / "cell")
    assert message in str(err.value) and not (tmp_path / "cell").exists()
    sys.modules.pop("faultymetrics", None)


def test_a_metric_module_changes_the_evaluation_key_but_not_the_training_key(tiny_cfg, tmp_path, monkeypatch,
                                                                           restored_metrics):
    """The module's code is in the evaluation key as this process imported it to score with: an edit made since
    keeps the key (the process still scores with the code it imported), a new process keys the edited file."""
    from slm_sweep.identity import forget_running_code
    from slm_sweep.results import redact
    from slm_sweep.run import identify, load_data

    (tmp_path / "mymetrics.py").write_text(LAST_DIGIT_METRIC)
    monkeypatch.syspath_prepend(str(tmp_path))

    def keys(*extra):
        cfg = tiny_cfg("method=lora", *extra)
        identity = identify(cfg, redact(OmegaConf.to_container(cfg, resolve=True)), load_data(cfg))
        return identity.training_key, identity.evaluation_key

    plain, with_metric = keys(), keys("eval.metric_modules=[mymetrics]")
    assert with_metric[0] == plain[0] and with_metric[1] != plain[1]
    (tmp_path / "mymetrics.py").write_text(LAST_DIGIT_METRIC.replace("[-1]", "[0]"))  # the metric's code changed
    assert keys("eval.metric_modules=[mymetrics]") == with_metric  # still scored with the code imported
    forget_running_code()  # as a new process: imported and hashed again
    assert keys("eval.metric_modules=[mymetrics]")[1] != with_metric[1]


def test_a_metric_dropped_into_the_metrics_folder_is_scored_by_every_cell_with_no_setting(
        tiny_cfg, tmp_path, monkeypatch, restored_metrics):
    """A module of slm_sweep/metrics/ is one file: a cell scores its metric without eval.metric_modules, a
    dataset's claims_metric may name it, and its source is in the evaluation key only."""
    import slm_sweep.metrics
    from slm_sweep.config import ConfigError, use_metric_modules_checked
    from slm_sweep.identity import metric_modules_identity
    from slm_sweep.results import read_result, redact
    from slm_sweep.run import identify, load_data, run

    def keys(*extra):
        cfg = tiny_cfg("method=lora", *extra)
        identity = identify(cfg, redact(OmegaConf.to_container(cfg, resolve=True)), load_data(cfg))
        return identity.training_key, identity.evaluation_key

    plain = keys()
    folder = tmp_path / "metrics"
    folder.mkdir()
    (folder / "last_digit.py").write_text(LAST_DIGIT_METRIC)
    (folder / "_helpers.py").write_text("raise RuntimeError('a private module is not a metric')\n")
    monkeypatch.setattr(slm_sweep.metrics, "__path__", [*slm_sweep.metrics.__path__, str(folder)])
    monkeypatch.delitem(sys.modules, "slm_sweep.metrics.last_digit", raising=False)
    assert scoring.folder_metric_modules() == ["slm_sweep.metrics.last_digit"]
    with_metric = keys()
    assert with_metric[0] == plain[0] and with_metric[1] != plain[1]
    assert set(metric_modules_identity(scoring.metric_module_names())["metric_modules"]) == {
        "slm_sweep.metrics.last_digit"}
    use_metric_modules_checked(tiny_cfg("dataset.claims_metric=last_digit"))  # a registered metric now
    run(tiny_cfg("method=zeroshot", "dataset.test_limit=3"), out_dir=tmp_path / "cell")
    record = read_result(tmp_path / "cell" / "result.json")
    assert record["status"] == "completed" and "accuracy_last_digit" in record["metrics"]
    monkeypatch.setattr(slm_sweep.metrics, "__path__", list(slm_sweep.metrics.__path__)[:-1])
    with pytest.raises(ConfigError, match="claims_metric='last_digit' is not a registered metric"):
        use_metric_modules_checked(tiny_cfg("dataset.claims_metric=last_digit"))


HELPER = """\
import re


def last_digit(text):
    digits = re.findall(r"[0-9]", str(text))
    return digits[-1] if digits else None
"""

HELPED_METRIC = """\
from slm_sweep.metrics._digits import last_digit
from slm_sweep.scoring import register_metric

register_metric("digit_match", last_digit,
                lambda text, reference, tolerance: last_digit(text) is not None and last_digit(text) == last_digit(reference))
"""


def test_a_helper_module_of_the_metrics_folder_is_in_the_evaluation_key(tiny_cfg, tmp_path, monkeypatch,
                                                                       restored_metrics):
    """The metrics folder is keyed as a whole: a metric whose logic lives in a private helper of the folder
    (``_digits.py``, which is no metric) re-scores when the helper is edited, and only the evaluation key moves."""
    import slm_sweep.metrics
    from slm_sweep.identity import forget_running_code
    from slm_sweep.results import redact
    from slm_sweep.run import identify, load_data

    def keys():
        cfg = tiny_cfg("method=lora")
        identity = identify(cfg, redact(OmegaConf.to_container(cfg, resolve=True)), load_data(cfg))
        return identity.training_key, identity.evaluation_key

    folder = tmp_path / "metrics"
    folder.mkdir()
    (folder / "digit_match.py").write_text(HELPED_METRIC)
    (folder / "_digits.py").write_text(HELPER)
    monkeypatch.setattr(slm_sweep.metrics, "__path__", [*slm_sweep.metrics.__path__, str(folder)])
    for name in ("slm_sweep.metrics.digit_match", "slm_sweep.metrics._digits"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    assert scoring.folder_metric_modules() == ["slm_sweep.metrics.digit_match"]
    before = keys()
    (folder / "_digits.py").write_text(HELPER.replace("[-1]", "[0]"))  # the metric's logic changed
    forget_running_code()  # a new process
    for name in ("slm_sweep.metrics.digit_match", "slm_sweep.metrics._digits"):
        sys.modules.pop(name, None)
    after = keys()
    assert after[0] == before[0] and after[1] != before[1]


EDITED_MID_SWEEP = """
import json, sys
from pathlib import Path
from hydra import compose, initialize_config_dir
import slm_sweep, slm_sweep.metrics
from slm_sweep.run import run

overrides, edits = json.loads(sys.argv[1]), json.loads(sys.argv[2])
slm_sweep.metrics.__path__.append(str(Path("metrics").resolve()))  # a metric dropped into the metrics folder
conf = Path(slm_sweep.__file__).parent / "conf"


def cell(seed):
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        record = run(compose(config_name="config", overrides=[*overrides, f"seed={seed}"]), out_dir=f"seed{seed}")
    return {"status": record["status"], "error": record.get("error"), "metrics": record["metrics"],
            "callbacks": record["identity"]["parts"]["training"]["callback_sources"],
            "metric_modules": record["identity"]["scored_with"]["metric_modules"]}


first = cell(0)
for path, text in edits.items():  # edited while the sweep runs, after its first cell
    Path(path).write_text(text)
print(json.dumps([first, cell(1)]))
"""

MARKER_CALLBACK = """\
from pathlib import Path

from lightning.pytorch.callbacks import Callback

VERSION = "v1"


class Marker(Callback):
    def on_train_start(self, trainer, pl_module):
        with open(Path(__file__).with_name("ran.txt"), "a") as f:
            f.write(VERSION + "\\n")
"""

VERSIONED_METRIC = """\
from slm_sweep.scoring import register_metric

VERSION = "v1"
register_metric("mine", lambda text: VERSION, lambda text, reference, tolerance: VERSION == "v2")
"""

FLAG_HELPER = "FLAG = False\n"
FLAGGED_METRIC = """\
from slm_sweep.metrics._flag import FLAG
from slm_sweep.scoring import register_metric

register_metric("flagged", lambda text: str(FLAG), lambda text, reference, tolerance: FLAG)
"""


def test_code_edited_while_a_one_process_sweep_runs_keeps_the_keys_of_the_code_its_cells_ran(tmp_path,
                                                                                              requires_data):
    """The cells of a one-process sweep (Hydra's basic launcher) run a metric module, a weight-changing callback
    and a metrics folder's helper as imported at the first cell that used them: a later cell's keys must hold
    that code's hash, not the files' as edited since (which would file the old code's numbers under the edited
    code's key, for a run of the edited code to reuse). A new process keys the edited files."""
    import hashlib

    import slm_sweep.metrics
    from slm_sweep.identity import metric_module_code
    from tests.conftest import FAST_TINY

    (tmp_path / "user_marker.py").write_text(MARKER_CALLBACK)
    (tmp_path / "user_metric.py").write_text(VERSIONED_METRIC)
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics" / "flagged.py").write_text(FLAGGED_METRIC)
    (tmp_path / "metrics" / "_flag.py").write_text(FLAG_HELPER)
    edits = {"user_marker.py": MARKER_CALLBACK.replace('"v1"', '"v2"'),
             "user_metric.py": VERSIONED_METRIC.replace('"v1"', '"v2"'), "metrics/_flag.py": "FLAG = True\n"}
    overrides = [*FAST_TINY, "method=lora", "dataset.train_limit=16", "dataset.val_size=4", "dataset.test_limit=4",
                 "trainer.max_steps=2", "eval.max_new_tokens=4",
                 "+callbacks.marker={_target_:user_marker.Marker}", "eval.metric_modules=[user_metric]"]
    done = subprocess.run([sys.executable, "-c", EDITED_MID_SWEEP, json.dumps(overrides), json.dumps(edits)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(REPO)]),
                               "WANDB_MODE": "disabled"})
    assert done.returncode == 0, done.stderr[-3000:]
    first, second = json.loads(done.stdout.strip().splitlines()[-1])
    assert first["status"] == second["status"] == "completed", (first["error"], second["error"])
    assert (tmp_path / "ran.txt").read_text() == "v1\nv1\n"  # both cells trained with the callback as imported
    assert second["metrics"]["accuracy_mine"] == second["metrics"]["accuracy_flagged"] == 0.0  # scored by v1
    assert second["callbacks"] == first["callbacks"] == {
        "marker": hashlib.sha256(MARKER_CALLBACK.encode()).hexdigest()}
    assert second["metric_modules"] == first["metric_modules"]
    assert first["metric_modules"]["user_metric"] == hashlib.sha256(VERSIONED_METRIC.encode()).hexdigest()
    # a new process keys what is on disk now
    assert hashlib.sha256(edits["user_metric.py"].encode()).hexdigest() != first["metric_modules"]["user_metric"]
    path = slm_sweep.metrics.__path__
    try:
        slm_sweep.metrics.__path__ = [*path, str(tmp_path / "metrics")]
        edited = metric_module_code("slm_sweep.metrics.flagged")
    finally:
        slm_sweep.metrics.__path__ = path
    assert edited != first["metric_modules"]["slm_sweep.metrics.flagged"]


def test_a_method_file_in_a_user_config_folder_composes_and_validates(tmp_path):
    from slm_sweep.config import validate_config

    paths = write_extensions(tmp_path)
    cfg = compose_config([f"hydra.searchpath=[file://{paths['conf']}]", "method=ia3", "model=mytiny"])
    validate_config(cfg)
    assert cfg.method.peft._target_ == "peft.IA3Config" and cfg.model.hidden_size == 32


def test_a_metric_module_of_one_cell_does_not_carry_over_into_the_next(restored_metrics, tmp_path, monkeypatch):
    """The cells of a sweep share one process: a cell without eval.metric_modules scores the built-in metrics
    only, and a later cell naming the module again gets its metric back (Python imports a module once)."""
    (tmp_path / "mymetrics.py").write_text(LAST_DIGIT_METRIC)
    monkeypatch.syspath_prepend(str(tmp_path))
    scoring.use_metric_modules(["mymetrics"])
    assert "accuracy_last_digit" in scoring.ACCURACY_KEYS
    scoring.use_metric_modules([])
    assert "last_digit" not in scoring.METRICS and "accuracy_last_digit" not in scoring.ACCURACY_KEYS
    scoring.use_metric_modules(["mymetrics"])
    assert scoring.score("so 17", "7", None)["correct_last_digit"] is True


def test_every_file_of_a_metric_package_is_in_the_evaluation_key(tmp_path, monkeypatch, restored_metrics):
    """A module of eval.metric_modules in a package is keyed by its top-level package, every file of it: the
    metric may call its siblings."""
    from slm_sweep.identity import forget_running_code, metric_modules_identity

    package = tmp_path / "mypackage"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("from .impl import *\n")
    (package / "impl.py").write_text("THRESHOLD = 1\n")
    (package / "sub" / "__init__.py").write_text("")
    (package / "sub" / "metric.py").write_text("from mypackage.impl import THRESHOLD\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in ("mypackage", "mypackage.impl", "mypackage.sub", "mypackage.sub.metric"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    before = metric_modules_identity(["mypackage", "mypackage.sub.metric"])
    (package / "impl.py").write_text("THRESHOLD = 2\n")
    assert metric_modules_identity(["mypackage", "mypackage.sub.metric"]) == before  # the code imported
    forget_running_code()
    after = metric_modules_identity(["mypackage", "mypackage.sub.metric"])["metric_modules"]
    assert after["mypackage"] != before["metric_modules"]["mypackage"]
    assert after["mypackage.sub.metric"] != before["metric_modules"]["mypackage.sub.metric"]
