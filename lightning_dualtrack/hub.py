"""Push a trained classifier to the Hugging Face Hub: safetensors weights, config, model card.

The folder is written locally first (``write_hub_folder``, a pure function a test can inspect), then
uploaded with ``HfApi.upload_folder``. The token comes from ``HF_TOKEN`` / ``huggingface-cli login``
and is never logged. Optional: ``pip install lightning-dualtrack[hub]``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lightning_dualtrack.core.imports import _HF_HUB_AVAILABLE
from lightning_dualtrack.core.redact import redact_mapping


def _json_safe(value: Any) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True


def _hub_config(model: Any, extra: Mapping[str, Any] | None) -> dict[str, Any]:
    config: dict[str, Any] = {"architecture": type(model).__name__, "library_name": "lightning_dualtrack"}
    hparams = getattr(model, "hparams", None)
    if hparams:
        from lightning_dualtrack.core.values import flatten_params

        config["hparams"] = redact_mapping(flatten_params(dict(hparams)))
        # the constructor's arguments as given, for ``from_pretrained`` (weights come from model.safetensors)
        init_args = redact_mapping({k: v for k, v in dict(hparams).items() if _json_safe(v)})
        if "pretrained" in init_args:
            init_args["pretrained"] = None
        config["init_args"] = init_args
    names = getattr(model, "class_names", None)
    if names:
        config["class_names"] = list(names)
        config["id2label"] = {str(i): n for i, n in enumerate(names)}
    preprocess = getattr(model, "preprocess_cfg", None)
    if preprocess:
        config["preprocessing"] = {k: (list(v) if isinstance(v, tuple) else v) for k, v in dict(preprocess).items()}
    config.update(extra or {})
    return config


def _model_card(repo_id: str, config: Mapping[str, Any], metrics: Mapping[str, float] | None) -> str:
    lines = [
        "---",
        "library_name: pytorch",
        "tags: [image-classification, lightning, open_clip, lightning-dualtrack]",
        "---",
        f"# {repo_id.split('/')[-1]}",
        "",
        f"`{config.get('architecture', 'model')}` trained with PyTorch Lightning and tracked with lightning_dualtrack.",
        "",
    ]
    if config.get("class_names"):
        lines += ["## Classes", "", ", ".join(f"`{c}`" for c in config["class_names"]), ""]
    if config.get("preprocessing"):
        lines += ["## Preprocessing", "", "```json", json.dumps(config["preprocessing"], indent=1), "```", ""]
    if metrics:
        lines += ["## Metrics", "", "| metric | value |", "| --- | --- |"]
        lines += [f"| {k} | {v:.4g} |" for k, v in sorted(metrics.items())]
        lines.append("")
    lines += ["## Use", ""]
    if config.get("architecture") == "ClipHarModule":
        lines += [
            "```python",
            "import torch",
            "from PIL import Image",
            "from lightning_dualtrack.har import ClipHarModule  # pip install lightning-dualtrack",
            "",
            f'model = ClipHarModule.from_pretrained("{repo_id}").eval()',
            'pixel_values = model.preprocess(Image.open("photo.jpg")).unsqueeze(0)  # resize, crop, CLIP mean/std',
            "with torch.no_grad():",
            "    probs = model(pixel_values).softmax(dim=-1)  # the model returns logits",
            "print(model.class_names[int(probs.argmax())], float(probs.max()))",
            "```",
            "",
            "`forward(pixel_values)` returns logits, one column per class in `class_names` order (also `id2label` in"
            " `config.json`).",
        ]
    else:
        lines += [
            "```python",
            "from safetensors.torch import load_file",
            "state_dict = load_file('model.safetensors')  # load into the architecture named in config.json",
            "```",
        ]
    return "\n".join(lines) + "\n"


def write_hub_folder(model: Any, folder: str | Path, repo_id: str, metrics: Mapping[str, float] | None = None,
                     config: Mapping[str, Any] | None = None) -> Path:
    """Write ``model.safetensors``, ``config.json`` and ``README.md`` (the model card) into ``folder``."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(folder / "model.safetensors"))
    cfg = _hub_config(model, config)
    (folder / "config.json").write_text(json.dumps(cfg, indent=1, default=repr))
    (folder / "README.md").write_text(_model_card(repo_id, cfg, metrics))
    return folder


