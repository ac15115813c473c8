"""Every config file composes, and the composed config validates; bad values give clear errors."""

from __future__ import annotations

import re

import pytest
import torch
from omegaconf import OmegaConf

from slm_sweep.config import ConfigError, group_options, validate_config
from tests.conftest import CONF_DIR, compose_config

GROUPS = ("model", "method", "dataset", "trainer", "eval", "logger")


@pytest.mark.parametrize("group", GROUPS)
def test_every_option_of_every_group_composes(group):
    options = group_options(group)
    assert options, f"conf/{group}/ has no config files"
    for option in options:
        cfg = compose_config([f"{group}={option}"])
        OmegaConf.to_container(cfg, resolve=True)  # every interpolation resolves
        if group == "dataset" and cfg.dataset.eval_only:
            with pytest.raises(ConfigError, match="evaluation-only"):
                validate_config(cfg)
            validate_config(compose_config([f"{group}={option}", "method=zeroshot"]))
        else:
            validate_config(cfg)


def _pairs():
    """Every method with the tiny model, every model with every method that sets model keys (qlora's
    model.quantization) and with lora: the other methods leave the model node alone."""
    methods_on_model = [m for m in group_options("method") if "model:" in (CONF_DIR / "method" / f"{m}.yaml").read_text()]
    pairs = {("tiny", method) for method in group_options("method")}
    pairs |= {(model, method) for model in group_options("model") for method in ("lora", *methods_on_model)}
    return sorted(pairs)


@pytest.mark.parametrize(("model", "method"), _pairs())
def test_every_model_method_pair_composes(model, method):
    cfg = compose_config([f"model={model}", f"method={method}", "dataset=gsm8k"])
    validate_config(cfg)
    assert cfg.model.name == model and cfg.method.name == method


def test_study_models_point_at_the_hub_ids():
    expected = {
        "smollm135": "HuggingFaceTB/SmolLM2-135M-Instruct",
        "gemma270": "google/gemma-3-270m-it",
        "smollm360": "HuggingFaceTB/SmolLM2-360M-Instruct",
        "qwen05": "Qwen/Qwen2.5-0.5B-Instruct",
        "llama1b": "meta-llama/Llama-3.2-1B-Instruct",
    }
    for name, hub_id in expected.items():
        cfg = compose_config([f"model={name}"])
        assert cfg.model.source == "hub" and cfg.model.id == hub_id
        assert cfg.model.trust_remote_code is False


