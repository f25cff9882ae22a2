"""Classification report: confusion matrix, per-class precision/recall/F1, accuracy, macro/weighted F1.

How the numbers are made:

* ``validation_step`` / ``test_step`` return ``{"preds": logits_or_probs_or_labels, "target": labels}``
  (key names are arguments). The callback arg-maxes the scores once and adds the batch to a
  confusion matrix, a torchmetrics ``MulticlassConfusionMatrix`` that lives on the module's device and
  is updated with ``scatter_add_``. torchmetrics' own update (and every stat-score metric:
  precision, recall, F1, accuracy) counts with ``torch.bincount``, which on CUDA reads the input's
  min and max back to the host, i.e. waits for the GPU at every batch, even with
  ``validate_args=False``. Nothing in this per-batch path reads a value back to the host.
* Precision, recall, F1 per class, accuracy and macro/weighted F1 are derived from the synced matrix
  at epoch end (:func:`lightning_dualtrack.plots.per_class_metrics` / ``summary_metrics``, equal to
  torchmetrics' values with its default ``zero_division=0``; tested). The state is a sum-reduced
  count, so torchmetrics' sync at ``compute()`` (every rank, epoch end) is exact. **Sampler padding**: Lightning's default ``DistributedSampler`` pads the evaluation set
  with duplicates so every rank gets the same number of samples; the duplicates would be counted
  twice. Use ``Trainer(use_distributed_sampler=False)`` with :func:`unpadded_eval_sampler` for the
  validation/test loaders (each rank gets a disjoint share, off by at most one sample). The callback
  warns once when it sees a padding sampler. With uneven shares, do not ``self.log(...,
  sync_dist=True)`` per step in ``validation_step`` (ranks would run different numbers of collectives).
* Example predictions: a top-K buffer of (thumbnail, true, predicted, confidence) kept on the device
  and merged per batch with ``cat`` + ``topk``; mistakes rank above correct predictions, each group
  by confidence, so the table starts with the most confident mistakes. The buffer is rank-local:
  in DDP the table shows rank 0's share.
* At the end of every ``every_n_epochs``-th validation epoch (not the sanity check) and of each test
  run: scalars on every logger (``{stage}/acc``, ``{stage}/f1_macro``, ``{stage}/f1_weighted``, and for
  validation only ``val/{precision,recall,f1}/<class>``: a series over epochs; test's per-class values are one
  point each and go to the per-class table, the report and the chart instead) at ``trainer.global_step``, the summary scalars also in
  ``trainer.callback_metrics`` (so ``ModelCheckpoint(monitor="val/f1_macro")`` works), and for
  loggers that have the richer methods (``DualTrackLogger``, or anything with ``log_figure`` & co.):
  the confusion matrix (``log_confusion_matrix``: JSON, CSV, counts and row-normalised PNGs, W&B's
  interactive matrix; a logger without that method gets both figures through ``log_figure``), a
  per-class table, the report as JSON and CSV artifacts (file names carry the stage and the zero-padded epoch
  and step of the weights evaluated -- for ``test(ckpt_path=...)`` the checkpoint's, as in its file name -- so
  nothing is overwritten and they sort in order; titles say the same), and -- by default only for the last validation of a fit and for
  ``test()``/``validate()``, see ``figures`` -- a per-class bar chart and the table of example
  predictions. A failing rich call is reported as a warning and does not stop training.

Class names come from the ``class_names`` argument, else ``pl_module.class_names``, else
``trainer.datamodule.class_names``, else ``"0"``, ``"1"``, ...
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.rank_zero import rank_zero_warn
from torch.utils.data import Dataset, DistributedSampler, Sampler, SequentialSampler
from torchmetrics.classification import MulticlassConfusionMatrix

from lightning_dualtrack.callbacks._logging import call_rich, is_rich
from lightning_dualtrack.plots import (
    PER_CLASS_COLUMNS,
    confusion_matrix_figure,
    per_class_bar_figure,
    per_class_csv,
    per_class_metrics,
    summary_metrics,
)

__all__ = ["ClassificationReport", "DeviceConfusionMatrix", "unpadded_eval_sampler"]

_PER_CLASS_STATS = ("precision", "recall", "f1")
_SUMMARY = ("acc", "f1_macro", "f1_weighted")
_IMAGE_KEYS = ("image", "images", "pixel_values", "x", "input", "inputs")
_UNSAFE_KEY_CHARS = re.compile(r"[^\w.\- ]")
EXAMPLE_COLUMNS = ("image", "true", "predicted", "confidence", "correct")


def _call(logger: Any, method: str, *args: Any, **kwargs: Any) -> None:
    call_rich("ClassificationReport", logger, method, *args, **kwargs)


def unpadded_eval_sampler(
    dataset: Dataset, num_replicas: int | None = None, rank: int | None = None
) -> Sampler:
    """A sampler for validation/test loaders that gives each rank a disjoint share and pads nothing.

    Use it with ``Trainer(use_distributed_sampler=False)``: in ``val_dataloader()`` /
    ``test_dataloader()``, ``DataLoader(dataset, sampler=unpadded_eval_sampler(dataset), ...)``.
    Outside a distributed run it is a plain :class:`~torch.utils.data.SequentialSampler`.

    Example:
        >>> list(unpadded_eval_sampler(range(5), num_replicas=2, rank=1))
        [1, 3]
    """
    from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler

    if num_replicas is None:
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        num_replicas = torch.distributed.get_world_size() if distributed else 1
    if num_replicas <= 1:
        return SequentialSampler(dataset)
    if rank is None:
        rank = torch.distributed.get_rank()
    return UnrepeatedDistributedSampler(dataset, num_replicas=num_replicas, rank=rank, shuffle=False)


def _metric_key_names(class_names: Sequence[str]) -> list[str]:
    """Class names made safe for metric keys (MLflow's character set, no ``/``), kept unique."""
    keys: list[str] = []
    seen: set[str] = set()
    for index, name in enumerate(class_names):
        key = _UNSAFE_KEY_CHARS.sub("_", name).strip() or str(index)
        if key in seen:
            key = f"{key}_{index}"
        seen.add(key)
        keys.append(key)
    return keys


def _thumbnails(images: torch.Tensor, size: int) -> torch.Tensor:
    """``(N, C, H, W)`` images -> ``(N, C, h, w)`` uint8 with ``max(h, w) == size``, min-max scaled per image."""
    images = images.detach()
    is_uint8 = images.dtype == torch.uint8
    height, width = images.shape[-2:]
    scale = size / max(height, width)
    if scale < 1:
        out_size = (max(1, round(height * scale)), max(1, round(width * scale)))
        images = F.interpolate(
            images.float(), size=out_size, mode="bilinear", antialias=True, align_corners=False
        )
    if is_uint8:  # already display values
        return images.round().clamp(0, 255).to(torch.uint8)
    images = images.float()
    low = images.amin(dim=(1, 2, 3), keepdim=True)
    high = images.amax(dim=(1, 2, 3), keepdim=True)
    return ((images - low) / (high - low).clamp_min(1e-12) * 255).round().to(torch.uint8)


class _TopKExamples:
    """The K highest-ranked predictions seen so far, kept on the device without host syncs.

    The buffer holds the K candidates' input images as they came (a copy of K images, not the
    batches); thumbnails are made once, from the final K, in :meth:`rows`.
    """

    def __init__(self, k: int, thumbnail_size: int, ignore_index: int | None = None) -> None:
        self.k = k
        self.thumbnail_size = thumbnail_size
        self.ignore_index = ignore_index
        self.reset()

    #: candidates of this many batches are merged at once (fewer small ops per batch)
    MERGE_EVERY = 8

    def reset(self) -> None:
        self.score: torch.Tensor | None = None
        self.images: torch.Tensor | None = None
        self.target: torch.Tensor | None = None
        self.pred: torch.Tensor | None = None
        self.conf: torch.Tensor | None = None
        self._pending: list[tuple[torch.Tensor, ...]] = []

    def update(
        self, images: torch.Tensor, conf: torch.Tensor, pred: torch.Tensor, target: torch.Tensor
    ) -> None:
        # mistakes (score in [1, 2]) outrank correct predictions (score in [0, 1]); then by confidence
        score = conf + (pred != target).to(conf.dtype)
        if self.ignore_index is not None:  # ignored samples rank last and are dropped in rows()
            score = torch.where(target == self.ignore_index, torch.full_like(score, -1.0), score)
        top, index = score.topk(min(self.k, score.shape[0]))
        candidate = (top, images.detach().index_select(0, index), target[index], pred[index], conf[index])
        if self._pending and self._pending[0][1].shape[1:] != candidate[1].shape[1:]:
            self._merge()  # images of another size: settle what is pending first
        self._pending.append(candidate)
        if len(self._pending) >= self.MERGE_EVERY:
            self._merge()

    def _merge(self) -> None:
        parts = self._pending
        self._pending = []
        if not parts:
            return
        if (
            self.score is not None
            and self.images is not None
            and self.images.shape[1:] == parts[0][1].shape[1:]
        ):
            parts = [(self.score, self.images, self.target, self.pred, self.conf), *parts]
        merged = [torch.cat(column) for column in zip(*parts, strict=True)]
        keep = merged[0].topk(min(self.k, merged[0].shape[0])).indices
        self.score, self.images, self.target, self.pred, self.conf = (t.index_select(0, keep) for t in merged)

    def rows(self, class_names: Sequence[str]) -> list[list[Any]]:
        self._merge()
        if self.score is None or self.images is None:
            return []
        thumbs = _thumbnails(self.images, self.thumbnail_size).permute(0, 2, 3, 1).cpu().numpy()  # HWC uint8
        if thumbs.shape[-1] == 1:
            thumbs = thumbs[..., 0]
        target, pred, conf = self.target.tolist(), self.pred.tolist(), self.conf.tolist()
        keep = (self.score >= 0).tolist()
        return [
            [
                thumbs[i],
                class_names[target[i]],
                class_names[pred[i]],
                round(float(conf[i]), 6),
                target[i] == pred[i],
            ]
            for i in range(len(target))
            if keep[i]
        ]


class DeviceConfusionMatrix(MulticlassConfusionMatrix):
    """``MulticlassConfusionMatrix`` whose ``update`` never waits for the device.

    It counts with ``scatter_add_`` instead of ``torch.bincount`` (which syncs on CUDA) and does
    not validate its inputs: labels must lie in ``[0, num_classes)`` or equal ``ignore_index``.
    ``preds`` may be labels ``(N, ...)`` or scores ``(N, C, ...)`` (arg-maxed over dim 1).

    Example:
        >>> metric = DeviceConfusionMatrix(num_classes=3)
        >>> metric.update(torch.tensor([0, 2, 2]), torch.tensor([0, 1, 2]))
        >>> metric.compute().tolist()
        [[1, 0, 0], [0, 0, 1], [0, 0, 1]]
    """

    def __init__(self, num_classes: int, ignore_index: int | None = None) -> None:
        super().__init__(num_classes=num_classes, ignore_index=ignore_index, validate_args=False)

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        if preds.is_floating_point() and preds.ndim == target.ndim + 1:
            preds = preds.argmax(dim=1)
        preds = preds.reshape(-1).long()
        target = target.reshape(-1).long()
        index = target * self.num_classes + preds
        if self.ignore_index is None:
            counts = torch.ones_like(index)
        else:
            keep = target != self.ignore_index
            index = torch.where(keep, index, torch.zeros_like(index))
            counts = keep.long()
        self.confmat.view(-1).scatter_add_(0, index, counts.to(self.confmat.dtype))


@dataclass
class _StageState:
    metric: DeviceConfusionMatrix
    examples: _TopKExamples | None
    active: bool = False
    batches: int = 0
    warned: set[str] = field(default_factory=set)


def _default_image_fn(batch: Any) -> torch.Tensor | None:
    if isinstance(batch, torch.Tensor):
        return batch
    if isinstance(batch, Mapping):
        for key in _IMAGE_KEYS:
            if isinstance(batch.get(key), torch.Tensor):
                return batch[key]
        return None
    if isinstance(batch, (list, tuple)) and batch and isinstance(batch[0], torch.Tensor):
        return batch[0]
    return None


class ClassificationReport(Callback):
    """Confusion matrix and per-class metrics of validation (every N epochs) and test, in every logger.

    Args:
        num_classes: number of classes; default ``len(class_names)`` once names are resolved.
        class_names: names in class-index order (see the module docstring for the fallbacks).
        every_n_epochs: report validation every N epochs (the last epoch of a fit only if it is a multiple).
        preds_key: key of the scores (``(N, C)`` logits or probabilities) or labels (``(N,)``) in the
            step's output mapping.
        target_key: key of the ``(N,)`` integer targets in the step's output mapping.
        num_examples: size of the example-predictions table (0: none). Needs ``(N, C)`` scores.
        thumbnail_size: longest side of the thumbnails in that table, in pixels.
        image_fn: ``batch -> (N, C, H, W) tensor`` for the thumbnails; by default the batch itself, its
            first element, or its ``image``/``images``/``pixel_values``/``x`` entry.
        log_per_class_scalars: log ``{stage}/{precision,recall,f1}/<class>`` scalars.
        figures: when to log the images, which are drawn/encoded on the training thread: the per-class
            bar chart, the example-predictions table (thumbnails) and, for loggers without
            ``log_confusion_matrix``, the matrix figures. ``"end"`` (default): once at the end of fit
            from the last validation report, and at each ``test()``/``validate()`` report; ``"every"``:
            at every report; ``"never"``. A bar chart costs ~0.1-0.4 s of matplotlib and the thumbnails
            ~1 ms each, too much for every epoch of a short validation; the scalars, the per-class
            table, the JSON/CSV report and ``DualTrackLogger``'s matrix PNGs (drawn in its background
            process) are logged at every report regardless.
        ignore_index: a target value to leave out of the counts (e.g. ``-100``).
        stages: which of ``"val"`` and ``"test"`` to report.

    Example:
        >>> report = ClassificationReport(class_names=["cat", "dog"], every_n_epochs=2, num_examples=8)
        >>> report.every_n_epochs
        2
    """

    def __init__(
        self,
        num_classes: int | None = None,
        class_names: Sequence[str] | None = None,
        *,
        every_n_epochs: int = 1,
        preds_key: str = "preds",
        target_key: str = "target",
        num_examples: int = 16,
        thumbnail_size: int = 64,
        image_fn: Callable[[Any], torch.Tensor | None] | None = None,
        log_per_class_scalars: bool = True,
        figures: Literal["end", "every", "never"] = "end",
        ignore_index: int | None = None,
        stages: Sequence[str] = ("val", "test"),
    ) -> None:
        super().__init__()
        if num_classes is not None and (not isinstance(num_classes, int) or num_classes < 2):
            raise ValueError(
                f"Expected argument `num_classes` to be an integer larger than 1, but got {num_classes}"
            )
        if class_names is not None and num_classes is not None and len(class_names) != num_classes:
            raise ValueError(
                f"Expected argument `class_names` to have `num_classes` ({num_classes}) names, but got {len(class_names)}"
            )
        if not isinstance(every_n_epochs, int) or every_n_epochs < 1:
            raise ValueError(
                f"Expected argument `every_n_epochs` to be a positive integer, but got {every_n_epochs}"
            )
        if num_examples < 0:
            raise ValueError(f"Expected argument `num_examples` to be 0 or more, but got {num_examples}")
        unknown = set(stages) - {"val", "test"}
        if unknown:
            raise ValueError(
                f"Expected argument `stages` to contain only 'val' and 'test', but got {sorted(unknown)}"
            )
        self.num_classes = num_classes
        self.class_names = [str(name) for name in class_names] if class_names is not None else None
        self.every_n_epochs = every_n_epochs
        self.preds_key = preds_key
        self.target_key = target_key
        self.num_examples = num_examples
        self.thumbnail_size = thumbnail_size
        self.image_fn = image_fn or _default_image_fn
        self.log_per_class_scalars = log_per_class_scalars
        if figures not in ("end", "every", "never"):
            raise ValueError(
                f"Expected argument `figures` to be 'end', 'every' or 'never', but got {figures!r}"
            )
        self.figures = figures
        self.ignore_index = ignore_index
        self.stages = tuple(stages)
        self._states: dict[str, _StageState] = {}
        self._names: list[str] | None = None
        self._key_names: list[str] | None = None
        self._warned_padding: set[str] = set()
        #: the last report of each stage (plain Python values), for users and tests
        self.last_report: dict[str, dict[str, Any]] = {}
        self._last_examples: dict[str, list] = {}

    # ----------------------------------------------------------------- setup
    def _resolve_names(self, trainer: Trainer, pl_module: LightningModule) -> list[str]:
        if self._names is not None:
            return self._names
        names = self.class_names
        if names is None:
            names = getattr(pl_module, "class_names", None)
        if names is None:
            names = getattr(getattr(trainer, "datamodule", None), "class_names", None)
        num_classes = self.num_classes
        if names is None:
            num_classes = num_classes or getattr(pl_module, "num_classes", None)
            if num_classes is None:
                raise ValueError(
                    "ClassificationReport needs the classes: pass `num_classes` or `class_names`, or give the "
                    "LightningModule or the DataModule a `class_names` attribute"
                )
            names = [str(i) for i in range(num_classes)]
        names = [str(name) for name in names]
        if num_classes is not None and len(names) != num_classes:
            raise ValueError(
                f"Expected {num_classes} class names (`num_classes`), but the resolved `class_names` has {len(names)}"
            )
        if len(names) < 2:
            raise ValueError(f"Expected at least 2 classes, but got class names {names}")
        self._names = names
        self._key_names = _metric_key_names(names)
        return names

    def _state(self, stage: str, trainer: Trainer, pl_module: LightningModule) -> _StageState:
        state = self._states.get(stage)
        if state is None:
            names = self._resolve_names(trainer, pl_module)
            examples = (
                _TopKExamples(self.num_examples, self.thumbnail_size, self.ignore_index)
                if self.num_examples
                else None
            )
            state = _StageState(
                metric=DeviceConfusionMatrix(len(names), self.ignore_index), examples=examples
            )
            self._states[stage] = state
        state.metric.to(pl_module.device)
        return state

    def _warn_if_padded(self, trainer: Trainer, stage: str) -> None:
        if trainer.world_size <= 1 or stage in self._warned_padding:
            return
        loaders = trainer.val_dataloaders if stage == "val" else trainer.test_dataloaders
        if loaders is None:
            return
        if not isinstance(loaders, (list, tuple)):
            loaders = [loaders]
        for loader in loaders:
            sampler = getattr(loader, "sampler", None)
            batch_sampler = getattr(loader, "batch_sampler", None)
            if not isinstance(sampler, DistributedSampler):
                sampler = getattr(batch_sampler, "sampler", None)
            if not isinstance(sampler, DistributedSampler) or sampler.drop_last:
                continue
            padding = sampler.total_size - len(sampler.dataset)  # type: ignore[arg-type]
            if padding > 0:
                self._warned_padding.add(stage)
                rank_zero_warn(
                    f"ClassificationReport: the {stage} DistributedSampler pads the data with {padding} duplicate "
                    "samples, which the report will count twice. Use `Trainer(use_distributed_sampler=False)` and "
                    "`lightning_dualtrack.callbacks.unpadded_eval_sampler` for evaluation loaders."
                )
                return

    # ----------------------------------------------------------------- per batch
    def _start(self, stage: str, trainer: Trainer, pl_module: LightningModule, active: bool) -> None:
        if stage not in self.stages:
            return
        state = self._state(stage, trainer, pl_module)
        state.metric.reset()
        if state.examples is not None:
            state.examples.reset()
        state.batches = 0
        state.active = active
        if active:
            self._warn_if_padded(trainer, stage)

    def _update(self, stage: str, outputs: Any, batch: Any) -> None:
        state = self._states.get(stage)
        if state is None or not state.active:
            return
        if (
            not isinstance(outputs, Mapping)
            or self.preds_key not in outputs
            or self.target_key not in outputs
        ):
            if "outputs" not in state.warned:
                state.warned.add("outputs")
                rank_zero_warn(
                    f"ClassificationReport: expected the {stage} step to return a mapping with "
                    f"{self.preds_key!r} and {self.target_key!r}, but got {type(outputs).__name__}; skipping those batches"
                )
            return
        preds = outputs[self.preds_key].detach()
        target = outputs[self.target_key].detach()
        scores = preds.is_floating_point() and preds.ndim == target.ndim + 1
        labels = preds.argmax(dim=1) if scores else preds
        state.metric.update(labels, target)
        state.batches += 1
        if state.examples is not None and scores and preds.ndim == 2:
            images = self.image_fn(batch)
            if isinstance(images, torch.Tensor) and images.ndim == 4 and images.shape[0] == preds.shape[0]:
                state.examples.update(images, _confidence(preds), labels, target)

    # ----------------------------------------------------------------- epoch end
    def _finish(self, stage: str, trainer: Trainer, pl_module: LightningModule) -> None:
        state = self._states.get(stage)
        if state is None or not state.active:
            return
        state.active = False
        if state.batches == 0 and trainer.world_size == 1:
            return
        # compute() syncs the counts across ranks: every rank must get here
        matrix = state.metric.compute().cpu().numpy()
        state.metric.reset()
        summary = {
            name: value
            for name, value in summary_metrics(matrix).items()
            if name in _SUMMARY and not _logged_by_module(trainer, f"{stage}/{name}")
        }
        for name, value in summary.items():
            trainer.callback_metrics[f"{stage}/{name}"] = torch.tensor(value)
        if trainer.is_global_zero:
            examples = state.examples.rows(self._names) if state.examples is not None else []
            self._log_report(stage, trainer, matrix, summary, examples)
        if state.examples is not None:
            state.examples.reset()

    def _evaluated(self, stage: str, trainer: Trainer) -> tuple[int, int, str]:
        """Epoch and step of the weights this report evaluates, and how to say it in a title.

        Validation in a fit: the epoch being validated and the step so far (what the checkpoint saved at this
        validation is named after). ``test()``/``validate()``: the checkpoint they loaded (``ckpt_path``), read from
        the file, else the last epoch the fit completed: after a fit, ``current_epoch`` already counts one more.
        """
        if stage == "val" and trainer.state.fn == TrainerFn.FITTING:
            return trainer.current_epoch, trainer.global_step, f"epoch {trainer.current_epoch}, step {trainer.global_step}"
        ckpt = getattr(trainer, "ckpt_path", None)
        if ckpt:
            meta = _checkpoint_position(str(ckpt))
            if meta is not None:
                epoch, step = meta
                return epoch, step, f"checkpoint {Path(str(ckpt)).name}: epoch {epoch}, step {step}"
        epoch = max(trainer.current_epoch - 1, 0) if trainer.global_step > 0 else trainer.current_epoch
        return epoch, trainer.global_step, f"epoch {epoch}, step {trainer.global_step}"

    def _log_report(
        self, stage: str, trainer: Trainer, matrix: Any, summary: dict[str, float], examples: list
    ) -> None:
        names, key_names = self._names, self._key_names
        assert names is not None and key_names is not None
        step = trainer.global_step
        epoch, evaluated_step, evaluated = self._evaluated(stage, trainer)
        rows = per_class_metrics(matrix, names)
        scalars = {f"{stage}/{name}": value for name, value in summary.items()}
        # per-class series over epochs are worth a chart for validation only; test is one point per class, which
        # the per-class table, the JSON/CSV report and the chart hold (45 single-dot charts help nobody)
        if self.log_per_class_scalars and stage == "val":
            for stat in _PER_CLASS_STATS:
                for key, row in zip(key_names, rows, strict=True):
                    scalars[f"{stage}/{stat}/{key}"] = row[stat]
        report = {
            "stage": stage,
            "epoch": epoch,
            "step": evaluated_step,
            "evaluated": evaluated,
            "class_names": names,
            "confusion_matrix": matrix.tolist(),
            "summary": summary,
            "per_class": rows,
        }
        self.last_report[stage] = report
        stem = f"classification_report/{stage}_epoch{epoch:03d}_step{evaluated_step:07d}"
        for logger in trainer.loggers:
            logger.log_metrics(scalars, step=step)
            if not is_rich(logger):
                continue
            if callable(getattr(logger, "log_confusion_matrix", None)):
                # DualTrackLogger: JSON + CSV, counts and row-normalised PNGs (rendered off the
                # training thread), W&B's interactive matrix
                _call(
                    logger,
                    "log_confusion_matrix",
                    matrix,
                    names,
                    title=f"{stage} confusion matrix ({evaluated})",
                    step=step,
                    key=f"{stage}/confusion_matrix",
                )
            _call(
                logger,
                "log_table",
                key=f"{stage}/per_class",
                columns=list(PER_CLASS_COLUMNS),
                rows=[[row[column] for column in PER_CLASS_COLUMNS] for row in rows],
                step=step,
            )
            _call(logger, "log_dict", report, name=f"{stem}.json")
            _call(logger, "log_text", per_class_csv(rows), name=f"{stem}.csv")
        standalone = stage == "test" or trainer.state.fn != TrainerFn.FITTING  # test(), validate()
        if self.figures == "every" or (self.figures == "end" and standalone):
            self._log_figures(trainer, report, examples)
        else:  # kept for on_fit_end
            self._last_examples[stage] = examples

    def _log_figures(self, trainer: Trainer, report: dict[str, Any], examples: list) -> None:
        """The bar chart, the example thumbnails (and matrix figures for loggers that cannot draw them)."""
        stage, names, evaluated = report["stage"], report["class_names"], report["evaluated"]
        step = trainer.global_step
        matrix = report["confusion_matrix"]
        for logger in trainer.loggers:
            if not is_rich(logger):
                continue
            if examples:
                _call(
                    logger,
                    "log_table",
                    key=f"{stage}/predictions",
                    columns=list(EXAMPLE_COLUMNS),
                    rows=examples,
                    step=step,
                )
            if not callable(getattr(logger, "log_confusion_matrix", None)):
                title = f"{stage} confusion matrix ({evaluated})"
                for normalize, suffix in ((False, ""), (True, "_normalized")):
                    figure = confusion_matrix_figure(
                        matrix,
                        names,
                        normalize=normalize,
                        title=title + (" (row-normalised)" if normalize else ""),
                    )
                    _call(logger, "log_figure", figure, name=f"{stage}/confusion_matrix{suffix}", step=step)
            figure = per_class_bar_figure(
                report["per_class"], title=f"{stage} per-class metrics ({evaluated})"
            )
            _call(logger, "log_figure", figure, name=f"{stage}/per_class", step=step)

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        report = self.last_report.get("val")
        if self.figures == "end" and report is not None and trainer.is_global_zero:
            self._log_figures(trainer, report, self._last_examples.pop("val", []))

    # ----------------------------------------------------------------- hooks
    def _validation_due(self, trainer: Trainer) -> bool:
        if trainer.sanity_checking:
            return False
        if trainer.state.fn != TrainerFn.FITTING:  # trainer.validate(): always
            return True
        return (trainer.current_epoch + 1) % self.every_n_epochs == 0

    def on_validation_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._start("val", trainer, pl_module, active=self._validation_due(trainer))

    def on_validation_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self._update("val", outputs, batch)

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._finish("val", trainer, pl_module)

    def on_test_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._start("test", trainer, pl_module, active=True)

    def on_test_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self._update("test", outputs, batch)

    def on_test_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._finish("test", trainer, pl_module)


def _checkpoint_position(path: str) -> tuple[int, int] | None:
    """``(epoch, global_step)`` saved in a Lightning checkpoint, from its name (``epoch=9-step=270``) or file."""
    found = re.search(r"epoch=(\d+)-step=(\d+)", Path(path).name)
    if found:
        return int(found.group(1)), int(found.group(2))
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
        return int(ckpt["epoch"]), int(ckpt["global_step"])
    except Exception:  # noqa: BLE001 - a title falls back to the trainer's counters
        return None


def _logged_by_module(trainer: Trainer, key: str) -> bool:
    """Whether the LightningModule logs ``key`` itself in the running loop (then it is not logged twice)."""
    try:
        results = trainer._results  # Lightning's result collection of the active loop: "<hook>.<key>"
        return results is not None and any(name.split(".", 1)[-1] == key for name in results)
    except Exception:  # noqa: BLE001 - private API: when unsure, log it
        return False


def _confidence(preds: torch.Tensor) -> torch.Tensor:
    """Top-class probability of ``(N, C)`` scores; rows that already are probabilities are used as they are.

    The choice is made per batch on the device (``torch.where``), so it needs no host sync.
    """
    preds = preds.float()
    is_prob = ((preds >= 0) & (preds <= 1)).all() & ((preds.sum(dim=1) - 1).abs() < 1e-3).all()
    probs = torch.where(is_prob, preds, preds.softmax(dim=1))
    return probs.amax(dim=1)
