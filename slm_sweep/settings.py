"""Typed settings: the config groups of fixed shape as dataclasses, each default and its meaning written once.

They are Hydra structured configs, stored in Hydra's ConfigStore as ``schema`` and merged first by
``conf/config.yaml``, so every ``model``, ``dataset``, ``trainer``, ``eval``, ``prompt``, ``resume`` and
``preflight`` node is typed: a key no code reads (a misspelt key in a yaml file, ``+trainer.max_stepz=5``) or a
value of the wrong type (``trainer.max_steps=ten``) fails when the config is composed, naming the key. The yaml
files of these groups hold only what differs from the defaults here (``trainer/gpu.yaml``) or what has no default
(a model's name and source). ``python -m slm_sweep --cfg job`` prints every value a cell would run with.

The groups whose keys vary by option, ``method`` (each PEFT config has its own arguments), ``logger`` and Hydra's
own, are not typed here; config.py validates them by structure.

Importing this module registers the schemas (``slm_sweep/__init__.py`` does, so any import of the package does).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, is_dataclass
from fractions import Fraction
from typing import Any

from omegaconf import MISSING

SCHEMA_NAME = "schema"
# the resolver of a dataset's default claims metric (claims_metric_for), registered with the schemas
CLAIMS_METRIC_RESOLVER = "slm_sweep.claims_metric"
# ${slm_sweep.steps_share:0.1,${trainer.max_steps}}: a tenth of the training steps (a schedule that scales with them)
STEPS_SHARE_RESOLVER = "slm_sweep.steps_share"
LR_SCHEDULES = ("cosine", "linear", "constant")  # trainer.lr_schedule (train/optimizers.py's lr_factor)


@dataclass
class TrainerSettings:
    """The training loop of trained methods (Lightning). ``max_steps`` counts optimizer steps of ``batch_size``
    sequences. Each step takes the next ``batch_size`` sequences of a seeded per-epoch order; inside the step they
    are sorted by length and cut into micro-batches of at most ``micro_batch_size`` sequences and
    ``micro_batch_tokens`` tokens. The loss is the mean over the step's answer tokens, so the cut (memory) changes
    neither the data nor the gradient."""

    # 460 x 16 = 7360 sequences: 1.06 epochs of GSM8K train, 6954 examples after its 500-example validation split
    # and deduplication (435 steps would be one epoch; 460 was one epoch of the earlier 100-example split)
    max_steps: int = 460
    batch_size: int = 16
    micro_batch_size: int | None = 4  # null: batch_size
    micro_batch_tokens: int | None = None  # token budget per micro-batch (padded positions; real tokens when packing)
    packing: bool = False  # one row per micro-batch, examples kept apart by position_ids (no padding)
    max_length: int = 512  # longer training examples (prompt and whole answer) are left out, and counted
    warmup_steps: int = 10
    # after the warm-up: cosine or linear decay to zero at max_steps, or constant (train/optimizers.py)
    lr_schedule: str = "cosine"
    weight_decay: float = 0.0
    gradient_clip_val: float | None = 1.0
    accelerator: str = "auto"
    devices: Any = 1  # a count, -1 (all), "auto" or a list of indices, as Lightning takes it
    strategy: str = "auto"  # auto | ddp | fsdp | ...
    precision: str = "32-true"
    # the optimizer's fused kernel (AdamW's, or any method.optimizer class taking fused); null: fused wherever torch
    # has the kernel (CUDA, CPU)
    fused_adamw: bool | None = None
    gradient_checkpointing: bool = False
    # torch.compile for training (dynamic shapes; static ones with compile_backend=cudagraphs), compiled during the
    # first step
    compile: bool = False
    compile_scope: str = "layers"  # layers: each decoder layer, one graph shared by all; model: the whole forward
    # null: torch.compile's default; reduce-overhead (or max-autotune) also replays the step's kernels as CUDA
    # graphs, one per micro-batch shape (pad_to_multiple_of bounds how many), with compile_scope=model only
    compile_mode: str | None = None
    # inductor: fused generated kernels; cudagraphs: the traced step's own kernels replayed as CUDA graphs, with no
    # kernel generation (a shorter warm-up), compile_scope=model only
    compile_backend: str = "inductor"
    # compile_scope=model: each decoder layer traced once and reused (a nested compile region), not unrolled;
    # not with gradient_checkpointing or a quantized model, whose layers are traced unrolled
    compile_regions: bool = True
    val_check_interval: int | None = None  # null: validate once, after training; N: every N micro-batches as well
    checkpoint_every_n_steps: int | None = 50
    log_every_n_steps: int = 10  # also how often the loss is read back from the device and throughput is logged
    throughput_warmup_steps: int = 1  # first optimizer steps left out of tokens/s, step time and MFU
    deterministic: bool = False
    progress_bar: bool = True
    num_workers: int = 0
    pad_to_multiple_of: int | None = None
    keep_checkpoints: bool = False  # false: delete the cell's checkpoints once its result is complete
    keep_model: bool = False  # true: keep full fine-tuned weights in <cell>/model (adapters are always kept)


@dataclass
class EvalSettings:
    """Greedy generation and scoring on the test split (and optional out-of-domain sets)."""

    split: str = "test"  # test; val: score the validation split instead (hyperparameter search)
    # 512: no GSM8K reference solution is longer in SmolLM2's tokens, 2.4 % of the test split's are longer than
    # 256 (lm-eval's gsm8k limit), which a model writing solutions like them would lose (docs/results.md#lengths)
    max_new_tokens: int = 512
    stop: list[str] = field(default_factory=lambda: ["Question:", "</s>", "<|im_end|>"])
    # neutral: plain greedy decoding for every model, the penalties and logits processors of its generation_config
    # set aside (what was set aside is recorded in result.json under decoding); model: as model.generate applies them
    generation_config: str = "neutral"
    token_budget: int = 65536  # (longest prompt + max_new_tokens) x batch size, per generation batch
    max_batch_size: int = 64
    ood_sets: list[str] = field(default_factory=list)  # conf/dataset/*.yaml sets scored besides the test split
    ood_limit: int | None = None  # score only the first N questions of each out-of-domain set
    progress: bool = True
    engine: str = "static"  # static | cache | plain (model.generate, for comparison)
    cuda_graphs: bool = False  # engine=static on CUDA: replay each decode step as a CUDA graph
    prefill_batch_size: int | None = None  # prompts per prefill forward; null: 1 on CPU, the whole batch on GPU
    # auto: the CUDA GPU that trained the model, else CUDA when present, else CPU (also after MPS) | cpu | cuda | cuda:N
    device: str = "auto"
    # auto: bfloat16 on a GPU of compute capability >= 8, float16 on an older GPU, model.dtype on CPU (float32 for
    # auto) | float32 | bfloat16 | float16; a quantized model (QLoRA) keeps the dtypes it was loaded in (a warning)
    dtype: str = "auto"
    # Python modules imported before scoring, each registering metrics with slm_sweep.scoring.register_metric;
    # every registered metric is scored (accuracy_<name> in result.json)
    metric_modules: list[str] = field(default_factory=list)


@dataclass
class ModelSettings:
    """A causal LM and its tokenizer (slm_sweep/models.py). ``source``: hub (a hub id or a local folder,
    safetensors only), gguf (a GGUF file in a Python package or ``gguf_dir``, dequantized once), random (an
    architecture with random weights), tiny (a random ~100k-parameter Llama for tests)."""

    name: str = MISSING
    source: str = MISSING
    id: str | None = None  # hub id or local folder (hub, random); a description for gguf and tiny
    revision: str = "main"
    dtype: str = "float32"  # float32 | bfloat16 | float16 | auto
    trust_remote_code: bool = False
    init_seed: int | None = None  # random and tiny sources: the seed of the random weights (null: 0)
    # weights quantized at load time: a transformers quantization config with _target_, e.g.
    # {_target_: transformers.BitsAndBytesConfig, load_in_4bit: true, ...} (QLoRA: method=qlora sets it)
    quantization: Any = None
    gguf_package: str | None = None  # gguf: the Python package that ships gguf_file
    gguf_file: str | None = None
    gguf_dir: str | None = None  # gguf: a folder holding gguf_file instead of the package
    # tiny: the shape of the random Llama
    vocab_size: int | None = None
    hidden_size: int | None = None
    intermediate_size: int | None = None
    num_layers: int | None = None
    num_heads: int | None = None
    max_position_embeddings: int | None = None


@dataclass
class HubSource:
    """Where ``datasets.load_dataset`` finds a dataset; ``splits`` maps each role (train, test) to a hub split name
    or a list of names that are concatenated."""

    path: str = MISSING
    name: str | None = None
    revision: str | None = None
    splits: dict[str, Any] = field(default_factory=dict)


@dataclass
class LocalSource:
    """The dataset's own files, read from ``data_dir`` or ``<data_root>/<dir_name>/`` (.jsonl or .json)."""

    dir_name: str = MISSING
    files: dict[str, str] = field(default_factory=dict)  # each role (train, test) to its file; else <role>.jsonl


