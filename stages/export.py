"""Export models/finetuned as GGUF files, one per type (finetune.export.gguf: llama.cpp's
converter and quantisers), and an Ollama Modelfile for the first, into models/export/; with
`export.lora_adapter`, a LoRA run's adapter as a GGUF adapter over the base's GGUF in
models/export/lora/. Each file is read back through transformers' GGUF loader and must tokenize
as the folder does and, at 8 bits and more, give its top tokens; the cost of each quantisation is
measured as the test split's perplexity beside the folder's (and in llama.cpp itself, where the
`llamacpp` group is installed) (finetune.export.bundle). Params: `export`."""

from __future__ import annotations

from typing import Any

from finetune.config.export import ExportParams
from finetune.export.bundle import (
    checked_gguf,
    eot_token,
    lora_bundle,
    require_adapter,
    split_perplexity,
    write_modelfile,
)
from finetune.export.gguf import LLAMACPP_TYPES, llama_cpp_module
from finetune.files import atomic_output
from finetune.models.loading import context_length, load_model, load_tokenizer
from finetune.paths import PATHS, Paths
from finetune.stage import stage_main
from finetune.text.prompts import read_inference


def run(export: ExportParams, paths: Paths = PATHS) -> dict[str, Any]:
    import datasets

    kinds = export.kinds()
    for kind in kinds:
        if kind in LLAMACPP_TYPES:
            llama_cpp_module(kind)  # one line on how to install it, before any work
    if export.lora_adapter:
        require_adapter(paths.finetuned)
    asking = read_inference(paths.finetuned)  # the stop tokens and sampling it is asked with
    model = load_model(paths.finetuned)
    model.eval()
    tokenizer = load_tokenizer(paths.finetuned)
    test = datasets.load_from_disk(str(paths.tokenized / "test"))
    eot = eot_token(asking, tokenizer)
    files: dict[str, Any] = {}
    with atomic_output(paths.export) as tmp:  # every file appears together with the others, or none
        tmp.mkdir()
        for kind in kinds:
            name = f"{export.name}-{kind}.gguf"
            files[kind] = checked_gguf(paths.finetuned, model, tokenizer, kind, tmp / name, export.name,
                                       paths.base_model, eot, test, paths.export / name)
        template = write_modelfile(tmp, f"{export.name}-{kinds[0]}.gguf", tokenizer, asking,
                                   context_length(model.config), paths.base_model)
        lora = (lora_bundle(paths.finetuned, paths.base_model, tokenizer, kinds[0], tmp / "lora",
                            paths.export / "lora", export.name, asking) if export.lora_adapter else None)
    main = files[kinds[0]]
    return {**{k: main[k] for k in ("file", "bytes", "tensors", "parameters", "check")},
            "gguf_type": kinds[0], "ollama_template": template, "lora_adapter": lora,
            "finetuned_test": split_perplexity(model, test, tokenizer, "finetuned"), "types": files}


def main(argv: list[str] | None = None) -> None:
    stage_main("export", run, argv)


if __name__ == "__main__":
    main()
