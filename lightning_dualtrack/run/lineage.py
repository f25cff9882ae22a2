"""Rewind, not duplicate: a continued run whose new session logs steps it already holds goes on in a fork.

Resuming from a checkpoint earlier than the run's last logged step (a divergence, a bad epoch, a requeued job
whose last checkpoint is older than its last point) would log those steps again into the same run: two values for
one step in each backend's history. Instead, as W&B's own model has it, the run forks:

* the original run is left as it was (this session is not delivered to it);
* a new run (new id, ``<name>-fork<step>``) starts with the original's metrics before the fork step, its params
  and tags (so its curves are whole), and the session goes on there; ``run.json`` names the original (``fork``:
  run id, directory, step) and its journal tags it ``dualtrack.forked_from`` / ``dualtrack.fork_step`` (MLflow
  tags; W&B config ``dualtrack/forked_from``...). Media and files logged before stay in the original.

Detected where it is cheap (:class:`RewindWatch`): a continued run's new session holds back its first records
until a metrics record names a key the run logged before. A step earlier than that key's last step is a rewind;
the same step is a repeat (Lightning re-runs the validation a checkpoint was saved in) and is not logged twice;
a later step is a continuation. Once decided, the log path is what it was.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

# records copied into a fork from the original (its payload records name files of the original's directory)
_COPIED = ("params", "tags", "keymap")
_STEPPED = ("metrics", "hist")
_OWN_TAGS = ("dualtrack.run_dir", "dualtrack.forked_from", "dualtrack.fork_step")  # set for the fork itself

WATCH, CONTINUE, FORK = "watch", "continue", "fork"


class RewindWatch:
    """The first metrics of a continued run's session, compared with what the run logged before.

    Example:
        >>> watch = RewindWatch({"loss": 15, "val/loss": 15, "epoch": 15})
        >>> watch.check(15, {"val/loss": 0.3, "epoch": 1.0})  # a repeat of the last point: dropped
        ('watch', {}, ['val/loss', 'epoch'])
        >>> watch.check(16, {"loss": 0.2, "epoch": 2.0})
        ('continue', {'loss': 0.2, 'epoch': 2.0}, [])
        >>> RewindWatch({"loss": 15}).check(8, {"loss": 0.4})
        ('fork', {'loss': 0.4}, [])
    """

    def __init__(self, steps: Mapping[str, int]) -> None:
        self.steps = dict(steps)
        self.stage: str | None = None  # the calling Trainer's stage, looked up at the first metrics (run.session)

    def check(self, step: int, values: Mapping[str, Any]) -> tuple[str, dict[str, Any], list[str]]:
        """``(verdict, values to log, keys dropped as repeats)``; verdict: ``watch`` (undecided: no key logged before,
        or only repeats), ``continue`` or ``fork``."""
        seen = [k for k in values if k in self.steps]
        if not seen:
            return WATCH, dict(values), []
        if any(step < self.steps[k] for k in seen):
            return FORK, dict(values), []
        repeated = [k for k in seen if step == self.steps[k]]
        kept = {k: v for k, v in values.items() if k not in repeated}
        return (WATCH if len(repeated) == len(seen) else CONTINUE), kept, repeated


def fork_records(original: Iterable[Mapping[str, Any]], step: int, logged_at_step: Iterable[str]) -> list[dict[str, Any]]:
    """What a fork at ``step`` takes from the original's earlier sessions: every metric before ``step`` (and at
    ``step`` those the new session has not logged again, ``logged_at_step``), params, tags and key maps."""
    again = set(logged_at_step)
    out: list[dict[str, Any]] = []
    for rec in original:
        kind = rec.get("k")
        if kind in _STEPPED:
            s = rec.get("s")
            if not isinstance(s, int) or s > step or not isinstance(rec.get("v"), dict):
                continue
            values = rec["v"] if s < step else {k: v for k, v in rec["v"].items() if k not in again}
            if values:
                out.append({**rec, "v": values})
        elif kind in _COPIED:
            kept = without_own_tags(rec)
            if kept is not None:
                out.append(kept)
    return out


def without_own_tags(record: Mapping[str, Any]) -> dict[str, Any] | None:
    """A record for a fork's journal: a ``tags`` record without the tags that name the original run's own directory
    and lineage (the fork sets its own); None if nothing is left."""
    if record.get("k") != "tags" or not isinstance(record.get("v"), dict):
        return dict(record)
    values = {k: v for k, v in record["v"].items() if k not in _OWN_TAGS}
    return {**record, "v": values} if values else None


def payload_paths(record: Mapping[str, Any]) -> list[str]:
    """The files in the run directory a record names (copied with it into a fork)."""
    paths = [record.get(f) for f in ("path", "csv", "png", "png_norm")]
    paths += list(record.get("media") or [])
    return [p for p in paths if isinstance(p, str) and p]


def fork_name(run_name: str | None, run_id: str, step: int) -> str:
    """``<name>-fork<step>``: the fork's name in every backend."""
    return f"{run_name or run_id}-fork{step}"
