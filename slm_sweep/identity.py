"""The identity of a cell, defined once and used by resume, reuse and the report.

- The **training key** covers what changes the trained weights: the training code's version, the versions of the
  libraries that change numerics (with Lightning's when a weight-changing Lightning callback is configured, and
  bitsandbytes' when ``model.quantization`` loads with it), the model's resolved weights (hub commit, GGUF file
  hash, or the random architecture's settings), the method's settings, the training and validation data's
  content, the prompt format (``prompt.style`` as rendered: an explicit ``chat`` where ``auto`` gives chat is
  keyed as ``auto``), the trainer's numeric settings (one spelling per value), the device count when training runs
  on several, the strategy's family unless it is DDP or plain single-device training (FSDP, DeepSpeed: on any
  number of devices), the configured callbacks that may change the weights (not those that only display or log),
  the deduplication setting
  (``dataset.dedup`` without ``on_missing``: a set skipped as unreadable changes the training data's content,
  which is in the key) and the seed. A method that trains nothing has none.
- The **evaluation key** is the training key (or, untrained, the model's identity) plus what changes the scores:
  the scoring version, the prompts (shots, system message), the evaluation data's content (test split and every
  out-of-domain set), decoding and the dtype generation runs in.

Settings that only change speed, memory or logging (micro-batching, packing, compilation, the evaluation engine,
token budgets, CUDA graphs, loggers, progress bars, output folders) are in neither key, and neither are paths:
moving a data folder changes nothing that its content does not. "Only speed" means the same computation in
another order or shape, not the same bits: micro-batches of another size sum the loss in another order and draw
dropout masks for other shapes, another chip or a fused optimizer rounds differently, and in bfloat16 another
batch composition can flip a greedy token near a tie (the GPU job's batch_invariance stage measures how often).
A result reused under a key is one draw of what that configuration computes, not a bit-exact rerun of it.

Keys are computed from the config redacted with digests (``redact(..., digests=True)``): a number or boolean
under a credential-like name (results.SECRET_KEY: ``key``, ``token``, ...), which is never a credential (an
optimizer's PRNG ``key``), is keyed by a hash of it, so that cells differing only there never share a key; a
string (or list, or mapping) there is keyed as ``<redacted>``, whatever it holds: a credential is not keyed, so
that neither the keys nor their recorded parts give it away, and another user's or a rotated token keeps them.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from slm_sweep.settings import TrainerSettings

# Bump when a change to the training path alters the weights it produces (loss, batching order, schedule, ...).
TRAINING_CODE_VERSION = 9  # 9: a 4-bit model (QLoRA) on a CPU with AVX512-BF16 keeps bitsandbytes' differentiable
# kernel (models.without_cpu_repacking): after a validation pass inside training, the repacked kernel passed no
# gradient through its layers; 8: a half-precision cast keeps every rotary frequency buffer in float32, Gemma 3's one
# pair per attention type included (only those named exactly inv_freq were kept); 7: under a token budget
# (trainer.micro_batch_tokens, packing) every epoch trains all of its micro-batches in whole steps (an epoch with
# more than the first's ended early, its last step spilling into the next epoch's first) (6: on several devices
# each device draws its own dropout masks (train.module's device_step_seed); they drew the same ones for
# micro-batches of one shape; validation inside an optimizer step
# (trainer.val_check_interval, which counts micro-batches) no longer drops the step's gradients so far; a half
# "true" precision (bf16-true) keeps the rotary frequencies in float32 (Lightning's cast rounded them)
# 5: a run resumed under another micro-batch plan, or after a crash following a resume,
# trains on the steps an uninterrupted run does (it could skip or merge steps); weight decay under FSDP reaches the
# matrices (sharding flattened them into undecayed vectors)
# 4: trainable weights loaded in a half dtype train as float32 master weights under
# mixed precision (they were updated in bf16)
# 3: plain prompts trained with the BOS scoring sees; Llama 3 chat prompts dated
# CHAT_TEMPLATE_DATE; a chat turn ends with the template's end-of-turn token (Gemma 3: <end_of_turn>, not <eos>);
# random state restored on resume; train_limit a seeded sample (2: train mode while training; over-long examples
# dropped, not cut)
# Bump when a change to prompts, generation or answer scoring alters scores. SCORING_SOURCES_SHA256 and
# TRAINING_SOURCES_SHA256 below hold the hash of the sources behind each version, so an edit of one of them
# without a bump, or a recorded statement that it changes no result, fails a test; and a cell run from edited
# sources carries their hash in its keys, so it is never reused as, or reuses, a result of the released code.
SCORING_VERSION = 22  # 22: a 4-bit model generating on a CPU with AVX512-BF16 computes in its
# bnb_4bit_compute_dtype (bitsandbytes' repacked kernel computed in bf16);
# 21: lenient reads a model's final sentence as 19 did ("So, Yoongi has 8 marbles, and he
# gave 4 away." is 8), which 20 read by the references' rule (no value); in a prose reference a pronoun points back
# at the result only as its clause's subject before "is"/"was"/"are"/"were"/"equals" or after "of" ("..., and
# this year he is 13", "..., and it takes 20 seconds to cross the pole" state a second result: no reference), and a
# side clause that checks the value stated gives none ("the number is 7, and indeed 7 x 3 = 21": it gave 21);
# questions asking in which of the two things, the color or the kind of a thing, or "Which one ...?" after a list
# of people's or things' numbers are left out, "Which of the two numbers/years ...?" kept (data/readers.py: keyed
# by the data fingerprints);
# 20: a final sentence that states two results after ", and", ", while", "whereas" or ";",
# with any verb ("Jimin has 12 marbles, and Yoongi has 8 marbles", "the length is 12 cm, and its width is 8 cm": a
# possessive "its" or a relative "that" points back at nothing), gives no prose reference (it gave the first value;
# the row is left out); lenient reads a model's final sentence as 19 did ("So, Yoongi has 8 marbles, and he gave 4
# away." is 8); questions asking for a name or a category ("What is the name of the shape?", "What color/In which
# box ...?") are left out (data/readers.py: keyed by the data fingerprints);
# 19: lenient reads an unmarked final sentence as a prose reference is read (the value the sentence states, not a
# number after it), a "that/who ... is" clause or a ", since/because ..." justification after
# a stated value is not the answer (conflicting readings: no reference, the row left out), a side clause that works
# the value out ("= 50") is read; Gemma 3 evaluated in bf16 keeps its rotary frequencies in float32; 18: an
# "Answer:" line is a marker only with the answer alone on it; 17: lenient keeps a
# closing "check" paragraph that works out a value not written before it, reads "Answer:" lines as a marker, a
# spaced sign inside \boxed{}, "x 10^n", a bare power of ten and a brace-less \frac, and records the exact value
# it compared; 16: adapters on a half-precision base merged into the evaluation dtype (float32 kept all of their
# update; it was rounded to the base's bf16 first); lenient reads a '####' marker through markdown and
# not a numbered heading, "between"/"either" make a hedge only before two numbers, a percent restating a plain
# number is one answer (15: a model cast for evaluation (eval.dtype=bfloat16,
# adapters merged through float32))
# keeps its rotary frequencies in float32, as loading it in that dtype does (they were rounded to bf16); kept
# full weights are re-scored in the dtype they were kept in (a bf16 base's float32 weights were rounded to bf16);
# a prose reference whose "the answer is" sentence is followed by a closing "Note: ..." paragraph keeps its answer
# 14: lenient and prose references read an amount in dollars and cents as one value
# ("18 dollars and 50 cents" is 18.50; it was 18)
# 13: lenient: a marker's answer that offers several values of one kind ("12 or 13",
# "\\boxed{12, 13}", "12 to 15 apples", "12 - 3") is no answer (it scored its first value); without a marker, a
# last sentence labelled as a remark with a colon ("... 42 apples. Note: 12 per box.") is cut as a closing
# paragraph is; lenient and prose references keep a sign set apart after a marker on its line ("#### - 5" is -5)
# 12: the static engine's one-token decode steps attend with each group's queries
# stacked on its key/value head (evaluate/attention.py), as transformers' sdpa does from 5.24 (bitwise the same
# there); on earlier releases, which expanded the keys and values per query head, rounding can differ
# 11: lenient and prose references read "1,500," as 1500 and exponents ("2.5e-05",
# "1.5 \\times 10^{6}") as part of their number; a rounding states a value only with two significant digits
# or more ("0.00002" is no answer of 0.000024967); a digit run past int()'s limit is no answer, not a failure;
# a stop string of multi-byte characters ends a continuation where its text appears (ended, new tokens); a free
# decode slot keeps its position id; prose references (OrcaMath): ordinals and "N-digit" are no numbers, "Rs." ends
# no sentence, closing checks in the last paragraph are cut, a value restated as another, a comparison, number
# words, weekdays, pi, roots and variables give no reference, "0.333..." is a rounding
# 10: v9 narrowed: a rounding is read in the clause that states the value, not negated,
# not of another number; a closing check is cut as a remark ("Verification", "Let's verify:") or once a result
# is stated; "#### <number>" lines as lm-eval reads them, or "####" on the last line; who-questions by the last
# question asked
# 9: a prose reference stated as a rounding ("approximately 15.33") accepts answers that
# round to it, at the decimals written; "####" in a reference counts only on a line of its own with a number;
# closing "Let's verify:" / "We can check this:" / "Double-check:" paragraphs are cut (lenient and prose
# references); questions asking who have no reference; a model's num_beams is set aside (decoding is greedy)
# and a prompt of no tokens is an error
# 8: lenient: a "which is" after an answer already stated as one number explains it (not
# restates it); "####" is a marker only with a number after it (not a markdown heading); LaTeX mixed numbers
# "1\\frac{1}{2}"; a closing "Check: ..." paragraph is cut like a note (lenient and prose references)
# 7: a generation also ends at the tokenizer's EOS and the chat template's end-of-turn token when
# the model's generation config does not name them (as training ends answers; lm-eval cuts at the EOS text)
# 6: float noise 1e-15 (not 1e-9), no "0.00" for a non-zero reference, a rounded reference
# (3.33333) matched by more precise answers; lenient and prose references end the answer where a justification
# starts, read a restatement ("..., which is 9"), LaTeX thousands separators, rupees and signed \frac numerators
# 5: Llama 3 chat prompts carry a fixed date, not the day they run (prompts.CHAT_TEMPLATE_DATE)
# 4: numbers compared exactly up to float noise or a stated rounding, not within 1e-4;
# lenient reads the result of an equation after its marker and never a closing note; prose references cut
# comment clauses (3: the model's generation config set aside by default, eval.generation_config)
NUMERIC_LIBRARIES = ("torch", "transformers", "peft")
# The sources (under slm_sweep/) that decide a cell's scores and its trained weights, and their hash at each
# version. After an edit: bump the version if results can change, else record the new hash for the same version
# (a change that cannot alter any score or weight: speed, messages, docs).
# Every module these import is one of them or said not to change a result (tests/test_identity.py).
SCORING_SOURCES = ("scoring.py", "data/prompts.py", "data/encode.py", "evaluate/batching.py", "evaluate/stopping.py",
                   "evaluate/decode.py", "evaluate/generate.py", "evaluate/evaluator.py", "evaluate/attention.py",
                   "evaluate/weight_first.py", "placement.py", "methods.py", "models.py")
TRAINING_SOURCES = ("data/prompts.py", "data/encode.py", "train/batching.py", "train/data.py", "train/module.py",
                    "train/fit.py", "train/optimizers.py", "train/rank_allocation.py", "train/compilation.py",
                    "methods.py", "placement.py", "models.py",
                    "train/interrupt.py")  # which steps a resumed run trains (align_to_plan, rewind_to_last_step)
SCORING_SOURCES_SHA256 = {22: "70eb8e1f630404670241949e82137c1d70c5da7c1638a238496bdf8692d9d840"}
TRAINING_SOURCES_SHA256 = {9: "47cf17ba77981b33474b6d5401245f8d96b31b620f58cb6135921d5494e20be0"}

# Trainer settings that change the trained weights; the others change only speed, memory or logging.
TRAINER_NUMERIC_KEYS = ("max_steps", "batch_size", "max_length", "warmup_steps", "weight_decay",
                        "gradient_clip_val", "precision", "lr_schedule")
DEFAULT_LR_SCHEDULE = TrainerSettings.lr_schedule  # keyed only when another, as in older keys
EVAL_SCORING_KEYS = ("split", "max_new_tokens", "stop", "generation_config")
MODEL_KEYS_NOT_IN_IDENTITY = ("name", "gguf_dir", "gguf_package", "revision")
# Method settings that change the prompts only: in the evaluation key, never in the training key.
METHOD_PROMPT_KEYS = ("prompt_format", "instruction")  # in the key only when set: older keys stay valid
METHOD_EVAL_KEYS = ("num_fewshot", "shot_seed", *METHOD_PROMPT_KEYS)
_COMMIT = re.compile(r"^[0-9a-f]{40}$")
# Lightning's short names of its precisions: one training, one key
PRECISION_ALIASES = {"32": "32-true", "16": "16-mixed", "bf16": "bf16-mixed", "64": "64-true"}
# Callbacks that only show or log progress; any other configured callback (pruning, weight averaging, early
# stopping) can change the weights, so its entry is in the training key.
DISPLAY_CALLBACKS = ("StepProgressBar", "TQDMProgressBar", "RichProgressBar", "LearningRateMonitor", "ModelSummary",
                     "RichModelSummary", "DeviceStatsMonitor")
_DISPLAY_MODULES = ("slm_sweep.train.progress", "lightning.pytorch", "pytorch_lightning")


@dataclass(frozen=True)
class CellIdentity:
    training_key: str | None  # None for methods that train nothing
    evaluation_key: str
    # the evaluation key without the seed: runs of one configuration over several seeds share it (the report's
    # rows); runs that differ in anything else, code and data versions included, do not
    configuration_key: str = ""
    parts: dict[str, Any] = field(default_factory=dict, compare=False)  # what went into each key, readable

    @property
    def eval_dtype(self) -> str:
        """The dtype generation runs in, as the evaluation key names it."""
        return self.parts["evaluation"]["eval"]["dtype"]

    @property
    def scored_with(self) -> dict[str, Any]:
        """How answers were generated and scored, the split aside: what two cells compared with each other must
        share (the scoring version, max_new_tokens, stop, generation_config, dtype, metric modules)."""
        evaluation = self.parts.get("evaluation") or {}
        return {"scoring": evaluation.get("scoring"),
                **({"edited_sources": evaluation["edited_sources"]} if evaluation.get("edited_sources") else {}),
                **{k: v for k, v in (evaluation.get("eval") or {}).items() if k != "split"}}

    @property
    def prompt_style(self) -> str | None:
        """``prompt.style`` as keyed (an explicit style that ``auto`` renders is ``auto``); None when the prompt
        settings shape neither training nor the scored prompts (a few-shot format of lm-eval's)."""
        for part in ("evaluation", "training"):
            prompt = (self.parts.get(part) or {}).get("prompt")
            if isinstance(prompt, dict):
                return str(prompt.get("style") or "auto")
        return None

    def as_record(self) -> dict[str, Any]:
        """What result.json records: the keys, and what went into them (``parts``: the resolved weights, the
        data's fingerprints, code and library versions, the settings), so that a result says what produced it."""
        return {"training_key": self.training_key, "evaluation_key": self.evaluation_key,
                "configuration_key": self.configuration_key, "scored_with": self.scored_with,
                "prompt_style": self.prompt_style, "parts": self.parts}


@functools.cache
def pin_running_code() -> None:
    """Import every hashed module of the package, then read the sources' hashes and the git state, once per
    process, as it starts: the cells of a sweep run in one process run the code it imported then, so a key
    (``edited_sources``) and a record (git commit, changed files) must describe that code, not what the working
    tree holds by the time a later cell computes them (a checkout edited during the first cells). Called by a
    sweep's preflight (unless preflight.only), the entry point's task function and each cell; only the first call
    does anything. It imports torch, transformers and Lightning: --help, --cfg and dry runs do not call it."""
    import importlib

    from slm_sweep.results import own_code_provenance

    _pin_metric_modules_as_imported()  # before any cell imports one
    for name in dict.fromkeys((*SCORING_SOURCES, *TRAINING_SOURCES)):
        importlib.import_module(f"{__package__}.{name.removesuffix('.py').replace('/', '.')}")
    sources_digest(SCORING_SOURCES)
    sources_digest(TRAINING_SOURCES)
    own_code_provenance()


@functools.cache
def sources_digest(names: tuple[str, ...]) -> str | None:
    """sha256 over the named sources of the package (name and bytes of each); None when one cannot be read."""
    package = Path(__file__).resolve().parent
    h = hashlib.sha256()
    try:
        for name in names:
            h.update(name.encode() + b"\0" + (package / name).read_bytes())
    except OSError:
        return None
    return h.hexdigest()


def edited_sources(names: tuple[str, ...], pinned: Mapping[int, str], version: int) -> str | None:
    """The sources' hash (16 hex digits) when they differ from the ones pinned for ``version``, else None: a cell
    computed by edited code must not share a key with the released code's cells."""
    found = sources_digest(names)
    return None if found is None or found == pinned.get(version) else found[:16]


def digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(canonical(value), sort_keys=True, default=str).encode()).hexdigest()[:16]


