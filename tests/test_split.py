"""split: allocation, a deterministic stratified split, no text in two splits, too few records."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from finetune.config.split import SplitParams
from finetune.data import splitting
from finetune.errors import UserError
from finetune.paths import PATHS
from stages import clean, ingest, split
from tests.helpers import frame, run_stage, tiny_params


@pytest.mark.parametrize(("n", "expected"), [
    (1, [1, 0, 0]), (2, [2, 0, 0]), (3, [1, 1, 1]), (10, [8, 1, 1]), (25, [20, 3, 2]), (100, [80, 10, 10]),
])
def test_allocate(n: int, expected: list[int]) -> None:
    assert splitting.allocate(n, (0.8, 0.1, 0.1)) == expected


def test_assign_is_deterministic_stratified_and_keeps_duplicates_together() -> None:
    groups = pd.Series(["a"] * 20 + ["b"] * 10 + ["c", "d"])
    keys = pd.Series([f"t{i}" for i in range(31)] + ["t0"])  # row 31 repeats row 0's text
    p = SplitParams()
    first, again = splitting.assign(groups, keys, p, 7), splitting.assign(groups, keys, p, 7)
    assert first.tolist() == again.tolist()
    assert first.tolist() != splitting.assign(groups, keys, p, 8).tolist()
    for doc in ("a", "b"):
        assert set(first[groups == doc]) == {"train", "val", "test"}
    assert first[31] == first[0]
    # a: 16/2/2, b: 8/1/1, the pooled short docs c, d: 2/0/0 (d is row 31, which follows row 0)
    assert first[:31].value_counts().to_dict() == {"train": 25, "val": 3, "test": 3}


def test_split_run_writes_three_disjoint_files(tmp_path: Path, books: Path) -> None:
    params = tiny_params(ingest={"paths": [str(books)]}, clean={"max_chars": 400})
    paths = PATHS.under(tmp_path)
    run_stage(ingest, params, paths)
    run_stage(clean, params, paths)
    summary = run_stage(split, params, paths)
    parts = {name: pd.read_parquet(paths.split_file(name)) for name in ("train", "val", "test")}
    texts = [set(df["text"]) for df in parts.values()]
    assert not (texts[0] & texts[1] or texts[0] & texts[2] or texts[1] & texts[2])
    assert all(summary[name]["documents"] == 2 for name in parts)  # both books in every split
    total = sum(len(df) for df in parts.values())
    assert abs(len(parts["train"]) / total - 0.8) < 0.06


def test_split_with_too_few_records_says_how_many_would_do(tmp_path: Path) -> None:
    """Two passages leave val and test empty; the line says three are enough, and they are."""
    paths = PATHS.under(tmp_path)
    paths.clean.parent.mkdir(parents=True)
    texts = ["the first passage here", "the second passage here", "the third passage here"]
    frame(texts[:2]).assign(passage_id="p").to_parquet(paths.clean)
    with pytest.raises(UserError) as err:
        run_stage(split, tiny_params(), paths)
    assert str(err.value) == ("2 passages leave val and test empty (train 2, val 0, test 0), and every "
                              "split needs one: add data, to make 3 passages or more, or lower "
                              "clean.max_chars to cut documents into more passages")
    frame(texts).assign(passage_id="p").to_parquet(paths.clean)
    summary = run_stage(split, tiny_params(), paths)
    assert [summary[name]["records"] for name in ("train", "val", "test")] == [1, 1, 1]


@pytest.mark.parametrize(("mode", "rows", "expected"), [
    ("pairs", [{"group": ""}],
     "1 pair leaves val and test empty (train 1, val 0, test 0), and every split needs one: add "
     "data, to make 3 pairs or more"),
    ("text", [{"group": g} for g in "aabb"],  # each group's short documents split apart
     "4 passages leave val and test empty (train 4, val 0, test 0), and every split needs one: add "
     "data, so that one document, or the short documents of one ingest.group_field group, hold 3 "
     "passages or more, or lower clean.max_chars to cut documents into more passages"),
    ("text", [{"group": "", "text": "the same text"}] * 3,  # clean.dedupe off
     "3 passages leave train and val empty (train 0, val 0, test 3), and every split needs one: "
     "passages with the same text share a split; add different ones, or set clean.dedupe: true"),
])
def test_too_few_says_what_to_add(tmp_path: Path, mode: str, rows: list[dict], expected: str) -> None:
    paths = PATHS.under(tmp_path)
    paths.clean.parent.mkdir(parents=True)
    records = [{"doc_id": f"d{i}", "passage_id": f"p{i}", "source": "s", "title": "t",
                "text": f"passage {i}", "prompt": f"question {i}?", "response": f"answer {i}.",
                **row} for i, row in enumerate(rows)]
    pd.DataFrame(records).to_parquet(paths.clean)
    with pytest.raises(UserError) as err:
        run_stage(split, tiny_params(mode=mode), paths)
    assert str(err.value) == expected


def test_chat_conversations_are_deduplicated_and_never_span_two_splits(tmp_path: Path) -> None:
    import json

    from finetune.data import conversations
    from tests.helpers import support_conversations

    convs = support_conversations(40)
    # an exact duplicate (after clean's normalisation) of conversation 3, and of 5 with spaces
    extra = [convs[3], {"messages": [{**m, "content": f"  {m['content']}  "}
                                     for m in convs[5]["messages"]]}]
    raw = tmp_path / "raw" / "chats.jsonl"
    raw.parent.mkdir()
    raw.write_text("\n".join(json.dumps(c) for c in convs + extra) + "\n", encoding="utf-8")
    params = tiny_params(mode="chat", ingest={"paths": [str(raw)]})
    paths = PATHS.under(tmp_path)
    run_stage(ingest, params, paths)
    cleaned = run_stage(clean, params, paths)
    assert cleaned["records_in"] == 42 and cleaned["records_out"] == 40
    assert cleaned["dropped_by_reason"] == {"duplicate": 2}
    run_stage(split, params, paths)
    seen: dict[str, str] = {}
    for name in ("train", "val", "test"):
        for conv in pd.read_parquet(paths.split_file(name))["conversation"]:
            first = conversations.loads(conv)["messages"][0]["content"]
            assert first not in seen, f"{first!r} in {seen.get(first)} and {name}"
            seen[first] = name
    assert len(seen) == 40 and set(seen.values()) == {"train", "val", "test"}


def test_split_stratifies_by_group(tmp_path: Path) -> None:
    """Pairs with groups: each group of 10 or more has records in train, val and test, in about
    the split's shares; the small groups are split together."""
    sizes = {"refund": 30, "order": 20, "account": 10, "rare": 2, "odd": 1}
    rows = [{"doc_id": f"{g}{i}", "passage_id": f"{g}{i}", "source": "one.csv", "group": g,
             "prompt": f"{g} question {i}?", "response": f"{g} answer {i}."}
            for g, n in sizes.items() for i in range(n)]
    paths = PATHS.under(tmp_path)
    paths.clean.parent.mkdir(parents=True)
    pd.DataFrame(rows).to_parquet(paths.clean)
    summary = run_stage(split, tiny_params(mode="pairs"), paths)
    assert summary["groups"]["refund"] == {"train": 24, "val": 3, "test": 3}
    assert summary["groups"]["order"] == {"train": 16, "val": 2, "test": 2}
    assert summary["groups"]["account"] == {"train": 8, "val": 1, "test": 1}
    test = pd.read_parquet(paths.split_file("test"))
    assert {"refund", "order", "account"} <= set(test["group"])
    # without groups, one source file is one stratum: account's share is left to chance
    pd.DataFrame(rows).assign(group="").to_parquet(paths.clean)
    assert "groups" not in run_stage(split, tiny_params(mode="pairs"), paths)
