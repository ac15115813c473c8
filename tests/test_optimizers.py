"""The optimizer and schedule of trained methods (slm_sweep/train/optimizers.py): method.optimizer, method.lr_scale
(LoRA+ as a method file) and trainer.lr_schedule, in training, in validation and in a cell's identity."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from slm_sweep.config import ConfigError, validate_config
from slm_sweep.identity import trainer_identity
from slm_sweep.methods import apply_method
from slm_sweep.report.variants import configuration_settings
from slm_sweep.train.fit import build_module
from slm_sweep.train.optimizers import (
    OptimizerError,
    build_optimizer,
    lr_factor,
    parameter_groups,
    parameter_scales,
)
from tests.conftest import compose_config
from tests.test_methods import _tiny


def _module(*overrides: str):
    """The training module of the tiny model under a composed method and trainer, and the tokenizer."""
    cfg = compose_config(["model=tiny", "trainer.weight_decay=0.0", "trainer.warmup_steps=0",
                          *overrides])
    model, tokenizer = _tiny()
    torch.manual_seed(0)
    model = apply_method(copy.deepcopy(model), cfg.method)
    return build_module(model, cfg.trainer, cfg.method), tokenizer


def _one_step(*overrides: str) -> dict[str, torch.Tensor]:
    """Each trainable parameter's change after one optimizer step on one fixed sequence."""
    module, tok = _module(*overrides)
    optimizer = module.configure_optimizers()["optimizer"]
    before = {n: p.detach().clone() for n, p in module.model.named_parameters() if p.requires_grad}
    ids = torch.tensor([tok("she bought 12 eggs and sold 5. 12-5=<<12-5=7>>7 #### 7")["input_ids"]])
    module.model.train()
    module.model(input_ids=ids, labels=ids).loss.backward()
    optimizer.step()
    return {n: p.detach() - before[n] for n, p in module.model.named_parameters() if p.requires_grad}


def test_the_default_optimizer_is_adamw_over_decayed_matrices_and_undecayed_vectors():
    matrix, vector = torch.nn.Parameter(torch.randn(4, 4)), torch.nn.Parameter(torch.randn(4))
    frozen = torch.nn.Parameter(torch.randn(4, 4), requires_grad=False)
    optimizer = build_optimizer([matrix, vector, frozen], 1e-3, weight_decay=0.1)
    assert type(optimizer) is torch.optim.AdamW and optimizer.defaults["betas"] == (0.9, 0.999)
    assert [(g["params"], g["weight_decay"], g["lr"]) for g in optimizer.param_groups] == [
        ([matrix], 0.1, 1e-3), ([vector], 0.0, 1e-3)]


def test_loraplus_trains_the_b_matrices_at_sixteen_times_a_s_rate():
    """LoRA's B starts at zero, so its first AdamW step moves each element of B by about the learning rate (Adam
    normalises the gradient): LoRA+ moves them 16 times as far, and A not at all in either (B=0, no gradient)."""
    lora = _one_step("method=lora", "method.lr=1e-3", "method.dropout=0.0")
    plus = _one_step("method=loraplus", "method.lr=1e-3", "method.dropout=0.0")
    assert lora.keys() == plus.keys()
    b_names = [n for n in lora if ".lora_B." in n]
    assert b_names and len(b_names) < len(lora)
    for name in b_names:
        step, step_plus = lora[name].abs().max().item(), plus[name].abs().max().item()
        assert step == pytest.approx(1e-3, rel=0.05) and step_plus == pytest.approx(16e-3, rel=0.05), name
    for name in set(lora) - set(b_names):
        assert torch.equal(lora[name], plus[name]), name


