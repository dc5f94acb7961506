"""Scoring a model on the test split and the reference text: token losses (per row too),
generations for the test prompts and the sample prompts, greedy and sampled."""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from finetune.config.evaluate import EvaluateParams
from finetune.data import conversations
from finetune.files import read_parquet
from finetune.models.loading import load_model, load_tokenizer
from finetune.paths import Paths
from finetune.scoring import scores
from finetune.scoring.loss import mean_token_loss
from finetune.scoring.reference import reference_blocks
from finetune.scoring.scores import (
    RowLosses,
    answer_scores,
    perplexity,
    relative_improvement,
    repetition,
)
from finetune.seeding import set_seed
from finetune.text.prompts import (
    Inference,
    Renderer,
    RenderError,
    render_prompts,
    reply_prompt,
    stop_token_ids,
)


def generate(model: Any, tokenizer: Any, prompts: list[str], p: EvaluateParams, device: str,
             label: str, stop: list[int] | None = None, sampling: dict[str, Any] | None = None
             ) -> list[str]:
    """Continuations of each prompt, batched, left-padded: greedy (with
    evaluate.repetition_penalty), or with `sampling`, the settings `generate` and the exported
    model use by default (Inference.sampling; the caller seeds it)."""
    import torch

    tokenizer.padding_side = "left"
    outputs: list[str] = []
    for start in tqdm(range(0, len(prompts), p.batch_size), desc=f"generate ({label})",
                      unit="batch"):
        batch = tokenizer(prompts[start: start + p.batch_size], return_tensors="pt",
                          padding=True, add_special_tokens=False).to(device)
        with torch.inference_mode():
            decoding = (sampling if sampling else
                        {"do_sample": False, "temperature": None, "top_p": None,
                         "repetition_penalty": p.repetition_penalty})
            ids = model.generate(**batch, **decoding, max_new_tokens=p.max_new_tokens,
                                 pad_token_id=tokenizer.pad_token_id,
                                 **({"eos_token_id": stop} if stop else {}))
        new = ids[:, batch["input_ids"].shape[1]:]
        outputs += [t.strip() for t in tokenizer.batch_decode(new, skip_special_tokens=True)]
    return outputs


class Asked:
    """What a model is asked to generate: the sample prompts, and the test prompts with the
    answers they are scored against (pairs: the test pairs; chat: the test conversations up to
    their last assistant turn), rendered as in training; and the tokens that end a reply."""

    def __init__(self, asking: Inference, samples: list[str], tokenizer: Any, tests: Any) -> None:
        mode, p = asking.mode, asking.params
        self.samples, self.prompts, self.references = asking.samples(samples, tokenizer), [], []
        self.rows: list[int] = []  # the position in `tests` of each prompt
        self.stop: list[int] | None = None
        has_tests = tests is not None and len(tests) > 0
        if mode == "pairs" and has_tests:
            self.prompts = render_prompts(tests["prompt"].tolist(), tokenizer, p)
            self.references = tests["response"].tolist()
            self.rows = list(range(len(tests)))
        elif mode == "chat":
            renderer = Renderer(tokenizer, p)
            self.stop = stop_token_ids(renderer)
            for i, conv in enumerate(tests["conversation"] if has_tests else []):
                self._add_reply(conversations.loads(conv), renderer, p.block_size, i)

    def _add_reply(self, conv: dict[str, Any], renderer: Renderer, block_size: int,
                   row: int) -> None:
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
        self.rows.append(row)


@dataclass
class ModelScores:
    """One model's figures on the test split and the reference text, and what it generated; the
    base model's are computed once (the evaluate_base stage) and read back as JSON."""

    scores: dict[str, Any]            # loss, perplexity, tokens, BLEU/ROUGE-L, repetition
    samples: dict[str, list[str]]     # greedy and sampled continuations of evaluate.prompts
    by_row: RowLosses                 # the test loss of each test row
    rows: list[int]                   # the test rows whose prompts (pairs and chat) it answered
    references: list[str]             # the answers those prompts are scored against
    answers: list[str]                # its answers to them
    reference: dict[str, Any] | None  # loss and perplexity on the reference text
    reference_tokens: int = 0         # how many tokens the reference text is, and a digest of
    reference_digest: str = ""        # them: both models must be scored on the same ones

    def to_json(self) -> dict[str, Any]:
        """As JSON, exactly: the per-row sums are floats that JSON writes without loss."""
        data = dataclasses.asdict(self)
        data["by_row"] = {"loss": self.by_row.loss.tolist(), "tokens": self.by_row.tokens.tolist()}
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ModelScores:
        rows = data["by_row"]
        by_row = RowLosses(np.array(rows["loss"], dtype=np.float64),
                           np.array(rows["tokens"], dtype=np.int64))
        return cls(**{**{f.name: data[f.name] for f in dataclasses.fields(cls)}, "by_row": by_row})


