"""Running an exported GGUF file in llama.cpp itself (llama-cpp-python, the optional `llamacpp`
group): greedy tokens and the perplexity of the test split as llama.cpp computes the logits.
Without the group, `available()` is False and nothing here is called."""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np


def available() -> bool:
    return importlib.util.find_spec("llama_cpp") is not None


def load(path: Path, n_ctx: int, threads: int = 2) -> Any:
    """The file in llama.cpp, logits kept for every position, on CPU, quiet."""
    from llama_cpp import Llama

    return Llama(model_path=str(path), n_ctx=n_ctx, n_batch=n_ctx, logits_all=True, n_threads=threads,
                 n_gpu_layers=0, seed=0, verbose=False)


def logits(llm: Any, ids: list[int]) -> np.ndarray:
    """(len(ids), vocab) logits of one sequence, evaluated from an empty cache."""
    llm.reset()
    llm.eval(ids)
    return np.asarray(llm.scores[:len(ids)], dtype=np.float64)


def greedy(llm: Any, ids: list[int], n: int) -> list[int]:
    """n argmax tokens after ids (no stop token, no penalty), as check.greedy does in transformers."""
    out = list(ids)
    for _ in range(n):
        out.append(int(logits(llm, out)[-1].argmax()))
    return out[len(ids):]


def segments(example: dict[str, Any]) -> Iterator[tuple[list[int], list[int]]]:
    """(input ids, labels) of each sequence in a tokenized example: a packed row is split where its
    position_ids restart at 0; padding (label -100 past the end) is scored as nothing."""
    ids, labels = list(example["input_ids"]), list(example["labels"])
    positions = example.get("position_ids")
    starts = [i for i, p in enumerate(positions) if p == 0] if positions is not None else [0]
    for a, b in zip(starts, [*starts[1:], len(ids)], strict=True):
        yield ids[a:b], labels[a:b]


def perplexity(path: Path, dataset: Any) -> dict[str, Any]:
    """Mean cross-entropy of the labelled tokens of `dataset` (data/tokenized/test) under the
    GGUF file run in llama.cpp, each sequence from an empty cache, and its perplexity."""
    from tqdm import tqdm

    longest = max((len(row) for row in dataset["input_ids"]), default=1)
    llm = load(path, max(longest, 8))
    total, count = 0.0, 0
    try:
        for i in tqdm(range(len(dataset)), desc=f"llama.cpp perplexity ({path.name})", unit="row"):
            for ids, labels in segments(dataset[i]):
                target = np.asarray(labels[1:])
                scored = target != -100
                if not scored.any():
                    continue
                z = logits(llm, ids)[:-1][scored]
                top = z.max(axis=1, keepdims=True)
                logp = z - top - np.log(np.exp(z - top).sum(axis=1, keepdims=True))
                total -= float(logp[np.arange(len(z)), target[scored]].sum())
                count += int(scored.sum())
    finally:
        llm.close()
    loss = total / max(count, 1)
    return {"loss": round(loss, 6), "perplexity": round(math.exp(loss), 4), "tokens": count}
