"""Result-file helpers: which config keys count as credentials, and who may read the files."""

from __future__ import annotations

import pytest

from slm_sweep.results import SECRET_KEY, redact


@pytest.mark.parametrize("key", ["api_key", "WANDB_API_KEY", "hf_token", "HF_TOKEN", "token", "auth.token",
                                 "client_secret", "password", "wandb_key", "aws_access_key", "token_file",
                                 "hf_token_path", "credentials", "auth", "key", "passwd", "Authorization",
                                 "bearer_token", "ssh_key", "encryption_key", "service_account_key"])
def test_credential_keys_are_recognised(key):
    assert SECRET_KEY.search(key)


@pytest.mark.parametrize("key", ["max_new_tokens", "token_budget", "micro_batch_tokens", "train_tokens",
                                 "pad_token_id", "keep_model", "keep_checkpoints", "tokenizer", "evaluation_key",
                                 "training_key", "configuration_key", "sort_key"])
def test_settings_that_mention_tokens_are_not_credentials(key):
    assert not SECRET_KEY.search(key)


def test_redact_keeps_settings_and_hides_credentials():
    config = {"eval": {"max_new_tokens": 256, "token_budget": 65536}, "logger": {"api_key": "abc"},
              "hub": {"hf_token": "xyz"}}
    assert redact(config) == {"eval": {"max_new_tokens": 256, "token_budget": 65536},
                              "logger": {"api_key": "<redacted>"}, "hub": {"hf_token": "<redacted>"}}


def test_an_override_is_redacted_where_redact_would_redact_its_value_in_the_config():
    """A credential given as a key's value, or inside a dict value (a job's sweep choices too), which the config
    validation lets through below a logger entry's top level: the overrides (W&B's provenance.overrides,
    multirun.yaml, preflight.json) hide it as result.json's config does; settings that are no credentials stay."""
    from slm_sweep.results import redact_overrides

    hidden = ["+logger.api_key=abc", "+logger.extra={settings: {api_key: abc}}", "+x=[{password: abc}]",
              "+x={a: 1},{hf_token: abc}", "+x=choice({a: 1},{client_secret: abc})"]
    kept = ["method.r=4,8", "eval.generation_config={max_new_tokens: 5, do_sample: false}",
            "method.lr_scale={lora_B: 16}", "+logger.extra={url: '${oc.env:HF_TOKEN,null}'}", "~logger.api_key"]
    assert redact_overrides([*hidden, *kept]) == [f"{item.partition('=')[0]}=<redacted>" for item in hidden] + kept
    assert redact({"logger": {"extra": {"settings": {"api_key": "abc"}}}})["logger"]["extra"]["settings"] == {
        "api_key": "<redacted>"}

def test_result_files_are_readable_as_the_umask_allows_not_by_their_owner_only(tmp_path):
    """On a shared cluster the others of a group read a sweep's results; mkstemp alone leaves them 0600."""
    import os
    import stat

    from slm_sweep.results import write_predictions, write_result

    mask = os.umask(0o022)
    os.umask(mask)
    write_result(tmp_path, {"status": "completed"})
    write_predictions(tmp_path, [{"id": 0}])
    for path in tmp_path.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask, path.name


def test_recorded_versions_are_those_of_the_code_this_process_imported(monkeypatch):
    """A package upgraded on disk while a sweep runs (one process, every cell) does not change what later cells
    record: an imported module reports its own version; one not imported yet, the installed one."""
    import sys

    import numpy
    import torch

    from slm_sweep import results

    monkeypatch.delitem(sys.modules, "gguf", raising=False)  # not imported: the installed version is the one to run
    before = results.library_versions()
    assert {"bitsandbytes", "accelerate", "triton", "numpy"} <= set(before)
    monkeypatch.setattr(results.metadata, "version", lambda name: "99.0-upgraded")
    after = results.library_versions()
    assert after["torch"] == before["torch"] == str(torch.__version__)
    assert after["numpy"] == before["numpy"] == numpy.__version__
    assert after["slm_sweep"] == before["slm_sweep"] and after["hydra-core"] == before["hydra-core"]
    assert after["gguf"] == "99.0-upgraded"


