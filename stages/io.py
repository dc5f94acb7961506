"""Shared readers and writers: parquet, JSON metrics, atomic outputs, models, and the stage CLI."""

from __future__ import annotations

import argparse
import glob
import json
import multiprocessing
import os
import resource
import shutil
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from stages.metrics import HEADLINE, headline
from stages.params import PATHS, Params, Paths, UserError, load


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
    return pd.read_parquet(_existing(path))


def row_groups(path: Path) -> int:
    """How many row groups a Parquet file has: the unit the data stages stream by."""
    return pq.ParquetFile(_existing(path)).num_row_groups


def parquet_rows(path: Path) -> int:
    return pq.ParquetFile(_existing(path)).metadata.num_rows


def read_row_group(path: Path, index: int, columns: list[str] | None = None) -> pa.Table:
    return pq.ParquetFile(path).read_row_group(index, columns=columns)


GROUP_BYTES = 64 << 20  # rows are written in row groups of about this many bytes


class ParquetSink:
    """A Parquet file written in order, in row groups of about GROUP_BYTES, so that no stage holds
    a whole corpus; `parquet_sink` makes it appear only when complete."""

    def __init__(self, path: Path, schema: pa.Schema, group_bytes: int | None = None) -> None:
        self.schema, self.group_bytes = schema, group_bytes or GROUP_BYTES
        self.writer = pq.ParquetWriter(path, schema)
        self.pending: list[pa.Table] = []
        self.pending_bytes = self.rows = 0

    def add(self, rows: pa.Table | list[dict[str, Any]]) -> None:
        table = rows if isinstance(rows, pa.Table) else pa.Table.from_pylist(rows, self.schema)
        self.pending.append(table.select(self.schema.names).cast(self.schema))
        self.pending_bytes += table.nbytes
        self.rows += len(table)
        if self.pending_bytes >= self.group_bytes:
            self.flush()

    def flush(self) -> None:
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
    return pa.schema([(name, pa.string()) for name in columns])


def workers(num_proc: int) -> int:
    """`num_proc` as a process count: 0 is one per CPU core this process may use."""
    if num_proc:
        return num_proc
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


T = TypeVar("T")
R = TypeVar("R")


def ordered_map(fn: Callable[[T], R], items: Sequence[T], num_proc: int) -> Iterator[R]:
    """fn over items in `num_proc` worker processes, results in input order. At most two results
    per worker wait to be consumed, so memory stays bounded however many items there are. With
    one process (or one item) it runs here. fn must be a module-level function (workers are
    spawned, not forked); its exceptions reach the caller."""
    num_proc = min(num_proc, len(items))
    if num_proc <= 1:
        yield from map(fn, items)
        return
    pool = ProcessPoolExecutor(num_proc, mp_context=multiprocessing.get_context("spawn"))
    pending: deque[Future[R]] = deque()
    try:
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) >= 2 * num_proc:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def write_json(data: Any, path: Path) -> None:
    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def _scalars(summary: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for key, value in summary.items():
        if isinstance(value, dict):
            yield from _scalars(value, f"{prefix}{key}.")
        elif isinstance(value, (int, float, str)) and not isinstance(value, bool):
            yield f"{prefix}{key}", value


def peak_memory_mb() -> float:
    """The peak resident memory of this process (not of its worker processes), in MB: VmHWM,
    which starts afresh at exec, unlike ru_maxrss, which keeps the parent's size after a fork."""
    try:
        status = Path("/proc/self/status").read_text()
        return next(int(line.split()[1]) for line in status.splitlines()
                    if line.startswith("VmHWM:")) / 1024
    except (OSError, StopIteration):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak / (1024**2 if sys.platform == "darwin" else 1024)  # bytes or KiB


def _summary_line(name: str, summary: dict[str, Any], seconds: float) -> str:
    shown = [f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in _scalars(summary)]
    return (f"{name}: " + ", ".join(shown[:10])
            + f" ({seconds:.1f} s, peak memory {peak_memory_mb():,.0f} MB)")


def write_summary(name: str, summary: dict[str, Any], paths: Paths = PATHS) -> None:
    """metrics/<name>.json; for the stages with headline figures (stages.metrics), those go
    there and the whole summary to metrics/<name>_details.json."""
    if name in HEADLINE:
        write_json(summary, paths.details_file(name))
        summary = headline(name, summary)
    write_json(summary, paths.metrics / f"{name}.json")


def stage_main(
    name: str,
    run: Callable[[Params], dict[str, Any]],
    argv: list[str] | None = None,
    metrics_name: str | None = None,
    write_metrics: bool = True,
    pass_params_file: bool = False,
) -> None:
    """The thin CLI every stage shares: --params, validation before any work, one-line user
    errors with exit 1, the summary written to metrics/<stage>.json (write_summary) and printed."""
    parser = argparse.ArgumentParser(prog=f"python -m stages.{name}")
    parser.add_argument("--params", default="params.yaml", help="path to params.yaml")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    try:
        params = load(args.params)
        summary = run(params, params_file=args.params) if pass_params_file else run(params)
    except UserError as e:
        print(f"{name}: error: {e}", file=sys.stderr)
        sys.exit(1)
    if "LOCAL_RANK" in os.environ:  # a torchrun worker: rank 0 hands the metrics to the launcher
        if write_metrics and os.environ.get("RANK") == "0":
            write_summary(metrics_name or name, summary)
        return
    if write_metrics:
        write_summary(metrics_name or name, summary)
    print(_summary_line(name, summary, time.perf_counter() - started))
