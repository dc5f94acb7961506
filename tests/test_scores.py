"""scores: perplexity helpers, BLEU/ROUGE-L, repetition, and the error analysis (per source,
per group, the largest gains and losses) on a hand-made test split with known losses."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from finetune.report import content
from finetune.scoring import scores
from finetune.scoring.scores import RowLosses


def test_perplexity_and_improvement_helpers() -> None:
    assert scores.perplexity(0.0) == 1.0
    assert scores.perplexity(1e6) is None
    assert scores.relative_improvement(20.0, 15.0) == 0.25
    assert scores.relative_improvement(None, 15.0) is None


def test_answer_scores() -> None:
    same = scores.answer_scores(["the cat sat on the mat"], ["the cat sat on the mat"])
    assert same == {"bleu": 100.0, "rougeL": 1.0}
    other = scores.answer_scores(["a dog ran"], ["the cat sat on the mat"])
    assert other["rougeL"] == 0.0 and other["bleu"] < 5


def test_repetition_flags_a_model_stuck_in_a_loop() -> None:
    assert scores.repetition(["the mill turned slowly in the brown water"]) == 0.0
    looping = scores.repetition(["the wheel and the wheel and the wheel and the wheel and"])
    assert looping is not None and looping > 0.6
    assert scores.repetition(["too short"]) is None
    assert scores.repetition(["a b c a b c", "x y z"]) == round(1 / 5, 4)


def split_of(groups: list[str]) -> pd.DataFrame:
    n = len(groups)
    return pd.DataFrame({"source": [f"data/raw/{'a' if i % 2 else 'b'}.jsonl" for i in range(n)],
                         "group": groups, "prompt": [f"question {i}" for i in range(n)],
                         "response": [f"answer {i}" for i in range(n)]})


def test_error_analysis_per_group_and_the_largest_gains_and_losses() -> None:
    test = split_of(["refund", "refund", "order", "order", "order", "", "refund", "order"])
    tokens = np.array([20, 20, 20, 20, 20, 20, 0, 4])  # row 6 was never scored, row 7 is short
    base = RowLosses(tokens * 2.0, tokens)
    change = np.array([1.0, 0.5, -0.5, 0.2, 0.1, 0.0, 0.0, 1.5])  # nats per token gained
    tuned = RowLosses(tokens * (2.0 - change), tokens)
    found = scores.analysis(test, "pairs", base, tuned, {"refund": {"finetuned_bleu": 12.5}})
    assert found["by"] == "group" and list(found["tables"]) == ["group"]
    by_name = {row["name"]: row for row in found["tables"]["group"]}
    assert set(by_name) == {"refund", "order", scores.NO_GROUP}
    assert by_name["order"]["examples"] == 4 and by_name["order"]["tokens"] == 64
    mean = (2.0 * 64 - (-0.5 * 20 + 0.2 * 20 + 0.1 * 20 + 1.5 * 4)) / 64
    assert by_name["order"]["finetuned_perplexity"] == pytest.approx(math.exp(mean), abs=1e-3)
    assert by_name["order"]["base_perplexity"] == pytest.approx(math.exp(2.0), abs=1e-3)
    assert by_name["refund"]["finetuned_bleu"] == 12.5
    # row 7 gains most per token but has 4 tokens: not ranked, as five longer rows are
    assert [r["text"] for r in found["largest_gain"]] == [
        "Q: question 0\nA: answer 0", "Q: question 1\nA: answer 1", "Q: question 3\nA: answer 3"]
    assert [r["text"] for r in found["largest_loss"]][:2] == [
        "Q: question 2\nA: answer 2", "Q: question 5\nA: answer 5"]
    worst = found["largest_loss"][0]
    assert worst["improvement"] < 0 and worst["source"] == "order" and worst["group"] == "order"


def test_error_analysis_by_title_and_source_and_no_row_in_both_lists() -> None:
    test = pd.DataFrame({"source": ["data/raw/a.md"] * 3, "group": ["", "", ""],
                         "title": ["Mill", "Mill", "Harbour"], "text": ["one", "two", "three"]})
    tokens = np.array([30, 10, 30])
    found = scores.analysis(test, "text", RowLosses(tokens * 3.0, tokens),
                            RowLosses(tokens * np.array([2.0, 3.5, 2.5]), tokens))
    assert found["by"] == "title" and list(found["tables"]) == ["title"]  # no groups: no table
    assert [r["name"] for r in found["tables"]["title"]] == ["Mill", "Harbour"]  # most tokens first
    assert [r["text"] for r in found["largest_gain"]] == ["one", "three"]
    assert [r["text"] for r in found["largest_loss"]] == ["two"] and found["largest_loss"][0]["group"] == ""
    pairs = split_of(["", "", ""])  # pairs without groups: by source file
    assert scores.analysis(pairs, "pairs", RowLosses(tokens * 3.0, tokens),
                           RowLosses(tokens * 2.0, tokens))["by"] == "source"


def test_answer_scores_per_group() -> None:
    refs = ["the cat sat on the mat", "a dog ran into the park", "the sun set over the hills"]
    found = scores.answers_by_group(["a", "b", "a"], refs, {"base": ["x y z", refs[1], "q"],
                                                            "finetuned": refs})
    assert found["b"]["base_bleu"] == found["b"]["finetuned_bleu"] == 100.0
    assert found["a"]["finetuned_rougeL"] == 1.0 and found["a"]["base_rougeL"] == 0.0


def test_the_report_shows_the_sources_with_most_tokens_first_and_says_how_many_more() -> None:

    rows = [{"name": f"book {i}", "examples": 1, "tokens": 100 - i, "base_perplexity": 30.0,
             "finetuned_perplexity": 20.0, "improvement": 1 / 3} for i in range(40)]
    out = content.analysis_blocks({"by": "title", "tables": {"title": rows}, "largest_gain": [],
                                  "largest_loss": []}, "")
    table = next(value for kind, value in out if kind == "table")
    assert len(table) == 1 + content.TABLE_ROWS and table[1][0] == "book 0" and table[1][5] == "-33.3%"
    assert ("p", "The 30 with most test tokens of 40; metrics/eval_analysis.json has them all.") in out
