"""Tokenize data/processed/{train,val,test}.parquet with the base model's tokenizer into datasets
saved under data/tokenized/{train,val,test}. Text mode packs documents joined by EOS into
`tokenize.block_size` blocks; pairs mode renders each prompt with a template and masks its labels
with -100, so the loss is on the answer only. Params: `mode`, `tokenize`."""

from __future__ import annotations

import hashlib
import itertools
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
from tqdm.auto import tqdm

from stages.io import (
    atomic_output,
    parquet_rows,
    read_row_group,
    row_groups,
    stage_main,
    workers,
)
from stages.models import context_length, load_tokenizer
from stages.params import PATHS, SPLITS, Params, Paths, TokenizeParams, UserError
from stages.prompts import IGNORE, render_prompts

CHUNK = 4096  # documents per encode_batch call: enough to keep every core busy, bounded memory


def encode(tokenizer: Any, texts: list[str], special: bool = False) -> list[list[int]]:
    """Token ids of each text in one batched call of the fast tokenizer."""
    if not texts:
        return []
    return tokenizer(texts, add_special_tokens=special, return_attention_mask=False)["input_ids"]


def join_with_eos(ids: list[list[int]], eos_id: int) -> np.ndarray:
    """The documents' ids in one int32 array, each document followed by EOS."""
    lengths = np.fromiter((len(x) + 1 for x in ids), dtype=np.int64, count=len(ids))
    stream = np.full(int(lengths.sum()), eos_id, dtype=np.int32)
    mask = np.ones(len(stream), dtype=bool)
    mask[np.cumsum(lengths) - 1] = False  # the EOS positions
    stream[mask] = np.fromiter(itertools.chain.from_iterable(ids), dtype=np.int32,
                               count=int(mask.sum()))
    return stream


def token_stream(texts: pa.ChunkedArray, tokenizer: Any) -> np.ndarray:
    """All documents tokenized in chunks by the Rust tokenizer (offsets skipped: only ids are
    kept) and joined with EOS, without ever holding the whole corpus as Python lists."""
    backend = tokenizer.backend_tokenizer
    parts = [join_with_eos([e.ids for e in backend.encode_batch_fast(
        texts.slice(start, CHUNK).to_pylist(), add_special_tokens=False)],
        tokenizer.eos_token_id) for start in range(0, len(texts), CHUNK)]
    return np.concatenate(parts) if parts else np.empty(0, dtype=np.int32)


def pack(stream: np.ndarray, block_size: int) -> tuple[np.ndarray, int]:
    """Cut a token stream into full blocks: the (blocks, block_size) array and the number of
    tokens left over."""
    n_blocks = len(stream) // block_size
    return stream[: n_blocks * block_size].reshape(n_blocks, block_size), len(stream) % block_size


class Packer:
    """`pack` over a stream that arrives in pieces: the tokens left over from one piece start
    the next, so the blocks are those of the whole stream at once."""

    def __init__(self, block_size: int) -> None:
        self.block_size, self.tokens, self.blocks = block_size, 0, 0
        self.carry = np.empty(0, dtype=np.int32)

    def add(self, stream: np.ndarray) -> np.ndarray:
        self.tokens += len(stream)
        stream = np.concatenate([self.carry, stream])
        blocks, remainder = pack(stream, self.block_size)
        self.carry = stream[len(stream) - remainder:]
        self.blocks += len(blocks)
        return blocks

    def stats(self) -> dict[str, int]:
        return {"tokens": self.tokens, "blocks": self.blocks, "remainder_tokens": len(self.carry)}


def pair_examples(df: pd.DataFrame, tokenizer: Any, p: TokenizeParams
                  ) -> tuple[list[list[int]], list[list[int]], dict[str, int]]:
    """input_ids and labels of each pair: prompt tokens labelled -100, the answer ends in EOS.
    Over-long pairs are truncated or dropped (`tokenize.overlong`); both are counted."""
    prompt_ids = encode(tokenizer, render_prompts(df["prompt"].tolist(), tokenizer, p),
                        special=not p.use_chat_template)
    answer_ids = encode(tokenizer, df["response"].tolist())
    inputs, labels = [], []
    counts = {"truncated": 0, "dropped": 0}
    for prompt, answer in zip(prompt_ids, answer_ids, strict=True):
        ids = prompt + answer + [tokenizer.eos_token_id]
        if len(ids) > p.block_size:
            if p.overlong == "drop" or len(prompt) >= p.block_size:
                counts["dropped"] += 1
                continue
            counts["truncated"] += 1
        inputs.append(ids[: p.block_size])
        labels.append(([IGNORE] * len(prompt) + ids[len(prompt):])[: p.block_size])
    return inputs, labels, counts


def content_fingerprint(table: pa.Table) -> str:
    """A hash of the table's bytes: the saved dataset's fingerprint, so that the files written
    are the same bytes on every run."""
    digest = hashlib.sha256()
    for column in table.columns:
        for chunk in column.chunks:
            for buffer in chunk.buffers():
                if buffer is not None:
                    digest.update(buffer)
    return digest.hexdigest()[:16]


def to_dataset(columns: dict[str, Any]) -> Any:
    """An in-memory datasets.Dataset with a content fingerprint (for small inputs)."""
    import datasets

    table = pa.table(columns)
    return datasets.Dataset(table, fingerprint=content_fingerprint(table))


