"""The run behind :class:`~lightning_dualtrack.DualTrackLogger`, in the order a log call flows through it.

* :mod:`.policy` -- input policies: keys (MLflow's key map, reserved keys, masked credentials),
  param flattening, redaction and ``.vN`` versioning; warnings and strict-mode errors.
* :mod:`.payloads` -- figures, images, tables, confusion matrices, text, models and checkpoints
  become files in the run directory plus one journal record each.
* :mod:`.session` -- the run: directory, ``run.json``, the journal writer, resume, metadata, finalize.
* :mod:`.lifecycle` -- the delivery (shipper) process: start, health, bounded wait, final report.

Nothing here imports ``mlflow`` or ``wandb`` (a model save imports ``mlflow`` when it is called).
"""

from lightning_dualtrack.run.config import RunConfig, new_run_id
from lightning_dualtrack.run.policy import DualTrackWarning
from lightning_dualtrack.run.session import Run

__all__ = ["DualTrackWarning", "Run", "RunConfig", "new_run_id"]
