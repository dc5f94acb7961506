"""Killed runs: a `dvc repro` killed during train resumes from its last checkpoint and ends with
the metrics of an uninterrupted run; a stage killed in the middle of writing leaves no output that
looks complete, and its rerun clears what the kill left behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from finetune.config.schema import Params
from finetune.paths import PATHS
from finetune.training import runs
from stages import clean, ingest, tokenize, train
from tests.helpers import (
    BIN,
    BOOK_A,
    BOOK_B,
    GIT_ENV,
    ROOT,
    clone_of,
    run_data_stages,
    run_stage,
    sh,
    tiny_params,
)

pytestmark = pytest.mark.slow

RESUMABLE = {"save_steps": 2}  # the tiny project's run (8 steps, evaluated every 4), checkpointed
SAME_RUN = ("train_loss", "val_loss", "steps", "tokens")  # what two runs of one training share


def evaluated_steps(project: Path) -> list[str]:
    """The steps of the validation losses DVCLive logged, in order."""
    log = project / PATHS.train_log / "plots" / "metrics" / "eval" / "loss.tsv"
    return [line.split("\t")[0] for line in log.read_text().splitlines()[1:]]


def kill_when(process: subprocess.Popen, ready: callable, timeout: float = 300) -> None:
    """SIGKILL the process group once `ready()` holds; fail if the run ends first."""
    deadline = time.monotonic() + timeout
    while not ready():
        assert process.poll() is None, "the run finished before it could be killed"
        assert time.monotonic() < deadline, "timed out waiting for the moment to kill"
        time.sleep(0.01)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()


@pytest.fixture
def resumable(pipeline: Path, tmp_path: Path) -> Path:
    """A copy of the built tiny pipeline (its data stages done) whose run checkpoints every 2
    steps: otherwise the same run, so the built pipeline's own is the uninterrupted one."""
    project = clone_of(pipeline, tmp_path / "project")
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["train"].update(RESUMABLE)
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return project