def test_method_defaults():
    lora = compose_config(["method=lora"]).method
    assert (lora.r, lora.alpha, lora.dropout, lora.target_modules) == (16, 32, 0.05, "all-linear")
    assert lora.train is True and lora.peft._target_ == "peft.LoraConfig"
    assert (lora.peft.r, lora.peft.lora_alpha, lora.peft.lora_dropout, lora.peft.use_dora) == (16, 32, 0.05, False)
    dora = compose_config(["method=dora"]).method
    assert dora.peft.use_dora is True and dora.peft.r == 16 and dora.name == "dora"
    assert "peft" not in compose_config(["method=full"]).method
    assert compose_config(["method=fewshot"]).method.num_fewshot == 5
    assert compose_config(["method=zeroshot"]).method.train is False


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("method.lr=-0.001", "method.lr=-0.001 must be a positive number"),
        ("method.r=0", "method.r=0 must be a positive integer"),
        ("method.dropout=1.5", "method.dropout=1.5"),
        ("dataset.test_limit=0", "dataset.test_limit=0 must be a positive integer"),
        ("trainer.max_steps=-3", "trainer.max_steps=-3"),
        ("trainer.micro_batch_size=3", "multiple of trainer.micro_batch_size=3"),
        ("dataset.data_dir=/no/such/dir", "dataset.data_dir='/no/such/dir' is not an existing directory"),
        ("prompt.style=fancy", "prompt.style='fancy' is not one of: auto, chat, plain"),
        ("eval.ood_sets=[svamp,nope]", "eval.ood_sets[]='nope' is not one of"),
        ("eval.ood_sets=[svamp,gsm8k]", "eval.ood_sets has 'gsm8k', the dataset the cell trains on and is tested on"),
        ("seed=-1", "seed=-1 must be a non-negative integer"),
        ("method=fewshot method.shot_seed=abc", "method.shot_seed='abc' must be a non-negative integer or null"),
        ("method=fewshot method.shot_seed=1.5", "method.shot_seed=1.5 must be a non-negative integer or null"),
        ("method=fewshot method.shot_seed=true", "method.shot_seed=True must be a non-negative integer or null"),
        ("trainer.micro_batch_tokens=-5", "trainer.micro_batch_tokens=-5 must be a positive integer or null"),
        ("trainer.throughput_warmup_steps=-1", "trainer.throughput_warmup_steps=-1 must be a non-negative integer"),
        ("trainer.precision=17", "trainer.precision='17' is not one of: 32-true"),
        ("trainer.compile_scope=blocks", "trainer.compile_scope='blocks' is not one of: layers, model"),
        ("trainer.compile_mode=fast", "trainer.compile_mode='fast' is not one of: default, reduce-overhead"),
        ("trainer.compile=true trainer.compile_scope=model trainer.compile_mode=reduce-overhead "
         "trainer.micro_batch_size=4",
         "trainer.compile_mode=reduce-overhead replays CUDA graphs, which needs a step of one micro-batch: "
         "trainer.micro_batch_size null or trainer.batch_size (16), and trainer.micro_batch_tokens null (they are 4 "
         "and None)"),
        ("trainer.compile_mode=reduce-overhead",
         "trainer.compile_mode=reduce-overhead replays CUDA graphs, which needs trainer.compile_scope=model "
         "(trainer.compile_scope=layers"),
        ("trainer.compile_backend=eager", "trainer.compile_backend='eager' is not one of: inductor, cudagraphs"),
        ("trainer.compile_backend=cudagraphs trainer.compile_scope=model trainer.compile_mode=reduce-overhead",
         "trainer.compile_mode=reduce-overhead is a mode of the inductor backend; trainer.compile_backend="
         "cudagraphs takes none"),
        ("trainer.compile_backend=cudagraphs",
         "trainer.compile_backend=cudagraphs replays CUDA graphs, which needs trainer.compile_scope=model "
         "(trainer.compile_scope=layers"),
        ("trainer.compile_backend=cudagraphs trainer.compile_scope=model trainer.micro_batch_tokens=2048",
         "trainer.compile_backend=cudagraphs replays CUDA graphs, which needs a step of one micro-batch"),
        ("trainer.compile_backend=cudagraphs trainer.compile_scope=model trainer.micro_batch_size=null",
         "trainer.compile_backend=cudagraphs traces every micro-batch shape on its own (torch's cudagraphs backend "
         "fails on a second shape when traced with dynamic ones, pytorch#131009), so trainer.pad_to_multiple_of must "
         "leave at most 8 padded lengths up to the longest micro-batch, 512 tokens (it is None): set "
         "trainer.pad_to_multiple_of=512 for one"),
        ("trainer.compile_backend=cudagraphs trainer.compile_scope=model trainer.micro_batch_size=null "
         "trainer.pad_to_multiple_of=32",
         "at most 8 padded lengths up to the longest micro-batch, 512 tokens (it is 32: 16 lengths): set "
         "trainer.pad_to_multiple_of=512 for one"),
        ("trainer.compile_backend=cudagraphs trainer.compile_scope=model trainer.micro_batch_size=null "
         "trainer.packing=true trainer.pad_to_multiple_of=512",
         "longest micro-batch, 8192 tokens (it is 512: 16 lengths): set trainer.pad_to_multiple_of=8192 for one"),
        ("trainer=ddp trainer.compile_backend=cudagraphs trainer.compile_scope=model trainer.pad_to_multiple_of=64",
         "trainer.compile_backend=cudagraphs replays CUDA graphs, which is checked on one device only "
         "(trainer.devices=-1, trainer.strategy=ddp): set trainer.devices=1 trainer.strategy=auto"),
        ("trainer.compile_scope=model trainer.compile_mode=reduce-overhead trainer.micro_batch_size=null "
         "trainer.devices=[0,1]",
         "trainer.compile_mode=reduce-overhead replays CUDA graphs, which is checked on one device only "
         "(trainer.devices=[0, 1]"),
        ("trainer.weight_decay=-0.1", "trainer.weight_decay=-0.1 must be a non-negative number"),
        ("trainer.devices=3", "trainer.batch_size=16 must be a multiple of trainer.devices=3"),
        # a list or a string of indices counts its devices, as the training key and the step sampler do
        ("trainer.devices=[0,1,2]", "trainer.batch_size=16 must be a multiple of trainer.devices=[0, 1, 2] (3 devices)"),
        ("trainer.devices='0,1,2'", "trainer.batch_size=16 must be a multiple of trainer.devices=0,1,2 (3 devices)"),
        ("trainer.devices=0", "trainer.devices=0 must be a number of devices (1 or more; -1 for all), auto, or a list"),
        ("trainer.compile_backend=cudagraphs trainer.compile_scope=model trainer.devices=0",
         "trainer.devices=0 must be a number of devices"),
        ("trainer.devices=-2", "trainer.devices=-2 must be a number of devices"),
        ("trainer.devices=[]", "trainer.devices=[] must be a number of devices"),
        ("trainer.devices=two", "trainer.devices='two' must be a number of devices"),
        ("model.dtype=fp16", "model.dtype='fp16' is not one of: auto, float32, bfloat16, float16"),
        ("model.dtype=int8", "model.dtype='int8' is not one of"),
        ("eval.device=gpu", "eval.device='gpu' is not one of: auto, cpu, cuda, cuda:N"),
        ("eval.device=cuda:01", "eval.device='cuda:01' is not one of: auto, cpu, cuda, cuda:N (N: 0, 1, ... without "
                                "leading zeros)"),
        ("model=smollm135_q4 model.gguf_file=null", "model='smollm135_q4' has source gguf but no model.gguf_file"),
        ("model.source=gguf", "model='tiny' has source gguf but no model.gguf_file"),
        ("model=smollm135_q4 model.gguf_package=null", "model='smollm135_q4' has source gguf but neither "
                                                       "model.gguf_package (the Python package that ships "
                                                       "SmolLM2-135M-Instruct.Q4_1.gguf) nor model.gguf_dir"),
        ("eval.dtype=fp8", "eval.dtype='fp8' is not one of: auto, float32, bfloat16, float16"),
        ("method.train=maybe", "method.train='maybe' must be true or false"),
        ("method.lr=null", "method.lr=None must be a positive number"),
        ("+method.peft.rank=8", "method.peft (_target_: peft.LoraConfig) cannot be built"),
        ("method.peft._target_=collections.OrderedDict", "not a peft config"),
        ("~method.peft._target_", "must be a mapping with a _target_"),
        ("+trainer.max_stepz=5", "trainer.max_stepz is not a setting: no code reads it; did you mean trainer.max_steps?"),
        # nested settings, the top level and tuning are checked as well
        ("+dataset.hub.revison=abc", "dataset.hub.revison is not a setting: no code reads it; did you mean "
                                     "dataset.hub.revision?"),
        ("+dataset.local.dirname=x", "dataset.local.dirname is not a setting: no code reads it; did you mean "
                                     "dataset.local.dir_name?"),
        ("+dataset.dedup.enabeld=false", "did you mean dataset.dedup.enabled?"),
        ("+seeds=3", "seeds is not a setting: no code reads it; did you mean seed?"),
        ("+cache_dirr=/tmp/x", "did you mean cache_dir?"),
        ("+tuning.lrr=tuned", "tuning.lrr is not a setting: no code reads it; did you mean tuning.lr?"),
        ("+method.rank=32", "method.rank=32 (method='lora') is read by nothing: a method's settings are name, train"),
        ("+method.learning_rate=0.001", "method.learning_rate=0.001 (method='lora') is read by nothing"),
        ("+method.trian=true", "method.trian=True (method='lora') is read by nothing (did you mean train?)"),
        ("eval.metric_modules=[no_such_metrics_module]", "eval.metric_modules[0]='no_such_metrics_module' is not"),
        ("+method.peft.target_modules=[q_proj]", "method.peft.target_modules is set directly, so the short name "
                                                 "target_modules is no longer read"),
        # peft checks no types: the string 'no' would switch DoRA on under method=lora
        ("method.peft.use_dora=no", "method.peft.use_dora='no' must be one of: true, false (LoraConfig.use_dora is "
                                    "a bool; peft checks no types and would read 'no' as true)"),
        ("+method.peft.use_rslora=off", "method.peft.use_rslora='off' must be one of: true, false"),
        ("method.peft.use_dora=1", "method.peft.use_dora=1 must be one of: true, false"),
        ("+method.peft.init_lora_weights=no", "method.peft.init_lora_weights='no' must be one of: true, false, "
                                              "'gaussian', 'eva', 'olora', 'pissa'"),
        ("+dataset.hub.splits.validation=validation", "dataset 'gsm8k': hub.splits has the role 'validation', which "
                                                      "nothing reads; the roles are: train, test"),
    ],
)
def test_bad_values_are_named_with_what_is_allowed(override, message):
    cfg = compose_config(["method=lora", *override.split(" ")])  # several overrides, space-separated
    with pytest.raises(ConfigError) as err:
        validate_config(cfg)
    assert message in str(err.value)


@pytest.mark.parametrize("overrides", ["method=lora method.peft.use_dora=true", "method=dora",
                                       "method=lora +method.peft.init_lora_weights=gaussian",
                                       "method=lora +method.peft.init_lora_weights=false", "method=pissa"])
def test_a_peft_switch_takes_a_bool_and_a_switch_or_choice_argument_its_choices(overrides):
    validate_config(compose_config(overrides.split(" ")))


