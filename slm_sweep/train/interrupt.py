"""Ctrl-C and SIGTERM (e.g. SLURM preemption): stop at a step boundary, keep a checkpoint, say so.

A SLURM time-out under submitit (``hydra/launcher=slurm``) arrives as SIGUSR2, whose submitit handler requeues the
job and exits with ``sys.exit(-1)``: that SystemExit saves the checkpoint too.

Outside training, a SIGTERM becomes a KeyboardInterrupt so the cell can record ``interrupted`` and stop. During
training, Lightning's own SIGTERM handler finishes the current micro-batch and raises SIGTERMException; Ctrl-C
raises KeyboardInterrupt. Either way :class:`CheckpointOnInterrupt` writes ``last.ckpt`` first, as of the last
finished optimizer step, and rerunning the cell resumes from that step.
"""

from __future__ import annotations

import logging
import signal
from contextlib import contextmanager
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException

log = logging.getLogger(__name__)


class CheckpointOnInterrupt(L.Callback):
    def __init__(self, checkpoint_path: str | Path):
        self.checkpoint_path = Path(checkpoint_path)
        # training: while Lightning's own SIGTERM handler is in place (set up after on_fit_start and the restore of
        # a checkpoint, taken down after on_train_end), which stops training at the end of the current micro-batch
        self.training = False
        # started: the restore of a checkpoint has finished (it sets the step before the optimizer's and the
        # scheduler's state), so the state in hand is whole; still true in the validation pass on the final
        # weights, whose checkpoint at the last step spares the rerun its training
        self.started = False

    def on_fit_start(self, trainer, pl_module):
        self.started = False

    def on_train_start(self, trainer, pl_module):
        self.training = self.started = True
        log.info("training from step %d (Ctrl-C or SIGTERM saves a checkpoint)", trainer.global_step)

    def on_train_end(self, trainer, pl_module):
        self.training = False
        if trainer.received_sigterm:  # in an earlier callback's on_train_end, past Lightning's last look at it
            raise SIGTERMException

    def on_exception(self, trainer, pl_module, exception):
        self.training = False
        # is_interrupt: also a SystemExit with a code, as submitit's handler of a SLURM time-out signal raises
        if self.started and is_interrupt(exception) and trainer.global_step > 0:
            rewind_to_last_step(trainer)
            self.checkpoint_path.parent.mkdir(parents=True, exist_ok=True)
            # trainer.save_checkpoint would end in a barrier that the other processes of a distributed run,
            # stopping on the same signal without this callback, never reach
            trainer.strategy.save_checkpoint(trainer._checkpoint_connector.dump_checkpoint(), self.checkpoint_path)
            log.warning("interrupted at step %d: checkpoint saved to %s", trainer.global_step, self.checkpoint_path)


def finished_micro_batches(sampler, epoch: int, global_step: int) -> int:
    """The micro-batches of ``epoch`` that its optimizer steps finished by ``global_step`` hold, in the sampler's
    plan (``StepBatchSampler`` resumes an epoch at the step ``global_step`` says, skipping the finished ones)."""
    steps = sampler.steps(epoch)
    finished = min(len(steps), max(0, global_step - epoch * len(steps)))
    return sum(len(step) for step in steps[:finished])


def rewind_to_last_step(trainer) -> None:
    """Count this epoch's micro-batches as those of its finished optimizer steps.

    An interrupt between two micro-batches of one step leaves Lightning's micro-batch counters past the last
    finished step, while a resumed epoch restarts at that step (``StepBatchSampler`` skips by ``global_step``).
    Saved as they are, the counters would end the resumed epoch that many micro-batches early: the last step's
    data never trained on and its half-accumulated gradient carried into the next epoch.
    """
    from slm_sweep.train.batching import StepBatchSampler

    sampler = getattr(trainer.train_dataloader, "sampler", None)
    if not isinstance(sampler, StepBatchSampler):
        return
    consumed = finished_micro_batches(sampler, sampler.epoch, trainer.global_step)
    progress = trainer.fit_loop.epoch_loop.batch_progress
    earlier_epochs = progress.total.ready - progress.current.ready
    for counter, value in ((progress.current, consumed), (progress.total, earlier_epochs + consumed)):
        counter.ready = counter.started = counter.processed = counter.completed = value


_COUNTERS = ("ready", "started", "processed", "completed")


def align_to_plan(checkpoint: dict, sampler) -> int:
    """Shift a checkpoint's micro-batch counters to this run's plan of micro-batches; returns the shift.

    The micro-batch settings (``micro_batch_size``, ``micro_batch_tokens``, packing) change only speed and memory,
    so a cell resumes a checkpoint written under other ones, with other micro-batch counts per step. Restored as
    they are, Lightning's counters would end the resumed epoch early (its last steps never trained on, a
    half-accumulated gradient carried into the next epoch) or late. Shifted by the difference between the two
    plans' counts for the finished steps, they keep their relation to each other (a checkpoint written inside a
    batch-end hook counts its batch as not yet completed).
    """
    loop = (checkpoint.get("loops") or {}).get("fit_loop") or {}
    progress, epochs = loop.get("epoch_loop.batch_progress"), loop.get("epoch_progress")
    if not progress or not epochs or "global_step" not in checkpoint:
        return 0
    # the epoch Lightning hands the sampler on resuming (fit loop: set_epoch(epoch_progress.current.processed))
    epoch = int(epochs["current"]["processed"])
    shift = finished_micro_batches(sampler, epoch, int(checkpoint["global_step"])) - int(progress["current"]["ready"])
    if shift:
        for part in ("current", "total"):
            for counter in _COUNTERS:
                progress[part][counter] = max(0, int(progress[part][counter]) + shift)
        log.info("resuming under another micro-batch plan: the epoch's micro-batch count moved by %+d", shift)
    return shift


class StepCheckpoint(ModelCheckpoint):
    """``last.ckpt`` every ``every_n_train_steps`` optimizer steps, written when a step has finished.

    Lightning's ModelCheckpoint does not keep the step it last saved across a resume: the first micro-batch after
    resuming at a multiple of ``every_n_train_steps`` would write a checkpoint in the middle of the next step.
    """

    def on_train_start(self, trainer, pl_module) -> None:
        super().on_train_start(trainer, pl_module)
        self._last_global_step_saved = trainer.global_step


def is_interrupt(exc: BaseException) -> bool:
    """Ctrl-C, SIGTERM, or Lightning's exit after either."""
    return isinstance(exc, (KeyboardInterrupt, SIGTERMException)) or (
        isinstance(exc, SystemExit) and exc.code not in (0, None)
    )


@contextmanager
def sigterm_as_interrupt(callback: CheckpointOnInterrupt | None = None):
    """While active, SIGTERM outside a training loop raises KeyboardInterrupt."""

    def handler(signum, frame):
        if callback is not None and callback.training:
            return  # Lightning's handler stops training at the end of the current micro-batch
        raise KeyboardInterrupt(f"received signal {signum}")

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
