"""Score models/base and models/finetuned on exactly the same tokens of data/tokenized/test:
loss, perplexity and the relative improvement (in pairs and chat mode on the answer tokens only);
in pairs mode also BLEU and ROUGE-L of greedy answers to the test prompts, in chat mode of greedy
replies in place of each test conversation's last assistant turn, given the turns before it.
Both models are also scored on the same tokens of a general-English reference text that is not
the user's (`evaluate.reference_paths`), which shows what fine-tuning cost. The error analysis
(finetune.scoring.scores) breaks the test scores down by source, group and passage. Sample generations for
`evaluate.prompts` (in chat mode asked as user messages), greedy and sampled. Writes
metrics/eval.json (the headline figures), metrics/eval_details.json (all of them),
metrics/eval_analysis.json and metrics/samples.json. Params: `seed`, `mode`, `evaluate`,
`tokenize` (prompt rendering, block size), `train.device`."""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pyarrow as pa
from tqdm.auto import tqdm

from finetune.config.evaluate import EvaluateParams
from finetune.config.schema import Params
from finetune.data import conversations
from finetune.errors import UserError
from finetune.files import read_parquet, write_json
from finetune.models.collators import collator, model_inputs
from finetune.models.loading import SAMPLING, load_model, load_tokenizer, pick_device
from finetune.paths import PATHS, Paths
from finetune.scoring import scores
from finetune.scoring.scores import (
    RowLosses,
    answer_scores,
    perplexity,
    relative_improvement,
    repetition,
)
from finetune.stage import stage_main
from finetune.text.packing import pack, token_stream
from finetune.text.prompts import Renderer, RenderError, render_prompts, reply_prompt, stop_token_ids

REFERENCE_SUFFIXES = (".txt", ".md")


class Loss(NamedTuple):
    mean: float            # over every labelled token
    tokens: int
    by_row: RowLosses | None  # per test row, for a dataset with a `row` column


def _row_ids(examples: list[dict[str, Any]], width: int) -> Any:
    """Each token's row, as a (batch, width) tensor: packed and fixed-size rows carry one per
    token; an unpacked example (padded to `width` at either end) is one row throughout."""
    import torch

    rows = [example.pop("row") for example in examples]
    if all(len(r) == width for r in rows):
        return torch.tensor(rows)
    return torch.tensor([[r[0]] * width for r in rows])


def mean_token_loss(model: Any, dataset: Any, tokenizer: Any, batch_size: int, device: str,
                    label: str, n_rows: int = 0) -> Loss:
    """Cross-entropy averaged over every labelled token (not over batches), without gradients;
    for a dataset with a `row` column, also summed per row of the split, given its n_rows."""
    import torch
    import torch.nn.functional as F

    collate = collator(tokenizer, packed="position_ids" in dataset.column_names)
    has_rows = "row" in dataset.column_names
    row_loss, row_tokens = np.zeros(n_rows), np.zeros(n_rows, dtype=np.int64)
    total, count = 0.0, 0
    model.eval()
    with torch.inference_mode():
        for start in tqdm(range(0, len(dataset), batch_size), desc=f"perplexity ({label})",
                          unit="batch"):
            examples = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
            width = max(len(e["input_ids"]) for e in examples)
            rows = _row_ids(examples, width) if has_rows else None
            batch = collate(examples)
            batch = {k: v.to(device) for k, v in batch.items()}
            inputs = model_inputs({k: v for k, v in batch.items() if k != "labels"})
            logits = model(**inputs).logits.float()
            # shift the labels, not the logits: slicing the (batch, seq, vocab) logits would copy them
            labels = F.pad(batch["labels"][:, 1:], (0, 1), value=-100)
            flat = logits.view(-1, logits.size(-1))
            total += F.cross_entropy(flat, labels.reshape(-1), ignore_index=-100,
                                     reduction="sum").item()
            count += int((labels != -100).sum())
            if rows is not None and n_rows:  # a predicted token's loss goes to that token's row
                # (unreduced apart from the sum above, which stays the headline's exact figure)
                token = F.cross_entropy(flat, labels.reshape(-1), ignore_index=-100,
                                        reduction="none").cpu().numpy()
                where = F.pad(rows[:, 1:], (0, 1), value=-1).reshape(-1).numpy()
                scored = (labels.reshape(-1) != -100).cpu().numpy() & (where >= 0)
                np.add.at(row_loss, where[scored], token[scored])
                np.add.at(row_tokens, where[scored], 1)
    by_row = RowLosses(row_loss, row_tokens) if has_rows and n_rows else None
    return Loss(total / max(count, 1), count, by_row)


