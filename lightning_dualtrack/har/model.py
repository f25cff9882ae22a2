"""``ClipHarModule``: an open_clip image tower with a classifier initialised from the class prompts' text embeddings.

What the module holds (``self.net``, a :class:`ClipImageClassifier`):

- ``visual``: the open_clip image tower (with its projection to the joint embedding space);
- ``head``: a bias-free linear layer whose rows start as the L2-normalised (template-averaged) text embeddings of
  the class prompts, i.e. the zero-shot classifier; rows are re-normalised in ``forward`` (a cosine classifier);
- ``logit_scale``: CLIP's learnable log temperature, clamped to ``max_logit_scale`` (100, as CLIP does).

The text tower is only needed to build the head, so by default (``freeze_text=True``) it is dropped once the head
exists: it is not in the checkpoint, the exported graph or GPU memory (ViT-B-16's text tower is 63 M parameters).
With ``mode="finetune"`` and ``freeze_text=False`` it is kept and trained instead: there is no free head then, the
class embeddings are recomputed from the (trained) text tower on every forward, FLYP-style.

``forward(pixel_values) -> logits`` is a pure tensor function (no Python state, no ``self.trainer``), so the same
module traces to TorchScript and exports to ONNX with a dynamic batch dimension.
"""

from __future__ import annotations

import copy
import functools
import math
import os
import threading
from collections.abc import Sequence
from typing import Any, Literal

import open_clip
import torch
import torch.nn.functional as F
from lightning.fabric.utilities.throughput import measure_flops
from lightning.pytorch import LightningModule
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn
from torchmetrics.classification import MulticlassAccuracy

from .classes import HAR_CLASSES, build_prompts, resolve_templates
from .transforms import build_eval_transform, build_train_transform, normalize_preprocess_cfg

__all__ = [
    "ClipHarModule",
    "ClipImageClassifier",
    "MODES",
    "optimizer_param_groups",
    "warmup_cosine_factor",
    "zero_shot_embeddings",
]

MODES = ("zeroshot", "linear_probe", "finetune")

# Set while `ClipHarModule.load_from_checkpoint` builds the module: the checkpoint holds every weight, so the
# original `pretrained` weights are not fetched again (no network needed to reload a fine-tuned model).
_LOADING = threading.local()


def zero_shot_embeddings(model: nn.Module, tokens: Tensor, num_classes: int, num_templates: int) -> Tensor:
    """``(num_classes, embed_dim)`` unit rows: per class, the mean of its prompts' normalised text embeddings,
    normalised again (open_clip's ``build_zero_shot_classifier``, transposed). ``tokens`` is class-major."""
    emb = model.encode_text(tokens, normalize=True)
    emb = emb.reshape(num_classes, num_templates, -1).mean(dim=1)
    return F.normalize(emb, dim=-1)


