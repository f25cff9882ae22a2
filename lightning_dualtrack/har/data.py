"""``HarDataModule``: the HAR images from one of four sources, split (stratified, seeded) into train/val/test.

Sources:

- ``synthetic`` (default): generated, deterministic, learnable images (:mod:`.synthetic`), one class per name.
- ``kaggle``: ``data_dir/<image_subdir>/<filename>`` plus ``data_dir/<csv_file>`` with columns ``filename,label``
  (the public HAR dataset's ``train/`` + ``Training_set.csv``; its ``Testing_set.csv`` has no labels, so the test
  split is carved out of the labelled set).
- ``imagefolder``: ``data_dir/<class name>/**/<image>``.
- ``hf``: a Hugging Face dataset (default ``Bingsu/Human_Action_Recognition``), needs ``datasets`` and, the first
  time, a network.

Class names come from the data (sorted, or the dataset's own label names for ``hf``; for ``synthetic`` they are
``class_names``, default the 15 HAR classes). When ``class_names`` is given, a label outside it is an error. When a
``ClipHarModule`` is attached (``trainer.fit(model, datamodule=dm)``), its class names must be the same set as the
data's (else a ``ValueError`` naming the difference); the data then takes the module's order, so label ``i`` means
``module.class_names[i]``.

Bad data: an empty folder/CSV, a missing image directory or a CSV without ``filename``/``label`` columns raise a
``ValueError``. An image that is missing or that PIL cannot open is skipped and counted: one warning names the count
and the first few files; :meth:`HarDataModule.describe` reports them too.

Preprocessing: the model owns it. When a module with ``preprocess_cfg`` is attached, the data uses that config
(evaluation: exactly ``module.eval_transform``; training: the same size/normalisation after this module's
augmentation). Standalone, ``image_size``/``mean``/``std`` (default open_clip's 224 px, CLIP mean/std) apply,
or :meth:`HarDataModule.set_preprocess_cfg`.
"""

from __future__ import annotations

import csv
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from lightning.pytorch import LightningDataModule
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from lightning_utilities.core.imports import RequirementCache
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from .classes import HAR_CLASSES
from .synthetic import synthetic_dataset
from .transforms import (
    build_eval_transform,
    build_train_transform,
    default_preprocess_cfg,
    normalize_preprocess_cfg,
)

__all__ = [
    "HarDataModule",
    "HarImageDataset",
    "IMAGE_EXTENSIONS",
    "SOURCES",
    "scan_imagefolder",
    "scan_kaggle",
    "stratified_split",
]

SOURCES = ("synthetic", "kaggle", "imagefolder", "hf")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
_DATASETS_AVAILABLE = RequirementCache("datasets")
_SHOW_SKIPPED = 5


# ------------------------------------------------------------------------------------------------------ loading
def load_image_file(path: str | Path) -> Image.Image:
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (OSError, ValueError) as err:  # passed the scan but fails to decode
        raise RuntimeError(f"Could not decode image {path}: {err}") from err


def load_image_array(array: np.ndarray) -> Image.Image:
    return Image.fromarray(array)


class _HfImageLoader:
    """Picklable loader of row ``i``'s image from a Hugging Face dataset (for worker processes)."""

    def __init__(self, dataset: Any, image_key: str) -> None:
        self.dataset = dataset
        self.image_key = image_key

    def __call__(self, index: int) -> Image.Image:
        return self.dataset[int(index)][self.image_key].convert("RGB")


class HarImageDataset(Dataset):
    """``(transform(loader(items[i])), targets[i])`` pairs."""

    def __init__(self, items: Sequence[Any], targets: Sequence[int], loader: Callable[[Any], Image.Image],
                 transform: Callable[[Image.Image], torch.Tensor]) -> None:
        if len(items) != len(targets):
            raise ValueError(f"Expected as many targets as items, but got {len(targets)} and {len(items)}")
        self.items = items
        self.targets = list(targets)
        self.loader = loader
        self.transform = transform

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.transform(self.loader(self.items[index])), self.targets[index]