def test_loraplus_groups_hold_exactly_the_b_matrices_at_the_scaled_rate():
    module, _ = _module("method=loraplus", "method.lr=2e-4")
    groups = module.configure_optimizers()["optimizer"].param_groups
    names = {id(p): n for n, p in module.model.named_parameters()}
    scaled = [n for g in groups if g["lr"] == pytest.approx(16 * 2e-4) for n in map(names.get, map(id, g["params"]))]
    assert scaled and all(".lora_B." in n for n in scaled)
    assert {n for n, p in module.model.named_parameters() if p.requires_grad and ".lora_B." in n} == set(scaled)
    assert groups[0]["lr"] == 2e-4  # the first group is method.lr's: the logged rate


def test_a_torch_optimizer_named_by_the_method_trains_with_its_arguments():
    module, _ = _module("method=full", "+method.optimizer={_target_: torch.optim.SGD, momentum: 0.9}")
    optimizer = module.configure_optimizers()["optimizer"]
    assert type(optimizer) is torch.optim.SGD
    assert optimizer.defaults["momentum"] == 0.9 and optimizer.defaults["lr"] == module.lr
    betas = _module("method=full", "+method.optimizer={_target_: torch.optim.AdamW, betas: [0.9, 0.95]}")[0]
    assert betas.configure_optimizers()["optimizer"].defaults["betas"] == (0.9, 0.95)


def test_an_lr_scale_key_that_matches_no_trainable_parameter_is_refused_naming_them():
    with pytest.raises(OptimizerError, match=r"\['lora_b'\] match no trainable parameter.*lora_A"):
        _module("method=lora", "+method.lr_scale={lora_b: 16}")
    # whole components only: lora_B is no part of lora_B2
    named = [("x.lora_B2.weight", torch.nn.Parameter(torch.ones(2, 2)))]
    with pytest.raises(OptimizerError, match="match no trainable parameter"):
        parameter_scales(named, {"lora_B": 2})
    both = [("layers.0.mlp.lora_B.weight", torch.nn.Parameter(torch.ones(2, 2)))]
    with pytest.raises(OptimizerError, match=r"\['mlp', 'lora_B'\] all match"):
        parameter_scales(both, {"mlp": 2, "lora_B": 3})


def test_groups_keep_each_rate_and_decay_apart():
    a, b, v = (torch.nn.Parameter(torch.ones(*s)) for s in ((2, 2), (2, 2), (2,)))
    groups = parameter_groups([a, b, v], 0.5, weight_decay=0.1, scales={id(b): 4.0, id(v): 4.0})
    assert [(g["params"], g["weight_decay"], g.get("lr")) for g in groups] == [
        ([a], 0.1, None), ([], 0.0, None), ([b], 0.1, 2.0), ([v], 0.0, 2.0)]


@pytest.mark.parametrize("schedule, expected", [
    ("cosine", [0.5, 1.0, 0.853553, 0.5, 0.0]),
    ("linear", [0.5, 1.0, 0.75, 0.5, 0.0]),
    ("constant", [0.5, 1.0, 1.0, 1.0, 1.0]),
])
def test_schedules_warm_up_then_decay_as_named(schedule, expected):
    assert [lr_factor(step, 2, 6, schedule) for step in (0, 2, 3, 4, 9)] == pytest.approx(expected, abs=1e-6)


def test_the_module_schedules_every_group_by_the_trainer_s_schedule():
    module, _ = _module("method=loraplus", "method.lr=1e-3", "trainer.lr_schedule=linear", "trainer.warmup_steps=0",
                        "trainer.max_steps=10")
    configured = module.configure_optimizers()
    optimizer, scheduler = configured["optimizer"], configured["lr_scheduler"]["scheduler"]
    for _ in range(5):
        optimizer.step()
        scheduler.step()
    # half-way down the linear decay: method.lr's groups and B's (16 times) both at half their rate
    assert sorted({g["lr"] for g in optimizer.param_groups}) == pytest.approx([0.5e-3, 8e-3])


