"""The final message of a run: per backend what was delivered, what is pending (and why), what was set
aside (and why), and the exact command that delivers the rest. Built from the ack state only, so it is
as true as the state files: the logger prints it at finalize, and ``dualtrack status`` says the same.
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path
from typing import Any

from lightning_dualtrack.core.journal import JOURNAL_NAME
from lightning_dualtrack.delivery.state import load_rejected, rejected_by_reason
from lightning_dualtrack.sinks import sink_class
from lightning_dualtrack.sinks.base import Sink


def pending_records(run_dir: str | os.PathLike, offset: int) -> int:
    """Journal records after byte ``offset`` (counted by newlines: cheap even for a long run)."""
    try:
        with open(Path(run_dir) / JOURNAL_NAME, "rb") as fh:
            fh.seek(offset)
            n = 0
            while chunk := fh.read(1 << 20):
                n += chunk.count(b"\n")
            return n
    except FileNotFoundError:
        return 0


def where(name: str, state: dict[str, Any]) -> str:
    """Where a person finds backend ``name``'s run (the sink's own words)."""
    try:
        cls = sink_class(name)
    except (KeyError, ImportError, AttributeError):
        cls = Sink
    return cls.where(state)


def sync_command(run_dir: str | os.PathLike, retry_rejected: bool = False) -> str:
    return f"dualtrack sync {shlex.quote(str(run_dir))}" + (" --retry-rejected" if retry_rejected else "")


def final_report(
    run_dir: str | os.PathLike,
    states: dict[str, dict[str, Any]],
    *,
    finalize_timeout: float,
    restarts: int = 0,
    held_by: int | None = None,
    off: dict[str, str] | None = None,
    lost: int = 0,
) -> str:
    """The true final message (several lines, each prefixed ``[dualtrack]``).

    ``held_by``: the pid of this process's delivery service, which keeps the backend runs open for the next
    session of the run (``trainer.test`` after ``fit``); ``off``: backends asked for but turned off, and why;
    ``lost``: records that could not be written to the journal (a full disk, a deleted run directory).
    """
    run_dir = Path(run_dir)
    run_id = run_dir.name
    lines = [f"[dualtrack] run {run_id}: {run_dir}"]
    pending_names: list[str] = []
    background: list[str] = []  # pending, delivered by the kept delivery process after this session's end
    needs_retry_flag = False
    unparseable = 0
    for name, state in states.items():
        pending = pending_records(run_dir, int(state.get("offset") or 0))
        rejected = load_rejected(run_dir, name)
        unparseable = max(unparseable, int(state.get("unparseable_lines") or 0))
        done = bool(state.get("closed")) and pending == 0
        if done:
            held = ""
            if state.get("held"):
                held = (" (every record is in the run file; the run stays open for a next session of this run"
                        f"{f' in the delivery service, pid {held_by},' if held_by else ''} and is finished when the run "
                        "ends: end_run(), the logger dropped, or the process exits)")
            lines.append(f"[dualtrack]   {name}: delivered -> {where(name, state)}{held}")
        else:
            pending_names.append(name)
            why = ""
            blocked = state.get("blocked")
            if blocked:
                why = f"; BLOCKED: {blocked.get('reason')} ({blocked.get('action')})"
            elif state.get("gave_up"):
                why = f"; {state['gave_up']}"
            elif state.get("last_error"):
                why = f"; last error: {str(state['last_error'])[:200]}"
            elif not state.get("identity"):
                why = "; the backend run was not created"
            what = f"{pending} record(s) PENDING" if pending else "PENDING (the run is not closed)"
            if held_by and not state.get("gave_up"):
                background.append(name)
                why += (f"; the delivery service (pid {held_by}) goes on delivering it while this process lives, and the "
                        "end of the process waits for it (bounded)")
            lines.append(f"[dualtrack]   {name}: {what} -> {where(name, state)}{why}")
        if rejected:
            reasons = "; ".join(f"{n} x {r}" for r, n in rejected_by_reason(rejected).most_common(3))
            lines.append(f"[dualtrack]   {name}: {len(rejected)} record(s) REJECTED and set aside: {reasons}")
            if not all(i.get("retry_default") for i in rejected):
                needs_retry_flag = True
            else:
                pending_names.append(name)
    for name, why in (off or {}).items():
        lines.append(f"[dualtrack]   {name}: {why}: nothing was sent to it")
    if lost:
        lines.append(f"[dualtrack]   journal: {lost} record(s) or payload file(s) could not be kept and are LOST (see the warnings above)")
    if unparseable:
        lines.append(f"[dualtrack]   journal: {unparseable} line(s) could not be parsed and were skipped (counted, not delivered)")
    if restarts:
        lines.append(f"[dualtrack]   the delivery process died and was restarted {restarts} time(s); nothing acknowledged was lost")
    if background:
        lines.append(f"[dualtrack] it is safe in the journal; if this process ends before it is delivered, deliver it "
                     f"with:  {sync_command(run_dir)}")
    pending_names = [n for n in pending_names if n not in background]
    if pending_names:
        names = ", ".join(dict.fromkeys(pending_names))
        lines.append(
            f"[dualtrack] not everything reached {names} within finalize_timeout={finalize_timeout:g}s; it is safe in "
            f"the journal. Deliver it with:  {sync_command(run_dir)}"
        )
    if needs_retry_flag:
        lines.append(
            "[dualtrack] rejected records are listed by `dualtrack status`; after fixing the cause, deliver them with:  "
            f"{sync_command(run_dir, retry_rejected=True)}"
        )
    return "\n".join(lines)
