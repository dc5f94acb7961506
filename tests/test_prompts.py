"""Rendering conversations and the assistant-only label mask, with SmolLM2's real chat template
and the plain template of a tiny model: the labelled tokens decode to exactly the assistant
messages and their end-of-turn markers."""

from __future__ import annotations

import itertools
from typing import Any

import pandas as pd
import pytest

from finetune.config.schema import Params
from finetune.config.tokenize import TokenizeParams
from finetune.errors import UserError
from finetune.models.loading import load_tokenizer
from finetune.paths import Paths
from finetune.text import tokenized
from finetune.text.prompts import (
    IGNORE,
    PLAIN_CHAT_TEMPLATE,
    Renderer,
    RenderError,
    encode_chat,
    reply_prompt,
    stop_token_ids,
)

CONV = {"messages": [
    {"role": "system", "content": "You are Robin from Fernhill Home support."},
    {"role": "user", "content": "Hi, my Aster kettle leaks."},
    {"role": "assistant", "content": "Sorry to hear that! What is your order number?"},
    {"role": "user", "content": "FH-21290."},
    {"role": "assistant", "content": "Thanks. A replacement is on its way, no need to return it."},
]}
ASSISTANT = [m["content"] for m in CONV["messages"] if m["role"] == "assistant"]
TOOLS = {"messages": [
    {"role": "user", "content": "Where is FH-7?"},
    {"role": "assistant", "content": "", "tool_calls": [
        {"type": "function", "function": {"name": "order_status", "arguments": {"order": "FH-7"}}}]},
    {"role": "tool", "content": "status=SHIPPED date=2026-11-30"},
    {"role": "assistant", "content": "It shipped on Monday."},
]}


@pytest.fixture
def tiny_tokenizer(trained: tuple[Params, Paths]) -> Any:
    """The scratch model's tokenizer: no chat template of its own, so the plain one is used."""
    tokenizer = load_tokenizer(trained[1].base_model)
    assert not getattr(tokenizer, "chat_template", None)
    return tokenizer


def labelled_runs(tokenizer: Any, labels: list[int]) -> list[str]:
    """The labelled tokens decoded, one string per run of consecutive labelled tokens."""
    return [tokenizer.decode([t for t in run])
            for on, run in itertools.groupby(labels, key=lambda t: t != IGNORE) if on
            for run in [[t for t in run]]]


def encode(conv: dict[str, Any], tokenizer: Any, block_size: int = 512, overlong: str = "truncate",
           train_on: str = "all", **p: Any) -> tuple[Any, str]:
    return encode_chat(conv, Renderer(tokenizer, TokenizeParams(**p)), block_size, overlong, train_on)


def test_smollm2_template_labels_exactly_the_assistant_turns(smollm2_tokenizer: Any) -> None:
    encoded, fate = encode(CONV, smollm2_tokenizer)
    assert fate == "" and len(encoded.input_ids) == len(encoded.labels)
    assert labelled_runs(smollm2_tokenizer, encoded.labels) == [f"{a}<|im_end|>" for a in ASSISTANT]
    last, _ = encode(CONV, smollm2_tokenizer, train_on="last")
    assert labelled_runs(smollm2_tokenizer, last.labels) == [f"{ASSISTANT[-1]}<|im_end|>"]
    assert last.input_ids == encoded.input_ids


def test_plain_template_of_a_tiny_model_labels_the_assistant_turns_and_eos(tiny_tokenizer: Any) -> None:
    encoded, _ = encode(CONV, tiny_tokenizer)
    eos = tiny_tokenizer.eos_token
    assert labelled_runs(tiny_tokenizer, encoded.labels) == [f"{a}{eos}" for a in ASSISTANT]
    text = tiny_tokenizer.decode(encoded.input_ids)
    assert text.startswith("You are Robin") and "### User:\nHi, my Aster kettle leaks." in text


def test_the_system_prompt_param_fills_in_a_missing_system_turn(smollm2_tokenizer: Any) -> None:
    conv = {"messages": CONV["messages"][1:]}
    encoded, _ = encode(conv, smollm2_tokenizer, system_prompt="Answer as Robin.")
    text = smollm2_tokenizer.decode(encoded.input_ids)
    assert text.startswith("<|im_start|>system\nAnswer as Robin.<|im_end|>")
    kept, _ = encode(CONV, smollm2_tokenizer, system_prompt="Answer as Robin.")
    assert "Answer as Robin." not in smollm2_tokenizer.decode(kept.input_ids)


