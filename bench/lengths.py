"""Token lengths of the data against the length limits a cell runs with.

For each dataset split: the training sequence as slm_sweep/data/encode.py builds it (prompt in the model's prompt
style + worked answer + end-of-turn token), and the reference answer alone (+ end-of-turn), which is how many new
tokens generation needs to write a solution as long as the reference. Prints percentiles and the share over
``trainer.max_length`` (training drops such examples) and over ``eval.max_new_tokens`` (generation stops there).
Only the tokenizer is loaded, never the weights.

    python bench/lengths.py                                  # SmolLM2 (smollm135_q4), GSM8K train/test, OrcaMath fixture
    python bench/lengths.py --model qwen05 --sets gsm8k:train
    python bench/lengths.py --json lengths.json

A set is ``<dataset>:<split>`` (split: train or test, read from --data-root) or ``<name>=<folder>`` for a folder
holding a dataset's train.jsonl in OrcaMath's format (the default reads tests/fixtures/orcamath).

An analysis of the data, not a benchmark: it prints lengths, and no baseline ratio applies.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from slm_sweep.config import compose  # noqa: E402
from slm_sweep.data import dataset_spec, load_splits  # noqa: E402
from slm_sweep.data.encode import encode_for_training  # noqa: E402
from slm_sweep.data.prompts import build_target, resolve_style  # noqa: E402
from slm_sweep.models import load_tokenizer  # noqa: E402

PERCENTILES = (50, 90, 95, 99)
DEFAULT_SETS = ["gsm8k:train", "gsm8k:test", f"orcamath={ROOT / 'tests' / 'fixtures' / 'orcamath'}"]


def data_set(text: str) -> str:
    """An argparse type: ``<dataset>:<split>`` (train or test) or ``<name>=<folder>``, as ``examples`` reads it."""
    if "=" in text:
        name, folder = text.split("=", 1)
        if name and folder:
            return text
    else:
        name, _, split = text.partition(":")
        if name and split in ("train", "test"):
            return text
    raise argparse.ArgumentTypeError(f"{text!r}: expected <dataset>:<split> (split: train or test, e.g. gsm8k:test) "
                                     "or <name>=<folder>")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm135_q4", help="a conf/model/*.yaml name")
    parser.add_argument("--sets", type=data_set, nargs="+", default=DEFAULT_SETS,
                        help="<dataset>:<split> or <name>=<folder>")
    parser.add_argument("--data-root", default=str(ROOT.parent / "shared" / "data"))
    parser.add_argument("--override", nargs="*", default=[], metavar="KEY=VALUE",
                        help="config overrides, e.g. trainer.max_length=1024 eval.max_new_tokens=512")
    parser.add_argument("--json", default=None, help="also write the numbers to this file")
    return parser.parse_args(argv)


def examples(item: str, data_root: str) -> tuple[str, list]:
    if "=" in item:
        name, folder = item.split("=", 1)
        spec = {**OmegaConf.to_container(dataset_spec(name)), "data_dir": folder, "val_size": None,
                "train_limit": None, "test_split": "test", "test_size": None}
        spec["local"] = {"dir_name": name, "files": {"train": "train.jsonl", "test": "train.jsonl"}}
        return f"{name} ({folder})", load_splits(spec, need_train=True).train
    name, split = item.split(":", 1)
    spec = {**OmegaConf.to_container(dataset_spec(name)), "val_size": None, "train_limit": None}
    splits = load_splits(spec, data_root=data_root, need_train=split == "train")
    return f"{name} {split}", splits.train if split == "train" else splits.test


def lengths(tokenizer, rows: list, style: str, system: str | None) -> tuple[np.ndarray, np.ndarray]:
    """Tokens of each whole training sequence, and of each reference answer with its end-of-turn token."""
    sequences = [len(encode_for_training(tokenizer, row, style, max_length=10**9, system=system)["input_ids"])
                 for row in rows]
    answers = [len(tokenizer(build_target(tokenizer, row.answer, style), add_special_tokens=False)["input_ids"])
               for row in rows]
    return np.array(sequences), np.array(answers)


def describe(values: np.ndarray, limit: int) -> dict:
    return {"n": len(values), "mean": round(float(values.mean()), 1),
            **{f"p{p}": int(np.percentile(values, p)) for p in PERCENTILES}, "max": int(values.max()),
            "limit": limit, "over": int((values > limit).sum()), "over_share": round(float((values > limit).mean()), 4)}


def main(argv=None) -> int:
    args = parse_args(argv)
    cfg = compose([f"model={args.model}", *args.override])
    # as a cell reads it (no weights): a GGUF's tokenizer with its pre-tokenizer set, the converted cache's or the hub's
    tokenizer = load_tokenizer(cfg.model, Path(str(cfg.cache_dir)).expanduser())
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    style = resolve_style(cfg.prompt.style, tokenizer)
    max_length, max_new = int(cfg.trainer.max_length), int(cfg.eval.max_new_tokens)
    print(f"model {args.model}, prompt style {style}; trainer.max_length={max_length}, "
          f"eval.max_new_tokens={max_new}")
    header = f"{'set':<34} {'what':<22} {'n':>5} {'mean':>6} " + " ".join(f"{'p' + str(p):>5}" for p in PERCENTILES)
    print(header + f" {'max':>5}  over limit")
    report = {"model": args.model, "style": style, "max_length": max_length, "max_new_tokens": max_new, "sets": {}}
    for item in args.sets:
        label, rows = examples(item, args.data_root)
        sequence, answer = lengths(tokenizer, rows, style, cfg.prompt.system)
        report["sets"][label] = {"training_sequence": describe(sequence, max_length),
                                 "answer_tokens": describe(answer, max_new)}
        for what, stats in report["sets"][label].items():
            cells = " ".join(f"{stats['p' + str(p)]:>5}" for p in PERCENTILES)
            print(f"{label:<34} {what:<22} {stats['n']:>5} {stats['mean']:>6} {cells} {stats['max']:>5}  "
                  f"{stats['over']} > {stats['limit']} ({100 * stats['over_share']:.2f} %)")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
