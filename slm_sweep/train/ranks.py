"""The processes of a distributed cell train one identity: each computes the cell's training key as it starts, and
training stops before its first step when they differ.

Under DDP's script launcher the other processes start when rank 0's training starts, and each reads the code,
data and libraries as they are then: an edit made while rank 0 loaded its model would have them train with other
code or data than the key rank 0 records says. Each process's key is computed from what it read (run.identify).
"""

from __future__ import annotations

import lightning as L
import torch


class SameTrainingKeyOnEveryRank(L.Callback):
    """Compares the processes' training keys once, at the start of fitting; every process raises alike."""

    def __init__(self, training_key: str):
        self.training_key = training_key

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit" or trainer.world_size == 1 or not torch.distributed.is_initialized():
            return
        keys: list[str | None] = [None] * trainer.world_size
        torch.distributed.all_gather_object(keys, self.training_key)
        differ = [rank for rank, key in enumerate(keys) if key != keys[0]]
        if differ:
            raise RuntimeError(
                f"the processes of this distributed run would train different cells: rank 0's training key is "
                f"{keys[0]}, rank{'s' if len(differ) > 1 else ''} {', '.join(map(str, differ))} computed "
                f"{', '.join(sorted({str(keys[rank]) for rank in differ}))}. Each process reads the code, data and "
                "libraries as they are when it starts, and the later processes start when training does: something "
                "changed in between (an edited source or data file, an upgraded library). Leave them alone while a "
                "cell runs, and run it again")
