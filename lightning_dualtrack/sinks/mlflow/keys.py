"""MLflow's rules for keys and values, applied on the training thread (the run asks the sink's policy).

MLflow stores a metric, param or tag key only if it matches ``^[/\\w.\\- :]*$``, has at most 250 characters and does
not change under ``posixpath.normpath``; a param value has at most 6000 characters, a tag value 8000, and a param
cannot change its value. These are decided when the user logs (a warning names what is stored and why) and journalled,
so that every replay stores the same; nothing here imports ``mlflow``.
"""

from __future__ import annotations

import hashlib
import posixpath
import re

from lightning_dualtrack.core.values import short

MLFLOW_MAX_KEY = 250
MLFLOW_MAX_PARAM_VALUE = 6000
MLFLOW_MAX_TAG_VALUE = 8000
_MLFLOW_BAD_CHARS = re.compile(r"[^/\w.\- :]")


def sanitize_mlflow_key(key: str) -> str:
    """A key MLflow accepts (``^[/\\w.\\- :]*$``, <=250 chars, unchanged by ``posixpath.normpath``)."""
    cleaned = _MLFLOW_BAD_CHARS.sub("_", key)
    segments = [s for s in cleaned.split("/") if s not in ("", ".")]
    segments = ["__" if s == ".." else s for s in segments]
    cleaned = "/".join(segments) or "_"
    if len(cleaned) > MLFLOW_MAX_KEY:
        digest = hashlib.sha1(key.encode("utf-8", "surrogatepass")).hexdigest()[:8]
        cleaned = cleaned[: MLFLOW_MAX_KEY - 9].rstrip("/") + "_" + digest
    if posixpath.normpath(cleaned) != cleaned:  # e.g. a trailing "." segment created by the cut
        cleaned = posixpath.normpath(cleaned).lstrip("/") or "_"
    return cleaned


def key_change_reason(key: str, stored: str, taken_by: str | None = None) -> str:
    """Why MLflow stores ``key`` as ``stored``, in words (for the warning that announces it)."""
    reasons = []
    if _MLFLOW_BAD_CHARS.search(key):
        bad = sorted(set(_MLFLOW_BAD_CHARS.findall(key)))[:5]
        reasons.append(f"MLflow keys allow only letters, digits, '_', '-', '.', ' ', ':' and '/' (not {''.join(bad)!r})")
    if len(key) > MLFLOW_MAX_KEY:
        reasons.append(f"MLflow keys are at most {MLFLOW_MAX_KEY} characters (this one has {len(key)})")
    cleaned = _MLFLOW_BAD_CHARS.sub("_", key)
    if cleaned and posixpath.normpath(cleaned) != cleaned or not key:
        reasons.append("MLflow refuses empty keys and keys with empty, '.' or '..' path segments or a leading or trailing '/'")
    if taken_by is not None:
        reasons.append(f"its cleaned form is already the stored name of {short(taken_by)!r}")
    return "; ".join(reasons) or "MLflow needs another form"


class KeyMap:
    """Original key -> stored key for one backend, collision-free and stable for a run.

    The facade owns one per backend that needs it; new entries are written to the journal so that
    any process replaying the journal (``dualtrack sync``) maps keys exactly as the live run did.
    """

    def __init__(self, sanitize=sanitize_mlflow_key) -> None:
        self._sanitize = sanitize
        self.forward: dict[str, str] = {}
        self._taken: dict[str, str] = {}  # stored -> original
        self.last_taken_by: str | None = None  # after add(): the key that held this key's clean form

    def get(self, key: str) -> str | None:
        return self.forward.get(key)

    def add(self, key: str) -> tuple[str, bool]:
        """Map ``key``; returns (stored, changed) where changed says the stored form differs."""
        stored = self.forward.get(key)
        if stored is not None:
            return stored, stored != key
        base = self._sanitize(key)
        stored = base
        n = 2
        self.last_taken_by = self._taken.get(base) if self._taken.get(base, key) != key else None
        while stored in self._taken and self._taken[stored] != key:
            suffix = f"_{n}"
            stored = base[: MLFLOW_MAX_KEY - len(suffix)] + suffix
            n += 1
        self.forward[key] = stored
        self._taken[stored] = key
        return stored, stored != key

    def restore(self, key: str, stored: str) -> None:
        """Re-install a mapping read back from a journal."""
        self.forward[key] = stored
        self._taken[stored] = key

    def changed(self) -> dict[str, str]:
        return {k: v for k, v in self.forward.items() if k != v}


class MlflowPolicy:
    """MLflow's rules for what the user logs, applied by the run on the training thread (see
    :mod:`lightning_dualtrack.run.policy`): keys MLflow refuses get a stored form (announced, journalled as a
    ``keymap`` record of this sink), params longer than 6000 characters are stored as a prefix pointing to an
    artifact holding them whole, and a param logged again with another value is stored under ``<key>.vN``."""

    sink = "mlflow"
    max_param_chars = MLFLOW_MAX_PARAM_VALUE
    immutable_params = True
    backend = "MLflow"

    def keymap(self) -> KeyMap:
        return KeyMap()

    def key_change_reason(self, key: str, stored: str, taken_by: str | None = None) -> str:
        return key_change_reason(key, stored, taken_by)
