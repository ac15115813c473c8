"""Training a tiny model through slm_sweep.train.fit: the effective batch, what each method trains, throughput
metrics and their loggers, gradient checkpointing, packing, resuming and divergence."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger
from omegaconf import OmegaConf

from slm_sweep.data import dataset_spec, load_splits
from slm_sweep.data.encode import encode_all
from slm_sweep.data.prompts import resolve_style
from slm_sweep.methods import apply_method, load_trained, merge_adapters_for_eval, save_atomically
from slm_sweep.models import load_model_and_tokenizer
from slm_sweep.train.batching import step_groups
from slm_sweep.train.callbacks import ThroughputMonitor, matmul_parameter_count
from slm_sweep.train.compilation import compiled_modules
from slm_sweep.train.fit import build_module, fit, without_cudnn_attention
from slm_sweep.train.module import RANK_ALLOCATION_KEY, DivergedError, device_step_seed
from tests.conftest import CONF_DIR, OutOfMemoryAbove, compose_config

SEED = 3


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """The tiny model's kernels are too small to gain from threads, and spinning threads lose badly on a busy
    machine; one thread keeps these tests fast. Restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def examples():
    from tests.conftest import DATA_ROOT

    if not (DATA_ROOT / "gsm8k" / "train.jsonl").is_file():
        pytest.skip(f"the GSM8K files are not at {DATA_ROOT}")
    _, tokenizer = tiny()
    splits = load_splits(dataset_spec("gsm8k"), data_root=DATA_ROOT)
    return encode_all(tokenizer, splits.train[:16], resolve_style("auto", tokenizer), max_length=400)


def tiny():
    return load_model_and_tokenizer(OmegaConf.load(CONF_DIR / "model" / "tiny.yaml"))


def method_config(name: str, **overrides):
    cfg = compose_config([f"method={name}"]).method
    OmegaConf.set_struct(cfg, False)
    return OmegaConf.merge(cfg, overrides)


def trainer_config(**overrides):
    cfg = compose_config([]).trainer
    base = {"max_steps": 2, "batch_size": 4, "micro_batch_size": 4, "max_length": 160, "progress_bar": False,
            "checkpoint_every_n_steps": None, "log_every_n_steps": 1, "warmup_steps": 0}
    return OmegaConf.merge(cfg, base, overrides)


class GradientRecorder(L.Callback):
    """The gradients the optimizer is about to apply, one dict per optimizer step."""

    def __init__(self):
        self.steps: list[dict[str, torch.Tensor]] = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.steps.append({n: p.grad.detach().clone() for n, p in pl_module.model.named_parameters()
                           if p.grad is not None})


class StopAfter(L.Callback):
    def __init__(self, steps: int):
        self.steps = steps

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step >= self.steps:
            trainer.should_stop = True


class StepContents(L.Callback):
    """The sequences (as sums of their token ids) each optimizer step was computed from."""

    def __init__(self):
        self.current, self.steps = [], []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.current += [int(row.sum()) for row in batch["input_ids"]]
        if batch["last_in_step"]:
            self.steps.append(sorted(self.current))
            self.current = []


def train(examples, tmp_path, method="full", method_overrides=None, callbacks=(), loggers=None, **trainer_overrides):
    model, tokenizer = tiny()
    torch.manual_seed(0)  # the same adapter initialisation in every run
    model = apply_method(model, method_config(method, **(method_overrides or {})))
    outcome = fit(model, examples, [], trainer_config(**trainer_overrides), method_config(method), seed=SEED,
                  out_dir=tmp_path, pad_token_id=tokenizer.pad_token_id, loggers=loggers,
                  extra_callbacks=list(callbacks))
    return model, outcome


def train_resumed(examples, out_dir, method="full", method_overrides=None, *, at: int, **trainer_overrides):
    """Rerun an interrupted run in ``out_dir`` whose checkpoint is at step ``at``: it trains only the steps after it
    (a rerun from step 0 of this deterministic training would end with the same weights)."""
    steps = StepContents()
    model, outcome = train(examples, out_dir, method, method_overrides, callbacks=[steps], **trainer_overrides)
    assert len(steps.steps) == trainer_overrides["max_steps"] - at and not steps.current
    return model, outcome


def assert_same_tensors(a: dict, b: dict, rtol=1e-4, atol=1e-6):
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=rtol, atol=atol, msg=name)


