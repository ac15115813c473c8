"""Result records of a cell: result.json and predictions.jsonl, written atomically; the run's provenance."""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import json
import logging
import math
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, BinaryIO

# Bump when a field changes meaning (a field added beside the others is no change of schema); readers take every
# version up to this one. 2: evaluation figures (eval_time_s, eval_new_tokens, eval_tokens_per_s) are the scored
# split's, each out-of-domain set's in eval_sets, eval_time_all_sets_s the stage's (1: eval_time_s counted the
# out-of-domain sets too); a trained cell whose training did not finish has null training figures, not zeros;
# non-finite numbers are written as null and listed in non_finite (1: NaN and Infinity, which is not JSON)
SCHEMA_VERSION = 2
RESULT_FILE = "result.json"
PREFLIGHT_FILE = "preflight.json"  # a sweep folder's record of what its preflight checked and left out
# a later attempt that failed before it knew its keys, beside the finished result.json it leaves in place
FAILED_ATTEMPT_FILE = "result.failed.json"
# where the loggers of such an attempt write, so that the finished result's curves stay as they are
FAILED_ATTEMPT_LOGS = "failed-attempt"
PREDICTIONS_FILE = "predictions.jsonl"
# the folder a rerun with other settings moves a cell's earlier result into (sweep.resume.set_aside_earlier)
SUPERSEDED = "superseded"
STATUSES = ("running", "completed", "failed", "diverged", "interrupted")
# What a copy of another folder's finished result (run._reuse) keeps of its own attempt; every other key of the
# source, what computed the numbers included (metrics, versions, hardware, trained_in, training_provenance) and the
# schema_version they were written under, is copied. ``files`` is described afresh from the files copied.
PER_ATTEMPT_KEYS = frozenset({"model", "model_id", "method", "dataset", "seed", "identity",
                              "config", "learning_rate", "started_at", "finished_at", "reused_from", "error",
                              "traceback", "tracking", "checkpoint_step", "files"})
# What the evaluation of one set records, for the scored split in metrics and for each out-of-domain set in
# eval_sets: the time of generating and scoring its questions (its prompts built beforehand), the tokens generated,
# their rate (eval_new_tokens / eval_time_s) and the generation batches halved after running out of memory
EVAL_SET_FIGURES = ("eval_time_s", "eval_new_tokens", "eval_tokens_per_s", "eval_oom_halvings")
# What training_provenance records of the run that trained the weights a cell re-scores (earlier_attempts: the
# attempts whose steps that run resumed, ATTEMPT_PROVENANCE_KEYS of each)
TRAINING_PROVENANCE_KEYS = ("git_commit", "git_dirty_files", "versions", "hardware", "started_at", "finished_at",
                            "earlier_attempts")
# What earlier_attempts records of each earlier attempt of a cell in its folder, whose checkpoint training resumed
# (tracking: its W&B run, whose curves hold the steps before the checkpoint)
ATTEMPT_PROVENANCE_KEYS = ("status", "checkpoint_step", "git_commit", "git_dirty_files", "versions", "hardware",
                           "started_at", "finished_at", "tracking")
TRACKED_PACKAGES = ("torch", "transformers", "peft", "lightning", "hydra-core", "omegaconf", "wandb", "datasets",
                    "tokenizers", "safetensors", "gguf", "bitsandbytes", "accelerate", "triton", "numpy", "slm_sweep")
# the module a distribution is imported as, where the two names differ
_MODULE_OF_PACKAGE = {"hydra-core": "hydra"}
# A credential's key: api_key, *_token / token, *secret*, *password*; not eval.max_new_tokens or token_budget.
# credential-like setting names: api_key, aws_access_key, private_key, client_secret, password, credentials, auth,
# wandb_key, hf_token, token_file; not the settings that count tokens (max_new_tokens, token_budget, pad_token_id)
# nor a cell's identity keys (evaluation_key)
SECRET_KEY = re.compile(r"(?:api|access|private|ssh|encryption|signing|service[_-]?account)[_-]?key"
                        r"|(?:^|[_.-])(?:wandb|hf|openai|aws|github|gh)[_-]?key$|authorization|bearer"
                        r"|^key$|secret|passw(?:or)?d|credential|(?:^|[_.-])(?:auth|token)$"
                        r"|(?:^|[_.-])(?:key|token)[_-]?(?:file|path)$", re.IGNORECASE)