@pytest.mark.parametrize("override, message", [
    ("+method.optimizer={_target_: torch.optim.SGD, lr: 0.1}", r"method.optimizer.lr=0.1 is set by the training "
                                                               r"loop from method.lr"),
    ("+method.optimizer={_target_: torch.optim.SGD, weight_decay: 0.1}", "from trainer.weight_decay"),
    ("+method.optimizer={_target_: torch.optim.SGD, momentm: 0.9}", r"momentm is not an argument of torch.optim.SGD "
                                                                   r"\(did you mean momentum\?\)"),
    ("+method.optimizer={_target_: torch.nn.Linear}", "is not a torch.optim.Optimizer class"),
    ("+method.optimizer={_target_: torch.optim.NoSuchOptimizer}", "cannot be imported"),
    ("+method.optimizer=adam", "must be null .AdamW. or a mapping with a _target_"),
    ("+method.lr_scale={lora_B: 0}", r"method.lr_scale.lora_B=0 must be a positive number"),
    ("+method.lr_scale=[lora_B]", "must be a mapping of parameter-name parts"),
    ("trainer.lr_schedule=cosin", "trainer.lr_schedule='cosin' is not one of: cosine, linear, constant"),
    # classes and settings that fail only once the loop builds or steps them: refused before anything loads
    ("+method.optimizer={_target_: torch.optim.LBFGS}", r"cannot train as the training loop uses it .*per-parameter"),
    ("+method.optimizer={_target_: torch.optim.SparseAdam}", "cannot train as the training loop uses it"),
    ("+method.optimizer={_target_: torch.optim.AdamW, betas: 0.9}", "cannot train as the training loop uses it"),
    ("+method.optimizer={_target_: torch.optim.Optimizer}", "is not a torch.optim.Optimizer class"),
    ("+method.optimizer={_target_: torch.optim.adamw.adamw}", r"'torch.optim.adamw.adamw' is not a class"),
    ("+method.optimizer={_target_: torch.optim.SGD, _args_: [1]}", r"method.optimizer._args_ is not read"),
])
def test_bad_optimizer_settings_are_refused_before_anything_loads(override, message):
    with pytest.raises(ConfigError, match=message):
        validate_config(compose_config(["model=tiny", "method=lora", override]))


def test_a_method_that_trains_nothing_takes_no_optimizer():
    with pytest.raises(ConfigError, match=r"method.lr_scale=\{'lora_B': 16\} cannot be used with "
                                          r"method='zeroshot', which trains nothing"):
        validate_config(compose_config(["model=tiny", "method=zeroshot", "+method.lr_scale={lora_B: 16}"]))
    validate_config(compose_config(["model=tiny", "method=loraplus"]))


def test_the_schedule_is_keyed_only_when_it_is_not_the_default():
    """Earlier runs (all cosine) keep their keys; another schedule trains other weights, so it is keyed."""
    base = {"max_steps": 10, "batch_size": 4, "max_length": 64, "warmup_steps": 1, "weight_decay": 0.0,
            "gradient_clip_val": 1.0, "precision": "32-true"}
    assert trainer_identity(base) == trainer_identity({**base, "lr_schedule": "cosine"})
    assert "lr_schedule" not in trainer_identity(base)
    assert trainer_identity({**base, "lr_schedule": "linear"})["lr_schedule"] == "linear"


def test_records_from_before_the_schedule_setting_are_the_same_configuration():
    """A result file written before trainer.lr_schedule existed trained with cosine: no variant of its own."""
    new = {"method": "lora", "config": {"method": {"name": "lora", "train": True},
                                        "trainer": {"max_steps": 5, "lr_schedule": "cosine"}}}
    old = json.loads(json.dumps(new))
    del old["config"]["trainer"]["lr_schedule"]
    assert configuration_settings(old) == configuration_settings(new)
    linear = json.loads(json.dumps(new))
    linear["config"]["trainer"]["lr_schedule"] = "linear"
    assert configuration_settings(linear) != configuration_settings(old)


