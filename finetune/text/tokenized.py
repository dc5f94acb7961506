"""The tokenized splits: text cut into packed blocks, pairs and conversations encoded with their
label masks (packed or padded), written as Arrow datasets with each test token's row."""

from __future__ import annotations

import bisect
import hashlib
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from finetune.config.tokenize import TokenizeParams
from finetune.data import conversations
from finetune.errors import UserError
from finetune.files import parquet_rows, read_row_group, row_groups
from finetune.models.loading import saved_context_length
from finetune.paths import SPLITS, Paths
from finetune.text.packing import Packer, pack_examples, token_rows, token_stream
from finetune.text.prompts import (
    IGNORE,
    Encoded,
    Renderer,
    RenderError,
    encode_chat,
    render_prompts,
)


def encode(tokenizer: Any, texts: list[str], special: bool = False) -> list[list[int]]:
    """Token ids of each text in one batched call of the fast tokenizer."""
    if not texts:
        return []
    return tokenizer(texts, add_special_tokens=special, return_attention_mask=False)["input_ids"]


Examples = tuple[list[list[int]], list[list[int]], dict[str, int], list[int]]


def pair_ids(df: pd.DataFrame, tokenizer: Any, p: TokenizeParams
             ) -> tuple[list[list[int]], list[list[int]]]:
    """The token ids of each pair's rendered prompt, and of its answer followed by EOS."""
    prompt_ids = encode(tokenizer, render_prompts(df["prompt"].tolist(), tokenizer, p),
                        special=not p.use_chat_template)
    answers = encode(tokenizer, df["response"].tolist())
    return prompt_ids, [answer + [tokenizer.eos_token_id] for answer in answers]


def pair_fit(prompt: int, total: int, overlong: str) -> int:
    """The least block size that keeps a pair of `prompt` tokens and `total` in all: the prompt
    and one answer token to learn (`tokenize.overlong: truncate`), or the whole pair (drop)."""
    return total if overlong == "drop" else prompt + 1


def pair_examples(df: pd.DataFrame, tokenizer: Any, p: TokenizeParams) -> Examples:
    """input_ids and labels of each pair: prompt tokens labelled -100, the answer ends in EOS.
    Over-long pairs are truncated or dropped (`tokenize.overlong`, pair_fit); both are counted.
    Also the positions in `df` of the pairs kept."""
    inputs, labels, kept = [], [], []
    counts = {"truncated": 0, "dropped": 0}
    for i, (prompt, answer) in enumerate(zip(*pair_ids(df, tokenizer, p), strict=True)):
        ids = prompt + answer
        if pair_fit(len(prompt), len(ids), p.overlong) > p.block_size:
            counts["dropped"] += 1
            continue
        if len(ids) > p.block_size:
            counts["truncated"] += 1
        inputs.append(ids[: p.block_size])
        labels.append(([IGNORE] * len(prompt) + ids[len(prompt):])[: p.block_size])
        kept.append(i)
    return inputs, labels, counts, kept


def chat_examples(df: pd.DataFrame, renderer: Renderer, p: TokenizeParams, on_error: str
                  ) -> Examples:
    """input_ids and labels of each conversation (finetune.text.prompts.encode_chat), and the positions
    in `df` of those kept. One the template cannot render faithfully ends the stage with one
    line naming its file and record (`ingest.on_error: fail`) or is skipped and counted by
    reason (`skip`)."""
    inputs, labels, kept = [], [], []
    counts: Counter[str] = Counter(truncated=0, dropped=0)
    for i, record in enumerate(df.itertuples(index=False)):
        try:
            encoded, fate = encode_chat(conversations.loads(record.conversation), renderer,
                                        p.block_size, p.overlong, p.train_on)
        except RenderError as err:
            if on_error == "fail":
                raise UserError(f"{record.source}:{record.position}: {err} (set ingest.on_error: "
                                "skip to skip it, or tokenize.chat_template)") from None
            counts[f"skipped_{err.reason}"] += 1
            continue
        if fate:
            counts[fate] += 1
        if encoded is not None:
            inputs.append(encoded.input_ids)
            labels.append(encoded.labels)
            kept.append(i)
    return inputs, labels, dict(counts), kept


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


def pair_columns(inputs: list[list[int]], labels: list[list[int]], rows: list[int] | None = None
                 ) -> dict[str, pa.Array]:
    ids_type = pa.list_(pa.int32())
    columns = {"input_ids": pa.array(inputs, ids_type), "labels": pa.array(labels, ids_type)}
    if rows is not None:  # each token's row, like packed rows have
        columns["row"] = pa.array([[r] * len(x) for r, x in zip(rows, inputs, strict=True)], ids_type)
    return columns


