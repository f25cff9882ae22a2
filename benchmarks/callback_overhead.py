"""Validation time with and without the reporting callbacks (target: at most 5% longer).

One process, one model, one in-memory validation set; each measurement is a fresh ``Trainer`` and a
fresh ``DualTrackLogger`` (both backends off, so no shipper process competes for the CPU: what is
measured is the cost on the training process). Configurations:

- ``baseline``   the logger only (the module still logs its own ``val/loss`` and ``val/acc``);
- ``callbacks``  the logger plus ``ClassificationReport`` (16 example thumbnails), ``ThroughputMonitor``
                 (per-batch latency, with CUDA syncs on a GPU) and ``RunDescription``: what every
                 validation epoch inside ``fit`` costs with the default ``figures="end"`` (the report
                 draws no matplotlib figure per epoch; here ``figures="never"``, since a standalone
                 ``validate()`` would draw its one figure);
- ``figures``    (``--figures``) as ``callbacks`` with ``figures="every"``: a validation that also draws
                 the per-class bar chart (``validate()``/``test()``, the one drawn at the end of fit,
                 or every epoch with ``figures="every"``).

Timed: from the first callback's ``on_validation_start`` to the last callback's ``on_validation_end``,
so every callback's work (batch hooks, epoch-end report, file writes) is inside and Trainer set-up and
``finalize`` are outside; wall time and the process's CPU time. Runs are interleaved (the order
alternates), preceded by one warm-up run per configuration, repeated; the best of the repeats is
compared (the median ratio is printed too), because a shared machine's noise only ever adds time.
Also reported: the time spent inside the callbacks' own hooks (each hook wrapped with a timer), per
validation; ``(baseline + hooks) / baseline`` is an estimate of the ratio that machine noise barely
touches, since the hooks are short and measured directly.

The model is ``ClipHarModule("dualtrack-tiny")`` (64 px, 2-layer ViT) when ``lightning_dualtrack.har``
imports, else a small CNN; both return ``{"preds": probabilities, "target": labels}``. The ratio
depends on how long one validation takes: a fixed per-validation cost (the report's files) weighs
more on a short one; ``--images`` sets the size (the HAR validation split is ~1,900 images).

Examples::

    python benchmarks/callback_overhead.py                       # 2048 images, batch 64, best of 5
    python benchmarks/callback_overhead.py --images 512 --repeats 3
    python benchmarks/callback_overhead.py --device cuda --images 4096 --figures
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

NUM_CLASSES = 15


class _Stamp(Callback):
    """Records ``perf_counter`` at validation start (put first) or end (put last)."""

    def __init__(self, at: str, sink: dict[str, float]) -> None:
        self.at, self.sink = at, sink

    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.at == "start":
            self.sink["start"] = time.perf_counter()
            self.sink["cpu_start"] = time.process_time()

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.at == "end":
            if trainer.strategy.root_device.type == "cuda":
                torch.cuda.synchronize()
            self.sink["end"] = time.perf_counter()
            self.sink["cpu_end"] = time.process_time()


def _time_hooks(callback: Callback, sink: dict[str, float]) -> Callback:
    """Wrap the callback's overridden hooks so that the time spent in them adds up in ``sink["hooks"]``."""
    for name in dir(Callback):
        if not name.startswith("on_") or getattr(type(callback), name, None) is getattr(Callback, name):
            continue
        hook = getattr(callback, name)

        def timed(*args: Any, _hook: Any = hook, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return _hook(*args, **kwargs)
            finally:
                sink["hooks"] = sink.get("hooks", 0.0) + time.perf_counter() - start

        setattr(callback, name, timed)
    return callback


class SmallCnn(LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(3, 32, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(32, 64, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(64, 128, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(128, NUM_CLASSES),
        )
        self.class_names = [f"class_{i}" for i in range(NUM_CLASSES)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def validation_step(self, batch: Any, batch_idx: int) -> dict[str, torch.Tensor]:
        x, y = batch
        logits = self(x)
        self.log("val/loss", nn.functional.cross_entropy(logits, y), on_epoch=True, batch_size=len(y))
        return {"preds": logits.softmax(dim=-1), "target": y}


def _model(kind: str) -> tuple[LightningModule, str]:
    if kind in ("auto", "clip-tiny"):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                from lightning_dualtrack.har.model import ClipHarModule

                return ClipHarModule("dualtrack-tiny", mode="zeroshot"), "ClipHarModule(dualtrack-tiny)"
        except Exception as error:  # noqa: BLE001
            if kind == "clip-tiny":
                raise
            print(f"ClipHarModule unavailable ({type(error).__name__}: {error}); using a small CNN")
    return SmallCnn(), "SmallCnn"


def _callbacks(config: str) -> list[Callback]:
    from lightning_dualtrack.callbacks import ClassificationReport, RunDescription, ThroughputMonitor

    if config == "baseline":
        return []
    figures = "every" if config == "figures" else "never"
    return [ClassificationReport(figures=figures), ThroughputMonitor(), RunDescription()]


def _measure(
    config: str, model: LightningModule, loader: DataLoader, accelerator: str, save_dir: str
) -> dict[str, float]:
    from lightning_dualtrack.logger import DualTrackLogger

    stamps: dict[str, float] = {}
    logger = DualTrackLogger(mlflow=False, wandb=False, save_dir=save_dir)
    logger.start_run()
    measured = [_time_hooks(callback, stamps) for callback in _callbacks(config)]
    callbacks = [_Stamp("start", stamps), *measured, _Stamp("end", stamps)]
    trainer = Trainer(
        accelerator=accelerator,
        devices=1,
        logger=logger,
        callbacks=callbacks,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.validate(model, dataloaders=loader, verbose=False)
    return {
        "wall": stamps["end"] - stamps["start"],
        "cpu": stamps["cpu_end"] - stamps["cpu_start"],
        "hooks": stamps.get("hooks", 0.0),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2048)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--model", choices=("auto", "clip-tiny", "cnn"), default="auto")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--figures", action="store_true", help="also measure figures='every'")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "callback_overhead.json"))
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    if args.threads:
        torch.set_num_threads(args.threads)
    model, model_name = _model(args.model)
    size = 64
    data = TensorDataset(
        torch.randn(args.images, 3, size, size), torch.randint(0, NUM_CLASSES, (args.images,))
    )
    loader = DataLoader(data, batch_size=args.batch_size)
    accelerator = "gpu" if args.device == "cuda" else "cpu"
    configs = ["baseline", "callbacks"] + (["figures"] if args.figures else [])
    times: dict[str, list[dict[str, float]]] = {config: [] for config in configs}
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)  # the loggers' run directories and anything else written land here
        for config in configs:  # warm-up: first-use costs (imports, allocator, caches)
            _measure(config, model, loader, accelerator, tmp)
        for repeat in range(args.repeats):
            order = configs if repeat % 2 == 0 else list(reversed(configs))
            for config in order:
                times[config].append(_measure(config, model, loader, accelerator, tmp))

    def stat(config: str, key: str, how: Any) -> float:
        return how(run[key] for run in times[config])

    best = {config: stat(config, "wall", min) for config in configs}
    print(
        f"{model_name}, {args.images} images of {size} px, batch {args.batch_size}, {args.device}, "
        f"torch threads {torch.get_num_threads()}, best of {args.repeats} (interleaved)"
    )
    print(
        f"{'config':<10} {'wall best':>9} {'wall med':>9} {'cpu best':>9} {'hooks med':>9} "
        f"{'ratio wall':>10} {'ratio med':>9} {'ratio cpu':>9} {'ratio hooks':>11}"
    )
    base = {key: stat("baseline", key, min) for key in ("wall", "cpu")}
    base_median = stat("baseline", "wall", statistics.median)
    for config in configs:
        wall, cpu = stat(config, "wall", min), stat(config, "cpu", min)
        median, hooks = stat(config, "wall", statistics.median), stat(config, "hooks", statistics.median)
        print(
            f"{config:<10} {wall:>9.3f} {median:>9.3f} {cpu:>9.3f} {hooks:>9.3f} {wall / base['wall']:>10.3f} "
            f"{median / base_median:>9.3f} {cpu / base['cpu']:>9.3f} {(base['wall'] + hooks) / base['wall']:>11.3f}"
        )
    ratio = best["callbacks"] / best["baseline"]
    print(
        f"callbacks / baseline (best wall) = {ratio:.3f} (target <= 1.05): {'OK' if ratio <= 1.05 else 'OVER'}"
    )

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "model": model_name,
                "images": args.images,
                "batch_size": args.batch_size,
                "device": args.device,
                "repeats": args.repeats,
                "times_s": times,
                "best_s": best,
                "ratio_best": ratio,
                "python": sys.version.split()[0],
                "torch": torch.__version__,
                "machine": platform.platform(),
                "cpus": os.cpu_count(),
            },
            indent=1,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
