import json
import types

import numpy as np
import pytest
import torch
from lightning.pytorch import LightningDataModule, Trainer
from sklearn.metrics import confusion_matrix as sk_confusion_matrix
from sklearn.metrics import f1_score, precision_recall_fscore_support
from torch.utils.data import DataLoader, DistributedSampler
from torchmetrics.classification import (
    MulticlassConfusionMatrix,
    MulticlassF1Score,
    MulticlassPrecision,
    MulticlassRecall,
)

from lightning_dualtrack.callbacks import ClassificationReport, unpadded_eval_sampler
from lightning_dualtrack.callbacks.classification import DeviceConfusionMatrix, _confidence, _metric_key_names
from lightning_dualtrack.plots import PER_CLASS_COLUMNS, per_class_metrics
from tests.recording_logger import ImageDataset, PlainLogger, RecordingLogger, TinyClassifier, predictions

NAMES = ["calling", "clapping", "cycling", "listening_to_music"]


def _trainer(loggers, callbacks, **kwargs):
    defaults = dict(
        accelerator="cpu",
        devices=1,
        logger=loggers,
        callbacks=callbacks,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    defaults.update(kwargs)
    return Trainer(**defaults)


@pytest.fixture(scope="module")
def validated():
    """One `trainer.validate` with a recording (rich) logger and a plain one; reused by several tests."""
    # batches of 7: 13 batches, so the example buffer merges both on its own (every 8) and at the end
    model = TinyClassifier(num_classes=4, class_names=NAMES, n_val=90, batch_size=7)
    rich, plain = RecordingLogger(), PlainLogger()
    report = ClassificationReport(num_examples=5)
    _trainer([rich, plain], [report]).validate(model, verbose=False)
    logits, preds, target = predictions(model, ImageDataset(90, 4, seed=2, noise=3.0))
    return types.SimpleNamespace(
        model=model,
        rich=rich,
        plain=plain,
        report=report,
        logits=logits,
        preds=preds.numpy(),
        target=target.numpy(),
    )


def test_per_class_scalars_equal_sklearn(validated):
    v = validated
    precision, recall, f1, _ = precision_recall_fscore_support(
        v.target, v.preds, labels=range(4), average=None, zero_division=0
    )
    for logger in (v.rich, v.plain):
        logged = logger.all_metrics()
        for i, name in enumerate(NAMES):
            assert logged[f"val/precision/{name}"] == pytest.approx(precision[i], abs=1e-6)
            assert logged[f"val/recall/{name}"] == pytest.approx(recall[i], abs=1e-6)
            assert logged[f"val/f1/{name}"] == pytest.approx(f1[i], abs=1e-6)
        assert logged["val/acc"] == pytest.approx((v.preds == v.target).mean(), abs=1e-6)
        assert logged["val/f1_macro"] == pytest.approx(f1_score(v.target, v.preds, average="macro"), abs=1e-6)
        assert logged["val/f1_weighted"] == pytest.approx(
            f1_score(v.target, v.preds, average="weighted"), abs=1e-6
        )
        steps = {step for metrics, step in logger.metrics if "val/acc" in metrics}
        assert steps == {0}


def test_per_class_scalars_equal_torchmetrics(validated):
    v = validated
    preds, target = torch.as_tensor(v.preds), torch.as_tensor(v.target)
    logged = v.rich.all_metrics()
    for stat, metric in (
        ("precision", MulticlassPrecision),
        ("recall", MulticlassRecall),
        ("f1", MulticlassF1Score),
    ):
        expected = metric(num_classes=4, average=None)(preds, target)
        torch.testing.assert_close(torch.tensor([logged[f"val/{stat}/{n}"] for n in NAMES]), expected)
    assert logged["val/f1_macro"] == pytest.approx(
        MulticlassF1Score(4, average="macro")(preds, target).item()
    )


def test_confusion_matrix_and_per_class_table_reach_the_rich_logger(validated):
    v = validated
    expected = sk_confusion_matrix(v.target, v.preds, labels=range(4))
    (call,) = v.rich.calls_named("log_confusion_matrix")
    np.testing.assert_array_equal(call["conf_matrix"], expected)
    assert call["class_names"] == NAMES and call["key"] == "val/confusion_matrix" and call["step"] == 0

    tables = {c["key"]: c for c in v.rich.calls_named("log_table")}
    per_class = tables["val/per_class"]
    assert per_class["columns"] == list(PER_CLASS_COLUMNS)
    assert per_class["rows"] == [
        [row[c] for c in PER_CLASS_COLUMNS] for row in per_class_metrics(expected, NAMES)
    ]

    # the logger draws the matrix itself (counts and normalised); the callback adds the bar chart
    (bars,) = v.rich.calls_named("log_figure")
    assert bars["name"] == "val/per_class" and bars["png"].startswith(b"\x89PNG")
    f1_bars = bars["figure"].axes[0].patches[2 * 4 :]
    np.testing.assert_allclose(
        [p.get_height() for p in f1_bars], [r["f1"] for r in per_class_metrics(expected, NAMES)]
    )

    (artifact,) = v.rich.calls_named("log_dict")
    assert artifact["name"] == "classification_report/val_epoch000_step0000000.json"
    assert json.loads(json.dumps(artifact["data"]))["confusion_matrix"] == expected.tolist()
    (csv_text,) = v.rich.calls_named("log_text")
    assert csv_text["name"].endswith(".csv") and csv_text["text"].splitlines()[0] == ",".join(
        PER_CLASS_COLUMNS
    )
    assert len(csv_text["text"].splitlines()) == 5
    # a logger without the rich methods gets the scalars only
    assert v.plain.calls_named("log_metrics") and {name for name, _ in v.plain.calls} == {"log_metrics"}


def test_example_table_lists_the_most_confident_mistakes_first(validated):
    v = validated
    probs = v.logits.softmax(dim=1)
    conf = probs.max(dim=1).values.numpy()
    wrong = v.preds != v.target
    order = sorted(range(len(conf)), key=lambda i: (wrong[i], conf[i]), reverse=True)[:5]
    assert wrong.sum() >= 5  # the data are noisy enough for the table to be all mistakes
    table = {c["key"]: c for c in v.rich.calls_named("log_table")}["val/predictions"]
    assert table["columns"] == ["image", "true", "predicted", "confidence", "correct"]
    assert [row[1] for row in table["rows"]] == [NAMES[v.target[i]] for i in order]
    assert [row[2] for row in table["rows"]] == [NAMES[v.preds[i]] for i in order]
    np.testing.assert_allclose([row[3] for row in table["rows"]], conf[order], atol=1e-5)
    assert not any(row[4] for row in table["rows"])
    thumb = table["rows"][0][0]
    assert thumb.dtype == np.uint8 and thumb.shape == (8, 8, 3) and thumb.max() == 255 and thumb.min() == 0


def test_summary_metrics_are_available_to_other_callbacks(validated):
    assert validated.report.last_report["val"]["summary"]["acc"] == pytest.approx(
        (validated.preds == validated.target).mean()
    )


def test_every_n_epochs_skips_sanity_check_and_off_epochs():
    model = TinyClassifier(num_classes=4, n_val=32, n_train=32)
    logger = RecordingLogger()
    trainer = _trainer(
        [logger],
        [ClassificationReport(every_n_epochs=2, num_examples=0)],
        max_epochs=4,
        num_sanity_val_steps=2,
    )
    trainer.fit(model)
    steps_per_epoch = 2
    assert [step for step, _ in logger.metric_values("val/acc")] == [2 * steps_per_epoch, 4 * steps_per_epoch]
    assert [c["key"] for c in logger.calls_named("log_confusion_matrix")] == ["val/confusion_matrix"] * 2
    assert {c["key"] for c in logger.calls_named("log_table")} == {"val/per_class"}  # num_examples=0
    # figures="end": one bar chart, at fit end, from the last report
    (bars,) = logger.calls_named("log_figure")
    assert bars["name"] == "val/per_class" and bars["step"] == 4 * steps_per_epoch
    # numeric class names when neither the module nor the datamodule has any
    assert "val/f1/3" in logger.all_metrics()
    assert float(trainer.callback_metrics["val/f1_macro"]) == pytest.approx(
        logger.metric_values("val/f1_macro")[-1][1]
    )


def test_test_stage_reports_once():
    model = TinyClassifier(num_classes=3, class_names=["a", "b", "c"], n_val=40)
    logger = RecordingLogger()
    _trainer([logger], [ClassificationReport(num_examples=3)]).test(model, verbose=False)
    _, preds, target = predictions(model, ImageDataset(40, 3, seed=3, noise=3.0))
    (call,) = logger.calls_named("log_confusion_matrix")
    assert call["key"] == "test/confusion_matrix"
    np.testing.assert_array_equal(call["conf_matrix"], sk_confusion_matrix(target, preds, labels=range(3)))
    assert logger.all_metrics()["test/acc"] == pytest.approx((preds == target).float().mean().item())


class _NamedData(LightningDataModule):
    class_names = ["w", "x", "y", "z"]

    def val_dataloader(self):
        return DataLoader(ImageDataset(20, 4, seed=5), batch_size=8)


def test_class_names_from_the_datamodule_and_unsafe_names_are_made_unique_keys():
    model = TinyClassifier(num_classes=4)
    logger = PlainLogger()
    _trainer([logger], [ClassificationReport()]).validate(model, datamodule=_NamedData(), verbose=False)
    assert {"val/f1/w", "val/f1/z"} <= set(logger.all_metrics())
    assert _metric_key_names(["a/b", "a:b", "ok", "ümlaut"]) == ["a_b", "a_b_1", "ok", "ümlaut"]


def test_class_names_argument_must_match_num_classes():
    with pytest.raises(ValueError, match="num_classes"):
        ClassificationReport(num_classes=3, class_names=["a", "b"])
    with pytest.raises(ValueError, match="every_n_epochs"):
        ClassificationReport(every_n_epochs=0)


def test_absent_class_is_flagged_and_left_out_of_the_macro_average():
    # 3 classes declared, the data only hold 2 of them and the model never predicts the third
    model = TinyClassifier(num_classes=2, n_val=30)
    logger = RecordingLogger()
    report = ClassificationReport(class_names=["a", "b", "never"], num_examples=0)
    _trainer([logger], [report]).validate(model, verbose=False)
    _, preds, target = predictions(model, ImageDataset(30, 2, seed=2, noise=3.0))
    logged = logger.all_metrics()
    assert logged["val/f1/never"] == 0.0 and logged["val/precision/never"] == 0.0
    assert logged["val/f1_macro"] == pytest.approx(f1_score(target, preds, average="macro"), abs=1e-6)
    rows = {c["key"]: c for c in logger.calls_named("log_table")}["val/per_class"]["rows"]
    assert rows[2][PER_CLASS_COLUMNS.index("absent")] is True


def test_labels_instead_of_scores_give_metrics_without_examples():
    class LabelOutputs(TinyClassifier):
        def validation_step(self, batch, batch_idx):
            out = super().validation_step(batch, batch_idx)
            return {"labels": out["preds"].argmax(dim=1), "y": out["target"]}

    model = LabelOutputs(num_classes=4, n_val=32)
    logger = RecordingLogger()
    _trainer([logger], [ClassificationReport(preds_key="labels", target_key="y")]).validate(
        model, verbose=False
    )
    _, preds, target = predictions(model, ImageDataset(32, 4, seed=2, noise=3.0))
    assert logger.all_metrics()["val/acc"] == pytest.approx((preds == target).float().mean().item())
    assert "val/predictions" not in {c["key"] for c in logger.calls_named("log_table")}


def test_missing_output_keys_warn_and_skip():
    model = TinyClassifier(num_classes=4, n_val=16)
    model.validation_step = lambda batch, batch_idx: None
    logger = PlainLogger()
    with pytest.warns(UserWarning, match="expected the val step to return a mapping"):
        _trainer([logger], [ClassificationReport()]).validate(model, verbose=False)
    assert logger.metric_values("val/acc") == []


def test_a_failing_rich_logger_warns_and_the_other_logger_still_gets_everything():
    class Broken(RecordingLogger):
        def log_figure(self, figure, name, step=None):
            raise OSError("disk full")

    broken, good = Broken(), RecordingLogger()
    model = TinyClassifier(num_classes=4, n_val=16)
    with pytest.warns(UserWarning, match="Broken.log_figure failed: OSError: disk full"):
        _trainer([broken, good], [ClassificationReport()]).validate(model, verbose=False)
    assert len(good.calls_named("log_figure")) == 1 and broken.calls_named("log_confusion_matrix")


def test_a_rich_logger_without_log_confusion_matrix_gets_both_matrix_figures():
    class FiguresOnly(RecordingLogger):
        log_confusion_matrix = None

    logger = FiguresOnly()
    model = TinyClassifier(num_classes=4, n_val=40)
    _trainer([logger], [ClassificationReport(num_examples=0)]).validate(model, verbose=False)
    _, preds, target = predictions(model, ImageDataset(40, 4, seed=2, noise=3.0))
    expected = sk_confusion_matrix(target, preds, labels=range(4))
    figures = {c["name"]: c["figure"] for c in logger.calls_named("log_figure")}
    assert set(figures) == {"val/confusion_matrix", "val/confusion_matrix_normalized", "val/per_class"}
    figures = {
        name: fig.axes[0].images[0].get_array() for name, fig in figures.items() if name != "val/per_class"
    }
    np.testing.assert_array_equal(figures["val/confusion_matrix"], expected)
    np.testing.assert_allclose(
        figures["val/confusion_matrix_normalized"], expected / expected.sum(1, keepdims=True)
    )


class _NoHostSync:
    """Makes every tensor-to-host read raise, to prove the per-batch path has none."""

    names = ("item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__", "__index__")

    def __enter__(self):
        self.saved = {name: getattr(torch.Tensor, name) for name in self.names}

        def forbid(name):
            def raiser(*args, **kwargs):
                raise AssertionError(f"host sync: Tensor.{name}")

            return raiser

        for name in self.names:
            setattr(torch.Tensor, name, forbid(name))

    def __exit__(self, *exc):
        for name, function in self.saved.items():
            setattr(torch.Tensor, name, function)


def test_per_batch_update_reads_nothing_back_to_the_host():
    report = ClassificationReport(class_names=NAMES, num_examples=4)
    model = TinyClassifier(num_classes=4)
    trainer = types.SimpleNamespace(world_size=1, val_dataloaders=None, sanity_checking=False)
    report._start("val", trainer, model, active=True)
    batches = [(torch.randn(6, 3, 8, 8), torch.randint(0, 4, (6,))) for _ in range(3)]
    with _NoHostSync():
        for x, y in batches:
            report._update("val", {"preds": torch.randn(6, 4), "target": y}, (x, y))
        state = report._states["val"]
        state.examples._merge()
    assert (
        state.batches == 3
        and state.examples.score.shape == (4,)
        and state.examples.images.shape == (4, 3, 8, 8)
    )
    assert int(state.metric.compute().sum()) == 18


def test_confidence_uses_probabilities_as_they_are_and_softmaxes_logits():
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]])
    torch.testing.assert_close(_confidence(probs), torch.tensor([0.7, 0.8]))
    logits = torch.tensor([[2.0, 0.0, 0.0]])
    torch.testing.assert_close(_confidence(logits), logits.softmax(1).amax(1))


