"""Validate a composed config before anything is loaded: each error names the bad value and what is allowed.

The types of the typed nodes (model, dataset, trainer, eval, prompt, resume, preflight: slm_sweep/settings.py) are
checked by Hydra when it composes (``trainer.packing=maybe`` fails there); what is checked here is what a type
cannot say: ranges, choices, how settings go together, and the method's structure.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from slm_sweep.config_sources import CONF_DIR, group_file, group_options, where
from slm_sweep.identity import PRECISION_ALIASES, pin_outside_code, planned_world_size
from slm_sweep.settings import LR_SCHEDULES, TrainerSettings

MODEL_SOURCES = ("hub", "gguf", "tiny", "random")
PROMPT_STYLES = ("auto", "chat", "plain")
MODEL_DTYPES = ("auto", "float32", "bfloat16", "float16")
# the top-level keys besides the typed nodes: conf/config.yaml's own settings and the groups without a schema
TOP_LEVEL_KEYS = ("seed", "optimized_metric", "data_root", "tuning", "cache_dir", "method", "logger", "callbacks",
                  "hydra")
TUNING_KEYS = ("lr", "table", "on_missing", "lr_grid", "lr_candidate")  # the last two: hparams_search=lr_grid
WANDB_MODES = ("auto", "online", "offline", "disabled")
PREFLIGHT_MODES = ("skip", "refuse", "warn")
COMPILE_SCOPES = ("layers", "model")  # trainer.compile_scope (slm_sweep/train/compilation.py)
# trainer.compile_mode, torch.compile's modes (Inductor's); those that replay CUDA graphs need compile_scope=model
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
GRAPH_COMPILE_MODES = ("reduce-overhead", "max-autotune")
# trainer.compile_backend: inductor generates fused kernels; cudagraphs replays the traced step's own kernels as
# CUDA graphs without generating any (no kernel compilation, so a shorter warm-up), compile_scope=model only
COMPILE_BACKENDS = ("inductor", "cudagraphs")
# trainer.precision: Lightning's names, then its short ones (16, bf16, ...), from the table the training key maps
# them with (identity.py), so that validation and the key agree on what a spelling means
PRECISIONS = ("32-true", "bf16-mixed", "bf16-true", "16-mixed", "16-true", "64-true", "transformer-engine",
              "transformer-engine-float16", *PRECISION_ALIASES)
# trainer.strategy names (prefixes) that shard training over GPUs: Lightning refuses them on the CPU
GPU_STRATEGIES = ("fsdp", "deepspeed")


class ConfigError(ValueError):
    """A configuration value is not allowed."""


CHDIR_REFUSED = ("hydra.job.chdir=true is not supported: a cell reads and writes its relative paths (data_root, "
                 "cache_dir, dataset.data_dir, model.gguf_dir, resume.search_dir, ...) from the folder it runs in, "
                 "and each job would run in its own; leave hydra.job.chdir false (a cell's results go into its "
                 "output folder either way)")


def compose(overrides: Sequence[str] = ()) -> DictConfig:
    """The config that ``python -m slm_sweep`` composes with these overrides, for scripts and notebooks (outside
    a Hydra application)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return hydra_compose(config_name="config", overrides=list(overrides))


_NUMBER_KINDS = {
    "a positive integer": lambda v: isinstance(v, int) and v > 0,
    "a non-negative integer": lambda v: isinstance(v, int) and v >= 0,
    "a positive number": lambda v: isinstance(v, (int, float)) and v > 0,
    "a non-negative number": lambda v: isinstance(v, (int, float)) and v >= 0,
}


def _value(cfg: DictConfig, path: str) -> Any:
    return OmegaConf.select(cfg, path)


def _number(cfg: Mapping, path: str, kind: str, allow_none: bool = False) -> None:
    """Raise unless the value at ``path`` is of ``kind`` (a key of _NUMBER_KINDS), or null where allowed."""
    value = _value(cfg, path)
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not _NUMBER_KINDS[kind](value):
        raise ConfigError(f"{path}={value!r} must be {kind}" + (" or null" if allow_none else ""))


def _positive_int(cfg: Mapping, path: str, allow_none: bool = False) -> None:
    _number(cfg, path, "a positive integer", allow_none)


def _switch(cfg: Mapping, path: str, allow_none: bool = False) -> None:
    value = _value(cfg, path)
    if not isinstance(value, bool) and not (value is None and allow_none):
        raise ConfigError(f"{path}={value!r} must be true or false" + (" or null" if allow_none else ""))


def _validate_trainer(cfg: DictConfig) -> None:
    trainer = cfg.trainer
    for key in ("max_steps", "batch_size", "max_length", "log_every_n_steps"):
        _positive_int(cfg, f"trainer.{key}")
    for key in ("micro_batch_size", "micro_batch_tokens", "checkpoint_every_n_steps", "pad_to_multiple_of",
                "val_check_interval"):
        if key in trainer:
            _positive_int(cfg, f"trainer.{key}", allow_none=True)
    for key in ("warmup_steps", "throughput_warmup_steps", "num_workers"):
        if key in trainer:
            _number(cfg, f"trainer.{key}", "a non-negative integer")
    _number(cfg, "trainer.weight_decay", "a non-negative number")
    _number(cfg, "trainer.gradient_clip_val", "a non-negative number", allow_none=True)
    _one_of(str(trainer.precision), PRECISIONS, "trainer.precision")
    _one_of(trainer.get("lr_schedule", TrainerSettings.lr_schedule), LR_SCHEDULES, "trainer.lr_schedule")
    _one_of(trainer.get("compile_scope", "layers"), COMPILE_SCOPES, "trainer.compile_scope")
    mode, backend = trainer.get("compile_mode"), trainer.get("compile_backend", "inductor")
    if mode is not None:
        _one_of(mode, COMPILE_MODES, "trainer.compile_mode")
    _one_of(backend, COMPILE_BACKENDS, "trainer.compile_backend")
    if backend_mode_problem(mode, backend):
        raise ConfigError(backend_mode_problem(mode, backend))
    micro = trainer.get("micro_batch_size") or trainer.batch_size
    if trainer.batch_size % micro:
        raise ConfigError(
            f"trainer.batch_size={trainer.batch_size} must be a multiple of trainer.micro_batch_size={micro}"
        )
    devices = trainer.get("devices", 1)
    _check_devices(devices)
    if str(devices).strip() not in ("-1", "auto"):  # those count this machine's GPUs: check_trainer_choices
        _check_batch_split(trainer)
    replaying = graph_replaying_setting(mode, backend)
    if replaying:  # after the values it reads are checked one by one
        problem = (graph_scope_problem(replaying, trainer.get("compile_scope", "layers"))
                   or graph_replay_step_problem(trainer))
        if problem:
            raise ConfigError(problem)


def _check_devices(devices: Any) -> None:
    """trainer.devices as Lightning takes it: a count (-1: all), "auto", a list of device indices, or "0,1"."""
    from omegaconf import ListConfig

    def index(value: Any) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and value >= 0

    fine = ((isinstance(devices, int) and not isinstance(devices, bool) and (devices >= 1 or devices == -1))
            or devices == "auto"
            or (isinstance(devices, (list, ListConfig)) and len(devices) > 0 and all(map(index, devices)))
            or (isinstance(devices, str) and re.fullmatch(r"-1|\d+(,\s*\d+)*,?", devices.strip()) is not None))
    if not fine:
        raise ConfigError(f"trainer.devices={devices!r} must be a number of devices (1 or more; -1 for all), "
                          "auto, or a list of device indices ([0, 1])")


