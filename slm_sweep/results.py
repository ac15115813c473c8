"""Result records of a cell: result.json and predictions.jsonl, written atomically; the run's provenance."""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import re
import subprocess
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any, BinaryIO

SCHEMA_VERSION = 1
RESULT_FILE = "result.json"
PREFLIGHT_FILE = "preflight.json"  # a sweep folder's record of what its preflight checked and left out
# a later attempt that failed before it knew its keys, beside the finished result.json it leaves in place
FAILED_ATTEMPT_FILE = "result.failed.json"
PREDICTIONS_FILE = "predictions.jsonl"
# the folder a rerun with other settings moves a cell's earlier result into (sweep.resume.set_aside_earlier)
SUPERSEDED = "superseded"
STATUSES = ("running", "completed", "failed", "diverged", "interrupted")
TRACKED_PACKAGES = ("torch", "transformers", "peft", "lightning", "hydra-core", "omegaconf", "wandb", "datasets",
                    "tokenizers", "safetensors", "gguf", "slm_sweep")
# A credential's key: api_key, *_token / token, *secret*, *password*; not eval.max_new_tokens or token_budget.
# credential-like setting names: api_key, aws_access_key, private_key, client_secret, password, credentials, auth,
# wandb_key, hf_token, token_file; not the settings that count tokens (max_new_tokens, token_budget, pad_token_id)
# nor a cell's identity keys (evaluation_key)
SECRET_KEY = re.compile(r"(?:api|access|private|ssh|encryption|signing|service[_-]?account)[_-]?key"
                        r"|(?:^|[_.-])(?:wandb|hf|openai|aws|github|gh)[_-]?key$|authorization|bearer"
                        r"|^key$|secret|passw(?:or)?d|credential|(?:^|[_.-])(?:auth|token)$"
                        r"|(?:^|[_.-])(?:key|token)[_-]?(?:file|path)$", re.IGNORECASE)


def now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def _read_umask() -> int:
    # read once, at import: setting the umask to read it back is process-wide, and other threads may create files
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _read_umask()


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


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def write_result(out_dir: str | Path, record: Mapping[str, Any], name: str = RESULT_FILE) -> Path:
    path = Path(out_dir) / name
    atomic_write_text(path, json.dumps(record, indent=2, sort_keys=False, default=str) + "\n")
    return path


def write_predictions(out_dir: str | Path, records: Iterable[Mapping[str, Any]]) -> Path:
    path = Path(out_dir) / PREDICTIONS_FILE
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    return path


def read_result(path: str | Path) -> dict | None:
    """The record at ``path`` (a result.json or its directory), or None when absent or unreadable."""
    path = Path(path)
    if path.is_dir():
        path = path / RESULT_FILE
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


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


def redact_overrides(overrides: Sequence[str]) -> list[str]:
    """Command-line overrides (``key=value``) with the value of every credential-like key replaced."""
    out = []
    for item in overrides:
        key, sep, value = str(item).partition("=")
        out.append(f"{key}{sep}<redacted>" if sep and SECRET_KEY.search(key) else str(item))
    return out


def redact(value: Any) -> Any:
    """A copy of a config with every value under a key that looks like a credential replaced."""
    if isinstance(value, Mapping):
        return {k: ("<redacted>" if SECRET_KEY.search(str(k)) and v else redact(v)) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v) for v in value]
    return value


def library_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in TRACKED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def git_commit(repo_dir: str | Path | None = None) -> str | None:
    cwd = Path(repo_dir or Path(__file__).resolve().parents[1])
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True,
                             timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return sha + ("-dirty" if dirty else "")


def hardware_info() -> dict[str, Any]:
    info: dict[str, Any] = {"platform": platform.platform(), "machine": platform.machine(),
                            "cpu_count": os.cpu_count(), "accelerator": "cpu", "accelerator_count": 0}
    try:
        import torch

        if torch.cuda.is_available():
            info["accelerator"] = torch.cuda.get_device_name(0)
            info["accelerator_count"] = torch.cuda.device_count()
            info["cuda"] = torch.version.cuda
    except ImportError:
        pass
    return info
