"""The GGUF export of a model folder in each type, read back by two readers nobody here wrote:
`uv run --group llamacpp python -m bench.gguf [--model models/finetuned] [--test data/tokenized/test]
[--without-llama-cpp]`.

For every type (finetune.config.export.GGUF_TYPES; without llama.cpp, the gguf library's types
only) it exports the folder (finetune.export.gguf, as the export stage does) and reports the file
size and export time; through transformers' GGUF loader, the export stage's own check
(finetune.export.check) and the perplexity of the tokenized test split beside the folder's;
through llama.cpp (llama-cpp-python, skipped with --without-llama-cpp): whether it tokenizes the
check prompts as the folder's tokenizer does, the largest and mean absolute logit difference from
the folder's model in transformers, how many of 32 greedy tokens agree before the first that
differs, the test perplexity as llama.cpp computes it, and its decoding speed next to
transformers' on this CPU. Writes bench/gguf.json and the GGUF section of bench/results.md.
Benchmarks are not tests: nothing here asserts a timing."""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import ROOT, write_section

SECTION = ("<!-- gguf:start -->", "<!-- gguf:end -->")
GREEDY = 32
DEFAULT_MODEL = ROOT / "models" / "finetuned"
DEFAULT_TEST = ROOT / "data" / "tokenized" / "test"


def hf_reference(model: Any, prompts: list[list[int]]) -> tuple[list[Any], list[list[int]], float]:
    """The folder's logits for each prompt, its greedy continuations, and its decoding speed."""
    import torch

    from finetune.export.check import greedy

    with torch.inference_mode():
        logits = [model(torch.tensor([ids])).logits[0].numpy() for ids in prompts]
    continuations = [greedy(model, ids, GREEDY) for ids in prompts[:1]]
    start = time.perf_counter()
    with torch.inference_mode():
        model.generate(torch.tensor([prompts[0]]), max_new_tokens=GREEDY, min_new_tokens=GREEDY,
                       do_sample=False, temperature=None, top_p=None, repetition_penalty=None)
    return logits, continuations, round(GREEDY / (time.perf_counter() - start), 1)


def llama_cpp_check(path: Path, texts: list[str], prompts: list[list[int]], logits: list[Any],
                    continuations: list[list[int]]) -> dict[str, Any]:
    import numpy as np

    from finetune.export import llamacpp
    from finetune.export.check import same_prefix

    llm = llamacpp.load(path, n_ctx=512, threads=os.cpu_count() or 1)
    same_tokens = all(llm.tokenize(t.encode(), add_bos=False, special=True) == ids
                      for t, ids in zip(texts, prompts, strict=True))
    biggest, total, count = 0.0, 0.0, 0
    for ids, want in zip(prompts, logits, strict=True):
        diff = np.abs(llamacpp.logits(llm, ids) - want)
        biggest = max(biggest, float(diff.max()))
        total, count = total + float(diff.sum()), count + diff.size
    llm.reset()
    start = time.perf_counter()
    got = []
    for token in llm.generate(prompts[0], temp=0.0, top_k=1, repeat_penalty=1.0):
        got.append(token)
        if len(got) == GREEDY:
            break
    speed = GREEDY / (time.perf_counter() - start)
    llm.close()
    agree = same_prefix(got, continuations[0])
    return {"tokenizer_agrees": same_tokens, "max_abs_logit_diff": round(biggest, 6),
            "mean_abs_logit_diff": round(total / count, 6), "greedy_agreement": f"{agree}/{GREEDY}",
            "decode_tokens_per_second": round(speed, 1)}


def test_perplexity(model: Any, test: Any, tokenizer: Any) -> float | None:
    """The export stage's own figure (finetune.export.bundle.split_perplexity), or None."""
    from finetune.export.bundle import split_perplexity

    return None if test is None else round(split_perplexity(model, test, tokenizer, "bench")["perplexity"], 4)


