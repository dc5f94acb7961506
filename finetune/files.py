"""Reading and writing the pipeline's files: outputs that appear whole or not at all, Parquet in
row groups, JSON."""

from __future__ import annotations

import glob
import json
import os
import shutil
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from finetune.errors import UserError

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa

# pandas and pyarrow are imported where they are used: the inputs stage, which runs on every
# `dvc repro`, writes JSON only and starts in half the time without them


@contextmanager


def atomic_output(final: Path) -> Iterator[Path]:
    """Yield a temporary sibling path to write a file or directory into; on success it is renamed
    to `final` in one step, on any failure it is removed. A killed stage thus never leaves a
    complete-looking `final` behind."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    for kind in ("tmp", "old"):  # leftovers of a process that was killed before cleaning up
        for stale in final.parent.glob(f".{glob.escape(final.name)}.{kind}-*"):
            remove(stale)
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    try:
        yield tmp
    except BaseException:
        remove(tmp)
        raise
    old = None
    if final.is_dir():  # os.replace cannot replace a non-empty directory: swap it aside first
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        os.replace(final, old)
    os.replace(tmp, final)
    remove(old)


def remove(path: Path | None) -> None:
    """Delete a file, a symlink or a directory tree, if it is there."""
    if path is None or not (path.exists() or path.is_symlink()):
        return
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


def _existing(path: Path) -> Path:
    if not Path(path).exists():
        raise UserError(f"{path}: missing; run the stages before this one (uv run dvc repro)")
    return Path(path)


def read_parquet(path: Path) -> pd.DataFrame:
    import pandas as pd

    return pd.read_parquet(_existing(path))


def row_groups(path: Path) -> int:
    """How many row groups a Parquet file has: the unit the data stages stream by."""
    import pyarrow.parquet as pq

    return pq.ParquetFile(_existing(path)).num_row_groups


def parquet_rows(path: Path) -> int:
    import pyarrow.parquet as pq

    return pq.ParquetFile(_existing(path)).metadata.num_rows


def read_row_group(path: Path, index: int, columns: list[str] | None = None) -> pa.Table:
    import pyarrow.parquet as pq

    return pq.ParquetFile(path).read_row_group(index, columns=columns)


GROUP_BYTES = 64 << 20  # rows are written in row groups of about this many bytes


class ParquetSink:
    """A Parquet file written in order, in row groups of about GROUP_BYTES, so that no stage holds
    a whole corpus; `parquet_sink` makes it appear only when complete."""

    def __init__(self, path: Path, schema: pa.Schema, group_bytes: int | None = None) -> None:
        import pyarrow.parquet as pq

        self.schema, self.group_bytes = schema, group_bytes or GROUP_BYTES
        self.writer = pq.ParquetWriter(path, schema)
        self.pending: list[pa.Table] = []
        self.pending_bytes = self.rows = 0

    def add(self, rows: pa.Table | list[dict[str, Any]]) -> None:
        import pyarrow as pa

        table = rows if isinstance(rows, pa.Table) else pa.Table.from_pylist(rows, self.schema)
        self.pending.append(table.select(self.schema.names).cast(self.schema))
        self.pending_bytes += table.nbytes
        self.rows += len(table)
        if self.pending_bytes >= self.group_bytes:
            self.flush()

    def flush(self) -> None:
        import pyarrow as pa

        table = pa.concat_tables(self.pending).combine_chunks() if self.pending else None
        if table is not None and len(table):
            self.writer.write_table(table, row_group_size=len(table))
        self.pending, self.pending_bytes = [], 0

    def close(self) -> None:
        self.flush()
        if not self.rows:  # a valid file with the schema and no rows
            self.writer.write_table(self.schema.empty_table())
        self.writer.close()


@contextmanager


def parquet_sink(path: Path, schema: pa.Schema) -> Iterator[ParquetSink]:
    with atomic_output(path) as tmp:
        sink = ParquetSink(tmp, schema)
        try:
            yield sink
        finally:
            sink.close()


def string_schema(columns: Iterable[str]) -> pa.Schema:
    import pyarrow as pa

    return pa.schema([(name, pa.string()) for name in columns])


def write_json(data: Any, path: Path) -> None:
    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))
