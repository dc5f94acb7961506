"""Tokenize data/processed/{train,val,test}.parquet with the base tokenizer into data/tokenized/
(datasets on disk): text cut into packed `tokenize.block_size` blocks; pairs and conversations
rendered with their template, labels masked to the answers or assistant turns, packed or padded.
The test split keeps each token's row for the error analysis; data/tokenized/inference.json says
how the model is to be asked. Params: `mode`, `tokenize`, `ingest.on_error` (and `num_proc`,
speed only)."""

from __future__ import annotations

import dataclasses
import os
from typing import Annotated, Any

from tqdm.auto import tqdm

from finetune.config.common import Mode, NumProc
from finetune.config.ingest import IngestParams
from finetune.config.loading import Key
from finetune.config.tokenize import TokenizeParams
from finetune.errors import UserError
from finetune.files import atomic_output, parquet_rows, write_json
from finetune.models.loading import load_tokenizer
from finetune.parallel import workers
from finetune.paths import PATHS, SPLITS, Paths
from finetune.stage import stage_main
from finetune.text.prompts import inference
from finetune.text.tokenized import (
    ExampleWriter,
    check_block_size,
    dropped_share,
    encoder,
    examples_split,
    schema,
    text_split,
    too_little,
)


def run(mode: Mode, tokenize: TokenizeParams, on_error: Annotated[str, Key(IngestParams, "on_error")],
        num_proc: NumProc = 0, paths: Paths = PATHS) -> dict[str, Any]:
    import datasets

    check_block_size(tokenize.block_size, paths.base_model)
    # the Rust tokenizer's threads; read when it first encodes, so set before that
    os.environ["RAYON_NUM_THREADS"] = str(workers(num_proc))
    tokenizer = load_tokenizer(paths.base_model)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    encode = encoder(mode, tokenize, on_error, tokenizer)
    datasets.disable_progress_bars()  # saving is quick next to tokenizing: one bar, below
    rows = sum(parquet_rows(paths.split_file(name)) for name in SPLITS)
    progress = tqdm(desc="tokenize", unit="passage", unit_scale=True, total=rows,
                    disable=rows < 10_000)
    summary: dict[str, Any] = {}
    empty: list[str] = []
    with atomic_output(paths.tokenized) as tmp, progress:  # all splits appear together or none
        tmp.mkdir()
        for name in SPLITS:
            rows = name == "test"  # evaluate scores each test passage or example by its row
            out = ExampleWriter(tmp / f".{name}.arrow", schema(mode, tokenize, rows))
            try:
                source = paths.split_file(name)
                summary[name] = (text_split(source, tokenizer, tokenize.block_size, out, progress, rows)
                                 if mode == "text"
                                 else examples_split(source, encode, tokenize, out, pad_id, progress, rows))
                if out.rows:
                    out.save(tmp / name)
                else:  # every split is tokenized first, so the one line can say what would work
                    empty.append(name)
            finally:
                out.close()
        if empty:
            raise UserError(too_little(mode, tokenize, summary, paths, tokenizer, empty))
        asked = inference(tokenizer, mode, tokenize)
        write_json(dataclasses.asdict(asked), tmp / paths.inference_file.name)
    summary["dropped_share"] = dropped_share(summary, mode)
    return summary


def main(argv: list[str] | None = None) -> None:
    stage_main("tokenize", run, argv)


if __name__ == "__main__":
    main()
