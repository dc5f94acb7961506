"""params.yaml `tokenize:`: block size, prompt and chat rendering, packing."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from finetune.config.section import Section


class TokenizeParams(Section):
    block_size: int = Field(256, ge=8, le=131_072)
    prompt_template: str = "### Question:\n{prompt}\n\n### Answer:\n"
    use_chat_template: bool = False
    # chat mode: a Jinja chat template; None: the base tokenizer's own, or a plain one if it has none
    chat_template: str | None = None
    system_prompt: str | None = None  # chat mode: the system turn of conversations that have none
    train_on: Literal["all", "last"] = "all"  # chat mode: every assistant turn, or the last only
    # pairs longer than block_size: truncate | drop; chat: truncate cuts at a turn boundary
    overlong: Literal["truncate", "drop"] = "truncate"
    packing: bool = True  # pairs and chat: several short examples share one block_size row

    @model_validator(mode="after")
    def _template_has_prompt(self) -> TokenizeParams:
        if "{prompt}" not in self.prompt_template:
            raise ValueError("tokenize.prompt_template must contain {prompt}")
        return self
