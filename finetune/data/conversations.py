"""Conversations in the formats people have, brought to one form: OpenAI's `messages`, ShareGPT's
`conversations`, pairs-style records (one turn), and long-form tables of turns (one row per turn).

The one form is a dict `{"messages": [...], "tools": [...]?}` whose messages have a `role`
(system, user, assistant or tool) and a text `content`; an assistant message may carry
`tool_calls` (a function call: an assistant turn the model learns), a tool message is a tool's
result (context, never trained on), and an assistant message with `weight: 0` (OpenAI's
fine-tuning format) is context too. It is stored as one JSON string per conversation."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

ROLES = {
    "system": "system",
    "user": "user", "human": "user", "customer": "user", "client": "user", "prompter": "user",
    "assistant": "assistant", "gpt": "assistant", "bot": "assistant", "model": "assistant",
    "ai": "assistant", "chatgpt": "assistant", "agent": "assistant", "support": "assistant",
    "tool": "tool", "observation": "tool", "function": "tool", "ipython": "tool",
    "function_call": "function_call",  # ShareGPT: an assistant turn that calls a tool
}
MERGED = {"user", "assistant"}  # consecutive plain turns of one of these roles become one turn
MESSAGE_FIELDS = ("messages", "conversations", "conversation", "dialogue", "turns")
ROLE_KEYS = ("role", "from", "speaker", "author")
CONTENT_KEYS = ("content", "value", "text", "message")
TEXT_PART_KEYS = ("text", "value", "content")


class ConversationError(ValueError):
    """A conversation that cannot be used: `reason` is the metrics key, the message says why."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def _first_key(record: dict[str, Any], keys: tuple[str, ...]) -> str | None:
    return next((k for k in keys if k in record), None)


def content_text(content: Any, where: str) -> str:
    """A message's content as text: a string, or the text parts of a list of parts
    (`{"type": "text", "text"|"value": ...}`); images and other media are refused."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, (int, float)) and not isinstance(content, bool):
        return str(content)
    if isinstance(content, dict):
        content = [content]
    if not isinstance(content, list):
        raise ConversationError("wrong_type", f"{where}: content is {type(content).__name__}, "
                                "not text or a list of parts")
    texts = []
    for part in content:
        if isinstance(part, str):
            texts.append(part)
            continue
        kind = part.get("type", "text") if isinstance(part, dict) else type(part).__name__
        key = _first_key(part, TEXT_PART_KEYS) if isinstance(part, dict) else None
        if kind != "text" or key is None or not isinstance(part[key], str):
            raise ConversationError("non_text_content", f"{where}: a part of type {kind!r}; "
                                    "only text content can be trained on")
        texts.append(part[key])
    return "\n".join(texts)


def _is_parts(content: Any) -> bool:
    """A list of content parts (or one part), as opposed to any other JSON value."""
    parts = content if isinstance(content, list) else [content]
    return all(isinstance(p, str) or (isinstance(p, dict) and "type" in p) for p in parts)


def _arguments(value: Any) -> Any:
    """A call's arguments as an object where they are JSON (chat templates expect a mapping)."""
    if isinstance(value, str):
        try:
            parsed = json.loads(value)
        except ValueError:
            return value
        return parsed if isinstance(parsed, dict) else value
    return value


def tool_calls(message: dict[str, Any], where: str) -> list[dict[str, Any]]:
    """The function calls of an assistant message (OpenAI `tool_calls` or legacy
    `function_call`), as [{"type": "function", "function": {"name", "arguments"}}]."""
    calls = message.get("tool_calls")
    if calls is None and isinstance(message.get("function_call"), dict):
        calls = [{"type": "function", "function": message["function_call"]}]
    if calls is None:
        return []
    if not isinstance(calls, list):
        raise ConversationError("invalid_tool_call", f"{where}: tool_calls is not a list")
    out = []
    for call in calls:
        function = call.get("function", call) if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise ConversationError("invalid_tool_call", f"{where}: a tool call without a "
                                    "function name")
        out.append({"type": "function", "function": {
            "name": function["name"], "arguments": _arguments(function.get("arguments", {}))}})
    return out


