"""How examples are rendered for the model, defined once: the prompt template of pairs, the chat
template of conversations, and the label mask. Tokenize, evaluate and generate all call these,
so what the model was trained on is what it is asked at inference."""

from __future__ import annotations

from dataclasses import dataclass
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


# ---------------------------------------------------------------- chat

# For a base model whose tokenizer has no chat template (tokenize.chat_template overrides both).
# Each assistant turn ends with the EOS token, so the model learns to stop.
PLAIN_CHAT_TEMPLATE = (
    "{% for m in messages %}"
    "{% if m.role == 'system' %}{{ m.content }}\n\n"
    "{% elif m.role == 'user' %}### User:\n{{ m.content }}\n\n"
    "{% elif m.role == 'tool' %}### Tool result:\n{{ m.content }}\n\n"
    "{% else %}### Assistant:\n"
    "{% for c in m.tool_calls or [] %}<tool_call>{{ c.function | tojson }}</tool_call>\n{% endfor %}"
    "{{ m.content }}{{ eos_token }}\n\n"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}### Assistant:\n{% endif %}"
)


class RenderError(ValueError):
    """A conversation the chat template cannot render faithfully; `reason` is the metrics key."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class Encoded:
    """One example: token ids and labels (IGNORE where the loss is off)."""

    input_ids: list[int]
    labels: list[int]


def chat_template(tokenizer: Any, p: TokenizeParams) -> str:
    """The template conversations are rendered with: tokenize.chat_template, else the
    tokenizer's own, else PLAIN_CHAT_TEMPLATE."""
    return p.chat_template or getattr(tokenizer, "chat_template", None) or PLAIN_CHAT_TEMPLATE


def with_system(messages: list[dict[str, Any]], p: TokenizeParams) -> list[dict[str, Any]]:
    """The messages with tokenize.system_prompt first, unless they have a system turn."""
    if p.system_prompt and not (messages and messages[0]["role"] == "system"):
        return [{"role": "system", "content": p.system_prompt}, *messages]
    return messages


class Renderer:
    """Renders conversations with one chat template (and tokenizer) as text."""

    def __init__(self, tokenizer: Any, p: TokenizeParams) -> None:
        self.tokenizer, self.p = tokenizer, p
        self.template = chat_template(tokenizer, p)

    def __call__(self, messages: list[dict[str, Any]], tools: list[Any] | None = None,
                 generation_prompt: bool = False) -> str:
        from jinja2 import TemplateError

        try:
            return self.tokenizer.apply_chat_template(
                messages, tools=tools, chat_template=self.template, tokenize=False,
                add_generation_prompt=generation_prompt)
        except TemplateError as e:
            raise RenderError("template_error", f"the chat template refused it: {e}") from None

    def prompt(self, messages: list[dict[str, Any]], tools: list[Any] | None = None) -> str:
        """The text that asks the model for the next assistant turn."""
        return self(with_system(messages, self.p), tools, generation_prompt=True)

    def spans(self, conv: dict[str, Any]) -> tuple[str, list[tuple[int, int]], list[int]]:
        """The whole text of a conversation, the character span of each trained assistant turn
        (its content and end-of-turn marker, found as the difference between the text up to the
        turn and the generation prompt before it), and where each turn ends. Works for any
        template; one whose renderings are not prefixes of each other (history rendered
        differently from the last turn, say) is a RenderError, never a silent mis-mask."""
        from stages.conversations import trained_turns

        messages, tools = with_system(conv["messages"], self.p), conv.get("tools")
        full = self(messages, tools)
        spans, ends = [], []
        for i, m in enumerate(messages):
            if m["role"] == "tool":
                self._check_context(messages, tools, i)
        for i in trained_turns(messages):
            upto = self(messages[: i + 1], tools)
            before = self._before(messages, tools, i, upto)
            if not upto.startswith(before) or not full.startswith(upto):
                raise RenderError("inconsistent_template", f"message {i + 1}: the chat template "
                                  "renders this conversation differently turn by turn, so its "
                                  "assistant turns cannot be found")
            turn = upto[len(before):].rstrip()
            missing = [c["function"]["name"] for c in messages[i].get("tool_calls", [])
                       if c["function"]["name"] not in turn]
            if missing:
                raise RenderError("tools_unsupported", f"message {i + 1}: the chat template does "
                                  f"not render tool calls ({', '.join(missing)})")
            if messages[i]["content"].strip() not in turn:
                raise RenderError("inconsistent_template", f"message {i + 1}: the chat template "
                                  "does not render the assistant's text as it is")
            spans.append((len(before), len(before) + len(turn)))
            ends.append(len(upto))
        return full, spans, ends

    def _before(self, messages: list[dict[str, Any]], tools: list[Any] | None, i: int,
                upto: str) -> str:
        """The text before assistant turn i: the generation prompt after the turns before it, or
        for a conversation that opens with the assistant (a greeting), whatever the template
        puts before that turn's text."""
        if i:
            return self(messages[:i], tools, generation_prompt=True)
        at = upto.find(messages[0]["content"]) if messages[0]["content"] else -1
        if at < 0:
            raise RenderError("inconsistent_template", "message 1: the chat template does not "
                              "render the assistant's text as it is")
        return upto[:at]

    def _check_context(self, messages: list[dict[str, Any]], tools: list[Any] | None, i: int
                       ) -> None:
        """A tool result must appear in the text, or the template cannot take tool turns."""
        upto = self(messages[: i + 1], tools)
        if messages[i]["content"].strip() not in upto[len(self(messages[:i], tools)):]:
            raise RenderError("tools_unsupported", f"message {i + 1}: the chat template does not "
                              "render tool results")


