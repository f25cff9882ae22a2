"""The MLflow backend: :mod:`.sink` (the sink), :mod:`.rest` (its tracking calls), :mod:`.models` (models and the
registry), :mod:`.keys` (MLflow's rules for keys and values), :mod:`.errors` (what MLflow's answers mean) and
:mod:`.store` (the embedded store's creation)."""