def packed_dataset(texts: pa.ChunkedArray, tokenizer: Any, block_size: int
                   ) -> tuple[Any, dict[str, int]]:
    """Documents joined with EOS and cut into full blocks, in memory (for small inputs)."""
    packer = Packer(block_size)
    blocks = packer.add(token_stream(texts, tokenizer))
    return to_dataset(block_columns(blocks.reshape(-1, block_size))), packer.stats()


def text_split(source: Path, tokenizer: Any, block_size: int, out: ExampleWriter,
               progress: Any = None, rows: bool = False) -> dict[str, int]:
    """A split's passages, one row group at a time, packed into blocks written to `out`; with
    `rows`, also each token's row in `source`."""
    packer = Packer(block_size)
    first = 0
    for i in range(row_groups(source)):
        texts = read_row_group(source, i, ["text"]).column("text")
        if rows:
            stream, where = token_rows(texts, tokenizer, first)
        else:  # train and val: no rows to keep
            stream = token_stream(texts, tokenizer)
        first += len(texts)
        blocks = packer.add(stream)
        columns = block_columns(blocks)
        if rows:
            columns["row"] = fixed_rows(packer.add_rows(where).reshape(-1, block_size))
        if len(blocks):
            out.add(columns)
        if progress is not None:
            progress.update(len(texts))
    return packer.stats()


def examples_split(source: Path, encode: Any, p: TokenizeParams, out: ExampleWriter, pad_id: int,
                   progress: Any = None, rows: bool = False) -> dict[str, Any]:
    """A split's pairs or conversations, one row group at a time: encoded by `encode` (a frame to
    Examples), packed into blocks (tokenize.packing) and written to `out`; with `rows`, also each
    token's row in `source`."""
    stats: Counter[str] = Counter(tokens=0, examples=0, answer_tokens=0, truncated=0, dropped=0)
    if p.packing:
        stats["blocks"] = 0
    first = 0
    for i in range(row_groups(source)):
        df = read_row_group(source, i).to_pandas()
        inputs, labels, counts, kept = encode(df)
        where = [first + k for k in kept] if rows else None
        first += len(df)
        if progress is not None:
            progress.update(len(df))
        if p.packing:
            examples = [Encoded(x, y) for x, y in zip(inputs, labels, strict=True)]
            columns = pack_examples(examples, p.block_size, pad_id, where)
            out.add({k: fixed_rows(v) for k, v in columns.items()})
            stats["blocks"] += len(columns["input_ids"])
        else:
            out.add(pair_columns(inputs, labels, where))
        stats["tokens"] += sum(map(len, inputs))
        stats["examples"] += len(inputs)
        stats["answer_tokens"] += sum(sum(1 for t in x if t != IGNORE) for x in labels)
        stats.update(counts)
    summary: dict[str, Any] = dict(stats)
    if p.packing:  # real tokens per block token, and how many examples share a block
        summary["packing_efficiency"] = round(stats["tokens"] / max(1, stats["blocks"] * p.block_size), 4)
        summary["examples_per_block"] = round(stats["examples"] / max(1, stats["blocks"]), 3)
    return summary


def fixed_rows(rows: np.ndarray) -> pa.Array:
    """A (rows, block_size) array as an Arrow column of fixed-size lists."""
    return pa.FixedSizeListArray.from_arrays(pa.array(rows.ravel(), pa.int32()), rows.shape[1])


def schema(mode: str, p: TokenizeParams, rows: bool = False) -> pa.Schema:
    """Packed blocks (text mode, or pairs/chat with packing) are fixed-size rows; packed pairs
    and chat also carry position ids. Unpacked examples have their own lengths. With `rows` (the
    test split), each token's row in the split's parquet file, -1 on padding."""
    if mode != "text" and not p.packing:
        ids = pa.list_(pa.int32())
        return pa.schema([("input_ids", ids), ("labels", ids)] + ([("row", ids)] if rows else []))
    ids = pa.list_(pa.int32(), p.block_size)
    columns = (["input_ids", "labels"] + (["position_ids"] if mode != "text" else [])
               + (["row"] if rows else []))
    return pa.schema([(name, ids) for name in columns])


def dropped_share(stats: dict[str, dict[str, int]], mode: str) -> float:
    """Text mode: the share of tokens left over by packing; pairs and chat: of examples dropped."""
    if mode != "text":
        lost = sum(s["dropped"] for s in stats.values())
        total = sum(s["examples"] + s["dropped"] for s in stats.values())
    else:
        lost = sum(s["remainder_tokens"] for s in stats.values())
        total = sum(s["tokens"] for s in stats.values())
    return round(lost / max(1, total), 6)


def encoder(mode: str, p: TokenizeParams, on_error: str, tokenizer: Any) -> Any:
    """The function that turns a frame of pairs or conversations into examples."""
    if mode == "chat":
        renderer = Renderer(tokenizer, p)
        return lambda df: chat_examples(df, renderer, p, on_error)
    return lambda df: pair_examples(df, tokenizer, p)


