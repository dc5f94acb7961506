"""`uv run rate`: judge the base and fine-tuned samples blind, as A and B in a random order.

    uv run rate                      # one prompt after another: a, b, = (tie) or s (skip)
    printf 'a\\nb\\n=\\ns\\n' | uv run rate   # piped answers work too

For each prompt of metrics/samples.json it shows the two outputs as A and B (which is which is
drawn at random and not shown) and reads one answer. The choices, unblinded, go to
metrics/human_eval.json with the fine-tuned model's win rate and its 95 % interval; `dvc repro`
then puts them in the report, as long as they judged the current samples."""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path
from typing import Any, TextIO

from finetune.cli import run_command
from finetune.errors import UserError
from finetune.files import read_json, write_json
from finetune.paths import PATHS
from finetune.rating import rate
from finetune.report.ratings import summarise


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="rate", description="Rate the base and fine-tuned "
                                     "samples blind (A/B in a random order).")
    parser.add_argument("--samples", type=Path, default=PATHS.metrics / "samples.json")
    parser.add_argument("--out", type=Path, default=PATHS.human_eval)
    return parser.parse_args(argv)


def run(args: argparse.Namespace, read: TextIO = sys.stdin, write: TextIO = sys.stdout) -> dict:
    if not args.samples.exists():
        raise UserError(f"{args.samples}: missing; run the pipeline first (uv run dvc repro)")
    samples = read_json(args.samples)
    if not samples:
        raise UserError(f"{args.samples}: no samples to rate (evaluate.prompts is empty)")
    ratings = rate(samples, read, write, random.SystemRandom())
    if not ratings:
        raise UserError("no prompt was rated; nothing written")
    result = summarise(samples, ratings)
    write_json(result, args.out)
    return result


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    run_command("rate", lambda: say_result(args, run(args)),
                interrupted="\nrate: stopped; nothing written")


def say_result(args: argparse.Namespace, result: dict[str, Any]) -> None:
    rated = len(result["ratings"]) - result["skipped"]
    line = (f"\nrate: fine-tuned preferred {result['finetuned_wins']}, base {result['base_wins']}, "
            f"ties {result['ties']}, skipped {result['skipped']} ({rated} rated)")
    if result["win_rate"] is not None:
        lo, hi = result["win_rate_ci95"]
        line += f"; win rate {result['win_rate']:.0%} (95 % interval {lo:.0%}–{hi:.0%})"
    print(line + f"; written to {args.out}; `uv run dvc repro` puts it in the report")


if __name__ == "__main__":
    main()
