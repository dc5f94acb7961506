"""Score models/base and models/finetuned on exactly the same tokens of data/tokenized/test:
loss, perplexity and the relative improvement (in pairs and chat mode on the answer tokens only);
in pairs mode also BLEU and ROUGE-L of greedy answers to the test prompts, in chat mode of greedy
replies in place of each test conversation's last assistant turn, given the turns before it.
Sample generations for `evaluate.prompts` (in chat mode asked as user messages). Writes
metrics/eval.json (the headline figures), metrics/eval_details.json (all of them) and
metrics/samples.json. Params: `seed`, `mode`, `evaluate`, `tokenize` (prompt rendering),
`train.device`."""

from __future__ import annotations

import math
from typing import Any

from tqdm.auto import tqdm

from stages import conversations
from stages.io import read_parquet, stage_main, write_json
from stages.models import (
    SAMPLING,
    collator,
    load_model,
    load_tokenizer,
    model_inputs,
    pick_device,
)
from stages.params import PATHS, EvaluateParams, Params, Paths
from stages.prompts import Renderer, RenderError, render_prompts, reply_prompt, stop_token_ids


def perplexity(loss: float) -> float | None:
    """exp(loss), or None where it overflows (JSON has no infinity)."""
    try:
        return math.exp(loss)
    except OverflowError:
        return None


def mean_token_loss(model: Any, dataset: Any, tokenizer: Any, batch_size: int, device: str,
                    label: str) -> tuple[float, int]:
    """Cross-entropy averaged over every labelled token (not over batches), without gradients."""
    import torch
    import torch.nn.functional as F

    collate = collator(tokenizer, packed="position_ids" in dataset.column_names)
    total, count = 0.0, 0
    model.eval()
    with torch.inference_mode():
        for start in tqdm(range(0, len(dataset), batch_size), desc=f"perplexity ({label})",
                          unit="batch"):
            batch = collate([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])
            batch = {k: v.to(device) for k, v in batch.items()}
            inputs = model_inputs({k: v for k, v in batch.items() if k != "labels"})
            logits = model(**inputs).logits.float()
            # shift the labels, not the logits: slicing the (batch, seq, vocab) logits would copy them
            labels = F.pad(batch["labels"][:, 1:], (0, 1), value=-100)
            total += F.cross_entropy(logits.view(-1, logits.size(-1)), labels.reshape(-1),
                                     ignore_index=-100, reduction="sum").item()
            count += int((labels != -100).sum())
    return total / max(count, 1), count


def generate(model: Any, tokenizer: Any, prompts: list[str], p: EvaluateParams, device: str,
             label: str, stop: list[int] | None = None, sampled: bool = False) -> list[str]:
    """Continuations of each prompt, batched, left-padded: greedy (with
    evaluate.repetition_penalty), or `sampled` with the settings `generate` and the exported
    model use by default (stages.models.SAMPLING; the caller seeds it)."""
    import torch

    tokenizer.padding_side = "left"
    outputs: list[str] = []
    for start in tqdm(range(0, len(prompts), p.batch_size), desc=f"generate ({label})",
                      unit="batch"):
        batch = tokenizer(prompts[start: start + p.batch_size], return_tensors="pt",
                          padding=True, add_special_tokens=False).to(device)
        with torch.inference_mode():
            decoding = (SAMPLING if sampled else
                        {"do_sample": False, "temperature": None, "top_p": None,
                         "repetition_penalty": p.repetition_penalty})
            ids = model.generate(**batch, **decoding, max_new_tokens=p.max_new_tokens,
                                 pad_token_id=tokenizer.pad_token_id,
                                 **({"eos_token_id": stop} if stop else {}))
        new = ids[:, batch["input_ids"].shape[1]:]
        outputs += [t.strip() for t in tokenizer.batch_decode(new, skip_special_tokens=True)]
    return outputs


