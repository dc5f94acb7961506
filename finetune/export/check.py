"""Checking an exported GGUF file: read back through transformers' GGUF loader, it must give the
same tokens and greedy continuations as the model it came from."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from finetune.gguf_files import parsed_once

# Checked on every export: prose, digits and punctuation, and a chat-rendered request.
CHECK_PROMPTS = ["The storm came in from the west, and the river rose 3.5 feet by 23:14.",
                 "Q: Where is my order FH-21290?\nA:"]


CHECK_TOKENS = 16  # greedy tokens compared per prompt


def check_prompts(tokenizer: Any) -> list[str]:
    if not getattr(tokenizer, "chat_template", None):
        return CHECK_PROMPTS
    return [*CHECK_PROMPTS, tokenizer.apply_chat_template(
        [{"role": "user", "content": "Can I pay in instalments?"}], tokenize=False,
        add_generation_prompt=True)]


def greedy(model: Any, ids: list[int], n: int) -> list[int]:
    """n greedy tokens after ids, argmax only (no stop token, no penalty): the two models are
    compared on the same number of tokens."""
    import torch

    out = list(ids)
    with torch.inference_mode():
        for _ in range(n):
            out.append(int(model(torch.tensor([out])).logits[0, -1].argmax()))
    return out[len(ids):]


def same_prefix(a: list[int], b: list[int]) -> int:
    """How many tokens two continuations share before they first differ."""
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def read_back(gguf_path: Path) -> tuple[Any, Any]:
    """The model and tokenizer in a GGUF file, as transformers' GGUF loader reads them."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    kwargs = {"gguf_file": gguf_path.name}
    with parsed_once():
        config = AutoConfig.from_pretrained(gguf_path.parent, **kwargs)
        if config.model_type == "gpt2":  # transformers reads gpt2.context_length into n_ctx only
            config.n_positions = config.n_ctx
        model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, config=config,
                                                     dtype=torch.float32, **kwargs)
        return model, AutoTokenizer.from_pretrained(gguf_path.parent, **kwargs)


def compare_loaded(loaded: Any, loaded_tokenizer: Any, model: Any, tokenizer: Any) -> dict[str, Any]:
    """A GGUF file as transformers read it against the folder's model: the tokenizer on the
    check prompts, the largest and mean absolute logit difference over their tokens, the share
    of positions with the same top token, and the share of greedy tokens produced before the two
    continuations first differ (1.0: token for token the same)."""
    import torch

    prompts = check_prompts(tokenizer)
    encoded = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in prompts]
    same_tokens = encoded == [loaded_tokenizer(text, add_special_tokens=False)["input_ids"]
                              for text in prompts]
    biggest, total, count, top, agree = 0.0, 0.0, 0, 0, 0
    with torch.inference_mode():
        for ids in encoded:
            want, got = (m(torch.tensor([ids])).logits[0] for m in (model, loaded))
            diff = (want - got).abs()
            biggest = max(biggest, float(diff.max()))
            total, count = total + float(diff.sum()), count + diff.numel()
            top += int((want.argmax(-1) == got.argmax(-1)).sum())
            agree += same_prefix(greedy(model, ids, CHECK_TOKENS), greedy(loaded, ids, CHECK_TOKENS))
    positions = sum(len(ids) for ids in encoded)
    return {"reader": "transformers GGUF loader", "prompts": len(prompts),
            "tokenizer_agrees": same_tokens, "max_abs_logit_diff": round(biggest, 6),
            "mean_abs_logit_diff": round(total / count, 6), "top_token_agreement": round(top / positions, 4),
            "greedy_agreement": round(agree / (CHECK_TOKENS * len(prompts)), 4)}
