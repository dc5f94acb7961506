"""Score models/base once on data/tokenized/test (loss and perplexity per test row, in pairs and
chat mode also its answers to the test prompts) and on the reference text of
`evaluate.reference_paths`, and sample it on `evaluate.prompts`, asked as tokenize says
(data/tokenized/inference.json). Writes metrics/eval_base.json, which evaluate sets beside the
fine-tuned model's figures: it depends on the base model and the test data only, so an
experiment that changes training does not rerun it. Params: `seed`, `evaluate`."""

from __future__ import annotations

from typing import Any

from finetune.config.common import Seed
from finetune.config.evaluate import EvaluateParams
from finetune.files import write_json
from finetune.models.loading import pick_device
from finetune.paths import PATHS, Paths
from finetune.scoring.evaluation import score_model, test_inputs
from finetune.scoring.reference import reference_texts
from finetune.stage import as_record, stage_main
from finetune.text.prompts import read_inference


def run(seed: Seed, evaluate: EvaluateParams, paths: Paths = PATHS) -> dict[str, Any]:
    device = pick_device(evaluate.device, "evaluate.device")
    reference = reference_texts(evaluate.reference_paths)
    asking = read_inference(paths.inference_file)
    test, rows, tests = test_inputs(paths, asking, evaluate)
    base = score_model(paths.base_model, "base", seed, evaluate, asking, device, test, len(rows),
                       tests, reference)
    params = as_record({"seed": seed, "evaluate": evaluate})
    write_json({"params": params, **base.to_json()}, paths.eval_base)
    return {"perplexity": base.scores["perplexity"], "tokens": base.scores["tokens"]}


def main(argv: list[str] | None = None) -> None:
    stage_main("evaluate_base", run, argv, write_metrics=False)


if __name__ == "__main__":
    main()
