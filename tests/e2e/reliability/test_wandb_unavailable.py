"""W&B cannot start in online mode: no credentials, or no network. Training never waits for it.

Documented fallback (non-strict): the W&B sink records the run offline (upload it later with
``wandb sync``) and says so in ``delivery.log``; MLflow is unaffected. Strict mode: a clear error at
start instead. wandb 0.31 refuses an offline ``init`` in the same process after a failed online one
("run ID ... is in use", wandb #9865): the sink tears the W&B service down between the two.
"""

from __future__ import annotations

import time

import pytest
from mlflow.tracking import MlflowClient

from lightning_dualtrack.testing import free_port
from tests.e2e.reliability.faults import BlackHole
from tests.e2e.reliability.ledger import LedgerModel, TimedLogger, assert_delivered, mlflow_run_id, wandb_rows
from tests.helpers import loaders, trainer

pytestmark = [pytest.mark.reliability, pytest.mark.slow]

FAKE_KEY = "0123456789abcdef0123456789abcdef01234567"


def online_logger(tmp_path, mlflow_server, **kwargs) -> TimedLogger:
    return TimedLogger(
        experiment_name="wandb-unavailable",
        tracking_uri=mlflow_server.url,
        wandb_mode="online",
        save_dir=tmp_path / "runs",
        flush_interval=0.2,
        **kwargs,
    )


def _check_fell_back_offline(logger: TimedLogger, model: LedgerModel, mlflow_server, fit_seconds: float) -> None:
    training = fit_seconds - sum(logger.finalize_seconds)
    assert training < 20, f"training took {training:.1f} s: it waited for W&B"
    assert fit_seconds < 30, f"fit took {fit_seconds:.1f} s (finalize {logger.finalize_seconds}): delivery waited for W&B"
    assert max(logger.call_seconds) < 0.05
    report = logger.last_report
    assert report["wandb"].get("closed") and report["wandb"]["identity"]["mode"] == "offline", report["wandb"]
    assert "recording offline" in (logger.run_dir / "delivery.log").read_text()
    assert_delivered(logger.run_dir, logger.run_id, mlflow_server.url, model.ledger)
    assert wandb_rows(logger.run_dir, logger.run_id), "no W&B rows"
    assert MlflowClient(mlflow_server.url).get_run(mlflow_run_id(logger.run_dir)).info.status == "FINISHED"


@pytest.mark.timeout(180)
def test_online_without_credentials_falls_back_to_offline(mlflow_server, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{free_port()}")  # refused: no internet either
    logger = online_logger(tmp_path, mlflow_server, finalize_timeout=60)
    model = LedgerModel()
    t0 = time.monotonic()
    trainer(logger, max_steps=20).fit(model, loaders()[0])
    _check_fell_back_offline(logger, model, mlflow_server, time.monotonic() - t0)


@pytest.mark.timeout(180)
def test_online_with_credentials_but_no_network_falls_back_fast(mlflow_server, tmp_path, monkeypatch) -> None:
    # a key, and a W&B server that accepts connections but never answers: wandb.init would wait
    # init_timeout, and then its offline init in the same process fails (wandb #9865)
    monkeypatch.setenv("WANDB_API_KEY", FAKE_KEY)
    with BlackHole(free_port()) as hole:
        monkeypatch.setenv("WANDB_BASE_URL", hole.url)
        logger = online_logger(tmp_path, mlflow_server, finalize_timeout=60)
        model = LedgerModel()
        t0 = time.monotonic()
        trainer(logger, max_steps=20).fit(model, loaders()[0])
        fit_seconds = time.monotonic() - t0
    _check_fell_back_offline(logger, model, mlflow_server, fit_seconds)


@pytest.mark.timeout(120)
def test_strict_online_without_credentials_fails_fast_and_clearly(mlflow_server, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{free_port()}")
    logger = online_logger(tmp_path, mlflow_server, strict=True, finalize_timeout=10)
    t0 = time.monotonic()
    with pytest.raises(RuntimeError, match=r"(?s)strict mode: a backend could not start.*wandb.*does not fall back to offline"):
        trainer(logger, max_steps=5).fit(LedgerModel(), loaders()[0])
    assert time.monotonic() - t0 < 30
