"""The TensorBoard sink, read back with TensorBoard's own ``EventAccumulator``: what each record kind becomes, and
exactly once under a second delivery, a lost or lagging state file, a writer that fails part-way and event files
deleted while the run is delivered."""

from __future__ import annotations

import errno
import json
import shutil
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from lightning_dualtrack.core import records
from lightning_dualtrack.core.errors import BlockedError, TransientError
from lightning_dualtrack.core.io import RUN_FILE, STATE_DIR, read_json, write_json_atomic
from lightning_dualtrack.core.journal import JournalReader, JournalWriter
from lightning_dualtrack.delivery import worker
from lightning_dualtrack.delivery.links import Links
from lightning_dualtrack.delivery.rundelivery import deliver_run
from lightning_dualtrack.sinks import sink_class
from lightning_dualtrack.sinks.base import RunContext
from lightning_dualtrack.sinks.tensorboard import (
    OFFSET_TAG,
    TensorBoardSink,
    markdown_table,
    merged_params,
    run_subdir,
)

pytest.importorskip("tensorboard")

RUN_ID = "tb1"
ALL = {"scalars": 0, "images": 0, "histograms": 0, "tensors": 0, "compressedHistograms": 0, "audio": 0}
LOSS_STEPS = [0, 1, 2, 10, 5]  # a lower step after a higher one (validation after training, a resumed run)


def make_run(tmp_path: Path, recs: list[dict[str, Any]], *, end: bool = True, section: dict[str, Any] | None = None,
             run_name: str = "tb-test") -> Path:
    run_dir = tmp_path / RUN_ID
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(run_dir / RUN_FILE, {"run_id": RUN_ID, "experiment_name": "x", "run_name": run_name,
                                           "created_ms": 1_700_000_000_000,
                                           "tensorboard": {"enabled": True, "log_dir": None, **(section or {})}})
    journal = JournalWriter(run_dir)
    journal.append(records.start(RUN_ID, False))
    for rec in recs:
        journal.append(rec)
    if end:
        journal.append(records.end("success"))
    journal.close()
    return run_dir


def write_png(path: Path, width: int = 6, height: int = 4) -> bytes:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (width, height), (200, 30, 30)).save(path, format="PNG")
    return path.read_bytes()


def every_kind(run_dir: Path) -> list[dict[str, Any]]:
    """One record of each kind, payload files included."""
    write_png(run_dir / "media" / "in.png")
    (run_dir / "media" / "preds.json").write_text(json.dumps(
        {"columns": ["id", "label", "image"], "data": [[1, "cat", {"_image": "media/in.png"}], [2, "a|b", None]]}))
    (run_dir / "media" / "cm.json").write_text(json.dumps({"title": "val", "class_names": ["a", "b"], "matrix": [[3, 1], [0, 4]]}))
    (run_dir / "artifacts").mkdir(exist_ok=True)
    (run_dir / "artifacts" / "notes.txt").write_text("kept in the run directory")
    return [
        records.params({"lr": 0.1, "layers": [64, 64], "name": "tiny"}),
        records.tags({"team": "vision"}),
        records.keymap({"a b": "a_b"}),
        *[records.metrics(s, {"train/loss": 1.0 / (s + 1)}) for s in LOSS_STEPS],
        records.params({"lr.v2": 0.2, "epochs": 3}, latest={"lr": 0.2}),  # lr changed (MLflow keeps lr.v2)
        records.image("samples/input", "media/in.png", step=2, caption="a red picture"),
        records.table("preds", "media/preds.json", step=2, media=["media/in.png"]),
        records.confusion_matrix("val/cm", "media/cm", step=10),
        records.histograms(4, {"gradients/w": (-1.0, 1.0, [1, 2, 3, 4])}),
        records.file("artifacts/notes.txt"),
    ]


def read(log_dir: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir), size_guidance=ALL)
    acc.Reload()
    return acc


def texts(acc, tag: str) -> list[str]:
    return [e.tensor_proto.string_val[0].decode() for e in acc.Tensors(tag)]


def hparams(acc) -> dict[str, Any]:
    from tensorboard.plugins.hparams import metadata

    info = metadata.parse_session_start_info_plugin_data(acc.PluginTagToContent("hparams")[metadata.SESSION_START_INFO_TAG])
    return {k: getattr(v, v.WhichOneof("kind")) for k, v in info.hparams.items()}


