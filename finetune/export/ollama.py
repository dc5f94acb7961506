"""The Ollama Modelfile of an exported GGUF: the model folder's chat template in Ollama's Go
template syntax, its default system prompt, stop tokens and sampling, so that
`ollama create NAME -f Modelfile` asks the model as training did.

A Jinja chat template cannot be translated in general, so it is read by what it renders: each
role's text around a message's content, the generation prompt and the system prompt it adds,
found by rendering placeholder conversations one message at a time. The Go template built from
them is checked by rendering the same conversations both ways; where they differ, the Modelfile
has no TEMPLATE and Ollama falls back to the chat template inside the GGUF file."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

ROLES = ("system", "user", "assistant")
MARK = {role: f"XX{role.upper()}{{}}XX" for role in ROLES}  # placeholder contents, no spaces


@dataclass
class Template:
    """A chat format in pieces: each role's text before and after its content, what asks for the
    reply, and the system prompt added to conversations without one. `last_user_only`: only the
    last user message is rendered (text mode, pairs mode's prompt template)."""

    wrap: dict[str, tuple[str, str]] = field(default_factory=dict)
    generation: str = ""
    default_system: str | None = None
    last_user_only: bool = False

    def render(self, messages: list[dict[str, str]]) -> str:
        """What Ollama renders from the Go template (go_template) for these messages: the same
        logic, written in Python to check the pieces against the Jinja template."""
        if self.last_user_only:
            last = messages[-1]
            prefix, suffix = self.wrap["user"]
            return prefix + last["content"] + suffix if last["role"] == "user" else ""
        if self.default_system is not None and messages[0]["role"] != "system":
            messages = [{"role": "system", "content": self.default_system}, *messages]
        text = "".join(self.wrap[m["role"]][0] + m["content"] + self.wrap[m["role"]][1]
                       for m in messages if m["role"] in self.wrap)
        return text + self.generation


def _chunk(text: str, mark: str) -> tuple[str, str] | None:
    before, found, after = text.partition(mark)
    return (before, after) if found else None


def read_template(apply: Any) -> Template | None:
    """The pieces of the chat template behind `apply(messages, generation_prompt) -> text`, or
    None where they are not consistent (a template that renders a message differently by its
    position, say)."""
    user = [{"role": "user", "content": MARK["user"].format(1)}]
    probe = [*user, {"role": "assistant", "content": MARK["assistant"].format(1)},
             {"role": "user", "content": MARK["user"].format(2)}]
    from jinja2 import TemplateError

    try:
        if MARK["user"].format(1) not in apply(probe, True):
            pieces = _chunk(apply(probe[-1:], True), MARK["user"].format(2))
            return Template({"user": pieces}, last_user_only=True) if pieces else None
        return _read_chat(apply)
    except (TemplateError, ValueError, TypeError, KeyError, IndexError):  # what templates raise
        return None  # e.g. one that refuses a system turn: Ollama reads the GGUF's instead


def _read_chat(apply: Any) -> Template | None:
    conv = [{"role": "system", "content": MARK["system"].format(1)},
            {"role": "user", "content": MARK["user"].format(1)},
            {"role": "assistant", "content": MARK["assistant"].format(1)},
            {"role": "user", "content": MARK["user"].format(2)},
            {"role": "assistant", "content": MARK["assistant"].format(2)}]
    template, before = Template(), ""
    for k, message in enumerate(conv, start=1):
        text = apply(conv[:k], False)
        if not text.startswith(before):
            return None
        pieces = _chunk(text[len(before):], message["content"])
        if pieces is None or template.wrap.setdefault(message["role"], pieces) != pieces:
            return None
        before = text
    template.generation = apply(conv[:4], True)[len(apply(conv[:4], False)):]
    alone = apply(conv[1:2], False)  # no system turn: does the template add one?
    head, tail = template.wrap["system"]
    if alone.startswith(head) and tail and tail in alone[len(head):]:
        template.default_system = alone[len(head):].split(tail, 1)[0]
    checks = [conv[:4], conv[1:4], conv[1:2], conv[:2]]
    rendered = [apply(c, True) for c in checks]
    if [template.render(c) for c in checks] != rendered:
        return None
    return template


def _go_text(text: str) -> str:
    """Literal text in a Go template: verbatim, except an opening delimiter."""
    return text.replace("{{", '{{ "{{" }}')


def go_template(t: Template) -> str:
    """The template in Ollama's syntax: the chat messages (`.Messages`), or for the generate API
    the system prompt and prompt (`.System`, `.Prompt`). No whitespace trimming: every
    character outside the actions is the model's."""
    if t.last_user_only:
        prefix, suffix = map(_go_text, t.wrap["user"])
        return ("{{ if .Messages }}{{ range $i, $m := .Messages }}"
                '{{ if and (eq $m.Role "user") (eq (len (slice $.Messages $i)) 1) }}'
                f"{prefix}{{{{ $m.Content }}}}{suffix}{{{{ end }}}}{{{{ end }}}}"
                f"{{{{ else }}}}{prefix}{{{{ .Prompt }}}}{suffix}{{{{ end }}}}")
    cases = "".join(
        f'{{{{ {"if" if i == 0 else "else if"} eq .Role "{role}" }}}}'
        f"{_go_text(before)}{{{{ .Content }}}}{_go_text(after)}"
        for i, (role, (before, after)) in enumerate(t.wrap.items()))
    (sys_before, sys_after), (user_before, user_after) = t.wrap["system"], t.wrap["user"]
    generation = _go_text(t.generation)
    return ("{{ if .Messages }}{{ range .Messages }}" + cases + "{{ end }}{{ end }}" + generation +
            "{{ else }}{{ if .System }}" + _go_text(sys_before) + "{{ .System }}" + _go_text(sys_after) +
            "{{ end }}{{ if .Prompt }}" + _go_text(user_before) + "{{ .Prompt }}" + _go_text(user_after) +
            "{{ end }}" + generation + "{{ .Response }}{{ end }}")


def modelfile(gguf_name: str, tokenizer: Any, generation: Any, context: int) -> tuple[str, str]:
    """The Modelfile text for the GGUF file `gguf_name` beside it, and how its template was
    found ("derived" or "from the GGUF file"). `generation` says the stop tokens (eos_token_id)
    and default sampling: the Inference of the model folder, or a generation config."""
    from finetune.text.prompts import adds_bos

    bos = tokenizer.bos_token if adds_bos(tokenizer) else None

    def apply(messages: list[dict[str, str]], generation_prompt: bool) -> str:
        text = tokenizer.apply_chat_template(messages, tokenize=False,
                                             add_generation_prompt=generation_prompt)
        return text[len(bos):] if bos and text.startswith(bos) else text  # llama.cpp adds BOS

    template = read_template(apply)
    lines = ["# ollama create NAME -f Modelfile, then: ollama run NAME", f"FROM ./{gguf_name}"]
    go = go_template(template) if template else None
    if go is not None and '"""' not in go:
        lines.append(f'TEMPLATE """{go}"""')
        if template.default_system and '"""' not in template.default_system:
            lines.append(f'SYSTEM """{template.default_system}"""')
        source = "derived"
    else:
        source = "from the GGUF file"
    stops = generation.eos_token_id
    stops = stops if isinstance(stops, list) else [stops]
    lines += [f"PARAMETER stop {json.dumps(tokenizer.convert_ids_to_tokens(i))}" for i in stops
              if i is not None]
    for key, name in (("temperature", "temperature"), ("top_p", "top_p"),
                      ("repetition_penalty", "repeat_penalty")):
        if getattr(generation, key, None) is not None:
            lines.append(f"PARAMETER {name} {getattr(generation, key)}")
    lines.append(f"PARAMETER num_ctx {min(context, 4096)}")
    return "\n".join(lines) + "\n", source
