"""MLflow's own conventions, without a server: the standard tags from the journal's generic metadata, the run's
description (``mlflow.note.content``) from what delivery folds out of the journal, experiment tags from the logger's
argument, and the export's parity checks as the logged model's params."""

from __future__ import annotations

import json
from pathlib import Path
from unittest import mock

import pytest

from lightning_dualtrack import DualTrackLogger, DualTrackWarning
from lightning_dualtrack.core.journal import Entry
from lightning_dualtrack.core.summary import RunSummary, better, stage_of
from lightning_dualtrack.run import metadata
from lightning_dualtrack.sinks.base import RunContext
from lightning_dualtrack.sinks.mlflow.conventions import description, standard_tags
from lightning_dualtrack.sinks.mlflow.models import model_params
from lightning_dualtrack.sinks.mlflow.rest import RestApi
from lightning_dualtrack.sinks.mlflow.sink import MlflowSink

CHECKPOINT = {"k": "model", "checkpoint": True, "path": "artifacts/checkpoints/a.ckpt", "ap": "checkpoints",
              "metadata": {"score": 0.9, "ModelCheckpoint": {"monitor": "val/acc", "mode": "max", "save_top_k": 2}}}


def _summary(*records: dict) -> RunSummary:
    summary = RunSummary()
    for rec in records:
        summary.add(rec)
    return summary


def _metrics(step: int, **values: float) -> dict:
    return {"k": "metrics", "t": 1, "s": step, "v": {k.replace("__", "/"): v for k, v in values.items()}}


def test_evaluation_metrics_are_recognised_by_their_stage_and_direction_by_their_name() -> None:
    assert [stage_of(k) for k in ("val/acc", "val_loss", "validation/f1", "test/acc", "train/loss", "valley")] == [
        "val", "val", "validation", "test", None, None]
    assert (better("val/loss"), better("val/acc"), better("val_error_rate"), better("test/f1_macro")) == ("min", "max", "min", "max")


def test_the_summary_keeps_the_best_the_last_and_what_the_checkpoint_callback_monitors() -> None:
    records = [_metrics(1, val__acc=0.5, val__loss=0.9, train__loss=3.0), _metrics(2, val__acc=0.8, val__loss=0.7),
               _metrics(3, val__acc=0.7, val__loss=0.8), CHECKPOINT, {"k": "end", "status": "success"}]
    summary = _summary(*records, *records)  # a retried batch is read twice: nothing changes
    assert summary.best("val/acc") == (0.8, 2, "max") and summary.best("val/loss") == (0.7, 2, "min")
    assert summary.last("val/acc") == (0.7, 3)
    assert summary.monitor == ("val/acc", "max") and summary.status == "success"
    assert "train/loss" not in summary.metrics  # training figures are not what a run is summed up by
    assert not summary.user_description
    assert _summary({"k": "tags", "v": {"mlflow.note.content": "mine"}}).user_description


def test_the_description_names_model_data_best_metric_tests_and_the_other_backend() -> None:
    params = {"k": "params", "v": {"model/class": "ClipHarModule", "model/model_name": "dualtrack-tiny",
                                   "model/params_total": 1_234_567, "data/source": "synthetic", "data/num_classes": 15,
                                   "data/num_samples/total": 1200, "data/num_samples/train": 840, "data/batch_size": 32}}
    summary = _summary(params, _metrics(10, val__acc=0.9), _metrics(20, val__acc=0.95), CHECKPOINT,
                       _metrics(21, test__acc=0.93, test__loss=0.2), {"k": "end", "status": "success"})
    wandb = {"title": "W&B", "url": None, "where": "/runs/abc/wandb/offline-run-1-abc",
             "upload": "dualtrack sync --wandb-upload /runs/abc"}
    text = description(summary, run_name="brisk-otter-abc", run_dir="/runs/abc", others=[wandb])
    assert text.startswith("**brisk-otter-abc**")
    assert "- **Model**: **ClipHarModule**, `dualtrack-tiny`, 1.23 M parameters" in text
    assert "- **Data**: synthetic, 15 classes, 1200 samples (train 840), batch 32" in text
    assert "- **Best val/acc**: 0.95 at step 20 (max; the checkpoint callback's monitor)" in text
    assert "- **Test**: test/acc 0.93 · test/loss 0.2" in text
    assert "- **W&B**: `/runs/abc/wandb/offline-run-1-abc` (to upload: `dualtrack sync --wandb-upload /runs/abc`)" in text
    assert "`/runs/abc`, last session: success" in text
    online = description(summary, run_name=None, run_dir="/r", others=[{"title": "W&B", "url": "https://wandb.ai/e/p/runs/abc"}])
    assert "- **W&B**: [https://wandb.ai/e/p/runs/abc](https://wandb.ai/e/p/runs/abc)" in online


