"""The run behind :class:`~lightning_dualtrack.DualTrackLogger`, in the order a log call flows through it.

* :mod:`.config` -- the logger's arguments resolved, the backends' from their sinks' declarations; ``run.json``.
* :mod:`.policy` -- input policies: keys (each backend's key rules, reserved keys, masked credentials),
  param flattening, redaction and ``.vN`` versioning.
* :mod:`.payloads` -- figures, images, tables, confusion matrices, text, models and checkpoints
  become files in the run directory plus one journal record each.
* :mod:`.session` -- the run: directory, ``run.json``, the journal writer, resume, metadata, the delivery
  service it is followed by, finalize and the end of the run.
* :mod:`.compat`, :mod:`.media_api`, :mod:`.model_api` -- what users of Lightning's MLflow and W&B loggers call.
* :mod:`.jobs`, :mod:`.resume`, :mod:`.lineage`, :mod:`.family` (+ :mod:`.family_api`) -- the training life: a
  restarted job or a checkpoint continues its run, a rewound resume forks it, sweeps and folds are parent and
  child runs (docs/training-life.md).

Nothing here imports ``mlflow`` or ``wandb`` (a model save imports ``mlflow`` when it is called).
"""
