"""The data stages stream: row group by row group, in worker processes, with the same result as
one pass over everything (duplicates across row groups, blocks across row groups, the first bad
file in order)."""

from __future__ import annotations

from pathlib import Path

import datasets
import pyarrow.parquet as pq
import pytest

from finetune import files
from finetune.config.schema import Params
from finetune.errors import UserError
from finetune.paths import PATHS, SPLITS, Paths
from stages import base_model, clean, ingest, scratch_texts, split, tokenize
from tests.helpers import BOOK_A, run_stage, tiny_params


@pytest.fixture
def corpus(books: Path) -> Path:
    """The two books, a third file repeating most of the first (duplicates to drop), and many
    small files so that ingest has something to spread over workers."""
    (books / "mill-copy.md").write_text(BOOK_A.replace("# The Mill", "# Copy"), encoding="utf-8")
    for i in range(12):
        (books / f"note-{i:02d}.txt").write_text(
            f"Note {i}. The lamp-keeper wrote that the tide was {i} feet at dawn.\n\n"
            f"Fog on the {i}th day; the bell rang {i * 3} times.", encoding="utf-8")
    return books


def run_stages(corpus: Path, root: Path, num_proc: int) -> tuple[Paths, dict[str, dict]]:
    params: Params = tiny_params(ingest={"paths": [str(corpus)]}, clean={"max_chars": 200},
                                 num_proc=num_proc)
    paths = PATHS.under(root)
    summaries = {stage.__name__: run_stage(stage, params, paths)
                 for stage in (ingest, clean, split, scratch_texts, base_model, tokenize)}
    summaries.pop("stages.base_model")
    summaries.pop("stages.scratch_texts")
    return paths, summaries


def outputs(paths: Paths) -> dict[str, bytes]:
    files = [paths.ingested, paths.clean, *(paths.split_file(s) for s in SPLITS)]
    files += sorted(p for p in paths.tokenized.rglob("*") if p.is_file())
    return {str(f.relative_to(paths.ingested.parents[2])): f.read_bytes() for f in files}


def test_small_row_groups_give_the_same_rows_blocks_and_counts(
        corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    whole, whole_summary = run_stages(corpus, tmp_path / "whole", num_proc=1)
    monkeypatch.setattr(files, "GROUP_BYTES", 1500)
    streamed, streamed_summary = run_stages(corpus, tmp_path / "streamed", num_proc=1)

    assert pq.ParquetFile(whole.clean).num_row_groups == 1
    assert pq.ParquetFile(streamed.ingested).num_row_groups > 3
    assert pq.ParquetFile(streamed.clean).num_row_groups > 3
    assert streamed_summary == whole_summary
    assert whole_summary["stages.clean"]["dropped_by_reason"]["duplicate"] >= 35  # the copy
    for path in ("ingested", "clean"):
        assert (pq.read_table(getattr(streamed, path)).to_pylist()
                == pq.read_table(getattr(whole, path)).to_pylist())
    for name in SPLITS:
        assert (pq.read_table(streamed.split_file(name)).to_pylist()
                == pq.read_table(whole.split_file(name)).to_pylist())
        assert (datasets.load_from_disk(str(streamed.tokenized / name))["input_ids"]
                == datasets.load_from_disk(str(whole.tokenized / name))["input_ids"])


def test_worker_processes_write_the_same_bytes(corpus: Path, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(files, "GROUP_BYTES", 1500)  # clean gets several row groups to spread
    one, one_summary = run_stages(corpus, tmp_path / "one", num_proc=1)
    two, two_summary = run_stages(corpus, tmp_path / "two", num_proc=2)
    assert two_summary == one_summary
    assert outputs(two) == outputs(one)


def test_the_first_bad_file_in_order_is_reported_from_a_worker(corpus: Path, tmp_path: Path) -> None:
    (corpus / "note-03.txt").write_bytes(b"caf\xe9 au lait, a line of latin-1")
    (corpus / "note-09.txt").write_bytes(b"\xff\xfe broken too")
    params = tiny_params(ingest={"paths": [str(corpus)]}, num_proc=2)
    paths = PATHS.under(tmp_path)
    with pytest.raises(UserError, match=r"note-03\.txt:line 1: invalid UTF-8 at byte 3"):
        run_stage(ingest, params, paths)
    assert not paths.ingested.exists()
    skipping = tiny_params(ingest={"paths": [str(corpus)], "on_error": "skip"}, num_proc=2)
    summary = run_stage(ingest, skipping, paths)
    assert summary["skipped_by_reason"] == {"decode_error": 2}
    assert summary["records"] == summary["files"] - 2 == 13
