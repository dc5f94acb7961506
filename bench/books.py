"""Ingest speed on books: `uv run python -m bench.books [--pages 400]` (`--pages 4`: a smoke run).

Writes one book of about `--pages` pages (300 words a page, chapters of 12 pages, a table of
contents, footnotes) in each format with the real writers authors' tools use (pandoc for EPUB,
DOCX, ODT and RTF; Chromium's print to PDF), and a Scrivener project (its binder and one RTF
per chapter), then times the ingest stage's reader on each (median of --repeats) and checks the
words came back in order. Writes bench/books.json and its section of bench/results.md.

`write_book` is also what tests/test_books.py makes its files with."""

from __future__ import annotations

import argparse
import difflib
import json
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import pypandoc

from bench.common import ROOT, write_section

FORMATS = ("epub", "docx", "odt", "rtf", "pdf", "scriv")


MARKERS = ("<!-- books:start -->", "<!-- books:end -->")


# print CSS: justified, hyphenated text, as a typeset book has it
PRINT_CSS = ("body { font-family: serif; font-size: 11pt; text-align: justify; hyphens: auto; "
             "max-width: none; margin: 0; padding: 0 } h1 { break-before: page } "
             "p { margin: 0 0 0.6em 0 } @page { margin: 2cm }")


Chapters = list[tuple[str, list[str]]]


def note(name: str) -> str:
    return f"A note on {name}, which is not the book's prose."


def markdown(title: str, chapters: Chapters, notes: bool = True, endnotes: bool = False) -> str:
    """The book as pandoc Markdown: a heading per chapter, some words in italics, and a footnote
    in each chapter's first paragraph when `notes` (as a printed book has them when `endnotes`:
    a superscript number, and the notes in a Notes chapter at the end)."""
    parts = [f"---\ntitle: \"{title}\"\nlang: en\n---\n"]
    for i, (name, paragraphs) in enumerate(chapters, 1):
        parts.append(f"# {name}\n")
        for j, paragraph in enumerate(paragraphs):
            words = paragraph.split(" ")
            if len(words) > 6:
                words[3] = f"*{words[3]}*"
            text = " ".join(words)
            if notes and j == 0:
                text += f"^{i}^" if endnotes else f"[^n{i}]"
            parts.append(text + "\n")
        if notes and not endnotes:
            parts.append(f"[^n{i}]: {note(name)}\n")
    if notes and endnotes:
        parts += ["# Notes\n", *(f"{i}. {note(name)}\n" for i, (name, _) in enumerate(chapters, 1))]
    return "\n".join(parts)


def scrivener_project(where: Path, title: str, chapters: Chapters) -> Path:
    """A Scrivener 3 project: the binder (Draft folder, one text per chapter, a Research folder
    beside it) and each text's RTF, written by pandoc, under Files/Data/<UUID>/content.rtf."""
    project = where / f"{title}.scriv"
    items = []
    for name, paragraphs in chapters:
        ident = str(uuid.uuid5(uuid.NAMESPACE_URL, f"{title}/{name}")).upper()
        rtf = project / "Files" / "Data" / ident / "content.rtf"
        rtf.parent.mkdir(parents=True)
        pypandoc.convert_text("\n\n".join(paragraphs), "rtf", format="markdown",
                              outputfile=str(rtf), extra_args=["-s"])
        items.append(f'<BinderItem UUID="{ident}" Type="Text"><Title>{name}</Title>'
                     "<MetaData><IncludeInCompile>Yes</IncludeInCompile></MetaData></BinderItem>")
    binder = (f'<?xml version="1.0" encoding="UTF-8"?>\n<ScrivenerProject Version="2.0">'
              f'<Binder><BinderItem UUID="D" Type="DraftFolder"><Title>Manuscript</Title>'
              f'<Children>{"".join(items)}</Children></BinderItem>'
              f'<BinderItem UUID="R" Type="ResearchFolder"><Title>Research</Title></BinderItem>'
              f"</Binder></ScrivenerProject>")
    (project / f"{title}.scrivx").write_text(binder, encoding="utf-8")
    return project


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def print_pdf(html: Path, out: Path, headers: bool = False) -> None:
    """Chromium's print to PDF (with its date/title header and URL/page-number footer when
    `headers`, as a user printing from the browser gets)."""
    browser = chromium()
    if browser is None:
        raise RuntimeError("chromium is not installed (apt-get install chromium)")
    args = [browser, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
            f"--user-data-dir={out.parent / '.chromium'}", f"--print-to-pdf={out}",
            "--generate-pdf-document-outline", html.resolve().as_uri()]
    if not headers:
        args.insert(-1, "--no-pdf-header-footer")
    subprocess.run(args, check=True, capture_output=True, timeout=180)
    if not out.is_file():
        raise RuntimeError(f"chromium wrote no PDF for {html}")


