"""Loading models and tokenizers from local directories, choosing the device and precision, and
batching examples: what train, evaluate and generate share about the model itself."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from stages.params import UserError


def pick_device(preference: str) -> str:
    """`auto` takes CUDA when present, else the CPU."""
    import torch

    cuda = torch.cuda.is_available()
    if preference == "cuda" and not cuda:
        raise UserError("train.device: cuda was asked for, but no CUDA device is available")
    if preference == "auto":
        return "cuda" if cuda else "cpu"
    return preference


def pick_precision(preference: str, device: str) -> str:
    """`auto` takes bf16 on a GPU that supports it, else fp32."""
    import torch

    if preference == "auto":
        return "bf16" if device == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
    if preference == "fp16" and device != "cuda":
        raise UserError("train.precision: fp16 needs a CUDA device; use fp32 or bf16 on the CPU")
    return preference


def _local_model_dir(path: Path) -> Path:
    """A local model directory; a missing one must not fall through to a hub download."""
    if not (Path(path) / "config.json").is_file():
        raise UserError(f"{path}: no model there; run the stages before this one (uv run dvc repro)")
    return Path(path)


def load_model(path: Path, device: str = "cpu", attention: str = "sdpa") -> Any:
    """A causal LM from a local Hugging Face directory, safetensors only, no remote code."""
    from transformers import AutoModelForCausalLM

    path = _local_model_dir(path)
    model = AutoModelForCausalLM.from_pretrained(
        path, use_safetensors=True, trust_remote_code=False, dtype="float32",
        attn_implementation=attention,
    )
    return model.to(device)


def load_tokenizer(path: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(_local_model_dir(path), trust_remote_code=False)


def context_length(config: Any) -> int:
    """The longest sequence the model takes, from its config."""
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        if getattr(config, key, None):
            return int(getattr(config, key))
    raise UserError("model.source: the model's config does not say its context length")


def collator(tokenizer: Any) -> Any:
    """Pads input_ids with the pad token and labels with -100 (pairs have varied lengths)."""
    from transformers import DataCollatorForSeq2Seq

    return DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=-100, padding=True)