# The out-of-domain sets of the study (experiment=paper's eval.ood_sets): what training is deduplicated against by
# default, whichever sets a cell scores.
STUDY_OOD_SETS = ["svamp", "gsm_hard", "mawps_addsub", "mawps_singleeq", "mawps_singleop", "multiarith"]


@dataclass
class DedupSettings:
    """Training and validation examples whose question repeats one of the dataset's whole test split or of the
    ``against`` sets are removed before training (slm_sweep/data/dedup.py; docs/results.md#deduplication): exact
    duplicates (equal normalised text: lower case, words, numbers and arithmetic signs) and near duplicates (Jaccard
    similarity of character 5-gram sets >= ``near_threshold``). Fixed per dataset, never taken from
    ``eval.ood_sets``: scoring one more set does not change what is trained. Applies to trained methods, and to
    any method scoring the validation split (eval.split=val)."""

    enabled: bool = True
    against: list[str] = field(default_factory=lambda: list(STUDY_OOD_SETS))  # besides the dataset's own test split
    near_threshold: float = 0.5
    # a set of ``against`` that cannot be read: skip (train without it; a warning, and result.json's dedup.skipped
    # names it with the reason) or error (the cell fails before loading the model)
    on_missing: str = "skip"


@dataclass
class DatasetSettings:
    """A declarative dataset (slm_sweep/data/): usable as ``dataset=<name>`` or in ``eval.ood_sets``.
    The defaults are GSM8K's layout; a dataset file sets what differs."""

    name: str = MISSING
    # datasets.load_dataset source, used when data_dir is unset and data_root is unset or has no folder for this set
    hub: HubSource | None = None
    local: LocalSource | None = None  # null: hub only
    data_dir: str | None = None  # read the local files from this folder instead of the hub
    question: list[str] = field(default_factory=lambda: ["question"])  # field(s) joined into the question text
    answer: str = "answer"  # field holding the worked solution / final answer
    # gsm8k: the number after '####'; number: a numeric field; prose: a worked answer read as scoring reads one
    # (\boxed{}, then "the answer is", then the final sentence, closing notes and checks cut)
    answer_format: str = "gsm8k"
    test_split: str = "test"  # test: the test split; heldout: a seeded slice of train (test_size examples)
    test_size: int | None = None  # size of the held-out test slice (only with test_split: heldout)
    split_seed: int = 1234  # seed of the held-out and validation carving; independent of the run seed
    # validation examples carved from train (never from test); null: none. The study's training sets (gsm8k,
    # orcamath) set 500, enough to separate learning-rate candidates (docs/tuning.md).
    val_size: int | None = 100
    train_limit: int | None = None  # keep the first N training candidates of the seeded ranking (after deduplication)
    test_limit: int | None = None  # score the first N test examples (of a held-out set: of the ranking)
    answer_tolerance: float | None = None  # null: exact match of the number string; a float: numbers, relative float noise
    unparsable_answers: str = "skip"  # rows whose answer has no final number: skip (counted) or error
    # the metric the report's claims read on this dataset unless a claim names one; by default lenient for prose
    # answers (answer_format: prose: a model trained on them answers in prose, which the flexible extraction, the
    # last number, misreads), flexible otherwise (claims_metric_for)
    claims_metric: str = "${" + CLAIMS_METRIC_RESOLVER + ":${.answer_format}}"
    eval_only: bool = False  # true: no train split; usable only as an evaluation set
    dedup: DedupSettings | None = field(default_factory=DedupSettings)  # null: no deduplication


