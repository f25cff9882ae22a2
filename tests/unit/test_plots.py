import io

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure
from sklearn.metrics import confusion_matrix as sk_confusion_matrix
from sklearn.metrics import precision_recall_fscore_support
from torchmetrics.functional.classification import multiclass_accuracy, multiclass_f1_score

from lightning_dualtrack.har.classes import HAR_CLASSES
from lightning_dualtrack.plots import (
    ANNOTATE_MAX_CLASSES,
    PER_CLASS_COLUMNS,
    confusion_matrix_figure,
    learning_curve_figure,
    per_class_bar_figure,
    per_class_csv,
    per_class_metrics,
    summary_metrics,
)


def _random_labels(num_classes, n, seed=0, absent=()):
    rng = np.random.default_rng(seed)
    present = [c for c in range(num_classes) if c not in absent]
    target = rng.choice(present, size=n)
    # mostly right, sometimes a random class (absent classes can still be predicted)
    preds = np.where(rng.random(n) < 0.6, target, rng.integers(0, num_classes, n))
    return preds, target


def _png_bytes(fig: Figure, dpi: float | None = None) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


@pytest.mark.parametrize("num_classes", [2, 15, 1000])
def test_per_class_metrics_match_sklearn(num_classes):
    preds, target = _random_labels(num_classes, n=5 * num_classes + 50, seed=num_classes)
    matrix = sk_confusion_matrix(target, preds, labels=range(num_classes))
    rows = per_class_metrics(matrix, [f"c{i}" for i in range(num_classes)])
    precision, recall, f1, support = precision_recall_fscore_support(
        target, preds, labels=range(num_classes), average=None, zero_division=0
    )
    assert [row["class"] for row in rows] == [f"c{i}" for i in range(num_classes)]
    np.testing.assert_allclose([row["precision"] for row in rows], precision, atol=1e-12)
    np.testing.assert_allclose([row["recall"] for row in rows], recall, atol=1e-12)
    np.testing.assert_allclose([row["f1"] for row in rows], f1, atol=1e-12)
    assert [row["support"] for row in rows] == support.tolist()
    assert [row["predicted"] for row in rows] == matrix.sum(axis=0).tolist()


def test_per_class_metrics_hand_computed():
    # true cat: 3 right, 1 called dog; true dog: 2 called cat, 4 right; bird never seen nor predicted
    matrix = [[3, 1, 0], [2, 4, 0], [0, 0, 0]]
    cat, dog, bird = per_class_metrics(matrix, ["cat", "dog", "bird"])
    assert cat == {
        "class": "cat",
        "precision": 3 / 5,
        "recall": 3 / 4,
        "f1": 6 / 9,
        "support": 4,
        "predicted": 5,
        "absent": False,
    }
    assert dog["precision"] == pytest.approx(4 / 5) and dog["recall"] == pytest.approx(4 / 6)
    assert bird == {
        "class": "bird",
        "precision": 0.0,
        "recall": 0.0,
        "f1": 0.0,
        "support": 0,
        "predicted": 0,
        "absent": True,
    }


def test_absent_class_that_is_predicted_has_zero_precision_and_is_flagged():
    matrix = np.array([[2, 1], [0, 0]])  # class 1 has no true samples but was predicted once
    rows = per_class_metrics(matrix, ["a", "b"])
    assert rows[1]["absent"] is True and rows[1]["predicted"] == 1
    assert rows[1]["precision"] == 0.0 and rows[1]["recall"] == 0.0 and rows[1]["f1"] == 0.0


@pytest.mark.parametrize("num_classes", [2, 15, 1000])
def test_summary_metrics_match_torchmetrics_with_absent_classes(num_classes):
    absent = {0, num_classes - 1} if num_classes > 2 else {1}
    preds, target = _random_labels(num_classes, n=4 * num_classes + 40, seed=1, absent=absent)
    preds_t, target_t = torch.as_tensor(preds), torch.as_tensor(target)
    matrix = sk_confusion_matrix(target, preds, labels=range(num_classes))
    summary = summary_metrics(matrix)
    assert summary["acc"] == pytest.approx(
        multiclass_accuracy(preds_t, target_t, num_classes, average="micro").item(), abs=1e-6
    )
    assert summary["f1_macro"] == pytest.approx(
        multiclass_f1_score(preds_t, target_t, num_classes, average="macro").item(), abs=1e-6
    )
    assert summary["f1_weighted"] == pytest.approx(
        multiclass_f1_score(preds_t, target_t, num_classes, average="weighted").item(), abs=1e-6
    )
    flagged = {i for i, row in enumerate(per_class_metrics(matrix, None)) if row["absent"]}
    assert (
        flagged == set(np.flatnonzero(np.bincount(target, minlength=num_classes) == 0)) and absent <= flagged
    )


