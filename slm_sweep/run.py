"""One cell, from a composed config to a result record, as stages that return values:

    validate -> load data -> identify (training key, evaluation key) -> reuse a finished cell?
      -> load model (+ method, or trained weights kept by an earlier run) -> train -> place -> evaluate -> write

``run(cfg)`` is what the Hydra entry point calls and what tests call directly. Once it starts, the cell records
how it ended (``completed``, ``failed`` with the error, ``diverged`` or ``interrupted``) in result.json, or in
result.failed.json beside a finished result. A config error that validation finds is raised in a single run
before anything is written; one found once the keys are known (``check_tuned_data``) is recorded as failed.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import time
import traceback
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from slm_sweep.config import (
    CHDIR_REFUSED,
    ConfigError,
    check_classes,
    use_metric_modules_checked,
    validate_config,
    validate_job_environment,
)
from slm_sweep.identity import CellIdentity, auto_prompt_style
from slm_sweep.results import (
    ATTEMPT_PROVENANCE_KEYS,
    EVAL_SET_FIGURES,
    FAILED_ATTEMPT_FILE,
    FAILED_ATTEMPT_LOGS,
    PER_ATTEMPT_KEYS,
    PREDICTIONS_FILE,
    RESULT_FILE,
    SCHEMA_VERSION,
    copy_atomically,
    damaged_names,
    describe_predictions,
    git_commit,
    git_dirty_files,
    global_rank,
    hardware_info,
    library_versions,
    now_iso,
    read_result,
    redact,
    set_aside_damaged,
    training_provenance,
    write_predictions,
    write_result,
)
from slm_sweep.sweep.resume import (
    CHECKPOINT,
    KEPT_WEIGHTS,
    divergence_history,
    find_checkpoint,
    find_completed,
    find_completed_training,
    find_diverged,
    find_trained,
    holds_divergence,
    keep_earlier_curves,
    kept_weights,
    own_checkpoint,
    search_dirs,
    set_aside_earlier,
    stamp_training_key,
    stamped_key,
)

log = logging.getLogger(__name__)

# What the training stage records in result.json's metrics; a cell that re-scores kept weights copies them.
TRAINING_METRICS = ("train_time_s", "final_validation_s", "train_loss", "val_loss", "train_steps", "train_tokens",
                    "train_tokens_per_s", "mfu", "step_time_s", "train_padding_fraction", "train_oom_halvings",
                    "train_grad_norm_median", "train_clipped_fraction", "train_loss_tail_mean", "train_examples",
                    "train_too_long_fraction", "throughput_warmup_steps", "train_peak_memory_mb")

ADAPTER_DIR, MODEL_DIR = KEPT_WEIGHTS


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


def _job_env_set() -> Any:
    """``hydra.job.env_set`` of the Hydra job this runs in, None outside one (a test calling ``run``)."""
    try:
        from hydra.core.hydra_config import HydraConfig

        return HydraConfig.get().job.get("env_set") if HydraConfig.initialized() else None
    except (ImportError, ValueError):
        return None


def _refuse_chdir() -> None:
    """``hydra.job.chdir=true`` is refused (CHDIR_REFUSED)."""
    try:
        from hydra.core.hydra_config import HydraConfig

        chdir = HydraConfig.initialized() and bool(HydraConfig.get().job.chdir)
    except (ImportError, ValueError):
        return
    if chdir:
        raise ConfigError(CHDIR_REFUSED)


def _sweep_dir() -> Path | None:
    """The directory of the multirun this job belongs to (absolute), None for a single run."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        hc = HydraConfig.get()
        if hc.mode == RunMode.MULTIRUN:
            return Path(str(hc.sweep.dir)).absolute()  # as Hydra writes it: a literal ~ is a folder name
    except (ImportError, ValueError):
        pass
    return None


def _resume_dirs(cfg: DictConfig, out: Path) -> list[Path]:
    """Where finished and interrupted runs of this cell are looked for: its own directory first, then its
    sweep's directory and ``resume.search_dir``. Empty when resuming is off."""
    enabled = cfg.resume.enabled
    if enabled == "auto":
        enabled = _sweep_dir() is not None
    if not enabled:
        return []
    searched = cfg.resume.search_dir
    searched = [searched] if isinstance(searched, str) else list(searched or [])
    return search_dirs(out, _sweep_dir(), *(Path(str(d)).expanduser().absolute() for d in searched))


def _resume_off(cfg: DictConfig) -> bool:
    """``resume.enabled=false``: no finished result is reused and no checkpoint resumed, the cell's own included.
    (``auto`` outside a sweep searches no other folder but resumes the cell's own checkpoint.)"""
    enabled = cfg.resume.enabled
    return enabled != "auto" and not enabled


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
        "identity": None,
        "metrics": {},
        "eval_sets": {},
        "reused_from": None,
        "resumed_from_checkpoint": None,
        "resumed_at_step": None,
        "checkpoint_step": None,
        "skipped_rows": {},
        "skipped_rows_asking_who": {},
        "dedup": None,
        "placement": {"train": None, "eval": None},
        "decoding": None,
        "prompt": None,
        "files": {"predictions": None},
        "config": config,
        "versions": library_versions(),
        "git_commit": git_commit(),
        "git_dirty_files": git_dirty_files(),
        "hardware": hardware_info(),
        "started_at": now_iso(),
        "finished_at": None,
    }


@dataclass
class CellData:
    """What a cell reads before any model is loaded."""

    splits: Any
    ood_sets: dict[str, list] = field(default_factory=dict)
    sampler: Any = None


def load_data(cfg: DictConfig) -> CellData:
    """The dataset's splits, the out-of-domain sets and the few-shot sampler; fails before any model loads."""
    from slm_sweep.data import load_eval_set, load_splits
    from slm_sweep.data.prompts import ShotSampler, shot_seed
    from slm_sweep.data.specs import train_split_use

    method = cfg.method
    num_fewshot = int(method.get("num_fewshot") or 0)
    on_val = cfg.eval.get("split", "test") == "val"
    need_train, deduplicate = train_split_use(method, cfg.eval.get("split"))
    # lm-eval draws shots from the whole train split: carve no validation set and apply no train_limit (a limit on
    # what is trained) when nothing is trained
    keep_val = method.train or on_val
    dataset_cfg = cfg.dataset if keep_val else {**OmegaConf.to_container(cfg.dataset, resolve=True),
                                                    "val_size": None, "train_limit": None}
    splits = load_splits(dataset_cfg, data_root=cfg.get("data_root"), need_train=need_train, deduplicate=deduplicate)
    ood_sets = {} if on_val else {
        name: load_eval_set(name, data_root=cfg.get("data_root"), limit=cfg.eval.get("ood_limit"))
        for name in (cfg.eval.get("ood_sets") or [])
    }
    sampler = ShotSampler(splits.train, num_fewshot, shot_seed(method, int(cfg.seed))) if num_fewshot else None
    return CellData(splits, ood_sets, sampler)


