"""A blind A/B rating session: each sample's two outputs shown as A and B in a random order, the
answers read from the keyboard or a pipe."""

from __future__ import annotations

import random
from typing import Any, TextIO

from finetune.report.ratings import CHOICES, unblind


def ask(prompt_no: int, total: int, sample: dict[str, str], a_is: str, read: TextIO,
        write: TextIO) -> str | None:
    """Show one prompt blind and read an answer; None at the end of the input."""
    b_is = "base" if a_is == "finetuned" else "finetuned"
    write.write(f"\n[{prompt_no}/{total}] {sample['prompt']}\n\n"
                f"A: {sample[a_is] or '(empty)'}\n\nB: {sample[b_is] or '(empty)'}\n")
    while True:
        write.write("better? a, b, = (tie), s (skip): ")
        write.flush()
        line = read.readline()
        if not line:
            return None
        answer = line.strip().lower()
        if answer in CHOICES:
            return answer
        write.write(f"  '{answer}' is not one of a, b, =, s\n")


def rate(samples: list[dict[str, str]], read: TextIO, write: TextIO,
         rng: random.Random) -> list[dict[str, Any]]:
    ratings = []
    for i, sample in enumerate(samples, 1):
        a_is = rng.choice(["base", "finetuned"])
        choice = ask(i, len(samples), sample, a_is, read, write)
        if choice is None:  # the input ended: the prompts left are not rated
            break
        ratings.append({"prompt": sample["prompt"], "a": a_is, "choice": CHOICES[choice],
                        "preferred": unblind(choice, a_is)})
    return ratings
