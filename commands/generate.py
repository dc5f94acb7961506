"""`uv run generate`: text from the fine-tuned model, streamed token by token as it is produced.

    uv run generate "Once upon a time" --max-new-tokens 80
    uv run generate                                  # interactive: one prompt per line
    uv run generate --model models/base "Once upon a time"
    uv run generate --compare "Once upon a time"     # base, then fine-tuned, same settings and seed
    uv run generate --chat --system "You are Robin"  # a multi-turn chat that keeps the history

It asks the model as tokenize said it is to be asked (the model folder's inference.json, else
data/tokenized/inference.json): in pairs mode the prompt is rendered with the same template (or
chat template) as training, in chat mode as a user message with the chat template (and
tokenize.system_prompt), and only the answer is printed."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TextIO

from finetune.cli import run_command
from finetune.errors import UserError
from finetune.generation import Generator, prompts
from finetune.models.loading import local_model_dir, pick_device
from finetune.paths import PATHS
from finetune.text.prompts import (
    SAMPLING,
    RenderError,
)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="generate", description="Generate text with the fine-tuned model (or any model "
        "directory). Without a prompt it asks for one per line until an empty line or Ctrl-D.")
    parser.add_argument("prompt", nargs="?", help="the prompt; leave out for interactive mode")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--model", type=Path, default=PATHS.finetuned,
                       help=f"model directory (default: {PATHS.finetuned})")
    which.add_argument("--compare", action="store_true",
                       help=f"generate with {PATHS.base_model} and {PATHS.finetuned}, one after the other")
    parser.add_argument("--max-new-tokens", type=int, default=80)
    parser.add_argument("--temperature", type=float, default=SAMPLING["temperature"],
                        help=f"0: greedy (default {SAMPLING['temperature']})")
    parser.add_argument("--top-p", type=float, default=SAMPLING["top_p"])
    parser.add_argument("--repetition-penalty", type=float, default=SAMPLING["repetition_penalty"])
    parser.add_argument("--seed", type=int, default=None,
                        help="the same seed gives the same text (default: random)")
    parser.add_argument("--mode", choices=["text", "pairs", "chat"], default=None,
                        help="text: continue the prompt; pairs: answer it; chat: reply to it as a "
                        "user message (default: the mode the model was trained in)")
    parser.add_argument("--chat", action="store_true",
                        help="an interactive multi-turn chat that keeps the history (chat mode)")
    parser.add_argument("--system", default=None,
                        help="chat mode: the system message (default: tokenize.system_prompt)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--inference", type=Path, default=None,
                        help="how to ask the model: an inference.json as tokenize writes it "
                        f"(default: the model folder's, else {PATHS.inference_file})")
    args = parser.parse_args(argv)
    if args.chat and args.mode not in (None, "chat"):
        parser.error("--chat is a chat-mode session; leave out --mode or use --mode chat")
    if args.chat and args.prompt is not None:
        parser.error("--chat is interactive: leave out the prompt and type it")
    if args.max_new_tokens < 1:
        parser.error("--max-new-tokens must be at least 1")
    if args.temperature < 0 or not 0 < args.top_p <= 1 or args.repetition_penalty <= 0:
        parser.error("--temperature must be >= 0, --top-p in (0, 1], --repetition-penalty > 0")
    return args


def run(args: argparse.Namespace, stdin: TextIO = sys.stdin, out: TextIO = sys.stdout) -> None:
    from transformers.utils import logging as hf_logging

    paths = [PATHS.base_model, PATHS.finetuned] if args.compare else [args.model]
    for path in paths:
        local_model_dir(path)  # a missing model says so at once, before torch is imported
    hf_logging.disable_progress_bar()  # a 1-second "Loading weights" bar per model says nothing
    device = pick_device(args.device, "--device")
    generators = [Generator(path, args, device) for path in paths]
    for prompt in prompts(args, stdin, out):
        for generator in generators:
            if args.compare:
                out.write(generator.label() + "\n")
            generator(prompt, out)
        if args.compare or args.prompt is None:
            out.write("\n")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    run_command("generate", lambda: run(args), errors=(UserError, RenderError))


if __name__ == "__main__":
    main()