def _check_batch_split(trainer: Mapping) -> None:
    """trainer.batch_size is a multiple of the devices training runs on, counted as the training key counts
    them (identity.planned_world_size: -1 and auto are this machine's CUDA devices); the step sampler would
    refuse it only after the model has loaded."""
    plain = OmegaConf.to_container(trainer, resolve=True) if isinstance(trainer, DictConfig) else dict(trainer)
    count, devices = planned_world_size(plain), plain.get("devices", 1)
    if count > 1 and plain["batch_size"] % count:
        here = " here" if str(devices).strip() in ("-1", "auto") else ""
        counted = "" if str(count) == str(devices) else f" ({count} devices{here})"
        raise ConfigError(f"trainer.batch_size={plain['batch_size']} must be a multiple of trainer.devices={devices}"
                          f"{counted}: every device takes the same share of each step")


def check_trainer_choices(trainer: Mapping, devices: bool = True) -> None:
    """trainer.accelerator and trainer.strategy among Lightning's registered names; the package each setting
    needs installed (_TRAINER_LIBRARIES); no GPU-sharding strategy on trainer.accelerator=cpu; and (with
    ``devices``) what this machine must have: CUDA for gpu/cuda, another accelerator available, a GPU for a
    sharding strategy under auto, and a batch that splits over the devices -1/auto count. Imports Lightning:
    cells call it before reading data; validate_config does not. A sweep's preflight calls it without
    ``devices``: cells a launcher sends to other machines are checked there, each before it loads anything."""
    from lightning.pytorch.accelerators import AcceleratorRegistry
    from lightning.pytorch.strategies import StrategyRegistry

    accelerator, strategy = trainer.get("accelerator", "auto"), trainer.get("strategy", "auto")
    accelerators = ["auto", "gpu", *sorted(AcceleratorRegistry.available_accelerators())]
    if isinstance(accelerator, str) and accelerator not in accelerators:
        raise ConfigError(f"trainer.accelerator={accelerator!r} is not one of: {', '.join(accelerators)}")
    strategies = ["auto", *StrategyRegistry.available_strategies()]
    if isinstance(strategy, str) and strategy not in strategies:
        close = difflib.get_close_matches(strategy, strategies, n=3)
        raise ConfigError(f"trainer.strategy={strategy!r} is not a strategy Lightning knows"
                          + (f" (did you mean {', '.join(close)}?)" if close else "")
                          + f"; it knows: {', '.join(strategies)}")
    _check_process_launcher(strategy, strategies)
    _check_trainer_libraries(trainer)
    if accelerator == "cpu":
        _check_cpu_strategy(strategy, "trainer.accelerator=cpu")
        _check_cpu_devices(trainer.get("devices", 1), "trainer.accelerator=cpu")
    if not devices:
        return
    if accelerator in ("gpu", "cuda"):
        import torch

        apple = accelerator == "gpu" and torch.backends.mps.is_available()  # Lightning's "gpu" is MPS there
        if not torch.cuda.is_available() and not apple:
            raise ConfigError(f"trainer.accelerator={accelerator} but CUDA is not available here: train on a GPU "
                              "machine, or use trainer=default (which trains wherever Lightning finds)")
    elif accelerator not in ("auto", "cpu"):
        _check_accelerator_here(accelerator)
    if accelerator == "auto" and not _available_accelerators():
        _check_cpu_strategy(strategy, "trainer.accelerator=auto finds no accelerator here and")
        _check_cpu_devices(trainer.get("devices", 1), "trainer.accelerator=auto finds no accelerator here and")
    _check_batch_split(trainer)
    _check_interactive_devices(trainer)


# what a trainer setting needs installed besides Lightning and torch, which Lightning finds missing only when it
# builds the trainer, after the data and the model have loaded: (setting, whether a value needs it, module, fix)
_TRAINER_LIBRARIES = (
    ("precision", lambda value: value.startswith("transformer-engine"), "transformer_engine",
     "pip install 'transformer_engine[pytorch]' (NVIDIA GPUs), or use another trainer.precision"),
    ("strategy", lambda value: value.startswith("deepspeed"), "deepspeed",
     "pip install deepspeed, or use trainer.strategy=fsdp (trainer=fsdp)"),
    ("accelerator", lambda value: value == "tpu", "torch_xla",
     "pip install torch_xla on a TPU machine, or use trainer.accelerator=auto"),
)


def _check_trainer_libraries(trainer: Mapping) -> None:
    import importlib.util

    for key, needs, module, fix in _TRAINER_LIBRARIES:
        value = str(trainer.get(key) or "")
        if needs(value) and importlib.util.find_spec(module) is None:
            raise ConfigError(f"trainer.{key}={value} needs the {module} package, which is not installed here: "
                              f"{fix}")


# Lightning's launchers that train in processes started by multiprocessing: those send the weights back, but not
# the trainer's step count, losses and throughput, which a result records (they stay at their values before fit)
_MULTIPROCESSING_STARTS = ("spawn", "fork", "forkserver")


def _check_process_launcher(strategy: Any, strategies: list[str]) -> None:
    """A strategy trained in processes started by multiprocessing (ddp_spawn, ddp_fork, ddp_notebook): the cell
    would train to the end and then find none of its steps counted."""
    from lightning.pytorch.strategies import StrategyRegistry

    def start(name: str):
        return (StrategyRegistry[name].get("init_params") or {}).get("start_method") if name in StrategyRegistry \
            else None

    if not isinstance(strategy, str) or start(strategy) not in _MULTIPROCESSING_STARTS:
        return
    usable = [name for name in strategies if name.startswith("ddp") and start(name) not in _MULTIPROCESSING_STARTS]
    raise ConfigError(f"trainer.strategy={strategy} trains in processes started by multiprocessing "
                      f"({start(strategy)}), which return the weights but not the steps, losses and throughput a "
                      f"result records; use one that starts each device's process as a script: {', '.join(usable)} "
                      "(trainer=ddp, or trainer=ddp_cpu on the CPU)")


def _check_interactive_devices(trainer: Mapping) -> None:
    """Several devices in an interactive session (Jupyter, ``python -i``), where Lightning trains in forked
    processes (strategy auto) or refuses ddp: the same end as ``_check_process_launcher``'s, found only after the
    data and the model have loaded."""
    from lightning.pytorch.trainer.connectors import accelerator_connector

    from slm_sweep.identity import planned_world_size

    if not accelerator_connector._IS_INTERACTIVE:
        return
    count = planned_world_size(trainer)
    if count > 1:
        raise ConfigError(f"trainer.devices={trainer.get('devices')} trains in {count} processes, which Lightning "
                          "starts by forking in an interactive session (Jupyter, python -i), and those return no "
                          "steps, losses or throughput for a result: run the cell as a script (python -m slm_sweep "
                          "...), or set trainer.devices=1")


def _check_cpu_strategy(strategy: Any, why: str) -> None:
    """A strategy that shards over GPUs (FSDP, DeepSpeed), where training runs on the CPU (``why`` says so)."""
    if str(strategy).startswith(GPU_STRATEGIES):
        raise ConfigError(f"trainer.strategy={strategy} shards training over GPUs, but {why} trains on the CPU: "
                          "train it on a GPU machine, or use trainer.strategy=ddp on the CPU (trainer=ddp_cpu)")


