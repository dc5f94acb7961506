"""The texts a scratch tokenizer learns from (`model.source: scratch`: every text of the train
split, chat messages included), else none, in data/interim/scratch_texts.json. base_model
depends on this file instead of the train split, so a data change reruns base_model only when
its tokenizer is built from the data: for a package, GGUF or hub model this stage writes the same
empty list and base_model stays as it is. Params: `model.source`."""

from __future__ import annotations

from typing import Annotated, Any

from finetune.config.loading import Key
from finetune.config.model import ModelParams
from finetune.files import read_parquet, write_json
from finetune.models.sources import train_texts
from finetune.paths import PATHS, Paths
from finetune.stage import stage_main


def run(source: Annotated[str, Key(ModelParams, "source")], paths: Paths = PATHS) -> dict[str, Any]:
    texts = train_texts(read_parquet(paths.split_file("train"))) if source == "scratch" else []
    write_json(texts, paths.scratch_texts)
    return {"texts": len(texts), "chars": sum(map(len, texts))}


def main(argv: list[str] | None = None) -> None:
    stage_main("scratch_texts", run, argv, write_metrics=False, record_params=False)


if __name__ == "__main__":
    main()
