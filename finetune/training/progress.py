"""The validation losses of a train run as it goes, for `uv run tune`'s pruner.

`uv run tune` starts each trial (`dvc exp run`) with FINETUNE_PROGRESS naming a file; the train
stage appends one JSON line per evaluation to it. Without the variable nothing is written, and
with it the stage's outputs are the same bytes: it only tells the tuner how the run is going."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

PROGRESS_ENV = "FINETUNE_PROGRESS"


def report(step: int, val_loss: float) -> None:
    """Append one evaluation to the file FINETUNE_PROGRESS names, if it names one."""
    target = os.environ.get(PROGRESS_ENV)
    if not target:
        return
    with open(target, "a", encoding="utf-8") as f:  # one short line: appended whole, never torn
        f.write(json.dumps({"step": step, "val_loss": val_loss}) + "\n")
        f.flush()


def read(path: Path) -> list[dict[str, Any]]:
    """The evaluations reported so far (a line still being written is left for the next read)."""
    if not path.exists():
        return []
    lines = path.read_text(encoding="utf-8").split("\n")[:-1]  # the last piece has no newline yet
    return [json.loads(line) for line in lines if line]
