"""`uv run serve`: the fine-tuned model behind an OpenAI-compatible HTTP API.

    uv run serve                            # models/finetuned on http://127.0.0.1:8000/v1
    uv run serve --model models/base --port 8001

It is transformers' own server (`transformers serve`: /v1/chat/completions with and without
streaming, /v1/completions, /v1/responses), pinned to one model folder, which answers as it was
trained: the folder's chat template renders a chat request as training rendered its examples
(finetune.text.prompts.inference), its generation config holds the stop tokens and default sampling.
Four things are added here, each missing from `transformers serve` as measured (transformers
5.23): /v1/models lists the served model (it scans the Hugging Face cache instead, and answers
500 without one); a malformed request gets a 4xx with an OpenAI-style JSON error, not a 500 from
deep inside the handler; every error, a server fault included, is JSON; and a stream ends with
`data: [DONE]` as OpenAI's do."""

from __future__ import annotations

import argparse
import socket
import sys
import time
from pathlib import Path
from typing import Any

from finetune.cli import run_command
from finetune.errors import UserError
from finetune.models.loading import local_model_dir, pick_device
from finetune.paths import PATHS

ROLES = {"system", "user", "assistant", "tool"}


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
    args = parser.parse_args(argv)
    if not 0 < args.port < 65536:
        parser.error("--port must be between 1 and 65535")
    return args


class BadRequest(Exception):
    """A request that cannot be answered as sent: a 400 naming the field."""


