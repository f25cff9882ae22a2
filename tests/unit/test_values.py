"""Key, value and param policies (the pure functions behind the logger's input handling)."""

from __future__ import annotations

import argparse
import dataclasses
import math
import posixpath
import re

import numpy as np
import pytest
import torch

from lightning_dualtrack.core.values import DroppedValue, flatten_params, param_text, to_float
from lightning_dualtrack.sinks.mlflow.keys import KeyMap, sanitize_mlflow_key

MLFLOW_KEY = re.compile(r"^[/\w.\- :]*$")


def assert_valid_mlflow_key(key: str) -> None:
    assert key and len(key) <= 250 and MLFLOW_KEY.match(key), key
    assert posixpath.normpath(key) == key, key


@pytest.mark.parametrize(
    "key",
    ["acc@1", "../x", "a//b", "", "/a", "a/", "x" * 300, "ünïcødé/ключ", "a b:c", "a/./b", "..", "a/..", "tab\tkey", "a\\b"],
)
def test_sanitized_keys_are_valid_mlflow_keys(key: str) -> None:
    assert_valid_mlflow_key(sanitize_mlflow_key(key))


def test_valid_keys_are_unchanged() -> None:
    for key in ["train/loss", "val/f1/using_laptop", "lr-AdamW", "a.b c:d"]:
        assert sanitize_mlflow_key(key) == key


def test_keymap_never_lands_two_keys_on_one_stored_key() -> None:
    keys = KeyMap()
    originals = ["acc@1", "acc#1", "acc_1", "acc 1", "x" * 300, "x" * 299 + "y"]
    stored = [keys.add(k)[0] for k in originals]
    assert len(set(stored)) == len(originals)
    for s in stored:
        assert_valid_mlflow_key(s)
    assert keys.add("acc@1")[0] == stored[0]  # stable
    assert keys.changed()["acc@1"] == "acc_1"


def test_keymap_restore_replays_the_same_mapping() -> None:
    live = KeyMap()
    for k in ["a@b", "a_b", "a#b"]:
        live.add(k)
    replay = KeyMap()
    for k, v in live.forward.items():
        replay.restore(k, v)
    assert replay.add("a_b")[0] == live.forward["a_b"]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (True, 1.0),
        (3, 3.0),
        (np.float32(0.5), 0.5),
        (np.int64(7), 7.0),
        (torch.tensor(2.5), 2.5),
        (torch.tensor([4.0]), 4.0),
        (np.array(1.5), 1.5),
        (torch.tensor(1.0, dtype=torch.bfloat16), 1.0),
    ],
)
def test_scalars_become_floats(value, expected) -> None:
    assert to_float(value) == expected


def test_nan_and_inf_are_kept() -> None:
    assert math.isnan(to_float(float("nan")))
    assert to_float(float("inf")) == math.inf
    assert to_float(np.float64("-inf")) == -math.inf


@pytest.mark.parametrize("value", ["0.5", None, torch.ones(3), np.ones((2, 2)), object(), b"1"])
def test_non_scalars_are_dropped_with_a_reason(value) -> None:
    with pytest.raises(DroppedValue):
        to_float(value)


def test_flatten_nested_namespace_dataclass_and_callables() -> None:
    @dataclasses.dataclass
    class Opt:
        lr: float = 0.1
        betas: tuple = (0.9, 0.99)

    params = {
        "opt": Opt(),
        "ns": argparse.Namespace(a=1, b={"c": None}),
        "fn": math.sqrt,
        "cls": KeyMap,
        "deep": {"l2": {"l3": {"l4": {"l5": {"l6": 1}}}}},
        "s": {3, 1, 2},
    }
    flat = flatten_params(params)
    assert flat["opt/lr"] == 0.1
    assert flat["opt/betas"] == [0.9, 0.99]
    assert flat["ns/a"] == 1 and flat["ns/b/c"] is None
    assert flat["fn"] == "math.sqrt"
    assert flat["cls"].endswith("KeyMap")
    assert flat["deep/l2/l3/l4/l5/l6"] == 1
    assert flat["s"] == [1, 2, 3]


def test_flatten_beyond_max_depth_keeps_the_subtree_as_json() -> None:
    flat = flatten_params({"a": {"b": {"c": 1}}}, max_depth=2)
    assert flat == {"a/b": '{"c": 1}'}


def test_flatten_rejects_non_mappings_by_name() -> None:
    with pytest.raises(TypeError, match="params"):
        flatten_params([1, 2])


def test_param_text() -> None:
    assert param_text([1, 2]) == "[1, 2]"
    assert param_text(None) == "None"
    assert param_text(0.1) == "0.1"


def test_flatten_reports_cycles_and_keeps_merged_keys_apart() -> None:
    from lightning_dualtrack.core.values import flatten_params

    problems: list[str] = []
    params: dict = {"a/b": 1, "a": {"b": 2}, "a/b_2": 3}
    params["loop"] = params
    out = flatten_params(params, on_problem=problems.append)
    assert out == {"a/b": 1, "a/b_3": 2, "a/b_2": 3, "loop": "<cycle>"}  # `a/b_2` is the user's: the merge skips it
    assert any("'loop'" in p and "cycle" in p for p in problems)
    assert any("both flatten to 'a/b'" in p and "'a/b_3'" in p for p in problems)


def test_preview_is_short_for_any_value() -> None:
    import numpy as np

    from lightning_dualtrack.core.values import preview

    for value in ("x" * 10_000, [np.zeros((100, 100, 3))] * 5, {i: i for i in range(1000)}):
        text = preview(value)
        assert len(text) <= 200 and text.startswith(type(value).__name__)
