"""`uv run rate`: blind A/B ratings from piped input, unblinded correctly, with a win rate and its
interval, tied to the samples they judged; the report shows only ratings of the current samples."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from finetune.data.preferences import rated_pairs
from finetune.report import content
from finetune.report.ratings import NO_RATINGS, current, samples_hash, summarise, unblind, wilson
from tests.helpers import ROOT

SAMPLES = [{"prompt": f"Prompt {i}", "base": f"base text {i}", "finetuned": f"tuned text {i}"}
           for i in range(3)]
RATE = Path(sys.executable).parent / "rate"


def test_wilson_interval_and_unblinding() -> None:
    assert wilson(8, 10) == (0.4902, 0.9433)
    assert wilson(0, 0) is None and wilson(5, 5)[1] == 1.0
    assert unblind("a", "base") == "base" and unblind("b", "base") == "finetuned"
    assert unblind("=", "finetuned") == "tie" and unblind("s", "base") is None


def test_the_hash_follows_the_content_not_the_layout() -> None:
    reordered = [{"finetuned": s["finetuned"], "prompt": s["prompt"], "base": s["base"]}
                 for s in SAMPLES]
    assert samples_hash(reordered) == samples_hash(SAMPLES)
    newer = [dict(SAMPLES[0], finetuned="another model's text"), *SAMPLES[1:]]
    assert samples_hash(newer) != samples_hash(SAMPLES)


def rate(tmp_path: Path, answers: str, samples: bool = True) -> subprocess.CompletedProcess[str]:
    (tmp_path / "metrics").mkdir(parents=True, exist_ok=True)
    if samples:
        (tmp_path / "metrics" / "samples.json").write_text(json.dumps(SAMPLES))
    return subprocess.run([str(RATE)], cwd=tmp_path, input=answers, text=True, capture_output=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})


def test_piped_answers_are_recorded_unblinded(tmp_path: Path) -> None:
    done = rate(tmp_path, "x\nb\n=\ns\n")  # "x" is refused and asked again
    assert done.returncode == 0, done.stderr
    assert "'x' is not one of a, b, =, s" in done.stdout
    shown = re.findall(r"\[(\d)/3\] Prompt \d\n\nA: (\w+) text \d\n\nB: (\w+) text \d", done.stdout)
    assert [n for n, _, _ in shown] == ["1", "2", "3"]
    b_of_first = {"base": "base", "tuned": "finetuned"}[shown[0][2]]
    result = json.loads((tmp_path / "metrics" / "human_eval.json").read_text())
    assert [r["preferred"] for r in result["ratings"]] == [b_of_first, "tie", None]
    assert result["samples_hash"] == samples_hash(SAMPLES) and result["skipped"] == 1
    assert result["ties"] == 1 and result["finetuned_wins"] + result["base_wins"] == 1
    assert "rate: fine-tuned preferred" in done.stdout and "win rate" in done.stdout
    # the file keeps the texts judged: the one rated prompt (not the tie, not the skip) is a pair
    other = "base" if b_of_first == "finetuned" else "finetuned"
    assert rated_pairs(result) == [{"prompt": [{"role": "user", "content": "Prompt 0"}],
                                    "chosen": {"role": "assistant", "content": SAMPLES[0][b_of_first]},
                                    "rejected": {"role": "assistant", "content": SAMPLES[0][other]}}]


def test_input_that_ends_early_keeps_what_was_rated(tmp_path: Path) -> None:
    done = rate(tmp_path, "a\n")
    assert done.returncode == 0, done.stderr
    assert len(json.loads((tmp_path / "metrics" / "human_eval.json").read_text())["ratings"]) == 1
    before = (tmp_path / "metrics" / "human_eval.json").read_text()
    nothing = rate(tmp_path, "")
    assert nothing.returncode == 1 and nothing.stderr == "rate: error: no prompt was rated; nothing written\n"
    assert (tmp_path / "metrics" / "human_eval.json").read_text() == before
    missing = rate(tmp_path / "elsewhere", "a\n", samples=False)
    assert missing.returncode == 1
    assert missing.stderr.startswith("rate: error: metrics/samples.json: missing; run the pipeline")


@pytest.mark.parametrize("fresh", [True, False])
def test_the_report_shows_only_ratings_of_the_current_samples(fresh: bool) -> None:
    ratings = [{"prompt": "Prompt 0", "a": "base", "choice": "A", "preferred": "base"},
               {"prompt": "Prompt 1", "a": "base", "choice": "B", "preferred": "finetuned"}]
    judged = SAMPLES if fresh else [dict(SAMPLES[0], finetuned="older model"), *SAMPLES[1:]]
    human = summarise(judged, ratings)
    assert current(human, SAMPLES) is fresh
    text = content.to_markdown(content.rating_blocks(human, SAMPLES))
    assert ("Win rate of the fine-tuned model 50%" in text) is fresh
    assert ("judged other samples" in text) is not fresh
    assert "Not rated yet" in content.to_markdown(content.rating_blocks(NO_RATINGS, SAMPLES))


def test_a_multi_line_sample_stays_in_its_markdown_row() -> None:
    md = content.to_markdown([("table", [["prompt", "base"], ["Once | upon", "line one\n\nline two"]])])
    assert md.splitlines()[2] == "| Once \\| upon | line one<br><br>line two |"


def test_the_project_ships_no_ratings() -> None:
    assert json.loads((ROOT / "metrics" / "human_eval.json").read_text()) == NO_RATINGS
