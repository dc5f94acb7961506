"""Preference tuning (DPO, through TRL) of the supervised model (models/finetuned, or the base
model with `preference.start_from: base`) on data/preferences/train, validated on val, with the
supervised model as the reference; write models/preferred (asked as the supervised model is),
the losses and reward margins (DVCLive, under dvclive/preference) and metrics/preference.json.
With no pairs (the default), models/preferred only says so and the chain ends with the
supervised model. Params: `seed`, `preference`, `tokenize.block_size`, and train's device,
precision, attention and lora."""

from __future__ import annotations

from typing import Annotated, Any

from finetune.config.common import Seed
from finetune.config.loading import Key
from finetune.config.preference import PreferenceParams
from finetune.config.tokenize import TokenizeParams
from finetune.config.train import LoraParams, TrainParams
from finetune.paths import PATHS, Paths
from finetune.stage import stage_main

HEADLINE = {"pref_val_accuracy": ("val_reward_accuracy",), "pref_val_margin": ("val_reward_margin",)}


def run(seed: Seed, preference: PreferenceParams,
        block_size: Annotated[int, Key(TokenizeParams, "block_size")],
        device: Annotated[str, Key(TrainParams, "device")],
        precision: Annotated[str, Key(TrainParams, "precision")],
        attention: Annotated[str, Key(TrainParams, "attention")],
        lora: Annotated[LoraParams, Key(TrainParams, "lora")],
        paths: Paths = PATHS) -> dict[str, Any]:
    # imported here, after stage_main has checked the params: TRL and transformers take seconds
    from finetune.training.preference import tune

    train = TrainParams(device=device, precision=precision, attention=attention, lora=lora)
    return tune(seed, preference, train, block_size, paths)


def main(argv: list[str] | None = None) -> None:
    stage_main("preference", run, argv, figures=HEADLINE)


if __name__ == "__main__":
    main()
