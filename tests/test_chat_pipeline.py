"""Guide 4 end to end with the real DVC and a tiny scratch model: the sample support chats run as
the README says, `dvc exp run -S mode=chat -S 'ingest.paths=[data/examples/chat]'`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers import DATA_STAGES, sh, stages_run, tiny_project

pytestmark = [pytest.mark.slow, pytest.mark.scenario]


def test_the_chat_guide_as_an_experiment(tmp_path: Path) -> None:
    project = tiny_project(tmp_path / "project")
    done = sh(project, "dvc", "exp", "run", "-n", "support-chat", "-S", "mode=chat",
              "-S", "ingest.paths=[data/examples/chat]", "-S", "ingest.group_field=category",
              "-S", "tokenize.block_size=512",
              "-S", 'evaluate.prompts=["Can I pay in instalments?"]')
    assert stages_run(done.stdout) == {*DATA_STAGES, "train", "evaluate_base", "evaluate", "export", "report",
                                       "preference_data", "preference", "evaluate_preference"}
    metrics = project / "metrics"
    ingested = json.loads((metrics / "ingest.json").read_text())
    assert ingested["records"] == 156 and ingested["skipped"] == 0
    tokenized = json.loads((metrics / "tokenize.json").read_text())
    assert tokenized["train"]["examples_per_block"] > 1.5
    assert 0.5 < tokenized["train"]["packing_efficiency"] <= 1
    ev = json.loads((metrics / "eval_details.json").read_text())
    assert ev["finetuned"]["perplexity"] < ev["base"]["perplexity"]
    assert {"bleu", "rougeL"} <= set(ev["finetuned"]) and ev["test_tokens"] > 0
    # the support categories: stratified, and scored per group with BLEU/ROUGE-L
    split = json.loads((metrics / "split.json").read_text())["groups"]
    assert len(split) == 10 and all(min(n.values()) >= 1 for n in split.values()), split
    analysis = json.loads((metrics / "eval_analysis.json").read_text())
    assert analysis["by"] == "group" and len(analysis["tables"]["group"]) == 10
    assert all({"base_bleu", "finetuned_rougeL"} <= set(row) for row in analysis["tables"]["group"])
    assert analysis["largest_gain"][0]["text"].startswith("user: ")
    samples = json.loads((metrics / "samples.json").read_text())
    assert samples[0]["prompt"] == "Can I pay in instalments?"
    report = (project / "reports" / "report.md").read_text()
    assert "chat mode" in report
    assert "### Per group" in report and "| refunds |" in report and "fine-tuned bleu" in report
    table = sh(project, "dvc", "exp", "show", "--no-pager", "--csv").stdout
    assert "support-chat" in table and "chat" in table
