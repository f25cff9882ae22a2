"""What a person sees in MLflow's own UI (issue 12): the run page rendered by a headless Chromium.

The assertions on stored data live in the other tests; this one checks that the UI shows them as
intended: the run's name in the header, the model's own metric groups on the *Model metrics* tab and
the logger's health figures only on the *System metrics* tab (``system/dualtrack/<sink>``).

Chromium comes from Debian (``apt-get install -y chromium``; ``.ci/run`` installs it when it can).
Without it the test is skipped with that reason, never silently.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from lightning.pytorch import LightningModule, Trainer
from torch.utils.data import DataLoader, TensorDataset

from lightning_dualtrack import DualTrackLogger

pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
# A chart section's title and its chart count, as MLflow 3.17's run page renders them.
SECTION = re.compile(r'white-space: pre;">([^<]+)</div><div[^>]*>\((\d+)\)</div>')


class _Tiny(LightningModule):
    def __init__(self, lr: float = 0.1) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.layer = torch.nn.Linear(8, 2)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = torch.nn.functional.cross_entropy(self.layer(x), y)
        self.log("train/loss", loss)
        self.log("train/acc", (self.layer(x).argmax(1) == y).float().mean())
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)

    def train_dataloader(self):
        g = torch.Generator().manual_seed(0)
        return DataLoader(TensorDataset(torch.randn(320, 8, generator=g), torch.randint(0, 2, (320,), generator=g)), batch_size=32)


def _render(url: str, screenshot: Path) -> str:
    """The page's DOM after MLflow's scripts ran (virtual time: the page's own timers, not ours)."""
    out = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=20000",
         "--window-size=1400,1000", f"--screenshot={screenshot}", "--dump-dom", url],
        capture_output=True, text=True, timeout=180,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


@pytest.mark.skipif(CHROMIUM is None, reason="no headless browser: `apt-get install -y chromium` (Debian) enables this check")
def test_run_page_shows_model_charts_first_and_health_under_system_metrics(mlflow_server, tmp_path: Path) -> None:
    logger = DualTrackLogger(experiment_name="ui_check", run_name="ui-check-run", tracking_uri=mlflow_server.url,
                             wandb_mode="offline", save_dir=str(tmp_path / "runs"))
    Trainer(max_epochs=2, logger=logger, enable_progress_bar=False, enable_checkpointing=False,
            enable_model_summary=False, log_every_n_steps=1).fit(_Tiny())
    run_id, experiment_id = logger.mlflow_run_id, logger.experiment_id
    assert run_id and experiment_id
    page = f"{mlflow_server.url}/#/experiments/{experiment_id}/runs/{run_id}"

    model_dom = _render(f"{page}/model-metrics", tmp_path / "model_metrics.png")
    assert "ui-check-run" in model_dom  # the run's name, as given, in the header
    model_sections = dict(SECTION.findall(model_dom))
    assert model_sections.get("train") == "2", model_sections  # train/loss and train/acc, grouped
    assert not [s for s in model_sections if "dualtrack" in s or s.startswith("system")], model_sections

    system_dom = _render(f"{page}/system-metrics", tmp_path / "system_metrics.png")
    system_sections = dict(SECTION.findall(system_dom))
    assert int(system_sections.get("system/dualtrack/mlflow", 0)) >= 1, system_sections
    assert (tmp_path / "model_metrics.png").stat().st_size > 10_000  # a real rendering, kept for a person to look at
