"""push_to_hub at the boundary: a fake HfApi (spec'd, so a misspelt call fails) and the real files."""

from __future__ import annotations

import json
from unittest.mock import create_autospec

import pytest
from huggingface_hub import HfApi
from safetensors.torch import load_file

from lightning_dualtrack import DualTrackLogger
from lightning_dualtrack.har import ClipHarModule


@pytest.fixture
def fake_api():
    api = create_autospec(HfApi, instance=True)
    api.upload_folder.return_value.commit_url = "https://huggingface.co/me/har/commit/abc"
    return api


def test_push_to_hub_writes_weights_config_card_and_uploads(tmp_path, fake_api) -> None:
    model = ClipHarModule("dualtrack-tiny")
    logger = DualTrackLogger(save_dir=tmp_path / "runs", mlflow=False, wandb=False, deliver=False, log_system_info=False)
    url = logger.push_to_hub(model, "me/har", metrics={"val/acc": 0.9}, api=fake_api)
    assert url == "https://huggingface.co/me/har/commit/abc"
    fake_api.create_repo.assert_called_once_with("me/har", private=None, exist_ok=True)
    kwargs = fake_api.upload_folder.call_args.kwargs
    folder = logger.run_dir / "artifacts" / "hub"
    assert kwargs["repo_id"] == "me/har" and kwargs["folder_path"] == str(folder)
    weights = load_file(str(folder / "model.safetensors"))
    assert set(weights) == set(model.state_dict())
    config = json.loads((folder / "config.json").read_text())
    assert config["class_names"] == model.class_names and config["id2label"]["0"] == model.class_names[0]
    card = (folder / "README.md").read_text()
    assert "val/acc" in card and "using_laptop" in card


def test_failed_upload_is_a_warning_not_a_crash(tmp_path, fake_api) -> None:
    fake_api.upload_folder.side_effect = OSError("no network")
    logger = DualTrackLogger(save_dir=tmp_path / "runs", mlflow=False, wandb=False, deliver=False, log_system_info=False)
    with pytest.warns(UserWarning, match="no network"):
        assert logger.push_to_hub(ClipHarModule("dualtrack-tiny"), "me/har", api=fake_api) is None


def _card_snippet(folder) -> str:
    card = (folder / "README.md").read_text()
    return card.split("```python\n", 1)[1].split("```", 1)[0]


@pytest.fixture
def trained_folder(tmp_path):
    """A ClipHarModule whose weights differ from a fresh one's, pushed (to a fake Hub): the folder it wrote."""
    import torch

    torch.manual_seed(1)
    model = ClipHarModule("dualtrack-tiny", class_names=["walking", "sitting", "waving"], lr=0.01).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    model._preprocess_cfg["mean"] = [0.5, 0.5, 0.5]  # non-default preprocessing must come back too
    api = create_autospec(HfApi, instance=True)
    from lightning_dualtrack.hub import push_to_hub

    folder = tmp_path / "hub"
    push_to_hub(model, "me/har", folder, api=api)
    return model, folder


def _same_logits(a: ClipHarModule, b: ClipHarModule) -> None:
    import numpy as np
    import torch
    from PIL import Image

    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (80, 100, 3), dtype=np.uint8))
    xa, xb = a.preprocess(image).unsqueeze(0), b.preprocess(image).unsqueeze(0)
    torch.testing.assert_close(xa, xb, rtol=0, atol=0)
    with torch.no_grad():
        torch.testing.assert_close(a(xa), b(xb), rtol=0, atol=0)


def test_from_pretrained_local_folder_gives_the_same_model(trained_folder) -> None:
    model, folder = trained_folder
    loaded = ClipHarModule.from_pretrained(folder).eval()
    assert loaded.class_names == ["walking", "sitting", "waving"]
    assert loaded.preprocess_cfg["mean"] == [0.5, 0.5, 0.5] and loaded.hparams.lr == 0.01
    _same_logits(model, loaded)


def test_from_pretrained_repo_id_downloads_only_weights_and_config(trained_folder) -> None:
    model, folder = trained_folder
    api = create_autospec(HfApi, instance=True)
    api.snapshot_download.return_value = str(folder)
    loaded = ClipHarModule.from_pretrained("me/har", revision="main", api=api).eval()
    api.snapshot_download.assert_called_once()
    kwargs = api.snapshot_download.call_args.kwargs
    assert kwargs["repo_id"] == "me/har" and kwargs["revision"] == "main"
    assert set(kwargs["allow_patterns"]) == {"config.json", "model.safetensors"}
    _same_logits(model, loaded)


