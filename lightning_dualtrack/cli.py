"""The ``dualtrack`` command.

* ``dualtrack fit|validate|test|predict --config recipe.yaml``: LightningCLI with ``DualTrackLogger``
  as the default logger (see :mod:`lightning_dualtrack.lightning_cli`).
* ``dualtrack sync RUN_DIR|RUNS_DIR...``: deliver what a run did not deliver (offline, crashed, server
  down); a runs folder means every run in it with something pending. Running it twice stores nothing
  twice. Exits 1 while anything is undelivered (pending, or set aside: ``--retry-rejected``). Then each backend's
  own upload of its local files (``--wandb``: the offline W&B directories, through ``wandb sync``, once).
* ``dualtrack status RUN_DIR...``: per backend, records delivered, pending and set aside (by reason).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from lightning_dualtrack.core.io import RUN_FILE
from lightning_dualtrack.core.journal import JournalReader
from lightning_dualtrack.delivery.report import pending_records, sync_command
from lightning_dualtrack.delivery.rundelivery import DeliveryBusy, deliver_run
from lightning_dualtrack.delivery.state import load_rejected, load_state, rejected_by_reason
from lightning_dualtrack.sinks import enabled_sinks, registry, sink_class, sink_names
from lightning_dualtrack.sinks.base import RunContext

_LIGHTNING_SUBCOMMANDS = {"fit", "validate", "test", "predict"}


def _run_dirs(paths: list[str]) -> list[Path]:
    """Accept run directories, or a save_dir holding several of them."""
    out: list[Path] = []
    for p in map(Path, paths):
        if (p / RUN_FILE).exists():
            out.append(p)
        elif p.is_dir() and any(p.glob(f"*/{RUN_FILE}")):
            out.extend(sorted(q.parent for q in p.glob(f"*/{RUN_FILE}")))
        else:
            raise SystemExit(f"dualtrack: {p} is not a run directory (no {RUN_FILE}) nor a folder of run directories")
    return out


def run_status(run_dir: Path) -> dict[str, Any]:
    """Delivered / pending / set-aside records per backend, and where each backend's run is."""
    ctx = RunContext.load(run_dir)
    reader = JournalReader(run_dir)
    entries, end_offset = reader.read(0)
    last_status = "running"
    for e in entries:
        if e.record.get("k") == "end":
            last_status = e.record.get("status")
        elif e.record.get("k") == "start":
            last_status = "running"
    out: dict[str, Any] = {"run_id": ctx.run_id, "run_dir": str(run_dir), "records": len(entries), "status": last_status,
                           "unparseable_lines": reader.corrupt_lines, "backends": {},
                           "off": {n: (ctx.settings.get(n) or {}).get("off") for n in registry()
                                   if (ctx.settings.get(n) or {}).get("off")}}
    for name in enabled_sinks(ctx.settings):
        state = load_state(run_dir, name)
        offset = state.get("offset", 0)
        delivered = sum(1 for e in entries if e.offset <= offset)
        rejected = load_rejected(run_dir, name)
        ident = state.get("identity") or {}
        out["backends"][name] = {
            "delivered": delivered - len(rejected),
            "pending": len(entries) - delivered,
            "failed": len(rejected),
            "rejected": rejected,
            "rejected_by_reason": dict(rejected_by_reason(rejected)),
            "closed": bool(state.get("closed")) and delivered == len(entries),
            "held": bool(state.get("held")),
            "run_id": ident.get("run_id"),
            "where": ident.get("url") or ident.get("dir"),
            "hints": sink_class(name).hints(state),
            "gave_up": state.get("gave_up"),
            "dirs": _json_list(ident.get("dirs")),  # every W&B directory of a run resumed by other processes
            "last_error": state.get("last_error"),
            "blocked": state.get("blocked"),
            "requests": state.get("requests", 0),
            "response_ms": state.get("response_ms") or {},
        }
    return out


def _json_list(text: Any) -> list[str]:
    try:
        value = json.loads(text) if text else []
    except (TypeError, ValueError):
        return []
    return [str(v) for v in value] if isinstance(value, list) else []


def _undelivered(status: dict[str, Any], only: set[str] | None = None) -> bool:
    return any(b["pending"] or not b["closed"] or b["failed"]
               for n, b in status["backends"].items() if only is None or n in only)


