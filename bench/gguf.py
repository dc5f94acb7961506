"""The GGUF export of a model folder in each type, read back by two readers nobody here wrote:
`uv run --group llamacpp python -m bench.gguf [--model models/finetuned] [--without-llama-cpp]`.

For f32, f16 and q8_0 it exports the folder (finetune.export.gguf, as the export stage does) and
reports the file size and export time; through transformers' GGUF loader, the export stage's
own check (finetune.export.check.compare); through llama.cpp (llama-cpp-python, skipped with
--without-llama-cpp): whether it tokenizes the check prompts as the folder's tokenizer does, the
largest and mean absolute logit difference from the folder's model in transformers, how many of
32 greedy tokens agree before the first that differs, and its decoding speed next to
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
    from llama_cpp import Llama

    from finetune.export.check import same_prefix

    llm = Llama(model_path=str(path), logits_all=True, verbose=False, n_ctx=512,
                n_threads=os.cpu_count())
    same_tokens = all(llm.tokenize(t.encode(), add_bos=False, special=True) == ids
                      for t, ids in zip(texts, prompts, strict=True))
    biggest, total, count = 0.0, 0.0, 0
    for ids, want in zip(prompts, logits, strict=True):
        llm.reset()
        llm.eval(ids)
        diff = np.abs(np.array(llm.eval_logits) - want)
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
    agree = same_prefix(got, continuations[0])
    return {"tokenizer_agrees": same_tokens, "max_abs_logit_diff": round(biggest, 6),
            "mean_abs_logit_diff": round(total / count, 6), "greedy_agreement": f"{agree}/{GREEDY}",
            "decode_tokens_per_second": round(speed, 1)}


def bench(folder: Path, llama_cpp: bool = True) -> dict[str, Any]:
    """Every GGUF type of the model in `folder`, read back by transformers and (`llama_cpp`)
    by llama.cpp."""
    from finetune.export.check import check_prompts, compare
    from finetune.export.gguf import GGUF_TYPES, write_gguf
    from finetune.models.loading import load_model, load_tokenizer

    model, tokenizer = load_model(folder), load_tokenizer(folder)
    model.eval()
    texts = check_prompts(tokenizer)
    prompts = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    logits, continuations, hf_speed = hf_reference(model, prompts)
    results: dict[str, Any] = {"transformers_decode_tokens_per_second": hf_speed, "types": {}}
    with tempfile.TemporaryDirectory() as where:
        for kind in GGUF_TYPES:
            path = Path(where) / f"model-{kind}.gguf"
            start = time.perf_counter()
            write_gguf(folder, model, tokenizer, kind, path, "bench")
            seconds = time.perf_counter() - start
            results["types"][kind] = {
                "bytes": path.stat().st_size, "export_seconds": round(seconds, 1),
                "transformers": compare(path, model, tokenizer),
                "llama_cpp": (llama_cpp_check(path, texts, prompts, logits, continuations)
                              if llama_cpp else None)}
            path.unlink()
    return results


def table(r: dict[str, Any], model: str) -> str:
    lines = [SECTION[0], f"### GGUF export ({model}, {os.cpu_count()} CPU cores)", "",
             "| type | size | export | transformers reader: max / mean abs logit diff, greedy same | "
             "llama.cpp: tokens, max / mean abs logit diff, greedy same | llama.cpp decode |",
             "|---|---|---|---|---|---|"]
    for kind, t in r["types"].items():
        tf, lc = t["transformers"], t["llama_cpp"]
        llama = (f"{'same' if lc['tokenizer_agrees'] else 'DIFFERENT'}, {lc['max_abs_logit_diff']} / "
                 f"{lc['mean_abs_logit_diff']}, {lc['greedy_agreement']} | "
                 f"{lc['decode_tokens_per_second']} tokens/s") if lc else "not run | not run"
        lines.append(
            f"| {kind} | {t['bytes'] / 2**20:.1f} MiB | {t['export_seconds']} s | "
            f"{tf['max_abs_logit_diff']} / {tf['mean_abs_logit_diff']}, {tf['greedy_agreement']:.0%} | "
            f"{llama} |")
    speed = r["transformers_decode_tokens_per_second"]
    lines += ["", f"transformers (fp32, the folder itself) decodes {speed} tokens/s on the same "
              "prompt. Logit differences are against the folder's model in transformers, over "
              "the export stage's check prompts; \"greedy same\": the share of greedy tokens "
              "(llama.cpp: of 32 on the first prompt) before the first that differs from the "
              "folder's. q8_0 parts from the folder at the first token of the first prompt, whose "
              "top two candidates are 0.13 apart in the folder's own logits.", SECTION[1]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.gguf", description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
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
    results = bench(args.model, llama_cpp=not args.without_llama_cpp)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"model": model, **results}, indent=2) + "\n")
    write_section(md, table(results, model), SECTION)
    print(table(results, model))


if __name__ == "__main__":
    main()
