"""Pure functions behind the classification report: per-class tables and matplotlib figures.

No Trainer, no logger, no global pyplot state: figures are ``matplotlib.figure.Figure`` objects
rendered with Agg when saved, so nothing accumulates in pyplot's figure registry and no display is
needed. The logger (``DualTrackLogger.log_confusion_matrix``) and the callbacks share these.

Conventions:

* A confusion matrix is square, ``matrix[i, j]`` = number of samples of true class ``i`` predicted
  as class ``j`` (torchmetrics' and scikit-learn's convention).
* **0/0 policy** (torchmetrics' default ``zero_division=0``, scikit-learn's ``zero_division=0``):
  a precision, recall or F1 whose denominator is zero is ``0.0``. A class with no true samples is
  flagged ``absent=True`` in :func:`per_class_metrics`; :func:`summary_metrics` leaves classes that
  appear neither in the targets nor in the predictions out of macro averages (as torchmetrics does),
  and the weighted average weights by support, so absent classes weigh nothing there.
"""

from __future__ import annotations

import csv
import io
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

__all__ = [
    "confusion_matrix_figure",
    "learning_curve_figure",
    "per_class_bar_figure",
    "per_class_csv",
    "per_class_metrics",
    "summary_metrics",
]

PER_CLASS_COLUMNS = ("class", "precision", "recall", "f1", "support", "predicted", "absent")

#: above this many classes, cells carry no numbers (they would be unreadable and slow to draw)
ANNOTATE_MAX_CLASSES = 40
#: above this many classes, the axes show class indices instead of names
TICK_LABEL_MAX_CLASSES = 100

_STAGES = ("train", "val", "validation", "valid", "test", "predict")
_STAGE_SPLIT = re.compile(r"[/_]")


def _as_matrix(matrix: Any) -> np.ndarray:
    if hasattr(matrix, "detach"):  # torch.Tensor, without importing torch here
        matrix = matrix.detach().cpu().numpy()
    array = np.asarray(matrix)
    if array.ndim != 2 or array.shape[0] != array.shape[1] or array.shape[0] < 1:
        raise ValueError(f"Expected argument `matrix` to be a square 2-D array, but got shape {array.shape}")
    if not np.issubdtype(array.dtype, np.number):
        raise ValueError(f"Expected argument `matrix` to hold numbers, but got dtype {array.dtype}")
    if np.any(array < 0):
        raise ValueError(
            "Expected argument `matrix` to hold non-negative counts, but it has negative entries"
        )
    return array


def _class_names(class_names: Sequence[Any] | None, num_classes: int) -> list[str]:
    if class_names is None:
        return [str(i) for i in range(num_classes)]
    names = [str(name) for name in class_names]
    if len(names) != num_classes:
        raise ValueError(
            f"Expected argument `class_names` to have one name per class ({num_classes}), but got {len(names)}"
        )
    return names


def _safe_divide(num: np.ndarray, denom: np.ndarray) -> np.ndarray:
    num = num.astype(np.float64)
    denom = denom.astype(np.float64)
    out = np.zeros_like(num)
    np.divide(num, denom, out=out, where=denom != 0)
    return out