def _print_status(status: dict[str, Any]) -> None:
    print(f"run {status['run_id']}  ({status['status']}, {status['records']} records)  {status['run_dir']}")
    width = max([7, *map(len, status["backends"]), *map(len, status.get("off") or {})])
    for name, b in status["backends"].items():
        state = "up to date" if b["closed"] and not b["failed"] else ("pending" if b["pending"] else ("rejected" if b["failed"] else "open"))
        print(f"  {name:{width}s} delivered {b['delivered']:>7d}  pending {b['pending']:>7d}  rejected {b['failed']:>4d}  [{state}]  {b['run_id'] or '-'}  {b['where'] or ''}")
        rt = b.get("response_ms") or {}
        if rt.get("response_p50_ms") is not None:
            print(f"          requests {b.get('requests', 0)}  response p50 {rt['response_p50_ms']:.1f} ms  "
                  f"p95 {rt['response_p95_ms']:.1f} ms  (last {int(rt.get('response_window', 0))} requests)")
        if len(b.get("dirs") or []) > 1:
            print(f"          {len(b['dirs'])} directories (one per process that wrote the run):")
            for d in b["dirs"]:
                print(f"            {d}")
        if b.get("blocked"):
            print(f"          BLOCKED: {b['blocked'].get('reason')}\n          to deliver: {b['blocked'].get('action')}")
        elif b["last_error"] and not b["closed"]:
            print(f"          last error: {b['last_error']}")
        if b.get("gave_up") and not b["closed"]:
            print(f"          {b['gave_up']}")
        if b["failed"]:
            print("          set aside, by reason (`dualtrack sync --retry-rejected` delivers them again):")
            for reason, n in sorted(b["rejected_by_reason"].items(), key=lambda kv: -kv[1]):
                keys = sorted({str(i.get("key")) for i in b["rejected"] if str(i.get("reason") or i.get("error"))[:160] == reason})
                print(f"            {n:>5d} x {reason}  (keys: {', '.join(keys[:5])}{' ...' if len(keys) > 5 else ''})")
    for name, why in (status.get("off") or {}).items():
        print(f"  {name:{width}s} {why}: nothing was sent to it")
    if status.get("unparseable_lines"):
        print(f"  journal: {status['unparseable_lines']} line(s) could not be parsed (skipped, counted)")


def _hints(status: dict[str, Any]) -> list[str]:
    """Commands that open what a run stored (each backend's own)."""
    return [f"  {line}" for b in status["backends"].values() for line in b.get("hints") or []]


def cmd_status(args: argparse.Namespace) -> int:
    run_dirs = _run_dirs(args.run_dirs)
    if args.latest:
        run_dirs = sorted(run_dirs, key=lambda d: (d / RUN_FILE).stat().st_mtime)[-1:]
    statuses = [run_status(d) for d in run_dirs]
    if args.json:
        print(json.dumps(statuses, indent=1, default=repr))
    else:
        for s in statuses:
            _print_status(s)
            for line in _hints(s):
                print(line)
    return 0


class _Progress:
    """Per backend: journal bytes acknowledged, with rate and time left (tqdm), only on a terminal."""

    def __init__(self, run_dir: Path, enabled: bool) -> None:
        self.bars: dict[str, Any] = {}
        self.enabled = enabled
        self.run_dir = run_dir

    def __call__(self, sink: str, offset: int, size: int) -> None:
        if not self.enabled:
            return
        bar = self.bars.get(sink)
        if bar is None:
            import shutil

            from tqdm import tqdm

            # a terminal that reports no size (some ptys) would hide the bars
            size_now = shutil.get_terminal_size((100, 20))
            bar = self.bars[sink] = tqdm(total=size, initial=0, unit="B", unit_scale=True, desc=f"{self.run_dir.name} {sink}",
                                         position=len(self.bars), leave=True, file=sys.stderr,
                                         ncols=size_now.columns or 100, nrows=max(size_now.lines, 5))
        bar.total = size
        bar.n = min(offset, size)
        bar.refresh()

    def write(self, message: str) -> None:
        """A message above the bars (or a plain line when there are none)."""
        if self.bars:
            from tqdm import tqdm

            tqdm.write(message, file=sys.stderr)
        else:
            print(message, file=sys.stderr)

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()


def _needs_sync(run_dir: Path, only: set[str] | None, retry_rejected: bool) -> bool:
    """Anything pending, unclosed or (worth) retrying in this run?"""
    ctx = RunContext.load(run_dir)
    for name in enabled_sinks(ctx.settings):
        if only is not None and name not in only:
            continue
        state = load_state(run_dir, name)
        if not state.get("closed") or pending_records(run_dir, int(state.get("offset") or 0)):
            return True
        if (run_dir / "state" / f"{name}.failed.jsonl").exists():
            return True
        if any(retry_rejected or i.get("retry_default") for i in load_rejected(run_dir, name)):
            return True
    return False


