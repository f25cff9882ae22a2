"""ClipHarModule on the tiny open_clip config: head init, forward, export, training, checkpoints."""

from __future__ import annotations

import math
import warnings

import lightning as L
import numpy as np
import open_clip
import pytest
import torch
from lightning.pytorch.callbacks import Callback
from PIL import Image

from lightning_dualtrack.har import HAR_CLASSES, ClipHarModule, HarDataModule, build_prompts
from lightning_dualtrack.har.model import optimizer_param_groups, warmup_cosine_factor

TINY = "dualtrack-tiny"


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
        warnings.filterwarnings("ignore", message=".*reference is not registered on the model.*")
        yield


@pytest.fixture
def tiny_checkpoint(tmp_path):
    """A saved open_clip model (the local-file form of `pretrained`) and the model itself."""
    torch.manual_seed(123)
    clip = open_clip.create_model(TINY).eval()
    path = tmp_path / "tiny_clip.pt"
    torch.save(clip.state_dict(), path)
    return path, clip


def _trainer(**kwargs) -> L.Trainer:
    defaults = dict(logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                    accelerator="cpu", num_sanity_val_steps=0)
    return L.Trainer(**{**defaults, **kwargs})


def _small_data(**kwargs) -> HarDataModule:
    defaults = dict(synthetic_samples_per_class=6, batch_size=16, val_fraction=0.2, test_fraction=0.2)
    return HarDataModule(**{**defaults, **kwargs})


def test_tiny_config_is_registered_with_open_clip():
    assert TINY in open_clip.list_models()
    cfg = open_clip.get_model_config(TINY)
    assert cfg["vision_cfg"] == {"image_size": 64, "layers": 2, "width": 64, "head_width": 32, "patch_size": 8}


def test_random_init_is_warned_about():
    with pytest.warns(UserWarning, match="randomly initialised"):
        ClipHarModule(TINY)


@pytest.mark.parametrize("templates", ["default", "ensemble"])
def test_zero_shot_head_equals_normalised_text_embeddings(tiny_checkpoint, templates):
    path, clip = tiny_checkpoint
    module = ClipHarModule(TINY, pretrained=str(path), mode="zeroshot", prompt_templates=templates)
    prompts = build_prompts(HAR_CLASSES, templates)
    with torch.no_grad():
        emb = clip.encode_text(open_clip.get_tokenizer(TINY)(prompts), normalize=True)
    emb = emb.reshape(len(HAR_CLASSES), len(prompts) // len(HAR_CLASSES), -1).mean(1)
    expected = emb / emb.norm(dim=-1, keepdim=True)
    torch.testing.assert_close(module.net.head.weight, expected, rtol=0, atol=1e-6)
    # and the whole forward is CLIP's zero-shot logits
    x = torch.randn(4, 3, 64, 64)
    with torch.no_grad():
        reference = clip.logit_scale.exp() * clip.encode_image(x, normalize=True) @ expected.T
        torch.testing.assert_close(module.eval()(x), reference, rtol=1e-4, atol=1e-4)


def test_text_tower_is_dropped_after_building_the_head():
    module = ClipHarModule(TINY)
    assert module.net.text_model is None
    assert not any(k.startswith("net.text_model") for k in module.state_dict())


def test_forward_returns_logits_per_class():
    module = ClipHarModule(TINY, class_names=["a", "b", "c"]).eval()
    logits = module(torch.randn(5, 3, 64, 64))
    assert logits.shape == (5, 3)
    assert logits.abs().max() <= module.hparams.max_logit_scale


def test_logit_scale_is_clamped():
    module = ClipHarModule(TINY, max_logit_scale=10.0).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        module.net.logit_scale.fill_(math.log(1000.0))
        cosine = torch.nn.functional.normalize(module.net.visual(x), dim=-1) @ module.net.class_embeddings().T
        torch.testing.assert_close(module(x), 10.0 * cosine)
    module.on_train_batch_end(None, None, 0)  # after an optimizer step the parameter itself is clamped
    assert module.net.logit_scale.exp().item() == pytest.approx(10.0)


def test_eval_transform_is_open_clips_preprocess():
    module = ClipHarModule(TINY)
    _, _, open_clip_preprocess = open_clip.create_model_and_transforms(TINY)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (90, 120, 3), dtype=np.uint8))
    torch.testing.assert_close(module.preprocess(image), open_clip_preprocess(image), rtol=0, atol=0)
    assert module.train_transform(image).shape == (3, 64, 64)


def test_torchscript_trace_matches_eager(tmp_path):
    module = ClipHarModule(TINY).eval()
    # Lightning's own entry point: a bare torch.jit.trace(module) outside a Trainer trips over the `trainer`
    # property (torch probes every attribute with hasattr); to_torchscript sets the flag that avoids it
    traced = module.to_torchscript(method="trace", example_inputs=torch.randn(2, 3, 64, 64))
    path = tmp_path / "model.pt"
    torch.jit.save(traced, path)
    loaded = torch.jit.load(path)
    for batch in (1, 5):  # other batch sizes than traced
        x = torch.randn(batch, 3, 64, 64)
        with torch.no_grad():
            torch.testing.assert_close(loaded(x), module(x), rtol=1e-4, atol=1e-4)


