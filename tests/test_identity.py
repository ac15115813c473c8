"""A cell's identity: which changes force retraining, which only re-scoring, which nothing; reuse and re-scoring
from kept adapters by those keys."""

from __future__ import annotations

import json
import os
import re

import pytest
from conftest import compose_config
from omegaconf import OmegaConf

from slm_sweep.identity import (
    SCORING_SOURCES,
    SCORING_SOURCES_SHA256,
    SCORING_VERSION,
    TRAINING_CODE_VERSION,
    TRAINING_SOURCES,
    TRAINING_SOURCES_SHA256,
    sources_digest,
)
from slm_sweep.results import read_result
from slm_sweep.run import TRAINING_METRICS, identify, keyed_config, load_data, run
from slm_sweep.sweep.resume import KEY_STAMP, kept_weights, stamped_key


def identity_of(cfg):
    """The cell's identity as run() computes it (from the config before redaction)."""
    return identify(cfg, keyed_config(OmegaConf.to_container(cfg, resolve=True)), load_data(cfg))


def keys(cfg):
    identity = identity_of(cfg)
    return identity.training_key, identity.evaluation_key


@pytest.fixture
def base(tiny_cfg):
    return lambda *extra: keys(tiny_cfg("method=lora", *extra))


RETRAIN = ["method.lr=0.001", "method.r=8", "trainer.max_steps=4", "seed=1", "dataset.train_limit=40",
           "model.init_seed=1", "trainer.precision=bf16-mixed", "prompt.system=Be brief.", "trainer.max_length=128",
           "dataset.val_size=6", "dataset.dedup.enabled=false", "dataset.dedup.near_threshold=0.9",
           "dataset.dedup.against=[svamp]", "method.peft.use_dora=true", "+method.peft.use_rslora=true",
           "method.target_modules=[q_proj,v_proj]",
           "model.quantization={_target_:transformers.BitsAndBytesConfig,load_in_4bit:true}",
           "trainer=ddp_cpu",  # two processes: the epoch's last step is cut to a multiple of two
           "+callbacks.swa={_target_:lightning.pytorch.callbacks.StochasticWeightAveraging,swa_lrs:0.01}",
           "+method.optimizer={_target_:torch.optim.SGD,momentum:0.9}", "+method.lr_scale={lora_B:16}",
           "trainer.lr_schedule=linear"]
RESCORE = ["eval.generation_config=model", "eval.max_new_tokens=20", "eval.ood_sets=[svamp]", "dataset.test_limit=10", "eval.dtype=bfloat16",
           "dataset.answer_tolerance=0.01",
           "eval.stop=[Q:]"]
NOTHING = ["trainer.micro_batch_size=4", "trainer.packing=true", "trainer.compile=true", "trainer.compile_scope=model", "eval.engine=plain",
           "eval.token_budget=4096", "eval.max_batch_size=3", "eval.cuda_graphs=true", "logger=csv",
           "trainer.log_every_n_steps=5", "eval.progress=true", "trainer.micro_batch_tokens=512",
           "trainer.checkpoint_every_n_steps=7", "resume.search_dir=elsewhere", "logger=wandb_csv",
           "callbacks=none", "tuning.table=elsewhere.yaml", "dataset.dedup.on_missing=error"]


_UNCHANGED: list = []


@pytest.fixture
def unchanged(base):
    """The default LoRA cell's keys, computed once for the parametrized comparisons below (nothing they change is
    global: each change is an override of its own cell)."""
    if not _UNCHANGED:
        _UNCHANGED.append(base())
    return _UNCHANGED[0]


@pytest.mark.parametrize("change", RETRAIN)
def test_what_changes_the_weights_changes_both_keys(base, unchanged, change):
    train, evaluation = unchanged
    changed_train, changed_eval = base(change)
    assert changed_train != train and changed_eval != evaluation


@pytest.mark.parametrize("change", RESCORE)
def test_what_changes_only_scores_keeps_the_training_key(base, unchanged, change):
    train, evaluation = unchanged
    changed_train, changed_eval = base(change)
    assert changed_train == train and changed_eval != evaluation


@pytest.mark.parametrize("change", NOTHING)
def test_speed_and_logging_settings_change_neither_key(base, unchanged, change):
    assert base(change) == unchanged


def test_other_spellings_of_a_setting_and_a_display_callback_change_neither_key(base):
    assert base("trainer.precision=32", "trainer.gradient_clip_val=1", "model.init_seed=null",
                "+callbacks.lr={_target_:lightning.pytorch.callbacks.LearningRateMonitor}") == base()
    # a whole number written as a float, the dedup sets and the stop strings in another order (or repeated)
    default = compose_config(["model=tiny"])
    against = ",".join(reversed(list(default.dataset.dedup.against)))
    stop = ",".join(f"'{s}'" for s in [*reversed(list(default.eval.stop)), default.eval.stop[0]])
    assert base("method.alpha=32.0", f"dataset.dedup.against=[{against}]", f"eval.stop=[{stop}]") == base()


USER_CALLBACK = """
from lightning.pytorch.callbacks import Callback


class {name}(Callback):
    changes_weights = {changes}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        {body}
"""


def test_a_callback_that_declares_it_changes_no_weight_stays_out_and_an_edited_one_retrains(base, tmp_path,
                                                                                             monkeypatch):
    """A user's callback that only prints says so (``changes_weights = False``) and changes neither key; one that
    may change the weights is in the training key with its module's source, so editing it in place retrains. The
    source is hashed once per process, as the module is imported: a process trains with the callback it imported,
    so its later keys keep that code (a new process, here forget_running_code, keys the edited file)."""
    from slm_sweep.identity import forget_running_code

    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "user_printer.py").write_text(USER_CALLBACK.format(name="Printer", changes=False, body="print(1)"))
    (tmp_path / "user_clamp.py").write_text(USER_CALLBACK.format(name="Clamp", changes=True, body="pass"))
    assert base("+callbacks.show={_target_:user_printer.Printer}") == base()
    clamped = base("+callbacks.clamp={_target_:user_clamp.Clamp}")
    assert clamped[0] != base()[0]
    (tmp_path / "user_clamp.py").write_text(USER_CALLBACK.format(name="Clamp", changes=True, body="return None"))
    assert base("+callbacks.clamp={_target_:user_clamp.Clamp}") == clamped  # the code this process runs
    forget_running_code()
    assert base("+callbacks.clamp={_target_:user_clamp.Clamp}")[0] != clamped[0]


USER_OPTIMIZER = """
import torch


class Mine(torch.optim.SGD):
    def step(self, closure=None):
        return super().step(closure){extra}
"""


