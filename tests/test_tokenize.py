"""tokenize: packing, pairs masking, over-long pairs, byte-identical outputs, the context check, and
too little data for the block size (the one line names the block size that works)."""


from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from finetune.config.schema import Params
from finetune.config.tokenize import TokenizeParams
from finetune.errors import UserError
from finetune.models.loading import load_tokenizer
from finetune.paths import PATHS, SPLITS, Paths
from finetune.text import packing, tokenized
from stages import tokenize
from tests.helpers import ROOT, run_data_stages, run_stage, tiny_params


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


def with_block_size(params: Params, block_size: int) -> Params:
    return params.model_copy(update={"tokenize": params.tokenize.model_copy(
        update={"block_size": block_size})})


def short_records(tmp_path: Path, texts: list[str]) -> Path:
    raw = tmp_path / "raw" / "short.jsonl"
    raw.parent.mkdir()
    raw.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts), encoding="utf-8")
    return raw


FIVE = ["The lamp on the quay went out just before the ferry came in.",
        "Marta counted the crates twice and wrote the number on her hand.",
        "Nobody on the night shift had seen the cat since Tuesday.",
        "The wind turned, and the smell of tar came up from the yard.",
        "At dawn the gulls were back on the roof of the fish market."]


def test_too_little_text_names_the_largest_block_size_that_works(tmp_path: Path) -> None:
    """Five short records (issue 22): one line with each split's passages and tokens and the
    largest block size that gives every split a block (a block takes block_size tokens of the
    split's stream), which works; one more does not. Nothing is written."""
    params = tiny_params(ingest={"paths": [str(short_records(tmp_path, FIVE))]},
                         tokenize={"block_size": 64})
    paths = PATHS.under(tmp_path)
    with pytest.raises(UserError) as err:
        run_data_stages(params, paths)
    message = str(err.value)
    assert re.fullmatch(r"tokenize\.block_size: 64 leaves (every split|the [a-z ]+ splits?) without a "
                        r"block \(train: 3 passages, \d+ tokens; val: 1 passage, \d+ tokens; test: 1 "
                        r"passage, \d+ tokens\); \d+ or less gives every split a block, or add data",
                        message), message
    assert not paths.tokenized.exists()
    largest = int(re.search(r"(\d+) or less", message).group(1))
    assert largest == min(int(n) for n in re.findall(r"(\d+) tokens", message))
    summary = run_stage(tokenize, with_block_size(params, largest), paths)
    assert all(summary[name]["blocks"] >= 1 for name in SPLITS), summary
    with pytest.raises(UserError, match=rf"^tokenize\.block_size: {largest + 1} leaves "):
        run_stage(tokenize, with_block_size(params, largest + 1), paths)


def test_too_little_text_for_any_block_size_says_what_to_add(tmp_path: Path) -> None:
    """A split with fewer tokens than the least block size the schema allows: no block size
    can work, and the line says how much data every split needs."""
    raw = short_records(tmp_path, ["Yes.", "No.", "Maybe."])
    params = tiny_params(ingest={"paths": [str(raw)]}, clean={"min_chars": 0},
                         tokenize={"block_size": 8})
    with pytest.raises(UserError) as err:
        run_data_stages(params, PATHS.under(tmp_path))
    assert str(err.value).endswith("; no block size gives every split a block (8 is the least): add "
                                   "data, so that every split has 8 tokens or more"), err.value
    with pytest.raises(ValueError, match="greater than or equal to 8"):
        TokenizeParams(block_size=7)


@pytest.mark.parametrize(("mode", "overlong"), [("pairs", "truncate"), ("pairs", "drop"),
                                                ("chat", "truncate")])
