"""The facade on its own (no delivery): what reaches the journal, policies, rank zero, pickling."""

from __future__ import annotations

import json
import os
import pickle

import numpy as np
import pytest
import torch
from lightning.pytorch.utilities.rank_zero import rank_zero_only

import lightning_dualtrack
from lightning_dualtrack import DualTrackLogger, DualTrackWarning
from lightning_dualtrack.core.journal import JournalReader


def journal_logger(tmp_path, **kwargs) -> DualTrackLogger:
    """A logger that only journals: no delivery (what reaches the journal is the subject); the backends' rules
    (MLflow's keys and params) apply as with delivery."""
    kwargs.setdefault("wandb_mode", "offline")
    return DualTrackLogger(save_dir=tmp_path / "runs", deliver=False, log_system_info=False, **kwargs)


def records(logger: DualTrackLogger, kind: str) -> list[dict]:
    return [r for r in JournalReader(logger.run_dir) if r["k"] == kind]


def test_public_api_is_exactly_these_names() -> None:
    assert lightning_dualtrack.__all__ == [
        "DualTrackLogger", "DualTrackWarning", "ExperimentTracker", "MLflowTracker", "MultiTracker", "WandbTracker",
        "__version__", "create_tracker", "from_config",
    ]
    for name in lightning_dualtrack.__all__:
        assert getattr(lightning_dualtrack, name) is not None


def test_import_does_not_pull_in_lightning(tmp_path) -> None:
    """The delivery process imports the package: it must not pay for Lightning and torch."""
    import subprocess
    import sys

    code = ("import sys, lightning_dualtrack.delivery.service, lightning_dualtrack.sinks.mlflow.sink, "
            "lightning_dualtrack.sinks.wandb.sink; print('torch' in sys.modules, 'lightning' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False"]


def test_metrics_reach_the_journal_with_steps(tmp_path) -> None:
    logger = journal_logger(tmp_path)
    logger.log_metrics({"a": 1.0, "b": torch.tensor(2.0), "c": np.float32(3.0), "d": True}, step=7)
    logger.log_metrics({"a": 2.0})  # no step: the logger's own counter
    recs = records(logger, "metrics")
    assert recs[0]["s"] == 7 and recs[0]["v"] == {"a": 1.0, "b": 2.0, "c": 3.0, "d": 1.0}
    assert recs[1]["s"] == 0


def test_bad_values_warn_once_per_key_and_keep_the_rest(tmp_path) -> None:
    logger = journal_logger(tmp_path)
    with pytest.warns(DualTrackWarning, match="'s' dropped"):
        logger.log_metrics({"s": "text", "ok": 1.0, "t": torch.ones(2), 3: 4.0}, step=0)
    assert records(logger, "metrics")[0]["v"] == {"ok": 1.0, "3": 4.0}


def test_strict_mode_raises_on_bad_input(tmp_path) -> None:
    logger = journal_logger(tmp_path, strict=True)
    with pytest.raises(ValueError, match="not a figure|Expected a matplotlib Figure"):
        logger.log_figure(object(), "not-a-figure")


def test_invalid_mlflow_keys_are_journalled_with_their_mapping(tmp_path) -> None:
    logger = journal_logger(tmp_path)
    with pytest.warns(DualTrackWarning, match="acc@1"):
        logger.log_metrics({"acc@1": 0.5, "acc_1": 0.6}, step=0)
    keymap = {k: v for r in records(logger, "keymap") for k, v in r["v"].items()}
    assert keymap["acc@1"] == "acc_1"
    # "acc_1" came second and its clean form is taken by "acc@1": it must be stored elsewhere
    assert keymap["acc_1"] == "acc_1_2"


def test_changed_param_is_kept_under_a_new_key(tmp_path) -> None:
    logger = journal_logger(tmp_path)
    logger.log_params({"lr": 0.1})
    with pytest.warns(DualTrackWarning, match="changed"):
        logger.log_params({"lr": 0.2})
    assert [r["v"] for r in records(logger, "params")] == [{"lr": 0.1}, {"lr.v2": 0.2}]


