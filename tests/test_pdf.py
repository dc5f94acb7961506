"""read_pdf on books printed by a real writer (pandoc's HTML, printed by Chromium): the chapters
come back with their titles and their words in order, without page furniture, footnote markers
or the table of contents, lines hyphenated at their ends joined; bad PDFs are BadInputs."""

from __future__ import annotations

import base64
import difflib
import io
import re
import shutil
import struct
import subprocess
import textwrap
import zlib
from collections import Counter
from pathlib import Path

import pypandoc
import pypdfium2 as pdfium
import pytest
from matplotlib.backends.backend_pdf import PdfPages
from matplotlib.figure import Figure
from pypdf import PdfWriter

from finetune.data.inputs import BadInput
from finetune.data.pdf import read_pdf
from tests.helpers import SHARED_CORPORA

CHROMIUM = shutil.which("chromium")
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed")

TITLE = "The Lighthouse Keeper"

# Original prose, a few short chapters. [^n] marks a footnote. The parts of each hyphenated
# compound are words of the text too, so wherever a line breaks one, the text shows the
# hyphen belongs (the reader keeps it when it knows both halves and not the two run together).
CHAPTERS = [
    ("The First Night", [
        "It was a quiet evening when the keeper climbed the long stairs to the lamp room, "
        "carrying a lantern and a well-known book of sea stories that his grandfather had left "
        "him many years before.[^1] The internationalization of the shipping lanes had made the"
        " work lonelier than ever, and the extraordinarily unpredictable weather kept the "
        "supply boats away for weeks at a time. He did not mind the solitude as much as the "
        "people on the mainland imagined; there was always something to mend, to polish or to "
        "write down in the log, and the evenings passed quickly enough.",
        "He remembered the characteristically stubborn fishermen who used to gather at the "
        "harbour wall, arguing about nets and tides and the uncomfortable responsibilities of "
        "their trade. They had laughed at his old-fashioned coat and his salt-stained boots, "
        "but every one of them knew him well and had come to him when the fog rolled in and the"
        " compass needles began to wander. He had learned more from their long-standing "
        "complaints than from any instruction manual the authorities had ever sent him.",
        "That first night the wind was gentle and the sea lay flat under a thin moon. He wound "
        "the clockwork, trimmed the wick, and watched the great lens begin its slow rotation. "
        "Somewhere beyond the horizon a freighter answered with a single blink, and he wrote "
        "the time in the margin of the log with a pencil worn down to the length of his thumb. "
        "It was, he thought, a perfectly ordinary beginning to an extraordinary winter.",
    ]),
    ("A Letter from the Mainland", [
        "The letter arrived in a waterproof pouch tied to the railing of the supply boat, and "
        "the boatman would not come ashore to deliver it in person. It was written on thick "
        "cream paper in the careful, slanting hand of his sister, who had never quite forgiven "
        "him for taking a post so far from the family.[^2] She wrote about the new school, the "
        "price of bread, the neighbour's disappointing vegetable garden and the unbelievable "
        "incompetence of the town council, which had once again postponed the repairs to the "
        "bridge.",
        "Near the end of the letter, almost as an afterthought, she mentioned that a stranger "
        "had been asking questions about the lighthouse. He had introduced himself as a "
        "surveyor from the department of maritime communications, though he carried no "
        "instruments and seemed far more interested in the keeper's routines than in the "
        "condition of the tower. The keeper read that paragraph three times, folded the letter "
        "along its old creases, and put it in the drawer beside the barometer.",
        "In the days that followed he found himself looking more often at the path that wound "
        "down from the cliffs to the landing stage. Nobody came. The gulls quarrelled over the "
        "remains of his lunch, the tide rose and fell with its well-known indifference, as "
        "known to him as his own breath, and the old-fashioned radio he had fashioned from "
        "spare parts crackled with weather reports from places he had never seen. Still, he "
        "began to lock the door at night, something he had not done in eleven years.",
    ]),
    ("The Storm", [
        "The storm came from the west, heavy and relentless, and by the afternoon the keeper "
        "could no longer distinguish the horizon from the low, indistinguishable mass of cloud "
        "that pressed down on the water. Waves broke against the rocks with a sound like "
        "distant artillery, and spray rattled on the windows of the lamp room a hundred feet "
        "above the sea. He checked the generator twice, tightened the storm shutters, and "
        "filled every lamp and lantern he owned.",
        "Shortly after midnight the main light failed. The rotation motor shuddered and "
        "stopped, and the great lens hung motionless, throwing a single frozen beam across the "
        "heaving water, standing at the rail. He worked by lantern light for nearly an hour, "
        "his fingers numb, before he found the fault: a cable had been cut cleanly, not worn "
        "through, just below the junction box, stained with salt. Someone had been in the "
        "tower. The salt-stained boots by the door were his own, but the muddy prints beside "
        "them were not.",
        "He spliced the cable with tape and copper wire and a great deal of patience, and at "
        "twenty minutes past one the lens began to turn again, forty seconds to a turn. Out in "
        "the darkness a ship's horn sounded twice, long and low, which he chose to take as "
        "thanks.[^3] He did not sleep. He sat on the top step with the lantern at his feet and "
        "listened to the storm wear itself out against the rocks, making a long-standing list "
        "of everyone who knew where the spare key was kept.",
    ]),
    ("The Surveyor", [
        "Three days after the storm a small motor launch rounded the point and tied up at the "
        "landing stage without asking permission. The man who stepped ashore wore a grey "
        "raincoat over a suit that had never been meant for islands, and he carried a leather "
        "case that he did not put down even while he climbed the slippery steps. He introduced "
        "himself, as the keeper had known he would, as a surveyor from the department of "
        "maritime communications, and he asked to see the lamp room.",
        "The keeper showed him everything with the patience of a man who has nothing to hide "
        "and a great deal to notice. He explained the clockwork, the lens, the generator and "
        "the cable he had spliced during the storm, and he watched the surveyor's eyes rather "
        "than his hands. The visitor wrote nothing down. He asked how often the supply boat "
        "came, who else kept a key to the door, and whether the keeper had ever thought of "
        "retiring to the mainland, where the winters were gentler and a man could find company "
        "in the evenings.[^4]",
        "When the launch had gone the keeper sat for a long while at the kitchen table, turning"
        " the questions over in his mind like stones picked up on the beach. None of them had "
        "been about the tower. Every one of them had been about him. He took out his sister's "
        "letter again and read the paragraph about the stranger, and then he took a sheet of "
        "paper from the drawer and began, slowly and with many corrections, to write a reply "
        "that he was not yet sure he would send.",
        "That night he kept the lamp burning in the kitchen as well as in the tower, and twice "
        "he went to the window at the sound of an engine that turned out to be only the wind in"
        " the chimney. Toward dawn he fell asleep in his chair, the unfinished letter under his"
        " hand, and dreamed of his grandfather polishing the lens with a cloth as soft as a "
        "cat's ear.",
    ]),
    ("Morning", [
        "By morning the sea had calmed to a sullen grey swell, and the sky was the colour of "
        "old pewter. The keeper walked the length of the island, looking for anything the storm"
        " had thrown up or anyone it might have left behind. He found a broken oar, a tangle of"
        " orange netting, and on the landing stage a small notebook wrapped in oilcloth, its "
        "pages filled with the same careful, slanting handwriting as his sister's letter.",
        "He sat on an upturned crate and read it from beginning to end. It was not a confession"
        " and not quite a warning; it was a record of the lighthouse itself, of every keeper "
        "who had served there and every ship that had been lost within sight of its beam. The "
        "last entry was dated the day before the storm, and it ended in the middle of a "
        "sentence, as if the writer had been interrupted and had meant to come back.",
        "When the supply boat came at last he handed the notebook to the boatman without a "
        "word, together with a letter for his sister. He asked her, in his plain and "
        "old-fashioned way, to come and visit in the spring, when the weather would be kind and"
        " the days long enough for the two of them to talk. Then he climbed the stairs, wound "
        "the clockwork, and wrote the time in the log.",
    ]),
]

