"""Blind A/B ratings of the sample generations (`uv run rate`), and their summary for the report.

metrics/human_eval.json holds the choices unblinded, the counts, the fine-tuned model's win rate
with a 95 % Wilson interval, and the metrics/samples.json that was judged, with its hash: ratings
of other samples (an older model) are never shown as ratings of the current ones, and each choice
stays tied to the texts it chose between (finetune.data.preferences makes pairs of them)."""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any

CHOICES = {"a": "A", "b": "B", "=": "tie", "s": "skip"}
NO_RATINGS: dict[str, Any] = {"samples_hash": None, "ratings": []}  # what the project ships


def samples_hash(samples: list[dict[str, str]]) -> str:
    """The sha256 of the samples' content (prompts and both outputs), whatever their layout."""
    canonical = json.dumps(samples, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def wilson(successes: int, n: int, z: float = 1.96) -> tuple[float, float] | None:
    """The Wilson score interval of a proportion (95 % by default); None without trials."""
    if n == 0:
        return None
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return round(max(0.0, centre - half), 4), round(min(1.0, centre + half), 4)


def unblind(choice: str, a_is: str) -> str | None:
    """The model a choice prefers ("base" / "finetuned"), "tie", or None for a skip."""
    if choice == "a":
        return a_is
    if choice == "b":
        return "base" if a_is == "finetuned" else "finetuned"
    return "tie" if choice == "=" else None


def summarise(samples: list[dict[str, str]], ratings: list[dict[str, Any]]) -> dict[str, Any]:
    """metrics/human_eval.json: the ratings with counts and the fine-tuned model's win rate
    (wins over wins and losses; ties are counted apart)."""
    preferred = [r["preferred"] for r in ratings]
    wins, losses = preferred.count("finetuned"), preferred.count("base")
    interval = wilson(wins, wins + losses)
    return {"samples_hash": samples_hash(samples), "samples": samples, "ratings": ratings,
            "finetuned_wins": wins, "base_wins": losses, "ties": preferred.count("tie"),
            "skipped": preferred.count(None),
            "win_rate": round(wins / (wins + losses), 4) if wins + losses else None,
            "win_rate_ci95": list(interval) if interval else None}


def current(human_eval: dict[str, Any], samples: list[dict[str, str]]) -> bool:
    """Whether these ratings judged exactly these samples."""
    return bool(human_eval.get("ratings")) and human_eval.get("samples_hash") == samples_hash(samples)
