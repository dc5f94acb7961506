"""Books in the formats authors keep them: EPUB (reading order from the spine), DOCX, ODT and RTF
through pandoc's readers, PDF through its text layer (finetune.data.pdf), and Scrivener projects
(the binder's Draft folder, each document's RTF). A book becomes chapters, each a passage that
keeps the book's title and its own; what is not the book's prose (table of contents, copyright
page, index, title page, notes) is dropped and counted, and markup becomes plain text."""

from __future__ import annotations

import json
import re
import subprocess
import tempfile
import xml.etree.ElementTree as ET
import zipfile
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pypandoc

from finetune.data.inputs import BadInput
from finetune.data.pdf import read_pdf

PANDOC_FORMATS = {".epub": "epub", ".docx": "docx", ".odt": "odt", ".rtf": "rtf"}


# chapters that are not the book's prose, by their title; the metrics key is the value
NOT_PROSE = {"toc": re.compile(r"(table of )?contents|toc", re.I),
             "index": re.compile(r"index", re.I),
             "copyright": re.compile(r"copyright( page)?|colophon", re.I),
             "title_page": re.compile(r"title ?page|cover|half ?title", re.I),
             "notes": re.compile(r"(foot|end)?notes", re.I)}


COPYRIGHT = re.compile(r"©|\bcopyright\b|all rights reserved|\bISBN\b", re.I)


FRONT_MATTER_WORDS = 60  # untitled text before the first chapter, up to this long: a title page


@dataclass
class Chapter:
    title: str
    paragraphs: list[str] = field(default_factory=list)

    @property
    def text(self) -> str:
        return "\n\n".join(p for p in self.paragraphs if p.strip())

    def words(self) -> int:
        return sum(len(p.split()) for p in self.paragraphs)


@dataclass
class Book:
    title: str
    chapters: list[Chapter]
    dropped: Counter[str]

    def rows(self) -> list[dict[str, str]]:
        """One row per chapter: the book's title, the chapter's, its text. Untitled parts of a
        book with several are named by their place."""
        rows = []
        for i, chapter in enumerate(self.chapters, 1):
            title = chapter.title or ("" if len(self.chapters) == 1 else f"(untitled part {i})")
            rows.append({"title": self.title, "chapter": title, "text": chapter.text})
        return rows