def weights(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def test_the_pass_on_the_final_weights_is_timed_apart_from_training(examples, tmp_path):
    """train_time_s is training's time: the validation pass on the final weights, whose share of a cell differs
    between methods, is final_validation_s (here made slow: a second per batch)."""
    import time

    class SlowFinalValidation(L.Callback):
        batches = 0

        def on_validation_batch_end(self, trainer, *args, **kwargs):
            if trainer.validating:  # a 2-step fit validates only in the pass after it
                self.batches += 1
                time.sleep(1.0)

    slow = SlowFinalValidation()
    model, tokenizer = tiny()
    model = apply_method(model, method_config("lora"))
    began = time.perf_counter()
    outcome = fit(model, examples[:8], examples[8:12], trainer_config(), method_config("lora"), seed=SEED,
                  out_dir=tmp_path, pad_token_id=tokenizer.pad_token_id, extra_callbacks=[slow])
    wall = time.perf_counter() - began
    assert slow.batches >= 1 and outcome.val_loss is not None
    assert outcome.perf["final_validation_s"] >= slow.batches
    assert outcome.train_time_s < wall - slow.batches
    assert outcome.train_time_s + outcome.perf["final_validation_s"] <= wall


@pytest.mark.parametrize("method", ["full", "lora"])
def test_the_micro_batch_changes_neither_gradients_nor_weights(examples, tmp_path, method):
    runs = {}
    for name, overrides in {"micro4": {"micro_batch_size": 4}, "micro2": {"micro_batch_size": 2},
                            "budget": {"micro_batch_size": 4, "micro_batch_tokens": 300}}.items():
        grads = GradientRecorder()
        model, outcome = train(examples, tmp_path / name, method, {"dropout": 0.0}, callbacks=[grads],
                               **overrides)
        runs[name] = (grads.steps, weights(model), outcome)
    (g4, w4, o4), (g2, w2, o2), (gb, wb, ob) = runs["micro4"], runs["micro2"], runs["budget"]
    assert len(g4) == len(g2) == len(gb) == 2
    for step in range(2):
        assert_same_tensors(g4[step], g2[step])
        assert_same_tensors(g4[step], gb[step])
    assert_same_tensors(w4, w2)
    assert_same_tensors(w4, wb)
    assert o4.train_loss == pytest.approx(o2.train_loss, rel=1e-5)
    # the token budget really cut the steps finer
    assert ob.perf["train_padding_fraction"] < o4.perf["train_padding_fraction"]


@pytest.mark.parametrize("method", ["full", "lora", "dora"])
def test_each_method_changes_exactly_the_parameters_it_trains(examples, tmp_path, method):
    model, tokenizer = tiny()
    model = apply_method(model, method_config(method))
    before = weights(model)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    fit(model, examples, [], trainer_config(max_steps=3), method_config(method), seed=SEED, out_dir=tmp_path,
        pad_token_id=tokenizer.pad_token_id)
    changed = {n for n, p in model.named_parameters() if not torch.equal(p.detach(), before[n])}
    assert changed == trainable
    if method == "full":
        assert changed == set(before)
    else:
        assert changed and all("lora_" in n for n in changed)


class PretendPeak(L.Callback):
    """Gives the CPU a peak, so that the throughput monitor reports an MFU (it has none for a CPU)."""

    PEAK = 1e12

    def on_train_start(self, trainer, pl_module):
        (monitor,) = [c for c in trainer.callbacks if isinstance(c, ThroughputMonitor)]
        monitor.peak_flops = self.PEAK


def test_throughput_is_measured_on_real_tokens_and_logged(examples, tmp_path):
    logger = CSVLogger(save_dir=str(tmp_path), name="csv", version="")
    model, outcome = train(examples, tmp_path, "lora", loggers=[logger], callbacks=[PretendPeak()], max_steps=3,
                           micro_batch_size=2, throughput_warmup_steps=1)
    logger.finalize("success")
    perf = outcome.perf
    steps = step_groups(len(examples), 4, SEED, 0)[:3]
    assert perf["train_tokens"] == sum(len(examples[i]["input_ids"]) for step in steps for i in step)
    assert perf["train_tokens_per_s"] > 0 and perf["step_time_s"] > 0 and perf["peak_memory_mb"] > 0
    assert 0 <= perf["train_padding_fraction"] < 1
    assert perf["throughput_warmup_steps"] == 1
    # MFU over the measured steps (after the warm-up step): 4N FLOPs a token, 12 x layers x width a query-key pair
    lengths = [len(examples[i]["input_ids"]) for step in steps[1:] for i in step]
    config = model.config
    per_token = 4 * matmul_parameter_count(model)
    per_pair = 12 * config.num_hidden_layers * config.num_attention_heads * config.head_dim
    flops_per_token = per_token + per_pair * sum(n * n for n in lengths) / sum(lengths)
    assert perf["mfu"] * PretendPeak.PEAK / perf["train_tokens_per_s"] == pytest.approx(flops_per_token, rel=1e-9)

    rows = list(csv.DictReader(open(tmp_path / "csv" / "metrics.csv")))
    logged = {k for row in rows for k, v in row.items() if v}
    assert {"perf/tokens_per_s", "perf/step_time_s", "perf/peak_memory_mb", "perf/train_tokens_per_s",
            "train/loss", "train/lr"} <= logged
    final = [r for r in rows if r.get("perf/train_tokens_per_s")][-1]
    assert float(final["perf/train_tokens_per_s"]) == pytest.approx(perf["train_tokens_per_s"])
    assert float(final["perf/mean_step_time_s"]) == pytest.approx(perf["step_time_s"])
    assert float(final["perf/run_peak_memory_mb"]) == pytest.approx(perf["peak_memory_mb"])
    # each window's figures once per step: the run's means are not logged again under the windows' names
    logged_at = [(r["step"], k) for r in rows for k in ("perf/step_time_s", "perf/peak_memory_mb") if r.get(k)]
    assert logged_at and len(logged_at) == len(set(logged_at))


def test_training_on_the_cpu_reports_the_cpu_s_figures(examples, tmp_path):
    """Also on a machine with a GPU: no bf16 peak, so no MFU, and the process's peak resident memory."""
    from tests.test_train_throughput import COUNTER_LAG_MB, resident_peak_mb

    before = resident_peak_mb()
    _, outcome = train(examples, tmp_path, max_steps=1, accelerator="cpu")
    assert outcome.placement["device"] == "cpu" and outcome.perf["mfu"] is None
    assert before - COUNTER_LAG_MB <= outcome.perf["peak_memory_mb"] <= resident_peak_mb() + COUNTER_LAG_MB
    assert outcome.placement["cudnn_attention"] is None


@pytest.mark.parametrize("device", ["cuda", "cuda:1", "cpu"])
def test_training_on_cuda_turns_cudnn_attention_off_and_back_on(device):
    # PyTorch's global flag, the one its attention dispatch reads; settable without a GPU
    assert torch.backends.cuda.cudnn_sdp_enabled()
    with without_cudnn_attention(torch.device(device)):
        assert torch.backends.cuda.cudnn_sdp_enabled() is (device == "cpu")
    assert torch.backends.cuda.cudnn_sdp_enabled()
    with pytest.raises(RuntimeError, match="stop"), without_cudnn_attention(device):
        raise RuntimeError("stop")
    assert torch.backends.cuda.cudnn_sdp_enabled()


def test_a_run_shorter_than_the_warmup_still_reports_a_rate(examples, tmp_path):
    _, outcome = train(examples, tmp_path, "lora", max_steps=1, throughput_warmup_steps=2)
    assert outcome.perf["train_tokens_per_s"] > 0 and outcome.perf["throughput_warmup_steps"] == 0


def test_gradient_checkpointing_runs_and_gives_the_same_gradients(examples, tmp_path):
    plain, checkpointed = GradientRecorder(), GradientRecorder()
    train(examples, tmp_path / "a", "lora", {"dropout": 0.0}, callbacks=[plain])
    model, _ = train(examples, tmp_path / "b", "lora", {"dropout": 0.0}, callbacks=[checkpointed],
                     gradient_checkpointing=True)
    assert model.base_model.model.model.gradient_checkpointing
    for a, b in zip(plain.steps, checkpointed.steps):
        assert_same_tensors(a, b)


def test_packing_keeps_examples_apart(examples, tmp_path):
    padded, packed = GradientRecorder(), GradientRecorder()
    _, o1 = train(examples, tmp_path / "a", callbacks=[padded], micro_batch_size=2)
    _, o2 = train(examples, tmp_path / "b", callbacks=[packed], micro_batch_size=2, packing=True)
    for a, b in zip(padded.steps, packed.steps):
        assert_same_tensors(a, b)
    assert o2.perf["train_padding_fraction"] == 0


@pytest.mark.parametrize("method", ["full", "lora"])
def test_a_resumed_run_ends_where_an_uninterrupted_one_does(examples, tmp_path, method):
    """LoRA's dropout (0.05) draws from the random state the checkpoint restores."""
    straight, uninterrupted = train(examples, tmp_path / "straight", method, max_steps=6)
    train(examples, tmp_path / "resumed", method, max_steps=6, checkpoint_every_n_steps=5, callbacks=[StopAfter(5)])
    resumed, outcome = train_resumed(examples, tmp_path / "resumed", method, at=5, max_steps=6,
                                     checkpoint_every_n_steps=5)
    assert outcome.train_steps == 6
    assert_same_tensors(weights(straight), weights(resumed), rtol=0, atol=0)
    # the gradient norms of the steps before the checkpoint come back with it
    clipping = ("train_grad_norm_median", "train_clipped_fraction")
    assert [outcome.perf[k] for k in clipping] == [uninterrupted.perf[k] for k in clipping]
    assert uninterrupted.perf["train_grad_norm_median"] > 0


def test_a_run_resumed_from_its_last_step_keeps_its_training_loss(examples, tmp_path):
    """Interrupted after training (in evaluation), a cell resumes from a checkpoint at max_steps: no step is left
    to train, and the loss reported is the one the checkpoint's last step had."""
    _, finished = train(examples, tmp_path, "full", max_steps=4, checkpoint_every_n_steps=2)
    _, resumed = train(examples, tmp_path, "full", max_steps=4, checkpoint_every_n_steps=2)
    assert resumed.train_steps == 4 and finished.train_loss is not None
    assert resumed.train_loss == finished.train_loss
    assert resumed.perf["train_loss_tail_mean"] == finished.perf["train_loss_tail_mean"]
    # trained nothing in this process: 0 tokens (null would read "training did not finish"), no rates
    assert finished.perf["train_tokens"] > 0 and resumed.perf["train_tokens"] == 0
    assert resumed.perf["train_tokens_per_s"] is None and "peak_memory_mb" in resumed.perf


class InterruptInFinalValidation(L.Callback):
    batches = 0

    def on_validation_batch_end(self, trainer, *args, **kwargs):
        if trainer.validating:  # a 2-step fit validates only in the pass after it
            self.batches += 1
            raise KeyboardInterrupt


def fit_lora(examples, out_dir, callbacks, **trainer_overrides):
    model, tokenizer = tiny()
    torch.manual_seed(0)
    model = apply_method(model, method_config("lora"))
    return fit(model, examples[:8], examples[8:12], trainer_config(**trainer_overrides), method_config("lora"),
               seed=SEED, out_dir=out_dir, pad_token_id=tokenizer.pad_token_id, extra_callbacks=callbacks)


def test_an_interrupt_in_the_final_validation_pass_keeps_the_training(examples, tmp_path):
    """Lightning passes an exception in trainer.validate to the callbacks too: the checkpoint of the last step
    spares the rerun the training, which then trains nothing (0 tokens, no rates) and validates the same weights."""
    from slm_sweep.train.interrupt import CheckpointOnInterrupt

    straight = fit_lora(examples, tmp_path / "straight", [])
    interrupt, out = InterruptInFinalValidation(), tmp_path / "interrupted"
    with pytest.raises(SystemExit):  # Lightning's handler of a KeyboardInterrupt exits
        fit_lora(examples, out, [interrupt, CheckpointOnInterrupt(out / "checkpoints" / "last.ckpt")])
    assert interrupt.batches == 1
    assert torch.load(out / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == straight.train_steps
    rerun = fit_lora(examples, out, [])
    assert rerun.train_steps == straight.train_steps and rerun.val_loss == pytest.approx(straight.val_loss)
    assert rerun.perf["train_tokens"] == 0 and rerun.perf["train_tokens_per_s"] is None


def test_a_sigterm_before_lightning_s_handler_is_in_place_stops_the_run(examples, tmp_path):
    """Lightning sets up its SIGTERM handler only after on_fit_start and a checkpoint's restore: a SIGTERM before
    it (a scheduler's preemption while a resumed run loads its optimizer state) stops the cell."""
    import os
    import signal

    from slm_sweep.train.interrupt import CheckpointOnInterrupt, sigterm_as_interrupt

    class SigtermAtFitStart(L.Callback):
        def on_fit_start(self, trainer, pl_module):
            os.kill(os.getpid(), signal.SIGTERM)

    interrupt, steps = CheckpointOnInterrupt(tmp_path / "checkpoints" / "last.ckpt"), StepContents()
    with pytest.raises((KeyboardInterrupt, SystemExit)), sigterm_as_interrupt(interrupt):
        fit_lora(examples, tmp_path, [interrupt, SigtermAtFitStart(), steps], max_steps=3)
    assert steps.steps == [] and not steps.current


def test_the_tail_loss_is_the_mean_of_the_last_tenth_of_the_steps(examples, tmp_path):
    """12 steps: the last two (10 % rounded up), as the per-step curve has them."""
    import csv

    from lightning.pytorch.loggers import CSVLogger

    logger = CSVLogger(save_dir=str(tmp_path), name="csv", version="")
    _, outcome = train(examples, tmp_path / "run", "full", loggers=[logger], max_steps=12, log_every_n_steps=1)
    logger.finalize("success")
    with (tmp_path / "csv" / "metrics.csv").open() as f:
        logged = [float(r["train/loss"]) for r in csv.DictReader(f) if r.get("train/loss")]
    assert len(logged) == 12 and logged[-1] == outcome.train_loss
    assert outcome.perf["train_loss_tail_mean"] == pytest.approx((logged[-2] + logged[-1]) / 2)
    assert outcome.perf["train_loss_tail_mean"] != outcome.train_loss


def test_a_resumed_run_s_tail_loss_holds_the_steps_before_its_checkpoint(examples, tmp_path):
    """20 steps, a checkpoint at step 19 between two loss read-backs (every 4 steps): the tail (steps 19 and 20)
    holds step 19's loss, trained before the resume, as the uninterrupted run's does."""
    settings = {"max_steps": 20, "log_every_n_steps": 4}
    _, straight = train(examples, tmp_path / "straight", **settings)
    train(examples, tmp_path / "resumed", checkpoint_every_n_steps=19, callbacks=[StopAfter(19)], **settings)
    _, resumed = train_resumed(examples, tmp_path / "resumed", at=19, checkpoint_every_n_steps=19, **settings)
    assert resumed.train_steps == 20
    assert resumed.perf["train_loss_tail_mean"] == straight.perf["train_loss_tail_mean"] != straight.train_loss


class SigtermBetweenMicroBatches(L.Callback):
    """What Lightning's SIGTERM handler does (SLURM preemption) after the first micro-batch of step ``step + 1``:
    Lightning stops after that micro-batch, in the middle of an optimizer step."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step and not batch["last_in_step"]:
            trainer._signal_connector.received_sigterm = True


def test_an_interrupt_between_micro_batches_resumes_at_the_step_and_keeps_every_epoch_whole(examples, tmp_path):
    """16 examples in steps of 4 (two micro-batches each) for 6 steps: the resumed run crosses an epoch boundary,
    which a checkpoint counting the unfinished step's micro-batches would reach early."""
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    from slm_sweep.train.interrupt import CheckpointOnInterrupt

    straight_steps, first, second = StepContents(), StepContents(), StepContents()
    straight, _ = train(examples, tmp_path / "straight", "lora", max_steps=6, micro_batch_size=2,
                        callbacks=[straight_steps])
    out = tmp_path / "resumed"
    with pytest.raises(SIGTERMException):
        train(examples, out, "lora", max_steps=6, micro_batch_size=2,
              callbacks=[SigtermBetweenMicroBatches(1), first, CheckpointOnInterrupt(out / "checkpoints" / "last.ckpt")])
    assert len(first.steps) == 1 and first.current  # stopped inside the second step
    resumed, outcome = train(examples, out, "lora", max_steps=6, micro_batch_size=2, callbacks=[second])
    assert outcome.train_steps == 6
    assert first.steps + second.steps == straight_steps.steps and not second.current
    assert_same_tensors(weights(straight), weights(resumed), rtol=0, atol=0)


def test_a_run_resumed_under_another_micro_batch_size_trains_on_the_same_steps(examples, tmp_path):
    """The micro-batch size is not in the training key, so a checkpoint of 4 micro-batches per step resumes
    under 2: the epoch must still end after its last step, not after as many micro-batches as before."""
    straight_steps, first, second = StepContents(), StepContents(), StepContents()
    train(examples, tmp_path / "straight", "lora", max_steps=6, micro_batch_size=2, callbacks=[straight_steps])
    out = tmp_path / "resumed"
    train(examples, out, "lora", max_steps=6, micro_batch_size=1, checkpoint_every_n_steps=1,
          callbacks=[StopAfter(1), first])
    _, outcome = train(examples, out, "lora", max_steps=6, micro_batch_size=2, callbacks=[second])
    assert outcome.train_steps == 6
    assert first.steps + second.steps == straight_steps.steps and not second.current


def sequences_in(batch: dict) -> list[tuple[int, ...]]:
    """The token ids of each example of a collated micro-batch, padded (rows) or packed (one row)."""
    if "attention_mask" in batch:
        return [tuple(row[mask.bool()].tolist()) for row, mask in zip(batch["input_ids"], batch["attention_mask"])]
    ids, positions = batch["input_ids"][0].tolist(), batch["position_ids"][0].tolist()
    starts = [i for i, p in enumerate(positions) if p == 0] + [len(ids)]
    return [tuple(ids[a:b]) for a, b in zip(starts, starts[1:])]


class OptimizerStepExamples(L.Callback):
    """(epoch, the examples' indices) of each optimizer step, as the optimizer steps: whatever the micro-batches
    say, what was accumulated between two optimizer steps."""

    def __init__(self, examples):
        self.index = {tuple(e["input_ids"]): i for i, e in enumerate(examples)}
        assert len(self.index) == len(examples), "the fixture's examples must be told apart by their tokens"
        self.current, self.steps = [], []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.current += [self.index[s] for s in sequences_in(batch)]

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.steps.append((trainer.current_epoch, sorted(self.current)))
        self.current = []


def planned_steps(examples, batch_size: int, epochs: int) -> list[tuple[int, list[int]]]:
    return [(epoch, sorted(group)) for epoch in range(epochs)
            for group in step_groups(len(examples), batch_size, SEED, epoch)]


def micro_batches_per_epoch(examples, epochs: int, **settings) -> list[int]:
    from slm_sweep.data.encode import loss_token_count
    from slm_sweep.train.batching import StepBatchSampler

    sampler = StepBatchSampler([len(e["input_ids"]) for e in examples],
                               [loss_token_count(e["labels"]) for e in examples], seed=SEED, **settings)
    return [sum(len(step) for step in sampler.steps(epoch)) for epoch in range(epochs)]


# budgets under which the fixture's epochs have different micro-batch counts, more and fewer than epoch 0's
BUDGETS = [pytest.param(False, 600, id="padded"), pytest.param(True, 650, id="packed")]


@pytest.mark.parametrize("packing, budget", BUDGETS)
def test_under_a_token_budget_every_epoch_trains_every_example_in_whole_steps(examples, tmp_path, packing, budget):
    """Each epoch's shuffle cuts into its own number of micro-batches under a budget. Lightning reads an epoch's
    length from its data loader: read once, a longer epoch was cut short (its last sequences never trained, its
    last step's gradient carried into the next epoch's first step) and a resume then skipped the wrong steps."""
    epochs, batch_size = 4, 4
    counts = micro_batches_per_epoch(examples, epochs, batch_size=batch_size, micro_batch_size=batch_size,
                                     max_tokens=budget, packing=packing)
    assert max(counts[1:]) > counts[0] and min(counts[1:]) <= counts[0], counts
    planned = planned_steps(examples, batch_size, epochs)
    for epoch in range(epochs):  # every example of every epoch once, in steps of batch_size but the last
        groups = [group for e, group in planned if e == epoch]
        assert sorted(i for group in groups for i in group) == list(range(len(examples)))
        assert {len(group) for group in groups[:-1]} == {batch_size}
    seen = OptimizerStepExamples(examples)
    _, outcome = train(examples, tmp_path, "lora", max_steps=len(planned), batch_size=batch_size,
                       micro_batch_size=batch_size, micro_batch_tokens=budget, packing=packing, callbacks=[seen])
    assert outcome.train_steps == len(planned)
    assert seen.steps == planned and not seen.current


@pytest.mark.parametrize("into_epoch", [pytest.param(1, id="inside-epoch-2"), pytest.param(0, id="at-epoch-2")])
@pytest.mark.parametrize("packing, budget", BUDGETS)
def test_under_a_token_budget_a_run_resumed_in_a_later_epoch_trains_like_an_uninterrupted_one(
        examples, tmp_path, packing, budget, into_epoch):
    """Resumed after a step of epoch 2, or after the last step of epoch 1 (Lightning first loads the data for
    epoch 1, whose micro-batch count differs from epoch 2's, then moves on)."""
    epochs, batch_size = 4, 4
    planned = planned_steps(examples, batch_size, epochs)
    stop = 2 * len(planned) // epochs + into_epoch
    settings = dict(max_steps=len(planned), batch_size=batch_size, micro_batch_size=batch_size,
                    micro_batch_tokens=budget, packing=packing)
    straight_steps, first, second = (OptimizerStepExamples(examples) for _ in range(3))
    straight, _ = train(examples, tmp_path / "straight", "lora", callbacks=[straight_steps], **settings)
    out = tmp_path / "resumed"
    train(examples, out, "lora", checkpoint_every_n_steps=stop, callbacks=[StopAfter(stop), first], **settings)
    resumed, outcome = train(examples, out, "lora", callbacks=[second], **settings)
    assert outcome.train_steps == len(planned)
    assert first.steps + second.steps == straight_steps.steps == planned
    assert_same_tensors(weights(straight), weights(resumed), rtol=0, atol=0)


@pytest.mark.parametrize("length, error", [(3, "ended inside optimizer step 1"), (2, "ended at optimizer step 1 instead of 3")])
def test_an_epoch_that_ends_before_its_plan_does_is_an_error(examples, tmp_path, monkeypatch, length, error):
    """Were Lightning told an epoch shorter than its plan (3 steps of two micro-batches), it would end the epoch
    between two micro-batches of a step, or steps early: an error, not a step carried into the next epoch or
    sequences never trained on."""
    from slm_sweep.train.batching import StepBatchSampler

    monkeypatch.setattr(StepBatchSampler, "__len__", lambda self: length)
    with pytest.raises(RuntimeError, match=error):
        train(examples, tmp_path, max_steps=4, micro_batch_size=2)


class CrashAfterStep(L.Callback):
    """A failure no handler sees (a lost node, SIGKILL) once step ``step`` has finished."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step and batch["last_in_step"]:
            raise RuntimeError("lost")


def test_checkpoints_written_after_a_resume_are_at_step_boundaries_with_the_random_state(examples, tmp_path):
    """Resumed at step 2 with a checkpoint every 2 steps, then lost at step 3: the checkpoint it leaves must be
    step 2's as the first run wrote it, not one written after the first micro-batch of step 3."""
    from slm_sweep.train.module import RNG_STATES_KEY

    straight_steps, first, third = StepContents(), StepContents(), StepContents()
    straight, _ = train(examples, tmp_path / "straight", "lora", max_steps=6, micro_batch_size=2,
                        callbacks=[straight_steps])
    out, settings = tmp_path / "resumed", dict(max_steps=6, micro_batch_size=2, checkpoint_every_n_steps=2)
    train(examples, out, "lora", callbacks=[StopAfter(2), first], **settings)
    with pytest.raises(RuntimeError, match="lost"):
        train(examples, out, "lora", callbacks=[CrashAfterStep(3)], **settings)
    saved = torch.load(out / "checkpoints" / "last.ckpt", weights_only=False)
    progress = saved["loops"]["fit_loop"]["epoch_loop.batch_progress"]["current"]
    assert saved["global_step"] == 2 and progress["ready"] == 4 and RNG_STATES_KEY in saved
    resumed, _ = train(examples, out, "lora", callbacks=[third], **settings)
    assert first.steps + third.steps == straight_steps.steps
    assert_same_tensors(weights(straight), weights(resumed), rtol=0, atol=0)


class ExitAfterStep(L.Callback):
    """What submitit's handler of SLURM's time-out signal does inside a training step: requeue, then
    ``sys.exit(-1)``."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step and batch["last_in_step"]:
            raise SystemExit(-1)


def test_an_exit_by_a_time_out_handler_saves_the_checkpoint_a_requeued_job_resumes(examples, tmp_path):
    from slm_sweep.train.interrupt import CheckpointOnInterrupt

    straight, _ = train(examples, tmp_path / "straight", "lora", max_steps=5)
    out = tmp_path / "requeued"
    with pytest.raises(SystemExit):
        train(examples, out, "lora", max_steps=5, checkpoint_every_n_steps=None,
              callbacks=[ExitAfterStep(3), CheckpointOnInterrupt(out / "checkpoints" / "last.ckpt")])
    assert torch.load(out / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 3
    resumed, outcome = train_resumed(examples, out, "lora", at=3, max_steps=5)
    assert outcome.train_steps == 5
    assert_same_tensors(weights(straight), weights(resumed), rtol=0, atol=0)


def test_an_interrupt_while_a_checkpoint_is_restored_leaves_that_checkpoint_whole(examples, tmp_path, monkeypatch):
    """Lightning restores the step before the optimizer's and the scheduler's state: a checkpoint saved in between
    would replace the one being restored by one without them, and the rerun would train on from it unflagged."""
    from lightning.pytorch.trainer.connectors.checkpoint_connector import _CheckpointConnector

    from slm_sweep.train.interrupt import CheckpointOnInterrupt

    checkpoint = tmp_path / "checkpoints" / "last.ckpt"
    with pytest.raises(SystemExit):
        train(examples, tmp_path, "lora", max_steps=4, checkpoint_every_n_steps=None,
              callbacks=[ExitAfterStep(2), CheckpointOnInterrupt(checkpoint)])
    saved = checkpoint.read_bytes()

    def interrupted(self):
        raise KeyboardInterrupt

    monkeypatch.setattr(_CheckpointConnector, "restore_optimizers_and_schedulers", interrupted)
    with pytest.raises(SystemExit):
        train(examples, tmp_path, "lora", max_steps=4, callbacks=[CheckpointOnInterrupt(checkpoint)])
    assert checkpoint.read_bytes() == saved


class SigtermAtTrainEnd(L.Callback):
    def on_train_end(self, trainer, pl_module):
        import os
        import signal

        os.kill(os.getpid(), signal.SIGTERM)


def test_a_sigterm_at_the_end_of_training_stops_the_run_with_the_last_step_s_checkpoint(examples, tmp_path):
    """Lightning looks at a SIGTERM for the last time before the on_train_end hooks: one that arrives in them (an
    earlier callback's, the throughput summary's) would let the cell run on into evaluation."""
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    from slm_sweep.train.interrupt import CheckpointOnInterrupt

    checkpoint = tmp_path / "checkpoints" / "last.ckpt"
    with pytest.raises((SIGTERMException, SystemExit)):
        train(examples, tmp_path, "lora", max_steps=2, checkpoint_every_n_steps=None,
              callbacks=[SigtermAtTrainEnd(), CheckpointOnInterrupt(checkpoint)])
    assert torch.load(checkpoint, weights_only=False)["global_step"] == 2


@pytest.mark.parametrize("method", ["full", "lora"])
def test_weights_loaded_in_bf16_train_as_float32_master_weights_under_mixed_precision(examples, tmp_path, method):
    """model.dtype=bfloat16 (or auto on a bf16 checkpoint) with bf16-mixed: AdamW on bf16 weights would lose every
    update under half a bf16 step, full fine-tuning's most of all, while PEFT keeps adapters in float32."""
    model, tokenizer = tiny()
    model = apply_method(model.to(torch.bfloat16), method_config(method))
    before = {n: p.detach().float().clone() for n, p in model.named_parameters() if p.requires_grad}
    outcome = fit(model, examples, [], trainer_config(precision="bf16-mixed", max_steps=3), method_config(method),
                  seed=SEED, out_dir=tmp_path, pad_token_id=tokenizer.pad_token_id)
    trained = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert all(p.dtype == torch.float32 for p in trained.values())
    assert (outcome.placement.get("trainable_upcast_to_float32", 0) > 0) == (method == "full")
    changed = sum(int((p.detach() != before[n]).sum()) for n, p in trained.items())
    assert changed / sum(p.numel() for p in trained.values()) > 0.9
    # asked for half weights: left half
    half, _ = tiny()
    half = apply_method(half.to(torch.bfloat16), method_config("full"))
    kept = fit(half, examples, [], trainer_config(precision="bf16-true", max_steps=1), method_config("full"),
               seed=SEED, out_dir=tmp_path / "true", pad_token_id=tokenizer.pad_token_id)
    assert "trainable_upcast_to_float32" not in kept.placement
    assert all(p.dtype == torch.bfloat16 for p in half.parameters())


def test_a_non_finite_loss_stops_training(examples, tmp_path):
    model, tokenizer = tiny()
    with torch.no_grad():
        model.model.norm.weight.fill_(float("nan"))
    with pytest.raises(DivergedError, match="nan at step 1"):
        fit(model, examples, [], trainer_config(max_steps=3), method_config("full"), seed=SEED, out_dir=tmp_path,
            pad_token_id=tokenizer.pad_token_id)


CLIP = 1e-3  # far below the tiny model's gradient norm: every step is clipped


class OptimizerStepView(GradientRecorder):
    """The gradients the optimizer is about to apply, the precision plugin and whether the optimizer unscales
    float16 gradients inside its step (fused AdamW: ``_step_supports_amp_scaling``)."""

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        super().on_before_optimizer_step(trainer, pl_module, optimizer)
        self.plugin = trainer.precision_plugin
        self.unscales_in_step = getattr(optimizer, "_step_supports_amp_scaling", False)


def gradient_norm(gradients: dict[str, torch.Tensor]) -> float:
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in gradients.values()])).item()


