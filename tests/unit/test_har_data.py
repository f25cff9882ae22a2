"""HarDataModule and the synthetic images: layouts, splits, bad data, class names, preprocessing."""

from __future__ import annotations

import csv
import warnings
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from PIL import Image

from lightning_dualtrack.har import HAR_CLASSES, ClipHarModule, HarDataModule, synthetic_dataset
from lightning_dualtrack.har.data import _DATASETS_AVAILABLE, stratified_split
from lightning_dualtrack.har.synthetic import synthetic_image


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    # the tiny model's ops are too small to split across threads; with other processes on the 2 shared cores,
    # OpenMP's second thread mostly waits at barriers (measured: 5-10x slower steps under load)
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*randomly initialised.*")
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        yield


def _write_images(folder: Path, count: int, class_index: int, num_classes: int, start: int = 0) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(count):
        name = f"Image_{class_index}_{start + i}.jpg"
        Image.fromarray(synthetic_image(class_index, i, num_classes, image_size=32)).save(folder / name)
        names.append(name)
    return names


def _kaggle_layout(root: Path, classes=("clapping", "running", "sitting"), per_class: int = 5) -> Path:
    rows = []
    for c, label in enumerate(classes):
        rows += [(name, label) for name in _write_images(root / "train", per_class, c, len(classes))]
    with open(root / "Training_set.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["filename", "label"])
        writer.writerows(rows)
    return root


def _imagefolder_layout(root: Path, classes=("clapping", "running", "sitting"), per_class: int = 5) -> Path:
    for c, label in enumerate(classes):
        _write_images(root / label, per_class, c, len(classes))
    return root


@pytest.fixture
def data_root(tmp_path) -> Path:
    """An empty folder of our own (tmp_path itself may hold other fixtures' folders)."""
    root = tmp_path / "har"
    root.mkdir()
    return root


def _trainer() -> L.Trainer:
    return L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                     accelerator="cpu", num_sanity_val_steps=0)


