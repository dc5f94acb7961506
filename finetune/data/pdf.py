"""Reading a PDF book's text layer (pypdfium2) into chapters: page furniture (page numbers,
running headers and footers), footnote markers and tables of contents dropped and counted,
paragraphs rebuilt from the lines' geometry, words hyphenated at line ends joined, chapters from
the outline (bookmarks) or, without one, from headings set in a larger font."""

from __future__ import annotations

import ctypes
import re
import statistics
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field

import pypdfium2 as pdfium
import pypdfium2.raw as pdfium_c

from finetune.data.inputs import BadInput

# pdfium reports a hyphen it found at a line end as U+FFFE (FPDFText_GetUnicode: 0x02) and joins
# that line to the next in its text; U+2010 is how Chromium writes a soft hyphen it broke at.
HYPHENS = "-\u2010\ufffe\x02\u00ad"
SOFT_HYPHEN = "\u00ad"  # by definition a break inside a word: always joined
INVISIBLE = str.maketrans({"\u00ad": None, "\x02": "-", "\ufffe": "-", "\u200b": None,
                           "\ufb00": "ff", "\ufb01": "fi", "\ufb02": "fl", "\ufb03": "ffi",
                           "\ufb04": "ffl", "\ufb05": "st", "\ufb06": "st"})
LINE_BREAK = re.compile("\r\n|\r|\n|[\ufffe\x02]")
DIGIT_RUN = re.compile(r"\d{1,3}(?!\d)")
SUPERSCRIPT_DIGITS = re.compile(r"(?:(?<=[^\W\d_])|(?<=[^\W\d_][.,;:!?\"”’')\]]))[¹²³⁰⁴-⁹]+")
ROMAN = r"(?=[ivxlcdm])m{0,3}(?:cm|cd|d?c{0,3})(?:xc|xl|l?x{0,3})(?:ix|iv|v?i{0,3})"
PAGE_NUMBER = re.compile(rf"^[-–—\s]*(?:page\s+)?(?:\d{{1,4}}|{ROMAN})(?:\s*(?:/|of)\s*\d{{1,4}})?"
                         r"[-–—\s]*$", re.IGNORECASE)
TOC_ENTRY_END = re.compile(rf"[\s.…]\s*(?:\d{{1,4}}|{ROMAN})$", re.IGNORECASE)
SENTENCE_END = re.compile(r"[.!?…][\"”’')\]]*$")
COMPOUND = re.compile(r"[^\W\d_]+(?:-[^\W\d_]+)+")
WORD_BEFORE_HYPHEN = re.compile(r"([^\W\d_]+(?:-[^\W\d_]+)*)[" + HYPHENS + r"]$")
WORD_AFTER = re.compile(r"^([^\W\d_]+(?:-[^\W\d_]+)*)")
LINE_END_FRAGMENT = re.compile(r"[^\W\d_]+[" + HYPHENS + r"]\n[^\W\d_]+")
CONTENTS = {"contents", "tableofcontents", "toc"}
TOC_NUMBERING = re.compile(rf"^\s*(?:chapter\s+)?(?:\d+(?:\.\d+)*|{ROMAN})\.?\s+"
                           rf"|[\s.…]+(?:\d{{1,4}}|{ROMAN})$", re.IGNORECASE)

MARKER_RATIO = 0.9  # a digit set smaller than this share of its line's text is a footnote marker
HEADING_RATIO = 1.2  # a line this much larger than the body text may be a heading
SAME_SIZE = 0.12  # font sizes closer than this (relative) are the same size
PARAGRAPH_GAP = 1.35  # a vertical gap over this many line pitches starts a paragraph
INDENT = 0.5  # a first line indented more than this many line heights starts a paragraph
EDGE_LINES = 3  # how many lines at a page's top or bottom may be furniture
REPEATED_SHARE = 0.4  # an edge line on this share of the pages (and on 3) is a running header
MIN_CHARS_PER_PAGE = 10  # fewer characters than this per page on average: no text layer


