"""One cell, from a composed config to a result record: validate, load, (train), evaluate, write, log.

``run(cfg)`` is what the Hydra entry point calls and what tests call directly. Whatever happens, the cell's
result.json says so: ``completed``, ``failed`` (with the error), ``diverged`` or ``interrupted``.
"""

from __future__ import annotations

import logging
import shutil
import time
import traceback
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from slm_sweep.config import validate_config
from slm_sweep.results import (
    PREDICTIONS_FILE,
    RESULT_FILE,
    SCHEMA_VERSION,
    git_commit,
    hardware_info,
    library_versions,
    now_iso,
    read_result,
    redact,
    write_predictions,
    write_result,
)
from slm_sweep.sweep.resume import cell_key, find_checkpoint, find_completed

log = logging.getLogger(__name__)


def _output_dir(out_dir: str | Path | None) -> Path:
    if out_dir is not None:
        return Path(out_dir)
    from hydra.core.hydra_config import HydraConfig

    return Path(HydraConfig.get().runtime.output_dir)


def _sweep_tag() -> str | None:
    """``sweep-<date>-<time>`` of the multirun this job belongs to, None for a single run."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        from slm_sweep.sweep.callbacks import sweep_tag

        hc = HydraConfig.get()
        if hc.mode == RunMode.MULTIRUN:
            return sweep_tag(hc.sweep.dir)
    except (ImportError, ValueError):
        pass
    return None


def global_rank() -> int:
    """This process's rank in a distributed run (0 when not distributed), from the launcher's environment."""
    import os

    for var in ("RANK", "LOCAL_RANK", "SLURM_PROCID"):
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var])
    return 0


def _resume_search_dir(cfg: DictConfig) -> Path | None:
    enabled = cfg.resume.enabled
    if enabled == "auto":
        enabled = _sweep_tag() is not None
    return Path(str(cfg.resume.search_dir)) if enabled else None


def _base_record(cfg: DictConfig, config: dict) -> dict[str, Any]:
    return {
        "schema_version": SCHEMA_VERSION,
        "status": "running",
        "error": None,
        "model": cfg.model.name,
        "model_id": str(cfg.model.get("id")),
        "method": cfg.method.name,
        "dataset": cfg.dataset.name,
        "seed": int(cfg.seed),
        "cell_key": cell_key(config),
        "metrics": {},
        "eval_sets": {},
        "reused_from": None,
        "skipped_rows": {},
        "placement": {"train": None, "eval": None},
        "config": config,
        "versions": library_versions(),
        "git_commit": git_commit(),
        "hardware": hardware_info(),
        "started_at": now_iso(),
        "finished_at": None,
    }


def run(cfg: DictConfig, out_dir: str | Path | None = None) -> dict[str, Any]:
    """Run one cell and return its result record (also written to ``out_dir/result.json``)."""
    validate_config(cfg)
    out = _output_dir(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config = redact(OmegaConf.to_container(cfg, resolve=True))
    record = _base_record(cfg, config)
    search_dir = _resume_search_dir(cfg)
    if global_rank() != 0:
        # Other ranks of a distributed run only join training; rank 0 evaluates and writes every file.
        _run_cell(cfg, out, record, None, [], search_dir, train_only=True)
        return record

    if search_dir is not None:
        previous = find_completed(search_dir, record["cell_key"], exclude=out)
        if previous is not None:
            return _reuse(previous, out, record)
    write_result(out, record)

    from slm_sweep.tracking import Tracker
    from slm_sweep.train.interrupt import CheckpointOnInterrupt, is_interrupt, sigterm_as_interrupt

    interrupt = CheckpointOnInterrupt(out / "checkpoints" / "last.ckpt")
    predictions: list[dict] = []
    tracker = None
    try:
        # inside the try: a tracker that cannot start fails the cell instead of leaving it "running"
        tracker = Tracker(cfg.logger, {**record, "sweep_tag": _sweep_tag()}, config, out)
        with sigterm_as_interrupt(interrupt):
            _run_cell(cfg, out, record, tracker, predictions, search_dir, callbacks=[interrupt])
        record["status"] = "completed"
        if not cfg.trainer.get("keep_checkpoints", False):
            shutil.rmtree(out / "checkpoints", ignore_errors=True)
    except BaseException as err:
        from slm_sweep.train.module import DivergedError

        if is_interrupt(err):
            record["status"] = "interrupted"
        elif isinstance(err, DivergedError):
            record["status"] = "diverged"
        else:
            record["status"] = "failed"
        record["error"] = f"{type(err).__name__}: {err}"
        record["traceback"] = traceback.format_exc()
        log.error("cell %s: %s", record["status"], record["error"])
        if not isinstance(err, Exception):
            # Ctrl-C, SIGTERM: stop the process (and the sweep) after recording it, with a failing exit status
            # (Lightning's SIGTERMException is a SystemExit without a code, which would exit with 0)
            if isinstance(err, SystemExit) and not err.code:
                raise SystemExit(f"cell interrupted: {record['error']}") from err
            raise
    finally:
        record["finished_at"] = now_iso()
        write_result(out, record)
        try:
            if tracker is not None:
                try:
                    tracker.log_result(record, predictions)
                finally:
                    tracker.finish(record["status"])
        finally:
            print(closing_line(record, out), flush=True)
    return record


def closing_line(record: dict[str, Any], out: Path) -> str:
    """The one line a cell ends with: what it was, how it ended, its scores and times, where its result is."""
    cell = f"{record['model']} x {record['method']} x {record['dataset']} seed {record['seed']}"
    metrics = record.get("metrics") or {}
    if record["status"] == "completed":
        prefix = "val_" if metrics.get("n_eval") is None and metrics.get("val_n_eval") is not None else ""

        def score(key: str) -> str:
            value = metrics.get(prefix + key)
            return "n/a" if value is None else f"{value:.3f}"

        scores = (f"{prefix}strict {score('accuracy_strict')} {prefix}flexible {score('accuracy_flexible')} "
                  f"(n={metrics.get(prefix + 'n_eval')})")
        times = f"train {metrics.get('train_time_s') or 0:.1f} s, eval {metrics.get('eval_time_s') or 0:.1f} s"
        middle = f"{scores} | {times}" + (" | reused" if record.get("reused_from") else "")
    else:
        middle = f"error: {record.get('error')}"
    return f"cell {record['status']}: {cell} | {middle} | {out / RESULT_FILE}"


def _reuse(previous: Path, out: Path, record: dict[str, Any]) -> dict[str, Any]:
    """Copy a finished cell's numbers into this cell's directory instead of computing them again."""
    source = read_result(previous)
    assert source is not None
    log.info("reusing the finished result in %s", previous)
    for key in ("status", "metrics", "eval_sets", "skipped_rows"):
        record[key] = source.get(key)
    record["reused_from"] = str(previous / "result.json")
    record["finished_at"] = now_iso()
    if (previous / PREDICTIONS_FILE).is_file():
        shutil.copyfile(previous / PREDICTIONS_FILE, out / PREDICTIONS_FILE)
    write_result(out, record)
    print(closing_line(record, out), flush=True)
    return record


def _run_cell(cfg: DictConfig, out: Path, record: dict, tracker, predictions: list[dict],
              search_dir: Path | None, train_only: bool = False, callbacks: list | None = None) -> None:
    import lightning as L

    from slm_sweep.data.encode import encode_all
    from slm_sweep.data.prompts import ShotSampler, resolve_style
    from slm_sweep.data.sources import load_eval_set, load_splits
    from slm_sweep.evaluate.evaluator import build_eval_prompts, evaluate
    from slm_sweep.models import (
        apply_method,
        count_parameters,
        load_model_and_tokenizer,
        merge_adapters_for_eval,
    )
    from slm_sweep.placement import resolve_device, resolve_placement, to_device, to_dtype

    method = cfg.method
    num_fewshot = int(method.get("num_fewshot") or 0)
    resolve_device(cfg.eval.get("device"))  # an eval.device that cannot work here fails before anything loads
    L.seed_everything(int(cfg.seed), workers=True, verbose=False)

    # lm-eval draws shots from the whole train split: carve no validation set when nothing is trained
    keep_val = method.train or cfg.eval.get("split", "test") == "val"
    dataset_cfg = cfg.dataset if keep_val else {**OmegaConf.to_container(cfg.dataset, resolve=True),
                                                    "val_size": None}
    splits = load_splits(dataset_cfg, data_root=cfg.get("data_root"), need_train=bool(method.train or num_fewshot))
    record["skipped_rows"] = dict(splits.skipped)
    ood_sets = {
        name: load_eval_set(name, data_root=cfg.get("data_root"), limit=cfg.eval.get("ood_limit"))
        for name in (cfg.eval.get("ood_sets") or [])
        if cfg.eval.get("split", "test") == "test"
    }

    shot_seed = method.get("shot_seed")
    # built before the model is loaded, so that a k larger than the train split fails at once
    sampler = ShotSampler(splits.train, num_fewshot, int(cfg.seed if shot_seed is None else shot_seed)) \
        if num_fewshot else None

    model, tokenizer = load_model_and_tokenizer(cfg.model, cache_dir=Path(str(cfg.cache_dir)).expanduser())
    model = apply_method(model, method)
    trainable, total = count_parameters(model)
    style = resolve_style(cfg.prompt.style, tokenizer)
    metrics: dict[str, Any] = {"trainable_params": trainable, "total_params": total, "train_time_s": 0.0,
                               "train_loss": None, "val_loss": None, "train_steps": 0, "train_tokens": 0,
                               "train_tokens_per_s": None, "mfu": None}
    record["metrics"] = metrics

    if method.train:
        from slm_sweep.train.fit import fit

        max_length = int(cfg.trainer.max_length)
        train = encode_all(tokenizer, splits.train, style, max_length, cfg.prompt.system)
        val = encode_all(tokenizer, splits.val, style, max_length, cfg.prompt.system)
        resume_from = find_checkpoint(search_dir, record["cell_key"], exclude=out) if search_dir else None
        outcome = fit(model, train, val, cfg.trainer, method, seed=int(cfg.seed), out_dir=out,
                      pad_token_id=tokenizer.pad_token_id, loggers=tracker.lightning_loggers if tracker else None,
                      resume_from=resume_from, extra_callbacks=callbacks)
        if train_only:
            return
        record["resumed_from_checkpoint"] = str(resume_from) if resume_from else None
        record["placement"]["train"] = outcome.placement
        metrics.update(train_time_s=outcome.train_time_s, train_loss=outcome.train_loss, val_loss=outcome.val_loss,
                       train_steps=outcome.train_steps, **outcome.perf)
        write_result(out, record)  # training is the expensive part: keep its numbers even if evaluation fails
    if train_only:
        return

    # Every method generates on the resolved device and dtype; adapters are merged there, in the weights' dtype.
    trained_on = (record["placement"]["train"] or {}).get("device")
    placement = resolve_placement(cfg.eval, model, trained_on=trained_on)
    model = to_dtype(merge_adapters_for_eval(to_device(model, placement.device)), placement.dtype)
    record["placement"]["eval"] = placement.describe()
    log.info("evaluating on %s (%s) in %s", placement.device, record["placement"]["eval"]["device_name"],
             record["placement"]["eval"]["dtype"])

    start = time.perf_counter()
    # eval.split=val scores the validation split (hyperparameter search) and never generates on the test split.
    on_val = cfg.eval.get("split", "test") == "val"
    examples = splits.val if on_val else splits.test
    prefix = "val_" if on_val else ""
    prompts = build_eval_prompts(tokenizer, examples, style, sampler, cfg.prompt.system)
    preds, scores = evaluate(model, tokenizer, examples, prompts, cfg.eval,
                             cfg.dataset.name + ("/val" if on_val else ""),
                             tolerance=cfg.dataset.get("answer_tolerance"), progress=bool(cfg.eval.progress))
    predictions.extend(preds)
    for key in ("accuracy_strict", "accuracy_flexible", "n_eval"):
        metrics[prefix + key] = scores.pop(key)
    metrics.update(scores)
    write_predictions(out, predictions)

    for name, examples in ood_sets.items():
        from slm_sweep.data.sources import dataset_spec

        prompts = build_eval_prompts(tokenizer, examples, style, sampler, cfg.prompt.system)
        preds, scores = evaluate(model, tokenizer, examples, prompts, cfg.eval, name,
                                 tolerance=dataset_spec(name).get("answer_tolerance"),
                                 progress=bool(cfg.eval.progress))
        predictions.extend(preds)
        record["eval_sets"][name] = {k: scores[k] for k in ("accuracy_strict", "accuracy_flexible", "n_eval")}
        metrics["eval_oom_halvings"] += scores["eval_oom_halvings"]
        write_predictions(out, predictions)
    metrics["eval_time_s"] = time.perf_counter() - start
    from slm_sweep.train.callbacks import peak_memory_mb

    metrics["peak_memory_mb"] = max(metrics.get("peak_memory_mb") or 0.0, peak_memory_mb())
