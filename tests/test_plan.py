"""`uv run plan` and the train stage's memory check (finetune.training.plan): exact parameter
counts (the published sizes of the Llama shapes; a real tiny model prepared as train prepares
it), the parts that grow with batch and block and shrink with gradient checkpointing, the
verdict, and the one-line refusal. The fit against measured peak memory is in
docs/training.md#memory (a measurement, not a test)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig

from commands import plan as plan_command
from finetune.config.train import TrainParams
from finetune.errors import UserError
from finetune.training import plan
from finetune.training.trainer import prepare

# Llama 3.2 1B and 3.1 8B, as their model cards count them
PUBLISHED = {"llama-1b": 1_235_814_400, "llama-8b": 8_030_261_248}


@pytest.mark.parametrize("preset", list(PUBLISHED))
def test_the_llama_shapes_have_their_published_sizes(preset: str) -> None:
    config = LlamaConfig(**plan_command.PRESETS[preset])
    here = plan.plan(config, TrainParams(), 2048, "cuda", "bf16")
    assert here.parameters == here.trainable == PUBLISHED[preset]
    assert here.weights == 4 * PUBLISHED[preset] and here.optimizer == 8 * PUBLISHED[preset]


@pytest.mark.parametrize("method", ["full", "freeze", "lora"])
def test_counts_are_those_of_the_model_train_prepares(method: str) -> None:
    config = GPT2Config(n_layer=2, n_embd=64, n_head=2, vocab_size=400, n_positions=128)
    train = TrainParams(method=method)
    real = prepare(GPT2LMHeadModel(config), train)
    here = plan.plan(config, train, 32, "cpu", "fp32")
    assert here.parameters == sum(p.numel() for p in real.parameters())
    assert here.trainable == sum(p.numel() for p in real.parameters() if p.requires_grad)
    assert here.gradients == 4 * here.trainable


def test_activations_grow_with_the_batch_and_shrink_with_checkpointing() -> None:
    config = LlamaConfig(**plan_command.PRESETS["llama-1b"])
    small = plan.plan(config, TrainParams(batch_size=1), 1024, "cuda", "bf16")
    big = plan.plan(config, TrainParams(batch_size=4), 1024, "cuda", "bf16")
    saved = plan.plan(config, TrainParams(batch_size=4, gradient_checkpointing=True), 1024, "cuda", "bf16")
    assert big.activations == pytest.approx(4 * small.activations)
    # the logits (a 128k vocabulary) stay: checkpointing saves the blocks only
    assert big.tokens_per_step == 4096 and saved.activations < 0.6 * big.activations
    lora = plan.plan(config, TrainParams(method="lora"), 1024, "cuda", "bf16")
    assert lora.trainable < lora.parameters / 100 and lora.optimizer < small.optimizer / 100


def test_the_command_prints_the_plan_and_a_verdict(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({
        "model": {"source": "scratch", "scratch": {"n_layer": 2, "n_embd": 64, "n_head": 2,
                                                   "vocab_size": 400, "n_positions": 128}},
        "tokenize": {"block_size": 32}, "train": {"device": "cpu", "batch_size": 2}}))
    plan_command.main(["--method", "lora"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("plan: lora on cpu (fp32):") and "64 tokens per step" in lines[0]
    assert lines[1].startswith("plan: weights ") and lines[2].startswith("plan: fits in the ")
    monkeypatch.setattr(plan, "available_memory", lambda device: 1024.0)
    plan_command.main(["--config", "llama-8b"])
    assert "plan: does NOT fit in the 0.00 GiB RAM here" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        plan_command.main(["--config", str(tmp_path / "nowhere")])
    assert capsys.readouterr().err.startswith(f"plan: error: --config {tmp_path / 'nowhere'}: no model")


def test_train_refuses_a_run_that_cannot_fit_unless_told(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    GPT2Config(n_layer=2, n_embd=64, n_head=2, vocab_size=400, n_positions=128).save_pretrained(tmp_path)
    monkeypatch.setattr(plan, "available_memory", lambda device: 1024.0)
    with pytest.raises(UserError, match=r"the run needs about [\d.]+ GiB per process and 0.0 GiB of "
                       r"RAM is free .* FINETUNE_IGNORE_PLAN=1 trains anyway"):
        plan.check(TrainParams(), tmp_path, "cpu", "fp32", 32)
    monkeypatch.setenv(plan.IGNORE_ENV, "1")
    assert plan.check(TrainParams(), tmp_path, "cpu", "fp32", 32)[-1].startswith("plan: does NOT fit")


def test_qlora_keeps_the_linear_layers_in_about_four_bits() -> None:
    config = LlamaConfig(**plan_command.PRESETS["llama-8b"])
    full = plan.plan(config, TrainParams(method="lora"), 2048, "cuda", "bf16")
    qlora = plan.plan(config, TrainParams(method="qlora"), 2048, "cuda", "bf16")
    assert qlora.trainable == full.trainable and qlora.parameters == full.parameters
    # 6.98B linear weights at 4.13 bits, the two 0.53B embeddings in fp32: about 7.8 GB
    assert 7.5e9 < qlora.weights < 8.1e9 and qlora.weights < full.weights / 4