def canonical(value: Any) -> Any:
    """``value`` with each number written one way: a float that is a whole number is the integer (``alpha: 32.0``
    and ``32`` are one setting)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, Mapping):
        return {key: canonical(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [canonical(item) for item in value]
    return value


def stop_strings(stop: Any) -> Any:
    """``eval.stop`` as a set: a generation is cut at the earliest of them, whatever their order."""
    return sorted({str(s) for s in stop if s}) if isinstance(stop, (list, tuple)) else stop


def fingerprint(examples: Iterable) -> str:
    """The content of a list of examples (question, training target, reference), in order."""
    h = hashlib.sha256()
    count = 0
    for ex in examples:
        h.update(f"{ex.question}\x00{ex.answer}\x00{ex.reference}\x01".encode())
        count += 1
    return f"{count}:{h.hexdigest()[:16]}"


def numeric_versions(*more: str) -> dict[str, str | None]:
    """major.minor of each library whose numerics can change a result (NUMERIC_LIBRARIES), and of the
    distributions ``more`` names (those a cell's settings bring in: Lightning's callbacks, bitsandbytes)."""
    versions = {}
    for name in (*NUMERIC_LIBRARIES, *more):
        try:
            versions[name] = ".".join(metadata.version(name).split("+")[0].split(".")[:2])
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def is_commit(revision: str) -> bool:
    return bool(_COMMIT.match(revision))


_CONTENT_HASHES: dict[tuple[str, int, int], str] = {}


def content_sha256(path: Path) -> str:
    """``file_sha256``, remembered per path, size and modification time: the cells of a sweep hash a model
    folder once."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _CONTENT_HASHES:
        _CONTENT_HASHES[key] = file_sha256(path)
    return _CONTENT_HASHES[key]


