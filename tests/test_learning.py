"""The whole cell path learns: the tiny model, trained by ``slm_sweep.run.run`` on a synthetic arithmetic set
written as a local data folder, answers held-out questions it was not trained on (train -> merge -> generate ->
score), where the untrained model answers none. Deterministic: fixed data, seeds and one CPU thread."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from slm_sweep.run import run
from tests.conftest import compose_config

TEMPLATES = ["{a} + 1", "{a} plus 1", "add 1 to {a}", "one more than {a}"]
NUMBERS = range(40)
HELD_OUT = 20


def arithmetic_folder(folder: Path) -> tuple[list[dict], list[dict]]:
    """train.jsonl / test.jsonl in GSM8K's format: "a + 1" in four phrasings for 40 numbers. A test question is
    one phrasing of a number held out of training; training holds the number's other phrasings and the held-out
    phrasing with other numbers. One training row repeats a test question in other case and punctuation."""
    rng = random.Random(0)
    facts = list(NUMBERS)
    held = {a: rng.randrange(len(TEMPLATES)) for a in rng.sample(facts, HELD_OUT)}

    def row(template: int, a: int) -> dict:
        return {"question": TEMPLATES[template].format(a=a), "answer": f"#### {a + 1}"}

    test = [row(template, a) for a, template in held.items()]
    train = [row(t, a) for a in facts for t in range(len(TEMPLATES)) if held.get(a) != t]
    rng.shuffle(train)
    train.insert(5, {"question": test[0]["question"].upper() + "?", "answer": test[0]["answer"]})
    folder.mkdir(parents=True)
    for name, rows in (("train.jsonl", train), ("test.jsonl", test)):
        (folder / name).write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return train, test


@pytest.fixture
def one_thread():
    """One intra-op thread: the same float sums on every machine, and no thread contention on a busy one."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_training_through_the_cell_path_learns_held_out_questions(tmp_path, one_thread):
    train, test = arithmetic_folder(tmp_path / "arith")
    common = [
        "model=tiny_wide",
        f"dataset.data_dir={tmp_path / 'arith'}",
        "dataset.val_size=8",
        # the phrasings differ from each other only in their number, which the default threshold counts as
        # repeats; here only exact repeats of a test question are removed
        "dataset.dedup.against=[]",
        "dataset.dedup.near_threshold=1.0",
        "prompt.style=plain",
        "eval.max_new_tokens=4",
        "eval.progress=false",
        "logger=none",
        "resume.enabled=false",
    ]
    untrained = run(compose_config([*common, "method=zeroshot"]), out_dir=tmp_path / "zeroshot")
    trained = run(compose_config([
        *common, "method=full", "method.lr=3e-3", "seed=0",
        "trainer.max_steps=200", "trainer.batch_size=16", "trainer.micro_batch_size=16", "trainer.max_length=32",
        "trainer.warmup_steps=10", "trainer.progress_bar=false", "trainer.checkpoint_every_n_steps=null",
    ]), out_dir=tmp_path / "full")

    assert untrained["status"] == trained["status"] == "completed"
    assert untrained["metrics"]["n_eval"] == trained["metrics"]["n_eval"] == HELD_OUT
    assert untrained["metrics"]["accuracy_strict"] <= 0.05
    assert trained["metrics"]["accuracy_strict"] >= 0.8, trained["metrics"]
    # the repeated test question was removed before training, and result.json says so
    dedup = json.loads((tmp_path / "full" / "result.json").read_text())["dedup"]
    assert dedup["against"] == {"test": HELD_OUT, "validation": 8} and dedup["near_threshold"] == 1.0
    assert dedup["train"]["examined"] + dedup["val"]["examined"] == len(train)
    assert dedup["train"]["exact"] + dedup["val"]["exact"] == 1
    assert dedup["train"]["near"] == dedup["val"]["near"] == 0
    assert trained["metrics"]["train_examples"] == dedup["train"]["examined"] - dedup["train"]["removed"]
