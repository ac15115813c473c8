"""Hydra callbacks: keep credentials out of Hydra's config dumps; aggregate a sweep when it ends."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, ListConfig, OmegaConf

from slm_sweep.results import SECRET_KEY, redact

log = logging.getLogger(__name__)


def _redact_overrides(overrides: list[str]) -> list[str]:
    out = []
    for item in overrides:
        key, sep, value = item.partition("=")
        out.append(f"{key}{sep}<redacted>" if sep and SECRET_KEY.search(key) else item)
    return out


def scrub_yaml(path: Path) -> None:
    """Rewrite a config dump that Hydra saved, with every credential-like value replaced."""
    if not path.is_file():
        return
    node = OmegaConf.load(path)
    if isinstance(node, ListConfig):
        cleaned: Any = _redact_overrides([str(x) for x in node])
    else:
        cleaned = redact(OmegaConf.to_container(node, resolve=False))
        if isinstance(cleaned, dict) and "hydra" in cleaned:
            task = ((cleaned["hydra"].get("overrides") or {}).get("task")) or []
            cleaned["hydra"]["overrides"]["task"] = _redact_overrides([str(x) for x in task])
            job = cleaned["hydra"].get("job") or {}
            if job.get("override_dirname"):
                job["override_dirname"] = ",".join(_redact_overrides(job["override_dirname"].split(",")))
    text = OmegaConf.to_yaml(OmegaConf.create(cleaned))
    if text != path.read_text():
        path.write_text(text)


class RedactSecrets(Callback):
    """Hydra writes .hydra/{config,hydra,overrides}.yaml before the job starts; scrub them right after."""

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        hydra_cfg = config.hydra
        output_dir = Path(hydra_cfg.runtime.output_dir)
        if hydra_cfg.output_subdir is not None:
            for name in ("config.yaml", "hydra.yaml", "overrides.yaml"):
                scrub_yaml(output_dir / str(hydra_cfg.output_subdir) / name)
        scrub_yaml(output_dir.parent / "multirun.yaml")
