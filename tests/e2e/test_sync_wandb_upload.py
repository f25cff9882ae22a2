"""``dualtrack sync --wandb``: every offline W&B directory of a run, oldest first, uploaded into its one run id with W&B's
own ``wandb sync`` — here a recording stub on ``PATH`` (no network) — once: what was uploaded is in the run's
``state/wandb.uploaded.json`` and a second sync uploads nothing again."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from lightning_dualtrack import DualTrackLogger
from lightning_dualtrack.cli import build_parser
from lightning_dualtrack.cli import main as dualtrack
from lightning_dualtrack.run.session import end_all_runs

pytestmark = [pytest.mark.slow]

STUB = """#!/bin/sh
# a stand-in for W&B's CLI: one JSON line per call (its arguments), then the exit status the test asks for
python3 -c 'import json, sys; print(json.dumps(sys.argv[1:]))' "$@" >> "$STUB_LOG"
exit "${STUB_EXIT:-0}"
"""


@pytest.fixture
def wandb_stub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A ``wandb`` first on ``PATH`` that records each call's arguments in the returned file."""
    bin_dir = tmp_path / "stub_bin"
    bin_dir.mkdir()
    script = bin_dir / "wandb"
    script.write_text(STUB)
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    log = tmp_path / "wandb_calls.jsonl"
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("STUB_LOG", str(log))
    return log


def _calls(log: Path) -> list[list[str]]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def _session(tmp_path: Path, run_id: str, value: float) -> DualTrackLogger:
    """One process's part of run ``run_id``: W&B offline (MLflow off), ended, and its delivery service shut down, so
    that the next part is written by a new service into a new offline directory, as after a restart."""
    logger = DualTrackLogger(experiment_name="upload", run_id=run_id, save_dir=tmp_path / "runs", mlflow=False,
                             wandb_mode="offline", wandb_project="upload-test", log_system_info=False,
                             system_metrics=False)
    logger.log_metrics({"loss": value}, step=int(value * 10))
    logger.end_run()
    end_all_runs()
    return logger


def _uploaded(run_dir: Path) -> list[dict]:
    return json.loads((run_dir / "state" / "wandb.uploaded.json").read_text())["uploads"]


def test_every_offline_directory_is_uploaded_in_order_into_the_one_run_id_and_only_once(tmp_path, wandb_stub) -> None:
    first = _session(tmp_path, "resumed1", 0.1)
    _session(tmp_path, "resumed1", 0.2)
    run_dir = Path(first.run_dir)
    dirs = sorted(p.name for p in (run_dir / "wandb").glob("offline-run-*-resumed1"))
    assert len(dirs) == 2, dirs

    assert dualtrack(["sync", str(run_dir), "--wandb"]) == 0
    assert _calls(wandb_stub) == [["sync", "--id", "resumed1", "-p", "upload-test",
                                   *(str(run_dir / "wandb" / d) for d in dirs)]]
    assert [u["dirs"] for u in _uploaded(run_dir)] == [[f"wandb/{d}" for d in dirs]]

    assert dualtrack(["sync", str(run_dir), "--wandb"]) == 0  # nothing new: nothing uploaded again
    assert len(_calls(wandb_stub)) == 1


def test_a_directory_made_after_an_upload_is_uploaded_alone_by_the_next_sync(tmp_path, wandb_stub) -> None:
    first = _session(tmp_path, "later1", 0.1)
    run_dir = Path(first.run_dir)
    assert dualtrack(["sync", str(run_dir), "--wandb"]) == 0
    _session(tmp_path, "later1", 0.2)  # resumed by another process after the upload
    assert dualtrack(["sync", str(tmp_path / "runs"), "--wandb"]) == 0  # a runs folder: the delivered run too
    calls = _calls(wandb_stub)
    assert len(calls) == 2
    uploads = _uploaded(run_dir)
    assert [len(u["dirs"]) for u in uploads] == [1, 1] and uploads[0]["dirs"] != uploads[1]["dirs"]
    assert calls[1][-1] == str(run_dir / uploads[1]["dirs"][0])
    assert {u["dirs"][0] for u in uploads} == {f"wandb/{p.name}" for p in (run_dir / "wandb").glob("offline-run-*")}


def test_a_failed_upload_records_nothing_and_the_next_sync_uploads(tmp_path, wandb_stub, monkeypatch, capsys) -> None:
    run_dir = Path(_session(tmp_path, "failing1", 0.1).run_dir)
    monkeypatch.setenv("STUB_EXIT", "3")
    assert dualtrack(["sync", str(run_dir), "--wandb"]) == 1
    assert "`wandb sync` failed (exit 3)" in capsys.readouterr().out
    assert not (run_dir / "state" / "wandb.uploaded.json").exists()
    monkeypatch.setenv("STUB_EXIT", "0")
    assert dualtrack(["sync", str(run_dir), "--wandb"]) == 0
    assert len(_calls(wandb_stub)) == 2 and len(_uploaded(run_dir)) == 1


def test_by_default_the_upload_happens_only_where_wandb_credentials_exist(tmp_path, wandb_stub, monkeypatch) -> None:
    run_dir = Path(_session(tmp_path, "default1", 0.1).run_dir)
    monkeypatch.setenv("NETRC", str(tmp_path / "no_netrc"))
    assert dualtrack(["sync", str(run_dir)]) == 0
    assert _calls(wandb_stub) == []  # no credentials: the hint says `dualtrack sync --wandb`
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert dualtrack(["sync", str(run_dir), "--no-wandb"]) == 0
    assert _calls(wandb_stub) == []
    assert dualtrack(["sync", str(run_dir)]) == 0
    assert len(_calls(wandb_stub)) == 1


def test_sync_help_documents_the_wandb_upload() -> None:
    sync = build_parser()._subparsers._group_actions[0].choices["sync"]
    text = " ".join(sync.format_help().split())
    assert "--wandb" in text and "--no-wandb" in text
    assert "wandb sync" in text and "state/wandb.uploaded.json" in text and "WANDB_API_KEY" in text
