"""End to end: the real `dvc repro` in a temporary git repository holding this project, with a
tiny scratch model; then a cached rerun, and a learning-rate change that reruns only what
depends on it."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT

BIN = Path(sys.executable).parent
GIT_ENV = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com"}
TINY = {
    "model": {"source": "scratch"},
    "tokenize": {"block_size": 64},
    "train": {"max_steps": 8, "batch_size": 4, "eval_steps": 4, "logging_steps": 2,
              "learning_rate": 3.0e-3, "device": "cpu"},
    "evaluate": {"max_new_tokens": 8},
}


def sh(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **GIT_ENV, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    assert result.returncode == 0, f"{' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result


def stages_run(output: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", output))


def project_files() -> list[str]:
    """What a fresh clone holds: tracked files plus new files git does not ignore."""
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, text=True, check=True).stdout.split("\n")
    return [f for f in listed if f and (ROOT / f).is_file()]


def merge(base: dict, override: dict) -> dict:
    return {k: merge(base[k], v) if isinstance(v, dict) else v for k, v in override.items()} | {
        k: v for k, v in base.items() if k not in override}


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("clone") / "project"
    for name in project_files():
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, repo / name)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    (repo / "params.yaml").write_text(yaml.safe_dump(merge(params, TINY), sort_keys=False))
    sh(repo, "git", "init", "-q")
    sh(repo, "git", "add", "-A")
    sh(repo, "git", "commit", "-qm", "tiny project")
    return repo


@pytest.mark.slow
def test_dvc_repro_end_to_end(project: Path) -> None:
    first = sh(project, "dvc", "repro")
    assert stages_run(first.stdout) == {"ingest", "clean", "split", "base_model", "tokenize",
                                        "train", "evaluate", "report"}
    ev = json.loads((project / "metrics" / "eval.json").read_text())
    assert ev["finetuned"]["perplexity"] < ev["base"]["perplexity"]
    assert ev["perplexity_improvement"] > 0 and ev["test_tokens"] > 1000
    train = json.loads((project / "metrics" / "train.json").read_text())
    assert train["steps"] == 8 and train["tokens"] == 8 * 4 * 64
    assert (project / "models" / "finetuned" / "model.safetensors").is_file()
    assert "finetuned" in (project / "reports" / "report.md").read_text()
    assert "/tokenized" in (project / "data" / ".gitignore").read_text()
    assert "/finetuned" in (project / "models" / ".gitignore").read_text()

    assert "up to date" in sh(project, "dvc", "status").stdout
    assert stages_run(sh(project, "dvc", "repro").stdout) == set()

    metrics = json.loads(sh(project, "dvc", "metrics", "show", "--json").stdout)
    shown = json.dumps(metrics)
    assert '"perplexity_improvement"' in shown and '"tokens_per_second"' in shown

    sh(project, "git", "add", "-A")
    sh(project, "git", "commit", "-qm", "run")
    exp = sh(project, "dvc", "exp", "show", "--no-pager", "--csv").stdout
    header = exp.splitlines()[0]
    assert "train.learning_rate" in header and "finetuned.perplexity" in header


@pytest.mark.slow
def test_learning_rate_change_reruns_only_train_evaluate_report(project: Path) -> None:
    sh(project, "dvc", "repro")  # whatever state the previous test left, make it current
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["train"]["learning_rate"] = 1.0e-3
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert stages_run(sh(project, "dvc", "repro").stdout) == {"train", "evaluate", "report"}