def _check_cpu_devices(devices: Any, why: str) -> None:
    """trainer.devices as Lightning's CPU accelerator takes it, where training runs on the CPU (``why`` says so): a
    number of processes, not the -1 or device list a GPU takes, which Lightning refuses after the model loads."""
    if isinstance(devices, bool):
        fine = False
    elif isinstance(devices, int):
        fine = devices >= 1
    else:
        fine = isinstance(devices, str) and (devices.strip() == "auto"
                                             or (devices.strip().isdigit() and int(devices) >= 1))
    if not fine:
        raise ConfigError(f"trainer.devices={devices!r}: {why} trains on the CPU, which takes a number of processes "
                          "(1 or more) or auto, not -1 or a list of devices: set trainer.devices=1, or trainer=ddp_cpu "
                          "for several processes")


def _accelerator_here(name: str) -> bool:
    """Whether this machine has the accelerator Lightning registers as ``name``, as its registry says."""
    from lightning.pytorch.accelerators import AcceleratorRegistry

    return AcceleratorRegistry[name]["accelerator"].is_available()


def _available_accelerators() -> list[str]:
    """The accelerators other than the CPU that Lightning finds on this machine."""
    from lightning.pytorch.accelerators import AcceleratorRegistry

    return [name for name in sorted(AcceleratorRegistry.available_accelerators())
            if name != "cpu" and _accelerator_here(name)]


def _check_accelerator_here(accelerator: str) -> None:
    """An accelerator Lightning knows (mps, tpu, ...) that this machine has."""
    if not _accelerator_here(accelerator):
        here = ", ".join(["auto", "cpu", *_available_accelerators()])
        raise ConfigError(f"trainer.accelerator={accelerator} but Lightning finds no {accelerator} device on this "
                          f"machine; the accelerators available here: {here}")


def check_classes(cfg: DictConfig, devices: bool = True) -> None:
    """Import the cell's logger classes and, for a trained method, its callback classes and check its trainer's
    choices (check_trainer_choices); with ``devices``, also that this machine has the devices eval.device and the
    trainer ask for. All before any data or model is read: validate_config checks logger and callback entries by
    name only (it imports the callbacks' modules only to hash them: pin_outside_code), and a misspelt name should
    not cost a data and a model load first. A sweep's preflight checks the devices apart (a cell that needs CUDA is
    one to leave out there, not an error)."""
    from slm_sweep.placement import PlacementError, resolve_device
    from slm_sweep.tracking import logger_class, logger_entries
    from slm_sweep.train.fit import callback_classes

    for path, entry in logger_entries(cfg.logger).items():
        logger_class(path, entry)
    if devices:
        try:
            resolve_device(cfg.eval.get("device"))  # eval.device=cuda on a machine without CUDA
        except PlacementError as err:
            raise ConfigError(str(err)) from None
    if cfg.method.train:
        callback_classes(cfg.get("callbacks"))
        check_trainer_choices(cfg.trainer, devices=devices)


def backend_mode_problem(mode: str | None, backend: str) -> str | None:
    """Why torch.compile's ``mode`` cannot go with ``backend``, or None: the modes are Inductor's."""
    if mode is None or backend == "inductor":
        return None
    return (f"trainer.compile_mode={mode} is a mode of the inductor backend; trainer.compile_backend={backend} "
            "takes none (trainer.compile_mode=null)")


def graph_replaying_setting(mode: str | None, backend: str | None) -> str | None:
    """The compile setting under which the training step is replayed as CUDA graphs (as the user wrote it, for
    messages), or None: the cudagraphs backend, or an Inductor mode that records graphs."""
    if backend == "cudagraphs":
        return "trainer.compile_backend=cudagraphs"
    if mode in GRAPH_COMPILE_MODES:
        return f"trainer.compile_mode={mode}"
    return None


def graph_scope_problem(replaying: str | None, scope: str) -> str | None:
    """Why the graph-replaying setting ``replaying`` (``graph_replaying_setting``) cannot compile at ``scope``, or
    None: with the layers scope each layer's output feeds the next call of the same graph, whose replay would
    overwrite it."""
    if not replaying or scope == "model":
        return None
    return (f"{replaying} replays CUDA graphs, which needs trainer.compile_scope=model "
            f"(trainer.compile_scope={scope}: each layer's replay would overwrite the output the next layer reads)")


def graph_replay_step_problem(trainer: Mapping[str, Any]) -> str | None:
    """Why a step of this trainer config cannot replay CUDA graphs, or None. A step must be one micro-batch: the
    next micro-batch's replay would overwrite the gradients the last one's backward graph wrote. And one device:
    a replay's buffers under a distributed strategy's gradient hooks (Dynamo splits a DDP model's graph at its
    buckets) have not been checked, and a wrong gradient there would not announce itself."""
    replaying = graph_replaying_setting(trainer.get("compile_mode"), trainer.get("compile_backend"))
    micro, tokens = trainer.get("micro_batch_size"), trainer.get("micro_batch_tokens")
    if (micro is not None and micro != trainer["batch_size"]) or tokens:
        return (f"{replaying} replays CUDA graphs, which needs a step of one "
                f"micro-batch: trainer.micro_batch_size null or trainer.batch_size ({trainer['batch_size']}), and "
                f"trainer.micro_batch_tokens null (they are {micro} and {tokens})")
    if trainer.get("compile_backend") == "cudagraphs":
        lengths, longest = static_padded_lengths(trainer), _longest_micro_batch(trainer)
        if lengths is None or lengths > MAX_STATIC_LENGTHS:
            return (f"{replaying} traces every micro-batch shape on its own (torch's cudagraphs backend fails on "
                    f"a second shape when traced with dynamic ones, pytorch#131009), so trainer.pad_to_multiple_of "
                    f"must leave at most {MAX_STATIC_LENGTHS} padded lengths up to the longest micro-batch, "
                    f"{longest} tokens (it is {trainer.get('pad_to_multiple_of')}"
                    + (f": {lengths} lengths" if lengths else "")
                    + f"): set trainer.pad_to_multiple_of={longest} for one")
    devices, strategy = trainer.get("devices", 1), str(trainer.get("strategy", "auto"))
    if not _one_device(devices) or strategy not in ("auto", "single_device"):
        return (f"{replaying} replays CUDA graphs, which is checked on one device only (trainer.devices={devices}, "
                f"trainer.strategy={strategy}): set trainer.devices=1 trainer.strategy=auto, or train without "
                "them (trainer.compile_mode=null, trainer.compile_backend=inductor)")
    return None


# the cudagraphs backend traces each shape anew (tens of seconds each on a GPU machine's host)
MAX_STATIC_LENGTHS = 8


def _longest_micro_batch(trainer: Mapping[str, Any]) -> int:
    """The most tokens one micro-batch row can hold: ``max_length``, or with packing the whole step's."""
    max_length = int(trainer.get("max_length") or 512)
    return max_length * int(trainer["batch_size"]) if trainer.get("packing") else max_length