def repetition(texts: list[str], n: int = 3) -> float | None:
    """The share of word n-grams that repeat one seen earlier in the same text, over all texts:
    0 for varied text, near 1 for a model stuck in a loop (which perplexity does not show)."""
    repeated = total = 0
    for text in texts:
        words = text.split()
        grams = [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
        repeated += len(grams) - len(set(grams))
        total += len(grams)
    return round(repeated / total, 4) if total else None


def answer_scores(answers: list[str], references: list[str]) -> dict[str, float]:
    """Corpus BLEU (sacrebleu) and mean ROUGE-L F1 (rouge-score) of answers against references."""
    import sacrebleu
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    rouge = [scorer.score(ref, ans)["rougeL"].fmeasure
             for ans, ref in zip(answers, references, strict=True)]
    return {"bleu": round(sacrebleu.corpus_bleu(answers, [references]).score, 4),
            "rougeL": round(sum(rouge) / max(len(rouge), 1), 6)}


class Asked:
    """What a model is asked to generate: the sample prompts, and the test prompts with the
    answers they are scored against (pairs: the test pairs; chat: the test conversations up to
    their last assistant turn), rendered as in training; and the tokens that end a reply."""

    def __init__(self, params: Params, tokenizer: Any, tests: Any) -> None:
        mode, p = params.mode, params.tokenize
        self.samples, self.prompts, self.references = list(params.evaluate.prompts), [], []
        self.stop: list[int] | None = None
        has_tests = tests is not None and len(tests) > 0
        if mode == "pairs":
            self.samples = render_prompts(self.samples, tokenizer, p)
            if has_tests:
                self.prompts = render_prompts(tests["prompt"].tolist(), tokenizer, p)
                self.references = tests["response"].tolist()
        elif mode == "chat":
            renderer = Renderer(tokenizer, p)
            self.stop = stop_token_ids(renderer)
            self.samples = [renderer.prompt([{"role": "user", "content": q}]) for q in self.samples]
            for conv in (tests["conversation"] if has_tests else []):
                self._add_reply(conversations.loads(conv), renderer, p.block_size)

    def _add_reply(self, conv: dict[str, Any], renderer: Renderer, block_size: int) -> None:
        """A test conversation to reply to, unless tokenize could not have trained on it either:
        no history before its last assistant turn, a template that refuses it, or a history
        longer than a block."""
        try:
            prompt, reference = reply_prompt(conv, renderer)
        except RenderError:
            return
        if len(renderer.tokenizer(prompt, add_special_tokens=False)["input_ids"]) >= block_size:
            return
        self.prompts.append(prompt)
        self.references.append(reference)


def score_model(name: str, params: Params, paths: Paths, device: str, test: Any,
                tests: Any) -> tuple[dict[str, Any], dict[str, list[str]]]:
    """Loss/perplexity (and answer scores) of one model, plus its sample generations (greedy and
    sampled) and how repetitive they are."""
    from transformers import set_seed

    set_seed(params.seed)
    path = paths.base_model if name == "base" else paths.finetuned
    model, tokenizer = load_model(path, device), load_tokenizer(path)
    p = params.evaluate
    loss, tokens = mean_token_loss(model, test, tokenizer, p.batch_size, device, name)
    scores: dict[str, Any] = {"loss": round(loss, 6), "perplexity": perplexity(loss),
                              "tokens": tokens}
    asked = Asked(params, tokenizer, tests)
    if asked.prompts:
        answers = generate(model, tokenizer, asked.prompts, p, device, f"{name} answers", asked.stop)
        scores |= answer_scores(answers, asked.references)
    samples: dict[str, list[str]] = {"greedy": [], "sampled": []}
    if asked.samples:
        samples["greedy"] = generate(model, tokenizer, asked.samples, p, device, name, asked.stop)
        set_seed(params.seed)  # the same sampled text on every run
        samples["sampled"] = generate(model, tokenizer, asked.samples, p, device, f"{name} sampled",
                                      asked.stop, sampled=True)
        scores |= {"repetition": repetition(samples["greedy"]),
                   "repetition_sampled": repetition(samples["sampled"])}
    return scores, samples


def relative_improvement(base: float | None, finetuned: float | None) -> float | None:
    if base is None or finetuned is None or base == 0:
        return None
    return round((base - finetuned) / base, 6)


def run(params: Params, paths: Paths = PATHS) -> dict[str, Any]:
    import datasets

    device = pick_device(params.train.device)
    test = datasets.load_from_disk(str(paths.tokenized / "test"))
    tests = None  # the test pairs or conversations the models answer (BLEU, ROUGE-L)
    if params.mode != "text" and params.evaluate.max_generation_examples:
        tests = read_parquet(paths.split_file("test")).head(params.evaluate.max_generation_examples)
    base, base_samples = score_model("base", params, paths, device, test, tests)
    tuned, tuned_samples = score_model("finetuned", params, paths, device, test, tests)
    write_json([{"prompt": q, "base": b, "finetuned": f, "base_sampled": bs, "finetuned_sampled": fs}
                for q, b, f, bs, fs in zip(params.evaluate.prompts, base_samples["greedy"],
                                           tuned_samples["greedy"], base_samples["sampled"],
                                           tuned_samples["sampled"], strict=True)],
               paths.metrics / "samples.json")
    tokens = base.pop("tokens")
    assert tokens == tuned.pop("tokens"), "both models must be scored on the same tokens"
    return {"base": base, "finetuned": tuned,
            "perplexity_improvement": relative_improvement(base["perplexity"],
                                                           tuned["perplexity"]),
            "test_tokens": tokens}


def main(argv: list[str] | None = None) -> None:
    stage_main("evaluate", run, argv, metrics_name="eval")


if __name__ == "__main__":
    main()