def resolved_revision(model_id: str, revision: str | None) -> str:
    """The commit a hub revision points at, from the local cache or the hub; a local folder's content hash.

    Falls back to ``unresolved:<revision>`` when neither the cache nor the hub can say (the model then cannot
    be loaded either, so no result is produced under that name).
    """
    revision = revision or "main"
    local = Path(model_id).expanduser()
    if local.is_dir():
        # every file's content, weights included (a model retrained into the same folder keeps its sizes);
        # hidden folders (.git, .cache) are not the model
        files = sorted(p for p in local.rglob("*") if p.is_file()
                       and not any(part.startswith(".") for part in p.relative_to(local).parts))
        return "folder:" + digest([(p.relative_to(local).as_posix(), content_sha256(p)) for p in files])
    if _COMMIT.match(revision):
        return revision
    # resolved once per process: the commit the cell's identity records is the one its model loads
    # (slm_sweep.models), even if the branch moves on in between
    if (model_id, revision) not in _HUB_COMMITS:
        commit = _hub_commit(model_id, revision)
        if commit is None:
            return f"unresolved:{revision}"
        _HUB_COMMITS[model_id, revision] = commit
    return _HUB_COMMITS[model_id, revision]


_HUB_COMMITS: dict[tuple[str, str], str] = {}


