"""Read the files under `ingest.paths` (txt, md, json, jsonl, csv, parquet, html) into
data/interim/ingested.parquet: one row per document (text mode) or per prompt/response pair
(pairs mode), with a stable doc_id. Params: `mode`, `ingest`."""

from __future__ import annotations

import glob
import hashlib
import io
import json
import os
import re
from collections import Counter
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow

from stages.io import stage_main, write_parquet
from stages.params import PATHS, IngestParams, Params, Paths, UserError

TEXT_SUFFIXES = {".txt", ".md", ".markdown", ".html", ".htm"}
RECORD_SUFFIXES = {".json", ".jsonl", ".csv", ".parquet"}
SUPPORTED = TEXT_SUFFIXES | RECORD_SUFFIXES
PAIR_FIELDS = (("instruction", "output"), ("input", "output"), ("prompt", "response"),
               ("question", "answer"))
HEADING = re.compile(r"^\s{0,3}#{1,6}\s+(.+?)\s*#*\s*$", re.MULTILINE)


class BadInput(Exception):
    """One bad file or record: `where` is the line/row/record, `reason` the metrics key."""

    def __init__(self, reason: str, message: str, where: str = "") -> None:
        super().__init__(message)
        self.reason, self.where = reason, where


# ---------------------------------------------------------------- finding files


def _is_glob(entry: str) -> bool:
    return any(ch in entry for ch in "*?[")


def _walk(directory: Path) -> list[Path]:
    found = []
    for dirpath, dirnames, filenames in os.walk(directory, followlinks=False):
        dirnames.sort()
        found += [Path(dirpath) / f for f in sorted(filenames) if not f.startswith(".")]
    return found


def discover(entries: list[str]) -> list[Path]:
    """The supported files named by `ingest.paths` (files, directories, globs), sorted."""
    files: set[Path] = set()
    for entry in entries:
        if _is_glob(entry):
            matched = [Path(p) for p in glob.glob(entry, recursive=True)]
            candidates = [f for m in matched for f in (_walk(m) if m.is_dir() else [m])]
        elif Path(entry).is_dir():
            candidates = _walk(Path(entry))
        elif Path(entry).is_file():
            if Path(entry).suffix.lower() not in SUPPORTED:
                raise UserError(f"ingest.paths: {entry}: unsupported file type "
                                f"(supported: {', '.join(sorted(SUPPORTED))})")
            candidates = [Path(entry)]
        else:
            raise UserError(f"ingest.paths: {entry}: no such file or directory")
        supported = [c for c in candidates if c.suffix.lower() in SUPPORTED and c.is_file()]
        if not supported:
            raise UserError(f"ingest.paths: {entry}: matched no supported file "
                            f"({', '.join(sorted(SUPPORTED))})")
        files.update(supported)
    return sorted(files, key=lambda p: p.as_posix())


# ---------------------------------------------------------------- decoding and parsing


