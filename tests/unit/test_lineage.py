"""Rewind, not duplicate (run.lineage): the verdict on a continued run's first metrics, what a fork takes from the
original, and the logger forking (journal only, no delivery): the original's journal untouched, no step twice."""

from __future__ import annotations

import json

import pytest

from lightning_dualtrack import DualTrackLogger, DualTrackWarning
from lightning_dualtrack.core import records
from lightning_dualtrack.core.journal import JournalReader
from lightning_dualtrack.run.lineage import CONTINUE, FORK, WATCH, RewindWatch, fork_records


@pytest.mark.parametrize(("step", "values", "verdict", "kept", "repeated"), [
    (3, {"new": 1.0}, WATCH, {"new": 1.0}, []),  # nothing logged before: undecided
    (8, {"loss": 1.0, "new": 2.0}, FORK, {"loss": 1.0, "new": 2.0}, []),  # before the last step: a rewind
    (15, {"val": 1.0, "epoch": 1.0}, WATCH, {}, ["val", "epoch"]),  # the last point again: not logged twice
    (16, {"loss": 1.0, "epoch": 2.0}, CONTINUE, {"loss": 1.0, "epoch": 2.0}, []),
    (15, {"loss": 1.0, "val": 2.0}, CONTINUE, {"loss": 1.0}, ["val"]),  # loss was last logged at 14
])
def test_the_first_metrics_of_a_continued_session_decide(step, values, verdict, kept, repeated) -> None:
    assert RewindWatch({"loss": 14, "val": 15, "epoch": 15}).check(step, values) == (verdict, kept, repeated)


def test_a_fork_takes_the_history_before_its_step_params_and_tags_but_no_payload() -> None:
    original = [
        records.start("orig", False),
        records.params({"lr": 0.1}),
        records.tags({"team": "a", "dualtrack.run_dir": "/old"}),
        records.keymap({"acc@1": "acc_1"}),
        records.metrics(6, {"loss": 1.0}),
        records.metrics(7, {"loss": 0.9, "val": 0.5}),
        records.image("img", "artifacts/media/x.png", 7),
        records.metrics(8, {"loss": 0.8}),
        records.end("success"),
    ]
    out = fork_records(original, 7, ["val"])  # the new session logs val at 7 again (a re-run validation)
    assert [r["k"] for r in out] == ["params", "tags", "keymap", "metrics", "metrics"]
    assert out[1]["v"] == {"team": "a"}  # the fork names its own directory
    assert [(r["s"], r["v"]) for r in out if r["k"] == "metrics"] == [(6, {"loss": 1.0}), (7, {"loss": 0.9})]
    assert original[4]["v"] == {"loss": 1.0} and original[5]["v"] == {"loss": 0.9, "val": 0.5}  # not changed


def _logger(tmp_path, **kwargs) -> DualTrackLogger:
    return DualTrackLogger(experiment_name="lineage", save_dir=tmp_path / "runs", deliver=False, log_system_info=False,
                           mlflow=False, wandb=False, **kwargs)


def _metrics(run_dir) -> list[tuple[int, str]]:
    return [(r["s"], k) for r in JournalReader(run_dir) if r["k"] == "metrics" for k in r["v"]]


def _first_run(tmp_path) -> DualTrackLogger:
    first = _logger(tmp_path, run_name="base")
    with first:
        first.log_params({"lr": 0.1})
        for step in range(10):
            first.log_metrics({"loss": 1.0 / (step + 1)}, step=step)
    return first


