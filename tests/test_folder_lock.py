"""One launch at a time per folder (slm_sweep.folder_lock): a launch into a sweep or run folder another running launch
holds is refused before it writes anything there; a lock file left by a process that ended blocks nothing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from slm_sweep.folder_lock import LOCK_FILE, FolderInUse, folder_lock, lock_until_exit
from slm_sweep.report.sweep_notes import incomplete_cells
from tests.test_sweep import SWEEP_SETTINGS, cli, env, run_sweep

HOLD = ("import sys; from slm_sweep.folder_lock import lock_until_exit; lock_until_exit(sys.argv[1]); "
        "print('held', flush=True); sys.stdin.read()")


@contextmanager
def holding_process(folder: Path) -> Iterator[subprocess.Popen]:
    """``folder`` locked by another process (a launch still running) for the block."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder), "logger.api_key=abc123secret"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env())
    try:
        assert proc.stdout.readline().strip() == "held"
        yield proc
    finally:
        proc.stdin.close()
        proc.wait(30)


def test_a_folder_another_process_holds_is_refused_naming_that_process_and_free_once_it_ends(tmp_path):
    folder = tmp_path / "sweep"
    with holding_process(folder) as holder:
        with pytest.raises(FolderInUse) as refused:
            with folder_lock(folder, "hydra.sweep.dir"):
                pytest.fail("the block ran while another process held the folder")
        message = str(refused.value)
        assert f"{folder} is in use by another launch (pid {holder.pid} on " in message
        assert "logger.api_key=<redacted>" in message and "abc123secret" not in message
        assert "launch into another folder (hydra.sweep.dir=...)" in message
    with folder_lock(folder):
        holder_now = json.loads((folder / LOCK_FILE).read_text())
        assert holder_now["pid"] == os.getpid()
    assert (folder / LOCK_FILE).read_text() == "", "a released lock names no holder"


def test_a_holder_killed_outright_leaves_its_file_but_not_its_lock(tmp_path):
    folder = tmp_path / "run"
    with holding_process(folder) as holder:
        holder.send_signal(signal.SIGKILL)
        holder.wait(30)
        assert json.loads((folder / LOCK_FILE).read_text())["pid"] == holder.pid  # the dead holder's name stays
        with folder_lock(folder):
            assert json.loads((folder / LOCK_FILE).read_text())["pid"] == os.getpid()


def test_a_sweep_folder_is_held_until_its_process_exits_and_that_process_may_take_it_again(tmp_path):
    folder = tmp_path / "sweep"
    lock_until_exit(folder)
    lock_until_exit(folder)  # a second callback of the same launch
    other = subprocess.run([sys.executable, "-c", f"from slm_sweep.folder_lock import folder_lock\n"
                            f"with folder_lock({str(folder)!r}): pass"], capture_output=True, text=True, env=env())
    assert other.returncode != 0
    assert f"FolderInUse: {folder} is in use by another launch (pid {os.getpid()} on " in other.stderr


def test_a_sweep_launched_into_a_folder_another_launch_holds_is_refused_before_it_writes_anything(requires_data,
                                                                                                  tmp_path):
    sweep = tmp_path / "paper"
    args = ["method=zeroshot", f"hydra.sweep.dir={sweep}"]
    with holding_process(sweep) as holder:
        refused = run_sweep(args, tmp_path, ok=False)
        assert f"preflight: {sweep} is in use by another launch (pid {holder.pid} on " in refused.stderr
        assert [p.name for p in sweep.iterdir()] == [LOCK_FILE], "the refused launch wrote into the folder"
    run_sweep(args, tmp_path)  # the same command once the other launch has ended
    (result,) = sweep.glob("*/result.json")
    assert json.loads(result.read_text())["status"] == "completed"


def test_a_single_run_into_a_folder_another_launch_holds_is_refused_and_writes_no_file_of_its_own(requires_data,
                                                                                                   tmp_path):
    """Hydra writes its .hydra/ folder and log into the run folder before the run starts; the run writes nothing."""
    out = tmp_path / "run"
    with holding_process(out) as holder:
        proc = subprocess.run(cli([*SWEEP_SETTINGS, "method=zeroshot", f"hydra.run.dir={out}"], tmp_path),
                              cwd=tmp_path, env=env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert f"{out} is in use by another launch (pid {holder.pid} on " in proc.stderr
    assert "(hydra.run.dir=...)" in proc.stderr
    assert sorted(p.name for p in out.iterdir()) == [".hydra", LOCK_FILE, "__main__.log"], "the refused run wrote"


def test_a_sweeps_cell_whose_folder_another_launch_holds_is_not_run_and_its_files_stay(requires_data, tmp_path):
    """A single run into a sweep's cell folder (or a job the scheduler still runs after its sweep's launch ended)
    holds that folder: the sweep's cell there leaves it alone, and the sweep names it as not completed."""
    sweep = tmp_path / "sweep"
    cell = sweep / "0-tiny-zeroshot-gsm8k-seed0"
    cell.mkdir(parents=True)
    (cell / "result.json").write_text(json.dumps({"status": "running", "pid": 1}))
    before = (cell / "result.json").read_bytes()
    with holding_process(cell) as holder:
        proc = run_sweep(["method=zeroshot", f"hydra.sweep.dir={sweep}"], tmp_path, ok=False)
    assert "1 cell(s) of the sweep" in proc.stderr
    assert f"{cell}: running: in another launch (pid {holder.pid} on " in proc.stderr
    assert (cell / "result.json").read_bytes() == before
    assert f"cell not run: {cell} is in use by another launch" in (cell / "__main__.log").read_text()
    assert incomplete_cells(sweep) == [(cell, "running: still running, or stopped without recording why")], \
        "a launch that has ended holds nothing"


def test_a_cell_another_launch_holds_is_listed_as_running_there_whatever_its_folder_still_says(tmp_path):
    """Until that launch writes its own record, the folder holds an earlier attempt's (failed here)."""
    job = tmp_path / "sweep" / "0-tiny-lora-gsm8k-seed0"
    job.mkdir(parents=True)
    (job / "result.json").write_text(json.dumps({"status": "failed", "error": "RuntimeError: out of memory",
                                                 "model": "tiny", "method": "lora", "dataset": "gsm8k", "seed": 0}))
    with holding_process(job) as holder:
        ((listed, why),) = incomplete_cells(tmp_path / "sweep")
        assert listed == job and why.startswith(f"running: in another launch (pid {holder.pid} on ")
    ((listed, why),) = incomplete_cells(tmp_path / "sweep")
    assert why == "failed: RuntimeError: out of memory"