class ExampleWriter:
    """Examples appended batch by batch to an Arrow stream file next to the output; `save` makes
    it a datasets directory through a memory map, so no split is ever held in memory whole."""

    def __init__(self, scratch: Path, schema: pa.Schema) -> None:
        self.scratch, self.schema, self.rows = scratch, schema, 0
        self.file = pa.OSFile(str(scratch), "wb")
        self.stream = pa.ipc.new_stream(self.file, schema)

    def add(self, columns: dict[str, pa.Array]) -> None:
        batch = pa.record_batch(columns, schema=self.schema)
        if batch.num_rows:
            self.stream.write_batch(batch)
            self.rows += batch.num_rows

    def close(self) -> None:
        if not self.file.closed:
            self.stream.close()
            self.file.close()

    def save(self, directory: Path) -> None:
        import datasets
        from datasets.table import MemoryMappedTable

        self.close()
        table = MemoryMappedTable.from_file(str(self.scratch))
        dataset = datasets.Dataset(table, fingerprint=content_fingerprint(table.table))
        dataset.save_to_disk(str(directory))
        del dataset, table
        self.scratch.unlink()


def block_columns(blocks: np.ndarray) -> dict[str, pa.Array]:
    """Packed blocks as input_ids and labels (the same tokens: the model shifts them)."""
    ids = pa.FixedSizeListArray.from_arrays(pa.array(blocks.ravel(), pa.int32()), blocks.shape[1])
    return {"input_ids": ids, "labels": ids}


def pair_columns(inputs: list[list[int]], labels: list[list[int]]) -> dict[str, pa.Array]:
    ids_type = pa.list_(pa.int32())
    return {"input_ids": pa.array(inputs, ids_type), "labels": pa.array(labels, ids_type)}


def packed_dataset(texts: pa.ChunkedArray, tokenizer: Any, block_size: int
                   ) -> tuple[Any, dict[str, int]]:
    """Documents joined with EOS and cut into full blocks, in memory (for small inputs)."""
    packer = Packer(block_size)
    blocks = packer.add(token_stream(texts, tokenizer))
    return to_dataset(block_columns(blocks.reshape(-1, block_size))), packer.stats()


def text_split(source: Path, tokenizer: Any, block_size: int, out: ExampleWriter,
               progress: Any = None) -> dict[str, int]:
    """A split's passages, one row group at a time, packed into blocks written to `out`."""
    packer = Packer(block_size)
    for i in range(row_groups(source)):
        texts = read_row_group(source, i, ["text"]).column("text")
        blocks = packer.add(token_stream(texts, tokenizer))
        if len(blocks):
            out.add(block_columns(blocks))
        if progress is not None:
            progress.update(len(texts))
    return packer.stats()


def pairs_split(source: Path, tokenizer: Any, p: TokenizeParams, out: ExampleWriter,
                progress: Any = None) -> dict[str, int]:
    """A split's pairs, one row group at a time, masked and written to `out`."""
    stats = {"tokens": 0, "examples": 0, "answer_tokens": 0, "truncated": 0, "dropped": 0}
    for i in range(row_groups(source)):
        df = read_row_group(source, i).to_pandas()
        inputs, labels, counts = pair_examples(df, tokenizer, p)
        if progress is not None:
            progress.update(len(df))
        out.add(pair_columns(inputs, labels))
        stats["tokens"] += sum(map(len, inputs))
        stats["examples"] += len(inputs)
        stats["answer_tokens"] += sum(sum(1 for t in x if t != IGNORE) for x in labels)
        for key, value in counts.items():
            stats[key] += value
    return stats


def schema(mode: str, block_size: int) -> pa.Schema:
    ids = pa.list_(pa.int32()) if mode == "pairs" else pa.list_(pa.int32(), block_size)
    return pa.schema([("input_ids", ids), ("labels", ids)])


def dropped_share(stats: dict[str, dict[str, int]], mode: str) -> float:
    """Text mode: the share of tokens left over by packing; pairs mode: of examples dropped."""
    if mode == "pairs":
        lost = sum(s["dropped"] for s in stats.values())
        total = sum(s["examples"] + s["dropped"] for s in stats.values())
    else:
        lost = sum(s["remainder_tokens"] for s in stats.values())
        total = sum(s["tokens"] for s in stats.values())
    return round(lost / max(1, total), 6)


def run(params: Params, paths: Paths = PATHS) -> dict[str, Any]:
    import datasets
    from transformers import AutoConfig

    p = params.tokenize
    context = context_length(AutoConfig.from_pretrained(paths.base_model))
    if p.block_size > context:
        raise UserError(f"tokenize.block_size: {p.block_size} is larger than the model's "
                        f"context of {context} tokens")
    # the Rust tokenizer's threads; read when it first encodes, so set before that
    os.environ["RAYON_NUM_THREADS"] = str(workers(params.num_proc))
    tokenizer = load_tokenizer(paths.base_model)
    datasets.disable_progress_bars()  # saving is quick next to tokenizing: one bar, below
    rows = sum(parquet_rows(paths.split_file(name)) for name in SPLITS)
    progress = tqdm(desc="tokenize", unit="passage", unit_scale=True, total=rows,
                    disable=rows < 10_000)
    summary: dict[str, Any] = {}
    with atomic_output(paths.tokenized) as tmp, progress:  # all splits appear together or none
        tmp.mkdir()
        for name in SPLITS:
            out = ExampleWriter(tmp / f".{name}.arrow", schema(params.mode, p.block_size))
            try:
                source = paths.split_file(name)
                summary[name] = (pairs_split(source, tokenizer, p, out, progress)
                                 if params.mode == "pairs"
                                 else text_split(source, tokenizer, p.block_size, out, progress))
                if not out.rows:
                    raise UserError(f"tokenize: the {name} split gives no example of "
                                    f"tokenize.block_size={p.block_size} tokens; lower it or add data")
                out.save(tmp / name)
            finally:
                out.close()
    summary["dropped_share"] = dropped_share(summary, params.mode)
    return summary


def main(argv: list[str] | None = None) -> None:
    stage_main("tokenize", run, argv)


if __name__ == "__main__":
    main()
