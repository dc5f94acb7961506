"""End to end with the real DVC and a tiny scratch model: `dvc repro` in a temporary git
repository holding this project, cached reruns, a params change that reruns only what depends on
it, byte-identical data stages, the run cache, experiments, and a teammate who clones and pulls."""

from __future__ import annotations

import json
import os
import re
import secrets
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
DATA_STAGES = ("ingest", "clean", "split", "base_model", "tokenize")
DROP = ".*/|State|Executor"  # the README's exp show: no artifact hashes, no queue columns

pytestmark = pytest.mark.slow


def sh(cwd: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, **GIT_ENV, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
                "COLUMNS": "200", **(env or {})}
    result = subprocess.run(args, cwd=cwd, env=full_env, capture_output=True, text=True)
    assert result.returncode == 0, f"{' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result


def stages_run(output: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", output))


def project_files() -> list[str]:
    """What a fresh clone holds: the files git tracks (staged ones included)."""
    listed = subprocess.run(["git", "ls-files"], cwd=ROOT,
                            capture_output=True, text=True, check=True).stdout.split("\n")
    return [f for f in listed if f and (ROOT / f).is_file()]


def merge(base: dict, override: dict) -> dict:
    return {k: merge(base[k], v) if isinstance(v, dict) else v for k, v in override.items()} | {
        k: v for k, v in base.items() if k not in override}


def set_learning_rate(repo: Path, value: float) -> None:
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["train"]["learning_rate"] = value
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def lock_outs(repo: Path, stages: tuple[str, ...]) -> dict[str, str]:
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    return {out["path"]: out["md5"] for name in stages for out in lock[name]["outs"]}


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_file()}


def tiny_project(repo: Path, overrides: dict | None = None) -> Path:
    """A copy of this repository in its own git repository (one commit), with the TINY params
    and `overrides` merged into params.yaml."""
    for name in project_files():
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, repo / name)
    params = merge(yaml.safe_load((repo / "params.yaml").read_text()), TINY)
    (repo / "params.yaml").write_text(yaml.safe_dump(merge(params, overrides or {}),
                                                     sort_keys=False))
    sh(repo, "git", "init", "-q", "-b", "main")
    sh(repo, "git", "add", "-A")
    sh(repo, "git", "commit", "-qm", "tiny project")
    return repo


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with the project (`project/`, a copy of this repository with tiny params) pushed
    to a bare git `origin.git`; the project's default DVC remote is `dvc-storage/` beside it."""
    top = tmp_path_factory.mktemp("workspace")
    sh(top, "git", "init", "-q", "--bare", "-b", "main", "origin.git")
    repo = tiny_project(top / "project")
    sh(repo, "git", "remote", "add", "origin", str(top / "origin.git"))
    return top


@pytest.fixture(scope="module")
def project(workspace: Path) -> Path:
    return workspace / "project"


SECRET = "hf_" + secrets.token_hex(12)  # made at run time, so no file holds it beforehand
SECRETS = {"HF_TOKEN": SECRET, "HUGGING_FACE_HUB_TOKEN": SECRET, "WANDB_API_KEY": SECRET,
           "AWS_SECRET_ACCESS_KEY": SECRET}


def test_dvc_repro_end_to_end(project: Path) -> None:
    first = sh(project, "dvc", "repro", env=SECRETS)
    assert SECRET not in first.stdout + first.stderr
    for path in project.rglob("*"):  # metrics, logs, reports, models, DVC's cache and state
        assert not path.is_file() or SECRET.encode() not in path.read_bytes(), path
    assert stages_run(first.stdout) == {*DATA_STAGES, "train", "evaluate", "export", "report"}
    ev = json.loads((project / "metrics" / "eval.json").read_text())
    assert ev["finetuned"]["perplexity"] < ev["base"]["perplexity"]
    assert ev["perplexity_improvement"] > 0 and ev["test_tokens"] > 1000
    train = json.loads((project / "metrics" / "train.json").read_text())
    assert train["steps"] == 8 and train["tokens"] == 8 * 4 * 64
    assert train["env"]["device"] == "cpu" and train["env"]["dvc"]
    assert (project / "models" / "finetuned" / "model.safetensors").is_file()
    assert "finetuned" in (project / "reports" / "report.md").read_text()
    exported = json.loads((project / "metrics" / "export.json").read_text())
    assert sorted(p.name for p in (project / "models" / "export").iterdir()) == [
        "Modelfile", "finetuned-f16.gguf"]
    assert exported["check"]["tokenizer_agrees"] and exported["check"]["greedy_agreement"] == 1.0
    assert "/tokenized" in (project / "data" / ".gitignore").read_text()
    assert "/finetuned" in (project / "models" / ".gitignore").read_text()

    assert "up to date" in sh(project, "dvc", "status").stdout
    assert stages_run(sh(project, "dvc", "repro").stdout) == set()

    shown = json.dumps(json.loads(sh(project, "dvc", "metrics", "show", "--json").stdout))
    assert '"perplexity_improvement"' in shown and '"tokens_per_second"' in shown