def test_bf16_mixed_precision_clips_the_gradients_of_the_fused_optimizer(examples, tmp_path):
    """bf16 has no loss scaler, so its gradients are clipped as they are, also for fused AdamW (the default),
    which Lightning's own clipping refuses under mixed precision."""
    from lightning.pytorch.plugins.precision import MixedPrecision

    seen = OptimizerStepView()
    _, outcome = train(examples, tmp_path, callbacks=[seen], precision="bf16-mixed", gradient_clip_val=CLIP,
                       max_steps=1)
    assert type(seen.plugin) is MixedPrecision and seen.plugin.scaler is None
    assert seen.unscales_in_step
    assert gradient_norm(seen.steps[0]) == pytest.approx(CLIP, rel=1e-3)
    assert outcome.train_steps == 1 and outcome.train_loss > 0
    # the norm before clipping is recorded, and the step counts as clipped
    assert outcome.perf["train_grad_norm_median"] > CLIP and outcome.perf["train_clipped_fraction"] == 1.0
    _, unclipped = train(examples, tmp_path / "unclipped", precision="bf16-mixed", gradient_clip_val=None, max_steps=1)
    assert unclipped.perf["train_grad_norm_median"] is None and unclipped.perf["train_clipped_fraction"] is None


@pytest.mark.parametrize("fused", [False, True])
def test_float16_gradients_are_clipped_at_their_unscaled_norm(examples, tmp_path, fused):
    """Under 16-mixed a GradScaler multiplies the loss, hence the gradients, by its scale until the optimizer step
    unscales them: before this hook without a fused optimizer, inside the step with one. Either way the limit
    applies to the unscaled norm. (Lightning turns 16-mixed into bf16-mixed on a CPU: the float16 plugin is
    given here explicitly.)"""
    from lightning.pytorch.plugins.precision import MixedPrecision

    from slm_sweep.train.fit import build_data, build_module

    model, tokenizer = tiny()
    cfg = trainer_config(max_steps=1, gradient_clip_val=CLIP, fused_adamw=fused)
    plugin, seen = MixedPrecision("16-mixed", "cpu"), OptimizerStepView()
    trainer = L.Trainer(accelerator="cpu", plugins=[plugin], max_steps=1, logger=False, callbacks=[seen],
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        default_root_dir=str(tmp_path))
    module = build_module(model, cfg, method_config("full"))
    trainer.fit(module, datamodule=build_data(examples, [], cfg, SEED, tokenizer.pad_token_id))
    assert seen.unscales_in_step is fused and trainer.global_step == 1
    # the norm recorded is the unscaled one (the scale is 2**16 at the first step)
    assert CLIP < module.grad_norms[0] < 1e3
    still_scaled_by = plugin.scaler.get_scale() if fused else 1.0
    assert still_scaled_by > 1 or not fused
    assert gradient_norm(seen.steps[0]) == pytest.approx(CLIP * still_scaled_by, rel=1e-3)


