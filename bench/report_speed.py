"""Time ``python -m slm_sweep.report`` on a synthetic sweep of the study's grid (``experiment=paper``).

Builds a sweep folder of experiment=paper's shape in a temporary folder (or ``--keep DIR``): every model x method x
dataset x seed of slm_sweep/conf/experiment/paper.yaml, each cell scored on its dataset's test split and on every
out-of-domain set of the experiment, at the sets' real sizes (``--questions N`` caps each set at N questions). A
cell's files are written as run.py writes them: its record starts as ``run._base_record`` of the composed config
(``experiment=paper``, the seed set as the sweep sets it), its predictions are the evaluator's rows scored by
``slm_sweep.scoring.score``, ``results.write_predictions`` and ``results.write_result`` write them, and the seed-
independent baselines of seeds after the first are copies made by ``run._reuse``, as a sweep reuses them. Whether
a question is answered right is drawn at random (``--rng-seed``): per model, dataset and method an accuracy of 2 to
40 % in-domain (out-of-domain sets easier or harder, at most 60 %), moved per seed for the trained methods,
questions of one set sharing a difficulty so that cells agree on the easy ones as real cells do; right answers in
the styles the metrics read differently (``#### N``, prose, prose with a closing check).

It then runs the report (``slm_sweep.report.__main__.main``: tables, paired tests, the study's claims, plots)
on it in this process, and prints its wall and CPU time, the wall time split by phase (the paired tests summed
over the threads that run them side by side), against a baseline measured in the same run:
``json.loads`` of every result.json and of every line of every predictions.jsonl, the least any report has to do
to read what it reports on.

    python bench/report_speed.py                       # the paper's grid: 5 models x 7 methods x 2 datasets x 3 seeds
    python bench/report_speed.py --models 2 --questions 50 --keep /tmp/sweep
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import hashlib
import io
import json
import os
import random
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from slm_sweep.arguments import at_least  # noqa: E402

CONF_DIR = REPO / "slm_sweep" / "conf"
PAPER = CONF_DIR / "experiment" / "paper.yaml"
# Questions each set scores: GSM8K's test split, OrcaMath's held-out test_size, and what slm_sweep.data.load_eval_set
# reads of each out-of-domain set from the local copies (rows without a numeric reference left out)
SET_SIZES = {"gsm8k": 1319, "orcamath": 1000, "svamp": 1000, "gsm_hard": 1319, "mawps_addsub": 395,
             "mawps_singleeq": 508, "mawps_singleop": 562, "multiarith": 600}
# Parameter counts of the paper's models (the summary's size column and the claims' params_below read them)
PARAMS = {"smollm135": 134_515_008, "gemma270": 268_098_176, "smollm360": 361_821_120, "qwen05": 494_032_768,
          "llama1b": 1_235_814_400}
# The accuracy a model reaches on GSM8K with 5-shot prompts, and each method's factor on it (full fine-tuning hurts
# the smallest models), each out-of-domain set's factor on the in-domain accuracy: numbers of the size the study
# reports, so that the tests meet differences of every size
MODEL_ACCURACY = {"smollm135": 0.04, "gemma270": 0.08, "smollm360": 0.15, "qwen05": 0.28, "llama1b": 0.34}
METHOD_FACTOR = {"zeroshot": 0.55, "zeroshot_instructed": 0.65, "fewshot": 1.0, "fewshot_chat": 0.95,
                 "full": 0.85, "lora": 1.1, "dora": 1.12}
DATASET_FACTOR = {"gsm8k": 1.0, "orcamath": 0.8}
OOD_FACTOR = {"svamp": 1.3, "gsm_hard": 0.35, "mawps_addsub": 1.6, "mawps_singleeq": 1.6, "mawps_singleop": 1.8,
              "multiarith": 1.5}
SEED_SPREAD = 0.015  # standard deviation of a trained seed's accuracy around its method's
SHARED_DIFFICULTY = 0.6  # the chance that a question's answer follows its set-wide difficulty, not the cell's luck


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=at_least(1), default=None,
                        help="the first N models of experiment=paper (default: all 5)")
    parser.add_argument("--seeds", type=at_least(1), default=None,
                        help="seeds 0..N-1 (default: experiment=paper's 3)")
    parser.add_argument("--questions", type=at_least(2), default=None,
                        help="at most N questions per set (default: each set's real size)")
    parser.add_argument("--rng-seed", type=int, default=0, help="seed of the drawn answers")
    parser.add_argument("--keep", metavar="DIR", default=None,
                        help="build the sweep in DIR (a new or empty folder) and keep it, the report in DIR/report")
    parser.add_argument("--no-plots", action="store_true", help="time the report without its plots")
    parser.add_argument("--cpus", type=at_least(1), default=None,
                        help="run on the first N CPUs this process may use (the report's paired tests use as many "
                             "threads as it has CPUs)")
    parser.add_argument("--profile", metavar="FILE", default=None,
                        help="write a cProfile of the report (pstats format) to FILE: of its main thread, where the "
                             "paired tests run with --cpus 1")
    return parser.parse_args(argv)


# ---------------------------------------------------------------- the grid


@dataclass(frozen=True)
class Grid:
    models: tuple[str, ...]
    methods: tuple[str, ...]
    datasets: tuple[str, ...]
    seeds: tuple[int, ...]
    ood_sets: tuple[str, ...]

    def cells(self):
        """(seed, model, method, dataset) in a Hydra sweep's job order: the first key varies slowest."""
        for seed in self.seeds:
            for model in self.models:
                for method in self.methods:
                    for dataset in self.datasets:
                        yield seed, model, method, dataset

    def __len__(self) -> int:
        return len(self.seeds) * len(self.models) * len(self.methods) * len(self.datasets)