def test_one_optimizer_setting_has_one_key_and_an_edited_optimizer_module_retrains(base, tmp_path, monkeypatch):
    """A null optimizer and an empty lr_scale are the defaults, factors 16 and 16.0 one value, cosine the
    schedule of every earlier key; an optimizer class from outside torch is keyed with its module's source (as
    imported by this process: forget_running_code stands for a new process, which keys the edited file)."""
    from slm_sweep.identity import forget_running_code

    assert base("+method.optimizer=null", "+method.lr_scale={}", "trainer.lr_schedule=cosine") == base()
    assert base("+method.lr_scale={lora_B:16}") == base("+method.lr_scale={lora_B:16.0}")
    # what trains the same weights has one key: AdamW at its defaults however spelt, a factor of 1, kernels
    for same in ("+method.optimizer={_target_:torch.optim.AdamW}", "+method.lr_scale={lora_B:1}",
                 "+method.optimizer={_target_:torch.optim.adamw.AdamW,betas:[0.9,0.999],fused:true}"):
        assert base(same) == base(), same
    assert base("+method.optimizer={_target_:torch.optim.SGD,momentum:0.9,nesterov:false}") == \
        base("+method.optimizer={_target_:torch.optim.sgd.SGD,momentum:0.9}")
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "user_optim.py").write_text(USER_OPTIMIZER.format(extra=""))
    mine = base("+method.optimizer={_target_:user_optim.Mine}")
    assert mine[0] != base()[0]
    (tmp_path / "user_optim.py").write_text(USER_OPTIMIZER.format(extra="  # edited"))
    assert base("+method.optimizer={_target_:user_optim.Mine}") == mine  # the code this process runs
    forget_running_code()
    assert base("+method.optimizer={_target_:user_optim.Mine}")[0] != mine[0]
    # in a package, the update may live in a sibling module of the class's: the package's code is keyed
    package = tmp_path / "user_optpkg"
    (package / "optim").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "functional.py").write_text("SCALE = 1.0\n")
    (package / "optim" / "__init__.py").write_text(USER_OPTIMIZER.format(extra="") + "\nfrom user_optpkg import functional\n")
    packaged = base("+method.optimizer={_target_:user_optpkg.optim.Mine}")
    (package / "functional.py").write_text("SCALE = 2.0\n")
    assert base("+method.optimizer={_target_:user_optpkg.optim.Mine}") == packaged
    forget_running_code()
    assert base("+method.optimizer={_target_:user_optpkg.optim.Mine}")[0] != packaged[0]


def test_outside_code_imported_by_the_checks_before_any_key_is_keyed_as_it_was_imported(tiny_cfg, tmp_path,
                                                                                        monkeypatch):
    """A cell's checks import its callbacks' and optimizer's classes before its keys are computed (validate_config
    builds the optimizer, check_classes the callbacks); a file edited in between ran as imported, so its key must
    hold the code as imported, not as edited (it held the edit, and a later run of the edited code reused it)."""
    import hashlib

    from slm_sweep.config import check_classes, validate_config
    from slm_sweep.identity import code_and_process_parts, forget_running_code

    monkeypatch.syspath_prepend(str(tmp_path))
    callback = USER_CALLBACK.format(name="Early", changes=True, body="pass")
    optimizer = USER_OPTIMIZER.format(extra="")
    (tmp_path / "user_early_cb.py").write_text(callback)
    (tmp_path / "user_early_opt.py").write_text(optimizer)
    cfg = tiny_cfg("method=lora", "+callbacks.early={_target_:user_early_cb.Early}",
                   "+method.optimizer={_target_:user_early_opt.Mine}")
    try:
        validate_config(cfg)  # a cell's first steps, which import both classes
        check_classes(cfg)
        (tmp_path / "user_early_cb.py").write_text(callback.replace("pass", "return None"))
        (tmp_path / "user_early_opt.py").write_text(optimizer + "# edited\n")
        parts = code_and_process_parts(OmegaConf.to_container(cfg, resolve=True))
        assert parts["callback_sources"]["early"] == hashlib.sha256(callback.encode()).hexdigest()
        assert parts["optimizer_source"] == hashlib.sha256(optimizer.encode()).hexdigest()
    finally:
        forget_running_code()


def test_moving_the_data_folder_changes_nothing_its_content_does_not(base, requires_data, tmp_path):
    copy = tmp_path / "data"
    (copy / "gsm8k").mkdir(parents=True)
    for name in ("train.jsonl", "test.jsonl"):
        (copy / "gsm8k" / name).write_bytes((requires_data / "gsm8k" / name).read_bytes())
    for other in requires_data.iterdir():  # the sets training is deduplicated against
        if other.is_dir() and other.name != "gsm8k":
            (copy / other.name).symlink_to(other)
    assert base(f"data_root={copy}") == base()
    lines = (copy / "gsm8k" / "test.jsonl").read_text().splitlines(keepends=True)
    (copy / "gsm8k" / "test.jsonl").write_text("".join([lines[1], lines[0], *lines[2:]]))
    moved_train, moved_eval = base(f"data_root={copy}")
    assert moved_train == base()[0] and moved_eval != base()[1]


def test_untrained_methods_ignore_seed_trainer_and_training_limits(tiny_cfg):
    zero = keys(tiny_cfg("method=zeroshot"))
    assert zero[0] is None
    for change in ("seed=3", "trainer.max_steps=9", "dataset.val_size=4", "method.num_fewshot=0"):
        assert keys(tiny_cfg("method=zeroshot", change)) == zero, change
    few = keys(tiny_cfg("method=fewshot"))
    assert keys(tiny_cfg("method=fewshot", "seed=3")) == few  # fixed shot_seed
    assert keys(tiny_cfg("method=fewshot", "seed=3", "method.shot_seed=null")) != \
        keys(tiny_cfg("method=fewshot", "method.shot_seed=null"))
    # shots come from the whole train split, whatever limits training
    assert keys(tiny_cfg("method=fewshot", "dataset.train_limit=30")) == few


def test_baseline_prompt_settings_change_only_their_scores(tiny_cfg):
    instructed = keys(tiny_cfg("method=zeroshot_instructed"))
    assert instructed[0] is None and instructed != keys(tiny_cfg("method=zeroshot"))
    assert keys(tiny_cfg("method=zeroshot_instructed", "method.instruction=Answer with a number.")) != instructed
    few = keys(tiny_cfg("method=fewshot"))
    assert keys(tiny_cfg("method=fewshot_chat")) != few
    assert keys(tiny_cfg("method=fewshot", "method.prompt_format=lm_eval_chat")) != few
    # the few-shot formats do not read prompt.style or prompt.system; the zero-shot ones do
    for method in ("fewshot", "fewshot_chat"):
        assert keys(tiny_cfg(f"method={method}", "prompt.style=plain", "prompt.system=Be brief.")) == \
            keys(tiny_cfg(f"method={method}"))
    assert keys(tiny_cfg("method=zeroshot_instructed", "prompt.system=Be brief.")) != instructed


def test_a_prompt_style_is_keyed_as_rendered(tiny_cfg):
    """The tiny tokenizer has a chat template: prompt.style=chat is what auto renders, one configuration."""
    for method in ("lora", "zeroshot"):
        auto = keys(tiny_cfg(f"method={method}"))
        assert keys(tiny_cfg(f"method={method}", "prompt.style=chat")) == auto, method
        assert keys(tiny_cfg(f"method={method}", "prompt.style=plain")) != auto, method