def generate(model: Any, tokenizer: Any, prompts: list[str], p: EvaluateParams, device: str,
             label: str, stop: list[int] | None = None, sampled: bool = False) -> list[str]:
    """Continuations of each prompt, batched, left-padded: greedy (with
    evaluate.repetition_penalty), or `sampled` with the settings `generate` and the exported
    model use by default (finetune.models.loading.SAMPLING; the caller seeds it)."""
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


class Asked:
    """What a model is asked to generate: the sample prompts, and the test prompts with the
    answers they are scored against (pairs: the test pairs; chat: the test conversations up to
    their last assistant turn), rendered as in training; and the tokens that end a reply."""

    def __init__(self, params: Params, tokenizer: Any, tests: Any) -> None:
        mode, p = params.mode, params.tokenize
        self.samples, self.prompts, self.references = list(params.evaluate.prompts), [], []
        self.rows: list[int] = []  # the position in `tests` of each prompt
        self.stop: list[int] | None = None
        has_tests = tests is not None and len(tests) > 0
        if mode == "pairs":
            self.samples = render_prompts(self.samples, tokenizer, p)
            if has_tests:
                self.prompts = render_prompts(tests["prompt"].tolist(), tokenizer, p)
                self.references = tests["response"].tolist()
                self.rows = list(range(len(tests)))
        elif mode == "chat":
            renderer = Renderer(tokenizer, p)
            self.stop = stop_token_ids(renderer)
            self.samples = [renderer.prompt([{"role": "user", "content": q}]) for q in self.samples]
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


def reference_texts(entries: list[str]) -> list[str]:
    """The .txt and .md files `evaluate.reference_paths` names (files, or folders read
    recursively), in path order."""
    files: list[Path] = []
    for entry in entries:
        path = Path(entry)
        if path.is_dir():
            files += sorted(f for f in path.rglob("*")
                            if f.is_file() and f.suffix.lower() in REFERENCE_SUFFIXES)
        elif path.is_file():
            files.append(path)
        else:
            raise UserError(f"evaluate.reference_paths: {entry}: no such file or folder")
    if entries and not files:
        raise UserError(f"evaluate.reference_paths: no .txt or .md file in {', '.join(entries)} "
                        "(or [] to leave the check out)")
    texts = []
    for file in files:
        try:
            texts.append(file.read_text(encoding="utf-8").strip())
        except (UnicodeDecodeError, OSError) as err:
            raise UserError(f"evaluate.reference_paths: {file}: cannot be read as UTF-8 text "
                            f"({err})") from None
    return texts


def reference_blocks(texts: list[str], tokenizer: Any, block_size: int) -> tuple[Any, np.ndarray]:
    """The reference texts as text mode tokenizes a corpus (joined with EOS, in blocks of
    block_size), the last short block included so that every token counts; and the token ids."""
    import datasets

    ids = token_stream(pa.chunked_array([texts], pa.string()), tokenizer)
    blocks, remainder = pack(ids, block_size)
    rows = blocks.tolist() + ([ids[len(ids) - remainder:].tolist()] if remainder > 1 else [])
    return datasets.Dataset.from_dict({"input_ids": rows, "labels": rows}), ids


class ModelScores(NamedTuple):
    scores: dict[str, Any]           # loss, perplexity, tokens, BLEU/ROUGE-L, repetition
    samples: dict[str, list[str]]    # greedy and sampled continuations of evaluate.prompts
    by_row: RowLosses                # the test loss of each test row
    asked: Asked                     # the test prompts (pairs and chat) and their references
    answers: list[str]               # to those prompts
    reference: dict[str, Any] | None  # loss and perplexity on the reference text
    reference_ids: np.ndarray | None


