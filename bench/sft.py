"""Training on short examples (pairs and chat), side by side in one run:
`uv run python -m bench.sft [--steps N] [--quick]`.

For the pairs example and the chat example it trains the same model, on the same train split,
for the same steps and hyperparameters (CPU fp32 everywhere: TRL's SFTConfig defaults to bf16,
which this CPU runs many times slower), four ways:

- this pipeline, packed (`tokenize.packing: true`, the default) and padded (`packing: false`),
  padded also with a batch of as many examples as a packed batch holds (the same data per step);
- TRL's SFTTrainer with its own packing, "bfd" (best-fit decreasing, padding-free) and
  "wrapped" (concatenate and cut), and completion-only loss;

and reports real (non-padding) training tokens per second, and the answer perplexity each model
reaches on the same test tokens (this pipeline's tokenized test split, scored by the evaluate
stage's own function). Chat uses `tokenize.train_on: last`, the loss TRL's prompt/completion
form gives (its assistant_only_loss needs `{% generation %}` markers that SmolLM2's template
lacks). Writes bench/sft.json and the "Short examples" section of bench/results.md (--quick:
bench/sft-quick.json only). Benchmarks are not tests: nothing here asserts a timing."""

from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import ROOT, base_model_dir, data_project, load_from, write_section

BATCH, LR = 4, 1.0e-4
DATA = {"pairs": "data/examples/pairs", "chat": "data/examples/chat"}
BLOCK = {"pairs": 256, "chat": 512}  # the sample chats are 97-313 tokens (SmolLM2), the pairs ~120
TARGETS = {"packed_vs_padded": 1.3, "packed_vs_trl": 1.2}
SECTION = ("<!-- sft:start -->", "<!-- sft:end -->")
CONTENDERS = ("packed", "padded", "padded_same_examples", "trl_bfd", "trl_wrapped")


def prepare(mode: str, packing: bool, base: Path, where: Path) -> tuple[Any, Any, dict[str, Any]]:
    """The data stages of this pipeline on the example (default params but the mode, the data,
    packing and, for chat, train_on: last): the params, the paths and tokenize's summary."""
    return data_project(where, base, {
        "mode": mode, "ingest": {"paths": [str(ROOT / DATA[mode])]},
        "tokenize": {"block_size": BLOCK[mode], "packing": packing,
                     **({"train_on": "last"} if mode == "chat" else {})}})


def arguments(out: str, steps: int, **extra: Any) -> dict[str, Any]:
    """The training arguments every contender shares."""
    return dict(output_dir=out, per_device_train_batch_size=BATCH, max_steps=steps,
                learning_rate=LR, lr_scheduler_type="cosine", warmup_steps=0.05, seed=42,
                data_seed=42, optim="adamw_torch_fused", save_strategy="no", report_to="none",
                use_cpu=True, bf16=False, fp16=False, disable_tqdm=True, logging_strategy="no",
                include_num_input_tokens_seen="non_padding", dataloader_num_workers=0, **extra)


def ours(model: Any, tokenizer: Any, paths: Any, steps: int, batch: int = BATCH
         ) -> tuple[Any, float, int]:
    """This pipeline's Trainer on its tokenized train split (packed or padded)."""
    import datasets
    from transformers import TrainingArguments

    from finetune.models.collators import collator
    from finetune.training.trainer import packed_trainer

    train = datasets.load_from_disk(str(paths.tokenized / "train"))
    packed = "position_ids" in train.column_names
    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(**{**arguments(out, steps), "per_device_train_batch_size": batch})
        trainer = packed_trainer()(model=model, args=args,
                                   train_dataset=train, data_collator=collator(tokenizer, packed))
        return timed(trainer)


def trl_dataset(params: Any, paths: Any, tokenizer: Any) -> Any:
    """The same train split in TRL's prompt/completion form: pairs rendered with this pipeline's
    prompt template; conversations as their history and last assistant turn."""
    import datasets
    import pandas as pd

    from finetune.data import conversations
    from finetune.text.prompts import render_prompts

    df = pd.read_parquet(paths.split_file("train"))
    if params.mode == "pairs":
        return datasets.Dataset.from_dict({
            "prompt": render_prompts(df["prompt"].tolist(), tokenizer, params.tokenize),
            "completion": df["response"].tolist()})
    prompts, completions = [], []
    for conv in df["conversation"]:
        messages = conversations.loads(conv)["messages"]
        last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
        prompts.append(messages[:last])
        completions.append([messages[last]])
    return datasets.Dataset.from_dict({"prompt": prompts, "completion": completions})


