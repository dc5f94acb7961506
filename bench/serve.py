"""Latency of `uv run serve` on this machine: `uv run python -m bench.serve [--model DIR]`.

Starts the real server on a free loopback port, sends one warm-up request, then asks for short
streamed chat completions (greedy, 32 tokens) and plain completions through the official
`openai` client, and reports the time to the first token and the decoding rate after it (median
of the runs), and the startup time. Writes bench/serve.json and the serving section of
bench/results.md. Benchmarks are not tests: nothing here asserts a timing."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

from bench.model_bench import ROOT, write_section

SECTION = ("<!-- serve:start -->", "<!-- serve:end -->")
TOKENS, RUNS = 32, 5
PROMPT = "The storm came in from the west, and"


def start(model: Path) -> tuple[subprocess.Popen, str, float]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    began = time.perf_counter()
    server = subprocess.Popen([shutil.which("serve") or "serve", "--model", str(model), "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    while True:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2):
                return server, url, time.perf_counter() - began
        except OSError:
            if server.poll() is not None:
                raise SystemExit("serve exited before it answered") from None
            time.sleep(0.2)


def timed(create: Any, text_of: Any) -> tuple[float, float, int]:
    """Seconds to the first token, tokens per second after it, and tokens, of one stream."""
    began = time.perf_counter()
    first, pieces = None, 0
    for chunk in create():
        if chunk.choices and text_of(chunk.choices[0]):
            pieces += 1
            first = first or time.perf_counter()
    end = time.perf_counter()
    return first - began, (pieces - 1) / (end - first) if pieces > 1 else 0.0, pieces


def bench(model: Path) -> dict[str, Any]:
    import openai

    server, url, startup = start(model)
    try:
        client = openai.OpenAI(base_url=url + "/v1", api_key="-", max_retries=0, timeout=300)
        name = str(model)
        chat = lambda: client.chat.completions.create(  # noqa: E731
            model=name, messages=[{"role": "user", "content": PROMPT}], max_tokens=TOKENS,
            temperature=0, stream=True)
        plain = lambda: client.completions.create(  # noqa: E731
            model=name, prompt=PROMPT, max_tokens=TOKENS, temperature=0, stream=True)
        results: dict[str, Any] = {"startup_seconds": round(startup, 1), "tokens": TOKENS, "runs": RUNS}
        for label, create, text_of in (("chat", chat, lambda c: c.delta.content),
                                       ("completions", plain, lambda c: c.text)):
            timed(create, text_of)  # warm-up
            runs = [timed(create, text_of) for _ in range(RUNS)]
            results[label] = {"first_token_ms": round(1000 * statistics.median(r[0] for r in runs)),
                              "tokens_per_second": round(statistics.median(r[1] for r in runs), 1),
                              "chunks": runs[0][2]}
        return results
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)


def table(r: dict[str, Any], model: str) -> str:
    lines = [SECTION[0], f"### Serving ({model}, `uv run serve`, {os.cpu_count()} CPU cores)", "",
             f"Streamed through the `openai` client, greedy, {r['tokens']} tokens, median of "
             f"{r['runs']} runs after a warm-up; the server took {r['startup_seconds']} s from "
             "launch to answering.", "",
             "| endpoint | first token | tokens/s after it |", "|---|---|---|"]
    for label in ("chat", "completions"):
        lines.append(f"| /v1/{'chat/completions' if label == 'chat' else 'completions'} | "
                     f"{r[label]['first_token_ms']} ms | {r[label]['tokens_per_second']} |")
    return "\n".join([*lines, SECTION[1]]) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.serve", description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, default=Path("models/finetuned"))
    args = parser.parse_args(argv)
    os.chdir(ROOT)
    results = bench(args.model)
    model = f"SmolLM2-135M-Instruct fine-tuned ({args.model})"
    (ROOT / "bench" / "serve.json").write_text(json.dumps({"model": model, **results}, indent=2) + "\n")
    write_section(ROOT / "bench" / "results.md", table(results, model), SECTION)
    print(table(results, model))


if __name__ == "__main__":
    main()
