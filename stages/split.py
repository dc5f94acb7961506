"""Split data/interim/clean.parquet into data/processed/{train,val,test}.parquet, deterministic for
`seed` and stratified, with no text in two splits: by document in text mode, by group
(`ingest.group_field`) or else by source file in pairs and chat mode. Params: `seed`, `mode`,
`split`."""

from __future__ import annotations

from typing import Any

from finetune.config.common import Mode, Seed
from finetune.config.split import SplitParams
from finetune.data.splitting import labels_of, split_summary, write_splits
from finetune.paths import PATHS, SPLITS, Paths
from finetune.stage import stage_main


def run(seed: Seed, mode: Mode, split: SplitParams, paths: Paths = PATHS) -> dict[str, Any]:
    """Two passes over clean.parquet, one row group at a time: the first decides every row's
    split from the groups and text digests, the second copies the rows into the three files."""
    labels, docs = labels_of(paths.clean, mode, split, seed)
    write_splits(paths.clean, labels, paths.processed,
                 {name: paths.split_file(name).name for name in SPLITS})
    return split_summary(docs)


def main(argv: list[str] | None = None) -> None:
    stage_main("split", run, argv)


if __name__ == "__main__":
    main()
