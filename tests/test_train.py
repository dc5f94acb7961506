"""train: layer freezing, saved safetensors, DVCLive losses, and repeatable metrics on a tiny model."""


from __future__ import annotations

import math

import pytest
import torch

from stages import train
from stages.io import load_model
from stages.params import Params, Paths, UserError


def test_freeze_layers_freezes_embeddings_and_first_blocks() -> None:
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(n_layer=3, n_embd=16, n_head=2, vocab_size=50))
    train.freeze(model, 2)
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert "transformer.wte.weight" in frozen and "transformer.wpe.weight" in frozen
    assert any(n.startswith("transformer.h.1.") for n in frozen)
    assert not any(n.startswith("transformer.h.2.") for n in frozen)
    with pytest.raises(UserError, match="train.freeze_layers: 5 is more than"):
        train.freeze(GPT2LMHeadModel(GPT2Config(n_layer=3, n_embd=16, n_head=2)), 5)


def test_train_saves_safetensors_logs_losses_and_changes_weights(
        trained: tuple[Params, Paths]) -> None:
    params, paths = trained
    metrics_file = paths.finetuned / "model.safetensors"
    assert metrics_file.is_file() and not list(paths.finetuned.glob("*.bin"))
    base, tuned = load_model(paths.base_model), load_model(paths.finetuned)
    changed = [not torch.equal(a, b)
               for a, b in zip(base.parameters(), tuned.parameters(), strict=True)]
    assert all(changed)
    log = paths.train_log / "plots" / "metrics"
    assert len((log / "train" / "loss.tsv").read_text().splitlines()) == 1 + 4  # header + 4 steps
    assert (log / "eval" / "loss.tsv").is_file()
    assert not (paths.train_log / "params.yaml").exists(), "no TrainingArguments dump"


def test_train_metrics(trained: tuple[Params, Paths]) -> None:
    params, paths = trained
    summary = train.run(params, paths)  # a second run with the same seed: same numbers
    assert summary["steps"] == 4
    env = summary["env"]
    assert (env["device"], env["precision"]) == ("cpu", "fp32")
    assert env["torch"] == torch.__version__.split("+")[0]
    assert {"python", "transformers", "dvc"} <= set(env)
    assert summary["tokens"] == 4 * 4 * 32
    assert summary["tokens_per_second"] > 0 and math.isfinite(summary["val_loss"])
    again = train.run(params, paths)
    assert again["val_loss"] == summary["val_loss"] and again["train_loss"] == summary["train_loss"]


def test_warmup_longer_than_an_epoch_based_run_fails_before_training(
        trained: tuple[Params, Paths]) -> None:
    params, paths = trained
    long_warmup = params.model_copy(update={"train": params.train.model_copy(
        update={"max_steps": -1, "num_epochs": 1.0, "warmup_steps": 10_000})})
    written = (paths.finetuned / "model.safetensors").stat().st_mtime_ns
    with pytest.raises(UserError, match=r"train.warmup_steps: 10000 warmup steps are not fewer "
                                        r"than the \d+ training steps \(\d+ examples"):
        train.run(long_warmup, paths)
    assert (paths.finetuned / "model.safetensors").stat().st_mtime_ns == written
    assert not paths.checkpoints.exists()