def score_model(name: str, params: Params, paths: Paths, device: str, test: Any, n_rows: int,
                tests: Any, reference: list[str]) -> ModelScores:
    """Loss/perplexity (and answer scores) of one model on the test split, per test row too, and
    on the reference text; its sample generations (greedy and sampled) and how repetitive
    they are."""
    from transformers import set_seed

    set_seed(params.seed)
    path = paths.base_model if name == "base" else paths.finetuned
    model, tokenizer = load_model(path, device), load_tokenizer(path)
    p = params.evaluate
    loss, tokens, by_row = mean_token_loss(model, test, tokenizer, p.batch_size, device, name, n_rows)
    assert by_row is not None, "data/tokenized/test has each token's row (tokenize)"
    figures: dict[str, Any] = {"loss": round(loss, 6), "perplexity": perplexity(loss),
                              "tokens": tokens}
    general, ids = None, None
    if reference:
        blocks, ids = reference_blocks(reference, tokenizer, params.tokenize.block_size)
        ref = mean_token_loss(model, blocks, tokenizer, p.batch_size, device, f"{name}, reference")
        general = {"loss": round(ref.mean, 6), "perplexity": perplexity(ref.mean)}
    asked = Asked(params, tokenizer, tests)
    answers: list[str] = []
    if asked.prompts:
        answers = generate(model, tokenizer, asked.prompts, p, device, f"{name} answers", asked.stop)
        figures |= answer_scores(answers, asked.references)
    samples: dict[str, list[str]] = {"greedy": [], "sampled": []}
    if asked.samples:
        samples["greedy"] = generate(model, tokenizer, asked.samples, p, device, name, asked.stop)
        set_seed(params.seed)  # the same sampled text on every run
        samples["sampled"] = generate(model, tokenizer, asked.samples, p, device, f"{name} sampled",
                                      asked.stop, sampled=True)
        figures |= {"repetition": repetition(samples["greedy"]),
                   "repetition_sampled": repetition(samples["sampled"])}
    return ModelScores(figures, samples, by_row, asked, answers, general, ids)


def reference_summary(base: ModelScores, tuned: ModelScores, texts: list[str]) -> dict[str, Any]:
    """Both models on the reference text, and the relative change of perplexity (above 0: the
    fine-tuned model finds general English harder than the base model did)."""
    assert base.reference_ids is not None and tuned.reference_ids is not None
    assert np.array_equal(base.reference_ids, tuned.reference_ids), "the same reference tokens"
    assert base.reference is not None and tuned.reference is not None
    improvement = relative_improvement(base.reference["perplexity"], tuned.reference["perplexity"])
    return {"texts": len(texts), "words": sum(len(t.split()) for t in texts),
            "tokens": len(base.reference_ids), "base": base.reference, "finetuned": tuned.reference,
            "change": None if improvement is None else -improvement}


def group_answers(tests: Any, base: ModelScores, tuned: ModelScores
                  ) -> dict[str, dict[str, float]] | None:
    """BLEU and ROUGE-L per group of the test prompts the models answered."""
    if tests is None or not base.answers:
        return None
    assert base.asked.rows == tuned.asked.rows, "both models answer the same prompts"
    groups = [g or scores.NO_GROUP for g in tests["group"].iloc[base.asked.rows]]
    return scores.answers_by_group(groups, base.asked.references,
                                   {"base": base.answers, "finetuned": tuned.answers})


def run(params: Params, paths: Paths = PATHS) -> dict[str, Any]:
    import datasets

    device = pick_device(params.train.device)
    reference = reference_texts(params.evaluate.reference_paths)
    test = datasets.load_from_disk(str(paths.tokenized / "test"))
    rows = read_parquet(paths.split_file("test"))
    tests = None  # the test pairs or conversations the models answer (BLEU, ROUGE-L)
    if params.mode != "text" and params.evaluate.max_generation_examples:
        tests = rows.head(params.evaluate.max_generation_examples)
    base = score_model("base", params, paths, device, test, len(rows), tests, reference)
    tuned = score_model("finetuned", params, paths, device, test, len(rows), tests, reference)
    write_json([{"prompt": q, "base": b, "finetuned": f, "base_sampled": bs, "finetuned_sampled": fs}
                for q, b, f, bs, fs in zip(params.evaluate.prompts, base.samples["greedy"],
                                           tuned.samples["greedy"], base.samples["sampled"],
                                           tuned.samples["sampled"], strict=True)],
               paths.metrics / "samples.json")
    assert np.array_equal(base.by_row.tokens, tuned.by_row.tokens), "the same tokens per row"
    write_json(scores.analysis(rows, params.mode, base.by_row, tuned.by_row,
                               group_answers(tests, base, tuned)), paths.analysis)
    tokens = base.scores.pop("tokens")
    assert tokens == tuned.scores.pop("tokens"), "both models must be scored on the same tokens"
    summary = {"base": base.scores, "finetuned": tuned.scores,
               "perplexity_improvement": relative_improvement(base.scores["perplexity"],
                                                              tuned.scores["perplexity"]),
               "test_tokens": tokens}
    if reference:
        summary["reference"] = reference_summary(base, tuned, reference)
    return summary


def main(argv: list[str] | None = None) -> None:
    stage_main("evaluate", run, argv, metrics_name="eval")


if __name__ == "__main__":
    main()
