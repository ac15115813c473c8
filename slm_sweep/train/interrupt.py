"""Ctrl-C and SIGTERM (e.g. SLURM preemption): stop at a step boundary, keep a checkpoint, say so.

Outside training, a SIGTERM becomes a KeyboardInterrupt so the cell can record ``interrupted`` and stop. During
training, Lightning's own SIGTERM handler finishes the current step and raises SIGTERMException; Ctrl-C raises
KeyboardInterrupt. Either way :class:`CheckpointOnInterrupt` writes ``last.ckpt`` first, and rerunning the cell
resumes from it.
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
        if isinstance(exception, (KeyboardInterrupt, SIGTERMException)) and trainer.global_step > 0:
            self.checkpoint_path.parent.mkdir(parents=True, exist_ok=True)
            trainer.save_checkpoint(self.checkpoint_path)
            log.warning("interrupted at step %d: checkpoint saved to %s", trainer.global_step, self.checkpoint_path)


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
