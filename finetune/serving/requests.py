"""The requests `serve` answers, checked against the OpenAI API's schema before any work: the
types, ranges and finite numbers of each field, the fields that are supported, the stop
strings, the logit_bias keys and valid Unicode everywhere. A request that fails gets a 400
naming the field (BadRequest); one that passes cannot make the model's code raise."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

ROLES = {"system", "developer", "user", "assistant", "tool"}
MAX_STOP, MAX_STOP_CHARS = 4, 200  # OpenAI: up to 4 stop sequences
MAX_BIAS = 300  # logit_bias entries
SEED_RANGE = (-(2**63), 2**63 - 1)

# Accepted and without effect here (what the OpenAI API does with them is billing, storage or
# tracing): "user", "metadata", "store", "service_tier", "parallel_tool_calls" (no tools).
IGNORED = {"user", "metadata", "store", "service_tier", "parallel_tool_calls", "model"}
# Part of the OpenAI API, not served by this server: a 400 that says so, never silence.
UNSUPPORTED = {
    "tools": "tool calling is not supported by this server",
    "tool_choice": "tool calling is not supported by this server",
    "functions": "function calling is not supported by this server",
    "function_call": "function calling is not supported by this server",
    "audio": "audio output is not supported", "modalities": "only text output is supported",
    "prediction": "predicted outputs are not supported",
    "reasoning_effort": "this model has no reasoning effort setting",
    "web_search_options": "web search is not supported",
    "suffix": "suffix (insertion) is not supported", "best_of": "best_of is not supported",
}


class BadRequest(Exception):
    """A request that cannot be answered as sent: a 400 naming the field (`param`)."""

    def __init__(self, param: str | None, message: str) -> None:
        super().__init__(f"{param}: {message}" if param else message)
        self.param = param


@dataclass
class Ask:
    """What a checked request asks of the model."""

    messages: list[dict[str, str]] | None  # chat; else `prompt`
    prompt: str | None
    max_tokens: int | None
    temperature: float | None  # None: the model's default sampling
    top_p: float | None
    seed: int | None
    stop: list[str]
    logit_bias: dict[int, float]
    frequency_penalty: float
    presence_penalty: float
    stream: bool
    include_usage: bool


def parse_body(raw: bytes) -> dict[str, Any]:
    """The JSON object of a request body: UTF-8, standard JSON (no NaN or Infinity)."""
    def no_constants(name: str) -> Any:
        raise BadRequest(None, f"the body is not valid JSON: {name} is not a JSON number")

    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest(None, "the body is not valid UTF-8") from None
    try:
        body = json.loads(text, parse_constant=no_constants)
    except json.JSONDecodeError as e:
        raise BadRequest(None, f"the body is not valid JSON ({e.msg} at character {e.pos})") from None
    except RecursionError:
        raise BadRequest(None, "the body is not valid JSON: nested too deeply") from None
    except ValueError as e:  # e.g. an integer of more than 4,300 digits
        raise BadRequest(None, f"the body is not valid JSON ({e})") from None
    if not isinstance(body, dict):
        raise BadRequest(None, "the body must be a JSON object")
    return body


def text(value: Any, param: str, empty: bool = True) -> str:
    if not isinstance(value, str):
        raise BadRequest(param, f"must be a string, not {kind(value)}")
    if not empty and not value:
        raise BadRequest(param, "must not be empty")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise BadRequest(param, "is not valid Unicode (a lone UTF-16 surrogate)") from None
    return value


def kind(value: Any) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "a list",
            dict: "an object", type(None): "null"}.get(type(value), type(value).__name__)


def integer(body: dict[str, Any], key: str, low: int, high: int) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadRequest(key, f"must be an integer, not {kind(value)}")
    if not low <= value <= high:
        raise BadRequest(key, f"must be between {low} and {high}, not {value}")
    return value


def number(body: dict[str, Any], key: str, low: float, high: float, open_low: bool = False) -> float | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise BadRequest(key, f"must be a number, not {kind(value)}")
    try:
        value = float(value)
    except OverflowError:
        raise BadRequest(key, "must be a finite number") from None
    if not math.isfinite(value) or value < low or value > high or (open_low and value == low):
        side = "(" if open_low else "["
        raise BadRequest(key, f"must be a number in {side}{low:g}, {high:g}], not {value:g}")
    return value


def boolean(body: dict[str, Any], key: str) -> bool:
    value = body.get(key, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise BadRequest(key, f"must be true or false, not {kind(value)}")
    return value


def check_fields(body: dict[str, Any], known: set[str]) -> None:
    for key in body:
        if key in UNSUPPORTED:
            if body[key] in (None, [], {}):
                continue
            raise BadRequest(key, UNSUPPORTED[key])
        if key not in known and key not in IGNORED:
            raise BadRequest(key, "is not a field of this endpoint (the OpenAI API's)")


def content_text(content: Any, param: str) -> str:
    """A message's content: a string, or a list of text parts (joined)."""
    if isinstance(content, str):
        return text(content, param)
    if isinstance(content, list):
        pieces = []
        for j, part in enumerate(content):
            where = f"{param}[{j}]"
            if not isinstance(part, dict) or not isinstance(part.get("type"), str):
                raise BadRequest(where, "must be a content part: {\"type\": \"text\", \"text\": ...}")
            if part["type"] != "text":
                raise BadRequest(f"{where}.type", f"only text parts are supported, not {part['type']!r}")
            pieces.append(text(part.get("text"), f"{where}.text"))
        return "".join(pieces)
    raise BadRequest(param, f"must be a string or a list of text parts, not {kind(content)}")


