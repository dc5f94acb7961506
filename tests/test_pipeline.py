"""End to end with the real DVC and a tiny scratch model: `dvc repro` in a temporary git
repository holding this project, cached reruns, a params change that reruns only what depends on
it, the run cache, `uv run tune` (its trials are experiments: pruned, interrupted, resumed, two at
once, the best applied) with the experiment table at 200 columns, and a teammate who clones and
pulls."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from tests.helpers import (
    ALWAYS,
    BIN,
    DATA_STAGES,
    DROP,
    GIT_ENV,
    SECRET,
    clone_of,
    set_learning_rate,
    sh,
    stages_run,
    stale,
    tree_bytes,
    up_to_date,
)

pytestmark = pytest.mark.slow


@pytest.fixture
def project(pipeline: Path, tmp_path: Path) -> Path:
    """This test's own clone of the built pipeline, its outputs checked out from the shared cache."""
    return clone_of(pipeline, tmp_path / "project")


def test_dvc_repro_end_to_end(pipeline: Path, tmp_path: Path) -> None:
    project = pipeline
    first = (project.parent / "first-repro.log").read_text()
    assert SECRET not in first
    for path in project.rglob("*"):  # metrics, logs, reports, models, DVC's cache and state
        assert not path.is_file() or SECRET.encode() not in path.read_bytes(), path
    assert stages_run(first) == {*DATA_STAGES, "train", "evaluate_base", "evaluate", "export", "report",
                                 "preference_data", "preference", "evaluate_preference"}
    ev = json.loads((project / "metrics" / "eval_details.json").read_text())
    assert ev["finetuned"]["perplexity"] < ev["base"]["perplexity"]
    assert ev["perplexity_improvement"] > 0 and ev["test_tokens"] > 1000
    headline = json.loads((project / "metrics" / "eval.json").read_text())
    assert headline["ref_base"] == ev["reference"]["base"]["perplexity"] > 1  # the shipped reference
    assert {"ref_perplexity", "ref_change"} < set(headline) and ev["reference"]["words"] > 3000
    analysis = json.loads((project / "metrics" / "eval_analysis.json").read_text())
    assert len(analysis["tables"]["title"]) == 4 and analysis["largest_loss"]  # the four sample books
    train = json.loads((project / "metrics" / "train_details.json").read_text())
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

    project = clone_of(pipeline, tmp_path / "project")  # the built one is only read
    assert up_to_date(sh(project, "dvc", "status").stdout)
    assert stages_run(sh(project, "dvc", "repro").stdout) == ALWAYS

    metrics = json.loads(sh(project, "dvc", "metrics", "show", "--json").stdout)[""]["data"]
    headline = {"metrics/train.json", "metrics/eval.json", "metrics/preference.json",
                "metrics/preference_eval.json"}
    assert set(metrics) == headline, "the headline files only"
    shown = json.dumps(metrics)
    assert '"improvement"' in shown and '"tokens_per_second"' in shown and '"steps"' not in shown


def test_a_params_combination_that_already_ran_comes_from_the_run_cache(project: Path) -> None:
    ran = (project / "metrics" / "train_details.json").read_text()
    before = yaml.safe_load((project / "params.yaml").read_text())["train"]["learning_rate"]
    # a rate no other test trains with: train reruns, and what follows it is stale; the base
    # model's scores (evaluate_base) and the data stages are not (DVC's status names exactly
    # what a `dvc repro` would run next; preference tunes the trained model)
    set_learning_rate(project, 2.5e-3)
    assert stages_run(sh(project, "dvc", "repro", "train").stdout) == {*ALWAYS, "train"}
    assert stale(project) == {*ALWAYS, "evaluate", "export", "report", "preference", "evaluate_preference"}
    set_learning_rate(project, before)  # back to a combination that ran: nothing trains
    restored = sh(project, "dvc", "repro").stdout
    assert "Stage 'train' is cached - skipping run, checking out outputs" in restored
    assert stages_run(restored) == ALWAYS  # and what follows train is up to date again
    assert (project / "metrics" / "train_details.json").read_text() == ran


# Four params change, as a full/lora comparison with its learning rate, steps and weight decay
# would: the README's `dvc exp show` must still show all of them at 200 columns.
TUNE = {"study": "s", "n_trials": 3, "sampler": "random", "seed": 0, "pruner_startup_trials": 1,
        "space": {"train.method": ["full", "lora"],
                  "train.learning_rate": {"low": 1.0e-7, "high": 1.0e-2, "log": True},
                  "train.max_steps": [6, 8, 206],
                  "train.weight_decay": {"low": 0.0, "high": 0.1}}}
