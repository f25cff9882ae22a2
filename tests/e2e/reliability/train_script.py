"""A training process for the crash and secrets tests: ``python tests/e2e/reliability/train_script.py ...``.

Trains :class:`LedgerModel` with a ``DualTrackLogger`` and writes, before the logger sees them, the
metrics it logs to ``--ledger`` (one line per step, with the time), and the run's directory and id to
``--info`` once the run has started. Unknown arguments are ignored (the secrets test plants some).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import sys
from pathlib import Path

from lightning.pytorch.callbacks import Callback

from lightning_dualtrack import DualTrackLogger
from tests.e2e.reliability.ledger import LedgerModel
from tests.helpers import loaders, trainer


class WriteInfo(Callback):
    def __init__(self, path: str, fsize_limit: int | None) -> None:
        self.path, self.fsize_limit = path, fsize_limit

    def on_train_start(self, trainer, pl_module) -> None:  # noqa: ANN001
        logger = trainer.logger
        Path(self.path).write_text(json.dumps({"run_dir": str(logger.run_dir), "run_id": logger.run_id}))
        if self.fsize_limit is not None:
            # a full disk for this process only (its delivery service started already): writes past the limit fail
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            journal = logger.run_dir / "journal.jsonl"
            limit = journal.stat().st_size + self.fsize_limit
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))


class Interrupt(LedgerModel):
    """Raises ``KeyboardInterrupt`` at ``interrupt_at_step`` (as Ctrl-C would, between two ops)."""

    def __init__(self, interrupt_at_step: int | None = None, **kwargs) -> None:  # noqa: ANN003
        super().__init__(**kwargs)
        self.interrupt_at_step = interrupt_at_step

    def training_step(self, batch, batch_idx):  # noqa: ANN001
        if self.interrupt_at_step is not None and self.global_step == self.interrupt_at_step:
            raise KeyboardInterrupt
        return super().training_step(batch, batch_idx)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--save-dir", required=True)
    parser.add_argument("--tracking-uri", required=True)
    parser.add_argument("--ledger", required=True)
    parser.add_argument("--info", required=True)
    parser.add_argument("--max-steps", type=int, default=100_000)
    parser.add_argument("--step-sleep", type=float, default=0.02)
    parser.add_argument("--flush-interval", type=float, default=0.5)
    parser.add_argument("--finalize-timeout", type=float, default=60.0)
    parser.add_argument("--hparams-env", default=None, help="an environment variable holding JSON hyperparameters to log")
    parser.add_argument("--fsize-limit", type=int, default=None, help="bytes the journal may still grow after start")
    parser.add_argument("--interrupt-at-step", type=int, default=None)
    args, _unknown = parser.parse_known_args(argv)

    logger = DualTrackLogger(
        experiment_name="reliability-subprocess",
        tracking_uri=args.tracking_uri,
        wandb_mode="offline",
        save_dir=args.save_dir,
        flush_interval=args.flush_interval,
        finalize_timeout=args.finalize_timeout,
    )
    hparams = json.loads(os.environ[args.hparams_env]) if args.hparams_env else {}
    if hparams:
        logger.log_hyperparams(hparams)
    ledger = "/dev/stdout" if args.ledger == "-" else args.ledger  # a pipe: not subject to RLIMIT_FSIZE
    model = Interrupt(interrupt_at_step=args.interrupt_at_step, ledger_file=ledger, step_sleep=args.step_sleep)
    trainer(logger, max_steps=args.max_steps, callbacks=[WriteInfo(args.info, args.fsize_limit)]).fit(model, loaders()[0])
    print(f"TRAINING DONE {model.global_step}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
