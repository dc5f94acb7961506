"""The figures evaluate computes from what the models did: perplexity and its relative change,
BLEU and ROUGE-L of answers, how repetitive a text is, and the error analysis: the test split's
losses gathered by the test passage or example they belong to, then per source (the document
title in text mode; the group, else the source file, in pairs and chat mode), per group
(`ingest.group_field`), and the passages with the largest gain and the largest loss."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

import numpy as np
import pandas as pd

from finetune.data import conversations

TOP = 3          # passages shown with the largest gain and with the largest loss
MIN_TOKENS = 16  # a passage scored on fewer tokens is too noisy to rank (unless all are)
NO_GROUP = "(no group)"


def perplexity(loss: float) -> float | None:
    """exp(loss), or None where it overflows (JSON has no infinity)."""
    try:
        return math.exp(loss)
    except OverflowError:
        return None


def relative_improvement(base: float | None, finetuned: float | None) -> float | None:
    """(base - finetuned) / base: above 0 where the fine-tuned figure is lower (better)."""
    if base is None or finetuned is None or base == 0:
        return None
    return round((base - finetuned) / base, 6)


def answer_scores(answers: list[str], references: list[str]) -> dict[str, float]:
    """Corpus BLEU (sacrebleu) and mean ROUGE-L F1 (rouge-score) of answers against references."""
    import sacrebleu
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    rouge = [scorer.score(ref, ans)["rougeL"].fmeasure
             for ans, ref in zip(answers, references, strict=True)]
    return {"bleu": round(sacrebleu.corpus_bleu(answers, [references]).score, 4),
            "rougeL": round(sum(rouge) / max(len(rouge), 1), 6)}


def repetition(texts: list[str], n: int = 3) -> float | None:
    """The share of word n-grams that repeat one seen earlier in the same text, over all texts:
    0 for varied text, near 1 for a model stuck in a loop (which perplexity does not show)."""
    repeated = total = 0
    for text in texts:
        words = text.split()
        grams = [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
        repeated += len(grams) - len(set(grams))
        total += len(grams)
    return round(repeated / total, 4) if total else None


@dataclass
class RowLosses:
    """One model's summed token loss and scored-token count for each row of the test split."""

    loss: np.ndarray
    tokens: np.ndarray


def example_text(row: Any, mode: str) -> str:
    """What a test row says, for a person to read: the passage, the question and answer, or the
    conversation turn by turn."""
    if mode == "text":
        return str(row.text)
    if mode == "pairs":
        return f"Q: {row.prompt}\nA: {row.response}"
    return "\n".join(f"{m['role']}: {m['content']}"
                     for m in conversations.loads(row.conversation)["messages"])


def source_key(mode: str, grouped: bool) -> str:
    """What error analysis groups the test rows by: title, group or source."""
    if mode == "text":
        return "title"
    return "group" if grouped else "source"


def examples(test: pd.DataFrame, mode: str, base: RowLosses, tuned: RowLosses) -> pd.DataFrame:
    """Each scored test row with its source, group, text and both models' summed losses."""
    frame = pd.DataFrame({
        "title": test["title"] if mode == "text" else "",
        "chapter": test["chapter"] if mode == "text" and "chapter" in test else "",
        "group": test["group"].where(test["group"].astype(bool), NO_GROUP),
        "source": [PurePosixPath(s).name for s in test["source"]],
        "tokens": tuned.tokens, "base_loss": base.loss, "finetuned_loss": tuned.loss})
    frame["text"] = [example_text(r, mode) for r in test.itertuples(index=False)]
    return frame[frame["tokens"] > 0]


def _figures(base_loss: float, tuned_loss: float, tokens: int) -> dict[str, Any]:
    base, tuned = perplexity(base_loss / tokens), perplexity(tuned_loss / tokens)
    return {"tokens": int(tokens), "base_perplexity": _round(base),
            "finetuned_perplexity": _round(tuned), "improvement": relative_improvement(base, tuned)}


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def table(frame: pd.DataFrame, by: str) -> list[dict[str, Any]]:
    """Both models' perplexity per value of `by`, the one with most tokens first."""
    sums = frame.groupby(by, sort=True).agg(examples=("tokens", "size"), tokens=("tokens", "sum"),
                                            base_loss=("base_loss", "sum"),
                                            finetuned_loss=("finetuned_loss", "sum"))
    sums = sums.sort_values("tokens", ascending=False, kind="stable")
    return [{"name": str(name), "examples": int(row.examples),
             **_figures(row.base_loss, row.finetuned_loss, row.tokens)}
            for name, row in sums.iterrows()]


def extremes(frame: pd.DataFrame, key: str, grouped: bool, top: int = TOP
             ) -> dict[str, list[dict[str, Any]]]:
    """The rows whose perplexity fell most (largest gain) and rose most, or fell least (largest
    loss), among those scored on at least MIN_TOKENS tokens (all rows when too few are); no row
    is in both lists."""
    ranked = frame[frame["tokens"] >= MIN_TOKENS]
    if len(ranked) < 2 * top:
        ranked = frame
    change = (ranked["base_loss"] - ranked["finetuned_loss"]) / ranked["tokens"]  # per token
    order = change.sort_values(ascending=False, kind="stable").index
    gains = min(top, (len(order) + 1) // 2)
    losses = min(top, len(order) - gains)

    def rows(index: Any) -> list[dict[str, Any]]:
        return [{"source": " — ".join(filter(None, (str(ranked.at[i, key]),
                                                    str(ranked.at[i, "chapter"])))),
                 "group": str(ranked.at[i, "group"]) if grouped else "",
                 "text": ranked.at[i, "text"],
                 **_figures(ranked.at[i, "base_loss"], ranked.at[i, "finetuned_loss"],
                            ranked.at[i, "tokens"])} for i in index]

    return {"largest_gain": rows(order[:gains]),
            "largest_loss": rows(order[::-1][:losses])}


def answers_by_group(groups: list[str], references: list[str], answers: dict[str, list[str]]
                     ) -> dict[str, dict[str, float]]:
    """BLEU and ROUGE-L of each model's answers within each group: {group: {base_bleu, ...}}."""
    out: dict[str, dict[str, float]] = {}
    for group in sorted(set(groups)):
        at = [i for i, g in enumerate(groups) if g == group]
        refs = [references[i] for i in at]
        out[group] = {f"{model}_{k}": v for model, said in answers.items()
                      for k, v in answer_scores([said[i] for i in at], refs).items()}
    return out


def analysis(test: pd.DataFrame, mode: str, base: RowLosses, tuned: RowLosses,
             answered: dict[str, dict[str, float]] | None = None) -> dict[str, Any]:
    """The error analysis of the test split: a table per source (and per group when the rows
    have groups), with BLEU/ROUGE-L per group where `answered` has them, and the passages with
    the largest gain and loss."""
    frame = examples(test, mode, base, tuned)
    grouped = bool(test["group"].astype(bool).any())
    key = source_key(mode, grouped)
    tables = {key: table(frame, key)}
    if grouped and key != "group":
        tables["group"] = table(frame, "group")
    for row in tables.get("group", []):
        row |= (answered or {}).get(row["name"], {})
    return {"by": key, "tables": tables, **extremes(frame, key, grouped)}