def test_too_little_examples_name_the_least_block_size_that_works(
        tmp_path: Path, request: pytest.FixtureRequest, mode: str, overlong: str) -> None:
    """Pairs and chat: an example over block_size is truncated or dropped, so a larger block
    keeps more. The line names the least block size that keeps an example in every split,
    which does; one less does not."""
    data = request.getfixturevalue("pairs_file" if mode == "pairs" else "chat_file")
    params = tiny_params(mode=mode, ingest={"paths": [str(data)]},
                         tokenize={"block_size": 8, "overlong": overlong})
    paths = PATHS.under(tmp_path)
    with pytest.raises(UserError) as err:
        run_data_stages(params, paths)
    noun = tokenized.NOUNS[mode]
    assert re.fullmatch(rf"tokenize\.block_size: 8 keeps no {noun} in any split \(train: \d+ {noun}s, "
                        rf"none kept; val: \d+ {noun}s?, none kept; test: \d+ {noun}s?, none kept\); "
                        rf"\d+ or more keeps a {noun} in every split", str(err.value)), err.value
    least = int(re.search(r"(\d+) or more", str(err.value)).group(1))
    summary = run_stage(tokenize, with_block_size(params, least), paths)
    assert all(summary[name]["examples"] >= 1 for name in SPLITS), summary
    with pytest.raises(UserError, match=rf"^tokenize\.block_size: {least - 1} keeps no {noun} in "):
        run_stage(tokenize, with_block_size(params, least - 1), paths)


@pytest.mark.parametrize("overlong", ["truncate", "drop"])
def test_chat_fit_is_the_least_block_size_that_keeps_a_conversation(
        trained_chat: tuple[Params, Paths], overlong: str) -> None:
    from finetune.data import conversations
    from finetune.text.prompts import Renderer, encode_chat

    params, paths = trained_chat
    renderer = Renderer(load_tokenizer(paths.base_model), params.tokenize)
    for record in pd.read_parquet(paths.split_file("test"))["conversation"]:
        conv = conversations.loads(record)
        fit = tokenized.chat_fit(conv, renderer, overlong)
        assert fit is not None
        assert encode_chat(conv, renderer, fit, overlong, "all")[0] is not None
        assert encode_chat(conv, renderer, fit - 1, overlong, "all")[0] is None


def test_too_little_examples_for_the_models_context_says_so(tmp_path: Path, pairs_file: Path) -> None:
    """Every pair of a split needs more tokens than the model's context: no block size can work."""
    params = tiny_params(mode="pairs", ingest={"paths": [str(pairs_file)]},
                         model={"scratch": {"n_positions": 16}}, tokenize={"block_size": 8})
    with pytest.raises(UserError) as err:
        run_data_stages(params, PATHS.under(tmp_path))
    assert re.search(r"; no block size up to the model's context of 16 tokens keeps one: the shortest "
                     r"pair of the \w+ split needs \d+; add shorter pairs$", str(err.value)), err.value


def test_a_plain_tokenizer_and_the_context_load_as_transformers_would_without_torch(
        trained: tuple[Params, Paths], smollm2_tokenizer: Any, tmp_path: Path) -> None:
    """tokenize loads a plain tokenizer (tokenizer.json alone: GPT-2's, SmolLM2's) as the very
    class and state AutoTokenizer gives, and reads the context from config.json, both without
    importing torch; a config naming the context twice is left to transformers."""
    from transformers import AutoConfig, AutoTokenizer

    from finetune.models.loading import context_length, saved_context_length

    base = trained[1].base_model
    smollm2 = tmp_path / "smollm2"
    shutil.copytree(base, smollm2)  # the tiny model's config, with SmolLM2's tokenizer
    smollm2_tokenizer.save_pretrained(smollm2)
    for folder in (base, smollm2):
        ours, theirs = load_tokenizer(folder), AutoTokenizer.from_pretrained(folder)
        assert type(ours) is type(theirs)
        assert {k: repr(v) for k, v in vars(ours).items()} == {k: repr(v) for k, v in vars(theirs).items()}
        assert ours.backend_tokenizer.to_str() == theirs.backend_tokenizer.to_str()
    assert saved_context_length(base) == context_length(AutoConfig.from_pretrained(base))
    config = json.loads((base / "config.json").read_text())
    twice = tmp_path / "twice"
    shutil.copytree(base, twice)
    (twice / "config.json").write_text(json.dumps({**config, "max_position_embeddings": 4096}))
    assert saved_context_length(twice) == context_length(AutoConfig.from_pretrained(twice))
    probe = ("import sys\nfrom finetune.models.loading import load_tokenizer, saved_context_length\n"
             f"load_tokenizer({str(base)!r}); saved_context_length({str(base)!r})\n"
             "assert 'torch' not in sys.modules, 'torch imported'\n")
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
