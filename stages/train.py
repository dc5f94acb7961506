"""Fine-tune models/base on data/tokenized/train with the Hugging Face Trainer, evaluating on
data/tokenized/val; write models/finetuned/ (safetensors + tokenizer, with the chat template,
stop tokens and default sampling of data/tokenized/inference.json), the loss curves (DVCLive,
under dvclive/train), metrics/train.json (validation loss, tokens/s) and
metrics/train_details.json (the whole summary). Params: `seed`, `train`.

Every `train.save_steps` steps a checkpoint goes to models/checkpoints/; a run that was killed
resumes from the last complete one, provided it belongs to the same params, inputs and code."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from finetune.config.common import Seed
from finetune.config.train import TrainParams
from finetune.paths import PATHS, Paths
from finetune.stage import stage_main

# what `dvc exp show` shows of a run: {name in metrics/train.json: where it is in the summary}
HEADLINE = {"val_loss": ("val_loss",), "tokens_per_second": ("tokens_per_second",)}


def run(seed: Seed, train: TrainParams, paths: Paths = PATHS,
        params_file: str = "params.yaml") -> dict[str, Any]:
    # imported here, after stage_main has checked the params: a bad value fails in a second, not
    # after the seconds that transformers' Trainer (and peft, which it imports) take to load; the
    # torchrun launcher never loads them
    from finetune.training.runs import RESUME_ENV, check_method, launch, resume_for

    check_method(train)
    if train.num_processes > 1 and RESUME_ENV not in os.environ:
        return launch(seed, train, paths, params_file)
    from finetune.training.trainer import train_model

    if RESUME_ENV in os.environ:  # a torchrun worker: the launcher chose the checkpoint
        resume = os.environ.get(RESUME_ENV)
        return train_model(seed, train, paths, Path(resume) if resume else None)
    return train_model(seed, train, paths, resume_for(seed, train, paths))


def main(argv: list[str] | None = None) -> None:
    stage_main("train", run, argv, pass_params_file=True, figures=HEADLINE)


if __name__ == "__main__":
    main()
