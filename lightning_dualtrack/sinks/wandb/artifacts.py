"""Checkpoint versions of a W&B run that their ``ModelCheckpoint`` removed (journal ``delete`` records).

W&B keeps an alias on one version of a collection at a time: ``latest`` and ``best`` move to a newer checkpoint
version when it is logged with them, so the kept checkpoints carry them without any request. The evicted version
itself can be deleted only through W&B's public API, on the server: online, as the record is delivered. An offline
run file cannot delete a version it holds: all its versions are uploaded by ``dualtrack sync --wandb`` and stay
(delete them in W&B's UI or with ``wandb.Api()``). A version that still carries ``best`` or ``latest`` (its successor not yet
committed) or is linked into W&B's registry is never deleted. Each failure is said once and not retried: the
version stays, which loses nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

PROTECTED_ALIASES = ("best", "latest")


def delete_versions(api: Any, collection: str, filenames: Iterable[str], note: Callable[[str, str], None]) -> list[str]:
    """Delete the versions of ``collection`` (``entity/project/name``) whose ``metadata["original_filename"]`` is one of
    ``filenames``; returns what was deleted (``name:vN``). ``api`` is a ``wandb.Api``."""
    wanted = set(filenames)
    deleted: list[str] = []
    if not wanted:
        return deleted
    try:
        versions = list(api.artifacts("model", collection))
    except Exception as err:  # noqa: BLE001 - not uploaded yet, no access: the versions stay
        note(f"wandb-delete:{collection}", f"W&B: cannot list {collection} to delete the checkpoints their callback "
                                           f"removed ({type(err).__name__}: {str(err)[:200]}); they stay")
        return deleted
    for version in versions:
        if (getattr(version, "metadata", None) or {}).get("original_filename") not in wanted:
            continue
        label = f"{collection}:{getattr(version, 'version', '?')}"
        aliases = set(getattr(version, "aliases", None) or ())
        if aliases & set(PROTECTED_ALIASES) or getattr(version, "linked_artifacts", None):
            note(f"wandb-keep:{label}", f"W&B: {label} is kept although its callback removed it: it carries "
                                        f"{sorted(aliases & set(PROTECTED_ALIASES)) or 'a registry link'}")
            continue
        try:
            version.delete(delete_aliases=True)
            deleted.append(label)
        except Exception as err:  # noqa: BLE001 - no permission to delete: it stays
            note(f"wandb-delete:{label}", f"W&B: cannot delete {label} ({type(err).__name__}: {str(err)[:200]}); it stays")
    return deleted
