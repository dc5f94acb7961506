"""Split data/interim/clean.parquet into data/processed/{train,val,test}.parquet, deterministic for
`seed` and stratified by source document, with no text in two splits. Params: `seed`, `split`."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from stages.io import atomic_output, read_parquet, stage_main
from stages.params import PATHS, SPLITS, Params, Paths, SplitParams, UserError

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


def assign(groups: pd.Series, keys: pd.Series, p: SplitParams, seed: int) -> pd.Series:
    """The split of every row. Rows are shuffled within their group and cut by `allocate`; a group
    too small to stratify joins the pooled group; rows with the same text all follow the first."""
    sizes = groups.map(groups.value_counts())
    groups = groups.where(sizes >= MIN_PASSAGES, POOLED)
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


def run(params: Params, paths: Paths = PATHS) -> dict[str, Any]:
    df = read_parquet(paths.clean)
    keys = df["text"] if params.mode == "text" else df["prompt"] + "\0" + df["response"]
    groups = df["doc_id"] if params.mode == "text" else df["source"]
    df["split"] = assign(groups.reset_index(drop=True), keys.reset_index(drop=True),
                         params.split, params.seed).values
    counts = df["split"].value_counts()
    if any(counts.get(name, 0) == 0 for name in SPLITS):
        got = ", ".join(f"{name} {counts.get(name, 0)}" for name in SPLITS)
        raise UserError(f"split: {len(df)} passage(s) are too few: train, val and test need at "
                        f"least one each (got {got}); add data, or lower clean.max_chars to cut "
                        "documents into more passages")
    summary: dict[str, Any] = {}
    with atomic_output(paths.processed) as tmp:  # all three files appear together or none
        tmp.mkdir()
        for name in SPLITS:
            part = df[df["split"] == name].drop(columns="split")
            part.to_parquet(tmp / paths.split_file(name).name, index=False)
            summary[name] = {"records": len(part), "documents": int(part["doc_id"].nunique())}
    return summary


def main(argv: list[str] | None = None) -> None:
    stage_main("split", run, argv)


if __name__ == "__main__":
    main()