def paper_grid(models: int | None = None, seeds: int | None = None) -> Grid:
    """experiment=paper's sweep, its first ``models`` models and ``seeds`` seeds."""
    from omegaconf import OmegaConf

    paper = OmegaConf.load(PAPER)
    params = paper.hydra.sweeper.params

    def listed(key: str) -> list[str]:
        return [item.strip() for item in str(params[key]).split(",")]

    all_models, all_seeds = listed("model"), [int(s) for s in listed("seed")]
    for name, asked, available in (("--models", models, all_models), ("--seeds", seeds, all_seeds)):
        if asked is not None and asked > len(available):
            raise ValueError(f"{name} {asked}: experiment=paper has {len(available)} ({', '.join(map(str, available))})")
    return Grid(tuple(all_models[:models]), tuple(listed("method")), tuple(listed("dataset")),
                tuple(all_seeds[:seeds]), tuple(paper.eval.ood_sets))


# ---------------------------------------------------------------- answers


@dataclass
class QuestionSet:
    """One evaluation set's questions, with the evaluator's scored row of each answer style per question."""

    name: str
    difficulty: list[float]
    rows: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # style -> one row per question


# how a right answer reads: every metric reads "####"; strict reads no prose; only lenient reads past a closing check
RIGHT_STYLES = ("marked", "prose", "checked")
WRONG = "wrong"


def _output(style: str, index: int, reference: str) -> str:
    working = (f"First we find how many there are in each group: {index % 7 + 2} groups of {index % 11 + 3}. "
               f"Then we add what is left over and take away what was given away. ")
    if style == "marked":
        return f"{working}The total is {reference}.\n#### {reference}"
    if style == "prose":
        return f"{working}So the answer is {reference}."
    if style == "checked":
        return f"{working}So the answer is {reference}.\n\n(Check: {reference} - {index} = {int(reference) - index}.)"
    return f"{working}I am not sure.\n#### {int(reference) + 1}"


def question_set(name: str, size: int, rng_seed: int) -> QuestionSet:
    """``size`` questions of set ``name``, each answer style scored as the evaluator scores an output."""
    from slm_sweep.data import dataset_spec
    from slm_sweep.scoring import score

    rng = random.Random(f"{rng_seed}-{name}")
    tolerance = dataset_spec(name).get("answer_tolerance")
    questions = QuestionSet(name, [rng.random() for _ in range(size)])
    filler = ("A farmer has some baskets of apples and gives part of them to the neighbours on the way to the "
              "market, where the rest are sold at a fixed price each. ")
    for style in (*RIGHT_STYLES, WRONG):
        questions.rows[style] = []
    for index in range(size):
        reference = str(rng.randint(2, 5000))
        question = f"{name} question {index}: {filler[:80 + index % 60]}How many are left?"
        for style in (*RIGHT_STYLES, WRONG):
            output = _output(style, index, reference)
            questions.rows[style].append({"eval_set": name, "index": index, "question": question,
                                          "reference": reference, "output": output,
                                          **score(output, reference, tolerance)})
    return questions


