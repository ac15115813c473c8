"""The token-budget batcher (slm_sweep.train.batching): coverage, budgets, seeding, devices."""

from __future__ import annotations

import random

import pytest

from slm_sweep.train.batching import (
    StepBatchSampler,
    eval_batches,
    micro_batch_cost,
    padded_length,
    split_by_budget,
    step_groups,
)


def lengths_of(n: int, seed: int = 0) -> list[int]:
    rng = random.Random(seed)
    return [rng.randint(20, 400) for _ in range(n)]


def sampler(lengths, batch_size=16, micro=8, max_tokens=1200, seed=0, **kw) -> StepBatchSampler:
    return StepBatchSampler(lengths, [n // 3 for n in lengths], batch_size, micro, max_tokens, seed, **kw)


def steps_of(plans) -> list[list]:
    steps, current = [], []
    for plan in plans:
        current.append(plan)
        if plan.last_in_step:
            steps.append(current)
            current = []
    assert not current, "an epoch ended in the middle of an optimizer step"
    return steps


@pytest.mark.parametrize("packing", [False, True])
def test_every_example_exactly_once_per_epoch_within_budgets(packing):
    lengths = lengths_of(203)
    s = sampler(lengths, packing=packing, pad_to_multiple_of=8)
    for epoch in range(3):
        s.set_epoch(epoch)
        plans = list(s)
        seen = sorted(i for p in plans for i in p.indices)
        assert seen == list(range(len(lengths)))
        assert len(plans) == len(s)
        for p in plans:
            assert len(p.indices) <= 8
            cost = micro_batch_cost([lengths[i] for i in p.indices], packing, 8)
            assert cost <= 1200 or len(p.indices) == 1


def test_steps_hold_batch_size_sequences_and_the_step_loss_tokens():
    lengths = lengths_of(203)
    loss_tokens = [n // 3 for n in lengths]
    steps = steps_of(list(sampler(lengths)))
    assert len(steps) == 13  # ceil(203 / 16)
    assert [sum(len(p.indices) for p in step) for step in steps] == [16] * 12 + [203 - 12 * 16]
    for step in steps:
        total = sum(loss_tokens[i] for p in step for i in p.indices)
        assert all(p.step_loss_tokens == total for p in step)


def test_the_budget_changes_only_the_cut_not_the_sequences_of_a_step():
    lengths = lengths_of(100)
    coarse = steps_of(list(sampler(lengths, micro=16, max_tokens=None)))
    fine = steps_of(list(sampler(lengths, micro=2, max_tokens=500)))
    assert [sorted(i for p in s for i in p.indices) for s in coarse] == \
           [sorted(i for p in s for i in p.indices) for s in fine]
    assert all(len(s) == 1 for s in coarse)
    assert sum(len(s) for s in fine) > len(fine)


def test_order_is_deterministic_per_seed_and_differs_between_seeds_and_epochs():
    lengths = lengths_of(120)
    order = lambda s: [p.indices for p in s]  # noqa: E731
    a, b, c = sampler(lengths, seed=1), sampler(lengths, seed=1), sampler(lengths, seed=2)
    assert order(a) == order(b)
    assert order(a) != order(c)
    first = order(a)
    a.set_epoch(1)
    assert order(a) != first


def test_sorting_inside_a_step_cuts_padding():
    lengths = lengths_of(256)
    plans = list(sampler(lengths, batch_size=64, micro=8, max_tokens=None))
    grouped = sum(micro_batch_cost([lengths[i] for i in p.indices], False) for p in plans)
    naive = 0  # the same steps cut into micro-batches of 8 in their shuffled order
    for group in step_groups(256, 64, seed=0, epoch=0):
        naive += sum(micro_batch_cost([lengths[i] for i in group[k:k + 8]], False) for k in range(0, 64, 8))
    assert grouped < 0.8 * naive


def test_a_sequence_over_the_budget_gets_a_micro_batch_of_its_own():
    lengths = [100, 900, 100, 100]
    assert split_by_budget([1, 0, 2, 3], lengths, micro_batch_size=8, max_tokens=500) == [[1], [0, 2, 3]]


def test_devices_share_each_step_with_equal_micro_batch_counts():
    lengths = lengths_of(203)
    world = [sampler(lengths, micro=3, max_tokens=700, rank=r, world_size=2) for r in range(2)]
    per_rank = [steps_of(list(s)) for s in world]
    assert len(per_rank[0]) == len(per_rank[1])
    covered = []
    for step0, step1 in zip(*per_rank):
        assert len(step0) == len(step1)
        assert step0[0].step_loss_tokens == step1[0].step_loss_tokens
        covered += [i for p in step0 + step1 for i in p.indices]
    # the last step is cut to a multiple of the device count: one example of the 203 waits for the next epoch
    assert len(covered) == len(set(covered)) == 202


def test_batch_size_must_split_evenly_over_devices():
    with pytest.raises(ValueError, match="multiple of the device count"):
        sampler(lengths_of(10), batch_size=5, world_size=2)


def test_a_resumed_epoch_skips_the_steps_already_taken():
    lengths = lengths_of(100)
    full = steps_of(list(sampler(lengths)))
    resumed = sampler(lengths, completed_steps=lambda: len(full) + 3)  # epoch 1, three steps in
    resumed.set_epoch(1)
    fresh = sampler(lengths)
    fresh.set_epoch(1)
    assert steps_of(list(resumed)) == steps_of(list(fresh))[3:]


def test_eval_batches_cover_everything_sorted_by_length():
    lengths = lengths_of(50)
    batches = eval_batches(lengths, micro_batch_size=4, max_tokens=800, pad_to_multiple_of=8)
    assert sorted(i for b in batches for i in b) == list(range(50))
    flat = [lengths[i] for b in batches for i in b]
    assert flat == sorted(flat, reverse=True)
    assert all(len(b) * padded_length(max(lengths[i] for i in b), 8) <= 800 or len(b) == 1 for b in batches)


def test_a_validation_split_smaller_than_the_devices_is_refused_before_training_naming_the_fix():
    """Each device validates its share of the micro-batches: one left without any fails (Lightning's "zero length"
    on it, a lost connection on the others), after training. Every device refuses it alike, at setup."""
    from types import SimpleNamespace

    from slm_sweep.train.data import EncodedDataModule

    examples = [{"input_ids": [1] * n, "attention_mask": [1] * n, "labels": [1] * n} for n in (5, 6, 7)]
    data = EncodedDataModule(examples, examples[:2], batch_size=2, micro_batch_size=2, pad_token_id=0, seed=0)
    data.trainer = SimpleNamespace(global_rank=1, world_size=2)
    with pytest.raises(ValueError, match=r"validation split's 2 examples make 1 micro-batches of up to 2, fewer than "
                                         r"the 2 devices.*raise dataset.val_size or lower trainer.micro_batch_size"):
        data.setup("fit")
    data.micro_batch_size = 1
    data.setup("fit")
    assert len(data.val_dataloader()) == 1  # the second device's share
