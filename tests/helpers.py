"""What the tests share that is not a fixture: tiny params and corpora, running a stage's run()
with the sections it reads, and a tiny copy of the project in its own git repository for the
tests that run the real DVC."""

from __future__ import annotations

import os
import re
import secrets
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pandas as pd
import yaml

from bench.common import TINY_PROJECT, call_stage, merge
from finetune.config.schema import Params
from finetune.paths import Paths

ROOT = Path(__file__).resolve().parents[1]


SHARED_CORPORA = ROOT.parent / "shared" / "corpora"


# Two short "books" with enough paragraphs to be cut into several passages each.
BOOK_A = "# The Mill\n\n" + "\n\n".join(
    f"The miller counted sacks on day {i}. The wheel turned slowly in the brown water, "
    f"and the grain came down in a pale stream number {i}." for i in range(40))


BOOK_B = "\n\n".join(
    f"Rain fell on the harbour for the {i}th morning. Boats knocked together and the gulls "
    f"argued over rope {i} and a crate of herring." for i in range(40))


def tiny_params(**sections: dict[str, Any]) -> Params:
    """Default params with a tiny scratch model and a small training run; `sections` overrides
    keys, e.g. tiny_params(train={"max_steps": 2})."""
    raw: dict[str, Any] = {
        "num_proc": 1,  # tests/test_streaming.py runs worker processes
        "model": {"source": "scratch",
                  "scratch": {"n_layer": 2, "n_embd": 64, "n_head": 2, "vocab_size": 400,
                              "n_positions": 128}},
        "tokenize": {"block_size": 32},
        "train": {"max_steps": 4, "batch_size": 4, "eval_steps": 2, "logging_steps": 1,
                  "device": "cpu", "learning_rate": 1.0e-3},
        "evaluate": {"max_new_tokens": 5, "prompts": ["The miller"],
                     "max_generation_examples": 4},
    }
    for name, values in sections.items():
        if isinstance(values, dict):
            raw[name] = {**raw.get(name, {}), **values}
        else:
            raw[name] = values
    return Params.model_validate(raw)


def run_data_stages(params: Params, paths: Paths) -> None:
    from stages import base_model, clean, ingest, scratch_texts, split, tokenize

    for stage in (ingest, clean, split, scratch_texts, base_model, tokenize):
        run_stage(stage, params, paths)


def support_conversations(n: int = 40) -> list[dict[str, Any]]:
    """Short support chats of one or two exchanges, each different, in two categories."""
    convs = []
    for i in range(n):
        messages = [{"role": "user", "content": f"Where is my order FH-{1000 + i}?"},
                    {"role": "assistant", "content": f"Order FH-{1000 + i} left us on day {i % 7}."}]
        if i % 2:
            messages += [{"role": "user", "content": f"Can I return item {i}?"},
                         {"role": "assistant", "content": "Yes, within 30 days, free of charge."}]
        convs.append({"messages": messages, "category": "returns" if i % 2 else "orders"})
    return convs


BIN = Path(sys.executable).parent


GIT_ENV = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com"}


# What `dvc repro` runs before train; inputs runs on every repro (always_changed)
DATA_STAGES = ("inputs", "ingest", "clean", "split", "scratch_texts", "base_model", "tokenize")


# the README's exp show: no artifact hashes, no queue columns, no dates
DROP = ".*/|State|Executor|Created"


def sh(cwd: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, **GIT_ENV, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
                "COLUMNS": "200", **(env or {})}
    result = subprocess.run(args, cwd=cwd, env=full_env, capture_output=True, text=True)
    assert result.returncode == 0, f"{' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result


ALWAYS = {"inputs"}  # runs on every repro: it hashes the files ingest.paths names (dvc.yaml)