class CompiledModules(L.Callback):
    """The names of the modules that run compiled while training."""

    def on_train_start(self, trainer, pl_module):
        self.names = list(compiled_modules(pl_module.model))


@pytest.mark.parametrize("scope", ["layers", "model"])
def test_compiled_training_hands_the_eager_model_to_evaluation(examples, tmp_path, scope):
    """The wiring only: under the ``force_eager`` stance the compiled wrappers run the eager forward (fast); the
    slow test below compiles for real."""
    seen = CompiledModules()
    with torch.compiler.set_stance("force_eager"):
        model, outcome = train(examples, tmp_path, "lora", callbacks=[seen], max_steps=2, compile=True,
                               compile_scope=scope)
    if scope == "layers":
        assert [n.rsplit(".", 2)[-2:] for n in seen.names] == [["layers", "0"], ["layers", "1"]]
        assert outcome.placement["compiled"] == {"scope": "layers", "modules": 2, "module_class": "LlamaDecoderLayer",
                                                 "input_grads": True, "graph_breaks": 0}
    else:
        assert seen.names == [""] and outcome.placement["compiled"]["scope"] == "model"
    assert not compiled_modules(model)


def test_a_graph_replaying_compile_mode_trains_like_eager(examples, tmp_path):
    """trainer.compile_mode=reduce-overhead, the wiring (under the force_eager stance: CUDA graphs need a GPU,
    and a CPU compile skips them): the module marks each step for the graphs, hands the step's loss tokens over as
    a device tensor and copies the loss it keeps; gradients, weights and loss are exactly those of eager
    training."""

    class Mode(L.Callback):
        def on_train_start(self, trainer, pl_module):
            self.replays_graphs = pl_module.replays_graphs

    eager, replaying, mode = GradientRecorder(), GradientRecorder(), Mode()
    plain_model, plain = train(examples, tmp_path / "a", "lora", {"dropout": 0.0}, callbacks=[eager])
    with torch.compiler.set_stance("force_eager"):
        model, outcome = train(examples, tmp_path / "b", "lora", {"dropout": 0.0}, callbacks=[replaying, mode],
                               compile=True, compile_scope="model", compile_mode="reduce-overhead")
    assert mode.replays_graphs is True
    assert outcome.placement["compiled"]["mode"] == "reduce-overhead"
    assert len(eager.steps) == len(replaying.steps) == 2
    for a, b in zip(eager.steps, replaying.steps):
        assert_same_tensors(a, b, rtol=0, atol=0)
    assert_same_tensors(weights(plain_model), weights(model), rtol=0, atol=0)
    assert outcome.train_loss == plain.train_loss


