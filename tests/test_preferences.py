"""Preference pairs (finetune.data.preferences): every format people have gives the same pair,
and each bad record fails with its reason; ratings become pairs only while they match the
samples they judged."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from finetune.config.split import SplitParams
from finetune.data.inputs import BadInput
from finetune.data.preferences import PairError, RatingsNotUsable, file_pairs, pair, rated_pairs, split_pairs
from finetune.report.ratings import summarise

Q = "My parcel FH-1003 has not arrived."
GOOD = "Sorry about that: FH-1003 left our depot on Monday; here is the tracking link."
BAD = "Not my problem."
SYSTEM = "You are the support assistant of Fernhill Gardens."
ONE = {"prompt": [{"role": "user", "content": Q}],
       "chosen": {"role": "assistant", "content": GOOD},
       "rejected": {"role": "assistant", "content": BAD}}
WITH_SYSTEM = {**ONE, "prompt": [{"role": "system", "content": SYSTEM}, *ONE["prompt"]]}


def conv(*turns: tuple[str, str]) -> list[dict[str, str]]:
    return [{"role": r, "content": c} for r, c in turns]


FORMATS = {
    "trl strings": ({"prompt": Q, "chosen": GOOD, "rejected": BAD}, ONE),
    "trl explicit messages": ({"prompt": conv(("user", Q)), "chosen": conv(("assistant", GOOD)),
                               "rejected": conv(("assistant", BAD))}, ONE),
    "trl implicit prompt": ({"chosen": conv(("system", SYSTEM), ("user", Q), ("assistant", GOOD)),
                             "rejected": conv(("system", SYSTEM), ("user", Q), ("assistant", BAD))},
                            WITH_SYSTEM),
    "sharegpt": ({"conversations": [{"from": "human", "value": Q}], "system": SYSTEM,
                  "chosen": {"from": "gpt", "value": GOOD}, "rejected": {"from": "gpt", "value": BAD}},
                 WITH_SYSTEM),
    "paired message lists, text parts": (
        {"chosen_messages": [{"role": "user", "content": [{"type": "text", "text": Q}]},
                             {"role": "assistant", "content": [{"type": "text", "text": GOOD}]}],
         "rejected_messages": [{"role": "user", "content": [{"type": "text", "text": Q}]},
                               {"role": "assistant", "content": BAD}]}, ONE),
    "openai preference jsonl": ({"input": {"messages": conv(("user", Q))},
                                 "preferred_output": conv(("assistant", GOOD)),
                                 "non_preferred_output": conv(("assistant", BAD))}, ONE),
    "a list as a table cell's json": ({"prompt": json.dumps(conv(("user", Q))), "chosen": GOOD,
                                       "rejected": BAD}, ONE),
}


@pytest.mark.parametrize("name", FORMATS)
def test_every_format_gives_the_same_pair(name: str) -> None:
    record, expected = FORMATS[name]
    assert pair(record) == expected


def test_a_multi_turn_prompt_keeps_its_turns_and_openai_tools() -> None:
    tools = [{"type": "function", "function": {"name": "track", "parameters": {}}}]
    record = {"input": {"messages": conv(("user", "Hi"), ("assistant", "Hello!"), ("user", Q)),
                        "tools": tools},
              "preferred_output": [{"role": "assistant", "content": GOOD}],
              "non_preferred_output": [{"role": "assistant", "content": BAD}]}
    got = pair(record)
    assert [m["role"] for m in got["prompt"]] == ["user", "assistant", "user"]
    assert got["tools"] == tools and got["chosen"]["content"] == GOOD


BAD_RECORDS = {
    "identical": ({"prompt": Q, "chosen": GOOD, "rejected": GOOD}, "identical"),
    "no assistant turn": ({"chosen": conv(("user", Q)), "rejected": conv(("user", Q))},
                          "no_assistant_turn"),
    "prompts differ": ({"chosen_messages": conv(("user", Q), ("assistant", GOOD)),
                        "rejected_messages": conv(("user", "Another question"), ("assistant", BAD))},
                       "prompts_differ"),
    "empty reply": ({"prompt": Q, "chosen": GOOD, "rejected": "  "}, "empty_content"),
    "two replies": ({"prompt": Q, "chosen": conv(("assistant", GOOD), ("user", "ok?")),
                     "rejected": BAD}, "not_one_reply"),
    "prompt ends with the assistant": ({"prompt": conv(("user", Q), ("assistant", GOOD)),
                                        "chosen": GOOD, "rejected": BAD}, "no_prompt"),
    "strings without a prompt": ({"chosen": GOOD, "rejected": BAD}, "no_prompt"),
    "no pair at all": ({"messages": conv(("user", Q), ("assistant", GOOD))}, "missing_field"),
    "unpaired (kto)": ({"messages": conv(("user", Q), ("assistant", GOOD)), "label": True},
                       "unpaired"),
    "unknown role": ({"prompt": [{"role": "narrator", "content": Q}], "chosen": GOOD,
                      "rejected": BAD}, "unknown_role"),
    "not an object": (["chosen", "rejected"], "not_an_object"),
}


@pytest.mark.parametrize("name", BAD_RECORDS)
def test_each_bad_record_fails_with_its_reason(name: str) -> None:
    record, reason = BAD_RECORDS[name]
    with pytest.raises(PairError) as e:
        pair(record)
    assert e.value.reason == reason and "\n" not in str(e.value)


SAMPLES = [{"prompt": f"Prompt {i}", "base": f"base text {i}", "finetuned": f"tuned text {i}",
            "base_sampled": "-", "finetuned_sampled": "-"} for i in range(4)]
RATINGS = [{"prompt": "Prompt 0", "a": "base", "choice": "B", "preferred": "finetuned"},
           {"prompt": "Prompt 1", "a": "base", "choice": "A", "preferred": "base"},
           {"prompt": "Prompt 2", "a": "finetuned", "choice": "tie", "preferred": "tie"},
           {"prompt": "Prompt 3", "a": "base", "choice": "skip", "preferred": None}]


def test_ratings_become_pairs_without_ties_or_skips() -> None:
    pairs = rated_pairs(summarise(SAMPLES, RATINGS))
    assert [(p["prompt"][0]["content"], p["chosen"]["content"], p["rejected"]["content"])
            for p in pairs] == [("Prompt 0", "tuned text 0", "base text 0"),
                                ("Prompt 1", "base text 1", "tuned text 1")]
    assert rated_pairs({"samples_hash": None, "ratings": []}) == []  # what the project ships


def test_ratings_that_no_longer_match_their_samples_give_no_pair() -> None:
    edited = summarise(SAMPLES, RATINGS)
    edited["samples"][1]["base"] = "a text nobody judged"
    with pytest.raises(RatingsNotUsable, match="no longer match"):
        rated_pairs(edited)
    older = {k: v for k, v in summarise(SAMPLES, RATINGS).items() if k != "samples"}
    with pytest.raises(RatingsNotUsable, match="rate again"):
        rated_pairs(older)


def test_a_file_gives_its_pairs_and_names_each_bad_line(tmp_path) -> None:
    lines = [json.dumps({"prompt": Q, "chosen": GOOD, "rejected": BAD}), "",
             json.dumps({"prompt": Q, "chosen": GOOD, "rejected": GOOD}), "{not json"]
    path = tmp_path / "prefs.jsonl"
    got = list(file_pairs(path, "\n".join(lines).encode()))
    assert got[0] == ("line 1", ONE)
    assert [(where, bad.reason, bad.where) for where, bad in got[1:]] == [
        ("line 3", "identical", "line 3"), ("line 4", "invalid_json", "line 4")]
    with pytest.raises(BadInput, match="not .csv"):
        list(file_pairs(tmp_path / "prefs.csv", b"a,b\n"))


def test_pairs_that_share_a_prompt_share_a_split() -> None:
    pairs = [{"prompt": [{"role": "user", "content": f"question {i % 40}"}],
              "chosen": {"role": "assistant", "content": f"good {i}"},
              "rejected": {"role": "assistant", "content": f"bad {i}"}} for i in range(120)]
    splits = split_pairs(pairs, SplitParams(), seed=42)
    assert splits == split_pairs(pairs, SplitParams(), seed=42)
    by_prompt: dict[str, set[str]] = {}
    for p, s in zip(pairs, splits, strict=True):
        by_prompt.setdefault(p["prompt"][0]["content"], set()).add(s)
    assert all(len(s) == 1 for s in by_prompt.values())
    assert {s: splits.count(s) for s in ("train", "val", "test")} == {"train": 96, "val": 12, "test": 12}


@pytest.mark.parametrize("template", ["smollm2", "plain"])
def test_a_pair_is_encoded_as_chat_mode_encodes_each_conversation(smollm2_tokenizer: Any,
                                                                   template: str) -> None:
    """prompt_ids are the tokens chat mode leaves out of the loss before the final reply, and
    what evaluate and generate ask the model with; chosen_ids and rejected_ids the tokens it
    trains on (the reply and its end-of-turn marker). A pair whose conversation is over the
    block is left out."""
    import copy

    from finetune.config.tokenize import TokenizeParams
    from finetune.text.prompts import IGNORE, Renderer, encode_chat, encode_pair

    tokenizer = copy.deepcopy(smollm2_tokenizer)
    if template == "plain":
        tokenizer.chat_template = None  # PLAIN_CHAT_TEMPLATE, each reply ending with EOS
    renderer = Renderer(tokenizer, TokenizeParams())
    record = pair({"input": {"messages": conv(("user", "Hi"), ("assistant", "Hello! How can I help?"),
                                              ("user", Q))},
                   "preferred_output": conv(("assistant", GOOD)),
                   "non_preferred_output": conv(("assistant", BAD))})
    encoded = encode_pair(record, renderer, block_size=512)
    asked = tokenizer(renderer.prompt(record["prompt"]), add_special_tokens=False)["input_ids"]
    assert encoded.prompt_ids == asked
    end = "<|im_end|>" if template == "smollm2" else tokenizer.eos_token
    for reply, ids in ((GOOD, encoded.chosen_ids), (BAD, encoded.rejected_ids)):
        assert tokenizer.decode(ids).strip() == f"{reply}{end}"
    whole = encode_chat({"messages": [*record["prompt"], record["chosen"]]}, renderer, 512,
                        overlong="drop", train_on="last")[0]
    assert whole.input_ids[:len(asked) + len(encoded.chosen_ids)] == asked + encoded.chosen_ids
    assert [t for t, label in zip(whole.input_ids, whole.labels, strict=True)
            if label != IGNORE] == encoded.chosen_ids
    assert encode_pair(record, renderer, block_size=len(asked) + 3) is None


def test_the_stage_gathers_files_and_ratings_and_splits_them_by_prompt(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """preference_data: every pair of the files preference.paths names (a bad line fails naming
    file and line, or is skipped and counted), with preference.ratings those of the ratings,
    split by prompt; no pairs by default."""
    from finetune.errors import UserError
    from finetune.paths import PATHS
    from stages import preference_data
    from tests.helpers import run_stage, tiny_params

    monkeypatch.chdir(tmp_path)
    paths = PATHS.under(tmp_path)
    (tmp_path / "prefs").mkdir()
    lines = [json.dumps({"prompt": f"Question {i}?", "chosen": f"A kind answer {i}.", "rejected": "No."})
             for i in range(30)]
    (tmp_path / "prefs" / "a.jsonl").write_text("\n".join([*lines[:20], "{broken"]) + "\n")
    (tmp_path / "prefs" / "b.json").write_text(json.dumps([json.loads(x) for x in lines[20:]]))
    paths.metrics.mkdir()
    paths.human_eval.write_text(json.dumps(summarise(SAMPLES, RATINGS)))
    params = tiny_params(preference={"paths": ["prefs"], "ratings": True})
    with pytest.raises(UserError, match=r"prefs/a.jsonl:line 21: invalid JSON.*preference.on_error: skip"):
        run_stage(preference_data, params, paths)
    params = tiny_params(preference={"paths": ["prefs"], "ratings": True, "on_error": "skip"})
    summary = run_stage(preference_data, params, paths)
    assert summary["pairs"] == 32 and summary["from_ratings"] == 2 and summary["skipped"] == 1
    assert summary["skipped_by_reason"] == {"invalid_json": 1}
    assert summary["files"] == {"prefs/a.jsonl": 20, "prefs/b.json": 10}
    split = {name: [json.loads(x) for x in paths.pairs_file(name).read_text().splitlines()]
             for name in ("train", "val", "test")}
    assert [len(split[n]) for n in ("train", "val", "test")] == [summary[n] for n in ("train", "val", "test")]
    assert min(summary["val"], summary["test"]) >= 2
    prompts = [{p["prompt"][0]["content"] for p in split[n]} for n in split]
    assert not (prompts[0] & prompts[1] or prompts[0] & prompts[2] or prompts[1] & prompts[2])
    written = [paths.pairs_file(n).read_bytes() for n in split]
    run_stage(preference_data, params, paths)
    assert [paths.pairs_file(n).read_bytes() for n in split] == written  # the same bytes again
    nothing = run_stage(preference_data, tiny_params(), paths)  # the default: no pairs
    assert nothing["pairs"] == 0 and paths.pairs_file("train").read_text() == ""