def stages_run(output: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", output))


def stale(project: Path, *targets: str) -> set[str]:
    """The stages `dvc status` names: what a `dvc repro` would run next."""
    return set(re.findall(r"^(\w+):$", sh(project, "dvc", "status", *targets).stdout, re.MULTILINE))


def up_to_date(status: str) -> bool:
    """`dvc status` with nothing to rerun: only the inputs stage, which always runs."""
    return status.split() == ["inputs:", "always", "changed"]


def project_files() -> list[str]:
    """What a fresh clone holds: the files git tracks (staged ones included)."""
    listed = subprocess.run(["git", "ls-files"], cwd=ROOT,
                            capture_output=True, text=True, check=True).stdout.split("\n")
    return [f for f in listed if f and (ROOT / f).is_file()]


def set_learning_rate(repo: Path, value: float) -> None:
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["train"]["learning_rate"] = value
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_file()}


def tiny_project(repo: Path, overrides: dict | None = None) -> Path:
    """A copy of this repository in its own git repository (one commit), with the TINY_PROJECT params
    and `overrides` merged into params.yaml."""
    for name in project_files():
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, repo / name)
    params = merge(yaml.safe_load((repo / "params.yaml").read_text()), TINY_PROJECT)
    (repo / "params.yaml").write_text(yaml.safe_dump(merge(params, overrides or {}),
                                                     sort_keys=False))
    sh(repo, "git", "init", "-q", "-b", "main")
    sh(repo, "git", "add", "-A")
    sh(repo, "git", "commit", "-qm", "tiny project")
    return repo


def frame(texts: list[str], doc: str = "d") -> pd.DataFrame:
    return pd.DataFrame({"doc_id": [f"{doc}{i}" for i in range(len(texts))], "source": "s", "group": "",
                         "title": "t", "text": texts})


def run_stage(stage: ModuleType, params: Params, paths: Paths, **extra: Any) -> dict[str, Any]:
    """A stage's run() on `paths` with the params keys its signature names (bench.common)."""
    return call_stage(stage, params, paths, **extra)


def evaluate_models(params: Params, paths: Paths) -> dict[str, Any]:
    """evaluate_base, then evaluate: both models scored, as dvc repro runs them."""
    from stages import evaluate, evaluate_base

    run_stage(evaluate_base, params, paths)
    return run_stage(evaluate, params, paths)


def write_metrics(name: str, summary: dict[str, Any], paths: Paths) -> None:
    """metrics/<name>.json (and <name>_details.json for train and eval) as the stage writes them."""
    from finetune.stage import write_summary
    from stages import evaluate, train

    figures = {"train": train.HEADLINE, "eval": evaluate.HEADLINE}.get(name)
    write_summary(name, summary, paths, figures=figures)


SECRET = "hf_" + secrets.token_hex(12)  # made at run time, so no file holds it beforehand
SECRETS = {"HF_TOKEN": SECRET, "HUGGING_FACE_HUB_TOKEN": SECRET, "WANDB_API_KEY": SECRET,
           "AWS_SECRET_ACCESS_KEY": SECRET}


def built_pipeline(top: Path) -> Path:
    """In `top`: the tiny project (`project/`) run end to end by `dvc repro` (with secrets in the
    environment; its output in `first-repro.log`), committed, and pushed to a bare git
    `origin.git` and to the project's default DVC remote, `dvc-storage/` beside it."""
    sh(top, "git", "init", "-q", "--bare", "-b", "main", "origin.git")
    repo = tiny_project(top / "project")
    sh(repo, "git", "remote", "add", "origin", str(top / "origin.git"))
    first = sh(repo, "dvc", "repro", env=SECRETS)
    (top / "first-repro.log").write_text(first.stdout + first.stderr)
    sh(repo, "git", "add", "-A")
    sh(repo, "git", "commit", "-qm", "a run")
    sh(repo, "dvc", "push")
    sh(repo, "git", "push", "-q", "origin", "main")
    return repo


def clone_of(pipeline: Path, where: Path) -> Path:
    """A copy of the built pipeline's repository as it stands after its run and push: the git
    repository (its origin the same bare repository), the workspace with every output, and a DVC
    cache and run cache of its own, so nothing a test runs reaches the others. A copy, not
    `git clone` + `dvc checkout`: the same state in a tenth of a second instead of three DVC
    commands (the teammate's real clone and pull is tests/test_pipeline.py's own test)."""
    shutil.copytree(pipeline, where, symlinks=True,
                    ignore=lambda folder, names: ["tmp"] if Path(folder).name == ".dvc" else [])
    return where