@dataclass
class Line:
    """One line of a page, positions in PDF units measured down from the page's top."""

    text: str
    top: float
    bottom: float
    baseline: float
    left: float
    right: float
    page: int
    size: float  # font size (pdfium's units: compare sizes, not positions)
    digits: list[tuple[int, int, float]] = field(default_factory=list)  # digit runs: start, end, size
    spaced: bool = False  # pdfium's text has a space before it (a superscript's line goes on)

    @property
    def height(self) -> float:
        return self.bottom - self.top


@dataclass
class Book:
    """A document's lines in reading order, and what is known about its layout."""

    pages: list[list[Line]]
    body: float  # the body text's font size
    titles: set[str]  # normalised outline titles and heading lines: what a TOC would name
    dropped: Counter[str]


def read_pdf(data: bytes) -> tuple[str, list[tuple[str, str]], Counter[str]]:
    """(the book's title from the PDF metadata or "", [(chapter title, chapter text)], dropped
    counts). Chapter text is paragraphs separated by a blank line. Dropped counts lines
    (`page_number`, `header_footer`, `toc`, `front_matter`), footnote markers
    (`footnote_marker`) and chapters with no text (`empty_chapter`). Raises BadInput for an
    encrypted, corrupt, empty or image-only (scanned) PDF."""
    pdf = _open(data)
    try:
        title = (pdf.get_metadata_dict().get("Title") or "").strip()
        pages = [_page_lines(pdf, i) for i in range(len(pdf))]
        outline = _outline(pdf)
    except pdfium.PdfiumError as e:
        raise BadInput("corrupt_file", f"not a readable PDF: {e}") from None
    finally:
        pdf.close()
    if not pages:
        raise BadInput("empty_file", "the PDF has no pages")
    chars = sum(len(line.text) for page in pages for line in page)
    if chars < MIN_CHARS_PER_PAGE * len(pages):
        raise BadInput("no_text_layer", "no text layer: run OCR first (e.g. ocrmypdf) and ingest "
                       "the result")
    book = Book(pages, _body_size(pages), set(), Counter())
    book.titles = {_norm(t) for _, t, _, _ in outline} | {_norm(h.text) for h in _headings(book)}
    _drop_furniture(book)
    _drop_toc(book)
    _drop_markers(book)
    return title, _chapters(book, outline, title), book.dropped


def _open(data: bytes) -> pdfium.PdfDocument:
    try:
        return pdfium.PdfDocument(data)
    except pdfium.PdfiumError as e:
        if e.err_code in (pdfium_c.FPDF_ERR_PASSWORD, pdfium_c.FPDF_ERR_SECURITY):
            raise BadInput("encrypted", "the PDF is encrypted: remove the password (e.g. qpdf "
                           "--password=... --decrypt in.pdf out.pdf) and ingest the result"
                           ) from None
        raise BadInput("corrupt_file", f"not a readable PDF: {e}") from None


# ---- lines from pdfium's text layer ---------------------------------------------------------


def _page_lines(pdf: pdfium.PdfDocument, index: int) -> list[Line]:
    """The page's lines in pdfium's reading order. pdfium's text breaks lines itself; a
    superscript it sets apart as a line of its own is put back on its line."""
    page = pdf[index]
    textpage = page.get_textpage()
    try:
        height = page.get_height()
        text = textpage.get_text_range()
        if len(text) != textpage.count_chars():  # some chars excluded: read them one by one
            text = "".join(chr(pdfium_c.FPDFText_GetUnicode(textpage.raw, i))
                           for i in range(textpage.count_chars()))
        lines: list[Line] = []
        for segment in _segments(textpage.raw, text, height, index):
            if lines and _same_line(lines[-1], segment):
                lines[-1] = _merge(lines[-1], segment)
            else:
                lines.append(segment)
        return lines
    finally:
        textpage.close()
        page.close()


def _segments(raw: object, text: str, height: float, page: int) -> Iterator[Line]:
    """One Line per stretch of pdfium's text between its line breaks."""
    start = 0
    for brk in [*LINE_BREAK.finditer(text), None]:
        end = len(text) if brk is None else brk.end() if brk.group() in "\ufffe\x02" else brk.start()
        for first, last in _runs(raw, text, start, end):
            yield _measure(raw, text, first, last, height, page)
        start = len(text) if brk is None else brk.end()