def _hub_commit(model_id: str, revision: str) -> str | None:
    """The commit of a hub revision from the local cache, else from the hub; None when neither can say."""
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(model_id, "config.json", revision=revision)
        if isinstance(cached, str):
            return Path(cached).parent.name  # .../snapshots/<commit>/config.json
    except Exception:  # noqa: BLE001 - a cache that cannot be read is the same as no cache
        pass
    try:
        import os

        if os.environ.get("HF_HUB_OFFLINE") != "1":
            from huggingface_hub import HfApi

            return HfApi().model_info(model_id, revision=revision, timeout=10).sha
    except Exception:  # noqa: BLE001
        pass
    return None


def model_identity(model_cfg: Mapping[str, Any]) -> dict[str, Any]:
    """What fixes the model's weights and tokenizer, independent of where its files sit."""
    # unset settings (the typed schema's nulls: another source's keys, no quantization) are left out
    settings = {k: v for k, v in model_cfg.items() if k not in MODEL_KEYS_NOT_IN_IDENTITY and v is not None}
    source = model_cfg.get("source")
    # random weights are drawn from init_seed (null: 0); other sources read theirs
    if source in ("random", "tiny"):
        settings["init_seed"] = int(model_cfg.get("init_seed") or 0)
    else:
        settings.pop("init_seed", None)
    if source == "gguf":
        from slm_sweep.models import GGUF_CONVERSION, gguf_path

        settings["weights"] = "sha256:" + content_sha256(gguf_path(model_cfg))
        settings["conversion"] = GGUF_CONVERSION  # what the file loads as (its tokenizer's pre-tokenizer, ...)
        settings.pop("id", None)  # a description, not an address
    elif source in ("hub", "random"):
        settings["weights"] = resolved_revision(str(model_cfg["id"]), model_cfg.get("revision"))
        if Path(str(model_cfg["id"])).expanduser().is_dir():
            settings.pop("id")
    return settings


def metric_modules_identity(names: Sequence[str] | None) -> dict[str, Any]:
    """The code of each metric module a cell scores with (scoring.metric_module_names: the metrics folder's and
    eval.metric_modules; what their metrics compute), as this process runs it (running_metric_source); nothing when
    there is none, so that the keys of cells without added metrics stay as they were."""
    if not names:
        return {}
    return {"metric_modules": {str(name): running_metric_source(str(name)) for name in names}}


# What this process runs of code from outside the hashed sources, hashed once, when it was imported to run: the
# cells of a one-process sweep run what was imported at the first cell that used it, so a key computed by a later
# cell must describe that code, not the file as edited since (pin_running_code does the same for the package's
# own sources). A new process hashes the files as they are then.
_METRIC_SOURCES: dict[str, Any] = {}  # metric module -> metric_module_code as it was imported (pin_metric_module)
_EXTERNAL_CODE: dict[str, Any] = {}  # callback or optimizer class path -> external_code as first keyed