def score_model(path: Path, label: str, seed: int, p: EvaluateParams, asking: Inference, device: str,
                test: Any, n_rows: int, tests: Any, reference: list[str]) -> ModelScores:
    """Loss/perplexity (and answer scores) of the model in `path` on the test split, per test row
    too, and on the reference text; its sample generations (greedy and sampled) and how
    repetitive they are."""
    set_seed(seed)
    model, tokenizer = load_model(path, device), load_tokenizer(path)
    loss, tokens, by_row = mean_token_loss(model, test, tokenizer, p.batch_size, device, label, n_rows)
    assert by_row is not None, "data/tokenized/test has each token's row (tokenize)"
    figures: dict[str, Any] = {"loss": round(loss, 6), "perplexity": perplexity(loss),
                              "tokens": tokens}
    general, n_ids, digest = None, 0, ""
    if reference:
        blocks, ids = reference_blocks(reference, tokenizer, asking.params.block_size)
        ref = mean_token_loss(model, blocks, tokenizer, p.batch_size, device, f"{label}, reference")
        general = {"loss": round(ref.mean, 6), "perplexity": perplexity(ref.mean)}
        n_ids, digest = len(ids), hashlib.sha256(np.asarray(ids, dtype=np.int64).tobytes()).hexdigest()
    asked = Asked(asking, p.prompts, tokenizer, tests)
    answers: list[str] = []
    if asked.prompts:
        answers = generate(model, tokenizer, asked.prompts, p, device, f"{label} answers", asked.stop)
        figures |= answer_scores(answers, asked.references)
    samples: dict[str, list[str]] = {"greedy": [], "sampled": []}
    if asked.samples:
        samples["greedy"] = generate(model, tokenizer, asked.samples, p, device, label, asked.stop)
        set_seed(seed)  # the same sampled text on every run
        samples["sampled"] = generate(model, tokenizer, asked.samples, p, device, f"{label} sampled",
                                      asked.stop, sampling=asking.sampling)
        figures |= {"repetition": repetition(samples["greedy"]),
                   "repetition_sampled": repetition(samples["sampled"])}
    return ModelScores(figures, samples, by_row, asked.rows, asked.references, answers, general,
                       n_ids, digest)


def test_inputs(paths: Paths, asking: Inference, p: EvaluateParams) -> tuple[Any, Any, Any]:
    """The tokenized test split, its rows, and the rows whose prompts the models answer (pairs
    and chat: the first evaluate.max_generation_examples, for BLEU and ROUGE-L)."""
    import datasets

    test = datasets.load_from_disk(str(paths.tokenized / "test"))
    rows = read_parquet(paths.split_file("test"))
    tests = None
    if asking.mode != "text" and p.max_generation_examples:
        tests = rows.head(p.max_generation_examples)
    return test, rows, tests


def reference_summary(base: ModelScores, tuned: ModelScores, texts: list[str]) -> dict[str, Any]:
    """Both models on the reference text, and the relative change of perplexity (above 0: the
    fine-tuned model finds general English harder than the base model did)."""
    assert base.reference_digest == tuned.reference_digest, "the same reference tokens"
    assert base.reference is not None and tuned.reference is not None
    improvement = relative_improvement(base.reference["perplexity"], tuned.reference["perplexity"])
    return {"texts": len(texts), "words": sum(len(t.split()) for t in texts),
            "tokens": base.reference_tokens, "base": base.reference, "finetuned": tuned.reference,
            "change": None if improvement is None else -improvement}


def group_answers(tests: Any, base: ModelScores, tuned: ModelScores
                  ) -> dict[str, dict[str, float]] | None:
    """BLEU and ROUGE-L per group of the test prompts the models answered."""
    if tests is None or not base.answers:
        return None
    assert base.rows == tuned.rows, "both models answer the same prompts"
    groups = [g or scores.NO_GROUP for g in tests["group"].iloc[base.rows]]
    return scores.answers_by_group(groups, base.references,
                                   {"base": base.answers, "finetuned": tuned.answers})


def samples_table(prompts: list[str], base: ModelScores, tuned: ModelScores) -> list[dict[str, str]]:
    """metrics/samples.json: each sample prompt with both models' greedy and sampled outputs."""
    return [{"prompt": q, "base": b, "finetuned": f, "base_sampled": bs, "finetuned_sampled": fs}
            for q, b, f, bs, fs in zip(prompts, base.samples["greedy"], tuned.samples["greedy"],
                                       base.samples["sampled"], tuned.samples["sampled"], strict=True)]


def summary(base: ModelScores, tuned: ModelScores, reference: list[str]) -> dict[str, Any]:
    """metrics/eval_details.json: both models' figures on the same test tokens, the relative
    improvement, and the reference text's."""
    assert np.array_equal(base.by_row.tokens, tuned.by_row.tokens), "the same tokens per row"
    base_figures, tuned_figures = dict(base.scores), dict(tuned.scores)
    tokens = base_figures.pop("tokens")
    assert tokens == tuned_figures.pop("tokens"), "both models must be scored on the same tokens"
    result = {"base": base_figures, "finetuned": tuned_figures,
              "perplexity_improvement": relative_improvement(base_figures["perplexity"],
                                                             tuned_figures["perplexity"]),
              "test_tokens": tokens}
    if reference:
        result["reference"] = reference_summary(base, tuned, reference)
    return result