def test_weight_zero_assistant_turns_are_context(smollm2_tokenizer: Any) -> None:
    messages = [dict(m) for m in CONV["messages"]]
    messages[2]["weight"] = 0
    encoded, _ = encode({"messages": messages}, smollm2_tokenizer)
    assert labelled_runs(smollm2_tokenizer, encoded.labels) == [f"{ASSISTANT[1]}<|im_end|>"]


def test_overlong_conversations_are_cut_at_a_turn_boundary_or_dropped(smollm2_tokenizer: Any) -> None:
    whole, _ = encode(CONV, smollm2_tokenizer)
    first_turn_end = whole.input_ids.index(2, whole.labels.index(next(
        t for t in whole.labels if t != IGNORE))) + 2  # its <|im_end|> and the newline after
    cut, fate = encode(CONV, smollm2_tokenizer, block_size=len(whole.input_ids) - 1)
    assert fate == "truncated" and len(cut.input_ids) == first_turn_end
    assert cut.input_ids == whole.input_ids[:first_turn_end]
    assert labelled_runs(smollm2_tokenizer, cut.labels) == [f"{ASSISTANT[0]}<|im_end|>"]
    last, _ = encode(CONV, smollm2_tokenizer, block_size=len(whole.input_ids) - 1, train_on="last")
    assert labelled_runs(smollm2_tokenizer, last.labels) == [f"{ASSISTANT[0]}<|im_end|>"]
    assert encode(CONV, smollm2_tokenizer, block_size=first_turn_end - 3) == (None, "dropped")
    assert encode(CONV, smollm2_tokenizer, block_size=len(whole.input_ids) - 1,
                  overlong="drop") == (None, "dropped")


def test_a_template_that_renders_history_differently_is_reported(smollm2_tokenizer: Any) -> None:
    # like templates that strip earlier assistant turns (reasoning models): not a prefix
    template = ("{% for m in messages %}{% if m.role == 'assistant' and not loop.last %}"
                "<a>...</a>{% else %}<{{ m.role }}>{{ m.content }}</{{ m.role }}>{% endif %}"
                "{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}")
    with pytest.raises(RenderError, match="renders this conversation differently") as err:
        encode(CONV, smollm2_tokenizer, chat_template=template)
    assert err.value.reason == "inconsistent_template"


def test_tool_turns_need_a_template_that_renders_them(smollm2_tokenizer: Any,
                                                      tiny_tokenizer: Any) -> None:
    with pytest.raises(RenderError, match="does not render tool calls") as err:
        encode(TOOLS, smollm2_tokenizer)  # SmolLM2's template has no tool calls
    assert err.value.reason == "tools_unsupported"
    encoded, _ = encode(TOOLS, tiny_tokenizer)  # the plain template has
    runs = labelled_runs(tiny_tokenizer, encoded.labels)
    assert len(runs) == 2 and "order_status" in runs[0] and runs[1].startswith("It shipped")
    assert "SHIPPED" not in "".join(runs)  # the tool's result is context only


def test_tokenize_fails_or_skips_a_conversation_the_template_cannot_render(
        smollm2_tokenizer: Any) -> None:
    from finetune.data import conversations

    df = pd.DataFrame({"source": ["data/chat.jsonl"] * 2, "position": ["line 1", "line 2"],
                       "conversation": [conversations.dumps(CONV), conversations.dumps(TOOLS)]})
    renderer = Renderer(smollm2_tokenizer, TokenizeParams(block_size=512))
    with pytest.raises(UserError, match=r"^data/chat.jsonl:line 2: message 2: the chat template "
                                        r"does not render tool calls \(order_status\)"):
        tokenized.chat_examples(df, renderer, TokenizeParams(block_size=512), "fail")
    inputs, labels, counts, kept = tokenized.chat_examples(df, renderer, TokenizeParams(block_size=512),
                                                          "skip")
    assert len(inputs) == 1 and counts["skipped_tools_unsupported"] == 1 and kept == [0]


