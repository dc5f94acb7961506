"""Work spread over processes, results in order and memory bounded."""

from __future__ import annotations

import multiprocessing
import os
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from typing import TypeVar


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
