"""Preference tuning (stages/preference.py, TRL's DPOTrainer) on the tiny chat model: pairs in
preference_data's splits train models/preferred, which the validation pairs show preferring the
chosen replies more than the supervised model, the reference, does; LoRA from the base model
too. With no pairs the stage only says so (the shared pipeline's dvc repro runs that case)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from safetensors.torch import load_file

from finetune.config.schema import Params
from finetune.paths import Paths
from stages import evaluate_preference, preference, preference_data
from tests.helpers import run_stage

pytestmark = pytest.mark.slow  # TRL and two short trainings


def pairs_project(trained_chat: tuple[Params, Paths], root: Path, **section: object) -> tuple[Params, Paths]:
    params, paths = trained_chat
    lines = [json.dumps({"prompt": f"Where is my order FH-{1000 + i}?",
                         "chosen": f"Your order FH-{1000 + i} ships today. Sorry for the wait!",
                         "rejected": "No idea."}) for i in range(40)]
    (root / "pairs.jsonl").write_text("\n".join(lines) + "\n")
    params = params.model_copy(update={"preference": params.preference.model_copy(update={
        "paths": [str(root / "pairs.jsonl")], "learning_rate": 5e-3, "max_steps": 8, "batch_size": 4,
        "eval_steps": 4, "logging_steps": 2, "beta": 0.5, **section})})
    ours = dataclasses.replace(paths, preferences=root / "preferences", preferred=root / "preferred",
                               preference_log=root / "dvclive", metrics=root / "metrics")
    run_stage(preference_data, params, ours)
    return params, ours


def test_dpo_on_pairs_prefers_the_chosen_replies(trained_chat: tuple[Params, Paths], tmp_path: Path) -> None:
    params, paths = pairs_project(trained_chat, tmp_path)
    summary = run_stage(preference, params, paths)
    assert summary["trained"] and summary["steps"] == 8
    assert summary["pairs"] >= 30 and summary["left_out"] == 0
    assert summary["val_reward_accuracy"] > 0.5 and summary["val_reward_margin"] > 0, summary
    tuned = load_file(paths.preferred / "model.safetensors")
    supervised = load_file(paths.finetuned / "model.safetensors")
    assert any(not (tuned[k] == supervised[k]).all() for k in supervised), "the weights moved"
    assert (json.loads((paths.preferred / "inference.json").read_text())
            == json.loads((paths.finetuned / "inference.json").read_text())), "asked as the supervised model"
    logged = paths.preference_log / "plots" / "metrics" / "eval" / "reward_accuracy.tsv"
    assert len(logged.read_text().splitlines()) >= 3  # a header and a row per evaluation

    # the held-out pairs: the tuned model prefers the chosen replies, measured against the
    # supervised model (the reference, which has no reward of its own), and more often than it
    scores = run_stage(evaluate_preference, params, paths)
    assert scores["scored"] and scores["pairs"] == summary["val_pairs"] == 4
    tuned, supervised, base = scores["preferred"], scores["finetuned"], scores["base"]
    assert tuned["reward_accuracy"] == 1.0 and tuned["reward_margin"] > 0
    assert supervised["reward_accuracy"] is None and base["reward_accuracy"] is not None
    assert tuned["likelihood_accuracy"] >= supervised["likelihood_accuracy"]
    assert all(0 < m["chosen_perplexity"] < float("inf") for m in (tuned, supervised, base))
    assert [set(s) for s in scores["samples"]] == [{"prompt", "base", "finetuned", "preferred"}] * 4


def test_lora_from_the_base_model_with_the_supervised_reference(trained_chat: tuple[Params, Paths],
                                                               tmp_path: Path) -> None:
    params, paths = pairs_project(trained_chat, tmp_path, method="lora", start_from="base",
                                  precompute_reference=False)
    summary = run_stage(preference, params, paths)
    assert summary["trained"] and summary["method"] == "lora" and summary["start_from"] == "base"
    assert not (paths.preferred / "adapter_config.json").exists(), "merged into a plain model"
    tuned = load_file(paths.preferred / "model.safetensors")
    base = load_file(paths.base_model / "model.safetensors")
    assert set(tuned) == set(base) and any(not (tuned[k] == base[k]).all() for k in base)


def test_no_pairs_no_training(trained: tuple[Params, Paths], tmp_path: Path) -> None:
    """The default, also in text mode, where a model is not asked in turns."""
    params, paths = trained
    ours = dataclasses.replace(paths, preferences=tmp_path / "preferences", preferred=tmp_path / "preferred",
                               preference_log=tmp_path / "dvclive", metrics=tmp_path / "metrics")
    run_stage(preference_data, params, ours)
    summary = run_stage(preference, params, ours)
    assert summary == {"trained": False, "why": "no preference pairs to train on (preference.paths, "
                                                "preference.ratings)"}
    assert [p.name for p in ours.preferred.iterdir()] == ["not_trained.json"]
    assert not run_stage(evaluate_preference, params, ours)["scored"]
