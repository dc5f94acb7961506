"""Books as authors keep them (EPUB, DOCX, ODT, RTF, PDF, Scrivener), written by the real writers
(pandoc, Chromium's print to PDF) from a text of our own and from public-domain addresses, read
back by ingest: the words in order, the chapters with their titles, what is not prose dropped and
counted, a chapter never cut across splits, and one line for each file that cannot be read."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import pandas as pd
import pytest

from bench.books import chromium, in_order, words, write_book
from finetune.config.ingest import IngestParams
from finetune.data import readers
from finetune.data.inputs import Problems
from finetune.errors import UserError
from finetune.paths import PATHS
from stages import clean, ingest, split
from tests.helpers import SHARED_CORPORA, run_stage, tiny_params

# A short book of our own: four chapters, a hyphenated compound, quotes and an apostrophe.
OWN_BOOK = [
    ("The Ferry at Dawn", [
        "Every morning at six the ferry left the north bank with whoever had woken in time. "
        "Ines ran the ticket hut, a green box with one window and a kettle that whistled "
        "when it pleased.",
        "She knew the regulars by their coats. The baker wore flour on his sleeves even on "
        "Sundays; the twins from the boatyard shared a single umbrella and argued under it "
        "about tides.",
        "\u201cTwo returns,\u201d said the baker, as he had said for eleven years, and Ines tore "
        "the tickets along the perforation without looking."]),
    ("A Letter from the Coast", [
        "The letter came in a blue envelope with a stamp she did not recognise. It smelled of "
        "salt and of somebody else's cigarettes, and the handwriting leaned to the left as if "
        "walking into wind.",
        "Her cousin wrote that the lighthouse on the point had been sold to a man from the "
        "city who meant to turn it into a restaurant. The keeper's old logbooks were in a "
        "crate in the harbour office, waiting for someone to want them.",
        "Ines read the letter twice on the ferry and once more on the bench by the slipway, "
        "where the gulls watched her with their well-known contempt."]),
    ("The Logbooks", [
        "There were nineteen of them, bound in canvas gone soft as cloth. Each page held a "
        "date, the weather at four hours, the ships sighted and a line the keeper called his "
        "remark.",
        "Most remarks were about the lamp: a cracked chimney, a wick trimmed twice, oil that "
        "smoked in the cold. Some were about nothing at all. On the ninth of March he had "
        "written only that the sea was the colour of a spoon.",
        "She carried the crate home on the last ferry, and the twins helped her lift it over "
        "the rail without asking what was inside."]),
    ("What the Keeper Saw", [
        "By midsummer she had read every page. The keeper had seen a whale twice, a waterspout "
        "once, and on a still night in his final year a ring of lights far out on the water "
        "that he did not try to explain.",
        "Ines copied the remarks into a notebook of her own, one to a line, until the notebook "
        "read like a long poem about weather. She gave it to the man who bought the "
        "lighthouse, and he hung the pages in frames along the stair.",
        "The restaurant did not last the winter. The frames are still there, and the ferry "
        "still leaves at six."]),
]


PANDOC_FORMATS = ("epub", "docx", "odt", "rtf")


def source_words(chapters: list[tuple[str, list[str]]]) -> list[str]:
    return [w for _, paragraphs in chapters for p in paragraphs for w in words(p)]


def ingested(path: Path, on_error: str = "fail") -> tuple[pd.DataFrame, dict]:
    return readers.ingest([path], "text", IngestParams(on_error=on_error),
                          Problems(on_error))


def check_book(path: Path, chapters: list[tuple[str, list[str]]], title: str) -> float:
    df, summary = ingested(path)
    assert df["chapter"].tolist() == [name for name, _ in chapters]
    assert set(df["title"]) == {title}
    got = [w for text in df["text"] for w in words(text)]
    share = in_order(source_words(chapters), got)
    assert share >= 0.99, f"{path.name}: {share:.2%} of the words in order"
    # paragraphs stay paragraphs; markup and footnotes are gone
    assert [t.count("\n\n") + 1 for t in df["text"]] == [len(ps) for _, ps in chapters]
    assert not any("*" in t or "note on" in t for t in df["text"])
    return share


@pytest.mark.parametrize("fmt", [*PANDOC_FORMATS, "scriv"])
def test_own_book_comes_back_word_for_word_with_its_chapters(fmt: str, tmp_path: Path) -> None:
    path = write_book(tmp_path, "The Ferry", OWN_BOOK, fmt)
    check_book(path, OWN_BOOK, "The Ferry")
    df, summary = ingested(path)
    assert "well-known" in " ".join(df["text"])  # a real compound keeps its hyphen
    if fmt in ("epub", "docx", "odt"):  # the writers that keep footnotes: dropped, counted
        assert summary["not_prose"]["footnotes"] == len(OWN_BOOK)


@pytest.mark.skipif(chromium() is None, reason="chromium is not installed")
def test_own_book_as_a_printed_pdf(tmp_path: Path) -> None:
    """Chromium's print with its header (date, title) and footer (file URL, page x/y): furniture
    dropped and counted, footnote markers removed, hyphenated line ends joined."""
    path = write_book(tmp_path, "The Ferry", OWN_BOOK, "pdf", headers=True)
    check_book(path, OWN_BOOK, "The Ferry")
    df, summary = ingested(path)
    text = " ".join(df["text"])
    assert "file://" not in text and "ferry.html" not in text
    assert set(summary["not_prose"]) >= {"toc", "notes", "footnote_marker", "header_footer"}


def corpus_chapters(n: int = 4) -> list[tuple[str, list[str]]]:
    folder = SHARED_CORPORA / "inaugural"
    if not folder.is_dir():
        pytest.skip("../shared/corpora is not present (CI-only corpus)")
    chapters = []
    for file in sorted(folder.glob("*.txt"))[:n]:
        text = file.read_bytes().decode("utf-8", errors="replace")
        paragraphs = [" ".join(p.split()) for p in text.split("\n\n") if p.strip()]
        chapters.append((file.stem.replace("-", " "), paragraphs))
    return chapters


@pytest.mark.parametrize("fmt", [*PANDOC_FORMATS, "pdf"])
def test_public_domain_addresses_as_a_book(fmt: str, tmp_path: Path) -> None:
    if fmt == "pdf" and chromium() is None:
        pytest.skip("chromium is not installed")
    chapters = corpus_chapters()
    check_book(write_book(tmp_path, "Inaugural Addresses", chapters, fmt), chapters,
               "Inaugural Addresses")


def test_a_chapter_goes_whole_to_one_split(tmp_path: Path) -> None:
    chapters = [(f"Part {i}", [f"Paragraph {j} of part {i}: " + " ".join(
        f"word{i}x{j}x{k}" for k in range(30)) for j in range(6)]) for i in range(12)]
    path = write_book(tmp_path / "raw", "Parts", chapters, "epub")
    params = tiny_params(ingest={"paths": [str(path)]}, clean={"max_chars": 300})
    paths = PATHS.under(tmp_path)
    for stage in (ingest, clean, split):
        run_stage(stage, params, paths)
    rows = pd.concat([pd.read_parquet(paths.split_file(name)).assign(split=name)
                      for name in ("train", "val", "test")])
    assert rows.groupby("chapter")["text"].size().min() > 1  # chapters were cut into passages
    assert rows.groupby("chapter")["split"].nunique().max() == 1
    assert set(rows["split"]) == {"train", "val", "test"}
    assert set(rows["title"]) == {"Parts"}


def test_what_is_not_prose_is_dropped_and_counted(tmp_path: Path) -> None:
    chapters = [("Copyright", ["Copyright © 2026 The Author. All rights reserved."]),
                *OWN_BOOK[:2], ("Index", ["ferry, 1, 4", "letter, 2", "lighthouse, 2, 3"])]
    df, summary = ingested(write_book(tmp_path, "The Ferry", chapters, "docx"))
    assert df["chapter"].tolist() == [name for name, _ in OWN_BOOK[:2]]
    assert summary["not_prose"] == {"copyright": 1, "index": 1, "footnotes": 4}


def drm_epub(tmp_path: Path) -> Path:
    """A pandoc EPUB with an encryption.xml that encrypts a chapter, as Adobe ADEPT does."""
    plain = write_book(tmp_path, "The Ferry", OWN_BOOK[:1], "epub").read_bytes()
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(plain)) as src, zipfile.ZipFile(out, "w") as dst:
        for item in src.infolist():
            dst.writestr(item, src.read(item))
        dst.writestr("META-INF/encryption.xml", (
            '<encryption xmlns="urn:oasis:names:tc:opendocument:xmlns:container" '
            'xmlns:enc="http://www.w3.org/2001/04/xmlenc#"><enc:EncryptedData>'
            '<enc:EncryptionMethod Algorithm="http://www.w3.org/2001/04/xmlenc#aes128-cbc"/>'
            '<enc:CipherData><enc:CipherReference URI="EPUB/text/ch001.xhtml"/></enc:CipherData>'
            "</enc:EncryptedData></encryption>"))
    path = tmp_path / "locked.epub"
    path.write_bytes(out.getvalue())
    return path


def blank_pdf(where: Path, name: str, pages: int, password: str | None = None) -> Path:
    """A PDF of blank pages (no text layer), written by pypdf, encrypted with `password`."""
    from pypdf import PdfWriter

    writer = PdfWriter()
    for _ in range(pages):
        writer.add_blank_page(width=595, height=842)
    if password:
        writer.encrypt(password)
    where.mkdir()
    with open(where / name, "wb") as f:
        writer.write(f)
    return where / name


def encrypted_pdf(tmp_path: Path) -> Path:
    return blank_pdf(tmp_path, "locked.pdf", 1, password="secret")


def scanned_pdf(tmp_path: Path) -> Path:
    return blank_pdf(tmp_path, "scan.pdf", 3)


def truncated_docx(tmp_path: Path) -> Path:
    data = write_book(tmp_path, "The Ferry", OWN_BOOK[:1], "docx").read_bytes()
    path = tmp_path / "broken.docx"
    path.write_bytes(data[: len(data) // 2])
    return path


def old_word(tmp_path: Path) -> Path:
    tmp_path.mkdir()
    path = tmp_path / "old.doc"
    path.write_bytes(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(504))  # an OLE2 header
    return path


def binderless(tmp_path: Path) -> Path:
    project = write_book(tmp_path, "Drafts", OWN_BOOK[:1], "scriv")
    next(project.glob("*.scrivx")).unlink()
    return project


@pytest.mark.parametrize("make, message", [
    (drm_epub, r"locked.epub: DRM-protected EPUB \(its content is encrypted\)"),
    (encrypted_pdf, r"locked.pdf: the PDF is encrypted"),
    (scanned_pdf, r"scan.pdf: no text layer: run OCR first"),
    (truncated_docx, r"broken.docx: not a readable DOCX \(a corrupt zip"),
    (old_word, r"old.doc: the old binary Word format \(.doc\) cannot be read: save it as .docx"),
    (binderless, r"Drafts.scriv: a Scrivener project without a binder"),
])
def test_a_book_that_cannot_be_read_is_one_line_and_nothing_written(
        make, message: str, tmp_path: Path) -> None:
    path = make(tmp_path / "in")
    paths = PATHS.under(tmp_path)
    with pytest.raises(UserError, match=message) as caught:
        run_stage(ingest, tiny_params(ingest={"paths": [str(path)]}), paths)
    assert "\n" not in str(caught.value)
    assert not paths.ingested.exists()
    df, summary = ingested(path, on_error="skip")  # or skipped and counted
    assert df.empty and summary["skipped"] == 1


def test_a_scrivener_project_reads_its_draft_in_binder_order(tmp_path: Path) -> None:
    project = write_book(tmp_path, "Drafts", OWN_BOOK, "scriv")
    binder = next(project.glob("*.scrivx"))
    # the third chapter is marked not to be compiled; a research folder lives outside the draft
    yes, no = "<IncludeInCompile>Yes", "<IncludeInCompile>No"
    parts = binder.read_text().split(yes)
    binder.write_text(yes.join(parts[:3]) + no + yes.join(parts[3:]))
    df, summary = ingested(project)
    kept = [OWN_BOOK[i] for i in (0, 1, 3)]
    assert df["chapter"].tolist() == [name for name, _ in kept]
    assert summary["not_prose"] == {"not_in_compile": 1}
    assert in_order(source_words(kept), [w for t in df["text"] for w in words(t)]) >= 0.99
