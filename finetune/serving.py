"""An OpenAI-compatible server for a model folder: transformers serve's app, with requests
checked before they reach the model."""

from __future__ import annotations

import hmac
import ipaddress
import socket
from dataclasses import asdict
from pathlib import Path
from typing import Any

from finetune.errors import UserError
from finetune.models.loading import set_inference
from finetune.text.prompts import Inference

ROLES = {"system", "user", "assistant", "tool"}


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


# What a pinned server mounts of transformers serve: the OpenAI endpoints it can answer. Not
# /load_model and /reset (any web page could make it load another folder, or reset it: a
# cross-site "simple" POST needs no CORS preflight), nor audio and /v1/systemone.
SERVED = {"/v1/chat/completions", "/v1/completions", "/v1/responses", "/health"}
LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1"}


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 or localhost: this machine only."""
    if host.strip("[]") in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def host_name(header: str) -> str:
    """The name in a Host header, without its port ("[::1]:8000" -> "::1")."""
    if header.startswith("["):
        return header[1:].split("]", 1)[0]
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


def authorized(header: str | None, key: str) -> bool:
    """`Authorization: Bearer <key>`, compared in constant time."""
    scheme, _, given = (header or "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), key.encode())


def build_app(model: Path, device: str, asked: Inference | None = None, api_key: str | None = None,
              loopback_only: bool = True, cors_origins: list[str] | None = None) -> Any:
    """transformers serve's application, pinned to `model` and loaded, with the additions above.
    Assembled from transformers.cli.serving as its `Serve` command assembles it. `asked`
    (finetune.text.prompts.inference_for) sets the loaded model's chat template, stop tokens and
    default sampling, so it answers as evaluate and generate ask it whatever the folder holds; a
    model from elsewhere (no stop tokens known) keeps its own. With `api_key` every request needs
    it; served on loopback, a request for another Host is refused (DNS rebinding); CORS headers
    only for `cors_origins`."""
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
    (loaded,) = manager.loaded_models.values()
    if asked is not None and asked.stop_token_ids:
        set_inference(loaded.model, loaded.processor, asdict(asked))
    state = GenerationState()
    app: FastAPI = build_server(
        manager, Chat(manager, state), completion_handler=Completion(manager, state),
        response_handler=ResponseHandler(manager, state),
        transcription_handler=TranscriptionHandler(manager, state),
        systemone_handler=SystemOneHandler(manager, state), generation_state=state)

    entry = {"id": name, "object": "model", "created": int((model / "config.json").stat().st_mtime),
             "owned_by": "finetune-pipeline"}
    app.router.routes[:] = [r for r in app.router.routes
                            if not getattr(r, "methods", None) or getattr(r, "path", "") in SERVED]

    app.state.served = loaded  # the model and tokenizer requests are answered with

    @app.get("/v1/models")
    def list_models() -> dict[str, Any]:
        return {"object": "list", "data": [entry]}

    @app.get("/v1/models/{model_id:path}")
    def get_model(model_id: str) -> dict[str, Any]:
        if model_id != name:
            raise HTTPException(404, f"model {model_id!r} is not served here; this server has {name!r}")
        return entry

    @app.middleware("http")
    async def access(request: Request, call_next: Any) -> Any:
        """The Host and the key, before anything else."""
        host = host_name(request.headers.get("host", ""))
        if loopback_only and not is_loopback(host):
            return JSONResponse(error_body(f"Host {host!r} is not this server's: it serves "
                                           "127.0.0.1, ::1 and localhost only", 421), status_code=421)
        if api_key and not authorized(request.headers.get("authorization"), api_key):
            body = error_body("a valid API key is required (Authorization: Bearer <key>)", 401)
            body["error"]["code"] = "invalid_api_key"
            return JSONResponse(body, status_code=401, headers={"WWW-Authenticate": "Bearer"})
        return await call_next(request)

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

    if cors_origins:  # outermost, so that a browser's preflight is answered before the key check
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=cors_origins, allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"])
    return app


def check_port_free(host: str, port: int) -> None:
    with socket.socket() as probe:
        try:
            probe.bind((host, port))
        except OSError as e:
            raise UserError(f"--host {host} --port {port}: cannot listen there ({e.strerror}); "
                            "pass another --port") from None
