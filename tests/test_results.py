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
