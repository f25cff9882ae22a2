"""The ``dualtrack`` command.

* ``dualtrack fit|validate|test|predict --config recipe.yaml``: LightningCLI with ``DualTrackLogger``
  as the default logger (see :mod:`lightning_dualtrack.lightning_cli`).
* ``dualtrack sync RUN_DIR...``: deliver what a run did not deliver (offline, crashed, server down).
  Running it twice stores nothing twice.
* ``dualtrack status RUN_DIR...``: per backend, records delivered, pending and rejected.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from lightning_dualtrack.journal import JournalReader
from lightning_dualtrack.shipper import ShipperBusy, load_state, run_shipper
from lightning_dualtrack.sinks.base import RUN_FILE, RunContext

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
    """Delivered / pending / rejected record counts per backend, and where each backend's run is."""
    ctx = RunContext.load(run_dir)
    entries, end_offset = JournalReader(run_dir).read(0)
    last_status = "running"
    for e in entries:
        if e.record.get("k") == "end":
            last_status = e.record.get("status")
        elif e.record.get("k") == "start":
            last_status = "running"
    out: dict[str, Any] = {"run_id": ctx.run_id, "run_dir": str(run_dir), "records": len(entries), "status": last_status, "backends": {}}
    for name in ("mlflow", "wandb"):
        if not ctx.settings.get(name, {}).get("enabled"):
            continue
        state = load_state(run_dir, name)
        offset = state.get("offset", 0)
        delivered = sum(1 for e in entries if e.offset <= offset)
        ident = state.get("identity") or {}
        out["backends"][name] = {
            "delivered": delivered,
            "pending": len(entries) - delivered,
            "failed": state.get("failed", 0),
            "closed": bool(state.get("closed")) and delivered == len(entries),
            "run_id": ident.get("run_id"),
            "where": ident.get("url") or ident.get("dir"),
            "last_error": state.get("last_error"),
        }
    return out


def _print_status(status: dict[str, Any]) -> None:
    print(f"run {status['run_id']}  ({status['status']}, {status['records']} records)  {status['run_dir']}")
    for name, b in status["backends"].items():
        state = "up to date" if b["closed"] else ("pending" if b["pending"] else "open")
        print(f"  {name:7s} delivered {b['delivered']:>7d}  pending {b['pending']:>7d}  rejected {b['failed']:>4d}  [{state}]  {b['run_id'] or '-'}  {b['where'] or ''}")
        if b["last_error"] and not b["closed"]:
            print(f"          last error: {b['last_error']}")


def _hints(status: dict[str, Any]) -> list[str]:
    """Commands that open what a run stored."""
    out = []
    mlflow = status["backends"].get("mlflow")
    if mlflow and mlflow.get("where"):
        where = str(mlflow["where"])
        out.append(f"  MLflow UI:  {where.split('  ->  ')[0]}" if "mlflow ui" in where else f"  MLflow UI:  {where}")
    wandb = status["backends"].get("wandb")
    if wandb and wandb.get("where") and "offline-run" in str(wandb["where"]):
        # a resumed run (e.g. test after fit) writes one offline directory per session: upload them all
        every = str(Path(wandb["where"]).parent / "offline-run-*")
        out.append(f"  W&B:        offline run in {Path(wandb['where']).parent}  (upload: wandb sync {every})")
    elif wandb and wandb.get("where"):
        out.append(f"  W&B:        {wandb['where']}")
    return out


def cmd_status(args: argparse.Namespace) -> int:
    run_dirs = _run_dirs(args.run_dirs)
    if args.latest:
        run_dirs = sorted(run_dirs, key=lambda d: (d / RUN_FILE).stat().st_mtime)[-1:]
    statuses = [run_status(d) for d in run_dirs]
    if args.json:
        print(json.dumps(statuses, indent=1))
    else:
        for s in statuses:
            _print_status(s)
            for line in _hints(s):
                print(line)
    return 0


def cmd_sync(args: argparse.Namespace) -> int:
    ok = True
    only = set(args.only) if args.only else None
    for run_dir in _run_dirs(args.run_dirs):
        try:
            # right after a crash the orphaned shipper may still be finishing: wait for it
            run_shipper(run_dir, follow=False, poll_interval=0.2, give_up_after=args.timeout, only=only,
                        log=lambda m: print(m, file=sys.stderr), lock_wait=args.wait)
        except ShipperBusy as err:
            print(f"dualtrack: {err}", file=sys.stderr)
            ok = False
            continue
        status = run_status(run_dir)
        _print_status(status)
        if any(b["pending"] or not b["closed"] for n, b in status["backends"].items() if only is None or n in only):
            ok = False
        for line in _hints(status):
            print(line)
    return 0 if ok else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dualtrack",
        description="Train from LightningCLI recipes (fit/validate/test/predict), and deliver or inspect runs.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p_sync = sub.add_parser("sync", help="deliver what was not delivered (idempotent)")
    p_sync.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    p_sync.add_argument("--timeout", type=float, default=300.0, help="give up retrying a backend after this many seconds")
    p_sync.add_argument("--only", choices=["mlflow", "wandb"], action="append", help="deliver to this backend only")
    p_sync.add_argument("--wait", type=float, default=60.0, help="wait this long for another process delivering the run")
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