def identify(cfg: DictConfig, config: dict, data: CellData) -> CellIdentity:
    """The cell's training and evaluation keys (slm_sweep.identity), before any model is loaded. ``config``: the
    resolved config they are computed from, redacted with digests (``keyed_config``); one redacted for the record
    (``<redacted>``) would key every number under a credential-like name alike, an unredacted one a credential."""
    from slm_sweep.identity import cell_identity, model_identity
    from slm_sweep.placement import configured_dtype, dtype_name, resolve_device, resolve_dtype

    device = resolve_device(cfg.eval.get("device"))  # an eval.device that cannot work here fails here
    eval_dtype = dtype_name(resolve_dtype(cfg.eval.get("dtype"), device, configured_dtype(cfg.model)))
    on_val = cfg.eval.get("split", "test") == "val"
    return cell_identity(config, model=model_identity(config["model"]), train=data.splits.train,
                         val=data.splits.val, test=data.splits.val if on_val else data.splits.test,
                         ood=data.ood_sets, eval_dtype=eval_dtype, auto_style=auto_prompt_style(cfg))


def keyed_config(resolved: dict) -> dict:
    """The resolved config the cell's keys are computed from: each number or boolean under a credential-like name
    replaced by a hash of it (results.redact with digests), so that the keys tell such values apart (a PRNG
    ``key``) without holding them; a string there, which may be a credential, is ``<redacted>`` as recorded."""
    return redact(resolved, digests=True)


