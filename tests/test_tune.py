"""`uv run tune` piece by piece: the search space, values as `-S` writes them, points to try,
combinations params.yaml refuses, the progress channel from train, and the command's one-line
errors. The real search (dvc exp run trials, pruning, Ctrl-C and resume, --jobs 2, the best
applied) runs in tests/test_pipeline.py on the shared tiny project."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml

from commands import tune
from finetune import search
from finetune.config.schema import Params, parse
from finetune.config.tune import Distribution, TuneParams
from finetune.errors import UserError
from finetune.stage import headline
from finetune.training import progress
from stages.evaluate import HEADLINE as EVAL_HEADLINE
from stages.train import HEADLINE as TRAIN_HEADLINE
from tests.helpers import ROOT

optuna.logging.set_verbosity(optuna.logging.ERROR)


def tune_params(**entries: Any) -> TuneParams:
    return TuneParams.model_validate({"space": entries})


def space(**entries: Any) -> dict[str, Any]:
    return tune_params(**entries).space


def test_grid_lists_every_value_of_choices_integer_ranges_and_stepped_floats() -> None:
    got = search.grid(space(**{"train.method": ["full", "lora"],
                               "train.max_steps": {"low": 10, "high": 30, "step": 10},
                               "train.batch_size": {"low": 2, "high": 4},
                               "train.warmup_ratio": {"low": 0.0, "high": 0.2, "step": 0.1}}))
    assert got == {"train.method": ["full", "lora"], "train.max_steps": [10, 20, 30],
                   "train.batch_size": [2, 3, 4], "train.warmup_ratio": [0.0, 0.1, 0.2]}


@pytest.mark.parametrize(("value", "text"), [
    (1e-05, "1.0e-05"), (0.003, "0.003"), (2.5e-4, "0.00025"), (3e20, "3.0e+20"),
    (True, "true"), (8, "8"), ("lora", "lora")])
def test_values_are_written_so_that_params_yaml_reads_them_back(value: Any, text: str) -> None:
    assert search.yaml_value(value) == text
    assert yaml.safe_load(text) == value  # PyYAML reads 1e-05 (no dot) as a string


def test_suggested_points_lie_in_the_space_with_short_floats() -> None:
    s = space(**{"train.learning_rate": {"low": 1.0e-5, "high": 1.0e-3, "log": True},
                 "train.max_steps": {"low": 4, "high": 40, "step": 4},
                 "train.method": ["full", "lora"]})
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3))
    for _ in range(20):
        values = search.suggest(study.ask(), s)
        assert 1.0e-5 <= values["train.learning_rate"] <= 1.0e-3
        assert float(f"{values['train.learning_rate']:.4g}") == values["train.learning_rate"]
        assert values["train.max_steps"] in range(4, 41, 4) and isinstance(values["train.max_steps"], int)
        assert values["train.method"] in ("full", "lora")


def test_a_point_to_try_is_typed_by_the_space_and_checked() -> None:
    s = space(**{"train.learning_rate": {"low": 1.0e-5, "high": 1.0e-3},
                 "train.max_steps": {"low": 4, "high": 40}, "train.method": ["full", "lora"],
                 "train.gradient_checkpointing": [True, False]})
    assert search.parse_point(["train.learning_rate=1e-4", "train.max_steps=8", "train.method=lora",
                               "train.gradient_checkpointing=true"], s) == {
        "train.learning_rate": 1e-4, "train.max_steps": 8, "train.method": "lora",
        "train.gradient_checkpointing": True}
    with pytest.raises(UserError, match="a key of tune.space"):
        search.parse_point(["train.seed=3"], s)
    with pytest.raises(UserError, match=r"train.method=sgd: not one of \['full', 'lora'\]"):
        search.parse_point(["train.method=sgd"], s)
    with pytest.raises(UserError, match="train.max_steps=many"):
        search.parse_point(["train.max_steps=many"], s)


@pytest.mark.parametrize(("entries", "message"), [
    ({"train.lr": [1]}, "tune.space: train.lr: not a params.yaml key"),
    ({"train": [1]}, "tune.space: train: a section, not a value"),
    ({"tune.n_trials": [2]}, "tune.space: tune.n_trials: the search cannot change its own settings"),
    ({"train.learning_rate": {"low": 1.0, "high": 0.5}},
     "tune.space: train.learning_rate: low (1.0) must be below high (0.5)"),
    ({"train.learning_rate": {"low": 0.0, "high": 1.0, "log": True}},
     "tune.space: train.learning_rate: log needs low above 0, not 0.0"),
    ({"train.learning_rate": {"low": 1.0e-5}}, "tune.space: train.learning_rate: high: Field required"),
    ({"train.method": []}, "tune.space: train.method: an empty list of choices"),
    ({"train.method": "full"}, "tune.space: train.method: expected a list of choices or a range"),
])
def test_a_bad_search_space_is_one_line_naming_the_key(entries: dict, message: str) -> None:
    with pytest.raises(UserError) as caught:
        parse({"tune": {"space": entries}})
    assert str(caught.value).startswith(f"params.yaml: {message}"), caught.value


def test_the_grid_sampler_needs_values_it_can_list() -> None:
    with pytest.raises(UserError, match="the grid sampler needs a list of choices"):
        parse({"tune": {"sampler": "grid", "space": {"train.learning_rate": {"low": 0.1, "high": 1.0}}}})
    assert isinstance(parse({"tune": {"sampler": "grid", "space": {
        "train.max_steps": {"low": 2, "high": 4}}}}).tune.space["train.max_steps"], Distribution)


def test_every_choice_and_bound_must_be_valid_params_before_any_trial() -> None:
    raw: dict[str, Any] = {}
    search.check_space(raw, tune_params(**{"train.method": ["full", "lora"]}))
    with pytest.raises(UserError, match=r"tune.space: train.method: sgd is not valid \(train.method"):
        search.check_space(raw, tune_params(**{"train.method": ["full", "sgd"]}))
    with pytest.raises(UserError, match=r"tune.space: train.learning_rate: -1.0 is not valid"):
        search.check_space(raw, tune_params(**{"train.learning_rate": {"low": -1.0, "high": 1.0}}))


def test_a_combination_params_yaml_refuses_is_pruned_without_running(tmp_path: Path) -> None:
    params = Params.model_validate({"tune": {"space": {"train.freeze_layers": [1, 2]}}})
    said: list[str] = []
    objective = search.Objective(tmp_path, params, {}, said.append)  # method full: no freezing
    study = optuna.create_study()
    study.optimize(objective, n_trials=1)
    assert study.trials[0].state.name == "PRUNED"
    assert "train.method is full; set train.method: freeze" in study.trials[0].user_attrs["invalid"]
    assert "not valid params" in said[0] and not (tmp_path / "tune").exists()


def test_train_reports_evaluations_only_when_tune_asks(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "progress.jsonl"
    monkeypatch.delenv(progress.PROGRESS_ENV, raising=False)
    progress.report(0, 7.5)
    assert not target.exists()
    monkeypatch.setenv(progress.PROGRESS_ENV, str(target))
    progress.report(0, 7.5)
    progress.report(4, 7.25)
    with open(target, "a") as f:
        f.write('{"step": 8, "val_l')  # a line still being written
    assert progress.read(target) == [{"step": 0, "val_loss": 7.5}, {"step": 4, "val_loss": 7.25}]


def test_headline_figures_are_the_ones_the_table_shows() -> None:
    summary = {"base": {"loss": 3.7, "perplexity": 41.0},
               "finetuned": {"loss": 3.2, "perplexity": 25.0, "bleu": 3.0, "rougeL": 0.2},
               "perplexity_improvement": 0.39, "test_tokens": 3825}
    assert headline(EVAL_HEADLINE, summary) == {"perplexity": 25.0, "improvement": 0.39, "bleu": 3.0,
                                         "rougeL": 0.2}
    del summary["finetuned"]["bleu"], summary["finetuned"]["rougeL"]  # text mode
    assert headline(EVAL_HEADLINE, summary) == {"perplexity": 25.0, "improvement": 0.39}
    assert headline(TRAIN_HEADLINE, {"val_loss": 3.3, "steps": 33, "tokens_per_second": 163.3,
                              "env": {}}) == {"val_loss": 3.3, "tokens_per_second": 163.3}


def run_tune(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, params: dict,
             capsys: pytest.CaptureFixture[str], *args: str) -> str:
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as code:
        tune.main(list(args))
    assert code.value.code == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    return err


def test_tune_errors_are_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    err = run_tune(tmp_path, monkeypatch, {"tune": {"space": {}}}, capsys)
    assert err.startswith("tune: error: params.yaml: tune.space is empty")
    good = {"tune": {"space": {"train.learning_rate": {"low": 1.0e-5, "high": 1.0e-3}}}}
    err = run_tune(tmp_path, monkeypatch, good, capsys)
    assert "not a git repository with a commit" in err
    err = run_tune(tmp_path, monkeypatch, good, capsys, "--enqueue", "train.method=lora")
    assert err.startswith("tune: error: --enqueue train.method=lora: expected key=value")


def test_the_shipped_search_space_is_valid_params() -> None:
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    p = parse(raw).tune
    assert p.space and p.objective == "val_loss" and p.storage is None
    search.check_space(raw, p)
    assert json.loads(json.dumps(search.grid(space(**{"train.method": ["full", "lora"]}))))
    assert os.sep not in p.study
