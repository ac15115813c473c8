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

    def train_sampler(self, epoch: int = 0) -> StepBatchSampler:
        rank, world_size = self._rank_and_world()
        return StepBatchSampler(
            [len(e["input_ids"]) for e in self.train], [loss_token_count(e["labels"]) for e in self.train],
            self.batch_size, self.micro_batch_size, self.max_tokens, self.seed, packing=self.packing,
            pad_to_multiple_of=self.pad_to_multiple_of, rank=rank, world_size=world_size,
            completed_steps=self._completed_steps, epoch=epoch,
        )

    def _epoch(self) -> int:
        """The epoch Lightning is about to train: the one it hands the sampler's ``set_epoch`` (the fit loop's
        processed epochs), which resuming from a checkpoint written at an epoch's end puts one past
        ``trainer.current_epoch``."""
        if self.trainer is None:
            return 0
        return int(self.trainer.fit_loop.epoch_progress.current.processed)

    def train_dataloader(self):
        """The data loader of the epoch about to start: Lightning calls this before every epoch (the trainer's
        ``reload_dataloaders_every_n_epochs=1``) and reads its length once, and under a token budget each epoch has
        its own micro-batch count (see ``StepBatchSampler``)."""
        epoch = self._epoch()
        # batch_size=None: the sampler yields whole micro-batch plans, the dataset collates each one.
        return DataLoader(PlannedMicroBatches(self.train, self.collate), sampler=self.train_sampler(epoch),
                          batch_size=None, num_workers=self.num_workers, pin_memory=torch.cuda.is_available(),
                          generator=self._own_generator())

    def setup(self, stage: str) -> None:
        # before training, on every device alike: a validation pass after it would fail on the devices left
        # without a micro-batch, and the others then only on the lost connection
        self._val_batches()

    def _val_batches(self) -> list:
        # Length-sorted batches, padded (never packed) so that every validation batch is an ordinary one.
        _, world_size = self._rank_and_world()
        batches = eval_batches([len(e["input_ids"]) for e in self.val], self.micro_batch_size, self.max_tokens,
                               self.pad_to_multiple_of)
        if self.val and len(batches) < world_size:
            raise ValueError(
                f"the validation split's {len(self.val)} examples make {len(batches)} micro-batches of up to "
                f"{self.micro_batch_size}, fewer than the {world_size} devices, each of which validates at least "
                "one: raise dataset.val_size or lower trainer.micro_batch_size")
        return batches

    def val_dataloader(self):
        rank, world_size = self._rank_and_world()
        batches = self._val_batches()
        return DataLoader(self.val, batch_sampler=batches[rank::world_size], collate_fn=self.pad_collate,
                          num_workers=self.num_workers, generator=self._own_generator())

    def _own_generator(self) -> torch.Generator:
        # Each DataLoader iterator draws a seed from its generator, by default the global one that dropout draws
        # from: an iterator started at another moment (a resumed epoch, a validation pass) would shift dropout.
        return torch.Generator().manual_seed(self.seed)


def align_to_next_epoch(checkpoint: dict, sampler: StepBatchSampler) -> int:
    """Shift the micro-batch counters of a checkpoint written after an epoch's last micro-batch to the next epoch's
    count; returns the shift.

    Resuming such a checkpoint, Lightning moves on to the next epoch and loads its data, then starts that epoch
    afresh only if the counters have reached its micro-batch count. Under a token budget the next epoch may have
    more micro-batches than the finished one: left as they are, the counters would end it that many micro-batches
    from its end (its last steps never trained on). Only the epoch's counters move; the run's totals stay.
    """
    loop = (checkpoint.get("loops") or {}).get("fit_loop") or {}
    progress, epochs = loop.get("epoch_loop.batch_progress"), loop.get("epoch_progress")
    if not progress or not epochs or not progress.get("is_last_batch") or "global_step" not in checkpoint:
        return 0
    epoch = int(epochs["current"]["processed"])  # the epoch in progress when the checkpoint was written
    if int(checkpoint["global_step"]) != (epoch + 1) * len(sampler.steps(epoch)):
        return 0  # not written at its last step's end (say, in an epoch-end hook, which Lightning resumes itself)
    shift = sum(len(step) for step in sampler.steps(epoch + 1)) - int(progress["current"]["ready"])
    if shift > 0:
        for counter in ("ready", "started", "processed", "completed"):
            progress["current"][counter] = int(progress["current"][counter]) + shift
    return max(shift, 0)