def test_a_validation_split_of_an_evaluation_only_set_is_refused_without_advice_that_cannot_work():
    """Setting dataset.val_size cannot give svamp a validation split: it has no train split to carve one from."""
    for sizes in ([], ["dataset.val_size=10"]):
        with pytest.raises(ConfigError) as err:
            validate_config(compose_config(["dataset=svamp", "method=zeroshot", "eval.split=val", *sizes]))
        assert ("eval.split='val' scores a validation split carved from the train split, which dataset='svamp' does "
                "not have (it is an evaluation-only set): search on a dataset with a train split: gsm8k, "
                "orcamath") in str(err.value)
        assert "val_size" not in str(err.value)


@pytest.mark.parametrize(("override", "meant"), [
    ("+eval.test_limit=3", "dataset.test_limit"),  # Hydra's own hint for eval.test_limit=3; eval.ood_limit is near
    ("+test_limit=3", "dataset.test_limit"),
    ("+eval.lr_candidate=1", "tuning.lr_candidate"),
    ("+tuning.max_steps=5", "trainer.max_steps"),
    ("+eval.seed=1", "seed"),
    ("+trainer.lr=1e-4", "method.lr or tuning.lr"),  # the rate first: tuning.lr only takes method or tuned
])
def test_a_setting_of_another_group_is_named_as_the_one_meant(override, meant):
    cfg = compose_config(["method=lora", override])
    key = override.lstrip("+").split("=")[0]
    with pytest.raises(ConfigError) as err:
        validate_config(cfg)
    assert f"{key} is not a setting: no code reads it; did you mean {meant}? " in str(err.value)


@pytest.mark.parametrize(("arguments", "message"), [
    (["eval.test_limit=3"], "eval.test_limit is not a setting: no code reads it; did you mean dataset.test_limit?"),
    (["-m", "model=tiny", "trainer.max_stepz=1,2"], "did you mean trainer.max_steps? the trainer settings are"),
    (["dataset.hub.revison=abc"], "dataset.hub.revison is not a setting: no code reads it; did you mean "
                                  "dataset.hub.revision?"),
    (["--config-dir", "/tmp", "tuning.lrr=tuned"], "tuning.lrr is not a setting: no code reads it; did you mean "
                                                    "tuning.lr?"),
])
def test_a_mistyped_setting_on_the_command_line_is_refused_before_hydra_composes(arguments, message):
    from slm_sweep.config import check_command_line_keys

    with pytest.raises(ConfigError) as err:
        check_command_line_keys(arguments)
    assert message in str(err.value)


@pytest.mark.parametrize("arguments", [
    ["-m", "model=tiny,smollm135", "method=lora", "dataset.test_limit=3", "trainer.max_steps=1,2"],
    ["+method.rank=8", "method.my_own_key=1", "model.quantization.load_in_4bit=true", "hydra.run.dir=/tmp/x"],
    ["~eval.stop", "++eval.max_new_tokens=8", "model@other=tiny", "not an override", "dataset.hub.path=a/b"],
])
def test_the_command_line_check_leaves_real_settings_additions_and_method_keys_to_composition(arguments):
    from slm_sweep.config import check_command_line_keys

    check_command_line_keys(arguments)


@pytest.mark.parametrize("devices", ["1", "-1", "auto", "[0,1]", "'0,1'", "2"])
def test_the_device_counts_lightning_takes_pass(devices):
    validate_config(compose_config(["method=lora", f"trainer.devices={devices}"]))


@pytest.mark.parametrize(("override", "message"), [
    ("trainer.accelerator=cpux", "trainer.accelerator='cpux' is not one of: auto, gpu, cpu, cuda"),
    ("trainer.strategy=dpp", "trainer.strategy='dpp' is not a strategy Lightning knows (did you mean ddp"),
    ("trainer.accelerator=gpu", "trainer.accelerator=gpu but CUDA is not available here"),
    ("eval.device=cuda", "eval.device='cuda' but CUDA is not available here"),
])
def test_trainer_and_device_names_fail_the_cell_before_it_reads_any_data(tiny_cfg, tmp_path, override, message):
    """Lightning's names and the machine's devices are checked when a cell starts (validation imports neither
    Lightning nor torch), before any data or model is read."""
    import torch

    from slm_sweep.run import run

    if "CUDA is not available" in message and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    cfg = tiny_cfg("method=lora", override)
    validate_config(cfg)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        run(cfg, out_dir=tmp_path)
    assert not list(tmp_path.iterdir())


def test_the_precisions_are_those_lightning_takes_short_names_included():
    """Lightning's short names (16, bf16, 64) are valid, and keyed as the long ones by the training key."""
    import typing

    from lightning.fabric.plugins.precision.precision import _PRECISION_INPUT_STR, _PRECISION_INPUT_STR_ALIAS

    from slm_sweep.config import PRECISIONS
    from slm_sweep.identity import PRECISION_ALIASES

    assert set(PRECISIONS) == {*typing.get_args(_PRECISION_INPUT_STR), *typing.get_args(_PRECISION_INPUT_STR_ALIAS)}
    assert set(PRECISION_ALIASES.values()) <= set(PRECISIONS)
    for short in ("16", "bf16", "64", "32"):
        validate_config(compose_config(["method=lora", f"trainer.precision={short}"]))


@pytest.fixture
def nothing_but_the_cpu(monkeypatch):
    """A CPU machine without transformer_engine, deepspeed or torch_xla (faked: another machine may have them)."""
    import sys

    from lightning.pytorch.accelerators import AcceleratorRegistry

    for module in ("transformer_engine", "deepspeed", "torch_xla"):
        monkeypatch.setitem(sys.modules, module, None)  # find_spec gives None
    for name in AcceleratorRegistry.available_accelerators() - {"cpu"}:
        monkeypatch.setattr(AcceleratorRegistry[name]["accelerator"], "is_available", staticmethod(lambda: False))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)


@pytest.mark.parametrize(("override", "message"), [
    ("trainer.precision=transformer-engine", "trainer.precision=transformer-engine needs the transformer_engine "
                                             "package, which is not installed here: pip install"),
    ("trainer.strategy=deepspeed_stage_2", "trainer.strategy=deepspeed_stage_2 needs the deepspeed package"),
    ("trainer.accelerator=tpu", "trainer.accelerator=tpu needs the torch_xla package"),
    ("trainer.accelerator=cpu trainer.strategy=fsdp", "trainer.strategy=fsdp shards training over GPUs, but "
                                                      "trainer.accelerator=cpu trains on the CPU"),
    # its processes would train to the end and send back the weights but no step count, losses or throughput
    ("trainer.accelerator=cpu trainer.devices=2 trainer.strategy=ddp_spawn",
     "trainer.strategy=ddp_spawn trains in processes started by multiprocessing (spawn), which return the weights "
     "but not the steps, losses and throughput a result records; use one that starts each device's process as a "
     "script: ddp, ddp_find_unused_parameters_false"),
])
def test_what_no_machine_with_these_packages_can_train_is_refused_by_a_sweeps_preflight_too(nothing_but_the_cpu,
                                                                                           override, message):
    """Lightning would refuse these only when it builds the trainer, after the data and the model have loaded."""
    from slm_sweep.config import check_classes

    cfg = compose_config(["method=lora", *override.split(" ")])
    validate_config(cfg)
    for devices in (True, False):  # False: as a sweep's preflight checks each cell
        with pytest.raises(ConfigError, match=re.escape(message)):
            check_classes(cfg, devices=devices)