def test_killed_dvc_repro_resumes_training_and_ends_like_an_uninterrupted_run(
        resumable: Path) -> None:
    uninterrupted = json.loads((resumable / PATHS.details_file("train")).read_text())
    assert uninterrupted["resumed_from_step"] == 0 and uninterrupted["steps"] == 8
    evaluated = evaluated_steps(resumable)
    assert evaluated[:3] == ["0", "4", "8"], evaluated
    checkpoints = resumable / PATHS.checkpoints
    env = {**os.environ, **GIT_ENV, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    with open(resumable / "killed.log", "w") as log:
        run = subprocess.Popen(["dvc", "repro", "train"], cwd=resumable, env=env, stdout=log,
                               stderr=subprocess.STDOUT, start_new_session=True)
        kill_when(run, lambda: any(checkpoints.glob("checkpoint-*/COMPLETE")))
    assert not (resumable / PATHS.finetuned).exists()

    resumed = sh(resumable, "dvc", "repro", "train").stdout
    step = int(resumed.split("train: resuming from models/checkpoints/checkpoint-")[1].split()[0])
    assert 2 <= step < 8
    after_resume = json.loads((resumable / PATHS.details_file("train")).read_text())
    assert after_resume["resumed_from_step"] == step and after_resume["steps"] == 8
    assert not checkpoints.exists(), "train.keep_checkpoints is false: removed after the run"
    assert evaluated_steps(resumable) == evaluated, "the steps before the checkpoint too, once each"
    for key in SAME_RUN:
        assert after_resume[key] == uninterrupted[key], key


def test_checkpoints_of_another_run_are_not_resumed(trained: tuple[Params, object]) -> None:
    params, paths = trained
    keep = params.model_copy(update={"train": params.train.model_copy(
        update={"save_steps": 2, "keep_checkpoints": True})})
    first = run_stage(train, keep, paths)
    assert sorted(c.name for c in paths.checkpoints.glob("checkpoint-*")) == ["checkpoint-4"]
    run_file = paths.checkpoints / runs.RUN_FILE
    assert json.loads(run_file.read_text())["finished"], "kept, but never resumed"
    again = run_stage(train, keep, paths)
    assert again["resumed_from_step"] == 0  # a finished run: started afresh
    for key in SAME_RUN:  # trained twice, the same seed
        assert again[key] == first[key], key
    changed = keep.model_copy(update={"train": keep.train.model_copy(
        update={"learning_rate": 5.0e-4})})
    unfinished = {"fingerprint": runs.fingerprint(keep.seed, keep.train, paths)}
    run_file.write_text(json.dumps(unfinished))
    summary = run_stage(train, changed, paths)
    assert summary["resumed_from_step"] == 0  # other params: started afresh
    changed_id = runs.fingerprint(changed.seed, changed.train, paths)
    run_file.write_text(json.dumps({"fingerprint": changed_id}))
    (paths.checkpoints / "checkpoint-4" / runs.COMPLETE).unlink()  # as if killed mid-save
    assert runs.resume_point(paths.checkpoints, changed_id) is None
    assert not (paths.checkpoints / "checkpoint-4").exists() and run_file.is_file()
    run_stage(train, params, paths)
    assert not paths.checkpoints.exists()


KILL_AFTER = """
import importlib, os, signal, sys
target, stage = sys.argv[1:3]
module, _, attribute = target.partition(":")
*owner_path, name = attribute.split(".")
owner = importlib.import_module(module)
for part in owner_path:
    owner = getattr(owner, part)
original = getattr(owner, name)
def write_then_die(*args, **kwargs):
    original(*args, **kwargs)
    os.kill(os.getpid(), signal.SIGKILL)
setattr(owner, name, write_then_die)
importlib.import_module(f"stages.{stage}").main([])
"""


@pytest.fixture(scope="module")
def ready_project(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Params]:
    """A tiny project whose data stages have run, with its params.yaml, for killing stages."""
    root = tmp_path_factory.mktemp("killed")
    (root / "raw").mkdir()
    (root / "raw" / "mill.md").write_text(BOOK_A)
    (root / "raw" / "harbour.txt").write_text(BOOK_B)
    params = tiny_params(ingest={"paths": ["raw"]}, clean={"max_chars": 400})
    (root / "params.yaml").write_text(yaml.safe_dump(params.model_dump()))
    cwd = Path.cwd()
    os.chdir(root)  # ingest.paths is relative, as in a real project
    try:
        run_data_stages(params, PATHS.under(root))
    finally:
        os.chdir(cwd)
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)  # DVCLive wants a repository
    subprocess.run(["git", "commit", "-q", "--allow-empty", "-m", "x"], cwd=root, check=True,
                   env={**os.environ, **GIT_ENV})
    return root, params


@pytest.mark.parametrize(("stage", "target", "output"), [
    (ingest, "pyarrow.parquet:ParquetWriter.write_table", PATHS.ingested),  # a row group
    (tokenize, "datasets:Dataset.save_to_disk", PATHS.tokenized),  # after the first split
    (train, "transformers:PreTrainedModel.save_pretrained", PATHS.finetuned),  # before tokenizer
    (clean, "pathlib:Path.write_text", Path("metrics/clean.json")),  # the metrics file
])
def test_a_stage_killed_mid_write_leaves_nothing_that_looks_complete(
        ready_project: tuple[Path, Params], stage: object, target: str, output: Path) -> None:
    root, params = ready_project
    name = stage.__name__.rsplit(".", 1)[1]
    final = root / output
    if final.is_dir():
        for path in sorted(final.rglob("*"), reverse=True):
            path.rmdir() if path.is_dir() else path.unlink()
        final.rmdir()
    elif final.exists():
        final.unlink()
    killed = subprocess.run([sys.executable, "-c", KILL_AFTER, target, name], cwd=root,
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True,
                            text=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    leftovers = list(final.parent.glob(f".{final.name}.tmp-*"))
    assert leftovers, "killed while writing: the temporary output is still there"
    assert not final.exists()

    cwd = Path.cwd()
    os.chdir(root)
    try:
        from finetune.files import write_json

        summary = run_stage(stage, params, PATHS.under(root))  # the rerun clears the leftovers
        if output.parent.name == "metrics":
            write_json(summary, final)
    finally:
        os.chdir(cwd)
    assert final.exists() and not any(path.exists() for path in leftovers)