def messages_of(body: dict[str, Any], limit: int = 10_000) -> list[dict[str, str]]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("messages", "must be a non-empty list of {role, content} objects")
    if len(messages) > limit:
        raise BadRequest("messages", f"at most {limit} messages, not {len(messages)}")
    out = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise BadRequest(f"messages[{i}]", "must be an object with role and content")
        role = message.get("role")
        if role not in ROLES:
            given = repr(role) if isinstance(role, str | None) else kind(role)
            raise BadRequest(f"messages[{i}].role", f"must be one of {', '.join(sorted(ROLES))}, "
                             f"not {given}")
        for key in message:
            if key not in ("role", "content", "name"):
                raise BadRequest(f"messages[{i}].{key}", "is not supported (text messages only)")
        if "name" in message:
            text(message["name"], f"messages[{i}].name")
        out.append({"role": "system" if role == "developer" else role,
                    "content": content_text(message.get("content"), f"messages[{i}].content")})
    return out


def stop_of(body: dict[str, Any]) -> list[str]:
    stop = body.get("stop")
    if stop is None:
        return []
    stops = [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, list):
        raise BadRequest("stop", f"must be a string or a list of strings, not {kind(stop)}")
    if len(stops) > MAX_STOP:
        raise BadRequest("stop", f"at most {MAX_STOP} stop sequences, not {len(stops)}")
    for i, s in enumerate(stops):
        where = "stop" if isinstance(stop, str) else f"stop[{i}]"
        text(s, where, empty=False)
        if len(s) > MAX_STOP_CHARS:
            raise BadRequest(where, f"at most {MAX_STOP_CHARS} characters, not {len(s)}")
    return stops


def bias_of(body: dict[str, Any], vocabulary: int) -> dict[int, float]:
    bias = body.get("logit_bias")
    if bias is None:
        return {}
    if not isinstance(bias, dict):
        raise BadRequest("logit_bias", f"must be an object of token id: bias, not {kind(bias)}")
    if len(bias) > MAX_BIAS:
        raise BadRequest("logit_bias", f"at most {MAX_BIAS} entries, not {len(bias)}")
    out = {}
    for key, value in bias.items():
        where = f"logit_bias[{key!r}]"
        if not (key.isascii() and key.isdigit() and len(key) <= 12) or not int(key) < vocabulary:
            raise BadRequest("logit_bias", f"{key!r} is not a token id of this model "
                             f"(0 to {vocabulary - 1})")
        out[int(key)] = number({where: value}, where, -100, 100)
    return out


def stream_options(body: dict[str, Any], stream: bool) -> bool:
    options = body.get("stream_options")
    if options is None:
        return False
    if not stream:
        raise BadRequest("stream_options", "is only allowed with stream: true")
    if not isinstance(options, dict) or set(options) - {"include_usage", "include_obfuscation"}:
        raise BadRequest("stream_options", "must be {\"include_usage\": true|false}")
    return boolean(options, "include_usage")


def common(body: dict[str, Any], vocabulary: int, tokens_key: tuple[str, ...]) -> dict[str, Any]:
    """The fields chat and plain completions share."""
    n = integer(body, "n", 1, 128)
    if n not in (None, 1):
        raise BadRequest("n", f"only 1 choice per request is supported, not {n}")
    for key in ("logprobs", "top_logprobs", "echo"):
        value = body.get(key)
        if value not in (None, False, 0):
            raise BadRequest(key, "is not supported by this server")
    stream = boolean(body, "stream")
    max_tokens = None
    for key in tokens_key:
        got = integer(body, key, 1, 2**31 - 1)
        max_tokens = got if got is not None else max_tokens
    if body.get("response_format") not in (None, {"type": "text"}):
        raise BadRequest("response_format", "only {\"type\": \"text\"} is supported")
    return {"max_tokens": max_tokens, "temperature": number(body, "temperature", 0, 2),
            "top_p": number(body, "top_p", 0, 1, open_low=True),
            "seed": integer(body, "seed", *SEED_RANGE), "stop": stop_of(body),
            "logit_bias": bias_of(body, vocabulary),
            "frequency_penalty": number(body, "frequency_penalty", -2, 2) or 0.0,
            "presence_penalty": number(body, "presence_penalty", -2, 2) or 0.0,
            "stream": stream, "include_usage": stream_options(body, stream)}


CHAT_FIELDS = {"messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "n",
               "stream", "stream_options", "stop", "seed", "logit_bias", "frequency_penalty",
               "presence_penalty", "logprobs", "top_logprobs", "response_format"}
COMPLETION_FIELDS = {"prompt", "max_tokens", "temperature", "top_p", "n", "stream",
                     "stream_options", "stop", "seed", "logit_bias", "frequency_penalty",
                     "presence_penalty", "logprobs", "echo"}


def chat_request(body: dict[str, Any], vocabulary: int) -> Ask:
    check_fields(body, CHAT_FIELDS)
    fields = common(body, vocabulary, ("max_tokens", "max_completion_tokens"))
    return Ask(messages=messages_of(body), prompt=None, **fields)


def completion_request(body: dict[str, Any], vocabulary: int) -> Ask:
    check_fields(body, COMPLETION_FIELDS)
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if isinstance(prompt, list):
        raise BadRequest("prompt", "one prompt per request (a string, or a list of one string)")
    fields = common(body, vocabulary, ("max_tokens",))
    if fields["max_tokens"] is None:
        fields["max_tokens"] = 16  # the OpenAI API's default for completions
    return Ask(messages=None, prompt=text(prompt, "prompt", empty=False), **fields)
