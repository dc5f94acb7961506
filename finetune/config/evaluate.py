"""params.yaml `evaluate:`: how both models are scored and sampled."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from finetune.config.section import Section


class EvaluateParams(Section):
    batch_size: int = Field(8, ge=1)
    prompts: list[str] = Field(default_factory=list)
    max_new_tokens: int = Field(60, ge=1, le=4096)
    repetition_penalty: float = Field(1.2, ge=1.0, le=5.0)
    max_generation_examples: int = Field(50, ge=0)  # pairs and chat: BLEU/ROUGE-L on this many
    # general-English text that is not the user's, to see what fine-tuning cost; []: none
    reference_paths: list[str] = Field(default_factory=lambda: ["data/reference"])
    device: Literal["auto", "cpu", "cuda"] = "auto"  # auto: CUDA when there is a GPU, else the CPU