def test_onnx_export_matches_eager_with_dynamic_batch(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    module = ClipHarModule(TINY).eval()
    path = tmp_path / "model.onnx"
    torch.onnx.export(
        module, (torch.randn(2, 3, 64, 64),), str(path), input_names=["pixel_values"], output_names=["logits"],
        dynamic_shapes={"pixel_values": {0: torch.export.Dim("batch")}}, opset_version=18,
    )
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch in (1, 5):
        x = torch.randn(batch, 3, 64, 64)
        (onnx_logits,) = session.run(["logits"], {"pixel_values": x.numpy()})
        with torch.no_grad():
            np.testing.assert_allclose(onnx_logits, module(x).numpy(), rtol=1e-4, atol=1e-4)


def test_flops_per_batch_counts_forward_and_backward_when_training():
    module = ClipHarModule(TINY)
    assert module.flops_per_batch is None and module.eval_flops_per_batch is None  # no batch size known yet
    train = module.measure_flops_per_batch(8, training=True)
    infer = module.measure_flops_per_batch(8, training=False)
    assert 2 * infer < train < 4 * infer
    assert module.measure_flops_per_batch(16, training=False) == 2 * infer
    module.training_step((torch.randn(8, 3, 64, 64), torch.zeros(8, dtype=torch.long)), 0)
    module.validation_step((torch.randn(16, 3, 64, 64), torch.zeros(16, dtype=torch.long)), 0)
    module.validation_step((torch.randn(3, 3, 64, 64), torch.zeros(3, dtype=torch.long)), 1)  # a short last batch
    assert module.flops_per_batch == train
    assert module.eval_flops_per_batch == 2 * infer
    assert all(p.grad is None for p in module.parameters())  # counted on a meta copy


def test_flops_are_known_at_train_start_from_the_datamodule():
    seen = {}

    class Probe(Callback):
        def on_train_start(self, trainer, pl_module):
            seen["train"], seen["eval"] = pl_module.flops_per_batch, pl_module.eval_flops_per_batch

    module = ClipHarModule(TINY)
    _trainer(max_steps=1, limit_val_batches=0, callbacks=[Probe()]).fit(
        module, datamodule=_small_data(batch_size=8, eval_batch_size=4))
    assert seen == {"train": module.measure_flops_per_batch(8, True), "eval": module.measure_flops_per_batch(4, False)}


def test_warmup_then_cosine_schedule():
    factors = [warmup_cosine_factor(s, warmup_steps=4, total_steps=20) for s in range(21)]
    assert factors[:4] == [0.25, 0.5, 0.75, 1.0]
    assert factors[4] == 1.0
    assert all(a >= b for a, b in zip(factors[4:], factors[5:], strict=False))
    assert factors[-1] == pytest.approx(0.0)
    assert warmup_cosine_factor(20, 0, 20, min_lr_ratio=0.1) == pytest.approx(0.1)


def test_no_weight_decay_on_norms_biases_and_logit_scale():
    module = ClipHarModule(TINY, mode="finetune", lr=1e-3, backbone_lr=1e-4, weight_decay=0.1)
    groups = {g["name"]: g for g in optimizer_param_groups(module.net, 1e-3, 1e-4, 0.1)}
    names = {id(p): n for n, p in module.net.named_parameters()}
    no_decay = [names[id(p)] for g in groups.values() if g["weight_decay"] == 0 for p in g["params"]]
    decay = [names[id(p)] for g in groups.values() if g["weight_decay"] > 0 for p in g["params"]]
    assert "logit_scale" in no_decay and "head.weight" in decay
    assert all(n.endswith("bias") or "ln_" in n or module.net.get_parameter(n).ndim < 2 for n in no_decay)
    assert not any(n.endswith("bias") or "ln_" in n for n in decay)
    assert groups["backbone"]["lr"] == 1e-4 and groups["head"]["lr"] == 1e-3
    assert sum(len(g["params"]) for g in groups.values()) == len(names)


def test_linear_probe_trains_only_head_and_logit_scale():
    module = ClipHarModule(TINY, mode="linear_probe", lr=1e-2)
    before = {k: v.clone() for k, v in module.state_dict().items()}
    _trainer(max_steps=3, limit_val_batches=0).fit(module, datamodule=_small_data())
    changed = {k for k, v in module.state_dict().items() if not torch.equal(v, before[k])}
    changed = {k for k in changed if not k.endswith(("tp", "fp", "tn", "fn"))}  # metric states
    assert changed == {"net.head.weight", "net.logit_scale"}
    assert not module.net.visual.training  # the frozen tower stays in eval mode


def test_freeze_text_false_trains_the_text_tower():
    module = ClipHarModule(TINY, mode="finetune", freeze_text=False, lr=1e-2)
    assert module.net.head is None and module.net.text_model is not None
    before = module.net.text_model.token_embedding.weight.clone()
    _trainer(max_steps=2, limit_val_batches=0).fit(module, datamodule=_small_data())
    assert not torch.equal(before, module.net.text_model.token_embedding.weight)
    assert module(torch.randn(2, 3, 64, 64)).shape == (2, 15)


def test_zeroshot_mode_refuses_to_fit():
    with pytest.raises(ValueError, match="nothing to train"):
        _trainer(max_steps=1).fit(ClipHarModule(TINY, mode="zeroshot"), datamodule=_small_data())


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="`mode`"):
        ClipHarModule(TINY, mode="probe")
    with pytest.raises(ValueError, match=r"\{action\}"):
        ClipHarModule(TINY, prompt_templates=["a photo of {}"])
    with pytest.raises(ValueError, match="`pretrained`"):
        ClipHarModule(TINY, pretrained="no-such-tag-or-file")


