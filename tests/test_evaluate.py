"""evaluate: token-weighted loss, perplexity helpers, BLEU/ROUGE-L, a run on the tiny model, and
pairs mode end to end."""


from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from stages import evaluate, report, train
from stages.io import write_summary
from stages.models import load_model, load_tokenizer
from stages.params import PATHS, Params, Paths
from tests.conftest import run_data_stages, tiny_params


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


def test_repetition_flags_a_model_stuck_in_a_loop() -> None:
    assert evaluate.repetition(["the mill turned slowly in the brown water"]) == 0.0
    looping = evaluate.repetition(["the wheel and the wheel and the wheel and the wheel and"])
    assert looping is not None and looping > 0.6
    assert evaluate.repetition(["too short"]) is None
    assert evaluate.repetition(["a b c a b c", "x y z"]) == round(1 / 5, 4)


def test_evaluate_and_report_run(trained: tuple[Params, Paths]) -> None:
    params, paths = trained
    summary = evaluate.run(params, paths)
    assert summary["test_tokens"] > 0
    assert summary["finetuned"]["perplexity"] < summary["base"]["perplexity"]
    samples = json.loads((paths.metrics / "samples.json").read_text())
    assert [s["prompt"] for s in samples] == ["The miller"]
    assert set(samples[0]) == {"prompt", "base", "finetuned", "base_sampled", "finetuned_sampled"}
    for name in ("base", "finetuned"):  # five new tokens: maybe too few words for a 3-gram
        for key in ("repetition", "repetition_sampled"):
            assert summary[name][key] is None or 0 <= summary[name][key] <= 1, (name, key)
    assert evaluate.run(params, paths)["finetuned"] == summary["finetuned"], "seeded: the same again"
    assert json.loads((paths.metrics / "samples.json").read_text()) == samples
    write_summary("eval", summary, paths)
    write_summary("train", train.run(params, paths), paths)
    report.run(params, paths)
    md = (paths.reports / "report.md").read_text()
    assert "| finetuned |" in md and "![loss curves](loss.png)" in md and "The miller" in md
    assert "as `generate` samples them" in md and "temperature 0.8, top p 0.95" in md
    assert "Repeated word 3-grams" in md
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


def test_chat_mode_scores_assistant_tokens_and_replies(trained_chat: tuple[Params, Paths]) -> None:
    import datasets
    import pandas as pd

    from stages import conversations

    params, paths = trained_chat
    summary = evaluate.run(params, paths)
    test = datasets.load_from_disk(str(paths.tokenized / "test"))
    assistant_tokens = sum(sum(1 for t in row if t != -100) for row in test["labels"])
    assert summary["test_tokens"] == assistant_tokens > 0  # the answer tokens only, both models
    for name in ("base", "finetuned"):
        assert {"loss", "perplexity", "bleu", "rougeL"} <= set(summary[name])
    assert summary["finetuned"]["perplexity"] < summary["base"]["perplexity"]
    samples = json.loads((paths.metrics / "samples.json").read_text())
    assert [s["prompt"] for s in samples] == ["Where is my order FH-1003?"]
    # what the models were asked: each test conversation up to its last assistant turn
    tokenizer = load_tokenizer(paths.base_model)
    tests = pd.read_parquet(paths.split_file("test"))
    asked = evaluate.Asked(params, tokenizer, tests)
    last = [conversations.loads(c)["messages"][-1]["content"] for c in tests["conversation"]]
    assert asked.references == last and len(asked.prompts) == len(tests)
    assert all(p.endswith("### Assistant:\n") for p in asked.prompts + asked.samples)
    assert asked.stop == [tokenizer.eos_token_id]


def test_packed_and_padded_test_sets_give_the_same_loss(trained_chat: tuple[Params, Paths],
                                                        tmp_path: Path) -> None:
    import datasets

    from stages import tokenize

    params, paths = trained_chat
    padded_params = params.model_copy(update={"tokenize": params.tokenize.model_copy(
        update={"packing": False})})
    padded_paths = PATHS.under(tmp_path)
    for name in ("processed", "base_model"):
        getattr(padded_paths, name).parent.mkdir(parents=True, exist_ok=True)
        getattr(padded_paths, name).symlink_to(getattr(paths, name))
    tokenize.run(padded_params, padded_paths)
    model, tokenizer = load_model(paths.finetuned), load_tokenizer(paths.finetuned)
    results = [evaluate.mean_token_loss(model, datasets.load_from_disk(str(p.tokenized / "test")),
                                        tokenizer, 4, "cpu", "t") for p in (paths, padded_paths)]
    assert results[0][1] == results[1][1]
    assert results[0][0] == pytest.approx(results[1][0], abs=1e-5)


def test_generation_stops_at_the_models_own_eos_unless_told_otherwise(
        trained: tuple[Params, Paths]) -> None:
    from stages.params import EvaluateParams

    _, paths = trained
    model, tokenizer = load_model(paths.finetuned), load_tokenizer(paths.finetuned)
    p = EvaluateParams(max_new_tokens=8, batch_size=1, repetition_penalty=1.0)
    first = tokenizer("The miller", return_tensors="pt", add_special_tokens=False)
    with torch.inference_mode():
        greedy = int(model(**first).logits[0, -1].argmax())
    model.generation_config.eos_token_id = greedy  # the first token it would write ends it
    one = tokenizer.decode([greedy]).strip()
    assert evaluate.generate(model, tokenizer, ["The miller"], p, "cpu", "t") == [one]
    other = next(i for i in range(len(tokenizer)) if i != greedy)
    longer = evaluate.generate(model, tokenizer, ["The miller"], p, "cpu", "t", stop=[other])[0]
    assert longer.startswith(one) and len(longer) > len(one)


def test_chat_replies_skip_conversations_with_no_history_or_too_long(
        trained_chat: tuple[Params, Paths]) -> None:
    import pandas as pd

    from stages import conversations

    params, paths = trained_chat
    tokenizer = load_tokenizer(paths.base_model)
    ok = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}
    greeting = {"messages": [{"role": "assistant", "content": "Welcome!"},
                             {"role": "user", "content": "hi"}]}
    long = {"messages": [{"role": "user", "content": "word " * 500},
                         {"role": "assistant", "content": "ok"}]}
    tests = pd.DataFrame({"conversation": [conversations.dumps(c) for c in (ok, greeting, long)]})
    asked = evaluate.Asked(params, tokenizer, tests)
    assert asked.references == ["Hello"] and len(asked.prompts) == 1