def forget_running_code() -> None:
    """Forget the code this process pinned (metric modules, callbacks, optimizers) and the metrics modules
    registered (scoring.forget_metric_modules): the next key imports them again and hashes the files as they are
    then, as a new process would. For tests that edit such a file and key it again in one process."""
    from slm_sweep.scoring import forget_metric_modules

    _METRIC_SOURCES.clear()
    _EXTERNAL_CODE.clear()
    forget_metric_modules()


def pin_metric_module(name: str) -> None:
    """Record the code of a metric module as it is now: called by scoring.import_metric_module right after the
    module is imported (or reloaded) to score with, which is the code the cells of this process run."""
    _METRIC_SOURCES[name] = metric_module_code(name)


@functools.cache
def _pin_metric_modules_as_imported() -> None:
    """Have scoring.import_metric_module call pin_metric_module (scoring imports nothing of the package): from
    pin_running_code, as a process starts, and before a key imports a metric module itself."""
    from slm_sweep.scoring import METRIC_MODULE_IMPORTED

    METRIC_MODULE_IMPORTED.append(pin_metric_module)


def running_metric_source(name: str) -> Any:
    """The code of a metric module as this process imported it to score with (pin_metric_module): a module not
    imported yet is imported now (scoring.import_metric_module, which records its metrics for the cells that
    name it), so that the file keyed is the file run. One that cannot be imported is keyed as it is on disk (its
    cell fails before it scores: config.use_metric_modules_checked)."""
    if name not in _METRIC_SOURCES:
        from slm_sweep.scoring import import_metric_module

        _pin_metric_modules_as_imported()
        try:
            import_metric_module(name)
        except Exception:  # noqa: BLE001 - the cell's own import of it names the problem
            return metric_module_code(name)
        # imported before pin_running_code (tune.choose.check_metric) or forget_running_code: hashed at its first key
        _METRIC_SOURCES.setdefault(name, metric_module_code(name))
    return _METRIC_SOURCES[name]


def metric_module_code(name: str) -> str | None:
    """What a metric module runs, as it is on disk: a module of the metrics folder by the whole folder (every
    Python file of slm_sweep/metrics/, its ``_*.py`` helpers too); another by its top-level package when it is in
    one (every Python file: a metric may call its siblings), a single top-level module by its own file (a
    top-level package by every file of it). A module of slm_sweep outside the metrics folder by its own file."""
    from slm_sweep.scoring import METRICS_PACKAGE

    if name.startswith(METRICS_PACKAGE + "."):
        return module_source(METRICS_PACKAGE)
    top = name.split(".")[0]
    return module_source(name if top in ("slm_sweep", name) else top)


def module_source(name: str) -> str | None:
    """The sha256 of a module's file (of every Python file of a package, in each folder of its ``__path__`` when
    it is imported); None when it cannot be found."""
    import importlib.util
    import sys

    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    origin = getattr(spec, "origin", None)
    if spec is not None and spec.submodule_search_locations:  # a package: every Python file of it
        imported = getattr(sys.modules.get(name), "__path__", None)  # folders added to it since (a test's)
        roots = [Path(root) for root in (imported if imported is not None else spec.submodule_search_locations)]
        return digest([(p.relative_to(root).as_posix(), file_sha256(p))
                       for root in roots if root.is_dir() for p in sorted(root.rglob("*.py"))])
    return file_sha256(origin) if origin and Path(origin).is_file() else None


def trainer_identity(trainer: Mapping[str, Any]) -> dict[str, Any]:
    """The trainer's settings that change the weights (TRAINER_NUMERIC_KEYS), each spelling of one setting written
    one way (``32`` is ``32-true``; a clipping value of 0 clips nothing, as null does); ``lr_schedule`` only when
    it is not the default cosine, so that earlier keys stay valid."""
    settings = {k: trainer.get(k) for k in TRAINER_NUMERIC_KEYS}
    if settings["precision"] is not None:
        precision = str(settings["precision"])
        settings["precision"] = PRECISION_ALIASES.get(precision, precision)
    for name in ("gradient_clip_val", "weight_decay"):  # 1 and 1.0 are one value
        if settings[name] is not None:
            settings[name] = float(settings[name])
    if not settings["gradient_clip_val"]:
        settings["gradient_clip_val"] = None
    if (settings["lr_schedule"] or DEFAULT_LR_SCHEDULE) == DEFAULT_LR_SCHEDULE:
        del settings["lr_schedule"]  # keyed only when another: the keys of earlier runs (all cosine) stay valid
    return settings


def weight_changing_callbacks(callbacks: Mapping[str, Any] | None) -> dict[str, Any]:
    """The configured callbacks that may change the weights, with their settings: all but DISPLAY_CALLBACKS and
    classes that declare ``changes_weights = False`` (a callback that only prints or logs)."""
    kept = {}
    for name, entry in sorted((callbacks or {}).items()):
        if not isinstance(entry, Mapping):
            continue
        target = str(entry.get("_target_") or "")
        module, _, cls = target.rpartition(".")
        if cls in DISPLAY_CALLBACKS and module.startswith(_DISPLAY_MODULES):
            continue
        if _declares_display_only(module, cls):
            continue
        kept[name] = dict(entry)
    return kept


def _declares_display_only(module: str, cls: str) -> bool:
    """Whether the class says it changes no weight (``changes_weights = False``); a class that cannot be imported
    says nothing (the cell fails to build it)."""
    import importlib

    try:
        klass = getattr(importlib.import_module(module), cls)
    except Exception:  # noqa: BLE001 - any import error: the class cannot declare anything
        return False
    return getattr(klass, "changes_weights", True) is False


