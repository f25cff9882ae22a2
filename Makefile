# Two commands do everything on a fresh machine:
#   make quickstart   create .venv, install, train the CLIP HAR quickstart recipe with MLflow + W&B
#   make test         create or reuse .venv, install the dev extras, run the test suite
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
PYTEST_ARGS ?=

.PHONY: quickstart test test-unit test-reliability lint bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

# re-install only when the dependencies change
$(VENV)/.installed-runtime: pyproject.toml | $(PY)
	$(PIP) install --quiet -e ".[export]"
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(PY)
	$(PIP) install --quiet -e ".[dev]"
	touch $@ $(VENV)/.installed-runtime

quickstart: $(VENV)/.installed-runtime
	$(VENV)/bin/dualtrack fit --config recipes/quickstart.yaml --test_after_fit true
	@echo; echo "Where to look:"; $(VENV)/bin/dualtrack status --latest dualtrack_runs

# every tier (tests/unit, tests/contract, tests/e2e) in parallel, one worker per core; the slowest 25 are printed
test: $(VENV)/.installed-dev
	$(PY) -m pytest -n auto $(PYTEST_ARGS)

test-unit: $(VENV)/.installed-dev
	$(PY) -m pytest -n auto tests/unit $(PYTEST_ARGS)

test-reliability: $(VENV)/.installed-dev
	$(PY) -m pytest -n auto -m reliability $(PYTEST_ARGS)

lint: $(VENV)/.installed-dev
	$(VENV)/bin/ruff check lightning_dualtrack tests benchmarks
	$(VENV)/bin/lint-imports

bench: $(VENV)/.installed-dev
	$(PY) benchmarks/logger_overhead.py
	$(PY) benchmarks/inference_throughput.py

clean:
	rm -rf dualtrack_runs mlflow.db mlruns mlartifacts wandb lightning_logs benchmarks/results .pytest_cache
