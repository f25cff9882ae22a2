"""The facade on its own (no shipper): what reaches the journal, policies, rank zero, pickling."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from lightning.pytorch.utilities.rank_zero import rank_zero_only

import lightning_dualtrack
from lightning_dualtrack import DualTrackLogger, DualTrackWarning
from lightning_dualtrack.journal import JournalReader


def journal_logger(tmp_path, **kwargs) -> DualTrackLogger:
    """A logger that only journals: no shipper, no backends (what reaches the journal is the subject)."""
    kwargs.setdefault("mlflow", False)
    kwargs.setdefault("wandb", False)
    return DualTrackLogger(save_dir=tmp_path / "runs", start_shipper=False, log_system_info=False, **kwargs)


def records(logger: DualTrackLogger, kind: str) -> list[dict]:
    return [r for r in JournalReader(logger.run_dir) if r["k"] == kind]


def test_public_api_is_exactly_these_names() -> None:
    assert sorted(lightning_dualtrack.__all__) == ["DualTrackLogger", "DualTrackWarning", "__version__", "create_tracker"]
    for name in lightning_dualtrack.__all__:
        assert getattr(lightning_dualtrack, name) is not None


def test_import_does_not_pull_in_lightning(tmp_path) -> None:
    """The shipper process imports the package: it must not pay for Lightning and torch."""
    import subprocess
    import sys

    code = "import sys, lightning_dualtrack.shipper; print('torch' in sys.modules, 'lightning' in sys.modules)"
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
    assert clone.run_id == logger.run_id and clone._journal is None


@pytest.mark.parametrize("bad", [{"experiment_name": ""}, {"log_model": "best"}, {"flush_interval": 0}, {"wandb_mode": "cloud"}])
def test_bad_arguments_are_named(tmp_path, bad) -> None:
    name = next(iter(bad))
    with pytest.raises(ValueError, match=name):
        DualTrackLogger(save_dir=tmp_path, **bad)


def test_wandb_mode_resolution(tmp_path, monkeypatch) -> None:
    assert DualTrackLogger(save_dir=tmp_path)._wandb_mode == "offline"  # no credentials in the test env
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert DualTrackLogger(save_dir=tmp_path)._wandb_mode == "online"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert DualTrackLogger(save_dir=tmp_path)._wandb_enabled is False


def test_tracking_uri_credentials_are_split_off(tmp_path) -> None:
    logger = journal_logger(tmp_path, tracking_uri="http://alice:pw123@127.0.0.1:5000")
    assert logger.tracking_uri == "http://127.0.0.1:5000"
    logger.log_metrics({"x": 1.0}, step=0)
    assert "pw123" not in (logger.run_dir / "run.json").read_text()
    assert logger._shipper_env()["MLFLOW_TRACKING_PASSWORD"] == "pw123"


def test_create_tracker(tmp_path) -> None:
    from lightning_dualtrack import create_tracker

    tracker = create_tracker(use_wandb=False, experiment_name="e", save_dir=tmp_path)
    assert tracker._wandb_enabled is False and tracker._mlflow_enabled and tracker.name == "e"