# ------------------------------------------------------------------------------------------------------ scanning
@dataclass
class _Catalogue:
    items: list[Any]
    labels: list[str]
    loader: Callable[[Any], Image.Image]
    class_names: list[str]
    skipped: list[str] = field(default_factory=list)


def _readable(path: Path) -> bool:
    try:
        with Image.open(path) as image:
            image.verify()  # header and structure; no full decode
        return True
    except Exception:  # any failure means the file is not a usable image
        return False


def _split_readable(paths: Sequence[Path], labels: Sequence[str]) -> tuple[list[str], list[str], list[str]]:
    good, good_labels, skipped = [], [], []
    for path, label in zip(paths, labels, strict=True):
        if path.is_file() and _readable(path):
            good.append(str(path))
            good_labels.append(label)
        else:
            skipped.append(str(path))
    return good, good_labels, skipped


def _check_known(labels: Sequence[str], class_names: Sequence[str] | None, where: str) -> None:
    if class_names is None:
        return
    known = set(class_names)
    unknown = Counter(label for label in labels if label not in known)
    if unknown:
        listed = ", ".join(f"{name!r} ({count})" for name, count in sorted(unknown.items()))
        raise ValueError(
            f"Unknown label(s) in {where}: {listed}. Expected one of {list(class_names)}; pass matching"
            " `class_names` (or None to take them from the data)"
        )