def run(cfg: DictConfig, out_dir: str | Path | None = None) -> dict[str, Any]:
    """Run one cell and return its result record (also written to ``out_dir/result.json``).

    A configuration error raises ConfigError before anything is written; in a sweep it fails this cell only
    (result.json says why), so that the other cells run and the sweep's summary names it. A folder another running
    launch holds (slm_sweep.folder_lock) raises FolderInUse in a single run, and in a sweep returns a failed record
    that is not written: that launch's files stay as they are.
    """
    from slm_sweep.identity import pin_running_code
    from slm_sweep.tune.cell_rate import resolve_lr

    pin_running_code()  # a no-op after the entry point's call: the code and git state of this process
    try:
        _refuse_chdir()
        validate_config(cfg)
        validate_job_environment(_job_env_set())
        use_metric_modules_checked(cfg)
        check_classes(cfg)
        learning_rate = resolve_lr(cfg)  # before the config is recorded: the rate trained with is in the identity
    except ConfigError as err:
        if _sweep_dir() is None:
            raise
        return _refused_cell(cfg, _output_dir(out_dir), err)
    out = _output_dir(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    config = redact(resolved)  # what is recorded and logged; the keys hash the numbers it redacts (keyed_config)
    keyed = keyed_config(resolved)
    record = _base_record(cfg, config)
    record["learning_rate"] = learning_rate
    dirs = _resume_dirs(cfg, out)
    if global_rank() != 0:
        # Other ranks of a distributed run only join training; rank 0 evaluates and writes every file.
        data = load_data(cfg)
        _run_cell(cfg, out, record, None, [], data, identify(cfg, keyed, data), dirs, train_only=True)
        return record

    from slm_sweep.folder_lock import RUN_SETTING, SWEEP_SETTING, FolderInUse, folder_lock

    held = contextlib.ExitStack()
    try:  # before anything is written here: another launch running this folder's cell owns its files
        held.enter_context(folder_lock(out, SWEEP_SETTING if _sweep_dir() is not None else RUN_SETTING))
    except FolderInUse as err:
        if _sweep_dir() is None:
            raise
        log.error("cell not run: %s", err)
        return {**record, "status": "failed", "error": str(err)}
    with held:
        return _run_here(cfg, out, record, config, keyed, learning_rate, dirs)


def _run_here(cfg: DictConfig, out: Path, record: dict[str, Any], config: dict, keyed: dict, learning_rate: Any,
              dirs: list[Path]) -> dict[str, Any]:
    """``run`` on the first (or only) process, holding the cell folder's lock: every stage, and the record of how
    the cell ended."""
    from slm_sweep.train.interrupt import CheckpointOnInterrupt, is_interrupt, sigterm_as_interrupt
    from slm_sweep.tune.trained_with import check_tuned_data

    # a result.json that cannot be read is renamed, not written over: what it held may still be recovered
    set_aside_damaged(out)
    interrupt = CheckpointOnInterrupt(out / "checkpoints" / "last.ckpt")
    predictions: list[dict] = []
    tracker = None
    loggers_tried = False
    reused: dict[str, Any] | None = None
    previous: Path | None = None
    set_aside = False
    # a SIGTERM (a scheduler's preemption, scancel) from here on is recorded as an interrupt, as Ctrl-C is: before
    # the cell's data is read, while its loggers start, and around training, where it also saves a checkpoint
    signals = contextlib.ExitStack()
    try:
        signals.enter_context(sigterm_as_interrupt(interrupt))
        if _sweep_dir() is None:  # a sweep's preflight checked its models before the first cell
            _check_model_readable(cfg)
        data = load_data(cfg)
        record["dedup"] = data.splits.dedup
        identity = identify(cfg, keyed, data)
        record["identity"] = identity.as_record()
        check_tuned_data(cfg, learning_rate, identity.parts.get("training"))
        # quantized weights generate in the dtypes they were loaded in (placement.resolve_placement)
        eval_dtype = None if cfg.model.get("quantization") else identity.eval_dtype
        retry = bool(cfg.resume.retry_diverged)
        # this folder's own divergence of this training stays its outcome, whatever another folder completed since
        keeps_divergence = bool(dirs) and cfg.method.train and not retry and \
            holds_divergence(out, identity.training_key)
        previous = out if keeps_divergence else \
            find_completed(dirs, identity.evaluation_key, own=out, eval_dtype=eval_dtype)
        # looked up before an earlier result in the same folder is set aside (its weights may be this cell's)
        trained = (find_trained(dirs, identity.training_key, own=out)
                   if cfg.method.train and previous is None and reloads_exactly(cfg.method) else None)
        trained_record = read_result(trained) if trained is not None else None
        # the weights a re-score loads, resolved once, here: if they are gone or replaced by the time they load,
        # the cell fails (it never scores a fresh adapter under the trained cell's key)
        trained_weights = kept_weights(trained, identity.training_key, trained_record) if trained else None
        # training that diverged under this training key is this cell's outcome too (copied from another folder),
        # not trained again until a retry is asked for (resume.retry_diverged=true) or a run of it completed (whose
        # kept weights, if any, were found above); the cell that trains again names the divergence
        copied_divergence = None
        if cfg.method.train and previous is None and trained is None and not retry:
            diverged = find_diverged(dirs, identity.training_key, own=out)
            if diverged is not None and find_completed_training(dirs, identity.training_key, own=out) is None:
                previous = copied_divergence = diverged
        # a result copied here from another folder takes the earlier run's kept weights aside with its result; a
        # finished result of this configuration that the cell computes again (resume.enabled=false, a single run
        # under auto) goes aside too, so that a rerun that fails loses nothing
        copying = previous is not None and previous.resolve() != out.resolve()
        aside = set_aside_earlier(out, identity.evaluation_key, identity.training_key, with_weights=copying,
                                  recomputing=previous is None)
        set_aside = True
        # a cell that trains, re-scores or copies a completed result of a training that diverged before (here or in a
        # folder it searches) names the divergence: the seed came out of a retry
        reuses_divergence = keeps_divergence or copied_divergence is not None
        if cfg.method.train and (previous is None or copying) and not reuses_divergence and \
                (history := divergence_history(out, dirs, identity.training_key)) is not None:
            record["retried_divergence"] = history
        # where the record of the run that trained the weights to re-score is now: moved aside with it when it was
        # this folder's, gone when it was an unfinished attempt here that this record replaces
        trained_result = None if trained is None else trained / RESULT_FILE
        if trained is not None and trained.resolve() == out.resolve():
            trained_result = aside / RESULT_FILE if aside is not None else None
        (out / FAILED_ATTEMPT_FILE).unlink(missing_ok=True)  # an earlier attempt's early failure is superseded
        if previous is None or previous.resolve() != out.resolve():
            # a predictions file left here is an unfinished attempt's (a finished one's went aside with its result)
            (out / PREDICTIONS_FILE).unlink(missing_ok=True)
        if previous is not None:
            reused = _reuse(previous, out, record)
            if reused is record:  # a copy made now: the dashboard gets a run for it, as for every other cell
                _track_short(cfg, reused, config, out)
            return reused
        # the attempts whose checkpoint in this folder training would resume (read before this record replaces
        # theirs), only where it may resume it (not with resume.enabled=false, which sets it aside); a re-score
        # names them only if its kept weights cannot be read and it trains after all (_run_cell)
        attempts = (_earlier_attempts(out, identity.training_key)
                    if cfg.method.train and not _resume_off(cfg) else {})
        if trained is not None and trained.resolve() == out.resolve():
            # the record this one replaces is the one that names the kept weights: their training figures are in
            # it before it is written, so that an attempt that stops before it loads them (a hub error, a
            # preemption) leaves them named, and the next attempt re-scores them too instead of training again
            take_training(record, record["metrics"], trained, trained_record, trained_result)
        elif trained is None:
            record.update(attempts)
        write_result(out, record)
        keep_earlier_curves(out)
        from slm_sweep.tracking import Tracker, superseded_runs

        # inside the try: a logger that cannot be built fails the cell instead of leaving it "running" (a W&B run
        # that cannot start is left out by the logger itself, and recorded under "tracking"); a rerun names the
        # runs of the finished result of this computation it set aside, which stay in its W&B group
        loggers_tried = True
        tracker = Tracker(cfg.logger, {**record, "sweep_tag": _sweep_tag(),
                                       "supersedes": superseded_runs(aside, identity.evaluation_key)}, config, out)
        record["tracking"] = tracker.tracking
        _run_cell(cfg, out, record, tracker, predictions, data, identity, dirs, callbacks=[interrupt],
                  trained=trained, trained_record=trained_record, trained_result=trained_result,
                  trained_weights=trained_weights, attempts=attempts)
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
        record["error"] = _error_text(err)
        record["traceback"] = traceback.format_exc()
        log.error("cell %s: %s", record["status"], record["error"])
        record["checkpoint_step"] = _own_checkpoint_step(out, record)
        if record["status"] == "interrupted" and (out / "checkpoints" / "last.ckpt").is_file():
            how = "rerun the same command" + ("" if dirs else " with resume.enabled=true")
            log.warning("to resume from the checkpoint in %s: %s", out / "checkpoints", how)
        if not isinstance(err, Exception):
            # Ctrl-C, SIGTERM: stop the process (and the sweep) after recording it, with a failing exit status
            # (Lightning's SIGTERMException is a SystemExit without a code, which would exit with 0)
            if isinstance(err, SystemExit) and not err.code:
                raise SystemExit(f"cell interrupted: {record['error']}") from err
            raise
    finally:
        signals.close()
        if reused is None:
            record["finished_at"] = now_iso()
            # failed before its keys were known, or while it reused a finished result (its own, or one copied in
            # already): a finished result in the folder stays result.json; the failure is written beside it
            earlier = read_result(out) if not set_aside or previous is not None else None
            kept = keeps_earlier(earlier, record, took_over=set_aside)
            written = FAILED_ATTEMPT_FILE if kept else RESULT_FILE
            try:
                if set_aside and not kept:  # what predictions.jsonl holds now is this attempt's
                    record["files"] = {"predictions": describe_predictions(out)}
                elif not kept:  # this record replaces an unfinished attempt's, whose predictions are not its own
                    (out / PREDICTIONS_FILE).unlink(missing_ok=True)
            except OSError as err:  # the record is written all the same
                log.error("could not check %s: %s", out / PREDICTIONS_FILE, _error_text(err))
            # a result file that cannot be written (disk full, a network file system gone) still reaches the
            # loggers and the closing line, which may be the only copies of the scores left; then it is raised
            write_error: BaseException | None = None
            try:
                write_result(out, record, written)
            except BaseException as err:  # noqa: BLE001 - raised again below, after the other copies
                write_error = err
                log.error("writing %s failed (%s): the scores are in the loggers and the closing line only",
                          out / written, _error_text(err))
            if kept:
                held = ("the finished result" if earlier.get("status") == "completed" else
                        f"the {earlier.get('status')} record, with its keys,")
                log.error("%s still holds %s of an earlier run; this attempt's failure is in %s", out, held,
                          FAILED_ATTEMPT_FILE)
            try:
                if tracker is not None:
                    try:
                        tracker.log_result(record, predictions)
                    finally:
                        tracker.finish(record["status"])
                elif not loggers_tried and record["status"] != "completed":  # failed before its loggers started
                    _track_short(cfg, record, config, out, beside_finished=kept)
            finally:
                line = closing_line(record, out, written)
                if write_error is not None:
                    line += f" NOT written: {_error_text(write_error)}"
                print(line, flush=True)
            if write_error is not None:
                raise write_error
    return record


def checkpoint_step(path: Path) -> int | None:
    """The optimizer step a Lightning checkpoint was saved at, None when it cannot be read. Memory-mapped: the
    weights and optimizer state are not read."""
    import torch

    try:
        checkpoint = torch.load(path, map_location="cpu", mmap=True, weights_only=False)
        return int(checkpoint["global_step"])
    except Exception:  # noqa: BLE001 - a checkpoint that cannot be read has no step to record
        log.warning("could not read the step of the checkpoint %s", path, exc_info=True)
        return None


def _own_checkpoint_step(out: Path, record: dict[str, Any]) -> int | None:
    """The step of the checkpoint this cell's training left in ``out`` (what a rerun resumes from), None without
    one; a checkpoint of another training key is not this cell's."""
    training_key = (record.get("identity") or {}).get("training_key")
    path = out / CHECKPOINT
    if training_key is None or not path.is_file() or stamped_key(path.parent) != training_key:
        return None
    return checkpoint_step(path)


def keeps_earlier(earlier: Mapping[str, Any] | None, record: Mapping[str, Any], took_over: bool = False) -> bool:
    """Whether the record ``earlier`` in the folder stays its result.json, and an attempt that did not complete
    (``record``) is written beside it (result.failed.json): a finished result, or one that knows its keys (a
    trained attempt's figures, which the next attempt needs to find the weights it kept and re-score them, and the
    checkpoint it left) against an attempt that stopped before it knew its own, or before it took the folder over
    (``took_over``: wrote its own record there) for the same training."""
    if earlier is None or record.get("status") == "completed":
        return False
    if earlier.get("status") == "completed":
        return True
    known, own = (earlier.get("identity") or {}), (record.get("identity") or {})
    return bool(known) and (not own or (not took_over and own.get("training_key") is not None
                                        and own.get("training_key") == known.get("training_key")))


def _earlier_attempts(out: Path, training_key: str | None) -> dict[str, Any]:
    """``{"earlier_attempts": [...]}`` when the folder's record, which this attempt's replaces, is an unfinished
    attempt of the same training whose checkpoint this one may resume: what ran its steps (and those of the
    attempts before it), ``ATTEMPT_PROVENANCE_KEYS`` of each; empty otherwise. Dropped again when training does
    not resume from the folder's checkpoint (train_stage)."""
    replaced = read_result(out)
    if (replaced is None or replaced.get("status") == "completed" or training_key is None
            or (replaced.get("identity") or {}).get("training_key") != training_key
            or stamped_key(out / CHECKPOINT.parent) != training_key or not (out / CHECKPOINT).is_file()):
        return {}
    before = [dict(a) for a in replaced.get("earlier_attempts") or [] if isinstance(a, Mapping)]
    return {"earlier_attempts": [*before, {key: replaced.get(key) for key in ATTEMPT_PROVENANCE_KEYS}]}


def _refused_cell(cfg: DictConfig, out: Path, err: Exception) -> dict[str, Any]:
    """The failed record of a sweep's cell whose configuration cannot run, written to ``out``."""
    try:
        config = redact(OmegaConf.to_container(cfg, resolve=True))
    except Exception:  # noqa: BLE001 - a setting that does not resolve is recorded as written
        config = redact(OmegaConf.to_container(cfg, resolve=False))
    try:
        record = _base_record(cfg, config)
    except Exception:  # noqa: BLE001 - the error may be in what the record reads (a seed that is no integer)
        def written(key: str) -> Any:  # as written, None where it cannot be read (the report counts it unreadable)
            try:
                return OmegaConf.select(cfg, key, default=None)
            except Exception:  # noqa: BLE001 - an interpolation that does not resolve
                return None

        record = {"schema_version": SCHEMA_VERSION, **{k: written(f"{k}.name") for k in ("model", "method", "dataset")},
                  "seed": written("seed"), "config": config, "versions": library_versions(), "started_at": now_iso()}
    record.update(status="failed", error=f"config error: {err}", finished_at=now_iso())
    log.error("cell failed: config error: %s", err)
    out.mkdir(parents=True, exist_ok=True)
    if global_rank() == 0:
        set_aside_damaged(out)
    written = FAILED_ATTEMPT_FILE if keeps_earlier(read_result(out), record) else RESULT_FILE
    if written == RESULT_FILE:  # the predictions of an unfinished attempt this record replaces are not its own
        (out / PREDICTIONS_FILE).unlink(missing_ok=True)
    write_result(out, record, written)
    if global_rank() == 0 and None not in (record.get("model"), record.get("method"), record.get("dataset")) \
            and _loggers_buildable(cfg):
        _track_short(cfg, record, config, out, beside_finished=written == FAILED_ATTEMPT_FILE)
    print(closing_line(record, out, written), flush=True)
    return record


def _loggers_buildable(cfg: DictConfig) -> bool:
    """Whether the cell's logger config passes its checks (a cell refused for a bad logger setting would otherwise
    build that logger anyway, for the run that says it was refused)."""
    from slm_sweep.config import validate_logger
    from slm_sweep.tracking import logger_class, logger_entries

    try:
        validate_logger(cfg)
        for path, entry in logger_entries(cfg.logger).items():
            logger_class(path, entry)
    except Exception:  # noqa: BLE001 - any error in the logger config: no run for the refused cell
        return False
    return True


_INTERRUPTS = {"KeyboardInterrupt": "Ctrl-C", "SIGTERMException": "SIGTERM"}


def _error_text(err: BaseException) -> str:
    """``<class>: <message>``; an interrupt without a message (Lightning's SIGTERMException) says what it was,
    and so does Lightning's ``sys.exit(1)`` after a Ctrl-C (the interrupt it handled is its context)."""
    cause = err.__context__
    if isinstance(err, SystemExit) and type(cause).__name__ in _INTERRUPTS:
        err = cause
    if type(err).__name__ in _INTERRUPTS and not str(err):
        return f"{type(err).__name__} ({_INTERRUPTS[type(err).__name__]})"
    if str(err):
        return f"{type(err).__name__}: {err}"
    return f"{type(err).__name__} (the process was told to stop)" if not isinstance(err, Exception) else \
        type(err).__name__


def _check_model_readable(cfg: DictConfig) -> None:
    """The model can be read (local folder, cache, hub, GGUF file) and, quantized with bitsandbytes, loaded
    (the library installed), checked as a sweep's preflight does (Checker.cell), so that a single run of a model
    this machine cannot load fails before its data is read and deduplicated."""
    from slm_sweep.models import ModelLoadError
    from slm_sweep.sweep.preflight import (
        Hub,
        check_model,
        check_quantization_library,
        quantized_with_bitsandbytes,
    )

    check = check_model(cfg.model, Hub(), cfg.get("cache_dir"))
    if not check.ok:
        raise ModelLoadError(f"model={cfg.model.get('name')}: {check.reason}; fix: {check.fix}")
    if quantized_with_bitsandbytes(cfg.model):
        check = check_quantization_library("or run without method=qlora and model.quantization")
        if not check.ok:
            raise ModelLoadError(f"model={cfg.model.get('name')}: bitsandbytes is {check.reason}; fix: {check.fix}")


def closing_line(record: dict[str, Any], out: Path, written: str = RESULT_FILE) -> str:
    """The one line a cell ends with: what it was, how it ended, its scores and times, where its result is."""
    cell = f"{record['model']} x {record['method']} x {record['dataset']} seed {record['seed']}"
    metrics = record.get("metrics") or {}
    if record["status"] == "completed":
        prefix = "val_" if metrics.get("n_eval") is None and metrics.get("val_n_eval") is not None else ""

        def score(key: str) -> str:
            value = metrics.get(prefix + key)
            return "n/a" if value is None else f"{value:.3f}"

        from slm_sweep.scoring import METRICS, accuracy_key

        scores = (" ".join(f"{prefix}{name} {score(accuracy_key(name))}" for name in METRICS)
                  + f" (n={metrics.get(prefix + 'n_eval')})")
        middle = f"{scores} | {_performance(record)}" + (" | reused" if record.get("reused_from") else "")
        from slm_sweep.report.tables import TRUNCATION_WARNING

        cut = metrics.get("truncated_fraction")
        if cut is not None and cut > TRUNCATION_WARNING:
            middle += (f" | {100 * cut:.0f} % of answers cut off at eval.max_new_tokens="
                       f"{(record.get('decoding') or {}).get('max_new_tokens')}")
    else:
        middle = f"error: {record.get('error')}"
    return f"cell {record['status']}: {cell} | {middle} | {out / written}"


def _performance(record: dict[str, Any]) -> str:
    """Times, rates and memory of a cell, as its closing line shows them: ``train 91.0 s at 1,234 tok/s (MFU
    0.5 %), eval 28.1 s at 87 tok/s on cpu float32, peak 5.8 GiB`` (the evaluation of the scored split; with
    out-of-domain sets, the whole evaluation's time after it)."""
    metrics = record.get("metrics") or {}
    train = f"train {metrics.get('train_time_s') or 0:.1f} s"
    if metrics.get("train_tokens_per_s"):
        train += f" at {metrics['train_tokens_per_s']:,.0f} tok/s"
        if metrics.get("mfu"):
            train += f" (MFU {100 * metrics['mfu']:.1f} %)"
    evaluation = f"eval {metrics.get('eval_time_s') or 0:.1f} s"
    if metrics.get("eval_tokens_per_s"):
        evaluation += f" at {metrics['eval_tokens_per_s']:,.0f} tok/s"
    placement = (record.get("placement") or {}).get("eval") or {}
    if placement.get("device"):
        evaluation += f" on {placement['device']} {placement.get('dtype') or ''}".rstrip()
    ood = len(record.get("eval_sets") or {})
    if ood and metrics.get("eval_time_all_sets_s") is not None:
        evaluation += f" ({metrics['eval_time_all_sets_s']:.1f} s with {ood} out-of-domain set{'s' * (ood > 1)})"
    peak = f", peak {metrics['peak_memory_mb'] / 1024:.1f} GiB" if metrics.get("peak_memory_mb") else ""
    return f"{train}, {evaluation}{peak}"


def reloads_exactly(method: Mapping[str, Any]) -> bool:
    """Whether kept adapter weights give the trained model back: peft initialises an adapter again when loading
    it, and one that changes the base weights by a randomized decomposition (PiSSA's ``pissa_niter_N``) gets another
    base each time, so such a cell trains again instead of re-scoring kept weights."""
    init = str(((method.get("peft") or {}).get("init_lora_weights")) or "")
    return not init.startswith("pissa_niter")


def _reuse(previous: Path, out: Path, record: dict[str, Any]) -> dict[str, Any]:
    """A finished cell with the same evaluation key, or training with the same training key that diverged: its
    own earlier record (kept as it is), or another directory's, whose numbers or divergence are copied here
    instead of being computed again."""
    source = read_result(previous)
    assert source is not None
    diverged = source.get("status") == "diverged"
    if previous.resolve() == out.resolve():
        if diverged:
            log.warning("this cell's training diverged in an earlier run (%s), which stays its outcome: "
                        "resume.retry_diverged=true does not keep it", source.get("error"))
        else:
            log.info("this cell already finished in %s: nothing to do", out)
            _say_claims_metric(source, record)
        print(closing_line(source, out), flush=True)
        return source
    log.info("reusing the %s in %s", "divergence of this training" if diverged else "finished result", previous)
    # what computed the numbers travels with them (the source's code, versions, hardware, decoding, where its weights
    # were trained), and nothing of this process's own: a key an older source lacks is unknown (None), but for the
    # empty collections a reader iterates (no out-of-domain set, no skipped rows)
    for key in [key for key in record if key not in PER_ATTEMPT_KEYS and key not in source]:
        if key == "skipped_rows_asking_who" or record[key] not in ({}, []):
            record[key] = None
    named = record.get("retried_divergence")  # the divergence this cell names (divergence_history), not the source's
    record.update({key: value for key, value in source.items() if key not in PER_ATTEMPT_KEYS})
    if named is not None:
        record["retried_divergence"] = named
    # the metric each out-of-domain set is read on is this attempt's, as the scored split's is (its config): it
    # is no part of the evaluation key, so the source may have recorded another one, or none
    for name, entry in (record.get("eval_sets") or {}).items():
        if isinstance(entry, dict):
            entry["claims_metric"] = eval_set_claims_metric(name)
    record["reused_from"] = str(previous / RESULT_FILE)
    if diverged:  # a copy's own error names the divergence it copied already
        record["error"] = source.get("error") if source.get("reused_from") else (
            f"{source.get('error')} (this training's divergence in {record['reused_from']}; "
            "resume.retry_diverged=true does not keep it)")
    if (previous / PREDICTIONS_FILE).is_file():
        copy_atomically(previous / PREDICTIONS_FILE, out / PREDICTIONS_FILE)
    else:
        (out / PREDICTIONS_FILE).unlink(missing_ok=True)
    record["files"] = {"predictions": describe_predictions(out)}
    record["finished_at"] = now_iso()
    write_result(out, record)
    print(closing_line(record, out), flush=True)
    return record


def _say_claims_metric(source: Mapping[str, Any], record: Mapping[str, Any]) -> None:
    """A finished result kept as it is recorded the claims metric of its dataset (and of each out-of-domain set)
    that its own run's config named, which is in no key; one line per set where this run's config names another,
    saying which the summary reads: a sweep's own summary reads this config's (report.sweep_notes.
    sweep_claims_metrics), a report run later the result's unless given ``--claims-metric``."""
    from slm_sweep.report.claims_metric import entry_claims_metric, recorded_claims_metric
    from slm_sweep.scoring import accuracy_key

    sets = [(str(record.get("dataset")), recorded_claims_metric(source), recorded_claims_metric(record),
             source.get("metrics"), "in-domain")]
    for name, entry in (source.get("eval_sets") or {}).items():
        if (recorded := entry_claims_metric(entry)) is not None:
            try:
                asked = eval_set_claims_metric(name)
            except Exception:  # noqa: BLE001 - a set whose config no longer reads: nothing to compare with
                continue
            sets.append((name, recorded, asked.removeprefix("accuracy_"), entry, "out-of-domain"))
    in_sweep = _sweep_dir() is not None
    for name, recorded, asked, scores, kind in sets:
        if recorded is None or asked is None or recorded == asked:
            continue
        if not isinstance(scores, dict) or scores.get(accuracy_key(asked)) is None:
            log.warning("%s: this finished result recorded claims_metric %s, this run's config names %s, of which it "
                        "holds no accuracy: its deltas stay on %s", name, recorded, asked, recorded)
            continue
        # the option reads a set's rows of both kinds on one metric; the sweep's summary moves this kind only
        later = (f"python -m slm_sweep.report reads {recorded} unless given --claims-metric {name}={asked}, which "
                 f"reads {name}'s in-domain and out-of-domain rows alike")
        log.warning("%s (%s): this finished result recorded claims_metric %s, this run's config names %s; %s", name,
                    kind, recorded, asked, f"the sweep's summary reads {name}'s {kind} rows on {asked} ({later})"
                    if in_sweep else f"it is kept as it is ({later})")


def eval_set_claims_metric(name: str) -> str:
    """The ``claims_metric`` of the out-of-domain set ``name`` as its config says (a search-path folder's
    included), recorded in its ``eval_sets`` entry: a report run later, outside the sweep, may not find that file."""
    from slm_sweep.data import dataset_spec

    return str(dataset_spec(name).claims_metric)


def _track_short(cfg: DictConfig, record: dict[str, Any], config: dict, out: Path,
                 beside_finished: bool = False) -> None:
    """A short logger run for a cell that trained and scored nothing here: its numbers were copied from another
    folder (tagged ``reused``), or it failed before its loggers started (a config error in a sweep, data that
    cannot be read; the run is marked failed, with the error), so that filtering the dashboard by sweep shows
    every cell; a logger that fails is logged, never raised. ``beside_finished``: the folder keeps a finished
    result (this attempt's record is result.failed.json), whose curves stay as they are: this run logs into
    ``failed-attempt/`` under it."""
    from slm_sweep.tracking import Tracker

    if beside_finished:
        out = out / FAILED_ATTEMPT_LOGS
        out.mkdir(parents=True, exist_ok=True)
    keep_earlier_curves(out)  # Lightning's CSV logger would delete a curve an earlier attempt left here
    try:
        tracker = Tracker(cfg.logger, {**record, "sweep_tag": _sweep_tag()}, config, out)
    except Exception:  # noqa: BLE001 - the cell's result is written already
        log.exception("starting the loggers of cell %s failed; result.json has its outcome", out)
        return
    try:
        tracker.log_result(record, [])
    finally:
        tracker.finish(record["status"])


def load_model(cfg: DictConfig, trained: Path | None):
    """The base model with the method applied, or with the trained weights an earlier run kept in ``trained``."""
    from slm_sweep.methods import apply_method, load_trained
    from slm_sweep.models import load_model_and_tokenizer

    model, tokenizer = load_model_and_tokenizer(cfg.model, cache_dir=Path(str(cfg.cache_dir)).expanduser())
    if trained is not None:
        return load_trained(model, trained), tokenizer
    return apply_method(model, cfg.method), tokenizer


def load_kept(cfg: DictConfig, weights: Path | None, training_key: str | None, trained: Path,
              trained_record: Mapping[str, Any] | None = None):
    """The base model with the kept weights a re-score found in ``trained`` (``weights``, resolved when it looked
    them up). A FileNotFoundError when they are gone or were replaced before or while they loaded (another run
    writing into that folder): a re-score never scores a fresh adapter, or another training's weights, under the
    trained cell's key and figures. None when their files cannot be read (``unreadable_weights``: a truncated copy,
    a file missing): they are moved aside (``set_aside_unreadable``), so that this cell, and every later one,
    trains them again instead of failing on them; any other error (the base model's hub, memory) is raised."""
    def stamp() -> str | None:
        if weights is None or not weights.is_dir() or stamped_key(weights) not in (None, training_key):
            raise FileNotFoundError(
                f"the kept weights in {weights or trained} that this cell was to re-score (training key "
                f"{training_key}) were moved or replaced after it found them (another run writing into that "
                "folder): rerun the cell")
        return stamped_key(weights)

    before = stamp()
    why = None
    try:
        loaded = load_model(cfg, weights)
    except Exception:
        if stamp() != before:
            raise FileNotFoundError(f"the kept weights in {weights} were replaced while they loaded: rerun the "
                                    "cell") from None
        try:
            why = unreadable_weights(weights)
        except OSError:  # the file system's error, not the files': they may read next time
            why = None
        if why is None:
            raise
    if why is not None:  # here, not in the except block: the model half built goes with the error
        set_aside_unreadable(weights, why, trained_record)
        return None
    if stamp() != before:
        raise FileNotFoundError(f"the kept weights in {weights} were replaced while they loaded: rerun the cell")
    return loaded


# what a kept-weights folder moved aside because it cannot be read keeps of the record that named it (its training
# figures and provenance, which no result names any more): not result.json, which a search would read as a cell
UNREADABLE_WEIGHTS_RECORD = "trained_record.json"


def unreadable_weights(folder: Path) -> str | None:
    """Why the kept weights in ``folder`` (``adapter/`` or ``model/``, as keep_trained_weights saved them) cannot be
    read: a config missing or not JSON, no weights file, a safetensors file whose header does not parse or does not
    match its size (truncated), a sharded model's index naming a missing file; None when they read. An OSError
    (the file system, not the files) is raised."""
    import json

    from safetensors import safe_open

    config = folder / ("adapter_config.json" if folder.name == ADAPTER_DIR else "config.json")
    try:
        if not isinstance(json.loads(config.read_text(encoding="utf-8")), dict):
            return f"{config.name} is not a JSON object"
    except FileNotFoundError:
        return f"{config.name} is missing"
    except ValueError as err:
        return f"{config.name}: {type(err).__name__}: {err}"
    index = next(iter(sorted(folder.glob("*.safetensors.index.json"))), None)
    if index is not None:
        try:
            named = set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values())
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            return f"{index.name}: {type(err).__name__}: {err}"
        missing = sorted(name for name in named if not (folder / str(name)).is_file())
        if missing:
            return f"{index.name} names {', '.join(missing)}, which is missing"
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        return "it holds no .safetensors weights file" if not any(folder.glob("*.bin")) else None
    for path in files:
        try:
            with safe_open(str(path), framework="pt") as f:  # the header, checked against the file's size
                f.keys()
        except OSError:
            raise
        except Exception as err:  # noqa: BLE001 - safetensors' SafetensorError, which is no subclass of a builtin
            return f"{path.name}: {type(err).__name__}: {err}"
    return None