def _git(cwd, *args: str) -> str:
    import subprocess

    return subprocess.run(["git", "-c", "user.name=test", "-c", "user.email=test@example.com", *args], cwd=cwd,
                          check=True, capture_output=True, text=True).stdout.strip()


def _repository_with_package(root):
    """A git repository at ``root`` holding a copy of the slm_sweep package, committed."""
    import shutil

    from slm_sweep.results import PACKAGE_DIR

    shutil.copytree(PACKAGE_DIR, root / "slm_sweep", ignore=shutil.ignore_patterns("__pycache__", "conf", "report"))
    _git(root, "init", "-q")
    _git(root, "add", "-A")
    _git(root, "commit", "-q", "-m", "package")
    return root / "slm_sweep"


def test_the_commit_is_the_packages_own_and_names_its_new_and_changed_files(tmp_path):
    from slm_sweep.results import git_commit, git_dirty_files

    package = _repository_with_package(tmp_path / "repo")
    head = _git(package.parent, "rev-parse", "HEAD")
    assert git_commit(package) == head and git_dirty_files(package) is None
    (package / "new_module.py").write_text("X = 1\n")  # untracked: still code the package may import
    (package / "results.py").write_text((package / "results.py").read_text() + "\n# edited\n")
    assert git_commit(package) == head + "-dirty"
    assert git_dirty_files(package) == ["slm_sweep/new_module.py", "slm_sweep/results.py"]


def test_an_installed_copy_inside_a_repository_has_no_commit(tmp_path):
    """``pip install .`` into the repository's own .venv: git would report the enclosing repository's commit,
    which is not the installed code."""
    import shutil

    from slm_sweep.results import git_commit, git_dirty_files

    repo = tmp_path / "repo"
    package = _repository_with_package(repo)
    installed = repo / ".venv" / "lib" / "site-packages" / "slm_sweep"
    shutil.copytree(package, installed)
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", "a venv committed by mistake")
    assert git_commit(installed) is None and git_dirty_files(installed) is None


def test_the_commit_is_read_once_per_process(tmp_path, monkeypatch):
    """The cells of a sweep run in one process run the code it imported: a commit made while they run does not
    change the commit they record."""
    from slm_sweep import results

    package = _repository_with_package(tmp_path / "repo")
    monkeypatch.setattr(results, "PACKAGE_DIR", package)
    results.own_code_provenance.cache_clear()
    try:
        first = results.git_commit()
        assert first == _git(package.parent, "rev-parse", "HEAD")
        (package / "new_module.py").write_text("X = 1\n")
        _git(package.parent, "add", "-A")
        _git(package.parent, "commit", "-q", "-m", "later")
        assert results.git_commit(package) != first
        assert results.git_commit() == first and results.git_dirty_files() is None
    finally:
        results.own_code_provenance.cache_clear()


def test_hardware_names_the_host_and_the_slurm_job(monkeypatch):
    import os
    import socket

    from slm_sweep.results import hardware_info

    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "7")
    info = hardware_info()
    assert info["hostname"] == socket.gethostname() and info["pid"] == os.getpid()
    assert (info["slurm_job_id"], info["slurm_array_task_id"]) == ("4242", "7")


def test_result_json_is_strict_json_with_scalars_as_numbers_and_non_finite_values_listed(tmp_path):
    import json
    import math

    import numpy as np
    import torch

    from slm_sweep.results import read_result, write_result

    def refuse(constant):
        raise ValueError(f"{constant} is not JSON")

    write_result(tmp_path, {"metrics": {"a": np.float32(0.5), "b": float("inf"), "c": torch.tensor(3),
                                        "d": np.float64("nan"), "e": 2.5}})
    record = json.loads((tmp_path / "result.json").read_text(), parse_constant=refuse)
    assert record["metrics"] == {"a": 0.5, "b": None, "c": 3, "d": None, "e": 2.5}
    assert record["non_finite"] == ["metrics.b", "metrics.d"]
    assert read_result(tmp_path) == record and not math.isnan(record["metrics"]["a"])
    with pytest.raises(TypeError, match=r"metrics\.when is a datetime\.date"):
        import datetime

        write_result(tmp_path, {"metrics": {"when": datetime.date(2026, 1, 1)}})
    assert read_result(tmp_path) == record  # the earlier file is left as it was


