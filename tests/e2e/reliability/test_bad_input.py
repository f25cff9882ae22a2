"""Bad input, one test per row: what is stored in MLflow and W&B for each, and that nothing valid is lost.

All rows are logged first (each into its own run, in non-strict mode, with no delivery), then delivered
by one ``dualtrack sync`` over the save directory, then each row's test reads both backends back.
The table in ``docs/reliability.md`` lists the same rows (a test below keeps the two in step); with
``DUALTRACK_RELIABILITY_REPORT=path`` the counts (logged / in MLflow / in W&B) are written to ``path``.
"""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
import traceback
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from lightning_dualtrack import DualTrackLogger
from lightning_dualtrack.sinks.wandb.runfile import read_runs
from tests.e2e.reliability.ledger import (
    assert_exactly_once,
    journal_keymap,
    mlflow_points_db,
    mlflow_run_id,
    norm,
    report,
    wandb_points,
)

pytestmark = [pytest.mark.reliability, pytest.mark.slow]

DOC = Path(__file__).resolve().parents[3] / "docs" / "reliability.md"


@dataclass
class Expect:
    """What a row expects the backends to hold."""

    metrics: list[tuple[str, int, float]] = field(default_factory=list)  # original key, step, value
    params: dict[str, tuple[str, Any]] = field(default_factory=dict)  # key -> (MLflow text, W&B config value)
    tags: dict[str, str] = field(default_factory=dict)
    attempted: int = 0  # items the user tried to log
    artifacts: list[str] = field(default_factory=list)  # MLflow artifact paths
    wandb_keys: dict[str, str] = field(default_factory=dict)  # original key -> W&B key, where they differ

    def metric(self, key: str, step: int, value: float) -> None:
        self.metrics.append((key, step, float(value)))

    def param(self, key: str, text: str, wandb_value: Any) -> None:
        self.params[key] = (text, wandb_value)


@dataclass
class Case:
    id: str
    act: Callable[[DualTrackLogger, Expect], None]
    warns: str | None = None  # a warning must match this
    check: Callable[[dict[str, Any]], None] | None = None  # row-specific checks on the result
    gpu: bool = False


# -- the rows ---------------------------------------------------------------------------------------
def _metrics(values: dict, attempted: int | None = None, step: int = 0, keep: dict | None = None):
    def act(run: DualTrackLogger, e: Expect) -> None:
        run.log_metrics(values, step=step)
        for key, value in (keep if keep is not None else values).items():
            e.metric(str(key), step, value)
        e.attempted = attempted if attempted is not None else len(values)

    return act


def _params(values: dict, expected: dict[str, tuple[str, Any]]):
    def act(run: DualTrackLogger, e: Expect) -> None:
        run.log_params(values)
        for key, (text, wv) in expected.items():
            e.param(key, text, wv)
        e.attempted = len(expected)

    return act


def _empty_key(run: DualTrackLogger, e: Expect) -> None:
    _metrics({"": 0.5, "ok": 1.0})(run, e)
    e.wandb_keys[""] = "_"  # W&B would drop an empty key silently


def _stored_key(result: dict, key: str) -> str:
    return journal_keymap(result["run_dir"]).get(key, key)


def _check_stored_as(mapping: dict[str, str]):
    def check(result: dict) -> None:
        for key, stored in mapping.items():
            assert _stored_key(result, key) == stored, (key, _stored_key(result, key))

    return check


def _resumed(*values: float):
    """One session per value, each logging ``lr``: MLflow keeps the first and adds ``lr.v2``, ``lr.v3``..."""

    def act(run: DualTrackLogger, e: Expect) -> None:
        run.log_params({"lr": values[0]})
        run.finalize("success")
        run._case_warnings = []
        for value in values[1:]:
            again = DualTrackLogger(**run._case_kwargs, run_id=run.run_id)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                again.log_params({"lr": value})
            again.finalize("success")
            run._case_warnings += caught
        e.param("lr", str(values[0]), values[-1])  # W&B's config keeps the latest under the same key
        for n, value in enumerate(values[1:], start=2):
            e.param(f"lr.v{n}", str(value), value)
        e.attempted = len(values)

    return act


def activation(x):  # noqa: ANN001, ANN201 - a callable hyperparameter
    return x