class _Outputs(Callback):
    def __init__(self):
        self.val: list = []
        self.test: list = []

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        self.val.append(outputs)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        self.test.append(outputs)


def test_validation_and_test_steps_hand_predictions_to_callbacks():
    module = ClipHarModule(TINY, mode="zeroshot")
    dm = _small_data()
    seen = _Outputs()
    trainer = _trainer(callbacks=[seen])
    (val,) = trainer.validate(module, datamodule=dm, verbose=False)
    (test,) = trainer.test(module, datamodule=dm, verbose=False)
    assert set(val) == {"val/loss", "val/acc"} and set(test) == {"test/loss", "test/acc"}
    for outputs in (seen.val, seen.test):
        preds = torch.cat([o["preds"] for o in outputs])
        target = torch.cat([o["target"] for o in outputs])
        assert preds.shape == (len(target), 15) and preds.dtype == torch.float32
        torch.testing.assert_close(preds.sum(-1), torch.ones(len(target)))
    assert len(torch.cat([o["target"] for o in seen.val])) == len(dm.val_dataset)


def test_predict_step_returns_probabilities_and_class_names():
    module = ClipHarModule(TINY, class_names=list(HAR_CLASSES), mode="zeroshot")
    batches = _trainer().predict(module, datamodule=_small_data())
    out = batches[0]
    assert out["probs"].shape[1] == 15
    assert out["pred_class"] == [HAR_CLASSES[i] for i in out["pred_index"].tolist()]
    torch.testing.assert_close(out["confidence"], out["probs"].max(-1).values)


def test_finetune_on_synthetic_data_learns():
    L.seed_everything(0, verbose=False)
    module = ClipHarModule(TINY, mode="finetune", lr=3e-3, backbone_lr=3e-3)
    dm = HarDataModule(synthetic_samples_per_class=30, batch_size=32, val_fraction=0.2, test_fraction=0.1)
    trainer = _trainer(max_epochs=4)
    trainer.fit(module, datamodule=dm)
    assert trainer.callback_metrics["train/loss_epoch"] < math.log(15)  # below the loss of a uniform guess
    (val,) = trainer.validate(module, datamodule=dm, verbose=False)
    print(f"tiny finetune, {len(dm.train_dataset)} images x 4 epochs: val/acc {val['val/acc']:.3f}")
    assert val["val/acc"] > 0.4  # chance is 1/15


def test_bf16_mixed_runs_on_cpu():
    module = ClipHarModule(TINY, mode="finetune")
    trainer = _trainer(max_steps=3, precision="bf16-mixed", limit_val_batches=1)
    trainer.fit(module, datamodule=_small_data())
    assert math.isfinite(trainer.callback_metrics["train/loss_step"].item())
    assert module.net.head.weight.dtype == torch.float32  # mixed: parameters stay fp32


def test_checkpoint_reloads_without_the_original_weights(tmp_path, tiny_checkpoint):
    path, _ = tiny_checkpoint
    module = ClipHarModule(TINY, pretrained=str(path), mode="finetune", class_names=["x", "y", "z"])
    trainer = _trainer(max_steps=2, limit_val_batches=0)
    trainer.fit(module, datamodule=_small_data(class_names=["x", "y", "z"]))
    ckpt = tmp_path / "har.ckpt"
    trainer.save_checkpoint(ckpt)
    path.unlink()  # the reload must not need the original pretrained file
    reloaded = ClipHarModule.load_from_checkpoint(ckpt)
    assert reloaded.hparams.pretrained == str(path)
    assert reloaded.class_names == ["x", "y", "z"]
    assert reloaded.preprocess_cfg == module.preprocess_cfg
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(reloaded.eval()(x), module.eval()(x))
