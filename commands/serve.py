"""`uv run serve`: the fine-tuned model behind an OpenAI-compatible HTTP API.

    uv run serve                            # models/finetuned on http://127.0.0.1:8000/v1
    uv run serve --model models/base --port 8001
    FINETUNE_API_KEY=... uv run serve --host 0.0.0.0   # for other machines: a key is required

/v1/chat/completions and /v1/completions (streamed or not), /v1/models, /health, pinned to one
model folder, which answers as it was trained: it reads how the model is asked as evaluate,
generate and export do (the folder's inference.json, else data/tokenized/inference.json:
finetune.text.prompts.inference_for). Requests are checked before any work and bounded (context,
--max-tokens, --max-body, --timeout, --max-queue); the requests in flight are decoded together
(continuous batching, finetune.serving.engine)."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

from finetune.cli import run_command
from finetune.models.loading import local_model_dir, pick_device
from finetune.paths import PATHS
from finetune.serving.access import check_port_free, is_loopback
from finetune.serving.app import Limits, build_app
from finetune.text.prompts import inference_for

KEY_ENV = "FINETUNE_API_KEY"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="serve", description="Serve a model folder through an OpenAI-compatible HTTP API "
        "(continuous batching on one model). Ctrl-C stops it.")
    parser.add_argument("--model", type=Path, default=PATHS.finetuned,
                        help=f"model directory (default: {PATHS.finetuned}); requests name it as given")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=8000, help="(default 8000)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--api-key", default=os.environ.get(KEY_ENV),
                        help=f"require `Authorization: Bearer KEY` on every request (default: "
                        f"${KEY_ENV}, which keeps the key out of shell history)")
    parser.add_argument("--insecure", action="store_true",
                        help="serve a non-loopback --host without an API key (anyone who can "
                        "reach it can use it)")
    parser.add_argument("--cors-origin", action="append", default=[], metavar="ORIGIN",
                        help="let web pages from ORIGIN call the API (e.g. https://app.example.com); "
                        "repeatable; none by default")
    parser.add_argument("--inference", type=Path, default=None,
                        help="how to ask the model: an inference.json as tokenize writes it "
                        f"(default: the model folder's, else {PATHS.inference_file})")
    defaults = Limits()
    parser.add_argument("--max-body", type=size, default=defaults.max_body, metavar="SIZE",
                        help="the largest request body taken, e.g. 4MB or 500KB (default 4MB)")
    parser.add_argument("--max-tokens", type=positive(int), default=defaults.max_tokens,
                        help="the most tokens one answer may have; a request's max_tokens is "
                        f"capped at it and at what the context leaves (default {defaults.max_tokens})")
    parser.add_argument("--timeout", type=positive(float), default=defaults.timeout, metavar="SECONDS",
                        help="how long one request may generate; it then ends with finish_reason "
                        f"\"length\" (default {defaults.timeout:g})")
    parser.add_argument("--max-batch", type=positive(int), default=defaults.max_batch,
                        help=f"requests decoded together (default {defaults.max_batch})")
    parser.add_argument("--max-queue", type=positive(int), default=defaults.max_queue,
                        help="requests waiting beyond those; more get 503 with Retry-After "
                        f"(default {defaults.max_queue})")
    args = parser.parse_args(argv)
    if not 0 < args.port < 65536:
        parser.error("--port must be between 1 and 65535")
    if not is_loopback(args.host) and not args.api_key and not args.insecure:
        parser.error(f"--host {args.host} serves other machines: pass --api-key KEY (or set "
                     f"{KEY_ENV}), or --insecure to serve anyone who can reach it")
    return args


def size(text: str) -> int:
    """4MB, 500KB, 1GB or a number of bytes."""
    units = {"KB": 1024, "MB": 1024**2, "GB": 1024**3, "B": 1}
    upper = text.strip().upper()
    for unit, factor in units.items():
        if upper.endswith(unit) and upper[:-len(unit)].strip().replace(".", "", 1).isdigit():
            return int(float(upper[:-len(unit)]) * factor)
    if upper.isdigit():
        return int(upper)
    raise argparse.ArgumentTypeError(f"{text!r}: a size such as 4MB, 500KB or 1048576")


def positive(cast: type) -> Any:
    def check(text: str) -> Any:
        try:
            value = cast(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not value > 0:
            raise argparse.ArgumentTypeError(f"{text!r}: must be more than 0")
        return value
    return check


def run(args: argparse.Namespace) -> None:
    import uvicorn
    from transformers.utils import logging as hf_logging

    local_model_dir(args.model)  # a missing folder fails here, in one line
    asked = inference_for(args.model, args.inference)
    check_port_free(args.host, args.port)
    hf_logging.set_verbosity_error()
    started = time.perf_counter()
    if args.insecure and not is_loopback(args.host) and not args.api_key:
        print(f"serve: warning: --insecure: anyone who can reach {args.host}:{args.port} can use "
              "this model", file=sys.stderr, flush=True)
    limits = Limits(max_body=args.max_body, max_tokens=args.max_tokens, timeout=args.timeout,
                    max_batch=args.max_batch, max_queue=args.max_queue)
    app = build_app(args.model, pick_device(args.device), asked, api_key=args.api_key,
                    loopback_only=is_loopback(args.host), cors_origins=args.cors_origin, limits=limits)
    print(f"serve: {args.model} loaded in {time.perf_counter() - started:.1f} s; OpenAI API at "
          f"http://{args.host}:{args.port}/v1 (model name {str(args.model)!r}); Ctrl-C stops",
          file=sys.stderr, flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="info", timeout_graceful_shutdown=5)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    run_command("serve", lambda: run(args))


if __name__ == "__main__":
    main()