def trl(model: Any, tokenizer: Any, dataset: Any, strategy: str, steps: int, block: int
        ) -> tuple[Any, float, int]:
    """TRL's SFTTrainer with its packing strategy and completion-only loss."""
    from trl import SFTConfig, SFTTrainer

    with tempfile.TemporaryDirectory() as out:
        config = SFTConfig(**arguments(out, steps), max_length=block, packing=True,
                           packing_strategy=strategy, completion_only_loss=True)
        trainer = SFTTrainer(model=model, args=config, train_dataset=dataset,
                             processing_class=tokenizer)
        return timed(trainer)


def timed(trainer: Any) -> tuple[Any, float, int]:
    """Train; the model, the seconds of the training loop, the real tokens it saw."""
    started = time.perf_counter()
    result = trainer.train()
    seconds = result.metrics.get("train_runtime") or time.perf_counter() - started
    return trainer.model, seconds, int(trainer.state.num_input_tokens_seen)


def answer_perplexity(model: Any, tokenizer: Any, test_paths: Any) -> float:
    import datasets

    from finetune.scoring.loss import mean_token_loss

    test = datasets.load_from_disk(str(test_paths.tokenized / "test"))
    return round(math.exp(mean_token_loss(model, test, tokenizer, 8, "cpu", "test").mean), 3)


def fresh_model(base: Path, quick: bool) -> Any:
    """The default model (or --quick, a tiny one with its tokenizer), seeded alike every time."""
    from transformers import set_seed

    set_seed(42)
    return load_from(base, quick)[0]


def bench_mode(mode: str, base: Path, steps: int, quick: bool, where: Path,
               contenders: list[str] | None = None, results: dict[str, Any] | None = None
               ) -> dict[str, Any]:
    """Every contender (or those named, merged into earlier `results`) on one example."""
    from finetune.models.loading import load_tokenizer

    tokenizer = load_tokenizer(base)
    packed_params, packed_paths, summary = prepare(mode, True, base, where / f"{mode}-packed")
    _, padded_paths, _ = prepare(mode, False, base, where / f"{mode}-padded")
    stats = summary["train"]
    same_examples = round(BATCH * stats["examples_per_block"])  # examples in a packed batch
    dataset = trl_dataset(packed_params, packed_paths, tokenizer)
    runs = {
        "packed": lambda m: ours(m, tokenizer, packed_paths, steps),
        "padded": lambda m: ours(m, tokenizer, padded_paths, steps),
        "padded_same_examples": lambda m: ours(m, tokenizer, padded_paths, steps, same_examples),
        "trl_bfd": lambda m: trl(m, tokenizer, dataset, "bfd", steps, BLOCK[mode]),
        "trl_wrapped": lambda m: trl(m, tokenizer, dataset, "wrapped", steps, BLOCK[mode]),
    }
    results = dict(results or {})
    results |= {"block_size": BLOCK[mode], "same_examples_batch": same_examples,
                "train_examples": stats["examples"], "truncated": stats["truncated"],
                "dropped": stats["dropped"],
                "packing_efficiency": stats["packing_efficiency"],
                "examples_per_block": stats["examples_per_block"]}
    for name, run in runs.items():
        if contenders and name not in contenders:
            continue
        model, seconds, tokens = run(fresh_model(base, quick))
        results[name] = {"tokens_s": round(tokens / seconds, 1), "seconds": round(seconds, 3),
                         "real_tokens": tokens,
                         "perplexity": answer_perplexity(model, tokenizer, packed_paths)}
        print(f"sft bench: {mode} {name}: {results[name]}", flush=True)
    if "base_perplexity" not in results:
        results["base_perplexity"] = answer_perplexity(fresh_model(base, quick), tokenizer,
                                                       packed_paths)
    return results | ratios(results)


def ratios(r: dict[str, Any]) -> dict[str, Any]:
    """Packed against the contenders that ran: padded, padded with as many examples per step,
    and the faster of TRL's two packings."""
    if "packed" not in r:
        return {}
    packed = r["packed"]["tokens_s"]
    out: dict[str, Any] = {}
    if "padded" in r:
        out["packed_vs_padded"] = round(packed / r["padded"]["tokens_s"], 2)
    if "padded_same_examples" in r:
        out["packed_vs_padded_same_examples"] = round(packed / r["padded_same_examples"]["tokens_s"], 2)
    rivals = [k for k in ("trl_bfd", "trl_wrapped") if k in r]
    if rivals:
        faster = max(rivals, key=lambda k: r[k]["tokens_s"])
        out["faster_trl"] = faster
        out["packed_vs_trl"] = round(packed / r[faster]["tokens_s"], 3)
    return out