GOOD = ["train.method=lora", "train.max_steps=6", "train.weight_decay=0.05"]
# The pipeline's own train params (TINY_PROJECT), as tune writes them.
RAN = {"train.method": "full", "train.max_steps": 8, "train.weight_decay": 0.0,
       "train.learning_rate": 3.0e-3}


def wait_for(path: Path, proc: subprocess.Popen, seconds: float = 180) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists():
        assert proc.poll() is None, "tune ended before the trial started"
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.2)


def test_tune_searches_prunes_resumes_in_parallel_and_applies_the_best(project: Path) -> None:
    import optuna

    params = yaml.safe_load((project / "params.yaml").read_text())
    # the combination the resumed study enqueues second is the one the pipeline trained: the
    # run cache has it
    assert {k: params["train"][k.split(".")[1]] for k in RAN} == RAN
    (project / "params.yaml").write_text(yaml.safe_dump({**params, "tune": TUNE}, sort_keys=False))
    sh(project, "git", "commit", "-qam", "a search space")
    # A good trial; an obviously bad one (a learning rate that learns nothing), pruned; then a
    # long one, interrupted with Ctrl-C while it trains. The last learns fast (full, a high
    # rate), so the pruner never stops it first: a slow sampled point could be pruned at its
    # second evaluation if the Ctrl-C, sent after its first, came late.
    interrupted = project.parent / "interrupted.log"
    with open(interrupted, "w") as log:
        proc = subprocess.Popen([str(BIN / "tune"), "--enqueue", *GOOD, "train.learning_rate=2.0e-3",
                                 "--enqueue", "train.learning_rate=1.0e-7", "train.max_steps=206",
                                 "--enqueue", "train.method=full", "train.learning_rate=8.0e-3",
                                 "train.max_steps=206", "train.weight_decay=0.0"],
                                cwd=project, stdout=log,
                                stderr=subprocess.STDOUT, env={**os.environ, **GIT_ENV})
        wait_for(project / "tune" / "logs" / "s-t2.progress.jsonl", proc)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(120) == 130
    out = interrupted.read_text()
    assert "trial 0 (s-t0): train.method=lora train.learning_rate=0.002" in out, out
    assert re.search(r"trial 1 \(s-t1\): pruned at step \d+", out), out
    assert "stopped: the running trial is marked failed; 2 of 3 trials are finished" in out, out
    assert not list((project / ".dvc" / "tmp" / "exps" / "standalone").glob("tmp*"))
    assert sh(project, "git", "status", "--porcelain").stdout == ""

    # Two at once: a new point, and one that already ran, which DVC does not train again.
    resumed = sh(project, "tune", "--trials", "4", "--jobs", "2", "--enqueue", "train.method=full",
                 "train.max_steps=6", "train.weight_decay=0.05", "train.learning_rate=8.0e-3",
                 "--enqueue", *(f"{k}={v}" for k, v in RAN.items())).stdout
    assert "study s: 2 of 4 trials finished; running 2 more, 2 at a time" in resumed
    study = optuna.load_study(study_name="s", storage=f"sqlite:///{project}/tune/s.db")
    states = [t.state.name for t in study.trials]
    assert states == ["COMPLETE", "PRUNED", "FAIL", "COMPLETE", "COMPLETE"], states
    again = (project / "tune" / "logs" / "s-t4.log").read_text()  # the pipeline's own point
    assert "Running stage 'train'" not in again and re.search(
        r"Stage 'train' (is cached - skipping run|didn't change, skipping)", again), again
    starts = sorted(t.datetime_start for t in study.trials[3:])
    assert starts[1] < min(t.datetime_complete for t in study.trials[3:]), "ran side by side"
    experiments = set(sh(project, "git", "for-each-ref", "--format=%(refname:lstrip=-1)",
                         "refs/exps").stdout.split())
    complete = {f"s-t{t.number}" for t in study.trials if t.state.name == "COMPLETE"}
    assert complete <= experiments and not {"s-t1", "s-t2"} & experiments

    table = sh(project, "dvc", "exp", "show", "--only-changed", "--drop", DROP, "--no-pager").stdout
    assert "s-t0" in table and "s-t3" in table and "…" not in table, table
    assert max(map(len, table.splitlines())) <= 200, table
    header = sh(project, "dvc", "exp", "show", "--only-changed", "--drop", DROP,
                "--csv").stdout.splitlines()[0].split(",")
    for column in ("train.method", "train.learning_rate", "train.max_steps", "train.weight_decay",
                   "val_loss", "tokens_per_second"):
        assert column in header, header
    # trials run through train (tune.score_test: false): no test figure is computed, or changes
    assert not {"perplexity", "improvement", "ref_perplexity", "ref_change"} & set(header), header
    assert not {"steps", "tokens", "train_seconds", "test_tokens"} & set(header), header
    assert (project / "reports" / "tune" / "s" / "history.png").is_file()

    best = re.search(r"apply it with: uv run dvc exp apply (s-t\d+)", resumed).group(1)
    assert best == f"s-t{study.best_trial.number}"
    sh(project, "dvc", "exp", "apply", best)
    applied = yaml.safe_load((project / "params.yaml").read_text())
    for key, value in study.best_trial.user_attrs["values"].items():
        assert applied["train"][key.split(".")[1]] == pytest.approx(value), key
    details = json.loads((project / "metrics" / "train_details.json").read_text())
    assert details["val_loss"] == pytest.approx(study.best_value)
    plots = sh(project, "dvc", "plots", "diff", "--json", best).stdout
    assert best in plots and "eval/loss.tsv" in plots


