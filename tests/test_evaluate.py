"""evaluate: token-weighted loss, perplexity helpers, BLEU/ROUGE-L, a run on the tiny model, and
pairs mode end to end."""


from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from finetune.config.schema import Params
from finetune.models.loading import load_model, load_tokenizer
from finetune.paths import PATHS, Paths
from finetune.scoring import evaluation, reference
from finetune.scoring.loss import mean_token_loss
from finetune.text.prompts import read_inference
from stages import report, train
from stages.evaluate import HEADLINE as EVAL_HEADLINE
from tests.helpers import evaluate_models, run_data_stages, run_stage, tiny_params, write_metrics


def test_mean_token_loss_matches_the_model_loss(trained: tuple[Params, Paths]) -> None:
    import datasets

    _, paths = trained
    model, tokenizer = load_model(paths.finetuned), load_tokenizer(paths.finetuned)
    test = datasets.load_from_disk(str(paths.tokenized / "test"))
    loss, count, _ = mean_token_loss(model, test, tokenizer, 3, "cpu", "t")
    ids = torch.tensor(np.array(test["input_ids"]))
    with torch.inference_mode():
        expected = model(input_ids=ids, labels=ids).loss.item()
    assert count == ids.numel() - len(ids)
    assert loss == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("fixture", ["trained", "trained_chat"])
def test_the_losses_per_test_row_add_up_to_the_test_loss(fixture: str,
                                                         request: pytest.FixtureRequest) -> None:
    import datasets
    import pandas as pd

    _, paths = request.getfixturevalue(fixture)
    model, tokenizer = load_model(paths.finetuned), load_tokenizer(paths.finetuned)
    test = datasets.load_from_disk(str(paths.tokenized / "test"))
    n_rows = len(pd.read_parquet(paths.split_file("test")))
    loss, count, by_row = mean_token_loss(model, test, tokenizer, 3, "cpu", "t", n_rows)
    assert by_row is not None and len(by_row.tokens) == n_rows
    assert by_row.tokens.sum() == count and (by_row.tokens > 0).sum() > 1
    assert by_row.loss.sum() / count == pytest.approx(loss, rel=1e-5)