FOOTNOTES = {
    1: "His grandfather had kept the same light for forty-one years, and one more.",
    2: "She had wanted him to take over the bakery on the square.",
    3: "Two long blasts was an old signal among the coastal pilots.",
    4: "The department had closed its regional office the previous autumn.",
}

CSS = """
body { font-family: serif; font-size: 12pt; max-width: 24em; margin: 0 auto;
       text-align: justify; }
p { margin: 0; text-indent: 1.5em; }
h1 { break-before: page; }
.footnote-back { display: none; }
"""


def soft_hyphenate(text: str) -> str:
    """Soft hyphens in the long words, as a typesetter's hyphenation would put them: Chromium
    breaks lines at them (it has no hyphenation dictionaries of its own here)."""
    def cut(match: re.Match[str]) -> str:
        word = match.group()
        pieces = [word[i:i + 3] for i in range(0, len(word), 3)]
        if len(pieces[-1]) < 3:  # no break before the last two letters
            pieces[-2:] = [pieces[-2] + pieces[-1]]
        return "\u00ad".join(pieces)
    return re.sub(r"[A-Za-z]{9,}", cut, text)


def markdown(title: str, chapters: list[tuple[str, list[str]]],
             footnotes: dict[int, str]) -> str:
    body = "\n\n".join(f"# {name}\n\n" + "\n\n".join(soft_hyphenate(p) for p in paragraphs)
                       for name, paragraphs in chapters)
    notes = "\n\n".join(f"[^{n}]: {text}" for n, text in footnotes.items())
    return f"---\ntitle: {title}\nlang: en\n---\n\n{body}\n\n{notes}\n"


