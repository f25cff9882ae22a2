"""Secret redaction: nothing that looks like a credential is written to the journal or a backend.

Two rules, applied to everything user-supplied that the logger records (params, tags, the command
line, the tracking URI):

* a key whose name says it holds a secret (``api_key``, ``token``, ``password``, ``secret``, ...) has
  its value replaced by ``***``;
* a value that *looks* like a credential (a W&B API key, a Hugging Face ``hf_`` token, an OpenAI-style
  ``sk-`` key, a GitHub token, an AWS access key id, the ``user:pass@`` part of a URL) has that part
  replaced by ``***`` wherever it appears in a string.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

MASK = "***"

_SECRET_KEY = re.compile(
    r"(api[_-]?key|apikey|token|passw(or)?d|passwd|secret|credential|private[_-]?key|auth|bearer|cookie|session[_-]?id)",
    re.IGNORECASE,
)
# Keys that contain a secret-looking word but are not secrets (e.g. tokenizer settings).
_NOT_SECRET_KEY = re.compile(r"(tokeni[sz]er|max_tokens|num_tokens|tokens_per|n_tokens|token_len|author)", re.IGNORECASE)

_SECRET_VALUES = [
    re.compile(r"(?<![0-9a-fA-F])[0-9a-f]{40}(?![0-9a-fA-F])"),  # W&B API key (40 hex)
    re.compile(r"\b(?:local|v1)-[0-9a-zA-Z_]{20,}\b"),  # W&B local / v1 keys
    re.compile(r"\bhf_[A-Za-z0-9]{20,}\b"),  # Hugging Face token
    re.compile(r"\bsk-[A-Za-z0-9_\-]{20,}\b"),  # OpenAI-style key
    re.compile(r"\bgh[pousr]_[A-Za-z0-9]{30,}\b"),  # GitHub token
    re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"),  # AWS access key id
    re.compile(r"\bdapi[0-9a-f]{32}\b"),  # Databricks token
]
_URL_CREDENTIALS = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)(?P<creds>[^/@\s:]*(?::[^/@\s]*)?)@")
_ARG_SECRET = re.compile(
    r"^(?P<flag>--?[\w.\-]*(?:api[_-]?key|token|passw(?:or)?d|secret|credential)[\w.\-]*)(?P<sep>=)(?P<value>.+)$",
    re.IGNORECASE,
)


def is_secret_key(key: str) -> bool:
    """Whether a key's name says that its value is a secret."""
    if _NOT_SECRET_KEY.search(key):
        return False
    return bool(_SECRET_KEY.search(key))


def redact_string(value: str) -> str:
    """Replace every credential-shaped substring of ``value`` by ``***``."""
    if not value:
        return value
    value = _URL_CREDENTIALS.sub(lambda m: f"{m.group('scheme')}{MASK}@", value)
    for pattern in _SECRET_VALUES:
        value = pattern.sub(MASK, value)
    return value


def redact_value(key: str, value: Any) -> Any:
    """Redact one value, knowing its key. Non-strings pass unchanged unless the key is secret."""
    if is_secret_key(key) and value not in (None, "", False):
        return MASK
    if isinstance(value, str):
        return redact_string(value)
    return value


def redact_mapping(mapping: dict[str, Any]) -> dict[str, Any]:
    """Redact a flat mapping (keys are ``/``-joined paths; the last segments decide secrecy)."""
    return {key: redact_value(key, value) for key, value in mapping.items()}


def redact_argv(argv: Iterable[str]) -> list[str]:
    """Redact a command line: ``--api-key=X`` and ``--token X`` forms, and credential-shaped values."""
    out: list[str] = []
    mask_next = False
    for arg in argv:
        if mask_next:
            out.append(MASK)
            mask_next = False
            continue
        match = _ARG_SECRET.match(arg)
        if match:
            out.append(f"{match.group('flag')}={MASK}")
            continue
        if arg.startswith("-") and "=" not in arg and is_secret_key(arg.lstrip("-")):
            out.append(arg)
            mask_next = True
            continue
        out.append(redact_string(arg))
    return out


def strip_url_credentials(uri: str | None) -> str | None:
    """``http://user:pass@host`` -> ``http://host`` (for display and cross-links)."""
    if uri is None:
        return None
    return _URL_CREDENTIALS.sub(lambda m: m.group("scheme"), uri)


def split_url_credentials(uri: str) -> tuple[str, str | None, str | None]:
    """Split ``scheme://user:pass@host/...`` into (uri without credentials, user, password)."""
    match = _URL_CREDENTIALS.search(uri)
    if not match:
        return uri, None, None
    creds = match.group("creds")
    user, _, password = creds.partition(":")
    from urllib.parse import unquote

    return strip_url_credentials(uri) or uri, unquote(user) or None, (unquote(password) if password else None)