def test_a_system_message_the_plain_style_leaves_out_changes_neither_key(tiny_cfg):
    from slm_sweep.data.prompts import build_prompt

    assert build_prompt(None, "How many?", style="plain", system="Be brief.") == \
        build_prompt(None, "How many?", style="plain")
    for method in ("lora", "zeroshot"):
        plain = keys(tiny_cfg(f"method={method}", "prompt.style=plain"))
        assert keys(tiny_cfg(f"method={method}", "prompt.style=plain", "prompt.system=Be brief.")) == plain
        assert keys(tiny_cfg(f"method={method}", "prompt.system=Be brief.")) != keys(tiny_cfg(f"method={method}"))


def test_spellings_of_one_configuration_share_its_keys(tiny_cfg):
    """peft reads target_modules as a set, and an empty system message renders none: both orders of a list, and
    an empty message and none, are one configuration (different lists are not)."""
    from slm_sweep.data.prompts import build_prompt
    from slm_sweep.models import load_model_and_tokenizer

    qv = keys(tiny_cfg("method=lora", "method.target_modules=[q_proj,v_proj]"))
    assert keys(tiny_cfg("method=lora", "method.target_modules=[v_proj,q_proj,v_proj]")) == qv
    assert keys(tiny_cfg("method=lora", "method.target_modules=[q_proj,k_proj]")) != qv
    tokenizer = load_model_and_tokenizer(tiny_cfg().model)[1]
    assert build_prompt(tokenizer, "How many?", style="chat", system="") == build_prompt(tokenizer, "How many?",
                                                                                          style="chat")
    for method in ("lora", "zeroshot_instructed"):
        assert keys(tiny_cfg(f"method={method}", "prompt.system=''")) == keys(tiny_cfg(f"method={method}")), method


def test_a_tuned_learning_rate_is_in_the_training_key_as_the_rate_itself(tiny_cfg, tmp_path):
    from slm_sweep.tune.cell_rate import resolve_lr

    table = tmp_path / "lr.yaml"

    def tuned(lr: str):
        table.write_text(f"lr: {{gsm8k: {{tiny: {{lora: {lr}}}}}}}\n")
        cfg = tiny_cfg("method=lora", "tuning.lr=tuned", f"tuning.table={table}")
        resolve_lr(cfg)
        return keys(cfg)

    default = keys(tiny_cfg("method=lora"))
    assert tuned("2.0e-4") == default  # the same rate as method.lr: the same cell
    assert tuned("3.0e-4") == keys(tiny_cfg("method=lora", "method.lr=3.0e-4")) != default


@pytest.mark.parametrize("sources,recorded,version,name", [
    (SCORING_SOURCES, SCORING_SOURCES_SHA256, SCORING_VERSION, "SCORING_VERSION"),
    (TRAINING_SOURCES, TRAINING_SOURCES_SHA256, TRAINING_CODE_VERSION, "TRAINING_CODE_VERSION")])
def test_scoring_and_training_sources_match_their_versions(sources, recorded, version, name):
    digest = sources_digest(sources)
    assert recorded.get(version) == digest, (
        f"{', '.join(sources)} under slm_sweep/ changed: bump identity.{name} if results can change, "
        f"and record {digest} for it in slm_sweep/identity.py")


def test_a_cell_of_edited_sources_never_shares_a_key_with_the_released_code(base, monkeypatch):
    """Scoring (or training) sources that differ from the hash pinned for their version put their own hash into
    the keys, so that a result of an uncommitted edit is neither reused by nor reuses a released-code cell."""
    import slm_sweep.identity as identity

    released = base()
    monkeypatch.setitem(identity.SCORING_SOURCES_SHA256, SCORING_VERSION, "0" * 64)
    training, evaluation = base()
    assert training == released[0] and evaluation != released[1]
    monkeypatch.setitem(identity.TRAINING_SOURCES_SHA256, TRAINING_CODE_VERSION, "0" * 64)
    assert base()[0] != released[0]
    monkeypatch.undo()
    assert base() == released


_EDITED_WHILE_RUNNING = """
import json, sys
from pathlib import Path
from hydra import compose, initialize_config_dir
from slm_sweep.run import run

overrides = json.loads(sys.argv[1])

def cell(method, out):
    with initialize_config_dir(config_dir=str(Path("slm_sweep/conf").resolve()), version_base="1.3"):
        return run(compose(config_name="config", overrides=[*overrides, f"method={method}"]), out_dir=out)

assert cell("zeroshot", "zeroshot")["status"] == "completed"
module = Path("slm_sweep/train/module.py")
module.write_text(module.read_text() + "\\n# edited while the first cell of the sweep ran\\n")
lora = cell("lora", "lora")
print(json.dumps({"status": lora["status"],
                  "edited_sources": lora["identity"]["parts"]["training"].get("edited_sources")}))
"""