def _sharegpt_call(text: str, where: str) -> list[dict[str, Any]]:
    """A ShareGPT `function_call` turn: its value is the call as JSON (name and arguments)."""
    try:
        call = json.loads(text)
    except ValueError:
        call = None
    calls = call if isinstance(call, list) else [call]
    if not all(isinstance(c, dict) and isinstance(c.get("name"), str) for c in calls):
        raise ConversationError("invalid_tool_call", f"{where}: a function_call turn whose value "
                                "is not a JSON call with a name")
    return [{"type": "function", "function": {"name": c["name"],
                                              "arguments": _arguments(c.get("arguments", {}))}}
            for c in calls]


def message(raw: Any, index: int) -> dict[str, Any]:
    """One message in the one form (see the module docstring)."""
    where = f"message {index}"
    if not isinstance(raw, dict):
        raise ConversationError("wrong_type", f"{where} is {type(raw).__name__}, not an object")
    role_key = _first_key(raw, ROLE_KEYS)
    if role_key is None or not isinstance(raw[role_key], str):
        raise ConversationError("missing_role", f"{where} has no role (expected 'role' or 'from')")
    name = raw[role_key]
    role = ROLES.get(name.strip().lower())
    if role is None:
        raise ConversationError("unknown_role", f"{where}: unknown role {name!r} (known: "
                                f"{', '.join(sorted(ROLES))})")
    where = f"{where} ({name})"
    content_key = _first_key(raw, CONTENT_KEYS)
    content = raw[content_key] if content_key else None
    if role == "tool" and isinstance(content, (dict, list)) and not _is_parts(content):
        content = json.dumps(content, ensure_ascii=False)  # a tool's result as an object
    text = content_text(content, where)
    out: dict[str, Any] = {"role": role, "content": text}
    if role == "function_call":
        out = {"role": "assistant", "content": "", "tool_calls": _sharegpt_call(text, where)}
    elif role == "assistant" and (calls := tool_calls(raw, where)):
        out["tool_calls"] = calls
    if not out["content"].strip() and not out.get("tool_calls"):
        raise ConversationError("empty_content", f"{where}: empty content")
    if role == "tool":
        for key in ("tool_call_id", "name"):
            if isinstance(raw.get(key), str):
                out[key] = raw[key]
    if out["role"] == "assistant" and str(raw.get("weight", 1)).strip().lower() in {"0", "0.0", "false"}:
        out["weight"] = 0
    return out


