"""Shared fixtures: composing the project's Hydra config, the real data folder, fast settings for the tiny model."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

import slm_sweep  # noqa: F401  registers the typed settings that conf/config.yaml composes first

REPO = Path(__file__).resolve().parents[1]
CONF_DIR = REPO / "slm_sweep" / "conf"
DATA_ROOT = REPO.parent / "shared" / "data"

# Settings that make a tiny cell take seconds: a small slice of GSM8K, a few steps, short generations.
FAST_TINY = [
    "model=tiny",
    f"data_root={DATA_ROOT}",
    "dataset.train_limit=48",
    "dataset.val_size=8",
    "dataset.test_limit=12",
    "trainer.max_steps=3",
    "trainer.batch_size=4",
    "trainer.micro_batch_size=2",
    "trainer.max_length=256",
    "trainer.progress_bar=false",
    "trainer.log_every_n_steps=1",
    "trainer.checkpoint_every_n_steps=null",
    "eval.max_new_tokens=12",
    "eval.progress=false",
    "logger=none",
    "resume.enabled=false",
]

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def compose_config(overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


@pytest.fixture(autouse=True)
def own_wandb_service(monkeypatch):
    """A W&B run started in this process leaves WANDB_SERVICE set, and the subprocesses of later tests would attach
    to this process's wandb-core instead of starting their own: a sweep's last run then exits before that service
    has written its offline stream. Each test's subprocesses start their own service, as a user's do."""
    monkeypatch.delenv("WANDB_SERVICE", raising=False)


@pytest.fixture(autouse=True)
def package_config_folder_only():
    """Config folders added by a test that runs a Hydra job in this process do not outlive it."""
    from slm_sweep.config_sources import use_config_sources

    yield
    use_config_sources(None)


@pytest.fixture(scope="module")
def one_thread():
    """One thread: the tiny model's operations are too small to gain from more, and on a busy machine OpenMP
    threads waiting for each other make generation many times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def requires_data():
    if not (DATA_ROOT / "gsm8k" / "test.jsonl").is_file():
        pytest.skip(f"the GSM8K files are not at {DATA_ROOT}")
    return DATA_ROOT


@pytest.fixture
def tiny_cfg(requires_data):
    """Compose a fast tiny-model cell: ``tiny_cfg("method=lora", ...)``."""

    def make(*overrides: str):
        return compose_config([*FAST_TINY, *overrides])

    return make


class OutOfMemoryAbove:
    """Makes the model raise torch's out-of-memory error for inputs over ``rows`` rows or ``tokens`` positions,
    as a GPU with less memory would; counts the forwards it let through and the ones it refused."""

    def __init__(self, model, rows: int | None = None, tokens: int | None = None):
        self.rows, self.tokens, self.refused, self.shapes = rows, tokens, 0, []
        self.handle = model.register_forward_pre_hook(self, with_kwargs=True)

    def __call__(self, module, args, kwargs):
        shape = tuple(kwargs["input_ids"].shape)
        if (self.rows is not None and shape[0] > self.rows) or (self.tokens is not None and shape[1] > self.tokens):
            self.refused += 1
            raise torch.OutOfMemoryError(f"CUDA out of memory (injected for a micro-batch of shape {shape})")
        self.shapes.append(shape)

    def remove(self) -> None:
        self.handle.remove()


# A metric module from outside the package (eval.metric_modules): whether the last digit an answer writes, 0 where it
# writes none, is the reference's last digit. The tiny models answer with no digit at all, so it is right on the
# references that end in 0 and wrong on the others, and training that makes a model write digits moves it.
LAST_DIGIT_METRIC = '''\
"""A metric from outside slm_sweep: whether the last digit written (0 where none is) is the reference's last digit."""
import re

from slm_sweep.scoring import register_metric


def last_digit(text):
    digits = re.findall(r"[0-9]", str(text))
    return digits[-1] if digits else None


def correct(text, reference, tolerance):
    return (last_digit(text) or "0") == last_digit(reference)


register_metric("last_digit", last_digit, correct)
'''


def last_digit_verdict(output: str, reference: str) -> bool:
    """LAST_DIGIT_METRIC's verdict on one answer, worked out apart from it."""
    written = [c for c in output if c in "0123456789"]
    return (written[-1] if written else "0") == reference[-1]


@pytest.fixture
def restored_metrics(monkeypatch):
    """Metrics registered by a test, and the modules that registered them, are gone after it, and so is the code
    of metric modules its keys pinned (identity.forget_running_code: a later test's module of the same name is
    imported and hashed anew)."""
    from slm_sweep import scoring
    from slm_sweep.identity import forget_running_code

    saved = dict(scoring.METRICS)
    for name in ("MODES", "ACCURACY_KEYS", "PREDICTION_FIELDS"):
        monkeypatch.setattr(scoring, name, getattr(scoring, name))
    monkeypatch.setattr(scoring, "_REGISTERED_BY", {})
    forget_running_code()
    yield
    forget_running_code()
    scoring.METRICS.clear()
    scoring.METRICS.update(saved)
    sys.modules.pop("mymetrics", None)


@pytest.fixture
def last_digit_metric(tmp_path_factory, monkeypatch, restored_metrics):
    """LAST_DIGIT_METRIC as an importable module; its name, for eval.metric_modules."""
    folder = tmp_path_factory.mktemp("metric_module")
    (folder / "last_digit_metric.py").write_text(LAST_DIGIT_METRIC)
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.delitem(sys.modules, "last_digit_metric", raising=False)
    yield "last_digit_metric"
    sys.modules.pop("last_digit_metric", None)
