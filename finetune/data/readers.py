"""Reading each file format (txt, md, html, json, jsonl, csv, parquet; books: epub, docx, odt, rtf,
pdf, Scrivener) into rows: one per document or book chapter (text mode), per prompt/response
pair (pairs) or per conversation (chat: OpenAI messages,
ShareGPT, long-form tables of turns, pairs as one-turn conversations), with a stable doc_id and
the record's group (`ingest.group_field`)."""

from __future__ import annotations

import hashlib
import io
import json
import re
from collections import Counter
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from finetune.config.ingest import IngestParams
from finetune.data import conversations
from finetune.data.books import read_book
from finetune.data.conversations import ConversationError
from finetune.data.inputs import BOOK_SUFFIXES, TEXT_SUFFIXES, BadInput, Problems
from finetune.parallel import ordered_map

PAIR_FIELDS = (("instruction", "output"), ("input", "output"), ("prompt", "response"),
               ("question", "answer"))


# chat mode, long-form tables: the usual column names, tried in order (ingest.*_field overrides)
CONVERSATION_COLUMNS = ("conversation_id", "conv_id", "chat_id", "dialogue_id", "dialog_id",
                        "thread_id", "session_id", "ticket_id")


TURN_COLUMNS = ("turn", "turn_index", "turn_id", "turn_order", "turn_number", "message_index",
                "seq", "sequence", "position", "order", "timestamp", "created_at", "time")


ROLE_COLUMNS = ("role", "speaker", "from", "author", "sender")


CONTENT_COLUMNS = ("content", "text", "message", "value", "body", "utterance")


HEADING = re.compile(r"^\s{0,3}#{1,6}\s+(.+?)\s*#*\s*$", re.MULTILINE)


