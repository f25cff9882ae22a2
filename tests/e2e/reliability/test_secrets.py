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

from lightning_dualtrack.sinks.wandb.runfile import read_runs
from tests.e2e.reliability.ledger import mlflow_run_id

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


def _sk() -> str:
    return f"sk-canary{_alnum(32)}"


@pytest.mark.timeout(240)
def test_a_canary_in_every_place_reaches_no_stored_byte(mlflow_server, tmp_path, monkeypatch) -> None:
    """Issue 10's canary: metric keys, tags, table cells, text, artifact file names, argv `--flag VALUE` pairs,
    env vars, an exception message and the checkpoint's hyperparameters; then grep the MLflow store, the
    artifact root, the W&B directories and the journal (everything under the test's directory but the
    local checkpoints, which keep what the user saved, and the source file named with a canary)."""
    import torch
    from lightning.pytorch.callbacks import ModelCheckpoint

    from lightning_dualtrack import DualTrackLogger
    from tests.helpers import TinyModel, loaders, trainer

    plain = {name: f"canary{secrets.token_hex(8)}" for name in (
        "hparam api_key", "hparam db.password", "argv --db-pass", "argv --token", "argv --api-key", "argv --password",
        "argv --secret", "argv --DB_PASS=", "env MY_SERVICE_TOKEN", "exception message")}
    shaped = {name: _sk() for name in ("metric key", "tag key", "tag value", "table cell", "table column", "text", "artifact file name", "exception sk")}
    visible = f"visible{secrets.token_hex(8)}"
    monkeypatch.setattr(sys, "argv", [
        "train.py", "--db-pass", plain["argv --db-pass"], "--token", plain["argv --token"], "--api-key", plain["argv --api-key"],
        "--password", plain["argv --password"], "--secret", plain["argv --secret"], f"--DB_PASS={plain['argv --DB_PASS=']}", "--lr", "0.1"])
    monkeypatch.setenv("MY_SERVICE_TOKEN", plain["env MY_SERVICE_TOKEN"])
    src = tmp_path / "src" / f"weights-{shaped['artifact file name']}.bin"
    src.parent.mkdir()
    src.write_bytes(b"weights")

    class CanaryModel(TinyModel):
        def __init__(self, api_key: str, db: dict, label: str) -> None:
            super().__init__(fail_at_step=None)
            self.save_hyperparameters()

        def training_step(self, batch, batch_idx):
            loss = super().training_step(batch, batch_idx)
            self.log(f"loss/{shaped['metric key']}", loss.detach())
            if self.global_step == 2:
                run = self.logger
                run.set_tags({f"tag_{shaped['tag key']}": f"value {shaped['tag value']}"})
                run.log_table("cells", ["step", shaped["table column"]], [[2, f"cell {shaped['table cell']}"]])
                run.log_text(f"notes: {shaped['text']}", "notes.txt")
                run.log_artifact(src)
            if self.global_step == 6:
                raise RuntimeError(f"db connection failed: {plain['exception message']} {shaped['exception sk']}")
            return loss

    logger = DualTrackLogger(experiment_name="canary-everywhere", tracking_uri=mlflow_server.url, wandb_mode="offline",
                             save_dir=tmp_path / "runs", log_model=True, flush_interval=0.2, finalize_timeout=90)
    local = tmp_path / "local_ckpts"
    model = CanaryModel(api_key=plain["hparam api_key"], db={"password": plain["hparam db.password"]}, label=visible)
    with pytest.warns(UserWarning), pytest.raises(RuntimeError, match="db connection failed"):
        trainer(logger, max_steps=10, enable_checkpointing=True,
                callbacks=[ModelCheckpoint(dirpath=local, every_n_train_steps=2, save_last=True)]).fit(model, loaders()[0])

    # delivered: the failed run, its metric under the masked key, the checkpoint copy
    rid = mlflow_run_id(logger.run_dir)
    client = MlflowClient(mlflow_server.url)
    run = client.get_run(rid)
    assert run.info.status == "FAILED" and run.data.params["label"] == visible and run.data.params["api_key"] == "***"
    assert "loss/REDACTED" in run.data.metrics
    command = run.data.tags["dualtrack.command"]
    assert "--db-pass ***" in command and "--DB_PASS=***" in command and "--lr 0.1" in command
    ckpts = [a.path for a in client.list_artifacts(rid, "checkpoints")]
    assert ckpts, "the checkpoint was not uploaded"
    copy = torch.load(client.download_artifacts(rid, ckpts[0], str(tmp_path / "dl")), weights_only=False)
    assert copy["hyper_parameters"]["api_key"] == "***" and copy["hyper_parameters"]["label"] == visible
    # the local checkpoint, used for resuming, is what the user saved
    assert torch.load(next(local.glob("*.ckpt")), weights_only=False)["hyper_parameters"]["api_key"] == plain["hparam api_key"]
    w = read_runs(logger.run_dir, logger.run_id)
    assert w.exit_code == 1 and w.config["db/password"] == "***"

    needles = {name: value.encode() for name, value in {**plain, **shaped}.items()}
    roots = [mlflow_server.workdir, *(p for p in tmp_path.iterdir() if p.is_dir() and p.name not in ("src", "local_ckpts", "dl"))]
    assert files_containing(roots, needles) == []
    names = [str(p) for root in roots for p in root.rglob("*")]
    assert not [n for n in names for needle in shaped.values() if needle in n]
    found = "\n".join(files_containing(roots, {"control": visible.encode()}))
    assert "journal.jsonl" in found and "mlflow.db" in found and ".wandb" in found and ".ckpt" in found, found