def test_padding_sampler_is_detected():
    dataset = ImageDataset(9, 4)
    loader = DataLoader(dataset, sampler=DistributedSampler(dataset, num_replicas=2, rank=0, shuffle=False))
    trainer = types.SimpleNamespace(world_size=2, val_dataloaders=loader)
    with pytest.warns(UserWarning, match="pads the data with 1 duplicate"):
        ClassificationReport()._warn_if_padded(trainer, "val")
    unpadded = DataLoader(dataset, sampler=unpadded_eval_sampler(dataset, num_replicas=2, rank=0))
    ClassificationReport()._warn_if_padded(
        types.SimpleNamespace(world_size=2, val_dataloaders=unpadded), "val"
    )


def test_unpadded_eval_sampler_shares_are_disjoint_and_complete():
    shares = [list(unpadded_eval_sampler(range(11), num_replicas=3, rank=r)) for r in range(3)]
    assert sorted(sum(shares, [])) == list(range(11))
    assert [len(s) for s in shares] == [4, 4, 3]
    assert list(unpadded_eval_sampler(range(3))) == [0, 1, 2]


@pytest.mark.parametrize("ignore_index", [None, -100])
def test_device_confusion_matrix_equals_torchmetrics(ignore_index):
    generator = torch.Generator().manual_seed(0)
    scores = torch.randn(50, 5, 3, generator=generator)  # (N, C, extra dim), as for segmentation
    target = torch.randint(0, 5, (50, 3), generator=generator)
    if ignore_index is not None:
        target[::7] = ignore_index
    ours, theirs = (
        DeviceConfusionMatrix(5, ignore_index=ignore_index),
        MulticlassConfusionMatrix(5, ignore_index=ignore_index),
    )
    for chunk in range(0, 50, 20):
        ours.update(scores[chunk : chunk + 20], target[chunk : chunk + 20])
        theirs.update(scores[chunk : chunk + 20], target[chunk : chunk + 20])
    torch.testing.assert_close(ours.compute(), theirs.compute())


