"""The general-English reference text that is not the user's (`evaluate.reference_paths`): read,
and tokenized as text mode tokenizes a corpus, so that both models' perplexity on it shows what
fine-tuning cost."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from finetune.errors import UserError
from finetune.text.packing import pack, token_stream

REFERENCE_SUFFIXES = (".txt", ".md")


def reference_texts(entries: list[str]) -> list[str]:
    """The .txt and .md files `evaluate.reference_paths` names (files, or folders read
    recursively), in path order."""
    files: list[Path] = []
    for entry in entries:
        path = Path(entry)
        if path.is_dir():
            files += sorted(f for f in path.rglob("*")
                            if f.is_file() and f.suffix.lower() in REFERENCE_SUFFIXES)
        elif path.is_file():
            files.append(path)
        else:
            raise UserError(f"evaluate.reference_paths: {entry}: no such file or folder")
    if entries and not files:
        raise UserError(f"evaluate.reference_paths: no .txt or .md file in {', '.join(entries)} "
                        "(or [] to leave the check out)")
    texts = []
    for file in files:
        try:
            texts.append(file.read_text(encoding="utf-8").strip())
        except (UnicodeDecodeError, OSError) as err:
            raise UserError(f"evaluate.reference_paths: {file}: cannot be read as UTF-8 text "
                            f"({err})") from None
    return texts


def reference_blocks(texts: list[str], tokenizer: Any, block_size: int) -> tuple[Any, np.ndarray]:
    """The reference texts as text mode tokenizes a corpus (joined with EOS, in blocks of
    block_size), the last short block included so that every token counts; and the token ids."""
    import datasets

    ids = token_stream(pa.chunked_array([texts], pa.string()), tokenizer)
    blocks, remainder = pack(ids, block_size)
    rows = blocks.tolist() + ([ids[len(ids) - remainder:].tolist()] if remainder > 1 else [])
    return datasets.Dataset.from_dict({"input_ids": rows, "labels": rows}), ids
