"""The headline figures: what `dvc exp show` shows of a run, defined once.

train and evaluate each write two files: metrics/<name>.json, a DVC `metrics:` file with only
the headline figures (so that the experiment table stays readable), and
metrics/<name>_details.json, a cached output with the whole summary (steps, tokens, times,
environment, base-model scores...), which the report reads and `dvc.api.read(..., rev=<exp>)`
finds for any experiment."""

from __future__ import annotations

from typing import Any

# metrics file -> {headline key: where it is in the stage's summary}
HEADLINE: dict[str, dict[str, tuple[str, ...]]] = {
    "train": {"val_loss": ("val_loss",), "tokens_per_second": ("tokens_per_second",)},
    "eval": {"perplexity": ("finetuned", "perplexity"),   # the fine-tuned model, test split
             "improvement": ("perplexity_improvement",),  # relative to the base model
             "bleu": ("finetuned", "bleu"),               # pairs and chat mode only
             "rougeL": ("finetuned", "rougeL"),
             # the general-English reference text (evaluate.reference_paths): what it cost
             "ref_perplexity": ("reference", "finetuned", "perplexity"),
             "ref_base": ("reference", "base", "perplexity"),
             "ref_change": ("reference", "change")},              # > 0: worse than the base
}


def _get(summary: dict[str, Any], where: tuple[str, ...]) -> Any:
    value: Any = summary
    for key in where:
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return value


def headline(name: str, summary: dict[str, Any]) -> dict[str, Any]:
    """The headline figures of a stage's summary (keys absent from it are left out)."""
    found = {key: _get(summary, where) for key, where in HEADLINE[name].items()}
    return {key: value for key, value in found.items() if value is not None}
