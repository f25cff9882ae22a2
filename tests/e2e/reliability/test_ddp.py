"""DDP on CPU (2 processes, gloo, ``ddp_spawn``: the logger is pickled into each process).

Rank 0 records the run; other ranks are no-ops: no journal, no delivery, no backend call. The result is
one MLflow run and one W&B run holding rank 0's points exactly once.
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path

import pytest
from lightning.pytorch.callbacks import Callback
from mlflow.tracking import MlflowClient

from lightning_dualtrack import DualTrackLogger
from lightning_dualtrack.sinks.wandb.runfile import find_run_files
from tests.e2e.reliability.ledger import Ledger, LedgerModel, assert_delivered, read_ledger_file
from tests.helpers import loaders, trainer

pytestmark = [pytest.mark.reliability, pytest.mark.slow]


class RankReport(Callback):
    """Each rank writes down what its copy of the logger holds at the end of training."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = out_dir

    def on_train_end(self, trainer, pl_module) -> None:  # noqa: ANN001
        logger = trainer.logger
        report = {"journal": logger._run.journal is not None, "delivery": logger._run.delivery is not None, "pid": os.getpid()}
        Path(self.out_dir, f"rank{trainer.global_rank}.json").write_text(json.dumps(report))


@pytest.mark.timeout(240)
def test_ddp_two_processes_make_one_run_in_each_backend(mlflow_server, tmp_path) -> None:
    experiment = f"ddp-{secrets.token_hex(4)}"
    save_dir = tmp_path / "runs"
    logger = DualTrackLogger(experiment_name=experiment, tracking_uri=mlflow_server.url, wandb_mode="offline",
                             save_dir=save_dir, flush_interval=0.2)
    model = LedgerModel(ledger_file=str(tmp_path / "ledger-{rank}.jsonl"))
    trainer(logger, max_steps=10, strategy="ddp_spawn", devices=2, callbacks=[RankReport(str(tmp_path))]).fit(model, loaders()[0])

    ranks = {r: json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)}
    assert ranks[0]["journal"] and ranks[0]["pid"] != ranks[1]["pid"] != os.getpid()
    assert not ranks[1]["journal"] and not ranks[1]["delivery"], "rank 1 started a run"
    assert logger._run.journal is None, "the launching process started a run"
    # one run directory, one journal, one delivery log: rank 1 never touched a backend
    run_dirs = [p.parent for p in save_dir.glob("*/run.json")]
    assert run_dirs == [save_dir / logger.run_id]
    assert len(list(save_dir.rglob("journal.jsonl"))) == 1 and len(list(save_dir.rglob("delivery.log"))) == 1
    found = MlflowClient(mlflow_server.url).search_runs([MlflowClient(mlflow_server.url).get_experiment_by_name(experiment).experiment_id])
    assert len(found) == 1 and found[0].info.status == "FINISHED"
    wandb_files = find_run_files(save_dir)
    assert [p.name for p in wandb_files] == [f"run-{logger.run_id}.wandb"]
    # rank 0's points, exactly once in the journal and in both backends
    ledger0 = Ledger()
    for _, point in read_ledger_file(tmp_path / "ledger-0.jsonl"):
        ledger0.add(*point)
    assert len(ledger0) == 10 * 4 and (tmp_path / "ledger-1.jsonl").exists()  # rank 1 logged too, to no logger
    assert_delivered(save_dir / logger.run_id, logger.run_id, mlflow_server.url, ledger0)