def write_book(where: Path, title: str, chapters: Chapters, fmt: str, toc: bool = True,
               notes: bool = True, headers: bool = False) -> Path:
    """The book in `fmt` (epub, docx, odt, rtf, pdf or scriv) under `where`, with a table of
    contents titled "Contents" when `toc`."""
    where.mkdir(parents=True, exist_ok=True)
    if fmt == "scriv":
        return scrivener_project(where, title, chapters)
    source = markdown(title, chapters, notes, endnotes=fmt == "pdf")
    args = ["--toc", "-V", "toc-title=Contents", "--metadata", "toc-title=Contents"] if toc else []
    slug = re.sub(r"\W+", "-", title).strip("-").lower()
    out = where / f"{slug}.{fmt}"
    if fmt == "pdf":
        html = out.with_suffix(".html")
        pypandoc.convert_text(source, "html5", format="markdown", outputfile=str(html),
                              extra_args=["-s", *args, "-V", f"header-includes=<style>{PRINT_CSS}</style>"])
        print_pdf(html, out, headers)
    else:
        pypandoc.convert_text(source, fmt, format="markdown", outputfile=str(out),
                              extra_args=["-s", *args])
    return out


WORDS = re.compile(r"\w+(?:[-'’]\w+)*")


def words(text: str) -> list[str]:
    return WORDS.findall(text.replace("’", "'").lower())


def in_order(source: list[str], got: list[str]) -> float:
    """The share of the source's words that come back in order (matching blocks of a sequence
    diff)."""
    if source == got:
        return 1.0
    matcher = difflib.SequenceMatcher(None, source, got, autojunk=False)
    return sum(block.size for block in matcher.get_matching_blocks()) / max(len(source), 1)


SENTENCES = ("The river ran low that autumn and the mill wheel turned slowly.",
             "Nobody in the village could remember a year so dry.",
             "Marta walked the towpath every evening, counting the herons.",
             "At the lock the keeper kept a ledger of every boat that passed.",
             "Some nights the wind brought the smell of rain that never came.",
             "She wrote letters to her brother and never posted them.",
             "By the second week of October the well in the square was dry.",
             "The children made a game of finding the old stones of the ford.")


def generated_book(pages: int, words_per_page: int = 300, pages_per_chapter: int = 12) -> Chapters:
    """A long book written for the benchmark: paragraphs of our own sentences, numbered so no
    two are the same."""
    chapters: Chapters = []
    n_chapters = max(1, round(pages / pages_per_chapter))
    paragraphs_per_chapter = max(1, pages * words_per_page // n_chapters // 80)
    for c in range(n_chapters):
        paragraphs = []
        for p in range(paragraphs_per_chapter):
            start = (c + p) % len(SENTENCES)
            sentences = [SENTENCES[(start + k) % len(SENTENCES)] for k in range(6)]
            paragraphs.append(f"Day {c * paragraphs_per_chapter + p + 1}. " + " ".join(sentences))
        chapters.append((f"Chapter {c + 1}", paragraphs))
    return chapters


def run(pages: int, repeats: int, where: Path) -> dict[str, Any]:
    from finetune.data.books import read_book

    chapters = generated_book(pages)
    source = [w for _, paragraphs in chapters for p in paragraphs for w in words(p)]
    results: dict[str, Any] = {}
    for fmt in FORMATS:
        if fmt == "pdf" and chromium() is None:
            results[fmt] = {"skipped": "chromium is not installed"}
            continue
        started = time.perf_counter()
        path = write_book(where / fmt, "A Dry Year", chapters, fmt)
        written = time.perf_counter() - started
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            book = read_book(path, None if path.is_dir() else path.read_bytes())
            times.append(time.perf_counter() - started)
        got = [w for row in book.rows() for w in words(row["text"])]
        size = (sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
                if path.is_dir() else path.stat().st_size)
        results[fmt] = {"seconds": round(statistics.median(times), 3), "write_seconds":
                        round(written, 2), "bytes": size, "chapters": len(book.chapters),
                        "words": len(got), "words_in_order": round(in_order(source, got), 4)}
    return {"pages": pages, "words": len(source), "chapters": len(chapters), "repeats": repeats,
            "formats": results}


def table(saved: dict[str, Any]) -> str:
    lines = [MARKERS[0], f"### Ingesting a {saved['pages']}-page book "
             f"({saved['words']:,} words, {saved['chapters']} chapters)", "",
             "`uv run python -m bench.books` — the reader ingest runs on each file (a page: 300 "
             f"words), this machine, median of {saved['repeats']}.", "",
             "| format | file | seconds | chapters | words in order |", "|---|---|---|---|---|"]
    for fmt, r in saved["formats"].items():
        if "skipped" in r:
            lines.append(f"| {fmt} | skipped: {r['skipped']} | | | |")
        else:
            lines.append(f"| {fmt} | {r['bytes'] / 1e3:,.0f} kB | {r['seconds']:.2f} | "
                         f"{r['chapters']} | {100 * r['words_in_order']:.1f} % |")
    return "\n".join([*lines, MARKERS[1], ""])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pages", type=int, default=400)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "books.json")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        saved = run(args.pages, args.repeats, Path(tmp))
    args.out.write_text(json.dumps(saved, indent=2) + "\n")
    md = args.out.parent / "results.md" if args.out.parent == ROOT / "bench" else args.out.with_suffix(".md")
    write_section(md, table(saved), MARKERS)
    print(table(saved), file=sys.stderr)


if __name__ == "__main__":
    main()
