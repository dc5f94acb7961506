"""train: layer freezing, saved safetensors, DVCLive losses, and repeatable metrics on a tiny model."""


from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from finetune.config.schema import Params, parse
from finetune.errors import UserError
from finetune.models.loading import load_model
from finetune.paths import PATHS, Paths
from finetune.training import trainer
from stages import train
from tests.helpers import ROOT, run_stage


def test_freeze_layers_freezes_embeddings_and_first_blocks() -> None:
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(n_layer=3, n_embd=16, n_head=2, vocab_size=50))
    trainer.freeze(model, 2)
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert "transformer.wte.weight" in frozen and "transformer.wpe.weight" in frozen
    assert any(n.startswith("transformer.h.1.") for n in frozen)
    assert not any(n.startswith("transformer.h.2.") for n in frozen)
    with pytest.raises(UserError, match="train.freeze_layers: 5 is more than"):
        trainer.freeze(GPT2LMHeadModel(GPT2Config(n_layer=3, n_embd=16, n_head=2)), 5)


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
    summary = run_stage(train, params, paths)  # a second run with the same seed: same numbers
    assert summary["steps"] == 4
    env = summary["env"]
    assert (env["device"], env["precision"]) == ("cpu", "fp32")
    assert env["torch"] == torch.__version__.split("+")[0]
    assert {"python", "transformers", "dvc"} <= set(env)
    assert summary["tokens"] == 4 * 4 * 32
    assert summary["tokens_per_second"] > 0 and math.isfinite(summary["val_loss"])
    again = run_stage(train, params, paths)
    assert again["val_loss"] == summary["val_loss"] and again["train_loss"] == summary["train_loss"]


def test_warmup_longer_than_an_epoch_based_run_fails_before_training(
        trained: tuple[Params, Paths]) -> None:
    params, paths = trained
    long_warmup = params.model_copy(update={"train": params.train.model_copy(
        update={"max_steps": -1, "num_epochs": 1.0, "warmup_steps": 10_000})})
    written = (paths.finetuned / "model.safetensors").stat().st_mtime_ns
    with pytest.raises(UserError, match=r"train.warmup_steps: 10000 warmup steps are not fewer "
                                        r"than the \d+ training steps \(\d+ examples"):
        run_stage(train, long_warmup, paths)
    assert (paths.finetuned / "model.safetensors").stat().st_mtime_ns == written
    assert not paths.checkpoints.exists()


def with_train(params: Params, **train_values: object) -> Params:
    raw = params.model_dump()
    raw["train"].update(train_values)
    return Params.model_validate(raw)


def outputs_under(paths: Paths, root: Path) -> Paths:
    """The trained fixture's inputs, with this test's own outputs."""
    return dataclasses.replace(paths, finetuned=root / "finetuned", train_log=root / "log",
                               checkpoints=root / "checkpoints", metrics=root / "metrics")


@pytest.mark.parametrize(("values", "expect_changed"), [
    ({"method": "full"}, lambda name: True),
    ({"method": "freeze"},  # freeze_layers: null, half the blocks: 1 of the tiny model's 2
     lambda name: not name.startswith(("transformer.wte", "transformer.wpe", "transformer.h.0.",
                                       "lm_head"))),  # GPT-2's output head is the tied wte
    ({"method": "lora", "lora": {"r": 4, "target_modules": ["c_attn"]}},
     lambda name: name.endswith("attn.c_attn.weight")),
])
def test_each_method_changes_exactly_the_intended_weights(
        trained: tuple[Params, Paths], tmp_path: Path, values: dict, expect_changed: object) -> None:
    params, paths = trained
    out = outputs_under(paths, tmp_path)
    summary = run_stage(train, with_train(params, **values), out)
    base = load_model(paths.base_model).state_dict()
    tuned = load_model(out.finetuned).state_dict()
    assert base.keys() == tuned.keys()
    changed = {name for name in base if not torch.equal(base[name], tuned[name])}
    assert changed == {name for name in base if expect_changed(name)}
    model = load_model(paths.base_model)
    if values["method"] == "freeze":
        trainer.freeze(model, 1)
    expected = sum(p.numel() for p in model.parameters() if p.requires_grad)
    if values["method"] == "lora":  # two blocks, r x (64 in + 192 out) each
        expected = 2 * 4 * (64 + 192)
        assert (out.finetuned / "lora_adapter" / "adapter_model.safetensors").is_file()
        assert not (out.finetuned / "adapter_config.json").exists(), "a plain model on top"
    assert summary["trainable_parameters"] == expected and summary["method"] == values["method"]


def test_methods_and_their_params_must_agree() -> None:
    assert parse({"train": {"method": "freeze"}}).train.freeze_layers is None  # half the blocks
    with pytest.raises(UserError, match="train.freeze_layers: train.method freeze needs 1 or more"):
        parse({"train": {"method": "freeze", "freeze_layers": 0}})
    with pytest.raises(UserError, match="train.freeze_layers: 2 blocks to freeze, but train.method "
                                        "is full"):
        parse({"train": {"freeze_layers": 2}})
    with pytest.raises(UserError, match="train.lora.target_modules: name at least one module"):
        parse({"train": {"method": "lora", "lora": {"target_modules": []}}})


