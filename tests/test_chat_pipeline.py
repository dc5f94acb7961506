"""Guide 4 end to end with the real DVC and a tiny scratch model: the sample support chats run as
the README says, `dvc exp run -S mode=chat -S 'ingest.paths=[data/examples/chat]'`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.test_pipeline import DATA_STAGES, sh, stages_run, tiny_project

pytestmark = pytest.mark.slow


def test_the_chat_guide_as_an_experiment(tmp_path: Path) -> None:
    project = tiny_project(tmp_path / "project")
    done = sh(project, "dvc", "exp", "run", "-n", "support-chat", "-S", "mode=chat",
              "-S", "ingest.paths=[data/examples/chat]", "-S", "tokenize.block_size=512",
              "-S", 'evaluate.prompts=["Can I pay in instalments?"]')
    assert stages_run(done.stdout) == {*DATA_STAGES, "train", "evaluate", "export", "report"}
    metrics = project / "metrics"
    ingested = json.loads((metrics / "ingest.json").read_text())
    assert ingested["records"] == 156 and ingested["skipped"] == 0
    tokenized = json.loads((metrics / "tokenize.json").read_text())
    assert tokenized["train"]["examples_per_block"] > 1.5
    assert 0.5 < tokenized["train"]["packing_efficiency"] <= 1
    ev = json.loads((metrics / "eval_details.json").read_text())
    assert ev["finetuned"]["perplexity"] < ev["base"]["perplexity"]
    assert {"bleu", "rougeL"} <= set(ev["finetuned"]) and ev["test_tokens"] > 0
    samples = json.loads((metrics / "samples.json").read_text())
    assert samples[0]["prompt"] == "Can I pay in instalments?"
    report = (project / "reports" / "report.md").read_text()
    assert "chat mode" in report
    table = sh(project, "dvc", "exp", "show", "--no-pager", "--csv").stdout
    assert "support-chat" in table and "chat" in table