def _runs(raw: object, text: str, start: int, end: int) -> Iterator[tuple[int, int]]:
    """(first, last) index of the visible characters of each line in text[start:end]: one line,
    unless pdfium ran on into text far above or below (it does with Chromium's header, whose
    glyphs Chromium places one by one); then split where the baseline jumps."""
    piece = text[start:end]
    if not piece.strip():
        return
    first, last = start + len(piece) - len(piece.lstrip()), start + len(piece.rstrip()) - 1
    box = pdfium_c.FS_RECTF()
    pdfium_c.FPDFText_GetLooseCharBox(raw, first, box)
    jump = max(box.top - box.bottom, 1.0)
    if abs(_baseline(raw, first) - _baseline(raw, last)) <= jump:
        yield first, last
        return
    run_start, run_end, prev = first, first, _baseline(raw, first)
    for i in range(first + 1, last + 1):
        if text[i].isspace():
            continue
        y = _baseline(raw, i)
        if abs(y - prev) > jump:
            yield run_start, run_end
            run_start = i
        run_end, prev = i, y
    yield run_start, run_end


def _baseline(raw: object, index: int) -> float:
    x, y = ctypes.c_double(), ctypes.c_double()
    pdfium_c.FPDFText_GetCharOrigin(raw, index, x, y)
    return y.value


def _measure(raw: object, text: str, first: int, last: int, height: float, page: int) -> Line:
    """A Line measured from three of its characters (first, middle, last), not all (that would
    be slow): the largest of them gives its size and baseline, so a superscript at an end
    does not."""
    middle = (first + last) // 2
    while middle < last and text[middle].isspace():
        middle += 1
    size, sized = max((pdfium_c.FPDFText_GetFontSize(raw, i), i) for i in {first, middle, last})
    loose = pdfium_c.FS_RECTF()
    pdfium_c.FPDFText_GetLooseCharBox(raw, sized, loose)
    left, right, bottom, top = (ctypes.c_double() for _ in range(4))
    pdfium_c.FPDFText_GetCharBox(raw, first, left, right, bottom, top)
    x_left = left.value
    pdfium_c.FPDFText_GetCharBox(raw, last, left, right, bottom, top)
    line = text[first:last + 1]
    digits = [(m.start(), m.end(), pdfium_c.FPDFText_GetFontSize(raw, first + m.start()))
              for m in DIGIT_RUN.finditer(line)
              if m.start() == 0 or not line[m.start() - 1].isspace()]
    return Line(line, height - loose.top, height - loose.bottom, height - _baseline(raw, sized),
                x_left, right.value, page, size, digits,
                spaced=first > 0 and text[first - 1] in " \t")


def _same_line(a: Line, b: Line) -> bool:
    """b goes on after a on the same line (a superscript pdfium broke the line at)."""
    overlap = min(a.bottom, b.bottom) - max(a.top, b.top)
    return b.left >= a.right - 0.5 * a.height and overlap >= 0.5 * min(a.height, b.height)


def _merge(a: Line, b: Line) -> Line:
    marker = bool(b.digits) and b.digits[0][0] == 0 and b.digits[0][2] < MARKER_RATIO * a.size
    space = not marker and (b.spaced or b.left - a.right > 0.2 * a.height)
    shift = len(a.text) + space
    main = a if a.size >= b.size else b
    return Line(a.text + " " * space + b.text, main.top, main.bottom, main.baseline, a.left,
                b.right, a.page, main.size,
                a.digits + [(s + shift, e + shift, size) for s, e, size in b.digits])


def _outline(pdf: pdfium.PdfDocument) -> list[tuple[int, str, int, float | None]]:
    """(level, title, page index, top of the target from the page's top or None) per bookmark."""
    entries = []
    for mark in pdf.get_toc():
        dest = mark.get_dest()
        page = dest.get_index() if dest is not None else None
        if page is None:
            continue
        mode, pos = dest.get_view()
        top = None
        if mode == pdfium_c.PDFDEST_VIEW_XYZ and len(pos) >= 2 and pos[1]:
            top = pdf.get_page_size(page)[1] - pos[1]
        entries.append((mark.level, mark.get_title().strip(), page, top))
    return entries