def static_padded_lengths(trainer: Mapping[str, Any]) -> int | None:
    """How many padded lengths a micro-batch can take under ``trainer.pad_to_multiple_of`` (None: unbounded)."""
    pad = trainer.get("pad_to_multiple_of")
    if not isinstance(pad, int) or isinstance(pad, bool) or pad < 1:
        return None
    return -(-_longest_micro_batch(trainer) // pad)


def static_shape_count(trainer: Mapping[str, Any]) -> int:
    """The micro-batch shapes a step can take when each is traced on its own: every padded length, with a full
    batch of rows and with the smaller last step of an epoch (a packed micro-batch is one row)."""
    return (static_padded_lengths(trainer) or 1) * (1 if trainer.get("packing") else 2)


def _one_device(devices: Any) -> bool:
    """trainer.devices names one device: 1, "1", or a list of one index ("auto" and -1 may be several)."""
    from omegaconf import ListConfig

    if isinstance(devices, (list, ListConfig)):
        return len(devices) == 1
    if isinstance(devices, str):
        return devices.strip() == "1" or (devices.strip().rstrip(",").isdigit() and devices.strip().endswith(","))
    return devices == 1 and not isinstance(devices, bool)


def _one_of(value: Any, allowed, path: str) -> None:
    if value not in allowed:
        raise ConfigError(f"{path}={value!r} is not one of: {', '.join(map(str, allowed))}")


def _validate_placement(cfg: DictConfig) -> None:
    from slm_sweep.placement import PlacementError, check_device_setting, check_dtype_setting

    try:
        check_device_setting(cfg.eval.get("device"))
        check_dtype_setting(cfg.eval.get("dtype"))
    except PlacementError as err:
        raise ConfigError(str(err)) from None
    _one_of(cfg.eval.get("generation_config", "neutral"), ("neutral", "model"), "eval.generation_config")


def _validate_prompt_format(cfg: DictConfig) -> None:
    """method.prompt_format and method.instruction (slm_sweep/data/prompts.py); a trained method is scored in
    the format it was trained in."""
    from slm_sweep.data.prompts import PROMPT_FORMATS

    method = cfg.method
    fmt = method.get("prompt_format")
    if fmt is not None:
        _one_of(fmt, PROMPT_FORMATS, "method.prompt_format")
        if method.get("train") and fmt != "as_trained":
            raise ConfigError(f"method.prompt_format={fmt!r} cannot be used with method={method.name!r}, which is "
                              "trained: a trained method is scored as it is trained (prompt.style), as_trained")
    instruction = method.get("instruction")
    if instruction is not None and not (isinstance(instruction, str) and instruction.strip()):
        raise ConfigError(f"method.instruction={instruction!r} must be a non-empty string or null")
    if method.get("train"):
        for key, unset in (("instruction", None), ("num_fewshot", 0)):
            if method.get(key) not in (unset, None):
                raise ConfigError(
                    f"method.{key}={method.get(key)!r} cannot be used with method={method.name!r}, which is "
                    f"trained without it: a trained method is scored as it is trained; leave method.{key} unset "
                    "(an instruction or shots belong to the zero-shot and few-shot methods)")


def instantiate_checked(path: str, spec: Any, base: type, naming: str, example: str, not_a: str,
                        error: type[Exception], named_only: bool = False):
    """``spec`` (a mapping with ``_target_``) built by ``hydra.utils.instantiate`` and checked to be a ``base``;
    each failure raises ``error`` naming ``path`` and what is allowed. ``named_only``: a setting the class does
    not name is refused even where it takes ``**kwargs`` (transformers' quantization configs keep an unknown
    keyword as an unused attribute, so ``bnb_4bit_quant_typ: nf4`` would load fp4 without a word)."""
    from hydra.errors import InstantiationException
    from hydra.utils import get_class, instantiate

    target = spec.get("_target_") if isinstance(spec, Mapping) else None
    if not target:
        raise error(f"{path}={spec!r} must be a mapping with a _target_ naming {naming}, e.g. {example}")
    if named_only:
        try:
            cls = get_class(target)
        except Exception as err:  # noqa: BLE001 - any import problem is the same mistake in the config
            raise error(f"{path}._target_={target!r} cannot be imported ({err}); it must name {naming}, e.g. "
                        f"{example}") from None
        _check_arguments(path, spec, cls, error, var_keyword_ok=False)
    try:
        built = instantiate(spec, _convert_="all")
    except InstantiationException as err:
        raise error(f"{path} (_target_: {target}) cannot be built: {err}{_argument_hint(target, str(err))}") from None
    if not isinstance(built, base):
        raise error(f"{path}._target_={target!r} made a {type(built).__name__}, not {not_a}")
    return built


def _argument_hint(target: str, message: str) -> str:
    """For an argument the class does not take: the one it may have meant, and the ones it takes."""
    import inspect

    from hydra.utils import get_class

    bad = re.search(r"unexpected keyword argument '([^']+)'", message)
    if not bad:
        return ""
    try:
        taken = [name for name in inspect.signature(get_class(target)).parameters if name not in ("self", "kwargs")]
    except (ImportError, ValueError, TypeError):
        return ""
    close = difflib.get_close_matches(bad.group(1), taken, n=1)
    return (f" ({f'did you mean {close[0]}? ' if close else ''}{target.rsplit('.', 1)[-1]} takes: "
            f"{', '.join(taken)})")


def target_class(path: str, entry: Any, kind: str, group: str, bases: tuple[type, ...]) -> type:
    """The class that an entry's ``_target_`` names, imported and checked to be one of ``bases``; ConfigError
    naming the entry and the files of conf/<group>/ otherwise. Imports the class: cells call it, not validation."""
    from hydra.utils import get_class

    options = f"the {kind}s in {where(group)} are: {', '.join(group_options(group))}"
    target = _target(path, entry, kind, options)
    try:
        cls = get_class(target)
    except Exception as err:  # noqa: BLE001 - any import problem is the same mistake in the config
        raise ConfigError(f"{path}._target_={target!r} cannot be imported ({err}); {options}") from None
    if not issubclass(cls, bases):
        names = " or ".join(f"{b.__module__}.{b.__qualname__}" for b in bases)
        raise ConfigError(f"{path}._target_={target!r} is not a {kind} ({names}); {options}")
    _check_arguments(path, entry, cls)
    return cls


def _check_arguments(path: str, entry: Mapping, cls: type, error: type[Exception] = ConfigError,
                     var_keyword_ok: bool = True) -> None:
    """The entry's settings are arguments of the class (``+logger.projct=x`` would fail only when the cell builds
    its loggers, after loading data and model); any setting goes to a class taking ``**kwargs`` unless
    ``var_keyword_ok`` is false."""
    import inspect

    settings = {key: value for key, value in entry.items() if not str(key).startswith("_")}
    try:
        parameters = inspect.signature(cls).parameters
    except (TypeError, ValueError):  # a class without a readable signature: instantiation will tell
        return
    if var_keyword_ok and any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return
    named = [name for name, p in parameters.items()
             if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)]
    unknown = sorted(set(settings) - set(named))
    if unknown:
        close = difflib.get_close_matches(unknown[0], named, n=1)
        raise error(f"{path}.{unknown[0]} is not an argument of {cls.__module__}.{cls.__qualname__}"
                    f"{f' (did you mean {close[0]}?)' if close else ''}; its arguments are: {', '.join(named)}")


def _target(path: str, entry: Any, kind: str, options: str) -> str:
    """The entry's ``_target_``, checked without importing it (target_class, which cells call, imports it): a
    string whose top-level package is installed."""
    import importlib.util

    target = entry.get("_target_") if isinstance(entry, Mapping) else None
    if not isinstance(target, str) or "." not in target:
        raise ConfigError(f"{path}={entry!r} must be a mapping with a _target_ (a {kind} class, as "
                          f"package.module.Class) or null; {options}")
    package = target.split(".")[0]
    if importlib.util.find_spec(package) is None:
        raise ConfigError(f"{path}._target_={target!r} cannot be imported (no package {package!r}); {options}")
    return target


