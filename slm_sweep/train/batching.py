"""Which examples go into which micro-batch: a seeded order, a fixed effective batch, micro-batches under a budget.

The rule: every optimizer step takes the next ``batch_size`` sequences of a per-epoch permutation (seeded by the
run seed and the epoch), so what an optimizer step sees does not depend on memory settings. Inside a step the
sequences are sorted by length and cut into micro-batches of at most ``micro_batch_size`` sequences and at most
``max_tokens`` tokens (padded positions, or real tokens when packing). Only the cut changes with the budget, and
the loss is normalised over the answer tokens of the whole step, so the gradient does not change either.

With several devices, each step's sequences are dealt round-robin in length order (similar token counts per
device) and every device gets the same number of micro-batches, so collectives stay aligned.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from torch.utils.data import Sampler


@dataclass(frozen=True)
class MicroBatchPlan:
    indices: tuple[int, ...]
    step_loss_tokens: int  # answer tokens of the whole optimizer step, over all devices
    last_in_step: bool


def padded_length(length: int, pad_to_multiple_of: int | None) -> int:
    if not pad_to_multiple_of:
        return length
    m = pad_to_multiple_of
    return (length + m - 1) // m * m


def micro_batch_cost(lengths: Sequence[int], packing: bool, pad_to_multiple_of: int | None = None) -> int:
    """Token positions a micro-batch occupies: all rows padded to the longest, or one packed row."""
    if packing:
        return padded_length(sum(lengths), pad_to_multiple_of)
    return len(lengths) * padded_length(max(lengths), pad_to_multiple_of)


def split_by_budget(indices: Sequence[int], lengths: Sequence[int], micro_batch_size: int,
                    max_tokens: int | None, packing: bool = False,
                    pad_to_multiple_of: int | None = None) -> list[list[int]]:
    """Cut ``indices`` (in the given order) into consecutive micro-batches under both limits.

    A single sequence over ``max_tokens`` still gets a micro-batch of its own.
    """
    batches: list[list[int]] = []
    current: list[int] = []
    for i in indices:
        candidate = current + [i]
        over = len(candidate) > micro_batch_size or (
            max_tokens is not None
            and micro_batch_cost([lengths[j] for j in candidate], packing, pad_to_multiple_of) > max_tokens)
        if current and over:
            batches.append(current)
            candidate = [i]
        current = candidate
    if current:
        batches.append(current)
    return batches


def split_to_count(batches: list[list[int]], count: int, lengths: Sequence[int], packing: bool,
                   pad_to_multiple_of: int | None = None) -> list[list[int]]:
    """Halve the costliest splittable micro-batch until there are ``count`` of them."""
    batches = [list(b) for b in batches]
    while len(batches) < count:
        splittable = [k for k, b in enumerate(batches) if len(b) > 1]
        if not splittable:
            raise ValueError(f"cannot cut {sum(map(len, batches))} sequences into {count} micro-batches")
        k = max(splittable,
                key=lambda j: micro_batch_cost([lengths[i] for i in batches[j]], packing, pad_to_multiple_of))
        half = len(batches[k]) // 2
        batches[k:k + 1] = [batches[k][:half], batches[k][half:]]
    return batches


def epoch_permutation(n: int, seed: int, epoch: int) -> list[int]:
    return np.random.default_rng((seed, epoch)).permutation(n).tolist()


def step_groups(n: int, batch_size: int, seed: int, epoch: int, world_size: int = 1) -> list[list[int]]:
    """The sequences of each optimizer step of an epoch.

    The last step may be smaller; with several devices it is cut to a multiple of the device count.
    """
    order = epoch_permutation(n, seed, epoch)
    groups = [order[i:i + batch_size] for i in range(0, n, batch_size)]
    if groups and world_size > 1:
        keep = len(groups[-1]) // world_size * world_size
        groups[-1] = groups[-1][:keep]
        if not groups[-1]:
            groups.pop()
    return groups


def plan_step(group: Sequence[int], lengths: Sequence[int], loss_tokens: Sequence[int], micro_batch_size: int,
              max_tokens: int | None, packing: bool = False, pad_to_multiple_of: int | None = None,
              rank: int = 0, world_size: int = 1) -> list[MicroBatchPlan]:
    """This device's micro-batches of one optimizer step, longest first."""
    by_length = sorted(group, key=lambda i: (-lengths[i], i))
    shares = [by_length[r::world_size] for r in range(world_size)]
    cuts = [split_by_budget(s, lengths, micro_batch_size, max_tokens, packing, pad_to_multiple_of) for s in shares]
    count = max(len(c) for c in cuts)
    mine = split_to_count(cuts[rank], count, lengths, packing, pad_to_multiple_of)
    total = sum(loss_tokens[i] for i in group)
    return [MicroBatchPlan(tuple(b), total, k == len(mine) - 1) for k, b in enumerate(mine)]