def test_secret_params_are_masked_before_the_journal(tmp_path) -> None:
    logger = journal_logger(tmp_path)
    logger.log_params({"wandb": {"api_key": "0123456789abcdef0123456789abcdef01234567"}, "hf": "hf_" + "x" * 30})
    text = (logger.run_dir / "journal.jsonl").read_text()
    assert "0123456789abcdef" not in text and "hf_xxxx" not in text and "***" in text


def test_artifact_paths_stay_inside_the_run(tmp_path) -> None:
    logger = journal_logger(tmp_path)
    src = tmp_path / "f.txt"
    src.write_text("x")
    with pytest.warns(DualTrackWarning):
        logger.log_artifact(src, "../../escape")
    with pytest.warns(DualTrackWarning):
        logger.log_text("y", "/etc/abs.txt")
    for rec in records(logger, "file"):
        assert (logger.run_dir / rec["path"]).resolve().is_relative_to(logger.run_dir.resolve())
    assert not (tmp_path / "escape").exists()


def test_other_ranks_make_nothing(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(rank_zero_only, "rank", 1)
    logger = journal_logger(tmp_path)
    logger.log_hyperparams({"a": 1})
    logger.log_metrics({"x": 1.0}, step=0)
    logger.finalize("success")
    assert not (tmp_path / "runs").exists()


def test_properties_and_pickling(tmp_path) -> None:
    logger = journal_logger(tmp_path, experiment_name="exp", run_id="abc12345")
    assert (logger.name, logger.version, logger.run_id) == ("exp", "abc12345", "abc12345")
    assert logger.save_dir == logger.log_dir == str(tmp_path / "runs" / "abc12345")
    logger.log_metrics({"x": 1.0}, step=0)
    clone = pickle.loads(pickle.dumps(logger))
    assert clone.run_id == logger.run_id and clone._run.journal is None and clone._run.delivery is None


@pytest.mark.parametrize("bad", [{"experiment_name": ""}, {"log_model": "best"}, {"flush_interval": 0}, {"wandb_mode": "cloud"}])
def test_bad_arguments_are_named(tmp_path, bad) -> None:
    name = next(iter(bad))
    with pytest.raises(ValueError, match=name):
        DualTrackLogger(save_dir=tmp_path, **bad)


def test_wandb_mode_resolution(tmp_path, monkeypatch) -> None:
    def wandb(**kwargs):
        return DualTrackLogger(save_dir=tmp_path, deliver=False, **kwargs).backends["wandb"]

    assert wandb()["mode"] == "offline"  # no credentials in the test env
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert wandb()["mode"] == "online"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert wandb() == {"enabled": False, "mode": "disabled", "mode_reason": "WANDB_MODE=disabled",
                       "off": "off (WANDB_MODE=disabled)", **{k: v for k, v in wandb().items() if k in ("project", "entity", "group", "job_type")}}
    assert wandb(wandb_mode="offline")["enabled"] is True  # the argument beats the environment


def test_tracking_uri_credentials_are_split_off(tmp_path) -> None:
    logger = journal_logger(tmp_path, tracking_uri="http://alice:pw123@127.0.0.1:5000")
    assert logger.tracking_uri == "http://127.0.0.1:5000"
    logger.log_metrics({"x": 1.0}, step=0)
    assert "pw123" not in (logger.run_dir / "run.json").read_text()
    assert logger._config.secrets()["mlflow"] == {"tracking_username": "alice", "tracking_password": "pw123"}


def test_create_tracker(tmp_path) -> None:
    from lightning_dualtrack import create_tracker

    tracker = create_tracker(use_wandb=False, experiment_name="e", save_dir=tmp_path, deliver=False)
    assert not tracker.backends["wandb"]["enabled"] and tracker.backends["mlflow"]["enabled"] and tracker.name == "e"


# -- every input a clear outcome (issue 10, items 2 and 5) --------------------------------------------
def messages(caught) -> list[str]:
    return [str(w.message) for w in caught if issubclass(w.category, DualTrackWarning)]


def test_a_cyclic_param_is_cut_with_a_warning_naming_the_path(tmp_path) -> None:
    logger = journal_logger(tmp_path)
    hparams: dict = {"lr": 0.1, "model": {"width": 8}}
    hparams["model"]["parent"] = hparams
    layers: list = [1, 2]
    layers.append(layers)
    hparams["layers"] = layers
    with pytest.warns(DualTrackWarning) as caught:
        logger.log_params(hparams)
    text = "\n".join(messages(caught))
    assert "'model/parent'" in text and "cycle" in text and "'layers'" in text
    assert records(logger, "params")[0]["v"] == {"lr": 0.1, "model/width": 8, "model/parent": "<cycle>", "layers": [1, 2, "<cycle>"]}


def test_params_nested_past_the_depth_limit_are_cut_not_raised(tmp_path) -> None:
    logger = journal_logger(tmp_path)
    deep: dict = {}
    node = deep
    for _ in range(3000):  # deeper than Python's recursion limit
        node["x"] = {}
        node = node["x"]
    with pytest.warns(DualTrackWarning, match="nests deeper than 40 levels"):
        logger.log_params({"deep": deep, "lr": 0.1})
    (values,) = [r["v"] for r in records(logger, "params")]
    assert values["lr"] == 0.1 and "<too deep>" in values["deep/x/x/x/x/x/x/x"]


def test_strict_mode_raises_with_the_warning_text(tmp_path) -> None:
    hparams: dict = {"a": 1}
    hparams["self"] = hparams
    with pytest.warns(DualTrackWarning) as caught:
        journal_logger(tmp_path / "lenient").log_params(hparams)
    with pytest.raises(ValueError) as raised:
        journal_logger(tmp_path / "strict", strict=True).log_params(hparams)
    assert str(raised.value) == messages(caught)[0]


def test_two_inputs_flattening_to_one_key_are_both_kept(tmp_path) -> None:
    logger = journal_logger(tmp_path)
    with pytest.warns(DualTrackWarning, match=r"params 'a/b' and 'a' -> 'b' both flatten to 'a/b'.*second as 'a/b_2'"):
        logger.log_params({"a/b": 1, "a": {"b": 2}})
    assert records(logger, "params")[0]["v"] == {"a/b": 1, "a/b_2": 2}


def test_the_rename_of_a_changed_param_never_takes_a_user_key(tmp_path) -> None:
    logger = journal_logger(tmp_path)
    logger.log_params({"lr": 0.1, "lr.v2": "mine"})
    with pytest.warns(DualTrackWarning, match="stored as 'lr.v3'"):
        logger.log_params({"lr": 0.2})
    with pytest.warns(DualTrackWarning, match=r"'lr.v4' is already the MLflow name of a changed param"):
        logger.log_params({"lr": 0.3})  # -> lr.v4
        logger.log_params({"lr.v4": "also mine"})  # a user key that a rename took: stored elsewhere
    assert [r["v"] for r in records(logger, "params")] == [{"lr": 0.1, "lr.v2": "mine"}, {"lr.v3": 0.2}, {"lr.v4": 0.3}, {"lr.v4_2": "also mine"}]


@pytest.mark.parametrize("key", ["trainer/global_step", "_dualtrack_offset"])
def test_reserved_metric_keys_are_refused_naming_the_key(tmp_path, key) -> None:
    logger = journal_logger(tmp_path)
    with pytest.warns(DualTrackWarning, match=f"metric key '{key}' is reserved"):
        logger.log_metrics({key: 5.0, "ok": 1.0}, step=3)
    assert records(logger, "metrics")[0]["v"] == {"ok": 1.0}


def test_the_stored_key_message_says_what_was_stored_and_why(tmp_path) -> None:
    logger = journal_logger(tmp_path)
    with pytest.warns(DualTrackWarning) as caught:
        logger.log_metrics({"acc@1": 0.5}, step=0)
    (message,) = messages(caught)
    assert "stored in MLflow as 'acc_1' because MLflow keys allow only" in message and "'@'" in message
    assert "W&B keeps 'acc@1'" in message and "not valid" not in message


def test_warnings_quote_a_short_preview_never_the_whole_value(tmp_path) -> None:
    logger = journal_logger(tmp_path)
    img = np.zeros((40, 40, 3), np.uint8)
    with pytest.warns(DualTrackWarning) as caught:
        logger.log_image("samples", [img])  # WandbLogger's argument order
        logger.log_image(img, [img])  # a name that is not a string
        logger.log_metrics({"big": torch.ones(1000)}, step=0)
    assert len(messages(caught)) == 3 and all(len(m) < 400 for m in messages(caught)), messages(caught)
    assert [r["key"] for r in records(logger, "image")] == ["samples"]


@pytest.mark.parametrize("code", ["ENOSPC", "EIO", "EROFS"])
def test_a_refused_payload_write_warns_once_per_kind_and_the_run_goes_on(tmp_path, monkeypatch, code) -> None:
    import errno

    from lightning_dualtrack.run import payloads

    def refuse(*args, **kwargs):
        raise OSError(getattr(errno, code), os.strerror(getattr(errno, code)))

    monkeypatch.setattr(payloads, "open", refuse, raising=False)  # every payload file write (not the journal)
    monkeypatch.setattr(payloads, "image_to_png", refuse)
    logger = journal_logger(tmp_path)
    with pytest.warns(DualTrackWarning) as caught:
        for step in range(3):
            logger.log_table("t", ["a"], [[step]], step=step)
            logger.log_confusion_matrix([[1, 0], [0, 1]], ["x", "y"], step=step)
            logger.log_image(np.zeros((4, 4, 3), np.uint8), "img", step=step)
            logger.log_metrics({"loss": 1.0 / (step + 1)}, step=step)
    found = messages(caught)
    assert len(found) == 3 and all(code in m for m in found), found  # one per kind: table, confusion matrix, image
    assert [r["s"] for r in records(logger, "metrics")] == [0, 1, 2]
    assert records(logger, "table") == records(logger, "cm") == records(logger, "image") == []
    with pytest.raises(OSError, match=f"{code}.*training goes on"):
        journal_logger(tmp_path / "strict", strict=True).log_table("t", ["a"], [[1]])


def test_credentials_are_masked_in_keys_tags_cells_text_and_file_names(tmp_path) -> None:
    secret = "sk-" + "Q" * 32
    logger = journal_logger(tmp_path)
    src = tmp_path / f"weights-{secret}.bin"
    src.write_bytes(b"w")
    with pytest.warns(DualTrackWarning):
        logger.log_metrics({f"loss_{secret}": 1.0}, step=0)
        logger.set_tags({"note": f"key {secret}", f"tag_{secret}": "x"})
        logger.log_table("t", ["c", secret], [[secret, 1]])
        logger.log_text(f"the key is {secret}", f"notes/{secret}.txt")
        logger.log_dict({"nested": {"api_key": "plain-secret-value", "msg": secret}}, "d")
        logger.log_artifact(src)
    stored = [p for p in logger.run_dir.rglob("*") if p.is_file()]
    assert all(secret not in str(p) for p in stored)
    assert not any(secret.encode() in p.read_bytes() or b"plain-secret-value" in p.read_bytes() for p in stored)
    assert any(p.name == "weights-REDACTED.bin" for p in stored)


def test_a_generated_run_name_is_stored_once_for_both_backends(tmp_path) -> None:
    logger = journal_logger(tmp_path, run_id="abcd1234")
    logger.log_metrics({"x": 1.0}, step=0)
    logger.finalize("success")
    name = json.loads((logger.run_dir / "run.json").read_text())["run_name"]
    assert name.endswith("-abcd1234") and len(name.split("-")) == 3
    again = journal_logger(tmp_path, run_id="abcd1234")
    again.log_metrics({"x": 2.0}, step=1)
    assert json.loads((logger.run_dir / "run.json").read_text())["run_name"] == name  # a resumed run keeps it
    named = journal_logger(tmp_path, run_name="my run")
    named.log_metrics({"x": 1.0}, step=0)
    assert json.loads((named.run_dir / "run.json").read_text())["run_name"] == "my run"


def test_uploaded_checkpoints_are_redacted_copies(tmp_path) -> None:
    from lightning.pytorch.callbacks import ModelCheckpoint

    from tests.helpers import TinyModel, loaders, trainer

    class SecretModel(TinyModel):
        def __init__(self, api_key: str = "", db: dict | None = None, lr: float = 0.05) -> None:
            super().__init__(lr=lr)
            self.save_hyperparameters()

    secret = "canary" + "7" * 12
    logger = journal_logger(tmp_path, log_model=True)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "local_ckpts", save_last=True)
    trainer(logger, max_steps=4, enable_checkpointing=True, callbacks=[ckpt]).fit(SecretModel(api_key=secret, db={"password": secret}), loaders()[0])
    uploads = [r for r in records(logger, "model") if r.get("checkpoint")]
    assert uploads
    for rec in uploads:
        uploaded = torch.load(logger.run_dir / rec["path"], weights_only=False)
        assert uploaded["hyper_parameters"]["api_key"] == "***" and uploaded["hyper_parameters"]["db"]["password"] == "***"
        assert uploaded["hyper_parameters"]["lr"] == 0.05 and uploaded["state_dict"].keys()
    local = torch.load(ckpt.best_model_path, weights_only=False)  # what resuming reads: as the user saved it
    assert local["hyper_parameters"]["api_key"] == secret


