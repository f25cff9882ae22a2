"""The delivery service: one process per training process, delivering every run that process opens.

``python -m lightning_dualtrack.delivery --parent-pid PID`` is started by the training process when its first
logger is built (:mod:`~lightning_dualtrack.delivery.client`). It reads commands, one JSON object per line, on
its standard input:

* ``{"op": "follow", "run_dir": ..., "secrets": {...}}``: deliver this run's journal as it grows (a
  :class:`~lightning_dualtrack.delivery.rundelivery.RunDelivery`, one worker thread per backend); the backends'
  credentials come in memory, never in a file. Sent at the start of each session of a run.
* ``{"op": "end", "run_dir": ...}``: the run is over (``end_run()``, the logger is gone): once delivered, end its
  backend runs instead of keeping them open for a next session.

Runs whose session ended are kept open (one W&B run for fit and test) until their logger ends them; at most
:data:`MAX_HELD` at once, the oldest ended first, so a long sweep holds a few backend runs, not one per trial.

End of input means the training process is exiting (it finalized its runs and waits for this process, bounded)
or is gone (killed): either way every run is delivered as far as its journal goes and its backend runs ended
(a run without an ``end`` record as crashed). Once the training process is gone, this process gives up when no
backend has made progress for ``DUALTRACK_ORPHAN_TIMEOUT`` seconds (120), and exits: the journals keep the rest
for ``dualtrack sync``. SIGTERM: stop retrying now (acks are on disk) and exit.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from lightning_dualtrack.core.io import RUN_FILE
from lightning_dualtrack.delivery.priority import start_idle
from lightning_dualtrack.delivery.rundelivery import DeliveryBusy, RunDelivery, acquire_lock, orphan_timeout

MAX_HELD = 4  # runs kept open between sessions at once (each holds a W&B run in wandb-core)
LOCK_WAIT_S = 30.0  # a run locked by another process (a `dualtrack sync`): wait this long, then say so
_TICK_S = 0.1


def _log_to(run_dir: Path):
    """A log function writing one line per message into the run's ``delivery.log``."""
    path = run_dir / "delivery.log"

    def log(message: str) -> None:
        try:
            with open(path, "a", encoding="utf-8") as fh:
                fh.write(f"{time.strftime('%H:%M:%S')} {message}\n")
        except OSError:  # the run directory is gone: the service's own log still has it
            print(message, file=sys.stderr, flush=True)

    return log