# optimizer arguments that choose a kernel, not the update: as trainer.fused_adamw, in no key
OPTIMIZER_KERNEL_ARGUMENTS = ("fused", "foreach", "capturable")


def optimizer_identity(spec: Mapping[str, Any]) -> dict[str, Any] | None:
    """``method.optimizer`` as keyed: its class by the module that defines it (``torch.optim.AdamW`` and
    ``torch.optim.adamw.AdamW`` are one class), without the settings at the class's defaults or choosing a
    kernel; None for AdamW at its defaults, which is the optimizer of a method without the block. A class that
    cannot be imported is keyed as written (validation refuses it before any key is made)."""
    import inspect

    from hydra.utils import get_class

    try:
        cls = get_class(str(spec.get("_target_")))
        defaults = {name: p.default for name, p in inspect.signature(cls).parameters.items()}
    except Exception:  # noqa: BLE001 - keyed as written; validation names the problem
        return dict(spec)

    def at_default(name: str, value: Any) -> bool:
        default = defaults.get(name, inspect.Parameter.empty)
        if isinstance(value, (list, tuple)) and isinstance(default, (list, tuple)):
            return list(value) == list(default)
        return default is not inspect.Parameter.empty and type(default) is not object and value == default

    settings = {str(k): v for k, v in spec.items() if not str(k).startswith("_")
                and k not in OPTIMIZER_KERNEL_ARGUMENTS and not at_default(str(k), v)}
    target = f"{cls.__module__}.{cls.__qualname__}"
    if target == "torch.optim.adamw.AdamW" and not settings:
        return None
    return {"_target_": target, **settings}


def optimizer_source(method: Mapping[str, Any]) -> Any:
    """The code of the method's optimizer class when it lies outside torch, whose version the key holds already
    (``external_code``; None: torch's, or no optimizer block)."""
    spec = method.get("optimizer")
    target = str(spec.get("_target_") or "") if isinstance(spec, Mapping) else ""
    return external_code(target) if "." in target and target.split(".")[0] != "torch" else None


def code_and_process_parts(config: Mapping[str, Any]) -> dict[str, Any]:
    """The parts of a training key that the config decides of the code that trains and the processes it trains
    in: the training code's version and its sources' hash when edited, the code of an optimizer or of
    weight-changing callbacks from outside torch and Lightning, and the processes when more than one (each in the
    key only when it matters, so that the keys of single-device runs without them stay as they were). A tuned
    rate's check before anything loads compares the same (tune.trained_with.check_tuned_under)."""
    world_size = planned_world_size(config["trainer"])
    edited = edited_sources(TRAINING_SOURCES, TRAINING_SOURCES_SHA256, TRAINING_CODE_VERSION)
    optimizer = optimizer_source(method_identity(config["method"]))
    sources = callback_sources(weight_changing_callbacks(config.get("callbacks")))
    return {"code": TRAINING_CODE_VERSION, **({"edited_sources": edited} if edited else {}),
            **({"optimizer_source": optimizer} if optimizer else {}),
            **({"world_size": world_size} if world_size > 1 else {}),
            **({"callback_sources": sources} if sources else {})}


def callback_sources(callbacks: Mapping[str, Any]) -> dict[str, Any]:
    """The code (``external_code``) of each weight-changing callback outside Lightning, whose version the key
    holds when one of its callbacks is configured (added_libraries): a callback edited in place trains other
    weights."""
    sources = {}
    for name, entry in callbacks.items():
        target = str(entry.get("_target_") or "")
        if "." in target and target.split(".")[0] not in ("lightning", "pytorch_lightning"):
            sources[name] = external_code(target)
    return sources


@functools.cache
def _distributions() -> Mapping[str, list[str]]:
    return metadata.packages_distributions()  # a scan of every installed distribution: once per process


def external_code(target: str) -> Any:
    """What decides the behaviour of a class from outside the libraries whose versions are keyed: the source of
    its top-level package (every Python file: the class may call its siblings), with the version of the
    distribution that installed it when one did (its compiled parts); a module of slm_sweep by its own file. A
    single-file module outside any distribution gives its file's hash alone. Hashed once per process, as the
    class's module is imported (here, when it is not yet): the cells of a one-process sweep run the class as first
    imported, so a later cell's key must not take in the file as edited since (forget_running_code: tests)."""
    if target not in _EXTERNAL_CODE:
        import importlib

        try:
            importlib.import_module(target.rpartition(".")[0])
        except Exception:  # noqa: BLE001 - the cell's own import of the class reports it, with its message
            pass
        _EXTERNAL_CODE[target] = _external_code(target)
    return _EXTERNAL_CODE[target]


def pin_outside_code(config: Mapping[str, Any]) -> None:
    """Import and hash (external_code) the code from outside torch and Lightning that a cell's config names, its
    callbacks' and its optimizer's, before any other check imports it: the key must name the code the process runs,
    which is the code as first imported (the preflight's and each cell's class checks import it before any key is
    computed, and a file edited in between was keyed as edited but ran as imported). Called by
    config.validate_config, the first step of every check and of every cell."""
    for entry in (config.get("callbacks") or {}).values():
        target = str(entry.get("_target_") or "") if isinstance(entry, Mapping) else ""
        if "." in target and target.split(".")[0] not in ("lightning", "pytorch_lightning"):
            external_code(target)
    method = config.get("method")
    if isinstance(method, Mapping) and isinstance(method.get("optimizer"), Mapping):
        target = str(method["optimizer"].get("_target_") or "")
        if "." in target and target.split(".")[0] != "torch":
            external_code(target)


def _external_code(target: str) -> Any:
    module = target.rpartition(".")[0]
    top = module.split(".")[0]
    if top == "slm_sweep":
        return module_source(module)
    source = module_source(top)
    names = _distributions().get(top) or []
    if not names:
        return source
    try:
        version = metadata.version(names[0])
    except metadata.PackageNotFoundError:
        return source
    return {"source": source, "distribution": names[0], "version": version}