FIT_AND_LIST_BACKEND_MODULES = r"""
import sys
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning_dualtrack import DualTrackLogger
from lightning_dualtrack.callbacks import RunDescription, RunIdsInCheckpoint, ThroughputMonitor
from tests.helpers import TinyModel, loaders, trainer

logger = DualTrackLogger(tracking_uri=sys.argv[1], wandb_mode="offline", save_dir=sys.argv[2], log_model=True, finalize_timeout=60)
callbacks = [ModelCheckpoint(dirpath=sys.argv[3], save_last=True), LearningRateMonitor(), RunDescription(), RunIdsInCheckpoint(), ThroughputMonitor()]
trainer(logger, max_steps=6, enable_checkpointing=True, callbacks=callbacks).fit(TinyModel(), *loaders())
print("BACKENDS", sorted({m.split(".")[0] for m in sys.modules if m.split(".")[0] in ("mlflow", "wandb")}))
print("RUN_DIR", logger.run_dir)
"""


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_a_fit_imports_neither_mlflow_nor_wandb_on_the_training_side(mlflow_server, tmp_path) -> None:
    """HTTP tracking URI, checkpoints uploaded, callbacks that do not export models: the training process
    never imports a backend (delivery process does); and what it logged is in MLflow."""
    import subprocess
    import sys
    from pathlib import Path

    from mlflow.tracking import MlflowClient

    repo = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(repo), os.environ.get("PYTHONPATH", "")) if p)}
    out = subprocess.run([sys.executable, "-c", FIT_AND_LIST_BACKEND_MODULES, mlflow_server.url, str(tmp_path / "runs"), str(tmp_path / "ckpt")],
                         env=env, cwd=tmp_path, capture_output=True, text=True, timeout=170)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "BACKENDS []" in out.stdout, out.stdout
    run_dir = Path(next(line.split(" ", 1)[1] for line in out.stdout.splitlines() if line.startswith("RUN_DIR")))
    rid = json.loads((run_dir / "state" / "mlflow.json").read_text())["identity"]["run_id"]
    client = MlflowClient(mlflow_server.url)
    assert len(client.get_metric_history(rid, "train/loss")) == 6
    assert [a.path for a in client.list_artifacts(rid, "checkpoints")]


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_the_run_has_the_same_readable_name_in_both_backends(mlflow_server, tmp_path) -> None:
    from mlflow.tracking import MlflowClient

    from lightning_dualtrack.sinks.wandb.runfile import read_runs

    names = {}
    for run_name in (None, "my experiment 1"):
        logger = DualTrackLogger(run_name=run_name, tracking_uri=mlflow_server.url, wandb_mode="offline", save_dir=tmp_path / "runs",
                                 log_system_info=False, finalize_timeout=60)
        logger.log_metrics({"x": 1.0}, step=0)
        logger.finalize("success")
        stored = json.loads((logger.run_dir / "run.json").read_text())["run_name"]
        mlflow_name = MlflowClient(mlflow_server.url).get_run(logger.mlflow_run_id).info.run_name
        names[run_name] = (stored, mlflow_name, read_runs(logger.run_dir, logger.run_id).name)
    generated = names[None][0]
    assert generated.endswith(f"-{generated.rsplit('-', 1)[1]}") and len(generated.split("-")) == 3
    assert names[None] == (generated,) * 3
    assert names["my experiment 1"] == ("my experiment 1",) * 3