def test_data_stages_give_the_same_bytes_whatever_the_hash_seed(project: Path) -> None:
    sh(project, "dvc", "repro")
    before = lock_outs(project, DATA_STAGES)
    forced = sh(project, "dvc", "repro", "--force", "tokenize", env={"PYTHONHASHSEED": "977"})
    assert stages_run(forced.stdout) == set(DATA_STAGES)
    assert lock_outs(project, DATA_STAGES) == before


def test_learning_rate_change_reruns_only_train_and_what_follows(project: Path) -> None:
    sh(project, "dvc", "repro")
    set_learning_rate(project, 1.0e-3)
    assert stages_run(sh(project, "dvc", "repro").stdout) == {"train", "evaluate", "export", "report"}


def test_training_twice_with_the_same_seed_gives_identical_metrics(project: Path) -> None:
    sh(project, "dvc", "repro")
    first = json.loads((project / "metrics" / "train.json").read_text())
    sh(project, "dvc", "repro", "--force", "--single-item", "train")
    again = json.loads((project / "metrics" / "train.json").read_text())
    for key in ("train_loss", "val_loss", "steps", "tokens"):
        assert again[key] == first[key], key


def test_a_params_combination_that_already_ran_comes_from_the_run_cache(project: Path) -> None:
    set_learning_rate(project, 2.0e-3)
    assert "train" in stages_run(sh(project, "dvc", "repro").stdout)
    ran = (project / "metrics" / "train.json").read_text()
    set_learning_rate(project, 4.0e-3)
    assert "train" in stages_run(sh(project, "dvc", "repro").stdout)
    set_learning_rate(project, 2.0e-3)
    restored = sh(project, "dvc", "repro").stdout
    assert "Stage 'train' is cached - skipping run, checking out outputs" in restored
    assert stages_run(restored) == set()
    assert (project / "metrics" / "train.json").read_text() == ran


def test_experiments_show_params_and_the_metrics_that_matter(project: Path) -> None:
    set_learning_rate(project, 3.0e-3)
    sh(project, "dvc", "repro")
    sh(project, "git", "add", "-A")
    sh(project, "git", "commit", "-qm", "baseline")
    sh(project, "dvc", "exp", "run", "-n", "lr-high", "-S", "train.learning_rate=6.0e-3")
    table = sh(project, "dvc", "exp", "show", "--only-changed", "--drop", DROP, "--no-pager").stdout
    assert "lr-high" in table and "…" not in table, table
    assert max(map(len, table.splitlines())) <= 200
    header = sh(project, "dvc", "exp", "show", "--only-changed", "--drop", DROP,
                "--csv").stdout.splitlines()[0]
    assert "/" not in header
    for column in ("train.learning_rate", "finetuned.perplexity", "perplexity_improvement",
                   "val_loss", "tokens_per_second"):
        assert column in header, header
    assert "train_runtime" not in header and "per_device_train_batch_size" not in header
    plots = sh(project, "dvc", "plots", "diff", "--json", "lr-high").stdout
    assert "lr-high" in plots and "eval/loss.tsv" in plots


def test_a_teammate_clones_pulls_and_has_the_same_bytes(workspace: Path, project: Path) -> None:
    sh(project, "git", "reset", "-q", "--hard")  # back from the experiment to the baseline
    sh(project, "dvc", "checkout")
    assert "up to date" in sh(project, "dvc", "status").stdout
    sh(project, "dvc", "push")
    sh(project, "git", "push", "-q", "origin", "main")
    sh(project, "dvc", "exp", "push", "origin", "lr-high")

    mate = workspace / "teammate"
    sh(workspace, "git", "clone", "-q", str(workspace / "origin.git"), str(mate))
    sh(mate, "dvc", "pull")
    assert "up to date" in sh(mate, "dvc", "status").stdout
    assert stages_run(sh(mate, "dvc", "repro").stdout) == set()
    for shared in ("metrics", "data/tokenized", "data/processed", "models/base",
                   "models/finetuned"):
        assert tree_bytes(mate / shared) == tree_bytes(project / shared), shared

    sh(mate, "dvc", "exp", "pull", "origin", "lr-high")
    assert "lr-high" in sh(mate, "dvc", "exp", "show", "--no-pager").stdout