# ---- layout: body size, headings, furniture, TOC, markers ------------------------------------


def _body_size(pages: list[list[Line]]) -> float:
    """The font size most of the text is set in."""
    sizes: Counter[float] = Counter()
    for page in pages:
        for line in page:
            sizes[round(line.size, 1)] += len(line.text)
    return sizes.most_common(1)[0][0] if sizes else 0.0


def _norm(text: str) -> str:
    return re.sub(r"[\W_]+", "", text.translate(INVISIBLE)).lower()


def _lines(book: Book) -> Iterator[Line]:
    return (line for page in book.pages for line in page)


def _is_heading(line: Line, body: float) -> bool:
    return (line.size >= HEADING_RATIO * body and len(line.text.split()) <= 15
            and any(ch.isalpha() for ch in line.text))


def _headings(book: Book) -> list[Line]:
    """Heading lines, a heading set on two lines joined into one Line."""
    found: list[Line] = []
    for page in book.pages:
        for line in page:
            if not _is_heading(line, book.body):
                continue
            prev = found[-1] if found else None
            if (prev is not None and prev.page == line.page and _similar(prev.size, line.size)
                    and 0 < line.baseline - prev.baseline < 2 * prev.height):
                found[-1] = Line(f"{prev.text} {line.text}", prev.top, line.bottom, line.baseline,
                                 prev.left, line.right, prev.page, prev.size)
            else:
                found.append(line)
    return found


def _similar(a: float, b: float) -> bool:
    return abs(a - b) <= SAME_SIZE * max(a, b)


def _edge_key(line: Line) -> str:
    """An edge line's letters, so "Chapter 3 — 41" repeats as one header however pdfium spaced
    it."""
    return _norm(re.sub(r"\d+", "", line.text))


def _edges(page: list[Line]) -> tuple[list[Line], list[Line]]:
    """The lines nearest the top and the bottom of a page, outermost first."""
    top = sorted(page, key=lambda line: line.top)[:EDGE_LINES]
    bottom = sorted(page, key=lambda line: -line.bottom)[:EDGE_LINES]
    return top, bottom


def _drop_furniture(book: Book) -> None:
    """Page numbers, then running headers and footers: edge lines (outermost first) that are a
    number, or whose text (digits ignored) repeats at that edge on many pages."""
    small = [[line for line in side if line.size <= 1.1 * book.body] for page in book.pages
             for side in _edges(page)]
    seen: Counter[tuple[int, str]] = Counter()
    for i, side in enumerate(small):
        keys = {(i % 2, _edge_key(line)) for line in side if not PAGE_NUMBER.match(line.text)}
        seen.update(k for k in keys if k[1])
    needed = max(3, REPEATED_SHARE * len(book.pages))
    titles = {re.sub(r"\d+", "", title) for title in book.titles}  # a chapter's running head
    repeated = {k for k, n in seen.items() if n >= needed or (n >= 3 and k[1] in titles)}
    for p, page in enumerate(book.pages):
        drop: set[int] = set()
        for s, side in enumerate(_edges(page)):
            for line in side:
                if line.size > 1.1 * book.body:
                    break
                if PAGE_NUMBER.match(line.text):
                    book.dropped["page_number"] += 1
                elif (s, _edge_key(line)) in repeated:
                    book.dropped["header_footer"] += 1
                else:
                    break
                drop.add(id(line))
        book.pages[p] = [line for line in page if id(line) not in drop]


def _toc_entry(line: Line, titles: set[str], longest: int) -> bool:
    """A line ending in a page number, or naming a heading (its numbering and page aside)."""
    if TOC_ENTRY_END.search(line.text[-12:]):
        return True
    if len(line.text) > longest + 12:  # a line of prose: too long to be a heading's name
        return False
    return _norm(TOC_NUMBERING.sub("", line.text)) in titles or _norm(line.text) in titles