@dataclass
class PromptSettings:
    style: str = "auto"  # auto (chat template when the tokenizer has one) | chat | plain ("Question: ...\nAnswer:")
    system: str | None = None  # optional system message for the chat style


@dataclass
class ResumeSettings:
    """Reuse finished work: a cell whose complete result.json with the same identity exists under ``search_dir``
    (one folder or several) is not run again, and one that stopped mid-training resumes from its last checkpoint."""

    # auto: in sweeps (-m); a single run resumes only its own folder's checkpoint | true: also for single runs |
    # false: never
    enabled: Any = "auto"
    # a folder or a list of folders: where sweeps (multirun/) and single runs (outputs/) write by default
    search_dir: Any = field(default_factory=lambda: ["multirun", "outputs"])
    # a cell whose training diverged under the same training key keeps that outcome (its folder's own, else copied
    # from another folder it searches, unless a run of that training completed) | true: reuse a completed run of
    # it, else train again; the divergence is set aside (superseded/) and named in retried_divergence
    retry_diverged: bool = False


@dataclass
class PreflightSettings:
    """Before a sweep's first cell, check that every model, training dataset and out-of-domain set can be read.
    skip: leave the missing swept values out and run the rest; refuse: run only the whole grid; warn: run as
    asked. ``only``: check and list the cells that would run, then stop; nothing runs (a grid that would be
    refused still exits non-zero)."""

    on_missing: str = "skip"
    only: bool = False