def everything(log_dir: Path) -> Counter:
    """Every event value TensorBoard reads from the run, counted: a value written twice counts two."""
    acc = read(log_dir)
    tags = acc.Tags()
    seen: Counter = Counter()
    for tag in tags["scalars"]:
        seen.update(("scalar", tag, e.step, e.value) for e in acc.Scalars(tag))
    for tag in tags["images"]:
        seen.update(("image", tag, e.step, len(e.encoded_image_string)) for e in acc.Images(tag))
    for tag in tags["histograms"]:
        seen.update(("hist", tag, e.step, e.histogram_value.num) for e in acc.Histograms(tag))
    for tag in tags["tensors"]:
        seen.update(("tensor", tag, e.step, e.tensor_proto.SerializeToString()) for e in acc.Tensors(tag))
    return seen


def loss_steps(log_dir: Path) -> list[int]:
    return [e.step for e in read(log_dir).Scalars("train/loss")]


def test_each_record_kind_becomes_what_tensorboard_shows(tmp_path: Path) -> None:
    run_dir = tmp_path / RUN_ID
    run_dir.mkdir()
    make_run(tmp_path, every_kind(run_dir))
    state = deliver_run(run_dir, log=lambda m: None)["tensorboard"]
    assert state["closed"] and state["failed"] == 0, state
    acc = read(run_dir / "tensorboard")

    loss = acc.Scalars("train/loss")
    assert [e.step for e in loss] == LOSS_STEPS
    assert [round(e.value, 6) for e in loss] == [round(1.0 / (s + 1), 6) for s in LOSS_STEPS]
    assert acc.Tags()["scalars"] == ["train/loss"]  # the journal offsets are no chart
    # the HParams tab: the merged params, a changed one under its own name with its latest value
    assert hparams(acc) == {"lr": 0.2, "layers": "[64, 64]", "name": "tiny", "epochs": 3.0}
    params_text = texts(acc, "dualtrack/params")
    assert len(params_text) == 2 and "| lr | 0.1 |" in params_text[0] and "| lr | 0.2 |" in params_text[1]
    assert "lr.v2" not in params_text[1]
    assert "| team | vision |" in texts(acc, "dualtrack/tags")[0]

    (image,) = acc.Images("samples/input")
    assert (image.step, image.width, image.height) == (2, 6, 4)
    assert image.encoded_image_string == (run_dir / "media" / "in.png").read_bytes()
    for tag in ("val/cm", "val/cm_normalized"):  # drawn in delivery from the matrix
        (cm,) = acc.Images(tag)
        assert cm.step == 10 and cm.encoded_image_string.startswith(b"\x89PNG")
    (table,) = texts(acc, "preds")
    assert table.splitlines()[0] == "| id | label | image |" and "| 2 | a\\|b | None |" in table and "`media/in.png`" in table
    (hist,) = acc.Histograms("gradients/w")
    assert hist.step == 4 and list(hist.histogram_value.bucket) == [1, 2, 3, 4]
    assert list(hist.histogram_value.bucket_limit) == [-0.5, 0.0, 0.5, 1.0] and hist.histogram_value.num == 10


@pytest.mark.parametrize("state_file", ["deleted", "behind"])
def test_delivering_again_writes_nothing_twice(tmp_path: Path, state_file: str) -> None:
    """A second delivery is up to date; without its state file (or with acks that lag behind what the event files
    hold: a delivery killed between writing and acknowledging) delivery resumes where the event files end."""
    run_dir = tmp_path / RUN_ID
    run_dir.mkdir()
    make_run(tmp_path, every_kind(run_dir))
    deliver_run(run_dir, log=lambda m: None)
    log_dir = run_dir / "tensorboard"
    first, files = everything(log_dir), sorted(p.name for p in log_dir.iterdir())
    assert sorted(k[2] for k in first if k[:2] == ("scalar", "train/loss")) == sorted(LOSS_STEPS)
    assert max(first.values()) == 1  # no value twice to begin with (the params texts differ)

    deliver_run(run_dir, log=lambda m: None)
    assert everything(log_dir) == first and sorted(p.name for p in log_dir.iterdir()) == files

    state_path = run_dir / STATE_DIR / "tensorboard.json"
    if state_file == "deleted":
        state_path.unlink()
    else:
        write_json_atomic(state_path, {**read_json(state_path), "offset": 0, "closed": False})
    messages: list[str] = []
    deliver_run(run_dir, log=messages.append)
    assert any("already holds the journal up to byte" in m for m in messages), messages
    assert everything(log_dir) == first


