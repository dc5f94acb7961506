"""clean: normalisation, Gutenberg boilerplate, passages, duplicates and length filters."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from finetune.config.clean import CleanParams
from finetune.data import cleaning
from finetune.errors import UserError
from finetune.paths import PATHS
from stages import clean
from tests.helpers import frame, run_stage, tiny_params


@pytest.mark.parametrize(("raw", "expected"), [
    ("e\u0301t\u00e9", "\u00e9t\u00e9"),                       # NFC
    ("<p>Fish &amp; chips</p>", "Fish & chips"),                # tags and entities
    ("a\x00b\x07c\u200bd", "abcd"),                             # control characters
    ("one   two\t three  \n  four", "one two three\nfour"),     # spaces, line ends
    ("para one\r\n\r\n\r\n\n para two", "para one\n\npara two"),  # paragraph breaks kept
    ("x < y and y > z", "x < y and y > z"),                     # not a tag
])
def test_normalize(raw: str, expected: str) -> None:
    assert cleaning.normalize(raw) == expected


def test_strip_gutenberg() -> None:
    text = ("The Project Gutenberg eBook of X\nlicence\n*** START OF THE PROJECT GUTENBERG EBOOK X ***"
            "\nBody.\n*** END OF THE PROJECT GUTENBERG EBOOK X ***\nmore licence")
    assert cleaning.strip_gutenberg(text).strip() == "Body."
    assert cleaning.strip_gutenberg("no markers") == "no markers"


def test_passages_break_on_paragraphs_and_respect_max_chars() -> None:
    paras = [f"Paragraph {i} " + "word " * 10 for i in range(10)]
    out = cleaning.passages("\n\n".join(p.strip() for p in paras), 200)
    assert all(len(p) <= 200 for p in out)
    # nothing lost, and no paragraph split in the middle
    assert "\n\n".join(out).split("\n\n") == [p.strip() for p in paras]


def test_long_paragraph_is_cut_on_sentences_then_spaces() -> None:
    sentence = "This is a sentence of words. "
    out = cleaning.passages(sentence * 20 + "x" * 250, 100)
    assert all(len(p) <= 100 for p in out)
    assert "".join(out).replace(" ", "") == (sentence * 20 + "x" * 250).replace(" ", "")


def test_clean_drops_duplicates_and_short_passages_with_counts() -> None:
    df = frame(["A long enough passage.", "A long enough  passage.", "short", "  "])
    out, dropped = cleaning.clean_text_rows(df, CleanParams(min_chars=10))
    assert out["text"].tolist() == ["A long enough passage."]
    assert dropped == {"duplicate": 1, "too_short": 1, "empty": 1}


def test_clean_run_when_everything_is_dropped(tmp_path: Path) -> None:
    paths = PATHS.under(tmp_path)
    paths.ingested.parent.mkdir(parents=True)
    frame(["tiny", "tiny"]).to_parquet(paths.ingested)
    with pytest.raises(UserError, match=r"all 2 records were dropped \(2 too_short\)"):
        run_stage(clean, tiny_params(clean={"min_chars": 50}), paths)
    assert not paths.clean.exists()


def test_clean_pairs_filters_and_dedupes() -> None:
    df = pd.DataFrame({"doc_id": ["a", "b", "c"], "source": "s", "group": "",
                       "prompt": ["Q one?", "Q one?", "Q"], "response": ["Answer.", "Answer.", "x" * 50]})
    out, dropped = cleaning.clean_pair_rows(df, CleanParams(min_chars=5, max_chars=100))
    assert out["prompt"].tolist() == ["Q one?", "Q"] and dropped == {"duplicate": 1}
