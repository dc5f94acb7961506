"""Chat mode, ingest: every accepted conversation format, and each kind of bad input both failing
with one line naming the file and record and skipped and counted."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from finetune.config.ingest import IngestParams
from finetune.data import conversations, inputs, readers
from finetune.errors import UserError


def write_jsonl(path: Path, records: list[Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n", encoding="utf-8")
    return path


def rows(path: Path, **params: Any) -> tuple[list[dict[str, Any]], inputs.Problems]:
    """The conversations ingest reads from one file (skip mode), and what it skipped."""
    p = IngestParams(paths=[str(path)], on_error="skip", **params)
    problems = inputs.Problems("skip")
    found, _ = readers.file_rows(path, "chat", p, problems)
    return [{**r, "conversation": conversations.loads(r["conversation"])} for r in found], problems


def messages(row: dict[str, Any]) -> list[tuple[str, str]]:
    return [(m["role"], m["content"]) for m in row["conversation"]["messages"]]


def test_openai_messages_with_string_and_list_content(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "a.jsonl", [
        {"messages": [{"role": "system", "content": "Be brief."},
                      {"role": "user", "content": "Hi"},
                      {"role": "assistant", "content": [{"type": "text", "text": "Hello"},
                                                        {"type": "text", "value": "there"}]}]},
    ])
    (row,), problems = rows(path)
    assert messages(row) == [("system", "Be brief."), ("user", "Hi"), ("assistant", "Hello\nthere")]
    assert row["position"] == "line 1" and not problems.skipped


def test_sharegpt_with_its_role_names_and_system_field(tmp_path: Path) -> None:
    path = tmp_path / "sharegpt.json"
    path.write_text(json.dumps([
        {"system": "You are a shop assistant.",
         "conversations": [{"from": "human", "value": "Open on Sunday?"},
                           {"from": "gpt", "value": "No, Monday to Saturday."},
                           {"from": "user", "value": "Thanks"},
                           {"from": "bot", "value": "You're welcome!"}]}]), encoding="utf-8")
    (row,), _ = rows(path)
    assert messages(row) == [("system", "You are a shop assistant."), ("user", "Open on Sunday?"),
                             ("assistant", "No, Monday to Saturday."), ("user", "Thanks"),
                             ("assistant", "You're welcome!")]


def test_tool_turns_openai_and_sharegpt(tmp_path: Path) -> None:
    call = {"id": "c1", "type": "function",
            "function": {"name": "order_status", "arguments": "{\"order\": \"FH-1\"}"}}
    path = write_jsonl(tmp_path / "tools.jsonl", [
        {"messages": [{"role": "user", "content": "Where is FH-1?"},
                      {"role": "assistant", "content": None, "tool_calls": [call]},
                      {"role": "tool", "tool_call_id": "c1", "content": "shipped"},
                      {"role": "assistant", "content": "It has shipped."}]},
        {"conversations": [{"from": "human", "value": "Where is FH-2?"},
                           {"from": "function_call",
                            "value": "{\"name\": \"order_status\", \"arguments\": {\"order\": \"FH-2\"}}"},
                           {"from": "observation", "value": "in transit"},
                           {"from": "gpt", "value": "It is on its way."}]},
    ])
    first, second = rows(path)[0]
    for row, order in ((first, "FH-1"), (second, "FH-2")):
        ms = row["conversation"]["messages"]
        assert [m["role"] for m in ms] == ["user", "assistant", "tool", "assistant"]
        assert ms[1]["tool_calls"] == [{"type": "function", "function": {
            "name": "order_status", "arguments": {"order": order}}}]
    assert first["conversation"]["messages"][2]["tool_call_id"] == "c1"


def test_pairs_records_are_one_turn_conversations_and_a_folder_can_mix_them(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "data" / "pairs.jsonl", [
        {"instruction": "Name a fruit", "input": "red", "output": "Apple"},
        {"prompt": "Capital of France?", "response": "Paris"}])
    write_jsonl(tmp_path / "data" / "chats.jsonl", [
        {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hey"}]}])
    p = IngestParams(paths=[str(tmp_path / "data")])
    files, _ = inputs.discover(p.paths, p, inputs.Problems("fail"))
    df, summary = readers.ingest(files, "chat", p)
    convs = [conversations.loads(c)["messages"] for c in df["conversation"]]
    assert summary["records"] == 3
    assert convs[1] == [{"role": "user", "content": "Name a fruit\n\nred"},
                        {"role": "assistant", "content": "Apple"}]
    assert convs[2][1] == {"role": "assistant", "content": "Paris"}


def test_long_form_csv_of_support_turns_is_grouped_and_ordered(tmp_path: Path) -> None:
    path = tmp_path / "support.csv"
    pd.DataFrame({
        "conversation_id": ["A", "B", "A", "B", "A", "A"],
        "turn": [2, 1, 1, 2, 10, 3],  # numeric order, not text order (10 after 3)
        "speaker": ["agent", "customer", "customer", "agent", "agent", "customer"],
        "message": ["How can I help?", "Refund please", "Hello", "Sure.", "Done!", "Kettle"],
    }).to_csv(path, index=False)
    found, problems = rows(path)
    assert [messages(r) for r in found] == [
        [("user", "Hello"), ("assistant", "How can I help?"), ("user", "Kettle"),
         ("assistant", "Done!")],
        [("user", "Refund please"), ("assistant", "Sure.")]]
    assert found[0]["position"] == "row 1 (conversation A)" and not problems.skipped


def test_long_form_column_names_are_configurable_and_parquet_works(tmp_path: Path) -> None:
    path = tmp_path / "turns.parquet"
    pd.DataFrame({"ticket": ["t1", "t1"], "n": ["1", "2"], "who": ["user", "assistant"],
                  "body": ["Hi", "Hello"]}).to_parquet(path)
    (row,), _ = rows(path, conversation_field="ticket", turn_field="n", role_field="who",
                     content_field="body")
    assert messages(row) == [("user", "Hi"), ("assistant", "Hello")]
    with pytest.raises(UserError, match=r"no column 'nope' .*set ingest.role_field"):
        readers.file_rows(path, "chat", IngestParams(conversation_field="ticket", role_field="nope"),
                         inputs.Problems("fail"))


def test_parquet_with_a_nested_messages_column(tmp_path: Path) -> None:
    path = tmp_path / "hub.parquet"
    pd.DataFrame({"prompt": ["Hi"], "messages": [[{"role": "user", "content": "Hi"},
                                                  {"role": "assistant", "content": "Hello"}]]}
                 ).to_parquet(path)
    (row,), _ = rows(path)
    assert messages(row) == [("user", "Hi"), ("assistant", "Hello")]


def test_consecutive_turns_of_one_role_are_merged() -> None:
    conv = conversations.conversation([
        {"role": "user", "content": "Hello"}, {"role": "user", "content": "Are you there?"},
        {"role": "assistant", "content": "Yes."}, {"role": "assistant", "content": "How can I help?"}])
    assert conv["messages"] == [{"role": "user", "content": "Hello\n\nAre you there?"},
                                {"role": "assistant", "content": "Yes.\n\nHow can I help?"}]


BAD = [
    ("no_assistant_turn", {"messages": [{"role": "user", "content": "Hi"}]},
     "line 2: no assistant turn to learn from"),
    ("empty_content", {"messages": [{"role": "user", "content": " "},
                                    {"role": "assistant", "content": "x"}]},
     "line 2: message 1 (user): empty content"),
    ("non_text_content", {"messages": [
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "a.png"}}]},
        {"role": "assistant", "content": "x"}]},
     "line 2: message 1 (user): a part of type 'image_url'; only text content can be trained on"),
    ("wrong_type", {"messages": {"role": "user"}}, "line 2: the messages are dict, not a list"),
    ("unknown_role", {"messages": [{"role": "wizard", "content": "x"},
                                   {"role": "assistant", "content": "y"}]},
     "line 2: message 1: unknown role 'wizard'"),
    ("missing_field", {"text": "no messages here"}, "line 2: no messages"),
]
GOOD = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hey"}]}


@pytest.mark.parametrize(("reason", "record", "message"), BAD, ids=[b[0] for b in BAD])
def test_bad_conversations_fail_in_one_line_or_are_skipped_and_counted(
        tmp_path: Path, reason: str, record: dict[str, Any], message: str) -> None:
    path = write_jsonl(tmp_path / "bad.jsonl", [GOOD, record, GOOD])
    with pytest.raises(UserError) as err:
        readers.file_rows(path, "chat", IngestParams(), inputs.Problems("fail"))
    assert str(err.value).startswith(f"{path.as_posix()}:{message}")
    assert "\n" not in str(err.value)
    found, problems = rows(path)
    assert len(found) == 2 and problems.skipped == {reason: 1}


def test_a_turn_row_without_conversation_id(tmp_path: Path) -> None:
    path = tmp_path / "turns.csv"
    path.write_text("conversation_id,turn,role,text\n1,1,user,Hi\n1,2,assistant,Hello\n"
                    ",3,assistant,orphan\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"turns.csv:row 3: no conversation id \('conversation_id'\)"):
        readers.file_rows(path, "chat", IngestParams(), inputs.Problems("fail"))
    found, problems = rows(path)
    assert len(found) == 1 and problems.skipped == {"missing_conversation_id": 1}


def test_a_table_without_conversation_columns_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text("a,b\n1,2\n", encoding="utf-8")
    with pytest.raises(UserError, match="no conversation columns"):
        readers.file_rows(path, "chat", IngestParams(), inputs.Problems("fail"))


def test_running_text_is_refused_in_chat_mode(tmp_path: Path) -> None:
    path = tmp_path / "book.txt"
    path.write_text("Once upon a time.", encoding="utf-8")
    with pytest.raises(UserError, match="chat mode needs json, jsonl, csv or parquet"):
        readers.file_rows(path, "chat", IngestParams(), inputs.Problems("fail"))


def test_a_turn_without_its_order_is_reported_not_guessed(tmp_path: Path) -> None:
    path = tmp_path / "turns.csv"
    path.write_text("conversation_id,turn,role,text\nA,1,user,q1\nA,,assistant,a1\nA,3,user,q2\n"
                    "A,4,assistant,a2\nB,1,user,hi\nB,2,assistant,hello\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"turns.csv:row 1 \(conversation A\): a turn without its order"):
        readers.file_rows(path, "chat", IngestParams(), inputs.Problems("fail"))
    found, problems = rows(path)
    assert [messages(r) for r in found] == [[("user", "hi"), ("assistant", "hello")]]
    assert problems.skipped == {"missing_turn": 1}


def test_tool_details_real_exports_have(tmp_path: Path) -> None:
    conv = conversations.conversation([
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": "Checking.", "weight": "0"},
        {"role": "tool", "content": {"temp": 5, "unit": "C"}},
        {"role": "assistant", "content": "5 degrees."}],
        tools=[{"type": "function", "function": {"name": "weather", "parameters": {
            "type": "object", "properties": {"unit": {}, "city": {}}}}}])
    assert conv["messages"][1]["weight"] == 0 and conversations.trained_turns(conv["messages"]) == [3]
    assert conv["messages"][2]["content"] == '{"temp": 5, "unit": "C"}'
    stored = conversations.dumps(conv)
    assert stored.index('"unit"') < stored.index('"city"')  # the user's order, not sorted
    with pytest.raises(conversations.ConversationError, match="list of function definitions"):
        conversations.conversation([{"role": "user", "content": "x"},
                                    {"role": "assistant", "content": "y"}], tools=["search"])
