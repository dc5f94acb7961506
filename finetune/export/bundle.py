"""What the export stage writes into models/export, file by file: each GGUF type written, read
back through transformers (finetune.export.check) and measured on the test split (and in
llama.cpp where it is installed); a LoRA run's adapter as a GGUF adapter over the base's GGUF,
with its own Modelfile."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from finetune.errors import UserError
from finetune.export import llamacpp
from finetune.export.check import compare_loaded, read_back
from finetune.export.gguf import write_gguf
from finetune.export.lora import has_adapter, write_lora_gguf
from finetune.export.ollama import modelfile
from finetune.models.loading import context_length, load_model
from finetune.scoring.loss import mean_token_loss
from finetune.scoring.scores import perplexity
from finetune.text.prompts import Inference

CHECKED = ("f32", "f16", "bf16", "q8_0")  # types whose top tokens must match the folder's
BATCH = 8  # perplexity batches (the figure does not depend on it)


def split_perplexity(model: Any, test: Any, tokenizer: Any, label: str) -> dict[str, Any]:
    """The mean token loss and perplexity of a tokenized split (data/tokenized/test), on CPU."""
    loss = mean_token_loss(model, test, tokenizer, BATCH, "cpu", label)
    return {"loss": round(loss.mean, 6), "perplexity": perplexity(loss.mean), "tokens": loss.tokens}


def eot_token(asking: Inference, tokenizer: Any) -> int | None:
    """The token that ends a chat turn where it is not EOS (llama.cpp's EOT)."""
    return next((i for i in asking.stop_token_ids if i != tokenizer.eos_token_id), None)


def checked_gguf(folder: Path, model: Any, tokenizer: Any, kind: str, path: Path, name: str,
                 base: Path, eot: int | None, test: Any, shown: Path) -> dict[str, Any]:
    """One GGUF file of `kind`, read back as the model it came from (or a one-line error), with
    the test split's perplexity as transformers dequantises it and as llama.cpp runs it."""
    written = write_gguf(folder, model, tokenizer, kind, path, name, base=base, eot=eot)
    loaded, loaded_tokenizer = read_back(written.path)
    check = compare_loaded(loaded, loaded_tokenizer, model, tokenizer)
    if not check["tokenizer_agrees"] or (kind in CHECKED and check["top_token_agreement"] < 0.5):
        raise UserError(f"{path.name} does not read back as the model it was written from "
                        f"({check}); please report this with the model's config.json")
    figures = {"file": str(shown), "bytes": path.stat().st_size, "tensors": written.tensors,
               "parameters": written.parameters, "check": check,
               "test": split_perplexity(loaded, test, tokenizer, path.name)}
    if llamacpp.available():
        figures["llama_cpp_test"] = llamacpp.perplexity(path, test)
    return figures


def family_stops(base: Path) -> list[int]:
    """The tokens the base model's own generation config ends a reply with (Qwen's instruct
    models: <|im_end|> and <|endoftext|>), which a fine-tune may still produce."""
    path = Path(base) / "generation_config.json"
    if not path.is_file():
        return []
    eos = json.loads(path.read_text(encoding="utf-8")).get("eos_token_id")
    return [int(i) for i in (eos if isinstance(eos, list) else [eos]) if i is not None]


def write_modelfile(where: Path, gguf_name: str, tokenizer: Any, asking: Inference, context: int,
                    base: Path, adapter: str | None = None) -> str:
    """where/Modelfile for `gguf_name` (and an ADAPTER line); how its template was found. Its
    stop tokens: those the model was trained to end with, and the base family's own."""
    stops = list(dict.fromkeys([*asking.stop_token_ids, *family_stops(base)]))
    defaults = SimpleNamespace(eos_token_id=stops, **asking.sampling)
    text, template = modelfile(gguf_name, tokenizer, defaults, context)
    if adapter:
        text = text.replace(f"FROM ./{gguf_name}\n", f"FROM ./{gguf_name}\nADAPTER ./{adapter}\n")
    (where / "Modelfile").write_text(text, encoding="utf-8")
    return template


def require_adapter(folder: Path) -> None:
    if not has_adapter(folder):
        raise UserError(f"export.lora_adapter: {folder} has no LoRA adapter (lora_adapter/); "
                        "it is written by train.method lora or qlora")


def lora_bundle(folder: Path, base: Path, tokenizer: Any, kind: str, where: Path, shown: Path,
                name: str, asking: Inference) -> dict[str, Any]:
    """where/: the base model's GGUF of `kind`, the run's LoRA adapter as a GGUF adapter over
    it, and a Modelfile with both (FROM and ADAPTER)."""
    require_adapter(folder)
    where.mkdir()
    base_model = load_model(base)
    base_name, adapter_name = f"{name}-base-{kind}.gguf", f"{name}-lora.gguf"
    base_file = write_gguf(base, base_model, tokenizer, kind, where / base_name, f"{name}-base",
                           base=base, eot=eot_token(asking, tokenizer))
    adapter = write_lora_gguf(folder, base, base_model, where / adapter_name, f"{name}-lora")
    write_modelfile(where, base_name, tokenizer, asking, context_length(base_model.config), base,
                    adapter_name)
    return {"base_file": str(shown / base_name), "base_bytes": base_file.path.stat().st_size,
            "file": str(shown / adapter_name), "bytes": adapter.path.stat().st_size,
            "tensors": adapter.tensors, "rank": adapter.rank, "alpha": adapter.alpha}
