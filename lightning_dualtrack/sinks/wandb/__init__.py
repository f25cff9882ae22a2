"""The Weights & Biases backend: :mod:`.sink` (the sink) and :mod:`.runfile` (a reader of W&B's run files, for
exactly-once delivery on resume)."""