def test_ignore_index_is_left_out_of_report_and_examples():
    class WithIgnored(TinyClassifier):
        def validation_step(self, batch, batch_idx):
            out = super().validation_step(batch, batch_idx)
            target = out["target"].clone()
            target[0] = -100
            return {"preds": out["preds"], "target": target}

    model = WithIgnored(num_classes=4, n_val=32, batch_size=8)
    logger = RecordingLogger()
    report = ClassificationReport(ignore_index=-100, num_examples=40)
    _trainer([logger], [report]).validate(model, verbose=False)
    (call,) = logger.calls_named("log_confusion_matrix")
    assert call["conf_matrix"].sum() == 32 - 4
    table = {c["key"]: c for c in logger.calls_named("log_table")}["val/predictions"]
    assert len(table["rows"]) == 32 - 4


@pytest.mark.parametrize(("figures", "expected_steps"), [("every", [2, 4]), ("end", [4]), ("never", [])])
def test_figures_policy(figures, expected_steps):
    logger = RecordingLogger()
    trainer = _trainer([logger], [ClassificationReport(figures=figures, num_examples=4)], max_epochs=2)
    trainer.fit(TinyClassifier(num_classes=4, n_train=32, n_val=16))
    assert [c["step"] for c in logger.calls_named("log_figure")] == expected_steps
    tables = logger.calls_named("log_table")
    assert [c["step"] for c in tables if c["key"] == "val/predictions"] == expected_steps
    assert [c["step"] for c in tables if c["key"] == "val/per_class"] == [2, 4]  # every report
    assert len(logger.calls_named("log_confusion_matrix")) == 2  # the logger's own matrix: every report