def test_the_non_finite_places_of_a_record_are_those_its_result_json_lists(tmp_path):
    """What the loggers leave out of a result and list under non_finite (tracking.WandbRun) is what result.json
    writes as null and lists, also for a record read back from its file (a copied cell's)."""
    import numpy as np

    from slm_sweep.results import non_finite_places, read_result, write_result

    record = {"metrics": {"a": np.float32("inf"), "b": float("nan"), "c": 1.0, "d": None},
              "eval_sets": {"svamp": {"x": [1.0, float("-inf")], "y": 0.5}}}
    write_result(tmp_path, record)
    written = read_result(tmp_path)
    assert non_finite_places(record) == written["non_finite"] == ["eval_sets.svamp.x[1]", "metrics.a", "metrics.b"]
    assert non_finite_places(written) == written["non_finite"]
    assert non_finite_places({"metrics": {"a": 1.0, "b": np.float64(2.0)}}) == []


def test_an_atomic_write_syncs_the_folder_too(tmp_path, monkeypatch):
    """The rename is in the folder's entry: unsynced, a node that loses power may come back with the old file."""
    import os
    import stat

    from slm_sweep.results import write_result

    synced: list[int] = []
    real_fsync = os.fsync

    def fsync(fd):
        synced.append(os.fstat(fd).st_mode)
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    write_result(tmp_path, {"status": "completed"})
    assert [stat.S_ISDIR(mode) for mode in synced] == [False, True]


def test_a_re_score_of_a_re_score_that_carried_no_provenance_names_no_training_run():
    """A record that re-scored weights trained elsewhere (trained_in) but was written before it carried
    training_provenance does not know the training run: its own commit is the re-scoring's, not the training's."""
    from slm_sweep.results import training_provenance

    provenance = training_provenance({"trained_in": "/x", "git_commit": "rescorer", "versions": {"torch": "1"}},
                                     "/y/result.json")
    assert provenance["result_path"] is None and provenance["git_commit"] is None and provenance["versions"] is None
    trained_here = training_provenance({"git_commit": "trainer"}, "/y/result.json")
    assert trained_here["git_commit"] == "trainer" and trained_here["result_path"] == "/y/result.json"


def test_each_out_of_domain_set_records_its_claims_metric_which_a_report_run_on_its_own_reads(tiny_cfg, tmp_path,
                                                                                              caplog, one_thread):
    """A prose set of a hydra.searchpath folder is read on lenient. The cell knows its file; ``python -m
    slm_sweep.report`` run later does not, so the metric travels in result.json. A copy of a finished result takes
    the set's metric as its file says now, as it takes the in-domain set's from its own config."""
    import json
    import logging

    from slm_sweep.config_sources import use_config_sources
    from slm_sweep.report.aggregate import summarize_ood
    from slm_sweep.report.collect import load_results
    from slm_sweep.run import run

    conf, data = tmp_path / "conf", tmp_path / "mywords"
    (conf / "dataset").mkdir(parents=True)
    data.mkdir()
    rows = [{"question": f"How many apples are {i} and {i}?", "answer": f"There are {2 * i} apples."} for i in (1, 2)]
    (data / "test.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    spec = (f"name: mywords\ndata_dir: {data}\nlocal: {{dir_name: mywords, files: {{test: test.jsonl}}}}\n"
            "answer_format: prose\nval_size: null\neval_only: true\n")
    (conf / "dataset" / "mywords.yaml").write_text(spec)
    searched = [{"schema": "file", "path": str(conf), "provider": "hydra.searchpath"}]
    use_config_sources(searched)  # as a Hydra job with hydra.searchpath=[file://conf] does
    overrides = ("method=zeroshot", "dataset.test_limit=2", "eval.ood_sets=[mywords]", "eval.max_new_tokens=4")
    record = run(tiny_cfg(*overrides), out_dir=tmp_path / "sweep" / "cell")
    assert record["status"] == "completed", record.get("error")
    assert record["eval_sets"]["mywords"]["claims_metric"] == "lenient"

    use_config_sources(None)  # what a report run on its own knows: the package's datasets
    (row,) = summarize_ood(load_results([tmp_path / "sweep"]))
    assert (row["eval_set"], row["delta_metric"]) == ("mywords", "lenient")
    # a file written before the entries recorded it: the primary metric, and a warning that names the set
    path = tmp_path / "sweep" / "cell" / "result.json"
    older = json.loads(path.read_text())
    del older["eval_sets"]["mywords"]["claims_metric"]
    path.write_text(json.dumps(older))
    with caplog.at_level(logging.WARNING, logger="slm_sweep.report.claims_metric"):
        (row,) = summarize_ood(load_results([tmp_path / "sweep"]))
    assert row["delta_metric"] == "flexible"
    assert "dataset mywords: its result files record no claims metric and conf/dataset/ has no config of it" \
        in caplog.text

    use_config_sources(searched)
    (conf / "dataset" / "mywords.yaml").write_text(spec + "claims_metric: strict\n")
    copy = run(tiny_cfg(*overrides, "resume.enabled=true", f"resume.search_dir={tmp_path / 'sweep'}"),
               out_dir=tmp_path / "copy")
    assert copy["reused_from"] == str(path) and copy["eval_sets"]["mywords"]["claims_metric"] == "strict"