def project_with(params: Params, paths: Paths, root: Path) -> Path:
    """A project folder with the trained fixture's inputs, for running the stage as a command."""
    for name in ("base_model", "tokenized"):
        shutil.copytree(getattr(paths, name), root / getattr(PATHS, name))
    (root / "params.yaml").write_text(yaml.safe_dump(params.model_dump()))
    return root


@pytest.mark.slow
def test_two_cpu_processes_train_like_one_with_the_same_effective_batch(
        trained: tuple[Params, Paths], tmp_path: Path) -> None:
    params, paths = trained
    runs = {}
    runs[1] = run_stage(train, with_train(params, batch_size=4), outputs_under(paths, tmp_path / "p1"))
    root = project_with(with_train(params, num_processes=2, batch_size=2), paths, tmp_path / "p2")
    done = subprocess.run([sys.executable, "-m", "stages.train"], cwd=root, text=True,
                          capture_output=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("train: method=") == 1, "one summary, from the launcher"
    assert (root / PATHS.finetuned / "model.safetensors").is_file()
    assert not list((root / "models").glob(".finetuned.*")), "saved once, nothing left over"
    runs[2] = json.loads((root / PATHS.details_file("train")).read_text())
    one, two = runs[1], runs[2]
    assert two["processes"] == 2 and two["steps"] == one["steps"] == 4
    assert two["tokens"] == one["tokens"], "the same number of tokens per optimizer step"
    assert two["val_loss"] == pytest.approx(one["val_loss"], rel=0.02)
    assert two["train_loss"] == pytest.approx(one["train_loss"], rel=0.05)


def test_reduce_lr_on_plateau_lowers_the_rate_when_validation_loss_stops_falling(
        trained: tuple[Params, Paths], tmp_path: Path) -> None:
    """A learning rate of 0.5 makes the tiny model's validation loss rise from the first steps:
    the scheduler, fed each evaluation's loss, halves the rate after each evaluation that is no
    better (patience 0). The logged rates show each cut."""
    params, paths = trained
    out = outputs_under(paths, tmp_path)
    summary = run_stage(train, with_train(params, lr_scheduler="reduce_lr_on_plateau", learning_rate=0.5,
                                   plateau_patience=0, plateau_factor=0.5, max_steps=6,
                                   eval_steps=1, save_steps=6, logging_steps=1), out)
    log = out.train_log / "plots" / "metrics" / "train" / "learning_rate.tsv"
    rates = [float(line.split("\t")[-1]) for line in log.read_text().splitlines()[1:]]
    assert rates[0] == 0.5 and rates[-1] < 0.5, rates
    assert all(b <= a for a, b in zip(rates, rates[1:], strict=False))
    assert math.isfinite(summary["val_loss"])


def test_qlora_without_bitsandbytes_ends_in_one_line_before_any_work(
        trained: tuple[Params, Paths], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    params, paths = trained
    out = outputs_under(paths, tmp_path)
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # as where the qlora group is not synced
    with pytest.raises(UserError, match=r"^train.method: qlora needs bitsandbytes, in the optional "
                       r"qlora group: uv sync --group qlora"):
        run_stage(train, with_train(params, method="qlora"), out)
    assert not out.finetuned.exists() and not out.checkpoints.exists()


def test_qlora_trains_adapters_on_a_4bit_base_and_merges_them_at_full_precision(
        trained: tuple[Params, Paths], tmp_path: Path) -> None:
    """A tiny Llama (bitsandbytes quantizes nn.Linear, which GPT-2's Conv1D is not) trained with
    method qlora where bitsandbytes runs 4-bit (CUDA, or its CPU backend: 0.50 has one): only
    the adapters train, the base's linear layers are NF4, and models/finetuned is the plain model
    the adapter merged into the full-precision base gives."""
    pytest.importorskip("bitsandbytes", reason="the qlora group is not synced (uv sync --group qlora)")
    from peft import PeftModel
    from transformers import LlamaConfig, LlamaForCausalLM

    params, paths = trained
    base = tmp_path / "llama-base"
    torch.manual_seed(0)
    vocab = load_model(paths.base_model).config.vocab_size
    LlamaForCausalLM(LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=2, vocab_size=vocab,
                                 max_position_embeddings=128)).save_pretrained(base)
    shutil.copy(paths.base_model / "tokenizer.json", base)
    shutil.copy(paths.base_model / "tokenizer_config.json", base)
    out = dataclasses.replace(outputs_under(paths, tmp_path), base_model=base)
    summary = run_stage(train, with_train(params, method="qlora", max_steps=3,
                                          lora={"r": 4, "target_modules": "all-linear"}), out)
    # r x (in + out) for q, k, v, o, gate, up, down in each of the 2 blocks
    per_block = 4 * ((64 + 64) + (64 + 32) * 2 + (64 + 64) + (64 + 128) * 2 + (128 + 64))
    assert summary["method"] == "qlora" and summary["trainable_parameters"] == 2 * per_block
    config = json.loads((out.finetuned / "config.json").read_text())
    assert "quantization_config" not in config, "a plain model, not a 4-bit one"
    tuned = load_model(out.finetuned)
    reference = PeftModel.from_pretrained(load_model(base), out.finetuned / "lora_adapter").merge_and_unload()
    ids = torch.tensor([[1, 5, 9, 2, 7, 3]])
    with torch.no_grad():
        assert torch.allclose(tuned(ids).logits, reference(ids).logits, atol=1e-5)
        assert not torch.allclose(tuned(ids).logits, load_model(base)(ids).logits, atol=1e-4)
