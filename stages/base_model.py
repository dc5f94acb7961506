"""Bring the base model named by `model.source` (a package's GGUF, a GGUF file, a local or hub
Hugging Face folder, or a tiny GPT-2 from a config) into models/base as safetensors with its
tokenizer. Params: `seed`, `model`."""

from __future__ import annotations

import shutil
from typing import Any

from finetune.config.common import Seed
from finetune.config.model import ModelParams
from finetune.files import atomic_output
from finetune.models.loading import context_length, save_tokenizer
from finetune.models.sources import build, sentencepiece_model
from finetune.paths import PATHS, Paths
from finetune.stage import stage_main


def run(seed: Seed, model: ModelParams, paths: Paths = PATHS) -> dict[str, Any]:
    built, tokenizer = build(seed, model, paths)
    if tokenizer.pad_token is None:  # batching needs one; labels are masked with -100 anyway
        tokenizer.pad_token = tokenizer.eos_token
    with atomic_output(paths.base_model) as tmp:
        built.save_pretrained(tmp, safe_serialization=True)
        save_tokenizer(tokenizer, tmp)
        if (spm := sentencepiece_model(model)) is not None:  # for GGUF export (Gemma 2, Phi-3)
            shutil.copyfile(spm, tmp / "tokenizer.model")
    return {"source": model.source, "model_type": built.config.model_type,
            "parameters": sum(p.numel() for p in built.parameters()),
            "vocab_size": len(tokenizer), "context_length": context_length(built.config),
            "has_chat_template": bool(getattr(tokenizer, "chat_template", None))}


def main(argv: list[str] | None = None) -> None:
    stage_main("base_model", run, argv)


if __name__ == "__main__":
    main()
