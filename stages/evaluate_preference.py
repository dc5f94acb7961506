"""Score the base, supervised and preference-tuned models on the held-out preference pairs
(data/preferences/test), on the same tokens (finetune/scoring/preference.py): the share of pairs
each likes the chosen reply better, outright and relative to the supervised model (the
reference), the mean reward margin, the chosen replies' perplexity; and each model's greedy
reply to a few of the pairs' prompts. Writes metrics/preference_eval.json (the tuned model's
headline figures) and metrics/preference_eval_details.json. Nothing to score (no tuned model, or
no test pairs): it says so. Params: `preference.beta`, `tokenize.block_size`, and evaluate's
batch_size, max_new_tokens, repetition_penalty and device."""

from __future__ import annotations

from typing import Annotated, Any

from finetune.config.evaluate import EvaluateParams
from finetune.config.loading import Key
from finetune.config.preference import PreferenceParams
from finetune.config.tokenize import TokenizeParams
from finetune.paths import PATHS, Paths
from finetune.stage import stage_main

HEADLINE = {"pref_accuracy": ("preferred", "reward_accuracy"),
            "pref_margin": ("preferred", "reward_margin"),
            "pref_chosen_ppl": ("preferred", "chosen_perplexity")}


def run(beta: Annotated[float, Key(PreferenceParams, "beta")],
        block_size: Annotated[int, Key(TokenizeParams, "block_size")],
        batch_size: Annotated[int, Key(EvaluateParams, "batch_size")],
        max_new_tokens: Annotated[int, Key(EvaluateParams, "max_new_tokens")],
        repetition_penalty: Annotated[float, Key(EvaluateParams, "repetition_penalty")],
        device: Annotated[str, Key(EvaluateParams, "device")],
        paths: Paths = PATHS) -> dict[str, Any]:
    from finetune.training.preference import NOT_TRAINED

    if (paths.preferred / NOT_TRAINED).is_file():
        return {"scored": False, "why": "no preference-tuned model (no preference pairs)"}
    if not paths.pairs_file("test").read_text(encoding="utf-8").strip():
        return {"scored": False, "why": "no test pairs (add pairs: split gives test its share of prompts)"}
    from finetune.scoring.preference import score

    evaluate = EvaluateParams(batch_size=batch_size, max_new_tokens=max_new_tokens,
                              repetition_penalty=repetition_penalty, device=device)
    return score(beta, block_size, evaluate, paths)


def main(argv: list[str] | None = None) -> None:
    stage_main("evaluate_preference", run, argv, metrics_name="preference_eval", figures=HEADLINE)


if __name__ == "__main__":
    main()
