"""Loading models and tokenizers from local directories, choosing the device and precision, and
saving a model folder that answers as it was trained."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from finetune.errors import UserError


def pick_device(preference: str, key: str = "train.device") -> str:
    """`auto` takes CUDA when present, else the CPU (`key`: the setting, for the error)."""
    import torch

    cuda = torch.cuda.is_available()
    if preference == "cuda" and not cuda:
        raise UserError(f"{key}: cuda was asked for, but no CUDA device is available")
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


def compute_dtype(precision: str) -> Any:
    import torch

    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)


def local_model_dir(path: Path) -> Path:
    """A local model directory; a missing one must not fall through to a hub download."""
    if not (Path(path) / "config.json").is_file():
        raise UserError(f"{path}: no model there; run the stages before this one (uv run dvc repro)")
    return Path(path)


def with_attention(load: Callable[[str], Any], attention: str) -> Any:
    """load(attention), or where the architecture has no such implementation (Gemma 2 has no
    SDPA attention in transformers), load("eager") after one line saying so."""
    try:
        return load(attention)
    except ValueError as e:
        if attention == "eager" or "does not support an attention implementation" not in str(e):
            raise
        print(f"attention {attention}: {str(e).split()[0]} does not support it; using eager attention",
              file=sys.stderr)
        return load("eager")


def load_model(path: Path, device: str = "cpu", attention: str = "sdpa") -> Any:
    """A causal LM from a local Hugging Face directory, safetensors only, no remote code;
    `attention` as the architecture supports it (with_attention)."""
    from transformers import AutoModelForCausalLM

    path = local_model_dir(path)
    model = with_attention(lambda implementation: AutoModelForCausalLM.from_pretrained(
        path, use_safetensors=True, trust_remote_code=False, dtype="float32",
        attn_implementation=implementation), attention)
    return model.to(device)


# What tokenizer_config.json names when the tokenizer is tokenizer.json itself, with no class of
# its own (SmolLM2's, GPT-2's as transformers 5 saves them): PreTrainedTokenizerFast is that class.
PLAIN_TOKENIZERS = {"TokenizersBackend", "PreTrainedTokenizerFast"}


def _saved(folder: Path, name: str) -> dict[str, Any]:
    try:
        value = json.loads((folder / name).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def load_tokenizer(path: Path) -> Any:
    """The tokenizer of a local model folder, no remote code. A plain one loads as the class
    AutoTokenizer would pick for it, without AutoTokenizer, which imports torch (seconds) even
    where nothing else needs it, as in tokenize."""
    folder = local_model_dir(path)
    if _saved(folder, "tokenizer_config.json").get("tokenizer_class") in PLAIN_TOKENIZERS:
        from transformers import PreTrainedTokenizerFast

        return PreTrainedTokenizerFast.from_pretrained(folder)
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder, trust_remote_code=False)


CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length")


def saved_context_length(path: Path) -> int:
    """context_length of a local model folder's config: read from config.json where it names
    exactly one of the keys (the value the config class gives too), else from the config
    transformers builds (aliases, defaults of its class)."""
    folder = local_model_dir(path)
    raw = _saved(folder, "config.json")
    found = [raw[k] for k in CONTEXT_KEYS if k in raw]
    if len(found) == 1 and isinstance(found[0], int) and not isinstance(found[0], bool) and found[0] > 0:
        return found[0]
    from transformers import AutoConfig

    return context_length(AutoConfig.from_pretrained(folder))


def context_length(config: Any) -> int:
    """The longest sequence the model takes, from its config."""
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        if getattr(config, key, None):
            return int(getattr(config, key))
    raise UserError("model.source: the model's config does not say its context length")


def set_inference(model: Any, tokenizer: Any, asked: dict[str, Any]) -> None:
    """Make a model folder answer as it was trained, for any reader of the folder alone: the chat
    template, stop tokens and default sampling of finetune.text.prompts.Inference (written by
    tokenize to data/tokenized/inference.json)."""
    tokenizer.chat_template = asked["chat_template"]
    config = model.generation_config
    stop = asked["stop_token_ids"]
    config.eos_token_id = stop if len(stop) > 1 else stop[0]
    if config.pad_token_id is None:
        config.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop[0]
    config.update(**asked["sampling"])

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
