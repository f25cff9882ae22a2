"""Secrets never reach a backend: key names, credential-shaped values, URLs and command lines."""

from __future__ import annotations

import pytest

from lightning_dualtrack.core.redact import (
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


@pytest.mark.parametrize(
    "argv",
    [["--db-pass", "CANARY"], ["--DB_PASS", "CANARY"], ["--token", "CANARY"], ["--api-key", "CANARY"], ["--API_KEY", "CANARY"],
     ["--password", "CANARY"], ["--secret", "CANARY"], ["--db-pass=CANARY"], ["-Password", "CANARY"]],
)
def test_secret_flag_value_pairs_are_masked(argv) -> None:
    out = redact_argv(["train.py", *argv, "--lr", "0.1"])
    assert "CANARY" not in " ".join(out) and out[-2:] == ["--lr", "0.1"]


def test_ordinary_flags_keep_their_values() -> None:
    argv = ["train.py", "--max-tokens", "5", "--tokenizer", "bpe", "--passes", "3", "--author", "me"]
    assert redact_argv(argv) == argv


@pytest.mark.parametrize("shape", ["a", "tok", "hex", "sk-", "://"])
def test_masking_is_linear_in_the_length(shape) -> None:
    """A 1 MB value of any shape is masked in well under a second (it used to take minutes: quadratic)."""
    import secrets
    import time

    make = {
        "a": lambda n: "a" * n,
        "tok": lambda n: secrets.token_urlsafe(n)[:n],
        "hex": lambda n: secrets.token_hex(n // 2),
        "sk-": lambda n: "sk-" * (n // 3),
        "://": lambda n: "x://" * (n // 4),
    }[shape]
    value = make(1_000_000)
    start = time.perf_counter()
    redact_string(value)
    assert time.perf_counter() - start < 1.0


def test_credentials_inside_longer_runs() -> None:
    key = "sk-" + "Z" * 30
    assert redact_string(f"loss_{key}") == "loss_***"
    assert redact_string(f"model-hf_{'x' * 25}") == "model-***"
    assert redact_string("a" * 20 + WANDB_KEY) == "a" * 20 + WANDB_KEY  # 40 hex inside a longer token is not a W&B key
    assert redact_string(f"x {WANDB_KEY} y") == "x *** y"


def test_redact_tree_masks_nested_secret_keys_and_values() -> None:
    from argparse import Namespace

    from lightning_dualtrack.core.redact import redact_tree

    tree = {"db": {"password": "p"}, "items": [HF_TOKEN, 1], "ns": Namespace(token="t", lr=0.1), "t": ("x", WANDB_KEY)}
    out = redact_tree(tree)
    assert out["db"]["password"] == MASK and out["items"] == [MASK, 1] and out["t"] == ("x", MASK)
    assert out["ns"].token == MASK and out["ns"].lr == 0.1
