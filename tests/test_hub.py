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
    logger = DualTrackLogger(save_dir=tmp_path / "runs", mlflow=False, wandb=False, start_shipper=False, log_system_info=False)
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
    logger = DualTrackLogger(save_dir=tmp_path / "runs", mlflow=False, wandb=False, start_shipper=False, log_system_info=False)
    with pytest.warns(UserWarning, match="no network"):
        assert logger.push_to_hub(ClipHarModule("dualtrack-tiny"), "me/har", api=fake_api) is None