class StepBatchSampler(Sampler):
    """Yields the :class:`MicroBatchPlan` s of one device for one epoch; ``set_epoch`` reshuffles.

    ``completed_steps``, when given, is read at the start of an epoch: steps of this epoch already taken before a
    resume are skipped, so a resumed run sees the data it would have seen without the interruption.

    ``len()`` is the micro-batch count of the epoch set (``epoch``, then ``set_epoch``). Under a token budget it
    differs from epoch to epoch (each shuffle cuts differently), while the number of optimizer steps does not.
    Lightning reads it once per data loader and ends the epoch after that many micro-batches, so a data loader
    serves one epoch: ``EncodedDataModule`` builds one for each (``reload_dataloaders_every_n_epochs=1``).
    """

    def __init__(self, lengths: Sequence[int], loss_tokens: Sequence[int], batch_size: int, micro_batch_size: int,
                 max_tokens: int | None, seed: int, packing: bool = False, pad_to_multiple_of: int | None = None,
                 rank: int = 0, world_size: int = 1, completed_steps: Callable[[], int] | None = None,
                 epoch: int = 0):
        if batch_size % world_size:
            raise ValueError(f"trainer.batch_size={batch_size} must be a multiple of the device count {world_size}")
        self.lengths, self.loss_tokens = list(lengths), list(loss_tokens)
        self.batch_size, self.micro_batch_size, self.max_tokens = batch_size, micro_batch_size, max_tokens
        self.seed, self.packing, self.pad_to_multiple_of = seed, packing, pad_to_multiple_of
        self.rank, self.world_size = rank, world_size
        self.completed_steps = completed_steps
        self.epoch = epoch
        self._cache: tuple[int, list[list[MicroBatchPlan]]] | None = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def steps(self, epoch: int) -> list[list[MicroBatchPlan]]:
        """The micro-batch plans of every optimizer step of ``epoch``."""
        if self._cache is None or self._cache[0] != epoch:
            groups = step_groups(len(self.lengths), self.batch_size, self.seed, epoch, self.world_size)
            plans = [plan_step(g, self.lengths, self.loss_tokens, self.micro_batch_size, self.max_tokens,
                               self.packing, self.pad_to_multiple_of, self.rank, self.world_size) for g in groups]
            self._cache = (epoch, plans)
        return self._cache[1]

    def __iter__(self):
        steps = self.steps(self.epoch)
        skip = 0
        if self.completed_steps is not None:
            skip = min(len(steps), max(0, self.completed_steps() - self.epoch * len(steps)))
        for step in steps[skip:]:
            yield from step

    def __len__(self) -> int:
        return sum(len(step) for step in self.steps(self.epoch))


def eval_batches(lengths: Sequence[int], micro_batch_size: int, max_tokens: int | None,
                 pad_to_multiple_of: int | None = None) -> list[list[int]]:
    """Length-sorted micro-batches for evaluation, where order does not matter."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    return split_by_budget(order, lengths, micro_batch_size, max_tokens, False, pad_to_multiple_of)
