"""The folders config files are read from: the package's ``conf/`` and, once a Hydra app has said so, every
folder of its search path (``hydra.searchpath=[file://DIR]``), in Hydra's order.

Hydra composes a group option from any of them (``dataset=mine`` from ``DIR/dataset/mine.yaml``); the code that
reads group files by name (a dataset used as an out-of-domain set or a deduplication set, the choices an error
message lists) looks in the same folders, so a file in a user's folder serves everywhere a built-in one does.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

CONF_DIR = Path(__file__).resolve().parent / "conf"
_search_dirs: tuple[Path, ...] = (CONF_DIR,)


def use_config_sources(sources: Iterable[Mapping[str, Any]] | None) -> tuple[Path, ...]:
    """Read group files from Hydra's config sources as well (``hydra.runtime.config_sources``: each a mapping
    with ``schema`` (file, pkg, structured) and ``path``); None or an empty list: the package's folder only.
    Returns the folders now searched."""
    global _search_dirs
    dirs = [CONF_DIR]
    for source in sources or ():
        if source.get("provider") == "hydra":  # Hydra's own configs (launchers, sweepers, logging)
            continue
        folder = _source_dir(str(source.get("schema")), str(source.get("path") or ""))
        if folder is not None and folder.is_dir() and folder.resolve() not in dirs:
            dirs.append(folder.resolve())
    _search_dirs = tuple(dirs)
    for path, first in shadowed_files():
        log.warning("%s is not used: %s has the same group and name and comes first in Hydra's search path; "
                    "give yours another name", path, first)
    return _search_dirs


def shadowed_files() -> list[tuple[Path, Path]]:
    """(file, the file that wins over it) for each config file of a later search-path folder whose group and name
    an earlier folder has as well: Hydra composes the first, silently."""
    found = []
    for i, folder in enumerate(_search_dirs[1:], start=1):
        for path in sorted(folder.glob("*/**/*.yaml")):
            relative = path.relative_to(folder)
            first = next((f / relative for f in _search_dirs[:i] if (f / relative).is_file()), None)
            if first is not None:
                found.append((path, first))
    return found


def use_hydra_search_path() -> tuple[Path, ...]:
    """``use_config_sources`` with the running Hydra job's sources; the package's folder alone outside a job."""
    try:
        from hydra.core.hydra_config import HydraConfig

        sources = HydraConfig.get().runtime.config_sources if HydraConfig.initialized() else None
    except (ImportError, ValueError):
        sources = None
    return use_config_sources(sources)


def _source_dir(schema: str, path: str) -> Path | None:
    if schema == "file":
        return Path(path).expanduser()
    if schema == "pkg":  # a package that holds configs, e.g. pkg://my_project.conf
        try:
            spec = importlib.util.find_spec(path.replace("/", "."))
        except (ImportError, ValueError):
            return None
        locations = list(spec.submodule_search_locations or []) if spec else []
        return Path(locations[0]) if locations else None
    return None  # structured configs have no files


def group_options(group: str) -> list[str]:
    """Names of the config files of a group in every config folder, e.g. the models one can choose."""
    return sorted({p.stem for folder in _search_dirs for p in (folder / group).glob("*.yaml")})


def group_file(group: str, name: str) -> Path | None:
    """``<folder>/<group>/<name>.yaml`` of the first config folder that has it (Hydra's precedence)."""
    for folder in _search_dirs:
        path = folder / group / f"{name}.yaml"
        if path.is_file():
            return path
    return None


def where(group: str) -> str:
    """The group's folders as an error message names them: ``conf/dataset/`` plus any search-path folders."""
    extra = [str(folder / group) for folder in _search_dirs[1:] if (folder / group).is_dir()]
    return f"conf/{group}/" + (f" and {', '.join(extra)}" if extra else "")
