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

import functools
import re
from argparse import Namespace
from collections.abc import Iterable, Mapping
from typing import Any

MASK = "***"
KEY_MASK = "REDACTED"

_SECRET_KEY = re.compile(
    r"(api[_-]?key|apikey|token|passw(or)?d|passwd|secret|credential|private[_-]?key|auth|bearer|cookie|session[_-]?id)",
    re.IGNORECASE,
)
# Keys that contain a secret-looking word but are not secrets (e.g. tokenizer settings).
_NOT_SECRET_KEY = re.compile(r"(tokeni[sz]er|max_tokens|num_tokens|tokens_per|n_tokens|token_len|author)", re.IGNORECASE)

# Credential shapes, found in time linear in the length of the value (a 1 MB value costs
# milliseconds; the former unanchored `[A-Za-z][...]*://` scan was quadratic). Every shape is made of
# token characters, so the scan first finds the maximal runs of those (one C-level regex pass), then
# checks each shape only where it may start: at the start of a run, after a `-` inside one, or where
# its literal prefix occurs (`str.find`). No quantifier can backtrack across a run.
_RUN = re.compile(r"[A-Za-z0-9_\-]{16,}")
_HEX_RUN = re.compile(r"[0-9a-fA-F]{40,}")  # W&B API key: exactly 40 lowercase hex, not inside a longer hex run
_AT_RUN_START = re.compile(r"(?:local|v1)-[0-9a-zA-Z_]{20,}")  # W&B local / v1 keys
_AFTER_NON_WORD = (  # (literal prefix, shape): may start at a run's start or after a '-' or '_' in it
    ("sk-", re.compile(r"sk-[A-Za-z0-9_\-]{20,}")),  # OpenAI-style key
)
_ALNUM_SHAPES = re.compile(  # the same rule; shapes of letters and digits only after their prefix
    r"hf_[A-Za-z0-9]{20,}"  # Hugging Face token
    r"|gh[pousr]_[A-Za-z0-9]{30,}"  # GitHub token
    r"|(?:AKIA|ASIA)[0-9A-Z]{16}(?![A-Za-z0-9_])"  # AWS access key id
    r"|dapi[0-9a-f]{32}(?![A-Za-z0-9_])"  # Databricks token
)
_URL_CREDENTIALS = re.compile(r"(?P<scheme>(?<![A-Za-z0-9+.\-])[A-Za-z][A-Za-z0-9+.\-]{0,40}://)(?P<creds>[^/@\s:]{0,1024}(?::[^/@\s]{0,1024})?)@")
_URL_AT = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]{0,40}://(?P<creds>[^/@\s:]{0,1024}(?::[^/@\s]{0,1024})?)@")
_SCHEME_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+.-")


_HEX_TABLE = bytes((ord("l") if chr(c) in "0123456789abcdef" else ord("u") if chr(c) in "ABCDEF" else ord(".")) for c in range(256))
_LONG_RUN = 4096


def _hex_keys(value: str, a: int, b: int) -> list[tuple[int, int]]:
    """Spans of exactly 40 lowercase hex digits not inside a longer hex run, in ``value[a:b]``."""
    if b - a < _LONG_RUN:
        return [m.span() for m in _HEX_RUN.finditer(value, a, b) if m.end() - m.start() == 40 and not any(c in "ABCDEF" for c in m.group())]
    # a long run: classify each byte at C speed (lowercase hex / uppercase hex / other), then find runs
    kinds = value[a:b].encode("ascii").translate(_HEX_TABLE)
    spans, i, forty = [], kinds.find(b"l" * 40), b"l" * 40
    while i >= 0:
        j = kinds.find(b".", i)  # extend over the whole hex run
        j = len(kinds) if j < 0 else j
        i = kinds.rfind(b".", 0, i) + 1
        if j - i == 40 and b"u" not in kinds[i:j]:
            spans.append((a + i, a + j))
        i = kinds.find(forty, j)
    return spans


def _token_spans(value: str) -> list[tuple[int, int]]:
    spans = []
    for run in _RUN.finditer(value):
        a, b = run.span()
        spans += _hex_keys(value, a, b)
        m = _AT_RUN_START.match(value, a, b)
        if m:
            spans.append(m.span())
        for m in _ALNUM_SHAPES.finditer(value, a, b):  # no '-' or '_' inside: a rejected match hides no start
            if m.start() == a or value[m.start() - 1] in "-_":
                spans.append(m.span())
        for prefix, shape in _AFTER_NON_WORD:
            i = value.find(prefix, a, b)
            while i >= 0:
                nxt = i + 1
                if i == a or value[i - 1] in "-_":
                    m = shape.match(value, i, b)
                    if m:
                        spans.append(m.span())
                        nxt = m.end()  # all of it is masked: never rescan inside a match (linear)
                i = value.find(prefix, nxt, b)
    return spans