def met(r: dict[str, Any], key: str) -> bool:
    """A target met: the ratio, and against TRL also an equal or better perplexity."""
    if key == "packed_vs_trl":
        rival = r[r.get("faster_trl") or max(("trl_bfd", "trl_wrapped"),
                                            key=lambda k: r[k]["tokens_s"])]
        ratio = r["packed"]["tokens_s"] / rival["tokens_s"]
        return ratio >= TARGETS[key] and r["packed"]["perplexity"] <= rival["perplexity"]
    return r[key] >= TARGETS[key]


def ratio_cell(r: dict[str, Any], key: str) -> str:
    """A ratio of the table, marked where it misses its target; empty where it was not run."""
    if key not in r:
        return ""
    return f"{r[key]}×" + ("" if key not in TARGETS or met(r, key) else " **not met**")


def table(results: dict[str, Any], steps: int, model: str) -> str:
    lines = [SECTION[0], "## Short examples: packed vs padded vs TRL", "",
             f"{model}, {steps} steps of batch {BATCH}, lr {LR:g}, CPU fp32, blocks (and TRL's "
             f"max_length) of {BLOCK['pairs']} tokens for pairs and {BLOCK['chat']} for chat; the "
             "same train split and test tokens for all; real (non-padding) tokens/s; answer "
             "perplexity on the test split.", "",
             "| data | contender | real tokens/s | train time | answer perplexity |",
             "|---|---|---|---|---|"]
    names = {"packed": "this pipeline, packed", "padded": "this pipeline, padded",
             "padded_same_examples": "this pipeline, padded, batch of as many examples",
             "trl_bfd": "TRL SFTTrainer, packing bfd (padding-free)",
             "trl_wrapped": "TRL SFTTrainer, packing wrapped"}
    for mode, r in results.items():
        lines.append(f"| {mode} | base model | | | {r['base_perplexity']} |")
        for key, label in names.items():
            if key not in r:
                continue
            if key == "padded_same_examples":
                label = (f"this pipeline, padded, batch {r['same_examples_batch']} (the examples "
                         "of a packed batch)")
            lines.append(f"| {mode} | {label} | {r[key]['tokens_s']} | {r[key]['seconds']} s "
                         f"| {r[key]['perplexity']} |")
    lines += ["", "| data | packed ÷ padded (target ≥ 1.3×) | packed ÷ padded, same examples "
              "per step | packed ÷ faster TRL (target ≥ 1.2× at equal or better perplexity) | "
              "packing efficiency | examples per block |", "|---|---|---|---|---|---|"]
    for mode, r in results.items():
        cells = [ratio_cell(r, k) for k in ("packed_vs_padded", "packed_vs_padded_same_examples",
                                             "packed_vs_trl")]
        lines.append(f"| {mode} | {' | '.join(cells)} | {r['packing_efficiency']} | "
                     f"{r['examples_per_block']} |")
    return "\n".join(lines + [SECTION[1]]) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.sft", description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--quick", action="store_true", help="a tiny model: a smoke test")
    parser.add_argument("--modes", nargs="+", default=list(DATA), choices=list(DATA))
    parser.add_argument("--table", action="store_true",
                        help="only write the table again from the figures (--out)")
    parser.add_argument("--contenders", nargs="+", default=None, choices=CONTENDERS,
                        help="run only these and merge them into the existing results")
    parser.add_argument("--base", type=Path, default=None,
                        help="the base model folder (default: models/base, else one built by the "
                        "base_model stage); --quick uses only its tokenizer")
    parser.add_argument("--out", type=Path, default=None,
                        help="the figures (default bench/sft.json, --quick bench/sft-quick.json); "
                        "the table goes to results.md beside it")
    args = parser.parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    out = args.out or ROOT / "bench" / ("sft-quick.json" if args.quick else "sft.json")
    md = out.with_name("results.md")
    if args.table:
        saved = json.loads(out.read_text())
        write_section(md, table(saved["results"], saved["steps"], saved["model"]), SECTION)
        return
    earlier = json.loads(out.read_text())["results"] if args.contenders and out.exists() else {}
    with tempfile.TemporaryDirectory() as where:
        base = base_model_dir(Path(where), args.base)
        results = {**earlier, **{mode: bench_mode(mode, base, args.steps, args.quick,
                                                  Path(where) / mode, args.contenders,
                                                  earlier.get(mode))
                                 for mode in args.modes}}
    model = "tiny model (2 layers, width 64)" if args.quick else "SmolLM2-135M-Instruct"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"model": model, "steps": args.steps, "results": results}, indent=2) + "\n")
    if not args.quick:
        write_section(md, table(results, args.steps, model), SECTION)
    print(table(results, args.steps, model))


if __name__ == "__main__":
    main()