def validate_logger(cfg: DictConfig) -> None:
    """Each logger entry (conf/logger/) names a class of an installed package; W&B entries a known mode. The class
    itself is imported and checked when the cell builds its loggers (slm_sweep.tracking)."""
    from slm_sweep.tracking import MAX_TAG_LENGTH, WANDB_TARGET, logger_entries

    options = f"the loggers in {where('logger')} are: {', '.join(group_options('logger'))}"
    try:
        entries = logger_entries(cfg.logger)
    except ValueError as err:
        raise ConfigError(f"{err}; {options}") from None
    for path, entry in entries.items():
        is_wandb = _target(path, entry, "logger", options) == WANDB_TARGET
        for key in entry:
            if is_wandb:
                refuse_written_credential(entry, str(key), f"{path}.{key}", "leave it unset and export "
                                          "WANDB_API_KEY, or run `wandb login` once", "WANDB_API_KEY")
            else:
                refuse_written_credential(entry, str(key), f"{path}.{key}", "set it in the environment instead",
                                          str(key).upper())
        if is_wandb:
            _one_of(entry.get("mode", "auto"), WANDB_MODES, f"{path}.mode")
            timeout = entry.get("init_timeout", 90)
            if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
                raise ConfigError(f"{path}.init_timeout={timeout!r} must be a positive number of seconds")
            if "log_predictions" in entry and not isinstance(entry["log_predictions"], bool):
                raise ConfigError(f"{path}.log_predictions={entry['log_predictions']!r} must be true or false")
            tags = entry.get("tags")
            for tag in [tags] if isinstance(tags, (str, int, float)) else (tags or []):
                if isinstance(tag, bool) or not isinstance(tag, (str, int, float)) \
                        or not 0 < len(str(tag)) <= MAX_TAG_LENGTH:
                    raise ConfigError(f"{path}.tags has {tag!r}: a W&B tag is a non-empty string of at most "
                                      f"{MAX_TAG_LENGTH} characters (logger.tags=[paper,v2])")


# a setting that only names the environment variable holding the credential (``${oc.env:WANDB_API_KEY}``, with
# a null default at most): the config, Hydra's log lines and a launcher's job files hold the name, never the value
_FROM_ENVIRONMENT = re.compile(r"\$\{oc\.env:\s*[A-Za-z_][A-Za-z0-9_]*\s*(?:,\s*null\s*)?\}")


def refuse_written_credential(node: Any, key: str, path: str, fix: str, variable: str | None = None) -> None:
    """ConfigError when ``node[key]`` has a credential-like name (results.SECRET_KEY) and holds a value written into
    the config rather than read from the environment: Hydra prints a multirun's overrides, and the submitit
    launchers (``hydra/launcher=local``, ``slurm``) pickle every job's config beside the results, readable by the
    others of a shared file system. The message names the setting, never its value, and says how to fix it:
    ``fix``, or (with ``variable``) ``${oc.env:<variable>}``."""
    from slm_sweep.results import SECRET_KEY

    if not SECRET_KEY.search(key):
        return
    raw = OmegaConf.to_container(node, resolve=False).get(key) if isinstance(node, DictConfig) else node.get(key)
    if raw is None or raw == "" or (isinstance(raw, str) and _FROM_ENVIRONMENT.fullmatch(raw.strip())):
        return
    interpolation = (f", or read it from the environment: {key}: ${{oc.env:{variable}}} in its yaml file, or "
                     f"+{path}='${{oc.env:{variable}}}' on the command line" if variable else "")
    raise ConfigError(f"{path} holds a credential written into the config (Hydra prints the overrides of a sweep "
                      "and its launchers save each job's config to disk): a credential comes from the environment; "
                      f"{fix}{interpolation}")


def validate_job_environment(env_set: Mapping[str, Any] | None) -> None:
    """``hydra.job.env_set`` sets no credential-like variable to a value written into the config (see
    refuse_written_credential): such a variable is exported in the shell the run starts in."""
    for key in env_set or {}:
        refuse_written_credential(env_set, str(key), f"hydra.job.env_set.{key}",
                                  f"export {key} in the shell that starts the run instead")


def _validate_callbacks(cfg: DictConfig) -> None:
    """Each entry of ``callbacks`` (conf/callbacks/) is null or names a class of an installed package; training
    imports and checks it (slm_sweep.train.fit.configured_callbacks)."""
    options = f"the callbacks in {where('callbacks')} are: {', '.join(group_options('callbacks'))}"
    for name, entry in (cfg.get("callbacks") or {}).items():
        if entry is not None:
            _target(f"callbacks.{name}", entry, "callback", options)


def validate_preflight(cfg: DictConfig) -> None:
    """preflight.on_missing, which the sweep reads before its first cell (and every cell checks again)."""
    if cfg.get("preflight") is not None:
        _one_of(cfg.preflight.get("on_missing"), PREFLIGHT_MODES, "preflight.on_missing")


def _validate_dataset_spec(dataset: DictConfig) -> None:
    """The dataset as slm_sweep.data reads it (answer format, split layout, dedup settings), before any file is read."""
    from slm_sweep.data.errors import DataError
    from slm_sweep.data.specs import resolved_spec

    try:
        resolved_spec(dataset)
    except DataError as err:
        raise ConfigError(str(err)) from None


def _validate_other_sets(cfg: DictConfig, dataset: DictConfig, known_sets: list[str]) -> None:
    """The dataset files of the out-of-domain sets and of the sets training is deduplicated against, checked as
    the cell's own is: the preflight sees only that their files are there, and deduplication would skip a set
    whose file it cannot read as one it cannot find."""
    dedup = dataset.get("dedup") or {}
    against = list(dedup.get("against") or []) if dedup.get("enabled", True) else []
    for setting, names in (("eval.ood_sets", cfg.eval.get("ood_sets") or []), ("dataset.dedup.against", against)):
        for name in names:
            if name in known_sets and name != dataset.get("name") and (problem := _dataset_file_problem(name)):
                raise ConfigError(f"{setting} has {name!r}, whose dataset file does not read: {problem}")


# a sweep's preflight validates every cell, each naming the same few sets: each is read once while no dataset file
# changes (a file may build on others: its defaults list)
_DATASET_FILE_PROBLEMS: dict[tuple, str | None] = {}


def _dataset_file_problem(name: str) -> str | None:
    """Why the dataset file ``name`` does not read as a dataset, None when it does."""
    from slm_sweep.data.errors import DataError
    from slm_sweep.data.specs import dataset_spec, resolved_spec

    files = [group_file("dataset", option) for option in group_options("dataset")]
    key = (name, *((str(path), path.stat().st_mtime_ns) for path in files if path is not None))
    if key not in _DATASET_FILE_PROBLEMS:
        try:
            resolved_spec(dataset_spec(name))
            _DATASET_FILE_PROBLEMS[key] = None
        except DataError as err:
            _DATASET_FILE_PROBLEMS[key] = str(err)
    return _DATASET_FILE_PROBLEMS[key]


def use_metric_modules_checked(cfg: DictConfig) -> None:
    """Score with the metrics folder's modules and ``eval.metric_modules`` (imported, their metrics registered)
    after running each metric once on a made-up answer: a module that cannot be imported, or a metric that raises
    or returns the wrong type, fails here, naming it, instead of after a cell has trained."""
    from slm_sweep.scoring import (
        check_metrics,
        folder_metric_modules,
        metric_module_names,
        use_metric_modules,
    )

    configured = list(cfg.eval.get("metric_modules") or [])
    try:
        use_metric_modules(metric_module_names(configured))
        check_metrics()
    except Exception as err:  # noqa: BLE001 - a module's own fault at import (SyntaxError, NameError, ...) too
        folder = folder_metric_modules()
        where = " and ".join(part for part in (f"eval.metric_modules={configured}" if configured else "",
                                               f"the metrics folder's {folder}" if folder else "") if part)
        raise ConfigError(f"{where}: {type(err).__name__}: {err}") from err
    _check_metric_names(cfg)