def test_a_checkout_edited_while_a_sweep_runs_does_not_change_the_keys_of_its_later_cells(tmp_path):
    """The cells of a one-process sweep run the code the process imported when it started: a training source
    edited while its first (untrained) cell runs must not put its hash into a later trained cell's key, which
    would file the old code's numbers under the edited code's key (a cell of the edited code would reuse them)."""
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    from conftest import FAST_TINY

    import slm_sweep
    import slm_sweep.identity as identity

    shutil.copytree(Path(slm_sweep.__file__).parent, tmp_path / "slm_sweep",
                    ignore=shutil.ignore_patterns("__pycache__"))
    done = subprocess.run([sys.executable, "-c", _EDITED_WHILE_RUNNING, json.dumps(FAST_TINY)], cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": str(tmp_path), "WANDB_MODE": "disabled"},
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    lora = json.loads(done.stdout.strip().splitlines()[-1])
    released = identity.edited_sources(TRAINING_SOURCES, TRAINING_SOURCES_SHA256, TRAINING_CODE_VERSION)
    assert lora["status"] == "completed"
    assert lora["edited_sources"] == released, lora  # the sources as the process started


def test_rerun_into_its_own_folder_does_nothing_again(tiny_cfg, tmp_path, monkeypatch):
    cfg = tiny_cfg("method=lora", "resume.enabled=true", f"resume.search_dir={tmp_path / 'none'}")
    first = run(cfg, out_dir=tmp_path / "cell")
    assert first["status"] == "completed" and (tmp_path / "cell" / "adapter" / "adapter_config.json").is_file()
    before = (tmp_path / "cell" / "result.json").read_bytes()
    # the record says what its keys were computed from: weights, data fingerprints, versions, settings
    parts = read_result(tmp_path / "cell")["identity"]["parts"]
    assert parts["training"]["model"]["source"] == "tiny" and parts["training"]["method"]["name"] == "lora"
    assert parts["training"]["libraries"].keys() == {"torch", "transformers", "peft"}
    fingerprints = {**parts["training"]["data"], "test": parts["evaluation"]["test"]}
    assert set(fingerprints) == {"train", "val", "test"}
    assert all(re.fullmatch(r"\d+:[0-9a-f]{16}", f) for f in fingerprints.values()), fingerprints
    assert fingerprints["test"].startswith(f"{first['metrics']['n_eval']}:")

    import slm_sweep.models as models

    monkeypatch.setattr(models, "load_model_and_tokenizer", lambda *a, **k: pytest.fail("loaded a model again"))
    again = run(cfg, out_dir=tmp_path / "cell")
    assert again["status"] == "completed" and again["identity"] == first["identity"]
    assert (tmp_path / "cell" / "result.json").read_bytes() == before


def test_a_rerun_with_other_settings_into_the_same_folder_sets_the_earlier_result_aside(tiny_cfg, tmp_path,
                                                                                        monkeypatch):
    """Nothing computed is lost: another training sets the earlier result and its adapter aside, a re-scoring of
    the same weights sets aside the result only (the adapter is the one it scores), and the earlier
    configuration run again is found in the aside folder."""
    search = ["resume.enabled=true", f"resume.search_dir={tmp_path / 'none'}"]
    cell = tmp_path / "cell"
    first = run(tiny_cfg("method=lora", *search), out_dir=cell)
    second = run(tiny_cfg("method=lora", *search, "trainer.max_steps=2"), out_dir=cell)
    assert second["status"] == "completed" and second["identity"]["training_key"] != first["identity"]["training_key"]
    aside = cell / "superseded"
    assert read_result(aside)["identity"] == first["identity"] and (aside / "predictions.jsonl").is_file()
    assert stamped_key(aside / "adapter") == first["identity"]["training_key"]
    assert stamped_key(cell / "adapter") == second["identity"]["training_key"]

    import slm_sweep.train.fit as fit_module

    monkeypatch.setattr(fit_module, "fit", lambda *a, **k: pytest.fail("trained again"))
    rescored = run(tiny_cfg("method=lora", *search, "trainer.max_steps=2", "eval.max_new_tokens=6"), out_dir=cell)
    assert rescored["status"] == "completed" and rescored["trained_in"] == str(cell)
    assert read_result(cell / "superseded-2")["identity"] == second["identity"]
    assert not (cell / "superseded-2" / "adapter").exists() and stamped_key(cell / "adapter") == \
        second["identity"]["training_key"]
    # the training figures it copied name the run that measured them, where its record is now
    provenance = rescored["training_provenance"]
    assert provenance["result_path"] == str(cell / "superseded-2" / "result.json")
    trained_by = read_result(provenance["result_path"])
    assert trained_by["metrics"]["train_time_s"] == rescored["metrics"]["train_time_s"]
    assert {k: provenance[k] for k in ("git_commit", "versions", "hardware", "finished_at")} == \
        {k: trained_by[k] for k in ("git_commit", "versions", "hardware", "finished_at")}
    # a copy of the re-scored cell keeps where its weights were trained
    copy = run(tiny_cfg("method=lora", "resume.enabled=true", f"resume.search_dir={cell}", "trainer.max_steps=2",
                        "eval.max_new_tokens=6"), out_dir=tmp_path / "copy")
    assert copy["reused_from"] == str(cell / "result.json")
    assert copy["trained_in"] == str(cell) and copy["training_provenance"] == provenance
    again = run(tiny_cfg("method=lora", *search), out_dir=cell)
    assert again["reused_from"] == str(aside / "result.json")
    assert again["metrics"]["accuracy_flexible"] == first["metrics"]["accuracy_flexible"]


def test_a_search_cell_that_scored_the_validation_split_is_reused_by_its_rerun(tiny_cfg, tmp_path, monkeypatch):
    """A learning-rate search requeued or extended by a seed finds its finished candidates (val_accuracy_*)."""
    cfg = tiny_cfg("method=full", "eval.split=val", "resume.enabled=true", f"resume.search_dir={tmp_path}")
    first = run(cfg, out_dir=tmp_path / "a")
    assert first["status"] == "completed" and first["metrics"]["val_n_eval"] == 8

    import slm_sweep.models as models

    monkeypatch.setattr(models, "load_model_and_tokenizer", lambda *a, **k: pytest.fail("loaded a model again"))
    again = run(cfg, out_dir=tmp_path / "b")
    assert again["status"] == "completed" and again["reused_from"] == str(tmp_path / "a" / "result.json")
    assert again["metrics"]["val_accuracy_flexible"] == first["metrics"]["val_accuracy_flexible"]


def test_every_method_scores_the_same_validation_questions(tiny_cfg, tmp_path):
    """A search scored on the validation split compares its baselines with its trained cells on one set of
    questions: zero- and few-shot cells carve it as trained cells do."""
    questions = {}
    for method in ("zeroshot", "fewshot", "full"):
        record = run(tiny_cfg(f"method={method}", "eval.split=val"), out_dir=tmp_path / method)
        assert record["status"] == "completed" and record["metrics"]["val_n_eval"] == 8, method
        lines = (tmp_path / method / "predictions.jsonl").read_text().splitlines()
        questions[method] = [json.loads(line)["question"] for line in lines]
    assert questions["zeroshot"] == questions["fewshot"] == questions["full"]


def test_a_new_evaluation_rescores_the_kept_adapter_without_training(tiny_cfg, tmp_path, monkeypatch):
    search = [f"resume.search_dir={tmp_path}", "resume.enabled=true"]
    first = run(tiny_cfg("method=lora", *search), out_dir=tmp_path / "a")
    assert first["status"] == "completed"

    import slm_sweep.train.fit as fit_module

    monkeypatch.setattr(fit_module, "fit", lambda *a, **k: pytest.fail("trained again"))
    second = run(tiny_cfg("method=lora", *search, "eval.max_new_tokens=6"), out_dir=tmp_path / "b")
    assert second["status"] == "completed", second.get("error")
    assert second["identity"]["training_key"] == first["identity"]["training_key"]
    assert second["identity"]["evaluation_key"] != first["identity"]["evaluation_key"]
    # what a report checks before comparing two rows: the scoring and the eval settings, readable
    from slm_sweep.identity import SCORING_VERSION

    assert second["identity"]["scored_with"]["max_new_tokens"] == 6
    assert {k: v for k, v in second["identity"]["scored_with"].items() if k != "max_new_tokens"} == \
        {k: v for k, v in first["identity"]["scored_with"].items() if k != "max_new_tokens"}
    assert first["identity"]["scored_with"]["scoring"] == SCORING_VERSION and "split" not in first["identity"]["scored_with"]
    assert second["trained_in"] == str(tmp_path / "a")
    assert second["metrics"]["train_steps"] == first["metrics"]["train_steps"]
    assert second["metrics"]["trainable_params"] == first["metrics"]["trainable_params"]
    # the re-scored adapter is the trained one: greedy answers of 6 tokens start the first run's answers of 12
    first_out = {p["index"]: p["output"] for p in _predictions(tmp_path / "a")}
    second_out = {p["index"]: p["output"] for p in _predictions(tmp_path / "b")}
    assert all(first_out[i].startswith(second_out[i]) for i in second_out)
    assert any(first_out[i] != second_out[i] for i in second_out)
    assert read_result(tmp_path / "b")["placement"]["train"] == first["placement"]["train"]


def test_weights_trained_on_a_gpu_and_rescored_on_this_cpu_record_this_process_memory(tiny_cfg, tmp_path):
    """A re-scored cell trains nothing: its peak memory is its own evaluation's, not a read of a CUDA device that
    the source cell trained on and this machine does not use (which gave 0)."""
    import json

    search = [f"resume.search_dir={tmp_path}", "resume.enabled=true"]
    assert run(tiny_cfg("method=lora", *search), out_dir=tmp_path / "a")["status"] == "completed"
    source = json.loads((tmp_path / "a" / "result.json").read_text())
    source["placement"]["train"] = {**source["placement"]["train"], "device": "cuda:0", "device_name": "NVIDIA H200"}
    (tmp_path / "a" / "result.json").write_text(json.dumps(source))
    rescored = run(tiny_cfg("method=lora", *search, "eval.max_new_tokens=6"), out_dir=tmp_path / "b")
    assert rescored["status"] == "completed" and rescored["trained_in"] == str(tmp_path / "a")
    assert rescored["placement"]["train"]["device"] == "cuda:0" and rescored["placement"]["eval"]["device"] == "cpu"
    assert rescored["metrics"]["peak_memory_mb"] > 50  # this process's resident memory, in MB


def _predictions(folder):
    from slm_sweep.results import read_predictions

    return read_predictions(folder)


def test_configuration_key_groups_seeds(tiny_cfg):
    def key(*extra):
        return identity_of(tiny_cfg("method=lora", *extra)).configuration_key

    assert key("seed=1") == key("seed=2") == key()
    assert key("method.r=8") != key()
    assert key("eval.max_new_tokens=20") != key()
    assert key("trainer.micro_batch_size=4") == key()


def test_a_new_evaluation_in_the_same_folder_rescores_its_own_adapter(tiny_cfg, tmp_path, monkeypatch):
    """A rerun into the cell's own folder with other evaluation settings: the kept adapter is re-scored and the
    training figures survive, although this run's record replaces the earlier one."""
    resume = ["resume.enabled=true", f"resume.search_dir={tmp_path / 'none'}"]
    first = run(tiny_cfg("method=lora", *resume), out_dir=tmp_path / "cell")
    import slm_sweep.train.fit as fit_module

    monkeypatch.setattr(fit_module, "fit", lambda *a, **k: pytest.fail("trained again"))
    second = run(tiny_cfg("method=lora", *resume, "eval.max_new_tokens=6"), out_dir=tmp_path / "cell")
    assert second["status"] == "completed", second.get("error")
    assert second["trained_in"] == str(tmp_path / "cell")
    assert second["metrics"]["train_steps"] == first["metrics"]["train_steps"] == 3
    assert second["metrics"]["train_loss"] == first["metrics"]["train_loss"]
    assert read_result(tmp_path / "cell")["identity"]["evaluation_key"] != first["identity"]["evaluation_key"]
    # re-scored again: the training run is still the first, not the re-score the folder held
    third = run(tiny_cfg("method=lora", *resume, "eval.max_new_tokens=5"), out_dir=tmp_path / "cell")
    assert second["training_provenance"]["result_path"] == str(tmp_path / "cell" / "superseded" / "result.json")
    assert third["training_provenance"] == second["training_provenance"]
    assert second["training_provenance"]["started_at"] == first["started_at"]
    # every figure of the training stage comes along: all that a trained cell records beyond an untrained one
    untrained = run(tiny_cfg("method=zeroshot"), out_dir=tmp_path / "zeroshot")["metrics"]
    training = set(first["metrics"]) - set(untrained) - {"peak_memory_mb"}
    assert training <= set(TRAINING_METRICS)
    assert {k: second["metrics"][k] for k in TRAINING_METRICS} == {k: first["metrics"].get(k) for k in TRAINING_METRICS}
    # a training run written before the final validation pass was timed apart counted it in train_time_s: a
    # re-score of it says so as that file does, without final_validation_s (the report then leaves its time out)
    source = tmp_path / "cell" / "superseded" / "result.json"
    for written in (source, tmp_path / "cell" / "result.json"):  # the training run and the re-score copying it
        older = json.loads(written.read_text())
        del older["metrics"]["final_validation_s"]
        written.write_text(json.dumps(older))
    fourth = run(tiny_cfg("method=lora", *resume, "eval.max_new_tokens=4"), out_dir=tmp_path / "cell")
    assert fourth["training_provenance"]["result_path"] == str(source)
    assert "final_validation_s" not in fourth["metrics"]
    assert fourth["metrics"]["train_time_s"] == first["metrics"]["train_time_s"]


def test_a_rerun_that_fails_before_its_keys_are_known_keeps_the_earlier_result(tiny_cfg, tmp_path):
    """A rerun into a finished cell's folder that fails early (here an out-of-domain set it cannot read) cannot
    tell whether the finished result is its own configuration's: result.json and the predictions stay as they
    are, for the report and the reuse search, and the failure is written beside them, where the sweep's list of
    failed cells finds it."""
    from slm_sweep.report.sweep_notes import incomplete_cells
    from slm_sweep.results import FAILED_ATTEMPT_FILE

    first = run(tiny_cfg("method=zeroshot"), out_dir=tmp_path / "cell")
    predictions = (tmp_path / "cell" / "predictions.jsonl").read_text()
    # OrcaMath is not in the local data folder, and the hub is offline here
    failed = run(tiny_cfg("method=zeroshot", "eval.ood_sets=[orcamath]"), out_dir=tmp_path / "cell")
    assert failed["status"] == "failed" and "orcamath" in failed["error"]
    assert read_result(tmp_path / "cell") == json.loads(json.dumps(first, default=str))
    assert (tmp_path / "cell" / "predictions.jsonl").read_text() == predictions
    assert read_result(tmp_path / "cell" / FAILED_ATTEMPT_FILE)["status"] == "failed"
    ((job, why),) = incomplete_cells(tmp_path)
    assert job == tmp_path / "cell" and why.startswith("failed: DataError") and FAILED_ATTEMPT_FILE in why
    # the next attempt that gets through clears it
    again = run(tiny_cfg("method=zeroshot", "resume.enabled=true", f"resume.search_dir={tmp_path / 'none'}"),
                out_dir=tmp_path / "cell")
    assert again["status"] == "completed" and again["metrics"] == first["metrics"]
    assert not (tmp_path / "cell" / FAILED_ATTEMPT_FILE).exists() and incomplete_cells(tmp_path) == []


def test_training_curves_of_earlier_runs_in_the_folder_are_kept(tiny_cfg, tmp_path):
    """Lightning's CSV logger starts its metrics.csv afresh: a rerun with other settings moves the earlier curve
    to superseded/ with its result, and a rerun of an attempt that did not finish (interrupted, then resumed or
    run again) keeps that attempt's curve beside the new one."""
    import json

    first = run(tiny_cfg("method=lora", "logger=csv", "trainer.log_every_n_steps=1"), out_dir=tmp_path / "cell")
    assert first["status"] == "completed"
    curve = (tmp_path / "cell" / "csv" / "metrics.csv").read_text()
    assert "train/loss" in curve
    run(tiny_cfg("method=lora", "logger=csv", "trainer.log_every_n_steps=1", "method.lr=0.01"),
        out_dir=tmp_path / "cell")
    assert (tmp_path / "cell" / "superseded" / "csv" / "metrics.csv").read_text() == curve
    second_curve = (tmp_path / "cell" / "csv" / "metrics.csv").read_text()
    assert "train/loss" in second_curve and second_curve != curve

    # the folder of an attempt that was interrupted: its curve stays, renamed, when the cell runs again
    result = tmp_path / "cell" / "result.json"
    result.write_text(json.dumps({**json.loads(result.read_text()), "status": "interrupted"}))
    run(tiny_cfg("method=lora", "logger=csv", "trainer.log_every_n_steps=1", "method.lr=0.01"),
        out_dir=tmp_path / "cell")
    assert (tmp_path / "cell" / "csv" / "metrics.earlier-1.csv").read_text() == second_curve
    assert "train/loss" in (tmp_path / "cell" / "csv" / "metrics.csv").read_text()


def test_weights_another_configuration_left_in_the_folder_are_neither_resumed_nor_rescored(tiny_cfg, tmp_path):
    """A folder rerun with another learning rate holds the first run's checkpoint and adapter: the second run
    trains afresh (the checkpoint moved aside, not deleted), and a third run that changes only its evaluation
    re-scores the second run's adapter, which its stamp names."""
    resume = ["resume.enabled=true", f"resume.search_dir={tmp_path / 'none'}", "trainer.keep_checkpoints=true",
              "trainer.checkpoint_every_n_steps=1"]
    first = run(tiny_cfg("method=lora", *resume), out_dir=tmp_path / "cell")
    assert (tmp_path / "cell" / "checkpoints" / "last.ckpt").is_file()
    assert stamped_key(tmp_path / "cell" / "adapter") == first["identity"]["training_key"]

    second = run(tiny_cfg("method=lora", *resume, "method.lr=0.01"), out_dir=tmp_path / "cell")
    assert second["status"] == "completed" and second["resumed_from_checkpoint"] is None
    assert second["identity"]["training_key"] != first["identity"]["training_key"]
    aside = tmp_path / "cell" / "checkpoints.superseded"
    assert (aside / "last.ckpt").is_file() and stamped_key(aside) == first["identity"]["training_key"]
    assert stamped_key(tmp_path / "cell" / "adapter") == second["identity"]["training_key"]
    assert second["metrics"]["train_loss"] != first["metrics"]["train_loss"]

    # a copied result does not vouch for the weights beside it: only their stamp does
    record = read_result(tmp_path / "cell")
    assert kept_weights(tmp_path / "cell", second["identity"]["training_key"], record) == tmp_path / "cell" / "adapter"
    assert kept_weights(tmp_path / "cell", first["identity"]["training_key"], record) is None
    (tmp_path / "cell" / "adapter" / KEY_STAMP).unlink()  # weights kept before stamps existed
    assert kept_weights(tmp_path / "cell", second["identity"]["training_key"], record) == tmp_path / "cell" / "adapter"
    copied = {**record, "reused_from": str(tmp_path / "elsewhere" / "result.json")}
    assert kept_weights(tmp_path / "cell", second["identity"]["training_key"], copied) is None


def test_a_local_model_folder_is_known_by_the_content_of_every_file(tmp_path):
    import os

    from slm_sweep.identity import resolved_revision

    def write(path, data, second):
        path.write_bytes(data)
        os.utime(path, ns=(second * 10**9, second * 10**9))  # a later write, as a retraining minutes later is

    folder = tmp_path / "model"
    (folder / "sub").mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    write(folder / "model.safetensors", b"\x00" * 64, 1)
    write(folder / "sub" / "extra.bin", b"a", 1)
    (folder / ".cache").mkdir()
    first = resolved_revision(str(folder), None)
    (folder / ".cache" / "lock").write_text("not the model")
    assert resolved_revision(str(folder), None) == first
    write(folder / "model.safetensors", b"\x01" * 64, 2)  # retrained: same size, other weights
    assert resolved_revision(str(folder), None) != first
    write(folder / "model.safetensors", b"\x00" * 64, 3)
    assert resolved_revision(str(folder), None) == first
    write(folder / "sub" / "extra.bin", b"b", 2)
    assert resolved_revision(str(folder), None) != first


def test_a_copied_result_keeps_the_code_versions_and_decoding_that_computed_it(tiny_cfg, tmp_path):
    search = [f"resume.search_dir={tmp_path}", "resume.enabled=true"]
    first = run(tiny_cfg("method=zeroshot", *search), out_dir=tmp_path / "a")
    source = read_result(tmp_path / "a")
    source.update(git_commit="0" * 40, versions={**source["versions"], "torch": "0.0-elsewhere"})
    (tmp_path / "a" / "result.json").write_text(json.dumps(source))
    copy = run(tiny_cfg("method=zeroshot", *search), out_dir=tmp_path / "b")
    assert copy["reused_from"] == str(tmp_path / "a" / "result.json")
    assert copy["git_commit"] == "0" * 40 and copy["versions"]["torch"] == "0.0-elsewhere"
    assert copy["decoding"] == first["decoding"] is not None and copy["metrics"] == first["metrics"]
    assert copy["skipped_rows_asking_who"] == first["skipped_rows_asking_who"] == {}
    # a result written before rows asking who were counted: the copy says the count is unknown, not zero
    del source["skipped_rows_asking_who"]
    (tmp_path / "a" / "result.json").write_text(json.dumps(source))
    older = run(tiny_cfg("method=zeroshot", *search), out_dir=tmp_path / "c")
    assert older["reused_from"] == str(tmp_path / "a" / "result.json")
    assert older["skipped_rows_asking_who"] is None and older["skipped_rows"] == source["skipped_rows"]


def test_a_reused_cell_keeps_whether_its_source_resumed_from_a_checkpoint(tmp_path):
    """The copied train_time_s of a source that resumed counts the steps after its checkpoint only: the copy says
    so too, or the report would average it in as a whole training time."""
    from slm_sweep.results import write_result
    from slm_sweep.run import _reuse

    source = {"schema_version": 1, "status": "completed", "model": "tiny", "method": "lora", "dataset": "gsm8k",
              "seed": 0, "metrics": {"accuracy_flexible": 0.5, "n_eval": 2, "train_time_s": 12.0},
              "resumed_from_checkpoint": "/run/checkpoints/last.ckpt", "finished_at": "2026-12-01T00:00:00+00:00"}
    write_result(tmp_path / "source", source)
    record = {"schema_version": 1, "status": "running", "model": "tiny", "method": "lora", "dataset": "gsm8k",
              "seed": 0, "metrics": {}}
    copied = _reuse(tmp_path / "source", tmp_path / "copy", record)
    assert copied["resumed_from_checkpoint"] == "/run/checkpoints/last.ckpt"
    assert copied["metrics"]["train_time_s"] == 12.0


def test_a_rescore_whose_kept_weights_vanish_before_loading_fails_instead_of_scoring_a_fresh_adapter(
        tiny_cfg, tmp_path, monkeypatch):
    """The kept adapter a re-score found is moved away (another run writing into that folder) before it loads: the
    cell fails, never scoring the base model with a fresh adapter under the trained cell's key and figures."""
    import shutil

    import slm_sweep.run as run_module

    search = ["resume.enabled=true", f"resume.search_dir={tmp_path}"]
    assert run(tiny_cfg("method=lora", *search), out_dir=tmp_path / "a")["status"] == "completed"
    set_aside = run_module.set_aside_earlier

    def moved_meanwhile(out, *args, **kwargs):  # right after the re-score's lookup
        shutil.move(str(tmp_path / "a" / "adapter"), str(tmp_path / "moved-adapter"))
        return set_aside(out, *args, **kwargs)

    monkeypatch.setattr(run_module, "set_aside_earlier", moved_meanwhile)
    monkeypatch.setattr(run_module, "load_model", lambda cfg, trained: pytest.fail(f"loaded with {trained}"))
    rescore = run(tiny_cfg("method=lora", *search, "eval.max_new_tokens=6"), out_dir=tmp_path / "g")
    assert rescore["status"] == "failed" and "FileNotFoundError" in rescore["error"], rescore.get("error")
    assert str(tmp_path / "a" / "adapter") in rescore["error"] and not rescore.get("trained_in")


CREDENTIAL_NAMED_CALLBACK = """
from lightning.pytorch.callbacks import Callback


class Keyed(Callback):
    def __init__(self, token=None, key=None):
        self.token, self.key = token, key
"""


def test_a_number_named_like_a_credential_is_keyed_and_a_credential_is_not(tiny_cfg, tmp_path, monkeypatch):
    """A number under a credential-like name (a callback's or optimizer's PRNG ``key``) is never a credential: two
    values give two keys. A string there (a ``token``, a password) is not keyed: two users' tokens give one key,
    and neither result.json nor its keys' parts hold the token or a hash of it (an unsalted hash of a short
    password is recovered by trying candidates)."""
    import slm_sweep.tune.trained_with as trained_with

    (tmp_path / "keyed_callback.py").write_text(CREDENTIAL_NAMED_CALLBACK)
    monkeypatch.syspath_prepend(str(tmp_path))

    class KeysKnown(Exception):
        pass

    def stop(*args):  # the cell's keys are computed and recorded: nothing more is needed
        raise KeysKnown

    monkeypatch.setattr(trained_with, "check_tuned_data", stop)

    def cell(name, setting):
        callback = f"+callbacks.keyed={{_target_:keyed_callback.Keyed,{setting}}}"
        record = run(tiny_cfg("method=lora", callback), out_dir=tmp_path / name)
        assert "KeysKnown" in record["error"], record.get("error")
        return record, read_result(tmp_path / name), (tmp_path / name / "result.json").read_text()

    tokens = {}
    for value in ("first-secret-value", "second-secret-value"):
        record, written, text = cell(value, f"token:{value}")
        assert "secret-value" not in text and "sha256" not in text
        assert written["config"]["callbacks"]["keyed"]["token"] == "<redacted>"
        assert written["identity"]["parts"]["training"]["callbacks"]["keyed"]["token"] == "<redacted>"
        tokens[value] = record["identity"]
    first, second = tokens.values()
    assert first["training_key"] == second["training_key"] and first["evaluation_key"] == second["evaluation_key"]

    seeds = {}
    for value in (1, 2):
        record, written, _ = cell(f"key{value}", f"key:{value}")
        assert written["config"]["callbacks"]["keyed"]["key"] == "<redacted>"
        assert written["identity"]["parts"]["training"]["callbacks"]["keyed"]["key"].startswith("<redacted sha256:")
        seeds[value] = record["identity"]
    assert seeds[1]["training_key"] != seeds[2]["training_key"] != first["training_key"]
    assert seeds[1]["evaluation_key"] != seeds[2]["evaluation_key"]


def test_fsdp_and_deepspeed_are_keyed_apart_from_ddp_and_from_one_device_training(base, tiny_cfg):
    """FSDP's bf16-mixed computes in bf16 where DDP and plain training autocast over float32 weights, on one
    device too (Lightning gives any FSDP strategy its own precision plugin): another training, whatever the device
    count. DDP (and auto, DDP on several devices) and plain single-device training keep the keys they had."""
    ddp = base("trainer=ddp_cpu")
    assert base("trainer=ddp_cpu", "trainer.strategy=auto") == ddp
    fsdp = base("trainer=ddp_cpu", "trainer.strategy=fsdp")
    assert fsdp[0] != ddp[0] and base("trainer=ddp_cpu", "trainer.strategy=fsdp_cpu_offload") == fsdp
    assert base("trainer=ddp_cpu", "trainer.strategy=deepspeed_stage_2")[0] not in (ddp[0], fsdp[0])
    parts = identity_of(tiny_cfg("method=lora", "trainer=ddp_cpu")).parts["training"]
    assert parts["world_size"] == 2 and "strategy" not in parts
    # one device: FSDP and DeepSpeed are keyed, plain training (auto, single_device) is as it was
    one = base()
    assert base("trainer.strategy=single_device") == one
    fsdp_one = base("trainer.strategy=fsdp")
    assert fsdp_one[0] != one[0] and base("trainer.strategy=fsdp_cpu_offload") == fsdp_one
    assert base("trainer.strategy=deepspeed_stage_2")[0] not in (one[0], fsdp_one[0])
    parts = identity_of(tiny_cfg("method=lora", "trainer.strategy=fsdp")).parts["training"]
    assert parts["strategy"] == "fsdp" and "world_size" not in parts


def test_lightning_s_version_is_keyed_with_its_callbacks_and_bitsandbytes_with_its_quantization(tiny_cfg):
    """A weight-changing Lightning callback runs Lightning's code, bitsandbytes quantizes the weights it loads:
    their versions are in the key with them, and only then (other keys stay as they were)."""
    def libraries(*extra):
        identity = identity_of(tiny_cfg(*extra))
        return (identity.parts["training"] or identity.parts["evaluation"]["weights"])["libraries"]

    assert set(libraries("method=lora")) == {"torch", "transformers", "peft"}
    swa = "+callbacks.swa={_target_:lightning.pytorch.callbacks.StochasticWeightAveraging,swa_lrs:0.01}"
    assert set(libraries("method=lora", swa)) == {"torch", "transformers", "peft", "lightning"}
    quantized = "model.quantization={_target_:transformers.BitsAndBytesConfig,load_in_4bit:true}"
    assert "bitsandbytes" in libraries("method=lora", quantized)
    assert "bitsandbytes" in libraries("method=zeroshot", quantized)  # quantized for evaluation too
    assert "bitsandbytes" not in libraries("method=zeroshot")


# Modules of the package that hashed sources import, which change no score and no weight, and why.
CHANGE_NO_RESULT = {
    "config": "checks a config and instantiates the classes it names (both keyed); nothing it computes enters a "
              "forward pass or an optimizer step",
    "identity": "resolves a revision and hashes files for the keys",
    "memory": "recognises out-of-memory errors",
    "results": "file permissions of what a cell writes",
    "settings": "the settings' defaults, which reach a cell through its config (keyed)",
    "train.callbacks": "measures throughput, memory and MFU",
    "train.checkpoint_io": "writes and reads checkpoints atomically",
}
# Modules of evaluate/ and train/ that are not hashed, and why.
NOT_HASHED = {"evaluate.lm_eval_gsm8k": "runs lm-eval, the reference of the parity tests and the benchmark",
              "train.progress": "a progress bar",
              "train.ranks": "checks that a distributed cell's processes computed one key",
              **{name: why for name, why in CHANGE_NO_RESULT.items() if name.startswith("train.")}}


@pytest.mark.parametrize("sources", [SCORING_SOURCES, TRAINING_SOURCES], ids=["scoring", "training"])
def test_every_module_behind_a_score_or_a_weight_is_hashed(sources):
    """What a hashed source imports from the package is hashed with it, or changes no result (CHANGE_NO_RESULT):
    evaluation tokenized its prompts with data/encode.py and decoded a few rows on the CPU through
    evaluate/weight_first.py, neither of them in the scoring sources, so an edit of either changed scores under
    the released key. Every module of evaluate/ (scoring) and train/ (training) is hashed, or listed in NOT_HASHED."""
    from tests.test_architecture import PACKAGE, imports_of

    hashed = {name.removesuffix(".py").replace("/", ".") for name in sources}
    unlisted = {f"{module} (imported by {source})" for source in sorted(hashed)
                for module in imports_of(PACKAGE / f"{source.replace('.', '/')}.py")[0]
                if module not in hashed and module not in CHANGE_NO_RESULT}
    assert not unlisted, f"hash these with the others in slm_sweep/identity.py: {sorted(unlisted)}"
    folder = "evaluate" if sources is SCORING_SOURCES else "train"
    modules = {f"{folder}.{path.stem}" for path in (PACKAGE / folder).glob("*.py") if path.stem != "__init__"}
    assert modules - hashed - NOT_HASHED.keys() == set()


def test_a_rescore_never_reports_one_run_s_training_figures_with_another_run_s_weights(tiny_cfg, tmp_path):
    """Folder f trained its adapter (run 1); a rerun into f copies another folder's finished result of the same
    training key. The copy describes other weights than f's adapter: run 1's adapter goes aside with run 1's
    record, and a later re-score loads it with run 1's figures, never the copy's."""
    def cell(out, search, *extra):
        return run(tiny_cfg("method=lora", "resume.enabled=true", f"resume.search_dir={tmp_path / search}",
                            *extra), out_dir=tmp_path / out)

    first = cell("f", "none")
    other = cell("x", "none", "eval.max_new_tokens=6")
    assert other["identity"]["training_key"] == first["identity"]["training_key"]
    source = json.loads((tmp_path / "x" / "result.json").read_text())
    source["metrics"]["train_loss"] = 999.0  # the other run's figures, told apart
    (tmp_path / "x" / "result.json").write_text(json.dumps(source))
    copied = cell("f", "x", "eval.max_new_tokens=6")
    assert copied["reused_from"] == str(tmp_path / "x" / "result.json")
    aside = tmp_path / "f" / "superseded"
    assert not (tmp_path / "f" / "adapter").exists() and stamped_key(aside / "adapter") == \
        first["identity"]["training_key"]
    rescore = cell("g", "f", "eval.max_new_tokens=5")
    assert rescore["status"] == "completed", rescore.get("error")
    assert rescore["trained_in"] == str(aside)
    assert rescore["metrics"]["train_loss"] == first["metrics"]["train_loss"] != 999.0
    assert rescore["training_provenance"]["started_at"] == first["started_at"]


def test_resume_disabled_trains_afresh_and_keeps_the_cell_s_own_checkpoint_aside(tiny_cfg, tmp_path):
    """resume.enabled=false resumes nothing, the cell's own checkpoint included: it goes aside to
    checkpoints.superseded (nothing computed is lost) and training starts from step 0."""
    keep = ["trainer.checkpoint_every_n_steps=1", "trainer.keep_checkpoints=true", "resume.enabled=false"]
    first = run(tiny_cfg("method=lora", *keep), out_dir=tmp_path / "cell")
    assert (tmp_path / "cell" / "checkpoints" / "last.ckpt").is_file()
    again = run(tiny_cfg("method=lora", *keep), out_dir=tmp_path / "cell")
    assert again["status"] == "completed" and again["resumed_from_checkpoint"] is None, again["resumed_from_checkpoint"]
    assert again["resumed_at_step"] is None and again["metrics"]["train_steps"] == 3
    assert again["metrics"]["train_tokens"] == first["metrics"]["train_tokens"]
    aside = tmp_path / "cell" / "checkpoints.superseded"
    assert (aside / "last.ckpt").is_file() and stamped_key(aside) == first["identity"]["training_key"]


@pytest.mark.parametrize("resume", ["resume.enabled=false", "resume.enabled=auto"])  # auto: a single run
def test_a_rerun_that_computes_a_finished_result_again_sets_it_aside_first(tiny_cfg, tmp_path, monkeypatch, resume):
    """A cell that runs again where a finished result of its own configuration is (resume.enabled=false, or a
    single run under auto, which reuses nothing) moves that result and its predictions to superseded/ before it
    writes anything: a rerun that fails (here, loading the model) loses nothing, and the reuse search finds it."""
    import slm_sweep.run as run_module

    cell = tmp_path / "cell"
    first = run(tiny_cfg("method=zeroshot", resume), out_dir=cell)
    assert first["status"] == "completed" and (cell / "predictions.jsonl").is_file()
    predictions = (cell / "predictions.jsonl").read_bytes()

    def fails(*args, **kwargs):
        raise RuntimeError("out of memory (injected)")

    monkeypatch.setattr(run_module, "load_model", fails)
    again = run(tiny_cfg("method=zeroshot", resume), out_dir=cell)
    assert again["status"] == "failed" and again["identity"] == first["identity"]
    assert read_result(cell)["status"] == "failed"
    aside = cell / "superseded"
    kept = read_result(aside)
    assert kept["status"] == "completed" and kept["started_at"] == first["started_at"]
    assert kept["metrics"] == first["metrics"] and (aside / "predictions.jsonl").read_bytes() == predictions
    monkeypatch.undo()
    reused = run(tiny_cfg("method=zeroshot", "resume.enabled=true", f"resume.search_dir={tmp_path / 'none'}"),
                 out_dir=cell)
    assert reused["reused_from"] == str(aside / "result.json") and reused["metrics"] == first["metrics"]


def test_defaults_written_out_give_the_keys_of_leaving_them_unset(tiny_cfg):
    """A trained method scored as trained (prompt_format=as_trained) and without shots (num_fewshot=0), and a
    shot_seed where no shot is drawn, are the configurations that leave them unset; the shipped configs keep
    their keys (the method part of the evaluation key is as it was)."""
    lora = keys(tiny_cfg("method=lora"))
    assert keys(tiny_cfg("method=lora", "+method.prompt_format=as_trained", "+method.num_fewshot=0")) == lora
    assert keys(tiny_cfg("method=lora", "+method.shot_seed=7")) == lora
    zeroshot = keys(tiny_cfg("method=zeroshot"))
    assert keys(tiny_cfg("method=zeroshot", "+method.shot_seed=1234")) == zeroshot
    method = {name: identity_of(tiny_cfg(f"method={name}")).parts["evaluation"]["method"]
              for name in ("lora", "zeroshot", "fewshot")}
    assert method == {"lora": {"name": "lora", "num_fewshot": None, "shot_seed": None},
                      "zeroshot": {"name": "zeroshot", "num_fewshot": 0, "shot_seed": None,
                                   "prompt_format": "as_trained"},
                      "fewshot": {"name": "fewshot", "num_fewshot": 5, "shot_seed": 1234, "prompt_format": "lm_eval"}}