def source_words(chapters: list[tuple[str, list[str]]], footnotes: dict[int, str]) -> list[str]:
    """The prose words a reader sees, in order: the chapters' text, then the footnotes (pandoc
    sets them at the end of the document)."""
    text = " ".join(p for _, paragraphs in chapters for p in paragraphs)
    return re.sub(r"\[\^\d+\]", "", text).split() + " ".join(footnotes.values()).split()


def print_pdf(folder: Path, md: str, outline: bool, headers: bool, css: str = CSS) -> bytes:
    """Markdown -> standalone HTML (pandoc, with a table of contents) -> PDF (Chromium)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "book.css").write_text(css, encoding="utf-8")
    html = pypandoc.convert_text(md, "html", format="markdown-smart", extra_args=[
        "--standalone", "--toc", "-V", "toc-title=Contents", "--css=book.css", "--embed-resources",
        f"--resource-path={folder}"])
    (folder / "book.html").write_text(html, encoding="utf-8")
    return chromium_pdf(folder, folder / "book.html", outline=outline, headers=headers)


def chromium_pdf(folder: Path, page: Path, outline: bool = False, headers: bool = False) -> bytes:
    out = folder / "book.pdf"
    args = [str(CHROMIUM), "--headless=new", "--no-sandbox", "--disable-gpu",
            f"--user-data-dir={folder / 'profile'}", f"--print-to-pdf={out}"]
    args += ["--generate-pdf-document-outline"] if outline else []
    args += [] if headers else ["--no-pdf-header-footer"]
    subprocess.run([*args, page.as_uri()], check=True, timeout=120, capture_output=True)
    return out.read_bytes()


@pytest.fixture(scope="module")
def our_book(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """Chromium's own header (date, title) and footer (file URL, "3/7") on, with an outline."""
    md = markdown(TITLE, CHAPTERS, FOOTNOTES)
    return print_pdf(tmp_path_factory.mktemp("outline"), md, outline=True, headers=True)


# A book's own furniture, from CSS page margin boxes: a running head and a page number.
BOOK_PAGES = f"""
@page {{ margin: 0.8in;
         @top-center {{ content: "{TITLE}"; font-size: 9pt; }}
         @bottom-center {{ content: counter(page); font-size: 9pt; }} }}
"""