def test_the_reference_text_is_read_and_its_errors_are_one_line(tmp_path: Path) -> None:
    from finetune.errors import UserError

    (tmp_path / "ref").mkdir()
    (tmp_path / "ref" / "b.md").write_text("# B\n\nSecond text.\n")
    (tmp_path / "ref" / "a.txt").write_text("First text.")
    (tmp_path / "ref" / "notes.json").write_text("{}")
    assert reference.reference_texts([str(tmp_path / "ref")]) == ["First text.", "# B\n\nSecond text."]
    assert reference.reference_texts([]) == []
    with pytest.raises(UserError, match=r"^evaluate.reference_paths: .*/nowhere: no such file"):
        reference.reference_texts([str(tmp_path / "nowhere")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match=r"^evaluate.reference_paths: no .txt or .md file in"):
        reference.reference_texts([str(tmp_path / "empty")])
    (tmp_path / "ref" / "c.txt").write_bytes(b"caf\xe9")
    with pytest.raises(UserError, match=r"c.txt: cannot be read as UTF-8"):
        reference.reference_texts([str(tmp_path / "ref")])


def test_evaluate_and_report_run(trained: tuple[Params, Paths]) -> None:
    import pyarrow as pa

    from finetune.stage import headline
    from finetune.text.packing import token_stream

    params, paths = trained
    summary = evaluate_models(params, paths)
    assert summary["test_tokens"] > 0
    assert summary["finetuned"]["perplexity"] < summary["base"]["perplexity"]
    # the forgetting check: both models on the shipped reference text, the same tokens
    ref = summary["reference"]
    texts = reference.reference_texts(params.evaluate.reference_paths)
    assert params.evaluate.reference_paths == ["data/reference"] and len(texts) >= 3
    tokens = token_stream(pa.chunked_array([texts], pa.string()), load_tokenizer(paths.base_model))
    assert ref["tokens"] == len(tokens) and ref["words"] > 3000
    assert ref["change"] == pytest.approx(ref["finetuned"]["perplexity"] / ref["base"]["perplexity"] - 1,
                                          abs=1e-5)
    assert set(headline(EVAL_HEADLINE, summary)) == {"perplexity", "improvement", "ref_perplexity",
                                              "ref_base", "ref_change"}
    analysis = json.loads(paths.analysis.read_text())
    assert analysis["by"] == "title"
    assert {r["name"] for r in analysis["tables"]["title"]} == {"The Mill", "harbour"}
    assert sum(r["tokens"] for r in analysis["tables"]["title"]) == summary["test_tokens"]
    passages = set(pd.read_parquet(paths.split_file("test"))["text"])
    assert analysis["largest_gain"] and {r["text"] for r in analysis["largest_gain"]} <= passages
    samples = json.loads((paths.metrics / "samples.json").read_text())
    assert [s["prompt"] for s in samples] == ["The miller"]
    assert set(samples[0]) == {"prompt", "base", "finetuned", "base_sampled", "finetuned_sampled"}
    for name in ("base", "finetuned"):  # five new tokens: maybe too few words for a 3-gram
        for key in ("repetition", "repetition_sampled"):
            assert summary[name][key] is None or 0 <= summary[name][key] <= 1, (name, key)
    assert evaluate_models(params, paths)["finetuned"] == summary["finetuned"], "seeded: the same again"
    assert json.loads((paths.metrics / "samples.json").read_text()) == samples
    write_metrics("eval", summary, paths)
    write_metrics("train", run_stage(train, params, paths), paths)
    run_stage(report, params, paths)
    md = (paths.reports / "report.md").read_text()
    assert "| finetuned |" in md and "![loss curves](loss.png)" in md and "The miller" in md
    assert "as `generate` samples them" in md and "temperature 0.8, top p 0.95" in md
    assert "Repeated word 3-grams" in md
    assert "| general English (4," in md and "Gain on your data, cost on general text" in md
    assert "### Per title" in md and "| The Mill |" in md and "### Largest gain" in md
    assert "![test perplexity per source, base and fine-tuned](sources.png)" in md
    assert (paths.reports / "sources.png").read_bytes()[:4] == b"\x89PNG"
    off = params.model_copy(update={"evaluate": params.evaluate.model_copy(
        update={"reference_paths": []})})
    without = evaluate_models(off, paths)
    assert "reference" not in without and without["finetuned"] == summary["finetuned"]
    write_metrics("eval", without, paths)
    run_stage(report, off, paths)
    assert "No reference text was scored" in (paths.reports / "report.md").read_text()
    assert "Files not read" not in (paths.reports / "report.md").read_text()
    ingested = paths.metrics / "ingest.json"
    kept = ingested.read_text() if ingested.is_file() else None
    write_metrics("ingest", {"files": 2, "ignored_files": 1,  # as ingest names what it left out
                             "ignored": [{"file": "data/mine/memo.pages", "reason": "unsupported .pages"}],
                             "skipped_files": [{"file": "data/gone", "reason": "no such file or directory"}]},
                  paths)
    run_stage(report, off, paths)
    md = (paths.reports / "report.md").read_text()
    assert "### Files not read" in md and "| data/mine/memo.pages | unsupported .pages |" in md
    assert "| data/gone | no such file or directory |" in md and "| ignored |" not in md
    if kept is None:
        ingested.unlink()
    else:
        ingested.write_text(kept)
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
    run_stage(train, params, paths)
    summary = evaluate_models(params, paths)
    assert {"bleu", "rougeL"} <= set(summary["finetuned"])


def test_chat_mode_scores_assistant_tokens_and_replies(trained_chat: tuple[Params, Paths]) -> None:
    import datasets
    import pandas as pd

    from finetune.data import conversations

    params, paths = trained_chat
    summary = evaluate_models(params, paths)
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
    asked = evaluation.Asked(read_inference(paths.inference_file), params.evaluate.prompts, tokenizer, tests)
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
    run_stage(tokenize, padded_params, padded_paths)
    model, tokenizer = load_model(paths.finetuned), load_tokenizer(paths.finetuned)
    results = [mean_token_loss(model, datasets.load_from_disk(str(p.tokenized / "test")),
                                        tokenizer, 4, "cpu", "t") for p in (paths, padded_paths)]
    assert results[0][1] == results[1][1]
    assert results[0][0] == pytest.approx(results[1][0], abs=1e-5)


def test_generation_stops_at_the_models_own_eos_unless_told_otherwise(
        trained: tuple[Params, Paths]) -> None:
    from finetune.config.evaluate import EvaluateParams

    _, paths = trained
    model, tokenizer = load_model(paths.finetuned), load_tokenizer(paths.finetuned)
    p = EvaluateParams(max_new_tokens=8, batch_size=1, repetition_penalty=1.0)
    first = tokenizer("The miller", return_tensors="pt", add_special_tokens=False)
    with torch.inference_mode():
        greedy = int(model(**first).logits[0, -1].argmax())
    model.generation_config.eos_token_id = greedy  # the first token it would write ends it
    one = tokenizer.decode([greedy]).strip()
    assert evaluation.generate(model, tokenizer, ["The miller"], p, "cpu", "t") == [one]
    other = next(i for i in range(len(tokenizer)) if i != greedy)
    longer = evaluation.generate(model, tokenizer, ["The miller"], p, "cpu", "t", stop=[other])[0]
    assert longer.startswith(one) and len(longer) > len(one)


def test_chat_replies_skip_conversations_with_no_history_or_too_long(
        trained_chat: tuple[Params, Paths]) -> None:
    import pandas as pd

    from finetune.data import conversations

    params, paths = trained_chat
    tokenizer = load_tokenizer(paths.base_model)
    ok = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}
    greeting = {"messages": [{"role": "assistant", "content": "Welcome!"},
                             {"role": "user", "content": "hi"}]}
    long = {"messages": [{"role": "user", "content": "word " * 500},
                         {"role": "assistant", "content": "ok"}]}
    tests = pd.DataFrame({"conversation": [conversations.dumps(c) for c in (ok, greeting, long)]})
    asked = evaluation.Asked(read_inference(paths.inference_file), params.evaluate.prompts, tokenizer, tests)
    assert asked.references == ["Hello"] and len(asked.prompts) == 1