def _many_metrics(run: DualTrackLogger, e: Expect) -> None:
    values = {f"m/{i:04d}": i / 7 for i in range(2500)}
    run.log_metrics(values, step=1)
    for key, value in values.items():
        e.metric(key, 1, value)
    e.attempted = 2500


def _many_params(run: DualTrackLogger, e: Expect) -> None:
    run.log_params({f"p{i:03d}": i for i in range(150)})
    for i in range(150):
        e.param(f"p{i:03d}", str(i), i)
    e.attempted = 150


def _over_1mb(run: DualTrackLogger, e: Expect) -> None:
    params = {f"big{i:03d}": chr(65 + i % 26) * 6000 for i in range(100)}
    tags = {f"tag{i:02d}": chr(97 + i % 26) * 8000 for i in range(60)}
    run.log_params(params)
    run.set_tags(tags)
    for key, value in params.items():
        e.param(key, value, value)
    e.tags.update(tags)
    e.attempted = len(params) + len(tags)


def _backwards(run: DualTrackLogger, e: Expect) -> None:
    for step in [*range(10), *range(5, 10)]:
        value = step + (0.5 if len(e.metrics) >= 10 else 0.0)
        run.log_metrics({"x": value}, step=step)
        e.metric("x", step, value)
    e.attempted = 15


def _same_step_twice(run: DualTrackLogger, e: Expect) -> None:
    run.log_metrics({"x": 1.0, "y": 5.0}, step=3)
    run.log_metrics({"x": 2.0}, step=3)
    for key, value in (("x", 1.0), ("y", 5.0), ("x", 2.0)):
        e.metric(key, 3, value)
    e.attempted = 3


def _bad_steps(run: DualTrackLogger, e: Expect) -> None:
    run.log_metrics({"a": 1.0}, step=2.7)  # -> 2
    run.log_metrics({"b": 1.0}, step=np.int64(4))  # -> 4
    run.log_metrics({"c": 1.0})  # no step: the logger's own counter (0)
    run.log_metrics({"d": 1.0}, step="abc")  # not a number: the counter's next value (1), with a warning
    for key, step in (("a", 2), ("b", 4), ("c", 0), ("d", 1)):
        e.metric(key, step, 1.0)
    e.attempted = 4


def _not_a_figure(run: DualTrackLogger, e: Expect) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run.log_figure("not a figure", "fig_str")
    run.log_figure(np.zeros(5), "fig_vector")
    run.log_figure({"a": 1}, "fig_dict")
    fig, ax = plt.subplots()
    ax.plot([0, 1])
    run.log_figure(fig, "fig_real", step=1)
    e.artifacts.append("images/fig_real_step0000001.png")
    e.attempted = 4


def _check_not_a_figure(result: dict) -> None:
    client = MlflowClient(result["uri"])
    images = [a.path for a in client.list_artifacts(result["mlflow_run_id"], "images")]
    assert images == ["images/fig_real_step0000001.png"]
    w = read_runs(result["run_dir"], result["run_id"])
    assert [k for row in w.history for k in row if k.startswith("fig_")] == ["fig_real"]


def _check_long_param(result: dict) -> None:
    client = MlflowClient(result["uri"])
    full = client.download_artifacts(result["mlflow_run_id"], "params/long.txt", str(result["run_dir"] / "dl"))
    assert Path(full).read_text() == "y" * 10_000


def _check_300(result: dict) -> None:
    stored = {_stored_key(result, "k" * 300), _stored_key(result, "k" * 299 + "j")}
    assert len(stored) == 2 and all(len(s) <= 250 for s in stored)


def _cuda_tensor(run: DualTrackLogger, e: Expect) -> None:
    run.log_metrics({"cuda": torch.tensor(0.5, device="cuda"), "cuda_1elem": torch.full((1,), 0.25, device="cuda")}, step=0)
    e.metric("cuda", 0, 0.5)
    e.metric("cuda_1elem", 0, 0.25)
    e.attempted = 2


def _cyclic_params(run: DualTrackLogger, e: Expect) -> None:
    hparams: dict = {"lr": 0.1, "model": {"width": 8}}
    hparams["model"]["parent"] = hparams  # e.g. a config object that keeps a reference to its owner
    _params(hparams, {"lr": ("0.1", 0.1), "model/width": ("8", 8), "model/parent": ("<cycle>", "<cycle>")})(run, e)