log = logging.getLogger(__name__)


def now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def _read_umask() -> int:
    # read once, at import: setting the umask to read it back is process-wide, and other threads may create files
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _read_umask()


def share_as_umask_allows(folder: str | Path) -> None:
    """Give ``folder`` (made by ``tempfile.mkdtemp``, its owner's only), the folders under it and its files the
    modes a folder and a file made under the umask get, as result files have (``atomic_write``): kept weights and
    converted models are read by the others of a shared cluster (another user's cell with the same training key
    re-scores them), and a library may write its files for their owner only."""
    folder = Path(folder)
    os.chmod(folder, 0o777 & ~_UMASK)
    for parent, folders, files in os.walk(folder):
        for name in folders:
            os.chmod(Path(parent) / name, 0o777 & ~_UMASK)
        for name in files:
            os.chmod(Path(parent) / name, 0o666 & ~_UMASK)


def atomic_write(path: str | Path, write: Callable[[BinaryIO], None]) -> None:
    """Call ``write`` on a temporary file in the same directory, fsync it, then rename it over ``path``.

    A reader sees the old file or the whole new one, never part of one, whenever the writer is killed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        # mkstemp creates the file readable by its owner only; a result is read by the others of a shared cluster
        os.fchmod(fd, 0o666 & ~_UMASK)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)


def _fsync_directory(folder: Path) -> None:
    """Make a rename in ``folder`` durable: without it, a node that loses power after the rename can come back
    with the old file."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # a file system that cannot sync a directory (some network mounts) keeps what it can
        pass
    finally:
        os.close(fd)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def write_result(out_dir: str | Path, record: Mapping[str, Any], name: str = RESULT_FILE) -> Path:
    """``record`` as strict JSON: numpy and torch scalars as numbers; a NaN or infinite number as null, its place
    listed under ``non_finite`` (``metrics.val_loss``); any other value JSON has no type for is a TypeError."""
    non_finite: list[str] = []
    plain = _json_ready(record, "", non_finite)
    if non_finite:
        plain["non_finite"] = sorted(set(plain.get("non_finite") or []) | set(non_finite))
    path = Path(out_dir) / name
    atomic_write_text(path, json.dumps(plain, indent=2, sort_keys=False, allow_nan=False) + "\n")
    return path


def non_finite_places(record: Mapping[str, Any]) -> list[str]:
    """The places ``write_result`` writes as null and lists under ``non_finite`` (``metrics.val_loss``): the NaN and
    infinite numbers of ``record``, with those a record read back from a file lists already."""
    found: list[str] = []

    def walk(value: Any, where: str) -> None:
        if isinstance(value, Mapping):
            for key, item in value.items():
                walk(item, f"{where}.{key}" if where else str(key))
        elif isinstance(value, (list, tuple)):
            for i, item in enumerate(value):
                walk(item, f"{where}[{i}]")
        elif isinstance(value, float) and not math.isfinite(value):
            found.append(where)
        elif getattr(value, "ndim", None) == 0 and hasattr(value, "item"):  # a numpy or torch scalar
            walk(value.item(), where)

    walk(record, "")
    listed = record.get("non_finite")
    return sorted(set(found) | set(listed if isinstance(listed, list) else []))


def _json_ready(value: Any, where: str, non_finite: list[str]) -> Any:
    """A copy of ``value`` that ``json.dumps(allow_nan=False)`` writes; ``where``: its place, for the lists."""
    if isinstance(value, Mapping):
        return {str(k): _json_ready(v, f"{where}.{k}" if where else str(k), non_finite) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v, f"{where}[{i}]", non_finite) for i, v in enumerate(value)]
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        non_finite.append(where)
        return None
    if getattr(value, "ndim", None) == 0 and hasattr(value, "item"):  # a numpy or torch scalar
        return _json_ready(value.item(), where, non_finite)
    raise TypeError(f"{where or 'the record'} is a {type(value).__module__}.{type(value).__qualname__} "
                    f"({value!r:.80}), which result.json cannot hold: record a number, string, bool, null, "
                    "list or mapping")