def decode(data: bytes, fallback: str | None) -> str:
    """UTF-8 (a BOM tolerated), else the configured fallback encoding."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        if not fallback:
            raise BadInput("decode_error", f"invalid UTF-8 at byte {e.start}; set "
                           "ingest.encoding_fallback (e.g. latin-1) if the file uses another "
                           "encoding", _line_of(data, e.start)) from None
    try:
        return data.decode(fallback, errors="strict")
    except UnicodeDecodeError as e:
        raise BadInput("decode_error", f"neither UTF-8 nor {fallback} (ingest.encoding_fallback): "
                       f"invalid at byte {e.start}", _line_of(data, e.start)) from None


def _line_of(data: bytes, offset: int) -> str:
    newlines = data.count(b"\n", 0, offset)
    return f"line {newlines + 1}"


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
    return {"title": title or path.stem, "chapter": "", "text": content}


def json_records(content: str) -> Iterator[tuple[str, Any]]:
    try:
        data = json.loads(content)
    except json.JSONDecodeError as e:
        raise BadInput("invalid_json", f"invalid JSON: {e.msg}", f"line {e.lineno}") from None
    except ValueError as e:  # e.g. an integer of more than 4300 digits
        raise BadInput("invalid_json", f"invalid JSON: {e}") from None
    except RecursionError:
        raise BadInput("invalid_json", "invalid JSON: nested too deeply") from None
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
            record: Any = json.loads(line)
        except json.JSONDecodeError as e:
            record = BadInput("invalid_json", f"invalid JSON: {e.msg}", f"line {i}")
        except ValueError as e:  # e.g. an integer of more than 4300 digits
            record = BadInput("invalid_json", f"invalid JSON: {e}", f"line {i}")
        except RecursionError:
            record = BadInput("invalid_json", "invalid JSON: nested too deeply", f"line {i}")
        yield f"line {i}", record


def frame_records(df: pd.DataFrame, label: str) -> Iterator[tuple[str, Any]]:
    for i, row in enumerate(df.to_dict(orient="records"), 1):
        yield f"{label} {i}", row


def needed_columns(columns: list[str], mode: str, p: IngestParams) -> list[str]:
    """The columns a table must have: the text column, or the prompt and response columns."""
    if mode == "text":
        return [p.text_field]
    try:
        return list(pair_fields(dict.fromkeys(columns), p))
    except BadInput:
        return [p.prompt_field or "input", p.response_field or "output"]


def check_group_column(columns: list[str], p: IngestParams) -> None:
    if p.group_field and p.group_field not in columns:
        raise BadInput("missing_column", f"no column {p.group_field!r} (it has: "
                       f"{', '.join(columns)}); set ingest.group_field to the right one, or null")


def check_columns(columns: list[str], mode: str, p: IngestParams) -> None:
    for name in needed_columns(columns, mode, p):
        if name not in columns:
            key = "text_field" if mode == "text" else "prompt_field / ingest.response_field"
            raise BadInput("missing_column", f"no column {name!r} (it has: {', '.join(columns)}); "
                           f"set ingest.{key} to the right one")


def long_form_columns(columns: list[str], p: IngestParams) -> tuple[str, str | None, str, str] | None:
    """Chat mode: the (conversation, turn, role, content) columns of a table of turns, or None
    when the table is not one (it has no conversation id column)."""
    def pick(configured: str | None, usual: tuple[str, ...], key: str) -> str | None:
        if configured is not None and configured not in columns:
            raise BadInput("missing_column", f"no column {configured!r} (it has: "
                           f"{', '.join(columns)}); set ingest.{key} to the right one")
        return configured or next((c for c in usual if c in columns), None)

    conversation = pick(p.conversation_field, CONVERSATION_COLUMNS, "conversation_field")
    if conversation is None:
        return None
    turn = pick(p.turn_field, TURN_COLUMNS, "turn_field")
    role = pick(p.role_field, ROLE_COLUMNS, "role_field")
    content = pick(p.content_field, tuple(c for c in CONTENT_COLUMNS if c != conversation),
                   "content_field")
    for name, key in ((role, "role_field"), (content, "content_field")):
        if name is None:
            raise BadInput("missing_column", f"a table of turns (column {conversation!r}) needs a "
                           f"{key.removesuffix('_field')} column (it has: {', '.join(columns)}); "
                           f"set ingest.{key}")
    return conversation, turn, str(role), str(content)


def chat_table_records(records: Iterator[tuple[str, Any]], columns: list[str], p: IngestParams
                       ) -> Iterator[tuple[str, Any]]:
    """Chat mode, the records of a table: a column of messages per row, a long-form table of
    turns grouped into conversations, or prompt/response columns (one-turn conversations)."""
    if conversations.messages_field(dict.fromkeys(columns), p.messages_field):
        return records
    long_form = long_form_columns(columns, p)
    if long_form is not None:
        return ((position, BadInput(turns.reason, str(turns))
                 if isinstance(turns, ConversationError) else turns)
                for position, turns in conversations.group_turns(list(records), *long_form,
                                                                 group_key=p.group_field))
    try:
        pair_fields(dict.fromkeys(columns), p)
    except BadInput:
        raise BadInput("missing_column", f"no conversation columns (it has: {', '.join(columns)}); "
                       "expected a messages/conversations column, a table of turns "
                       "(conversation_id, turn, role, content) or prompt/response columns; set "
                       "ingest.messages_field or ingest.conversation_field") from None
    return records


def csv_records(content: str, mode: str, p: IngestParams) -> Iterator[tuple[str, Any]]:
    try:
        df = pd.read_csv(io.StringIO(content), dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as e:
        raise BadInput("invalid_csv", f"invalid CSV: {str(e).strip()}") from None
    columns = [str(c) for c in df.columns]
    check_group_column(columns, p)
    if mode == "chat":
        return chat_table_records(frame_records(df, "row"), columns, p)
    check_columns(columns, mode, p)
    return frame_records(df, "row")


def _is_text(kind: pa.DataType) -> bool:
    if pa.types.is_dictionary(kind):
        kind = kind.value_type
    return pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_null(kind)


def parquet_records(data: bytes, mode: str, p: IngestParams) -> Iterator[tuple[str, Any]]:
    try:
        table = pq.read_table(io.BytesIO(data))
    except (pa.ArrowException, OSError, ValueError) as e:
        raise BadInput("invalid_parquet", f"not a readable Parquet file: {e}") from None
    check_group_column(table.column_names, p)
    if mode == "chat":  # nested messages stay Python lists (to_pandas would make numpy arrays)
        rows = ((f"record {i}", row) for i, row in enumerate(table.to_pylist(), 1))
        return chat_table_records(rows, table.column_names, p)
    check_columns(table.column_names, mode, p)
    for name in needed_columns(table.column_names, mode, p):
        kind = table.schema.field(name).type
        if not _is_text(kind):
            raise BadInput("wrong_schema", f"column {name!r} holds {kind}, not text")
    return frame_records(table.to_pandas(), "record")


def _field(record: dict[str, Any], name: str) -> str:
    """A field as text: missing, null and NaN are empty; numbers are written out (an answer may be
    42); a list, an object or a boolean is not text."""
    value = record.get(name)
    if value is None or (isinstance(value, float) and value != value):  # None or NaN
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    raise BadInput("wrong_type", f"{name!r} is {type(value).__name__}, not text")


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
    return {"title": _field(record, p.title_field) or default_title, "chapter": "", "text": text}


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


def chat_row(record: Any, p: IngestParams) -> dict[str, str]:
    """Chat mode: one record (a list of messages, an object with one, or a prompt/response pair)
    as a conversation in the one form of finetune.data.conversations, stored as JSON."""
    try:
        if isinstance(record, list):
            conv = conversations.conversation(record)
        elif not isinstance(record, dict):
            raise BadInput("not_an_object", f"expected an object, got {type(record).__name__}")
        elif field := conversations.messages_field(record, p.messages_field):
            conv = conversations.from_record(record, field)
        else:
            if p.messages_field:
                raise BadInput("missing_field", f"no '{p.messages_field}' field "
                               "(ingest.messages_field)")
            try:
                pair = pair_row(record, p)
            except BadInput as err:
                if err.reason != "missing_field":
                    raise
                raise BadInput("missing_field", "no messages (expected 'messages' or "
                               "'conversations', or prompt/response fields)") from None
            conv = conversations.from_pair(pair["prompt"], pair["response"])
    except ConversationError as err:
        raise BadInput(err.reason, str(err)) from None
    return {"conversation": conversations.dumps(conv)}


def file_records(path: Path, data: bytes, mode: str, p: IngestParams
                 ) -> Iterator[tuple[str, Any]]:
    """(position, record) pairs of one file; a record may itself be a BadInput to report."""
    suffix = path.suffix.lower()
    if not data.strip():
        raise BadInput("empty_file", "the file is empty")
    if suffix == ".parquet":
        return parquet_records(data, mode, p)
    if b"\x00" in data[:8192]:
        raise BadInput("binary_file", f"looks like a binary file, not {suffix} text")
    content = decode(data, p.encoding_fallback)
    if suffix in TEXT_SUFFIXES:
        return iter([("", text_document(path, content))])
    if suffix == ".json":
        return json_records(content)
    if suffix == ".jsonl":
        return jsonl_records(content)
    return csv_records(content, mode, p)


def record_group(record: Any, p: IngestParams) -> str:
    """The record's group (ingest.group_field): its field, or the group a table of turns gave the
    conversation; "" without one (a text file, a record that lacks the field)."""
    if not p.group_field:
        return ""
    if isinstance(record, dict):
        return _field(record, p.group_field).strip()
    return getattr(record, "group", "")


def doc_id(source: str, position: str) -> str:
    """Stable across runs and machines: a hash of where the record came from."""
    return hashlib.sha1(f"{source}#{position}".encode()).hexdigest()[:16]


def read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise BadInput("unreadable", f"cannot be read: {e.strerror}") from None


def book_rows(path: Path, mode: str, problems: Problems
              ) -> tuple[list[dict[str, str]], int, Counter[str]]:
    """A book's chapters as text-mode rows, its size, and the parts that were not prose."""
    source = path.as_posix()
    try:
        if mode != "text":
            raise BadInput("wrong_format", f"{mode} mode needs json, jsonl, csv or parquet "
                           f"records; a book ({path.suffix.lower()}) is read in text mode")
        data = None if path.is_dir() else read_bytes(path)
        if data is not None and not data.strip():
            raise BadInput("empty_file", "the file is empty")
        book = read_book(path, data)
    except BadInput as err:
        problems(source, err)
        return [], 0, Counter()
    rows = [{"doc_id": doc_id(source, f"chapter {i}"), "source": source, "group": "", **row}
            for i, row in enumerate(book.rows(), 1)]
    return rows, len(data) if data is not None else 0, book.dropped