def _merged_keys(run: DualTrackLogger, e: Expect) -> None:
    _params({"a/b": 1, "a": {"b": 2}}, {"a/b": ("1", 1), "a/b_2": ("2", 2)})(run, e)


def _rename_vs_user_key(run: DualTrackLogger, e: Expect) -> None:
    run.log_params({"lr": 0.1, "lr.v2": "mine"})
    run.log_params({"lr": 0.2})  # MLflow: `lr.v3`, as `lr.v2` is the user's
    e.param("lr", "0.1", 0.2)  # W&B's config keeps the latest under `lr`
    e.param("lr.v2", "mine", "mine")
    e.param("lr.v3", "0.2", 0.2)
    e.attempted = 3


def _check_reserved(result: dict) -> None:
    w = read_runs(result["run_dir"], result["run_id"])
    assert [row.get("trainer/global_step") for row in w.history if "ok" in row] == [4]  # the step, not the user's 99
    assert {k for k in _mlflow_keys(result) if not k.startswith("system/dualtrack/")} == {"ok"}  # delivery adds its own health metrics


def _mlflow_keys(result: dict) -> set[str]:
    return set(MlflowClient(result["uri"]).get_run(result["mlflow_run_id"]).data.metrics)


def _image_key_first(run: DualTrackLogger, e: Expect) -> None:
    run.log_image("samples", [np.full((48, 48, 3), 200, np.uint8)])  # WandbLogger's order: (key, images)
    e.artifacts.append("images/samples.png")
    e.attempted = 1


def _check_image_key_first(result: dict) -> None:
    assert all(len(m) < 400 for m in result["warnings"]), [len(m) for m in result["warnings"]]  # never the array whole
    w = read_runs(result["run_dir"], result["run_id"])
    assert [k for row in w.history for k in row if k == "samples"] == ["samples"]