def _drop_toc(book: Book) -> None:
    """Table of contents pages: a "Contents" heading followed by entries (lines ending in a
    page number or naming the book's headings), or a page of mostly entries, and the pages of
    entries that follow one."""
    longest = max(map(len, book.titles), default=0)
    running = False
    for p, page in enumerate(book.pages):
        start = next((i for i, line in enumerate(page)
                      if len(line.text) < 24 and _norm(line.text) in CONTENTS), None)
        cut = None
        if start is not None and _mostly([_toc_entry(line, book.titles, longest)
                                          for line in page[start + 1:]]):
            cut = start
        elif (running or len(page) >= 3) and _mostly(
                [_toc_entry(line, book.titles, longest) for line in page], 0.5 if running else 0.7):
            cut = 0
        running = cut is not None
        if cut is not None:
            book.dropped["toc"] += len(page) - cut
            book.pages[p] = page[:cut]


def _mostly(flags: list[bool], share: float = 0.5) -> bool:
    return len(flags) >= 2 and sum(flags) >= share * len(flags)


def _drop_markers(book: Book) -> None:
    """Footnote markers: digits set smaller than their line's text, attached to a word."""
    for line in _lines(book):
        cut = [(s, e) for s, e, size in line.digits
               if size < MARKER_RATIO * line.size and s > 0 and not line.text[s - 1].isspace()]
        for s, e in reversed(cut):
            line.text = line.text[:s] + line.text[e:]
        n = 0
        if not line.text.isascii():  # "word¹": a marker the PDF's text spells as one
            line.text, n = SUPERSCRIPT_DIGITS.subn("", line.text)
        book.dropped["footnote_marker"] += len(cut) + n
        line.digits = []
    if not book.dropped["footnote_marker"]:
        del book.dropped["footnote_marker"]


# ---- chapters and paragraphs -----------------------------------------------------------------


def _chapters(book: Book, outline: list[tuple[int, str, int, float | None]],
              title: str) -> list[tuple[str, str]]:
    """Split the lines at the chapter headings; each chapter's text without its heading."""
    lines = list(_lines(book))
    starts = _outline_starts(lines, outline) if outline else []
    if not starts:
        starts = _heading_starts(lines, book)
    starts.sort(key=lambda s: s[1])
    if starts and title and _norm(starts[0][0]) == _norm(title):
        starts[0] = ("", starts[0][1], starts[0][2])  # the title page: front matter
    bounds = [("", 0, 0), *starts] if not starts or starts[0][1] > 0 else starts
    layout = _Layout(lines, book)
    chapters = []
    for n, (name, first, skip) in enumerate(bounds):
        end = bounds[n + 1][1] if n + 1 < len(bounds) else len(lines)
        body = lines[first + skip:end]
        paragraphs = layout.paragraphs(body)
        if not name and not _is_prose(paragraphs):
            if end > first:
                book.dropped["front_matter"] += end - first  # a title page, a dedication
            continue
        if not paragraphs:
            book.dropped["empty_chapter"] += 1
            continue
        chapters.append((name, "\n\n".join(paragraphs)))
    return chapters


def _chapter_level(outline: list[tuple[int, str, int, float | None]]) -> int:
    """The outline level that holds the chapters: the top one, unless it is a lone wrapper."""
    counts = Counter(level for level, *_ in outline)
    return 0 if counts[0] >= 2 or not counts[1] else 1


def _outline_starts(lines: list[Line], outline: list[tuple[int, str, int, float | None]]
                    ) -> list[tuple[str, int, int]]:
    """(title, index of its first line, heading lines to skip) per chapter bookmark: the
    heading is the largest-font run of lines on the bookmark's page whose text is its title."""
    level = _chapter_level(outline)
    by_page: dict[int, list[int]] = defaultdict(list)
    for i, line in enumerate(lines):
        by_page[line.page].append(i)
    starts: dict[int, tuple[str, int, int]] = {}
    for lvl, name, page, top in outline:
        if lvl != level:
            continue
        found = _find_heading(lines, by_page.get(page, []), name, top)
        if found is None:
            later = [i for p in sorted(by_page) if p >= page for i in by_page[p]]
            if not later:
                continue
            found = (later[0], 0)
        if found[1]:  # the heading as printed: an outline title can lose the space at a line wrap
            printed = (lines[i].text.strip() for i in range(found[0], found[0] + found[1]))
            name = re.sub(r"(?<=\w-) (?=\w)", "", " ".join(printed))  # "Self-" / "Reliance"
        starts.setdefault(found[0], (name, *found))
    return list(starts.values())