def test_summary_of_an_empty_matrix_is_zero():
    assert summary_metrics(np.zeros((3, 3), dtype=int)) == {
        "acc": 0.0,
        "precision_macro": 0.0,
        "recall_macro": 0.0,
        "f1_macro": 0.0,
        "f1_weighted": 0.0,
    }


def test_accepts_a_torch_tensor_and_rejects_bad_input():
    rows = per_class_metrics(torch.tensor([[1, 0], [0, 1]]), None)
    assert [row["class"] for row in rows] == ["0", "1"]
    with pytest.raises(ValueError, match="square"):
        per_class_metrics(np.zeros((2, 3)), None)
    with pytest.raises(ValueError, match="class_names"):
        per_class_metrics(np.zeros((2, 2)), ["only one"])
    with pytest.raises(ValueError, match="negative"):
        per_class_metrics(np.array([[1, -1], [0, 1]]), None)


def test_per_class_csv_round_trips_the_table():
    rows = per_class_metrics([[3, 1], [0, 0]], ["cat", "has,comma"])
    lines = per_class_csv(rows).splitlines()
    assert lines[0] == ",".join(PER_CLASS_COLUMNS)
    assert lines[1] == "cat,1.0,0.75,0.8571428571428571,4,3,False"
    assert lines[2].startswith('"has,comma",0.0,0.0,0.0,0,1,True')


def test_confusion_matrix_figure_for_15_classes_is_legible():
    preds, target = _random_labels(15, 400)
    matrix = sk_confusion_matrix(target, preds, labels=range(15))
    fig = confusion_matrix_figure(matrix, HAR_CLASSES, title="val confusion")
    ax = fig.axes[0]
    assert ax.get_title() == "val confusion"
    assert [t.get_text() for t in ax.get_xticklabels()] == list(HAR_CLASSES)
    assert [t.get_text() for t in ax.get_yticklabels()] == list(HAR_CLASSES)
    assert all(t.get_rotation() == 45 for t in ax.get_xticklabels())
    # big enough for 15 rotated names: at least ~0.5 inch per cell
    assert fig.get_size_inches()[1] >= 15 * 0.45
    # one number per non-zero cell, equal to the count
    texts = {(round(t.get_position()[1]), round(t.get_position()[0])): t.get_text() for t in ax.texts}
    assert len(texts) == np.count_nonzero(matrix)
    i, j = np.argwhere(matrix > 0)[0]
    assert texts[(i, j)] == str(matrix[i, j])
    assert _png_bytes(fig)[:8] == b"\x89PNG\r\n\x1a\n"


def test_normalised_figure_divides_rows_and_keeps_absent_rows_at_zero():
    matrix = np.array([[3, 1, 0], [0, 0, 0], [1, 1, 2]])
    fig = confusion_matrix_figure(matrix, ["a", "b", "c"], normalize=True)
    image = fig.axes[0].images[0]
    np.testing.assert_allclose(image.get_array(), [[0.75, 0.25, 0], [0, 0, 0], [0.25, 0.25, 0.5]])
    assert image.get_clim() == (0.0, 1.0)
    assert sorted(t.get_text() for t in fig.axes[0].texts) == ["0.25", "0.25", "0.25", "0.50", "0.75"]


def test_confusion_matrix_figure_for_1000_classes_has_no_cell_text_and_renders():
    rng = np.random.default_rng(0)
    matrix = rng.integers(0, 5, (1000, 1000))
    fig = confusion_matrix_figure(matrix, [f"class_{i}" for i in range(1000)])
    ax = fig.axes[0]
    assert 1000 > ANNOTATE_MAX_CLASSES and len(ax.texts) == 0
    assert "index" in ax.get_xlabel()
    assert len(_png_bytes(fig, dpi=20)) > 1000  # low dpi: only that it renders, quickly


def test_two_classes():
    fig = confusion_matrix_figure([[5, 0], [1, 4]], ["neg", "pos"])
    assert sorted(t.get_text() for t in fig.axes[0].texts) == ["1", "4", "5"]
    rows = per_class_metrics([[5, 0], [1, 4]], ["neg", "pos"])
    assert per_class_bar_figure(rows).axes[0].patches.__len__() == 6


def test_per_class_bar_figure_heights_and_absent_marker():
    rows = per_class_metrics([[3, 1, 0], [2, 4, 0], [0, 0, 0]], ["cat", "dog", "bird"])
    fig = per_class_bar_figure(rows, metric_names=("f1",))
    ax = fig.axes[0]
    np.testing.assert_allclose([p.get_height() for p in ax.patches], [row["f1"] for row in rows])
    assert [t.get_text() for t in ax.get_xticklabels()] == ["cat (n=4)", "dog (n=6)", "bird* (n=0)"]
    assert ax.get_ylabel() == "score"
    assert _png_bytes(fig)