def write_predictions(out_dir: str | Path, records: Iterable[Mapping[str, Any]]) -> Path:
    path = Path(out_dir) / PREDICTIONS_FILE
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    return path


def copy_atomically(source: str | Path, target: str | Path) -> None:
    """Copy ``source`` to ``target`` through ``atomic_write``: a reader sees the old file or the whole copy."""
    with open(source, "rb") as f:
        atomic_write(target, lambda out: shutil.copyfileobj(f, out, 1 << 20))


def describe_predictions(out_dir: str | Path) -> dict[str, Any] | None:
    """``{"sha256", "rows"}`` of the predictions file in ``out_dir``, None without one: result.json records it, so
    that the two files can be checked to belong together."""
    path = Path(out_dir) / PREDICTIONS_FILE
    digest, rows = hashlib.sha256(), 0
    try:
        with open(path, "rb") as f:
            for line in f:
                digest.update(line)
                rows += bool(line.strip())
    except FileNotFoundError:
        return None
    return {"sha256": digest.hexdigest(), "rows": rows}


def training_provenance(trained: Mapping[str, Any], result_path: str | Path | None) -> dict[str, Any]:
    """Where and with what the weights a cell re-scores were trained: the training run's record at
    ``result_path`` (None when that record is gone), its commit, versions, hardware and times. A record that
    re-scored weights itself passes on the provenance it carries, which names the run that trained them."""
    if isinstance(trained.get("training_provenance"), Mapping):
        return dict(trained["training_provenance"])
    if trained.get("trained_in"):  # a re-score written before it carried the block: the training run is unknown
        return {"result_path": None, **dict.fromkeys(TRAINING_PROVENANCE_KEYS)}
    return {"result_path": None if result_path is None else str(result_path),
            **{key: trained.get(key) for key in TRAINING_PROVENANCE_KEYS}}


def read_result(path: str | Path) -> dict | None:
    """The record at ``path`` (a result.json or its directory), or None when absent or unreadable; a file that is
    there but cannot be read as a record (damaged JSON, not an object) is named in a warning, once per version of
    it, so that a cell that treats it as absent does not do so unseen."""
    path = Path(path)
    if path.is_dir():
        path = path / RESULT_FILE
    record, why = _parse_result(path)
    if why is not None:
        try:
            version = (path.stat().st_mtime_ns, path.stat().st_size)
        except OSError:
            version = None
        if (str(path), version) not in _WARNED:
            _WARNED.add((str(path), version))
            log.warning("%s cannot be read as a result (%s): taken as no result", path, why)
    return record


_WARNED: set[tuple[str, tuple[int, int] | None]] = set()  # (path, its mtime and size)


def _parse_result(path: Path) -> tuple[dict | None, str | None]:
    """(the record at ``path``, None) or (None, why it cannot be read); (None, None) when there is no file."""
    try:
        text = path.read_text(encoding="utf-8")
    except (FileNotFoundError, NotADirectoryError):
        return None, None
    except (OSError, ValueError) as err:  # ValueError: not UTF-8
        return None, f"{type(err).__name__}: {err}"
    try:
        record = json.loads(text)
    except ValueError as err:
        return None, f"{type(err).__name__}: {err}"
    if not isinstance(record, dict):
        return None, f"the top level is a {type(record).__name__}, not an object"
    return record, None


def damaged_names(*paths: Path) -> list[Path]:
    """Where to move files or folders that cannot be read: ``<stem>.damaged-<UTC time><suffix>`` beside each of
    ``paths`` (``-2``, ``-3``... after the time, the same for all of them, where one is taken)."""
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    number = 1
    while True:
        tail = f"-{number}" if number > 1 else ""
        names = [path.with_name(f"{path.stem}.damaged-{stamp}{tail}{path.suffix}") for path in paths]
        if not any(name.exists() for name in names):
            return names
        number += 1