def test_without_a_monitored_metric_the_accuracy_like_one_comes_first() -> None:
    summary = _summary(_metrics(1, val__loss=0.5, val__acc=0.6, val__f1__calling=0.1), _metrics(2, val__loss=0.4))
    lines = [line for line in description(summary, run_name=None, run_dir="/r").splitlines() if "Best" in line]
    assert lines == ["- **Best val/acc**: 0.6 at step 1 (max)", "- **Best val/loss**: 0.4 at step 2 (min)"]


def test_a_long_description_fits_mlflows_tag_limit() -> None:
    summary = _summary({"k": "params", "v": {"model/class": "M" * 9000}})
    assert len(description(summary, run_name=None, run_dir="/r")) == 8000


def test_mlflows_standard_tags_come_from_the_generic_metadata() -> None:
    meta = {"dualtrack.user": "ana", "dualtrack.entry_point": "/src/train.py", "dualtrack.git_commit": "abc123",
            "dualtrack.host": "h"}
    assert standard_tags(meta) == {"mlflow.user": "ana", "mlflow.source.name": "/src/train.py",
                                   "mlflow.source.type": "LOCAL", "mlflow.source.git.commit": "abc123"}
    assert standard_tags({"lr": "0.1"}) == {}


def test_the_metadata_names_the_user_and_the_script(tmp_path: Path, monkeypatch) -> None:
    script = tmp_path / "train.py"
    script.write_text("")
    monkeypatch.chdir(tmp_path)
    meta = metadata.collect(["train.py", "--lr", "0.1", "--api-key=abc"])
    assert meta["entry_point"] == str(script) and meta["user"]
    assert "abc" not in meta["command"]
    assert metadata.entry_point(["-c"]) is None


def _sink(tmp_path: Path) -> tuple[MlflowSink, mock.MagicMock]:
    ctx = RunContext(tmp_path, {"run_id": "abc", "experiment_name": "x", "run_name": "r",
                                "mlflow": {"enabled": True, "tracking_uri": "http://127.0.0.1:9",
                                           "experiment_tags": {"task": "demo"}}})
    sink = MlflowSink(ctx)
    sink.api = mock.create_autospec(RestApi, instance=True)
    sink.run_id, sink.experiment_id = "mlflow-run", "7"
    return sink, sink.api


def test_the_sink_adds_mlflows_standard_tags_beside_the_metadata(tmp_path: Path) -> None:
    sink, api = _sink(tmp_path)
    sink.deliver([Entry(10, {"k": "tags", "t": 1, "v": {"dualtrack.user": "ana", "dualtrack.entry_point": "/t.py"}})])
    (call,) = api.log_batch.call_args_list
    assert dict(call.kwargs["tags"]) == {"dualtrack.user": "ana", "dualtrack.entry_point": "/t.py",
                                         "mlflow.user": "ana", "mlflow.source.name": "/t.py", "mlflow.source.type": "LOCAL"}


def test_the_sink_writes_the_description_unless_the_user_wrote_one(tmp_path: Path) -> None:
    sink, api = _sink(tmp_path)
    sink.describe(_summary(_metrics(1, val__acc=0.5)), [])
    (call,) = api.log_batch.call_args_list
    (key, text), = call.kwargs["tags"]
    assert key == "mlflow.note.content" and "Best val/acc" in text
    api.reset_mock()
    sink.describe(_summary({"k": "tags", "v": {"mlflow.note.content": "mine"}}), [])
    api.log_batch.assert_not_called()


def test_the_sink_sets_the_experiment_tags(tmp_path: Path) -> None:
    sink, api = _sink(tmp_path)
    sink._set_experiment_tags()
    api.set_experiment_tag.assert_called_once_with("7", "task", "demo")


def test_experiment_tags_from_the_logger_argument_in_run_json_bad_keys_named(tmp_path: Path) -> None:
    with pytest.warns(DualTrackWarning, match=r"mlflow_experiment_tags 'a/\.\./b' is stored as 'a/__/b'"):
        logger = DualTrackLogger(save_dir=tmp_path, deliver=False, log_system_info=False, wandb=False,
                                 mlflow_experiment_tags={"a/../b": 1, "token": "ghp_" + "a" * 36})
    logger.log_metrics({"x": 1.0}, step=0)
    logger.finalize("success")
    tags = json.loads((logger.run_dir / "run.json").read_text())["mlflow"]["experiment_tags"]
    assert tags["a/__/b"] == "1" and "a" * 36 not in tags["token"]  # a credential-shaped value is masked
    with pytest.raises(ValueError, match=r"`mlflow_experiment_tags`.*\['task'\]"):
        DualTrackLogger(save_dir=tmp_path, deliver=False, wandb=False, mlflow_experiment_tags=["task"])


def test_the_exports_parity_checks_are_params_of_the_logged_model() -> None:
    params = model_params({"class_names": ["a", "b"], "parity": {"export/pt2_max_abs_diff": 1.5e-6}})
    assert params["export/pt2_max_abs_diff"] == "1.5e-06" and params["num_classes"] == "2"

