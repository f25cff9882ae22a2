"""Delivery: the journal, read back and handed to each backend, nothing lost, nothing stored twice.

One file per concern (none imports anything heavy; sinks import their backend on first use):

* :mod:`~lightning_dualtrack.delivery.client`: the training process's side: its one delivery service, started
  once and shared by every run; commands, liveness, the bounded wait for a run's end.
* :mod:`~lightning_dualtrack.delivery.service`: that service process (``python -m lightning_dualtrack.delivery``).
* :mod:`~lightning_dualtrack.delivery.rundelivery`: one run's workers under its lock (the service keeps one per
  run; ``dualtrack sync`` runs one in the foreground).
* :mod:`~lightning_dualtrack.delivery.worker`: one thread per backend: read, deliver, ack, isolate, retry.
* :mod:`~lightning_dualtrack.delivery.state`: ack state per backend, read by the logger, the CLI and delivery.
* :mod:`~lightning_dualtrack.delivery.links`: the cross-link exchange (each backend's run names the others').
* :mod:`~lightning_dualtrack.delivery.report`: the final message (delivered / pending / rejected, and the command).
* :mod:`~lightning_dualtrack.delivery.priority`: only idle CPU time while training runs.
"""
