"""Delivery: the journal, read back and handed to each backend, nothing lost, nothing stored twice.

One file per concern (each imports nothing heavy; sinks import their backend on first use):

* :mod:`~lightning_dualtrack.delivery.errors`: the error taxonomy (transient / too large / rejected / blocked).
* :mod:`~lightning_dualtrack.delivery.state`: ack state per sink, shared by the logger, the CLI and the shipper.
* :mod:`~lightning_dualtrack.delivery.links`: the cross-link exchange (each backend's run names the other's).
* :mod:`~lightning_dualtrack.delivery.worker`: one thread per sink: read, deliver, ack, isolate, retry.
* :mod:`~lightning_dualtrack.delivery.shipper`: the loop that runs the workers for one run (``dualtrack sync``
  and the child process ``python -m lightning_dualtrack.shipper``).
* :mod:`~lightning_dualtrack.delivery.process`: the logger's side: start, supervise and stop that child.
* :mod:`~lightning_dualtrack.delivery.report`: the final message (delivered / pending / rejected, and the command).
"""
