"""Input policies: what the run does with each thing a user logs, before the journal sees it.

Every input gets a clear outcome and none raises into training (unless ``strict=True``, where a
refused input raises ``ValueError`` with the same message the warning would have had):

* **keys** (:class:`KeyRules`): non-string keys become their ``str``; credential-shaped parts are
  masked; the reserved keys ``trainer/global_step`` and ``_dualtrack_offset`` (the W&B sink's step
  and replay offset) are refused; a key a backend cannot store is stored there under a clean form,
  announced once with what was stored and why, and journalled (``keymap``) so a replay maps it alike.
* **metric values**: see :func:`~lightning_dualtrack.core.values.to_float`; a value that is no number is
  dropped with a warning quoting its type and a short preview.
* **params** (:class:`ParamRules`): flattened (cycles and depth cut, merged keys kept apart), secrets
  masked; where a backend's params cannot change, a changed value is stored as ``key.vN`` (never a
  name the user has taken), and a value longer than a backend keeps is stored whole as an artifact.

The backends' rules are theirs (a sink's ``policy``: MLflow's key rules and limits are in
:mod:`lightning_dualtrack.sinks.mlflow.keys`); they are applied here, on the caller's thread, and not
in the sink: the user is told at the call what is stored (a sink runs later, in another process, where
a warning reaches nobody), and the decisions are journalled so every replay by ``dualtrack sync``
stores the same. No rule imports a backend's library.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

from lightning_dualtrack.core.messages import DualTrackWarning, Messages
from lightning_dualtrack.core.redact import KEY_MASK, redact_mapping, redact_string
from lightning_dualtrack.core.values import flatten_params, param_text, preview, short

__all__ = ["DualTrackWarning", "KeyRules", "Messages", "ParamRules", "ParamUpdate", "RESERVED_METRIC_KEYS", "same_param"]

RESERVED_METRIC_KEYS = frozenset({"trainer/global_step", "_dualtrack_offset"})


class KeyRules:
    """Metric, param and tag keys: the journal's key (``str``, no credential, not reserved) and, for each backend
    whose policy has key rules, the key it stores.

    Args:
        messages: warnings and strict-mode errors.
        journal_keymap: ``(sink, {key: stored})``: journal a backend's new stored form of a key.
        policies: the enabled backends' policies (``Sink.policy``); those with ``keymap()`` have key rules.
        titles: the enabled backends' names as people write them (a warning says which keep the key as given).
    """

    def __init__(self, messages: Messages, journal_keymap: Callable[[str, dict[str, str]], None],
                 policies: Sequence[Any] = (), titles: Sequence[str] = ()) -> None:
        self.messages = messages
        self.titles = list(titles)
        self.maps = {p.sink: (p, p.keymap()) for p in policies if hasattr(p, "keymap")}
        self.metric_keys: dict[Any, str | None] = {}  # as given -> journal key (None: refused); the hot path's cache
        self._journal_keymap = journal_keymap
        self._masked: dict[str, Any] = {}  # journal key made by masking -> the key it came from
        self._announced: set[tuple[str, str]] = set()  # (sink, key) whose stored form was journalled and announced

    def restore(self, sink: str, key: str, stored: str) -> None:
        """Re-install a mapping read back from the journal (resume): not announced again."""
        if sink in self.maps:
            self.maps[sink][1].restore(key, stored)
            self._announced.add((sink, key))

    def stored(self, key: str) -> str:
        """A backend's stored form of ``key`` (the first with key rules), for file names; else ``key``."""
        for _policy, keymap in self.maps.values():
            return keymap.get(key) or key
        return key

    def metric_key(self, key: Any) -> str | None:
        """The journal key for a metric key seen for the first time (cached), or None when refused."""
        name = key if type(key) is str else str(key)
        if name is not key:
            self.messages.warn_once(f"key-type:{name}", f"metric key {short(repr(key))} is a {type(key).__name__}; stored as {short(name)!r}")
        name = self.mask(name, key, "metric key")
        if name in RESERVED_METRIC_KEYS:
            self.metric_keys[key] = None
            self.messages.fail_once(
                f"reserved:{name}",
                f"metric key {name!r} is reserved (the W&B sink writes it into every row); this metric is not stored. "
                f"Log it under another name, e.g. {name.strip('_').replace('/', '_') + '_user'!r}",
            )
            return None
        self.register(name)
        self.metric_keys[key] = name
        return name

    def mask(self, name: str, original: Any, what: str) -> str:
        """``name`` with credential-shaped parts masked; two keys never mask to one (a ``_2`` suffix)."""
        clean = redact_string(name, KEY_MASK)
        if clean == name:
            return name
        base, n = clean, 2
        while self._masked.get(clean, original) != original:
            clean, n = f"{base}_{n}", n + 1
        self._masked[clean] = original
        self.messages.warn_once(
            f"masked:{clean}", f"{what} holds a credential-shaped string; stored as {short(clean)!r} (the credential is not written anywhere)"
        )
        return clean

    def register(self, key: str) -> None:
        """Map ``key`` to each backend's form; announce and journal it where it differs."""
        for sink, (policy, keymap) in self.maps.items():
            stored, changed = keymap.add(key)
            if changed and (sink, key) not in self._announced:
                self._announced.add((sink, key))
                self._journal_keymap(sink, {key: stored})
                others = [t for t in self.titles if t != policy.backend]
                kept = f"; {' and '.join(others)} {'keeps' if len(others) == 1 else 'keep'} {short(key)!r}" if others else ""
                self.messages.warn(
                    f"key {short(key)!r} is stored in {policy.backend} as {short(stored)!r} because "
                    f"{policy.key_change_reason(key, stored, keymap.last_taken_by)}{kept}",
                )