class RotaryDtypes(L.Callback):
    """The dtypes of the first decoder weight and of the rotary frequencies while training."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.weight = next(pl_module.model.parameters()).dtype
        self.rotary = {name.rpartition(".")[2]: b.dtype for name, b in pl_module.model.named_buffers()
                       if "rotary" in name}


def test_a_half_true_precision_trains_with_float32_rotary_frequencies(examples, tmp_path):
    """bf16-true casts the whole model, as from_pretrained(dtype=bfloat16) loads it, except that the latter keeps
    the rotary frequencies in float32: so does training, whose angles then match evaluation's."""
    dtypes = RotaryDtypes()
    train(examples, tmp_path, "lora", callbacks=[dtypes], max_steps=1, precision="bf16-true")
    assert dtypes.weight == torch.bfloat16
    assert dtypes.rotary == {"inv_freq": torch.float32, "original_inv_freq": torch.float32}


def test_validation_inside_a_step_leaves_its_gradients_alone(examples, tmp_path):
    """trainer.val_check_interval counts micro-batches: validating after every one of them (two per step) must
    not drop the gradients a step has accumulated so far."""
    def run(path, **overrides):
        model, tokenizer = tiny()
        torch.manual_seed(0)
        model = apply_method(model, method_config("lora", dropout=0.0))
        recorder = GradientRecorder()
        outcome = fit(model, examples[:8], examples[8:12], trainer_config(micro_batch_size=2, **overrides),
                      method_config("lora"), seed=SEED, out_dir=path, pad_token_id=tokenizer.pad_token_id,
                      extra_callbacks=[recorder])
        return model, recorder, outcome

    plain_model, plain, _ = run(tmp_path / "plain")
    validated_model, validated, outcome = run(tmp_path / "validated", val_check_interval=1)
    assert outcome.val_loss is not None
    assert len(plain.steps) == len(validated.steps) == 2
    for a, b in zip(plain.steps, validated.steps):
        assert_same_tensors(a, b)
    assert_same_tensors(weights(plain_model), weights(validated_model))