def _key(title: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", title.lower()).split())


def finish(title: str, chapters: list[Chapter], dropped: Counter[str] | None = None,
           fallback: str = "") -> Book:
    """The chapters that are the book's prose: empty ones left out, and those that are a table of
    contents (by title, or by listing the other chapters' titles), a copyright page, an index, a
    title page or notes dropped and counted. Without a `title` (from the file's metadata), the
    title page's first line is the title, else `fallback` (the file name)."""
    dropped = dropped if dropped is not None else Counter()
    chapters = [c for c in chapters if c.text.strip()]
    titles = {_key(c.title) for c in chapters if c.title}
    kept = []
    for i, chapter in enumerate(chapters):
        reason = not_prose(chapter, titles, first=i == 0 and len(chapters) > 1)
        if reason == "title_page" and not title and len(chapter.paragraphs[0].split()) <= 12:
            title = " ".join(chapter.paragraphs[0].split())
        if reason:
            dropped[reason] += 1
        else:
            kept.append(chapter)
    if not kept:
        raise BadInput("no_prose", "no prose found (only "
                       f"{', '.join(sorted(dropped)) or 'empty chapters'})")
    return Book(title or fallback, kept, dropped)


def not_prose(chapter: Chapter, titles: set[str], first: bool) -> str:
    """Why a chapter is not prose ("" when it is)."""
    name = _key(chapter.title)
    for reason, pattern in NOT_PROSE.items():
        if name and pattern.fullmatch(name):
            return reason
    lines = [_key(re.sub(r"[\s.·]*\d+$", "", line)) for p in chapter.paragraphs
             for line in p.split("\n") if line.strip()]
    listed = sum(line in titles and line != name for line in lines)
    if lines and listed >= 2 and listed >= 0.6 * len(lines):
        return "toc"
    if COPYRIGHT.search(chapter.text) and chapter.words() < 200:
        return "copyright"
    if first and not chapter.title and chapter.words() <= FRONT_MATTER_WORDS:
        return "title_page"
    return ""


# pandoc's JSON AST to plain text


class Plain:
    """Plain text of pandoc's AST: markup dropped, links and emphasis kept as their words,
    footnotes and images left out (footnotes counted)."""

    def __init__(self) -> None:
        self.notes = 0
        self.toc_entries = 0  # paragraphs that are only a link into the book: a table of contents

    def inlines(self, items: list[dict[str, Any]]) -> str:
        return "".join(self.inline(item) for item in items)

    def inline(self, item: dict[str, Any]) -> str:
        kind, content = item["t"], item.get("c")
        if kind == "Str":
            return content
        if kind in ("Space", "SoftBreak"):
            return " "
        if kind == "LineBreak":
            return "\n"
        if kind in ("Emph", "Strong", "Underline", "Strikeout", "Superscript", "Subscript",
                    "SmallCaps"):
            return self.inlines(content)
        if kind == "Quoted":
            marks = ("‘", "’") if content[0]["t"] == "SingleQuote" else ("“", "”")
            return marks[0] + self.inlines(content[1]) + marks[1]
        if kind in ("Link", "Span"):
            return self.inlines(content[1])
        if kind == "Cite":
            return self.inlines(content[1])
        if kind in ("Code", "Math"):
            return content[1]
        if kind == "Note":
            self.notes += 1
            return ""
        return ""  # Image, RawInline

    def blocks(self, items: list[dict[str, Any]]) -> list[str]:
        out: list[str] = []
        for item in items:
            out += self.block(item)
        return out

    def block(self, item: dict[str, Any]) -> list[str]:
        kind, content = item["t"], item.get("c")
        if kind in ("Para", "Plain"):
            if internal_link(content):
                self.toc_entries += 1
                return []
            return [self.inlines(content)]
        if kind == "Header":
            return [self.inlines(content[2])]
        if kind == "LineBlock":
            return ["\n".join(self.inlines(line) for line in content)]
        if kind == "BlockQuote":
            return self.blocks(content)
        if kind == "Div":
            return self.blocks(content[1])
        if kind in ("BulletList", "OrderedList"):
            entries = content if kind == "BulletList" else content[1]
            return [p for entry in entries for p in self.blocks(entry)]
        if kind == "DefinitionList":
            return [p for term, defs in content
                    for p in [self.inlines(term)] + [q for d in defs for q in self.blocks(d)]]
        if kind == "CodeBlock":
            return [content[1]]
        return []  # Table, Figure, HorizontalRule, RawBlock


def internal_link(inlines: list[dict[str, Any]]) -> bool:
    """A paragraph that is one link to a place in the book (a bullet or number before it, or
    emphasis around it, allowed): an entry of a table of contents."""
    items = [i for i in inlines if i["t"] not in ("Space", "SoftBreak")
             and not (i["t"] == "Str" and re.fullmatch(r"[•·\-–\d.]+", i["c"]))]
    while len(items) == 1 and items[0]["t"] in ("Underline", "Emph", "Strong", "Span"):
        inner = items[0]["c"][1] if items[0]["t"] == "Span" else items[0]["c"]
        items = [i for i in inner if i["t"] not in ("Space", "SoftBreak")]
    if len(items) != 1 or items[0]["t"] != "Link":
        return False
    target = items[0]["c"][2][0]
    return target.startswith("#") or bool(re.match(r"[^:]*\.x?html?(#|$)", target))


def flatten(blocks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Sections (Divs that only group blocks, as pandoc's EPUB reader makes) opened up, so that
    headers and spine markers are at the top level."""
    out: list[dict[str, Any]] = []
    for block in blocks:
        if block["t"] == "Div" and any(b["t"] in ("Header", "Div") for b in block["c"][1]):
            out += flatten(block["c"][1])
        else:
            out.append(block)
    return out


def spine_marker(block: dict[str, Any]) -> str:
    """The file name pandoc's EPUB reader puts before each spine item (an empty Span), or ""."""
    if block["t"] == "Para" and len(block["c"]) == 1 and block["c"][0]["t"] == "Span":
        ident, _, _ = block["c"][0]["c"][0]
        if not block["c"][0]["c"][1] and re.search(r"\.x?html?$", ident):
            return ident
    return ""


def chapters_of(blocks: list[dict[str, Any]], plain: Plain, epub: bool) -> list[Chapter]:
    """Chapters at the top heading level the book uses (in an EPUB, also each spine item);
    the first heading of an untitled spine item names it."""
    blocks = flatten(blocks)
    levels = [b["c"][0] for b in blocks if b["t"] == "Header"]
    top = min(levels) if levels else 0
    chapters = [Chapter("")]
    for block in blocks:
        if epub and spine_marker(block):
            chapters.append(Chapter(""))
        elif block["t"] == "Header" and block["c"][0] == top:
            title = " ".join(plain.inlines(block["c"][2]).split())
            current = chapters[-1]
            if epub and not current.title and not current.text.strip():
                current.title = title
            else:
                chapters.append(Chapter(title))
        else:
            chapters[-1].paragraphs += plain.blocks([block])
    return chapters


def meta_text(meta: dict[str, Any], key: str) -> str:
    value = meta.get(key)
    if not value:
        return ""
    if value["t"] == "MetaInlines":
        return " ".join(Plain().inlines(value["c"]).split())
    if value["t"] == "MetaString":
        return value["c"]
    if value["t"] == "MetaList" and value["c"]:
        return meta_text({"v": value["c"][0]}, "v")
    if value["t"] == "MetaMap":
        return meta_text(value["c"], "text")
    return ""


def check_zip(data: bytes, kind: str) -> zipfile.ZipFile:
    import io

    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        bad = archive.testzip()
    except (zipfile.BadZipFile, EOFError, OSError, ValueError) as e:
        raise BadInput("corrupt_file", f"not a readable {kind} (a corrupt zip: {e})") from None
    if bad:
        raise BadInput("corrupt_file", f"not a readable {kind} (a corrupt zip: {bad} is damaged)")
    return archive


FONT_OBFUSCATION = {"http://www.idpf.org/2008/embedding", "http://ns.adobe.com/pdf/enc#RC"}


def check_drm(archive: zipfile.ZipFile) -> None:
    """An EPUB whose content is encrypted (Adobe ADEPT, Readium LCP, Apple FairPlay...): refused.
    Obfuscated fonts alone are not DRM."""
    names = set(archive.namelist())
    if "META-INF/rights.xml" in names or "META-INF/license.lcpl" in names:
        raise BadInput("drm", "DRM-protected EPUB (its META-INF has a rights licence): only a "
                       "DRM-free copy can be read; ask the publisher or export it from your "
                       "writing software")
    if "META-INF/encryption.xml" in names:
        root = ET.fromstring(archive.read("META-INF/encryption.xml"))
        methods = {m.get("Algorithm", "") for m in root.iter()
                   if m.tag.endswith("EncryptionMethod")}
        if methods - FONT_OBFUSCATION:
            raise BadInput("drm", "DRM-protected EPUB (its content is encrypted): only a "
                           "DRM-free copy can be read; ask the publisher or export it from "
                           "your writing software")


def odt_title(archive: zipfile.ZipFile) -> str:
    """The title in an ODT's meta.xml (pandoc's ODT reader does not read it)."""
    try:
        root = ET.fromstring(archive.read("meta.xml"))
    except (KeyError, ET.ParseError):
        return ""
    for node in root.iter():
        if node.tag.endswith("}title") and node.text:
            return node.text.strip()
    return ""


RTF_UNICODE = re.compile(rb"(\\u-?\d+)([^\\{}\s])")


def rtf_bytes(data: bytes) -> bytes:
    """A space after each \\uN before its literal fallback character (`\\u8220"`): pandoc's RTF
    reader takes the character for the control word's end and then drops the next one."""
    return RTF_UNICODE.sub(rb"\1 \2", data)


RTF_TITLE = re.compile(rb"{\\info[^{}]*?{\\title\s+([^{}]*)}")


def pandoc_ast(data: bytes, fmt: str) -> dict[str, Any]:
    """Pandoc's AST of a document (its JSON), from a temporary copy (pandoc reads zips by path)."""
    with tempfile.NamedTemporaryFile(suffix=f".{fmt}") as tmp:
        tmp.write(data)
        tmp.flush()
        try:
            out = pypandoc.convert_file(tmp.name, "json", format=fmt)
        except (RuntimeError, OSError, subprocess.SubprocessError) as e:
            message = " ".join(str(e).split())[:200]
            raise BadInput("corrupt_file", f"pandoc cannot read it as {fmt}: {message}") from None
    return json.loads(out)


def pandoc_book(path: Path, data: bytes) -> Book:
    suffix = path.suffix.lower()
    fmt = PANDOC_FORMATS[suffix]
    title = ""
    if fmt in ("epub", "docx", "odt"):
        archive = check_zip(data, suffix[1:].upper())
        if fmt == "epub":
            check_drm(archive)
        if fmt == "odt":
            title = odt_title(archive)
    if fmt == "rtf":
        if not data.lstrip().startswith(b"{\\rtf"):
            raise BadInput("corrupt_file", "not an RTF file (it does not start with {\\rtf)")
        found = RTF_TITLE.search(data)
        title = found.group(1).decode("latin-1").strip() if found else ""
        data = rtf_bytes(data)
    ast = pandoc_ast(data, fmt)
    plain = Plain()
    chapters = chapters_of(ast["blocks"], plain, epub=fmt == "epub")
    dropped: Counter[str] = Counter()
    if plain.notes:
        dropped["footnotes"] += plain.notes
    if plain.toc_entries:
        dropped["toc"] += 1
    return finish(meta_text(ast["meta"], "title") or title, chapters, dropped, path.stem)


# Scrivener


def scrivener_book(path: Path) -> Book:
    """A .scriv folder: the documents of its binder's Draft (Manuscript) folder in binder order,
    each top-level item a chapter (a folder's documents joined), each document's RTF read by
    pandoc; documents marked not to include in the compile are left out and counted."""
    binders = sorted(path.glob("*.scrivx"))
    if not binders:
        raise BadInput("no_binder", "a Scrivener project without a binder (.scrivx file); "
                       "open it in Scrivener and save, or compile it to DOCX or RTF")
    try:
        root = ET.parse(binders[0]).getroot()
    except ET.ParseError as e:
        raise BadInput("corrupt_file", f"{binders[0].name} is not readable XML ({e})") from None
    draft = next((item for item in root.iter("BinderItem")
                  if item.get("Type") == "DraftFolder"), None)
    if draft is None:
        raise BadInput("no_draft", f"{binders[0].name} has no Draft (Manuscript) folder")
    dropped: Counter[str] = Counter()
    parts: list[tuple[str, list[ET.Element]]] = []
    for item in children(draft):
        if not in_compile(item):
            dropped["not_in_compile"] += 1
            continue
        documents = [d for d in [item, *descendants(item)] if in_compile(d)]
        if len(documents) <= len(descendants(item)):
            dropped["not_in_compile"] += len(descendants(item)) + 1 - len(documents)
        parts.append((item.findtext("Title", "").strip(), documents))
    files = {d: document_rtf(path, d) for _, docs in parts for d in docs}
    with ThreadPoolExecutor(4) as pool:
        texts = dict(zip(files, pool.map(rtf_paragraphs, files.values()), strict=True))
    chapters = [Chapter(title, [p for d in docs for p in texts[d]]) for title, docs in parts]
    return finish("", chapters, dropped, path.stem)


def children(item: ET.Element) -> list[ET.Element]:
    return list(item.find("Children") or [])


def descendants(item: ET.Element) -> list[ET.Element]:
    return [d for child in children(item) for d in (child, *descendants(child))]


def in_compile(item: ET.Element) -> bool:
    flag = item.findtext("MetaData/IncludeInCompile")
    return flag is None or flag.strip().lower() != "no"


def document_rtf(project: Path, item: ET.Element) -> Path | None:
    """A binder item's text: Scrivener 3 keeps Files/Data/<UUID>/content.rtf, Scrivener 2
    Files/Docs/<ID>.rtf; a folder without text has none."""
    for candidate in (project / "Files" / "Data" / item.get("UUID", "") / "content.rtf",
                      project / "Files" / "Docs" / f"{item.get('ID', '')}.rtf"):
        if candidate.is_file():
            return candidate
    return None


def rtf_paragraphs(file: Path | None) -> list[str]:
    if file is None:
        return []
    data = file.read_bytes()
    if not data.strip():
        return []
    plain = Plain()
    return plain.blocks(flatten(pandoc_ast(rtf_bytes(data), "rtf")["blocks"]))


def read_book(path: Path, data: bytes | None) -> Book:
    """A book file (or Scrivener folder) as chapters; a file that cannot be read is a BadInput."""
    suffix = path.suffix.lower()
    if suffix == ".scriv":
        return scrivener_book(path)
    if suffix == ".doc":
        raise BadInput("old_word_format", "the old binary Word format (.doc) cannot be read: "
                       "save it as .docx in Word or LibreOffice (soffice --headless "
                       "--convert-to docx FILE.doc), and ingest that")
    assert data is not None
    if suffix == ".pdf":
        title, chapters, dropped = read_pdf(data)
        return finish(title, [Chapter(t, text.split("\n\n")) for t, text in chapters], dropped,
                      path.stem)
    return pandoc_book(path, data)
