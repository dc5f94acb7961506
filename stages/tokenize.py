"""Tokenize data/processed/{train,val,test}.parquet with the base model's tokenizer into datasets
saved under data/tokenized/{train,val,test}. Text mode packs documents joined by EOS into
`tokenize.block_size` blocks; pairs mode renders each prompt with a template and masks its labels
with -100, so the loss is on the answer only. Params: `mode`, `tokenize`."""

from __future__ import annotations

import hashlib
import itertools
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from stages.base_model import context_length
from stages.io import atomic_output, load_tokenizer, read_parquet, stage_main
from stages.params import PATHS, SPLITS, Params, Paths, TokenizeParams, UserError

IGNORE = -100  # label of a token the loss skips


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


def render_prompts(prompts: list[str], tokenizer: Any, p: TokenizeParams) -> list[str]:
    if p.use_chat_template:
        if not getattr(tokenizer, "chat_template", None):
            raise UserError("tokenize.use_chat_template: the base model's tokenizer has no chat "
                            "template; set it to false to use tokenize.prompt_template")
        return [tokenizer.apply_chat_template([{"role": "user", "content": x}], tokenize=False,
                                              add_generation_prompt=True) for x in prompts]
    return [p.prompt_template.replace("{prompt}", x) for x in prompts]


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


def to_dataset(columns: dict[str, Any]) -> Any:
    """A datasets.Dataset over an Arrow table, fingerprinted by its content so that the saved
    files are the same bytes on every run."""
    import datasets

    table = pa.table(columns)
    digest = hashlib.sha256()
    for column in table.columns:
        for chunk in column.chunks:
            for buffer in chunk.buffers():
                if buffer is not None:
                    digest.update(buffer)
    return datasets.Dataset(table, fingerprint=digest.hexdigest()[:16])


def text_split(path: Path, tokenizer: Any, block_size: int) -> tuple[Any, dict[str, int]]:
    return packed_dataset(pq.read_table(path, columns=["text"]).column("text"), tokenizer,
                          block_size)


def packed_dataset(texts: pa.ChunkedArray, tokenizer: Any, block_size: int
                   ) -> tuple[Any, dict[str, int]]:
    """Documents joined with EOS and cut into full blocks (labels = inputs), with their counts."""
    blocks, remainder = pack(token_stream(texts, tokenizer), block_size)
    ids = pa.FixedSizeListArray.from_arrays(pa.array(blocks.ravel(), pa.int32()), block_size)
    stats = {"tokens": int(blocks.size + remainder), "blocks": len(blocks),
             "remainder_tokens": remainder}
    return to_dataset({"input_ids": ids, "labels": ids}), stats


def pairs_split(df: pd.DataFrame, tokenizer: Any, p: TokenizeParams) -> tuple[Any, dict[str, int]]:
    inputs, labels, counts = pair_examples(df, tokenizer, p)
    ids_type = pa.list_(pa.int32())
    stats = {"tokens": sum(map(len, inputs)), "examples": len(inputs),
             "answer_tokens": sum(sum(1 for t in x if t != IGNORE) for x in labels), **counts}
    return to_dataset({"input_ids": pa.array(inputs, ids_type),
                       "labels": pa.array(labels, ids_type)}), stats


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
    from transformers import AutoConfig

    p = params.tokenize
    context = context_length(AutoConfig.from_pretrained(paths.base_model))
    if p.block_size > context:
        raise UserError(f"tokenize.block_size: {p.block_size} is larger than the model's "
                        f"context of {context} tokens")
    tokenizer = load_tokenizer(paths.base_model)
    summary: dict[str, Any] = {}
    with atomic_output(paths.tokenized) as tmp:  # all three splits appear together or none
        for name in SPLITS:
            source = paths.split_file(name)
            dataset, stats = (pairs_split(read_parquet(source), tokenizer, p)
                              if params.mode == "pairs" else text_split(source, tokenizer, p.block_size))
            if len(dataset) == 0:
                raise UserError(f"tokenize: the {name} split gives no example of "
                                f"tokenize.block_size={p.block_size} tokens; lower it or add data")
            dataset.save_to_disk(str(tmp / name))
            summary[name] = stats
    summary["dropped_share"] = dropped_share(summary, params.mode)
    return summary


def main(argv: list[str] | None = None) -> None:
    stage_main("tokenize", run, argv)


if __name__ == "__main__":
    main()