def set_aside_damaged(out: str | Path) -> Path | None:
    """Rename a result.json in ``out`` that is there but cannot be read as a record (a bad copy, a hand edit that
    broke it) to ``result.damaged-<time>.json``, and the predictions beside it to
    ``predictions.damaged-<time>.jsonl``, with a warning naming them: a cell that starts in the folder treats it
    as holding no result, and would otherwise write over what may still be recovered. Returns the new path of the
    result, None when there was nothing to set aside."""
    out = Path(out)
    path = out / RESULT_FILE
    if not path.is_file():
        return None
    record, why = _parse_result(path)
    if record is not None or why is None:
        return None
    predictions = out / PREDICTIONS_FILE
    target, predictions_target = damaged_names(path, predictions)
    target = path.rename(target)
    moved = predictions.rename(predictions_target) if predictions.is_file() else None
    _fsync_directory(out)
    log.warning("%s cannot be read as a result (%s): moved to %s%s; this cell runs as in a folder without a result",
                path, why, target, f", its predictions to {moved}" if moved else "")
    return target


def read_predictions(path: str | Path) -> list[dict]:
    path = Path(path)
    if path.is_dir():
        path = path / PREDICTIONS_FILE
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def is_complete(record: Mapping[str, Any] | None) -> bool:
    """A finished cell whose metrics can be trusted."""
    if not record or record.get("status") != "completed":
        return False
    from slm_sweep.scoring import ACCURACY_KEYS  # pure Python: result readers stay torch-free

    metrics = record.get("metrics") or {}
    # a cell that scored the validation split (a learning-rate search) records val_accuracy_*, val_n_eval
    config = record.get("config") if isinstance(record.get("config"), Mapping) else {}
    prefix = "val_" if ((config.get("eval") or {}).get("split") == "val") else ""
    return all(metrics.get(prefix + k) is not None for k in (*ACCURACY_KEYS, "n_eval"))


# a key inside an override's dict value (Hydra's grammar: unquoted, up to its colon), ``{settings: {api_key: x}}``
_OVERRIDE_DICT_KEY = re.compile(r"[{,]\s*([^{}\[\],:=]+?)\s*:")


def redact_overrides(overrides: Sequence[str]) -> list[str]:
    """Command-line overrides (``key=value``) with the value of every credential-like key replaced, the whole
    value where it is a dict holding such a key (``+logger.extra={settings: {api_key: ...}}``), as ``redact``
    redacts it in the config."""
    out = []
    for item in overrides:
        key, sep, value = str(item).partition("=")
        secret = SECRET_KEY.search(key) or any(SECRET_KEY.search(inner.strip())
                                               for inner in _OVERRIDE_DICT_KEY.findall(value))
        out.append(f"{key}{sep}<redacted>" if sep and secret else str(item))
    return out


def redact(value: Any, digests: bool = False) -> Any:
    """A copy of a config with every value under a key that looks like a credential replaced by ``<redacted>``.
    With ``digests`` (what a cell's identity keys), a number or boolean there, which is never a credential (an
    optimizer's PRNG ``key``, ``lr_scale={key: 4}``), is replaced by ``<redacted sha256:...>`` (16 hex digits
    of a hash of it) instead, so that two values of such a setting give two keys; a string, list or mapping
    stays ``<redacted>``: a credential is not keyed (an unsalted hash of a short password is recovered by
    trying candidates, and a rotated token would change every key)."""
    if isinstance(value, Mapping):
        return {k: (_redacted(v, digests) if SECRET_KEY.search(str(k)) and v else redact(v, digests))
                for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v, digests) for v in value]
    return value


def _redacted(value: Any, digest: bool) -> str:
    if not digest or not isinstance(value, (bool, int, float)):
        return "<redacted>"
    if isinstance(value, float) and value.is_integer():  # 4.0 and 4 are one value, as in the keys
        value = int(value)
    text = json.dumps(value, sort_keys=True, default=str)
    return f"<redacted sha256:{hashlib.sha256(text.encode()).hexdigest()[:16]}>"