def _url_spans(value: str) -> list[tuple[int, int]]:
    """The ``user:pass`` of each ``scheme://user:pass@`` (the scheme and ``@`` are kept)."""
    spans = []
    i = value.find("://")
    while i >= 0:
        start = i
        while start > 0 and i - start < 41 and value[start - 1] in _SCHEME_CHARS:
            start -= 1
        while start < i and not value[start].isalpha():
            start += 1
        m = _URL_AT.match(value, start) if start < i else None
        if m:
            spans.append(m.span("creds"))
        i = value.find("://", i + 3)
    return spans


# Flag and key segments that name a secret on their own (``--db-pass``, ``db_pwd``).
_SECRET_SEGMENTS = frozenset({"pass", "pwd", "passphrase"})
_SEGMENT_SPLIT = re.compile(r"[^A-Za-z0-9]+")


@functools.lru_cache(maxsize=8192)  # the same keys come back call after call
def is_secret_key(key: str) -> bool:
    """Whether a key's name says that its value is a secret (``api_key``, ``db.password``, ``db_pass``...)."""
    if _NOT_SECRET_KEY.search(key):
        return False
    if _SECRET_KEY.search(key):
        return True
    return not _SECRET_SEGMENTS.isdisjoint(_SEGMENT_SPLIT.split(key.lower()))


def redact_string(value: str, mask: str = MASK) -> str:
    """Replace every credential-shaped substring of ``value`` by ``mask`` (time linear in its length).

    Keys and file names use :data:`KEY_MASK` (``REDACTED``): ``*`` is a glob character to W&B and not
    allowed in MLflow keys.

    Example:
        >>> redact_string("key=hf_AbCdEfGhIjKlMnOpQrStUv url=https://bob:pw@host/x")
        'key=*** url=https://***@host/x'
    """
    if not value or len(value) < 16 and "://" not in value:
        return value
    spans = _token_spans(value)
    if "://" in value and "@" in value:
        spans += _url_spans(value)
    if not spans:
        return value
    spans.sort()
    out, pos = [], 0
    for a, b in spans:
        if b <= pos:
            continue
        out.append(value[pos:max(a, pos)])
        out.append(mask)
        pos = b
    out.append(value[pos:])
    return "".join(out)


def redact_value(key: str, value: Any) -> Any:
    """Redact one value, knowing its key. Non-strings pass unchanged unless the key is secret."""
    if is_secret_key(key) and value not in (None, "", False):
        return MASK
    if isinstance(value, str):
        return redact_string(value)
    if isinstance(value, list):
        return [redact_string(v) if isinstance(v, str) else v for v in value]
    return value


def redact_mapping(mapping: dict[str, Any]) -> dict[str, Any]:
    """Redact a flat mapping (keys are ``/``-joined paths; the last segments decide secrecy)."""
    return {key: redact_value(key, value) for key, value in mapping.items()}


def redact_tree(value: Any, _depth: int = 0) -> Any:
    """Redact nested data (checkpoint hyperparameters, ``log_dict`` payloads): secret keys at any depth
    are masked, credential-shaped strings masked anywhere; containers keep their type where they can."""
    if _depth > 64:
        return value
    if isinstance(value, Mapping):
        items = {k: (MASK if isinstance(k, str) and is_secret_key(k) and v not in (None, "", False) else redact_tree(v, _depth + 1)) for k, v in value.items()}
        try:
            return type(value)(items)
        except Exception:  # noqa: BLE001 - a mapping type that cannot be built from a dict
            return items
    if isinstance(value, Namespace):
        return Namespace(**redact_tree(vars(value), _depth + 1))
    if isinstance(value, list):
        return [redact_tree(v, _depth + 1) for v in value]
    if type(value) is tuple:
        return tuple(redact_tree(v, _depth + 1) for v in value)
    if isinstance(value, str):
        return redact_string(value)
    return value


def is_secret_flag(arg: str) -> bool:
    """Whether a command-line flag names a secret (``--db-pass``, ``--API_KEY``, ``-token``): ``-`` and ``_`` alike."""
    return arg.startswith("-") and is_secret_key(arg.lstrip("-").replace("-", "_"))


def redact_argv(argv: Iterable[str]) -> list[str]:
    """Redact a command line: ``--api-key=X`` and ``--db-pass X`` forms, and credential-shaped values.

    Example:
        >>> redact_argv(["train.py", "--DB-Pass", "hunter2", "--lr", "0.1", "--token=abc"])
        ['train.py', '--DB-Pass', '***', '--lr', '0.1', '--token=***']
    """
    out: list[str] = []
    mask_next = False
    for arg in argv:
        if mask_next and not arg.startswith("--"):
            out.append(MASK)
            mask_next = False
            continue
        mask_next = False
        flag, eq, _value = arg.partition("=")
        if eq and is_secret_flag(flag):
            out.append(f"{flag}={MASK}")
            continue
        if not eq and is_secret_flag(arg):
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