def file_rows(path: Path, mode: str, p: IngestParams, problems: Problems
              ) -> tuple[list[dict[str, str]], int]:
    """The rows of one file and its size; bad records go to `problems`."""
    source = path.as_posix()
    rows: list[dict[str, str]] = []
    try:
        data = read_bytes(path)
        records = list(file_records(path, data, mode, p))
    except BadInput as err:
        problems(source, err)
        return rows, 0
    for position, record in records:
        try:
            if isinstance(record, BadInput):
                raise record
            if mode != "text" and path.suffix.lower() in TEXT_SUFFIXES:
                raise BadInput("wrong_format", f"{mode} mode needs json, jsonl, csv or parquet "
                               "records, not running text")
            if mode == "chat":
                row = {"position": position, **chat_row(record, p)}
            elif mode == "pairs":
                row = pair_row(record, p)
            else:
                row = text_row(record, p, f"{path.stem} {position}".strip())
            row["group"] = record_group(record, p)
        except BadInput as err:
            err.where = err.where or position
            problems(source, err)
            continue
        rows.append({"doc_id": doc_id(source, position), "source": source, **row})
    return rows, len(data)


COLUMNS = {"text": ("doc_id", "source", "group", "title", "chapter", "text"),
           "pairs": ("doc_id", "source", "group", "prompt", "response"),
           "chat": ("doc_id", "source", "group", "position", "conversation")}


