"""Deciding each row's split: deterministic for the seed, stratified, with no text in two splits
(by document in text mode, a book's chapters each whole in one split; by group or else by source
file in pairs and chat mode)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from finetune.config.split import SplitParams
from finetune.data.records import KEY, digest
from finetune.errors import UserError
from finetune.files import ParquetSink, atomic_output, read_row_group, row_groups
from finetune.paths import SPLITS

MIN_PASSAGES = 3  # a document with fewer passages cannot feed all three splits on its own


POOLED = "\0pooled"  # the group of short documents, split together


def allocate(n: int, fractions: tuple[float, float, float]) -> list[int]:
    """How many of n items go to train/val/test: largest remainders, and at least one each for
    val and test when n >= MIN_PASSAGES."""
    raw = np.asarray(fractions) * n
    counts = np.floor(raw).astype(int)
    for i in np.argsort(-(raw - counts), kind="stable")[: n - counts.sum()]:
        counts[i] += 1
    if n >= MIN_PASSAGES:
        for i in (1, 2):
            if counts[i] == 0:
                counts[i], counts[0] = 1, counts[0] - 1
    return counts.tolist()


def assign(groups: pd.Series, keys: pd.Series, p: SplitParams, seed: int,
           pools: pd.Series | None = None) -> pd.Series:
    """The split of every row. Rows are shuffled within their group and cut by `allocate`; a group
    too small to stratify joins the pooled group of its pool (one pool when `pools` is None);
    rows with the same text all follow the first."""
    sizes = groups.map(groups.value_counts())
    pooled = POOLED if pools is None else POOLED + pools
    groups = groups.where(sizes >= MIN_PASSAGES, pooled)
    rng = np.random.default_rng(seed)
    split = np.empty(len(groups), dtype=object)
    fractions = (p.train, p.val, p.test)
    for _, positions in sorted(groups.groupby(groups, sort=False).indices.items()):
        order = rng.permutation(positions)
        bounds = np.cumsum(allocate(len(order), fractions))[:-1]
        for name, part in zip(SPLITS, np.split(order, bounds), strict=True):
            split[part] = name
    result = pd.Series(split, index=groups.index)
    return result.groupby(keys.values, sort=False).transform("first")


def strata_of(mode: str, units: list[str], groups: list[str]) -> tuple[pd.Series, pd.Series | None]:
    """What the split stratifies by, and the pools of the strata too small for it, given each
    row's unit (its document in text mode, else its source file) and group. Text: each document
    (pooled by group, so a group's short documents stay its own); pairs and chat: each group
    when the records have groups, else each source file."""
    if mode == "text":
        return pd.Series(units), pd.Series(groups) if any(groups) else None
    return pd.Series(groups if any(groups) else units), None


def row_keys(table: pa.Table, mode: str) -> list[bytes]:
    """The digest of each row's text (as clean's duplicate removal takes it): rows with equal
    digests must share a split."""
    parts = [table.column(name).to_pylist() for name in KEY[mode]]
    return [digest(*texts) for texts in zip(*parts, strict=True)]


def labels_of(clean: Path, mode: str, p: SplitParams, seed: int) -> tuple[np.ndarray, pd.DataFrame]:
    """The first pass over clean.parquet, one row group at a time, reading only the units, groups
    and text digests: every row's split, and each row's doc_id, group and split (for the
    summary). Memory is the digests and ids, not the texts."""
    unit_column = "doc_id" if mode == "text" else "source"
    units: list[str] = []
    record_groups: list[str] = []
    keys: list[bytes] = []
    doc_ids: list[str] = []
    chapters = mode == "text" and "chapter" in pq.read_schema(clean).names
    columns = [unit_column, "doc_id", "group", *KEY[mode], *(["source", "chapter"] if chapters else [])]
    items: list[bytes | int] = []  # what goes whole to one split: a row, or a book's chapter
    for i in range(row_groups(clean)):
        table = read_row_group(clean, i, list(dict.fromkeys(columns)))
        ids = table.column("doc_id").to_pylist()
        row_units, row_keys_ = table.column(unit_column).to_pylist(), row_keys(table, mode)
        row_items: list[bytes | int] = list(range(len(doc_ids), len(doc_ids) + len(ids)))
        if chapters:  # a book's chapters are its units, stratified by book
            for j, (source, chapter) in enumerate(zip(table.column("source").to_pylist(),
                                                      table.column("chapter").to_pylist(),
                                                      strict=True)):
                if chapter:
                    row_units[j] = source
                    row_items[j] = row_keys_[j] = digest("chapter", ids[j])
        units += row_units
        record_groups += table.column("group").to_pylist()
        doc_ids += ids
        keys += row_keys_
        items += row_items
    if len(set(items)) == len(items):  # no chapters: each row is its own item
        strata, pools = strata_of(mode, units, record_groups)
        labels = assign(strata, pd.Series(keys), p, seed, pools).to_numpy()
    else:  # each item's first row stands for it
        first = pd.Series(items).drop_duplicates()
        strata, pools = strata_of(mode, [units[i] for i in first.index],
                                  [record_groups[i] for i in first.index])
        chosen = assign(strata, pd.Series([keys[i] for i in first.index]), p, seed, pools)
        labels = pd.Series(items).map(dict(zip(first, chosen, strict=True))).to_numpy()
    counts = Counter(labels.tolist())
    if any(counts[name] == 0 for name in SPLITS):
        raise UserError(too_few(mode, counts, grouped=pools is not None))
    return labels, pd.DataFrame({"doc_id": doc_ids, "group": record_groups, "split": labels})


NOUNS = {"text": "passage", "pairs": "pair", "chat": "conversation"}


def too_few(mode: str, counts: Counter[str], grouped: bool) -> str:
    """The one line for a split left empty, with what to add (assign): a stratum of fewer than
    MIN_PASSAGES rows joins its pool, and a pool that small goes to train whole. With one pool,
    MIN_PASSAGES rows in all are enough; text mode with groups pools each group's short
    documents apart; and rows with the same text follow the first."""
    noun, total = NOUNS[mode], sum(counts.values())
    empty = [name for name in SPLITS if not counts[name]]
    got = ", ".join(f"{name} {counts[name]}" for name in SPLITS)
    some = f"1 {noun} leaves" if total == 1 else f"{total} {noun}s leave"
    head = f"{some} {' and '.join(empty)} empty ({got}), and every split needs one"
    cut = ", or lower clean.max_chars to cut documents into more passages" if mode == "text" else ""
    if grouped:
        return (f"{head}: add data, so that one document, or the short documents of one "
                f"ingest.group_field group, hold {MIN_PASSAGES} passages or more{cut}")
    if total < MIN_PASSAGES:
        return f"{head}: add data, to make {MIN_PASSAGES} {noun}s or more{cut}"
    return f"{head}: {noun}s with the same text share a split; add different ones, or set clean.dedupe: true"


def write_splits(clean: Path, labels: np.ndarray, out: Path, files: dict[str, str]) -> None:
    """The second pass: each row group's rows copied into the files of their splits (`files`:
    split -> file name under `out`), which appear together or not at all."""
    schema = pq.read_schema(clean)
    with atomic_output(out) as tmp:
        tmp.mkdir()
        sinks = {name: ParquetSink(tmp / files[name], schema) for name in SPLITS}
        try:
            start = 0
            for i in range(row_groups(clean)):
                table = read_row_group(clean, i)
                part = labels[start:start + len(table)]
                start += len(table)
                for name, sink in sinks.items():
                    sink.add(table.filter(pa.array(part == name)))
        finally:
            for sink in sinks.values():
                sink.close()


def split_summary(docs: pd.DataFrame) -> dict[str, Any]:
    """Records and documents per split, and per group when the records have groups (the
    stratification, to check)."""
    counts = docs["split"].value_counts()
    summary: dict[str, Any] = {
        name: {"records": int(counts.get(name, 0)),
               "documents": int(docs.loc[docs["split"] == name, "doc_id"].nunique())}
        for name in SPLITS}
    if docs["group"].astype(bool).any():
        table = pd.crosstab(docs["group"], docs["split"]).reindex(columns=list(SPLITS), fill_value=0)
        summary["groups"] = {str(g): {s: int(n) for s, n in row.items()} for g, row in table.iterrows()}
    return summary
