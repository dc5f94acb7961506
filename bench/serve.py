"""Latency and throughput of `uv run serve` on this machine: `uv run python -m bench.serve
[--model DIR]`.

Starts the real server on a free loopback port, sends one warm-up request, then asks for short
streamed chat completions (greedy, 32 tokens) and plain completions through the official
`openai` client, and reports the time to the first token and the decoding rate after it (median
of the runs), and the startup time. Then the same streamed chat request from 1, 4, 8 and 16
clients at once (different questions, the stop tokens banned with logit_bias so that every
answer is `--tokens` long): the aggregate tokens/s, the median time to the first token, and
whether each greedy answer is the one it gets alone. Writes bench/serve.json and the serving
section of bench/results.md. Benchmarks are not tests: nothing here asserts a timing."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import IO, Any

from bench.common import ROOT, write_section

SECTION = ("<!-- serve:start -->", "<!-- serve:end -->")
TOKENS, RUNS, LEVELS = 32, 5, (1, 4, 8, 16)
QUESTIONS = ["How do I reset my password?", "Where is my order?", "Can I pay in instalments?",
             "My parcel arrived damaged.", "Do you ship abroad?", "I was charged twice.",
             "How do I cancel my subscription?", "What are your opening hours?"]
PROMPT = "The storm came in from the west, and"
STARTUP_LIMIT, STOP_LIMIT = 300, 30  # seconds the server may take to answer, and to stop


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(model: Path, log: IO[bytes]) -> tuple[subprocess.Popen, str, float]:
    """`serve` on `model` (relative to the project root) on a free loopback port, in its own
    process group, its output to `log`: the process, its base URL and its startup seconds."""
    port = free_port()
    began = time.perf_counter()
    server = subprocess.Popen([shutil.which("serve") or "serve", "--model", str(model), "--host",
                               "127.0.0.1", "--port", str(port)], cwd=ROOT,
                              stdout=log, stderr=log, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2):
                    return server, url, time.perf_counter() - began
            except OSError:
                if server.poll() is not None:
                    log.seek(0)
                    tail = log.read().decode(errors="replace")[-2000:]
                    raise RuntimeError(f"serve exited before it answered:\n{tail}") from None
                if time.perf_counter() - began > STARTUP_LIMIT:
                    raise RuntimeError(f"serve did not answer within {STARTUP_LIMIT} s") from None
                time.sleep(0.2)
    except BaseException:
        stop(server)
        raise


def stop(server: subprocess.Popen) -> None:
    """SIGTERM to the server's process group, SIGKILL to what is left after STOP_LIMIT s."""
    if server.poll() is None:
        os.killpg(server.pid, signal.SIGTERM)
    try:
        server.wait(timeout=STOP_LIMIT)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait(timeout=STOP_LIMIT)
    with contextlib.suppress(ProcessLookupError):  # a worker the server left behind
        os.killpg(server.pid, signal.SIGKILL)


def timed(create: Any, text_of: Any) -> tuple[float, float, int]:
    """Seconds to the first token, tokens per second after it, and tokens, of one stream."""
    began = time.perf_counter()
    first, pieces = None, 0
    for chunk in create():
        if chunk.choices and text_of(chunk.choices[0]):
            pieces += 1
            first = first or time.perf_counter()
    end = time.perf_counter()
    if first is None:
        raise RuntimeError("the server streamed no text")
    return first - began, (pieces - 1) / (end - first) if pieces > 1 else 0.0, pieces


def bench(model: Path, tokens: int = TOKENS, runs: int = RUNS,
          levels: tuple[int, ...] = LEVELS) -> dict[str, Any]:
    """Startup, time to the first token and decoding rate of `serve` on `model`, median of
    `runs` streams of `tokens` tokens per endpoint, and the concurrency figures at `levels`;
    the server is stopped before it returns."""
    with tempfile.TemporaryFile() as log:  # a file, not a pipe that would fill and stall it
        server, url, startup = start(model, log)
        try:
            results = measure(url, str(model), startup, tokens, runs)
            results["concurrency"] = concurrency(url, str(model), tokens, levels)
            return results
        finally:
            stop(server)


