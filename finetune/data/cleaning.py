"""Cleaning records: Gutenberg boilerplate, markup and control characters removed, whitespace
normalised, personal data replaced by placeholders (`clean.redact`), documents cut into passages
of at most `clean.max_chars`, short ones and duplicates dropped (counted by reason)."""

from __future__ import annotations

import html
import re
import unicodedata
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pandas as pd

from finetune.config.clean import CleanParams
from finetune.data import conversations
from finetune.data.records import KEY, digest
from finetune.data.redaction import Redactor
from finetune.files import read_row_group

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


COLUMNS = {"text": ("doc_id", "passage_id", "source", "group", "title", "chapter", "text"),
           "pairs": ("doc_id", "passage_id", "source", "group", "prompt", "response"),
           "chat": ("doc_id", "passage_id", "source", "group", "position", "conversation")}


class Seen:
    """Exact-duplicate filter over a whole corpus: it keeps a 16-byte digest per row, not the
    text, so 2 GB of passages cost tens of MB."""

    def __init__(self) -> None:
        self.digests: set[bytes] = set()

    def first(self, *parts: str) -> bool:
        """True the first time these texts are seen."""
        key = digest(*parts)
        if key in self.digests:
            return False
        self.digests.add(key)
        return True


def text_passages(df: pd.DataFrame, p: CleanParams, redact: Redactor
                  ) -> tuple[list[dict[str, str]], Counter[str]]:
    """Each document normalised, redacted (whole, so that no cut splits a phone number) and cut
    into passages; empty and short ones dropped and counted."""
    rows: list[dict[str, str]] = []
    dropped: Counter[str] = Counter()
    for record in df.itertuples(index=False):
        text = strip_gutenberg(record.text) if p.strip_gutenberg else record.text
        text = redact(normalize(text))
        if not text:
            dropped["empty"] += 1
            continue
        title, chapter = (redact(normalize(t)) for t in (record.title, getattr(record, "chapter", "")))
        for i, passage in enumerate(passages(text, p.max_chars)):
            if len(passage) < p.min_chars:
                dropped["too_short"] += 1
            else:
                rows.append({"doc_id": record.doc_id, "passage_id": f"{record.doc_id}-{i:05d}",
                             "source": record.source, "group": record.group,
                             "title": title, "chapter": chapter, "text": passage})
    return rows, dropped


def pair_records(df: pd.DataFrame, p: CleanParams, redact: Redactor
                 ) -> tuple[list[dict[str, str]], Counter[str]]:
    """Each pair normalised and redacted; empty, short and over-long ones dropped and counted."""
    rows: list[dict[str, str]] = []
    dropped: Counter[str] = Counter()
    for record in df.itertuples(index=False):
        prompt, response = redact(normalize(record.prompt)), redact(normalize(record.response))
        size = len(prompt) + len(response)
        if not prompt or not response:
            dropped["empty"] += 1
        elif size < p.min_chars:
            dropped["too_short"] += 1
        elif size > p.max_chars:
            dropped["too_long"] += 1
        else:
            rows.append({"doc_id": record.doc_id, "passage_id": record.doc_id,
                         "source": record.source, "group": record.group,
                         "prompt": prompt, "response": response})
    return rows, dropped


def chat_records(df: pd.DataFrame, p: CleanParams, redact: Redactor
                 ) -> tuple[list[dict[str, str]], Counter[str]]:
    """Each conversation with every message's text normalised and redacted (tool-call arguments
    redacted only); one with a message left empty, or shorter than `clean.min_chars` in all, is
    dropped."""
    rows: list[dict[str, str]] = []
    dropped: Counter[str] = Counter()
    for record in df.itertuples(index=False):
        conv = conversations.loads(record.conversation)
        for m in conv["messages"]:
            m["content"] = redact(normalize(m["content"]))
            for call in m.get("tool_calls", ()):
                call["function"]["arguments"] = redact.values(call["function"]["arguments"])
        if any(not m["content"] and not m.get("tool_calls") for m in conv["messages"]):
            dropped["empty"] += 1
        elif conversations.text_chars(conv) < p.min_chars:
            dropped["too_short"] += 1
        else:
            rows.append({"doc_id": record.doc_id, "passage_id": record.doc_id,
                         "source": record.source, "group": record.group,
                         "position": record.position,
                         "conversation": conversations.dumps(conv)})
    return rows, dropped


def first_seen(rows: list[dict[str, str]], mode: str, seen: Seen, dropped: Counter[str]
               ) -> list[dict[str, str]]:
    """The rows whose text `seen` has not met before; the others are counted as duplicates."""
    kept = [row for row in rows if seen.first(*(row[k] for k in KEY[mode]))]
    dropped["duplicate"] += len(rows) - len(kept)
    return kept


def candidates(df: pd.DataFrame, mode: str, p: CleanParams
               ) -> tuple[list[dict[str, str]], Counter[str], Counter[str]]:
    """The cleaned rows of a batch before duplicate removal, what was dropped, and the personal
    data replaced (by kind). Redaction comes after normalize(), which would take `<EMAIL>` for a
    tag, and which reveals what entities and markup hide (`jane&#64;example.com`); duplicates are
    then those of the redacted text, what the model sees."""
    redact = Redactor(p.redacted(mode), p.phone_regions)
    rows, dropped = {"pairs": pair_records, "chat": chat_records}.get(mode, text_passages)(df, p, redact)
    return rows, dropped, redact.found


def clean_rows(df: pd.DataFrame, mode: str, p: CleanParams, seen: Seen | None = None
               ) -> tuple[list[dict[str, str]], Counter[str]]:
    """One batch of ingested rows cleaned; `seen` carries duplicate removal across batches."""
    rows, dropped, _ = candidates(df, mode, p)
    if p.dedupe:
        rows = first_seen(rows, mode, seen if seen is not None else Seen(), dropped)
    return rows, +dropped


def clean_text_rows(df: pd.DataFrame, p: CleanParams) -> tuple[pd.DataFrame, Counter[str]]:
    rows, dropped = clean_rows(df, "text", p)
    return pd.DataFrame(rows, columns=list(COLUMNS["text"])), dropped


def clean_pair_rows(df: pd.DataFrame, p: CleanParams) -> tuple[pd.DataFrame, Counter[str]]:
    rows, dropped = clean_rows(df, "pairs", p)
    return pd.DataFrame(rows, columns=list(COLUMNS["pairs"])), dropped


def clean_group(task: tuple[Path, int, str, CleanParams]
                 ) -> tuple[list[dict[str, str]], Counter[str], Counter[str], int]:
    """One row group of ingested.parquet in a worker: the cleaned rows before duplicate removal
    (which needs the whole corpus, so the caller does it in order), what was dropped, what was
    redacted, and the number of rows read."""
    path, index, mode, p = task
    df = read_row_group(path, index).to_pandas()
    return *candidates(df, mode, p), len(df)
