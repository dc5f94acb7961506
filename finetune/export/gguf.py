"""A Hugging Face model folder as one GGUF file (llama.cpp, Ollama, LM Studio), written with the
gguf library: its writer, tensor-name maps, vocabulary readers and quantisers. What is done here
by hand is only what llama.cpp's layout differs in: Llama's q/k rows are permuted into its rotary
order, GPT-2's Conv1D weights transposed, and one-dimensional tensors kept in f32. The same
folder and type give the same bytes."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from finetune.errors import UserError
from finetune.text.prompts import adds_bos

# gguf types this exporter writes, with llama.cpp's file-type code for each
GGUF_TYPES = {"f32": 0, "f16": 1, "q8_0": 7}
ARCHITECTURES = {"llama": "llama", "gpt2": "gpt2"}  # model_type -> gguf architecture


@dataclass(frozen=True)
class Written:
    path: Path
    tensors: int
    parameters: int


def architecture(config: Any) -> str:
    """The gguf architecture of a model config; anything else ends in one line naming it."""
    arch = ARCHITECTURES.get(config.model_type)
    if arch is None:
        named = f" ({config.architectures[0]})" if getattr(config, "architectures", None) else ""
        raise UserError(f"the {config.model_type} architecture{named} cannot be exported; "
                        f"GGUF export supports {', '.join(sorted(ARCHITECTURES))}")
    scaling = getattr(config, "rope_scaling", None) or {}
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    if arch == "llama" and kind != "default":
        raise UserError(f"rope scaling {kind!r} is not supported by the GGUF export")
    return arch


def pre_tokenizer(folder: Path) -> str:
    """llama.cpp's name for how the tokenizer splits text before BPE (`tokenizer.ggml.pre`), from
    tokenizer.json: the GPT-2 byte-level split, or SmolLM's, which puts each digit apart."""
    spec = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8")).get("pre_tokenizer") or {}
    parts = spec.get("pretokenizers", [spec]) if spec.get("type") == "Sequence" else [spec]
    kinds = [p.get("type") for p in parts]
    if kinds == ["ByteLevel"] and parts[0].get("use_regex", True):
        return "gpt-2"
    if kinds == ["Digits", "ByteLevel"] and parts[0].get("individual_digits"):
        return "smollm"
    raise UserError(f"{folder}/tokenizer.json splits text in a way the GGUF export does not "
                    f"know ({' + '.join(map(str, kinds))}); llama.cpp would tokenize it differently")


def permute_for_rotary(weight: np.ndarray, heads: int) -> np.ndarray:
    """q/k projection rows from Hugging Face's rotary layout (halves) into llama.cpp's
    (interleaved pairs), head by head."""
    return (weight.reshape(heads, 2, weight.shape[0] // heads // 2, *weight.shape[1:])
            .swapaxes(1, 2).reshape(weight.shape))


def gguf_tensors(model: Any, arch: str) -> list[tuple[str, np.ndarray]]:
    """The model's tensors under their gguf names, in llama.cpp's layout, as float32 arrays;
    a tied output head is left out (llama.cpp reuses the token embedding)."""
    import gguf
    import torch

    config = model.config
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH[arch.upper()], config.num_hidden_layers)
    tied = bool(getattr(config, "tie_word_embeddings", False))
    out = []
    for name, tensor in model.state_dict().items():
        if tied and name == "lm_head.weight":
            continue
        new = names.get_name(name, try_suffixes=(".weight", ".bias"))
        if new is None:
            raise UserError(f"no GGUF name for the {arch} tensor {name}")
        data = tensor.detach().to(torch.float32).cpu().numpy()
        if arch == "llama" and new.endswith(("attn_q.weight", "attn_k.weight")):
            heads = config.num_attention_heads if "attn_q" in new else config.num_key_value_heads
            data = permute_for_rotary(data, heads)
        if arch == "gpt2" and new.endswith(("attn_qkv.weight", "attn_output.weight",
                                            "ffn_up.weight", "ffn_down.weight")):
            data = data.T  # Conv1D stores (in, out)
        out.append((new, np.ascontiguousarray(data)))
    return out