def test_a_run_delivered_in_two_parts_holds_each_record_once(tmp_path: Path) -> None:
    """A crashed run delivered, then continued by another process: the second part starts where the files end."""
    run_dir = make_run(tmp_path, [records.metrics(s, {"train/loss": float(s)}) for s in range(3)], end=False)
    deliver_run(run_dir, log=lambda m: None)
    state_path = run_dir / STATE_DIR / "tensorboard.json"
    write_json_atomic(state_path, {**read_json(state_path), "offset": 0})  # its acks were lost
    journal = JournalWriter(run_dir)
    journal.append(records.start(RUN_ID, True))
    for s in range(3, 6):
        journal.append(records.metrics(s, {"train/loss": float(s)}))
    journal.append(records.end("success"))
    journal.close()
    deliver_run(run_dir, log=lambda m: None)
    assert loss_steps(run_dir / "tensorboard") == list(range(6))


def test_a_writer_that_fails_part_way_is_replaced_without_writing_a_record_twice(tmp_path: Path, monkeypatch) -> None:
    from tensorboard.summary.writer.event_file_writer import EventFileWriter

    monkeypatch.setattr(worker.Backoff, "next", lambda self: 0.01)
    real_add = EventFileWriter.add_event
    calls = {"n": 0}

    def disk_full_once(self, event) -> None:
        calls["n"] += 1
        if calls["n"] == 6:  # what came before is on disk but not acknowledged
            self.flush()
            raise OSError(errno.ENOSPC, "No space left on device")
        real_add(self, event)

    monkeypatch.setattr(EventFileWriter, "add_event", disk_full_once)
    run_dir = make_run(tmp_path, [records.metrics(s, {"train/loss": float(s)}) for s in range(10)])
    messages: list[str] = []
    state = deliver_run(run_dir, log=messages.append)["tensorboard"]
    assert calls["n"] > 6 and state["retries"] >= 1 and state["closed"], (calls, state)
    assert any("BLOCKED" in m and "free disk space" in m for m in messages), messages
    log_dir = run_dir / "tensorboard"
    assert len(list(log_dir.glob("events.out.tfevents.1*"))) == 2  # the failed writer's file, and its replacement
    assert loss_steps(log_dir) == list(range(10))


def test_event_files_deleted_during_delivery_are_written_again_from_the_start(tmp_path: Path) -> None:
    run_dir = make_run(tmp_path, [records.metrics(s, {"train/loss": float(s)}) for s in range(5)], end=False)
    messages: list[str] = []
    stop = threading.Event()
    w = worker.SinkWorker(RunContext.load(run_dir), TensorBoardSink, "tensorboard", Links(), stop, follow=True,
                          sink_cls=TensorBoardSink, poll_interval=0.01, log=messages.append)
    w.start()
    try:
        size = (run_dir / "journal.jsonl").stat().st_size
        deadline = time.monotonic() + 30
        while w.state["offset"] < size and time.monotonic() < deadline:
            time.sleep(0.01)
        assert loss_steps(run_dir / "tensorboard") == list(range(5))
        shutil.rmtree(run_dir / "tensorboard")  # a user cleaning the disk
        journal = JournalWriter(run_dir)
        for s in range(5, 8):
            journal.append(records.metrics(s, {"train/loss": float(s)}))
        journal.append(records.end("success"))
        journal.close()
        w.join(timeout=30)
    finally:
        stop.set()
        w.join(timeout=5)
    assert not w.is_alive() and w.state["closed"], w.state
    assert any("delivering the run again from the start" in m for m in messages), messages
    assert loss_steps(run_dir / "tensorboard") == list(range(8))