def test_a_method_comparison_fits_the_experiment_table_at_200_columns(project: Path) -> None:
    """The README's `dvc exp show` of a comparison of methods (method, learning rate,
    freeze_layers, max_steps) shows every changed param beside the headline figures at 200
    columns. The experiments are the run's own, saved with other params and figures as wide as
    the default model's (the table's layout is what is tested, by DVC itself)."""
    params = yaml.safe_load((project / "params.yaml").read_text())
    ev = json.loads((project / "metrics" / "eval.json").read_text())
    for i, (method, rate, frozen, steps) in enumerate([("freeze", 3.0e-4, 15, 400),
                                                       ("lora", 2.0e-4, None, 1200),
                                                       ("full", 5.0e-5, None, 600)]):
        changed = {**params, "train": {**params["train"], "method": method, "learning_rate": rate,
                                       "freeze_layers": frozen, "max_steps": steps}}
        (project / "params.yaml").write_text(yaml.safe_dump(changed, sort_keys=False))
        figures = {**ev, "perplexity": 25.0512 + i, "improvement": 0.389123 - i / 100,
                   "ref_perplexity": 27.4912 + i, "ref_change": -0.127012 + i / 50}
        (project / "metrics" / "eval.json").write_text(json.dumps(figures))
        (project / "metrics" / "train.json").write_text(
            json.dumps({"val_loss": 3.310912 + i / 10, "tokens_per_second": 141.23 + i}))
        sh(project, "dvc", "exp", "save", "-n", f"compare-{method}")
        sh(project, "git", "checkout", "-q", "--", "params.yaml", "metrics")
    table = sh(project, "dvc", "exp", "show", "--only-changed", "--drop", DROP, "--no-pager").stdout
    assert "…" not in table and max(map(len, table.splitlines())) <= 200, table
    header = table.splitlines()[1]
    for column in ("train.method", "train.learning_rate", "train.freeze_layers", "train.max_steps",
                   "val_loss", "tokens_per_second", "perplexity", "improvement", "ref_perplexity",
                   "ref_change"):
        assert column in header, header


def test_a_teammate_clones_pulls_and_has_the_same_bytes(pipeline: Path, tmp_path: Path) -> None:
    """The built pipeline was pushed (git and DVC); a teammate clones, pulls, and has its bytes
    without running anything; an experiment pushed by its author comes along too."""
    author = clone_of(pipeline, tmp_path / "author")
    (author / "params.yaml").write_text((author / "params.yaml").read_text().replace(
        "title: Fine-tuning report", "title: A saved experiment"))
    sh(author, "dvc", "exp", "save", "-n", "saved")
    sh(author, "dvc", "exp", "push", "origin", "saved")

    mate = tmp_path / "teammate"
    sh(tmp_path, "git", "clone", "-q", str(pipeline.parent / "origin.git"), str(mate))
    sh(mate, "dvc", "remote", "modify", "--local", "storage", "url",
       str(pipeline.parent / "dvc-storage"))
    sh(mate, "dvc", "pull")
    assert up_to_date(sh(mate, "dvc", "status").stdout)
    assert stages_run(sh(mate, "dvc", "repro").stdout) == ALWAYS
    for shared in ("metrics", "data/tokenized", "data/processed", "models/base",
                   "models/finetuned"):
        assert tree_bytes(mate / shared) == tree_bytes(pipeline / shared), shared

    sh(mate, "dvc", "exp", "pull", "origin", "saved")
    assert "saved" in sh(mate, "dvc", "exp", "show", "--csv").stdout