def warmup_cosine_factor(step: int, warmup_steps: int, total_steps: int, min_lr_ratio: float = 0.0) -> float:
    """LR multiplier: linear warm-up over ``warmup_steps``, then cosine decay to ``min_lr_ratio`` at ``total_steps``.

    Example:
        >>> [round(warmup_cosine_factor(s, 2, 10), 3) for s in (0, 1, 2, 6, 10)]
        [0.5, 1.0, 1.0, 0.5, 0.0]
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def _no_decay(name: str, param: Tensor) -> bool:
    # open_clip's rule: no weight decay on biases, norms (ln_*), 1-d parameters (class token, gains), logit scale
    leaf = name.rsplit(".", 1)[-1]
    return param.ndim < 2 or leaf == "bias" or "ln_" in name or "norm" in name or "logit_scale" in name


def optimizer_param_groups(
    net: ClipImageClassifier, lr: float, backbone_lr: float, weight_decay: float
) -> list[dict[str, Any]]:
    """AdamW groups of the trainable parameters: ``head`` (``lr``), ``logit_scale`` (``lr``, no decay) and the
    towers (``backbone_lr``) split into decay / no-decay by :func:`_no_decay`. Empty groups are left out."""
    groups: dict[str, dict[str, Any]] = {
        "head": {"params": [], "lr": lr, "weight_decay": weight_decay},
        "logit_scale": {"params": [], "lr": lr, "weight_decay": 0.0},
        "backbone": {"params": [], "lr": backbone_lr, "weight_decay": weight_decay},
        "backbone_no_decay": {"params": [], "lr": backbone_lr, "weight_decay": 0.0},
    }
    for name, param in net.named_parameters():
        if not param.requires_grad:
            continue
        if name == "logit_scale":
            key = "logit_scale"
        elif name.startswith("head."):
            key = "head"
        else:
            key = "backbone_no_decay" if _no_decay(name, param) else "backbone"
        groups[key]["params"].append(param)
    return [{"name": key, **group} for key, group in groups.items() if group["params"]]


class ClipImageClassifier(nn.Module):
    """``pixel_values (B, 3, H, W) -> logits (B, C)``: ``exp(logit_scale) * normalise(visual(x)) @ normalise(W).T``."""

    def __init__(
        self,
        visual: nn.Module,
        class_embeddings: Tensor,
        logit_scale: float,
        max_logit_scale: float = 100.0,
        text_model: nn.Module | None = None,
        prompt_tokens: Tensor | None = None,
        num_templates: int = 1,
    ) -> None:
        super().__init__()
        num_classes, embed_dim = class_embeddings.shape
        self.visual = visual
        self.max_logit_scale = float(max_logit_scale)
        self.num_classes = int(num_classes)
        self.num_templates = int(num_templates)
        self.logit_scale = nn.Parameter(torch.tensor(float(logit_scale)))
        self.text_model = text_model
        if text_model is None:
            self.head: nn.Linear | None = nn.Linear(embed_dim, num_classes, bias=False)
            with torch.no_grad():
                self.head.weight.copy_(class_embeddings)
        else:
            if prompt_tokens is None:
                raise ValueError("Expected `prompt_tokens` when a `text_model` is kept")
            self.head = None
            # not persistent: rebuilt from the class names and templates (hparams) when the module is rebuilt
            self.register_buffer("prompt_tokens", prompt_tokens, persistent=False)

    def class_embeddings(self) -> Tensor:
        """``(C, D)`` unit rows: the classifier as used by ``forward``."""
        if self.head is not None:
            return F.normalize(self.head.weight, dim=-1)
        assert self.text_model is not None
        return zero_shot_embeddings(self.text_model, self.prompt_tokens, self.num_classes, self.num_templates)

    def forward(self, pixel_values: Tensor) -> Tensor:
        features = F.normalize(self.visual(pixel_values), dim=-1)
        scale = self.logit_scale.exp().clamp(max=self.max_logit_scale)
        return scale * features @ self.class_embeddings().t().to(features.dtype)


def _create_open_clip(model_name: str, pretrained: str | None, skip_weights: bool) -> nn.Module:
    """The open_clip model; a known tag's QuickGELU and preprocessing apply even when the weights are skipped."""
    tag_cfg = open_clip.get_pretrained_cfg(model_name, pretrained) if pretrained else {}
    kwargs: dict[str, Any] = {"force_quick_gelu": bool(tag_cfg.get("quick_gelu", False))}
    if skip_weights or pretrained is None:
        kwargs["force_preprocess_cfg"] = {k: tag_cfg[k] for k in ("mean", "std", "interpolation", "resize_mode")
                                          if k in tag_cfg}
        return open_clip.create_model(model_name, pretrained=None, **kwargs)
    if not tag_cfg and not os.path.isfile(pretrained):
        raise ValueError(
            f"Expected argument `pretrained` to be an open_clip tag for {model_name!r}"
            f" ({open_clip.list_pretrained_tags_by_model(model_name)}), a local checkpoint file, or None,"
            f" but got {pretrained!r}"
        )
    try:
        return open_clip.create_model(model_name, pretrained=pretrained, **kwargs)
    except RuntimeError as err:
        if tag_cfg:
            raise RuntimeError(
                f"Could not load the {model_name!r} weights tagged {pretrained!r} ({err}). Without a network,"
                " download the checkpoint elsewhere and pass its local path as `pretrained`."
            ) from err
        raise