# ----------------------------------------------------------------------------------------------------- synthetic
def test_synthetic_images_are_deterministic_and_seeded():
    a, labels = synthetic_dataset(4, 3, image_size=32, seed=7)
    b, _ = synthetic_dataset(4, 5, image_size=32, seed=7)
    c, _ = synthetic_dataset(4, 3, image_size=32, seed=8)
    assert labels == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    assert a[0].shape == (32, 32, 3) and a[0].dtype == np.uint8
    assert all(np.array_equal(a[i], b[(i // 3) * 5 + i % 3]) for i in range(12))  # more samples keep the first
    assert not any(np.array_equal(x, y) for x, y in zip(a, c, strict=True))


def test_synthetic_classes_differ_more_than_samples_within_a_class():
    images, labels = synthetic_dataset(15, 8, image_size=32, seed=0)
    # mean colour of the brightest-saturated pixels is a crude class signature
    sig = np.stack([img.reshape(-1, 3).astype(float)[img.reshape(-1, 3).std(1) > 40].mean(0) for img in images])
    labels = np.array(labels)
    centroids = np.stack([sig[labels == c].mean(0) for c in range(15)])
    within = np.mean([np.linalg.norm(sig[i] - centroids[labels[i]]) for i in range(len(sig))])
    between = np.mean([np.linalg.norm(centroids[i] - centroids[j]) for i in range(15) for j in range(i + 1, 15)])
    assert between > 2 * within


# -------------------------------------------------------------------------------------------------------- split
def test_stratified_split_is_seeded_disjoint_and_per_class():
    labels = ["a"] * 20 + ["b"] * 10 + ["c"] * 30
    train, val, test = stratified_split(labels, 0.2, 0.1, seed=3)
    assert stratified_split(labels, 0.2, 0.1, seed=3) == (train, val, test)
    assert stratified_split(labels, 0.2, 0.1, seed=4) != (train, val, test)
    assert sorted(train + val + test) == list(range(60))
    assert [sum(labels[i] == k for i in val) for k in "abc"] == [4, 2, 6]
    assert [sum(labels[i] == k for i in test) for k in "abc"] == [2, 1, 3]


def test_split_of_a_too_small_class_is_an_error():
    with pytest.raises(ValueError, match="'b' has 2 sample"):
        stratified_split(["a"] * 10 + ["b"] * 2, 0.4, 0.4, seed=0)


def test_synthetic_datamodule_batches_and_describe():
    dm = HarDataModule(synthetic_samples_per_class=10, batch_size=8, image_size=64, val_fraction=0.2,
                       test_fraction=0.1, crop_scale=(0.5, 1.0), hflip=0.25)
    dm.setup("fit")
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (8, 3, 64, 64) and x.dtype == torch.float32 and y.dtype == torch.int64
    info = dm.describe()
    assert info["class_names"] == list(HAR_CLASSES)
    assert info["num_samples"] == {"train": 105, "val": 30, "test": 15, "total": 150}
    assert info["augmentation"] == {"random_resized_crop_scale": [0.5, 1.0],
                                    "random_resized_crop_ratio": [0.75, 4 / 3], "hflip": 0.25}
    assert info["split"] == {"stratified": True, "val_fraction": 0.2, "test_fraction": 0.1, "seed": 0}
    assert info["preprocess"]["size"] == 64
    assert info["skipped_images"] == {"count": 0}  # nothing empty: no `first: []`
    assert "data_dir" not in info and info["eval_batch_size"] == 8 and info["num_workers"] == 0


# ------------------------------------------------------------------------------------------------------ layouts
def test_kaggle_layout(data_root):
    root = _kaggle_layout(data_root, per_class=6)
    dm = HarDataModule(source="kaggle", data_dir=str(root), batch_size=4, image_size=48,
                       val_fraction=0.2, test_fraction=0.2)
    dm.setup("fit")
    assert dm.class_names == ["clapping", "running", "sitting"]
    assert (len(dm.train_dataset), len(dm.val_dataset), len(dm.test_dataset)) == (12, 3, 3)
    x, y = next(iter(dm.val_dataloader()))
    assert x.shape[1:] == (3, 48, 48)
    assert sorted(set(dm.train_dataset.targets)) == [0, 1, 2]


def test_imagefolder_layout(data_root):
    root = _imagefolder_layout(data_root, per_class=5)
    (root / "running" / "notes.txt").write_text("not an image, ignored")
    dm = HarDataModule(source="imagefolder", data_dir=str(root), image_size=32, val_fraction=0.2, test_fraction=0.2)
    dm.setup("fit")
    assert dm.class_names == ["clapping", "running", "sitting"]
    assert dm.describe()["class_counts"] == {"clapping": 5, "running": 5, "sitting": 5}
    assert len(dm.train_dataset) == 9


def test_unknown_label_in_csv_is_named(data_root):
    root = _kaggle_layout(data_root)
    with open(root / "Training_set.csv", "a", newline="") as f:
        csv.writer(f).writerows([("Image_0_0.jpg", "juggling"), ("Image_0_1.jpg", "juggling")])
    dm = HarDataModule(source="kaggle", data_dir=str(root), class_names=list(HAR_CLASSES))
    with pytest.raises(ValueError, match=r"Unknown label\(s\).*'juggling' \(2\)"):
        dm.setup("fit")


def test_csv_without_the_expected_columns_is_an_error(data_root):
    (data_root / "Training_set.csv").write_text("file,class\nImage_1.jpg,running\n")
    with pytest.raises(ValueError, match="'filename' and 'label'"):
        HarDataModule(source="kaggle", data_dir=str(data_root)).setup("fit")


def test_unreadable_and_missing_images_are_skipped_and_counted(data_root):
    root = _kaggle_layout(data_root, per_class=5)
    (root / "train" / "broken.jpg").write_bytes(b"definitely not a jpeg")
    with open(root / "Training_set.csv", "a", newline="") as f:
        csv.writer(f).writerows([("broken.jpg", "running"), ("missing.jpg", "sitting")])
    dm = HarDataModule(source="kaggle", data_dir=str(root), val_fraction=0.2, test_fraction=0.2)
    with pytest.warns(UserWarning, match=r"skipped 2 missing or unreadable image\(s\).*broken\.jpg.*missing\.jpg"):
        dm.setup("fit")
    assert dm.describe()["skipped_images"]["count"] == 2
    assert dm.describe()["num_samples"]["total"] == 15


def test_empty_folders_are_errors(data_root):
    with pytest.raises(ValueError, match="no sub-folders"):
        HarDataModule(source="imagefolder", data_dir=str(data_root)).setup("fit")
    _imagefolder_layout(data_root)
    (data_root / "waving").mkdir()
    with pytest.raises(ValueError, match=r"have none: \['waving'\]"):
        HarDataModule(source="imagefolder", data_dir=str(data_root)).setup("fit")
    (data_root / "Training_set.csv").write_text("filename,label\n")
    with pytest.raises(ValueError, match="no labelled rows|has none"):
        HarDataModule(source="kaggle", data_dir=str(data_root)).setup("fit")


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="`source`"):
        HarDataModule(source="csv")
    with pytest.raises(ValueError, match="`data_dir`"):
        HarDataModule(source="kaggle")
    with pytest.raises(ValueError, match="`crop_scale`"):
        HarDataModule(crop_scale=(0.0, 1.0))
    with pytest.raises(ValueError, match="val_fraction \\+ test_fraction"):
        HarDataModule(val_fraction=0.5, test_fraction=0.5)


@pytest.mark.skipif(bool(_DATASETS_AVAILABLE), reason="checks the message shown when `datasets` is missing")
def test_hf_source_without_datasets_says_what_to_install():
    with pytest.raises(ModuleNotFoundError, match="datasets"):
        HarDataModule(source="hf").setup("fit")


# ---------------------------------------------------------------------------------------- with the module attached
def test_class_name_mismatch_with_the_model_is_named(data_root):
    root = _imagefolder_layout(data_root, classes=("clapping", "juggling", "running"))
    dm = HarDataModule(source="imagefolder", data_dir=str(root), val_fraction=0.2, test_fraction=0.2)
    model = ClipHarModule("dualtrack-tiny", class_names=["clapping", "running", "sitting"], mode="zeroshot")
    with pytest.raises(ValueError, match=r"not the model: \['juggling'\].*not the data: \['sitting'\]"):
        _trainer().validate(model, datamodule=dm, verbose=False)


def test_data_adopts_the_model_class_order_and_preprocessing(data_root):
    root = _imagefolder_layout(data_root, classes=("clapping", "running", "sitting"))
    dm = HarDataModule(source="imagefolder", data_dir=str(root), val_fraction=0.2, test_fraction=0.2)
    order = ["sitting", "clapping", "running"]
    model = ClipHarModule("dualtrack-tiny", class_names=order, mode="zeroshot")
    _trainer().validate(model, datamodule=dm, verbose=False)
    assert dm.class_names == order
    assert dm.preprocess_cfg == model.preprocess_cfg
    # label i is model.class_names[i]: the val images of folder "sitting" carry target 0
    sitting = [t for path, t in zip(dm.val_dataset.items, dm.val_dataset.targets, strict=True) if "/sitting/" in path]
    assert sitting and set(sitting) == {0}
    # evaluation uses exactly the model's open_clip transform
    image = Image.open(dm.val_dataset.items[0]).convert("RGB")
    torch.testing.assert_close(dm.val_dataset[0][0], model.preprocess(image), rtol=0, atol=0)


def test_explicit_image_size_that_disagrees_with_the_model_is_warned_about():
    dm = HarDataModule(synthetic_samples_per_class=4, image_size=224, val_fraction=0.25, test_fraction=0.25)
    model = ClipHarModule("dualtrack-tiny", mode="zeroshot")
    with pytest.warns(UserWarning, match="image_size=224.*size 64"):
        _trainer().validate(model, datamodule=dm, verbose=False)
    assert dm.val_dataset[0][0].shape == (3, 64, 64)


def test_predict_dir_yields_unlabelled_batches(data_root):
    _write_images(data_root / "incoming", 3, 0, 3)
    dm = HarDataModule(synthetic_samples_per_class=4, predict_dir=str(data_root / "incoming"),
                       val_fraction=0.25, test_fraction=0.25)
    model = ClipHarModule("dualtrack-tiny", mode="zeroshot")
    (out,) = _trainer().predict(model, datamodule=dm)
    assert len(out["pred_class"]) == 3 and all(name in HAR_CLASSES for name in out["pred_class"])