def set_aside_unreadable(weights: Path, why: str, record: Mapping[str, Any] | None) -> Path:
    """Rename kept weights that cannot be read (``unreadable_weights``: ``why``) to ``<name>.damaged-<UTC time>``
    beside them, with the record that named them (``record``, as UNREADABLE_WEIGHTS_RECORD), and say so: a
    search no longer finds them (sweep.resume.kept_weights), so the cell trains again, and nothing is deleted."""
    (target,) = damaged_names(weights)
    weights.rename(target)
    if record is not None:
        try:
            write_result(target, record, UNREADABLE_WEIGHTS_RECORD)
        except (OSError, TypeError) as err:
            log.error("could not write %s: %s", target / UNREADABLE_WEIGHTS_RECORD, _error_text(err))
    log.warning("the kept weights in %s cannot be read (%s): moved to %s; the cell trains them again", weights,
                why, target)
    return target


def train_stage(cfg: DictConfig, out: Path, record: dict, model, tokenizer, data: CellData,
                identity: CellIdentity, dirs: list[Path], tracker, callbacks: list | None):
    """Train (resuming from this cell's checkpoint when one exists) and keep what a re-scoring run needs."""
    from slm_sweep.data.encode import encode_all
    from slm_sweep.data.prompts import resolve_style
    from slm_sweep.tracking import stand_in_loggers
    from slm_sweep.train.fit import fit
    from slm_sweep.train.ranks import SameTrainingKeyOnEveryRank

    style = resolve_style(cfg.prompt.style, tokenizer)
    max_length = int(cfg.trainer.max_length)
    train = encode_all(tokenizer, data.splits.train, style, max_length, cfg.prompt.system)
    val = encode_all(tokenizer, data.splits.val, style, max_length, cfg.prompt.system)
    too_long = 1 - len(train) / len(data.splits.train) if data.splits.train else 0.0
    record["metrics"].update(train_examples=len(train), train_too_long_fraction=too_long)
    if not train:
        raise ValueError(f"none of the {len(data.splits.train)} training examples fits in "
                         f"trainer.max_length={max_length} tokens (prompt and whole answer): raise trainer.max_length")
    if too_long > 0.01:
        log.warning("%.1f %% of the training examples are longer than trainer.max_length=%d and were left out",
                    100 * too_long, max_length)
    if int(cfg.trainer.warmup_steps) >= int(cfg.trainer.max_steps):
        log.warning("trainer.warmup_steps=%d is not below trainer.max_steps=%d: the learning rate never reaches "
                    "the method's %s", cfg.trainer.warmup_steps, cfg.trainer.max_steps, cfg.method.lr)
    # resume.enabled=false resumes nothing, the cell's own checkpoint included (moved aside, training starts afresh)
    resuming = not _resume_off(cfg)
    resume_from = (own_checkpoint(out, identity.training_key, resume=resuming)
                   or find_checkpoint(dirs, identity.training_key, own=out))
    record["resumed_from_checkpoint"] = str(resume_from) if resume_from else None
    if resume_from is None or resume_from != out / CHECKPOINT:  # the earlier attempts here trained none of it
        record.pop("earlier_attempts", None)
    # the step training picks up at: train_steps counts from zero, train_tokens and train_time_s from here
    record["resumed_at_step"] = checkpoint_step(resume_from) if resume_from else None
    stamp_training_key(out / CHECKPOINT.parent, identity.training_key)
    outcome = fit(model, train, val, cfg.trainer, cfg.method, seed=int(cfg.seed), out_dir=out,
                  pad_token_id=tokenizer.pad_token_id,
                  # every rank alike: where rank 0 has no Lightning logger of its own (W&B disabled) as on the
                  # others (which log nothing), a stand-in, or a callback needing one fails on one rank only
                  loggers=(tracker.lightning_loggers if tracker else None) or stand_in_loggers(cfg.get("logger")),
                  resume_from=resume_from, resume_own=resuming,
                  extra_callbacks=[SameTrainingKeyOnEveryRank(identity.training_key), *(callbacks or [])],
                  callbacks_cfg=cfg.get("callbacks"))
    if outcome.train_steps < int(cfg.trainer.max_steps):
        raise RuntimeError(f"training ran {outcome.train_steps} of trainer.max_steps={cfg.trainer.max_steps} "
                           "optimizer steps: the cell would not be the method it names")
    if global_rank() != 0:
        return outcome
    record["placement"]["train"] = outcome.placement
    # peak_memory_mb is the cell's, training and evaluation (set when it ends); the training's own peak is kept
    # apart, so that a cell re-scoring these weights copies it with the other training figures
    record["metrics"].update(train_time_s=outcome.train_time_s, train_loss=outcome.train_loss,
                             val_loss=outcome.val_loss, train_steps=outcome.train_steps, **outcome.perf,
                             train_peak_memory_mb=outcome.perf.get("peak_memory_mb"))
    keep_trained_weights(model, out, identity.training_key, keep_full=bool(cfg.trainer.get("keep_model", False)))
    write_result(out, record)  # training is the expensive part: keep its numbers even if evaluation fails
    return outcome