def planned_world_size(trainer: Mapping[str, Any]) -> int:
    """How many processes training will run in, as Lightning counts its ``devices`` (``-1`` and ``auto``: every
    CUDA device when training on one). With several, the epoch's last step is cut to a multiple of them
    (slm_sweep.train.batching.step_groups), so the count is in the training key when it is more than one."""
    devices = trainer.get("devices", 1)
    if isinstance(devices, Sequence) and not isinstance(devices, str):  # a list, also as an OmegaConf node
        count = len(devices)
    elif isinstance(devices, str) and "," in devices:
        count = len([d for d in devices.split(",") if d.strip()])
    elif str(devices) in ("-1", "auto"):
        import torch

        on_cuda = str(trainer.get("accelerator") or "auto") in ("auto", "gpu", "cuda") and torch.cuda.is_available()
        count = torch.cuda.device_count() if on_cuda else 1
    else:
        count = int(devices)
    return max(count, 1) * int(trainer.get("num_nodes") or 1)


def strategy_family(trainer: Mapping[str, Any]) -> str | None:
    """The family of ``trainer.strategy`` when it computes otherwise than plain training (one device) or DDP
    (several): ``fsdp`` (Lightning gives any FSDP strategy its own precision plugin, whose bf16-mixed casts the
    parameters, gradients and buffers to bf16 where DDP and one device autocast over float32 weights, on one
    device too), ``deepspeed`` (likewise), or another strategy's name; None for DDP, ``auto`` and
    ``single_device``. Keyed whatever the device count, so that a one-GPU FSDP run (``trainer=fsdp`` with its
    ``devices: -1`` on a one-GPU node, ``fsdp_cpu_offload``) is not taken for plain training; the keys of
    single-device and DDP runs stay as they were."""
    strategy = str(trainer.get("strategy") or "auto")
    if strategy in ("auto", "single_device") or strategy.startswith("ddp"):
        return None
    return next((family for family in ("fsdp", "deepspeed") if strategy.startswith(family)), strategy)


def added_libraries(config: Mapping[str, Any], callbacks: Mapping[str, Any] | None = None) -> tuple[str, ...]:
    """The distributions beyond NUMERIC_LIBRARIES whose version changes this cell's weights: Lightning's when a
    weight-changing callback of its own is configured (``callbacks``: weight_changing_callbacks), bitsandbytes
    when ``model.quantization`` loads the weights with it. In the key only then, so that other keys stay valid."""
    added = []
    tops = {str(entry.get("_target_") or "").split(".")[0] for entry in (callbacks or {}).values()}
    if "lightning" in tops:
        added.append("lightning")
    if "pytorch_lightning" in tops:
        added.append("pytorch-lightning")
    quantization = (config.get("model") or {}).get("quantization")
    if isinstance(quantization, Mapping) and "BitsAndBytes" in str(quantization.get("_target_") or ""):
        added.append("bitsandbytes")
    return tuple(added)


def method_eval_identity(method: Mapping[str, Any]) -> dict[str, Any]:
    """The method's settings that shape the scored prompts (METHOD_EVAL_KEYS), each default spelt out keyed as
    when unset, in the way that keeps the keys of the shipped configs: ``shot_seed`` without shots is null (no
    shot is drawn); a trained method, scored as trained and without shots (config validation refuses others),
    keys ``num_fewshot: 0`` as unset and leaves ``prompt_format: as_trained`` out (the prompt keys are in the key
    only when set: older keys stay valid)."""
    shots = int(method.get("num_fewshot") or 0)
    keyed: dict[str, Any] = {"name": method["name"]}
    for key in METHOD_EVAL_KEYS:
        value = method.get(key)
        if key == "shot_seed" and not shots:
            value = None
        if method.get("train") and ((key == "num_fewshot" and not value) or
                                    (key == "prompt_format" and value == "as_trained")):
            value = None
        if key not in METHOD_PROMPT_KEYS or value is not None:
            keyed[key] = value
    return keyed


def scored_as_trained(method: Mapping[str, Any]) -> bool:
    """Whether the method's prompts are those of trained cells (``prompt.style``, ``prompt.system``), not one of
    lm-eval's few-shot formats, which read neither."""
    return (method.get("prompt_format") or "as_trained") == "as_trained"


def prompt_matters(method: Mapping[str, Any]) -> bool:
    """Whether the prompt settings shape the cell: its training, or the prompts it is scored on."""
    return bool(method.get("train")) or scored_as_trained(method)


def is_seed_independent(method: Mapping[str, Any]) -> bool:
    """Nothing trained and no seeded draw: the same result for every run seed."""
    if method.get("train"):
        return False
    return not method.get("num_fewshot") or method.get("shot_seed") is not None


def method_identity(method: Mapping[str, Any]) -> dict[str, Any]:
    """The method's settings as keyed: a list of ``target_modules`` (top level and in ``peft``) sorted and without
    repeats, since peft reads it as a set, so that both orders of one configuration share its keys; a null
    ``optimizer`` or an empty ``lr_scale`` (AdamW, one rate) left out as when unset, and factors as floats."""
    def as_set(value: Any) -> Any:
        return sorted(set(map(str, value))) if isinstance(value, (list, tuple)) else value

    method = dict(method)
    if isinstance(method.get("lr_scale"), Mapping):  # a factor of 1 is no factor
        method["lr_scale"] = {str(k): float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v
                              for k, v in sorted(method["lr_scale"].items()) if v != 1}
    if isinstance(method.get("optimizer"), Mapping):
        method["optimizer"] = optimizer_identity(method["optimizer"])
    for key in ("optimizer", "lr_scale"):
        if key in method and not method[key]:
            del method[key]
    if "target_modules" in method:
        method["target_modules"] = as_set(method["target_modules"])
    if isinstance(method.get("peft"), Mapping) and "target_modules" in method["peft"]:
        method["peft"] = {**method["peft"], "target_modules": as_set(method["peft"]["target_modules"])}
    return method


