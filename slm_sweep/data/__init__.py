"""Datasets: declarative specs in conf/dataset/, read from the hub or local files, carved into splits."""

from slm_sweep.data.errors import DataError
from slm_sweep.data.sources import (
    Example,
    Splits,
    dataset_spec,
    known_datasets,
    load_eval_set,
    load_splits,
)

__all__ = [
    "DataError",
    "Example",
    "Splits",
    "dataset_spec",
    "known_datasets",
    "load_eval_set",
    "load_splits",
]