NAN, INF = float("nan"), float("inf")
CASES = [
    Case("key_at_sign", _metrics({"acc@1": 0.5, "ok": 1.0}), warns="acc@1", check=_check_stored_as({"acc@1": "acc_1"})),
    Case("key_dotdot", _metrics({"../x": 0.5, "ok": 1.0}), warns=r"\.\./x", check=_check_stored_as({"../x": "__/x"})),
    Case("key_double_slash", _metrics({"a//b": 0.5, "a/b": 0.7}), warns="a//b", check=_check_stored_as({"a//b": "a/b", "a/b": "a/b_2"})),
    Case("key_empty", _empty_key, check=_check_stored_as({"": "_"})),
    Case("key_300_chars", _metrics({"k" * 300: 0.5, "k" * 299 + "j": 0.6}), check=_check_300),
    Case("key_unicode", _metrics({"точность/ψ": 0.9, "loss🔥": 0.1, "loss_": 0.2}),
         check=_check_stored_as({"точность/ψ": "точность/ψ", "loss🔥": "loss_", "loss_": "loss__2"})),
    Case("key_not_a_string", _metrics({1: 0.1, 2.5: 0.2, ("a", "b"): 0.3, None: 0.4}), warns="is a int",
         check=_check_stored_as({"1": "1", "2.5": "2.5", "None": "None"})),
    Case("value_nan", _metrics({"v": NAN, "ok": 1.0})),
    Case("value_inf", _metrics({"pos": INF, "neg": -INF})),
    Case("value_bool", _metrics({"flag": True, "off": False})),
    Case("value_str", _metrics({"s": "hello", "ok": 1.0}, keep={"ok": 1.0}), warns="'s' dropped"),
    Case("value_none", _metrics({"n": None, "ok": 1.0}, keep={"ok": 1.0}), warns="'n' dropped"),
    Case("value_tensor_0d", _metrics({"t": torch.tensor(0.25), "t1": torch.tensor([0.5])})),
    Case("value_numpy_scalars", _metrics({"f32": np.float32(0.5), "f16": np.float16(0.25), "i64": np.int64(3), "b": np.bool_(True), "a0": np.array(1.5)})),
    Case("value_multi_element", _metrics({"vec": torch.ones(3), "arr": np.ones(2), "ok": 1.0}, keep={"ok": 1.0}), warns="'vec' dropped"),
    Case("value_cuda_tensor", _cuda_tensor, gpu=True),
    Case("param_10000_chars", _params({"long": "y" * 10_000}, {"long": ("y" * 5000, "y" * 10_000)}), check=_check_long_param),
    Case("param_5_deep", _params({"a": {"b": {"c": {"d": {"e": 1}}}}}, {"a/b/c/d/e": ("1", 1)})),
    Case("param_lists", _params({"layers": [1, 2, 3], "names": ("x", "y"), "empty": []},
                                {"layers": ("[1, 2, 3]", [1, 2, 3]), "names": ('["x", "y"]', ["x", "y"]), "empty": ("[]", [])})),
    Case("param_callables", _params({"act": activation, "cls": torch.nn.Linear, "fn": len, "lambda": lambda x: x},
                                    {"act": (f"{__name__}.activation",) * 2, "cls": ("torch.nn.modules.linear.Linear",) * 2,
                                     "fn": ("builtins.len",) * 2, "lambda": (f"{__name__}.<lambda>",) * 2})),
    Case("param_nan_inf", _params({"p_nan": NAN, "p_inf": INF}, {"p_nan": ("nan", "nan"), "p_inf": ("inf", "inf")})),
    Case("param_not_string_keys", _params({1: "a", (2, 3): "b"}, {"1": ("a", "a"), "(2, 3)": ("b", "b")}),
         check=_check_stored_as({"(2, 3)": "_2_ 3_"})),
    Case("param_changed_on_resume", _resumed(0.1, 0.2), warns="changed from"),
    Case("param_changed_twice_across_resumes", _resumed(0.1, 0.2, 0.3), warns="changed from"),
    Case("metrics_2500_in_one_call", _many_metrics),
    Case("params_150", _many_params),
    Case("request_over_1MB", _over_1mb),
    Case("steps_backwards", _backwards),
    Case("same_key_twice_at_one_step", _same_step_twice),
    Case("steps_not_integers", _bad_steps, warns="not an integer"),
    Case("figure_that_is_not_one", _not_a_figure, warns="log_image", check=_check_not_a_figure),
    Case("param_cycle", _cyclic_params, warns=r"'model/parent' refers back .* \(a cycle\)"),
    Case("params_merging_onto_one_key", _merged_keys, warns=r"params 'a/b' and 'a' -> 'b' both flatten to 'a/b'"),
    Case("param_rename_vs_user_key", _rename_vs_user_key, warns=r"stored as 'lr.v3'"),
    Case("metric_reserved_key", _metrics({"trainer/global_step": 99.0, "ok": 1.0}, keep={"ok": 1.0}, step=4),
         warns=r"metric key 'trainer/global_step' is reserved", check=_check_reserved),
    Case("image_key_first", _image_key_first, warns="WandbLogger's order", check=_check_image_key_first),
]