def _find_heading(lines: list[Line], on_page: list[int], name: str,
                  top: float | None) -> tuple[int, int] | None:
    """(first line, line count) of the title's heading on its page, or where the bookmark points
    (no heading skipped) if no line reads as the title, or None for a page with no lines."""
    want = _norm(name)
    best = None
    for n, i in enumerate(on_page):
        text = ""
        for k in range(3):  # a heading set on up to three lines
            if n + k >= len(on_page):
                break
            text += _norm(lines[on_page[n + k]].text)
            if text == want:
                key = (lines[i].size, -abs(lines[i].top - top) if top is not None else 0)
                if best is None or key > best[0]:
                    best = (key, (i, k + 1))
                break
            if not want.startswith(text):
                break
    if best is not None:
        return best[1]
    if not on_page:
        return None
    if top is not None:
        below = [i for i in on_page if lines[i].bottom >= top]
        if below:
            return below[0], 0
    return on_page[0], 0


def _heading_starts(lines: list[Line], book: Book) -> list[tuple[str, int, int]]:
    """Without an outline: chapters start at the headings of the largest size that occurs more
    than once (a larger one-off is the title page's)."""
    groups: list[tuple[str, int, int, float]] = []  # title, first line, line count, size
    for i, line in enumerate(lines):
        if not _is_heading(line, book.body):
            continue
        if groups and groups[-1][1] + groups[-1][2] == i and _similar(groups[-1][3], line.size) \
                and lines[i - 1].page == line.page:
            name, first, count, size = groups[-1]
            groups[-1] = (f"{name} {line.text}", first, count + 1, size)
        else:
            groups.append((line.text, i, 1, line.size))
    sizes = Counter(round(size, 1) for *_, size in groups)
    if not sizes:
        return []
    level = max((s for s, n in sizes.items() if n >= 2), default=max(sizes))
    return [(re.sub(r"\s+", " ", name).strip(), first, count)
            for name, first, count, size in groups if round(size, 1) == level]


def _is_prose(paragraphs: list[str]) -> bool:
    """Text before the first chapter worth keeping: sentences, not a title page or a list."""
    words = sum(len(p.split()) for p in paragraphs)
    in_prose = sum(len(p.split()) for p in paragraphs
                   if len(p.split()) >= 20 and re.search(r"[.!?]", p))
    return words >= 30 and in_prose >= 0.5 * words


def _margins(lines: list[Line]) -> dict[int, float]:
    """Each page's left margin: the leftmost edge two of its lines share, or the margin of most
    pages on that side of the book when that is a little further left (a page of one-line
    paragraphs, every line indented)."""
    lefts: dict[int, Counter[int]] = defaultdict(Counter)
    heights: dict[int, float] = {}
    for line in lines:
        lefts[line.page][round(line.left)] += 1
        heights[line.page] = line.height
    own = {page: min((x for x, n in edges.items() if n >= 2), default=min(edges))
           for page, edges in lefts.items()}
    usual = {side: Counter(x for page, x in own.items() if page % 2 == side).most_common(1)
             for side in (0, 1)}
    margins = {}
    for page, x in own.items():
        side = usual[page % 2]
        if side and x - 4 * heights[page] < side[0][0] < x:
            x = side[0][0]
        margins[page] = float(x)
    return margins


