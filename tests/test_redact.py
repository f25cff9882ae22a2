"""Secrets never reach a backend: key names, credential-shaped values, URLs and command lines."""

from __future__ import annotations

import pytest

from lightning_dualtrack.redact import (
    MASK,
    redact_argv,
    redact_mapping,
    redact_string,
    split_url_credentials,
    strip_url_credentials,
)

WANDB_KEY = "0123456789abcdef0123456789abcdef01234567"
HF_TOKEN = "hf_AbCdEfGhIjKlMnOpQrStUvWxYz123456"


@pytest.mark.parametrize("key", ["api_key", "WANDB_API_KEY", "hf/token", "db.password", "client_secret", "auth_header"])
def test_secret_keys_are_masked(key: str) -> None:
    assert redact_mapping({key: "value"})[key] == MASK


@pytest.mark.parametrize("key", ["tokenizer", "max_tokens", "author", "lr"])
def test_ordinary_keys_are_kept(key: str) -> None:
    assert redact_mapping({key: "value"})[key] == "value"


@pytest.mark.parametrize("secret", [WANDB_KEY, HF_TOKEN, "sk-" + "a" * 40, "ghp_" + "b" * 36, "AKIAABCDEFGHIJKLMNOP"])
def test_credential_shaped_values_are_masked_anywhere(secret: str) -> None:
    out = redact_string(f"prefix {secret} suffix")
    assert secret not in out and MASK in out


def test_url_credentials() -> None:
    uri = "https://alice:s3cret@mlflow.example.com/path"
    assert "s3cret" not in redact_string(uri)
    assert strip_url_credentials(uri) == "https://mlflow.example.com/path"
    assert split_url_credentials(uri) == ("https://mlflow.example.com/path", "alice", "s3cret")
    assert split_url_credentials("http://host:5000") == ("http://host:5000", None, None)


def test_argv() -> None:
    argv = ["train.py", "--api-key", "XYZ", f"--wandb_key={WANDB_KEY}", "--token=abc", "--lr", "0.1", f"hf={HF_TOKEN}"]
    out = " ".join(redact_argv(argv))
    for secret in ("XYZ", WANDB_KEY, "abc", HF_TOKEN):
        assert secret not in out
    assert "--lr 0.1" in out
