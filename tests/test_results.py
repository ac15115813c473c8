"""Result-file helpers: which config keys count as credentials."""

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
