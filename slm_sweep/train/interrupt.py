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
from lightning.pytorch.utilities.exceptions import SIGTERMException

log = logging.getLogger(__name__)


class CheckpointOnInterrupt(L.Callback):
    def __init__(self, checkpoint_path: str | Path):
        self.checkpoint_path = Path(checkpoint_path)
        self.training = False

    def on_fit_start(self, trainer, pl_module):
        self.training = True

    def on_train_start(self, trainer, pl_module):
        log.info("training from step %d (Ctrl-C or SIGTERM saves a checkpoint)", trainer.global_step)

    def on_fit_end(self, trainer, pl_module):
        self.training = False

    def on_exception(self, trainer, pl_module, exception):
        self.training = False
        # is_interrupt: also a SystemExit with a code, as submitit's handler of a SLURM time-out signal raises
        if is_interrupt(exception) and trainer.global_step > 0:
            rewind_to_last_step(trainer)
            self.checkpoint_path.parent.mkdir(parents=True, exist_ok=True)
            trainer.save_checkpoint(self.checkpoint_path)
            log.warning("interrupted at step %d: checkpoint saved to %s", trainer.global_step, self.checkpoint_path)


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
    steps = sampler.steps(sampler.epoch)
    finished = min(len(steps), max(0, trainer.global_step - sampler.epoch * len(steps)))
    consumed = sum(len(step) for step in steps[:finished])
    progress = trainer.fit_loop.epoch_loop.batch_progress
    earlier_epochs = progress.total.ready - progress.current.ready
    for counter, value in ((progress.current, consumed), (progress.total, earlier_epochs + consumed)):
        counter.ready = counter.started = counter.processed = counter.completed = value


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
            return  # Lightning's handler stops training at the end of the step
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