# What a result's metrics record besides the accuracies (run.py; docs/results.md): numbers a sweeper could maximise
RECORDED_FIGURES = ("n_eval", "val_n_eval", "truncated_fraction", "eval_time_s", "eval_new_tokens", "eval_tokens_per_s",
                    "eval_oom_halvings", "eval_time_all_sets_s", "peak_memory_mb", "trainable_params", "total_params",
                    "train_time_s", "final_validation_s", "train_loss", "val_loss", "train_loss_tail_mean",
                    "train_steps", "train_tokens", "train_tokens_per_s", "mfu", "step_time_s",
                    "train_padding_fraction", "train_oom_halvings", "train_grad_norm_median", "train_clipped_fraction",
                    "train_examples", "train_too_long_fraction", "throughput_warmup_steps", "train_peak_memory_mb")


def _check_metric_names(cfg: DictConfig) -> None:
    """``dataset.claims_metric`` names a registered metric, and ``optimized_metric`` a key that a result's metrics
    record: the accuracy of a registered metric or another recorded figure (a sweeper maximising a key no result has
    would train every trial and then fail it)."""
    from slm_sweep.scoring import METRICS, accuracy_key

    registered = ", ".join(METRICS)
    claims = cfg.dataset.get("claims_metric")
    if claims not in METRICS:
        raise ConfigError(f"dataset.claims_metric={claims!r} is not a registered metric; one of: {registered} "
                          "(or one that a module of slm_sweep/metrics/ or eval.metric_modules registers)")
    optimized = cfg.get("optimized_metric")
    if optimized is None:
        return
    accuracies = [f"{prefix}{accuracy_key(name)}" for prefix in ("", "val_") for name in METRICS]
    if str(optimized) in (*accuracies, *RECORDED_FIGURES):
        return
    if str(optimized).removeprefix("val_").startswith("accuracy_"):
        raise ConfigError(f"optimized_metric={optimized!r} is the accuracy of no registered metric; one of: "
                          f"{', '.join(accuracies)}")
    close = difflib.get_close_matches(str(optimized), [*accuracies, *RECORDED_FIGURES], n=1, cutoff=0.6)
    raise ConfigError(f"optimized_metric={optimized!r} is no metric a cell records"
                      f"{f' (did you mean {close[0]}?)' if close else ''}; one of: {', '.join(accuracies)} (the "
                      f"accuracies, val_ on the validation split) or {', '.join(RECORDED_FIGURES)}")


def validate_config(cfg: DictConfig) -> None:
    """Raise ConfigError on the first value that cannot work; returns None for a usable config."""
    for key in ("model", "method", "dataset", "trainer", "eval", "logger"):
        if key not in cfg or cfg[key] is None:
            raise ConfigError(f"the config has no {key!r} group; choose one of: {', '.join(group_options(key))}")
    pin_outside_code(cfg)  # before any check imports the callbacks' or optimizer's classes: what runs is what is keyed
    _validate_known_keys(cfg)
    _number(cfg, "seed", "a non-negative integer")

    _one_of(cfg.model.get("source"), MODEL_SOURCES, "model.source")
    _one_of(cfg.model.get("dtype") or "auto", MODEL_DTYPES, "model.dtype")
    if cfg.model.source in ("hub", "random") and not cfg.model.get("id"):
        raise ConfigError(f"model={cfg.model.get('name')!r} has source {cfg.model.source} but no model.id")
    if cfg.model.source == "gguf":
        _check_gguf_keys(cfg.model)
    if cfg.model.get("quantization") is not None:
        from slm_sweep.models import ModelLoadError, quantization_config

        try:
            quantization_config(cfg.model)  # built here, so that a misspelt setting fails before anything loads
        except ModelLoadError as err:
            raise ConfigError(str(err)) from None

    method = cfg.method
    _validate_method_shape(cfg)
    _validate_method_keys(cfg)
    from slm_sweep.tune.cell_rate import validate as validate_tuning

    validate_tuning(cfg)  # before method.lr is read: a grid search's candidate sets it
    _validate_method(cfg)
    _validate_prompt_format(cfg)

    if method.train:
        _validate_trainer(cfg)

    dataset = cfg.dataset
    for key in ("train_limit", "test_limit", "val_size", "test_size"):
        if key in dataset:
            _positive_int(cfg, f"dataset.{key}", allow_none=True)
    if dataset.get("data_dir") is not None and not Path(str(dataset.data_dir)).expanduser().is_dir():
        raise ConfigError(f"dataset.data_dir={str(dataset.data_dir)!r} is not an existing directory")
    if cfg.get("data_root") is not None and not Path(str(cfg.data_root)).expanduser().is_dir():
        raise ConfigError(f"data_root={str(cfg.data_root)!r} is not an existing directory")
    if dataset.get("eval_only") and (method.train or method.get("num_fewshot")):
        raise ConfigError(
            f"dataset={dataset.name!r} is an evaluation-only set (no train split) and cannot be used with "
            f"method={method.name!r}; use it with method=zeroshot or list it in eval.ood_sets"
        )
    _validate_dataset_spec(dataset)

    _one_of(cfg.eval.get("split", "test"), ("test", "val"), "eval.split")
    if cfg.eval.get("split") == "val" and dataset.get("eval_only"):
        from slm_sweep.data.specs import training_datasets

        raise ConfigError(f"eval.split='val' scores a validation split carved from the train split, which "
                          f"dataset={dataset.name!r} does not have (it is an evaluation-only set): search on a "
                          f"dataset with a train split: {', '.join(training_datasets())}")
    if cfg.eval.get("split") == "val" and not dataset.get("val_size"):
        raise ConfigError("eval.split='val' needs a validation split: set dataset.val_size to a positive integer")
    _one_of(cfg.eval.get("engine", "static"), ("static", "cache", "plain"), "eval.engine")
    _positive_int(cfg, "eval.prefill_batch_size", allow_none=True)
    _positive_int(cfg, "eval.max_new_tokens")
    _positive_int(cfg, "eval.max_batch_size")
    _positive_int(cfg, "eval.token_budget")
    known_sets = group_options("dataset")
    for name in cfg.eval.get("ood_sets") or []:
        _one_of(name, known_sets, "eval.ood_sets[]")
        if name == dataset.get("name"):
            raise ConfigError(f"eval.ood_sets has {name!r}, the dataset the cell trains on and is tested on: its test "
                              "split is scored as the in-domain set already; leave it out of eval.ood_sets")
    _positive_int(cfg, "eval.ood_limit", allow_none=True)
    _validate_other_sets(cfg, dataset, known_sets)
    _validate_metric_modules(cfg)
    _validate_placement(cfg)

    _one_of(cfg.prompt.style, PROMPT_STYLES, "prompt.style")
    _one_of(cfg.resume.enabled, ("auto", True, False), "resume.enabled")
    validate_preflight(cfg)
    validate_logger(cfg)
    if method.get("train"):
        _validate_callbacks(cfg)


def _check_gguf_keys(model: DictConfig) -> None:
    """A GGUF model names its file, and where it is: a Python package that ships it or a folder."""
    name = model.get("name")
    if not model.get("gguf_file"):
        raise ConfigError(f"model={name!r} has source gguf but no model.gguf_file (the GGUF file's name, "
                          "e.g. SmolLM2-135M-Instruct.Q4_1.gguf)")
    if not model.get("gguf_package") and not model.get("gguf_dir"):
        raise ConfigError(f"model={name!r} has source gguf but neither model.gguf_package (the Python package that "
                          f"ships {model.gguf_file}) nor model.gguf_dir (a folder holding it)")