def library_versions() -> dict[str, str | None]:
    """Each tracked package's version: the imported module's ``__version__`` (the code this process runs, even if
    the package was upgraded on disk since), else the installed distribution's."""
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in TRACKED_PACKAGES:
        module = sys.modules.get(_MODULE_OF_PACKAGE.get(name, name))
        imported = getattr(module, "__version__", None) if module is not None else None
        if isinstance(imported, str):
            versions[name] = imported
            continue
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


PACKAGE_DIR = Path(__file__).resolve().parent


@dataclass(frozen=True)
class CodeProvenance:
    """The commit of the repository the package was imported from, ``-dirty`` when it had changes (tracked files
    anywhere, or new files under the package), and the changed paths under the package."""

    commit: str | None
    dirty_files: tuple[str, ...] = ()


def code_provenance(package_dir: str | Path) -> CodeProvenance:
    """``package_dir``'s provenance, read from git. None as the commit unless the package is a tracked folder at
    the top of a git repository: an installed copy (site-packages, even inside a repository's .venv) is not the
    code of whatever repository encloses it."""
    package_dir = Path(package_dir).resolve()
    root = package_dir.parent

    def git(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=10)

    try:
        top = git("rev-parse", "--show-toplevel")
        if top.returncode != 0 or Path(top.stdout.strip()).resolve() != root:
            return CodeProvenance(None)
        if git("ls-files", "--error-unmatch", f"{package_dir.name}/{Path(__file__).name}").returncode != 0:
            return CodeProvenance(None)
        sha = git("rev-parse", "HEAD")
        if sha.returncode != 0:
            return CodeProvenance(None)
        tracked = git("status", "--porcelain", "--untracked-files=no").stdout
        in_package = git("status", "--porcelain", "--untracked-files=all", "--", package_dir.name).stdout
    except (OSError, subprocess.SubprocessError):
        return CodeProvenance(None)
    # porcelain v1: two status letters, a space, the path (``old -> new`` for a rename)
    changed = tuple(sorted({line[3:].split(" -> ")[-1] for line in in_package.splitlines() if line.strip()}))
    dirty = bool(tracked.strip()) or bool(changed)
    return CodeProvenance(sha.stdout.strip() + ("-dirty" if dirty else ""), changed)


@functools.lru_cache(maxsize=1)
def own_code_provenance() -> CodeProvenance:
    """This package's provenance, read once per process: the cells of a sweep run in one process run the code it
    imported, whatever is committed or edited in the working tree while they run."""
    return code_provenance(PACKAGE_DIR)


def git_commit(package_dir: str | Path | None = None) -> str | None:
    """The commit of the code (``-dirty`` with changes); None outside a git checkout of the package."""
    return (own_code_provenance() if package_dir is None else code_provenance(package_dir)).commit


def git_dirty_files(package_dir: str | Path | None = None) -> list[str] | None:
    """The changed and new paths under the package (repository-relative), None when they are none or unknown."""
    provenance = own_code_provenance() if package_dir is None else code_provenance(package_dir)
    return list(provenance.dirty_files) or None


def global_rank() -> int:
    """This process's rank in a distributed run (0 when not distributed), from the launcher's environment: the
    first process writes a cell's files, the others only join its training."""
    for var in ("RANK", "LOCAL_RANK", "SLURM_PROCID"):
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var])
    return 0


def hardware_info() -> dict[str, Any]:
    """The machine, the job that ran on it (SLURM) and its accelerator, so that a record left at ``running`` by a
    killed node can be traced to the node and the job."""
    info: dict[str, Any] = {"platform": platform.platform(), "machine": platform.machine(),
                            "hostname": socket.gethostname(), "pid": os.getpid(),
                            "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
                            "slurm_array_task_id": os.environ.get("SLURM_ARRAY_TASK_ID"),
                            "cpu_count": os.cpu_count(), "accelerator": "cpu", "accelerator_count": 0}
    try:
        import torch

        if torch.cuda.is_available():
            info["accelerator"] = torch.cuda.get_device_name(0)
            info["accelerator_count"] = torch.cuda.device_count()
            info["cuda"] = torch.version.cuda
            info["cudnn"] = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    except ImportError:
        pass
    return info
