"""params.yaml `preference:`: the preference pairs preference tuning (DPO) learns from, and how
it trains. Off while there are no pairs: no paths, and ratings off or none made."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from finetune.config.section import Section

# TRL DPOTrainer's losses over a pair (trl.DPOConfig.loss_type): sigmoid is DPO's own, ipo IPO,
# hinge SLiC, robust the noise-robust DPO; the rest as TRL documents them
LossType = Literal["sigmoid", "ipo", "hinge", "robust", "exo_pair", "nca_pair", "bco_pair",
                   "sppo_hard", "aot", "aot_unpaired", "apo_zero", "apo_down", "discopop",
                   "sigmoid_norm"]


class PreferenceParams(Section):
    # .json / .jsonl files (or folders of them) of pairs: TRL, ShareGPT, paired message lists,
    # OpenAI preference fine-tuning (finetune/data/preferences.py)
    paths: list[str] = Field(default_factory=list)
    ratings: bool = False  # true: also the pairs `uv run rate` made (metrics/human_eval.json)
    on_error: Literal["fail", "skip"] = "fail"  # a bad record: stop, naming file and line | skip
    # the model tuned: the supervised one (models/finetuned), or the base model; the reference,
    # which the tuned model's preferences are measured against, is the supervised model
    start_from: Literal["finetuned", "base"] = "finetuned"
    method: Literal["full", "lora"] = "full"  # lora: adapters with train.lora's settings, merged
    loss_type: LossType = "sigmoid"
    beta: float = Field(0.1, gt=0, le=100)  # how far from the reference the tuned model may go
    learning_rate: float = Field(5e-6, gt=0, le=1)
    num_epochs: float = Field(1.0, gt=0)
    max_steps: int = Field(-1, ge=-1)  # -1: run num_epochs
    batch_size: int = Field(4, ge=1)  # pairs per step (each pair is two sequences)
    gradient_accumulation_steps: int = Field(1, ge=1)
    warmup_ratio: float = Field(0.1, ge=0, lt=1)
    eval_steps: int = Field(10, ge=1)
    logging_steps: int = Field(5, ge=1)
    # the reference's log-probabilities computed once before training, so that no second model
    # is kept in memory while it trains (with lora the base without adapters is the reference)
    precompute_reference: bool = True
