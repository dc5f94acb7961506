"""Reading a GGUF file through transformers once, not three times.

transformers' GGUF loader parses the file's header anew (gguf.GGUFReader) for the config, for
the tokenizer and for the weights; with a real vocabulary (SmolLM2's 49,152 tokens and merges)
each parse takes 3-5 s here, most of the time base_model and export's read-back check spend.
Within `parsed_once()` a file is parsed once and the reader shared: it only reads the file."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


@contextmanager
def parsed_once() -> Iterator[None]:
    """Each GGUF file transformers opens in this block is parsed once."""
    import gguf

    original = gguf.GGUFReader
    readers: dict[tuple[str, str], Any] = {}

    def reader(path: Any, mode: str = "r") -> Any:
        key = (os.path.realpath(path), mode)
        if key not in readers:
            readers[key] = original(path, mode)
        return readers[key]

    gguf.GGUFReader = reader
    try:
        yield
    finally:
        gguf.GGUFReader = original
