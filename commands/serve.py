"""`uv run serve`: the fine-tuned model behind an OpenAI-compatible HTTP API.

    uv run serve                            # models/finetuned on http://127.0.0.1:8000/v1
    uv run serve --model models/base --port 8001

It is transformers' own server (`transformers serve`: /v1/chat/completions with and without
streaming, /v1/completions, /v1/responses), pinned to one model folder, which answers as it was
trained: it reads how the model is asked as evaluate, generate and export do (the folder's
inference.json, else data/tokenized/inference.json: finetune.text.prompts.inference_for), so the
chat template renders a chat request as training rendered its examples, and the stop tokens and
default sampling are tokenize's.
Four things are added here, each missing from `transformers serve` as measured (transformers
5.23): /v1/models lists the served model (it scans the Hugging Face cache instead, and answers
500 without one); a malformed request gets a 4xx with an OpenAI-style JSON error, not a 500 from
deep inside the handler; every error, a server fault included, is JSON; and a stream ends with
`data: [DONE]` as OpenAI's do."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from finetune.cli import run_command
from finetune.models.loading import local_model_dir, pick_device
from finetune.paths import PATHS
from finetune.serving import (
    build_app,
    check_port_free,
    is_loopback,
)
from finetune.text.prompts import inference_for


KEY_ENV = "FINETUNE_API_KEY"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="serve", description="Serve a model folder through an OpenAI-compatible HTTP API "
        "(transformers serve). Ctrl-C stops it.")
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
    args = parser.parse_args(argv)
    if not 0 < args.port < 65536:
        parser.error("--port must be between 1 and 65535")
    if not is_loopback(args.host) and not args.api_key and not args.insecure:
        parser.error(f"--host {args.host} serves other machines: pass --api-key KEY (or set "
                     f"{KEY_ENV}), or --insecure to serve anyone who can reach it")
    return args


def run(args: argparse.Namespace) -> None:
    import uvicorn
    from transformers.utils import logging as hf_logging

    local_model_dir(args.model)  # a missing folder fails here, in one line
    asked = inference_for(args.model, args.inference)
    check_port_free(args.host, args.port)
    hf_logging.set_verbosity_error()  # not a "[Request received]" warning per request
    started = time.perf_counter()
    if args.insecure and not is_loopback(args.host) and not args.api_key:
        print(f"serve: warning: --insecure: anyone who can reach {args.host}:{args.port} can use "
              "this model", file=sys.stderr, flush=True)
    app = build_app(args.model, pick_device(args.device), asked, api_key=args.api_key,
                    loopback_only=is_loopback(args.host), cors_origins=args.cors_origin)
    print(f"serve: {args.model} loaded in {time.perf_counter() - started:.1f} s; OpenAI API at "
          f"http://{args.host}:{args.port}/v1 (model name {str(args.model)!r}); Ctrl-C stops",
          file=sys.stderr, flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="info")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    run_command("serve", lambda: run(args))


if __name__ == "__main__":
    main()