def concurrency(url: str, name: str, tokens: int, levels: tuple[int, ...]) -> dict[str, Any]:
    """At each level, that many different greedy streams at once: aggregate tokens/s, median
    first-token ms, and how many answers equal the same request alone."""
    from concurrent.futures import ThreadPoolExecutor

    import openai

    client = openai.OpenAI(base_url=url + "/v1", api_key="-", max_retries=0, timeout=600)
    with urllib.request.urlopen(f"{url}/v1/models", timeout=30):
        pass
    stop_ids = stop_tokens(name)

    def one(i: int) -> tuple[float, int, str]:
        began, first, pieces, used = time.perf_counter(), None, [], 0
        for chunk in client.chat.completions.create(
                model=name, messages=[{"role": "user", "content": f"{QUESTIONS[i % 8]} ({i})"}],
                max_tokens=tokens, temperature=0, stream=True, stream_options={"include_usage": True},
                logit_bias={str(t): -100 for t in stop_ids}):
            if chunk.choices and chunk.choices[0].delta.content:
                first = first or time.perf_counter()
                pieces.append(chunk.choices[0].delta.content)
            if chunk.usage:
                used = chunk.usage.completion_tokens
        return (first or time.perf_counter()) - began, used, "".join(pieces)

    alone = {i: one(i)[2] for i in range(max(levels))}
    figures: dict[str, Any] = {}
    for n in levels:
        began = time.perf_counter()
        with ThreadPoolExecutor(n) as pool:
            runs = list(pool.map(one, range(n)))
        seconds = time.perf_counter() - began
        figures[str(n)] = {"tokens_per_second": round(sum(r[1] for r in runs) / seconds, 1),
                           "first_token_ms": round(1000 * statistics.median(r[0] for r in runs)),
                           "same_as_alone": sum(r[2] == alone[i] for i, r in enumerate(runs)),
                           "requests": n}
    single = figures[str(levels[0])]["tokens_per_second"]
    for f in figures.values():
        f["speedup"] = round(f["tokens_per_second"] / single, 2) if single else None
    return figures


def stop_tokens(model: str) -> list[int]:
    """The stop tokens serve ends the folder's answers with (finetune.text.prompts.inference_for,
    as serve reads them)."""
    from finetune.text.prompts import inference_for

    return inference_for(Path(model) if Path(model).is_absolute() else ROOT / model).stop_token_ids


def measure(url: str, name: str, startup: float, tokens: int, runs: int) -> dict[str, Any]:
    """The figures of bench(), asked of the server at `url` through the openai client."""
    import openai

    client = openai.OpenAI(base_url=url + "/v1", api_key="-", max_retries=0, timeout=300)
    chat = lambda: client.chat.completions.create(  # noqa: E731
        model=name, messages=[{"role": "user", "content": PROMPT}], max_tokens=tokens,
        temperature=0, stream=True)
    plain = lambda: client.completions.create(  # noqa: E731
        model=name, prompt=PROMPT, max_tokens=tokens, temperature=0, stream=True)
    results: dict[str, Any] = {"startup_seconds": round(startup, 1), "tokens": tokens, "runs": runs}
    for label, create, text_of in (("chat", chat, lambda c: c.delta.content),
                                   ("completions", plain, lambda c: c.text)):
        timed(create, text_of)  # warm-up
        streams = [timed(create, text_of) for _ in range(runs)]
        results[label] = {"first_token_ms": round(1000 * statistics.median(r[0] for r in streams)),
                          "tokens_per_second": round(statistics.median(r[1] for r in streams), 1),
                          "chunks": streams[0][2]}
    return results


def table(r: dict[str, Any], model: str) -> str:
    lines = [SECTION[0], f"### Serving ({model}, `uv run serve`, {os.cpu_count()} CPU cores)", "",
             f"Streamed through the `openai` client, greedy, {r['tokens']} tokens, median of "
             f"{r['runs']} runs after a warm-up; the server took {r['startup_seconds']} s from "
             "launch to answering.", "",
             "| endpoint | first token | tokens/s after it |", "|---|---|---|"]
    for label in ("chat", "completions"):
        lines.append(f"| /v1/{'chat/completions' if label == 'chat' else 'completions'} | "
                     f"{r[label]['first_token_ms']} ms | {r[label]['tokens_per_second']} |")
    if r.get("concurrency"):
        lines += ["", f"Clients at once, each streaming a different greedy chat answer of {r['tokens']} "
                  "tokens; the requests in flight are decoded together (continuous batching):", "",
                  "| clients | tokens/s, all together | × one client | median first token | "
                  "answers as alone |", "|---|---|---|---|---|"]
        for n, f in r["concurrency"].items():
            lines.append(f"| {n} | {f['tokens_per_second']} | {f['speedup']} | {f['first_token_ms']} ms | "
                         f"{f['same_as_alone']}/{f['requests']} |")
    return "\n".join([*lines, SECTION[1]]) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.serve", description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, default=Path("models/finetuned"),
                        help="the model folder (relative to the project root)")
    parser.add_argument("--tokens", type=int, default=TOKENS, help="tokens per stream")
    parser.add_argument("--runs", type=int, default=RUNS, help="streams per endpoint (median)")
    parser.add_argument("--levels", default=",".join(map(str, LEVELS)),
                        help="clients at once, comma-separated (default 1,4,8,16)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "serve.json",
                        help="the figures; the table goes to results.md beside it")
    args = parser.parse_args(argv)
    levels = tuple(int(n) for n in args.levels.split(","))
    results = bench(args.model, args.tokens, args.runs, levels)
    model = (f"SmolLM2-135M-Instruct fine-tuned ({args.model})" if not args.model.is_absolute()
             else str(args.model))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"model": model, **results}, indent=2) + "\n")
    write_section(args.out.with_name("results.md"), table(results, model), SECTION)
    print(table(results, model))


if __name__ == "__main__":
    main()
