"""params.yaml `export:`: the GGUF files."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from finetune.config.section import Section

# written by llama.cpp's converter, q5_0/q4_0 with the gguf library's quantisers
LIBRARY_TYPES = ("f32", "f16", "bf16", "q8_0", "q5_0", "q4_0")
# made by llama.cpp's own quantiser (k-quants), through llama-cpp-python: uv sync --group llamacpp
LLAMACPP_TYPES = ("q4_k_m", "q5_k_m", "q6_k")
GGUF_TYPES = LIBRARY_TYPES + LLAMACPP_TYPES
GgufType = Literal["f32", "f16", "bf16", "q8_0", "q5_0", "q4_0", "q4_k_m", "q5_k_m", "q6_k"]


class ExportParams(Section):
    """models/export: the fine-tuned model as GGUF (llama.cpp, Ollama, LM Studio)."""

    # the file the Modelfile points at: models/export/<name>-<gguf_type>.gguf
    gguf_type: GgufType = "f16"
    # more files written and measured beside it, one per type
    gguf_types: list[GgufType] = Field(default_factory=list, max_length=len(GGUF_TYPES))
    # a LoRA run: also its adapter as a GGUF LoRA adapter over the base model's GGUF, with a
    # Modelfile ADAPTER line (models/export/lora/)
    lora_adapter: bool = False
    name: str = Field("finetuned", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", max_length=100)

    def kinds(self) -> list[str]:
        """Every type to write, the Modelfile's first, each once."""
        return list(dict.fromkeys([self.gguf_type, *self.gguf_types]))
