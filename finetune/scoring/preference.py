"""How well models follow the held-out preference pairs: each reply's log-likelihood after its
prompt (summed over the reply's tokens, the end-of-turn marker included), and from it, for each
model, the share of pairs where it likes the chosen reply better than the rejected one, both
outright and relative to the reference (the supervised model: DPO's implicit reward, beta times
the log-ratio to the reference, higher for the chosen reply), the mean reward margin, and the
perplexity of the chosen replies (a model that wins by making every reply unlikely shows here)."""

from __future__ import annotations

import json
import math
from typing import Any

from tqdm.auto import tqdm

from finetune.config.evaluate import EvaluateParams
from finetune.paths import Paths


def reply_logps(model: Any, pairs: list[dict[str, list[int]]], device: str, batch_size: int,
                label: str, pad_id: int) -> dict[str, list[float]]:
    """{"chosen": [...], "rejected": [...]}: each reply's summed log-probability after its prompt."""
    import torch

    sequences = [(p["prompt_ids"], p[key]) for key in ("chosen_ids", "rejected_ids") for p in pairs]
    out: list[float] = []
    for start in tqdm(range(0, len(sequences), batch_size), desc=f"score pairs ({label})", unit="batch"):
        batch = sequences[start: start + batch_size]
        width = max(len(a) + len(b) for a, b in batch)
        ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, (prompt, reply) in enumerate(batch):
            ids[row, : len(prompt) + len(reply)] = torch.tensor(prompt + reply)
            mask[row, : len(prompt) + len(reply)] = 1
        with torch.inference_mode():
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()
        logps = torch.log_softmax(logits[:, :-1], dim=-1).gather(2, ids[:, 1:].to(device)[..., None])[..., 0]
        for row, (prompt, reply) in enumerate(batch):
            out.append(float(logps[row, len(prompt) - 1: len(prompt) + len(reply) - 1].sum()))
    return {"chosen": out[: len(pairs)], "rejected": out[len(pairs):]}


def figures(scored: dict[str, list[float]], reference: dict[str, list[float]] | None, beta: float,
            chosen_tokens: int) -> dict[str, Any]:
    """One model's figures on the pairs; `reference` None for the reference itself."""
    chosen, rejected = scored["chosen"], scored["rejected"]
    n = len(chosen)
    result: dict[str, Any] = {
        "likelihood_accuracy": round(sum(c > r for c, r in zip(chosen, rejected, strict=True)) / n, 4),
        "chosen_perplexity": round(math.exp(-sum(chosen) / chosen_tokens), 4),
        "reward_accuracy": None, "reward_margin": None}
    if reference is not None:
        margins = [beta * ((c - rc) - (r - rr)) for c, r, rc, rr in
                   zip(chosen, rejected, reference["chosen"], reference["rejected"], strict=True)]
        result["reward_accuracy"] = round(sum(m > 0 for m in margins) / n, 4)
        result["reward_margin"] = round(sum(margins) / n, 4)
    return result


SAMPLED = 4  # test prompts each model answers, for the report
MODELS = ("base", "finetuned", "preferred")


def score(beta: float, block_size: int, evaluate: EvaluateParams, paths: Paths) -> dict[str, Any]:
    """The three models on data/preferences/test, on the same tokens, with the supervised model
    as the reference, and their greedy replies to the first SAMPLED prompts."""
    from finetune.models.loading import load_model, load_tokenizer, pick_device
    from finetune.scoring.evaluation import generate
    from finetune.text.prompts import read_inference
    from finetune.training.preference import encoded_pairs

    device = pick_device(evaluate.device, "evaluate.device")
    asked, tokenizer = read_inference(paths.finetuned), load_tokenizer(paths.finetuned)
    renderer = asked.renderer(tokenizer)
    test_file = paths.pairs_file("test")
    pairs, left_out = encoded_pairs(test_file, renderer, block_size)
    test = [json.loads(line) for line in test_file.read_text(encoding="utf-8").splitlines()][:SAMPLED]
    prompts = [renderer.prompt(p["prompt"], p.get("tools")) for p in test]
    folders = {"base": paths.base_model, "finetuned": paths.finetuned, "preferred": paths.preferred}
    scored, samples = {}, {}
    for name in MODELS:
        model = load_model(folders[name], device).eval()
        scored[name] = reply_logps(model, pairs, device, evaluate.batch_size, name,
                                   tokenizer.pad_token_id or 0)
        samples[name] = generate(model, tokenizer, prompts, evaluate, device, name, asked.stop_token_ids)
        del model
    chosen_tokens = sum(len(p["chosen_ids"]) for p in pairs)
    result: dict[str, Any] = {"scored": True, "pairs": len(pairs), "left_out": left_out,
                              "reference": "finetuned"}
    for name in MODELS:
        reference = None if name == "finetuned" else scored["finetuned"]
        result[name] = figures(scored[name], reference, beta, chosen_tokens)
    result["samples"] = [{"prompt": p["prompt"][-1]["content"], **{n: samples[n][i] for n in MODELS}}
                         for i, p in enumerate(test)]
    return result