def encoded(data: np.ndarray, kind: str) -> tuple[np.ndarray, Any]:
    """A tensor in the file's type: 1-D tensors (norms, biases) stay f32 as llama.cpp keeps them;
    q8_0 blocks need a row length divisible by 32, and such rows fall back to f16."""
    import gguf

    Q = gguf.GGMLQuantizationType
    if kind == "f32" or data.ndim == 1:
        return data.astype(np.float32), Q.F32
    if kind == "q8_0" and data.shape[-1] % gguf.GGML_QUANT_SIZES[Q.Q8_0][0] == 0:
        return gguf.quants.quantize(data, Q.Q8_0), Q.Q8_0
    return data.astype(np.float16), Q.F16


def add_hyperparameters(writer: Any, config: Any, arch: str) -> None:
    writer.add_context_length(config.max_position_embeddings if arch == "llama" else config.n_positions)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_head_count(config.num_attention_heads)
    if arch == "llama":
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        writer.add_feed_forward_length(config.intermediate_size)
        writer.add_head_count_kv(config.num_key_value_heads)
        writer.add_rope_freq_base(float(config.rope_parameters["rope_theta"])
                                  if getattr(config, "rope_parameters", None) else float(config.rope_theta))
        writer.add_rope_dimension_count(head_dim)
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
        writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    else:
        writer.add_feed_forward_length(config.n_inner or 4 * config.hidden_size)
        writer.add_layer_norm_eps(float(config.layer_norm_epsilon))
    writer.add_vocab_size(config.vocab_size)


def add_tokenizer(writer: Any, folder: Path, tokenizer: Any, vocab_size: int) -> None:
    """The byte-level BPE vocabulary (padded to the model's embedding rows), its merges, special
    tokens and chat template. Special added tokens are control tokens, so llama.cpp reads
    `<|im_end|>` in a rendered prompt as one token, as transformers does."""
    import gguf

    vocab = gguf.BpeVocab(folder)
    tokens = [text for text, _, _ in vocab.all_tokens()]
    special = {i for i, t in tokenizer.added_tokens_decoder.items() if t.special}
    added = set(tokenizer.added_tokens_decoder)
    types = [gguf.TokenType.CONTROL if i in special else
             gguf.TokenType.USER_DEFINED if i in added else gguf.TokenType.NORMAL
             for i in range(len(tokens))]
    for i in range(len(tokens), vocab_size):  # embedding rows past the vocabulary
        tokens.append(f"[PAD{i}]")
        types.append(gguf.TokenType.UNUSED)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre_tokenizer(folder))
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    special_vocab = gguf.SpecialVocab(folder, load_merges=True, n_vocab=len(tokens))
    # said outright, so no runtime guesses whether to put BOS before a prompt training had none for
    special_vocab.add_special_token.setdefault("bos", adds_bos(tokenizer))
    special_vocab.add_to_gguf(writer, quiet=True)


def write_gguf(folder: Path, model: Any, tokenizer: Any, kind: str, path: Path, name: str) -> Written:
    """models/finetuned (`folder`, loaded as `model` and `tokenizer`) as a GGUF file of `kind`."""
    import gguf

    arch = architecture(model.config)
    writer = gguf.GGUFWriter(path, arch)
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(name)
    add_hyperparameters(writer, model.config, arch)
    writer.add_file_type(GGUF_TYPES[kind])
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    try:
        add_tokenizer(writer, folder, tokenizer, model.config.vocab_size)
    except FileNotFoundError:  # gguf.BpeVocab: not a byte-level BPE tokenizer.json
        raise UserError(f"{folder} has no byte-level BPE tokenizer.json, which the GGUF "
                        "export needs") from None
    tensors = gguf_tensors(model, arch)
    for tensor_name, data in tensors:
        array, qtype = encoded(data, kind)
        writer.add_tensor(tensor_name, array, raw_dtype=qtype)  # q8_0: shape read from the bytes
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return Written(path, len(tensors), int(sum(d.size for _, d in tensors)))
