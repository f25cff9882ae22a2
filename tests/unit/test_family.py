"""Parent and child runs (run.family): the summaries, the parent's list of children, the ``parent`` relation in
``run.json``, and how a pruned trial ends (journal only, no delivery)."""

from __future__ import annotations

import json
import math

import optuna
import pytest

from lightning_dualtrack import DualTrackLogger
from lightning_dualtrack.core.journal import JournalReader
from lightning_dualtrack.run import family


def _logger(tmp_path, **kwargs) -> DualTrackLogger:
    return DualTrackLogger(experiment_name="family", save_dir=tmp_path / "runs", deliver=False, log_system_info=False,
                           mlflow=False, wandb=False, **kwargs)


def _kinds(logger, kind: str) -> list[dict]:
    return [r for r in JournalReader(logger.run_dir) if r["k"] == kind]


def test_fold_summary_is_mean_and_population_std_over_the_children() -> None:
    out = family.fold_summary([{"acc": 0.8, "epoch": 2.0}, {"acc": 0.9, "loss": 1.0, "epoch": 2.0}, {"acc": 1.0}, {}])
    assert list(out) == ["acc"]  # every child's metric (not epoch); an empty child is left out
    assert out["acc"]["mean"] == pytest.approx(0.9) and out["acc"]["n"] == 3.0
    assert out["acc"]["std"] == pytest.approx(math.sqrt(((0.1) ** 2 * 2) / 3))
    assert family.fold_summary([{"acc": 1.0}, {"loss": 2.0}], ["loss", "missing"]) == {"loss": {"mean": 2.0, "std": 0.0, "n": 1.0}}


def test_study_summary_counts_states_and_names_the_best_trial() -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize")

    def objective(trial):
        x = trial.suggest_float("x", 0, 1)
        trial.set_user_attr(family.TRIAL_RUN_ID_ATTR, f"run{trial.number}")
        if trial.number == 1:
            raise optuna.TrialPruned()
        if trial.number == 2:
            raise RuntimeError("boom")
        return x if trial.number else 10.0

    study.optimize(objective, n_trials=4, catch=(RuntimeError,))
    metrics, params, tags = family.study_summary(study)
    assert metrics["study/n_trials"] == 4 and metrics["study/n_complete"] == 2
    assert metrics["study/n_pruned"] == 1 and metrics["study/n_failed"] == 1
    assert metrics["study/best_value"] == 10.0 and metrics["study/best_trial"] == 0
    assert params == {"study/best_params/x": study.trials[0].params["x"]}
    assert tags == {"dualtrack.best_trial": "0", "dualtrack.best_run_id": "run0"}


def test_a_child_names_its_parent_and_joins_its_list(tmp_path) -> None:
    parent = _logger(tmp_path, run_name="study")
    kid = parent.child(run_name="trial-0", job_type="trial")
    kid.log_metrics({"val/acc": 0.5}, step=0)
    settings = json.loads((kid.run_dir / "run.json").read_text())
    assert settings["parent"] == {"run_id": parent.run_id, "run_dir": str(parent.run_dir.resolve()), "run_name": "study",
                                  "job_type": "trial"}
    assert settings["experiment_name"] == "family" and kid.root_dir == parent.root_dir  # inherited
    tags = {k: v for r in _kinds(kid, "tags") for k, v in r["v"].items()}
    assert tags == {"dualtrack.parent_run_id": parent.run_id, "dualtrack.job_type": "trial"}
    assert [c["run_id"] for c in family.children(parent.run_dir)] == [kid.run_id]


def test_a_child_of_a_parent_in_another_process_is_made_from_its_run_directory(tmp_path) -> None:
    parent = _logger(tmp_path, run_name="cv")
    parent.start_run()
    kid = _logger(tmp_path, parent=str(parent.run_dir))
    kid.log_metrics({"x": 1.0}, step=0)
    assert json.loads((kid.run_dir / "run.json").read_text())["parent"]["run_name"] == "cv"
    with pytest.raises(ValueError, match=r"Expected argument `parent` to be a DualTrackLogger or a run directory .* but got '.*nowhere'"):
        _logger(tmp_path, parent=str(tmp_path / "nowhere"))
    with pytest.raises(TypeError, match="but got int"):
        _logger(tmp_path, parent=3)


def test_summarize_children_logs_mean_and_std_into_the_parent(tmp_path) -> None:
    parent = _logger(tmp_path, run_name="cv")
    for k, acc in enumerate((0.6, 0.8, 1.0)):
        with parent.child(run_name=f"fold-{k}", job_type="fold") as fold:
            fold.log_metrics({"val/acc": 0.1, "epoch": 0.0}, step=0)
            fold.log_metrics({"val/acc": acc, "epoch": 1.0}, step=1)  # the last value counts
    with pytest.warns(UserWarning, match=r"no child of run \w+ logged \['val/f1'\]"):
        out = parent.summarize_children(["val/acc", "val/f1"])
    assert out == {"summary/children": 3.0, "summary/val/acc/mean": pytest.approx(0.8),
                   "summary/val/acc/std": pytest.approx(math.sqrt(0.08 / 3))}
    assert _kinds(parent, "metrics")[-1]["v"] == out


def test_children_replaced_by_their_fork_are_summarised_as_the_fork(tmp_path) -> None:
    family.add_child(tmp_path, "a", tmp_path / "a", "fold-0", "fold")
    family.add_child(tmp_path, "b", tmp_path / "b", "fold-1", "fold")
    family.add_child(tmp_path, "c", tmp_path / "c", "fold-1-fork3", "fold", replaces="b")
    assert [c["run_id"] for c in family.children(tmp_path)] == ["a", "c"]


def test_a_trial_pruned_during_the_block_ends_aborted_and_tagged_pruned(tmp_path) -> None:
    with pytest.raises(optuna.TrialPruned), _logger(tmp_path) as run:
        run.log_metrics({"val/acc": 0.1}, step=0)
        raise optuna.TrialPruned("pruned at epoch 0")
    assert _kinds(run, "end")[-1]["status"] == "aborted"
    assert {"dualtrack.status": "pruned"} in [r["v"] for r in _kinds(run, "tags")]


def test_end_run_pruned_after_a_successful_session_records_the_new_status(tmp_path) -> None:
    run = _logger(tmp_path)
    run.log_metrics({"val/acc": 0.1}, step=0)
    run.finalize("success")  # Lightning's end of fit (DDP pruning stops training instead of raising)
    run.end_run("pruned")
    assert [r["status"] for r in _kinds(run, "end")] == ["success", "aborted"]
    assert {"dualtrack.status": "pruned"} in [r["v"] for r in _kinds(run, "tags")]
    run.end_run("success")  # nothing more to record
    assert len(_kinds(run, "end")) == 2