def cmd_sync(args: argparse.Namespace) -> int:
    ok = True
    only = set(args.only) if args.only else None
    run_dirs = _run_dirs(args.run_dirs)
    explicit = len(args.run_dirs) == len(run_dirs) and all((Path(p) / RUN_FILE).exists() for p in args.run_dirs)
    quiet = not sys.stderr.isatty()
    for run_dir in run_dirs:
        if not explicit and not _needs_sync(run_dir, only, args.retry_rejected):
            # a runs folder: only the runs with something to deliver; a delivered one may still have files to upload
            if not _upload(run_dir, only, args):
                ok = False
            continue
        progress = _Progress(run_dir, enabled=not quiet and not args.no_progress)
        log = (lambda m: None) if (quiet and args.quiet) else progress.write
        try:
            # right after a crash the delivery process may still be finishing: wait for it, then take over
            deliver_run(run_dir, poll_interval=0.2, give_up_after=args.timeout, only=only, log=log, lock_wait=args.wait,
                        retry_rejected=True if args.retry_rejected else None, take_over_stale=True, progress=progress)
        except DeliveryBusy as err:
            print(f"dualtrack: {err}", file=sys.stderr)
            ok = False
            continue
        finally:
            progress.close()
        status = run_status(run_dir)
        _print_status(status)
        if _undelivered(status, only):
            ok = False
            retry = any(b["failed"] for b in status["backends"].values())
            print(f"  not everything is delivered; run again (after fixing the cause above):  "
                  f"{sync_command(run_dir, retry_rejected=retry)}")
        if not _upload(run_dir, only, args):
            ok = False
        for line in _hints(run_status(run_dir)):
            print(line)
    return 0 if ok else 1


def _upload(run_dir: Path, only: set[str] | None, args: argparse.Namespace) -> bool:
    """Each backend's own upload of what it keeps locally (``--<flag>`` / ``--no-<flag>``, else its default)."""
    ok = True
    settings = RunContext.load(run_dir).settings
    for name in enabled_sinks(settings):
        cls = sink_class(name)
        if cls.upload_flag is None or (only is not None and name not in only):
            continue
        wanted = getattr(args, f"upload_{cls.upload_flag}", None)
        if not cls.upload(run_dir, load_state(run_dir, name), wanted, lambda m: print(f"  {m}")):
            ok = False
    return ok


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dualtrack",
        description="Train from LightningCLI recipes (fit/validate/test/predict), and deliver or inspect runs.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p_sync = sub.add_parser("sync", help="deliver what was not delivered (idempotent)")
    p_sync.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    p_sync.add_argument("--timeout", type=float, default=300.0, help="give up retrying a backend after this many seconds")
    p_sync.add_argument("--only", choices=list(sink_names()), action="append", help="deliver to this backend only")
    p_sync.add_argument("--wait", type=float, default=60.0,
                        help="wait this long for another process delivering the run (one whose training process is gone is then stopped)")
    p_sync.add_argument("--retry-rejected", action="store_true",
                        help="deliver again every record a backend rejected (by default only those whose reason may have passed)")
    p_sync.add_argument("--no-progress", action="store_true", help="no progress bars, even on a terminal")
    p_sync.add_argument("--quiet", action="store_true", help="when not on a terminal, print only the summary")
    for cls in map(sink_class, registry()):
        if cls.upload_flag:
            flag = cls.upload_flag
            p_sync.add_argument(f"--{flag}", dest=f"upload_{flag}", action="store_true", default=None, help=cls.upload_help)
            p_sync.add_argument(f"--no-{flag}", dest=f"upload_{flag}", action="store_false",
                                help=f"never upload (the opposite of --{flag})")
    p_sync.set_defaults(func=cmd_sync)
    p_status = sub.add_parser("status", help="delivered / pending / rejected records per backend")
    p_status.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    p_status.add_argument("--json", action="store_true")
    p_status.add_argument("--latest", action="store_true", help="only the most recent run")
    p_status.set_defaults(func=cmd_status)
    for name in sorted(_LIGHTNING_SUBCOMMANDS):
        sub.add_parser(name, help=f"LightningCLI {name} (see `dualtrack {name} --help`)", add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in _LIGHTNING_SUBCOMMANDS:
        from lightning_dualtrack.lightning_cli import run_lightning_cli

        run_lightning_cli(argv)
        return 0
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
