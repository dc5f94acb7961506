"""How examples are rendered for the model, defined once: the prompt template of pairs, the chat
template of conversations, and the label mask. Tokenize, evaluate and generate all call these,
so what the model was trained on is what it is asked at inference."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from finetune.config.tokenize import TokenizeParams
from finetune.errors import UserError
from finetune.paths import INFERENCE_FILE, PATHS

IGNORE = -100  # label of a token the loss skips


def render_prompts(prompts: list[str], tokenizer: Any, p: TokenizeParams) -> list[str]:
    """Pairs mode: each prompt as the model sees it, ready for the answer to follow."""
    if p.use_chat_template:
        if not getattr(tokenizer, "chat_template", None):
            raise UserError("tokenize.use_chat_template: the base model's tokenizer has no chat "
                            "template; set it to false to use tokenize.prompt_template")
        return [tokenizer.apply_chat_template([{"role": "user", "content": x}], tokenize=False,
                                              add_generation_prompt=True, date_string=FIXED_DATE)
                for x in prompts]
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


def chat_template(tokenizer: Any, p: TokenizeParams, tools: bool = False) -> str:
    """The template conversations are rendered with: tokenize.chat_template, else the
    tokenizer's own (of a tokenizer with named templates, `tool_use` for conversations with tools
    where it has one, else `default`), else PLAIN_CHAT_TEMPLATE, which starts with BOS for a
    tokenizer that adds one to every text."""
    own = getattr(tokenizer, "chat_template", None)
    if isinstance(own, dict):
        own = own.get("tool_use") if tools and "tool_use" in own else own.get("default")
    if p.chat_template or own:
        return p.chat_template or own
    return ("{{ bos_token }}" if adds_bos(tokenizer) else "") + PLAIN_CHAT_TEMPLATE


def adds_bos(tokenizer: Any) -> bool:
    """Whether the tokenizer puts BOS before every text it encodes with its special tokens."""
    bos = tokenizer.bos_token_id
    return bos is not None and tokenizer("a")["input_ids"][:1] == [bos]


def with_system(messages: list[dict[str, Any]], p: TokenizeParams) -> list[dict[str, Any]]:
    """The messages with tokenize.system_prompt first, unless they have a system turn."""
    if p.system_prompt and not (messages and messages[0]["role"] == "system"):
        return [{"role": "system", "content": p.system_prompt}, *messages]
    return messages


# Templates that print today's date (Llama 3.x) get a fixed one, so the same data gives the same
# tokens on any day, and generation sees what training saw.
FIXED_DATE = "01 Jan 2025"


class Renderer:
    """Renders conversations with one chat template (and tokenizer) as text."""

    def __init__(self, tokenizer: Any, p: TokenizeParams) -> None:
        self.tokenizer, self.p = tokenizer, p
        self.template = chat_template(tokenizer, p)
        self.tool_template = chat_template(tokenizer, p, tools=True)
        added = getattr(tokenizer, "added_tokens_decoder", {}).values()
        # the special and added tokens' texts (<|im_end|>, ...), shortest first
        self.special = sorted({str(t) for t in added} | set(tokenizer.all_special_tokens), key=len)

    def __call__(self, messages: list[dict[str, Any]], tools: list[Any] | None = None,
                 generation_prompt: bool = False) -> str:
        from jinja2 import TemplateError

        if not messages:
            raise RenderError("template_error", "nothing to render before the first turn")
        try:
            return self.tokenizer.apply_chat_template(
                messages, tools=tools, chat_template=self.tool_template if tools else self.template,
                tokenize=False, add_generation_prompt=generation_prompt, date_string=FIXED_DATE)
        except (TemplateError, ValueError, TypeError) as e:  # templates raise all three
            raise RenderError("template_error", f"the chat template refused it: {e}") from None

    def prompt(self, messages: list[dict[str, Any]], tools: list[Any] | None = None) -> str:
        """The text that asks the model for the next assistant turn."""
        return self(with_system(messages, self.p), tools, generation_prompt=True)

    def text(self, conv: dict[str, Any]) -> str:
        """A whole conversation rendered (with tokenize.system_prompt where it has none)."""
        return self(with_system(conv["messages"], self.p), conv.get("tools"))

    def spans(self, conv: dict[str, Any], full: str, char_limit: int | None = None
              ) -> tuple[list[tuple[int, int]], list[int]]:
        """The character span in `full` (the conversation's text) of each trained assistant turn
        (its content and end-of-turn marker) and where each turn ends in the text.

        A turn's text is found for any template as what the conversation rendered whole has
        after the generation prompt before the turn, up to where it parts from the conversation
        rendered up to and including the turn (which a template may close with a suffix of its
        own, such as EOS). One whose renderings disagree (history rendered differently from the
        last turn, say) is a RenderError, never a silent mis-mask. Turns starting past
        `char_limit` are not looked at (they cannot fit the block)."""
        from finetune.data.conversations import trained_turns

        messages, tools = with_system(conv["messages"], self.p), conv.get("tools")
        spans, ends = [], []
        for i, m in enumerate(messages):
            if m["role"] == "tool":
                self._check_context(messages, tools, i, full)
        for i in trained_turns(messages):
            upto = self(messages[: i + 1], tools)
            before = self._before(messages, tools, i, upto)
            if char_limit is not None and len(before) >= char_limit:
                break
            end = self._whole_tokens(full, len(os.path.commonprefix([upto, full])))
            if not full.startswith(before) or end <= len(before):
                raise RenderError("inconsistent_template", f"message {i + 1}: the chat template "
                                  "renders this conversation differently turn by turn, so its "
                                  "assistant turns cannot be found")
            turn = full[len(before):end].rstrip()
            if messages[i]["content"].strip() not in turn:
                raise RenderError("inconsistent_template", f"message {i + 1}: the chat template "
                                  "does not render the assistant's text as it is")
            if messages[i].get("tool_calls"):
                self._check_calls(messages, tools, i, upto)
            spans.append((len(before), len(before) + len(turn)))
            ends.append(end)
        return spans, ends

    def _whole_tokens(self, text: str, end: int) -> int:
        """`end` moved back to the start of a special token it falls inside (`<|im_start|>` and
        `<|endoftext|>` share their first characters)."""
        for token in self.special:
            start = text.rfind(token, max(0, end - len(token) + 1), end + len(token) - 1)
            if start != -1 and start < end < start + len(token):
                end = start
        return end

    def _before(self, messages: list[dict[str, Any]], tools: list[Any] | None, i: int,
                upto: str) -> str:
        """The text before assistant turn i: the generation prompt after the turns before it, or
        for a conversation that opens with the assistant (a greeting), whatever the template
        puts before that turn's text."""
        if i:
            return self(messages[:i], tools, generation_prompt=True)
        content = messages[0]["content"]
        at = upto.rfind(content) if content else -1
        if at < 0:
            raise RenderError("inconsistent_template", "message 1: the chat template does not "
                              "render the assistant's text as it is")
        return upto[:at]

    def _check_calls(self, messages: list[dict[str, Any]], tools: list[Any] | None, i: int,
                     upto: str) -> None:
        """A turn's tool calls must change its text, or the template cannot render them."""
        plain = {k: v for k, v in messages[i].items() if k != "tool_calls"}
        if self([*messages[:i], plain], tools) == upto:
            names = ", ".join(c["function"]["name"] for c in messages[i]["tool_calls"])
            raise RenderError("tools_unsupported", f"message {i + 1}: the chat template does "
                              f"not render tool calls ({names})")

    def _check_context(self, messages: list[dict[str, Any]], tools: list[Any] | None, i: int,
                       full: str) -> None:
        """A tool result must appear in the text, or the template cannot take tool turns."""
        if messages[i]["content"].strip() not in full[len(self(messages[:i], tools)):]:
            raise RenderError("tools_unsupported", f"message {i + 1}: the chat template does not "
                              "render tool results")


def mask(offsets: list[tuple[int, int]], spans: list[tuple[int, int]]) -> list[bool]:
    """Which tokens (by their character offsets) overlap one of the spans: a token that starts
    in the text before a turn but carries its first characters is trained too."""
    return [any(start < b and end > a for a, b in spans) for start, end in offsets]


def encode_chat(conv: dict[str, Any], renderer: Renderer, block_size: int, overlong: str,
                train_on: str) -> tuple[Encoded | None, str]:
    """Token ids and labels of one conversation: IGNORE everywhere but the trained assistant
    turns (their end-of-turn token included; the last one only with train_on=last). Over
    block_size tokens it is cut after the last assistant turn that fits (overlong=truncate) or
    dropped; the second value says which: "", "truncated" or "dropped"."""
    import bisect

    tokenizer = renderer.tokenizer
    full = renderer.text(conv)
    enc = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = enc["input_ids"], enc["offset_mapping"]
    too_long = len(ids) > block_size
    if too_long and overlong == "drop":
        renderer.spans(conv, full, char_limit=0)  # still report a template that cannot render it
        return None, "dropped"
    limit = offsets[block_size][0] if too_long else None  # where the first token past the block starts
    spans, ends = renderer.spans(conv, full, char_limit=limit)
    fate = ""
    if too_long:
        starts = [start for start, _ in offsets]
        fits = [k for k, end in enumerate(ends) if bisect.bisect_left(starts, end) <= block_size]
        if not fits:
            return None, "dropped"
        keep = bisect.bisect_left(starts, ends[fits[-1]])
        ids, offsets, spans, fate = ids[:keep], offsets[:keep], spans[: fits[-1] + 1], "truncated"
    if train_on == "last":
        spans = spans[-1:]
    labels = [i if on else IGNORE for i, on in zip(ids, mask(offsets, spans), strict=True)]
    return Encoded(list(ids), labels), fate


@dataclass(frozen=True)
class EncodedPair:
    """A preference pair as preference tuning reads it (TRL's prompt_ids, chosen_ids,
    rejected_ids): the prompt's tokens, up to and including the generation prompt, and each
    reply's tokens, its end-of-turn marker included."""

    prompt_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[int]


def encode_pair(pair: dict[str, Any], renderer: Renderer, block_size: int) -> EncodedPair | None:
    """A pair of finetune.data.preferences encoded as chat mode encodes the conversation that ends
    with each reply (encode_chat, with the loss on that final turn alone): the tokens it masks
    are the reply, those before it the prompt. None when a conversation is over block_size
    tokens; a RenderError when the template renders the prompt differently before the two
    replies (it could not be scored as one prompt)."""
    prompt = [dict(m, weight=0) if m["role"] == "assistant" else m for m in pair["prompt"]]
    parts = []
    for key in ("chosen", "rejected"):
        conv = {"messages": [*prompt, pair[key]], **({"tools": pair["tools"]} if pair.get("tools") else {})}
        encoded, fate = encode_chat(conv, renderer, block_size, overlong="drop", train_on="last")
        if encoded is None:
            return None
        trained = [i for i, label in enumerate(encoded.labels) if label != IGNORE]
        parts.append((encoded.input_ids[: trained[0]], encoded.input_ids[trained[0]: trained[-1] + 1]))
    (prompt_ids, chosen_ids), (other_prompt, rejected_ids) = parts
    if prompt_ids != other_prompt:
        raise RenderError("inconsistent_template", "the chat template renders the prompt "
                          "differently before the chosen and the rejected reply")
    return EncodedPair(prompt_ids, chosen_ids, rejected_ids)


def reply_prompt(conv: dict[str, Any], renderer: Renderer) -> tuple[str, str]:
    """The history before the last trained assistant turn, rendered to ask for that turn, and
    the turn's text: what evaluate scores greedy replies against. A RenderError where there is
    no history before it."""
    from finetune.data.conversations import trained_turns

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
    special = set(tokenizer.convert_tokens_to_ids(renderer.special))
    ids = [i for i in tokenizer(tail, add_special_tokens=False)["input_ids"] if i in special][:1]
    return list(dict.fromkeys([*ids, tokenizer.eos_token_id]))


# ---------------------------------------------------------------- inference

def _literal(text: str) -> str:
    """`text` as a Jinja expression that prints it verbatim."""
    return "{{ " + json.dumps(text) + " }}" if text else ""


# Text mode: the model continues the prose it is given, so a chat request is answered with the
# continuation of its last user message, as `generate` continues its prompt.
TEXT_TEMPLATE = ("{%- for m in messages if m.role == 'user' %}"
                 "{%- if loop.last %}{{ m.content }}{% endif %}{%- endfor %}")


def pairs_template(tokenizer: Any, p: TokenizeParams) -> str:
    """Pairs mode with tokenize.prompt_template, as a chat template: the last user message as the
    prompt (with BOS where training had one), then an assistant reply to it, if any, ending in
    EOS. Earlier turns and system messages are left out, as in training."""
    head = "{{ bos_token }}" if adds_bos(tokenizer) else ""
    prompt = "{{ ns.prompt }}".join(_literal(part) for part in p.prompt_template.split("{prompt}"))
    return ("{%- set ns = namespace(prompt=none, answer=none) %}"
            "{%- for m in messages %}"
            "{%- if m.role == 'user' %}{% set ns.prompt = m.content %}{% set ns.answer = none %}"
            "{%- elif m.role == 'assistant' and ns.prompt is not none %}{% set ns.answer = m.content %}"
            "{%- endif %}{%- endfor %}"
            "{%- if ns.prompt is not none %}" + head + prompt +
            "{%- if ns.answer is not none %}{{ ns.answer }}{{ eos_token }}{% endif %}{%- endif %}")


def chat_preamble(p: TokenizeParams) -> str:
    """What Renderer.prompt adds to a conversation before the template: tokenize.system_prompt
    where there is no system turn, and the fixed date."""
    date = "{%- if date_string is not defined %}{% set date_string = " + json.dumps(FIXED_DATE) + \
        " %}{% endif %}"
    if not p.system_prompt:
        return date
    system = json.dumps({"role": "system", "content": p.system_prompt})
    return (date + "{%- if not (messages and messages[0].role == 'system') %}"
            "{% set messages = [" + system + "] + messages %}{% endif %}")


# The sampling a user gets unless they ask for other settings: `generate`'s defaults, and written
# into models/finetuned/generation_config.json, which serve, vLLM and the Ollama Modelfile read.
SAMPLING: dict[str, Any] = {"do_sample": True, "temperature": 0.8, "top_p": 0.95,
                            "repetition_penalty": 1.1}


@dataclass(frozen=True)
class Inference:
    """How the model is asked, defined once and written by tokenize: the mode and the tokenize
    params it was trained with (how prompts and conversations are rendered), the chat template
    that renders a request as training rendered its examples, the tokens that end a reply, and
    the default sampling. Evaluate, generate, serve and export read it (read_inference)."""

    chat_template: str
    stop_token_ids: list[int]
    mode: str = "text"
    tokenize: dict[str, Any] = field(default_factory=dict)
    sampling: dict[str, Any] = field(default_factory=lambda: dict(SAMPLING))

    @property
    def params(self) -> TokenizeParams:
        return TokenizeParams.model_validate(self.tokenize)

    def renderer(self, tokenizer: Any) -> Renderer:
        """Conversations rendered as the model is asked (pairs and chat mode): with this chat
        template, which holds the system prompt and date of chat_preamble."""
        if self.mode == "text":
            raise UserError("mode: text: the model is not asked in turns; preference tuning "
                            "needs mode pairs or chat")
        return Renderer(tokenizer, self.params.model_copy(
            update={"chat_template": self.chat_template, "system_prompt": None}))

    def samples(self, prompts: list[str], tokenizer: Any) -> list[str]:
        """Prompts as the model is asked them: pairs rendered with the template, chat as a user
        message with the chat template, text as they are."""
        if self.mode == "pairs":
            return render_prompts(prompts, tokenizer, self.params)
        if self.mode == "chat":
            renderer = Renderer(tokenizer, self.params)
            return [renderer.prompt([{"role": "user", "content": q}]) for q in prompts]
        return list(prompts)


def inference_for(model: Path, asked: Path | None = None) -> Inference:
    """How to ask the model in a folder: `asked` (an inference.json) when given, else the
    folder's own (train copies it into models/finetuned), else the pipeline's
    data/tokenized/inference.json, else as plain text (a model from elsewhere)."""
    for candidate in ([asked] if asked else [Path(model) / INFERENCE_FILE, PATHS.inference_file]):
        if candidate.is_file() or asked:
            return read_inference(candidate)
    return Inference(TEXT_TEMPLATE, [], mode="text")


def read_inference(path: Path) -> Inference:
    """How a model is asked: data/tokenized/inference.json (or that file in a model folder)."""
    path = Path(path)
    file = path / INFERENCE_FILE if path.is_dir() else path
    try:
        return Inference(**json.loads(file.read_text(encoding="utf-8")))
    except FileNotFoundError:
        raise UserError(f"{file}: missing; run the stages before this one (uv run dvc repro)") from None


def inference(tokenizer: Any, mode: str, p: TokenizeParams) -> Inference:
    """The chat template and stop tokens of a model trained in `mode` with these params. For
    each mode, the template's generation prompt for a conversation is what generate would
    render for it (tests check this token for token)."""
    eos = [tokenizer.eos_token_id]
    asked = {"mode": mode, "tokenize": p.model_dump(mode="json"), "sampling": dict(SAMPLING)}
    if mode == "text":
        return Inference(TEXT_TEMPLATE, eos, **asked)
    if mode == "pairs" and not p.use_chat_template:
        return Inference(pairs_template(tokenizer, p), eos, **asked)
    if mode == "pairs":  # rendered with the tokenizer's own template, without a system turn
        p = p.model_copy(update={"chat_template": None, "system_prompt": None})
    renderer = Renderer(tokenizer, p)
    return Inference(chat_preamble(p) + renderer.template, stop_token_ids(renderer), **asked)  # EOS last
