"""clean.redact: each kind of personal data found and replaced by its placeholder, numbers that
fail their check and look-alikes left alone, the counts in metrics/clean.json and the report, the
params, and personal data planted in the sample support chats reaching none of what the model is
trained on, its tokenizer learns from or evaluate shows."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import datasets
import pandas as pd
import pytest

from finetune.config.clean import CleanParams
from finetune.data import cleaning, conversations, redaction
from finetune.data.redaction import KINDS, Redactor, redact
from finetune.errors import UserError
from finetune.paths import PATHS, SPLITS
from finetune.report import content
from stages import clean
from tests.helpers import ROOT, evaluate_models, run_stage, tiny_params


@pytest.mark.parametrize(("text", "expected"), [
    ("Write to jane.doe+orders@example.co.uk today.", "Write to <EMAIL> today."),
    ("Call 020 7946 0958 or +1 (415) 555-0132.", "Call <PHONE> or <PHONE>."),
    ("Mein Handy: +49 1512 3456789.", "Mein Handy: <PHONE>."),
    ("Card 4111 1111 1111 1111, or 5555-5555-5555-4444, or 378282246310005.",
     "Card <CARD>, or <CARD>, or <CARD>."),
    ("IBAN GB82 WEST 1234 5698 7654 32 or DE89370400440532013000.", "IBAN <IBAN> or <IBAN>."),
    ("From 203.0.113.7 and 2001:db8::8a2e:370:7334.", "From <IP> and <IP>."),
    ("See https://admin:hunter2@shop.example.com/admin.", "See <URL>."),
    # the kinds never overlap: the URL holds an e-mail-like user@host and an IP address
    ("rtsp://viewer:pw@192.0.2.10:554/live", "<URL>"),
    ("Mapped as ::ffff:192.0.2.1 here.", "Mapped as ::ffff:<IP> here."),
])
def test_each_kind_is_replaced_by_its_placeholder(text: str, expected: str) -> None:
    out, counts = redact(text)
    assert out == expected
    assert sum(counts.values()) == expected.count("<")


@pytest.mark.parametrize("text", [
    "My card 4111 1111 1111 1112 keeps getting declined.",  # fails the Luhn check
    "The IBAN GB00 WEST 1234 5698 7654 32 was rejected.",    # wrong check digits
    "Order FH-21814 and FH-1042, refund RF-43585, ticket #48213.",
    "It arrived on 2024-03-15 at 14:30; I ordered on 15/03/2024.",
    "I was charged £1,299.00 and $45.99, 1.234,56 € in Germany.",
    "After firmware 4.1.0.2 (app version 2.3.14, v1.2.3.4) it stopped pairing.",
    "Tracking 1Z999AA10123456784 and 9400 1000 0000 0000 0000 00.",
    "Deliver to SW1A 1AA or ZIP 10001-1234.",
    "The card ending 4242, shown as **** **** **** 4242.",
    "The MAC is 00:1A:2B:3C:4D:5E; the log says 12:03:44.512.",
    "See https://fernhill.example/returns or ftp://files.example.net/kettle.pdf.",
    "The IP 999.168.1.1 cannot be right; neither can 123-456-7890.",
])
def test_look_alikes_are_left_alone(text: str) -> None:
    assert redact(text) == (text, Counter())


def test_only_the_kinds_asked_for_are_replaced() -> None:
    text = "jane@example.com, 020 7946 0958"
    assert redact(text, ("phone",))[0] == "jane@example.com, <PHONE>"
    assert redact(text, ())[0] == text


def test_phone_regions_read_national_numbers() -> None:
    text = "Appelez le 01 42 68 53 00."
    assert redact(text)[0] == text  # GB, US by default
    assert redact(text, KINDS, ("GB", "FR"))[0] == "Appelez le <PHONE>."


def test_redactor_counts_and_redacts_tool_call_arguments() -> None:
    r = Redactor(KINDS)
    args = r.values({"email": "jane@example.com", "to": ["+44 20 7946 0958", 3], "note": None})
    assert args == {"email": "<EMAIL>", "to": ["<PHONE>", 3], "note": None}
    assert r("no personal data") == "no personal data"
    assert r.found == {"email": 1, "phone": 1}
    off = Redactor(())
    assert off("jane@example.com") == "jane@example.com" and not off.found


def test_the_params() -> None:
    assert CleanParams().redacted("text") == () and CleanParams().redacted("chat") == KINDS
    assert CleanParams().redacted("pairs") == KINDS
    assert CleanParams(redact=True).redacted("text") == KINDS
    assert CleanParams(redact=False).redacted("chat") == ()
    assert CleanParams(redact=["url", "email"]).redacted("text") == ("email", "url")


@pytest.mark.parametrize(("raw", "expected"), [
    ({"redact": "maybe"}, "params.yaml: clean.redact: must be auto, true, false or a list of kinds "
                          "(email, phone, card, iban, ip, url) (got 'maybe')"),
    ({"redact": ["email", "names"]},
     "params.yaml: clean.redact: unknown kind 'names' (kinds: email, phone, card, iban, ip, url)"),
    ({"phone_regions": ["UK"]},
     "params.yaml: clean.phone_regions: unknown region 'UK' (GB is the United Kingdom's code)"),
    ({"phone_regions": ["gb"]}, "params.yaml: clean.phone_regions: unknown region 'gb' (ISO 3166 "
                                "codes, in capitals: GB, US, DE...)"),
])
def test_bad_params_give_one_line_naming_the_key(raw: dict, expected: str) -> None:
    from finetune.config.schema import parse

    with pytest.raises(UserError) as err:
        parse({"clean": raw})
    assert str(err.value) == expected


def chat_frame(*convs: dict) -> pd.DataFrame:
    return pd.DataFrame({"doc_id": [f"c{i}" for i in range(len(convs))], "source": "s", "group": "",
                         "position": "1", "conversation": [conversations.dumps(c) for c in convs]})


def test_chat_is_redacted_after_normalize_and_deduplicated_as_redacted() -> None:
    """normalize() would remove `<EMAIL>` as a tag, and it reveals an address that an entity or
    markup hid: redaction comes after it. Two chats that differ only in their personal data are
    the same to the model, so one is a duplicate."""
    def conv(user: str) -> dict:
        return {"messages": [{"role": "user", "content": user},
                             {"role": "assistant", "content": "Thanks, I've updated your details."},
                             {"role": "assistant", "content": "",
                              "tool_calls": [{"type": "function", "function": {
                                  "name": "update", "arguments": {"phone": "+44 20 7946 0958"}}}]}]}

    df = chat_frame(conv("My email is jane&#64;example.com now."),
                    conv("My email is <b>ann</b>@example.org now."))
    rows, dropped = cleaning.clean_rows(df, "chat", CleanParams(min_chars=5))
    assert dropped == {"duplicate": 1} and len(rows) == 1
    messages = conversations.loads(rows[0]["conversation"])["messages"]
    assert messages[0]["content"] == "My email is <EMAIL> now."
    assert messages[2]["tool_calls"][0]["function"]["arguments"] == {"phone": "<PHONE>"}
    _, _, found = cleaning.candidates(df, "chat", CleanParams(min_chars=5))
    assert found == {"email": 2, "phone": 2}


PII = "jane@example.com, 020 7946 0958"


def text_frame() -> pd.DataFrame:
    """One document with personal data in every column that a text-mode row carries to the model
    (text, title, chapter: whatever COLUMNS names beside the ids)."""
    return pd.DataFrame([{c: f"{c} d0" if c in ("doc_id", "passage_id", "source", "group") else
                          f"{c}: write to {PII}. " * (3 if c == "text" else 1)
                          for c in cleaning.COLUMNS["text"]}])


def test_text_mode_redacts_every_text_column_when_asked() -> None:
    ids = ("doc_id", "passage_id", "source", "group")
    rows, _, found = cleaning.candidates(text_frame(), "text", CleanParams(redact=True, min_chars=5))
    others = [c for c in cleaning.COLUMNS["text"] if c not in (*ids, "text")]  # title, chapter
    assert rows and found == {"email": 3 + len(others), "phone": 3 + len(others)}
    for row in rows:
        for column, value in row.items():
            if column not in ids:
                assert "jane@" not in value and "7946" not in value, (column, value)
                assert "<EMAIL>" in value and "<PHONE>" in value, (column, value)
    # off by default in text mode (clean.redact: auto): books keep their text
    rows, _, found = cleaning.candidates(text_frame(), "text", CleanParams(min_chars=5))
    assert not found and PII in rows[0]["text"]


def test_clean_stage_counts_what_it_replaced(tmp_path: Path, chat_file: Path) -> None:
    from stages import ingest

    lines = chat_file.read_text().splitlines()
    first = json.loads(lines[0])
    first["messages"][0]["content"] += " I'm jane@example.com, card 4111 1111 1111 1111."
    chat_file.write_text("\n".join([json.dumps(first), *lines[1:]]) + "\n")
    paths = PATHS.under(tmp_path)
    params = tiny_params(mode="chat", ingest={"paths": [str(chat_file)]})
    run_stage(ingest, params, paths)
    summary = run_stage(clean, params, paths)
    assert summary["redacted"] == {"email": 1, "phone": 0, "card": 1, "iban": 0, "ip": 0, "url": 0}
    off = run_stage(clean, tiny_params(mode="chat", ingest={"paths": [str(chat_file)]},
                                       clean={"redact": False}), paths)
    assert "redacted" not in off


def test_the_report_shows_the_counts() -> None:
    model = {"loss": 1.0, "perplexity": 2.7}
    metrics = {"eval": {"base": model, "finetuned": model, "test_tokens": 10},
               "train": {"env": {"device": "cpu", "precision": "fp32"}},
               "clean": {"records_out": 3, "redacted": {"email": 3, "phone": 2, "card": 0}}}
    md = content.to_markdown(content.blocks("Report", {"mode": "chat"}, metrics, [], ""))
    assert "| redacted | email: 3, phone: 2, card: 0 |" in md


PLANTED = {"email": "marta.kowalska@example.com", "phone": "+44 7400 739251",
           "card": "4929 1837 4650 2214", "iban": "GB82 WEST 1234 5698 7654 32",
           "ip": "203.0.113.77", "url": "https://mkowalska:Sunflower88@files.example.net/orders"}


def planted_chats(path: Path) -> int:
    """The sample support chats with every kind of personal data in a user turn and in an
    assistant turn of each conversation; the number of conversations."""
    convs = [json.loads(line) for line in
             (ROOT / "data" / "examples" / "chat" / "support_chats.jsonl").read_text().splitlines()]
    said = " ".join(f"My {kind}: {value}." for kind, value in PLANTED.items())
    for conv in convs:
        user = next(m for m in conv["messages"] if m["role"] == "user")
        assistant = next(m for m in conv["messages"] if m["role"] == "assistant")
        user["content"] = f"{said} {user['content']}"
        assistant["content"] = f"{assistant['content']} Noted: {said}"
    path.parent.mkdir(parents=True)
    path.write_text("\n".join(json.dumps(c) for c in convs) + "\n")
    return len(convs)


def leaks(text: str) -> list[str]:
    """The planted strings, their distinctive parts and their digits (in any spacing) in `text`."""
    digits = re.sub(r"\D", "", text)
    found = [v for v in PLANTED.values() if v in text]
    found += [part for part in ("kowalska", "Sunflower88", "WEST") if part in text]
    found += [v for v in PLANTED.values()
              if len(re.sub(r"\D", "", v)) >= 8 and re.sub(r"\D", "", v) in digits]
    return found


def test_planted_personal_data_reaches_nothing_the_model_sees(tmp_path: Path) -> None:
    """The issue's end-to-end check: personal data planted in the sample support chats, the real
    ingest, clean, split, scratch tokenizer and tokenize stages (clean.redact: auto, as the README's
    chat command runs them), and none of it in the texts split and tokenize read, in the
    tokenizer the scratch model learns from the train split, nor in the token ids decoded; then
    train and evaluate, and none of it in metrics/samples.json nor in the test rows the error
    analysis quotes."""
    from transformers import AutoTokenizer

    from stages import base_model, ingest, scratch_texts, split, tokenize, train

    raw = tmp_path / "data" / "chat" / "support_chats.jsonl"
    n = planted_chats(raw)
    scratch = {"n_layer": 2, "n_embd": 64, "n_head": 2, "vocab_size": 400, "n_positions": 512}
    params = tiny_params(mode="chat", ingest={"paths": [str(raw)]}, tokenize={"block_size": 512},
                         model={"source": "scratch", "scratch": scratch})
    paths = PATHS.under(tmp_path)
    run_stage(ingest, params, paths)
    assert run_stage(clean, params, paths)["redacted"] == {k: 2 * n for k in KINDS}
    for stage in (split, scratch_texts, base_model, tokenize):
        run_stage(stage, params, paths)
    assert PLANTED["email"] in pd.read_parquet(paths.ingested)["conversation"].iloc[0]  # planted
    cleaned = "\n".join(pd.read_parquet(paths.clean)["conversation"])
    assert not leaks(cleaned) and cleaned.count("<CARD>") == 2 * n
    processed = "\n".join(t for f in paths.processed.glob("*.parquet")
                          for t in pd.read_parquet(f)["conversation"])
    assert not leaks(processed)
    tokenizer = AutoTokenizer.from_pretrained(paths.base_model)
    assert not leaks((paths.base_model / "tokenizer.json").read_text())
    decoded = "\n".join(tokenizer.decode(ids) for split in SPLITS
                        for ids in datasets.load_from_disk(str(paths.tokenized / split))["input_ids"])
    assert "<EMAIL>" in decoded and "<IBAN>" in decoded and not leaks(decoded)
    # the models' samples, and the test rows the error analysis quotes
    run_stage(train, params, paths)
    evaluate_models(params, paths)
    shown = [(paths.metrics / name).read_text() for name in ("samples.json", "eval_analysis.json")]
    assert "<CARD>" in shown[1] and not leaks("\n".join(shown))


def test_find_and_spans_agree_with_redact() -> None:
    text = f"Hi, {PII} and 203.0.113.7"
    spans = redaction.find(text)
    assert [s.kind for s in spans] == ["email", "phone", "ip"]
    assert [text[s.start:s.end] for s in spans] == ["jane@example.com", "020 7946 0958", "203.0.113.7"]