class ClipHarModule(LightningModule):
    """CLIP for human-action recognition: open_clip image tower + zero-shot-initialised classifier head.

    Args:
        model_name: open_clip model config name: ``"ViT-B-16"`` for real runs, ``"dualtrack-tiny"`` (64 px, 2-layer
            width-64 ViT, registered when ``lightning_dualtrack.har`` is imported) for CPU runs and tests.
        pretrained: open_clip tag (e.g. ``"openai"``; a tag trained with QuickGELU switches it on), a local
            checkpoint file, or ``None`` for random initialisation (warned: the zero-shot head is then random too).
        class_names: class names in label order; ``None`` means the 15 HAR classes.
        mode: ``"zeroshot"`` (nothing trains; validate/test/predict only), ``"linear_probe"`` (head and logit
            scale train, image tower frozen and in eval mode), ``"finetune"`` (image tower trains at
            ``backbone_lr``, head and logit scale at ``lr``).
        prompt_templates: ``"default"`` ("a photo of a person {action}."), ``"ensemble"`` (5 templates), one
            template or a list, each with ``{action}`` (the class name, underscores as spaces).
        lr: peak LR of the head and logit scale.
        backbone_lr: peak LR of the image tower (and the text tower if trained); ``None`` means ``lr / 10``.
        weight_decay: AdamW decoupled weight decay; not applied to biases, norms, 1-d parameters, logit scale.
        warmup_fraction: fraction of ``trainer.estimated_stepping_batches`` spent in linear warm-up before cosine.
        min_lr_ratio: final LR of the cosine, as a fraction of the peak.
        label_smoothing: cross-entropy label smoothing of the training loss (validation/test loss: plain).
        max_logit_scale: upper clamp of ``exp(logit_scale)`` in ``forward`` and on the parameter after each step.
        freeze_text: with ``mode="finetune"``, ``False`` keeps and trains the text tower (classifier recomputed
            from it on every forward); otherwise the text tower is dropped once the head is built.
        compile: ``torch.compile`` the network (in place, so checkpoint keys do not change) for fit/validate/test.

    Example:
        >>> module = ClipHarModule("dualtrack-tiny", mode="linear_probe")  # doctest: +SKIP
        >>> module(torch.randn(2, 3, 64, 64)).shape  # doctest: +SKIP
        torch.Size([2, 15])
    """

    def __init__(
        self,
        model_name: str = "dualtrack-tiny",
        pretrained: str | None = None,
        class_names: Sequence[str] | None = None,
        mode: Literal["zeroshot", "linear_probe", "finetune"] = "finetune",
        prompt_templates: str | Sequence[str] = "default",
        lr: float = 1e-3,
        backbone_lr: float | None = None,
        weight_decay: float = 0.05,
        warmup_fraction: float = 0.1,
        min_lr_ratio: float = 0.0,
        label_smoothing: float = 0.0,
        max_logit_scale: float = 100.0,
        freeze_text: bool = True,
        compile: bool = False,
    ) -> None:
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"Expected argument `mode` to be one of {MODES}, but got {mode!r}")
        if not 0 <= warmup_fraction < 1:
            raise ValueError(f"Expected argument `warmup_fraction` in [0, 1), but got {warmup_fraction}")
        if not 0 <= label_smoothing < 1:
            raise ValueError(f"Expected argument `label_smoothing` in [0, 1), but got {label_smoothing}")
        if max_logit_scale <= 1:
            raise ValueError(f"Expected argument `max_logit_scale` to be larger than 1, but got {max_logit_scale}")
        names = list(HAR_CLASSES if class_names is None else class_names)
        if len(names) < 2 or len(set(names)) != len(names):
            raise ValueError(f"Expected argument `class_names` to hold at least 2 distinct names, but got {names}")
        templates = resolve_templates(prompt_templates)
        self.save_hyperparameters()
        self.hparams["class_names"] = names  # the resolved list, so that logged params and checkpoints show it

        self.class_names: list[str] = names
        self.templates: tuple[str, ...] = templates
        skip_weights = getattr(_LOADING, "active", False)
        if pretrained is None and not skip_weights:
            rank_zero_warn(
                f"ClipHarModule: `pretrained=None`, so {model_name!r} is randomly initialised and its zero-shot"
                " head is random too. Pass an open_clip tag (e.g. 'openai') or a local checkpoint path for real"
                " zero-shot accuracy."
            )
        clip = _create_open_clip(model_name, pretrained, skip_weights)
        clip.eval()
        tokens = open_clip.get_tokenizer(model_name)(build_prompts(names, templates))
        with torch.no_grad():
            class_embeddings = zero_shot_embeddings(clip, tokens, len(names), len(templates))
        visual = clip.visual
        self._preprocess_cfg = normalize_preprocess_cfg(visual.preprocess_cfg)
        keep_text = mode == "finetune" and not freeze_text
        text_model = None
        if keep_text:
            clip.visual = None  # the image tower lives in `net.visual` only
            text_model = clip
        self.net = ClipImageClassifier(
            visual,
            class_embeddings,
            logit_scale=float(clip.logit_scale.detach()),
            max_logit_scale=max_logit_scale,
            text_model=text_model,
            prompt_tokens=tokens if keep_text else None,
            num_templates=len(templates),
        )
        del clip
        self._set_trainable()

        num_classes = len(names)
        self.train_acc = MulticlassAccuracy(num_classes, average="micro", validate_args=False)
        self.val_acc = MulticlassAccuracy(num_classes, average="micro", validate_args=False)
        self.test_acc = MulticlassAccuracy(num_classes, average="micro", validate_args=False)
        self._batch_sizes: dict[str, int] = {}  # largest batch seen per kind ("train", "eval")
        self._flops_cache: dict[tuple[bool, int], int] = {}
        self._compiled = False
        self.train()  # open_clip returns the model in eval mode; Lightning keeps whatever mode it finds

    # ----------------------------------------------------------------------------------------------- structure
    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def _set_trainable(self) -> None:
        mode = self.hparams.mode
        self.net.visual.requires_grad_(mode == "finetune")
        self.net.logit_scale.requires_grad_(mode != "zeroshot")
        if self.net.head is not None:
            self.net.head.requires_grad_(mode != "zeroshot")
        if self.net.text_model is not None:
            self.net.text_model.requires_grad_(True)

    def train(self, mode: bool = True) -> ClipHarModule:
        super().train(mode)
        if self.hparams.mode != "finetune":
            self.net.visual.eval()  # a frozen tower keeps eval behaviour (dropout, patch dropout) while the head trains
        return self

    def configure_model(self) -> None:
        if self.hparams.compile and not self._compiled:
            self.net.compile()  # in place: parameter names (checkpoint keys) stay the same
            self._compiled = True

    # ------------------------------------------------------------------------------------------ preprocessing
    @property
    def preprocess_cfg(self) -> dict[str, Any]:
        """open_clip's preprocessing config of the image tower: size, mode, mean, std, interpolation, resize_mode."""
        return copy.deepcopy(self._preprocess_cfg)

    @property
    def eval_transform(self) -> Any:
        """PIL image -> tensor, exactly the model's open_clip inference transform (shortest-side resize, centre
        crop, CLIP mean/std). Used for validation, test and prediction."""
        return build_eval_transform(self._preprocess_cfg)

    @property
    def preprocess(self) -> Any:
        """Alias of :attr:`eval_transform` (open_clip's name for it)."""
        return self.eval_transform

    @property
    def train_transform(self) -> Any:
        """The default training transform: random resized crop (scale 0.6-1) and horizontal flip, then the model's
        normalisation. ``HarDataModule`` builds its own from the same preprocessing and its augmentation args."""
        return build_train_transform(self._preprocess_cfg)

    # ------------------------------------------------------------------------------------------------ compute
    def forward(self, pixel_values: Tensor) -> Tensor:
        if self._compiled and (torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()):
            return self.net.forward(pixel_values)  # export the eager graph, not the compiled wrapper
        return self.net(pixel_values)

    @staticmethod
    def _unpack(batch: Any) -> tuple[Tensor, Tensor | None]:
        if isinstance(batch, Tensor):
            return batch, None
        if isinstance(batch, dict):
            return batch["pixel_values"], batch.get("labels")
        return batch[0], (batch[1] if len(batch) > 1 else None)

    def _seen(self, kind: str, x: Tensor) -> None:
        self._batch_sizes[kind] = max(self._batch_sizes.get(kind, 0), int(x.shape[0]))

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        x, y = self._unpack(batch)
        self._seen("train", x)
        logits = self(x)
        loss = F.cross_entropy(logits.float(), y, label_smoothing=self.hparams.label_smoothing)
        self.train_acc(logits.detach(), y)
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=x.shape[0])
        self.log("train/acc", self.train_acc, on_step=True, on_epoch=True, batch_size=x.shape[0])
        return loss

    def _eval_step(self, batch: Any, stage: str, metric: MulticlassAccuracy) -> dict[str, Tensor]:
        x, y = self._unpack(batch)
        self._seen("eval", x)
        logits = self(x).float()
        loss = F.cross_entropy(logits, y)
        metric.update(logits, y)
        self.log(f"{stage}/loss", loss, on_epoch=True, prog_bar=stage == "val", batch_size=x.shape[0], sync_dist=True)
        self.log(f"{stage}/acc", metric, on_epoch=True, prog_bar=stage == "val", batch_size=x.shape[0])
        return {"preds": logits.softmax(dim=-1), "target": y}

    def validation_step(self, batch: Any, batch_idx: int) -> dict[str, Tensor]:
        """Logs ``val/loss`` and ``val/acc``; returns ``{"preds": (B, C) float32 probabilities, "target": (B,)}``."""
        return self._eval_step(batch, "val", self.val_acc)

    def test_step(self, batch: Any, batch_idx: int) -> dict[str, Tensor]:
        """Logs ``test/loss`` and ``test/acc``; returns ``{"preds": (B, C) float32 probabilities, "target": (B,)}``."""
        return self._eval_step(batch, "test", self.test_acc)

    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> dict[str, Any]:
        """``{"probs": (B, C), "pred_index": (B,), "pred_class": list of B names, "confidence": (B,)}``."""
        x, _ = self._unpack(batch)
        self._seen("eval", x)
        probs = self(x).float().softmax(dim=-1)
        confidence, index = probs.max(dim=-1)
        return {
            "probs": probs,
            "pred_index": index,
            "pred_class": [self.class_names[i] for i in index.tolist()],
            "confidence": confidence,
        }

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        with torch.no_grad():  # CLIP's clamp: keep the learnable temperature where the forward clamp lets it act
            self.net.logit_scale.clamp_(max=math.log(self.hparams.max_logit_scale))

    # -------------------------------------------------------------------------------------------- optimisation
    def configure_optimizers(self) -> Any:
        hp = self.hparams
        if hp.mode == "zeroshot":
            raise ValueError(
                "ClipHarModule(mode='zeroshot') has nothing to train: use it with validate/test/predict, or choose"
                " mode='linear_probe' or mode='finetune' to fit"
            )
        backbone_lr = hp.lr / 10 if hp.backbone_lr is None else hp.backbone_lr
        groups = optimizer_param_groups(self.net, hp.lr, backbone_lr, hp.weight_decay)
        optimizer = torch.optim.AdamW(groups, lr=hp.lr, betas=(0.9, 0.98), eps=1e-6)
        total = self.trainer.estimated_stepping_batches
        if not math.isfinite(total):
            raise ValueError("The LR schedule needs a finite run: set `max_epochs` or `max_steps` on the Trainer")
        total = max(1, int(total))
        warmup = int(round(hp.warmup_fraction * total))
        schedule = functools.partial(warmup_cosine_factor, warmup_steps=warmup, total_steps=total,
                                     min_lr_ratio=hp.min_lr_ratio)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": 1}}

    # ------------------------------------------------------------------------------------------------- FLOPs
    def measure_flops_per_batch(self, batch_size: int, training: bool) -> int:
        """FLOPs (torch ``FlopCounterMode``, 2 per multiply-add) of ``forward`` on a ``batch_size`` batch at the
        model's input size, plus, if ``training``, the backward of a sum loss through the parameters that train in
        this mode. Counted on a meta-device copy (no compute, no gradients touched), cached per argument pair.
        Not counted: data loading, the loss, the optimizer step; FlopCounterMode also misses part of attention.
        """
        key = (bool(training), int(batch_size))
        if key not in self._flops_cache:
            net = copy.deepcopy(self.net).to("meta")
            net.train(training)
            size = self._preprocess_cfg["size"]
            h, w = (size, size) if isinstance(size, int) else size
            x = torch.empty(batch_size, 3, h, w, device="meta")
            loss_fn = (lambda y: y.sum()) if training and self.hparams.mode != "zeroshot" else None
            self._flops_cache[key] = int(measure_flops(net, lambda: net.forward(x), loss_fn))
        return self._flops_cache[key]

    def _nominal_batch_size(self, kind: str) -> int | None:
        if kind in self._batch_sizes:
            return self._batch_sizes[kind]
        datamodule = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        size = getattr(datamodule, "batch_size" if kind == "train" else "eval_batch_size", None)
        return size if isinstance(size, int) else None

    @property
    def flops_per_batch(self) -> int | None:
        """FLOPs of one training batch: forward + backward (forward only in ``zeroshot`` mode), for Lightning's
        throughput utilities and the package's throughput callback. The batch size is the largest training batch
        seen, or before the first one the datamodule's ``batch_size``; ``None`` when neither is known. See
        :meth:`measure_flops_per_batch` for what is counted. (Lightning's ``ThroughputMonitor`` reads this same
        attribute during validation too; the package's callback reads :attr:`eval_flops_per_batch` there.)"""
        size = self._nominal_batch_size("train")
        return None if size is None else self.measure_flops_per_batch(size, training=True)

    @property
    def eval_flops_per_batch(self) -> int | None:
        """FLOPs of one validation/test/predict batch (forward only); batch size as for :attr:`flops_per_batch`,
        from the eval batches seen or the datamodule's ``eval_batch_size``."""
        size = self._nominal_batch_size("eval")
        return None if size is None else self.measure_flops_per_batch(size, training=False)

    # ------------------------------------------------------------------------------------------- checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["preprocess_cfg"] = self.preprocess_cfg

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if "preprocess_cfg" in checkpoint:
            self._preprocess_cfg = normalize_preprocess_cfg(checkpoint["preprocess_cfg"])

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path: Any, *args: Any, **kwargs: Any) -> ClipHarModule:  # type: ignore[override]
        """Lightning's ``load_from_checkpoint``, except that the ``pretrained`` weights named in the hparams are not
        fetched again (the checkpoint holds every weight): reloading works offline."""
        _LOADING.active = True
        try:
            return super().load_from_checkpoint(checkpoint_path, *args, **kwargs)
        finally:
            _LOADING.active = False

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike,
        *,
        force_download: bool = False,
        token: str | bool | None = None,
        cache_dir: str | os.PathLike | None = None,
        local_files_only: bool = False,
        revision: str | None = None,
        api: Any = None,
        **model_kwargs: Any,
    ) -> ClipHarModule:
        """Load what :func:`lightning_dualtrack.hub.push_to_hub` wrote: a Hub repo id or a local folder with
        ``config.json`` (constructor arguments, class names, preprocessing) and ``model.safetensors`` (weights).

        huggingface_hub's ``ModelHubMixin.from_pretrained`` convention; ``model_kwargs`` override the stored
        constructor arguments (e.g. ``mode="linear_probe"`` to train further). The original ``pretrained`` weights
        are not fetched (the safetensors hold every weight). ``api``: an ``HfApi`` (default: a new one).

        Example:
            >>> model = ClipHarModule.from_pretrained("me/clip-har").eval()  # doctest: +SKIP
            >>> model(model.preprocess(image).unsqueeze(0)).softmax(-1)  # doctest: +SKIP
        """
        import json
        from pathlib import Path

        from safetensors.torch import load_file

        from lightning_dualtrack.hub import resolve_pretrained

        folder = Path(pretrained_model_name_or_path)
        if not folder.is_dir() and force_download and api is None:
            from huggingface_hub import HfApi

            api = HfApi(token=token)
        folder = resolve_pretrained(pretrained_model_name_or_path, revision=revision, cache_dir=cache_dir, token=token,
                                    local_files_only=local_files_only, api=api)
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        if config.get("architecture") not in (None, cls.__name__):
            raise ValueError(
                f"Expected a {cls.__name__} in {folder}/config.json, but its architecture is {config['architecture']!r}"
            )
        if "init_args" not in config:
            raise ValueError(f"Expected `init_args` in {folder}/config.json (written by push_to_hub), but it has none")
        init_args = {**config["init_args"], **model_kwargs, "pretrained": model_kwargs.get("pretrained")}
        if config.get("class_names"):
            init_args.setdefault("class_names", config["class_names"])
        _LOADING.active = True
        try:
            model = cls(**init_args)
        finally:
            _LOADING.active = False
        missing, unexpected = model.load_state_dict(load_file(str(folder / "model.safetensors")), strict=False)
        if missing or unexpected:
            raise ValueError(
                f"The weights in {folder}/model.safetensors do not fit {cls.__name__}({init_args}):"
                f" missing {missing[:5]}, unexpected {unexpected[:5]}"
            )
        if config.get("preprocessing"):
            model._preprocess_cfg = normalize_preprocess_cfg(config["preprocessing"])
        return model

    def describe(self) -> dict[str, Any]:
        """What a run should record about the model beyond its hparams."""
        trainable = sum(p.numel() for p in self.parameters() if p.requires_grad)
        total = sum(p.numel() for p in self.parameters())
        info = {
            "model_name": self.hparams.model_name,
            "pretrained": self.hparams.pretrained,
            "mode": self.hparams.mode,
            "num_classes": self.num_classes,
            "prompt_templates": list(self.templates),
            "text_tower": "trained" if self.net.text_model is not None else "dropped after building the head",
            "params_total": total,
            "params_trainable": trainable,
            "preprocess": self.preprocess_cfg,
        }
        return info