def test_the_cudagraphs_backend_traces_the_step_and_trains_like_eager(examples, tmp_path):
    """trainer.compile_backend=cudagraphs, traced for real (its graphs are recorded on a GPU only; on a CPU the
    traced step runs as it is): gradients and weights match eager training's, the module keeps the step safe for
    replays, and a validation pass inside training runs the eager model (the compiled one would trace the whole
    model again, in evaluation mode, and a replay would overwrite the sums kept)."""

    class Mode(L.Callback):
        def on_train_start(self, trainer, pl_module):
            self.replays_graphs = pl_module.replays_graphs

    def run(path, callbacks, **overrides):
        model, tokenizer = tiny()
        torch.manual_seed(0)
        model = apply_method(model, method_config("lora", dropout=0.0))
        outcome = fit(model, examples[:8], examples[8:12], trainer_config(val_check_interval=2, **overrides),
                      method_config("lora"), seed=SEED, out_dir=path, pad_token_id=tokenizer.pad_token_id,
                      extra_callbacks=callbacks)
        return model, outcome

    from torch._dynamo.utils import counters

    eager, traced, mode = GradientRecorder(), GradientRecorder(), Mode()
    plain_model, plain = run(tmp_path / "a", [eager])
    counters.clear()
    model, outcome = run(tmp_path / "b", [traced, mode], compile=True, compile_scope="model",
                         compile_backend="cudagraphs", pad_to_multiple_of=160)
    assert mode.replays_graphs is True
    compiled = outcome.placement["compiled"]
    assert compiled["backend"] == "cudagraphs" and compiled["layer_regions"] == 2
    assert compiled["graph_breaks"] == 0 and "failed_frames" not in compiled
    assert compiled["cudagraph_skips"] >= 1  # a CPU records no CUDA graphs, and the record says so
    assert compiled["static_shapes"] is True
    assert counters["stats"]["unique_graphs"] == 1  # training's, one padded length; validation ran eagerly
    assert len(eager.steps) == len(traced.steps) == 2
    for a, b in zip(eager.steps, traced.steps):
        assert_same_tensors(a, b)
    assert_same_tensors(weights(plain_model), weights(model))
    assert outcome.val_loss == pytest.approx(plain.val_loss, rel=1e-5)
    assert not compiled_modules(model)


@pytest.mark.slow  # compiles the tiny model (7-11 s); `make test-slow` runs it
def test_with_gradient_checkpointing_the_layers_are_traced_unrolled(examples, tmp_path):
    """Gradient checkpointing's input-gradient hook (adapters) breaks the compiled frame before the layers, after
    which Dynamo cannot stamp a region out (an error): the layers are not marked as regions then."""
    model, outcome = train(examples, tmp_path, "lora", max_steps=1, gradient_checkpointing=True, compile=True,
                           compile_scope="model", compile_backend="cudagraphs", pad_to_multiple_of=160)
    assert "layer_regions" not in outcome.placement["compiled"]
    assert outcome.train_steps == 1 and not compiled_modules(model)


def test_a_graph_replaying_step_is_one_micro_batch_and_is_not_cut_out_of_memory(examples, tmp_path):
    """The next micro-batch's replay would overwrite the gradients the last backward graph wrote: a step of
    several micro-batches is refused before training, and out of memory is an error naming the way out, not a
    step cut into halves."""
    graphs = {"compile": True, "compile_scope": "model", "compile_mode": "reduce-overhead"}
    with torch.compiler.set_stance("force_eager"):
        with pytest.raises(ValueError, match=r"needs a step of one micro-batch: .*\(they are 2 and None\)"):
            train(examples, tmp_path / "a", micro_batch_size=2, **graphs)
        with pytest.raises(RuntimeError, match="out of memory with the training step replayed as CUDA graphs"):
            train_out_of_memory(examples, tmp_path / "b", rows=2, micro_batch_size=4, **graphs)


def test_eager_training_records_that_nothing_was_compiled(examples, tmp_path):
    _, outcome = train(examples, tmp_path, max_steps=1)
    assert outcome.placement["compiled"] is None


@pytest.mark.slow
@pytest.mark.parametrize("scope, method", [("layers", "lora"), ("model", "lora"), ("layers", "dora"),
                                           ("layers", "adalora")])
def test_torch_compile_trains_like_eager(examples, tmp_path, scope, method):
    """Equal gradients, and no graph break: DoRA's layers broke at peft's weight read before it was made
    traceable (compilation.py); AdaLoRA's loss regularizer, on at a step's first micro-batch only, traced in both
    states."""
    eager, compiled = GradientRecorder(), GradientRecorder()
    overrides = ADALORA if method == "adalora" else {"dropout": 0.0}
    train(examples, tmp_path / "a", method, overrides, callbacks=[eager], micro_batch_size=2)
    model, outcome = train(examples, tmp_path / "b", method, overrides, callbacks=[compiled],
                           micro_batch_size=2, compile=True, compile_scope=scope)
    for a, b in zip(eager.steps, compiled.steps):
        assert_same_tensors(a, b, rtol=1e-3, atol=1e-5)
    assert outcome.perf["train_tokens_per_s"] > 0 and outcome.placement["compiled"]["scope"] == scope
    assert outcome.placement["compiled"]["graph_breaks"] == 0, outcome.placement["compiled"]
    assert not compiled_modules(model)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["full", "adalora"])
def test_two_cpu_processes_train_like_one(examples, tmp_path, method):
    """DDP (gloo, spawned): each process takes half of every step, cut into micro-batches of one sequence. Only
    whole steps of 4: an epoch's last, partial step is cut to a multiple of the device count under DDP
    (batching.step_groups), so there the two runs see different data by design. AdaLoRA: its regularizer once per
    step, not once per device, and the same ranks pruned."""
    steps = len(examples) // 4
    assert steps >= 2, f"the fixture holds {len(examples)} examples"
    # AdaLoRA: pruning from the second step on
    overrides = {**ADALORA, "peft": {"total_step": steps, "tinit": 0, "tfinal": 0, "deltaT": 1}} \
        if method == "adalora" else None
    single, _ = train(examples, tmp_path / "one", method, overrides, max_steps=steps)
    spawned, _ = train(examples, tmp_path / "two", method, overrides, max_steps=steps, micro_batch_size=1,
                       accelerator="cpu", devices=2, strategy="ddp_spawn")
    if method == "full":
        assert not torch.equal(weights(spawned)["model.norm.weight"], weights(tiny()[0])["model.norm.weight"])
    else:
        assert any(torch.count_nonzero(p) < p.numel() for n, p in spawned.named_parameters() if "lora_E" in n)
    assert_same_tensors(weights(single), weights(spawned))


class DropoutMasks(L.Callback):
    """Which features of the first token one LoRA dropout module zeroed, at each training forward; written to
    ``rank<r>.json`` under ``folder`` (spawned processes return nothing)."""

    def __init__(self, folder):
        self.folder, self.masks = Path(folder), []

    def on_train_start(self, trainer, pl_module):
        dropout = next(m for n, m in pl_module.named_modules() if n.endswith("lora_dropout.default"))
        dropout.register_forward_hook(lambda _, __, out: self.masks.append((out[0, 0] == 0).tolist()))

    def on_train_end(self, trainer, pl_module):
        (self.folder / f"rank{trainer.global_rank}.json").write_text(json.dumps(self.masks))


def test_a_device_s_seed_depends_on_the_run_s_seed_the_step_and_the_device_only():
    seeds = {device_step_seed(seed, step, rank) for seed in (0, 1) for step in range(50) for rank in range(8)}
    assert len(seeds) == 2 * 50 * 8 and all(0 <= s < 2**63 for s in seeds)
    assert device_step_seed(3, 7, 1) == device_step_seed(3, 7, 1)


