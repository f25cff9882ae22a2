"""The package's layers: data flows one way (logger -> run -> delivery -> sinks -> core), no unit imports another
in a cycle, and what a newcomer reads is what the code does (no shims, no comments naming old requests)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "lightning_dualtrack"


def test_the_import_contracts_in_pyproject_hold() -> None:
    lint = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run([str(lint), "--no-cache"], capture_output=True, text=True, cwd=PACKAGE.parent, timeout=120)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "BROKEN" not in result.stdout and "KEPT" in result.stdout


def test_no_module_imports_itself_through_a_cycle() -> None:
    grimp = pytest.importorskip("grimp", reason="grimp comes with import-linter (the dev extras)")
    graph = grimp.build_graph("lightning_dualtrack")
    cycles = []
    for module in graph.modules:
        for imported in graph.find_modules_directly_imported_by(module):
            if graph.chain_exists(importer=imported, imported=module):
                cycles.append((module, imported))
    assert cycles == []


def test_sink_modules_import_their_backend_only_where_they_deliver() -> None:
    """Reading a sink's declarations (the logger's arguments, run.json, the CLI) imports neither mlflow nor wandb."""
    code = ("import sys; from lightning_dualtrack.sinks import sink_classes; from lightning_dualtrack.logger import "
            "DualTrackLogger; [c.settings for c in sink_classes()]; "
            "print(sorted(m for m in ('mlflow', 'wandb') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120).stdout
    assert out.strip() == "[]"


def test_the_code_explains_itself_by_what_it_does_not_by_its_history() -> None:
    history = re.compile(r"\b(seed [0-9]|issue [0-9]+|as before|kept from|stays? importable from here)\b", re.IGNORECASE)
    found = [f"{p.relative_to(PACKAGE)}:{i}: {line.strip()}" for p in PACKAGE.rglob("*.py")
             for i, line in enumerate(p.read_text().splitlines(), 1) if history.search(line)]
    assert found == []