def merge_runs(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Consecutive plain user turns (or plain assistant turns) joined into one, with a blank line
    between: many templates require roles to alternate, and two replies in a row are one reply."""
    out: list[dict[str, Any]] = []
    for m in messages:
        plain = m["role"] in MERGED and set(m) == {"role", "content"}
        if out and plain and set(out[-1]) == {"role", "content"} and out[-1]["role"] == m["role"]:
            out[-1] = {"role": m["role"], "content": f"{out[-1]['content']}\n\n{m['content']}"}
        else:
            out.append(dict(m))
    return out


def trained_turns(messages: list[dict[str, Any]]) -> list[int]:
    """Indices of the assistant turns the loss is on (all but those with weight 0)."""
    return [i for i, m in enumerate(messages) if m["role"] == "assistant" and m.get("weight", 1)]


def conversation(raw_messages: Any, system: Any = None, tools: Any = None) -> dict[str, Any]:
    """A list of raw messages (any of the known formats) as one conversation in the one form."""
    if not isinstance(raw_messages, list):
        raise ConversationError("wrong_type", f"the messages are {type(raw_messages).__name__}, "
                                "not a list")
    messages = [message(m, i) for i, m in enumerate(raw_messages, 1)]
    if isinstance(system, str) and system.strip() and not (messages and messages[0]["role"] == "system"):
        messages.insert(0, {"role": "system", "content": system})
    messages = merge_runs(messages)
    if not trained_turns(messages):
        raise ConversationError("no_assistant_turn", "no assistant turn to learn from")
    out: dict[str, Any] = {"messages": messages}
    if isinstance(tools, str):  # ShareGPT keeps the tool definitions as a JSON string
        try:
            tools = json.loads(tools)
        except ValueError:
            tools = None
    if isinstance(tools, list) and tools:
        if not all(isinstance(t, dict) and isinstance(
                (t["function"] if isinstance(t.get("function"), dict) else t).get("name"), str)
                for t in tools):
            raise ConversationError("invalid_tools", "'tools' must be a list of function "
                                    "definitions, each with a name")
        out["tools"] = tools
    return out


def from_pair(prompt: str, response: str) -> dict[str, Any]:
    """A prompt/response pair as a one-turn conversation."""
    return {"messages": [{"role": "user", "content": prompt},
                         {"role": "assistant", "content": response}]}


def messages_field(record: dict[str, Any], configured: str | None) -> str | None:
    """The field of a record holding its messages: the configured one, else the first of
    MESSAGE_FIELDS it has."""
    if configured:
        return configured if configured in record else None
    return _first_key(record, MESSAGE_FIELDS)


def from_record(record: dict[str, Any], field: str) -> dict[str, Any]:
    """A record holding a list of messages (OpenAI or ShareGPT) as a conversation. The list may
    also arrive as a JSON string (a CSV cell)."""
    raw = record[field]
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except ValueError:
            raise ConversationError("wrong_type", f"'{field}' is text, not a list of messages "
                                    "(nor the JSON of one)") from None
    return conversation(raw, record.get("system"), record.get("tools"))


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and value != value) or not str(value).strip()


def turn_order(values: list[Any]) -> list[int]:
    """Positions sorted by turn: numerically when every value is a number, else as text (ISO
    timestamps sort this way); ties keep file order. A missing value is a ConversationError:
    any place given to it would be a guess."""
    if any(map(_missing, values)):
        raise ConversationError("missing_turn", f"a turn without its order ({sum(map(_missing, values))} "
                                f"of {len(values)} rows)")
    try:
        keys: list[Any] = [float(v) for v in values]
    except (TypeError, ValueError):
        keys = [str(v).strip() for v in values]
    return sorted(range(len(values)), key=lambda i: keys[i])


class Turns(list):
    """The messages of a conversation gathered from a table of turns, and the group its rows name
    (ingest.group_field: the first turn that has one)."""

    group: str = ""


def group_turns(rows: list[tuple[str, dict[str, Any]]], conversation_key: str,
                turn_key: str | None, role_key: str, content_key: str, group_key: str | None = None
                ) -> Iterator[tuple[str, Any]]:
    """Long-form turn rows grouped into conversations in order of first appearance, each ordered
    by its turn column (or file order). Yields (position, Turns or error) per conversation,
    and (position, error) for a row without a conversation id."""
    groups: dict[str, list[dict[str, Any]]] = {}
    first_row: dict[str, str] = {}
    for position, row in rows:
        cid = row.get(conversation_key)
        if _missing(cid):
            yield position, ConversationError("missing_conversation_id",
                                              f"no conversation id ('{conversation_key}')")
            continue
        cid = str(cid).strip()
        groups.setdefault(cid, []).append(row)
        first_row.setdefault(cid, position)
    for cid, turns in groups.items():
        where = f"{first_row[cid]} (conversation {cid})"
        if turn_key:
            try:
                turns = [turns[i] for i in turn_order([t.get(turn_key) for t in turns])]
            except ConversationError as err:
                yield where, err
                continue
        out = Turns({"role": t.get(role_key), "content": t.get(content_key)} for t in turns)
        if group_key:
            out.group = next((str(t[group_key]).strip() for t in turns
                              if not _missing(t.get(group_key))), "")
        yield where, out


def dumps(conv: dict[str, Any]) -> str:
    """The stored form: compact, non-ASCII kept, keys in the order this module writes them (and
    tool schemas and arguments in the user's order, which is what the model is trained on)."""
    return json.dumps(conv, ensure_ascii=False, separators=(",", ":"))


def loads(text: str) -> dict[str, Any]:
    return json.loads(text)


def text_chars(conv: dict[str, Any]) -> int:
    """Characters of text in a conversation (what clean.min_chars counts)."""
    return sum(len(m["content"]) for m in conv["messages"])