def test_reply_prompt_and_stop_tokens(smollm2_tokenizer: Any, tiny_tokenizer: Any) -> None:
    renderer = Renderer(smollm2_tokenizer, TokenizeParams())
    prompt, reference = reply_prompt(CONV, renderer)
    assert prompt.endswith("FH-21290.<|im_end|>\n<|im_start|>assistant\n")
    assert reference == ASSISTANT[-1]
    assert stop_token_ids(renderer) == [smollm2_tokenizer.convert_tokens_to_ids("<|im_end|>")]
    plain = Renderer(tiny_tokenizer, TokenizeParams())
    assert plain.template == PLAIN_CHAT_TEMPLATE
    assert stop_token_ids(plain) == [tiny_tokenizer.eos_token_id]


def test_a_conversation_that_opens_with_the_assistant(smollm2_tokenizer: Any,
                                                      tiny_tokenizer: Any) -> None:
    conv = {"messages": [{"role": "assistant", "content": "Hello! How can I help today?"},
                         *CONV["messages"][1:3]]}
    for tokenizer, end in ((smollm2_tokenizer, "<|im_end|>"), (tiny_tokenizer, tiny_tokenizer.eos_token)):
        encoded, _ = encode(conv, tokenizer)
        assert labelled_runs(tokenizer, encoded.labels) == [
            f"Hello! How can I help today?{end}", f"{ASSISTANT[0]}{end}"]


def test_a_template_that_closes_the_conversation_with_a_suffix(smollm2_tokenizer: Any) -> None:
    # like Phi-3: EOS after the last turn when no generation prompt follows
    template = ("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n"
                "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n"
                "{% else %}<|endoftext|>{% endif %}")
    encoded, _ = encode(CONV, smollm2_tokenizer, chat_template=template)
    runs = labelled_runs(smollm2_tokenizer, encoded.labels)
    assert runs == [f"{ASSISTANT[0]}<|im_end|>", f"{ASSISTANT[1]}<|im_end|>\n<|endoftext|>"]


def test_spans_are_found_even_where_the_text_repeats_the_template(smollm2_tokenizer: Any) -> None:
    # the greeting also appears in SmolLM2's default system prompt
    conv = {"messages": [{"role": "assistant", "content": "Hugging Face"},
                         {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}
    encoded, _ = encode(conv, smollm2_tokenizer)
    assert labelled_runs(smollm2_tokenizer, encoded.labels) == ["Hugging Face<|im_end|>",
                                                                "Hello<|im_end|>"]


def test_a_token_that_straddles_the_turn_start_is_trained(smollm2_tokenizer: Any) -> None:
    template = ("{% for m in messages %}{{ m.role }}: {{ m.content }}<|im_end|>\n{% endfor %}"
                "{% if add_generation_prompt %}assistant: {% endif %}")
    encoded, _ = encode(CONV, smollm2_tokenizer, chat_template=template)
    runs = labelled_runs(smollm2_tokenizer, encoded.labels)
    assert runs == [f" {a}<|im_end|>" for a in ASSISTANT]  # " Sorry" carries the space before it


def test_tool_calls_the_template_drops_are_caught_even_if_the_name_is_in_the_text(
        smollm2_tokenizer: Any) -> None:
    conv = {"messages": [{"role": "user", "content": "Where is FH-7?"},
                         {"role": "assistant", "content": "Let me check the order_status.",
                          "tool_calls": TOOLS["messages"][1]["tool_calls"]},
                         {"role": "tool", "content": "shipped"},
                         {"role": "assistant", "content": "It shipped."}]}
    with pytest.raises(RenderError, match="does not render tool calls"):
        encode(conv, smollm2_tokenizer)


def test_templates_that_print_the_date_get_a_fixed_one(smollm2_tokenizer: Any) -> None:
    from finetune.text.prompts import FIXED_DATE

    template = ("{% if not date_string is defined %}{% set date_string = strftime_now('%d %b %Y') %}"
                "{% endif %}Today: {{ date_string }}\n{% for m in messages %}{{ m.content }}\n"
                "{% endfor %}")
    renderer = Renderer(smollm2_tokenizer, TokenizeParams(chat_template=template))
    assert renderer(CONV["messages"]).startswith(f"Today: {FIXED_DATE}\n")


def test_a_template_that_raises_other_errors_is_a_render_error(smollm2_tokenizer: Any) -> None:
    with pytest.raises(RenderError) as err:
        Renderer(smollm2_tokenizer, TokenizeParams())(CONV["messages"], tools=["not a schema"])
    assert err.value.reason == "template_error"