def take_training(record: dict[str, Any], metrics: dict[str, Any], trained: Path, trained_record: dict | None,
                  trained_result: Path | None) -> None:
    """What a re-score of the weights kept in ``trained`` copies from the record of the run that trained them
    (``trained_record``, found at ``trained_result``): where they were trained and by what, their placement, the
    training figures (into ``metrics``) and the checkpoint that run resumed from."""
    source = trained_record or {}
    record["trained_in"] = str(trained)
    # the training figures below were measured by that run, with its code, versions and hardware
    record["training_provenance"] = training_provenance(source, trained_result)
    record["placement"]["train"] = (source.get("placement") or {}).get("train")
    measured = source.get("metrics") or {}
    for key in TRAINING_METRICS:
        # a source without final_validation_s counted that pass in train_time_s: the copy lacks it too
        if key in measured or key != "final_validation_s":
            metrics[key] = measured.get(key)
    # its training time covers what that run trained, from a checkpoint if it resumed from one (the report
    # leaves such a seed out of the mean training time)
    record["resumed_from_checkpoint"] = source.get("resumed_from_checkpoint")
    record["resumed_at_step"] = source.get("resumed_at_step")
    if "trainable_params" in measured:
        metrics["trainable_params"] = measured["trainable_params"]


def drop_training(record: dict[str, Any]) -> None:
    """Undo ``take_training`` in ``record``: it re-scores no kept weights after all (they cannot be read), so it
    names none and holds none of their training figures (``metrics`` empty, as a cell's before its model loads)."""
    record.pop("trained_in", None)
    record.pop("training_provenance", None)
    record["placement"]["train"] = None
    record["metrics"] = {}
    record["resumed_from_checkpoint"] = record["resumed_at_step"] = None


