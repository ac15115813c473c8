"""``python -m slm_sweep [-m] key=value ...``: compose conf/config.yaml with Hydra and run one cell per job."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from slm_sweep.run import run

    record = run(cfg)
    if record["status"] != "completed" and HydraConfig.get().mode != RunMode.MULTIRUN:
        raise SystemExit(f"cell {record['status']}: {record.get('error')}")
    return (record.get("metrics") or {}).get(cfg.optimized_metric)


if __name__ == "__main__":
    main()
