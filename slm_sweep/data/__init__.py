"""Datasets: declarative specs in conf/dataset/ (specs), read from the hub or local files (readers), carved into
splits and deduplicated against the evaluation sets (splits, dedup)."""

from slm_sweep.data.errors import DataError
from slm_sweep.data.readers import Example
from slm_sweep.data.specs import dataset_spec, known_datasets
from slm_sweep.data.splits import Splits, load_eval_set, load_splits

__all__ = [
    "DataError",
    "Example",
    "Splits",
    "dataset_spec",
    "known_datasets",
    "load_eval_set",
    "load_splits",
]