class ParamUpdate:
    """What one ``log_params`` call stores: new keys, MLflow texts for long values, W&B's latest values."""

    def __init__(self) -> None:
        self.values: dict[str, Any] = {}  # journal key -> value (a changed param under its `.vN` key)
        self.long: dict[str, str] = {}  # journal key -> full text, for values over MLflow's limit
        self.latest: dict[str, Any] = {}  # changed params: W&B's config keeps the latest under the key


_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


def same_param(old: Any, new: Any) -> bool:
    """Equal as stored: a repr that differs only in a memory address (``<Augment object at 0x7f...>``, a new
    object with the same settings in a second fit) is the same setting, not a changed one."""
    if old == new:
        return True
    return isinstance(old, str) and isinstance(new, str) and _ADDRESS.sub("", old) == _ADDRESS.sub("", new)


class ParamRules:
    """Flatten, redact and version params; remembers what was stored (restored on resume).

    ``policies``: the enabled backends' policies: where one has ``immutable_params``, a changed value is stored
    as ``key.vN``; the smallest ``max_param_chars`` decides which values are also stored whole as an artifact.
    """

    def __init__(self, messages: Messages, keys: KeyRules, policies: Sequence[Any] = ()) -> None:
        self.messages = messages
        self.keys = keys
        self.immutable = [p for p in policies if getattr(p, "immutable_params", False)]
        limits = [p.max_param_chars for p in policies if getattr(p, "max_param_chars", None)]
        self.max_chars: int | None = min(limits) if limits else None
        self.values: dict[str, Any] = {}  # every journal key stored so far -> its value
        self.versions: dict[str, int] = {}  # key -> the last N of its `.vN` renames
        self.renames: set[str] = set()  # journal keys made by a rename
        self.aliases: dict[str, str] = {}  # a user key that an earlier rename had taken -> where it is stored

    def flatten(self, params: Any) -> dict[str, Any] | None:
        try:
            flat = flatten_params(params, on_problem=lambda message: self.messages.fail_once(message, message))
        except TypeError as err:
            self.messages.fail(f"log_params: {err}; nothing logged")
            return None
        return redact_mapping(flat)

    def update(self, flat: dict[str, Any]) -> ParamUpdate:
        out = ParamUpdate()
        for key, value in flat.items():
            key = self.keys.mask(key, key, "param key")
            key = self.aliases.get(key, key)
            if key in self.renames:  # the user logs a name an earlier rename made (`lr.v2`)
                alias = self._free(f"{key}_", 2)
                self.messages.warn_once(
                    f"rename-taken:{key}",
                    f"param {short(key)!r} is already the MLflow name of a changed param ({short(key.rpartition('.v')[0])!r}); "
                    f"this param is stored as {short(alias)!r} in both backends",
                )
                self.aliases[key] = key = alias
            if key in self.values:
                if same_param(self.values[key], value):
                    continue
                if self.immutable:
                    new_key = self._rename(key, value)
                    out.latest[key] = value
                else:
                    new_key = key
            else:
                new_key = key
            self.values[key] = value
            self.keys.register(new_key)
            text = param_text(value)
            if self.max_chars is not None and len(text) > self.max_chars:
                out.long[new_key] = text
            out.values[new_key] = value
        return out

    def _free(self, stem: str, n: int) -> str:
        while f"{stem}{n}" in self.values:
            n += 1
        return f"{stem}{n}"

    def _rename(self, key: str, value: Any) -> str:
        n = self.versions.get(key, 1) + 1
        while f"{key}.v{n}" in self.values:  # never a key the user logged (`lr.v2` given as a param)
            n += 1
        self.versions[key] = n
        renamed = f"{key}.v{n}"
        self.renames.add(renamed)
        old = self.values[key]
        backends = " and ".join(p.backend for p in self.immutable)
        others = [t for t in self.keys.titles if t not in backends]
        kept = f" ({' and '.join(others)} {'keeps' if len(others) == 1 else 'keep'} the latest under {short(key)!r})" if others else ""
        self.messages.warn_once(
            f"param-change:{key}:{n}",
            f"param {short(key)!r} changed from {preview(old, 80)} to {preview(value, 80)}; {backends} params cannot "
            f"change, so the new value is stored as {short(renamed)!r} in {backends}{kept}",
        )
        self.values[renamed] = value
        return renamed

    def restore(self, rec: dict[str, Any]) -> None:
        """Re-read a ``params`` record of an earlier session (resume): a later change is then seen."""
        self.values.update(rec["v"])
        self.values.update(rec.get("latest") or rec.get("wandb") or {})  # the latest value of a changed param
        for key in rec["v"]:  # `lr.v2`: the next change of `lr` is `lr.v3`, not `lr.v2` again
            base, dot, n = key.rpartition(".v")
            if dot and n.isdigit() and base in self.values:
                self.versions[base] = max(self.versions.get(base, 1), int(n))
                self.renames.add(key)
