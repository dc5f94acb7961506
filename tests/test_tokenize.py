"""tokenize: packing, pairs masking, over-long pairs, byte-identical outputs, the context check."""


from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from finetune.config.schema import Params
from finetune.config.tokenize import TokenizeParams
from finetune.errors import UserError
from finetune.models.loading import load_tokenizer
from finetune.paths import PATHS, Paths
from finetune.text import packing, tokenized
from stages import tokenize
from tests.helpers import run_data_stages, run_stage, tiny_params


def test_documents_are_joined_with_eos_and_packed_into_full_blocks() -> None:
    stream = packing.join_with_eos([[1, 2, 3], [], [4, 5], [6]], eos_id=0)
    assert stream.tolist() == [1, 2, 3, 0, 0, 4, 5, 0, 6, 0] and stream.dtype == np.int32
    blocks, remainder = packing.pack(stream, block_size=4)
    assert blocks.tolist() == [[1, 2, 3, 0], [0, 4, 5, 0]]
    assert remainder == 2


def test_token_stream_matches_tokenizing_each_document(trained: tuple[Params, Paths]) -> None:
    _, paths = trained
    tokenizer = load_tokenizer(paths.base_model)
    docs = ["The miller counted sacks.", "", "Rain fell on the harbour."] * 3000  # > one chunk
    stream = packing.token_stream(pa.chunked_array([docs]), tokenizer)
    expected = [t for d in docs for t in [*tokenizer(d, add_special_tokens=False)["input_ids"],
                                          tokenizer.eos_token_id]]
    assert stream.tolist() == expected


class FakeTokenizer:
    """Whitespace 'tokenizer': token id = word length; enough to check masking exactly."""

    eos_token_id = 0
    chat_template = None

    def __call__(self, texts: list[str], add_special_tokens: bool = False,
                 return_attention_mask: bool = False) -> dict:
        return {"input_ids": [[len(w) for w in t.split()] for t in texts]}


def test_pairs_mask_the_prompt_and_truncate_or_drop_overlong() -> None:
    df = __import__("pandas").DataFrame({"prompt": ["a bb", "long " * 10],
                                         "response": ["ccc dddd", "x"]})
    p = TokenizeParams(block_size=8, prompt_template="Q: {prompt} A:")
    inputs, labels, counts, _ = tokenized.pair_examples(df, FakeTokenizer(), p)
    assert inputs == [[2, 1, 2, 2, 3, 4, 0]]  # "Q:", "a", "bb", "A:", answer, eos
    assert labels == [[-100, -100, -100, -100, 3, 4, 0]]
    assert counts == {"truncated": 0, "dropped": 1}  # the prompt alone is over 8 tokens
    df2 = df.assign(response=["ccc dddd eeeee ffffff", "x"]).head(1)
    inputs, labels, counts, _ = tokenized.pair_examples(df2, FakeTokenizer(), p)
    assert inputs == [[2, 1, 2, 2, 3, 4, 5, 6]] and counts["truncated"] == 1
    p_drop = TokenizeParams(block_size=8, prompt_template="Q: {prompt} A:", overlong="drop")
    assert tokenized.pair_examples(df2, FakeTokenizer(), p_drop)[2]["dropped"] == 1


def test_tokenize_outputs_are_byte_identical_across_runs(tmp_path: Path, books: Path) -> None:
    params = tiny_params(ingest={"paths": [str(books)]}, clean={"max_chars": 400})
    paths = PATHS.under(tmp_path)
    run_data_stages(params, paths)
    first = {p.name: p.read_bytes() for p in (paths.tokenized / "train").iterdir()}
    summary = run_stage(tokenize, params, paths)
    assert {p.name: p.read_bytes() for p in (paths.tokenized / "train").iterdir()} == first
    assert summary["train"]["blocks"] > summary["val"]["blocks"] > 0
    import datasets

    block = datasets.load_from_disk(str(paths.tokenized / "train"))[0]
    assert len(block["input_ids"]) == 32 and block["labels"] == block["input_ids"]


def test_block_size_larger_than_the_context_is_refused(tmp_path: Path, books: Path) -> None:
    params = tiny_params(ingest={"paths": [str(books)]})
    paths = PATHS.under(tmp_path)
    run_data_stages(params, paths)
    # params.yaml's schema catches this for a scratch model; for any other model the stage does,
    # from the model's own config (model_copy skips the schema, as a pretrained source would)
    too_long = params.model_copy(update={"tokenize": params.tokenize.model_copy(
        update={"block_size": 4096})})
    with pytest.raises(UserError, match="tokenize.block_size: 4096 is larger than the model's "
                                        "context of 128 tokens"):
        run_stage(tokenize, too_long, paths)


def test_the_test_split_says_which_passage_each_token_came_from(trained: tuple[Params, Paths]) -> None:
    """Text mode: the tokens marked with row r are passage r of test.parquet and its EOS (the
    last passage cut where the blocks end); train and val carry no rows."""
    import datasets

    _, paths = trained
    test = datasets.load_from_disk(str(paths.tokenized / "test"))
    assert "row" not in datasets.load_from_disk(str(paths.tokenized / "train")).column_names
    tokenizer = load_tokenizer(paths.base_model)
    texts = pd.read_parquet(paths.split_file("test"))["text"].tolist()
    ids, rows = np.array(test["input_ids"]).ravel(), np.array(test["row"]).ravel()
    assert rows[0] == 0 and (np.diff(rows) >= 0).all() and rows[-1] < len(texts)
    for r in np.unique(rows):
        expected = tokenizer(texts[r], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        got = ids[rows == r].tolist()
        assert got == (expected if r < rows[-1] else expected[:len(got)]), r


def test_packed_chat_rows_say_which_conversation_each_token_came_from(
        trained_chat: tuple[Params, Paths]) -> None:
    import datasets

    from finetune.text.prompts import Renderer

    params, paths = trained_chat
    test = datasets.load_from_disk(str(paths.tokenized / "test"))
    df = pd.read_parquet(paths.split_file("test"))
    inputs, _, _, kept = tokenized.chat_examples(df, Renderer(load_tokenizer(paths.base_model),
                                                             params.tokenize), params.tokenize, "fail")
    ids, rows = np.array(test["input_ids"]), np.array(test["row"])
    assert sorted(set(rows.ravel()) - {-1}) == kept
    for example, r in zip(inputs, kept, strict=True):
        assert ids[rows == r].tolist() == example
    assert (np.array(test["labels"])[rows == -1] == -100).all()  # padding is never scored