def push_to_hub(model: Any, repo_id: str, folder: str | Path, commit_message: str = "Upload model (lightning_dualtrack)",
                private: bool | None = None, metrics: Mapping[str, float] | None = None, api: Any = None) -> str:
    """Write the folder and upload it; returns the commit URL. ``api`` defaults to ``huggingface_hub.HfApi()``."""
    if api is None:
        if not _HF_HUB_AVAILABLE:
            raise ModuleNotFoundError(f"{_HF_HUB_AVAILABLE}. Install it with `pip install lightning-dualtrack[hub]`")
        from huggingface_hub import HfApi

        api = HfApi()
    write_hub_folder(model, folder, repo_id, metrics=metrics)
    api.create_repo(repo_id, private=private, exist_ok=True)
    info = api.upload_folder(repo_id=repo_id, folder_path=str(folder), commit_message=commit_message)
    return str(getattr(info, "commit_url", info))


def push_from_logger(logger: Any, model: Any, repo_id: str, **kwargs: Any) -> str | None:
    """``DualTrackLogger.push_to_hub``: during a run, the folder and the ``hf.repo_url`` tag are logged to both
    backends. After ``end_run()`` the run stays ended: the folder is still written into the run directory and
    uploaded (what the user asked for), but nothing is journalled, since a journal record would start a new
    session of the run (MLflow back to RUNNING, then FINISHED with a new end time, even for a FAILED run; a
    second W&B offline directory). A warning names the run, the Hub URL and that the link is not on the run."""
    run = logger._run
    if not (run.finalized and run.journal is None and run.run_dir is not None):
        logger._ensure_started()
        return run.push_to_hub(model, repo_id, **kwargs)
    folder = run.run_dir / "artifacts" / "hub"
    url = run.push_to_hub(model, repo_id, record=False, **kwargs)
    if url is None:
        return None
    run.messages.warn(
        f"push_to_hub({repo_id!r}) after end_run(): uploaded ({url}) and kept in {folder}, but run "
        f"{logger.run_id} stays ended, so the hf.repo_url tag and the hub/ artifacts are NOT on its MLflow/W&B "
        "run. Call push_to_hub before end_run() to have them logged"
    )
    return url


HUB_FILES = ("config.json", "model.safetensors")


def resolve_pretrained(repo_id_or_folder: str | Path, *, revision: str | None = None, cache_dir: str | Path | None = None,
                       token: str | bool | None = None, local_files_only: bool = False, api: Any = None) -> Path:
    """A local folder holding ``config.json`` and ``model.safetensors``: ``repo_id_or_folder`` itself when it is
    such a folder, else a snapshot of that Hub repo (``HfApi.snapshot_download``, only those two files)."""
    folder = Path(repo_id_or_folder).expanduser()
    if folder.is_dir():
        missing = [name for name in HUB_FILES if not (folder / name).is_file()]
        if missing:
            raise FileNotFoundError(f"Expected {', '.join(HUB_FILES)} in the folder {folder}, but {missing} are missing")
        return folder
    if api is None:
        if not _HF_HUB_AVAILABLE:
            raise ModuleNotFoundError(f"{_HF_HUB_AVAILABLE}. Install it with `pip install lightning-dualtrack[hub]`")
        from huggingface_hub import HfApi

        api = HfApi(token=token)
    path = api.snapshot_download(repo_id=str(repo_id_or_folder), revision=revision, cache_dir=cache_dir,
                                 local_files_only=local_files_only, allow_patterns=list(HUB_FILES))
    return Path(path)
