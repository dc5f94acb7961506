"""Export models/finetuned as GGUF files, one per type (finetune.export.gguf: llama.cpp's
converter and quantisers), and an Ollama Modelfile for the first (finetune.export.ollama), into
models/export/. Each file is read back through transformers' GGUF loader (finetune.export.check)
and must tokenize as the folder does and, at 8 bits and more, give its greedy tokens; the cost of
each quantisation is measured as the test split's perplexity beside the folder's (and in
llama.cpp itself, where the `llamacpp` group is installed). Params: `export`."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from finetune.config.export import ExportParams
from finetune.errors import UserError
from finetune.export import llamacpp
from finetune.export.check import compare_loaded, read_back
from finetune.export.gguf import LLAMACPP_TYPES, llama_cpp_module, write_gguf
from finetune.export.ollama import modelfile
from finetune.files import atomic_output
from finetune.models.loading import context_length, load_model, load_tokenizer
from finetune.paths import PATHS, Paths
from finetune.scoring.loss import mean_token_loss
from finetune.scoring.scores import perplexity
from finetune.stage import stage_main
from finetune.text.prompts import read_inference

CHECKED = ("f32", "f16", "bf16", "q8_0")  # types whose greedy tokens must match the folder's
BATCH = 8  # perplexity batches (the figure does not depend on it)


def test_perplexity(model: Any, test: Any, tokenizer: Any, label: str) -> dict[str, Any]:
    loss = mean_token_loss(model, test, tokenizer, BATCH, "cpu", label)
    return {"loss": round(loss.mean, 6), "perplexity": perplexity(loss.mean), "tokens": loss.tokens}


def run(export: ExportParams, paths: Paths = PATHS) -> dict[str, Any]:
    import datasets

    kinds = export.kinds()
    for kind in kinds:
        if kind in LLAMACPP_TYPES:
            llama_cpp_module(kind)  # one line on how to install it, before any work
    asking = read_inference(paths.finetuned)  # the stop tokens and sampling it is asked with
    model = load_model(paths.finetuned)
    model.eval()
    tokenizer = load_tokenizer(paths.finetuned)
    test = datasets.load_from_disk(str(paths.tokenized / "test"))
    eot = next((i for i in asking.stop_token_ids if i != tokenizer.eos_token_id), None)
    names = {kind: f"{export.name}-{kind}.gguf" for kind in kinds}
    files: dict[str, Any] = {}
    with atomic_output(paths.export) as tmp:  # the files and the Modelfile appear together or not
        tmp.mkdir()
        for kind, name in names.items():
            written = write_gguf(paths.finetuned, model, tokenizer, kind, tmp / name, export.name,
                                 base=paths.base_model, eot=eot)
            loaded, loaded_tokenizer = read_back(written.path)
            check = compare_loaded(loaded, loaded_tokenizer, model, tokenizer)
            if not check["tokenizer_agrees"] or (kind in CHECKED and check["top_token_agreement"] < 0.5):
                raise UserError(f"{name} does not read back as the model it was written from "
                                f"({check}); please report this with the model's config.json")
            files[kind] = {"file": str(paths.export / name), "bytes": written.path.stat().st_size,
                           "tensors": written.tensors, "parameters": written.parameters,
                           "check": check, "test": test_perplexity(loaded, test, tokenizer, name)}
            if llamacpp.available():
                files[kind]["llama_cpp_test"] = llamacpp.perplexity(written.path, test)
            del loaded
        first = names[kinds[0]]
        defaults = SimpleNamespace(eos_token_id=asking.stop_token_ids, **asking.sampling)
        text, template = modelfile(first, tokenizer, defaults, context_length(model.config))
        (tmp / "Modelfile").write_text(text, encoding="utf-8")
    main = files[kinds[0]]
    return {"file": main["file"], "gguf_type": kinds[0], "bytes": main["bytes"],
            "tensors": main["tensors"], "parameters": main["parameters"], "ollama_template": template,
            "check": main["check"], "finetuned_test": test_perplexity(model, test, tokenizer, "finetuned"),
            "types": files}


def main(argv: list[str] | None = None) -> None:
    stage_main("export", run, argv)


if __name__ == "__main__":
    main()
