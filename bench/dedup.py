"""What deduplication removes from a dataset's training data, as a trained cell would do it, per threshold.

    python bench/dedup.py                                   # GSM8K, thresholds 0.4 0.5 0.6 1.0, its default sets
    python bench/dedup.py --dataset orcamath --thresholds 0.5 --examples 10

For each threshold: train and validation examples examined and removed (exact / near), per reference set (the
dataset's whole test split and each dedup.against set), the time it took, and with --examples the removed training
questions whose Jaccard similarity is lowest (the least alike pairs still counted as repeats).

An analysis of the data, not a benchmark: it prints counts, and no baseline ratio applies.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from slm_sweep.arguments import at_least, number_in  # noqa: E402
from slm_sweep.data import dataset_spec, load_eval_set, load_splits  # noqa: E402
from slm_sweep.data.dedup import DedupIndex  # noqa: E402
from slm_sweep.data.specs import known_datasets  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", choices=known_datasets(), default="gsm8k")
    parser.add_argument("--data-root", default=str(ROOT.parent / "shared" / "data"))
    parser.add_argument("--thresholds", nargs="+", type=number_in(0, 1, low_open=True), default=[0.4, 0.5, 0.6, 1.0],
                        help="dataset.dedup.near_threshold values")
    parser.add_argument("--examples", type=at_least(0), default=0, help="removed pairs to print per threshold")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    base = OmegaConf.to_container(dataset_spec(args.dataset))
    for threshold in args.thresholds:
        spec = {**base, "dedup": {**base["dedup"], "near_threshold": threshold}}
        start = time.perf_counter()
        splits = load_splits(spec, data_root=args.data_root, deduplicate=True)
        seconds = time.perf_counter() - start
        record = splits.dedup
        print(f"\n{args.dataset}, near_threshold={threshold}: reference questions {record['against']}; "
              f"skipped {record['skipped'] or 'none'}; load + deduplicate {seconds:.1f} s")
        for split in ("train", "val"):
            counts = record[split]
            per_set = ", ".join(f"{name} {c['exact']}/{c['near']}" for name, c in counts["by_set"].items())
            print(f"  {split}: {counts['removed']} of {counts['examined']} removed ({counts['exact']} exact, "
                  f"{counts['near']} near); per set exact/near: {per_set}")
        if args.examples:
            show_pairs(spec, args.data_root, threshold, args.examples)
    return 0


def show_pairs(spec: dict, data_root: str, threshold: float, count: int) -> None:
    """The removed training questions least alike their closest reference question, with that question."""
    splits = load_splits({**spec, "val_size": None, "train_limit": None}, data_root=data_root)
    references = {"test": [e.question for e in splits.test]}
    for name in spec["dedup"]["against"]:
        references[name] = [e.question for e in load_eval_set(name, data_root=data_root)]
    index = DedupIndex(references, threshold)
    found = [(m.similarity, e.question, m) for e, m in zip(splits.train, index.matches([e.question for e in
                                                                                        splits.train])) if m]
    for similarity, question, match in sorted(found, key=lambda item: item[0])[:count]:
        name, position = match.closest
        print(f"    {similarity:.3f} {name}[{position}]\n      train: {question[:160]}\n"
              f"      {name}: {references[name][position][:160]}")


if __name__ == "__main__":
    raise SystemExit(main())