def test_your_own_folder_is_tracked_file_by_file_and_reruns_only_what_reads_it(project: Path) -> None:
    """ingest.paths may name any folder: a paragraph added reaches data/tokenized, a file removed
    reruns ingest; base_model (a model folder, not scratch) and nothing past tokenize reruns for
    a data change; a changed reference text reruns the stages that score it; a path outside the
    project is refused before any work."""
    mine = project / "my manuscripts"
    shutil.copytree(project / "data" / "raw", mine)
    shutil.copytree(project / "models" / "base", project / "base-src")
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["ingest"]["paths"] = ["my manuscripts"]
    params["model"]["source"] = "base-src"  # a local model folder: its tokenizer reads no data
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    sh(project, "dvc", "repro", "tokenize")
    tokens = json.loads((project / "metrics" / "tokenize.json").read_text())["train"]["tokens"]

    book = mine / "clockwork-orchard.txt"
    book.write_text(book.read_text() + "\n\nA new paragraph about the orchard's winter: "
                    + "frost on every gear, and the keeper oiling them by lamplight. " * 20)
    ran = stages_run(sh(project, "dvc", "repro", "tokenize").stdout)
    assert ran == {"inputs", "ingest", "clean", "split", "scratch_texts", "tokenize"}, ran
    assert json.loads((project / "metrics" / "tokenize.json").read_text())["train"]["tokens"] != tokens
    waiting = stale(project)
    assert "base_model" not in waiting and {"train", "evaluate_base"} <= waiting, waiting

    (mine / "field-notes-on-small-rivers.md").unlink()  # and a reference text changes
    reference = project / "data" / "reference" / "how-bread-rises.md"
    reference.write_text(reference.read_text() + "\n\nAnd then it is baked.\n")
    assert {"inputs", "ingest"} <= stages_run(sh(project, "dvc", "repro", "ingest").stdout)
    assert json.loads((project / "metrics" / "ingest.json").read_text())["files"] == 3
    status = sh(project, "dvc", "status", "evaluate_base").stdout
    assert "modified:           data/interim/inputs/reference.json" in status, status

    params["ingest"]["paths"] = [str(project.parent / "elsewhere")]
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    refused = subprocess.run([str(BIN / "dvc"), "repro", "ingest"], cwd=project, capture_output=True,
                             text=True, env={**os.environ, **GIT_ENV})
    assert refused.returncode != 0
    assert (f"inputs: error: ingest.paths: {project.parent / 'elsewhere'} is outside the project"
            in refused.stdout + refused.stderr), refused.stdout + refused.stderr
    assert "Running stage 'ingest'" not in refused.stdout


def test_a_failed_stage_leaves_the_workspace_as_it_was(project: Path) -> None:
    """DVC removes train's outputs before it runs it; train stopping on a bad param puts them
    back (the git-tracked metrics and DVCLive logs from git, the model from DVC's cache), so
    `git status` shows only the edit that caused it."""
    weights = (project / "models" / "finetuned" / "model.safetensors").read_bytes()
    set_learning_rate(project, -1.0)
    failed = subprocess.run([str(BIN / "dvc"), "repro", "train"], cwd=project, capture_output=True,
                            text=True, env={**os.environ, **GIT_ENV})
    said = failed.stdout + failed.stderr
    assert failed.returncode != 0 and "train: error: params.yaml: train.learning_rate" in said, said
    assert "train: put back the outputs of the last run: " in said, said
    assert sh(project, "git", "status", "--porcelain").stdout.split() == ["M", "params.yaml"]
    assert (project / "models" / "finetuned" / "model.safetensors").read_bytes() == weights
    sh(project, "git", "checkout", "--", "params.yaml")
    assert stages_run(sh(project, "dvc", "repro").stdout) == ALWAYS  # nothing is stale
