"""The logger's media calls: figures, images, tables, text, dicts, artifacts, confusion matrices, ``watch``.

A mixin of :class:`~lightning_dualtrack.logger.DualTrackLogger` (it uses the logger's ``_run``,
``_ensure_started``, ``_guarded`` and ``_append``), so that ``logger.py`` stays the Lightning adapter. The
argument forms of Lightning's ``WandbLogger`` (``log_image(key=, images=)``, ``log_table(data=, dataframe=)``,
``log_text(key=, ...)``) are accepted beside the tracker API's own.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from lightning.pytorch.utilities.rank_zero import rank_zero_only

from lightning_dualtrack.run import compat


class MediaLogging:
    """Payload-making log calls of the logger; each writes files into the run and appends one record."""

    _figure_counts: dict[str, int]
    _watcher: compat.Watcher | None

    @rank_zero_only
    @compat.guarded("log_figure")
    def log_figure(self, figure: Any, name: str, step: int | None = None, close: bool = True) -> None:
        """A matplotlib Figure (or PIL image / image array) as PNG: MLflow artifact and W&B image.

        The same ``name`` logged again without a ``step`` is kept too (numbered 1, 2, ... as its step)."""
        name = str(name)
        if name.lower().endswith(".png"):
            name = name[:-4]
        if step is None:
            seen = self._figure_counts.get(name, 0)
            self._figure_counts[name] = seen + 1
            step = seen or None
        self.log_image(figure, name, step=step, close=close)

    @rank_zero_only
    @compat.guarded("log_image")
    def log_image(
        self, image: Any = None, name: Any = None, step: int | None = None, caption: Any = None, close: bool = False,
        *, key: str | None = None, images: Any = None,
    ) -> None:
        """An image (PIL, HxW[xC] array, tensor or figure) as PNG. WandbLogger's ``log_image(key=, images=[...],
        step=, caption=[...])`` and ``log_image(key, [images])`` log each image as ``key`` (one) or ``key_0``..."""
        self._ensure_started()
        if key is not None or images is not None:
            given = images if images is not None else image
            if isinstance(caption, (list, tuple)) and isinstance(given, (list, tuple)) and len(caption) != len(given):
                self._run.messages.warn(f"log_image({str(key if key is not None else name)!r}): {len(given)} images but "
                                        f"{len(caption)} captions; images past the last caption have none, extra captions are ignored")
            for k, img, cap in compat.split_images(str(key if key is not None else name), given, caption):
                self._guarded("log_image", self._run.log_image, img, k, step, cap, close)
            return
        self._guarded("log_image", self._run.log_image, image, name, step, caption, close)

    @rank_zero_only
    @compat.guarded("log_table")
    def log_table(
        self, key: str, columns: Sequence[str] | None = None, rows: Sequence[Sequence[Any]] | None = None, step: int | None = None,
        *, data: Any = None, dataframe: Any = None,
    ) -> None:
        """A table: JSON artifact in MLflow, ``wandb.Table`` in W&B. Image cells (PIL/arrays) become images.
        WandbLogger's ``data=`` and ``dataframe=`` (pandas) are accepted."""
        self._ensure_started()
        table = self._guarded("log_table", compat.table_rows, columns, rows, data, dataframe)
        if table is not None:
            self._append(self._guarded("log_table", self._run.payloads.table, str(key), table[0], table[1], step))

    @rank_zero_only
    @compat.guarded("log_text")
    def log_text(
        self, text: Any = None, name: str | None = None, *, key: str | None = None, columns: Sequence[str] | None = None,
        data: Any = None, dataframe: Any = None, step: int | None = None,
    ) -> None:
        """A text file artifact (``name`` like ``notes/summary.txt``) in both backends; WandbLogger's
        ``log_text(key=, columns=, data=|dataframe=)`` is a table of text."""
        if key is not None:
            self.log_table(key, columns, None, step, data=data, dataframe=dataframe)
            return
        self._ensure_started()
        self._append(self._guarded("log_text", self._run.payloads.text, text, name))

    @rank_zero_only
    def watch(self, model: Any, log: str | None = "gradients", log_freq: int = 100, log_graph: bool = False) -> None:
        """WandbLogger's ``watch``: every ``log_freq`` steps, norm/mean/std of each parameter's gradient
        (``log="gradients"``), value (``"parameters"``) or both (``"all"``) as metrics in both backends, and their
        64-bin histograms in W&B (``gradients/<name>``, ``parameters/<name>``, as W&B's own ``watch`` names them).
        ``log_graph`` is not supported (ignored)."""
        self._watcher = compat.Watcher(model, log, log_freq, emit=self._append)

    @rank_zero_only
    @compat.guarded("log_dict")
    def log_dict(self, data: Mapping[str, Any], name: str) -> None:
        """A JSON artifact in both backends."""
        self._ensure_started()
        self._append(self._guarded("log_dict", self._run.payloads.dict, data, str(name)))

    @rank_zero_only
    @compat.guarded("log_artifact")
    def log_artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> None:
        """Copy a file or directory into the run and upload it to both backends."""
        self._ensure_started()
        self._append(self._guarded("log_artifact", self._run.payloads.artifact, path, artifact_path))

    @rank_zero_only
    @compat.guarded("log_confusion_matrix")
    def log_confusion_matrix(
        self, conf_matrix: Any, class_names: Sequence[str], title: str = "Confusion matrix", step: int | None = None, key: str = "confusion_matrix"
    ) -> None:
        """A confusion matrix: JSON + CSV + PNGs (counts, row-normalised) in MLflow; W&B's native chart."""
        self._ensure_started()
        self._append(self._guarded("log_confusion_matrix", self._run.payloads.confusion_matrix, conf_matrix, class_names, title, step, key))
