"""params.yaml `export:`: the GGUF file."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from finetune.config.section import Section


class ExportParams(Section):
    """models/export: the fine-tuned model as GGUF (llama.cpp, Ollama, LM Studio)."""

    gguf_type: Literal["f16", "q8_0", "f32"] = "f16"
    # models/export/<name>-<gguf_type>.gguf
    name: str = Field("finetuned", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", max_length=100)