@pytest.mark.parametrize(("override", "message"), [
    ("trainer.accelerator=mps", "trainer.accelerator=mps but Lightning finds no mps device on this machine; the "
                                "accelerators available here: auto, cpu"),
    ("trainer.strategy=fsdp", "trainer.strategy=fsdp shards training over GPUs, but trainer.accelerator=auto finds "
                              "no accelerator here and trains on the CPU"),
])
def test_what_this_machine_cannot_train_on_is_refused_where_the_cell_runs(nothing_but_the_cpu, override, message):
    """Devices are checked where the cell runs, as CUDA is: a sweep's preflight passes them (its launcher may send
    the cells to machines that have them; the preflight's own device check decides there)."""
    from slm_sweep.config import check_classes

    cfg = compose_config(["method=lora", *override.split(" ")])
    with pytest.raises(ConfigError, match=re.escape(message)):
        check_classes(cfg)
    check_classes(cfg, devices=False)


@pytest.mark.parametrize(("override", "where"), [
    ("trainer=ddp trainer.accelerator=cpu", "trainer.devices=-1: trainer.accelerator=cpu trains"),
    ("trainer=ddp_cpu trainer.devices=-1", "trainer.devices=-1: trainer.accelerator=cpu trains"),
    ("trainer=ddp_cpu trainer.devices=[0,1]", "trainer.devices=[0, 1]: trainer.accelerator=cpu trains"),
    ("trainer.devices=[0]", "trainer.devices=[0]: trainer.accelerator=auto finds no accelerator here and trains"),
    ("trainer=ddp trainer.accelerator=auto", "trainer.devices=-1: trainer.accelerator=auto finds no accelerator "
                                             "here and trains"),
])
def test_a_device_list_or_all_devices_on_the_cpu_is_refused_before_anything_loads(nothing_but_the_cpu, override,
                                                                                   where):
    """Lightning's CPU accelerator takes a number of processes, and says so only after the data and the model
    have loaded. trainer.accelerator=cpu is refused by a sweep's preflight too; auto where the cell runs."""
    from slm_sweep.config import check_classes

    cfg = compose_config(["method=lora", *override.split(" ")])
    validate_config(cfg)
    with pytest.raises(ConfigError) as err:
        check_classes(cfg)
    assert str(err.value).startswith(f"{where} on the CPU, which takes a number of processes (1 or more) or auto, "
                                     "not -1 or a list of devices")
    if "accelerator=cpu" in where:
        with pytest.raises(ConfigError, match=re.escape(where)):
            check_classes(cfg, devices=False)
    else:
        check_classes(cfg, devices=False)
    for fine in ("trainer=ddp_cpu", "trainer=ddp_cpu trainer.devices=auto", "trainer.devices='1'"):
        check_classes(compose_config(["method=lora", *fine.split(" ")]))


def test_all_devices_split_the_batch_as_this_machines_gpus_count(monkeypatch):
    """trainer.devices=-1 (trainer=ddp) trains on every GPU here: the batch must split over them (faked CUDA)."""
    from slm_sweep.config import check_trainer_choices

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 3)
    trainer = compose_config(["method=lora", "trainer=ddp"]).trainer
    with pytest.raises(ConfigError, match=re.escape("trainer.batch_size=16 must be a multiple of trainer.devices=-1 "
                                                    "(3 devices here)")):
        check_trainer_choices(trainer)
    check_trainer_choices(trainer, devices=False)  # a sweep's preflight: the GPUs are counted where the cells run
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    check_trainer_choices(trainer)


def test_several_devices_in_an_interactive_session_are_refused_before_anything_loads(monkeypatch):
    """There Lightning forks each device's process (strategy auto), which returns no step count to the cell."""
    from lightning.pytorch.trainer.connectors import accelerator_connector

    import slm_sweep.config as config
    from slm_sweep.config import check_trainer_choices

    trainer = compose_config(["method=lora", "trainer=ddp_cpu"]).trainer
    check_trainer_choices(trainer)
    # a list of device indices (a ListConfig) is a GPU's (faked here): the CPU takes a count of processes
    monkeypatch.setattr(config, "_available_accelerators", lambda: ["cuda"])
    listed = compose_config(["method=lora", "trainer=ddp_cpu", "trainer.accelerator=auto",
                             "trainer.devices=[0,1]"]).trainer
    check_trainer_choices(listed)
    monkeypatch.setattr(accelerator_connector, "_IS_INTERACTIVE", True)
    with pytest.raises(ConfigError, match=re.escape("trainer.devices=[0, 1] trains in 2 processes")):
        check_trainer_choices(listed)
    with pytest.raises(ConfigError, match=re.escape("trainer.devices=2 trains in 2 processes, which Lightning starts "
                                                    "by forking in an interactive session")):
        check_trainer_choices(trainer)
    check_trainer_choices(compose_config(["method=lora"]).trainer)  # one device: nothing forked


@pytest.mark.parametrize("override", ["trainer.precision=transformer-engine", "trainer.accelerator=mps"])
def test_a_single_run_on_what_this_machine_cannot_train_fails_before_it_reads_any_data(nothing_but_the_cpu, tiny_cfg,
                                                                                      tmp_path, override):
    from slm_sweep.run import run

    with pytest.raises(ConfigError, match=re.escape(override)):
        run(tiny_cfg("method=lora", override), out_dir=tmp_path)
    assert not list(tmp_path.iterdir())


def test_a_sweeps_preflight_refuses_a_cell_whose_precision_is_not_installed(nothing_but_the_cpu, requires_data):
    from hydra import compose, initialize_config_dir

    from slm_sweep.sweep.preflight import plan_grid
    from tests.conftest import DATA_ROOT
    from tests.test_preflight import sweep_config

    cfg = sweep_config([f"data_root={DATA_ROOT}", "model=tiny", "method=lora",
                        "trainer.precision=transformer-engine,32-true"])
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        plan = plan_grid(cfg, lambda overrides: compose(config_name="config", overrides=overrides,
                                                        return_hydra_config=True))
    ((reason, cells),) = plan.config_errors.items()
    assert reason.startswith("trainer.precision=transformer-engine needs the transformer_engine package")
    assert cells == ["trainer.precision=transformer-engine"]