@pytest.fixture(scope="module")
def our_book_plain(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """No outline (chapters from the headings' font size); a running head and page numbers of
    the book's own instead of Chromium's header and footer."""
    md = markdown(TITLE, CHAPTERS, FOOTNOTES)
    return print_pdf(tmp_path_factory.mktemp("plain"), md, outline=False, headers=False,
                     css=CSS + BOOK_PAGES)


def in_order(source: list[str], chapters: list[tuple[str, str]]) -> float:
    """The share of the source's words that come back, in order."""
    got = [w for _, text in chapters for w in text.split()]
    matcher = difflib.SequenceMatcher(None, source, got, autojunk=False)
    return sum(block.size for block in matcher.get_matching_blocks()) / len(source)


def check_book(title: str, chapters: list[tuple[str, str]], dropped: Counter[str]) -> None:
    text = "\n\n".join(t for _, t in chapters)
    assert title == TITLE
    assert [name for name, _ in chapters] == [name for name, _ in CHAPTERS]
    source = source_words(CHAPTERS, FOOTNOTES)
    assert in_order(source, chapters) >= 0.99
    assert len(text.split()) <= 1.01 * len(source)  # nothing much added (the notes' "1." "2.")
    assert dropped["footnote_marker"] == len(FOOTNOTES)
    assert not re.search(r"[^\W\d_][.,;:]?\d", text)  # no marker left on a word: "before.1"
    for word in {w.strip(".,;:") for w in source if len(w) >= 9 or "-" in w}:
        assert word in text, word  # long words joined again, compounds with their hyphen
    assert "\u00ad" not in text and "\u2010" not in text and "\ufffe" not in text
    assert "Contents" not in text and TITLE not in text
    for name, paragraphs in CHAPTERS[:-1]:  # the last also holds the footnotes
        assert dict(chapters)[name].split("\n\n") == [re.sub(r"\[\^\d+\]", "", p)
                                                      for p in paragraphs]


@needs_chromium
def test_book_with_outline_and_chromium_header_footer(our_book: bytes) -> None:
    pdf = pdfium.PdfDocument(our_book)
    assert len(list(pdf.get_toc())) > len(CHAPTERS)  # title, Contents, chapters
    raw = "".join(page.get_textpage().get_text_range() for page in pdf)
    assert raw.count("\u2010\r\n") + raw.count("\ufffe") >= 5  # words broken at line ends
    assert "file://" in raw and len(pdf) >= 5

    title, chapters, dropped = read_pdf(our_book)

    check_book(title, chapters, dropped)
    assert dropped["header_footer"] == 2 * len(pdf)  # the date-and-title line, the URL line
    assert dropped["toc"] >= len(CHAPTERS) + 1
    text = "\n".join(t for _, t in chapters)
    assert "file:" not in text and not re.search(r"\d+/\d+", text) and " PM " not in text


@needs_chromium
def test_book_without_outline_finds_chapters_by_heading_size(our_book_plain: bytes) -> None:
    pdf = pdfium.PdfDocument(our_book_plain)
    assert not list(pdf.get_toc())

    title, chapters, dropped = read_pdf(our_book_plain)

    check_book(title, chapters, dropped)
    # the running head on every page (the title page's title, in large type, stays a heading)
    assert dropped["header_footer"] == dropped["page_number"] == len(pdf)
    assert dropped["toc"] >= len(CHAPTERS) + 1


class Typesetter:
    """Pages set by hand in matplotlib's PDF writer: 6x9 in, a running head and a page number
    on each, lines placed from the top down."""

    def __init__(self, pdf: PdfPages) -> None:
        self.pdf, self.page, self.number, self.y = pdf, None, 0, 0.0

    def new_page(self) -> None:
        self.finish()
        self.number += 1
        self.page = Figure(figsize=(6, 9))
        self.page.text(0.5, 0.96, TITLE, ha="center", fontsize=8)
        self.page.text(0.5, 0.03, str(self.number), ha="center", fontsize=9)
        self.y = 0.9

    def put(self, text: str, size: float, indent: float = 0.0, step: float = 0.022) -> None:
        if self.page is None or self.y < 0.08:
            self.new_page()
        assert self.page is not None
        self.page.text(0.1 + indent, self.y, text, fontsize=size)
        self.y -= step

    def finish(self) -> None:
        if self.page is not None:
            self.pdf.savefig(self.page)
            self.page = None


def matplotlib_pdf(path: Path) -> tuple[bytes, list[str]]:
    """The book set in matplotlib, which needs no browser: chapters on new pages under an 18 pt
    heading, paragraphs with an indented first line, lines broken at spaces and after hyphens,
    superscript footnote markers (mathtext) and the notes at the chapter's end in small type.
    Also the words in the order they were set."""
    placed: list[str] = []
    with PdfPages(path, metadata={"Title": TITLE}) as pdf:
        setter = Typesetter(pdf)
        for name, paragraphs in CHAPTERS:
            setter.new_page()
            setter.put(name, 18, step=0.05)
            for paragraph in paragraphs:
                placed += re.sub(r"\[\^\d+\]", "", paragraph).split()
                marked = re.sub(r"\[\^(\d+)\]", r"$^{\1}$", paragraph)
                for i, line in enumerate(textwrap.wrap(marked, 62)):
                    setter.put(line, 10, indent=0.04 if i == 0 else 0.0)
            for n in [int(n) for p in paragraphs for n in re.findall(r"\[\^(\d+)\]", p)]:
                setter.y -= 0.01
                setter.put(f"{n}. {FOOTNOTES[n]}", 8, step=0.018)
                placed += f"{n}. {FOOTNOTES[n]}".split()
        setter.finish()
    return path.read_bytes(), placed


def test_book_set_in_matplotlib(tmp_path: Path) -> None:
    """Without a browser: furniture, markers, hyphens and heading-size chapters all the same."""
    data, placed = matplotlib_pdf(tmp_path / "book.pdf")
    pdf = pdfium.PdfDocument(data)
    pages = len(pdf)
    raw = "".join(page.get_textpage().get_text_range() for page in pdf)
    assert raw.count("\ufffe") >= 2  # compounds broken after their hyphen at line ends

    title, chapters, dropped = read_pdf(data)

    assert title == TITLE
    assert [name for name, _ in chapters] == [name for name, _ in CHAPTERS]
    assert in_order(placed, chapters) >= 0.99
    assert dropped["page_number"] == dropped["header_footer"] == pages
    assert dropped["footnote_marker"] == len(FOOTNOTES)
    text = "\n\n".join(t for _, t in chapters)
    assert not re.search(r"[^\W\d_][.,;:]?\d", text) and TITLE not in text
    for word in {w.strip(".,;:") for w in placed if "-" in w}:
        assert word in text, word
    for (name, paragraphs), (_, got) in zip(CHAPTERS, chapters, strict=True):
        want = [re.sub(r"\[\^\d+\]", "", p) for p in paragraphs]
        assert got.split("\n\n")[:len(want)] == want, name


INAUGURAL = ["1789-Washington", "1801-Jefferson", "1861-Lincoln", "1933-Roosevelt"]


@needs_chromium
def test_public_domain_addresses_come_back_in_order(tmp_path: Path) -> None:
    folder = SHARED_CORPORA / "inaugural"
    if not folder.is_dir():
        pytest.skip(f"no shared corpora at {folder}")
    chapters = []
    for name in INAUGURAL:
        text = (folder / f"{name}.txt").read_text(encoding="utf-8", errors="replace")
        chapters.append((name.replace("-", " "), [" ".join(p.split()) for p in text.split("\n")
                                                  if p.strip()]))
    escaped = [(name, [re.sub(r"([!-/:-@\[-`{-~])", r"\\\1", p) for p in paragraphs])
               for name, paragraphs in chapters]  # plain text, not Markdown
    pdf = print_pdf(tmp_path, markdown("Inaugural Addresses", escaped, {}), outline=True,
                    headers=True)

    title, got, dropped = read_pdf(pdf)

    assert title == "Inaugural Addresses"
    assert [name for name, _ in got] == [name for name, _ in chapters]
    assert in_order(source_words(chapters, {}), got) >= 0.99
    assert dropped["header_footer"] == 2 * len(pdfium.PdfDocument(pdf))
    for (name, paragraphs), (_, text) in zip(chapters, got, strict=True):
        assert len(text.split("\n\n")) == len(paragraphs), name


def test_encrypted_pdf_is_a_bad_input() -> None:
    writer = PdfWriter()
    writer.add_blank_page(612, 792)
    writer.encrypt("secret")
    with pytest.raises(BadInput, match="encrypted") as err:
        read_pdf(written(writer))
    assert err.value.reason == "encrypted" and "password" in str(err.value)


def test_pdf_without_text_is_a_bad_input() -> None:
    writer = PdfWriter()
    for _ in range(3):
        writer.add_blank_page(612, 792)
    with pytest.raises(BadInput, match="OCR") as err:
        read_pdf(written(writer))
    assert err.value.reason == "no_text_layer"


@needs_chromium
def test_scanned_page_is_a_bad_input(tmp_path: Path) -> None:
    page = tmp_path / "scan.html"
    page.write_text(f'<html><body><img src="{png_data_uri(400, 500)}"></body></html>',
                    encoding="utf-8")
    with pytest.raises(BadInput) as err:
        read_pdf(chromium_pdf(tmp_path, page))
    assert err.value.reason == "no_text_layer"


@pytest.mark.parametrize("data", [b"", b"not a PDF at all", b"%PDF-1.7\n" + bytes(range(256)) * 8])
def test_corrupt_file_is_a_bad_input(data: bytes) -> None:
    with pytest.raises(BadInput) as err:
        read_pdf(data)
    assert err.value.reason == "corrupt_file"


def test_truncated_pdf_is_a_bad_input() -> None:
    writer = PdfWriter()
    writer.add_blank_page(612, 792)
    data = written(writer)
    with pytest.raises(BadInput) as err:
        read_pdf(data[: len(data) // 2])
    assert err.value.reason == "corrupt_file"


def written(writer: PdfWriter) -> bytes:
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def png_data_uri(width: int, height: int) -> str:
    """A grey-striped PNG, as a scanner's page image would be (no text in it)."""
    rows = b"".join(b"\x00" + bytes((x * 7 + y) % 256 for x in range(width)) for y in range(height))

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
           + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))
    return "data:image/png;base64," + base64.b64encode(png).decode()
