"""Token ids into the rows the model trains and is scored on: running text joined with EOS and
cut into full blocks (text mode, and evaluate's reference text), and short examples packed
several to a row by best-fit decreasing (pairs and chat), each with its own position ids."""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa

from finetune.text.prompts import IGNORE, Encoded

CHUNK = 4096  # documents per encode_batch call: enough to keep every core busy, bounded memory


def join_with_eos(ids: list[list[int]], eos_id: int) -> np.ndarray:
    """The documents' ids in one int32 array, each document followed by EOS."""
    lengths = np.fromiter((len(x) + 1 for x in ids), dtype=np.int64, count=len(ids))
    stream = np.full(int(lengths.sum()), eos_id, dtype=np.int32)
    mask = np.ones(len(stream), dtype=bool)
    mask[np.cumsum(lengths) - 1] = False  # the EOS positions
    stream[mask] = np.fromiter(itertools.chain.from_iterable(ids), dtype=np.int32,
                               count=int(mask.sum()))
    return stream


def _chunks(texts: pa.ChunkedArray, tokenizer: Any) -> Iterator[list[list[int]]]:
    """The documents' ids, CHUNK documents at a time, from the Rust tokenizer (offsets skipped)."""
    backend = tokenizer.backend_tokenizer
    for start in range(0, len(texts), CHUNK):
        yield [e.ids for e in backend.encode_batch_fast(texts.slice(start, CHUNK).to_pylist(),
                                                        add_special_tokens=False)]


def token_stream(texts: pa.ChunkedArray, tokenizer: Any) -> np.ndarray:
    """All documents tokenized in chunks and joined with EOS, without ever holding the whole
    corpus as Python lists."""
    parts = [join_with_eos(ids, tokenizer.eos_token_id) for ids in _chunks(texts, tokenizer)]
    return np.concatenate(parts) if parts else np.empty(0, dtype=np.int32)


def token_rows(texts: pa.ChunkedArray, tokenizer: Any, first: int = 0
               ) -> tuple[np.ndarray, np.ndarray]:
    """token_stream, and for each of its tokens the row its document is (`first` + the document's
    index; its EOS counts as its own), which evaluate scores each test passage by."""
    streams, lengths = [], []
    for ids in _chunks(texts, tokenizer):
        streams.append(join_with_eos(ids, tokenizer.eos_token_id))
        lengths += [len(x) + 1 for x in ids]
    rows = np.repeat(np.arange(first, first + len(lengths), dtype=np.int32), lengths)
    return (np.concatenate(streams) if streams else np.empty(0, dtype=np.int32)), rows


def pack(stream: np.ndarray, block_size: int) -> tuple[np.ndarray, int]:
    """Cut a token stream into full blocks: the (blocks, block_size) array and the number of
    tokens left over."""
    n_blocks = len(stream) // block_size
    return stream[: n_blocks * block_size].reshape(n_blocks, block_size), len(stream) % block_size


class Packer:
    """`pack` over a stream that arrives in pieces: the tokens left over from one piece start
    the next, so the blocks are those of the whole stream at once. Given each token's row
    (token_rows), it cuts those into the same blocks."""

    def __init__(self, block_size: int) -> None:
        self.block_size, self.tokens, self.blocks = block_size, 0, 0
        self.carry = np.empty(0, dtype=np.int32)
        self.carry_rows = np.empty(0, dtype=np.int32)

    def _cut(self, carry: np.ndarray, new: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The full blocks of `carry` then `new`, and what is left over for the next piece."""
        joined = np.concatenate([carry, new])
        blocks, remainder = pack(joined, self.block_size)
        return blocks, joined[len(joined) - remainder:]

    def add(self, stream: np.ndarray) -> np.ndarray:
        self.tokens += len(stream)
        blocks, self.carry = self._cut(self.carry, stream)
        self.blocks += len(blocks)
        return blocks

    def add_rows(self, rows: np.ndarray) -> np.ndarray:
        """The rows of the tokens `add` was just given, as blocks like those it returned."""
        blocks, self.carry_rows = self._cut(self.carry_rows, rows)
        return blocks

    def stats(self) -> dict[str, int]:
        return {"tokens": self.tokens, "blocks": self.blocks, "remainder_tokens": len(self.carry)}


def best_fit(lengths: list[int], capacity: int) -> list[list[int]]:
    """Indices of the examples in each bin of `capacity` tokens, by best-fit decreasing: each
    example, longest first, goes to the bin it fills best. Deterministic; bins in order of
    creation, examples in a bin in input order."""
    bins: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (room left, bin), sorted
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        at = bisect.bisect_left(free, (lengths[i], -1))
        if at == len(free):
            bins.append([i])
            room, b = capacity - lengths[i], len(bins) - 1
        else:
            room, b = free.pop(at)
            bins[b].append(i)
            room -= lengths[i]
        if room:
            bisect.insort(free, (room, b))
    return [sorted(b) for b in bins]


def pack_examples(examples: list[Encoded], block_size: int, pad_id: int,
                  rows: list[int] | None = None) -> dict[str, np.ndarray]:
    """Examples packed into rows of block_size tokens (best_fit): input_ids, labels and
    position_ids that restart at 0 for each example, which is how transformers tells the packed
    sequences apart (no attention across them, with SDPA, eager and FlashAttention alike). The
    first token of each example has no label, so nothing is learned across a boundary; the rest
    of a row is padding, a sequence of its own that has no labels. Given each example's `rows`
    (where it came from), also their `row` per token (-1 on padding)."""
    bins = best_fit([len(e.input_ids) for e in examples], block_size)
    ids = np.full((len(bins), block_size), pad_id, dtype=np.int32)
    where = np.full((len(bins), block_size), -1, dtype=np.int32)
    labels = np.full((len(bins), block_size), IGNORE, dtype=np.int32)
    positions = np.zeros((len(bins), block_size), dtype=np.int32)
    for row, members in enumerate(bins):
        at = 0
        for i in members:
            n = len(examples[i].input_ids)
            ids[row, at:at + n] = examples[i].input_ids
            labels[row, at + 1:at + n] = examples[i].labels[1:]
            positions[row, at:at + n] = np.arange(n)
            if rows is not None:
                where[row, at:at + n] = rows[i]
            at += n
        positions[row, at:] = np.arange(block_size - at)
    packed = {"input_ids": ids, "labels": labels, "position_ids": positions}
    return packed | ({"row": where} if rows is not None else {})