@pytest.mark.parametrize(("group", "known"), [("model", "smollm135"), ("method", "dora"), ("dataset", "orcamath")])
def test_unknown_group_option_is_rejected_by_hydra_with_the_choices(group, known):
    from hydra.errors import MissingConfigException

    with pytest.raises(MissingConfigException) as err:
        compose_config([f"{group}=gpt5"])
    text = str(err.value)
    assert f"{group}/gpt5" in text and known in text


@pytest.mark.parametrize(("overrides", "message"), [
    (["model.name=qwen05"], "model.name='qwen05' would record, store and report model=tiny as qwen05"),
    (["dataset.name=orcamath"], "dataset.name='orcamath' would record, store and report dataset=gsm8k as orcamath"),
    (["method=lora", "method.name=dora"], "choose method=dora"),
    (["model.name=mine"], "write it to <folder>/model/mine.yaml with `name: mine`, add hydra.searchpath"),
    ([], None), (["model=qwen05", "model.name=qwen05"], None), (["experiment=paper"], None),
    (["experiment=smoke"], None), (["hparams_search=lr_grid"], None), (["hparams_search=optuna_rank"], None),
])
def test_a_name_override_that_relabels_the_chosen_model_method_or_dataset_is_refused(overrides, message):
    """A cell is recorded and reported by these names: model.name=qwen05 with the tiny model was counted as
    qwen05 by the claims, dataset.name=orcamath scored GSM8K as OrcaMath."""
    from hydra import compose, initialize_config_dir

    from slm_sweep.config import check_group_names

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides, return_hydra_config=True)
    if message is None:
        check_group_names(cfg, cfg.hydra.runtime.choices, cfg.hydra.overrides.task)
    else:
        with pytest.raises(ConfigError, match=re.escape(message)):
            check_group_names(cfg, cfg.hydra.runtime.choices, cfg.hydra.overrides.task)


# ------------------------------------------------------------------------------------------- typed settings


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("trainer.packing=maybe", "Value 'maybe' is not a valid bool"),
        ("trainer.max_steps=ten", "Value 'ten' of type 'str' could not be converted to Integer"),
        ("trainer.fused_adamw=sometimes", "Value 'sometimes' is not a valid bool"),
        ("eval.cuda_graphs=often", "Value 'often' is not a valid bool"),
        ("eval.max_new_tokens=1.5", "could not be converted to Integer"),
        ("dataset.eval_only=perhaps", "Value 'perhaps' is not a valid bool"),
        ("trainer.max_stepz=5", "Could not override 'trainer.max_stepz'"),
        ("prompt.styl=chat", "Could not override 'prompt.styl'"),
    ],
)
def test_wrong_types_and_unknown_keys_fail_when_the_config_is_composed(override, message):
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException) as err:
        compose_config([override])
    text = f"{err.value} {err.value.__cause__}"
    assert message in text
    assert override.split("=")[0] in text  # the full key is named


def test_a_misspelt_key_in_a_yaml_file_fails_when_the_config_is_composed(tmp_path):
    from hydra.errors import ConfigCompositionException

    (tmp_path / "trainer").mkdir()
    (tmp_path / "trainer" / "mine.yaml").write_text("defaults:\n  - default\n  - _self_\nmax_stepz: 5\n")
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "mine.yaml").write_text("name: mine\nsource: tiny\nhiden_size: 32\n")
    searchpath = f"hydra.searchpath=[file://{tmp_path}]"
    for group, key in (("trainer", "max_stepz"), ("model", "hiden_size")):
        with pytest.raises(ConfigCompositionException) as err:
            compose_config([searchpath, f"{group}=mine"])
        text = f"{err.value} {err.value.__cause__}"
        assert f"Key '{key}' not in" in text and f"{group}/mine" in text


def test_an_out_of_domain_or_dedup_set_whose_file_does_not_read_is_refused_before_anything_loads(tmp_path):
    """Their files are checked as the cell's own dataset's: a preflight sees only that their data is there, each
    cell then failed on the out-of-domain set, and deduplication skipped the set as one it could not find."""
    from slm_sweep.config_sources import use_config_sources

    svamp = (CONF_DIR / "dataset" / "svamp.yaml").read_text()
    (tmp_path / "dataset").mkdir()
    (tmp_path / "dataset" / "mine.yaml").write_text(
        svamp.replace("name: svamp", "name: mine").replace("files: {test: SVAMP.json}",
                                                           "files: {test: SVAMP.json, validation: v.json}"))
    use_config_sources([{"schema": "file", "path": str(tmp_path), "provider": "hydra.searchpath"}])
    searchpath = f"hydra.searchpath=[file://{tmp_path}]"
    for setting in ("eval.ood_sets", "dataset.dedup.against"):
        with pytest.raises(ConfigError, match=rf"{re.escape(setting)} has 'mine', whose dataset file does not "
                                              r"read: dataset 'mine': local.files has the role 'validation'"):
            validate_config(compose_config([searchpath, f"{setting}=[mine]"]))


def test_a_name_set_by_another_file_is_blamed_on_that_file_and_the_dataset_check_sees_files_built_on(tmp_path):
    """conf/method/qlora.yaml (package _global_) names itself under method:, so an experiment's rename is the
    experiment's; a dataset file read once is read again when a file it builds on changes."""
    from slm_sweep.config import check_group_names
    from slm_sweep.config_sources import use_config_sources

    (tmp_path / "experiment").mkdir()
    (tmp_path / "experiment" / "renamed.yaml").write_text("# @package _global_\nmethod:\n  name: other\n")
    cfg = compose_config([f"hydra.searchpath=[file://{tmp_path}]", "method=qlora", "experiment=renamed"])
    with pytest.raises(ConfigError, match=r"method=qlora composes a method named 'other': another config file"):
        check_group_names(cfg, {"method": "qlora"})
    (tmp_path / "dataset").mkdir()
    svamp = (CONF_DIR / "dataset" / "svamp.yaml").read_text().replace("name: svamp", "name: base")
    (tmp_path / "dataset" / "base.yaml").write_text(svamp)
    (tmp_path / "dataset" / "derived.yaml").write_text("defaults: [base, _self_]\nname: derived\n")
    use_config_sources([{"schema": "file", "path": str(tmp_path), "provider": "hydra.searchpath"}])
    derived = compose_config([f"hydra.searchpath=[file://{tmp_path}]", "eval.ood_sets=[derived]"])
    validate_config(derived)
    (tmp_path / "dataset" / "base.yaml").write_text(svamp + "answr: prose\n")
    with pytest.raises(ConfigError, match=r"eval.ood_sets has 'derived', whose dataset file does not read"):
        validate_config(derived)


def test_full_fine_tuning_of_a_quantized_model_is_refused_before_anything_loads():
    """Quantized weights cannot be made trainable: refused in validation, not after data and model have loaded;
    adapter methods and the baselines keep the quantized model."""
    quantized = "+model.quantization={_target_: transformers.BitsAndBytesConfig, load_in_4bit: true}"
    with pytest.raises(ConfigError, match=re.escape("method='full' trains every weight, and model.quantization "
                                                    "(model=tiny) loads them quantized")):
        validate_config(compose_config(["method=full", quantized]))
    for method in ("lora", "zeroshot"):
        validate_config(compose_config([f"method={method}", quantized]))