def prompt_identity(prompt: Mapping[str, Any] | None, auto_style: str | None) -> dict[str, Any]:
    """The prompt settings as keyed: a ``prompt.style`` that ``auto`` chooses for this tokenizer (``auto_style``,
    chat or plain) is keyed as ``auto``, so that both spellings of one configuration share its keys; the plain
    style renders no system message (data.prompts.build_prompt), so there ``prompt.system`` is keyed as null."""
    prompt = dict(prompt or {})
    style = prompt.get("style") or "auto"
    if (auto_style if style == "auto" else style) == "plain" or not prompt.get("system"):
        prompt["system"] = None  # an empty message renders none either (data.prompts.build_prompt)
    if auto_style is not None and style == auto_style:
        prompt["style"] = "auto"
    return prompt


def auto_prompt_style(cfg: Any) -> str | None:
    """The style ``prompt.style=auto`` renders for this model, looked up (from its tokenizer alone) only where
    the prompt shapes the cell and the config names a style explicitly or a system message (which the plain
    style leaves out); None otherwise."""
    from omegaconf import OmegaConf

    prompt = cfg.get("prompt") or {}
    style = str(prompt.get("style") or "auto")
    if (style == "auto" and not prompt.get("system")) or not prompt_matters(cfg.method):
        return None
    model = json.dumps(OmegaConf.to_container(cfg.model, resolve=True), sort_keys=True)
    return _auto_style(model, str(cfg.cache_dir) if cfg.get("cache_dir") else None, style)


@functools.lru_cache(maxsize=8)
def _auto_style(model: str, cache_dir: str | None, style: str) -> str:
    """What ``auto`` renders for the model (a config as JSON), once per process: the preflight, the tuned-rate
    check and the identity all ask."""
    from slm_sweep.data.prompts import resolve_style
    from slm_sweep.models import load_tokenizer

    tokenizer = load_tokenizer(json.loads(model), cache_dir=Path(cache_dir).expanduser() if cache_dir else None)
    resolve_style(style, tokenizer)  # a style this tokenizer cannot render fails here, before anything runs
    return resolve_style("auto", tokenizer)


def cell_identity(config: Mapping[str, Any], *, model: Mapping[str, Any], train: Sequence, val: Sequence,
                  test: Sequence, ood: Mapping[str, Sequence], eval_dtype: str,
                  auto_style: str | None = None) -> CellIdentity:
    """Both keys of a cell from its resolved config, the model's identity and the data it reads.

    ``eval_dtype`` is the dtype generation will run in (``eval.dtype`` resolved for this machine); ``auto_style``
    the style ``prompt.style=auto`` renders for this model's tokenizer (None: not looked up, when the config
    says auto or the prompt does not matter).
    """
    from slm_sweep.data.specs import dataset_spec
    from slm_sweep.scoring import metric_module_names

    method = method_identity(config["method"])
    trains = bool(method.get("train"))
    prompt = prompt_identity(config.get("prompt"), auto_style)
    seed = int(config["seed"])
    training = None
    if trains:
        from slm_sweep.data.specs import dedup_settings

        trainer = config["trainer"]
        strategy = strategy_family(trainer)
        callbacks = weight_changing_callbacks(config.get("callbacks"))
        training = {
            **code_and_process_parts(config),
            "libraries": numeric_versions(*added_libraries(config, callbacks)),
            "model": model,
            "method": {k: v for k, v in method.items() if k not in METHOD_EVAL_KEYS},
            "data": {"train": fingerprint(train), "val": fingerprint(val)},
            # which sets training was deduplicated against (and how closely): fixed per dataset, never eval.ood_sets
            "dedup": dedup_settings(config["dataset"]),
            "prompt": prompt,
            "trainer": trainer_identity(trainer),
            "seed": seed,
            # in the key only when they matter, so that the keys of single-device runs without such callbacks
            # stay as they were
            **({"strategy": strategy} if strategy else {}),
            **({"callbacks": callbacks} if callbacks else {}),
        }
    training_key = digest(training) if training else None
    shots = int(method.get("num_fewshot") or 0)
    eval_cfg = config["eval"]
    edited = edited_sources(SCORING_SOURCES, SCORING_SOURCES_SHA256, SCORING_VERSION)
    evaluation = {
        "scoring": SCORING_VERSION,
        **({"edited_sources": edited} if edited else {}),
        "weights": training_key or {"model": model, "libraries": numeric_versions(*added_libraries(config))},
        "method": method_eval_identity(method),
        "shot_pool": fingerprint(train) if shots else None,
        # prompt.style and prompt.system shape the prompts only of methods prompted as trained cells are
        "prompt": prompt if scored_as_trained(method) else None,
        "eval": {**{k: eval_cfg.get(k) for k in EVAL_SCORING_KEYS}, "stop": stop_strings(eval_cfg.get("stop")),
                 "dtype": eval_dtype,
                 **metric_modules_identity(metric_module_names(eval_cfg.get("metric_modules")))},
        "test": fingerprint(test),
        "ood": {name: fingerprint(examples) for name, examples in sorted(ood.items())},
        # how closely a number must match: the dataset's own setting, and each out-of-domain set's
        "tolerance": {"test": config["dataset"].get("answer_tolerance"),
                      **{name: dataset_spec(name).get("answer_tolerance") for name in sorted(ood)}},
        # a seed that draws the shots (shot_seed null) changes the prompts; a trained cell's is in its weights
        "seed": None if is_seed_independent(method) else seed,
    }
    unseeded = {**evaluation, "seed": None,
                 "weights": digest({**training, "seed": None}) if training else evaluation["weights"]}
    return CellIdentity(training_key, digest(evaluation), digest(unseeded),
                        {"training": training, "evaluation": evaluation})
