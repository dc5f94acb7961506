"""Normalise data/interim/ingested.parquet into data/interim/clean.parquet: NFC, no HTML or
control characters, tidy whitespace, no Gutenberg boilerplate, no exact duplicates, passages of
at most `clean.max_chars` cut on paragraph boundaries. Params: `mode`, `clean`."""

from __future__ import annotations

import html
import re
import unicodedata
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pandas as pd

from stages.io import read_parquet, stage_main, write_parquet
from stages.params import PATHS, CleanParams, Params, Paths, UserError

TAG = re.compile(r"</?[A-Za-z][A-Za-z0-9-]*(?:\s[^<>]*)?/?>")
CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u200b\ufeff]")
HSPACE = re.compile(r"[^\S\n]+")
BLANK_LINES = re.compile(r"\n\s*\n\s*")
SENTENCE_END = re.compile(r"(?<=[.!?…])\s+")
GUTENBERG_START = re.compile(r"^\*{3}\s*START OF (?:THE|THIS) PROJECT GUTENBERG.*$", re.I | re.M)
GUTENBERG_END = re.compile(r"^\*{3}\s*END OF (?:THE|THIS) PROJECT GUTENBERG.*$", re.I | re.M)


def strip_gutenberg(text: str) -> str:
    """The body between Project Gutenberg's START and END markers (the text itself if absent)."""
    start = GUTENBERG_START.search(text)
    if start:
        text = text[start.end():]
    end = GUTENBERG_END.search(text)
    return text[: end.start()] if end else text


def normalize(text: str) -> str:
    """NFC, HTML tags and entities removed, control characters dropped, runs of spaces collapsed,
    lines trimmed, and paragraphs separated by exactly one blank line."""
    text = unicodedata.normalize("NFC", text.replace("\r\n", "\n").replace("\r", "\n"))
    text = html.unescape(TAG.sub("", text)).replace("\t", " ")
    text = CONTROL.sub("", text)
    text = HSPACE.sub(" ", text)
    text = "\n".join(line.strip() for line in text.split("\n"))
    return BLANK_LINES.sub("\n\n", text).strip()


def _hard_split(piece: str, max_chars: int) -> Iterator[str]:
    """A piece with no usable boundary: cut at the last space before the limit. It moves an index
    instead of slicing off the rest each time, so one 50 MB line stays linear."""
    start, end = 0, len(piece)
    while end - start > max_chars:
        cut = piece.rfind(" ", start, start + max_chars)
        cut = cut if cut > start + max_chars // 2 else start + max_chars
        yield piece[start:cut].strip()
        start = cut
        while start < end and piece[start].isspace():
            start += 1
    if piece[start:].strip():
        yield piece[start:].strip()


def _units(paragraph: str, max_chars: int) -> Iterator[str]:
    """A paragraph, or its sentences if it is too long, or hard pieces of an over-long sentence."""
    if len(paragraph) <= max_chars:
        yield paragraph
        return
    for sentence in SENTENCE_END.split(paragraph):
        yield from _hard_split(sentence, max_chars)


def passages(text: str, max_chars: int) -> list[str]:
    """Greedily pack whole paragraphs into passages of at most max_chars characters."""
    out: list[str] = []
    current = ""
    for paragraph in text.split("\n\n"):
        for j, unit in enumerate(_units(paragraph, max_chars)):
            joiner = " " if j else "\n\n"  # sentences of one paragraph stay on one line
            if current and len(current) + len(joiner) + len(unit) > max_chars:
                out.append(current)
                current = ""
            current = f"{current}{joiner}{unit}" if current else unit
    if current:
        out.append(current)
    return out


def clean_text_rows(df: pd.DataFrame, p: CleanParams) -> tuple[pd.DataFrame, Counter[str]]:
    rows: list[dict[str, str]] = []
    dropped: Counter[str] = Counter()
    seen: set[str] = set()
    for record in df.itertuples(index=False):
        text = strip_gutenberg(record.text) if p.strip_gutenberg else record.text
        text = normalize(text)
        if not text:
            dropped["empty"] += 1
            continue
        for i, passage in enumerate(passages(text, p.max_chars)):
            if len(passage) < p.min_chars:
                dropped["too_short"] += 1
            elif p.dedupe and passage in seen:
                dropped["duplicate"] += 1
            else:
                seen.add(passage)
                rows.append({"doc_id": record.doc_id, "passage_id": f"{record.doc_id}-{i:05d}",
                             "source": record.source, "title": normalize(record.title),
                             "text": passage})
    return pd.DataFrame(rows, columns=["doc_id", "passage_id", "source", "title", "text"]), dropped


def clean_pair_rows(df: pd.DataFrame, p: CleanParams) -> tuple[pd.DataFrame, Counter[str]]:
    rows: list[dict[str, str]] = []
    dropped: Counter[str] = Counter()
    seen: set[tuple[str, str]] = set()
    for record in df.itertuples(index=False):
        prompt, response = normalize(record.prompt), normalize(record.response)
        size = len(prompt) + len(response)
        if not prompt or not response:
            dropped["empty"] += 1
        elif size < p.min_chars:
            dropped["too_short"] += 1
        elif size > p.max_chars:
            dropped["too_long"] += 1
        elif p.dedupe and (prompt, response) in seen:
            dropped["duplicate"] += 1
        else:
            seen.add((prompt, response))
            rows.append({"doc_id": record.doc_id, "passage_id": record.doc_id,
                         "source": record.source, "prompt": prompt, "response": response})
    columns = ["doc_id", "passage_id", "source", "prompt", "response"]
    return pd.DataFrame(rows, columns=columns), dropped


def run(params: Params, paths: Paths = PATHS) -> dict[str, Any]:
    df = read_parquet(paths.ingested)
    clean = clean_pair_rows if params.mode == "pairs" else clean_text_rows
    out, dropped = clean(df, params.clean)
    if out.empty:
        reasons = ", ".join(f"{n} {reason}" for reason, n in sorted(dropped.items()))
        raise UserError(f"clean: all {len(df)} records were dropped ({reasons}); check the "
                        "input or loosen clean.min_chars / clean.max_chars")
    write_parquet(out, paths.clean)
    text_cols = ["prompt", "response"] if params.mode == "pairs" else ["text"]
    return {"records_in": len(df), "records_out": len(out),
            "documents_out": int(out["doc_id"].nunique()),
            "chars_out": int(sum(out[c].str.len().sum() for c in text_cols)),
            "dropped": sum(dropped.values()), "dropped_by_reason": dict(sorted(dropped.items()))}


def main(argv: list[str] | None = None) -> None:
    stage_main("clean", run, argv)


if __name__ == "__main__":
    main()
