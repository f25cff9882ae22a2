"""Test doubles for the callback tests: a real Lightning ``Logger`` that records calls, and a tiny classifier.

``RecordingLogger`` has the rich methods of ``DualTrackLogger`` (same signatures as docs/CONTRACTS.md),
so the callbacks take their rich path. ``PlainLogger`` has only Lightning's API. Figures are rendered
to PNG bytes at call time (as the real logger does), so a test can check they render.
With ``dump_dir``, every call is also appended to ``dump_dir/calls.pkl`` (for ``ddp_spawn`` tests,
whose logger lives in a child process).
"""

from __future__ import annotations

import io
import os
import pickle
from typing import Any

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.loggers import Logger
from lightning.pytorch.utilities.rank_zero import rank_zero_only
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset


class PlainLogger(Logger):
    def __init__(self, dump_dir: str | None = None) -> None:
        super().__init__()
        self.metrics: list[tuple[dict[str, float], int | None]] = []
        self.params: list[dict[str, Any]] = []
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.dump_dir = dump_dir

    @property
    def name(self) -> str:
        return "recording"

    @property
    def version(self) -> str:
        return "0"

    def _record(self, method: str, **kwargs: Any) -> None:
        self.calls.append((method, kwargs))
        if self.dump_dir is not None:
            with open(os.path.join(self.dump_dir, "calls.pkl"), "ab") as handle:
                pickle.dump((method, kwargs), handle)

    @rank_zero_only
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.metrics.append((dict(metrics), step))
        self._record("log_metrics", metrics=dict(metrics), step=step)

    @rank_zero_only
    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        self.params.append(dict(params) if isinstance(params, dict) else vars(params))
        self._record("log_hyperparams", params=self.params[-1])

    # helpers for assertions
    def metric_values(self, key: str) -> list[tuple[int | None, float]]:
        return [(step, metrics[key]) for metrics, step in self.metrics if key in metrics]

    def all_metrics(self) -> dict[str, float]:
        merged: dict[str, float] = {}
        for metrics, _ in self.metrics:
            merged.update(metrics)
        return merged

    def calls_named(self, method: str) -> list[dict[str, Any]]:
        return [kwargs for name, kwargs in self.calls if name == method]


def _png(figure: Any) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


class RecordingLogger(PlainLogger):
    @rank_zero_only
    def log_figure(self, figure: Any, name: str, step: int | None = None) -> None:
        self._record("log_figure", figure=figure, name=name, step=step, png=_png(figure))

    @rank_zero_only
    def log_table(self, key: str, columns: Any, rows: Any, step: int | None = None) -> None:
        self._record("log_table", key=key, columns=list(columns), rows=[list(row) for row in rows], step=step)

    @rank_zero_only
    def log_text(self, text: str, name: str) -> None:
        self._record("log_text", text=text, name=name)

    @rank_zero_only
    def log_dict(self, data: Any, name: str) -> None:
        self._record("log_dict", data=data, name=name)

    @rank_zero_only
    def log_confusion_matrix(
        self,
        conf_matrix: Any,
        class_names: Any,
        title: str = "Confusion matrix",
        step: int | None = None,
        key: str = "confusion_matrix",
    ) -> None:
        self._record(
            "log_confusion_matrix",
            conf_matrix=conf_matrix,
            class_names=list(class_names),
            title=title,
            step=step,
            key=key,
        )


def read_dump(dump_dir: str) -> list[tuple[str, dict[str, Any]]]:
    calls = []
    path = os.path.join(dump_dir, "calls.pkl")
    with open(path, "rb") as handle:
        while True:
            try:
                calls.append(pickle.load(handle))
            except EOFError:
                return calls


class ImageDataset(Dataset):
    """Random 3x8x8 'images' whose class is decided by a fixed linear rule (learnable, deterministic)."""

    def __init__(self, n: int = 64, num_classes: int = 4, seed: int = 0, noise: float = 0.0) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, 3, 8, 8, generator=generator)
        rule = torch.randn(3 * 8 * 8, num_classes, generator=torch.Generator().manual_seed(1234))
        logits = self.x.flatten(1) @ rule + noise * torch.randn(n, num_classes, generator=generator)
        self.y = logits.argmax(dim=1)

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[index], self.y[index]


class TinyClassifier(LightningModule):
    """A linear classifier on flattened 3x8x8 inputs; validation/test steps return ``{"preds", "target"}``."""

    def __init__(
        self,
        num_classes: int = 4,
        class_names: list[str] | None = None,
        n_val: int = 64,
        n_train: int = 64,
        batch_size: int = 16,
        seed: int = 0,
        lr: float = 0.1,
        val_loader_fn: Any = None,
    ) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.model = nn.Linear(3 * 8 * 8, num_classes)
        self.num_classes = num_classes
        if class_names is not None:
            self.class_names = class_names
        self.n_val, self.n_train, self.batch_size, self.lr = n_val, n_train, batch_size, lr
        self.val_loader_fn = val_loader_fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.flatten(1))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = nn.functional.cross_entropy(self(x), y)
        self.log("train/loss", loss, on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> dict[str, torch.Tensor]:
        x, y = batch
        logits = self(x)
        self.log("val/loss", nn.functional.cross_entropy(logits, y), on_step=False, on_epoch=True)
        return {"preds": logits, "target": y}

    def test_step(self, batch: Any, batch_idx: int) -> dict[str, torch.Tensor]:
        x, y = batch
        return {"preds": self(x), "target": y}

    def configure_optimizers(self) -> Any:
        optimizer = torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9)
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
        return {"optimizer": optimizer, "lr_scheduler": scheduler}

    def train_dataloader(self) -> DataLoader:
        return DataLoader(
            ImageDataset(self.n_train, self.num_classes, seed=1), batch_size=self.batch_size, shuffle=True
        )

    def val_dataloader(self) -> DataLoader:
        dataset = ImageDataset(self.n_val, self.num_classes, seed=2, noise=3.0)
        if self.val_loader_fn is not None:
            return self.val_loader_fn(dataset, self.batch_size)
        return DataLoader(dataset, batch_size=self.batch_size)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(
            ImageDataset(self.n_val, self.num_classes, seed=3, noise=3.0), batch_size=self.batch_size
        )


def predictions(model: TinyClassifier, dataset: Dataset) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(logits, predicted labels, targets) of ``model`` on the whole dataset, in one eager pass."""
    loader = DataLoader(dataset, batch_size=len(dataset))
    x, y = next(iter(loader))
    with torch.no_grad():
        logits = model(x)
    return logits, logits.argmax(dim=1), y


__all__ = [
    "ImageDataset",
    "PlainLogger",
    "RecordingLogger",
    "TensorDataset",
    "TinyClassifier",
    "predictions",
    "read_dump",
]