def settings_elsewhere(group: str, key: str) -> list[str]:
    """The settings named ``key`` outside ``group`` (a settings group, ``tuning``, or "" for the top level):
    ``settings_elsewhere("eval", "test_limit")`` is ["dataset.test_limit"]."""
    from slm_sweep.settings import SCHEMAS, field_names

    # the method's settings first: +trainer.lr meant method.lr (tuning.lr only says whether the rate is tuned)
    groups = {"method": list(METHOD_KEYS), **{name: field_names(schema) for name, schema in SCHEMAS.items()},
              "tuning": list(TUNING_KEYS)}
    found = [f"{name}.{key}" for name, keys in groups.items() if name != group and key in keys]
    if group and key in (*TOP_LEVEL_KEYS, *SCHEMAS):  # eval.seed: seed; dataset.logger: logger
        found.append(key)
    return found


def _unknown_setting(path: str, key: str, known: Sequence[str], where_known: str) -> ConfigError:
    """The error for ``{path}{key}``, a key no code reads; ``path`` is its node with a trailing dot ("" at the top)."""
    # a setting of another group (eval.test_limit: dataset.test_limit) is likelier meant than a near spelling
    elsewhere = settings_elsewhere(path.rstrip("."), str(key)) if path.count(".") <= 1 else []
    close = elsewhere or [f"{path}{k}" for k in difflib.get_close_matches(str(key), list(known), n=1)]
    hint = f"did you mean {' or '.join(close)}? " if close else ""
    return ConfigError(f"{path}{key} is not a setting: no code reads it; {hint}the {path.rstrip('.') or 'top-level'} "
                       f"settings are {', '.join(known)} ({where_known})")


def check_command_line_keys(overrides: Sequence[str]) -> None:
    """Refuse a plain ``node.key=value`` whose key is not a setting of a typed node (or of ``tuning``) before Hydra
    composes: Hydra's own refusal names the key but not the settings there are, nor the one likelier meant
    (``eval.test_limit=3``: ``dataset.test_limit``). Additions (``+key=value``) are checked once composed; method
    keys are not checked here, since a method file may declare keys of its own."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import OverrideType

    from slm_sweep.settings import SCHEMAS, field_names, nested_schema

    parser = OverridesParser.create()
    for argument in overrides:
        if argument.startswith("-") or "=" not in argument:
            continue  # Hydra's flags (-m, --config-dir) and their values
        try:
            (override,) = parser.parse_overrides([argument])
        except Exception:  # noqa: BLE001 - a malformed override is Hydra's to report, with its own message
            continue
        if override.type != OverrideType.CHANGE or override.package is not None:
            continue
        node, *keys = override.key_or_group.split(".")
        if not keys:
            continue
        if node == "tuning":
            if keys[0] not in TUNING_KEYS:
                raise _unknown_setting("tuning.", keys[0], TUNING_KEYS,
                                       "conf/config.yaml and conf/hparams_search/lr_grid.yaml")
            continue
        schema = SCHEMAS.get(node)
        path = f"{node}."
        for key in keys:
            if schema is None:
                break
            if key not in field_names(schema):
                raise _unknown_setting(path, key, field_names(schema), f"{schema.__name__} in slm_sweep/settings.py")
            schema, path = nested_schema(schema, key), f"{path}{key}."


def _validate_known_keys(cfg: DictConfig) -> None:
    """Every key of a typed node is a setting of its schema (slm_sweep/settings.py). Hydra refuses other keys when
    it composes, except those added with ``+key=value``, which would otherwise be silently unread."""
    from slm_sweep.settings import SCHEMAS, field_names, nested_schema

    def check(node: Any, schema: type, path: str) -> None:
        known = field_names(schema)
        for key in node:
            if key not in known:
                raise _unknown_setting(path, key, known, f"{schema.__name__} in slm_sweep/settings.py")
            inner = nested_schema(schema, key)
            if inner is not None and isinstance(node[key], DictConfig):
                check(node[key], inner, f"{path}{key}.")

    for node, schema in SCHEMAS.items():
        if cfg.get(node) is not None:
            check(cfg[node], schema, f"{node}.")
    top = [*SCHEMAS, *TOP_LEVEL_KEYS]
    for key in cfg:
        if key not in top:
            raise _unknown_setting("", key, top, "conf/config.yaml and the config groups")
    tuning = cfg.get("tuning")
    if isinstance(tuning, DictConfig):
        for key in tuning:
            if key not in TUNING_KEYS:
                raise _unknown_setting("tuning.", key, list(TUNING_KEYS), "conf/config.yaml and conf/hparams_search/lr_grid.yaml")


def _validate_method_shape(cfg: DictConfig) -> None:
    """method.name names the cell; method.train says whether anything is trained. The rest follows from the
    method's structure, never from its name (slm_sweep/methods.py)."""
    name = cfg.method.get("name")
    if not isinstance(name, str) or not name:
        raise ConfigError(f"method.name={name!r} must be a non-empty string; the methods in conf/method/ are: "
                          f"{', '.join(group_options('method'))}")
    _switch(cfg, "method.train")


# The settings of a method file the code reads (slm_sweep/methods.py, run.py, train/fit.py, data/prompts.py). Any other
# top-level key is a short name (r, alpha, dropout, target_modules) that an interpolation reads, or a mistake.
METHOD_KEYS = ("name", "train", "lr", "peft", "optimizer", "lr_scale", "num_fewshot", "shot_seed", "prompt_format",
               "instruction")
_METHOD_REFERENCE = re.compile(r"\$\{(?:\.{1,2}|method\.)([A-Za-z_]\w*)")


def _validate_method_keys(cfg: DictConfig) -> None:
    """A method key that nothing reads (``rank: 32`` for ``r``, ``+method.learning_rate=1e-3``) would leave the
    cell running with the defaults under a name that says otherwise: refused."""
    method = OmegaConf.to_container(cfg.method, resolve=False)
    referenced = set(_METHOD_REFERENCE.findall(" ".join(_strings(method))))
    referenced |= {m.group(1) for text in _strings(OmegaConf.to_container(cfg, resolve=False))
                   for m in re.finditer(r"\$\{method\.([A-Za-z_]\w*)", text)}
    unread = [key for key in method if key not in METHOD_KEYS and key not in referenced]
    if unread:
        key = unread[0]
        close = difflib.get_close_matches(key, [*METHOD_KEYS, *(k for k in method if k != key)], n=1, cutoff=0.75)
        hint = f" (did you mean {close[0]}?)" if close else ""
        peft_name = {"alpha": "lora_alpha", "dropout": "lora_dropout"}.get(key, key)
        if isinstance(method.get("peft"), Mapping) and peft_name in method["peft"]:
            hint += (f"; method.peft.{peft_name} is set directly, so the short name {key} is no longer read: in a "
                     f"file that inherits another method, set {key}: ... at its top level instead of under peft")
        raise ConfigError(
            f"method.{key}={method[key]!r} (method={cfg.method.get('name')!r}) is read by nothing{hint}: a method's "
            f"settings are {', '.join(METHOD_KEYS)}; any other key must be a short name that the method's peft "
            "block interpolates (r: 16 beside peft: {r: ${..r}}, conf/method/lora.yaml)")


NAMED_GROUPS = ("model", "method", "dataset")  # recorded, stored and reported by their config's name


