"""Pictures a sink draws in delivery, not on the training thread (the same on every replay)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lightning_dualtrack.core.media import close_figure, image_to_png


def render_confusion_matrix_pngs(run_dir: Path, rec: dict[str, Any]) -> list[str]:
    """Render the counts and row-normalised PNGs of a ``cm`` record if missing; returns their paths.

    Rendering happens in the delivery process, not on the training thread; it is deterministic, so a
    replay renders the same pictures.
    """
    out = []
    data = None
    for field, normalize in (("png", False), ("png_norm", True)):
        rel = rec.get(field)
        if not rel:
            continue
        target = run_dir / rel
        if not target.exists():
            if data is None:
                with open(run_dir / rec["path"], encoding="utf-8") as fh:
                    data = json.load(fh)
            import matplotlib

            matplotlib.use("Agg", force=False)
            from lightning_dualtrack.plots import confusion_matrix_figure

            title = data.get("title") or "Confusion matrix"
            fig = confusion_matrix_figure(
                data["matrix"], data["class_names"], normalize=normalize, title=title + (" (row-normalised)" if normalize else "")
            )
            try:
                image_to_png(fig, target)
            finally:
                close_figure(fig)
        out.append(rel)
    return out