def _read_file(task: tuple[Path, str, IngestParams]
               ) -> tuple[list[dict[str, str]], int, Counter[str], list[dict[str, str]], Counter[str]]:
    """One file in a worker: its rows, its size, what was skipped (fail mode raises) and the
    files skipped whole, and the parts of a book that were not prose."""
    path, mode, p = task
    problems = Problems(p.on_error)
    if path.suffix.lower() in BOOK_SUFFIXES:
        rows, size, not_prose = book_rows(path, mode, problems)
    else:
        (rows, size), not_prose = file_rows(path, mode, p, problems), Counter()
    return rows, size, problems.skipped, problems.files, not_prose


def read_files(files: list[Path], mode: str, p: IngestParams, problems: Problems,
               num_proc: int = 1, not_prose: Counter[str] | None = None
               ) -> Iterator[tuple[list[dict[str, str]], int]]:
    """The rows and size of each file, in order, parsed by `num_proc` processes. Only the files
    in flight are in memory; the first bad input (in file order) ends it in fail mode. What the
    books held that is not prose is added to `not_prose`."""
    tasks = [(path, mode, p) for path in files]
    results = ordered_map(_read_file, tasks, num_proc)
    for rows, size, skipped, skipped_files, dropped in tqdm(
            results, desc="ingest", unit="file", total=len(files), disable=len(files) < 50):
        problems.skipped.update(skipped)
        problems.files += skipped_files
        if not_prose is not None:
            not_prose.update(dropped)
        yield rows, size


def ingest_summary(files: list[Path], records: int, n_bytes: int, problems: Problems,
                   not_prose: Counter[str] | None = None) -> dict[str, Any]:
    summary = {"files": len(files), "records": records, "bytes": n_bytes,
               "skipped": problems.total(),
               "skipped_by_reason": dict(sorted(problems.skipped.items()))}
    if not_prose:  # what books held that is not their prose, dropped
        summary["not_prose"] = dict(sorted(not_prose.items()))
    return summary


def ingest(files: list[Path], mode: str, p: IngestParams, problems: Problems | None = None
           ) -> tuple[pd.DataFrame, dict[str, Any]]:
    """All rows of all files in one frame (for small inputs: `run` streams to disk instead)."""
    problems = problems or Problems(p.on_error)
    rows: list[dict[str, str]] = []
    n_bytes = 0
    not_prose: Counter[str] = Counter()
    for found, size in read_files(files, mode, p, problems, not_prose=not_prose):
        rows += found
        n_bytes += size
    frame = pd.DataFrame(rows, columns=list(COLUMNS[mode]))
    return frame, ingest_summary(files, len(rows), n_bytes, problems, not_prose)
