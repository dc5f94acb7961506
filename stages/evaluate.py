"""Score models/finetuned on exactly the tokens of data/tokenized/test that evaluate_base scored
models/base on (metrics/eval_base.json), and set the two side by side: loss, perplexity and the
relative improvement (pairs and chat: on the answer tokens only, and BLEU/ROUGE-L of greedy
answers to the test prompts, or replies in place of each test conversation's last assistant
turn); both models on the reference text (what fine-tuning cost); the error analysis by source,
group and passage; sample generations, greedy and sampled. Writes metrics/eval.json (the
headline figures), metrics/eval_details.json (all of them), metrics/eval_analysis.json and
metrics/samples.json. Params: `seed`, `evaluate`."""

from __future__ import annotations

from typing import Any

from finetune.config.common import Seed
from finetune.config.evaluate import EvaluateParams
from finetune.files import read_json, write_json
from finetune.models.loading import pick_device
from finetune.paths import PATHS, Paths
from finetune.scoring import scores
from finetune.scoring.evaluation import (
    ModelScores,
    group_answers,
    samples_table,
    score_model,
    summary,
    test_inputs,
)
from finetune.scoring.reference import reference_texts
from finetune.stage import stage_main
from finetune.text.prompts import read_inference

# what `dvc exp show` shows of a run: {name in metrics/eval.json: where it is in the summary}
HEADLINE = {"perplexity": ("finetuned", "perplexity"),   # the fine-tuned model, test split
            "improvement": ("perplexity_improvement",),  # relative to the base model
            "bleu": ("finetuned", "bleu"),               # pairs and chat mode only
            "rougeL": ("finetuned", "rougeL"),
            # the general-English reference text (evaluate.reference_paths): what it cost
            "ref_perplexity": ("reference", "finetuned", "perplexity"),
            "ref_base": ("reference", "base", "perplexity"),
            "ref_change": ("reference", "change")}              # > 0: worse than the base


def run(seed: Seed, evaluate: EvaluateParams, paths: Paths = PATHS) -> dict[str, Any]:
    device = pick_device(evaluate.device, "evaluate.device")
    reference = reference_texts(evaluate.reference_paths)
    asking = read_inference(paths.inference_file)
    test, rows, tests = test_inputs(paths, asking, evaluate)
    base = ModelScores.from_json(read_json(paths.eval_base))
    tuned = score_model(paths.finetuned, "finetuned", seed, evaluate, asking, device, test, len(rows),
                        tests, reference)
    write_json(samples_table(evaluate.prompts, base, tuned), paths.metrics / "samples.json")
    figures = summary(base, tuned, reference)
    write_json(scores.analysis(rows, asking.mode, base.by_row, tuned.by_row,
                               group_answers(tests, base, tuned)), paths.analysis)
    return figures


def main(argv: list[str] | None = None) -> None:
    # the params it ran with are in metrics/eval_base.json (the same keys), not in its summary
    stage_main("evaluate", run, argv, metrics_name="eval", figures=HEADLINE, record_params=False)


if __name__ == "__main__":
    main()