def test_a_misspelt_or_malformed_quantization_is_refused_before_anything_loads():
    """transformers' quantization configs keep an unknown keyword as an unused attribute: a misspelt
    ``bnb_4bit_quant_typ: nf4`` would load fp4 while the config (and the cell's key) said nf4. A value that is not
    a config mapping is named as such, in validation, not as an AttributeError of the model check."""
    bnb = "_target_: transformers.BitsAndBytesConfig, load_in_4bit: true"
    with pytest.raises(ConfigError, match=re.escape("model.quantization.bnb_4bit_quant_typ is not an argument of "
                                                    "transformers.utils.quantization_config.BitsAndBytesConfig "
                                                    "(did you mean bnb_4bit_quant_type?)")):
        validate_config(compose_config(["method=lora", f"+model.quantization={{{bnb}, bnb_4bit_quant_typ: nf4}}"]))
    with pytest.raises(ConfigError, match="model.quantization.load_in_4bits is not an argument"):
        validate_config(compose_config(
            ["method=lora", "+model.quantization={_target_: transformers.BitsAndBytesConfig, load_in_4bits: true}"]))
    with pytest.raises(ConfigError, match=re.escape("model.quantization='nf4' must be a mapping with a _target_")):
        validate_config(compose_config(["method=lora", "+model.quantization=nf4"]))
    with pytest.raises(ConfigError, match=re.escape("model.quantization._target_='transformers.NoSuchConfig' "
                                                    "cannot be imported")):
        validate_config(compose_config(["method=lora", "+model.quantization={_target_: transformers.NoSuchConfig}"]))
    # the shipped QLoRA file, with its settings spelt as the class names them, still validates
    validate_config(compose_config(["method=qlora", "model=smollm135"]))


def test_a_method_file_with_a_key_nothing_reads_is_refused_and_short_names_are_allowed(tmp_path):
    """The method group is untyped (each peft config has its own arguments): a key that no code and no
    interpolation reads is refused, so a misspelt rank cannot run as the default rank under the new name."""
    (tmp_path / "method").mkdir()
    (tmp_path / "method" / "lora_r32.yaml").write_text("defaults:\n  - lora\n  - _self_\nname: lora_r32\nr: 32\n")
    (tmp_path / "method" / "lora_typo.yaml").write_text("defaults:\n  - lora\n  - _self_\nname: lora_typo\nrank: 32\n")
    searchpath = f"hydra.searchpath=[file://{tmp_path}]"
    cfg = compose_config([searchpath, "method=lora_r32"])
    validate_config(cfg)
    assert cfg.method.peft.r == 32
    with pytest.raises(ConfigError, match=r"method.rank=32 \(method='lora_typo'\) is read by nothing"):
        validate_config(compose_config([searchpath, "method=lora_typo"]))


def test_each_default_is_held_once_by_the_settings_and_yaml_files_set_only_what_differs():
    """The typed groups' defaults live in slm_sweep/settings.py alone: no yaml file restates one of them, and a file
    built on other options of its group (trainer=gpu on default) restates neither a default nor what they set."""
    from omegaconf import OmegaConf

    from slm_sweep.settings import SCHEMAS, defaults

    def own_and_parents(folder, name) -> tuple[dict, list[str]]:
        raw = OmegaConf.to_container(OmegaConf.load(folder / f"{name}.yaml"))
        entries = raw.pop("defaults", [])
        assert all(isinstance(e, str) and "/" not in e and " " not in e for e in entries), (name, entries)
        return raw, [e for e in entries if e != "_self_"]

    def sets(folder, name) -> dict:
        """What an option sets: its parents' settings, a later one winning, under its own keys."""
        own, parents = own_and_parents(folder, name)
        return OmegaConf.to_container(OmegaConf.merge(*(sets(folder, p) for p in parents), own))

    assert OmegaConf.load(CONF_DIR / "trainer" / "default.yaml") == {}
    assert OmegaConf.load(CONF_DIR / "eval" / "default.yaml") == {}
    children = set()
    for group, schema in SCHEMAS.items():
        folder = CONF_DIR / group
        if not folder.is_dir():
            continue
        schema_defaults = defaults(schema)
        for path in sorted(folder.glob("*.yaml")):
            own, parents = own_and_parents(folder, path.stem)
            inherited = OmegaConf.to_container(OmegaConf.merge({}, *(sets(folder, p) for p in parents)))
            for key, value in own.items():
                if key in inherited:  # a child may restore a default its parent changed, but not repeat the parent
                    assert value != inherited[key], f"{path.name}: {group}.{key}={value!r} is what {parents} set"
                elif key in schema_defaults:
                    assert value != schema_defaults[key], f"{path.name}: {group}.{key}={value!r} is the default"
                    children |= {f"{group}/{path.name}"} if parents else set()
    assert {"trainer/gpu.yaml", "trainer/ddp_cpu.yaml", "eval/gpu.yaml"} <= children  # files with parents are checked
    composed = compose_config(["trainer=gpu", "eval=gpu"])
    assert composed.trainer.precision == "bf16-mixed" and composed.trainer.max_steps == defaults(SCHEMAS["trainer"])["max_steps"]


def _source_names() -> set[str]:
    """Every name the package's code reads: quoted strings and attribute names (settings.py left out)."""
    import re

    text = "\n".join(p.read_text() for p in (CONF_DIR.parent).rglob("*.py") if p.name != "settings.py")
    return set(re.findall(r"""["']([A-Za-z_]\w*)["']""", text)) | set(re.findall(r"\.([A-Za-z_]\w*)\b(?!\s*\()", text))


def _package_of(path) -> str:
    """Where a config file's keys land in the composed config: its group, or the root for _global_."""
    first_lines = path.read_text().splitlines()[:3]
    if any(line.strip() == "# @package _global_" for line in first_lines):
        return ""
    relative = path.relative_to(CONF_DIR)
    return ".".join(relative.parts[:-1])


def _leaves(node, prefix=""):
    """(dotted path, value) of every key, nested keys included."""
    for key, value in node.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        yield path, value
        if isinstance(value, dict):
            yield from _leaves(value, path)


def _target_accepts(target: str, key: str) -> bool:
    import inspect

    from hydra.utils import get_method

    parameters = inspect.signature(get_method(target)).parameters
    return key in parameters or any(p.kind == p.VAR_KEYWORD for p in parameters.values())


def _schema_knows(schema, parts: list[str]) -> bool:
    from dataclasses import fields, is_dataclass
    from typing import get_type_hints

    for part in parts:
        if not is_dataclass(schema):
            return True  # a free-form mapping (hub.splits, local.files)
        names = {f.name for f in fields(schema)}
        if part not in names:
            return False
        hint = get_type_hints(schema)[part]
        inner = [a for a in getattr(hint, "__args__", ()) if is_dataclass(a)]
        schema = inner[0] if inner else (hint if is_dataclass(hint) else None)
        if schema is None:
            return True
    return True


