"""Loading models and tokenizers from local directories, choosing the device and precision, and
batching examples: what train, evaluate and generate share about the model itself."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from stages.params import UserError

# The sampling a user gets unless they ask for other settings: `generate`'s defaults, and written
# into models/finetuned/generation_config.json, which serve, vLLM and the Ollama Modelfile read.
SAMPLING: dict[str, Any] = {"do_sample": True, "temperature": 0.8, "top_p": 0.95,
                            "repetition_penalty": 1.1}


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


def local_model_dir(path: Path) -> Path:
    """A local model directory; a missing one must not fall through to a hub download."""
    if not (Path(path) / "config.json").is_file():
        raise UserError(f"{path}: no model there; run the stages before this one (uv run dvc repro)")
    return Path(path)


def load_model(path: Path, device: str = "cpu", attention: str = "sdpa") -> Any:
    """A causal LM from a local Hugging Face directory, safetensors only, no remote code."""
    from transformers import AutoModelForCausalLM

    path = local_model_dir(path)
    model = AutoModelForCausalLM.from_pretrained(
        path, use_safetensors=True, trust_remote_code=False, dtype="float32",
        attn_implementation=attention,
    )
    return model.to(device)


def load_tokenizer(path: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(local_model_dir(path), trust_remote_code=False)


def context_length(config: Any) -> int:
    """The longest sequence the model takes, from its config."""
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        if getattr(config, key, None):
            return int(getattr(config, key))
    raise UserError("model.source: the model's config does not say its context length")


def collator(tokenizer: Any, packed: bool = False, flatten: bool = False) -> Any:
    """Batches of examples: padded (input_ids with the pad token, labels with -100, as pairs have
    varied lengths), or for packed rows (which carry position_ids) stacked as they are, or with
    `flatten` laid end to end as one row: FlashAttention 2 in transformers reads packed
    sequences from position ids only in a batch of one row."""
    from transformers import DataCollatorForSeq2Seq

    if packed:
        return functools.partial(collate_packed, flatten=flatten)
    return DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=-100, padding=True)


def collate_packed(rows: list[dict[str, Any]], flatten: bool = False) -> dict[str, Any]:
    """Packed rows (stages.packing.pack_examples) stacked, with an attention_mask that marks
    the real tokens, for counting them: the padding at the end of a row is the last sequence
    (its position ids restart at 0) when it is all pad tokens without labels. model_inputs
    removes the mask again before the model sees it."""
    import torch

    batch = {key: torch.tensor([row[key] for row in rows]) for key in rows[0]}
    positions, labels = batch["position_ids"], batch["labels"]
    width = positions.size(1)
    index = torch.arange(width).expand_as(positions)
    tail = torch.where(positions == 0, index, torch.zeros_like(index)).max(dim=1).values
    after = index >= tail[:, None]
    pad = after & (labels == -100) & (batch["input_ids"] == batch["input_ids"].gather(1, tail[:, None]))
    is_tail = (pad.sum(dim=1) == width - tail) & (tail > 0)
    length = torch.where(is_tail, tail, torch.full_like(tail, width))
    batch["attention_mask"] = (index < length[:, None]).long()
    if flatten:  # the position ids restart at every example and at each row's padding
        batch = {key: value.reshape(1, -1) for key, value in batch.items()}
    return batch


def model_inputs(batch: dict[str, Any]) -> dict[str, Any]:
    """What the model gets for a batch. Packed rows go without the attention mask and the KV
    cache: transformers tells packed sequences apart by their position ids only when there is
    neither, and then keeps attention inside each sequence."""
    if "position_ids" not in batch:
        return batch
    return {**{k: v for k, v in batch.items() if k != "attention_mask"}, "use_cache": False}


def set_inference(model: Any, tokenizer: Any, asked: dict[str, Any]) -> None:
    """Make a model folder answer as it was trained, for any reader of the folder alone: the chat
    template and stop tokens of stages.prompts.Inference (written by tokenize), and SAMPLING."""
    tokenizer.chat_template = asked["chat_template"]
    config = model.generation_config
    stop = asked["stop_token_ids"]
    config.eos_token_id = stop if len(stop) > 1 else stop[0]
    if config.pad_token_id is None:
        config.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop[0]
    config.update(**SAMPLING)


# How a tokenizer was loaded, which transformers records in tokenizer_config.json: under
# HF_HUB_OFFLINE=1, local_files_only is true. Not part of the tokenizer, so never saved: the same
# model gives the same bytes in any environment.
LOAD_STATE = ("local_files_only", "is_local", "cache_dir", "force_download", "proxies", "token",
              "revision", "subfolder", "_commit_hash", "trust_remote_code")


def save_tokenizer(tokenizer: Any, directory: Path) -> None:
    """tokenizer.save_pretrained without the load-time settings of LOAD_STATE."""
    for key in LOAD_STATE:
        tokenizer.init_kwargs.pop(key, None)
    tokenizer.save_pretrained(directory)