def check_group_names(cfg: DictConfig, choices: Mapping[str, Any], overrides: Sequence[str] = ()) -> None:
    """The model, method and dataset files chosen (``model=<choice>``, Hydra's runtime choices) must each name
    themselves, and no ``<group>.name=`` override may rename them: a cell is recorded, stored and reported by these
    names, so a model or dataset named after another (``model.name=qwen05`` with the tiny model) would be counted
    as that other one. ``overrides`` are the command line's, to tell a renaming override from a file's own name."""
    for group in NAMED_GROUPS:
        choice = choices.get(group)
        name = (cfg.get(group) or {}).get("name")
        if not choice or "/" in str(choice) or str(choice) == str(name):
            continue
        if any(str(o).split("=", 1)[0].lstrip("+~") == f"{group}.name" for o in overrides):
            if name in group_options(group):
                fix = f"to run {group} {name}, choose {group}={name}"
            else:
                fix = (f"to run a {group} of your own, write it to <folder>/{group}/{name}.yaml with `name: {name}`, "
                       f"add hydra.searchpath=[file://<folder>] and choose {group}={name}; the {group} options: "
                       f"{', '.join(group_options(group))}")
            raise ConfigError(f"{group}.name={name!r} would record, store and report {group}={choice} as {name} "
                              f"(a {group}'s name is its file's, not an override's): {fix}")
        path = group_file(group, str(choice))
        loaded = OmegaConf.load(path) if path is not None and path.suffix == ".yaml" else {}
        # a file of package _global_ (conf/method/qlora.yaml) names itself under its group's key
        own = loaded.get("name") or (loaded.get(group) or {}).get("name")
        if own == choice:  # the option names itself: another file of the composition (an experiment) renames it
            raise ConfigError(f"{group}={choice} composes a {group} named {name!r}: another config file of this "
                              f"composition (an experiment or another group's option) sets {group}.name; choose "
                              f"{group}={name} there instead of renaming {choice}")
        raise ConfigError(
            f"{group}={choice} composes a {group} named {name!r} ({path or f'{group}/{choice}.yaml'} sets no name of "
            "its own, or another): add "
            f"`name: {choice}` to it, so that its cells are recorded and reported as {choice}")


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, Mapping):
        return [text for item in value.values() for text in _strings(item)]
    if isinstance(value, (list, tuple)):
        return [text for item in value for text in _strings(item)]
    return []


def _validate_method(cfg: DictConfig) -> None:
    """A trained method has a learning rate; an adapter method a peft config that peft accepts (built here, so a
    wrong argument fails before any model loads); the short names of a LoRA-family method, when present, their
    ranges; few-shot a number of shots."""
    method = cfg.method
    if method.train:
        _number(cfg, "method.lr", "a positive number")
        _validate_optimizer(method, float(cfg.trainer.weight_decay))
        if method.get("peft") is None and cfg.model.get("quantization") is not None:
            raise ConfigError(
                f"method={method.name!r} trains every weight, and model.quantization (model={cfg.model.get('name')}) "
                "loads them quantized, which cannot be trained: use an adapter method (method=lora, method=qlora), "
                "or drop model.quantization")
    elif method.get("peft") is not None:
        raise ConfigError(f"method={method.name!r} has a peft block but train=false: adapters that are never "
                          "trained change nothing; set method.train=true or drop method.peft")
    else:
        for key in ("optimizer", "lr_scale"):
            if method.get(key) is not None:
                raise ConfigError(f"method.{key}={OmegaConf.to_container(method[key])!r} cannot be used with "
                                  f"method={method.name!r}, which trains nothing (train=false)")
    if method.get("peft") is not None:
        from slm_sweep.methods import MethodError, peft_config

        for key, kind in (("r", "a positive integer"), ("alpha", "a positive number")):
            if key in method:
                _number(cfg, f"method.{key}", kind)
        dropout = method.get("dropout", 0.0)
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
            raise ConfigError(f"method.dropout={dropout!r} must be a number in [0, 1)")
        try:
            built = peft_config(method)
        except MethodError as err:
            raise ConfigError(str(err)) from None
        except (TypeError, ValueError) as err:  # the peft config's own checks of its arguments
            raise ConfigError(f"method.peft ({method.peft._target_}) refuses its arguments: {err}") from None
        _check_peft_switches(OmegaConf.to_container(method.peft, resolve=True), type(built))
    if method.get("num_fewshot") is not None:
        _number(cfg, "method.num_fewshot", "a non-negative integer")
    if "shot_seed" in method:  # null: the run's seed draws the shots
        _number(cfg, "method.shot_seed", "a non-negative integer", allow_none=True)


# how yaml 1.1 and command lines spell a switch: Hydra's override parser keeps some of them as strings
_SWITCH_SPELLINGS = ("true", "false", "yes", "no", "on", "off", "y", "n", "1", "0")


def _check_peft_switches(arguments: Mapping[str, Any], config_class: type) -> None:
    """Each argument that the peft config class types as a bool (``use_dora``, ``use_rslora``) is true or false.
    peft checks no types, and any non-empty string is true to it: ``method.peft.use_dora=no`` (a string in the
    untyped method group) would train DoRA. A bool-or-choice argument (``init_lora_weights``) takes its other values
    as peft judges them, but no spelling of a switch."""
    import typing

    try:
        hints = typing.get_type_hints(config_class)
    except Exception:  # noqa: BLE001 - hints that do not resolve here: peft's own checks are all there are
        return
    for key, value in arguments.items():
        kinds = typing.get_args(hints.get(key)) or (hints.get(key),)
        if bool not in kinds or isinstance(value, bool) or (value is None and type(None) in kinds):
            continue
        choices = [choice for kind in kinds if typing.get_origin(kind) is typing.Literal
                   for choice in typing.get_args(kind)]
        if choices and isinstance(value, str) and value.strip().lower() not in _SWITCH_SPELLINGS:
            continue
        if any(isinstance(value, kind) for kind in kinds if isinstance(kind, type) and kind not in (bool, type(None))):
            continue
        allowed = ["true", "false", *(["null"] if type(None) in kinds else []), *map(repr, choices)]
        read_as = (f"would not read {value!r} as a switch" if choices
                   else f"would read {value!r} as {str(bool(value)).lower()}")
        raise ConfigError(f"method.peft.{key}={value!r} must be one of: {', '.join(allowed)} "
                          f"({config_class.__name__}.{key} is a bool{' or one of those names' * bool(choices)}; "
                          f"peft checks no types and {read_as})")


def _validate_optimizer(method: DictConfig, weight_decay: float) -> None:
    """method.optimizer names an optimizer class that takes its settings and trains as the loop uses it,
    method.lr_scale positive factors (whether its keys match parameters is known once the model is built:
    train.optimizers.parameter_scales)."""
    from slm_sweep.train.optimizers import OptimizerError, as_container, check_lr_scale, check_optimizer

    try:
        check_optimizer(as_container(method.get("optimizer")), float(method.lr), weight_decay)
        check_lr_scale(as_container(method.get("lr_scale")))
    except OptimizerError as err:
        raise ConfigError(str(err)) from None


def _validate_metric_modules(cfg: DictConfig) -> None:
    import importlib.util

    for index, name in enumerate(cfg.eval.get("metric_modules") or []):
        try:
            found = importlib.util.find_spec(str(name)) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            raise ConfigError(f"eval.metric_modules[{index}]={name!r} is not an importable Python module: put it on the "
                              "Python path (the working directory, PYTHONPATH, or an installed package)")