def check_messages(body: dict[str, Any]) -> None:
    """A chat request's messages: a non-empty list of objects with a known role and text content
    (a string, a list of content parts, or nothing beside tool calls). OpenAI's `developer` role
    is the system role of older templates."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("messages: must be a non-empty list of {role, content} objects")
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise BadRequest(f"messages[{i}]: must be an object with role and content")
        if message.get("role") == "developer":
            message["role"] = "system"
        if message.get("role") not in ROLES:
            raise BadRequest(f"messages[{i}].role: must be one of {', '.join(sorted(ROLES))}, "
                             f"not {message.get('role')!r}")
        content = message.get("content")
        parts_ok = isinstance(content, list) and all(
            isinstance(part, dict) and isinstance(part.get("type"), str) for part in content)
        if not (isinstance(content, str) or parts_ok or (content is None and message.get("tool_calls"))):
            raise BadRequest(f"messages[{i}].content: must be a string or a list of content parts")


def check_sampling(body: dict[str, Any]) -> None:
    """The generation settings of a request, where given, in their ranges."""
    for key in ("max_tokens", "max_completion_tokens"):
        value = body.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise BadRequest(f"{key}: must be a positive integer")
    temperature, top_p = body.get("temperature"), body.get("top_p")
    if temperature is not None and (not isinstance(temperature, int | float) or temperature < 0):
        raise BadRequest("temperature: must be a number >= 0")
    if top_p is not None and (not isinstance(top_p, int | float) or not 0 < top_p <= 1):
        raise BadRequest("top_p: must be a number in (0, 1]")


def check_prompt(body: dict[str, Any]) -> None:
    prompt = body.get("prompt")
    if not isinstance(prompt, str) or not prompt:
        raise BadRequest("prompt: must be a non-empty string")


def error_body(message: str, status: int) -> dict[str, Any]:
    """An error as the OpenAI API writes one, which its clients turn into their exceptions."""
    kind = "invalid_request_error" if status < 500 else "server_error"
    return {"error": {"message": message, "type": kind, "param": None, "code": status}}


def build_app(model: Path, device: str) -> Any:
    """transformers serve's application, pinned to `model` and loaded, with the additions above.
    Assembled from transformers.cli.serving as its `Serve` command assembles it."""
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException
    from transformers.cli.serving.chat_completion import ChatCompletionHandler
    from transformers.cli.serving.completion import CompletionHandler
    from transformers.cli.serving.model_manager import ModelManager
    from transformers.cli.serving.response import ResponseHandler
    from transformers.cli.serving.server import build_server
    from transformers.cli.serving.systemone import SystemOneHandler
    from transformers.cli.serving.transcription import TranscriptionHandler
    from transformers.cli.serving.utils import GenerationState

    class Chat(ChatCompletionHandler):
        def _validate_request(self, body: dict) -> None:
            super()._validate_request(body)
            check_messages(body)
            check_sampling(body)

    class Completion(CompletionHandler):
        def _validate_request(self, body: dict) -> None:
            super()._validate_request(body)
            check_prompt(body)
            check_sampling(body)

    name = str(model)
    manager = ModelManager(device=device, force_model=name)  # loads it now, never unloads it
    state = GenerationState()
    app: FastAPI = build_server(
        manager, Chat(manager, state), completion_handler=Completion(manager, state),
        response_handler=ResponseHandler(manager, state),
        transcription_handler=TranscriptionHandler(manager, state),
        systemone_handler=SystemOneHandler(manager, state), generation_state=state)

    entry = {"id": name, "object": "model", "created": int((model / "config.json").stat().st_mtime),
             "owned_by": "finetune-pipeline"}
    app.router.routes[:] = [r for r in app.router.routes if getattr(r, "path", "") != "/v1/models"]

    @app.get("/v1/models")
    def list_models() -> dict[str, Any]:
        return {"object": "list", "data": [entry]}

    @app.get("/v1/models/{model_id:path}")
    def get_model(model_id: str) -> dict[str, Any]:
        if model_id != name:
            raise HTTPException(404, f"model {model_id!r} is not served here; this server has {name!r}")
        return entry

    @app.middleware("http")
    async def done_marker(request: Request, call_next: Any) -> Any:
        """End a streamed completion with `data: [DONE]`, as the OpenAI API does: some clients
        wait for it."""
        response = await call_next(request)
        streamed = response.headers.get("content-type", "").startswith("text/event-stream")
        if streamed and request.url.path in ("/v1/chat/completions", "/v1/completions"):
            chunks = response.body_iterator

            async def with_done() -> Any:
                async for chunk in chunks:
                    yield chunk
                yield b"data: [DONE]\n\n"

            response.body_iterator = with_done()
        return response

    @app.exception_handler(BadRequest)
    async def bad_request(_: Request, exc: BadRequest) -> JSONResponse:
        return JSONResponse(error_body(str(exc), 400), status_code=400)

    @app.exception_handler(RequestValidationError)
    async def malformed(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        detail = ("the body is not valid JSON" if first.get("type") == "json_invalid"
                  else f"the body must be a JSON object ({first.get('msg', 'invalid')})")
        return JSONResponse(error_body(detail, 400), status_code=400)

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse(error_body(str(exc.detail), exc.status_code), status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def server_error(_: Request, exc: Exception) -> JSONResponse:  # logged with its traceback
        return JSONResponse(error_body(f"server error: {type(exc).__name__}: {exc}", 500), status_code=500)

    return app


def check_port_free(host: str, port: int) -> None:
    with socket.socket() as probe:
        try:
            probe.bind((host, port))
        except OSError as e:
            raise UserError(f"--host {host} --port {port}: cannot listen there ({e.strerror}); "
                            "pass another --port") from None


def run(args: argparse.Namespace) -> None:
    import uvicorn
    from transformers.utils import logging as hf_logging

    local_model_dir(args.model)  # a missing folder fails here, in one line
    check_port_free(args.host, args.port)
    hf_logging.set_verbosity_error()  # not a "[Request received]" warning per request
    started = time.perf_counter()
    app = build_app(args.model, pick_device(args.device))
    print(f"serve: {args.model} loaded in {time.perf_counter() - started:.1f} s; OpenAI API at "
          f"http://{args.host}:{args.port}/v1 (model name {str(args.model)!r}); Ctrl-C stops",
          file=sys.stderr, flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="info")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    run_command("serve", lambda: run(args))


if __name__ == "__main__":
    main()
