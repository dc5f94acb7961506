"""Packing pairs and conversations several to a block: the bin packing, the rows it writes, the
batches made of them, and per-example losses equal to those of the examples run alone."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from finetune.models.collators import collate_packed, model_inputs
from finetune.paths import PATHS
from finetune.text import packing
from finetune.text.prompts import IGNORE, Encoded
from stages import tokenize
from tests.helpers import run_data_stages, run_stage, tiny_params


def test_best_fit_decreasing_fills_the_tightest_bin() -> None:
    assert packing.best_fit([5, 3, 4, 2, 6], capacity=8) == [[3, 4], [0, 1], [2]]
    assert packing.best_fit([8, 8], capacity=8) == [[0], [1]]
    assert packing.best_fit([], capacity=8) == []


def test_packed_rows_restart_positions_and_label_nothing_across_a_boundary() -> None:
    examples = [Encoded([11, 12, 13], [IGNORE, 12, 13]), Encoded([21, 22], [21, 22]),
                Encoded([31, 32, 33, 34, 35], [IGNORE, IGNORE, 33, 34, 35])]
    rows = packing.pack_examples(examples, block_size=6, pad_id=0)
    assert rows["input_ids"].tolist() == [[31, 32, 33, 34, 35, 0], [11, 12, 13, 21, 22, 0]]
    assert rows["position_ids"].tolist() == [[0, 1, 2, 3, 4, 0], [0, 1, 2, 0, 1, 0]]
    assert rows["labels"].tolist() == [[IGNORE, IGNORE, 33, 34, 35, IGNORE],
                                       [IGNORE, 12, 13, IGNORE, 22, IGNORE]]
    batch = collate_packed([{k: v[i].tolist() for k, v in rows.items()} for i in range(2)])
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 0]]
    full = packing.pack_examples([Encoded([1, 2, 3], [1, 2, 3])], block_size=3, pad_id=0)
    one = collate_packed([{k: v[0].tolist() for k, v in full.items()}])
    assert one["attention_mask"].tolist() == [[1, 1, 1]]  # no padding: every token is real
    assert "attention_mask" not in model_inputs(batch) and model_inputs(batch)["use_cache"] is False


def tiny_llama() -> Any:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    return LlamaForCausalLM(config).eval()


def tiny_gpt2() -> Any:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(vocab_size=300, n_embd=64, n_layer=2, n_head=2,
                                      n_positions=128)).eval()


def token_losses(model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Cross-entropy of each position's next token (0 where unlabelled)."""
    with torch.no_grad():
        logits = model(**model_inputs({k: v for k, v in batch.items() if k != "labels"})).logits
    labels = torch.nn.functional.pad(batch["labels"][:, 1:], (0, 1), value=IGNORE)
    return torch.nn.functional.cross_entropy(logits.transpose(1, 2).float(), labels,
                                             ignore_index=IGNORE, reduction="none")


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize("build", [tiny_llama, tiny_gpt2], ids=["llama", "gpt2"])
def test_per_example_losses_are_the_same_packed_and_unpacked(build: Any, attention: str) -> None:
    model = build()
    model.set_attn_implementation(attention)
    rng = np.random.default_rng(0)
    examples = []
    for n in rng.integers(4, 40, size=12):
        ids = rng.integers(1, 300, size=n).tolist()
        prompt = int(rng.integers(1, n - 1))
        examples.append(Encoded(ids, [IGNORE] * prompt + ids[prompt:]))
    alone = []
    for e in examples:
        losses = token_losses(model, {"input_ids": torch.tensor([e.input_ids]),
                                      "labels": torch.tensor([e.labels])})[0]
        alone.append(losses.sum().item())
    rows = packing.pack_examples(examples, block_size=64, pad_id=0)
    assert len(rows["input_ids"]) < len(examples)  # several examples did share a row
    batch = collate_packed([{k: v[i].tolist() for k, v in rows.items()}
                            for i in range(len(rows["input_ids"]))])
    losses = token_losses(model, batch)
    packed = [0.0] * len(examples)
    bins = packing.best_fit([len(e.input_ids) for e in examples], 64)
    for row, members in enumerate(bins):
        at = 0
        for i in members:
            packed[i] = losses[row, at:at + len(examples[i].input_ids)].sum().item()
            at += len(examples[i].input_ids)
    assert max(abs(a - b) for a, b in zip(alone, packed, strict=True)) < 1e-4
    # and without the position ids the examples would see each other: the check can fail
    leaky = token_losses(model, {"input_ids": batch["input_ids"], "labels": batch["labels"]})
    assert (leaky - losses).abs().max().item() > 1e-3


@pytest.mark.parametrize("packing", [True, False])
def test_tokenize_chat_packed_or_padded(tmp_path: Path, chat_file: Path, packing: bool) -> None:
    import datasets

    params = tiny_params(mode="chat", ingest={"paths": [str(chat_file)]},
                         tokenize={"block_size": 96, "packing": packing})
    paths = PATHS.under(tmp_path)
    run_data_stages(params, paths)
    summary = run_stage(tokenize, params, paths)
    train = datasets.load_from_disk(str(paths.tokenized / "train"))
    if packing:
        assert train.column_names == ["input_ids", "labels", "position_ids"]
        assert {len(r) for r in train["input_ids"]} == {96}
        stats = summary["train"]
        assert stats["examples_per_block"] > 1 and 0.5 < stats["packing_efficiency"] <= 1
        assert stats["packing_efficiency"] == round(stats["tokens"] / (stats["blocks"] * 96), 4)
    else:
        assert train.column_names == ["input_ids", "labels"]
        assert len({len(r) for r in train["input_ids"]}) > 1 and "blocks" not in summary["train"]
    labelled = sum(sum(1 for t in r if t != IGNORE) for r in train["labels"])
    assert labelled == summary["train"]["answer_tokens"]


def test_flattened_batches_give_the_same_losses() -> None:
    """FlashAttention 2 reads packed sequences in a batch of one row: the flattened batch the
    train stage gives it must keep every example on its own (checked here with SDPA)."""
    model = tiny_llama()
    examples = [Encoded(list(range(1, n + 1)), [IGNORE] + list(range(2, n + 1))) for n in (9, 20, 30, 14)]
    rows = packing.pack_examples(examples, block_size=32, pad_id=0)
    items = [{k: v[i].tolist() for k, v in rows.items()} for i in range(len(rows["input_ids"]))]
    stacked, flat = collate_packed(items), collate_packed(items, flatten=True)
    assert flat["input_ids"].shape == (1, stacked["input_ids"].numel())
    assert flat["attention_mask"].sum() == stacked["attention_mask"].sum()
    assert torch.allclose(token_losses(model, stacked).reshape(1, -1), token_losses(model, flat),
                          atol=1e-5)