def test_a_record_it_cannot_show_is_set_aside_and_the_rest_delivered(tmp_path: Path) -> None:
    run_dir = make_run(tmp_path, [
        records.metrics(0, {"train/loss": 1.0}),
        records.image("samples/gone", "media/gone.png", step=1),  # deleted after it was logged
        records.metrics(1, {"train/loss": "not a number"}),
        records.metrics(2, {"train/loss": 0.5}),
    ])
    state = deliver_run(run_dir, log=lambda m: None)["tensorboard"]
    assert state["failed"] == 2 and state["closed"], state
    rejected = [json.loads(line) for line in (run_dir / STATE_DIR / "tensorboard.rejected.jsonl").read_text().splitlines()]
    assert [r["error"] for r in rejected] == ["rejected", "conversion"]
    assert loss_steps(run_dir / "tensorboard") == [0, 2]


def test_disk_errors_are_waited_out_and_other_errors_are_left_to_the_generic_rules() -> None:
    full = TensorBoardSink.classify(OSError(errno.ENOSPC, "No space left on device"))
    assert isinstance(full, BlockedError) and "free disk space" in full.action
    assert isinstance(TensorBoardSink.classify(PermissionError(errno.EACCES, "Permission denied")), BlockedError)
    io_error = TensorBoardSink.classify(OSError(errno.EIO, "Input/output error"))
    assert isinstance(io_error, TransientError) and not isinstance(io_error, BlockedError)
    assert TensorBoardSink.classify(ValueError("x")) is None


def test_a_shared_log_dir_holds_one_directory_per_run(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    resolved = sink_class("tensorboard").resolve({"log_dir": "tb"}, {"experiment_name": "x"})
    assert resolved.settings == {"log_dir": str(tmp_path / "tb")}  # absolute: delivery may run elsewhere
    with pytest.raises(ValueError, match="tensorboard_log_dir"):
        TensorBoardSink.resolve({"log_dir": "s3://bucket/tb"}, {})
    run_dir = make_run(tmp_path, [records.metrics(0, {"train/loss": 1.0})], section=resolved.settings, run_name="lr 0.1")
    state = deliver_run(run_dir, log=lambda m: None)["tensorboard"]
    own = tmp_path / "tb" / f"lr-0.1-{RUN_ID}"
    assert loss_steps(own) == [0] and not (run_dir / "tensorboard").exists()
    assert state["identity"]["log_dir"] == str(own) and TensorBoardSink.where(state) == str(own)
    assert TensorBoardSink.hints(state) == [f"TensorBoard: tensorboard --logdir {own}",
                                            f"             tensorboard --logdir {tmp_path / 'tb'}  (every run there)"]


def test_other_backends_runs_are_named_once_however_often_they_are_linked(tmp_path: Path) -> None:
    run_dir = make_run(tmp_path, [records.params({"lr": 0.1})])
    deliver_run(run_dir, log=lambda m: None)
    for _ in range(2):  # a second session, or a state file lost
        sink = TensorBoardSink(RunContext.load(run_dir))
        sink.open({})
        sink.link("mlflow", {"run_id": "abc", "url": None})
        sink.close("success")
    acc = read(run_dir / "tensorboard")
    (links,) = acc.Tensors("dualtrack/links")
    assert [s.decode() for s in links.tensor_proto.string_val] == ["mlflow.run_id", "abc"]
    assert hparams(acc) == {"lr": 0.1}  # the links share the params' file: rewriting it keeps them


def test_offsets_ride_on_every_event_and_nothing_is_written_for_bookkeeping(tmp_path: Path) -> None:
    run_dir = make_run(tmp_path, [records.keymap({"a b": "a_b"}), records.metrics(0, {"x": 1.0})])
    deliver_run(run_dir, log=lambda m: None)
    acc = read(run_dir / "tensorboard")
    offsets = [e.tensor_proto.int64_val[0] for e in acc.Tensors(OFFSET_TAG)]
    entries, _ = JournalReader(run_dir).read(0)
    assert offsets == [e.offset for e in entries if e.record["k"] == "metrics"]


def test_pure_helpers() -> None:
    assert run_subdir("abc", None) == "abc" and run_subdir("abc", "x-abc") == "x-abc" and run_subdir("abc", "../y") == "y-abc"
    assert markdown_table(["k"], [["a\nb|c"]]).splitlines()[-1] == "| a b\\|c |"
    assert merged_params({"v": {"bs.v3": 1, "x": 2}, "latest": {"bs": 1}}) == {"x": 2, "bs": 1}