def decode(data: bytes, fallback: str | None) -> str:
    """UTF-8 (a BOM tolerated), else the configured fallback encoding."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        if fallback:
            return data.decode(fallback, errors="strict")
        line = data.count(b"\n", 0, e.start) + 1
        raise BadInput("decode_error", f"invalid UTF-8 at byte {e.start}; set "
                       "ingest.encoding_fallback (e.g. latin-1) if the file uses another encoding",
                       f"line {line}") from None


class _VisibleText(HTMLParser):
    """The text a browser would show: no script/style/head, block elements become paragraphs."""

    BLOCKS = {"p", "div", "br", "li", "h1", "h2", "h3", "h4", "h5", "h6", "tr", "section",
              "article", "blockquote", "pre", "hr", "ul", "ol", "table"}
    HIDDEN = {"script", "style", "head", "title", "noscript", "template"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.title: list[str] = []
        self.stack: list[str] = []

    def handle_starttag(self, tag: str, attrs: Any) -> None:
        if tag in self.HIDDEN:
            self.stack.append(tag)
        if tag in self.BLOCKS:
            self.parts.append("\n\n")

    def handle_endtag(self, tag: str) -> None:
        if self.stack and self.stack[-1] == tag:
            self.stack.pop()
        if tag in self.BLOCKS:
            self.parts.append("\n\n")

    def handle_data(self, data: str) -> None:
        if self.stack == ["title"] or self.stack == ["head", "title"]:
            self.title.append(data)
        elif not self.stack:
            self.parts.append(data)


def html_text(markup: str) -> tuple[str, str]:
    """(title, visible text) of an HTML document."""
    parser = _VisibleText()
    parser.feed(markup)
    parser.close()
    return " ".join("".join(parser.title).split()), "".join(parser.parts)


def text_document(path: Path, content: str) -> dict[str, str]:
    """One document from a .txt/.md/.html file: the title is the first Markdown heading (or the
    HTML <title>), else the file name."""
    title = ""
    if path.suffix.lower() in {".html", ".htm"}:
        title, content = html_text(content)
    else:
        heading = HEADING.search(content)
        title = heading.group(1) if heading else ""
    return {"title": title or path.stem, "text": content}


def json_records(content: str) -> Iterator[tuple[str, Any]]:
    try:
        data = json.loads(content)
    except json.JSONDecodeError as e:
        raise BadInput("invalid_json", f"invalid JSON: {e.msg}", f"line {e.lineno}") from None
    if not isinstance(data, list):
        raise BadInput("not_a_list", f"the top level must be a list of records, "
                       f"not {type(data).__name__}")
    for i, item in enumerate(data, 1):
        yield f"record {i}", item


def jsonl_records(content: str) -> Iterator[tuple[str, Any]]:
    for i, line in enumerate(content.splitlines(), 1):
        if not line.strip():
            continue
        try:
            yield f"line {i}", json.loads(line)
        except json.JSONDecodeError as e:
            yield f"line {i}", BadInput("invalid_json", f"invalid JSON: {e.msg}", f"line {i}")


def frame_records(df: pd.DataFrame, label: str) -> Iterator[tuple[str, Any]]:
    for i, row in enumerate(df.to_dict(orient="records"), 1):
        yield f"{label} {i}", row


def csv_records(content: str) -> Iterator[tuple[str, Any]]:
    try:
        df = pd.read_csv(io.StringIO(content), dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as e:
        raise BadInput("invalid_csv", f"invalid CSV: {str(e).strip()}") from None
    return frame_records(df, "row")


def parquet_records(data: bytes) -> Iterator[tuple[str, Any]]:
    try:
        df = pd.read_parquet(io.BytesIO(data))
    except (pyarrow.ArrowException, OSError, ValueError) as e:
        raise BadInput("invalid_parquet", f"not a readable Parquet file: {e}") from None
    return frame_records(df, "record")


# ---------------------------------------------------------------- records to rows


def _field(record: dict[str, Any], name: str) -> str:
    value = record.get(name)
    if value is None or (isinstance(value, float) and value != value):  # None or NaN
        return ""
    return value if isinstance(value, str) else str(value)


def text_row(record: Any, p: IngestParams, default_title: str) -> dict[str, str]:
    if isinstance(record, str):
        record = {p.text_field: record}
    if not isinstance(record, dict):
        raise BadInput("not_an_object", f"expected an object, got {type(record).__name__}")
    if p.text_field not in record:
        raise BadInput("missing_field", f"no '{p.text_field}' field (ingest.text_field)")
    text = _field(record, p.text_field)
    if not text.strip():
        raise BadInput("empty_text", f"'{p.text_field}' is empty")
    return {"title": _field(record, p.title_field) or default_title, "text": text}


def pair_fields(record: dict[str, Any], p: IngestParams) -> tuple[str, str]:
    if p.prompt_field and p.response_field:
        return p.prompt_field, p.response_field
    for prompt, response in PAIR_FIELDS:
        if prompt in record:
            return p.prompt_field or prompt, p.response_field or response
    raise BadInput("missing_field", "no prompt field (expected input/output, prompt/response, "
                   "instruction/input/output, or set ingest.prompt_field)")


def pair_row(record: Any, p: IngestParams) -> dict[str, str]:
    if not isinstance(record, dict):
        raise BadInput("not_an_object", f"expected an object, got {type(record).__name__}")
    prompt_key, response_key = pair_fields(record, p)
    prompt = _field(record, prompt_key)
    if prompt_key == "instruction" and _field(record, "input").strip():
        prompt = f"{prompt}\n\n{_field(record, 'input')}"
    response = _field(record, response_key)
    if not prompt.strip():
        raise BadInput("empty_text", f"'{prompt_key}' is missing or empty")
    if not response.strip():
        raise BadInput("missing_answer", f"'{response_key}' (the answer) is missing or empty")
    return {"prompt": prompt, "response": response}


def file_records(path: Path, data: bytes, p: IngestParams) -> Iterator[tuple[str, Any]]:
    """(position, record) pairs of one file; a record may itself be a BadInput to report."""
    suffix = path.suffix.lower()
    if not data.strip():
        raise BadInput("empty_file", "the file is empty")
    if suffix == ".parquet":
        return parquet_records(data)
    if b"\x00" in data[:8192]:
        raise BadInput("binary_file", f"looks like a binary file, not {suffix} text")
    content = decode(data, p.encoding_fallback)
    if suffix in TEXT_SUFFIXES:
        return iter([("", text_document(path, content))])
    if suffix == ".json":
        return json_records(content)
    if suffix == ".jsonl":
        return jsonl_records(content)
    return csv_records(content)


def doc_id(source: str, position: str) -> str:
    """Stable across runs and machines: a hash of where the record came from."""
    return hashlib.sha1(f"{source}#{position}".encode()).hexdigest()[:16]


def ingest(files: list[Path], mode: str, p: IngestParams) -> tuple[pd.DataFrame, dict[str, Any]]:
    """All rows of all files; bad ones raise a UserError (`on_error: fail`) or are counted."""
    rows: list[dict[str, str]] = []
    skipped: Counter[str] = Counter()
    n_bytes = 0

    def bad(source: str, err: BadInput) -> None:
        where = f":{err.where}" if err.where else ""
        if p.on_error == "fail":
            raise UserError(f"{source}{where}: {err} (set ingest.on_error: skip to skip it)")
        skipped[err.reason] += 1

    for path in files:
        source = path.as_posix()
        data = path.read_bytes()
        n_bytes += len(data)
        try:
            records = list(file_records(path, data, p))
        except BadInput as err:
            bad(source, err)
            continue
        for position, record in records:
            try:
                if isinstance(record, BadInput):
                    raise record
                if mode == "pairs" and path.suffix.lower() in TEXT_SUFFIXES:
                    raise BadInput("wrong_format", "pairs mode needs json, jsonl, csv or parquet "
                                   "records, not running text")
                row = (pair_row(record, p) if mode == "pairs"
                       else text_row(record, p, f"{path.stem} {position}".strip()))
            except BadInput as err:
                err.where = err.where or position
                bad(source, err)
                continue
            rows.append({"doc_id": doc_id(source, position), "source": source, **row})
    columns = ["doc_id", "source", *(("prompt", "response") if mode == "pairs" else ("title", "text"))]
    summary = {"files": len(files), "records": len(rows), "bytes": n_bytes,
               "skipped": sum(skipped.values()), "skipped_by_reason": dict(sorted(skipped.items()))}
    return pd.DataFrame(rows, columns=columns), summary


def run(params: Params, paths: Paths = PATHS) -> dict[str, Any]:
    files = discover(params.ingest.paths)
    df, summary = ingest(files, params.mode, params.ingest)
    if df.empty:
        raise UserError(f"ingest.paths: no usable records in {len(files)} file(s) "
                        f"(skipped: {summary['skipped_by_reason']})")
    write_parquet(df, paths.ingested)
    return summary


def main(argv: list[str] | None = None) -> None:
    stage_main("ingest", run, argv)


if __name__ == "__main__":
    main()
