"""Preference pairs in the formats people have, brought to one form for preference tuning (DPO).

The one form is a dict `{"prompt": [...], "chosen": {...}, "rejected": {...}, "tools"?: [...]}`:
the conversation up to the reply (messages in the one form of finetune.data.conversations, its
last turn a user or tool turn), and the two final assistant turns, the preferred and the other.
A pair differs only in that final turn, so both replies are rendered after the same prompt tokens.

Formats read, record by record:
- TRL's explicit prompt, as strings `{"prompt", "chosen", "rejected"}` or as message lists (the
  prompt's messages, each reply a list of one assistant message);
- TRL's implicit prompt: `{"chosen": [...], "rejected": [...]}`, two whole conversations that
  share everything but the final assistant turn (also `chosen_messages` / `rejected_messages`);
- ShareGPT's (LLaMA-Factory): `{"conversations": [...], "chosen": {...}, "rejected": {...}}`;
- OpenAI's preference fine-tuning JSONL: `{"input": {"messages": [...], "tools"?},
  "preferred_output": [...], "non_preferred_output": [...]}`;
- the ratings `uv run rate` writes (metrics/human_eval.json), each rated prompt a pair: the
  output the person preferred chosen, the other rejected; ties and skips are left out.
Contents may be strings or lists of text parts, and roles any of those chat mode knows."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from finetune.config.split import SplitParams
from finetune.data.conversations import ConversationError, conversation, merge_runs, message
from finetune.data.inputs import BadInput
from finetune.data.readers import decode, json_records, jsonl_records
from finetune.data.records import digest
from finetune.report.ratings import samples_hash

PAIR_KEYS = (("chosen", "rejected"), ("chosen_messages", "rejected_messages"),
             ("preferred_output", "non_preferred_output"))


class PairError(ConversationError):
    """A record that is no usable pair: `reason` is the metrics key, the message says why."""


def _decoded(raw: Any) -> Any:
    """A table cell (CSV, Parquet) holding the JSON of a message or a list of them, as that;
    any other text as it is."""
    if isinstance(raw, str) and raw.lstrip()[:1] in ("[", "{"):
        try:
            value = json.loads(raw)
        except ValueError:
            return raw
        items = value if isinstance(value, list) else [value]
        if items and all(isinstance(m, dict) for m in items):
            return value
    return raw


def _messages(raw: Any, what: str) -> list[dict[str, Any]]:
    raw = _decoded(raw)
    if isinstance(raw, str):
        raise PairError("wrong_type", f"'{what}' is text, not a list of messages")
    if isinstance(raw, dict):
        raw = [raw]
    if not isinstance(raw, list):
        raise PairError("wrong_type", f"'{what}' is {type(raw).__name__}, not a list of messages")
    try:
        return merge_runs([message(m, i) for i, m in enumerate(raw, 1)])
    except ConversationError as e:
        raise PairError(e.reason, f"'{what}': {e}") from None


def _reply(raw: Any, what: str) -> dict[str, Any]:
    """A completion: a string, one assistant message, or a list holding one."""
    raw = _decoded(raw)
    if isinstance(raw, str):
        raw = {"role": "assistant", "content": raw}
    turns = _messages(raw, what)
    if len(turns) != 1 or turns[0]["role"] != "assistant":
        roles = ", ".join(t["role"] for t in turns) or "none"
        raise PairError("not_one_reply", f"'{what}' must be one assistant reply, not {len(turns)} "
                        f"message(s) ({roles}): a pair differs only in its final assistant turn")
    return turns[0]


def _prompt(raw: Any, what: str, system: Any = None) -> list[dict[str, Any]]:
    raw = _decoded(raw)
    if isinstance(raw, str) and not raw.strip():
        raise PairError("empty_content", f"'{what}' is empty")
    turns = [{"role": "user", "content": raw}] if isinstance(raw, str) else _messages(raw, what)
    if isinstance(system, str) and system.strip() and turns[0]["role"] != "system":
        turns.insert(0, {"role": "system", "content": system})
    if not turns or turns[-1]["role"] not in ("user", "tool"):
        last = turns[-1]["role"] if turns else "nothing"
        raise PairError("no_prompt", f"'{what}' must end with a user (or tool) turn, not {last}")
    return turns


def _split_implicit(chosen: list[dict[str, Any]], rejected: list[dict[str, Any]],
                    keys: tuple[str, str]) -> tuple[list[dict[str, Any]], dict[str, Any], dict[str, Any]]:
    """Two whole conversations: the shared prompt and the final assistant turns."""
    for conv, key in zip((chosen, rejected), keys, strict=True):
        if not conv or conv[-1]["role"] != "assistant":
            raise PairError("no_assistant_turn", f"'{key}' does not end with an assistant turn")
    if chosen[:-1] != rejected[:-1]:
        at = next((i for i, (a, b) in enumerate(zip(chosen, rejected, strict=False)) if a != b),
                  min(len(chosen), len(rejected)) - 1)
        raise PairError("prompts_differ", f"'{keys[0]}' and '{keys[1]}' differ before their final "
                        f"assistant turn (at message {at + 1}): a pair shares its prompt")
    return chosen[:-1], chosen[-1], rejected[-1]


def pair(record: Any) -> dict[str, Any]:
    """One record of any of the formats above as a pair in the one form."""
    if not isinstance(record, dict):
        raise PairError("not_an_object", f"expected an object, got {type(record).__name__}")
    if "label" in record and ("completion" in record or "messages" in record):
        raise PairError("unpaired", "an unpaired record (a reply with a label, as KTO reads): "
                        "preference tuning here needs a chosen and a rejected reply")
    keys = next((k for k in PAIR_KEYS if k[0] in record and k[1] in record), None)
    if keys is None:
        raise PairError("missing_field", "no chosen/rejected pair (expected 'chosen' and "
                        "'rejected', 'chosen_messages' and 'rejected_messages', or "
                        "'preferred_output' and 'non_preferred_output')")
    good, bad = record[keys[0]], record[keys[1]]
    tools = None
    if keys[0] == "preferred_output":  # OpenAI: the prompt is under input
        source = record.get("input")
        if not isinstance(source, dict) or "messages" not in source:
            raise PairError("missing_field", "'input' must be an object with 'messages'")
        prompt = _prompt(source["messages"], "input.messages")
        tools = source.get("tools")
    elif "conversations" in record or "messages" in record:  # ShareGPT: the prompt's turns
        field = "conversations" if "conversations" in record else "messages"
        prompt = _prompt(record[field], field, record.get("system"))
        tools = record.get("tools")
    elif "prompt" in record:  # TRL, explicit prompt
        prompt = _prompt(record["prompt"], "prompt", record.get("system"))
    elif isinstance(_decoded(good), str) or isinstance(_decoded(bad), str):
        raise PairError("no_prompt", f"'{keys[0]}' and '{keys[1]}' are text without a 'prompt': "
                        "where the prompt ends cannot be told")
    else:  # implicit prompt: two whole conversations
        prompt, chosen, rejected = _split_implicit(_messages(good, keys[0]), _messages(bad, keys[1]),
                                                   keys)
        return _checked(prompt, chosen, rejected, keys, record.get("tools"))
    chosen, rejected = _reply(good, keys[0]), _reply(bad, keys[1])
    return _checked(prompt, chosen, rejected, keys, tools)


def _checked(prompt: list[dict[str, Any]], chosen: dict[str, Any], rejected: dict[str, Any],
             keys: tuple[str, str], tools: Any) -> dict[str, Any]:
    if not prompt or prompt[-1]["role"] not in ("user", "tool"):
        raise PairError("no_prompt", "the prompt must end with a user (or tool) turn")
    for reply, key in ((chosen, keys[0]), (rejected, keys[1])):
        if reply.get("weight") == 0:
            raise PairError("untrained_reply", f"'{key}' has weight 0: it is the reply trained on")
    if chosen == rejected:
        raise PairError("identical", f"'{keys[0]}' and '{keys[1]}' are the same reply: nothing "
                        "to prefer")
    try:  # the same checks chat mode makes of a conversation (tools, an assistant turn)
        conv = conversation([*prompt, chosen], tools=tools)
    except ConversationError as e:
        raise PairError(e.reason, str(e)) from None
    out: dict[str, Any] = {"prompt": conv["messages"][:-1], "chosen": chosen, "rejected": rejected}
    if "tools" in conv:
        out["tools"] = conv["tools"]
    return out


# ---------------------------------------------------------------- from ratings

class RatingsNotUsable(ValueError):
    """A ratings file none of whose ratings can become pairs; the message says why."""


def rated_pairs(human_eval: dict[str, Any]) -> list[dict[str, Any]]:
    """The pairs a person's ratings (metrics/human_eval.json, written by `uv run rate`) make:
    for each rated prompt the greedy output they preferred chosen, the other rejected; ties and
    skips are left out. The file keeps the samples it judged, with their hash: a file whose
    samples are missing or no longer match that hash (edited, or from an older `rate`) gives no
    pair at all (RatingsNotUsable), as a choice can no longer be tied to the texts it chose."""
    ratings = human_eval.get("ratings") or []
    if not ratings:
        return []
    samples = human_eval.get("samples")
    if not isinstance(samples, list):
        raise RatingsNotUsable("it does not keep the samples it judged (written by an older "
                               "`uv run rate`); rate again to use them")
    if samples_hash(samples) != human_eval.get("samples_hash"):
        raise RatingsNotUsable("its samples no longer match their hash (the file was edited?)")
    by_prompt = {s["prompt"]: s for s in samples}
    pairs = []
    for rating in ratings:
        preferred, sample = rating.get("preferred"), by_prompt.get(rating.get("prompt"))
        if preferred not in ("base", "finetuned") or sample is None:
            continue  # a tie or a skip
        other = "base" if preferred == "finetuned" else "finetuned"
        if sample[preferred].strip() == sample[other].strip() or not sample[preferred].strip():
            continue
        pairs.append({"prompt": [{"role": "user", "content": sample["prompt"]}],
                      "chosen": {"role": "assistant", "content": sample[preferred]},
                      "rejected": {"role": "assistant", "content": sample[other]}})
    return pairs


# ---------------------------------------------------------------- files and splits

def file_pairs(path: Path, data: bytes, encoding_fallback: str | None = None
               ) -> Iterator[tuple[str, dict[str, Any] | BadInput]]:
    """(position, pair) for each record of a JSON list or JSONL file; a record that is no pair
    comes as the BadInput to report (finetune.data.inputs.Problems: fail or skip and count)."""
    suffix = path.suffix.lower()
    if suffix not in (".json", ".jsonl"):
        raise BadInput("unsupported_file", f"preference pairs are read from .json and .jsonl "
                       f"files, not {suffix or 'a file without a suffix'}")
    if not data.strip():
        raise BadInput("empty_file", "the file is empty")
    content = decode(data, encoding_fallback)
    records = json_records(content) if suffix == ".json" else jsonl_records(content)
    for where, record in records:
        if isinstance(record, BadInput):
            yield where, record
            continue
        try:
            yield where, pair(record)
        except PairError as e:
            yield where, BadInput(e.reason, str(e), where)


def prompt_key(p: dict[str, Any]) -> bytes:
    """What makes two pairs the same question: their prompt (with its tools)."""
    return digest(json.dumps([p["prompt"], p.get("tools")], ensure_ascii=False, sort_keys=True))


def split_pairs(pairs: list[dict[str, Any]], p: SplitParams, seed: int) -> list[str]:
    """Each pair's split (train/val/test, deterministic for the seed): the distinct prompts are
    split in the fractions of `split`, and each pair follows its prompt, so no prompt is scored on
    pairs it was trained on."""
    import pandas as pd

    from finetune.data.splitting import assign

    keys = [prompt_key(x) for x in pairs]
    prompts = pd.Series(list(dict.fromkeys(keys)), dtype=object)
    of_prompt = dict(zip(prompts, assign(pd.Series(["pairs"] * len(prompts), dtype=object),
                                         prompts, p, seed), strict=True))
    return [of_prompt[k] for k in keys]


def dumps(p: dict[str, Any]) -> str:
    return json.dumps(p, ensure_ascii=False, sort_keys=True)
