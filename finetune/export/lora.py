"""A LoRA run's adapter (models/finetuned/lora_adapter, peft's format) as a GGUF LoRA adapter,
the format llama.cpp's `--lora` and Ollama's `ADAPTER` line load over the base model's GGUF.

The tensor names and layouts come from llama.cpp's converter class for the base model (the same
class that writes the model itself, finetune.export.gguf): each adapted weight's B matrix goes
through the class's own tensor transform, so a Llama's rotary q/k row order applies to it as it
does to the weight (W + BA: rows permuted, PW + (PB)A), and A keeps its layout. A transform that
does more than reorder rows (GPT-2's transposed Conv1D weights, a fused tensor split in two) ends
in one line naming the tensor."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from finetune.errors import UserError
from finetune.export.gguf import FAMILIES, converter_class, family
from finetune.gguf_files import gguf_module

ADAPTER_DIR = "lora_adapter"  # under models/finetuned, written by train for method lora
PEFT_KEY = re.compile(r"^(?:base_model\.model\.)?(?P<module>.+)\.lora_(?P<side>[AB])(?:\.default)?\.weight$")


@dataclass(frozen=True)
class Adapter:
    path: Path
    tensors: int
    rank: int
    alpha: float  # llama.cpp scales B·A by alpha / rank


def has_adapter(folder: Path) -> bool:
    return (Path(folder) / ADAPTER_DIR / "adapter_config.json").is_file()


def peft_pairs(adapter: Path) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """{adapted module: {"A": tensor, "B": tensor}} and the adapter's config."""
    from safetensors.torch import load_file

    config = json.loads((adapter / "adapter_config.json").read_text(encoding="utf-8"))
    for key, why in (("use_dora", "DoRA"), ("modules_to_save", "fully trained modules_to_save")):
        if config.get(key):
            raise UserError(f"{adapter}: {why} cannot be written as a GGUF LoRA adapter; export the "
                            "merged model (models/export) instead")
    pairs: dict[str, dict[str, Any]] = {}
    for key, tensor in load_file(adapter / "adapter_model.safetensors").items():
        match = PEFT_KEY.match(key)
        if match is None:
            raise UserError(f"{adapter}: tensor {key} is not a LoRA A or B matrix")
        pairs.setdefault(match["module"], {})[match["side"]] = tensor.float()
    return pairs, config


def write_lora_gguf(folder: Path, base: Path, model: Any, path: Path, name: str) -> Adapter:
    """models/finetuned/lora_adapter as a GGUF LoRA adapter over the GGUF of `base` (models/base,
    loaded as `model` for its config). Matrices in f16, or f32 where a row has fewer than 32
    values or not a multiple of 32 (a low rank's B), which f16 would shrink by almost nothing."""
    import torch

    gguf = gguf_module()
    arch = family(model.config)
    pairs, config = peft_pairs(Path(folder) / ADAPTER_DIR)
    rank = int(config["r"])
    alpha = float(config["lora_alpha"]) * (math.sqrt(rank) if config.get("use_rslora") else 1.0)
    Export = converter_class(arch, "f16", Path(base), bos=False, eot=None)
    converter = Export(Path(base), gguf.LlamaFileType.MOSTLY_F16, Path(path), eager=True, model_name=name)
    writer = gguf.GGUFWriter(path, gguf.MODEL_ARCH_NAMES[converter.model_arch])
    writer.add_string(gguf.Keys.General.TYPE, gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.General.NAME, name)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, alpha)
    count = 0
    for module in sorted(pairs):
        a, b = pairs[module].get("A"), pairs[module].get("B")
        if a is None or b is None:
            raise UserError(f"{folder}/{ADAPTER_DIR}: {module} has only one of its two LoRA matrices")
        weight = f"{module}.weight"
        block = re.search(r"\.(\d+)\.", weight)
        with torch.inference_mode():
            done = list(converter.modify_tensors(b, weight, int(block[1]) if block else None))
        if len(done) != 1 or tuple(done[0][1].shape) != tuple(b.shape):
            raise UserError(f"{module}: llama.cpp stores this {FAMILIES[arch]} weight in another "
                            "layout, which a LoRA adapter cannot follow; export the merged model instead")
        gguf_name, b_out = done[0]
        for suffix, tensor in ((".lora_a", a), (".lora_b", b_out)):
            array = tensor.contiguous().numpy()
            writer.add_tensor(gguf_name + suffix, array.astype("float16") if array.shape[-1] % 32 == 0
                              else array.astype("float32"))
        count += 2
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return Adapter(Path(path), count, rank, alpha)