def accuracy(model: str, method: str, dataset: str, eval_set: str) -> float:
    level = MODEL_ACCURACY[model] * METHOD_FACTOR[method] * DATASET_FACTOR[dataset] * OOD_FACTOR.get(eval_set, 1.0)
    return min(max(level, 0.02), 0.6)


def styles_of(method: str, dataset: str) -> tuple[float, float, float]:
    """The chance of each of RIGHT_STYLES for a right answer: trained cells answer as their data does (GSM8K's
    "####", OrcaMath's prose), prompted ones mostly in prose."""
    if method in ("full", "lora", "dora"):
        return (0.9, 0.08, 0.02) if dataset == "gsm8k" else (0.05, 0.75, 0.2)
    if method.startswith("fewshot"):
        return 0.7, 0.25, 0.05
    return 0.2, 0.6, 0.2


def answers(questions: QuestionSet, level: float, styles: tuple[float, float, float],
            rng: random.Random) -> list[dict[str, Any]]:
    """One scored row per question: right with chance ``level``, mostly on the set's easier questions."""
    rows = []
    for index, difficulty in enumerate(questions.difficulty):
        draw = difficulty if rng.random() < SHARED_DIFFICULTY else rng.random()
        style = rng.choices(RIGHT_STYLES, styles)[0] if draw < level else WRONG
        rows.append(questions.rows[style][index])
    return rows


# ---------------------------------------------------------------- cells