def test_model_card_snippet_runs_as_written(trained_folder, tmp_path, monkeypatch) -> None:
    import huggingface_hub
    import numpy as np
    from PIL import Image

    model, folder = trained_folder
    api = create_autospec(HfApi, instance=True)
    api.snapshot_download.return_value = str(folder)
    monkeypatch.setattr(huggingface_hub, "HfApi", lambda *a, **k: api)  # the Hub, served from the folder
    monkeypatch.chdir(tmp_path)
    Image.fromarray(np.full((90, 70, 3), 200, dtype=np.uint8)).save("photo.jpg")
    snippet = _card_snippet(folder)
    assert 'ClipHarModule.from_pretrained("me/har")' in snippet
    printed: list = []
    exec(compile(snippet, "README.md", "exec"), {"print": lambda *a: printed.append(a)})
    (name, prob), = printed
    assert name in model.class_names and 0 < prob <= 1


def test_from_pretrained_names_what_is_missing(tmp_path) -> None:
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        ClipHarModule.from_pretrained(tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("status", ["success", "failed"])
def test_push_to_hub_after_end_run_uploads_but_does_not_reopen_the_run(mlflow_server, tmp_path, fake_api, status) -> None:
    """Seed 1's ``create_tracker`` order: train, ``end_run()``, then ``push_to_hub``. The upload happens; the run
    keeps its end (MLflow status and end time, one W&B offline directory, the W&B exit code); a warning says
    the Hub link is not on the run."""
    import uuid

    from mlflow.tracking import MlflowClient

    from lightning_dualtrack import create_tracker
    from lightning_dualtrack.core.journal import JournalReader
    from lightning_dualtrack.logger import DualTrackWarning
    from lightning_dualtrack.sinks.wandb.runfile import find_run_files, read_runs

    experiment = f"hub_after_end_{uuid.uuid4().hex[:8]}"
    tracker = create_tracker(experiment_name=experiment, tracking_uri=mlflow_server.url, wandb_mode="offline",
                             save_dir=tmp_path / "runs", log_system_info=False)
    tracker.log_metrics({"val/acc": 0.9}, step=1)
    tracker.end_run(status)
    client = MlflowClient(mlflow_server.url)
    (before,) = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    records_before = len(list(JournalReader(tracker.run_dir)))

    with pytest.warns(DualTrackWarning, match=r"after end_run\(\).*stays ended.*NOT on its MLflow/W&B run"):
        url = tracker.push_to_hub(ClipHarModule("dualtrack-tiny"), "me/har", api=fake_api)

    assert url == "https://huggingface.co/me/har/commit/abc"
    assert fake_api.upload_folder.call_args.kwargs["folder_path"] == str(tracker.run_dir / "artifacts" / "hub")
    assert (tracker.run_dir / "artifacts" / "hub" / "model.safetensors").is_file()
    assert tracker._run.journal is None and tracker._run.finalized  # no new session
    assert len(list(JournalReader(tracker.run_dir))) == records_before
    from lightning_dualtrack.run.session import end_all_runs

    end_all_runs()  # what interpreter exit does: nothing for this run, it is ended
    (after,) = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    expected = "FINISHED" if status == "success" else "FAILED"
    assert (after.info.status, after.info.end_time) == (expected, before.info.end_time) and before.info.status == expected
    assert "hf.repo_url" not in after.data.tags
    assert len(find_run_files(tracker.run_dir, tracker.run_id)) == 1  # one W&B session, not a resumed second
    assert read_runs(tracker.run_dir, tracker.run_id).exit_code == (0 if status == "success" else 1)


@pytest.mark.slow
def test_push_to_hub_during_the_run_tags_both_backends(mlflow_server, tmp_path, fake_api) -> None:
    import uuid

    from mlflow.tracking import MlflowClient

    from lightning_dualtrack import create_tracker
    from lightning_dualtrack.sinks.wandb.runfile import read_runs

    experiment = f"hub_during_{uuid.uuid4().hex[:8]}"
    tracker = create_tracker(experiment_name=experiment, tracking_uri=mlflow_server.url, wandb_mode="offline",
                             save_dir=tmp_path / "runs", log_system_info=False)
    tracker.push_to_hub(ClipHarModule("dualtrack-tiny"), "me/har", api=fake_api)
    tracker.end_run()
    client = MlflowClient(mlflow_server.url)
    (run,) = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    assert run.data.tags["hf.repo_url"] == "https://huggingface.co/me/har/commit/abc"
    assert "hub/model.safetensors" in {a.path for a in client.list_artifacts(run.info.run_id, "hub")}
    assert "hf.repo_id:me/har" in read_runs(tracker.run_dir, tracker.run_id).tags
