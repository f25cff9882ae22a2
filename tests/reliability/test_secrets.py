"""Secrets planted everywhere a user might put one never reach a file: not the journal, not the run
directory, not the MLflow database or artifact store, not the W&B run files, not the console log.

Canaries: values under secret-named hyperparameter keys, credential-shaped values (a 40-hex W&B key,
an ``hf_`` token) under innocent keys, the password of a ``user:pass@`` tracking URI, secret flags and a
token on the command line, and secrets in the environment (including ``WANDB_API_KEY``). Each is unique
to this test run, so a match anywhere is a leak.
"""

from __future__ import annotations

import json
import secrets
import string
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from lightning_dualtrack.wandb_file import read_runs
from tests.reliability.ledger import mlflow_run_id

pytestmark = [pytest.mark.reliability, pytest.mark.slow]

SCRIPT = Path(__file__).with_name("train_script.py")


def _alnum(n: int) -> str:
    return "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(n))


def files_containing(roots: list[Path], needles: dict[str, bytes]) -> list[str]:
    hits = []
    for root in roots:
        for path in sorted(p for p in root.rglob("*") if p.is_file() and not p.is_symlink()):
            data = path.read_bytes()
            hits += [f"{name} in {path}" for name, needle in needles.items() if needle in data]
    return hits


@pytest.mark.timeout(180)
def test_canaries_never_reach_a_file(mlflow_server, tmp_path, subprocess_env) -> None:
    c = {
        "hparam api_key": f"canary{secrets.token_hex(8)}",
        "hparam token": f"canary{secrets.token_hex(8)}",
        "hparam password": f"canary{secrets.token_hex(8)}",
        "hparam secret": f"canary{secrets.token_hex(8)}",
        "hparam nested client_secret": f"canary{secrets.token_hex(8)}",
        "hparam W&B-shaped value": secrets.token_hex(20),
        "hparam hf_ value": f"hf_{_alnum(34)}",
        "URI password": f"canary{secrets.token_hex(8)}",
        "argv --api-key=": f"canary{secrets.token_hex(8)}",
        "argv --token": f"canary{secrets.token_hex(8)}",
        "argv hf_ token": f"hf_{_alnum(34)}",
        "env MY_SERVICE_TOKEN": f"canary{secrets.token_hex(8)}",
        "env WANDB_API_KEY": secrets.token_hex(20),
    }
    visible = f"visible{secrets.token_hex(8)}"  # the positive control: a value that must be found
    hparams = {
        "lr": 0.1,
        "run_label": visible,
        "api_key": c["hparam api_key"],
        "token": c["hparam token"],
        "db": {"password": c["hparam password"], "client": {"client_secret": c["hparam nested client_secret"]}},
        "secret": c["hparam secret"],
        "note": f"my wandb key is {c['hparam W&B-shaped value']}",
        "hub_model": c["hparam hf_ value"],
    }
    env = dict(subprocess_env)
    env.update(
        MY_SERVICE_TOKEN=c["env MY_SERVICE_TOKEN"],
        WANDB_API_KEY=c["env WANDB_API_KEY"],
        DUALTRACK_TEST_HPARAMS=json.dumps(hparams),
    )
    uri = f"http://dtuser:{c['URI password']}@127.0.0.1:{mlflow_server.port}"  # the server ignores basic auth
    ledger, info = tmp_path / "ledger.jsonl", tmp_path / "info.json"
    cmd = [
        sys.executable, str(SCRIPT), "--save-dir", str(tmp_path / "runs"), "--tracking-uri", uri,
        "--ledger", str(ledger), "--info", str(info), "--max-steps", "12", "--step-sleep", "0",
        "--flush-interval", "0.2", "--hparams-env", "DUALTRACK_TEST_HPARAMS",
        f"--api-key={c['argv --api-key=']}", "--token", c["argv --token"], c["argv hf_ token"],
    ]
    result = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, timeout=150)
    (tmp_path / "script.log").write_bytes(result.stdout + result.stderr)  # the console is a file too (CI logs)
    assert result.returncode == 0, result.stderr[-3000:].decode(errors="replace")
    run = json.loads(info.read_text())
    run_dir = Path(run["run_dir"])

    # the run is there, with the secrets masked
    rid = mlflow_run_id(run_dir)
    data = MlflowClient(mlflow_server.url).get_run(rid).data
    assert data.params["lr"] == "0.1"
    for key in ("api_key", "token", "db/password", "db/client/client_secret", "secret", "hub_model"):
        assert data.params[key] == "***", key
    assert data.params["note"] == "my wandb key is ***"
    command = data.tags["dualtrack.command"]
    assert "--api-key=***" in command and "--token ***" in command and "dtuser" not in command
    w = read_runs(run_dir, run["run_id"])
    assert w.config["api_key"] == "***" and w.config["note"] == "my wandb key is ***"
    assert w.exit_code == 0

    needles = {name: value.encode() for name, value in c.items()}
    roots = [tmp_path, mlflow_server.workdir]  # runs, W&B dirs, console log; MLflow DB, artifacts, server log
    assert files_containing(roots, needles) == []
    # the search sees what it is looking for: the control value is in the journal, the DB and the W&B file
    found = "\n".join(files_containing(roots, {"control": visible.encode()}))
    assert "journal.jsonl" in found and "mlflow.db" in found and ".wandb" in found, found