def _case_param(case: Case):
    marks = [pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")] if case.gpu else []
    return pytest.param(case, id=case.id, marks=marks)


@pytest.fixture(scope="module")
def delivered(mlflow_server, tmp_path_factory) -> dict[str, dict[str, Any]]:
    """Log every row into its own run, deliver them all with one ``dualtrack sync``, return the results."""
    root = tmp_path_factory.mktemp("bad_input")
    save_dir = root / "runs"
    results: dict[str, dict[str, Any]] = {}
    for case in CASES:
        if case.gpu and not torch.cuda.is_available():
            continue
        kwargs = dict(experiment_name="bad-input", run_name=case.id, tracking_uri=mlflow_server.url, wandb_mode="offline",
                      save_dir=save_dir, deliver=False, log_system_info=False)
        run = DualTrackLogger(**kwargs)
        run._case_kwargs = kwargs
        expect = Expect()
        error = None
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                case.act(run, expect)
                run.finalize("success")
            except Exception:  # noqa: BLE001 - reported by the row's test
                error = traceback.format_exc()
        messages = [str(w.message) for w in caught] + [str(w.message) for w in getattr(run, "_case_warnings", [])]
        results[case.id] = dict(run_dir=run.run_dir, run_id=run.run_id, expect=expect, error=error, warnings=messages,
                                uri=mlflow_server.url, db=mlflow_server.workdir / "mlflow.db")
    sync = subprocess.run([sys.executable, "-m", "lightning_dualtrack.cli", "sync", str(save_dir), "--timeout", "120"],
                          capture_output=True, text=True, timeout=600)
    for result in results.values():
        result["sync"] = sync
        result["mlflow_run_id"] = mlflow_run_id(result["run_dir"])
    return results


def _counts(result: dict) -> dict[str, int]:
    e: Expect = result["expect"]
    client = MlflowClient(result["uri"])
    run = client.get_run(result["mlflow_run_id"])
    keymap = journal_keymap(result["run_dir"])
    stored = mlflow_points_db(result["db"], result["mlflow_run_id"])
    w = read_runs(result["run_dir"], result["run_id"])
    wpoints = wandb_points(result["run_dir"], result["run_id"])
    expected_m = Counter((keymap.get(k, k), s, norm(v)) for k, s, v in e.metrics)
    expected_w = Counter((e.wandb_keys.get(k, k), s, norm(v)) for k, s, v in e.metrics)
    return {
        "attempted": e.attempted,
        "expected": len(e.metrics) + len(e.params) + len(e.tags) + len(e.artifacts),
        "mlflow": sum(min(n, stored[p]) for p, n in expected_m.items())
        + sum(1 for k, (text, _) in e.params.items() if run.data.params.get(keymap.get(k, k), "").startswith(text))
        + sum(1 for k, v in e.tags.items() if run.data.tags.get(k) == v)
        + sum(1 for a in e.artifacts if a in [x.path for x in client.list_artifacts(result["mlflow_run_id"], a.rsplit("/", 1)[0])]),
        "wandb": sum(min(n, wpoints[p]) for p, n in expected_w.items())
        + sum(1 for k, (_, wv) in e.params.items() if k in w.config and w.config[k] == wv)
        + sum(1 for k in e.tags if any(t.startswith(f"{k}:") for t in w.tags))
        + sum(1 for a in e.artifacts if a.startswith("images/")),
    }


@pytest.mark.timeout(600)
@pytest.mark.parametrize("case", [_case_param(c) for c in CASES])
def test_bad_input(case: Case, delivered) -> None:
    result = delivered[case.id]
    assert result["error"] is None, f"logging raised in non-strict mode:\n{result['error']}"
    assert result["sync"].returncode == 0, result["sync"].stderr[-3000:]
    if case.warns:
        assert any(re.search(case.warns, m) for m in result["warnings"]), result["warnings"]
    e: Expect = result["expect"]
    rid = result["mlflow_run_id"]
    keymap = journal_keymap(result["run_dir"])
    # no two keys collide: distinct keys stay distinct in MLflow
    originals = {k for k, _, _ in e.metrics}
    assert len({keymap.get(k, k) for k in originals}) == len(originals)
    # metrics: each expected point exactly once in both backends
    expected = Counter((k, s, norm(v)) for k, s, v in e.metrics)
    if expected:
        mlflow_expected = Counter({(keymap.get(k, k), s, v): n for (k, s, v), n in expected.items()})
        wandb_expected = Counter({(e.wandb_keys.get(k, k), s, v): n for (k, s, v), n in expected.items()})
        # read from the server's SQLite file: one query instead of one REST call per key (2,500 in one row)
        assert_exactly_once(mlflow_expected, mlflow_points_db(result["db"], rid), "MLflow")
        assert_exactly_once(wandb_expected, wandb_points(result["run_dir"], result["run_id"]), "W&B")
    # params and tags
    data = MlflowClient(result["uri"]).get_run(rid).data
    config = read_runs(result["run_dir"], result["run_id"]).config
    for key, (text, wandb_value) in e.params.items():
        stored = keymap.get(key, key)
        if key == "long":
            assert data.params[key].startswith(text) and "full value in artifact params/long.txt" in data.params[key]
        else:
            assert data.params.get(stored) == text, (key, stored, data.params.get(stored))
        got = config.get(key)
        assert got == wandb_value or (isinstance(wandb_value, float) and math.isclose(got, wandb_value)), (key, got)
    for key, value in e.tags.items():
        assert data.tags.get(key) == value
    if case.check:
        case.check(result)
    if os.environ.get("DUALTRACK_RELIABILITY_REPORT"):
        report(**_counts(result))


def test_every_row_is_documented() -> None:
    text = DOC.read_text(encoding="utf-8")
    missing = [c.id for c in CASES if f"`{c.id}`" not in text]
    assert not missing, f"rows missing from {DOC}: {missing}"
