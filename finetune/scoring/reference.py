"""The general-English reference text that is not the user's (`evaluate.reference_paths`): read,
and tokenized as text mode tokenizes a corpus, so that both models' perplexity on it shows what
fine-tuning cost."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from finetune.data.references import reference_files
from finetune.errors import UserError
from finetune.text.packing import pack, token_stream


def reference_texts(entries: list[str]) -> list[str]:
    """The text of each file `evaluate.reference_paths` names (data.references.reference_files)."""
    texts = []
    for file in reference_files(entries):
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