def _composed_with(path):
    """The config a file takes part in: conf/config.yaml alone, or with the file chosen in its group."""
    from hydra.errors import ConfigCompositionException

    relative = path.relative_to(CONF_DIR)
    if len(relative.parts) == 1:
        return compose_config([])
    try:
        return compose_config([f"{'/'.join(relative.parts[:-1])}={path.stem}"])
    except ConfigCompositionException as err:
        if "No match in the defaults list" not in str(err):
            raise
        return compose_config([])  # a file of no group


def _target_above(composed, parts: list[str]) -> str | None:
    """The ``_target_`` of the innermost mapping above a key in the composed config, if any."""
    from omegaconf import DictConfig, OmegaConf

    for end in range(len(parts) - 1, 0, -1):
        node = OmegaConf.select(composed, ".".join(parts[:end]))
        if isinstance(node, DictConfig) and "_target_" in node:
            return node["_target_"] if end == len(parts) - 1 else "nested"
    return None


def test_the_tuned_tables_pass_their_own_shape_check():
    """A table under slm_sweep/tuned/ holds model, dataset and method names as keys once a search has written it
    (``make paper-search``): a data file that tune.table.read_table checks, kept out of conf/ where Hydra would list it
    as a config group (``--help``) that no config composes."""
    from slm_sweep.tune.table import DEFAULT_TABLE, read_table, table_path

    tables = sorted(table_path(DEFAULT_TABLE).parent.glob("*.yaml"))
    assert table_path(DEFAULT_TABLE) in tables and not (CONF_DIR / "tuned").exists()
    for path in tables:
        assert isinstance(read_table(path), dict)


def test_every_key_under_conf_is_a_typed_setting_a_target_argument_or_read_by_the_code():
    """Walks every file under slm_sweep/conf/. A key is known when it is a field of a typed node
    (slm_sweep/settings.py), an argument of the _target_ that its mapping builds, Hydra's own (hydra.*, checked
    by Hydra against its schema when composing), a config path swept by hydra.sweeper.params, referenced by an
    interpolation, or a name that slm_sweep's code reads."""
    import re

    from omegaconf import OmegaConf

    from slm_sweep.settings import SCHEMAS

    names = _source_names()
    unknown = []
    for path in sorted(CONF_DIR.rglob("*.yaml")):
        raw = OmegaConf.to_container(OmegaConf.load(path))
        raw.pop("defaults", None)
        package = _package_of(path)
        where = path.relative_to(CONF_DIR)
        if package.split(".")[0] == "hydra":
            continue  # Hydra's own config, typed by Hydra and its plugins
        text = path.read_text()
        # a typed group's file holds _target_ mappings only where it says so (model.quantization)
        composed = _composed_with(path) if "_target_" in text or package.split(".")[0] not in SCHEMAS else None
        referenced = set(re.findall(r"\$\{\.+(\w+)\}", text))
        for key_path, value in _leaves(raw):
            full = f"{package}.{key_path}" if package else key_path
            parts = full.split(".")
            if isinstance(value, dict) and "_target_" in value:
                continue  # an entry of its own (callbacks.<name>, logger.<name>): its keys are checked below
            if parts[0] == "hydra":
                if ".sweeper.params." in full:  # a swept config path or group
                    swept = full.split(".sweeper.params.", 1)[1]
                    if OmegaConf.select(composed, swept, default="missing") == "missing" \
                            and swept not in group_options_all():
                        unknown.append(f"{where}: {full} (sweeps no config path)")
                continue
            target = _target_above(composed, parts) if composed is not None else None
            if parts[-1] == "_target_" or target == "nested":
                continue
            if target is not None:
                if not _target_accepts(target, parts[-1]):
                    unknown.append(f"{where}: {full} (not an argument of {target})")
                continue
            if parts[0] in SCHEMAS:
                if len(parts) > 1 and not _schema_knows(SCHEMAS[parts[0]], parts[1:]):
                    unknown.append(f"{where}: {full} (not in {SCHEMAS[parts[0]].__name__})")
                continue
            if parts[-1] not in names and parts[-1] not in referenced:
                unknown.append(f"{where}: {full} (read by no code)")
    assert not unknown, "keys nobody reads:\n" + "\n".join(unknown)


def group_options_all() -> set[str]:
    return {p.name for p in CONF_DIR.iterdir() if p.is_dir()}


def _config_reads() -> tuple[set[str], set[tuple[str, str]]]:
    """What the package's code reads from a config, outside settings.py and config.py (which declare and validate
    every setting): the keys of ``.get("<key>", ...)`` and ``["<key>"]``, and ``(<owner>, <name>)`` of each
    ``<owner>.<name>`` or ``<owner>_cfg.<name>`` (cfg.trainer.max_steps, trainer_cfg.max_steps). Comments and
    docstrings are not code: the files are parsed."""
    import ast

    keyed, attributes = set(), set()
    for path in CONF_DIR.parent.rglob("*.py"):
        if path.name in ("settings.py", "config.py"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get" \
                    and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
                keyed.add(node.args[0].value)
            elif isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant) \
                    and isinstance(node.slice.value, str):
                keyed.add(node.slice.value)
            elif isinstance(node, ast.Attribute):
                owner = node.value.attr if isinstance(node.value, ast.Attribute) else getattr(node.value, "id", None)
                if owner:
                    attributes.add((owner.removesuffix("_cfg"), node.attr))
    return keyed, attributes


def test_every_typed_setting_is_read_by_the_code():
    from dataclasses import fields, is_dataclass
    from typing import get_type_hints

    from slm_sweep.settings import SCHEMAS

    keyed, attributes = _config_reads()
    # the typed nodes and the dataclasses nested in them (dataset.hub, dataset.dedup, ...), each with its node's name
    schemas, unread = [(schema, group) for group, schema in SCHEMAS.items()], []
    while schemas:
        schema, node = schemas.pop()
        for f in fields(schema):
            hint = get_type_hints(schema)[f.name]
            schemas += [(a, f.name) for a in (hint, *getattr(hint, "__args__", ())) if is_dataclass(a)]
            if f.name not in keyed and (node, f.name) not in attributes:
                unread.append(f"{node}.{f.name} ({schema.__name__})")
    assert not unread, f"settings no code reads: {unread}"


def test_qlora_is_lora_on_a_4_bit_model_and_every_other_method_leaves_the_model_alone():
    qlora = compose_config(["method=qlora", "model=smollm135", "method.r=8"])
    assert qlora.model.name == "smollm135" and qlora.model.quantization.load_in_4bit is True
    assert qlora.method.name == "qlora" and qlora.method.peft.r == 8 and qlora.method.peft._target_ == "peft.LoraConfig"
    assert compose_config(["method=lora", "model=smollm135"]).model.quantization is None