def scan_kaggle(
    data_dir: str | Path, csv_file: str | Path = "Training_set.csv", image_subdir: str | None = "train",
    class_names: Sequence[str] | None = None,
) -> tuple[list[str], list[str], list[str]]:
    """Read the Kaggle layout: returns ``(image paths, labels, skipped paths)``.

    ``csv_file`` is relative to ``data_dir`` unless absolute; file names in it are relative to
    ``data_dir/image_subdir`` (or ``data_dir`` when that folder does not exist or ``image_subdir`` is None).
    """
    root = Path(data_dir)
    csv_path = Path(csv_file) if Path(csv_file).is_absolute() else root / csv_file
    if not csv_path.is_file():
        raise ValueError(f"Expected the labels CSV at {csv_path} (argument `csv_file`), but it does not exist")
    image_dir = root / image_subdir if image_subdir and (root / image_subdir).is_dir() else root
    with open(csv_path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        columns = [c.strip() for c in (reader.fieldnames or [])]
        if not {"filename", "label"} <= set(columns):
            raise ValueError(f"Expected columns 'filename' and 'label' in {csv_path}, but got {columns}")
        rows = [{k.strip(): (v or "").strip() for k, v in row.items() if k is not None} for row in reader]
    if not rows:
        raise ValueError(f"Expected labelled rows in {csv_path}, but it has none")
    labels = [row["label"] for row in rows]
    _check_known(labels, class_names, str(csv_path))
    return _split_readable([image_dir / row["filename"] for row in rows], labels)


def scan_imagefolder(
    data_dir: str | Path, class_names: Sequence[str] | None = None
) -> tuple[list[str], list[str], list[str]]:
    """Read ``data_dir/<class>/**/<image>``: returns ``(image paths, labels, skipped paths)``. Files whose
    extension is not in :data:`IMAGE_EXTENSIONS` are ignored; an image-named file PIL cannot open is skipped."""
    root = Path(data_dir)
    if not root.is_dir():
        raise ValueError(f"Expected argument `data_dir` to be a folder of class folders, but {root} is not a folder")
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise ValueError(f"Expected one folder per class in {root}, but it has no sub-folders")
    _check_known([p.name for p in folders], class_names, f"{root} (class folders)")
    paths: list[Path] = []
    labels: list[str] = []
    empty = []
    for folder in folders:
        files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
        if not files:
            empty.append(folder.name)
        paths += files
        labels += [folder.name] * len(files)
    if empty:
        raise ValueError(f"Expected images in every class folder of {root}, but these have none: {empty}")
    return _split_readable(paths, labels)


def stratified_split(
    labels: Sequence[Any], val_fraction: float, test_fraction: float, seed: int
) -> tuple[list[int], list[int], list[int]]:
    """Per class, a seeded shuffle then ``round(fraction * n)`` samples to test and to val (at least one each
    when the fraction is positive and the class has 3+ samples), the rest to train. Returns sorted index lists.

    Example:
        >>> train, val, test = stratified_split(["a"] * 10 + ["b"] * 10, 0.2, 0.1, seed=0)
        >>> len(train), len(val), len(test)
        (14, 4, 2)
    """
    for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0 <= value < 1:
            raise ValueError(f"Expected argument `{name}` in [0, 1), but got {value}")
    if val_fraction + test_fraction >= 1:
        raise ValueError(f"Expected `val_fraction + test_fraction` < 1, but got {val_fraction + test_fraction}")
    rng = np.random.default_rng(seed)
    by_class: dict[Any, list[int]] = {}
    for index, label in enumerate(labels):
        by_class.setdefault(label, []).append(index)
    train: list[int] = []
    val: list[int] = []
    test: list[int] = []
    for label in sorted(by_class, key=str):
        indices = [by_class[label][i] for i in rng.permutation(len(by_class[label]))]
        n = len(indices)
        n_test = round(test_fraction * n)
        n_val = round(val_fraction * n)
        if n >= 3:
            n_test = max(n_test, 1 if test_fraction > 0 else 0)
            n_val = max(n_val, 1 if val_fraction > 0 else 0)
        if n - n_test - n_val < 1:
            raise ValueError(f"Class {label!r} has {n} sample(s): too few to split into train/val/test")
        test += indices[:n_test]
        val += indices[n_test:n_test + n_val]
        train += indices[n_test + n_val:]
    return sorted(train), sorted(val), sorted(test)


# ------------------------------------------------------------------------------------------------- data module
class HarDataModule(LightningDataModule):
    """The HAR data, split and preprocessed for ``ClipHarModule``.

    Args:
        source: ``"synthetic"``, ``"kaggle"``, ``"imagefolder"`` or ``"hf"``.
        data_dir: the dataset folder (``kaggle``, ``imagefolder``).
        csv_file: ``kaggle``: the labels CSV, relative to ``data_dir`` unless absolute.
        image_subdir: ``kaggle``: the image folder inside ``data_dir`` (``data_dir`` itself if absent).
        class_names: the expected classes, in label order; ``None`` takes them from the data. For ``synthetic``,
            the classes to generate (``None``: the 15 HAR classes).
        image_size, mean, std: preprocessing when no ``ClipHarModule`` is attached (``None``: open_clip's 224 px
            and CLIP mean/std). An attached module's own preprocessing always wins (a differing ``image_size`` is
            warned about).
        batch_size: training batch size; ``eval_batch_size`` (``None``: the same) for val/test/predict.
        num_workers: DataLoader worker processes.
        val_fraction, test_fraction, seed: stratified split of the labelled data, per class.
        crop_scale, crop_ratio, hflip: training augmentation: random resized crop area/aspect ranges and
            horizontal-flip probability (``crop_scale=(1, 1)``, ``crop_ratio=(1, 1)``, ``hflip=0`` turn it off).
        synthetic_samples_per_class, synthetic_image_size, synthetic_noise: the generated set.
        hf_dataset, hf_split: the Hugging Face dataset and split (it is then split here).
        predict_dir: a folder of unlabelled images for ``predict`` (all images under it, sorted by path; targets
            are -1); ``None`` predicts on the test split.
        pin_memory: ``None`` means "when CUDA is available".

    Example:
        >>> dm = HarDataModule(source="synthetic", synthetic_samples_per_class=10, image_size=64)
        >>> dm.setup("fit")
        >>> x, y = next(iter(dm.train_dataloader()))
        >>> tuple(x.shape[1:])
        (3, 64, 64)
    """

    def __init__(
        self,
        source: Literal["synthetic", "kaggle", "imagefolder", "hf"] = "synthetic",
        data_dir: str | None = None,
        csv_file: str = "Training_set.csv",
        image_subdir: str | None = "train",
        class_names: Sequence[str] | None = None,
        image_size: int | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        val_fraction: float = 0.15,
        test_fraction: float = 0.15,
        seed: int = 0,
        crop_scale: tuple[float, float] = (0.6, 1.0),
        crop_ratio: tuple[float, float] = (3 / 4, 4 / 3),
        hflip: float = 0.5,
        synthetic_samples_per_class: int = 40,
        synthetic_image_size: int = 64,
        synthetic_noise: float = 0.08,
        hf_dataset: str = "Bingsu/Human_Action_Recognition",
        hf_split: str = "train",
        predict_dir: str | None = None,
        pin_memory: bool | None = None,
    ) -> None:
        super().__init__()
        if source not in SOURCES:
            raise ValueError(f"Expected argument `source` to be one of {SOURCES}, but got {source!r}")
        if source in ("kaggle", "imagefolder") and not data_dir:
            raise ValueError(f"Expected argument `data_dir` for source={source!r}, but got {data_dir!r}")
        if batch_size < 1:
            raise ValueError(f"Expected argument `batch_size` to be a positive integer, but got {batch_size}")
        # fail early on bad augmentation/split args, before any data is read
        build_train_transform(default_preprocess_cfg(), crop_scale, crop_ratio, hflip)
        stratified_split([], val_fraction, test_fraction, seed)
        self.save_hyperparameters()
        self.source = source
        self.data_dir = data_dir
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
        self._catalogue: _Catalogue | None = None
        self._splits: tuple[list[int], list[int], list[int]] | None = None
        self._class_names: list[str] | None = None
        self._preprocess_cfg: dict[str, Any] | None = None
        self.train_dataset: HarImageDataset | None = None
        self.val_dataset: HarImageDataset | None = None
        self.test_dataset: HarImageDataset | None = None
        self.predict_dataset: HarImageDataset | None = None

    # ------------------------------------------------------------------------------------------------ catalogue
    def _scan(self) -> _Catalogue:
        hp = self.hparams
        expected = list(hp.class_names) if hp.class_names is not None else None
        if self.source == "synthetic":
            names = expected or list(HAR_CLASSES)
            images, targets = synthetic_dataset(len(names), hp.synthetic_samples_per_class,
                                                image_size=hp.synthetic_image_size, seed=hp.seed,
                                                noise=hp.synthetic_noise)
            return _Catalogue(images, [names[t] for t in targets], load_image_array, names)
        if self.source == "hf":
            return self._scan_hf(expected)
        if self.source == "kaggle":
            paths, labels, skipped = scan_kaggle(self.data_dir, hp.csv_file, hp.image_subdir, expected)
        else:
            paths, labels, skipped = scan_imagefolder(self.data_dir, expected)
        if skipped:
            rank_zero_warn(
                f"HarDataModule: skipped {len(skipped)} missing or unreadable image(s) in {self.data_dir}"
                f" (first: {', '.join(skipped[:_SHOW_SKIPPED])})"
            )
        if not paths:
            raise ValueError(f"Expected readable images in {self.data_dir} ({self.source} layout), but found none")
        return _Catalogue(paths, labels, load_image_file, expected or sorted(set(labels)), skipped)

    def _scan_hf(self, expected: list[str] | None) -> _Catalogue:
        hp = self.hparams
        if not _DATASETS_AVAILABLE:
            raise ModuleNotFoundError(
                f"HarDataModule(source='hf') needs the Hugging Face `datasets` package: {_DATASETS_AVAILABLE}"
            )
        import datasets

        try:
            ds = datasets.load_dataset(hp.hf_dataset, split=hp.hf_split)
        except Exception as err:  # offline, unknown name, hub errors: all mean "not available here"
            raise RuntimeError(
                f"Could not load the Hugging Face dataset {hp.hf_dataset!r} (split {hp.hf_split!r}): {err}. The first"
                " load needs a network; without one use source='kaggle' or 'imagefolder' with a downloaded copy"
            ) from err
        label_key = next((k for k in ("labels", "label") if k in ds.features), None)
        image_key = next((k for k in ("image", "img") if k in ds.features), None)
        if label_key is None or image_key is None or not hasattr(ds.features[label_key], "names"):
            raise ValueError(f"Expected an image column and a ClassLabel column in {hp.hf_dataset}, got {ds.features}")
        names = list(ds.features[label_key].names)
        labels = [names[i] for i in ds[label_key]]
        _check_known(labels, expected, hp.hf_dataset)
        return _Catalogue(list(range(len(ds))), labels, _HfImageLoader(ds, image_key), expected or names)

    def _ensure_catalogue(self) -> _Catalogue:
        if self._catalogue is None:
            self._catalogue = self._scan()
            self._splits = stratified_split(self._catalogue.labels, self.hparams.val_fraction,
                                            self.hparams.test_fraction, self.hparams.seed)
            if self._class_names is None:
                self._class_names = list(self._catalogue.class_names)
        return self._catalogue

    @property
    def class_names(self) -> list[str]:
        """The classes in label order (the attached module's order once checked against it)."""
        self._ensure_catalogue()
        assert self._class_names is not None
        return list(self._class_names)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def check_class_names(self, model_class_names: Sequence[str]) -> None:
        """Raise ``ValueError`` naming the difference when the data's classes are not the model's; else adopt
        the model's order (label ``i`` = ``model_class_names[i]``)."""
        data = self.class_names
        model = list(model_class_names)
        if set(data) != set(model):
            raise ValueError(
                "The data's classes differ from the model's:"
                f" in the data but not the model: {sorted(set(data) - set(model))};"
                f" in the model but not the data: {sorted(set(model) - set(data))}."
                " Pass the same `class_names` to both (the model's default is the 15 HAR classes)"
            )
        if data != model:
            rank_zero_info("HarDataModule: using the model's class order")
        self._class_names = model

    # ---------------------------------------------------------------------------------------------- transforms
    def set_preprocess_cfg(self, preprocess_cfg: dict[str, Any]) -> None:
        """Use a model's open_clip preprocessing (``module.preprocess_cfg``) without a Trainer."""
        cfg = normalize_preprocess_cfg(preprocess_cfg)
        wanted = self.hparams.image_size
        if wanted is not None and cfg["size"] != wanted:
            rank_zero_warn(
                f"HarDataModule: `image_size={wanted}` ignored: the model's preprocessing uses size {cfg['size']}"
            )
        self._preprocess_cfg = cfg

    @property
    def preprocess_cfg(self) -> dict[str, Any]:
        if self._preprocess_cfg is None:
            hp = self.hparams
            return default_preprocess_cfg(hp.image_size, hp.mean, hp.std)
        return dict(self._preprocess_cfg)

    @property
    def train_transform(self) -> Callable[[Image.Image], torch.Tensor]:
        hp = self.hparams
        return build_train_transform(self.preprocess_cfg, hp.crop_scale, hp.crop_ratio, hp.hflip)

    @property
    def eval_transform(self) -> Callable[[Image.Image], torch.Tensor]:
        return build_eval_transform(self.preprocess_cfg)

    def _attached_module(self) -> Any:
        trainer = self.trainer
        return getattr(trainer, "lightning_module", None) if trainer is not None else None

    # ------------------------------------------------------------------------------------------------- Lightning
    def prepare_data(self) -> None:
        if self.source == "hf" and _DATASETS_AVAILABLE:
            self._scan_hf(None)  # downloads into the datasets cache on one process per node

    def setup(self, stage: str | None = None) -> None:
        catalogue = self._ensure_catalogue()
        module = self._attached_module()
        if module is not None and getattr(module, "class_names", None) is not None:
            self.check_class_names(module.class_names)
        if module is not None and getattr(module, "preprocess_cfg", None) is not None:
            self.set_preprocess_cfg(module.preprocess_cfg)
        assert self._splits is not None
        index = {name: i for i, name in enumerate(self.class_names)}
        targets = [index[label] for label in catalogue.labels]

        def subset(indices: list[int], transform: Callable) -> HarImageDataset:
            return HarImageDataset([catalogue.items[i] for i in indices], [targets[i] for i in indices],
                                   catalogue.loader, transform)

        train_idx, val_idx, test_idx = self._splits
        self.train_dataset = subset(train_idx, self.train_transform)
        self.val_dataset = subset(val_idx, self.eval_transform)
        self.test_dataset = subset(test_idx, self.eval_transform)
        if self.hparams.predict_dir:
            files = sorted(str(p) for p in Path(self.hparams.predict_dir).rglob("*")
                           if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
            if not files:
                raise ValueError(f"Expected images under `predict_dir` {self.hparams.predict_dir}, but found none")
            self.predict_dataset = HarImageDataset(files, [-1] * len(files), load_image_file, self.eval_transform)
        else:
            self.predict_dataset = self.test_dataset

    def _loader(self, dataset: HarImageDataset | None, train: bool) -> DataLoader:
        if dataset is None:
            raise RuntimeError("HarDataModule: call `setup()` (the Trainer does) before asking for a dataloader")
        return DataLoader(
            dataset,
            batch_size=self.batch_size if train else self.eval_batch_size,
            shuffle=train,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_dataset, train=True)

    def val_dataloader(self) -> DataLoader | list:
        if self.val_dataset is not None and len(self.val_dataset) == 0:
            return []  # val_fraction=0: no validation
        return self._loader(self.val_dataset, train=False)

    def test_dataloader(self) -> DataLoader:
        if self.test_dataset is not None and len(self.test_dataset) == 0:
            raise ValueError("HarDataModule: `test_fraction=0` leaves no test split; set it above 0 to test")
        return self._loader(self.test_dataset, train=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.predict_dataset, train=False)

    # -------------------------------------------------------------------------------------------------- report
    def describe(self) -> dict[str, Any]:
        """The split, augmentation and preprocessing settings and counts (JSON-friendly), for a run's record."""
        catalogue = self._ensure_catalogue()
        hp = self.hparams
        assert self._splits is not None
        train_idx, val_idx, test_idx = self._splits
        info: dict[str, Any] = {
            "source": self.source,
            "data_dir": self.data_dir,
            "num_classes": self.num_classes,
            "class_names": self.class_names,
            "num_samples": {"train": len(train_idx), "val": len(val_idx), "test": len(test_idx),
                            "total": len(catalogue.items)},
            "class_counts": dict(sorted(Counter(catalogue.labels).items())),
            "split": {"stratified": True, "val_fraction": hp.val_fraction, "test_fraction": hp.test_fraction,
                      "seed": hp.seed},
            "augmentation": {"random_resized_crop_scale": list(hp.crop_scale),
                             "random_resized_crop_ratio": list(hp.crop_ratio), "hflip": hp.hflip},
            "preprocess": self.preprocess_cfg,
            "batch_size": self.batch_size,
            "eval_batch_size": self.eval_batch_size,
            "num_workers": self.num_workers,
            "skipped_images": {"count": len(catalogue.skipped), "first": catalogue.skipped[:_SHOW_SKIPPED]},
        }
        # only what applies to this source, and nothing empty: a person reads each setting once, at its value
        if self.data_dir is None:
            del info["data_dir"]
        if not catalogue.skipped:
            info["skipped_images"] = {"count": 0}
        if hp.predict_dir is not None:
            info["predict_dir"] = hp.predict_dir
        if self.source == "kaggle":
            info["csv_file"] = hp.csv_file
            info["image_subdir"] = hp.image_subdir
        if self.source == "synthetic":
            info["synthetic"] = {"samples_per_class": hp.synthetic_samples_per_class,
                                 "image_size": hp.synthetic_image_size, "noise": hp.synthetic_noise}
        if self.source == "hf":
            info["hf"] = {"dataset": hp.hf_dataset, "split": hp.hf_split}
        return info