def _modes_as_the_umask_allows(folder) -> list[str]:
    """The paths under ``folder`` (itself included) whose mode is not what the umask gives a new folder or file."""
    import os
    import stat

    mask = os.umask(0o022)
    os.umask(mask)
    wrong = []
    for path in [folder, *folder.rglob("*")]:
        expected = (0o777 if path.is_dir() else 0o666) & ~mask
        if stat.S_IMODE(path.stat().st_mode) != expected:
            wrong.append(f"{path.relative_to(folder.parent)}: {oct(stat.S_IMODE(path.stat().st_mode))}")
    return wrong


def test_kept_weights_are_readable_as_the_umask_allows_as_result_files_are(tiny_cfg, tmp_path):
    """Another user's cell with the same training key re-scores kept weights (resume.search_dir): a folder left
    readable by its owner only (mkdtemp's 0700, safetensors' 0600) failed that cell."""
    from slm_sweep.run import run

    for method, kept in (("lora", "adapter"), ("full", "model")):
        record = run(tiny_cfg(f"method={method}", "trainer.keep_model=true", "dataset.test_limit=2"),
                     out_dir=tmp_path / method)
        assert record["status"] == "completed", record.get("error")
        assert (tmp_path / method / kept / "training_key").is_file()
        assert _modes_as_the_umask_allows(tmp_path / method / kept) == []


@pytest.mark.slow
def test_the_dequantized_copy_of_a_gguf_model_is_readable_as_the_umask_allows(tmp_path):
    import importlib.util

    from omegaconf import OmegaConf

    from slm_sweep.models import convert_gguf
    from tests.conftest import CONF_DIR

    cfg = OmegaConf.load(CONF_DIR / "model" / "smollm135_q4.yaml")
    if importlib.util.find_spec(cfg.gguf_package) is None:
        pytest.skip(f"{cfg.gguf_package} is not installed")
    target = convert_gguf(cfg, tmp_path / "cache")
    assert (target / "model.safetensors").is_file()
    assert _modes_as_the_umask_allows(target) == []


def test_a_result_file_that_cannot_be_read_is_named_in_a_warning_once(tmp_path, caplog):
    """Read as no result (a cell then runs as in an empty folder), but never unseen."""
    from slm_sweep.results import read_result

    path = tmp_path / "result.json"
    path.write_text('{"status": "completed"')
    with caplog.at_level("WARNING", logger="slm_sweep.results"):
        assert read_result(tmp_path) is None and read_result(path) is None
        assert read_result(tmp_path / "absent") is None
    named = [r.getMessage() for r in caplog.records]
    assert len(named) == 1 and named[0].startswith(f"{path} cannot be read as a result (JSONDecodeError: ")
    caplog.clear()
    path.write_text("[1, 2]")  # JSON, but no record
    with caplog.at_level("WARNING", logger="slm_sweep.results"):
        assert read_result(path) is None
    assert [r.getMessage() for r in caplog.records] == \
        [f"{path} cannot be read as a result (the top level is a list, not an object): taken as no result"]