@pytest.mark.slow
def test_each_device_draws_its_own_dropout_masks(examples, tmp_path):
    """Both processes start from the same seed (the same weights): each step reseeds each one apart, else both
    would zero the same features of their first rows."""
    train(examples[:8], tmp_path, "lora", {"dropout": 0.5}, callbacks=[DropoutMasks(tmp_path)], max_steps=2,
          micro_batch_size=1, accelerator="cpu", devices=2, strategy="ddp_spawn")
    first, second = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert len(first) == len(second) == 4  # 2 steps x 2 micro-batches of one sequence on each device
    assert all(any(row) for row in first), "dropout at 0.5 zeroes some of 64 features"
    assert all(a != b for a, b in zip(first, second))


def train_out_of_memory(examples, tmp_path, method="full", callbacks=(), rows=None, tokens=None, **trainer_overrides):
    model, tokenizer = tiny()
    torch.manual_seed(0)
    model = apply_method(model, method_config(method, dropout=0.0))
    fault = OutOfMemoryAbove(model, rows=rows, tokens=tokens)
    outcome = fit(model, examples, [], trainer_config(**trainer_overrides), method_config(method), seed=SEED,
                  out_dir=tmp_path, pad_token_id=tokenizer.pad_token_id, extra_callbacks=list(callbacks))
    return model, outcome, fault


@pytest.mark.parametrize("method", ["full", "lora"])
def test_out_of_memory_in_training_halves_the_micro_batch_and_keeps_the_gradient(examples, tmp_path, method):
    whole = GradientRecorder()
    reference, reference_outcome = train(examples, tmp_path / "whole", method, {"dropout": 0.0}, callbacks=[whole],
                                         micro_batch_size=4, max_steps=3)
    halved = GradientRecorder()
    model, outcome, fault = train_out_of_memory(examples, tmp_path / "halved", method, callbacks=[halved], rows=1,
                                                micro_batch_size=4, max_steps=3)
    assert fault.refused == 2, "4 rows fail, then 2 rows fail, then single rows fit, and stay so"
    assert {rows for rows, _ in fault.shapes} == {1}
    assert outcome.perf["train_oom_halvings"] == 2 and outcome.train_steps == 3
    assert len(halved.steps) == len(whole.steps) == 3
    for a, b in zip(whole.steps, halved.steps):
        assert_same_tensors(a, b)
    assert_same_tensors(weights(reference), weights(model))
    assert outcome.train_loss == pytest.approx(reference_outcome.train_loss, rel=1e-5)


def test_out_of_memory_with_packing_cuts_at_sequence_boundaries(examples, tmp_path):
    whole = GradientRecorder()
    train(examples, tmp_path / "whole", callbacks=[whole], micro_batch_size=4, packing=True)
    halved = GradientRecorder()
    _, outcome, fault = train_out_of_memory(examples, tmp_path / "halved", callbacks=[halved], tokens=400,
                                            micro_batch_size=4, packing=True)
    assert fault.refused >= 1 and outcome.perf["train_oom_halvings"] >= 1
    assert all(tokens <= 400 for _, tokens in fault.shapes)
    for a, b in zip(whole.steps, halved.steps):
        assert_same_tensors(a, b)


def test_out_of_memory_in_validation_halves_the_batch_and_keeps_the_loss(examples, tmp_path):
    def validate(rows):
        model, tokenizer = tiny()
        fault = OutOfMemoryAbove(model, rows=rows) if rows else None
        outcome = fit(model, examples[:8], examples[8:], trainer_config(max_steps=1, batch_size=2,
                                                                       micro_batch_size=2),
                      method_config("full"), seed=SEED, out_dir=tmp_path / f"rows{rows}",
                      pad_token_id=tokenizer.pad_token_id)
        return outcome, fault

    whole, _ = validate(None)
    halved, fault = validate(1)
    full_val_batches = len(examples[8:]) // 2
    assert full_val_batches >= 1
    # one halving in training, then every validation batch of 2 rows is halved
    assert halved.perf["train_oom_halvings"] == fault.refused == 1 + full_val_batches
    assert halved.val_loss == pytest.approx(whole.val_loss, rel=1e-6)


def test_out_of_memory_on_a_single_sequence_is_a_clear_error(examples, tmp_path):
    with pytest.raises(RuntimeError, match="single sequence: lower trainer.max_length"):
        train_out_of_memory(examples, tmp_path, tokens=10, micro_batch_size=2)


def test_checkpoints_are_replaced_whole_or_not_at_all(tmp_path):
    from slm_sweep.train.checkpoint_io import AtomicCheckpointIO
    from slm_sweep.train.fit import build_trainer

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("killed mid-write")

    io = AtomicCheckpointIO()
    path = tmp_path / "checkpoints" / "last.ckpt"
    io.save_checkpoint({"step": 1, "weights": torch.arange(1000.0)}, path)
    with pytest.raises(RuntimeError, match="killed mid-write"):
        io.save_checkpoint({"weights": torch.zeros(100_000), "step": 2, "broken": Unpicklable()}, path)
    survivor = io.load_checkpoint(path)
    assert survivor["step"] == 1 and torch.equal(survivor["weights"], torch.arange(1000.0))
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"], "no temporary file is left behind"
    trainer = build_trainer(trainer_config(), tmp_path, [], None, checkpointing=True)
    assert isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO)


def test_modules_train_in_train_mode_and_validate_in_eval_mode(examples, tmp_path):
    """Hugging Face loads models in eval mode; training must switch every module (dropout too) to train mode,
    and validation back to eval."""
    seen = {"train": set(), "validate": set()}

    class ModeRecorder(L.Callback):
        def __init__(self):
            self.stage = None
            self.handles = []

        def on_train_batch_start(self, trainer, pl_module, *args):
            self.stage = "train"

        def on_validation_batch_start(self, trainer, pl_module, *args):
            self.stage = "validate"

        def on_fit_start(self, trainer, pl_module):
            for name, module in pl_module.model.named_modules():
                if name.endswith("lora_dropout.default"):
                    self.handles.append(module.register_forward_pre_hook(
                        lambda m, args: seen[self.stage].add(m.training)))

    model, tokenizer = tiny()
    model.eval()  # as Hugging Face's from_pretrained leaves a model
    model = apply_method(model, method_config("lora"))
    fit(model, examples, examples[:4], trainer_config(max_steps=2), method_config("lora"), seed=SEED,
        out_dir=tmp_path, pad_token_id=tokenizer.pad_token_id, extra_callbacks=[ModeRecorder()])
    assert seen == {"train": {True}, "validate": {False}}


# AdaLoRA's three phases in 6 steps: full ranks (steps 0-1), a falling budget (2-3), the final pattern (4-5)
ADALORA = {"dropout": 0.0, "init_r": 4, "target_r": 2, "peft": {"total_step": 6, "tinit": 1, "tfinal": 2, "deltaT": 1}}


def rank_pattern(model) -> dict[str, list[bool]]:
    return model.peft_config["default"].rank_pattern


