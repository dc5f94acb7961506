"""Cached bytecode where PYTHONDONTWRITEBYTECODE would forbid it.

Each stage, console script and test worker is a fresh Python process importing torch and
transformers, several seconds slower from source than from cached bytecode. Where
PYTHONDONTWRITEBYTECODE is set, as in many containers, nothing would ever be cached; inside a
virtual environment the bytecode then goes to the environment's own folder (.venv/pycache), so
source trees stay free of __pycache__ as that setting intends."""

from __future__ import annotations

import os
import sys


def keep_bytecode(children: bool = False) -> None:
    """Cache bytecode under the environment's pycache folder for this process, and with
    `children` for the Python processes it starts (stages run by DVC, console scripts)."""
    if not sys.dont_write_bytecode or sys.prefix == sys.base_prefix:
        return
    prefix = os.path.join(sys.prefix, "pycache")  # where stages/__init__.py puts it too
    sys.pycache_prefix, sys.dont_write_bytecode = prefix, False
    if children:
        os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
        os.environ["PYTHONPYCACHEPREFIX"] = prefix
