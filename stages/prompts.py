"""How examples are rendered for the model, defined once: the prompt template of pairs, and the
label mask. Tokenize, evaluate and generate all call these, so what the model was trained on is
what it is asked at inference."""

from __future__ import annotations

from typing import Any

from stages.params import TokenizeParams, UserError

IGNORE = -100  # label of a token the loss skips


def render_prompts(prompts: list[str], tokenizer: Any, p: TokenizeParams) -> list[str]:
    """Pairs mode: each prompt as the model sees it, ready for the answer to follow."""
    if p.use_chat_template:
        if not getattr(tokenizer, "chat_template", None):
            raise UserError("tokenize.use_chat_template: the base model's tokenizer has no chat "
                            "template; set it to false to use tokenize.prompt_template")
        return [tokenizer.apply_chat_template([{"role": "user", "content": x}], tokenize=False,
                                              add_generation_prompt=True) for x in prompts]
    return [p.prompt_template.replace("{prompt}", x) for x in prompts]