def bench(folder: Path, llama_cpp: bool = True, test_dir: Path | None = None) -> dict[str, Any]:
    """Every GGUF type of the model in `folder`, read back by transformers and (`llama_cpp`)
    by llama.cpp; with `test_dir` (a tokenized split of the same tokenizer), each file's perplexity."""
    import datasets

    from finetune.config.export import GGUF_TYPES, LIBRARY_TYPES
    from finetune.export import llamacpp
    from finetune.export.check import check_prompts, compare_loaded, read_back
    from finetune.export.gguf import write_gguf
    from finetune.models.loading import load_model, load_tokenizer

    model, tokenizer = load_model(folder), load_tokenizer(folder)
    model.eval()
    test = datasets.load_from_disk(str(test_dir)) if test_dir else None
    texts = check_prompts(tokenizer)
    prompts = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    logits, continuations, hf_speed = hf_reference(model, prompts)
    results: dict[str, Any] = {"transformers_decode_tokens_per_second": hf_speed,
                               "folder_test_perplexity": test_perplexity(model, test, tokenizer),
                               "types": {}}
    base = folder.parent / "base"
    with tempfile.TemporaryDirectory() as where:
        for kind in GGUF_TYPES if llama_cpp else LIBRARY_TYPES:
            path = Path(where) / f"model-{kind}.gguf"
            start = time.perf_counter()
            write_gguf(folder, model, tokenizer, kind, path, "bench", base=base if base.is_dir() else None)
            seconds = time.perf_counter() - start
            loaded, loaded_tokenizer = read_back(path)
            figures = {"bytes": path.stat().st_size, "export_seconds": round(seconds, 1),
                       "transformers": compare_loaded(loaded, loaded_tokenizer, model, tokenizer),
                       "test_perplexity": test_perplexity(loaded, test, tokenizer), "llama_cpp": None}
            del loaded
            if llama_cpp:
                figures["llama_cpp"] = llama_cpp_check(path, texts, prompts, logits, continuations)
                figures["llama_cpp"]["test_perplexity"] = (
                    None if test is None else llamacpp.perplexity(path, test)["perplexity"])
            results["types"][kind] = figures
            path.unlink()
    return results


def table(r: dict[str, Any], model: str) -> str:
    lines = [SECTION[0], f"### GGUF export ({model}, {os.cpu_count()} CPU cores)", "",
             "Test perplexity of the folder itself (transformers, fp32): "
             f"{r.get('folder_test_perplexity')}.", "",
             "| type | size | export | test perplexity: transformers reader / llama.cpp | "
             "transformers reader: max / mean abs logit diff, greedy same | "
             "llama.cpp: tokens, max / mean abs logit diff, greedy same | llama.cpp decode |",
             "|---|---|---|---|---|---|---|"]
    for kind, t in r["types"].items():
        tf, lc = t["transformers"], t["llama_cpp"]
        llama = (f"{'same' if lc['tokenizer_agrees'] else 'DIFFERENT'}, {lc['max_abs_logit_diff']} / "
                 f"{lc['mean_abs_logit_diff']}, {lc['greedy_agreement']} | "
                 f"{lc['decode_tokens_per_second']} tokens/s") if lc else "not run | not run"
        ppl = f"{t.get('test_perplexity')} / {lc.get('test_perplexity') if lc else 'not run'}"
        lines.append(
            f"| {kind} | {t['bytes'] / 2**20:.1f} MiB | {t['export_seconds']} s | {ppl} | "
            f"{tf['max_abs_logit_diff']} / {tf['mean_abs_logit_diff']}, {tf['greedy_agreement']:.0%} | "
            f"{llama} |")
    speed = r["transformers_decode_tokens_per_second"]
    lines += ["", f"transformers (fp32, the folder itself) decodes {speed} tokens/s on the same "
              "prompt. Logit differences are against the folder's model in transformers, over "
              "the export stage's check prompts; \"greedy same\": the share of greedy tokens "
              "(llama.cpp: of 32 on the first prompt) before the first that differs from the "
              "folder's. Perplexity: the tokenized test split (data/tokenized/test), each file as "
              "transformers dequantises it and as llama.cpp runs it.", SECTION[1]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.gguf", description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--test", type=Path, default=None,
                        help="a tokenized split for the perplexity of each file (default: "
                             "data/tokenized/test with the default model, none otherwise)")
    parser.add_argument("--without-llama-cpp", action="store_true",
                        help="skip the llama.cpp reader (llama-cpp-python not installed)")
    parser.add_argument("--table", action="store_true",
                        help="only write the table again from the figures (--out)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "gguf.json",
                        help="the figures; the table goes to results.md beside it")
    args = parser.parse_args(argv)
    md = args.out.with_name("results.md")
    if args.table:
        saved = json.loads(args.out.read_text())
        write_section(md, table(saved, saved["model"]), SECTION)
        return
    model = (f"SmolLM2-135M-Instruct fine-tuned ({args.model.relative_to(ROOT)})"
             if args.model == DEFAULT_MODEL else str(args.model))
    test = args.test or (DEFAULT_TEST if args.model == DEFAULT_MODEL and DEFAULT_TEST.is_dir() else None)
    results = bench(args.model, llama_cpp=not args.without_llama_cpp, test_dir=test)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"model": model, **results}, indent=2) + "\n")
    write_section(md, table(results, model), SECTION)
    print(table(results, model))


if __name__ == "__main__":
    main()