# The typed nodes of a composed config: conf/config.yaml merges this first, each group's file then on top.
SCHEMAS: dict[str, type] = {
    "model": ModelSettings,
    "dataset": DatasetSettings,
    "trainer": TrainerSettings,
    "eval": EvalSettings,
    "prompt": PromptSettings,
    "resume": ResumeSettings,
    "preflight": PreflightSettings,
}


def field_names(schema: type) -> list[str]:
    return [f.name for f in fields(schema)]


def nested_schema(schema: type, name: str) -> type | None:
    """The dataclass that types field ``name`` of ``schema`` (``DatasetSettings.hub``: HubSource), None for a
    field of another type."""
    import typing

    hint = typing.get_type_hints(schema)[name]
    for candidate in (hint, *typing.get_args(hint)):
        if is_dataclass(candidate):
            return candidate
    return None


def defaults(schema: type) -> dict[str, Any]:
    """The schema's defaults as plain values; fields without a default are left out."""
    from omegaconf import OmegaConf

    node = OmegaConf.structured(schema)
    return {key: OmegaConf.to_container(node, resolve=True)[key] for key in field_names(schema)
            if not OmegaConf.is_missing(node, key)}


def claims_metric_for(answer_format: str) -> str:
    """A dataset's claims metric when its file names none: lenient for prose answers, flexible otherwise."""
    return "lenient" if answer_format == "prose" else "flexible"


def steps_share(share, steps) -> int:
    """``share`` (0 to 1) of ``steps`` optimizer steps, rounded down: a method's schedule given as a share of
    ``trainer.max_steps`` (AdaLoRA's warm-up and final phase), so that it follows a change of the steps."""
    if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 <= share <= 1:
        raise ValueError(f"{STEPS_SHARE_RESOLVER}: the share {share!r} is not a number from 0 to 1")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"{STEPS_SHARE_RESOLVER}: the steps {steps!r} are not a whole number of at least 0")
    return int(Fraction(str(share)) * steps)  # as written: 0.29 of 100 steps is 29, where 0.29 * 100 is 28.999...


def register() -> None:
    """Store the schemas in Hydra's ConfigStore and register the resolvers the configs use (idempotent)."""
    from hydra.core.config_store import ConfigStore
    from omegaconf import OmegaConf

    OmegaConf.register_new_resolver(CLAIMS_METRIC_RESOLVER, claims_metric_for, replace=True)
    OmegaConf.register_new_resolver(STEPS_SHARE_RESOLVER, steps_share, replace=True)
    ConfigStore.instance().store(name=SCHEMA_NAME, node={key: schema for key, schema in SCHEMAS.items()})


register()
