"""The Lightning data module of a training run: encoded train/val examples, seeded order, padding collation."""

from __future__ import annotations

from collections.abc import Sequence

import lightning as L
import torch
from torch.utils.data import DataLoader

from slm_sweep.data.encode import PadCollator


class EncodedDataModule(L.LightningDataModule):
    """Serves already-encoded examples. The training order depends on the run seed only."""

    def __init__(self, train: Sequence[dict], val: Sequence[dict], micro_batch_size: int, pad_token_id: int,
                 seed: int, num_workers: int = 0, pad_to_multiple_of: int | None = None):
        super().__init__()
        self.train, self.val = list(train), list(val)
        self.micro_batch_size = micro_batch_size
        self.collate = PadCollator(pad_token_id, pad_to_multiple_of)
        self.seed, self.num_workers = seed, num_workers

    def train_dataloader(self):
        generator = torch.Generator().manual_seed(self.seed)
        return DataLoader(self.train, batch_size=self.micro_batch_size, shuffle=True, generator=generator,
                          collate_fn=self.collate, num_workers=self.num_workers, drop_last=False)

    def val_dataloader(self):
        # Sorted by length so padding costs little; the order does not change the mean loss.
        ordered = sorted(self.val, key=lambda e: len(e["input_ids"]))
        return DataLoader(ordered, batch_size=self.micro_batch_size, shuffle=False,
                          collate_fn=self.collate, num_workers=self.num_workers)