def _legend_clear_of_bars(fig) -> bool:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    renderer = canvas.get_renderer()
    ax = fig.axes[0]
    legend = ax.get_legend().get_window_extent(renderer)
    return all(not legend.overlaps(bar.get_window_extent(renderer)) for bar in ax.patches if bar.get_height() > 0)


def test_per_class_bar_figure_for_15_classes_keeps_the_legend_off_the_bars():
    matrix = np.diag(np.arange(10, 25))  # every class perfect: bars reach the top, where a legend would sit
    rows = per_class_metrics(matrix, HAR_CLASSES)
    fig = per_class_bar_figure(rows, title="val per-class metrics (epoch 9, step 270)")
    assert len(fig.axes[0].patches) == 45
    assert _legend_clear_of_bars(fig)
    assert fig.axes[0].get_xticklabels()[-1].get_text() == "using_laptop (n=24)"
    assert _png_bytes(fig)


def test_per_class_figure_for_100_classes_is_a_heat_table_with_values_and_support():
    rng = np.random.default_rng(0)
    matrix = rng.integers(0, 3, (100, 100)) + np.diag(rng.integers(5, 30, 100))
    rows = per_class_metrics(matrix, [f"class_{i:03d}" for i in range(100)])
    fig = per_class_bar_figure(rows)
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert len(labels) == 100 and labels[7] == f"class_007 (n={rows[7]['support']})"
    assert [t.get_text() for t in ax.get_xticklabels()] == ["precision", "recall", "f1"]
    cell_texts = [t.get_text() for t in ax.texts]
    assert len(cell_texts) == 300 and cell_texts[2] == f"{rows[0]['f1']:.2f}"
    assert ax.get_ylabel().startswith("class")
    assert _png_bytes(fig)


def test_per_class_bar_figure_for_1000_classes_draws_lines():
    rows = per_class_metrics(np.eye(1000, dtype=int), None)
    ax = per_class_bar_figure(rows).axes[0]
    assert len(ax.lines) == 3 and len(ax.patches) == 0
    np.testing.assert_allclose(ax.lines[2].get_ydata(), 1.0)


def test_learning_curve_figure_groups_stages_into_panels():
    history = {
        "train/loss": [(0, 2.0), (1, 1.0), (2, 0.5)],
        "val/loss": [(0, 2.2), (2, 0.9)],
        "val/acc": [(0, 0.3), (2, 0.8)],
        "lr": [(0, 0.1), (1, float("nan")), (2, 0.01)],
    }
    fig = learning_curve_figure(history, xlabel="epoch")
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == ["loss", "acc", "learning rate"]
    loss_ax = fig.axes[0]
    lines = {line.get_label(): line for line in loss_ax.lines}
    assert set(lines) == {"train", "val"}
    np.testing.assert_allclose(lines["val"].get_xdata(), [0, 2])
    np.testing.assert_allclose(lines["val"].get_ydata(), [2.2, 0.9])
    assert list(fig.axes[2].lines[0].get_ydata()) == [0.1, 0.01]  # NaN dropped
    assert loss_ax.get_xlabel() == "epoch"
    assert _png_bytes(fig)


def test_learning_curve_figure_draws_nothing_twice():
    """Lightning's `_epoch` twins, LR groups with the same schedule and identical panels are drawn once."""
    same = [(0, 0.1), (1, 0.05)]
    history = {
        "train/loss": [(0, 2.0), (1, 1.0)],
        "train/loss_epoch": [(0, 2.0), (1, 1.0)],
        "val/loss": [(0, 2.1), (1, 1.2)],
        "lr-AdamW/head": same,
        "lr-AdamW/logit_scale": same,
        "lr-AdamW/backbone": [(0, 0.01), (1, 0.005)],
        "lr-AdamW/backbone_no_decay": [(0, 0.01), (1, 0.005)],
        "val/acc": [(0, 0.3), (1, 0.6)],
    }
    fig = learning_curve_figure(history, xlabel="epoch")
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == ["loss", "acc", "learning rate"]
    assert {line.get_label() for line in fig.axes[0].lines} == {"train", "val"}
    lr_labels = sorted(line.get_label() for line in fig.axes[2].lines)
    assert lr_labels == ["lr-AdamW: backbone, backbone_no_decay", "lr-AdamW: head, logit_scale"]
    assert [ax.get_ylabel() for ax in fig.axes] == ["loss", "acc", "learning rate"]
    assert _png_bytes(fig)


def test_learning_curve_figure_without_history():
    fig = learning_curve_figure({})
    assert fig.axes[0].texts[0].get_text() == "no metrics recorded"