class Service:
    """Every run of one training process, delivered by this process."""

    def __init__(self, parent_pid: int | None) -> None:
        self.parent_pid = parent_pid
        self.runs: dict[str, RunDelivery] = {}  # resolved run dir -> its delivery, in order of last follow
        self.lock = threading.Lock()
        self.orphaned = threading.Event()  # the training process is gone
        self.input_closed = threading.Event()  # the training process is exiting (or gone)
        self.stop = threading.Event()  # SIGTERM: stop retrying now
        self._orphaned_at: float | None = None

    # -- commands ------------------------------------------------------------------------------
    def handle(self, line: str) -> None:
        try:
            cmd = json.loads(line)
            op, run_dir = cmd["op"], Path(cmd["run_dir"])
        except (ValueError, KeyError, TypeError) as err:
            print(f"[dualtrack] delivery service: ignored a command it cannot read ({err}): {line[:200]!r}", file=sys.stderr)
            return
        if op == "follow":
            self.follow(run_dir, cmd.get("secrets") or {})
        elif op == "end":
            self.end(run_dir)
        else:
            print(f"[dualtrack] delivery service: unknown command {op!r}", file=sys.stderr)

    def follow(self, run_dir: Path, secrets: dict[str, dict[str, str]]) -> None:
        key = str(run_dir.resolve())
        with self.lock:
            current = self.runs.pop(key, None)
            if current is not None and current.alive():
                current.release.clear()  # a next session of a held run (or of a run ended too early): keep it open
                current.ctx.secrets.update({k: dict(v) for k, v in secrets.items()})
                self.runs[key] = current  # most recently used last
                return
            if current is not None:
                current.close()
        log = _log_to(run_dir)
        for _ in range(100):  # run.json is written before the command is sent; a deleted run dir is re-made
            if (run_dir / RUN_FILE).exists():
                break
            time.sleep(0.05)
        deadline = time.monotonic() + LOCK_WAIT_S
        while True:
            try:
                fd = acquire_lock(run_dir, take_over_stale=True)
                break
            except DeliveryBusy as err:
                if time.monotonic() > deadline:
                    log(f"[dualtrack] not delivering {run_dir}: {err}")
                    return
                time.sleep(0.2)
            except OSError as err:
                log(f"[dualtrack] cannot deliver {run_dir}: {err}")
                return
        try:
            delivery = RunDelivery(run_dir, fd, secrets=secrets, follow=True, hold=True, orphaned=self.orphaned,
                                   stop=self.stop, log=log, retry_rejected="never", system_pid=self.parent_pid)
        except Exception as err:  # noqa: BLE001 - a run directory without run.json: nothing to deliver
            os.close(fd)
            log(f"[dualtrack] cannot deliver {run_dir}: {type(err).__name__}: {err}")
            return
        with self.lock:
            self.runs[key] = delivery.start()
        self._limit_held()

    def end(self, run_dir: Path) -> None:
        with self.lock:
            delivery = self.runs.get(str(run_dir.resolve()))
        if delivery is not None:
            delivery.release.set()

    # -- housekeeping --------------------------------------------------------------------------
    def _limit_held(self) -> None:
        """At most :data:`MAX_HELD` runs open between sessions: end the least recently followed ones."""
        with self.lock:
            held = [d for d in self.runs.values() if d.alive() and d.held() and not d.release.is_set()]
        for delivery in held[: max(0, len(held) - MAX_HELD)]:
            delivery.release.set()

    def _reap(self) -> None:
        with self.lock:
            for delivery in self.runs.values():
                if not delivery.stop.is_set() and delivery.handover_asked():
                    _log_to(delivery.run_dir)("[dualtrack] handing the run over to `dualtrack sync`, which asked for it")
                    delivery.stop.set()  # its workers end what they hold (a held run is ended, not abandoned)
            done = [k for k, d in self.runs.items() if not d.alive()]
            for key in done:
                self.runs.pop(key).close()
            for delivery in self.runs.values():
                delivery.relock()

    def _parent_alive(self) -> bool:
        return self.parent_pid is None or os.getppid() == self.parent_pid

    def _seconds_since_progress(self) -> float:
        """Since a backend last stored something, over the runs still being delivered."""
        with self.lock:
            stamps = [w.state.get("last_delivery_ms") or 0 for d in self.runs.values() for w in d.workers if w.is_alive()]
        latest = max(stamps, default=0) / 1000.0
        return time.time() - latest if latest else float("inf")

    def tick(self) -> bool:
        """One look at everything; False once this process should exit."""
        self._reap()
        self._limit_held()
        if self.input_closed.is_set() or not self._parent_alive():
            if not self._parent_alive() and not self.orphaned.is_set():
                self._orphaned_at = time.monotonic()
                self.orphaned.set()  # workers end what they hold and mark runs without an end as crashed
            with self.lock:
                for delivery in self.runs.values():
                    delivery.release.set()  # the process is exiting: no next session will come
                busy = bool(self.runs)
            if not busy:
                return False
            if self.orphaned.is_set():
                idle = min(time.monotonic() - (self._orphaned_at or time.monotonic()), self._seconds_since_progress())
                if idle > orphan_timeout():
                    print(f"[dualtrack] delivery service: the training process is gone and nothing was delivered for "
                          f"{orphan_timeout():g} s: giving up; the rest is safe in the journals (dualtrack sync)",
                          file=sys.stderr, flush=True)
                    self.stop_all()
                    return False
        return not self.stop.is_set()

    def read_commands(self, stream: Any) -> None:
        for line in stream:
            if line.strip():
                self.handle(line)
        self.input_closed.set()

    def stop_all(self) -> None:
        self.stop.set()
        with self.lock:
            for delivery in self.runs.values():
                delivery.stop.set()

    def run(self, stream: Any, warm: list[str] = (), idle: bool = False) -> None:
        reader = threading.Thread(target=self.read_commands, args=(stream,), name="dualtrack-commands", daemon=True)
        reader.start()
        _warm_up(warm)
        if idle and not start_idle():
            try:
                os.nice(19)
            except OSError:
                pass
        while self.tick():
            time.sleep(_TICK_S)
        # stopping: the workers check `stop` between requests; one stuck in a network call is left behind
        self.stop_all()
        end = time.monotonic() + 5.0
        with self.lock:
            deliveries = list(self.runs.values())
        for delivery in deliveries:
            for w in delivery.workers:
                w.join(timeout=max(0.0, end - time.monotonic()))


def _warm_up(names: list[str]) -> None:
    """Each backend the first run uses imports its library and starts what it starts, at normal priority: this
    overlaps the model's setup in the training process, and the first run's backends open without waiting."""
    from lightning_dualtrack.sinks import sink_class

    for name in names:
        try:
            sink_class(name).warm_up()
        except Exception as err:  # noqa: BLE001 - the run's own open says what is wrong, in its delivery.log
            print(f"[dualtrack] delivery service: warming up {name} failed: {type(err).__name__}: {err}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lightning_dualtrack.delivery")
    parser.add_argument("--parent-pid", type=int, default=None)
    parser.add_argument("--idle", action="store_true",
                        help="after warming up, run only on CPU time nobody else wants (SCHED_IDLE)")
    parser.add_argument("--warm", default="", help="comma-separated backends to warm up at start")
    args = parser.parse_args(argv)
    service = Service(args.parent_pid)
    signal.signal(signal.SIGTERM, lambda *_: service.stop_all())
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the training process; we deliver what it logged
    service.run(sys.stdin, warm=[n for n in args.warm.split(",") if n], idle=args.idle)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # do not wait for threads stuck in a network call