def test_inputs_of_the_wrong_type_are_warnings_not_errors(tmp_path) -> None:
    logger = journal_logger(tmp_path)
    with pytest.warns(DualTrackWarning) as caught:
        logger.log_metrics([("loss", 1.0)], step=0)  # not a mapping
        logger.set_tags(["not", "a", "mapping"])
        logger.log_table("t", ["a"], 5)  # rows not iterable
        logger.log_confusion_matrix([[1]], 3)  # class names not iterable
        logger.log_artifact(None)
        logger.log_params(42)
    assert len(messages(caught)) == 6 and all(len(m) < 400 for m in messages(caught)), messages(caught)
    logger.log_metrics({"loss": 1.0}, step=1)
    assert [r["s"] for r in records(logger, "metrics")] == [1]
    with pytest.raises((TypeError, AttributeError, ValueError)):
        journal_logger(tmp_path / "strict", strict=True).log_table("t", ["a"], 5)


def test_register_model_without_waiting_answers_name_and_no_version(tmp_path) -> None:
    logger = journal_logger(tmp_path)
    mv = logger.register_model("clip_har", model_uri="runs:/last/model", wait=False)
    logger.finalize("success")
    assert (mv.name, mv.version) == ("clip_har", None)
    name, version = mv
    assert (name, version) == ("clip_har", None)
    assert records(logger, "register")[0]["name"] == "clip_har"
    assert journal_logger(tmp_path, mlflow=False).register_model("clip_har", wait=False) is None


def test_a_working_directory_changed_mid_run_changes_nothing_of_the_run(tmp_path, monkeypatch) -> None:
    """save_dir is relative; the script chdirs after the run started: payloads and the journal stay in the run's
    directory, nothing is written under the new working directory."""
    import numpy as np

    from lightning_dualtrack import DualTrackLogger

    monkeypatch.chdir(tmp_path)
    logger = DualTrackLogger(save_dir="runs", deliver=False, log_system_info=False, mlflow=False, wandb=False)
    logger.log_metrics({"a": 1.0}, step=0)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    logger.log_image(np.zeros((4, 4, 3), np.uint8), "img", step=1)
    logger.log_metrics({"a": 2.0}, step=1)
    logger.end_run()
    run_dir = tmp_path / "runs" / logger.run_id
    assert logger.run_dir == run_dir
    assert list(elsewhere.rglob("*")) == []
    assert any(p.suffix == ".png" for p in run_dir.rglob("*"))
    assert sum(1 for line in (run_dir / "journal.jsonl").read_text().splitlines() if '"metrics"' in line) == 2