def _stat_scores(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    tp = np.diag(matrix).astype(np.float64)
    fp = matrix.sum(axis=0) - tp
    fn = matrix.sum(axis=1) - tp
    return tp, fp, fn


def per_class_metrics(matrix: Any, class_names: Sequence[Any] | None) -> list[dict[str, Any]]:
    """Precision, recall, F1 and support of each class, from a confusion matrix.

    Args:
        matrix: ``(C, C)`` counts, rows = true class, columns = predicted class (tensor, array or lists).
        class_names: ``C`` names, or ``None`` for ``"0"``, ``"1"``, ...

    Returns:
        One dict per class, in class order, with the keys ``class``, ``precision``, ``recall``, ``f1``
        (floats; ``0.0`` where the denominator is zero), ``support`` (true samples), ``predicted``
        (samples predicted as the class) and ``absent`` (``True`` when ``support == 0``).

    Example:
        >>> rows = per_class_metrics([[3, 1], [0, 0]], ["cat", "dog"])
        >>> rows[0]["precision"], rows[0]["recall"], rows[1]["f1"], rows[1]["absent"]
        (1.0, 0.75, 0.0, True)
    """
    array = _as_matrix(matrix)
    names = _class_names(class_names, array.shape[0])
    tp, fp, fn = _stat_scores(array)
    precision = _safe_divide(tp, tp + fp)
    recall = _safe_divide(tp, tp + fn)
    # 2tp / (2tp + fp + fn) equals the harmonic mean wherever both are defined, and is torchmetrics' formula
    f1 = _safe_divide(2 * tp, 2 * tp + fp + fn)
    support = array.sum(axis=1)
    predicted = array.sum(axis=0)
    return [
        {
            "class": names[i],
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "f1": float(f1[i]),
            "support": int(support[i]),
            "predicted": int(predicted[i]),
            "absent": bool(support[i] == 0),
        }
        for i in range(array.shape[0])
    ]


def summary_metrics(matrix: Any) -> dict[str, float]:
    """Accuracy and macro/weighted averages, as torchmetrics computes them, from a confusion matrix.

    Macro averages skip classes that occur neither in the targets nor in the predictions; weighted
    averages weight each class by its support. An empty matrix gives zeros.

    Example:
        >>> summary_metrics([[3, 1], [0, 0]])["acc"]
        0.75
    """
    array = _as_matrix(matrix)
    tp, fp, fn = _stat_scores(array)
    total = float(array.sum())
    support = tp + fn
    present = (tp + fp + fn) > 0

    def macro(score: np.ndarray) -> float:
        return float(score[present].mean()) if present.any() else 0.0

    def weighted(score: np.ndarray) -> float:
        return float((score * support).sum() / support.sum()) if support.sum() > 0 else 0.0

    precision = _safe_divide(tp, tp + fp)
    recall = _safe_divide(tp, tp + fn)
    f1 = _safe_divide(2 * tp, 2 * tp + fp + fn)
    return {
        "acc": float(tp.sum() / total) if total > 0 else 0.0,
        "precision_macro": macro(precision),
        "recall_macro": macro(recall),
        "f1_macro": macro(f1),
        "f1_weighted": weighted(f1),
    }


def per_class_csv(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] = PER_CLASS_COLUMNS) -> str:
    """The rows of :func:`per_class_metrics` as CSV text (header line first)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([row.get(column) for column in columns])
    return buffer.getvalue()


def _square_size(num_classes: int) -> float:
    return float(min(max(0.45 * num_classes + 3.0, 5.0), 22.0))


def _label_fontsize(num_classes: int) -> float:
    return float(min(10.0, max(4.0, 180.0 / max(num_classes, 1))))


def confusion_matrix_figure(
    matrix: Any,
    class_names: Sequence[Any] | None,
    normalize: bool = False,
    title: str = "Confusion matrix",
    *,
    annotate: bool | None = None,
    cmap: str = "Blues",
) -> Figure:
    """A heat map of a confusion matrix (rows: true class, columns: predicted class).

    Sized to the number of classes; class names are drawn on both axes (x labels rotated) up to
    ``TICK_LABEL_MAX_CLASSES`` classes, class indices beyond that. Cells carry their value up to
    ``ANNOTATE_MAX_CLASSES`` classes (zero cells are left blank).

    Args:
        matrix: ``(C, C)`` counts.
        class_names: ``C`` names, or ``None``.
        normalize: divide each row by its support (rows of absent classes stay 0), colour scale 0..1.
        title: axes title.
        annotate: force cell numbers on or off; by default on up to ``ANNOTATE_MAX_CLASSES`` classes.
        cmap: matplotlib colour map name.

    Example:
        >>> fig = confusion_matrix_figure([[5, 1], [2, 7]], ["cat", "dog"], normalize=True)
        >>> fig.axes[0].get_title()
        'Confusion matrix'
    """
    counts = _as_matrix(matrix)
    num_classes = counts.shape[0]
    names = _class_names(class_names, num_classes)
    if normalize:
        values = _safe_divide(counts, counts.sum(axis=1, keepdims=True))
        vmax = 1.0
    else:
        values = counts.astype(np.float64)
        vmax = max(float(values.max()), 1.0)
    if annotate is None:
        annotate = num_classes <= ANNOTATE_MAX_CLASSES

    size = _square_size(num_classes)
    fig = Figure(figsize=(size + 1.2, size), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    image = ax.imshow(values, cmap=cmap, vmin=0.0, vmax=vmax, interpolation="nearest", aspect="equal")
    colorbar = fig.colorbar(image, ax=ax, fraction=0.046, pad=0.02)
    colorbar.set_label("fraction of true class" if normalize else "count")
    ax.set_title(title)

    if num_classes <= TICK_LABEL_MAX_CLASSES:
        fontsize = _label_fontsize(num_classes)
        ticks = np.arange(num_classes)
        ax.set_xticks(ticks, labels=names, rotation=45, ha="right", rotation_mode="anchor", fontsize=fontsize)
        ax.set_yticks(ticks, labels=names, fontsize=fontsize)
        ax.set_xlabel("predicted class")
        ax.set_ylabel("true class")
    else:
        ax.set_xlabel("predicted class (index)")
        ax.set_ylabel("true class (index)")

    if annotate:
        fontsize = min(10.0, max(5.0, 120.0 / num_classes))
        for i, j in zip(*np.nonzero(values), strict=True):
            value = values[i, j]
            text = f"{value:.2f}" if normalize else f"{int(counts[i, j])}"
            color = "white" if value > 0.5 * vmax else "black"
            ax.text(j, i, text, ha="center", va="center", color=color, fontsize=fontsize)
    return fig


#: above this many classes, the per-class chart is a heat table (one row per class) instead of grouped bars
BAR_MAX_CLASSES = 40


def _class_label(row: Mapping[str, Any], index: int) -> str:
    support = row.get("support")
    mark = "*" if row.get("absent") else ""
    return f"{row.get('class', index)}{mark}" + (f" (n={support})" if support is not None else "")


def per_class_bar_figure(
    rows: Sequence[Mapping[str, Any]],
    metric_names: Sequence[str] = ("precision", "recall", "f1"),
    title: str = "Per-class metrics",
) -> Figure:
    """Per-class metrics (the rows of :func:`per_class_metrics`) as a chart a person can read at 15 or 100 classes.

    Up to ``BAR_MAX_CLASSES`` classes: grouped bars, one group per class labelled ``name (n=support)``, the
    legend above the axes (clear of the bars). Up to ``TICK_LABEL_MAX_CLASSES``: a heat table, one row per class
    (``name (n=support)``), one column per metric, the value printed in each cell. Beyond: a step line per metric
    over class indices. Classes flagged ``absent`` are marked ``*``.

    Example:
        >>> rows = per_class_metrics([[3, 1], [0, 2]], ["cat", "dog"])
        >>> len(per_class_bar_figure(rows).axes[0].patches)
        6
    """
    if not metric_names:
        raise ValueError("Expected argument `metric_names` to name at least one metric, but got none")
    num_classes = len(rows)
    labels = [_class_label(row, i) for i, row in enumerate(rows)]
    values = np.array([[float(row.get(m, 0.0)) for m in metric_names] for row in rows]).reshape(num_classes, -1)
    if BAR_MAX_CLASSES < num_classes <= TICK_LABEL_MAX_CLASSES:
        height = 0.22 * num_classes + 1.6
        fig = Figure(figsize=(2.2 + 1.3 * len(metric_names) + 0.06 * max(map(len, labels)), height), dpi=100,
                     layout="constrained")
        ax = fig.add_subplot()
        image = ax.imshow(values, aspect="auto", cmap="RdYlGn", vmin=0.0, vmax=1.0, interpolation="nearest")
        for i in range(num_classes):
            for k in range(len(metric_names)):
                ax.text(k, i, f"{values[i, k]:.2f}", ha="center", va="center", fontsize=7)
        ax.set_yticks(np.arange(num_classes), labels=labels, fontsize=7)
        ax.set_xticks(np.arange(len(metric_names)), labels=list(metric_names))
        ax.xaxis.tick_top()
        ax.set_ylabel("class (n = true samples)")
        ax.set_title(title)
        fig.colorbar(image, ax=ax, shrink=0.3, label="score", location="bottom")
        return fig
    width = float(min(max(0.45 * num_classes * max(len(metric_names), 1) / 3 + 3.0, 6.0), 24.0))
    fig = Figure(figsize=(width, 5.0), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    positions = np.arange(num_classes)
    bar_width = 0.8 / len(metric_names)
    for k, metric in enumerate(metric_names):
        if num_classes <= BAR_MAX_CLASSES:
            ax.bar(positions + (k - (len(metric_names) - 1) / 2) * bar_width, values[:, k], bar_width, label=metric)
        else:  # thousands of bars are slow to draw and unreadable: a step line per metric
            ax.plot(positions, values[:, k], drawstyle="steps-mid", linewidth=0.7, label=metric)
    ax.set_ylim(0.0, 1.0)
    ax.set_ylabel("score")
    ax.grid(axis="y", alpha=0.3)
    if num_classes <= BAR_MAX_CLASSES:
        ax.set_xticks(positions, labels=labels, rotation=45, ha="right", rotation_mode="anchor",
                      fontsize=_label_fontsize(num_classes))
        ax.set_xlim(-0.6, num_classes - 0.4)
    else:
        ax.set_xlabel("class (index)")
    # above the axes, right-aligned, under the title: never over a bar
    ax.legend(loc="lower right", bbox_to_anchor=(1.0, 1.0), fontsize="small", ncols=len(metric_names), frameon=False)
    ax.set_title(title, loc="left")
    if any(row.get("absent") for row in rows):
        ax.text(0.0, -0.02, "* no true samples", transform=ax.transAxes, fontsize="small", va="top", ha="right")
    return fig


def _split_stage(key: str) -> tuple[str, str]:
    parts = _STAGE_SPLIT.split(key, maxsplit=1)
    if len(parts) == 2 and parts[0].lower() in _STAGES and parts[1]:
        return parts[0], parts[1]
    return "", key


def _is_lr(name: str) -> bool:
    return name.startswith("lr-") or name == "lr" or name.endswith("/lr") or name.startswith("lr/")


def learning_curve_figure(
    history: Mapping[str, Sequence[tuple[float, float]]],
    xlabel: str = "step",
    title: str = "Learning curves",
) -> Figure:
    """One panel per metric, one line per stage: ``train/loss`` and ``val/loss`` share the panel ``loss``.

    Nothing is drawn twice: Lightning's ``<key>_epoch`` twin of a metric logged on step and epoch joins ``<key>``
    (the epoch value wins), learning rates (``lr-<Optimizer>/<group>``, LearningRateMonitor's keys) share one
    panel in which groups with identical schedules are one line, and panels with identical series are drawn once
    (titled with all their names). Each panel's y axis is labelled with its metric.

    Args:
        history: metric key -> ``[(x, value), ...]``; a key's stage is a leading ``train``/``val``/
            ``test`` segment separated by ``/`` or ``_``. Non-finite values are skipped.
        xlabel: label of the x axis (``step`` or ``epoch``).
        title: figure title.

    Example:
        >>> fig = learning_curve_figure({"train/loss": [(0, 1.0), (1, 0.5)], "val/loss": [(1, 0.7)]})
        >>> [ax.get_title() for ax in fig.axes]
        ['loss']
    """
    panels: dict[str, dict[str, list[tuple[float, float]]]] = {}
    lr_lines: dict[str, list[tuple[float, float]]] = {}
    for key in sorted(history, key=lambda k: k.endswith("_epoch")):  # `_epoch` twins last: they win
        points = sorted((float(x), float(y)) for x, y in history[key] if math.isfinite(float(y)))
        if not points:
            continue
        name = key[: -len("_epoch")] if key.endswith("_epoch") else key
        if _is_lr(name):
            lr_lines[name] = points
            continue
        stage, base = _split_stage(name)
        panels.setdefault(base, {})[stage or name] = points
    if lr_lines:
        merged: dict[tuple, list[str]] = {}
        for name, points in sorted(lr_lines.items()):
            merged.setdefault(tuple(points), []).append(name)
        panels["learning rate"] = {
            _common_label(names): list(points) for points, names in merged.items()
        }
    # identical panels (same stages, same points) once, under all their names
    unique: dict[tuple, str] = {}
    for name in sorted(panels):
        signature = tuple(sorted((label, tuple(points)) for label, points in panels[name].items()))
        if signature in unique:
            first = unique[signature]
            panels[f"{first}, {name}"] = panels.pop(first)
            unique[signature] = f"{first}, {name}"
            del panels[name]
        else:
            unique[signature] = name
    # losses first: they are what one looks at first; the learning rate last
    order = sorted(panels, key=lambda name: (0 if "loss" in name else 2 if name == "learning rate" else 1, name))
    count = max(len(order), 1)
    ncols = min(3, count)
    nrows = math.ceil(count / ncols)
    fig = Figure(figsize=(4.5 * ncols, 3.4 * nrows), dpi=100, layout="constrained")
    fig.suptitle(title)
    if not order:
        ax = fig.add_subplot()
        ax.text(0.5, 0.5, "no metrics recorded", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        return fig
    integer_x = all(
        float(x).is_integer() for series in panels.values() for points in series.values() for x, _ in points
    )
    colors = {"train": "C0", "val": "C1", "validation": "C1", "valid": "C1", "test": "C2"}
    for index, name in enumerate(order):
        ax = fig.add_subplot(nrows, ncols, index + 1)
        for label, points in sorted(panels[name].items()):
            xs, ys = zip(*points, strict=True)
            ax.plot(
                xs,
                ys,
                marker="o" if len(points) < 50 else None,
                markersize=3,
                label=label,
                color=colors.get(label.lower()),
            )
        if integer_x:  # epochs and steps: no 0.5 ticks
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(name)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(name if len(name) <= 30 else name[:27] + "...")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    return fig


def _common_label(names: Sequence[str]) -> str:
    """``lr-AdamW/head`` and ``lr-AdamW/logit_scale`` -> ``lr-AdamW: head, logit_scale``."""
    prefixes = {n.rsplit("/", 1)[0] for n in names if "/" in n}
    if len(prefixes) == 1 and all("/" in n for n in names):
        (prefix,) = prefixes
        return f"{prefix}: " + ", ".join(n.rsplit("/", 1)[1] for n in names)
    return ", ".join(names)
