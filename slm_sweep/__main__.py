"""``python -m slm_sweep [-m] key=value ...``: compose conf/config.yaml with Hydra and run one cell per job."""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from slm_sweep.config import ConfigError, check_group_names
    from slm_sweep.config_sources import use_hydra_search_path
    from slm_sweep.folder_lock import FolderInUse
    from slm_sweep.identity import pin_running_code
    from slm_sweep.results import global_rank
    from slm_sweep.run import run

    # a sweep's preflight did so already; --help, --cfg and a sweep's preflight.only never get here
    pin_running_code()

    use_hydra_search_path()  # dataset files of hydra.searchpath folders serve as ood and dedup sets too
    try:
        check_group_names(cfg, HydraConfig.get().runtime.choices, HydraConfig.get().overrides.task)
        if cfg.get("preflight") and cfg.preflight.get("only") and HydraConfig.get().mode != RunMode.MULTIRUN:
            raise ConfigError("preflight.only=true checks a sweep's grid and lists its cells: run it with -m "
                              "(python -m slm_sweep -m ... preflight.only=true); a single run would train and "
                              "score instead")
        record = run(cfg)
    except ConfigError as error:  # the message says it all; a traceback would only hide it
        raise SystemExit(f"config error: {error}") from None
    except FolderInUse as error:
        raise SystemExit(str(error)) from None
    if global_rank() != 0:
        return None  # the other processes of a distributed cell only train; the first reports
    if record["status"] != "completed" and HydraConfig.get().mode != RunMode.MULTIRUN:
        raise SystemExit(f"cell {record['status']}: {record.get('error')}")
    return (record.get("metrics") or {}).get(cfg.optimized_metric)


def cli() -> None:
    """The command (``python -m slm_sweep``, ``slm-sweep``): a mistyped setting is refused with the settings there
    are before Hydra composes, whose own refusal names the key only."""
    from slm_sweep.config import ConfigError, check_command_line_keys

    try:
        check_command_line_keys(sys.argv[1:])
    except ConfigError as error:
        raise SystemExit(f"config error: {error}") from None
    main()


if __name__ == "__main__":
    cli()