class _Layout:
    """The document's paragraph geometry (line pitch, each page's left margin, the paragraph
    indent if paragraphs are marked by one) and its vocabulary, for joining hyphenated words."""

    def __init__(self, lines: list[Line], book: Book) -> None:
        self.body = book.body
        body_lines = [line for line in lines if _similar(line.size, book.body)]
        gaps = [b.baseline - a.baseline for a, b in zip(body_lines, body_lines[1:], strict=False)
                if a.page == b.page and b.baseline > a.baseline]
        # the lower quartile: in a book of short paragraphs half the gaps may be paragraph gaps
        self.pitch = statistics.quantiles(gaps, n=4)[0] if len(gaps) >= 4 else min(gaps, default=0.0)
        self.margin = _margins(body_lines)
        offsets = Counter(round(line.left - self.margin[line.page]) for line in body_lines
                          if self._indented(line))
        self.indent = offsets.most_common(1)[0][0] if offsets and \
            sum(offsets.values()) >= 0.02 * len(body_lines) else None
        text = "\n".join(line.text for line in lines)
        text = LINE_END_FRAGMENT.sub("\n", text).translate(INVISIBLE)  # a cut word is no word
        text = text.lower()
        self.words = Counter(re.findall(r"[^\W\d_]+", text))
        self.compounds = Counter(COMPOUND.findall(text))

    def _indented(self, line: Line) -> bool:
        return line.left > self.margin.get(line.page, line.left) + INDENT * line.height

    def _starts_paragraph(self, prev: Line, line: Line) -> bool:
        if not _similar(prev.size, line.size):
            return True
        if prev.page != line.page or line.baseline <= prev.baseline:  # a new page or column
            if self.indent is not None:
                return self._indented(line)
            return SENTENCE_END.search(prev.text[-4:]) is not None
        pitch = self.pitch * line.size / self.body if self.body else self.pitch
        if line.baseline - prev.baseline > PARAGRAPH_GAP * pitch:
            return True
        if not self._indented(line):
            return False
        offset = line.left - self.margin[line.page]
        if self.indent is not None and abs(offset - self.indent) < 0.3 * line.height:
            return True  # the paragraph indent
        # else an indented block (a quotation, a list item's second line) starts or goes on
        return not self._indented(prev)

    def paragraphs(self, lines: list[Line]) -> list[str]:
        """The lines' text as paragraphs, each on one line."""
        paragraphs: list[list[str]] = []
        prev = None
        for line in lines:
            if prev is None or self._starts_paragraph(prev, line):
                paragraphs.append([line.text])
            else:
                paragraphs[-1].append(line.text)
            prev = line
        return [p for p in (self._join(texts) for texts in paragraphs) if p]

    def _join(self, texts: list[str]) -> str:
        out = texts[0].strip()
        for text in texts[1:]:
            out = self._join_two(out, text.strip())
        return re.sub(r"\s+", " ", out.translate(INVISIBLE)).strip()

    def _join_two(self, left: str, right: str) -> str:
        """Two lines of a paragraph, a dash at the line end closed up and a hyphen at the line
        end judged by the document's own words: kept in "well-known" if it prints that
        compound more often than "wellknown" (or prints "well" and "known" but neither), dropped
        otherwise."""
        if left[-1:] in HYPHENS and len(left) > 1 and left[-2].isalnum() and right[:1].isalnum():
            return left[:-1] + ("-" if self._keeps_hyphen(left, right) else "") + right
        dash = left.endswith(("—", "–", "/", "--")) and len(left) > 2 and not left[-2].isspace()
        if dash or left[-1:] in "-—–" and right[:1] in "-—–":  # or a "--" broken in two
            return left + right
        return f"{left} {right}"

    def _keeps_hyphen(self, left: str, right: str) -> bool:
        if left[-1] == SOFT_HYPHEN:
            return False
        if left[-2].isdigit() or right[0].isdigit() or right[0].isupper():
            return True  # "10-percent", "B-1B", "anti-American"
        before, after = WORD_BEFORE_HYPHEN.search(left), WORD_AFTER.match(right)
        if not (before and after):
            return True
        head, tail = before.group(1).lower(), after.group(1).lower()
        last, first = head.rsplit("-", 1)[-1], tail.split("-", 1)[0]  # the parts the line cuts
        joined, compound = self.words[last + first], self.compounds[f"{head}-{tail}"]
        if joined or compound:
            return compound > joined  # the way the document prints it more often
        return len(last) > 1 and len(first) > 1 and last in self.words and first in self.words
