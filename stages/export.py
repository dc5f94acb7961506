"""Export models/finetuned as one GGUF file (finetune.export.gguf) and an Ollama Modelfile beside
it (finetune.export.ollama) into models/export/. Before the folder appears, the file is read back
through transformers' GGUF loader and must give the same tokens and greedy continuations.
Params: `export`."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from finetune.config.export import ExportParams
from finetune.errors import UserError
from finetune.export.check import compare
from finetune.export.gguf import write_gguf
from finetune.export.ollama import modelfile
from finetune.files import atomic_output
from finetune.models.loading import context_length, load_model, load_tokenizer
from finetune.paths import PATHS, Paths
from finetune.stage import stage_main
from finetune.text.prompts import read_inference


def run(export: ExportParams, paths: Paths = PATHS) -> dict[str, Any]:
    asking = read_inference(paths.finetuned)  # the stop tokens and sampling it is asked with
    model = load_model(paths.finetuned)
    model.eval()
    tokenizer = load_tokenizer(paths.finetuned)
    name = f"{export.name}-{export.gguf_type}.gguf"
    with atomic_output(paths.export) as tmp:  # the file and its Modelfile appear together or not
        tmp.mkdir()
        written = write_gguf(paths.finetuned, model, tokenizer, export.gguf_type, tmp / name, export.name)
        defaults = SimpleNamespace(eos_token_id=asking.stop_token_ids, **asking.sampling)
        text, template = modelfile(name, tokenizer, defaults, context_length(model.config))
        (tmp / "Modelfile").write_text(text, encoding="utf-8")
        check = compare(tmp / name, model, tokenizer)
        if not check["tokenizer_agrees"] or check["top_token_agreement"] < 0.5:
            raise UserError(f"{name} does not read back as the model it was written from "
                            f"({check}); please report this with the model's config.json")
    return {"file": str(paths.export / name), "gguf_type": export.gguf_type,
            "bytes": (paths.export / name).stat().st_size, "tensors": written.tensors,
            "parameters": written.parameters, "ollama_template": template, "check": check}


def main(argv: list[str] | None = None) -> None:
    stage_main("export", run, argv)


if __name__ == "__main__":
    main()
