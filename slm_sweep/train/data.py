"""The Lightning data module of a training run: encoded examples served as planned micro-batches."""

from __future__ import annotations

from collections.abc import Sequence

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from slm_sweep.data.encode import PackCollator, PadCollator, loss_token_count
from slm_sweep.train.batching import MicroBatchPlan, StepBatchSampler, eval_batches


class PlannedMicroBatches(Dataset):
    """Collates the examples a :class:`MicroBatchPlan` names, with the counts training and measuring need.

    The counts are plain ints, known before the batch reaches the device, so reading them never waits on it.
    """

    def __init__(self, examples: Sequence[dict], collate):
        self.examples, self.collate = examples, collate

    def __getitem__(self, plan: MicroBatchPlan) -> dict:
        rows = [self.examples[i] for i in plan.indices]
        batch = self.collate(rows)
        batch["num_sequences"] = len(rows)
        batch["num_tokens"] = sum(len(r["input_ids"]) for r in rows)
        batch["attention_pairs"] = sum(len(r["input_ids"]) ** 2 for r in rows)  # of the MFU's attention FLOPs
        batch["step_loss_tokens"] = plan.step_loss_tokens
        batch["last_in_step"] = plan.last_in_step
        return batch


class EncodedDataModule(L.LightningDataModule):
    """Serves already-encoded examples. The training order depends on the run seed only (see ``batching``)."""

    def __init__(self, train: Sequence[dict], val: Sequence[dict], batch_size: int, micro_batch_size: int,
                 pad_token_id: int, seed: int, max_tokens: int | None = None, packing: bool = False,
                 num_workers: int = 0, pad_to_multiple_of: int | None = None):
        super().__init__()
        self.train, self.val = list(train), list(val)
        self.batch_size, self.micro_batch_size, self.max_tokens = batch_size, micro_batch_size, max_tokens
        self.packing, self.pad_to_multiple_of = packing, pad_to_multiple_of
        collator = PackCollator if packing else PadCollator
        self.collate = collator(pad_token_id, pad_to_multiple_of)
        self.pad_collate = PadCollator(pad_token_id, pad_to_multiple_of)
        self.seed, self.num_workers = seed, num_workers

    def _rank_and_world(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def _completed_steps(self) -> int:
        return self.trainer.global_step if self.trainer is not None else 0

    def train_sampler(self) -> StepBatchSampler:
        rank, world_size = self._rank_and_world()
        return StepBatchSampler(
            [len(e["input_ids"]) for e in self.train], [loss_token_count(e["labels"]) for e in self.train],
            self.batch_size, self.micro_batch_size, self.max_tokens, self.seed, packing=self.packing,
            pad_to_multiple_of=self.pad_to_multiple_of, rank=rank, world_size=world_size,
            completed_steps=self._completed_steps,
        )

    def train_dataloader(self):
        # batch_size=None: the sampler yields whole micro-batch plans, the dataset collates each one.
        return DataLoader(PlannedMicroBatches(self.train, self.collate), sampler=self.train_sampler(),
                          batch_size=None, num_workers=self.num_workers, pin_memory=torch.cuda.is_available(),
                          generator=self._own_generator())

    def val_dataloader(self):
        # Length-sorted batches, padded (never packed) so that every validation batch is an ordinary one.
        rank, world_size = self._rank_and_world()
        batches = eval_batches([len(e["input_ids"]) for e in self.val], self.micro_batch_size, self.max_tokens,
                               self.pad_to_multiple_of)
        return DataLoader(self.val, batch_sampler=batches[rank::world_size], collate_fn=self.pad_collate,
                          num_workers=self.num_workers, generator=self._own_generator())

    def _own_generator(self) -> torch.Generator:
        # Each DataLoader iterator draws a seed from its generator, by default the global one that dropout draws
        # from: an iterator started at another moment (a resumed epoch, a validation pass) would shift dropout.
        return torch.Generator().manual_seed(self.seed)
