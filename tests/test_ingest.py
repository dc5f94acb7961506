"""ingest: finding files, every format, both modes, and bad input reported by file and line."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

from finetune.config.ingest import IngestParams
from finetune.data import cleaning, inputs, readers
from finetune.errors import UserError
from finetune.paths import PATHS
from stages import ingest
from tests.helpers import SHARED_CORPORA, run_stage, tiny_params

P = IngestParams()
SKIP = IngestParams(on_error="skip")


def write(path: Path, content: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


def discover(entries: list[str], p: IngestParams = P) -> tuple[list[Path], inputs.Problems]:
    problems = inputs.Problems(p.on_error)
    files, _ = inputs.discover(entries, p, problems)
    return files, problems


def test_discover_sorts_files_from_dirs_and_globs_and_skips_unsupported(tmp_path: Path) -> None:
    write(tmp_path / "b" / "z.txt", "z")
    write(tmp_path / "b" / "a.md", "a")
    write(tmp_path / "b" / "image.png", b"\x89PNG")
    write(tmp_path / "c.jsonl", "{}")
    problems = inputs.Problems("fail")
    found, ignored = inputs.discover([str(tmp_path / "b"), str(tmp_path / "*.jsonl"),
                                      str(tmp_path / "b")], P, problems)
    assert [p.name for p in found] == ["a.md", "z.txt", "c.jsonl"]
    # image.png, seen through both entries naming b/, is named once, with the reason
    assert ignored == [{"file": (tmp_path / "b" / "image.png").as_posix(), "reason": "unsupported .png"}]


@pytest.mark.parametrize(("entry", "message", "reason"), [
    ("missing", "missing: no such file or directory", "missing_path"),
    ("nothing-*.txt", "nothing-*.txt: the pattern matches nothing", "missing_path"),
    ("only-images", "only-images: contains no supported file", "no_supported_file"),
    ("*.png", "*.png: matches no supported file", "no_supported_file"),
    ("only-images/one.png", "one.png: unsupported file type", "unsupported_type"),
    ("empty-dir", "empty-dir: contains no supported file", "no_supported_file"),
])
def test_discover_errors_name_the_path_or_are_skipped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       entry: str, message: str, reason: str) -> None:
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "only-images" / "one.png", b"x")
    write(tmp_path / "top.png", b"x")
    (tmp_path / "empty-dir").mkdir()
    write(tmp_path / "good.txt", "fine")
    with pytest.raises(UserError) as err:
        discover(["good.txt", entry])
    assert str(err.value).startswith("ingest.paths: ") and message in str(err.value)
    files, problems = discover(["good.txt", entry], SKIP)
    assert files == [Path("good.txt")] and problems.skipped == {reason: 1}


def symlink(link: Path, target: Path) -> Path:
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(target)
    return link


def test_symlinks_out_of_the_given_paths_are_refused_unless_followed(tmp_path: Path) -> None:
    secret = write(tmp_path / "outside" / "secret.txt", "private notes")
    write(tmp_path / "outside" / "more" / "other.md", "more private notes")
    write(tmp_path / "data" / "book.txt", "the book")
    link = symlink(tmp_path / "data" / "notes.txt", secret)
    with pytest.raises(UserError, match=f"{link.as_posix()}: a symlink to {secret}, outside "
                                        "ingest.paths"):
        discover([str(tmp_path / "data")])
    symlink(tmp_path / "data" / "more", tmp_path / "outside" / "more")  # a directory too
    files, problems = discover([str(tmp_path / "data")], SKIP)
    assert [f.name for f in files] == ["book.txt"] and problems.skipped == {"symlink_outside": 2}
    files, _ = discover([str(tmp_path / "data")], IngestParams(follow_symlinks=True))
    assert sorted(f.name for f in files) == ["book.txt", "notes.txt", "other.md"]
    # a file named on its own is the user's explicit choice, wherever it points
    assert discover([str(link)])[0] == [link]


def test_symlinks_inside_the_given_paths_and_loops(tmp_path: Path) -> None:
    book = write(tmp_path / "data" / "book.txt", "the book")
    symlink(tmp_path / "data" / "alias.txt", book)  # the same file twice: read once
    symlink(tmp_path / "data" / "sub" / "up", tmp_path / "data")  # a directory loop
    files, _ = discover([str(tmp_path / "data")])
    assert files == [tmp_path / "data" / "alias.txt"]
    files, _ = discover([str(tmp_path / "data")], IngestParams(follow_symlinks=True))
    assert files == [tmp_path / "data" / "alias.txt"]
    loop = symlink(tmp_path / "data" / "loop.txt", tmp_path / "data" / "loop2.txt")
    symlink(tmp_path / "data" / "loop2.txt", loop)
    with pytest.raises(UserError, match="loop.txt: a symlink loop"):
        discover([str(tmp_path / "data")])
    files, problems = discover([str(tmp_path / "data")], SKIP)
    assert files == [tmp_path / "data" / "alias.txt"] and problems.skipped == {"symlink_loop": 2}
    with pytest.raises(UserError, match="loop.txt: a symlink loop"):
        discover([str(loop)])


def test_text_document_title_from_heading_else_file_name() -> None:
    assert readers.text_document(Path("x/book.md"), "intro\n\n## Chapter One ##\ntext")["title"] \
        == "Chapter One"
    assert readers.text_document(Path("x/plain-book.txt"), "no heading here")["title"] \
        == "plain-book"


def test_html_keeps_visible_text_only() -> None:
    title, text = readers.html_text(
        "<html><head><title>My  Page</title><style>p{color:red}</style></head>"
        "<body><script>var x = 1;</script><h1>Hello</h1><p>One &amp; two</p></body></html>")
    assert title == "My Page"
    assert "var x" not in text and "color" not in text
    assert text.split() == ["Hello", "One", "&", "two"]


def run_ingest(files: list[Path], mode: str = "text", p: IngestParams = P) -> tuple[pd.DataFrame, dict]:
    return readers.ingest(files, mode, p)


def test_every_record_format_in_text_mode(tmp_path: Path) -> None:
    files = [
        write(tmp_path / "a.json", json.dumps([{"text": "json one", "title": "J"}, "json two"])),
        write(tmp_path / "b.jsonl", '{"text": "line one"}\n\n{"text": "line two"}\n'),
        write(tmp_path / "c.csv", 'title,text\nC1,"csv, with comma"\n'),
    ]
    pd.DataFrame({"text": ["parquet text"]}).to_parquet(tmp_path / "d.parquet")
    files.append(tmp_path / "d.parquet")
    files.append(write(tmp_path / "e.html", "<p>html text</p>"))
    df, summary = run_ingest(files)
    assert df["text"].str.strip().tolist() == ["json one", "json two", "line one", "line two",
                                               "csv, with comma", "parquet text", "html text"]
    assert df["title"].tolist()[:3] == ["J", "a record 2", "b line 1"]
    assert summary["files"] == 5 and summary["records"] == 7 and summary["skipped"] == 0
    assert df["doc_id"].is_unique


def test_doc_id_is_stable_and_depends_on_source_and_position() -> None:
    assert readers.doc_id("a.txt", "") == readers.doc_id("a.txt", "")
    assert len({readers.doc_id("a.txt", ""), readers.doc_id("b.txt", ""),
                readers.doc_id("a.txt", "line 2")}) == 3


@pytest.mark.parametrize(("record", "expected"), [
    ({"input": "Q?", "output": "A."}, ("Q?", "A.")),
    ({"prompt": "Q?", "response": "A."}, ("Q?", "A.")),
    ({"instruction": "Translate", "input": "chat", "output": "cat"}, ("Translate\n\nchat", "cat")),
    ({"instruction": "Say hi", "input": "", "output": "hi"}, ("Say hi", "hi")),
])
def test_pair_fields_are_detected(record: dict, expected: tuple[str, str]) -> None:
    row = readers.pair_row(record, P)
    assert (row["prompt"], row["response"]) == expected


def test_configured_pair_fields(tmp_path: Path) -> None:
    path = write(tmp_path / "chat.csv", "customer,agent\nWhere is my order?,On its way.\n")
    df, _ = run_ingest([path], "pairs", IngestParams(prompt_field="customer",
                                                     response_field="agent"))
    assert df[["prompt", "response"]].values.tolist() == [["Where is my order?", "On its way."]]


@pytest.mark.parametrize(("name", "content", "message", "reason"), [
    ("bad.jsonl", '{"text": "ok"}\n{"text": broken}\n', "bad.jsonl:line 2: invalid JSON",
     "invalid_json"),
    ("bad.json", '{"text": "not a list"}', "bad.json: the top level must be a list", "not_a_list"),
    ("bad.json", '[{"text": "a"},\n  {"text": }]', "bad.json:line 2: invalid JSON", "invalid_json"),
    ("nocol.csv", "body\nhello\n", "nocol.csv: no column 'text' (it has: body)", "missing_column"),
    ("bad.csv", 'text\n"unclosed\n', "bad.csv: invalid CSV", "invalid_csv"),
    ("nofield.jsonl", '{"body": "x"}\n', "nofield.jsonl:line 1: no 'text' field", "missing_field"),
    ("empty.jsonl", '{"text": ""}\n', "empty.jsonl:line 1: 'text' is empty", "empty_text"),
    ("list.jsonl", '{"text": ["a"]}\n', "list.jsonl:line 1: 'text' is list, not text", "wrong_type"),
    ("blank.md", "  \n\n ", "blank.md: the file is empty", "empty_file"),
    ("fake.parquet", b"PAR1 not really", "fake.parquet: not a readable Parquet file", "invalid_parquet"),
    ("deep.json", "[" * 100_000 + "]" * 100_000, "deep.json: invalid JSON: nested too deeply",
     "invalid_json"),
    ("huge.jsonl", '{"text": ' + "9" * 5000 + "}\n", "huge.jsonl:line 1: invalid JSON: Exceeds",
     "invalid_json"),
    ("deep.jsonl", "[" * 100_000 + "]" * 100_000 + "\n",
     "deep.jsonl:line 1: invalid JSON: nested too deeply", "invalid_json"),
    ("empty.txt", "", "empty.txt: the file is empty", "empty_file"),
    ("null.jsonl", '{"text": null}\n', "null.jsonl:line 1: 'text' is empty", "empty_text"),
    ("latin.txt", "caf\xe9".encode("latin-1"), "latin.txt:line 1: invalid UTF-8 at byte 3",
     "decode_error"),
    ("binary.txt", b"\x00\x01\x02binary", "binary.txt: looks like a binary file", "binary_file"),
])
def test_bad_input_fails_with_file_and_position_or_is_skipped_and_counted(
        tmp_path: Path, name: str, content: str | bytes, message: str, reason: str) -> None:
    good = write(tmp_path / "good.txt", "fine text")
    bad = write(tmp_path / name, content)
    with pytest.raises(UserError) as err:
        run_ingest([good, bad])
    assert str(err.value).startswith(f"{bad.as_posix()}".replace(name, "") + message)
    df, summary = run_ingest([good, bad], p=SKIP)
    assert summary["skipped_by_reason"].get(reason, 0) >= 1
    assert "fine text" in df["text"].tolist()


def test_pairs_record_without_answer(tmp_path: Path) -> None:
    path = write(tmp_path / "qa.jsonl", '{"input": "Q1", "output": "A1"}\n{"input": "Q2"}\n')
    with pytest.raises(UserError, match=r"qa.jsonl:line 2: 'output' \(the answer\) is missing"):
        run_ingest([path], "pairs")
    df, summary = run_ingest([path], "pairs", SKIP)
    assert len(df) == 1 and summary["skipped_by_reason"] == {"missing_answer": 1}


@pytest.mark.parametrize(("table", "mode", "message", "reason"), [
    ({"body": ["x"]}, "text", "no column 'text' (it has: body); set ingest.text_field",
     "missing_column"),
    ({"text": [1, 2]}, "text", "column 'text' holds int64, not text", "wrong_schema"),
    ({"input": ["Q"]}, "pairs", "no column 'output' (it has: input)", "missing_column"),
    ({"input": ["Q"], "output": [[1, 2]]}, "pairs", "column 'output' holds list<element: int64>",
     "wrong_schema"),
])
def test_parquet_with_the_wrong_schema(tmp_path: Path, table: dict, mode: str, message: str,
                                       reason: str) -> None:
    path = tmp_path / "data.parquet"
    pd.DataFrame(table).to_parquet(path)
    with pytest.raises(UserError) as err:
        run_ingest([path], mode)
    assert str(err.value).startswith(f"{path.as_posix()}: {message}")
    _, summary = run_ingest([path], mode, SKIP)
    assert summary["skipped_by_reason"] == {reason: 1}


@pytest.mark.slow  # 50 MB through the readers
def test_one_50_mb_line_without_a_newline(tmp_path: Path) -> None:
    from finetune.config.clean import CleanParams

    words = ("lorem", "ipsum", "dolor", "sit", "amet", "consectetur")
    line = " ".join(words * 1_466_667)  # 8.8 million words, about 50 MB, no newline
    assert len(line) > 50_000_000 and "\n" not in line
    files = [write(tmp_path / "long.txt", line), write(tmp_path / "long.jsonl",
                                                       json.dumps({"text": line}))]
    df, summary = run_ingest(files)
    assert summary["records"] == 2 and df["text"].str.len().min() == len(line)
    out, dropped = cleaning.clean_text_rows(df, CleanParams(max_chars=2000, dedupe=False))
    lengths = out["text"].str.len()
    assert lengths.max() <= 2000 and lengths.sum() > 2 * 0.99 * len(line)
    assert len(out) >= 2 * len(line) // 2000 and not dropped


def test_run_names_the_files_it_leaves_out_and_fails_when_nothing_is_usable(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path / "raw" / "book.txt", "A book of some length.")
    write(tmp_path / "raw" / "cover.jpg", b"\xff\xd8")
    write(tmp_path / "raw" / "memo.pages", b"PK\x03\x04")
    paths = PATHS.under(tmp_path)
    raw, gone = (tmp_path / "raw").as_posix(), (tmp_path / "gone").as_posix()
    summary = run_stage(ingest, tiny_params(ingest={"paths": [raw, gone], "on_error": "skip"}), paths)
    assert summary["records"] == 1 and summary["ignored_files"] == 2
    assert summary["ignored"] == [{"file": f"{raw}/cover.jpg", "reason": "unsupported .jpg"},
                                  {"file": f"{raw}/memo.pages", "reason": "unsupported .pages"}]
    assert summary["skipped_files"] == [{"file": gone, "reason": "no such file or directory"}]
    assert summary["not_read"] == (f"{gone} (no such file or directory); {raw}/cover.jpg "
                                   f"(unsupported .jpg); {raw}/memo.pages (unsupported .pages)")
    monkeypatch.chdir(tmp_path)  # the stage's CLI, as dvc runs it, writes below the project
    Path("params.yaml").write_text(yaml.safe_dump({"ingest": {"paths": ["raw"]}}))
    ingest.main([])
    line = capsys.readouterr().out
    assert "not_read=raw/cover.jpg (unsupported .jpg); raw/memo.pages (unsupported .pages)" in line
    write(tmp_path / "bad" / "broken.jsonl", "{not json\n")
    with pytest.raises(UserError, match=r"no usable records in 1 file\(s\) \(skipped: "
                                        r"\{'invalid_json': 1\}\)"):
        run_stage(ingest, tiny_params(ingest={"paths": [str(tmp_path / "bad")], "on_error": "skip"}),
                   paths)


def test_a_file_in_neither_utf8_nor_the_fallback(tmp_path: Path) -> None:
    path = write(tmp_path / "odd.txt", "ok\nstill ok\ncaf\xe9".encode("latin-1"))
    with pytest.raises(UserError, match=r"odd.txt:line 3: neither UTF-8 nor ascii "
                                        r"\(ingest.encoding_fallback\): invalid at byte 15"):
        run_ingest([path], p=IngestParams(encoding_fallback="ascii"))


def test_bom_is_tolerated_and_fallback_encoding_is_used(tmp_path: Path) -> None:
    bom = write(tmp_path / "bom.txt", "Hello".encode("utf-8-sig"))
    latin = write(tmp_path / "latin.txt", "café".encode("latin-1"))
    df, _ = run_ingest([bom, latin], p=IngestParams(encoding_fallback="latin-1"))
    assert df["text"].tolist() == ["Hello", "café"]


def test_run_writes_parquet_and_summary(tmp_path: Path, books: Path) -> None:
    paths = PATHS.under(tmp_path)
    summary = run_stage(ingest, tiny_params(ingest={"paths": [str(books)]}), paths)
    df = pd.read_parquet(paths.ingested)
    assert list(df.columns) == ["doc_id", "source", "group", "title", "chapter", "text"]
    assert df["title"].tolist() == ["harbour", "The Mill"]
    assert summary["records"] == 2 and summary["bytes"] > 0


def test_shared_corpus_with_one_non_utf8_file() -> None:
    corpus = SHARED_CORPORA / "inaugural"
    if not corpus.is_dir():
        pytest.skip("../shared/corpora is not present (CI-only corpus)")
    files, _ = discover([str(corpus)])
    with pytest.raises(UserError, match="invalid UTF-8"):
        readers.ingest(files, "text", P)
    df, summary = readers.ingest(files, "text", IngestParams(encoding_fallback="latin-1"))
    assert summary["skipped"] == 0 and len(df) == len(files)


def test_a_folder_that_cannot_be_listed_is_reported_not_skipped_silently(tmp_path: Path) -> None:
    # os.walk skips unreadable folders without a word by default; ingest reports them
    [problem] = inputs._walk(tmp_path / "gone", follow_symlinks=False)
    assert isinstance(problem, inputs.BadInput) and problem.reason == "unreadable"
    assert problem.where == str(tmp_path / "gone") and "cannot be read" in str(problem)


def test_a_dangling_symlink_is_reported(tmp_path: Path) -> None:
    write(tmp_path / "data" / "book.txt", "the book")
    symlink(tmp_path / "data" / "gone.txt", tmp_path / "nowhere.txt")
    with pytest.raises(UserError, match="gone.txt: a symlink to .*nowhere.txt, which does not exist"):
        discover([str(tmp_path / "data")])
    files, problems = discover([str(tmp_path / "data")], SKIP)
    assert [f.name for f in files] == ["book.txt"] and problems.skipped == {"broken_symlink": 1}


def test_group_field_is_carried_from_records_tables_and_turn_tables(tmp_path: Path) -> None:
    g = IngestParams(group_field="intent")
    records = write(tmp_path / "a.jsonl", '{"prompt": "Q1?", "response": "A1.", "intent": "refund"}\n'
                                          '{"prompt": "Q2?", "response": "A2.", "intent": 7}\n'
                                          '{"prompt": "Q3?", "response": "A3."}\n')
    table = write(tmp_path / "b.csv", "prompt,response,intent\nQ4?,A4.,order\n")
    df, _ = run_ingest([records, table], "pairs", g)
    assert df["group"].tolist() == ["refund", "7", "", "order"]  # a record without one: ""
    turns = write(tmp_path / "t.csv", "conversation_id,turn,role,text,intent\n"
                                      "1,1,user,Hi,\n1,2,assistant,Hello,greeting\n"
                                      "2,1,user,Bye,farewell\n2,2,assistant,Goodbye,\n")
    df, _ = run_ingest([turns], "chat", g)
    assert df["group"].tolist() == ["greeting", "farewell"]  # the first turn that names one
    assert run_ingest([records], "pairs")[0]["group"].tolist() == ["", "", ""]  # group_field: null


def test_a_group_field_no_record_has_is_one_line(tmp_path: Path) -> None:
    write(tmp_path / "data" / "a.jsonl", '{"prompt": "Q1?", "response": "A1."}\n')
    write(tmp_path / "data" / "b.csv", "prompt,response\nQ?,A.\n")
    params = tiny_params(mode="pairs", ingest={"paths": [str(tmp_path / "data" / "b.csv")],
                                               "group_field": "intent"})
    with pytest.raises(UserError, match=r"b.csv: no column 'intent' \(it has: prompt, response\); "
                                        r"set ingest.group_field"):
        run_stage(ingest, params, PATHS.under(tmp_path))
    params = params.model_copy(update={"ingest": params.ingest.model_copy(
        update={"paths": [str(tmp_path / "data" / "a.jsonl")]})})
    with pytest.raises(UserError, match=r"^ingest.group_field: no record has a 'intent' field"):
        run_stage(ingest, params, PATHS.under(tmp_path))
    assert not PATHS.under(tmp_path).ingested.exists()