def test_a_loraplus_cell_trains_on_its_schedule_and_is_keyed_apart_from_lora(tiny_cfg, tmp_path):
    """A whole cell: the method file and the schedule reach training (the logged rate follows the linear decay),
    the result records them, and its training key is not LoRA's."""
    import csv

    from slm_sweep.run import run

    overrides = ("trainer.max_steps=4", "trainer.warmup_steps=1", "method.lr=1e-3", "logger=csv")
    plus = run(tiny_cfg("method=loraplus", "trainer.lr_schedule=linear", *overrides), out_dir=tmp_path / "plus")
    assert plus["status"] == "completed", plus.get("error")
    assert plus["config"]["method"]["lr_scale"] == {"lora_B": 16}
    assert plus["config"]["trainer"]["lr_schedule"] == "linear"
    with open(tmp_path / "plus" / "csv" / "metrics.csv", newline="") as f:
        logged = [float(r["train/lr"]) for r in csv.DictReader(f) if r.get("train/lr")]
    assert logged == pytest.approx([1e-3, 1e-3, 1e-3 * 2 / 3, 1e-3 / 3])  # method.lr's group; B's is 16 times
    lora = run(tiny_cfg("method=lora", *overrides), out_dir=tmp_path / "lora")
    assert lora["status"] == "completed", lora.get("error")
    assert lora["identity"]["training_key"] != plus["identity"]["training_key"]


def test_an_optimizer_that_would_ignore_the_weight_decay_is_refused_with_one():
    """Rprop takes no weight_decay: trainer.weight_decay=0.1 would train as 0 under another key."""
    with pytest.raises(ConfigError, match=r"torch.optim.Rprop' takes no weight_decay, so trainer.weight_decay=0.1 "
                                          r"would not be applied"):
        validate_config(compose_config(["model=tiny", "method=lora", "trainer.weight_decay=0.1",
                                        "+method.optimizer={_target_: torch.optim.Rprop}"]))
    validate_config(compose_config(["model=tiny", "method=lora", "+method.optimizer={_target_: torch.optim.Rprop}"]))


def test_an_optimizer_taking_no_settings_says_so(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "bare_optim.py").write_text(
        "import torch\n\n\nclass Bare(torch.optim.SGD):\n    def __init__(self, params, lr, weight_decay=0.0):\n"
        "        super().__init__(params, lr=lr, weight_decay=weight_decay)\n")
    with pytest.raises(OptimizerError, match=r"momentum is not an argument of bare_optim.Bare; it takes no setting of "
                                             r"its own \(the training loop sets its parameters, lr and, where taken, "
                                             r"weight_decay\)"):
        build_optimizer([torch.nn.Parameter(torch.ones(2, 2))], 0.1,
                        spec={"_target_": "bare_optim.Bare", "momentum": 0.9})


def test_a_spawned_process_finds_each_parameter_s_rate_and_decay_by_name():
    """ddp_spawn pickles the module into each process, whose parameters are other objects: the groups there must
    be the ones the first process builds (LoRA+'s B at 16 times, only matrices decayed)."""
    import pickle

    module, _ = _module("method=loraplus", "method.lr=1e-3", "trainer.weight_decay=0.1")

    def groups(m):
        names = {id(p): n for n, p in m.model.named_parameters()}
        return [(g["lr"], g["weight_decay"], sorted(names[id(p)] for p in g["params"]))
                for g in m.configure_optimizers()["optimizer"].param_groups]

    here = groups(module)
    assert any(lr == pytest.approx(16e-3) and wd == 0.1 and names for lr, wd, names in here)
    assert groups(pickle.loads(pickle.dumps(module))) == here


def test_names_are_read_through_the_wrappers_strategies_and_compilers_insert():
    from slm_sweep.train.optimizers import unwrapped_name

    assert unwrapped_name("model.layers.0._fsdp_wrapped_module.mlp._checkpoint_wrapped_module.up_proj.lora_B.weight") \
        == "model.layers.0.mlp.up_proj.lora_B.weight"
    assert unwrapped_name("_orig_mod.model.norm.weight") == "model.norm.weight"
