"""Training and evaluation throughput against the usual recipes, and the results table."""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import pyarrow as pa

from bench.common import ROOT, TINY, load_from

BLOCK, BATCH = 256, 4


def sample_text() -> list[str]:
    return [f.read_text(encoding="utf-8") for f in sorted((ROOT / "data" / "raw").iterdir())]


def packed_dataset(tokenizer: Any, texts: list[str]) -> Any:
    """This pipeline's way (the tokenize stage's own function): documents joined with EOS, cut
    into full blocks, no padding."""
    from finetune.text.tokenized import packed_dataset as pack_texts

    paragraphs = [p for t in texts for p in t.split("\n\n")]
    return pack_texts(pa.chunked_array([paragraphs]), tokenizer, BLOCK)[0]


def tutorial_dataset(tokenizer: Any, texts: list[str]) -> Any:
    """The usual tutorial: one example per line, tokenized per example with truncation and
    padding, batches padded by DataCollatorForLanguageModeling."""
    import datasets

    lines = datasets.Dataset.from_dict({"text": [ln for t in texts for ln in t.splitlines()
                                                 if ln.strip()]})
    return lines.map(lambda x: tokenizer(x["text"], truncation=True, max_length=BLOCK,
                                         padding=True), remove_columns=["text"])


def train_tokens_per_second(model: Any, tokenizer: Any, dataset: Any, collator: Any,
                            real_tokens: int) -> float:
    """Real (non-padding) tokens per second of the Trainer until it has seen real_tokens."""
    from transformers import Trainer, TrainerCallback, TrainingArguments

    class StopAfter(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            control.should_training_stop = state.num_input_tokens_seen >= real_tokens

    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(output_dir=out, per_device_train_batch_size=BATCH, max_steps=10_000,
                                 learning_rate=1e-5, save_strategy="no", report_to="none",
                                 include_num_input_tokens_seen="non_padding", use_cpu=True,
                                 disable_tqdm=True, logging_strategy="no", seed=0)
        trainer = Trainer(model=model, args=args, train_dataset=dataset, data_collator=collator,
                          callbacks=[StopAfter()])
        started = time.perf_counter()
        trainer.train()
        return trainer.state.num_input_tokens_seen / (time.perf_counter() - started)


def train_throughput(base: Path, quick: bool, repeats: int, real_tokens: int | None = None
                     ) -> dict[str, Any]:
    """Real tokens per second of the Trainer on this pipeline's packed blocks and on the usual
    tutorial's padded lines, until each has seen `real_tokens` (default: 16 batches of full
    blocks with --quick, else 6)."""
    from transformers import DataCollatorForLanguageModeling

    from finetune.models.collators import collator

    model, tokenizer = load_from(base, quick)
    texts = sample_text()
    real_tokens = real_tokens or (16 if quick else 6) * BATCH * BLOCK
    packed = packed_dataset(tokenizer, texts)
    tutorial = tutorial_dataset(tokenizer, texts)
    ours = statistics.median(train_tokens_per_second(model, tokenizer, packed, collator(tokenizer),
                                                     real_tokens) for _ in range(repeats))
    lm_collator = DataCollatorForLanguageModeling(tokenizer, mlm=False)
    theirs = statistics.median(train_tokens_per_second(model, tokenizer, tutorial, lm_collator,
                                                       real_tokens) for _ in range(repeats))
    return {"model": TINY if quick else "SmolLM2-135M-Instruct",
            "real_tokens": real_tokens, "packed_tokens_s": round(ours, 1),
            "tutorial_tokens_s": round(theirs, 1), "train_vs_tutorial": round(ours / theirs, 2)}


def per_example_loss(model: Any, dataset: Any) -> int:
    """The naive loop: one example at a time, autograd left on."""
    import torch

    tokens = 0
    for example in dataset:
        ids = torch.tensor([example["input_ids"]])
        model(input_ids=ids, labels=ids).loss.item()
        tokens += ids.numel() - 1
    return tokens


def eval_throughput(base: Path, quick: bool, repeats: int, examples: int | None = None
                    ) -> dict[str, Any]:
    """Tokens per second of the evaluate stage's batched loss against a per-example loop, over
    `examples` packed blocks (default: 64 with --quick, else 24)."""
    from finetune.scoring.loss import mean_token_loss

    model, tokenizer = load_from(base, quick)
    test = packed_dataset(tokenizer, sample_text())
    test = test.select(range(min(len(test), examples or (64 if quick else 24))))

    def batched() -> float:
        started = time.perf_counter()
        tokens = mean_token_loss(model, test, tokenizer, 8, "cpu", "bench").tokens
        return tokens / (time.perf_counter() - started)

    def loop() -> float:
        model.train(False)
        started = time.perf_counter()
        tokens = per_example_loss(model, test)
        return tokens / (time.perf_counter() - started)

    ours = statistics.median(batched() for _ in range(repeats))
    theirs = statistics.median(loop() for _ in range(repeats))
    return {"examples": len(test), "batched_tokens_s": round(ours, 1),
            "loop_tokens_s": round(theirs, 1), "eval_vs_loop": round(ours / theirs, 2)}


def markdown(r: dict[str, Any]) -> str:
    m, d, t, e = r["machine"], r["data_path"], r["train"], r["eval"]
    targets = r["targets"]

    def met(value: float, key: str, lower_is_better: bool = False) -> str:
        ok = value <= targets[key] if lower_is_better else value >= targets[key]
        return "yes" if ok else "**no**"

    rows = [
        ("Cached `dvc repro` (nothing to run)", f"{r['cached_rerun_s']} s", "", "",
         f"≤ {targets['cached_rerun_s']} s", met(r["cached_rerun_s"], "cached_rerun_s", True)),
        (f"tokenize stage, {d['megabytes']} MB", f"{d['tokenize_mb_s']} MB/s",
         f"raw `encode_batch` {d['raw_mb_s']} MB/s, {d['raw_tokens_s']:,} tok/s",
         f"{d['tokenize_vs_raw']}×", f"≥ {targets['tokenize_vs_raw']}×",
         met(d["tokenize_vs_raw"], "tokenize_vs_raw")),
        (f"data path (ingest → tokenize), {d['megabytes']} MB",
         f"{d['data_path_mb_s']} MB/s, {d['data_path_tokens_s']:,} tok/s",
         f"raw `encode_batch` {d['raw_mb_s']} MB/s", f"{d['data_path_vs_raw']}×",
         f"≥ {targets['data_path_vs_raw']}×", met(d["data_path_vs_raw"], "data_path_vs_raw")),
        ("peak memory of a data stage", f"{d['peak_memory_gb']} GB", "", "",
         f"≤ {targets['peak_memory_gb']} GB", met(d["peak_memory_gb"], "peak_memory_gb", True)),
        (f"training, {t['model']}, real tokens/s", f"{t['packed_tokens_s']} (packed)",
         f"{t['tutorial_tokens_s']} (per-line padding + LM collator)", f"{t['train_vs_tutorial']}×",
         f"≥ {targets['train_vs_tutorial']}×", met(t["train_vs_tutorial"], "train_vs_tutorial")),
        ("evaluation, tokens/s", f"{e['batched_tokens_s']} (batched, no grad)",
         f"{e['loop_tokens_s']} (per-example loop)", f"{e['eval_vs_loop']}×",
         f"≥ {targets['eval_vs_loop']}×", met(e["eval_vs_loop"], "eval_vs_loop")),
    ]
    scale = " (--smoke)" if r.get("smoke") else " (--quick)" if r["quick"] else ""
    scaling = ", ".join(f"{v['megabytes']} MB: {v['seconds']} s ({v['seconds_per_mb']} s/MB)"
                        for v in r["scaling"].values())
    lines = [f"Machine: {m['cores']} cores, {m['cpu']}, GPU: {m['gpu'] or 'none'}; torch "
             f"{m['torch']}; median of {r['repeats']} run(s){scale}.",
             "", "| figure | this pipeline | alternative | ratio | target | met |",
             "|---|---|---|---|---|---|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    lines += ["", f"Scaling of the data path: {scaling}.", ""]
    return "\n".join(lines)