def keep_trained_weights(model, out: Path, training_key: str, keep_full: bool) -> None:
    """LoRA/DoRA adapters are always kept (they are small); full weights when ``trainer.keep_model`` is on.
    A later run whose evaluation changed but whose training did not re-scores from them instead of training."""
    from peft import PeftModel

    from slm_sweep.methods import save_atomically

    folder = out / ADAPTER_DIR if isinstance(model, PeftModel) else out / MODEL_DIR if keep_full else None
    if folder is not None:
        save_atomically(model, folder)
        stamp_training_key(folder, training_key)


def _run_cell(cfg: DictConfig, out: Path, record: dict, tracker, predictions: list[dict], data: CellData,
              identity: CellIdentity, dirs: list[Path], train_only: bool = False,
              callbacks: list | None = None, trained: Path | None = None,
              trained_record: dict | None = None, trained_result: Path | None = None,
              trained_weights: Path | None = None, attempts: Mapping[str, Any] | None = None) -> None:
    """Load, train (or take the kept weights ``trained_weights`` found in ``trained``: a re-score) and evaluate.
    ``attempts``: the ``earlier_attempts`` of the folder's checkpoint (run._earlier_attempts), for a re-score whose
    kept weights cannot be read and which trains after all."""
    import lightning as L

    from slm_sweep.data.prompts import resolve_format
    from slm_sweep.evaluate.evaluator import build_eval_prompts, evaluate
    from slm_sweep.methods import count_parameters, merge_adapters_for_eval
    from slm_sweep.placement import resolve_placement, to_device, to_dtype
    from slm_sweep.train.callbacks import peak_memory_mb, reset_peak_memory

    reset_peak_memory()
    method = cfg.method
    L.seed_everything(int(cfg.seed), workers=True, verbose=False)
    splits, sampler = data.splits, data.sampler
    record["skipped_rows"] = dict(splits.skipped)  # rows without a numeric reference, per source split
    record["skipped_rows_asking_who"] = dict(splits.skipped_asking_who)  # of which questions asking who

    loaded = None
    if trained is not None:
        loaded = load_kept(cfg, trained_weights, identity.training_key, trained, trained_record)
        if loaded is None:  # they cannot be read, and were moved aside: this cell trains, as if none were kept
            trained = None
            drop_training(record)
            record.update(attempts or {})
            write_result(out, record)  # no longer naming the weights it does not use, nor their figures
            reset_peak_memory()  # what the failed load held is not this cell's
            L.seed_everything(int(cfg.seed), workers=True, verbose=False)  # as a cell that trains from the start
    model, tokenizer = loaded if loaded is not None else load_model(cfg, None)
    trainable, total = count_parameters(model)
    # how the questions are put to the model: the method's own format (few-shot), else as trained cells are prompted
    prompt_format = resolve_format(method, cfg.prompt, tokenizer, int(cfg.seed))
    # a method that trains nothing trained for 0 s and 0 steps; a trained one has no such figures until its training
    # finishes (an interrupted or failed attempt records how far it got in checkpoint_step)
    untrained = None if method.train else 0
    metrics: dict[str, Any] = {"trainable_params": trainable, "total_params": total,
                               "train_time_s": None if method.train else 0.0, "train_loss": None, "val_loss": None,
                               "train_steps": untrained, "train_tokens": untrained, "train_tokens_per_s": None,
                               "mfu": None}
    record["metrics"] = metrics

    if trained is not None:
        # same training key: the weights are the ones this cell would train; only its evaluation differs
        log.info("re-scoring the weights trained in %s (same training key)", trained)
        take_training(record, metrics, trained, trained_record, trained_result)
    elif method.train:
        train_stage(cfg, out, record, model, tokenizer, data, identity, dirs, tracker, callbacks)
    if train_only:
        return

    ood_sets = data.ood_sets
    # Every method generates on the resolved device and dtype; adapters are merged there, in float32, and the sum
    # kept in the evaluation dtype (a bf16 base scored in float32 keeps all of the adapters' update).
    trained_on = (record["placement"]["train"] or {}).get("device")
    placement = resolve_placement(cfg.eval, cfg.model, model, trained_on=trained_on)
    model = to_dtype(merge_adapters_for_eval(to_device(model, placement.device), placement.dtype), placement.dtype)
    record["placement"]["eval"] = placement.describe()
    log.info("evaluating on %s (%s) in %s", placement.device, record["placement"]["eval"]["device_name"],
             record["placement"]["eval"]["dtype"])

    start = time.perf_counter()
    # eval.split=val scores the validation split (hyperparameter search) and never generates on the test split.
    on_val = cfg.eval.get("split", "test") == "val"
    examples = splits.val if on_val else splits.test
    prefix = "val_" if on_val else ""
    prompts = build_eval_prompts(tokenizer, examples, prompt_format, sampler)
    record["prompt"] = {**prompt_format.describe(), "shot_pool_size": len(splits.train) if sampler else None,
                        "example": prompts[0] if prompts else None}
    preds, scores = evaluate(model, tokenizer, examples, prompts, cfg.eval,
                             cfg.dataset.name + ("/val" if on_val else ""),
                             tolerance=cfg.dataset.get("answer_tolerance"), progress=bool(cfg.eval.progress))
    predictions.extend(preds)
    from slm_sweep.scoring import ACCURACY_KEYS

    for key in (*ACCURACY_KEYS, "n_eval"):
        metrics[prefix + key] = scores.pop(key)
    record["decoding"] = {"greedy": True, "max_new_tokens": int(cfg.eval.max_new_tokens),
                          "stop": list(cfg.eval.get("stop") or []),
                          "generation_config": str(cfg.eval.generation_config),
                          "generation_config_ignored": scores.pop("generation_config_ignored"),
                          "engine": scores.pop("engine"), "cuda_graphs": scores.pop("cuda_graphs"),
                          # where the static loop's time went, per evaluation set (LoopTimes)
                          "profile": {cfg.dataset.name + ("/val" if on_val else ""): scores.pop("decode_profile")}}
    scores["eval_time_s"] = scores.pop("eval_set_time_s")
    metrics.update(scores)  # EVAL_SET_FIGURES and truncated_fraction of the scored split
    write_predictions(out, predictions)

    for name, examples in ood_sets.items():
        from slm_sweep.data import dataset_spec

        prompts = build_eval_prompts(tokenizer, examples, prompt_format, sampler)
        preds, scores = evaluate(model, tokenizer, examples, prompts, cfg.eval, name,
                                 tolerance=dataset_spec(name).get("answer_tolerance"),
                                 progress=bool(cfg.eval.progress))
        predictions.extend(preds)
        scores["eval_time_s"] = scores.pop("eval_set_time_s")
        record["eval_sets"][name] = {**{k: scores[k] for k in (*ACCURACY_KEYS, "n_eval", "truncated_fraction",
                                                               *EVAL_SET_FIGURES)},
                                     "claims_metric": eval_set_claims_metric(name)}
        graphs, more = record["decoding"]["cuda_graphs"], scores["cuda_graphs"]
        graphs["captured"] += more["captured"]
        graphs["failure"] = graphs["failure"] or more["failure"]
        graphs["not_used"] = None if graphs["captured"] else graphs["not_used"] or more["not_used"]
        record["decoding"]["profile"][name] = scores["decode_profile"]
        write_predictions(out, predictions)
    # the whole evaluation stage: every set, its prompts built and its predictions written
    metrics["eval_time_all_sets_s"] = time.perf_counter() - start
    # the peak of the whole cell, training included: the GPU's figure if training (in this process: re-scored
    # weights were trained elsewhere, where their record says) or evaluation ran on one, else the process's
    trained_here = trained_on if method.train and trained is None else None
    on_gpu = [d for d in (trained_here, str(placement.device)) if d and d.startswith("cuda")]
    metrics["peak_memory_mb"] = peak_memory_mb(on_gpu[0] if on_gpu else placement.device)