def model_context(base_model: Path) -> int:
    """The base model's context, in tokens: the most `tokenize.block_size` can be."""
    return saved_context_length(base_model)


def check_block_size(block_size: int, base_model: Path) -> None:
    """`tokenize.block_size` must fit the base model's context."""
    context = model_context(base_model)
    if block_size > context:
        raise UserError(f"tokenize.block_size: {block_size} is larger than the model's "
                        f"context of {context} tokens")


# ---------------------------------------------------------------- too little data

LEAST_BLOCK = next(m.ge for m in TokenizeParams.model_fields["block_size"].metadata
                   if hasattr(m, "ge"))  # the schema's least tokenize.block_size
NOUNS = {"text": "passage", "pairs": "pair", "chat": "conversation"}


def chat_fit(conv: dict[str, Any], renderer: Renderer, overlong: str) -> int | None:
    """The least block size that keeps a conversation, as encode_chat cuts it: all its tokens
    (`tokenize.overlong: drop`, or no turn to learn), else those up to the end of its first
    trained assistant turn. None when the template cannot render it."""
    try:
        full = renderer.text(conv)
        _, ends = renderer.spans(conv, full)
    except RenderError:
        return None
    enc = renderer.tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    if overlong == "drop" or not ends:
        return len(enc["input_ids"])
    return bisect.bisect_left([start for start, _ in enc["offset_mapping"]], ends[0])


def least_block_size(source: Path, mode: str, tokenizer: Any, p: TokenizeParams) -> int | None:
    """Pairs and chat: the least block size with which a split keeps one example (its examples
    are kept at any larger one too); None when none would be kept at any."""
    renderer = Renderer(tokenizer, p) if mode == "chat" else None
    fits: list[int] = []
    for i in range(row_groups(source)):
        df = read_row_group(source, i).to_pandas()
        if renderer is None:
            fits += [pair_fit(len(prompt), len(prompt) + len(answer), p.overlong)
                     for prompt, answer in zip(*pair_ids(df, tokenizer, p), strict=True)]
        else:
            fits += [fit for conv in df["conversation"]
                     if (fit := chat_fit(conversations.loads(conv), renderer, p.overlong)) is not None]
    return min(fits, default=None)


def _counted(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _splits(names: list[str], all_of: str = "every split") -> str:
    """The val split, the val and test splits; `all_of` for all three."""
    if len(names) == len(SPLITS):
        return all_of
    return f"the {' and '.join(names)} split{'s' if len(names) > 1 else ''}"


def too_little(mode: str, p: TokenizeParams, summary: dict[str, dict[str, Any]], paths: Paths,
               tokenizer: Any, empty: list[str]) -> str:
    """The one line for splits that `tokenize.block_size` leaves without an example: each
    split's examples and tokens, and the block size that gives every split one (text: the
    largest, as a block takes block_size tokens of the split's stream; pairs and chat: the
    least), or what to add when none can."""
    noun = NOUNS[mode]
    rows = {name: parquet_rows(paths.split_file(name)) for name in summary}
    if mode == "text":
        counts = "; ".join(f"{name}: {_counted(rows[name], noun)}, {s['tokens']} tokens"
                           for name, s in summary.items())
        head = f"tokenize.block_size: {p.block_size} leaves {_splits(empty)} without a block ({counts})"
        largest = min(s["tokens"] for s in summary.values())
        if largest >= LEAST_BLOCK:
            return f"{head}; {largest} or less gives every split a block, or add data"
        return (f"{head}; no block size gives every split a block ({LEAST_BLOCK} is the least): add "
                f"data, so that every split has {LEAST_BLOCK} tokens or more")
    counts = "; ".join(f"{name}: {_counted(rows[name], noun)}, "
                       + (f"{s['examples']} kept, {s['tokens']} tokens" if s["examples"] else "none kept")
                       for name, s in summary.items())
    head = f"tokenize.block_size: {p.block_size} keeps no {noun} in {_splits(empty, 'any split')} ({counts})"
    fits = {name: least_block_size(paths.split_file(name), mode, tokenizer, p) for name in empty}
    never = [name for name, fit in fits.items() if fit is None]
    if never:
        return f"{head}; no block size keeps a {noun} in {_splits(never, 'any split')}: add data"
    least, context = max(fits.values()), model_context(paths.base_model)
    if least > context:
        return (f"{head}; no block size up to the model's context of {context} tokens keeps one: "
                f"the shortest {noun} of {_splits([max(fits, key=fits.get)])} needs {least}; add "
                f"shorter {noun}s")
    return f"{head}; {least} or more keeps a {noun} in every split"