def test_adalora_reallocates_its_ranks_to_the_target_budget_whatever_the_micro_batch(examples, tmp_path):
    runs = {}
    for name, overrides in {"micro4": {"micro_batch_size": 4}, "micro2": {"micro_batch_size": 2}}.items():
        grads = GradientRecorder()
        model, outcome = train(examples, tmp_path / name, "adalora", ADALORA, callbacks=[grads], max_steps=6,
                               **overrides)
        runs[name] = (grads.steps, weights(model), rank_pattern(model), outcome)
    (g4, w4, p4, o4), (g2, w2, p2, o2) = runs["micro4"], runs["micro2"]
    for a, b in zip(g4, g2, strict=True):  # the orthogonality term once per step, not once per micro-batch
        assert_same_tensors(a, b)
    assert_same_tensors(w4, w2)
    assert p4 == p2
    assert o4.train_loss == pytest.approx(o2.train_loss, rel=1e-5)
    # the budget: target_r singular values per adapted layer on average, spread unevenly by importance
    assert sum(map(sum, p4.values())) == ADALORA["target_r"] * len(p4)
    assert len({sum(kept) for kept in p4.values()}) > 1
    # and the singular values left out are zero in the weights that are evaluated
    singular = {name.removeprefix("base_model.model."): p for name, p in model.named_parameters() if "lora_E" in name}
    assert singular.keys() == p4.keys()
    for name, values in singular.items():
        kept = torch.tensor(p4[name]).unsqueeze(-1)
        assert torch.all(values[~kept] == 0) and torch.all(values[kept] != 0), name
    # the kept adapter holds the ranks kept, and loaded onto a fresh base (a re-scoring run) computes the same
    save_atomically(model, tmp_path / "adapter")
    reloaded = load_trained(tiny()[0], tmp_path / "adapter")
    assert {n: p.shape[0] for n, p in reloaded.named_parameters() if "lora_E" in n} == {
        f"base_model.model.{n}": sum(kept) for n, kept in p4.items()}
    ids = torch.tensor([examples[0]["input_ids"]])
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(merge_adapters_for_eval(reloaded)(ids).logits, model(ids).logits,
                                   atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("at", [pytest.param(4, id="before-the-final-pattern"), pytest.param(5, id="after-it")])
def test_a_resumed_adalora_run_reallocates_as_an_uninterrupted_one(examples, tmp_path, at):
    """The importance averages and the rank pattern are no weights: the checkpoint keeps them."""
    straight, _ = train(examples, tmp_path / "straight", "adalora", ADALORA, max_steps=6)
    train(examples, tmp_path / "resumed", "adalora", ADALORA, max_steps=6, checkpoint_every_n_steps=at,
          callbacks=[StopAfter(at)])
    resumed, outcome = train_resumed(examples, tmp_path / "resumed", "adalora", ADALORA, at=at, max_steps=6,
                                     checkpoint_every_n_steps=at)
    assert outcome.train_steps == 6
    assert rank_pattern(resumed) == rank_pattern(straight)
    assert_same_tensors(weights(straight), weights(resumed), rtol=0, atol=0)


@pytest.mark.parametrize("settings, error", [
    ({"compile": True, "compile_scope": "model"}, r"compiling the whole model \(trainer.compile_scope=model"),
    ({"compile": True, "compile_backend": "cudagraphs"},
     "trainer.compile_backend=cudagraphs replays the training step as CUDA graphs"),
    ({"compile": True, "compile_mode": "reduce-overhead"}, "trainer.compile_mode=reduce-overhead replays the"),
    ({"precision": "16-mixed"}, "trainer.precision=16-mixed cannot train AdaLoraModel's adapters"),
    ({"strategy": "fsdp"}, "trainer.strategy=fsdp shards the weights"),
])
def test_adalora_refuses_the_settings_it_cannot_train_under(examples, tmp_path, settings, error):
    with pytest.raises(ValueError, match=error):
        train(examples, tmp_path, "adalora", ADALORA, **settings)


def test_adalora_refuses_a_whole_model_compile_where_no_layers_are_found(examples, tmp_path, monkeypatch):
    import slm_sweep.train.fit as fit_module

    monkeypatch.setattr(fit_module, "repeated_layers", lambda model: [])
    with pytest.raises(ValueError, match="or a model without repeated layers"):
        train(examples, tmp_path, "adalora", ADALORA, compile=True)


def test_a_checkpoint_written_before_a_resumed_run_trains_keeps_the_allocation_it_resumed_from(examples):
    """An interrupt between loading a checkpoint and the first step: the state to restore is what it saves."""
    model = apply_method(tiny()[0], method_config("adalora", **ADALORA))
    module = build_module(model, trainer_config(), method_config("adalora"))
    module.trainer = L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False,
                               enable_progress_bar=False)
    state = {"ipt": {"a": torch.ones(2)}, "exp_avg_ipt": {}, "exp_avg_unc": {}, "rank_pattern": {"a": [True]}}
    module.on_load_checkpoint({RANK_ALLOCATION_KEY: state})
    written: dict = {}
    module.on_save_checkpoint(written)
    assert written[RANK_ALLOCATION_KEY] is state


def test_adalora_s_validation_loss_leaves_its_regularizer_out(examples, tmp_path):
    model, tokenizer = tiny()
    model = apply_method(model, method_config("adalora", **ADALORA))
    outcome = fit(model, examples[:8], examples[8:], trainer_config(max_steps=2), method_config("adalora"),
                  seed=SEED, out_dir=tmp_path, pad_token_id=tokenizer.pad_token_id)
    config = model.peft_config["default"]
    assert config.orth_reg_weight == 0.5  # as set, after training and validation
    config.orth_reg_weight = 0.0
    model.eval()
    summed = tokens = 0
    with torch.no_grad():
        for example in examples[8:]:
            ids, labels = torch.tensor([example["input_ids"]]), torch.tensor([example["labels"]])
            n = int((labels[:, 1:] != -100).sum())
            summed += model(input_ids=ids, labels=labels).loss.item() * n
            tokens += n
    assert outcome.val_loss == pytest.approx(summed / tokens, rel=1e-4)


def test_lora_dropout_acts_while_training(examples, tmp_path):
    _, with_dropout = train(examples, tmp_path / "a", "lora", method_overrides={"dropout": 0.5})
    _, without = train(examples, tmp_path / "b", "lora", method_overrides={"dropout": 0.0})
    assert with_dropout.train_loss != without.train_loss


@pytest.mark.slow
def test_cells_in_one_process_each_compile_their_own_graphs(examples, tmp_path):
    """Hydra's basic launcher runs a sweep's cells one after another in one process. Nine LoRA ranks are more
    distinct graphs than Dynamo's recompile_limit (8) allows for one code object: without a fresh cache per cell
    the last cell would run eagerly while recording that it was compiled."""
    from torch._dynamo.utils import counters

    for rank in range(1, 10):
        compiled_before = counters["frames"]["ok"]
        train(examples, tmp_path / str(rank), "lora", {"r": rank}, max_steps=1, compile=True)
        assert counters["frames"]["ok"] > compiled_before, f"rank {rank} ran eagerly"


def test_steps_a_float16_loss_scaler_skipped_leave_the_clipping_figures_alone():
    """A skipped step's gradient norm is inf or NaN: no update was made, so it is neither clipped nor a norm."""
    from slm_sweep.train.fit import build_module

    model, _ = tiny()
    module = build_module(model, trainer_config(gradient_clip_val=1.0), method_config("full"))
    module.grad_norms = [0.5, float("inf"), float("nan"), 2.0]
    assert module.clipping_figures() == {"train_grad_norm_median": 1.25, "train_clipped_fraction": 0.5}


def test_the_logged_learning_rate_is_the_one_its_step_trained_at(examples, tmp_path):
    """train/lr beside train/loss of step k is the rate step k applied (read before the scheduler moves on to the
    next step's): the warm-up's first step at half the rate, the last step not at 0."""
    import csv

    from lightning.pytorch.loggers import CSVLogger

    class Used(L.Callback):
        def __init__(self):
            self.rates = []

        def on_before_optimizer_step(self, trainer, pl_module, optimizer):
            self.rates.append(optimizer.param_groups[0]["lr"])

    used, logger = Used(), CSVLogger(save_dir=str(tmp_path), name="csv", version="")
    train(examples[:16], tmp_path / "run", "full", callbacks=[used], loggers=[logger], max_steps=4, warmup_steps=2,
          log_every_n_steps=1)
    logger.finalize("success")
    with (tmp_path / "csv" / "metrics.csv").open() as f:
        logged = [float(r["train/lr"]) for r in csv.DictReader(f) if r.get("train/lr")]
    assert len(used.rates) == 4 and logged == used.rates
    assert used.rates[0] == pytest.approx(used.rates[1] / 2) and logged[-1] > 0


def test_a_validation_inside_a_step_leaves_the_step_s_time_in_its_throughput(examples, tmp_path):
    """trainer.val_check_interval counts micro-batches, so validation can start inside a step: the seconds of
    that step's micro-batches before it are timed with the step (they were dropped, overstating tokens/s)."""
    import time

    class Slow(L.Callback):  # each first micro-batch of a step takes 0.3 s more
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if not batch["last_in_step"]:
                time.sleep(0.3)

    class Validations(L.Callback):
        count = 0

        def on_validation_start(self, trainer, pl_module):
            self.count += 1

    steps, validations = {}, {}
    for interval in (None, 3):
        model, tokenizer = tiny()
        counter = Validations()
        outcome = fit(model, examples[:8], examples[8:12],
                      trainer_config(max_steps=4, micro_batch_size=2, batch_size=4, log_every_n_steps=1,
                                     throughput_warmup_steps=0, val_check_interval=interval),
                      method_config("full"), seed=SEED, out_dir=tmp_path / str(interval),
                      pad_token_id=tokenizer.pad_token_id, extra_callbacks=[Slow(), counter])
        steps[interval], validations[interval] = outcome.perf["step_time_s"], counter.count
    # micro-batches 3 and 6 end inside steps 2 and 3: two validations there, and the final one after training
    assert validations == {None: 1, 3: 3}
    assert steps[None] > 0.3 and steps[3] > 0.3
    assert steps[3] == pytest.approx(steps[None], rel=0.25)
