"""``python -m lightning_dualtrack.delivery --parent-pid PID``: the delivery service of one training process."""

from lightning_dualtrack.delivery.service import main

if __name__ == "__main__":
    raise SystemExit(main())