def mask(offsets: list[tuple[int, int]], spans: list[tuple[int, int]]) -> list[bool]:
    """Which tokens (by their character offsets) start inside one of the spans."""
    return [any(a <= start < b for a, b in spans) for start, _ in offsets]


def encode_chat(conv: dict[str, Any], renderer: Renderer, block_size: int, overlong: str,
                train_on: str) -> tuple[Encoded | None, str]:
    """Token ids and labels of one conversation: IGNORE everywhere but the trained assistant
    turns (their end-of-turn token included; the last one only with train_on=last). Over
    block_size tokens it is cut after the last assistant turn that fits (overlong=truncate) or
    dropped; the second value says which: "", "truncated" or "dropped"."""
    text, spans, ends = renderer.spans(conv)
    enc = renderer.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = enc["input_ids"], enc["offset_mapping"]
    fate = ""
    if len(ids) > block_size:
        fits = [k for k, end in enumerate(ends)
                if sum(1 for start, _ in offsets if start < end) <= block_size]
        if overlong == "drop" or not fits:
            return None, "dropped"
        keep = sum(1 for start, _ in offsets if start < ends[fits[-1]])
        ids, offsets, spans, fate = ids[:keep], offsets[:keep], spans[: fits[-1] + 1], "truncated"
    if train_on == "last":
        spans = spans[-1:]
    labels = [i if on else IGNORE for i, on in zip(ids, mask(offsets, spans), strict=True)]
    return Encoded(list(ids), labels), fate


def reply_prompt(conv: dict[str, Any], renderer: Renderer) -> tuple[str, str]:
    """The history before the last assistant turn, rendered to ask for that turn, and the turn's
    text: what evaluate scores greedy replies against."""
    from stages.conversations import trained_turns

    messages = conv["messages"]
    last = trained_turns(messages)[-1]
    return renderer.prompt(messages[:last], conv.get("tools")), messages[last]["content"]


def stop_token_ids(renderer: Renderer) -> list[int]:
    """The tokens that end an assistant turn in this template (e.g. <|im_end|>) and EOS: where
    generation stops."""
    tokenizer = renderer.tokenizer
    probe = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Fine"}]
    before = renderer(probe[:1], generation_prompt=True)
    turn = renderer(probe)[len(before):]
    tail = turn[turn.find("Fine") + len("Fine"):]
    special = set(tokenizer.all_special_ids) | set(getattr(tokenizer, "added_tokens_decoder", {}))
    ids = [i for i in tokenizer(tail, add_special_tokens=False)["input_ids"] if i in special][:1]
    return list(dict.fromkeys([*ids, tokenizer.eos_token_id]))
