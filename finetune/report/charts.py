"""Charts as PNG files: matplotlib without a display, saved the same bytes for the same figure
(no software stamp), for the report's plots and `uv run tune`'s."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend, which needs no display."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(fig: Any, out: Path, dpi: int = 100) -> None:
    """The figure laid out tightly, written to `out` as PNG, and closed."""
    fig.tight_layout()
    fig.savefig(out, format="png", dpi=dpi, metadata={"Software": None})
    pyplot().close(fig)