@pytest.mark.parametrize("launcher", group_options("hydra/launcher"))
def test_every_launcher_composes_and_names_an_installed_launcher(launcher):
    from hydra import compose, initialize_config_dir
    from hydra.utils import get_class

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=[f"hydra/launcher={launcher}"], return_hydra_config=True)
    target = cfg.hydra.launcher._target_
    assert get_class(target).__name__.endswith("Launcher"), target


@pytest.mark.parametrize("target", ["peft.PromptTuningConfig", "peft.PrefixTuningConfig", "peft.PromptEncoderConfig"])
def test_a_prompt_learning_peft_config_is_refused_before_training(target):
    """Evaluation merges adapters into the weights; virtual tokens cannot be merged (it failed after training)."""
    from slm_sweep.methods import MethodError, peft_config

    with pytest.raises(MethodError, match=f"method.peft._target_='{target}' learns prompts"):
        peft_config({"peft": {"_target_": target, "num_virtual_tokens": 8}})
    assert peft_config({"peft": {"_target_": "peft.LoHaConfig", "r": 4}}).peft_type.value == "LOHA"


def test_the_metric_sweepers_optimise_is_the_one_claims_read_on_the_dataset(tiny_cfg):
    """conf/config.yaml and the search configs name the metric Hydra's sweepers maximise: the accuracy the report's
    claims read on the dataset (its claims_metric: lenient on OrcaMath), on the validation split in a search; the
    code names the primary metric once (scoring.PRIMARY_METRIC), and the plots derive theirs from it. A misspelt
    claims metric or optimised accuracy is refused, naming the allowed ones."""
    import yaml
    from hydra import compose, initialize_config_dir

    from slm_sweep.config import ConfigError, use_metric_modules_checked
    from slm_sweep.report import plots
    from slm_sweep.scoring import PRIMARY_METRIC, accuracy_key

    primary = accuracy_key(PRIMARY_METRIC)
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        for overrides, expected in (([], primary), (["dataset=orcamath"], "accuracy_lenient"),
                                    (["hparams_search=lr_grid"], f"val_{primary}"),
                                    (["hparams_search=lr_grid", "dataset=orcamath"], "val_accuracy_lenient"),
                                    (["hparams_search=optuna", "dataset=orcamath"], "val_accuracy_lenient")):
            assert compose(config_name="config", overrides=overrides).optimized_metric == expected, overrides
    searches = {p.stem: yaml.safe_load(p.read_text()).get("optimized_metric")
                for p in (CONF_DIR / "hparams_search").glob("*.yaml")}
    assert all(m in (None, "val_accuracy_${dataset.claims_metric}") for m in searches.values()), searches
    assert plots._MEAN == f"{primary}_mean"
    use_metric_modules_checked(tiny_cfg())
    with pytest.raises(ConfigError, match="dataset.claims_metric='lenint' is not a registered metric; one of: strict"):
        use_metric_modules_checked(tiny_cfg("dataset.claims_metric=lenint"))
    cfg = tiny_cfg("optimized_metric=val_accuracy_flexibel")
    with pytest.raises(ConfigError, match="optimized_metric='val_accuracy_flexibel' is the accuracy of no registered"):
        use_metric_modules_checked(cfg)
    # a name no result records: an Optuna search trained every trial, then failed each on its None
    with pytest.raises(ConfigError, match=r"optimized_metric='val_acc' is no metric a cell records; one of: "
                                          r"accuracy_strict, .*val_accuracy_flexible.* or n_eval, .*val_loss"):
        use_metric_modules_checked(tiny_cfg("optimized_metric=val_acc"))
    use_metric_modules_checked(tiny_cfg("optimized_metric=val_loss"))


def test_the_figures_an_optimized_metric_may_name_are_those_a_result_records():
    from slm_sweep.config import RECORDED_FIGURES
    from slm_sweep.results import EVAL_SET_FIGURES
    from slm_sweep.run import TRAINING_METRICS

    assert set(TRAINING_METRICS) | set(EVAL_SET_FIGURES) <= set(RECORDED_FIGURES)


def test_a_dataset_of_prose_answers_reads_its_claims_on_lenient_unless_its_file_names_a_metric(tmp_path):
    """A new dataset file is one file: one whose answers are prose (a model trained on them answers in prose, which
    flexible's last number misreads) gets lenient without saying so; a named metric wins; the searches' and
    sweeps' optimized metric follows, and a cell records the metric as read."""
    from omegaconf import OmegaConf

    from slm_sweep.settings import DatasetSettings

    def metric(**spec):
        return OmegaConf.merge(OmegaConf.structured(DatasetSettings), {"name": "mine", **spec}).claims_metric

    assert (metric(answer_format="prose"), metric(answer_format="number"), metric()) == (
        "lenient", "flexible", "flexible")
    assert metric(answer_format="prose", claims_metric="strict") == "strict"
    prose = compose_config(["model=tiny", "dataset=gsm8k", "dataset.answer_format=prose"])
    assert (prose.dataset.claims_metric, prose.optimized_metric) == ("lenient", "accuracy_lenient")
    recorded = OmegaConf.to_container(prose, resolve=True)
    assert recorded["dataset"]["claims_metric"] == "lenient"


def test_the_paper_evaluates_on_the_sets_training_is_deduplicated_against():
    """A set added to the paper's out-of-domain list must be one trained cells are kept apart from as well."""
    from omegaconf import OmegaConf

    from slm_sweep.settings import STUDY_OOD_SETS

    paper = OmegaConf.load(CONF_DIR / "experiment" / "paper.yaml")
    assert list(paper.eval.ood_sets) == STUDY_OOD_SETS
    datasets = paper.hydra.sweeper.params.dataset.split(",")
    assert datasets == ["gsm8k", "orcamath"]
    for dataset in datasets:  # what a paper cell is composed as (experiment's own dataset keys included)
        cfg = compose_config(["experiment=paper", f"dataset={dataset}", "method=lora"])
        assert cfg.dataset.dedup is not None and cfg.dataset.dedup.enabled, dataset
        missing = set(cfg.eval.ood_sets) - set(cfg.dataset.dedup.against)
        assert not missing, f"{dataset}: scored on {sorted(missing)} but not deduplicated against them"


def test_the_paper_scores_every_method_in_float32_on_a_gpu():
    """Cast to bf16, full fine-tuning's updates under half a bf16 step (norm weights near 1.0) would be rounded away
    while the adapters' merged change mostly survives: a bias against one side of the study's main claim."""
    import torch

    from slm_sweep.placement import resolve_dtype

    for method in ("zeroshot", "fewshot", "full", "lora", "dora"):
        cfg = compose_config(["experiment=paper", f"method={method}"])
        assert cfg.eval.cuda_graphs is True  # still eval=gpu's engine
        assert resolve_dtype(cfg.eval.dtype, torch.device("cuda"), torch.bfloat16) == torch.float32, method
    # eval=gpu alone keeps its bf16 default
    assert compose_config(["eval=gpu"]).eval.dtype in (None, "auto")
