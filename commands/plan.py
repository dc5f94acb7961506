"""`uv run plan`: how much memory the configured training run needs, before it starts.

    uv run plan                                   # params.yaml's model, method, batch and block size
    uv run plan --method lora --batch-size 16     # what if
    uv run plan --config llama-8b --device cuda --precision bf16 --gradient-checkpointing

Prints the weights, gradients, optimizer states, activations and process memory of one training
process (finetune.training.plan), the tokens per step, and whether it fits in the memory here
(free GPU memory with CUDA, else available RAM). --config takes a model folder, a config.json, or
a Llama-shaped preset (llama-1b, llama-3b, llama-8b: the shapes of Llama 3.2 1B/3B and 3.1 8B)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from finetune.cli import run_command
from finetune.config.loading import load
from finetune.config.model import ModelParams
from finetune.config.tokenize import TokenizeParams
from finetune.config.train import TrainParams
from finetune.errors import UserError
from finetune.paths import PATHS

PRESETS: dict[str, dict[str, Any]] = {  # Llama-shaped configs, random weights: shapes only
    "llama-1b": {"hidden_size": 2048, "num_hidden_layers": 16, "num_attention_heads": 32,
                 "num_key_value_heads": 8, "intermediate_size": 8192, "vocab_size": 128256,
                 "tie_word_embeddings": True},
    "llama-3b": {"hidden_size": 3072, "num_hidden_layers": 28, "num_attention_heads": 24,
                 "num_key_value_heads": 8, "intermediate_size": 8192, "vocab_size": 128256,
                 "tie_word_embeddings": True},
    "llama-8b": {"hidden_size": 4096, "num_hidden_layers": 32, "num_attention_heads": 32,
                 "num_key_value_heads": 8, "intermediate_size": 14336, "vocab_size": 128256,
                 "tie_word_embeddings": False},
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="plan", description=__doc__.split("\n")[0])
    parser.add_argument("--params", default="params.yaml", help="path to params.yaml")
    parser.add_argument("--config", default=None,
                        help=f"a model folder, a config.json or {', '.join(PRESETS)} (default: "
                        f"{PATHS.base_model}, else model.source)")
    parser.add_argument("--method", choices=["full", "freeze", "lora", "qlora"], default=None)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--block-size", type=int, default=None)
    parser.add_argument("--gradient-checkpointing", action="store_true", default=None)
    parser.add_argument("--processes", type=int, default=None, help="train.num_processes")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default=None)
    parser.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"], default=None)
    return parser.parse_args(argv)


def model_config(where: str | None, model: ModelParams) -> Any:
    from transformers import AutoConfig, LlamaConfig

    if where in PRESETS:
        return LlamaConfig(**PRESETS[where])
    if where is None:
        if (PATHS.base_model / "config.json").is_file():
            return AutoConfig.from_pretrained(PATHS.base_model)
        if model.source == "scratch":  # the GPT-2 stages/base_model.py would build
            from finetune.models.sources import scratch_config

            return scratch_config(model.scratch, model.scratch.vocab_size)
        where = model.source
    path = Path(where)
    if path.is_file():
        return AutoConfig.for_model(**json.loads(path.read_text()))
    try:
        return AutoConfig.from_pretrained(where)
    except OSError as e:
        raise UserError(f"--config {where}: no model config there ({str(e).splitlines()[0]})") from None


def run(args: argparse.Namespace) -> None:
    from finetune.models.loading import pick_device, pick_precision
    from finetune.training.plan import available_memory, plan

    values = load(args.params, {"model": ModelParams, "tokenize": TokenizeParams, "train": TrainParams})
    train: TrainParams = values["train"]
    changes = {"method": args.method, "batch_size": args.batch_size,
               "gradient_checkpointing": args.gradient_checkpointing, "num_processes": args.processes,
               "device": args.device, "precision": args.precision}
    train = TrainParams.model_validate({**train.model_dump(), **{k: v for k, v in changes.items()
                                                                 if v is not None}})
    block = args.block_size or values["tokenize"].block_size
    device = pick_device(train.device)
    precision = pick_precision(train.precision, device)
    config = model_config(args.config, values["model"])
    here = plan(config, train, block, device, precision)
    for line in here.lines(available_memory(device)):
        print(line)
    if train.num_processes > 1:
        print(f"plan: {train.num_processes} processes ({train.distributed}): "
              f"{train.num_processes * here.tokens_per_step:,} tokens per step in all")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    run_command("plan", lambda: run(args))


if __name__ == "__main__":
    main()