@pytest.fixture(scope="module")
def fit_then_test(tmp_path_factory):
    """3 epochs of fit with a best checkpoint, then `test(ckpt_path="best")`: what the quickstart does."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    root = tmp_path_factory.mktemp("fit_then_test")
    model = TinyClassifier(num_classes=4, class_names=NAMES, n_val=48)
    rich = RecordingLogger()
    checkpoint = ModelCheckpoint(dirpath=root, monitor="val/acc", mode="max", save_top_k=1)
    trainer = _trainer([rich], [ClassificationReport(num_examples=0), checkpoint], max_epochs=3,
                       enable_checkpointing=True, default_root_dir=root)
    trainer.fit(model)
    trainer.test(model, ckpt_path="best", verbose=False)
    return types.SimpleNamespace(rich=rich, best=checkpoint.best_model_path, trainer=trainer)


def test_per_class_series_for_validation_only_test_values_as_a_table(fit_then_test):
    rich = fit_then_test.rich
    logged = rich.all_metrics()
    assert len(rich.metric_values(f"val/f1/{NAMES[0]}")) == 3  # one point per epoch: a chart worth having
    assert not [k for k in logged if k.startswith(("test/f1/", "test/precision/", "test/recall/"))]
    assert "test/acc" in logged and "test/f1_macro" in logged  # the summary stays scalar
    (table,) = [c for c in rich.calls_named("log_table") if c["key"] == "test/per_class"]
    assert [row[0] for row in table["rows"]] == NAMES and table["columns"] == list(PER_CLASS_COLUMNS)
    charts = [c["name"] for c in rich.calls_named("log_figure")]
    assert charts.count("test/per_class") == 1 and charts.count("val/per_class") == 1  # one chart per split


def test_test_report_is_labelled_with_the_checkpoint_it_evaluates(fit_then_test):
    import re

    rich, best = fit_then_test.rich, fit_then_test.best
    epoch, step = (int(v) for v in re.search(r"epoch=(\d+)-step=(\d+)", best).groups())
    ckpt = torch.load(best, weights_only=False)
    assert (ckpt["epoch"], ckpt["global_step"]) == (epoch, step)
    (cm,) = [c for c in rich.calls_named("log_confusion_matrix") if c["key"] == "test/confusion_matrix"]
    assert f"epoch {epoch}, step {step}" in cm["title"]
    names = [c["name"] for c in rich.calls_named("log_dict")]
    assert f"classification_report/test_epoch{epoch:03d}_step{step:07d}.json" in names
    # validation reports are named for the epoch and step they were made at, zero-padded so that they sort
    val_names = sorted(n for n in names if n.startswith("classification_report/val_"))
    assert val_names == [f"classification_report/val_epoch{e:03d}_step{s:07d}.json" for e, s in ((0, 4), (1, 8), (2, 12))]