def test_resuming_at_an_earlier_step_forks_and_leaves_the_original_as_it_was(tmp_path) -> None:
    first = _first_run(tmp_path)
    journal = (first.run_dir / "journal.jsonl").read_bytes()
    again = _logger(tmp_path, run_id=first.run_id)
    again.log_params({"lr": 0.1})
    with pytest.warns(DualTrackWarning, match=rf"run {first.run_id} was resumed at step 4, but it already holds loss up "
                                              r"to step 9: logging on into a fork, run \w+ \('base-fork4'"):
        again.log_metrics({"loss": 0.7}, step=4)
    for step in range(5, 8):
        again.log_metrics({"loss": 0.5}, step=step)
    again.end_run()
    assert (first.run_dir / "journal.jsonl").read_bytes() == journal  # nothing of the session reached it
    assert again.run_id != first.run_id and again.run_dir != first.run_dir
    assert _metrics(again.run_dir) == [(s, "loss") for s in range(8)]  # 0-3 from the original, then the fork's
    settings = json.loads((again.run_dir / "run.json").read_text())
    assert settings["fork"] == {"run_id": first.run_id, "run_dir": str(first.run_dir.resolve()), "run_name": "base",
                                "step": 4}
    assert settings["run_name"] == "base-fork4"
    tags = {k: v for r in JournalReader(again.run_dir) if r["k"] == "tags" for k, v in r["v"].items()}
    assert tags["dualtrack.forked_from"] == first.run_id and tags["dualtrack.fork_step"] == "4"
    assert tags["dualtrack.run_dir"] == str(again.run_dir.resolve())
    assert [r["v"] for r in JournalReader(again.run_dir) if r["k"] == "params"] == [{"lr": 0.1}]


def test_continuing_after_the_last_step_stays_in_the_run(tmp_path) -> None:
    first = _first_run(tmp_path)
    again = _logger(tmp_path, run_id=first.run_id)
    with again:
        again.log_metrics({"test/loss": 0.3}, step=3)  # a key never logged: no rewind, whatever the step
        again.log_metrics({"loss": 0.05}, step=10)
    assert again.run_id == first.run_id
    assert _metrics(first.run_dir)[-2:] == [(3, "test/loss"), (10, "loss")]


def test_the_last_point_logged_again_is_dropped_with_a_warning(tmp_path) -> None:
    first = _first_run(tmp_path)
    again = _logger(tmp_path, run_id=first.run_id)
    with again:
        with pytest.warns(DualTrackWarning, match="already holds loss at step 9, the last step it logged them at"):
            again.log_metrics({"loss": 0.1}, step=9)
        again.log_metrics({"loss": 0.09}, step=10)
    assert again.run_id == first.run_id
    assert [s for s, _ in _metrics(first.run_dir)] == list(range(11))


def test_a_session_without_metrics_is_journalled_into_the_run(tmp_path) -> None:
    first = _first_run(tmp_path)
    again = _logger(tmp_path, run_id=first.run_id)
    with again:
        again.set_tags({"stage": "export"})
    kinds = [r["k"] for r in JournalReader(first.run_dir)]
    assert kinds[-3:] == ["start", "tags", "end"]


def test_evaluating_a_checkpoint_of_a_run_logs_into_it_without_forking(tmp_path) -> None:
    """``trainer.test`` / ``validate`` on a continued run is not a resumed training: its metrics at the trainer's step
    0 go into the run beside its history (as Lightning's own loggers put them), no fork, no warning."""
    import warnings

    from tests.helpers import TinyModel, loaders, trainer

    train, val = loaders()
    first = _logger(tmp_path)
    trainer(first, max_steps=16).fit(TinyModel(), train, val)
    first.end_run()
    again = _logger(tmp_path, run_id=first.run_id)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DualTrackWarning)
        trainer(again).validate(TinyModel(), val)
    again.end_run()
    assert again.run_id == first.run_id and again.run_dir == first.run_dir
    logged = [(r["s"], sorted(r["v"])) for r in JournalReader(first.run_dir) if r.get("k") == "metrics"]
    assert logged[-1][0] == 0 and "val/loss" in logged[-1][1]  # the validate session's point, after the fit's
    assert max(s for s, keys in logged[:-1] if "val/loss" in keys) == 15