def _key(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()


def _set_scores(rows: Sequence[dict[str, Any]], rng: random.Random) -> dict[str, Any]:
    """What evaluate() returns of a set: each metric's accuracy, n_eval, truncated_fraction and the set's figures."""
    from slm_sweep.scoring import METRICS, accuracy_key

    n = len(rows)
    seconds = rng.uniform(20, 200) * n / 1000
    tokens = int(n * rng.uniform(120, 300))
    return {**{accuracy_key(name): sum(r[f"correct_{name}"] for r in rows) / n for name in METRICS},
            "n_eval": n, "truncated_fraction": rng.uniform(0, 0.05), "eval_time_s": seconds,
            "eval_new_tokens": tokens, "eval_tokens_per_s": tokens / seconds, "eval_oom_halvings": 0}


# A trained cell's training examples at experiment=paper: GSM8K's 7473 less its 500 validation ones and those removed
# as repeats of evaluation questions; OrcaMath's train_limit keeps as many
TRAIN_SPLIT = 6954


def training_figures(cfg, rng: random.Random) -> dict[str, Any]:
    """What run.py's training stage records of a finished training: every key of ``run.TRAINING_METRICS``, drawn at
    figures of the config's trainer settings. A key drawn nothing for here is recorded as None, as run.py records a
    figure it could not measure."""
    from slm_sweep.run import TRAINING_METRICS

    steps, batch = int(cfg.trainer.max_steps), int(cfg.trainer.batch_size)
    too_long = rng.uniform(0, 0.01)
    step_time = rng.uniform(0.2, 2.0)
    tokens = int(steps * batch * rng.uniform(180, 260))
    train_loss = rng.uniform(0.3, 0.9)
    drawn = {
        "train_time_s": steps * step_time + rng.uniform(20, 120),  # compilation and warm-up steps on top
        "final_validation_s": rng.uniform(2, 30), "train_loss": train_loss, "val_loss": rng.uniform(0.4, 1.0),
        "train_steps": steps, "train_tokens": tokens, "train_tokens_per_s": tokens / (steps * step_time),
        "mfu": rng.uniform(0.1, 0.4), "step_time_s": step_time, "train_padding_fraction": rng.uniform(0.05, 0.25),
        "train_oom_halvings": 0, "train_grad_norm_median": rng.uniform(0.2, 2.0),
        "train_clipped_fraction": rng.uniform(0, 0.3), "train_loss_tail_mean": train_loss * rng.uniform(0.9, 1.1),
        "train_examples": round(TRAIN_SPLIT * (1 - too_long)), "train_too_long_fraction": too_long,
        "throughput_warmup_steps": int(cfg.trainer.throughput_warmup_steps),
        "train_peak_memory_mb": rng.uniform(2_000, 60_000),
    }
    return {key: drawn.get(key) for key in TRAINING_METRICS}


class SweepBuilder:
    """Writes the cells of a grid into ``root/<job number>/``, as a Hydra sweep of experiment=paper lays them."""

    def __init__(self, root: Path, grid: Grid, questions: int | None = None, rng_seed: int = 0):
        self.root, self.grid, self.rng_seed = root, grid, rng_seed
        sizes = {name: min(SET_SIZES[name], questions or SET_SIZES[name])
                 for name in (*grid.datasets, *grid.ood_sets)}
        self.sets = {name: question_set(name, size, rng_seed) for name, size in sizes.items()}
        self.computed: dict[tuple, Path] = {}  # a seed-independent baseline's folder, per model x method x dataset
        self.configs: dict[tuple, Any] = {}  # the composed config of each model x method x dataset
        self.claims_metrics: dict[str, str] = {}
        self.rows = 0  # prediction rows written, copies included
        self.copies = 0

    def _config(self, model: str, method: str, dataset: str):
        if (model, method, dataset) not in self.configs:
            from hydra import compose

            # the rates are the methods' own: the tuned table is empty until a search has run (result.json says so)
            self.configs[model, method, dataset] = compose(
                config_name="config", overrides=["experiment=paper", f"model={model}", f"method={method}",
                                                 f"dataset={dataset}", "tuning.lr=method"])
        return self.configs[model, method, dataset]

    def _claims_metric(self, name: str) -> str:
        """What run.py records as an out-of-domain set's claims metric, read once per set."""
        if name not in self.claims_metrics:
            from slm_sweep.run import eval_set_claims_metric

            self.claims_metrics[name] = eval_set_claims_metric(name)
        return self.claims_metrics[name]

    def build(self) -> dict[str, int]:
        from hydra import initialize_config_dir

        import slm_sweep  # noqa: F401  registers the typed settings conf/config.yaml composes first

        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            for job, cell in enumerate(self.grid.cells()):
                self.write_cell(self.root / str(job), *cell)
        return {"cells": len(self.grid), "computed": len(self.grid) - self.copies, "copies": self.copies,
                "prediction_rows": self.rows}

    def write_cell(self, out: Path, seed: int, model: str, method: str, dataset: str) -> Path:
        from omegaconf import OmegaConf

        from slm_sweep.identity import SCORING_SOURCES_SHA256, is_seed_independent
        from slm_sweep.results import (
            describe_predictions,
            now_iso,
            redact,
            write_predictions,
            write_result,
        )
        from slm_sweep.run import _base_record, _reuse
        from slm_sweep.scoring import ACCURACY_KEYS
        from slm_sweep.tune.cell_rate import resolve_lr

        cfg = self._config(model, method, dataset).copy()
        cfg.seed = seed  # as the sweep's seed=N override sets it
        learning_rate = resolve_lr(cfg)
        resolved = OmegaConf.to_container(cfg, resolve=True)
        record = _base_record(cfg, redact(resolved))
        record["learning_rate"] = learning_rate
        trained = bool(cfg.method.train)
        independent = is_seed_independent(resolved["method"])
        run_seed = None if independent else seed
        scoring = max(SCORING_SOURCES_SHA256)
        eval_settings = {k: resolved["eval"][k] for k in ("max_new_tokens", "stop", "generation_config", "dtype")}
        record["identity"] = {
            "training_key": _key("training", model, method, dataset, seed) if trained else None,
            "evaluation_key": _key("evaluation", model, method, dataset, run_seed),
            "configuration_key": _key("configuration", model, method, dataset),
            "scored_with": {"scoring": scoring, **eval_settings}, "prompt_style": None,
            "parts": {"evaluation": {"scoring": scoring, "eval": {"split": "test", **eval_settings}}},
        }
        out.mkdir(parents=True, exist_ok=True)
        if independent and (model, method, dataset) in self.computed:
            # a later seed of a baseline: the sweep finds the computed cell by its evaluation key and copies it
            with contextlib.redirect_stdout(io.StringIO()):
                _reuse(self.computed[model, method, dataset], out, record)
            self.copies += 1
            self.rows += describe_predictions(out)["rows"]
            return out / "result.json"

        rng = random.Random(f"{self.rng_seed}-{model}-{method}-{dataset}-{run_seed}")
        shift = rng.gauss(0, SEED_SPREAD) if trained else 0.0
        styles = styles_of(method, dataset)
        size = PARAMS[model]
        adapter = size // 150 if method in ("lora", "dora") else 0
        # run._run_cell's figures of a method that trains nothing; a trained method's training stage replaces them
        metrics: dict[str, Any] = {
            "trainable_params": size if method == "full" else adapter, "total_params": size + adapter,
            "train_time_s": 0.0, "train_loss": None, "val_loss": None, "train_steps": 0, "train_tokens": 0,
            "train_tokens_per_s": None, "mfu": None,
        }
        if trained:  # drawn apart, so that the answers drawn below do not move with the training figures run.py has
            metrics.update(training_figures(cfg, random.Random(f"{self.rng_seed}-{model}-{method}-{dataset}-{seed}-"
                                                               "training")))
        record["metrics"] = metrics
        device = {"device": "cuda:0", "device_name": "NVIDIA H200"}
        record["placement"] = {"train": {**device, "precision": "bf16-mixed"} if trained else None,
                               "eval": {**device, "dtype": "float32"}}
        predictions: list[dict[str, Any]] = []
        for name in (dataset, *self.grid.ood_sets):
            level = max(0.0, accuracy(model, method, dataset, name) + shift)
            rows = answers(self.sets[name], level, styles, rng)
            predictions.extend(rows)
            scores = _set_scores(rows, rng)
            if name == dataset:
                metrics.update(scores)
            else:
                record["eval_sets"][name] = {**{k: scores[k] for k in (*ACCURACY_KEYS, "n_eval", "truncated_fraction",
                                                                       "eval_time_s", "eval_new_tokens",
                                                                       "eval_tokens_per_s", "eval_oom_halvings")},
                                             "claims_metric": self._claims_metric(name)}
        metrics["eval_time_all_sets_s"] = sum(s.get("eval_time_s", 0) for s in record["eval_sets"].values()) \
            + metrics["eval_time_s"]
        # the cell's peak, training included
        metrics["peak_memory_mb"] = max(rng.uniform(2_000, 40_000), metrics.get("train_peak_memory_mb") or 0)
        write_predictions(out, predictions)
        self.rows += len(predictions)
        record["status"] = "completed"
        record["files"] = {"predictions": describe_predictions(out)}
        record["finished_at"] = now_iso()
        path = write_result(out, record)
        if independent:
            self.computed[model, method, dataset] = out
        return path


def build_sweep(root: str | Path, *, models: int | None = None, seeds: int | None = None,
                questions: int | None = None, rng_seed: int = 0) -> dict[str, Any]:
    """Write a synthetic sweep of experiment=paper's shape into ``root``; returns its grid and counts."""
    grid = paper_grid(models, seeds)
    builder = SweepBuilder(Path(root), grid, questions, rng_seed)
    counts = builder.build()
    return {"grid": grid, "set_sizes": {name: len(s.difficulty) for name, s in builder.sets.items()}, **counts}


# ---------------------------------------------------------------- timing


def read_everything(root: Path) -> tuple[int, int]:
    """The baseline: json.loads of every result.json and of every predictions.jsonl line; (files, lines)."""
    files = lines = 0
    for path in sorted(root.rglob("result.json")):
        json.loads(path.read_text(encoding="utf-8"))
        files += 1
        predictions = path.parent / "predictions.jsonl"
        if predictions.is_file():
            with open(predictions, encoding="utf-8") as f:
                for line in f:
                    json.loads(line)
                    lines += 1
    return files, lines


class PhaseClock:
    """Seconds spent in named functions of the report's modules, patched in place while it runs."""

    def __init__(self):
        self.seconds: dict[str, float] = {}
        self.calls: dict[str, int] = {}
        self._undo: list[Callable[[], None]] = []
        self._lock = threading.Lock()

    def wrap(self, module, name: str, phase: str) -> None:
        original = getattr(module, name)

        @functools.wraps(original)
        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                with self._lock:  # the paired tests of a batch run in threads
                    self.seconds[phase] = self.seconds.get(phase, 0.0) + time.perf_counter() - start
                    self.calls[phase] = self.calls.get(phase, 0) + 1

        setattr(module, name, timed)
        self._undo.append(lambda: setattr(module, name, original))

    def __enter__(self) -> PhaseClock:
        import slm_sweep.report as report
        from slm_sweep.report import comparisons, plots

        # write_report's steps, as slm_sweep.report looks them up
        for name, phase in (("load_claims", "claims"), ("collect", "read"), ("summarize", "tables"),
                            ("summarize_ood", "tables"), ("check_claims", "claims"),
                            ("render_markdown", "write"), ("render_claims_markdown", "write"),
                            ("sweep_sections", "write"), ("write_csv", "write"), ("write_claims", "write"),
                            ("report_record", "write"), ("write_report_record", "write")):
            self.wrap(report, name, phase)
        self.wrap(plots, "write_plots", "plots")
        # within the tables and claims: reading each cell's per-question scores, and the paired tests
        self.wrap(comparisons, "question_scores", "per-question scores")
        self.wrap(comparisons, "paired_test", "paired tests")
        self.wrap(comparisons, "pooled_paired_test", "paired tests")
        return self

    def __exit__(self, *exc) -> None:
        for undo in reversed(self._undo):
            undo()


def time_report(sweep: Path, out: Path, plots: bool = True, profile: str | None = None) -> dict[str, Any]:
    """Run the report's command line on ``sweep`` into ``out``, in this process; its phases' seconds."""
    from slm_sweep.report.__main__ import main

    argv = [str(sweep), "--out", str(out), "--claims", *(["--no-plots"] if not plots else [])]
    profiler = None
    if profile:
        import cProfile

        profiler = cProfile.Profile()
    with PhaseClock() as clock, contextlib.redirect_stdout(io.StringIO()) as printed:
        start, cpu = time.perf_counter(), time.process_time()
        if profiler:
            profiler.enable()
        code = main(argv)
        if profiler:
            profiler.disable()
        total, cpu = time.perf_counter() - start, time.process_time() - cpu
    if profiler:
        profiler.dump_stats(profile)
    if code != 0:
        raise RuntimeError(f"the report exited with {code}: {printed.getvalue()[-2000:]}")
    return {"total": total, "cpu": cpu, "phases": clock.seconds, "calls": clock.calls,
            "output": printed.getvalue()}


def main(argv=None) -> int:
    from slm_sweep.report.comparisons import available_cpus

    args = parse_args(argv)
    try:
        grid = paper_grid(args.models, args.seeds)
    except ValueError as err:
        print(f"report_speed.py: error: {err}", file=sys.stderr)
        return 2
    if args.cpus is not None:
        allowed = sorted(os.sched_getaffinity(0))
        if args.cpus > len(allowed):
            print(f"report_speed.py: error: --cpus {args.cpus}: this process may use {len(allowed)}", file=sys.stderr)
            return 2
        os.sched_setaffinity(0, allowed[:args.cpus])
    if args.keep:
        root = Path(args.keep)
        if root.exists() and any(root.iterdir()):
            print(f"report_speed.py: error: --keep {root} is not empty; name a new or empty folder",
                  file=sys.stderr)
            return 2
        root.mkdir(parents=True, exist_ok=True)
    else:
        root = Path(tempfile.mkdtemp(prefix="report_speed-"))
    sweep, out = root / "sweep", root / "report"
    try:
        start = time.perf_counter()
        built = build_sweep(sweep, models=args.models, seeds=args.seeds, questions=args.questions,
                            rng_seed=args.rng_seed)
        build_s = time.perf_counter() - start
        size = sum(p.stat().st_size for p in sweep.rglob("*") if p.is_file())
        print(f"sweep: {len(grid.models)} models x {len(grid.methods)} methods x {len(grid.datasets)} datasets x "
              f"{len(grid.seeds)} seeds = {built['cells']} cells ({built['computed']} computed, {built['copies']} "
              f"baseline copies), {built['prediction_rows']} prediction rows, {size / 2**20:.0f} MiB; sets: "
              + ", ".join(f"{name} {n}" for name, n in built["set_sizes"].items()))
        print(f"built in {build_s:.1f} s: {sweep}")

        start = time.perf_counter()
        files, lines = read_everything(sweep)
        baseline = time.perf_counter() - start
        print(f"baseline (json.loads of {files} result.json and {lines} prediction lines): {baseline:.2f} s")

        timed = time_report(sweep, out, plots=not args.no_plots, profile=args.profile)
        print(f"report: {timed['total']:.2f} s wall ({timed['total'] / baseline:.1f}x the baseline), "
              f"{timed['cpu']:.2f} s CPU (all threads), on {available_cpus()} CPU{'s' if available_cpus() != 1 else ''}")
        order = ("read", "tables", "claims", "plots", "write", "per-question scores", "paired tests")
        for phase in order:
            if phase in timed["phases"]:
                within = {"per-question scores": "  (within tables and claims)",
                          "paired tests": "  (within tables and claims, summed over threads)"}.get(phase, "")
                print(f"  {phase:20s} {timed['phases'][phase]:8.2f} s  {timed['calls'][phase]:6d} calls{within}")
        accounted = sum(timed["phases"].get(p, 0.0) for p in order[:5])
        print(f"  {'other':20s} {timed['total'] - accounted:8.2f} s")
        if args.profile:
            print(f"profile: {args.profile}")
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
