"""Lightning checkpoints written so that a killed process never leaves a half-written one behind."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from slm_sweep.results import atomic_write


class AtomicCheckpointIO(TorchCheckpointIO):
    """``torch.save`` into a temporary file beside the target, fsync, rename over it.

    Lightning's own writer stages the file in the system temp directory and moves it over, which is a copy,
    not a rename, when that directory is on another filesystem; resuming trusts ``last.ckpt`` as it is found.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options (got {storage_options!r})")
        atomic_write(Path(path), lambda f: torch.save(checkpoint, f))
